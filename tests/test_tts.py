"""Speech synthesis (storyreel.tts) with the real Piper and espeak-ng voices, and the IPA table."""

from __future__ import annotations

import re

import numpy as np
import pytest
import soundfile

from storyreel.ipa import UnknownIpaSymbol, ipa_to_arpabet, is_arpabet, parse_ipa
from storyreel.tts import SAMPLE_RATE, load_backend, synthesise
from storyreel.tts.audio import resample, speech_bounds
from storyreel.tts.piper_backend import alignment_model, cache_dir
from storyreel.tts.spoken import SpokenSegment
from storyreel.tts.words import speak_words

BACKENDS = ["piper", "espeak"]
PAUSES = {"sentence_pause": 0.35, "paragraph_pause": 0.8, "lead_in": 0.3}
# Two paragraphs; the first has two sentences, so both kinds of pause occur. Words espeak joins
# ("well-known", "of the"), an apostrophe and a non-ASCII word (character positions) included.
PARAGRAPHS = [
    ["The well-known mayor of São Paulo said it's time to act.", "Nobody argued."],
    ["Residents didn't disagree with the plan."],
]
WORD_PATTERN = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")  # docs/formats.md


def make_transcript(paragraphs: list[list[str]]) -> dict:
    """A transcript.json (docs/formats.md) for already normalised sentences."""
    text = ""
    sentences = []
    for paragraph_index, paragraph in enumerate(paragraphs):
        for sentence_index, sentence in enumerate(paragraph):
            if sentences:
                text += " " if sentence_index else "\n\n"
            start = len(text)
            text += sentence
            words = [
                {"word": match.group(), "start_offset": start + match.start(),
                 "end_offset": start + match.end()}
                for match in WORD_PATTERN.finditer(sentence)
            ]  # fmt: skip
            sentences.append(
                {"index": len(sentences), "paragraph": paragraph_index, "text": sentence,
                 "start_offset": start, "end_offset": len(text), "words": words}
            )  # fmt: skip
    return {"story": "test", "language": "en", "text": text, "sentences": sentences}


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples.astype(np.float64))))) if len(samples) else 0.0


