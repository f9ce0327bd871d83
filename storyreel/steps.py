"""The workflow's steps as plain functions of paths and config, one per Snakemake rule.

Rules call these through thin scripts (``scripts/*.py``), tests call them directly. Each step
reads its inputs, writes its outputs and nothing else (publish also stores copies where the
configuration says: that is its job); outputs are written whole or not at all (Snakemake removes
the outputs of a failed job).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from storyreel.storage import (
    DEFAULT_MAX_OBJECT_BYTES,
    GcsUri,
    StorageError,
    download_object,
    is_gcs_uri,
    publish_file,
    read_object,
)
from storyreel.story import StoryError, check_story_id, load_story, parse_story

log = logging.getLogger("storyreel")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_json(path: str | Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def init_story(
    *,
    source: str,
    story_json: str,
    assets: str,
    story: str,
    limits: dict,
    assets_config: dict,
    allowed_image_prefixes: Sequence[str] = (),
    max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
) -> dict:
    """Validate the submitted story and normalise each of its images into ``assets/``.

    ``source`` is a story file or a ``gs://`` object. Images in GCS are taken only from under
    ``allowed_image_prefixes`` and are downloaded one at a time to a scratch folder; no object
    larger than ``max_object_bytes`` is read.
    """
    from storyreel.images import ImageLimits, normalise_image, resolve_image_uri

    check_story_id(story)
    data = _read_story(source, story, max_object_bytes)
    image_limits = ImageLimits(
        max_pixels=limits.get("image_pixels", ImageLimits.max_pixels),
        max_bytes=limits.get("image_bytes", ImageLimits.max_bytes),
        min_side=limits.get("image_min_side", ImageLimits.min_side),
    )
    assets_dir = Path(assets)
    assets_dir.mkdir(parents=True, exist_ok=True)
    images = []
    with tempfile.TemporaryDirectory(prefix="storyreel-images-") as scratch:
        for index, image in enumerate(data["images"]):
            label = f"story '{story}' images[{index}] ({image['uri']})"
            location = resolve_image_uri(
                image["uri"],
                source,
                allowed_prefixes=allowed_image_prefixes,
                label=label,
            )
            file_name = f"image-{index:02d}.jpg"
            local_file = _local_image(location, Path(scratch), label, max_object_bytes)
            size = normalise_image(
                local_file,
                assets_dir / file_name,
                label=label,
                limits=image_limits,
                max_side=assets_config.get("max_side", 2048),
                jpeg_quality=assets_config.get("jpeg_quality", 90),
            )
            if isinstance(location, GcsUri):
                local_file.unlink()  # keep at most one download on the disk at a time
            images.append({**image, "file": f"assets/{file_name}", **size})
    data["images"] = images
    write_json(story_json, data)
    log.info("story '%s': %d characters, %d images", story, len(data["text"]), len(images))
    return data


def _read_story(source: str, story: str, max_object_bytes: int) -> dict:
    """The validated story from a local file or a gs:// object (one decoding, one validation)."""
    if not is_gcs_uri(source):
        return load_story(source, expected_id=story)
    try:
        raw = read_object(source, max_bytes=max_object_bytes)
    except StorageError as err:
        raise StoryError(f"story '{story}': {err}") from None
    return parse_story(raw, source=source, expected_id=story)


def _local_image(location: Path | GcsUri, scratch: Path, label: str, max_bytes: int) -> Path:
    """The image as a local file: the file itself, or the GCS object downloaded to scratch."""
    if not isinstance(location, GcsUri):
        return location
    # Keep the object's own name: errors about the file then name what the editor sent.
    local_file = scratch / (PurePosixPath(location.name).name or "image")
    try:
        return download_object(location, local_file, max_bytes=max_bytes)
    except StorageError as err:
        raise StoryError(f"{label}: {err}") from None


