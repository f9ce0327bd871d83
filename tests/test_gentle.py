"""The gentle backend of the align rule against a gentle test server (tests/gentle_test_server.py).

The client talks real HTTP to a server that parses the multipart form as gentle's does and
answers in gentle's format; the workflow test runs the real align and phonemes rules through
Snakemake with align.backend: gentle.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import free_port, run_snakemake
from gentle_test_server import Script, gentle_server_fixture, start_server  # noqa: F401

from storyreel import g2p
from storyreel.align import NOT_FOUND, SUCCESS, align_with_backend
from storyreel.g2p import plain_phones
from storyreel.gentle import GentleError, GentleSettings, request_alignment
from storyreel.steps import align_speech
from storyreel.textnorm import build_transcript

SAMPLE_RATE = 22_050
STORY_TEXT = "Police closed the bridge on Tuesday. Mayor Zorblatt said the ferries would run."
QUICK = {"retries": 2, "backoff_s": 0.01, "connect_timeout_s": 2, "timeout_s": 10}


@pytest.fixture
def transcript() -> dict:
    return build_transcript({"id": "bridge", "title": "Bridge closed", "text": STORY_TEXT})


@pytest.fixture
def wav_path(tmp_path) -> Path:
    """Five seconds of quiet noise: the test server measures the WAV, it does not listen."""
    path = tmp_path / "speech.wav"
    noise = np.random.default_rng(0).normal(0, 0.01, 5 * SAMPLE_RATE).astype(np.float32)
    soundfile.write(path, noise, SAMPLE_RATE, subtype="PCM_16")
    return path


def settings(url: str, **overrides) -> dict:
    return {"backend": "gentle", "gentle": {"url": url, **QUICK, **overrides}}


def transcript_words(transcript: dict) -> list[dict]:
    return [word for sentence in transcript["sentences"] for word in sentence["words"]]


def test_alignment_json_from_the_server(tmp_path, gentle_server, transcript, wav_path):
    transcript_path = tmp_path / "transcript.json"
    transcript_path.write_text(json.dumps(transcript), encoding="utf-8")
    speech_path = tmp_path / "speech.json"
    speech_path.write_text(json.dumps({"sentences": []}), encoding="utf-8")
    alignment_path = tmp_path / "alignment.json"

    align_speech(
        wav=str(wav_path),
        transcript=str(transcript_path),
        speech=str(speech_path),
        alignment=str(alignment_path),
        align=settings(gentle_server.url),
    )

    (request,) = gentle_server.received
    assert request.query == {"async": "false"}
    assert request.transcript == transcript["text"]
    assert (request.sample_rate, request.channels, request.frames) == (
        SAMPLE_RATE,
        1,
        5 * SAMPLE_RATE,
    )
    alignment = json.loads(alignment_path.read_text(encoding="utf-8"))
    assert alignment["transcript"] == transcript["text"]
    words = transcript_words(transcript)
    assert [entry["word"] for entry in alignment["words"]] == [word["word"] for word in words]
    assert all(entry["case"] == SUCCESS for entry in alignment["words"])
    first = alignment["words"][0]
    assert first["word"] == "Police" and first["alignedWord"] == "police"
    assert first["start"] == pytest.approx(0.3)
    assert [phone["phone"] for phone in first["phones"]] == ["p_B", "ah_I", "l_I", "iy_I", "s_E"]
    assert first["end"] == pytest.approx(0.3 + 5 * 0.07)
    for entry, word in zip(alignment["words"], words, strict=True):
        assert (entry["startOffset"], entry["endOffset"]) == (
            word["start_offset"],
            word["end_offset"],
        )
    starts = [entry["start"] for entry in alignment["words"]]
    assert starts == sorted(starts) and alignment["words"][-1]["end"] <= 5.0
    # A word CMUdict lacks comes back as gentle reports it: unknown, one "oov" phone.
    zorblatt = next(entry for entry in alignment["words"] if entry["word"] == "Zorblatt")
    assert zorblatt["alignedWord"] == "<unk>" and zorblatt["phones"][0]["phone"] == "oov_S"


def test_words_not_found_in_audio_stay_not_found(transcript, wav_path):
    script = Script(not_found={"bridge", "ferries"}, heard_extra="um")
    with start_server(script) as server:
        alignment = align_with_backend(wav_path, transcript, {}, settings(server.url))

    cases = {entry["word"]: entry["case"] for entry in alignment["words"]}
    assert cases["bridge"] == NOT_FOUND and cases["ferries"] == NOT_FOUND
    assert sum(case == NOT_FOUND for case in cases.values()) == 2
    bridge = next(entry for entry in alignment["words"] if entry["word"] == "bridge")
    assert set(bridge) == {"case", "word", "startOffset", "endOffset"}
    # The word gentle heard but the transcript lacks is left out: one entry per transcript word.
    assert [entry["word"] for entry in alignment["words"]] == [
        word["word"] for word in transcript_words(transcript)
    ]


def test_a_word_gentle_splits_differently_is_not_found(gentle_server, wav_path):
    # gentle reads "O’Brien" as one word; the transcript's rule (ASCII apostrophes only) as two.
    text = "Mr O\u2019Brien spoke."
    words = [("Mr", 0, 2), ("O", 3, 4), ("Brien", 5, 10), ("spoke", 11, 16)]
    transcript = {
        "text": text,
        "sentences": [
            {
                "index": 0,
                "words": [{"word": w, "start_offset": s, "end_offset": e} for w, s, e in words],
            }
        ],
    }
    alignment = align_with_backend(wav_path, transcript, {}, settings(gentle_server.url))
    assert [entry["case"] for entry in alignment["words"]] == [
        SUCCESS,
        NOT_FOUND,
        NOT_FOUND,
        SUCCESS,
    ]


def test_a_server_error_is_retried(gentle_server, transcript, wav_path, caplog):
    gentle_server.fail(500, times=1)
    alignment = align_with_backend(wav_path, transcript, {}, settings(gentle_server.url))
    assert len(gentle_server.received) == 2
    assert all(entry["case"] == SUCCESS for entry in alignment["words"])
    assert "answered HTTP 500, retrying" in caplog.text


def test_a_failing_server_gives_a_clear_error_after_the_retries(
    gentle_server, transcript, wav_path
):
    gentle_server.fail(503, times=None)
    with pytest.raises(GentleError, match=r"answered HTTP 503 to all 3 tries: '<html>"):
        align_with_backend(wav_path, transcript, {}, settings(gentle_server.url, retries=2))
    assert len(gentle_server.received) == 3


def test_a_server_that_is_down_gives_a_clear_error(transcript, wav_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(GentleError) as error:
        align_with_backend(wav_path, transcript, {}, settings(url, retries=1))
    message = str(error.value)
    assert message.startswith(f"gentle server at {url} not reachable after 2 tries: ")
    assert message.endswith("start it or set align.backend: pocketsphinx")


def test_a_server_that_does_not_answer_times_out_without_retrying(
    gentle_server, transcript, wav_path
):
    gentle_server.hang(30)
    with pytest.raises(
        GentleError, match=r"gave no answer within 0.5 s \(align.gentle.timeout_s\)"
    ):
        align_with_backend(wav_path, transcript, {}, settings(gentle_server.url, timeout_s=0.5))
    assert len(gentle_server.received) == 1


def test_an_answer_that_is_not_json_gives_a_clear_error(gentle_server, transcript, wav_path):
    gentle_server.answer_raw("<html><body>Gentle</body></html>")
    with pytest.raises(GentleError, match=r"something other than JSON .*'text/html.*Gentle"):
        align_with_backend(wav_path, transcript, {}, settings(gentle_server.url))


def test_json_that_is_not_an_alignment_gives_a_clear_error(gentle_server, transcript, wav_path):
    gentle_server.answer_raw(
        json.dumps({"transcript": transcript["text"], "words": [{"case": "success"}]}),
        content_type="application/json",
    )
    with pytest.raises(GentleError, match=r"unusable alignment: words\[0\]: offsets None-None"):
        align_with_backend(wav_path, transcript, {}, settings(gentle_server.url))


def test_a_refused_request_is_not_retried(gentle_server):
    gentle_settings = GentleSettings(url=gentle_server.url, retries=3, backoff_s=0.01)
    with pytest.raises(GentleError, match=r"refused the request: HTTP 400: 'audio is not a WAV"):
        request_alignment(gentle_settings, b"ID3 not a wav", "Hello.")
    assert gentle_server.received == []


def test_unknown_backend_and_settings_are_refused(transcript, wav_path):
    with pytest.raises(ValueError, match="align.backend 'kaldi' is not one of"):
        align_with_backend(wav_path, transcript, {}, {"backend": "kaldi"})
    with pytest.raises(ValueError, match="unknown setting"):
        align_with_backend(wav_path, transcript, {}, settings("http://x", timeout=3))


def test_align_rule_with_the_gentle_backend(tmp_path, story_factory):
    story = story_factory("council")
    work = tmp_path / "work"
    work.mkdir()
    with start_server(Script(not_found={"council", "bridge"})) as server:
        result = run_snakemake(
            work,
            "stories/council/phonemes.json",
            config={
                "story_source": str(story.parent / "{story}.json"),
                "align": {"backend": "gentle", "gentle": {"url": server.url}},
            },
        )
        assert len(server.received) == 1
    assert "rule align:" in result.stderr
    story_dir = work / "stories" / "council"
    alignment = json.loads((story_dir / "alignment.json").read_text(encoding="utf-8"))
    cases = {entry["word"]: entry["case"] for entry in alignment["words"]}
    assert cases["council"] == NOT_FOUND and cases["bridge"] == NOT_FOUND
    assert cases["approved"] == SUCCESS
    assert f"gentle at {server.url} aligned" in (story_dir / "logs" / "align.log").read_text()

    phonemes = json.loads((story_dir / "phonemes.json").read_text(encoding="utf-8"))
    words = {word["word"]: word for word in phonemes["words"]}
    assert words["council"]["source"] == "g2p" and words["bridge"]["source"] == "g2p"
    assert words["approved"]["source"] == "aligned"
    aligned = next(entry for entry in alignment["words"] if entry["word"] == "approved")
    assert words["approved"]["start"] == pytest.approx(aligned["start"])
    speech = json.loads((story_dir / "speech.json").read_text(encoding="utf-8"))
    spoken = [word for sentence in speech["sentences"] for word in sentence["words"]]
    for name in ("council", "bridge"):
        word = words[name]
        phones = [phone for phone in phonemes["phones"] if phone["word"] == word["index"]]
        # The synthesiser's own pronunciation (speech.json), else g2p's: never empty.
        expected = plain_phones(spoken[word["index"]]["phones"]) or plain_phones(
            g2p.pronounce(name)
        )
        assert [phone["phone"] for phone in phones] == expected
        assert all(phone["source"] == "g2p" for phone in phones)
        assert word["start"] <= phones[0]["start"] and phones[-1]["end"] <= word["end"]
        # Placed in the gap between its aligned neighbours.
        before, after = phonemes["words"][word["index"] - 1], phonemes["words"][word["index"] + 1]
        assert before["end"] <= word["start"] and word["end"] <= after["start"]
