"""Compose the final presenter video: news images, presenter, lower third and captions.

Each output frame is built in Python and piped as raw RGB into one ffmpeg process that encodes
H.264 + AAC. Everything that does not change from frame to frame (text, panel shadow and border,
intro and outro cards, the scaled news images) is prepared once; per frame there is an affine
warp of the background (the slow pan and zoom) wherever the presenter panel and the lower third
do not cover it, the presenter frame (decoded ahead on a background thread) and a few small
alpha blends. Frames are streamed, so memory does not grow with the story's length.

Timeline (video seconds): intro card, then the speech (delayed by the intro), then the outro
card. The intro and outro lengths are rounded to whole frames, so presenter frame ``k`` (which
shows speech time ``k / fps``) lands exactly on output frame ``intro_frames + k``.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import math
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
import soundfile
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from tqdm import tqdm

from storyreel.captions import CaptionTrack, Cue, build_cues, write_vtt
from storyreel.timeline import frame_count

VIDEO_DEFAULTS = {
    "width": 1280,
    "height": 720,
    "fps": 30,
    "layout": "landscape",
    "intro_seconds": 2.0,
    "outro_seconds": 3.0,
    "crf": 20,
    "preset": "veryfast",
    "audio_bitrate": "128k",
}
LAYOUTS = ("landscape", "portrait")
AUDIO_RATE = 48_000
PIPE_BUFFER_BYTES = 1 << 20  # Linux's default limit for an unprivileged process

DISCLOSURE_LABEL = "SYNTHETIC PRESENTER"
DISCLOSURE_TEXT = (
    "This report is read by a synthetic presenter: the voice and the face are computer-generated."
)

# Colours (RGB / RGBA).
ACCENT = (214, 38, 50)
HIGHLIGHT = (255, 206, 46)
STRAP_FILL = (10, 22, 44, 255)
CAPTION_FILL = (0, 0, 0, 170)
TEXT = (255, 255, 255, 255)
DARK_TEXT = (16, 16, 16, 255)

ZOOM_RANGE = 1.12  # the Ken Burns move zooms by 12 % over an image's time on screen
IMAGE_FADE = 0.6  # seconds of crossfade between news images
CARD_FADE = 0.5  # seconds of crossfade into and out of the intro / outro cards


class ComposeError(RuntimeError):
    """The video could not be composed (ffmpeg missing or failing, inconsistent inputs)."""


def compose(
    *,
    story: dict,
    story_dir: Path,
    frame_dirs: list[Path],
    wav: Path,
    phonemes: dict,
    transcript: dict,
    out_mp4: Path,
    out_vtt: Path,
    video: dict,
    ffmpeg: str = "bundled",
    progress: bool = True,
) -> dict:
    """Compose ``out_mp4`` (H.264 + AAC) and its WebVTT captions ``out_vtt``.

    ``video``: width, height, fps, layout ("landscape" | "portrait"), intro_seconds,
    outro_seconds, crf, preset, audio_bitrate (missing keys take VIDEO_DEFAULTS), and optionally
    presenter_fps when the presenter frames were rendered at another rate than the video.
    ``ffmpeg``: "bundled" (imageio-ffmpeg's binary), "system" (ffmpeg on PATH) or a path.
    Returns a summary: frames, duration (s), seconds taken, frames_per_second, cues.
    """
    settings = _video_settings(video)
    ffmpeg_exe = find_ffmpeg(ffmpeg)
    width, height, fps = settings["width"], settings["height"], settings["fps"]
    frame_rate = Fraction(fps).limit_denominator(1001)
    fps = float(frame_rate)

    speech_seconds = soundfile.info(str(wav)).duration
    presenter = PresenterFrames(frame_dirs, speech_seconds, settings.get("presenter_fps", fps))
    intro_frames = round(settings["intro_seconds"] * fps)
    speech_frames = frame_count(speech_seconds, fps)
    outro_frames = round(settings["outro_seconds"] * fps)
    total_frames = intro_frames + speech_frames + outro_frames
    intro_end = intro_frames / fps
    speech_end = (intro_frames + speech_frames) / fps

    cues = build_cues(phonemes, transcript)
    layout = Layout.create(width, height, settings["layout"], presenter.size)
    scene = Scene(
        story=story,
        story_dir=Path(story_dir),
        layout=layout,
        presenter=presenter,
        cues=cues,
        segments=image_segments(story, transcript, phonemes, intro_end, total_frames / fps),
        intro_end=intro_end,
        speech_end=speech_end,
        video_end=total_frames / fps,
    )

    out_mp4 = Path(out_mp4)
    out_mp4.parent.mkdir(parents=True, exist_ok=True)
    partial = out_mp4.with_name(out_mp4.stem + ".partial.mp4")
    args = _ffmpeg_args(
        ffmpeg_exe,
        settings,
        frame_rate,
        wav,
        partial,
        delay_samples=round(intro_end * AUDIO_RATE),
        total_samples=round(total_frames / fps * AUDIO_RATE),
        total_frames=total_frames,
    )
    started = time.perf_counter()
    composite_s = 0.0
    # The speech times Scene.frame will ask the presenter for, in order.
    presenter.read_ahead(
        (index / fps - intro_end for index in range(total_frames)), layout.panel[2:]
    )
    try:
        with (
            tempfile.TemporaryFile() as log,
            FfmpegPipe(args, log) as pipe,
            tqdm(
                total=total_frames,
                unit="frame",
                desc="compose",
                file=sys.stderr,
                disable=not progress,
                mininterval=1.0,
            ) as bar,
        ):
            for index in range(total_frames):
                tick = time.perf_counter()
                frame = scene.frame(index / fps)
                composite_s += time.perf_counter() - tick
                pipe.write(frame)
                bar.update()
            finishing = time.perf_counter()
        encoder_tail_s = time.perf_counter() - finishing
        partial.replace(out_mp4)
    finally:
        presenter.close()
        partial.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    # The captions file follows the video's timeline: shifted by the intro.
    write_vtt(phonemes, transcript, out_vtt, offset=intro_end)
    return {
        "frames": total_frames,
        "duration": total_frames / fps,
        "seconds": seconds,
        "frames_per_second": total_frames / seconds if seconds else float("inf"),
        "cues": len(cues),
        # Where the time went: compositing in Python, the rest is the encoder keeping up
        # (pipe writes block while x264 is busy) and finishing after the last frame.
        "composite_seconds": round(composite_s, 2),
        "encoder_wait_seconds": round(seconds - composite_s - encoder_tail_s, 2),
        "encoder_tail_seconds": round(encoder_tail_s, 2),
    }


def find_ffmpeg(ffmpeg: str = "bundled") -> str:
    """Path of the ffmpeg binary: "bundled" (imageio-ffmpeg), "system" (PATH) or a path."""
    if ffmpeg == "bundled":
        try:
            import imageio_ffmpeg

            return imageio_ffmpeg.get_ffmpeg_exe()
        except (ImportError, RuntimeError) as err:
            raise ComposeError(
                f"the bundled ffmpeg is not available ({err}); install imageio-ffmpeg or "
                "use ffmpeg='system' or a path"
            ) from None
    if ffmpeg == "system":
        found = shutil.which("ffmpeg")
        if not found:
            raise ComposeError(
                "ffmpeg='system' but no ffmpeg is on PATH; install it or use ffmpeg='bundled'"
            )
        return found
    path = Path(ffmpeg)
    if not path.is_file():
        raise ComposeError(
            f"ffmpeg binary {path} does not exist; give the path of an ffmpeg executable, "
            "or 'bundled' or 'system'"
        )
    if not os.access(path, os.X_OK):
        raise ComposeError(f"ffmpeg binary {path} is not executable")
    return str(path)


def _video_settings(video: dict) -> dict:
    unknown = set(video) - set(VIDEO_DEFAULTS) - {"presenter_fps"}
    if unknown:
        raise ValueError(f"unknown video settings: {', '.join(sorted(unknown))}")
    settings = {**VIDEO_DEFAULTS, **video}
    width, height = int(settings["width"]), int(settings["height"])
    if width < 64 or height < 64 or width % 2 or height % 2:
        # yuv420p halves the chroma planes: odd sizes cannot be encoded exactly.
        raise ValueError(f"video size {width}x{height}: both sides must be even and >= 64")
    if settings["layout"] not in LAYOUTS:
        raise ValueError(f"video layout {settings['layout']!r}: expected one of {LAYOUTS}")
    if not 0 < float(settings["fps"]) <= 120:
        raise ValueError(f"video fps {settings['fps']}: expected 0 < fps <= 120")
    if settings["intro_seconds"] < 0 or settings["outro_seconds"] < 0:
        raise ValueError("intro_seconds and outro_seconds cannot be negative")
    return {**settings, "width": width, "height": height}


def _ffmpeg_args(
    ffmpeg_exe: str,
    settings: dict,
    frame_rate: Fraction,
    wav: Path,
    out: Path,
    *,
    delay_samples: int,
    total_samples: int,
    total_frames: int,
) -> list[str]:
    rate = f"{frame_rate.numerator}/{frame_rate.denominator}"
    # Speech starts after the intro and is padded with silence, then cut to the exact sample
    # count of the video's length, so both streams end together.
    audio_filter = (
        f"[1:a]aresample={AUDIO_RATE},adelay=delays={delay_samples}S:all=1,"
        f"apad,atrim=end_sample={total_samples}[speech]"
    )
    return [
        ffmpeg_exe,
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{settings['width']}x{settings['height']}",
        "-framerate",
        rate,
        "-i",
        "pipe:0",
        "-i",
        str(wav),
        "-filter_complex",
        audio_filter,
        "-map",
        "0:v",
        "-map",
        "[speech]",
        # Frames are RGB: convert with the BT.709 matrix and tag the stream so, or players
        # guess and tint the colours.
        "-vf",
        "scale=out_color_matrix=bt709:out_range=tv,format=yuv420p,"
        "setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709:range=tv",
        "-c:v",
        "libx264",
        "-preset",
        str(settings["preset"]),
        "-crf",
        str(settings["crf"]),
        "-profile:v",
        "high",
        "-g",
        str(max(1, round(2 * float(frame_rate)))),
        "-frames:v",
        str(total_frames),
        "-c:a",
        "aac",
        "-b:a",
        str(settings["audio_bitrate"]),
        "-ar",
        str(AUDIO_RATE),
        "-movflags",
        "+faststart",
        str(out),
    ]


class FfmpegPipe:
    """One ffmpeg process fed raw frames on stdin from a writer thread.

    The thread lets Python compose the next frame while the pipe is busy; the bounded queue keeps
    at most a few frames in memory. ffmpeg's messages go to ``log``, a file (a pipe nobody reads
    could fill up and stall ffmpeg), and are quoted if it fails.
    """

    def __init__(self, args: list[str], log: BinaryIO, *, queued_frames: int = 4):
        self._log = log
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=queued_frames)
        self._error: OSError | ValueError | None = None
        try:
            self._process = subprocess.Popen(
                args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log
            )
        except OSError as err:
            raise ComposeError(f"cannot run ffmpeg {args[0]}: {err}") from None
        if hasattr(fcntl, "F_SETPIPE_SZ"):  # Linux
            # A frame is megabytes: with the default 64 KiB pipe the writer and ffmpeg would
            # wake each other dozens of times per frame.
            with contextlib.suppress(OSError):
                fcntl.fcntl(self._process.stdin, fcntl.F_SETPIPE_SZ, PIPE_BUFFER_BYTES)
        self._thread = threading.Thread(target=self._feed, name="ffmpeg-writer", daemon=True)
        self._thread.start()

    def __enter__(self) -> FfmpegPipe:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, frame: np.ndarray) -> None:
        """Queue one frame (uint8 RGB, C-contiguous; it must not be changed afterwards)."""
        if self._error is not None or not self._thread.is_alive():
            # ffmpeg quit before the last frame: let it finish writing why.
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
            raise self._failure()
        self._put(np.ascontiguousarray(frame))

    def close(self) -> None:
        """Send end of input, wait for ffmpeg, and raise ComposeError if it failed."""
        self._put(None)
        self._thread.join()
        if self._process.wait() != 0 or self._error is not None:
            raise self._failure()

    def _failure(self) -> ComposeError:
        self._log.flush()
        self._log.seek(0)
        messages = self._log.read().decode("utf-8", "replace").strip()[-3000:]
        return ComposeError(
            f"ffmpeg failed (exit status {self._process.returncode}): "
            f"{messages or self._error or 'no messages'}"
        )

    def abort(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        # The writer thread ends on the broken pipe or on the end marker.
        with self._queue.mutex:
            self._queue.queue.clear()
        self._put(None)
        self._thread.join(timeout=10)

    def _put(self, item: np.ndarray | None) -> None:
        while self._thread.is_alive():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _feed(self) -> None:
        stdin = self._process.stdin
        try:
            while (frame := self._queue.get()) is not None:
                stdin.write(memoryview(frame).cast("B"))
            stdin.close()
        except (OSError, ValueError) as err:  # BrokenPipeError when ffmpeg has died
            self._error = err


_FRAME_NAME = re.compile(r"frame-(\d{6,})\.png")


def index_frames(frame_dirs: list[Path]) -> dict[int, Path]:
    """Presenter frame paths by global frame number, gathered from all shard folders."""
    paths: dict[int, Path] = {}
    for folder in map(Path, frame_dirs):
        if not folder.is_dir():
            raise ComposeError(f"presenter frame folder {folder} does not exist")
        for path in folder.iterdir():
            match = _FRAME_NAME.fullmatch(path.name)
            if not match:
                continue
            number = int(match.group(1))
            if number in paths:
                raise ComposeError(f"presenter frame {number} is in {paths[number]} and {path}")
            paths[number] = path
    return paths


class PresenterFrames:
    """The rendered presenter frames (all shards), looked up by speech time.

    Decoding a PNG takes a few milliseconds. After ``read_ahead``, the frames that will be asked
    for next are decoded and resized on a background thread (OpenCV releases the GIL, so this
    overlaps with composing), a bounded number at a time so memory stays flat. ``close`` stops it.
    """

    def __init__(self, frame_dirs: list[Path], speech_seconds: float, fps: float):
        paths = index_frames(frame_dirs)
        expected = frame_count(speech_seconds, fps)
        missing = [index for index in range(expected) if index not in paths]
        if missing:
            raise ComposeError(
                f"presenter frames: {len(missing)} of {expected} missing (first: frame "
                f"{missing[0]}); {speech_seconds:.3f} s of speech at {fps:g} fps needs frames "
                f"0..{expected - 1}"
            )
        self.paths = [paths[index] for index in range(expected)]
        self.fps = fps
        first = cv2.imread(str(self.paths[0]), cv2.IMREAD_COLOR)
        if first is None:
            raise ComposeError(f"presenter frame {self.paths[0]} cannot be read")
        self.size = (first.shape[1], first.shape[0])
        self._cached: tuple[int, np.ndarray] | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._planned: Iterator[int] = iter(())
        self._planned_size: tuple[int, int] | None = None
        self._queued: deque[tuple[int, Future[np.ndarray]]] = deque()
        self._queue_length = 0

    def index(self, speech_time: float) -> int:
        """Number of the frame showing ``speech_time`` (clamped to the speech)."""
        return min(len(self.paths) - 1, max(0, math.floor(speech_time * self.fps + 1e-6)))

    def read_ahead(
        self, speech_times: Iterable[float], size: tuple[int, int], *, frames: int = 6
    ) -> None:
        """Load ahead, on a background thread, the frames for ``speech_times`` at ``size``.

        ``speech_times`` (read lazily) are the times the coming calls to ``at`` will ask for, in
        order; calls may skip some of them. At most ``frames`` frames are loaded ahead.
        """
        self.close()
        indices = (self.index(speech_time) for speech_time in speech_times)
        self._planned = (index for index, _ in itertools.groupby(indices))  # each frame once
        self._planned_size = size
        self._queue_length = frames
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="presenter-reader")
        self._top_up()

    def close(self) -> None:
        """Stop loading ahead and drop the frames loaded so far."""
        if self._reader is not None:
            self._reader.shutdown(wait=True, cancel_futures=True)
            self._reader = None
        self._queued.clear()
        self._planned = iter(())

    def at(self, speech_time: float, size: tuple[int, int]) -> np.ndarray:
        """RGB frame showing ``speech_time`` (clamped to the speech), resized to ``size``."""
        index = self.index(speech_time)
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1]
        image = self._take_loaded(index, size)
        if image is None:  # not read ahead: asked out of the planned order or at another size
            image = self._load(index, size)
        self._cached = (index, image)
        return image

    def _take_loaded(self, index: int, size: tuple[int, int]) -> np.ndarray | None:
        if size != self._planned_size:
            return None
        while True:
            self._top_up()
            if not self._queued:
                return None
            queued_index, loading = self._queued[0]
            if queued_index >= index:
                break
            self._queued.popleft()[1].cancel()  # a planned frame that was not asked for
        if queued_index != index:
            return None
        self._queued.popleft()
        self._top_up()
        return loading.result()

    def _top_up(self) -> None:
        while self._reader is not None and len(self._queued) < self._queue_length:
            index = next(self._planned, None)
            if index is None:
                return
            self._queued.append((index, self._reader.submit(self._load, index, self._planned_size)))

    def _load(self, index: int, size: tuple[int, int]) -> np.ndarray:
        image = cv2.imread(str(self.paths[index]), cv2.IMREAD_COLOR_RGB)
        if image is None:
            raise ComposeError(f"presenter frame {self.paths[index]} cannot be read")
        if (image.shape[1], image.shape[0]) != size:
            shrinking = image.shape[1] > size[0]
            image = cv2.resize(
                image, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
            )
        return image


# ---------------------------------------------------------------------------------------------
# Text


@lru_cache(maxsize=64)
def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    """A scalable font that needs no system package: DejaVu where present, else Pillow's own."""
    names = ["DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"]
    folders = [Path("/usr/share/fonts/truetype/dejavu")]
    try:
        import matplotlib

        # matplotlib (installed for the preview) ships the DejaVu family.
        folders.append(Path(matplotlib.get_data_path()) / "fonts" / "ttf")
    except ImportError:
        pass
    for folder in folders:
        for name in names:
            if (folder / name).is_file():
                return ImageFont.truetype(str(folder / name), size)
    return ImageFont.load_default(size=size)


