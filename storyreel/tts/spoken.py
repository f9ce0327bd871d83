"""What a synthesiser backend hands back for one sentence."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class SpokenSegment:
    """A run of phonemes the synthesiser spoke as one word.

    espeak-ng's word segmentation is not the transcript's: it joins some words ("of the" is one
    run of phonemes, "ʌvðə"; so is "well-known") and may split others ("videoconference").
    Mapping segments to transcript words is done later (:mod:`storyreel.tts.words`).
    """

    ipa: str
    """The phonemes as IPA, stress marks included, one codepoint per entry of starts/ends."""

    starts: list[int] | None = None
    """Sample (in the sentence audio) where each codepoint of ``ipa`` starts; None if the
    backend has no timings."""

    ends: list[int] | None = None
    """Sample where each codepoint of ``ipa`` ends (exclusive)."""

    text_position: int | None = None
    """Character offset of the word in the sentence text, when the backend reports it."""

    text_length: int | None = None
    """Length in characters of the text the backend read as this word, when reported."""

    @property
    def timed(self) -> bool:
        return self.starts is not None and self.ends is not None


@dataclass
class SpokenSentence:
    """One synthesised sentence: its audio and the synthesiser's own word segments."""

    audio: np.ndarray
    """Mono float32 samples in [-1, 1]."""

    sample_rate: int
    segments: list[SpokenSegment]


class Backend(Protocol):
    """A speech synthesiser. One instance is made per process and voice, and reused."""

    name: str
    """The value of config key ``tts.backend``."""

    voice: str
    """The voice's name as written into speech.json."""

    def speak(self, text: str, length_scale: float) -> SpokenSentence:
        """Synthesise one sentence. ``length_scale`` > 1 speaks more slowly."""
        ...

    def phonemize_word(self, word: str) -> str:
        """The IPA the synthesiser would speak for ``word`` on its own, stress marks included."""
        ...
