"""Training pairs for a presenter's pix2pixHD model: face sketch in, video frame out.

A newsroom films its presenter; every frame of that video becomes one pair. ffmpeg decodes the
video (the binary the workflow uses, see ``storyreel.compose.find_ffmpeg``), dlib finds the face
and its 68 landmarks (``storyreel.presenter``'s detector and predictor), and each frame is fitted
to every training size: the largest centred part of the frame with the size's aspect (its
``cover_box``) is resized to it. The landmarks, with the same box, become the face sketch
(``storyreel.pix2pixhd.sketch``). Frames without a
face are skipped and counted.

The pairs are cached as PNG files, one folder per size::

    {cache}/manifest.json            what was built from what (the cache key) and the counts
    {cache}/landmarks.npz            points (N, 68, 2) in video pixels, frame (N,) video indices
    {cache}/{W}x{H}/sketch/000000.png
    {cache}/{W}x{H}/frame/000000.png

A cache is reused only when its key (the video's path, size and modification time, the sizes,
the frame sampling) matches; it is rebuilt whole otherwise. numpy and OpenCV only: no torch.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# cover_box: the one crop rule, shared with the renderer, which draws with the same box.
from storyreel.pix2pixhd.sketch import cover_box, draw_face_sketch

log = logging.getLogger(__name__)

CACHE_FORMAT = "storyreel-pix2pixhd-pairs"
CACHE_VERSION = 1
# Log progress every this many frames while building: a long video takes a while.
PROGRESS_EVERY = 500


class DatasetError(ValueError):
    """The presenter video cannot give training pairs (unreadable, no faces)."""


Size = tuple[int, int]  # (width, height)


def size_name(size: Size) -> str:
    return f"{size[0]}x{size[1]}"


@dataclass(frozen=True)
class PairSet:
    """The cached pairs of one size; index ``k`` is the k-th frame that had a face."""

    folder: Path
    size: Size
    count: int

    def sketch_path(self, k: int) -> Path:
        return self.folder / "sketch" / f"{k:06d}.png"

    def frame_path(self, k: int) -> Path:
        return self.folder / "frame" / f"{k:06d}.png"

    def load(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Pair ``k`` as RGB uint8 (height, width, 3) arrays: the sketch and the frame."""
        return _read_rgb(self.sketch_path(k)), _read_rgb(self.frame_path(k))


def _read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"{path}: missing or unreadable training image; delete the cache")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


# --- decoding -----------------------------------------------------------------------------------

_STREAM_SIZE = re.compile(r"Stream #\S+.*?: Video: .*?(\d{2,5})x(\d{2,5})")


def probe_video_size(video: Path, ffmpeg_exe: str) -> Size:
    """The first video stream's (width, height), read from ffmpeg's stream description."""
    result = subprocess.run(
        [ffmpeg_exe, "-hide_banner", "-nostdin", "-i", str(video)],
        capture_output=True,
        text=True,
        errors="replace",
    )
    match = _STREAM_SIZE.search(result.stderr)
    if match is None:
        tail = result.stderr.strip().splitlines()[-1:] or ["no output"]
        raise DatasetError(f"presenter video {video}: no video stream found ({tail[0]})")
    return int(match.group(1)), int(match.group(2))


def video_frames(
    video: str | Path,
    *,
    ffmpeg: str = "bundled",
    fps: float | None = None,
    max_frames: int | None = None,
) -> Iterator[np.ndarray]:
    """The video's frames as RGB uint8 arrays, decoded by ffmpeg into a pipe.

    ``fps`` resamples the video to that many frames per second (None: every frame);
    ``max_frames`` stops after that many.
    """
    from storyreel.compose import find_ffmpeg

    video = Path(video)
    if not video.is_file():
        raise DatasetError(f"presenter video {video}: file does not exist")
    ffmpeg_exe = find_ffmpeg(ffmpeg)
    width, height = probe_video_size(video, ffmpeg_exe)
    args = [ffmpeg_exe, "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(video)]
    if fps:
        args += ["-vf", f"fps={fps}"]
    if max_frames:
        args += ["-frames:v", str(int(max_frames))]
    args += ["-an", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    frame_bytes = width * height * 3
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=errors)
        assert process.stdout is not None
        try:
            while True:
                data = process.stdout.read(frame_bytes)
                if len(data) < frame_bytes:
                    break
                yield np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)
        finally:
            # A caller that stops early closes the pipe under ffmpeg, which then exits.
            process.stdout.close()
            code = process.wait()
        if code != 0:  # reached only when ffmpeg ended on its own
            errors.seek(0)
            message = errors.read().decode(errors="replace").strip()[-1000:]
            raise DatasetError(f"presenter video {video}: ffmpeg failed ({code}): {message}")


# --- geometry -----------------------------------------------------------------------------------


