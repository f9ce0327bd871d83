"""News images: resolve where an image lives, check it, and normalise it into the story.

An image is a local file, a file inside an installed package, or an object in GCS under a
prefix the configuration allows (downloaded by the intake step).

An image is decoded, never copied blindly: a file that is not an image, a truncated file or a
decompression bomb fails with the file named, before it can reach the renderer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from PIL import Image, ImageOps, UnidentifiedImageError

from storyreel.storage import GcsUri, StorageError, is_allowed, is_gcs_uri, parse_gcs_uri
from storyreel.story import StoryError

log = logging.getLogger(__name__)

# Formats a newsroom sends; anything else Pillow can open (PSD, EPS, ...) is refused.
ACCEPTED_FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP"}


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int = 40_000_000  # a 30000x30000 "image" of a few KB is a decompression bomb
    max_bytes: int = 50 * 1024 * 1024
    min_side: int = 64


def resolve_image_uri(
    uri: str,
    story_source: str | Path,
    *,
    allowed_prefixes: Sequence[str] = (),
    label: str | None = None,
) -> Path | GcsUri:
    """Where an image of a story lives: a local file, or a GCS object to download.

    - ``gs://BUCKET/PATH`` only under one of ``allowed_prefixes`` (none given: never);
    - a relative path is relative to the story: to its folder for a story file, to its prefix
      for a story read from GCS (and then under an allowed prefix like any gs:// image);
    - an absolute path or a ``file://`` URI as is, but only in a local story: a story read from
      GCS never names a file on the worker;
    - ``package://MODULE/PATH`` is a file shipped inside an installed Python package (the demo
      story uses public-domain photos that ship with scikit-image, so none are copied here).

    ``label`` names the image in errors (e.g. "story 'demo' images[1] (photo.png)").
    """
    label = label or f"image {uri!r}"
    parsed = urlparse(uri)
    if parsed.scheme == "package":
        return _package_file(uri, label)
    if parsed.scheme == "gs":
        return _allowed_object(uri, None, allowed_prefixes, label)
    if parsed.scheme not in ("", "file"):
        raise StoryError(
            f"{label}: the {parsed.scheme}:// scheme is not supported (use a path, a file://, "
            "a package:// or a gs:// URI)"
        )
    if is_gcs_uri(str(story_source)):
        if parsed.scheme == "file" or uri.startswith("/"):
            raise StoryError(
                f"{label}: a story read from GCS cannot name a file on the worker (use a path "
                "relative to the story, a gs:// URI or a package:// URI)"
            )
        return _allowed_object(uri, str(story_source), allowed_prefixes, label)
    path = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(uri)
    return path if path.is_absolute() else Path(story_source).parent / path


def _allowed_object(
    uri: str, story_uri: str | None, allowed_prefixes: Sequence[str], label: str
) -> GcsUri:
    """The GCS object ``uri`` names (relative to ``story_uri`` if given), if it is allowed."""
    try:
        location = parse_gcs_uri(story_uri).join(uri) if story_uri else parse_gcs_uri(uri)
    except StorageError as err:
        raise StoryError(f"{label}: {err}") from None
    if not is_allowed(location, allowed_prefixes):
        allowed = ", ".join(allowed_prefixes) or "none are configured"
        raise StoryError(
            f"{label}: {location} is not under an allowed image prefix "
            f"(storage.allowed_image_prefixes: {allowed})"
        )
    return location


def _package_file(uri: str, label: str) -> Path:
    parsed = urlparse(uri)
    parts = PurePosixPath(parsed.path).parts[1:]
    if not parsed.netloc or not parts or ".." in parts:
        raise StoryError(f"{label}: expected package://MODULE/PATH inside the package")
    try:
        return Path(str(resources.files(parsed.netloc).joinpath(*parts)))
    except ModuleNotFoundError:
        raise StoryError(f"{label}: package {parsed.netloc!r} is not installed") from None


def normalise_image(
    source: Path,
    destination: Path,
    *,
    label: str,
    limits: ImageLimits = ImageLimits(),
    max_side: int = 2048,
    jpeg_quality: int = 90,
) -> dict:
    """Decode ``source``, fix orientation and colour, fit it in ``max_side``, save as JPEG.

    ``label`` names the image in errors (e.g. "story 'demo' images[1] (photo.png)").
    Returns the saved image's width and height.
    """
    try:
        size = source.stat().st_size
    except FileNotFoundError:
        raise StoryError(f"{label}: file {source} does not exist") from None
    if size > limits.max_bytes:
        raise StoryError(
            f"{label}: file is {size / 2**20:.1f} MB; "
            f"the limit is {limits.max_bytes / 2**20:.0f} MB"
        )
    try:
        with Image.open(source) as image:
            # The header gives the size before any pixel is decoded: refuse bombs here.
            width, height = image.size
            if width * height > limits.max_pixels:
                raise StoryError(
                    f"{label}: image is {width} x {height} pixels ({width * height / 1e6:.0f} "
                    f"megapixels); the limit is {limits.max_pixels / 1e6:.0f} megapixels"
                )
            if image.format not in ACCEPTED_FORMATS:
                raise StoryError(
                    f"{label}: {image.format} images are not accepted "
                    f"(use one of {', '.join(sorted(ACCEPTED_FORMATS))})"
                )
            if min(width, height) < limits.min_side:
                raise StoryError(
                    f"{label}: image is only {width} x {height} pixels; at least "
                    f"{limits.min_side} pixels on each side are needed"
                )
            if image.format == "JPEG":
                image.draft("RGB", (max_side, max_side))  # decode large JPEGs at reduced scale
            image.load()
            normalised = _to_rgb(ImageOps.exif_transpose(image))
    except Image.DecompressionBombError:
        # Pillow refuses headers far beyond its own limit before we see the size.
        raise StoryError(
            f"{label}: image is larger than the limit of {limits.max_pixels / 1e6:.0f} "
            "megapixels (its header declares far more pixels than a news image has)"
        ) from None
    except UnidentifiedImageError:
        raise StoryError(f"{label}: file {source.name} is not an image") from None
    except (OSError, SyntaxError) as err:
        raise StoryError(f"{label}: file {source.name} is truncated or corrupt ({err})") from None
    normalised.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    destination.parent.mkdir(parents=True, exist_ok=True)
    normalised.save(destination, "JPEG", quality=jpeg_quality, optimize=True)
    log.info("%s: %dx%d -> %s %dx%d", label, width, height, destination.name, *normalised.size)
    return {"width": normalised.width, "height": normalised.height}


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB without alpha: transparent areas become the dark background the video uses."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (20, 20, 24))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")
