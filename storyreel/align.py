"""Forced alignment of ``speech.wav`` against the transcript, written in gentle's format.

The embedded aligner is pocketsphinx 5 (its en-us acoustic model and CMUdict ship in the
wheel). It aligns one sentence at a time inside the sentence's span from ``speech.json``:
when a sentence's text and audio disagree (an unspoken extra word usually makes
pocketsphinx reject the whole utterance), only that sentence is lost. Each sentence takes
two passes: a word-level pass over the sentence's word graph, then a phone-level pass
(``set_alignment``) that yields the phone durations.

``align`` is a plain function of (wav, transcript, speech). ``align_with_backend`` picks the
aligner named by ``align.backend`` in config.yaml: this one, or a gentle server
(``storyreel.gentle``), which produces the same dict.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass

import numpy as np
import soundfile

from storyreel import g2p
from storyreel.g2p import plain_phones

log = logging.getLogger(__name__)

SPHINX_SAMPLE_RATE = 16_000
SPHINX_FRAME_SECONDS = 0.01  # pocketsphinx's default frame rate is 100 frames/s
SPAN_PADDING_SECONDS = 0.15  # context around a sentence so its first/last phones can settle
# Each phone of pocketsphinx's en-us model is a 3-state HMM that spends at least one frame per
# state. A transcript word that was never spoken can be forced through at or near that floor
# instead of failing the sentence. On clean speech only two-phone function words ("the") end
# up entirely at the floor, so a word of three or more phones all at the floor is taken as a
# mismatch. The check is cheap and safe, and catches some unspoken words, not all.
MIN_PHONE_FRAMES = 3
SQUEEZED_WORD_MIN_PHONES = 3

# The en-us model's filler "word" for speech it has no words for (phone +SPN+).
SPEECH_FILLER = "[SPEECH]"

NOT_FOUND = "not-found-in-audio"
SUCCESS = "success"

# pocketsphinx names alternative pronunciations "word(2)", "word(3)", ...
_VARIANT_SUFFIX = re.compile(r"\(\d+\)$")


class SentenceAlignmentError(RuntimeError):
    """pocketsphinx could not align a sentence's words to its audio."""


@dataclass
class AlignedWord:
    """One word as aligned: absolute start in the wav and its phones (name, seconds)."""

    start: float
    end: float
    phones: list[tuple[str, float]]


BACKENDS = ("pocketsphinx", "gentle")


def align_with_backend(
    wav_path: str | os.PathLike, transcript: dict, speech: dict, settings: dict
) -> dict:
    """The ``alignment.json`` dict from the aligner ``settings["backend"]`` names.

    ``settings`` is config.yaml's ``align`` section.
    """
    backend = settings.get("backend", "pocketsphinx")
    if backend == "pocketsphinx":
        return align(
            wav_path,
            transcript,
            speech,
            padding=settings.get("sentence_padding", SPAN_PADDING_SECONDS),
        )
    if backend == "gentle":
        from storyreel import gentle

        # gentle aligns the whole recording at once; it needs no sentence spans.
        return gentle.align(
            wav_path, transcript, gentle.GentleSettings.from_config(settings.get("gentle"))
        )
    raise ValueError(f"align.backend {backend!r} is not one of {', '.join(BACKENDS)}")