@pytest.fixture(scope="module", autouse=True)
def model_cache(tmp_path_factory):
    """Patched Piper models go to a temporary cache, not the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STORYREEL_CACHE", str(tmp_path_factory.mktemp("storyreel-cache")))
        yield


@pytest.fixture(scope="module", params=BACKENDS)
def spoken(request, tmp_path_factory):
    """(transcript, speech.json as returned, speech.json as written, samples, wav info)."""
    transcript = make_transcript(PARAGRAPHS)
    folder = tmp_path_factory.mktemp(request.param)
    wav, json_path = folder / "speech.wav", folder / "speech.json"
    messages: list[str] = []
    result = synthesise(transcript, request.param, wav, json_path, log=messages.append, **PAUSES)
    samples, rate = soundfile.read(wav, dtype="int16")
    assert rate == SAMPLE_RATE
    assert any("sentence 3/3" in message for message in messages)
    return transcript, result, json_path.read_text(), samples, soundfile.info(wav)


def test_wav_is_22050_hz_mono_16_bit_and_as_long_as_speech_json_says(spoken):
    _, speech, written, samples, info = spoken
    assert (info.samplerate, info.channels, info.subtype) == (22050, 1, "PCM_16")
    assert samples.dtype == np.int16 and samples.ndim == 1
    assert speech["sample_rate"] == 22050
    assert abs(len(samples) / 22050 - speech["duration"]) <= 0.0005
    assert '"sentences"' in written and speech["backend"] in written


def test_speech_json_names_backend_and_voice(spoken):
    _, speech, *_ = spoken
    expected_voice = {"piper": "en_US-joe-medium", "espeak": "en-us"}[speech["backend"]]
    assert speech["voice"] == expected_voice


def test_sentence_spans_are_ordered_inside_the_audio_and_separated_by_the_pauses(spoken):
    transcript, speech, *_ = spoken
    sentences = speech["sentences"]
    assert [s["index"] for s in sentences] == [0, 1, 2]
    assert sentences[0]["start"] == pytest.approx(PAUSES["lead_in"], abs=0.002)
    for sentence in sentences:
        assert 0 <= sentence["start"] < sentence["end"] <= speech["duration"]
        assert sentence["end"] - sentence["start"] > 0.5
    for previous, sentence, info in zip(
        sentences, sentences[1:], transcript["sentences"][1:], strict=False
    ):
        new_paragraph = info["paragraph"] != transcript["sentences"][info["index"] - 1]["paragraph"]
        pause = PAUSES["paragraph_pause"] if new_paragraph else PAUSES["sentence_pause"]
        assert sentence["start"] - previous["end"] == pytest.approx(pause, abs=0.002)


def test_pauses_are_silent_and_sentences_are_not(spoken):
    _, speech, _, samples, _ = spoken
    audio = samples / 32768.0
    edges = [0.0]
    for sentence in speech["sentences"]:
        start, end = round(sentence["start"] * 22050), round(sentence["end"] * 22050)
        assert rms(audio[start:end]) > 0.02
        edges += [sentence["start"], sentence["end"]]
    edges.append(speech["duration"])
    for gap_start, gap_end in zip(edges[::2], edges[1::2], strict=True):
        gap = audio[round(gap_start * 22050) + 1 : round(gap_end * 22050) - 1]
        assert len(gap) > 0 and rms(gap) < 1e-3


def test_every_word_once_in_order_with_arpabet_phones(spoken):
    transcript, speech, *_ = spoken
    expected = [[w["word"] for w in s["words"]] for s in transcript["sentences"]]
    assert [[w["word"] for w in s["words"]] for s in speech["sentences"]] == expected
    for sentence in speech["sentences"]:
        for word in sentence["words"]:
            assert word["phones"], word
            assert all(is_arpabet(phone) for phone in word["phones"]), word
    words = {w["word"]: w["phones"] for s in speech["sentences"] for w in s["words"]}
    assert words["mayor"] == ["M", "EY1", "ER0"]
    assert words["known"] == ["N", "OW1", "N"]  # split out of espeak's "well-known"


def test_word_timings_are_ordered_and_inside_their_sentence(spoken):
    _, speech, *_ = spoken
    timed = total = 0
    for sentence in speech["sentences"]:
        previous_end = sentence["start"]
        for word in sentence["words"]:
            total += 1
            if word["start"] is None:
                assert word["end"] is None
                continue
            timed += 1
            assert previous_end <= word["start"] < word["end"] <= sentence["end"], word
            previous_end = word["end"]
    # Both backends report timings; these plain sentences map completely.
    assert timed == total


@pytest.mark.parametrize("backend", BACKENDS)
def test_larger_length_scale_speaks_slower(backend, tmp_path):
    transcript = make_transcript([["The council will meet again next week."]])
    durations = []
    for scale in (1.0, 1.3):
        speech = synthesise(
            transcript, backend, tmp_path / f"{scale}.wav", tmp_path / f"{scale}.json",
            length_scale=scale, log=lambda message: None, **PAUSES,
        )  # fmt: skip
        sentence = speech["sentences"][0]
        durations.append(sentence["end"] - sentence["start"])
    assert durations[1] > durations[0] * 1.1


def test_unknown_backend_or_voice_names_the_config_key(tmp_path):
    transcript = make_transcript([["Hello."]])
    with pytest.raises(ValueError, match=r"tts\.backend"):
        synthesise(transcript, "festival", tmp_path / "a.wav", tmp_path / "a.json", **PAUSES)
    for backend, voice in [("piper", "en_GB-nobody-low"), ("espeak", "xx-nonexistent")]:
        with pytest.raises(ValueError, match=r"tts\.voice"):
            load_backend(backend, voice)


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("STORYREEL_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("STORYREEL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "storyreel"


def test_a_model_that_cannot_be_patched_gives_none(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    messages: list[str] = []
    assert alignment_model(broken, messages.append) is None
    assert messages and "broken.onnx" in messages[0]


def test_resample_keeps_the_pitch_and_length():
    seconds, frequency = 0.5, 440.0
    time_44k = np.arange(round(seconds * 44100)) / 44100
    resampled = resample(np.sin(2 * np.pi * frequency * time_44k), 44100, 22050)
    assert len(resampled) == round(seconds * 22050)
    expected = np.sin(2 * np.pi * frequency * np.arange(len(resampled)) / 22050)
    assert np.max(np.abs(resampled - expected)) < 1e-3


def test_speech_bounds_cut_the_silence_around_a_sound():
    audio = np.zeros(22050, dtype=np.float32)
    audio[5000:15000] = 0.5 * np.sin(np.arange(10000) / 5)
    start, end = speech_bounds(audio, 22050)
    assert abs(start - 5000) < 120 and abs(end - 15000) < 120
    assert speech_bounds(np.zeros(1000, dtype=np.float32), 22050) == (0, 0)


# --- IPA -> ARPAbet ------------------------------------------------------------------------

# espeak-ng en-us IPA (as Piper speaks it) and the expected ARPAbet.
IPA_WORDS = [
    ("news", "nˈuːz", "N UW1 Z"),
    ("thought", "θˈɔːt", "TH AO1 T"),
    ("church", "tʃˈɜːtʃ", "CH ER1 CH"),
    ("judge", "dʒˈʌdʒ", "JH AH1 JH"),
    ("bird", "bˈɜːd", "B ER1 D"),
    ("hour", "ˈaʊɚ", "AW1 ER0"),
    ("button", "bˈʌʔn̩", "B AH1 T AH0 N"),
    ("little", "lˈɪɾəl", "L IH1 T AH0 L"),
    ("fire", "fˈaɪɚ", "F AY1 ER0"),
    ("boy", "bˈɔɪ", "B OY1"),
    ("cure", "kjˈʊɹ", "K Y UH1 R"),
    ("there", "ðˈɛɹ", "DH EH1 R"),
    ("year", "jˈɪɹ", "Y IH1 R"),
    ("car", "kˈɑːɹ", "K AA1 R"),
    ("four", "fˈɔːɹ", "F AO1 R"),
    ("city", "sˈɪɾi", "S IH1 T IY0"),
    ("wanted", "wˈɔntᵻd", "W AO1 N T IH0 D"),
    ("about", "ɐbˈaʊt", "AH0 B AW1 T"),
    ("pleasure", "plˈɛʒɚ", "P L EH1 ZH ER0"),
    ("thing", "θˈɪŋ", "TH IH1 NG"),
    ("interact", "ˌɪntɚɹˈækt", "IH2 N T ER0 AE1 K T"),
    ("today", "tədˈeɪ", "T AH0 D EY1"),
]


@pytest.mark.parametrize(("word", "ipa", "arpabet"), IPA_WORDS)
def test_ipa_to_arpabet(word, ipa, arpabet):
    assert ipa_to_arpabet(ipa, strict=True) == arpabet.split()


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_synthesisers_speak_the_table_words_as_listed(backend):
    synthesiser = load_backend(backend)
    for word, ipa, arpabet in IPA_WORDS:
        spoken = synthesiser.phonemize_word(word)
        assert ipa_to_arpabet(spoken, strict=True) == arpabet.split(), (word, spoken, ipa)


def test_ipa_phone_ranges_cover_the_string_and_stress_goes_to_the_vowel():
    ipa = "ɹˈiːʲəl"
    phones = parse_ipa(ipa)
    assert [p.ipa for p in phones] == ["ɹ", "iː", "ə", "l"]
    assert [p.arpabet for p in phones] == [("R",), ("IY1",), ("AH0",), ("L",)]
    assert phones[0].start == 0 and phones[-1].end == len(ipa)
    assert all(a.end == b.start for a, b in zip(phones, phones[1:], strict=False))
    assert ipa[phones[1].start : phones[1].end] == "ˈiːʲ"  # stress mark and glide included


def test_unknown_ipa_symbols_are_skipped_unless_strict():
    assert ipa_to_arpabet("kˈæt☃") == ["K", "AE1", "T"]
    with pytest.raises(UnknownIpaSymbol):
        ipa_to_arpabet("kˈæt☃", strict=True)


def test_is_arpabet():
    assert all(is_arpabet(phone) for phone in ["AA0", "ER1", "OY2", "CH", "ZH", "NG"])
    assert not any(is_arpabet(phone) for phone in ["AA", "ER3", "X", "ng", ""])


# --- mapping the synthesiser's word segments to transcript words -----------------------------

STAND_ALONE = {"of": "ˈʌv", "the": "ðə", "city": "sˈɪɾi", "and": "ˈænd"}


def timed_segment(ipa: str, start: int, text_position: int | None = None) -> SpokenSegment:
    """A segment whose codepoints take 100 samples each from ``start``."""
    starts = [start + 100 * index for index in range(len(ipa))]
    return SpokenSegment(ipa, starts, [s + 100 for s in starts], text_position, None)


@pytest.mark.parametrize("by_position", [False, True])
def test_a_joined_segment_is_split_between_its_words(by_position):
    words = ["of", "the", "city"]
    segments = [
        timed_segment("ʌvðə", 0, 0 if by_position else None),
        timed_segment("sˈɪɾi", 1000, 7 if by_position else None),
    ]
    spoken = speak_words(words, [(0, 2), (3, 6), (7, 11)], segments, STAND_ALONE.__getitem__)
    assert [(w.word, w.phones, w.start, w.end) for w in spoken] == [
        ("of", ["AH0", "V"], 0, 200),
        ("the", ["DH", "AH0"], 200, 400),
        ("city", ["S", "IH1", "T", "IY0"], 1000, 1500),
    ]


def test_a_spoken_symbol_is_no_word_and_an_unclear_word_has_no_times():
    # "city & the": espeak says "and" for the ampersand; "the" was not spoken at all.
    words = ["city", "the"]
    segments = [timed_segment("sˈɪɾi", 0), timed_segment("ænd", 600)]
    spoken = speak_words(words, [(0, 4), (7, 10)], segments, STAND_ALONE.__getitem__)
    assert (spoken[0].word, spoken[0].start, spoken[0].end) == ("city", 0, 500)
    assert (spoken[1].word, spoken[1].phones, spoken[1].start) == ("the", ["DH", "AH0"], None)