def wrap_text(
    text: str, typeface: ImageFont.FreeTypeFont, max_width: float, max_lines: int
) -> tuple[list[str], bool]:
    """Greedy word wrap; returns (lines, fits). What does not fit is cut with an ellipsis."""
    lines: list[str] = []
    for word in text.split():
        if lines and typeface.getlength(f"{lines[-1]} {word}") <= max_width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    fits = len(lines) <= max_lines and all(typeface.getlength(ln) <= max_width for ln in lines)
    if fits:
        return lines, True
    lines = lines[: max_lines - 1] + [" ".join(lines[max_lines - 1 :])]
    return [_ellipsize(line, typeface, max_width) for line in lines], False


def _ellipsize(line: str, typeface: ImageFont.FreeTypeFont, max_width: float) -> str:
    """Cut ``line`` to fit with an ellipsis: at a word boundary where one word is left over."""
    if typeface.getlength(line) <= max_width:
        return line
    words = line.split()
    while len(words) > 1 and typeface.getlength(" ".join(words) + "\u2026") > max_width:
        words.pop()
    line = " ".join(words).rstrip(",;:\u2014\u2013-")
    while line and typeface.getlength(line + "\u2026") > max_width:
        line = line[:-1].rstrip()
    return line + "\u2026"


def fit_text(
    text: str, *, size: int, min_size: int, max_width: float, max_lines: int, bold: bool = True
) -> tuple[ImageFont.FreeTypeFont, list[str]]:
    """The largest font from ``size`` down to ``min_size`` at which ``text`` fits."""
    current = size
    while True:
        typeface = font(current, bold)
        lines, fits = wrap_text(text, typeface, max_width, max_lines)
        if fits or current <= min_size:
            return typeface, lines
        current = max(min_size, int(current * 0.9))