def align(
    wav_path: str | os.PathLike,
    transcript: dict,
    speech: dict,
    *,
    padding: float = SPAN_PADDING_SECONDS,
) -> dict:
    """Align ``speech.wav`` to ``transcript.json``; returns the ``alignment.json`` dict.

    Every transcript word gets one entry, in order: ``case: "success"`` with times and
    phones, or ``case: "not-found-in-audio"`` when its sentence failed to align or no
    pronunciation for it was available (from pocketsphinx's dictionary, the synthesiser's
    own phones in ``speech.json``, or g2p_en). ``padding`` (seconds) widens each
    sentence's span, never into a neighbouring sentence.
    """
    audio, sample_rate = soundfile.read(str(wav_path), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    wav_duration = len(audio) / sample_rate

    started = time.perf_counter()
    sentences = transcript["sentences"]
    spoken_sentences = {sentence["index"]: sentence for sentence in speech["sentences"]}
    decoder = _new_decoder()

    words_out: list[dict] = []
    for position, sentence in enumerate(sentences):
        if not sentence["words"]:  # punctuation or symbols only: nothing to align
            continue
        spoken = spoken_sentences.get(sentence["index"])
        try:
            if spoken is None:
                raise SentenceAlignmentError("speech.json has no span for it")
            start, end = _padded_span(position, sentences, spoken_sentences, wav_duration, padding)
            segment = audio[round(start * sample_rate) : round(end * sample_rate)]
            aligned = _align_sentence(
                decoder,
                _to_sphinx_pcm(segment, sample_rate),
                start,
                sentence["words"],
                spoken.get("words") or [],
            )
        except RuntimeError as error:  # SentenceAlignmentError or pocketsphinx's own
            log.warning(
                "sentence %d could not be aligned (%s); its words are marked %s: %r",
                sentence["index"],
                error,
                NOT_FOUND,
                sentence["text"],
            )
            aligned = [None] * len(sentence["words"])
        words_out.extend(
            _gentle_word(word, aligned_word)
            for word, aligned_word in zip(sentence["words"], aligned, strict=True)
        )

    elapsed = time.perf_counter() - started
    log.info(
        "aligned %d/%d words of %.1f s audio in %.2f s (%.3f x real time)",
        sum(word["case"] == SUCCESS for word in words_out),
        len(words_out),
        wav_duration,
        elapsed,
        elapsed / wav_duration if wav_duration else 0.0,
    )
    return {"transcript": transcript["text"], "words": words_out}


def _new_decoder():
    from pocketsphinx import Decoder

    # lm=None: no language model, the word graph comes from set_align_text.
    # bestpath=False: with the lattice pass on, the phone pass fails ("Alignment failed").
    # cmn="batch": each sentence is decoded whole, so its own cepstral mean is available;
    # live CMN would make a sentence's result depend on the sentences aligned before it.
    return Decoder(
        samprate=SPHINX_SAMPLE_RATE, lm=None, bestpath=False, cmn="batch", loglevel="ERROR"
    )


def _padded_span(
    position: int,
    sentences: list[dict],
    spoken_sentences: dict[int, dict],
    duration: float,
    padding: float,
) -> tuple[float, float]:
    """The sentence's span widened by the padding, but never into a neighbour's speech."""
    spoken = spoken_sentences[sentences[position]["index"]]
    start = max(0.0, spoken["start"] - padding)
    end = min(duration, spoken["end"] + padding)
    if position > 0 and (previous := spoken_sentences.get(sentences[position - 1]["index"])):
        start = max(start, min(previous["end"], spoken["start"]))
    if position + 1 < len(sentences) and (
        following := spoken_sentences.get(sentences[position + 1]["index"])
    ):
        end = min(end, max(following["start"], spoken["end"]))
    if end <= start:
        raise SentenceAlignmentError(f"empty span {start:.3f}-{end:.3f} s")
    return start, end


def _to_sphinx_pcm(segment: np.ndarray, sample_rate: int) -> bytes:
    """16 kHz 16-bit PCM bytes, as pocketsphinx's acoustic model expects."""
    samples = segment.astype(np.float64)
    if sample_rate != SPHINX_SAMPLE_RATE and len(samples):
        samples = _resample(samples, sample_rate, SPHINX_SAMPLE_RATE)
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def _resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling in the frequency domain.

    Truncating (or zero-extending) the spectrum is an ideal low-pass at the lower Nyquist
    frequency, so downsampling does not alias. The method treats the segment as periodic;
    sentence segments start and end in (near) silence, so the wrap-around is inaudible to
    the aligner. One FFT of a sentence takes milliseconds.
    """
    count_out = round(len(samples) * rate_out / rate_in)
    spectrum = np.fft.rfft(samples)
    resized = np.zeros(count_out // 2 + 1, dtype=spectrum.dtype)
    shared = min(len(spectrum), len(resized))
    resized[:shared] = spectrum[:shared]
    return np.fft.irfft(resized, count_out) * (count_out / len(samples))


def _sphinx_word(word: str) -> str:
    """The dictionary spelling pocketsphinx (CMUdict) uses: lower case, ASCII apostrophes."""
    return word.replace("\u2019", "'").lower()


def _ensure_pronunciation(
    decoder, sphinx_word: str, spoken_word: dict | None, previous_word: str | None
) -> bool:
    """True if the decoder can align the word, adding a pronunciation for it if needed.

    Sources, best first: the decoder's CMUdict; the synthesiser's own phones (what was
    actually said); g2p_en's guess, close enough for alignment of a name. Only a word none
    of them can pronounce (no Latin letters, say) is left without one.
    """
    if decoder.lookup_word(sphinx_word) is not None:
        return True
    phones = plain_phones((spoken_word or {}).get("phones"))
    if phones is None:
        phones = plain_phones(g2p.pronounce(sphinx_word, previous_word))
    if phones is None:
        return False
    try:
        decoder.add_word(sphinx_word, " ".join(phones), True)
    except RuntimeError:
        return False
    return True


def _align_sentence(
    decoder, pcm: bytes, offset: float, words: list[dict], spoken_words: list[dict]
) -> list[AlignedWord | None]:
    """Align one sentence's words; None for each word without a pronunciation.

    Raises SentenceAlignmentError when pocketsphinx cannot fit the words to the audio.
    """
    # speech.json has one entry per transcript word; if it does not, its phones cannot be
    # matched to words and only the decoder's dictionary is used.
    if len(spoken_words) != len(words):
        spoken_words = [None] * len(words)
    sphinx_words = [_sphinx_word(word["word"]) for word in words]
    alignable = [
        _ensure_pronunciation(decoder, sphinx_word, spoken_word, previous_word)
        for sphinx_word, spoken_word, previous_word in zip(
            sphinx_words, spoken_words, [None, *sphinx_words[:-1]], strict=True
        )
    ]
    expected = [w for w, ok in zip(sphinx_words, alignable, strict=True) if ok]
    if not expected:
        raise SentenceAlignmentError("no word has a pronunciation")
    # A word without a pronunciation is stood in for by the model's generic-speech filler.
    # Left out, its audio is always pulled into its neighbours' times; the filler (with the
    # optional silences around it) often, though not always, takes that audio instead.
    align_text = " ".join(
        sphinx_word if ok else SPEECH_FILLER
        for sphinx_word, ok in zip(sphinx_words, alignable, strict=True)
    )

    decoder.set_align_text(align_text)
    _decode(decoder, pcm)
    if decoder.hyp() is None:
        raise SentenceAlignmentError("the words do not fit the audio")
    decoder.set_alignment()
    _decode(decoder, pcm)
    alignment = decoder.get_alignment()
    if alignment is None:
        raise SentenceAlignmentError("no phone alignment")

    found = []
    for entry in alignment:
        name = _VARIANT_SUFFIX.sub("", entry.name)
        if name.startswith("<") or name.startswith("["):  # <sil>, <s>, </s>, [NOISE] fillers
            continue
        phone_frames = [(phone.name, phone.duration) for phone in entry if phone.name != "SIL"]
        if len(phone_frames) >= SQUEEZED_WORD_MIN_PHONES and all(
            frames <= MIN_PHONE_FRAMES for _, frames in phone_frames
        ):
            raise SentenceAlignmentError(
                f"{name!r} was squeezed to the shortest possible duration: probably not spoken"
            )
        phones = [(phone, frames * SPHINX_FRAME_SECONDS) for phone, frames in phone_frames]
        start = offset + entry.start * SPHINX_FRAME_SECONDS
        end = start + entry.duration * SPHINX_FRAME_SECONDS
        found.append((name, AlignedWord(start, end, phones)))
    if [name for name, _ in found] != expected:
        raise SentenceAlignmentError(
            f"aligned words differ from the transcript: {' '.join(name for name, _ in found)!r}"
        )

    aligned_words = iter(word for _, word in found)
    return [next(aligned_words) if ok else None for ok in alignable]


def _decode(decoder, pcm: bytes) -> None:
    decoder.start_utt()
    try:
        decoder.process_raw(pcm, full_utt=True)
    finally:
        # Close the utterance even on failure, so the next sentence starts clean.
        decoder.end_utt()


def _position_suffixes(count: int) -> list[str]:
    """gentle's phone position marks: _S for a one-phone word, else _B, _I..., _E."""
    if count <= 1:
        return ["_S"] * count
    return ["_B"] + ["_I"] * (count - 2) + ["_E"]


def _gentle_word(word: dict, aligned: AlignedWord | None) -> dict:
    if aligned is None:
        return {
            "case": NOT_FOUND,
            "word": word["word"],
            "startOffset": word["start_offset"],
            "endOffset": word["end_offset"],
        }
    suffixes = _position_suffixes(len(aligned.phones))
    return {
        "case": SUCCESS,
        "word": word["word"],
        "alignedWord": _sphinx_word(word["word"]),
        "start": round(aligned.start, 3),
        "end": round(aligned.end, 3),
        "startOffset": word["start_offset"],
        "endOffset": word["end_offset"],
        "phones": [
            {"phone": name.lower() + suffix, "duration": round(duration, 3)}
            for (name, duration), suffix in zip(aligned.phones, suffixes, strict=True)
        ],
    }