def fit_frame(frame: np.ndarray, size: Size) -> np.ndarray:
    """The frame's ``cover_box`` resized to ``size`` (width, height)."""
    x, y, box_w, box_h = cover_box((frame.shape[1], frame.shape[0]), size)
    crop = frame[y : y + box_h, x : x + box_w]
    shrinking = box_w > size[0]
    return cv2.resize(
        crop, tuple(size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    )


def frame_landmarks(frame: np.ndarray) -> np.ndarray | None:
    """The 68 landmarks (float, video pixels) of the frame's largest face, or None."""
    from storyreel.presenter import _choose_face, _find_faces, _landmarks

    detections = _find_faces(frame)
    if not detections:
        return None
    box, _score = _choose_face(detections)
    return _landmarks(frame, box).astype(np.float64)


# --- building and caching -----------------------------------------------------------------------


def build_pairs(
    frames: Iterable[np.ndarray],
    cache_dir: str | Path,
    sizes: Sequence[Size],
    *,
    key: dict | None = None,
) -> dict[Size, PairSet]:
    """Detect the face in every frame and write its sketch/frame pair at every size.

    The cache is built in a scratch folder beside ``cache_dir`` and moved into place whole, so
    an interrupted build leaves no half cache. Raises ``DatasetError`` when no frame has a face.
    """
    cache_dir = Path(cache_dir)
    sizes = [(int(w), int(h)) for w, h in sizes]
    sizes = list(dict.fromkeys(sizes))
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=cache_dir.name + ".building-", dir=cache_dir.parent))
    started = time.perf_counter()
    try:
        for size in sizes:
            for kind in ("sketch", "frame"):
                (scratch / size_name(size) / kind).mkdir(parents=True)
        points_list, frame_index, skipped, seen, frame_size = [], [], 0, 0, None
        for index, frame in enumerate(frames):
            seen += 1
            frame = np.ascontiguousarray(frame)
            if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
                raise DatasetError(
                    f"frame {index}: expected RGB uint8, got {frame.dtype} {frame.shape}"
                )
            if frame_size is None:
                frame_size = (frame.shape[1], frame.shape[0])
            elif (frame.shape[1], frame.shape[0]) != frame_size:
                raise DatasetError(
                    f"frame {index} is {frame.shape[1]}x{frame.shape[0]}, the first was "
                    f"{frame_size[0]}x{frame_size[1]}: all frames must have one size"
                )
            points = frame_landmarks(frame)
            if points is None:
                skipped += 1
            else:
                k = len(points_list)
                points_list.append(points)
                frame_index.append(index)
                for size in sizes:
                    folder = scratch / size_name(size)
                    box = cover_box(frame_size, size)
                    sketch = draw_face_sketch(points, size, box=box)
                    _write_rgb(folder / "sketch" / f"{k:06d}.png", sketch)
                    _write_rgb(folder / "frame" / f"{k:06d}.png", fit_frame(frame, size))
            if seen % PROGRESS_EVERY == 0:
                log.info("%d frames read, %d without a face", seen, skipped)
        if not points_list:
            raise DatasetError(
                f"no face found in any of {seen} frames; the presenter video must show one "
                "front-facing face"
            )
        np.savez_compressed(
            scratch / "landmarks.npz",
            points=np.stack(points_list).astype(np.float32),
            frame=np.array(frame_index, dtype=np.int64),
        )
        manifest = {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "key": key or {},
            "frames_read": seen,
            "frames_without_face": skipped,
            "pairs": len(points_list),
            "frame_size": list(frame_size),
            "sizes": [list(size) for size in sizes],
            # The part of the video frame each size shows: the renderer's sketch box.
            "boxes": {size_name(size): list(cover_box(frame_size, size)) for size in sizes},
        }
        (scratch / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        if cache_dir.exists():
            shutil.rmtree(cache_dir)
        scratch.rename(cache_dir)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    log.info(
        "training pairs: %d frames read, %d pairs, %d frames skipped without a face, "
        "sizes %s, in %.1f s (%s)",
        seen,
        len(points_list),
        skipped,
        ", ".join(size_name(size) for size in sizes),
        time.perf_counter() - started,
        cache_dir,
    )
    return open_pairs(cache_dir, sizes)


def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def read_manifest(cache_dir: str | Path) -> dict | None:
    path = Path(cache_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if manifest.get("format") != CACHE_FORMAT or manifest.get("version") != CACHE_VERSION:
        return None
    return manifest


def open_pairs(cache_dir: str | Path, sizes: Sequence[Size]) -> dict[Size, PairSet]:
    """The cached pair sets of ``sizes``; ``DatasetError`` if the cache lacks one."""
    cache_dir = Path(cache_dir)
    manifest = read_manifest(cache_dir)
    if manifest is None:
        raise DatasetError(f"{cache_dir}: not a training pair cache (no valid manifest.json)")
    built = {tuple(size) for size in manifest["sizes"]}
    result = {}
    for width, height in sizes:
        size = (int(width), int(height))
        if size not in built:
            raise DatasetError(f"{cache_dir}: no pairs at {size_name(size)}")
        result[size] = PairSet(cache_dir / size_name(size), size, manifest["pairs"])
    return result


def video_key(video: Path, sizes: Sequence[Size], fps: float | None, max_frames: int | None):
    stat = video.stat()
    return {
        "video": str(video.resolve()),
        "bytes": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sizes": sorted([int(w), int(h)] for w, h in sizes),
        "fps": fps,
        "max_frames": max_frames,
    }


def prepare_pairs(
    video: str | Path,
    cache_dir: str | Path,
    sizes: Sequence[Size],
    *,
    ffmpeg: str = "bundled",
    fps: float | None = None,
    max_frames: int | None = None,
) -> dict[Size, PairSet]:
    """The video's training pairs at ``sizes``, from the cache when it matches, else built."""
    video = Path(video)
    if not video.is_file():
        raise DatasetError(f"presenter video {video}: file does not exist")
    key = video_key(video, sizes, fps, max_frames)
    manifest = read_manifest(cache_dir)
    if manifest is not None and manifest.get("key") == key:
        log.info(
            "training pairs: %d from the cache %s (%d frames were skipped without a face)",
            manifest["pairs"],
            cache_dir,
            manifest["frames_without_face"],
        )
        return open_pairs(cache_dir, sizes)
    frames = video_frames(video, ffmpeg=ffmpeg, fps=fps, max_frames=max_frames)
    return build_pairs(frames, cache_dir, sizes, key=key)