def line_height(typeface: ImageFont.FreeTypeFont) -> int:
    ascent, descent = typeface.getmetrics()
    return round((ascent + descent) * 1.12)


def rounded_mask(size: tuple[int, int], radius: int, supersample: int = 4) -> np.ndarray:
    """Anti-aliased rounded-rectangle alpha (float32, 0..1)."""
    big = Image.new("L", (size[0] * supersample, size[1] * supersample), 0)
    ImageDraw.Draw(big).rounded_rectangle(
        (0, 0, big.width - 1, big.height - 1), radius=radius * supersample, fill=255
    )
    small = big.resize(size, Image.Resampling.LANCZOS)
    return np.asarray(small, dtype=np.float32) / 255.0


# ---------------------------------------------------------------------------------------------
# Layers


Rect = tuple[int, int, int, int]  # left, top, right, bottom (exclusive), in frame pixels


def subtract_rects(area: Rect, holes: list[Rect]) -> list[Rect]:
    """Rectangles that together cover ``area`` except where ``holes`` lie.

    The area is cut into horizontal bands at the holes' top and bottom edges; each band keeps
    its uncovered runs, and a band with the same runs as the band above extends its rectangles.
    """
    left, top, right, bottom = area
    clipped = [
        (max(x0, left), max(y0, top), min(x1, right), min(y1, bottom)) for x0, y0, x1, y1 in holes
    ]
    clipped = [(x0, y0, x1, y1) for x0, y0, x1, y1 in clipped if x0 < x1 and y0 < y1]
    edges = sorted({top, bottom, *(y for hole in clipped for y in (hole[1], hole[3]))})
    rects: list[list[int]] = []
    band_rects: list[list[int]] = []
    band_runs: list[tuple[int, int]] | None = None
    for band_top, band_bottom in zip(edges, edges[1:], strict=False):
        covered = sorted(
            (x0, x1) for x0, y0, x1, y1 in clipped if y0 <= band_top and y1 >= band_bottom
        )
        runs = []
        x = left
        for x0, x1 in covered:
            if x0 > x:
                runs.append((x, x0))
            x = max(x, x1)
        if x < right:
            runs.append((x, right))
        if runs == band_runs:
            for rect in band_rects:
                rect[3] = band_bottom
        else:
            band_rects = [[x0, band_top, x1, band_bottom] for x0, x1 in runs]
            rects += band_rects
            band_runs = runs
    return [(x0, y0, x1, y1) for x0, y0, x1, y1 in rects]


