"""Reading a composed video back with the real ffmpeg: streams, audio, frames, MP4 boxes."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import imageio_ffmpeg
import numpy as np

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
AUDIO_RATE = 48_000


def probe_streams(path: Path) -> list[dict]:
    """Codec, pixel format, size and frame rate of each stream, from `ffmpeg -i`'s listing."""
    listing = subprocess.run(
        [FFMPEG, "-hide_banner", "-i", str(path)], capture_output=True, text=True
    ).stderr
    streams = []
    for match in re.finditer(r"Stream #\d+:\d+\S*: (Video|Audio): (\w+)(.*)", listing):
        kind, codec, rest = match.groups()
        stream = {"kind": kind.lower(), "codec": codec}
        if kind == "Video":
            stream["pix_fmt"] = re.search(r", (yuv\w+|rgb\w+|gray\w*)", rest).group(1)
            width, height = re.search(r", (\d+)x(\d+)", rest).groups()
            stream["size"] = (int(width), int(height))
            stream["fps"] = float(re.search(r", ([\d.]+) fps", rest).group(1))
        else:
            stream["rate"] = int(re.search(r", (\d+) Hz", rest).group(1))
        streams.append(stream)
    return streams


def decoded_audio(path: Path) -> np.ndarray:
    raw = subprocess.run(
        [
            FFMPEG,
            "-v",
            "error",
            "-i",
            str(path),
            "-map",
            "0:a",
            "-f",
            "s16le",
            "-ac",
            "1",
            "-ar",
            str(AUDIO_RATE),
            "-",
        ],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, np.int16).astype(np.float32) / 32768


def iter_frames(path: Path) -> Iterator[np.ndarray]:
    """The video's frames as RGB arrays, one at a time."""
    reader = imageio_ffmpeg.read_frames(str(path))
    width, height = next(reader)["size"]
    for frame in reader:
        yield np.frombuffer(frame, np.uint8).reshape(height, width, 3)


def decoded_frames(path: Path) -> np.ndarray:
    return np.stack(list(iter_frames(path)))


def top_level_boxes(path: Path) -> list[str]:
    """The MP4's top-level box types in file order."""
    boxes = []
    with open(path, "rb") as file:
        size_total = path.stat().st_size
        position = 0
        while position < size_total:
            file.seek(position)
            header = file.read(16)
            size, kind = int.from_bytes(header[:4], "big"), header[4:8].decode("latin-1")
            if size == 1:
                size = int.from_bytes(header[8:16], "big")
            elif size == 0:
                size = size_total - position
            boxes.append(kind)
            position += size
    return boxes
