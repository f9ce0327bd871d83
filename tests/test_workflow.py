"""The real workflow, end to end through Snakemake, on a short story."""

from __future__ import annotations

import json
import statistics

import pytest
import soundfile
from conftest import REPO, run_snakemake

AUDIO_RULES = ["init_story", "transcript", "tts", "align", "phonemes"]
VIDEO_RULES = ["landmarks", "animate", "render", "compose", "preview"]


@pytest.fixture(scope="module")
def rendered(rendered_story):
    return rendered_story.story_dir, rendered_story.result


def load(story_dir, name):
    return json.loads((story_dir / name).read_text(encoding="utf-8"))


def test_every_rule_ran_with_log_and_benchmark(rendered):
    story_dir, result = rendered
    for rule in AUDIO_RULES + VIDEO_RULES:
        assert f"rule {rule}:" in result.stderr or f"localrule {rule}:" in result.stderr
        step = f"{rule}-0" if rule == "render" else rule
        assert (story_dir / "logs" / f"{step}.log").stat().st_size > 0
        assert (story_dir / "benchmarks" / f"{step}.tsv").read_text().startswith("s\t")


def test_speech_matches_the_phone_timeline(rendered):
    story_dir, _ = rendered
    info = soundfile.info(story_dir / "speech.wav")
    assert info.samplerate == 22050 and info.channels == 1 and info.frames > 22050
    phonemes = load(story_dir, "phonemes.json")
    assert abs(info.duration - phonemes["duration"]) < 0.01
    assert 0 < info.duration - phonemes["phones"][-1]["end"] < 0.5


def test_phones_are_ordered_and_do_not_overlap(rendered):
    story_dir, _ = rendered
    phones = load(story_dir, "phonemes.json")["phones"]
    for phone in phones:
        assert phone["start"] < phone["end"]
    for before, after in zip(phones, phones[1:], strict=False):
        assert before["end"] <= after["start"] + 1e-9


def test_every_transcript_word_appears_once_in_order(rendered):
    story_dir, _ = rendered
    transcript = load(story_dir, "transcript.json")
    expected = [w["word"] for s in transcript["sentences"] for w in s["words"]]
    phonemes = load(story_dir, "phonemes.json")
    assert [w["word"] for w in phonemes["words"]] == expected
    assert [w["index"] for w in phonemes["words"]] == list(range(len(expected)))
    words_with_phones = {p["word"] for p in phonemes["phones"]}
    assert words_with_phones == set(range(len(expected)))
    # Normalisation happened once: numbers, money and titles were spelled out, emoji dropped.
    spoken = " ".join(expected).lower()
    for phrase in (
        "one thousand two hundred",
        "two point five million dollars",
        "doctor",
        "second",
    ):
        assert phrase in spoken


def test_most_words_come_from_the_aligner(rendered):
    story_dir, _ = rendered
    words = load(story_dir, "phonemes.json")["words"]
    aligned = sum(w["source"] == "aligned" for w in words)
    assert aligned / len(words) >= 0.9


def test_alignment_is_gentle_format_and_accurate(rendered):
    story_dir, _ = rendered
    alignment = load(story_dir, "alignment.json")
    transcript = load(story_dir, "transcript.json")
    assert alignment["transcript"] == transcript["text"]
    for word in alignment["words"]:
        assert word["case"] in ("success", "not-found-in-audio")
        assert alignment["transcript"][word["startOffset"] : word["endOffset"]] == word["word"]
        if word["case"] == "success":
            assert word["start"] < word["end"]
            assert all(p["phone"].rsplit("_", 1)[1] in "BIES" for p in word["phones"])
    # Ground truth: the synthesiser's own word timings for the same audio.
    speech = load(story_dir, "speech.json")
    truth = [w["start"] for s in speech["sentences"] for w in s["words"]]
    errors = [
        abs(w["start"] - t)
        for w, t in zip(alignment["words"], truth, strict=True)
        if w["case"] == "success" and t is not None
    ]
    assert len(errors) >= 0.8 * len(truth)
    assert statistics.median(errors) <= 0.030


def test_dry_run_shows_the_dag(tmp_path):
    source = str(REPO / "examples" / "stories" / "{story}.json")
    result = run_snakemake(
        tmp_path, "stories/demo/phonemes.json", "-n", config={"story_source": source}
    )
    for rule in AUDIO_RULES:
        assert rule in result.stdout + result.stderr


def test_rerun_is_a_no_op(rendered):
    story_dir, _ = rendered
    work = story_dir.parent.parent
    result = run_snakemake(
        work,
        "stories/river-park/final.mp4",
        "stories/river-park/preview.png",
        config={"story_source": str(work / "inbox" / "{story}.json")},
    )
    assert "Nothing to be done" in result.stdout + result.stderr
