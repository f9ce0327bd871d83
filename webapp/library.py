"""The image library: uploads are checked the way init_story checks a story's images (the same
storyreel.images.normalise_image: type, bytes, pixels, smallest side) and stored as JPEGs in the
data directory, where init_story reads them by their absolute path."""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image as PillowImage
from sqlalchemy import select
from sqlalchemy.orm import Session

from storyreel.images import ImageLimits, normalise_image
from storyreel.story import StoryError
from webapp.db import Image, User
from webapp.settings import AppSettings

THUMBNAIL_SIDE = 320
_CHUNK = 1 << 20


def image_limits(workflow: dict[str, Any]) -> ImageLimits:
    limits = workflow.get("limits", {})
    return ImageLimits(
        max_pixels=limits.get("image_pixels", ImageLimits.max_pixels),
        max_bytes=limits.get("image_bytes", ImageLimits.max_bytes),
        min_side=limits.get("image_min_side", ImageLimits.min_side),
    )


def image_path(settings: AppSettings, image: Image, thumbnail: bool = False) -> Path:
    folder = settings.images_dir / "thumbnails" if thumbnail else settings.images_dir
    return folder / image.file_name


def store_upload(
    db: Session, settings: AppSettings, name: str, content: BinaryIO, user: User
) -> Image:
    """Check an uploaded file and add it to the library (an identical upload is found again).

    Raises StoryError with a message naming the file when it is not an acceptable image.
    """
    shown_name = re.sub(r"[^\w.-]+", "_", Path(name or "upload").name)[:100] or "upload"
    settings.upload_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.upload_dir) as scratch:
        upload = Path(scratch) / shown_name
        digest = _copy(content, upload)
        existing = db.scalar(select(Image).where(Image.sha256 == digest))
        if existing is not None:
            return existing
        workflow = settings.workflow
        assets = workflow.get("assets", {})
        file_name = f"{digest[:40]}.jpg"
        stored = settings.images_dir / file_name
        size = normalise_image(
            upload,
            stored,
            label=f"upload {shown_name}",
            limits=image_limits(workflow),
            max_side=assets.get("max_side", 2048),
            jpeg_quality=assets.get("jpeg_quality", 90),
        )
    image = Image(
        file_name=file_name,
        original_name=shown_name,
        sha256=digest,
        uploaded_by=user.id,
        **size,
    )
    _thumbnail(stored, image_path(settings, image, thumbnail=True))
    db.add(image)
    db.commit()
    return image


def _copy(content: BinaryIO, target: Path) -> str:
    digest = hashlib.sha256()
    with target.open("wb") as out:
        while chunk := content.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
    if target.stat().st_size == 0:
        raise StoryError(f"upload {target.name}: the file is empty")
    return digest.hexdigest()


def _thumbnail(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with PillowImage.open(source) as image:  # our own JPEG, just written by normalise_image
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        partial = target.with_name(target.name + ".part")
        image.save(partial, "JPEG", quality=80)
    shutil.move(partial, target)
