"""Audio helpers for joining synthesised sentences: trimming, fades, resampling, PCM."""

from __future__ import annotations

import numpy as np

# Speech is where the short-time level comes within this much of the sentence's loudest
# stretch. Weak fricatives at word edges ("f", "th") sit some 30-40 dB under the vowels; the
# synthesisers' silence is far quieter still.
SPEECH_THRESHOLD_DB = -45.0
# Absolute floor, so that a silent or near-silent sentence is not all "speech".
SPEECH_FLOOR = 1e-4
LEVEL_WINDOW_S = 0.010
# A fade this short is inaudible but stops a click where a sentence is cut from its silence.
EDGE_FADE_S = 0.005


def speech_bounds(audio: np.ndarray, sample_rate: int) -> tuple[int, int]:
    """First and one-past-last sample of the audible speech in ``audio``.

    The level is the RMS over a short window centred on each sample, so leading and trailing
    silence are cut consistently for every sentence. Returns (0, 0) when nothing is audible.
    """
    if len(audio) == 0:
        return 0, 0
    window = max(1, min(len(audio), round(LEVEL_WINDOW_S * sample_rate)))
    energy = np.concatenate(([0.0], np.cumsum(np.square(audio, dtype=np.float64))))
    window_rms = np.sqrt((energy[window:] - energy[:-window]) / window)
    threshold = max(window_rms.max() * 10 ** (SPEECH_THRESHOLD_DB / 20), SPEECH_FLOOR)
    loud = np.flatnonzero(window_rms > threshold)
    if len(loud) == 0:
        return 0, 0
    half = window // 2
    return int(loud[0]) + half, min(len(audio), int(loud[-1]) + half + 1)


def fade_edges(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """A copy of ``audio`` with a short linear fade in and out."""
    faded = np.array(audio, dtype=np.float32)
    length = min(len(faded) // 2, round(EDGE_FADE_S * sample_rate))
    if length > 0:
        ramp = np.linspace(0.0, 1.0, length, endpoint=False, dtype=np.float32)
        faded[:length] *= ramp
        faded[-length:] *= ramp[::-1]
    return faded


def silence(seconds: float, sample_rate: int) -> np.ndarray:
    return np.zeros(round(seconds * sample_rate), dtype=np.float32)


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Band-limited resampling by zero-padding or truncating the spectrum.

    Treating the signal as periodic is harmless here: a synthesised sentence starts and ends in
    silence, so there is no edge discontinuity to wrap around.
    """
    if from_rate == to_rate or len(audio) == 0:
        return np.asarray(audio, dtype=np.float32)
    output_length = max(1, round(len(audio) * to_rate / from_rate))
    spectrum = np.fft.rfft(audio)
    resized = np.zeros(output_length // 2 + 1, dtype=spectrum.dtype)
    kept_bins = min(len(resized), len(spectrum))
    resized[:kept_bins] = spectrum[:kept_bins]
    resampled = np.fft.irfft(resized, output_length) * (output_length / len(audio))
    return resampled.astype(np.float32)


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] as 16-bit PCM."""
    return np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
