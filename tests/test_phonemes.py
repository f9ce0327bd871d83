"""phonemes.json from real alignments of real Piper speech, and the offline g2p_en adapter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from test_align import GREEK_ZORBLATT, make_transcript, spoken_lexicon, synthesise_story

from storyreel.align import align
from storyreel.g2p import ARPABET_PHONES
from storyreel.phonemes import build_phonemes


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    return synthesise_story(tmp_path_factory.getbasetemp())


def _phonemes(story, sentence_texts=None, pronunciations=None) -> tuple[dict, dict, dict]:
    transcript = story.transcript(sentence_texts)
    speech = story.speech(transcript, pronunciations=pronunciations)
    alignment = align(story.wav_path, transcript, speech)
    return build_phonemes(alignment, transcript, speech, "test"), transcript, speech


def check_invariants(
    phonemes: dict, transcript: dict, duration: float, unpronounceable: frozenset[str] = frozenset()
) -> None:
    assert phonemes["story"] == "test"
    assert phonemes["duration"] == duration
    expected = [(s["index"], w["word"]) for s in transcript["sentences"] for w in s["words"]]
    words = phonemes["words"]
    assert [(w["sentence"], w["word"]) for w in words] == expected
    assert [w["index"] for w in words] == list(range(len(expected)))
    for word in words:
        assert word["source"] in ("aligned", "g2p")
        assert 0 <= word["start"] <= word["end"] <= duration
    phones = phonemes["phones"]
    assert phones
    previous_end, previous_word = 0.0, 0
    for phone in phones:
        assert phone["phone"] in ARPABET_PHONES
        assert previous_end <= phone["start"] <= phone["end"] <= duration
        assert previous_word <= phone["word"] < len(words)
        assert phone["source"] == words[phone["word"]]["source"]
        previous_end, previous_word = phone["end"], phone["word"]
    # Every pronounceable word has phones.
    pronounceable = {w["index"] for w in words if w["word"] not in unpronounceable}
    assert {phone["word"] for phone in phones} == pronounceable


def test_clean_story(story):
    phonemes, transcript, _ = _phonemes(story)
    check_invariants(phonemes, transcript, story.duration)
    sources = [word["source"] for word in phonemes["words"]]
    assert sources.count("aligned") >= 0.9 * len(sources)
    mayor = next(w for w in phonemes["words"] if w["word"] == "Mayor")
    assert [p["phone"] for p in phonemes["phones"] if p["word"] == mayor["index"]] == [
        "M", "EY", "ER"
    ]  # fmt: skip


def test_unpronounceable_word_placed_between_neighbours(story):
    sentence_texts = [text.replace("Zorblatt", GREEK_ZORBLATT) for text in story.sentence_texts]
    phonemes, transcript, _ = _phonemes(story, sentence_texts)
    check_invariants(
        phonemes, transcript, story.duration, unpronounceable=frozenset({GREEK_ZORBLATT})
    )
    words = phonemes["words"]
    mayor, name, said = words[13:16]
    assert (mayor["word"], name["word"], said["word"]) == ("Mayor", GREEK_ZORBLATT, "said")
    assert name["source"] == "g2p"
    assert mayor["source"] == said["source"] == "aligned"
    assert mayor["end"] <= name["start"] <= name["end"] <= said["start"]


def test_word_aligned_with_g2p_pronunciation_keeps_its_phones(story):
    lexicon = {word: phones for word, phones in spoken_lexicon().items() if word != "zorblatt"}
    phonemes, transcript, _ = _phonemes(story, pronunciations=lexicon)
    check_invariants(phonemes, transcript, story.duration)
    zorblatt = next(w for w in phonemes["words"] if w["word"] == "Zorblatt")
    assert zorblatt["source"] == "aligned"
    zorblatt_phones = [p for p in phonemes["phones"] if p["word"] == zorblatt["index"]]
    assert [p["phone"] for p in zorblatt_phones][:3] == ["Z", "AO", "R"]
    assert zorblatt_phones[0]["start"] == zorblatt["start"]
    assert zorblatt_phones[-1]["end"] == pytest.approx(zorblatt["end"], abs=0.001)


def test_failed_sentence_spread_over_its_span(story):
    sentence_texts = list(story.sentence_texts)
    sentence_texts[1] = "Mayor Zorblatt said the new ferries would run every hour instead of daily."
    phonemes, transcript, _ = _phonemes(story, sentence_texts)
    check_invariants(phonemes, transcript, story.duration)
    span_start, span_end = story.spans[1]
    failed = [w for w in phonemes["words"] if w["sentence"] == 1]
    assert {w["source"] for w in failed} == {"g2p"}
    assert failed[0]["start"] == pytest.approx(span_start, abs=0.001)
    assert failed[-1]["end"] == pytest.approx(span_end, abs=0.001)
    others = [w["source"] for w in phonemes["words"] if w["sentence"] != 1]
    assert others.count("aligned") >= 0.9 * len(others)


def _hand_made_story(spoken_words: list[dict]) -> tuple[dict, dict, dict]:
    """One sentence "Mayor Zorblatt spoke", 1.0-2.0 s; only "Mayor" and "spoke" aligned."""
    transcript = make_transcript(["Mayor Zorblatt spoke."])
    speech = {
        "duration": 3.0,
        "sentences": [{"index": 0, "start": 1.0, "end": 2.0, "words": spoken_words}],
    }
    alignment = {
        "transcript": transcript["text"],
        "words": [
            {"case": "success", "word": "Mayor", "alignedWord": "mayor", "start": 1.0,
             "end": 1.2, "startOffset": 0, "endOffset": 5,
             "phones": [{"phone": "m_B", "duration": 0.05}, {"phone": "ey_I", "duration": 0.07},
                        {"phone": "er_E", "duration": 0.08}]},
            {"case": "not-found-in-audio", "word": "Zorblatt", "startOffset": 6, "endOffset": 14},
            {"case": "success", "word": "spoke", "alignedWord": "spoke", "start": 1.6,
             "end": 1.9, "startOffset": 15, "endOffset": 20,
             "phones": [{"phone": "s_B", "duration": 0.1}, {"phone": "p_I", "duration": 0.05},
                        {"phone": "ow_I", "duration": 0.1}, {"phone": "k_E", "duration": 0.05}]},
        ],
    }  # fmt: skip
    return alignment, transcript, speech


def test_synthesiser_pronunciation_spread_with_longer_vowels():
    spoken = [
        {"word": "Mayor", "start": None, "end": None, "phones": ["M", "EY1", "ER0"]},
        {"word": "Zorblatt", "start": None, "end": None, "phones": ["Z", "AO1", "R", "B"]},
        {"word": "spoke", "start": None, "end": None, "phones": ["S", "P", "OW1", "K"]},
    ]
    phonemes = build_phonemes(*_hand_made_story(spoken), "test")
    zorblatt = [p for p in phonemes["phones"] if p["word"] == 1]
    assert [p["phone"] for p in zorblatt] == ["Z", "AO", "R", "B"]
    assert zorblatt[0]["start"] == 1.2 and zorblatt[-1]["end"] == 1.6
    lengths = {p["phone"]: p["end"] - p["start"] for p in zorblatt}
    assert lengths["AO"] > lengths["Z"] == pytest.approx(lengths["R"], abs=0.0011)
    assert {p["source"] for p in zorblatt} == {"g2p"}


def test_synthesiser_times_preferred_and_kept_inside_the_gap():
    spoken = [
        {"word": "Mayor", "start": 0.98, "end": 1.25, "phones": ["M", "EY1", "ER0"]},
        # Starts before "Mayor" ends: must be clamped into the gap 1.2-1.6 s.
        {"word": "Zorblatt", "start": 1.15, "end": 1.5, "phones": ["Z", "AO1", "R", "B"]},
        {"word": "spoke", "start": 1.5, "end": 1.9, "phones": ["S", "P", "OW1", "K"]},
    ]
    phonemes = build_phonemes(*_hand_made_story(spoken), "test")
    zorblatt = phonemes["words"][1]
    assert (zorblatt["start"], zorblatt["end"], zorblatt["source"]) == (1.2, 1.5, "g2p")


def test_g2p_used_when_synthesiser_gave_no_pronunciation():
    spoken = [
        {"word": "Mayor", "start": None, "end": None, "phones": ["M", "EY1", "ER0"]},
        {"word": "Zorblatt", "start": None, "end": None, "phones": []},
        {"word": "spoke", "start": None, "end": None, "phones": ["S", "P", "OW1", "K"]},
    ]
    phonemes = build_phonemes(*_hand_made_story(spoken), "test")
    zorblatt = [p["phone"] for p in phonemes["phones"] if p["word"] == 1]
    assert zorblatt[:3] == ["Z", "AO", "R"] and zorblatt[-1] == "T"


def test_g2p_runs_offline(tmp_path):
    """g2p_en loads and pronounces with the network blocked and no nltk data anywhere."""
    script = textwrap.dedent(
        """
        import json, socket

        def refuse(*args, **kwargs):
            raise OSError("network access attempted")

        socket.socket.connect = refuse
        socket.create_connection = refuse

        from storyreel.g2p import pronounce

        print(json.dumps({
            "verb": pronounce("refuse", "to"),
            "noun": pronounce("refuse", "the"),
            "known": pronounce("ferries"),
            "guess": pronounce("Zorblatt"),
            "not_latin": pronounce("\u5317\u4eac"),
        }))
        """
    )
    environment = {**os.environ, "HOME": str(tmp_path), "NLTK_DATA": str(tmp_path / "nltk")}
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
        check=True,
    )
    prons = json.loads(result.stdout.strip().splitlines()[-1])
    assert prons["verb"] == ["R", "IH0", "F", "Y", "UW1", "Z"]
    assert prons["noun"] == ["R", "EH1", "F", "Y", "UW2", "Z"]
    assert prons["known"] == ["F", "EH1", "R", "IY0", "Z"]
    assert prons["guess"][:3] == ["Z", "AO1", "R"]
    assert prons["not_latin"] == []
    assert not (tmp_path / "nltk").exists() and not (tmp_path / "nltk_data").exists()