def make_transcript(*, story_json: str, transcript: str) -> dict:
    """Normalise the story text once: the synthesiser, aligner and captions read these words."""
    from storyreel.textnorm import build_transcript

    result = build_transcript(read_json(story_json))
    write_json(transcript, result)
    words = sum(len(sentence["words"]) for sentence in result["sentences"])
    log.info("%d sentences, %d words", len(result["sentences"]), words)
    return result


def synthesise_speech(
    *, story_json: str, transcript: str, wav: str, speech: str, tts: dict
) -> dict:
    """Read the transcript aloud: speech.wav plus speech.json (sentence spans, pronunciations)."""
    from storyreel.tts import synthesise

    story = read_json(story_json)
    return synthesise(
        read_json(transcript),
        tts["backend"],
        Path(wav),
        Path(speech),
        voice=story.get("voice") or tts.get("voice"),
        length_scale=tts["length_scale"],
        sentence_pause=tts["sentence_pause"],
        paragraph_pause=tts["paragraph_pause"],
        lead_in=tts["lead_in"],
    )


def align_speech(*, wav: str, transcript: str, speech: str, alignment: str, align: dict) -> dict:
    """Measure word and phone timings in the audio (gentle's alignment.json format)."""
    from storyreel.align import align_with_backend

    result = align_with_backend(Path(wav), read_json(transcript), read_json(speech), align)
    write_json(alignment, result)
    found = sum(word["case"] == "success" for word in result["words"])
    log.info("aligned %d of %d words", found, len(result["words"]))
    return result


def make_phonemes(
    *, alignment: str, transcript: str, speech: str, phonemes: str, story: str
) -> dict:
    """Give every word timed phones; words the aligner missed get them from g2p."""
    from storyreel.phonemes import build_phonemes

    result = build_phonemes(read_json(alignment), read_json(transcript), read_json(speech), story)
    write_json(phonemes, result)
    filled = sum(word["source"] == "g2p" for word in result["words"])
    log.info("%d phones, %d words filled by g2p", len(result["phones"]), filled)
    return result


def presenter_landmarks(
    *, story_json: str, presenter_png: str, reference: str, presenter: dict
) -> dict:
    """The story's presenter portrait and its 68 reference landmarks."""
    from storyreel.presenter import detect_reference

    story = read_json(story_json)
    name = story.get("presenter") or presenter["default"]
    entry = presenter["presenters"].get(name)
    if entry is None:
        available = ", ".join(sorted(presenter["presenters"]))
        raise StoryError(
            f"story '{story['id']}': field 'presenter' is {name!r}, which is not a configured "
            f"presenter (available: {available})"
        )
    image = entry.get("image")
    return detect_reference(
        Path(image) if image else None,
        Path(presenter_png),
        Path(reference),
        name=name,
        max_side=presenter.get("max_side", 1024),
        framing=presenter.get("framing"),
    )


def animate_presenter(
    *,
    story_json: str,
    phonemes: str,
    wav: str,
    reference: str,
    frames_npz: str,
    visemes: str,
    fps: float,
    animate: dict,
) -> dict:
    """Per-frame landmarks: mouth shapes from the phones, blinks and head motion."""
    from storyreel.animate import animate as animate_track
    from storyreel.timeline import speech_seconds

    story = read_json(story_json)
    timeline = read_json(phonemes)
    return animate_track(
        timeline,
        read_json(reference),
        fps=fps,
        duration=speech_seconds(wav),  # exact: compose counts frames from the same wav
        # The same story always moves the same way; another story blinks elsewhere.
        seed_text=f"{story['id']}\n{story['text']}",
        out_npz=Path(frames_npz),
        out_visemes=Path(visemes),
        **animate,
    )


def render_presenter(
    *, presenter_png: str, reference: str, frames_npz: str, frames: str, shard: str, render: dict
) -> int:
    """One shard of the presenter frames (frames/shard-{i}/frame-{k:06d}.png)."""
    from storyreel.render import render_shard

    backend = render["backend"]
    return render_shard(
        backend,
        Path(presenter_png),
        read_json(reference),
        Path(frames_npz),
        Path(frames),
        shard=int(shard),
        shards=render["shards"],
        png_compression=render.get("png_compression", 1),
        # The chosen backend's own section (render.pix2pixhd: checkpoint, size, ...), if any.
        **(render.get(backend) or {}),
    )


