"""The one rule that maps speech time to video frames, shared by every step that counts frames."""

from __future__ import annotations

import math
from pathlib import Path

import soundfile


def frame_count(seconds: float, fps: float) -> int:
    """Frames needed to show ``seconds`` at ``fps``: frame k shows time k / fps.

    round() first: 10 s at 30 fps is 300 frames, not ceil(300.00000000000006).
    """
    return math.ceil(round(seconds * fps, 6))


def speech_seconds(wav: str | Path) -> float:
    """The exact length of speech.wav (phonemes.json rounds it to milliseconds)."""
    return soundfile.info(str(wav)).duration
