"""The rendered video, measured from the outside: streams, sync, lip sync and captions."""

from __future__ import annotations

import json
import re

import dlib
import imageio_ffmpeg
import numpy as np
import pytest
from conftest import REPO, run_snakemake
from media import AUDIO_RATE, decoded_audio, iter_frames, probe_streams, top_level_boxes
from PIL import Image

from storyreel.presenter import landmark_model_path

OPEN_VOWELS = {"AA", "AE", "AH", "AO", "AW", "AY"}
LIP_CLOSURES = {"M", "B", "P"}
FPS = 30
INTRO = 1.5
OUTRO = 2.0


def load(story_dir, name):
    return json.loads((story_dir / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def story(rendered_story):
    return rendered_story.story_dir


def test_streams_size_fps_and_lengths(story):
    video, audio = probe_streams(story / "final.mp4")
    assert (video["kind"], video["codec"], video["pix_fmt"]) == ("video", "h264", "yuv420p")
    assert video["size"] == (1280, 720) and video["fps"] == FPS
    assert (audio["kind"], audio["codec"]) == ("audio", "aac")
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(story / "final.mp4"))
    speech = load(story, "phonemes.json")["duration"]
    assert abs(frames / FPS - (INTRO + speech + OUTRO)) <= 1 / FPS
    audio_seconds = decoded_audio(story / "final.mp4").size / AUDIO_RATE
    assert abs(audio_seconds - frames / FPS) <= 1 / FPS
    boxes = top_level_boxes(story / "final.mp4")
    assert boxes.index("moov") < boxes.index("mdat")  # +faststart: playable while downloading


@pytest.fixture(scope="module")
def mouth_track(story):
    """Per-frame inner-lip gap measured by dlib on the video, plus the speech as heard."""
    frames = list(iter_frames(story / "final.mp4"))
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(landmark_model_path()))
    intro_frames = round(INTRO * FPS)
    # The presenter panel does not move: find the face on a few frames, fit points on all.
    found = [box for k in (0, 30, 60) for box in detector(frames[intro_frames + k], 1)]
    assert found, "no face found in the presenter panel of the video"
    face = max(found, key=lambda box: box.area())
    gaps = []
    for frame in frames:
        shape = predictor(frame, face)
        points = np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], float)
        eye_distance = np.linalg.norm(points[36:42].mean(0) - points[42:48].mean(0))
        gaps.append(np.linalg.norm(points[66] - points[62]) / eye_distance)
    audio = decoded_audio(story / "final.mp4")
    hop = AUDIO_RATE // FPS
    loudness = np.array(
        [np.sqrt(np.mean(audio[k * hop : (k + 1) * hop] ** 2)) for k in range(len(frames))]
    )
    return np.array(gaps), loudness, load(story, "phonemes.json"), intro_frames


def classify_frames(phonemes, n_frames, intro_frames):
    """What each video frame should show: open vowel (1), closed lips or silence (0)."""
    phones = phonemes["phones"]
    target = np.full(n_frames, np.nan)
    centres = {"open": [], "closed": [], "silence": []}
    for k in range(intro_frames, n_frames):
        t = (k - intro_frames) / FPS
        if t > phonemes["duration"]:
            break
        phone = next((p for p in phones if p["start"] <= t < p["end"]), None)
        if phone is None:
            if min(min(abs(t - p["start"]), abs(t - p["end"])) for p in phones) > 0.15:
                target[k] = 0
                centres["silence"].append(k)
            continue
        name = phone["phone"]
        target[k] = 1.0 if name in OPEN_VOWELS else 0.0 if name in LIP_CLOSURES else 0.4
        if abs(t - (phone["start"] + phone["end"]) / 2) <= 0.5 / FPS:
            if name in OPEN_VOWELS:
                centres["open"].append(k)
            elif name in LIP_CLOSURES:
                centres["closed"].append(k)
    return target, centres