def visible_pieces(alpha: np.ndarray, block: int = 16) -> list[tuple[int, int, int, int, bool]]:
    """Rectangles (y0, y1, x0, x1, opaque) covering the non-transparent part of ``alpha``.

    A panel border or a rounded corner covers a thin ring of a large box: blending only the
    blocks that show something, and copying the fully opaque ones, keeps per-frame work small.
    """
    height, width = alpha.shape
    rows_n, cols_n = -(-height // block), -(-width // block)
    padded = np.zeros((rows_n * block, cols_n * block), np.float32)
    padded[:height, :width] = alpha
    tiles = padded.reshape(rows_n, block, cols_n, block)
    shows = tiles.max(axis=(1, 3)) > 0
    # Opaque only where the tile lies wholly inside the mask (padding counts as transparent).
    inside = np.zeros_like(padded, bool)
    inside[:height, :width] = True
    opaque = (tiles.min(axis=(1, 3)) >= 1.0) & inside.reshape(tiles.shape).all(axis=(1, 3))

    pieces: list[tuple[int, int, int, int, bool]] = []
    band: tuple[int, list[tuple[int, int, bool]]] | None = None
    for row in range(rows_n + 1):
        runs: list[tuple[int, int, bool]] = []
        if row < rows_n:
            for col in np.flatnonzero(shows[row]):
                kind = bool(opaque[row, col])
                x0, x1 = int(col) * block, min(width, (int(col) + 1) * block)
                if runs and runs[-1][1] == x0 and runs[-1][2] == kind:
                    runs[-1] = (runs[-1][0], x1, kind)
                else:
                    runs.append((x0, x1, kind))
        if band is not None and runs == band[1] and row < rows_n:
            continue  # same runs as the rows above: the rectangles grow downwards
        if band is not None:
            y0, y1 = band[0] * block, min(height, row * block)
            pieces += [(y0, y1, x0, x1, kind) for x0, x1, kind in band[1]]
        band = (row, runs)
    return pieces


class Layer:
    """A fixed RGBA overlay, split into the pieces that show something (see visible_pieces).

    A translucent piece keeps its colour premultiplied by alpha and its transparency (255 - alpha
    per channel), so drawing it is one multiply and one add on uint8: several times faster than
    cv2.blendLinear, and at most one level off where both terms round.
    """

    def __init__(self, rgba: np.ndarray, x: int, y: int, frame_size: tuple[int, int]):
        # Keep only what falls inside the frame (a shadow may reach past the edge).
        left, top = max(0, -x), max(0, -y)
        right = min(rgba.shape[1], frame_size[0] - x)
        bottom = min(rgba.shape[0], frame_size[1] - y)
        rgba = rgba[top : max(top, bottom), left : max(left, right)]
        x, y = x + left, y + top
        alpha = rgba[..., 3]
        self.pieces: list[tuple[int, int, np.ndarray, np.ndarray | None]] = []
        for y0, y1, x0, x1, opaque in visible_pieces(alpha.astype(np.float32) / 255.0):
            colour = np.ascontiguousarray(rgba[y0:y1, x0:x1, :3])
            if opaque:
                self.pieces.append((y + y0, x + x0, colour, None))
            else:
                weight = cv2.merge([alpha[y0:y1, x0:x1]] * 3)
                premultiplied = cv2.multiply(colour, weight, scale=1 / 255)
                self.pieces.append((y + y0, x + x0, premultiplied, 255 - weight))

    @classmethod
    def from_image(cls, image: Image.Image, x: int, y: int, frame_size: tuple[int, int]) -> Layer:
        return cls(np.asarray(image.convert("RGBA")), x, y, frame_size)

    def opaque_rects(self) -> list[Rect]:
        """Where the layer hides whatever is under it."""
        return [
            (left, top, left + colour.shape[1], top + colour.shape[0])
            for top, left, colour, transparency in self.pieces
            if transparency is None
        ]

    def hide(self, holes: list[Rect]) -> None:
        """Stop drawing the parts under ``holes``: opaque rectangles drawn over this layer."""
        pieces = []
        for top, left, colour, transparency in self.pieces:
            height, width = colour.shape[:2]
            for x0, y0, x1, y1 in subtract_rects((left, top, left + width, top + height), holes):
                rows, cols = slice(y0 - top, y1 - top), slice(x0 - left, x1 - left)
                kept = None
                if transparency is not None:
                    kept = np.ascontiguousarray(transparency[rows, cols])
                pieces.append((y0, x0, np.ascontiguousarray(colour[rows, cols]), kept))
        self.pieces = pieces

    def blend(self, frame: np.ndarray) -> None:
        """Draw the layer onto ``frame`` (uint8 RGB, in place)."""
        for top, left, colour, transparency in self.pieces:
            height, width = colour.shape[:2]
            region = frame[top : top + height, left : left + width]
            if transparency is None:
                region[...] = colour
            else:
                cv2.multiply(region, transparency, dst=region, scale=1 / 255)
                cv2.add(region, colour, dst=region)


class MaskedPaste:
    """Pastes same-sized images through a fixed soft-edged mask (the presenter panel)."""

    def __init__(self, mask: np.ndarray, x: int, y: int):
        self.x, self.y = x, y
        self.pieces = [
            (
                y0,
                y1,
                x0,
                x1,
                None
                if opaque
                else (
                    np.ascontiguousarray(mask[y0:y1, x0:x1]),
                    np.ascontiguousarray(1.0 - mask[y0:y1, x0:x1]),
                ),
            )
            for y0, y1, x0, x1, opaque in visible_pieces(mask)
        ]

    def opaque_rects(self) -> list[Rect]:
        """Where a paste hides whatever is under it."""
        return [
            (self.x + x0, self.y + y0, self.x + x1, self.y + y1)
            for y0, y1, x0, x1, weights in self.pieces
            if weights is None
        ]

    def paste(self, frame: np.ndarray, image: np.ndarray) -> None:
        for y0, y1, x0, x1, weights in self.pieces:
            region = frame[self.y + y0 : self.y + y1, self.x + x0 : self.x + x1]
            if weights is None:
                region[...] = image[y0:y1, x0:x1]
            else:
                region[...] = cv2.blendLinear(image[y0:y1, x0:x1], region, *weights)


def _canvas(width: int, height: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    return image, ImageDraw.Draw(image)


# ---------------------------------------------------------------------------------------------
# Layout


@dataclass(frozen=True)
class Layout:
    """Where everything goes, in output pixels, for one size and orientation."""

    width: int
    height: int
    orientation: str
    unit: float  # 1.0 at 720 px on the short side; sizes scale with it
    margin: int
    panel: tuple[int, int, int, int]  # presenter panel x, y, width, height
    strap: tuple[int, int, int, int]  # room for the lower third: left, top, right, bottom
    strap_lines: int  # lines of headline it may take
    strap_at_bottom: bool  # a short lower third sits at the bottom of its room (else the top)
    caption_centre_x: int
    caption_anchor_y: int  # landscape: bottom edge of the caption box; portrait: its centre
    caption_max_width: int

    @classmethod
    def create(
        cls, width: int, height: int, orientation: str, presenter_size: tuple[int, int]
    ) -> Layout:
        unit = min(width, height) / 720
        margin = round(32 * unit)
        aspect = presenter_size[1] / presenter_size[0]
        if orientation == "landscape":
            strap_room = round(112 * unit)  # two lines of headline
            caption_box = round(64 * unit)  # one caption line with its padding
            strap_bottom = height - margin - caption_box - round(14 * unit)
            strap_top = strap_bottom - strap_room
            panel_width = round(width * 0.3)
            panel_height = round(panel_width * aspect)
            room = strap_top - round(18 * unit) - margin
            if panel_height > room:
                panel_width, panel_height = round(room / aspect), room
            panel = (width - margin - panel_width, margin, panel_width, panel_height)
            return cls(
                width,
                height,
                orientation,
                unit,
                margin,
                panel,
                (margin, strap_top, width - margin, strap_bottom),
                2,
                True,
                width // 2,
                height - margin,
                width - 2 * margin,
            )
        panel_width = round(width * 0.66)
        panel_height = round(panel_width * aspect)
        room = round(height * 0.40)
        if panel_height > room:
            panel_width, panel_height = round(room / aspect), room
        panel_top = round(height * 0.41)
        panel = ((width - panel_width) // 2, panel_top, panel_width, panel_height)
        strap_top = panel_top + panel_height + round(24 * unit)
        strap_room = round(156 * unit)  # three lines of headline
        return cls(
            width,
            height,
            orientation,
            unit,
            margin,
            panel,
            (margin, strap_top, width - margin, strap_top + strap_room),
            3,
            False,
            width // 2,
            round(height * 0.30),
            width - 2 * margin,
        )

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)

    def px(self, value: float) -> int:
        return max(1, round(value * self.unit))


# ---------------------------------------------------------------------------------------------
# News images


@dataclass(frozen=True)
class ImageSegment:
    """One news image on screen from ``start`` to ``end`` (video seconds, fades included)."""

    image: int  # index into story images
    start: float
    end: float
    fade_in: float  # seconds of crossfade from the previous image at ``start``
    motion: int  # which Ken Burns move (direction of zoom and pan)


def image_segments(
    story: dict, transcript: dict, phonemes: dict, speech_offset: float, total: float
) -> list[ImageSegment]:
    """One image per paragraph, switching in the pause before each paragraph.

    Images are cycled when there are fewer images than paragraphs; a lone image stays up.
    """
    count = len(story["images"])
    paragraph_of_sentence = {s["index"]: s["paragraph"] for s in transcript["sentences"]}
    spans: dict[int, list[float]] = {}
    for word in phonemes["words"]:
        paragraph = paragraph_of_sentence[word["sentence"]]
        span = spans.setdefault(paragraph, [word["start"], word["end"]])
        span[0], span[1] = min(span[0], word["start"]), max(span[1], word["end"])
    paragraphs = sorted(spans)
    switches = []
    for previous, current in zip(paragraphs, paragraphs[1:], strict=False):
        if count == 1:
            break
        middle = (spans[previous][1] + spans[current][0]) / 2 + speech_offset
        switches.append(min(max(middle, 0.0), total))
    bounds = [0.0, *switches, total]
    segments = []
    for number in range(len(bounds) - 1):
        fade = 0.0
        if number:
            shortest = min(bounds[number] - bounds[number - 1], bounds[number + 1] - bounds[number])
            fade = max(0.0, min(IMAGE_FADE, shortest / 2))
        segments.append(
            ImageSegment(
                image=number % count,
                start=bounds[number] - fade / 2,
                end=bounds[number + 1],
                fade_in=fade,
                motion=number,
            )
        )
    # Each image keeps moving until the next one has fully faded in over it.
    return [
        ImageSegment(seg.image, seg.start, nxt.start + nxt.fade_in, seg.fade_in, seg.motion)
        for seg, nxt in zip(segments, segments[1:], strict=False)
    ] + segments[-1:]


class KenBurns:
    """Slow pan and zoom over news images, scaled once per image and warped per frame.

    The scaled images have four channels (RGB and an unused fourth): OpenCV warps four-channel
    images much faster than three-channel ones, and the warp is most of the per-frame work.
    """

    def __init__(self, story: dict, story_dir: Path, width: int, height: int):
        self.story, self.story_dir = story, story_dir
        self.width, self.height = width, height
        self._prepared: dict[int, np.ndarray] = {}

    def load(self, index: int) -> np.ndarray:
        """The image as RGBA uint8, scaled to cover the frame at the widest view of the move."""
        if index in self._prepared:
            return self._prepared[index]
        entry = self.story["images"][index]
        path = self.story_dir / entry["file"]
        try:
            with Image.open(path) as image:
                rgb = np.asarray(image.convert("RGB"))
        except (OSError, ValueError) as err:
            raise ComposeError(f"news image {path} cannot be read: {err}") from None
        scale = max(self.width / rgb.shape[1], self.height / rgb.shape[0]) * ZOOM_RANGE
        size = (math.ceil(rgb.shape[1] * scale), math.ceil(rgb.shape[0] * scale))
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        prepared = cv2.cvtColor(
            cv2.resize(rgb, size, interpolation=interpolation), cv2.COLOR_RGB2RGBA
        )
        # Keep only the images in use (at most two during a crossfade): flat memory.
        if len(self._prepared) >= 2:
            self._prepared.pop(next(iter(self._prepared)))
        self._prepared[index] = prepared
        return prepared

    def render(
        self, segment: ImageSegment, t: float, canvas: np.ndarray, regions: list[Rect]
    ) -> None:
        """Draw the image at time ``t`` into ``regions`` of ``canvas`` (RGBA, frame-sized)."""
        source = self.load(segment.image)
        progress = min(1.0, max(0.0, (t - segment.start) / max(1e-6, segment.end - segment.start)))
        zoom_in = segment.motion % 2 == 0
        zoom = 1.0 + (ZOOM_RANGE - 1.0) * (progress if zoom_in else 1.0 - progress)
        view_w = self.width * ZOOM_RANGE / zoom
        view_h = self.height * ZOOM_RANGE / zoom
        # Pan across the spare room, alternating direction from one image to the next.
        forward = (segment.motion // 2) % 2 == 0
        along = 0.2 + 0.6 * (progress if forward else 1.0 - progress)
        spare_x, spare_y = source.shape[1] - view_w, source.shape[0] - view_h
        across = 0.5
        if spare_x >= spare_y:
            left, top = spare_x * along, spare_y * across
        else:
            left, top = spare_x * across, spare_y * along
        scale = self.width / view_w
        for x0, y0, x1, y1 in regions:
            # The matrix maps image to frame; shifting it by the region's corner warps just the
            # region, with the same sub-pixel position as in a whole-frame warp.
            matrix = np.array([[scale, 0.0, -left * scale - x0], [0.0, scale, -top * scale - y0]])
            cv2.warpAffine(
                source,
                matrix,
                (x1 - x0, y1 - y0),
                dst=canvas[y0:y1, x0:x1],
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REFLECT,
            )

    def cover(self, index: int) -> np.ndarray:
        """The image centre-cropped to the frame (no motion), for the cards."""
        source = self.load(index)
        view_w, view_h = self.width * ZOOM_RANGE, self.height * ZOOM_RANGE
        left = (source.shape[1] - view_w) / 2
        top = (source.shape[0] - view_h) / 2
        scale = 1 / ZOOM_RANGE
        matrix = np.array([[scale, 0.0, -left * scale], [0.0, scale, -top * scale]])
        covered = cv2.warpAffine(source, matrix, (self.width, self.height), flags=cv2.INTER_LINEAR)
        return cv2.cvtColor(covered, cv2.COLOR_RGBA2RGB)


# ---------------------------------------------------------------------------------------------
# Scene


def _smoothstep(x: float) -> float:
    x = min(1.0, max(0.0, x))
    return x * x * (3 - 2 * x)


class Scene:
    """Builds every output frame of the video from prepared layers."""

    def __init__(
        self,
        *,
        story: dict,
        story_dir: Path,
        layout: Layout,
        presenter: PresenterFrames,
        cues: list[Cue],
        segments: list[ImageSegment],
        intro_end: float,
        speech_end: float,
        video_end: float,
    ):
        self.layout = layout
        self.presenter = presenter
        self.captions = CaptionTrack(cues)
        self.caption_layers = CaptionLayers(layout, cues)
        self.segments = segments
        self.intro_end, self.speech_end = intro_end, speech_end
        self.backgrounds = KenBurns(story, story_dir, layout.width, layout.height)
        x, y, w, h = layout.panel
        self.panel = MaskedPaste(rounded_mask((w, h), layout.px(18)), x, y)
        self.under, self.over = _chrome_layers(layout, story["title"])
        # The opaque parts of the presenter panel and the lower third hide the same pixels in
        # every frame: the background and the layers under them are drawn only elsewhere.
        hidden = self.panel.opaque_rects()
        hidden += [rect for layer in self.over for rect in layer.opaque_rects()]
        for layer in self.under:
            layer.hide(hidden)
        self.background_regions = subtract_rects((0, 0, layout.width, layout.height), hidden)
        # RGBA scratch frames for the warped news images (see KenBurns), reused every frame.
        self._warped = np.empty((layout.height, layout.width, 4), np.uint8)
        self._warped_previous = np.empty_like(self._warped)
        # The cards crossfade with the report; a short card is all crossfade.
        self.intro_fade = min(CARD_FADE, intro_end)
        self.outro_fade = min(CARD_FADE, video_end - speech_end)
        self.intro = self.outro = None
        if self.intro_fade > 0:
            background = self.backgrounds.cover(segments[0].image)
            self.intro = _card(layout, background, _intro_text(layout, story["title"]))
        if self.outro_fade > 0:
            background = self.backgrounds.cover(segments[-1].image)
            self.outro = _card(
                layout, background, _outro_text(layout, story["title"], story["images"])
            )

    def frame(self, t: float) -> np.ndarray:
        """The composed RGB frame at video time ``t``."""
        if self.intro is not None and t < self.intro_end - self.intro_fade:
            return self.intro
        if self.outro is not None and t >= self.speech_end + self.outro_fade:
            return self.outro
        frame = self._main(t)
        if self.intro is not None and t < self.intro_end:
            weight = _smoothstep((self.intro_end - t) / self.intro_fade)
            frame = cv2.addWeighted(self.intro, weight, frame, 1.0 - weight, 0.0)
        elif self.outro is not None and t >= self.speech_end:
            weight = _smoothstep((t - self.speech_end) / self.outro_fade)
            frame = cv2.addWeighted(self.outro, weight, frame, 1.0 - weight, 0.0)
        return frame

    def _main(self, t: float) -> np.ndarray:
        # Every pixel gets drawn: the background regions and the opaque pieces of the panel and
        # the lower third tile the frame.
        frame = np.empty((self.layout.height, self.layout.width, 3), np.uint8)
        self._draw_background(frame, t)
        for layer in self.under:
            layer.blend(frame)
        _, _, w, h = self.layout.panel
        self.panel.paste(frame, self.presenter.at(t - self.intro_end, (w, h)))
        for layer in self.over:
            layer.blend(frame)
        shown = self.captions.at(t - self.intro_end)
        if shown.cue is not None:
            self.caption_layers.get(shown.cue, shown.word).blend(frame)
        return frame

    def _draw_background(self, frame: np.ndarray, t: float) -> None:
        """Draw the news images into ``frame`` where the panel and the lower third let them show."""
        current = 0
        while current + 1 < len(self.segments) and t >= self.segments[current + 1].start:
            current += 1
        segment = self.segments[current]
        regions = self.background_regions
        self.backgrounds.render(segment, t, self._warped, regions)
        fading = current and t < segment.start + segment.fade_in
        if fading:
            self.backgrounds.render(self.segments[current - 1], t, self._warped_previous, regions)
            weight = _smoothstep((t - segment.start) / segment.fade_in)
        for x0, y0, x1, y1 in regions:
            warped = self._warped[y0:y1, x0:x1]
            if fading:
                cv2.addWeighted(
                    warped,
                    weight,
                    self._warped_previous[y0:y1, x0:x1],
                    1.0 - weight,
                    0.0,
                    dst=warped,
                )
            cv2.cvtColor(warped, cv2.COLOR_RGBA2RGB, dst=frame[y0:y1, x0:x1])


def _chrome_layers(layout: Layout, title: str) -> tuple[list[Layer], list[Layer]]:
    """Static layers under the presenter (panel shadow) and over it (border, label, strap)."""
    px = layout.px
    x, y, w, h = layout.panel
    radius = px(18)

    pad = px(40)
    shadow, draw = _canvas(w + 2 * pad, h + 2 * pad)
    draw.rounded_rectangle((pad, pad + px(6), pad + w, pad + h + px(6)), radius, (0, 0, 0, 150))
    shadow = shadow.filter(ImageFilter.GaussianBlur(px(12)))
    under = [Layer.from_image(shadow, x - pad, y - pad, layout.size)]

    border, draw = _canvas(w, h)
    draw.rounded_rectangle((0, 0, w - 1, h - 1), radius, outline=(255, 255, 255, 190), width=px(3))
    over = [Layer.from_image(border, x, y, layout.size)]

    label_font = font(px(15), bold=True)
    text_w = label_font.getlength(DISCLOSURE_LABEL)
    label_h = px(28)
    label_w = round(text_w) + 2 * px(12)
    label, draw = _canvas(label_w, label_h)
    draw.rounded_rectangle((0, 0, label_w - 1, label_h - 1), px(6), (*ACCENT, 235))
    draw.text((label_w / 2, label_h / 2), DISCLOSURE_LABEL, font=label_font, fill=TEXT, anchor="mm")
    over.append(Layer.from_image(label, x + px(12), y + h - label_h - px(12), layout.size))

    over.append(_strap_layer(layout, title))
    return under, over


def _strap_layer(layout: Layout, title: str) -> Layer:
    """The lower third: the headline on a dark bar with an accent edge."""
    px = layout.px
    left, top, right, bottom = layout.strap
    accent_w = px(10)
    pad_x, pad_y = px(22), px(14)
    max_text = right - left - accent_w - 2 * pad_x
    size = px(34)
    while True:  # shrink the type until the headline fits in its room, width and height
        typeface, lines = fit_text(
            title, size=size, min_size=px(18), max_width=max_text, max_lines=layout.strap_lines
        )
        step = line_height(typeface)
        height = max(px(64), len(lines) * step + 2 * pad_y)
        if height <= bottom - top or typeface.size <= px(18):
            break
        size = typeface.size - 1
    height = min(height, bottom - top)
    strap, draw = _canvas(right - left, height)
    draw.rectangle((0, 0, right - left, height), STRAP_FILL)
    draw.rectangle((0, 0, accent_w - 1, height), (*ACCENT, 255))
    text_top = (height - len(lines) * step) / 2
    for number, line in enumerate(lines):
        draw.text(
            (accent_w + pad_x, text_top + (number + 0.5) * step),
            line,
            font=typeface,
            fill=TEXT,
            anchor="lm",
        )
    y = bottom - height if layout.strap_at_bottom else top
    return Layer.from_image(strap, left, y, layout.size)


@dataclass(frozen=True)
class _CaptionPlan:
    """How one cue is set: its font and its lines, each a (start, end) span of the cue text."""

    typeface: ImageFont.FreeTypeFont
    lines: list[tuple[int, int]]


class CaptionLayers:
    """Burned-in caption images, one per (cue, highlighted word), made when first needed.

    Only the current cue's images are kept: a cue is on screen for a few seconds and is not
    shown again, so memory stays flat however long the story.
    """

    def __init__(self, layout: Layout, cues: list[Cue]):
        self.layout = layout
        self.cues = cues
        self._cue: int | None = None
        self._plan: _CaptionPlan | None = None
        self._layers: dict[int | None, Layer] = {}

    def get(self, cue: int, word: int | None) -> Layer:
        if cue != self._cue:
            self._cue, self._layers = cue, {}
            self._plan = self._set(self.cues[cue])
        if word not in self._layers:
            self._layers[word] = self._render(self.cues[cue], self._plan, word)
        return self._layers[word]

    def _set(self, cue: Cue) -> _CaptionPlan:
        """One line if it fits, else two lines of balanced width; smaller type if need be."""
        px = self.layout.px
        max_width = self.layout.caption_max_width - 2 * px(20)
        end = len(cue.text)
        # A line may break only at a space before a word ("well-known" stays whole).
        cuts = [w.char_start for w in cue.words[1:] if cue.text[w.char_start - 1] == " "]
        options = [[(0, end)]] + [[(0, cut - 1), (cut, end)] for cut in cuts]
        size = px(38) if self.layout.orientation == "landscape" else px(44)
        while True:
            typeface = font(size, bold=True)

            def widest(lines: list[tuple[int, int]], typeface=typeface) -> float:
                return max(typeface.getlength(cue.text[a:b]) for a, b in lines)

            fitting = [lines for lines in options if widest(lines) <= max_width]
            if fitting or size <= px(20):
                best = min(fitting or options, key=lambda lines: (len(lines), widest(lines)))
                return _CaptionPlan(typeface, best)
            size = int(size * 0.9)

    def _render(self, cue: Cue, plan: _CaptionPlan, highlighted: int | None) -> Layer:
        px = self.layout.px
        typeface = plan.typeface
        step = line_height(typeface)
        ascent, descent = typeface.getmetrics()
        pad_x, pad_y = px(20), px(10)
        widths = [typeface.getlength(cue.text[a:b]) for a, b in plan.lines]
        box_w = round(max(widths)) + 2 * pad_x
        box_h = len(plan.lines) * step + 2 * pad_y
        image, draw = _canvas(box_w, box_h)
        draw.rounded_rectangle((0, 0, box_w - 1, box_h - 1), px(12), CAPTION_FILL)
        word = cue.words[highlighted] if highlighted is not None else None
        for row, ((start, end), row_w) in enumerate(zip(plan.lines, widths, strict=True)):
            left = (box_w - row_w) / 2
            middle = pad_y + (row + 0.5) * step
            baseline = middle + (ascent - descent) / 2
            draw.text((left, baseline), cue.text[start:end], font=typeface, fill=TEXT, anchor="ls")
            if word is not None and start <= word.char_start < end:
                # The highlighted word is drawn again over a marker, at the place the whole
                # line put it (measured from the line start, so kerning matches).
                x = left + typeface.getlength(cue.text[start : word.char_start])
                grow = px(5)
                draw.rounded_rectangle(
                    (
                        x - grow,
                        middle - step / 2 + px(3),
                        x + typeface.getlength(word.text) + grow,
                        middle + step / 2 - px(3),
                    ),
                    px(7),
                    (*HIGHLIGHT, 255),
                )
                draw.text((x, baseline), word.text, font=typeface, fill=DARK_TEXT, anchor="ls")
        layout = self.layout
        x = layout.caption_centre_x - box_w // 2
        if layout.orientation == "landscape":
            y = layout.caption_anchor_y - box_h  # bottom-anchored: a second line grows upwards
        else:
            y = layout.caption_anchor_y - box_h // 2
        return Layer.from_image(image, x, y, layout.size)


# ---------------------------------------------------------------------------------------------
# Intro and outro cards


def _card(layout: Layout, background: np.ndarray, text: Image.Image) -> np.ndarray:
    """A blurred, darkened news image with ``text`` (RGBA, frame-sized) on top."""
    small = cv2.resize(
        background,
        (max(1, layout.width // 8), max(1, layout.height // 8)),
        interpolation=cv2.INTER_AREA,
    )
    small = cv2.GaussianBlur(small, (0, 0), 3)
    blurred = cv2.resize(small, (layout.width, layout.height), interpolation=cv2.INTER_CUBIC)
    base = Image.fromarray((blurred * 0.42).astype(np.uint8)).convert("RGBA")
    base.alpha_composite(text)
    return np.ascontiguousarray(np.asarray(base.convert("RGB")))


@dataclass(frozen=True)
class _TextBlock:
    lines: list[str]
    typeface: ImageFont.FreeTypeFont
    colour: tuple[int, int, int, int]
    space_after: int = 0
    rule_after: bool = False  # an accent rule in the space after the block


def _centred_blocks(layout: Layout, blocks: list[_TextBlock]) -> Image.Image:
    """Blocks of centred lines, stacked and centred vertically on a transparent frame."""
    image, draw = _canvas(layout.width, layout.height)
    heights = [len(b.lines) * line_height(b.typeface) + b.space_after for b in blocks]
    y = (layout.height - sum(heights)) / 2
    centre = layout.width / 2
    for block, block_h in zip(blocks, heights, strict=True):
        step = line_height(block.typeface)
        for number, line in enumerate(block.lines):
            draw.text(
                (centre, y + (number + 0.5) * step),
                line,
                font=block.typeface,
                fill=block.colour,
                anchor="mm",
            )
        y += block_h
        if block.rule_after:
            half_w, half_h = layout.px(45), layout.px(3)
            rule_y = y - block.space_after / 2
            draw.rectangle(
                (centre - half_w, rule_y - half_h, centre + half_w, rule_y + half_h), (*ACCENT, 255)
            )
    return image


def _intro_text(layout: Layout, title: str) -> Image.Image:
    px = layout.px
    width = layout.width - 4 * layout.margin
    headline_font, headline = fit_text(
        title, size=px(60), min_size=px(34), max_width=width, max_lines=4
    )
    note_font = font(px(22))
    note, _ = wrap_text("Read by a synthetic presenter", note_font, width, 2)
    return _centred_blocks(
        layout,
        [
            _TextBlock(headline, headline_font, TEXT, px(44), rule_after=True),
            _TextBlock(note, note_font, (225, 225, 225, 255)),
        ],
    )


def _outro_text(layout: Layout, title: str, images: list[dict]) -> Image.Image:
    px = layout.px
    width = layout.width - 4 * layout.margin
    credits = [(image.get("credit") or "").strip() for image in images]
    credits = list(dict.fromkeys(credit for credit in credits if credit))  # unique, in order
    credit_text = " \u00b7 ".join(credits) if credits else "Images supplied with the story"
    credit_font, credit_lines = fit_text(
        credit_text, size=px(26), min_size=px(16), max_width=width, max_lines=6, bold=False
    )
    title_font, title_lines = fit_text(
        title, size=px(26), min_size=px(18), max_width=width, max_lines=2, bold=False
    )
    disclosure_font = font(px(22))
    disclosure, _ = wrap_text(DISCLOSURE_TEXT, disclosure_font, width, 3)
    return _centred_blocks(
        layout,
        [
            _TextBlock(title_lines, title_font, (200, 200, 200, 255), px(36)),
            _TextBlock(["IMAGE CREDITS"], font(px(24), bold=True), (*HIGHLIGHT, 255), px(8)),
            _TextBlock(credit_lines, credit_font, TEXT, px(36)),
            _TextBlock(disclosure, disclosure_font, (225, 225, 225, 255)),
        ],
    )