def compose_video(
    *,
    story_json: str,
    assets: str,
    frames: list[str],
    wav: str,
    phonemes: str,
    transcript: str,
    mp4: str,
    vtt: str,
    video: dict,
) -> dict:
    """The final video: images, presenter, lower third, captions, intro and outro cards."""
    from storyreel.compose import compose

    settings = dict(video)
    ffmpeg = settings.pop("ffmpeg", "bundled")
    settings.pop("format", None)  # the format's name; its size and fps are in settings
    summary = compose(
        story=read_json(story_json),
        story_dir=Path(assets).parent,  # images[].file are relative to the story directory
        frame_dirs=[Path(folder) for folder in frames],
        wav=Path(wav),
        phonemes=read_json(phonemes),
        transcript=read_json(transcript),
        out_mp4=Path(mp4),
        out_vtt=Path(vtt),
        video=settings,
        ffmpeg=ffmpeg,
    )
    log.info("composed %s", summary)
    return summary


def preview_sheet(
    *,
    frames: list[str],
    wav: str,
    phonemes: str,
    visemes: str,
    frames_npz: str,
    preview: str,
    fps: float,
) -> None:
    """A contact sheet and a lip-sync timeline, for a person to check the video at a glance."""
    import numpy as np

    from storyreel.preview import make_preview

    with np.load(frames_npz) as track:
        mouth_open = track["mouth_open"]
    make_preview(
        frame_dirs=[Path(folder) for folder in frames],
        wav=Path(wav),
        phonemes=read_json(phonemes),
        visemes=read_json(visemes),
        mouth_open=mouth_open,
        fps=fps,
        out_png=Path(preview),
    )


def publish_story(
    *, mp4: str, vtt: str, preview: str, published: str, story: str, destination: str
) -> dict:
    """Store the video, captions and preview under ``destination`` (gs:// prefix or folder).

    ``published.json`` records where each file went, its size and checksums, and when.
    """
    # The video goes last: a published final.mp4 implies its captions and preview are there.
    files = [(vtt, "text/vtt"), (preview, "image/png"), (mp4, "video/mp4")]
    stored = [publish_file(Path(path), destination, content_type) for path, content_type in files]
    record = {
        "story": story,
        "destination": destination,
        "published_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "files": stored,
    }
    write_json(published, record)
    log.info("published %d files to %s", len(stored), destination)
    return record


@contextlib.contextmanager
def logged(log_path: str | Path | None) -> Iterator[None]:
    """Send the step's log to its Snakemake log file (and stderr); record failures there too."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w", encoding="utf-8"))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        handlers=handlers,
        force=True,
    )
    started = time.perf_counter()
    try:
        yield
    except (StoryError, StorageError) as err:
        log.error("%s", err)
        raise
    except Exception:
        log.exception("step failed")
        raise
    log.info("done in %.2f s", time.perf_counter() - started)


def _plain(value: Any) -> Any:
    return [str(item) for item in value] if isinstance(value, list) else value


def run_from_snakemake(snakemake: Any, step: Callable[..., Any]) -> None:
    """Call ``step`` with a rule's named inputs, outputs, params and wildcards as keywords."""
    kwargs: dict[str, Any] = {}
    for group in (snakemake.input, snakemake.output, snakemake.params):
        # Named items only; a named list of files (expand) arrives as a list of paths.
        kwargs.update((name, _plain(value)) for name, value in group.items())
    accepted = inspect.signature(step).parameters
    kwargs.update((name, value) for name, value in snakemake.wildcards.items() if name in accepted)
    try:
        with logged(snakemake.log[0] if snakemake.log else None):
            step(**kwargs)
    except (StoryError, StorageError) as err:
        # A bad story is the editor's problem to fix, a missing bucket or permission the
        # operator's: not a crash. The message says what to do; no traceback.
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
