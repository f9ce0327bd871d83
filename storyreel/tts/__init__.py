"""Speech synthesis: transcript.json -> speech.wav + speech.json (see docs/formats.md).

Each sentence is synthesised on its own, its leading and trailing silence cut, and the
sentences joined with pauses (longer between paragraphs) after a short lead-in. speech.json
records where each sentence's speech lies in the wav and, for every transcript word, the
synthesiser's own pronunciation (ARPAbet) and, where the backend reports it, its timing.

Backends (config key ``tts.backend``):

- ``piper``: Piper neural TTS with the embedded en_US-joe-medium voice; word timings from the
  model's phoneme durations.
- ``espeak``: espeak-ng's C API; word timings from its word and phoneme events.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from storyreel.tts.audio import fade_edges, resample, silence, speech_bounds, to_pcm16
from storyreel.tts.spoken import Backend
from storyreel.tts.words import WordSpeech, speak_words

SAMPLE_RATE = 22050
DEFAULT_BACKEND = "piper"
BACKEND_NAMES = ("piper", "espeak")

_loaded_backends: dict[tuple[str, str | None], Backend] = {}


def load_backend(
    backend: str, voice: str | None = None, log: Callable[[str], object] = print
) -> Backend:
    """The backend for config keys ``tts.backend`` / ``tts.voice`` (None: the backend's
    default voice), loaded once per process and voice."""
    key = (backend, voice)
    if key not in _loaded_backends:
        if backend == "piper":
            from storyreel.tts.piper_backend import PiperBackend

            _loaded_backends[key] = PiperBackend(voice, log)
        elif backend == "espeak":
            from storyreel.tts.espeak_backend import EspeakBackend

            _loaded_backends[key] = EspeakBackend(voice, log)
        else:
            raise ValueError(
                f"tts.backend: unknown backend {backend!r}; choose one of "
                + ", ".join(repr(name) for name in BACKEND_NAMES)
            )
    return _loaded_backends[key]


def synthesise(
    transcript: Mapping[str, Any],
    backend: str,
    out_wav: Path,
    out_json: Path,
    *,
    voice: str | None = None,
    length_scale: float = 1.0,
    sentence_pause: float,
    paragraph_pause: float,
    lead_in: float,
    log: Callable[[str], object] = print,
) -> dict:
    """Synthesise ``transcript`` (transcript.json) into ``out_wav`` and ``out_json``.

    ``length_scale`` > 1 speaks more slowly. Pauses and the lead-in are in seconds; the wav
    also ends with ``lead_in`` seconds of silence, so the last word is not cut off short.
    Returns the speech.json content.
    """
    if length_scale <= 0:
        raise ValueError(f"tts.length_scale must be positive, not {length_scale}")
    for name, seconds in [
        ("sentence_pause", sentence_pause),
        ("paragraph_pause", paragraph_pause),
        ("lead_in", lead_in),
    ]:
        if seconds < 0:
            raise ValueError(f"tts.{name} must not be negative, not {seconds}")

    synthesiser = load_backend(backend, voice, log)
    sentences = transcript["sentences"]
    pieces = [silence(lead_in, SAMPLE_RATE)]
    position = len(pieces[0])  # samples written so far
    sentence_entries = []
    started = time.perf_counter()
    for number, sentence in enumerate(sentences):
        if number > 0:
            new_paragraph = sentence["paragraph"] != sentences[number - 1]["paragraph"]
            pause = silence(paragraph_pause if new_paragraph else sentence_pause, SAMPLE_RATE)
            pieces.append(pause)
            position += len(pause)

        sentence_started = time.perf_counter()
        speech, words = _speak_sentence(synthesiser, sentence, length_scale)
        pieces.append(speech.audio)
        sentence_entries.append(
            {
                "index": sentence["index"],
                "start": _seconds(position),
                "end": _seconds(position + len(speech.audio)),
                "words": [_word_entry(word, speech, position) for word in words],
            }
        )
        position += len(speech.audio)
        log(
            f"tts: sentence {number + 1}/{len(sentences)}: {len(speech.audio) / SAMPLE_RATE:.2f} s"
            f" of speech in {time.perf_counter() - sentence_started:.2f} s"
        )
    pieces.append(silence(lead_in, SAMPLE_RATE))

    audio = np.concatenate(pieces)
    duration = len(audio) / SAMPLE_RATE
    elapsed = time.perf_counter() - started
    log(
        f"tts: {synthesiser.name} ({synthesiser.voice}): {duration:.2f} s of audio in "
        f"{elapsed:.2f} s (real-time factor {elapsed / max(duration, 1e-9):.3f})"
    )

    speech_json = {
        "backend": synthesiser.name,
        "voice": synthesiser.voice,
        "sample_rate": SAMPLE_RATE,
        "duration": round(duration, 3),
        "sentences": sentence_entries,
    }
    out_wav, out_json = Path(out_wav), Path(out_json)
    out_wav.parent.mkdir(parents=True, exist_ok=True)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(out_wav, to_pcm16(audio), SAMPLE_RATE, subtype="PCM_16")
    out_json.write_text(json.dumps(speech_json, indent=2, ensure_ascii=False) + "\n")
    return speech_json


class _TrimmedSpeech:
    """A sentence's speech after trimming, and how to map the synthesiser's samples onto it."""

    def __init__(self, audio: np.ndarray, scale: float, cut_start: int) -> None:
        self.audio = audio
        self.scale = scale  # output samples per synthesiser sample
        self.cut_start = cut_start  # first kept sample, in output samples

    def to_kept(self, synth_sample: int) -> int:
        """A synthesiser sample as an offset into the kept audio, clamped to it."""
        kept = round(synth_sample * self.scale) - self.cut_start
        return max(0, min(len(self.audio), kept))


def _speak_sentence(
    synthesiser: Backend, sentence: Mapping[str, Any], length_scale: float
) -> tuple[_TrimmedSpeech, list[WordSpeech]]:
    spoken = synthesiser.speak(sentence["text"], length_scale)
    audio = resample(spoken.audio, spoken.sample_rate, SAMPLE_RATE)
    cut_start, cut_end = speech_bounds(audio, SAMPLE_RATE)
    speech = _TrimmedSpeech(
        fade_edges(audio[cut_start:cut_end], SAMPLE_RATE),
        SAMPLE_RATE / spoken.sample_rate,
        cut_start,
    )

    sentence_offset = sentence["start_offset"]
    transcript_words = sentence["words"]
    words = speak_words(
        [word["word"] for word in transcript_words],
        [
            (word["start_offset"] - sentence_offset, word["end_offset"] - sentence_offset)
            for word in transcript_words
        ],
        spoken.segments,
        synthesiser.phonemize_word,
    )
    return speech, words


def _word_entry(word: WordSpeech, speech: _TrimmedSpeech, sentence_position: int) -> dict:
    start = end = None
    if word.start is not None and word.end is not None:
        kept_start, kept_end = speech.to_kept(word.start), speech.to_kept(word.end)
        # A word wholly inside the trimmed silence has no audible time to give.
        if kept_end > kept_start:
            start = _seconds(sentence_position + kept_start)
            end = _seconds(sentence_position + kept_end)
    return {"word": word.word, "start": start, "end": end, "phones": word.phones}


def _seconds(samples: int) -> float:
    return round(samples / SAMPLE_RATE, 3)
