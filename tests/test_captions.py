"""Caption cues and the WebVTT file, from hand-built transcripts and timings."""

from __future__ import annotations

import re

import pytest
from test_compose import make_phonemes, make_transcript

from storyreel.captions import CaptionTrack, build_cues, caption_at, vtt_timestamp, write_vtt

WORD_RE = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")
STAMP = r"(\d{2}):([0-5]\d):([0-5]\d)\.(\d{3})"
TIMING = re.compile(rf"^{STAMP} --> {STAMP}$")

LONG_STORY = [
    [
        "The city council approved a new budget of four point five million dollars on Tuesday, "
        "after a debate that lasted well into the night.",
        "Work on the bridge starts in March.",
    ],
    [
        "Residents' groups welcomed the well-known plan; others said "
        "\u201cit is far too late\u201d and asked for a public inquiry into the costs.",
    ],
]


def parse_vtt(text: str) -> list[tuple[float, float, str]]:
    lines = text.split("\n")
    assert lines[0] == "WEBVTT" and lines[1] == ""
    cues = []
    blocks = "\n".join(lines[2:]).strip("\n").split("\n\n")
    for block in blocks:
        number, timing, *payload = block.split("\n")
        assert number.isdigit()
        match = TIMING.match(timing)
        assert match, timing
        parts = [int(g) for g in match.groups()]
        start = parts[0] * 3600 + parts[1] * 60 + parts[2] + parts[3] / 1000
        end = parts[4] * 3600 + parts[5] * 60 + parts[6] + parts[7] / 1000
        assert len(payload) == 1 and payload[0].strip()
        cues.append((start, end, payload[0]))
    return cues


@pytest.fixture
def story():
    transcript = make_transcript(LONG_STORY)
    return transcript, make_phonemes(transcript)


def transcript_words(transcript: dict) -> list[str]:
    return [w["word"] for s in transcript["sentences"] for w in s["words"]]


def test_vtt_has_every_word_in_order(story, tmp_path):
    transcript, phonemes = story
    cues = write_vtt(phonemes, transcript, tmp_path / "c.vtt")
    parsed = parse_vtt((tmp_path / "c.vtt").read_text(encoding="utf-8"))
    assert len(parsed) == len(cues)
    text = " ".join(payload for _, _, payload in parsed)
    assert WORD_RE.findall(text.replace("&amp;", "&")) == transcript_words(transcript)
    # Times never go backwards and cues never overlap.
    for (start, end, _), following in zip(parsed, parsed[1:] + [None], strict=True):
        assert start <= end
        if following:
            assert end <= following[0]


def test_cues_lie_within_their_words(story):
    transcript, phonemes = story
    words = phonemes["words"]
    for cue in build_cues(phonemes, transcript):
        first, last = cue.words[0].index, cue.words[-1].index
        assert cue.start == words[first]["start"]
        assert words[first]["start"] < cue.end <= words[last]["end"]
        assert [w.index for w in cue.words] == list(range(first, last + 1))
        # Each word's span in the cue text is that word (with its punctuation).
        for word in cue.words:
            assert cue.text[word.char_start : word.char_end] == word.text
            assert words[word.index]["word"] in word.text


def test_limits_and_sentence_breaks(story):
    transcript, phonemes = story
    cues = build_cues(phonemes, transcript, max_words=5, max_chars=30)
    for cue in cues:
        assert len(cue.words) <= 5
        assert len(cue.text) <= 30 or len(cue.words) == 1
        sentences = {phonemes["words"][w.index]["sentence"] for w in cue.words}
        assert len(sentences) == 1, cue.text
    # No orphan single-word cue where a sentence has more words to share.
    assert all(len(cue.words) > 1 for cue in cues)


def test_words_as_written_in_the_transcript(story):
    transcript, phonemes = story
    texts = [cue.text for cue in build_cues(phonemes, transcript)]
    joined = " ".join(texts)
    assert "Tuesday," in joined
    assert "well-known" in joined  # two words, kept joined as written
    assert "Residents'" in joined
    assert "\u201cit" in joined and "late\u201d" in joined
    assert texts[-1].endswith("costs.")


def test_long_pause_ends_a_cue():
    transcript = make_transcript([["One two three four five six seven eight nine."]])
    phonemes = make_phonemes(transcript)
    for word in phonemes["words"][4:]:
        word["start"] += 1.5
        word["end"] += 1.5
    cues = build_cues(phonemes, transcript, max_words=12, max_chars=80)
    assert [len(cue.words) for cue in cues] == [4, 5]


def test_vtt_offset_and_escaping(tmp_path):
    transcript = make_transcript([["Fish & chips <cheap> today."]])
    phonemes = make_phonemes(transcript)
    write_vtt(phonemes, transcript, tmp_path / "c.vtt", offset=2.0)
    text = (tmp_path / "c.vtt").read_text(encoding="utf-8")
    assert "Fish &amp; chips &lt;cheap&gt; today." in text
    (start, _, _), *_ = parse_vtt(text)
    assert start == pytest.approx(2.0 + phonemes["words"][0]["start"])


def test_timestamps():
    assert vtt_timestamp(0) == "00:00:00.000"
    assert vtt_timestamp(61.2345) == "00:01:01.234"
    assert vtt_timestamp(3723.5) == "01:02:03.500"


def test_caption_at_any_time(story):
    transcript, phonemes = story
    cues = build_cues(phonemes, transcript)
    track = CaptionTrack(cues, hold=0.5)
    assert track.at(0.0).cue is None
    first = cues[0]
    for number, word in enumerate(first.words):
        shown = track.at((word.start + word.end) / 2)
        assert (shown.cue, shown.word, shown.text) == (0, number, first.text)
    # Between two words the last one started stays lit.
    gap = (first.words[0].end + first.words[1].start) / 2
    assert track.at(gap).word == 0
    # After the last cue, the caption is held briefly, then cleared.
    last = cues[-1]
    assert track.at(last.end + 0.2).cue == len(cues) - 1
    assert track.at(last.end + 0.6).cue is None
    assert caption_at(cues, first.words[1].start).word == 1


def test_caption_cleared_in_long_pauses():
    transcript = make_transcript([["One two."], ["Three four."]])
    phonemes = make_phonemes(transcript, paragraph_pause=2.0)
    cues = build_cues(phonemes, transcript)
    track = CaptionTrack(cues, hold=0.5)
    assert track.at(cues[0].end + 1.0).cue is None
    assert track.at(cues[1].start).cue == 1


def test_mismatched_words_are_refused(story):
    transcript, phonemes = story
    phonemes["words"][3]["word"] = "Something"
    with pytest.raises(ValueError, match="word 3"):
        build_cues(phonemes, transcript)
    with pytest.raises(ValueError, match="words but the transcript has"):
        build_cues({**phonemes, "words": phonemes["words"][:-1]}, transcript)