def test_mouth_is_open_on_open_vowels_and_closed_on_mbp_and_silence(mouth_track):
    gaps, _, phonemes, intro_frames = mouth_track
    _, centres = classify_frames(phonemes, len(gaps), intro_frames)
    assert len(centres["open"]) >= 5 and len(centres["closed"]) >= 2
    assert len(centres["silence"]) >= 5
    open_gap = np.median(gaps[centres["open"]])
    assert open_gap > 0.15  # lips apart by more than 15 % of the eye distance
    assert np.median(gaps[centres["closed"]]) < open_gap / 3
    assert np.median(gaps[centres["silence"]]) < open_gap / 3


def best_lag(signal, reference, valid, max_lag=5):
    scores = {}
    index = np.arange(len(signal))
    for lag in range(-max_lag, max_lag + 1):
        source = index + lag
        ok = valid & (source >= 0) & (source < len(signal))
        scores[lag] = np.corrcoef(signal[source[ok]], reference[ok])[0, 1]
    return max(scores, key=scores.get), scores


def test_lip_sync_lag_is_within_one_frame(mouth_track):
    gaps, loudness, phonemes, intro_frames = mouth_track
    target, _ = classify_frames(phonemes, len(gaps), intro_frames)
    lag, scores = best_lag(gaps, target, ~np.isnan(target))
    assert abs(lag) <= 1, scores
    assert scores[lag] > 0.4, scores
    # Against the audio track of the file itself: the mouth opens with the sound.
    speaking = np.zeros(len(gaps), bool)
    speaking[intro_frames : intro_frames + round(phonemes["duration"] * FPS)] = True
    lag, scores = best_lag(gaps, loudness, speaking)
    assert abs(lag) <= 1, scores
    first_sound = int(np.argmax(loudness > 0.02))
    assert abs(first_sound - (intro_frames + phonemes["phones"][0]["start"] * FPS)) <= 1


def parse_vtt(text):
    assert text.startswith("WEBVTT\n")
    stamp = r"(\d\d):(\d\d):(\d\d)\.(\d\d\d)"
    cues = []
    for block in text.split("\n\n")[1:]:
        lines = block.strip().splitlines()
        if lines and "-->" not in lines[0]:
            lines = lines[1:]  # a cue identifier
        if not lines:
            continue
        match = re.fullmatch(stamp + " --> " + stamp, lines[0])
        assert match, lines
        h1, m1, s1, f1, h2, m2, s2, f2 = map(int, match.groups())
        cues.append(
            (
                h1 * 3600 + m1 * 60 + s1 + f1 / 1000,
                h2 * 3600 + m2 * 60 + s2 + f2 / 1000,
                " ".join(lines[1:]),
            )
        )
    return cues


def test_captions_hold_every_word_in_order_within_its_span(story):
    cues = parse_vtt((story / "captions.vtt").read_text(encoding="utf-8"))
    words = load(story, "phonemes.json")["words"]
    caption_words = [
        (start, end, w)
        for start, end, text in cues
        for w in re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)*", text)
    ]
    assert [w for _, _, w in caption_words] == [w["word"] for w in words]
    for (start, end, _), word in zip(caption_words, words, strict=True):
        assert start - 1e-3 <= word["start"] + INTRO and word["end"] + INTRO <= end + 1e-3
    for before, after in zip(cues, cues[1:], strict=False):
        assert before[1] <= after[0]


def test_preview_sheet(story):
    with Image.open(story / "preview.png") as preview:
        assert preview.width >= 1200 and preview.height >= 800


def test_presenter_without_a_face_is_a_clear_error(tmp_path):
    Image.new("RGB", (400, 500), (90, 120, 200)).save(tmp_path / "wall.png")
    source = str(REPO / "examples" / "stories" / "{story}.json")
    presenter = {"default": "wall", "presenters": {"wall": {"image": str(tmp_path / "wall.png")}}}
    result = run_snakemake(
        tmp_path,
        "stories/demo/landmarks/reference.json",
        config={"story_source": source, "presenter": presenter},
        check=False,
    )
    assert result.returncode != 0
    assert "wall.png: no face found" in result.stderr
