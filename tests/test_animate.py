"""Lip sync and natural motion of the presenter's landmarks, on the real astronaut landmarks."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from storyreel.animate import PHONE_VISEMES, VISEMES, animate, animate_track, viseme_of
from storyreel.g2p import ARPABET_PHONES
from storyreel.presenter import detect_reference

# "mama papa", a 0.6 s pause, "father", a 0.5 s pause, "hot".
WORDS = [
    ("mama", [("M", 0.40, 0.48), ("AA", 0.48, 0.60), ("M", 0.60, 0.68), ("AH", 0.68, 0.80)]),
    ("papa", [("P", 0.80, 0.88), ("AA", 0.88, 1.00), ("P", 1.00, 1.08), ("AH", 1.08, 1.20)]),
    ("father", [("F", 1.80, 1.88), ("AA", 1.88, 2.02), ("DH", 2.02, 2.10), ("ER", 2.10, 2.22)]),
    ("hot", [("HH", 2.72, 2.78), ("AA", 2.78, 2.92), ("T", 2.92, 3.02)]),
]
DURATION = 3.5
PAUSE_MIDDLES = [0.2, 1.5, 2.47, 3.3]


def phonemes_dict(words=WORDS, shift: float = 0.0) -> dict:
    entries, phones = [], []
    for index, (word, word_phones) in enumerate(words):
        entries.append(
            {
                "index": index,
                "word": word,
                "start": word_phones[0][1] + shift,
                "end": word_phones[-1][2] + shift,
                "sentence": 0,
                "source": "aligned",
            }
        )
        phones += [
            {
                "phone": phone,
                "start": round(start + shift, 3),
                "end": round(end + shift, 3),
                "word": index,
                "source": "aligned",
            }
            for phone, start, end in word_phones
        ]
    return {"story": "test", "duration": DURATION, "words": entries, "phones": phones}


def long_phonemes(seconds: float) -> dict:
    """The test words repeated to fill ``seconds``."""
    words = []
    for repeat in range(int(seconds // DURATION)):
        words += [
            (w, [(p, s + repeat * DURATION, e + repeat * DURATION) for p, s, e in ps])
            for w, ps in WORDS
        ]
    return phonemes_dict(words)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("presenter")
    return detect_reference(None, folder / "presenter.png", folder / "ref.json", name="astronaut")


def track(
    reference, fps=30.0, seed_text="test:mama papa", phonemes=None, duration=DURATION, **options
):
    return animate_track(
        phonemes or phonemes_dict(),
        reference,
        fps=fps,
        duration=duration,
        seed_text=seed_text,
        **options,
    )


def inner_lip_gap(points: np.ndarray) -> np.ndarray:
    """Per frame, how far apart the inner lips are (pixels), along the face's vertical axis
    (perpendicular to the eye corners' line, so head roll does not count)."""
    eye_line = points[:, 45] + points[:, 42] - points[:, 39] - points[:, 36]
    eye_line /= np.linalg.norm(eye_line, axis=1, keepdims=True)
    down = np.stack([-eye_line[:, 1], eye_line[:, 0]], axis=1)
    pairs = points[:, [67, 66, 65]] - points[:, [61, 62, 63]]
    return np.einsum("fpc,fc->fp", pairs, down).mean(axis=1)


def frame_at(seconds: float, fps: float) -> int:
    return round(seconds * fps)


def phone_centres(*names: str):
    return [(start + end) / 2 for _, ps in WORDS for phone, start, end in ps if phone in names]


def test_outputs_follow_the_file_contract(reference, tmp_path):
    phonemes = phonemes_dict()
    summary = animate(
        phonemes,
        reference,
        fps=25,
        duration=DURATION,
        seed_text="s",
        out_npz=tmp_path / "frames.npz",
        out_visemes=tmp_path / "visemes.json",
    )
    frames = math.ceil(DURATION * 25)  # 87.5 -> 88
    with np.load(tmp_path / "frames.npz") as saved:
        assert saved["points"].dtype == np.float32 and saved["points"].shape == (frames, 68, 2)
        assert saved["mouth_open"].dtype == np.float32 and saved["mouth_open"].shape == (frames,)
        assert float(saved["fps"]) == 25
    written = json.loads((tmp_path / "visemes.json").read_text(encoding="utf-8"))
    assert written == summary
    assert written["fps"] == 25 and written["frames"] == frames
    assert len(written["visemes"]) == len(phonemes["phones"])
    assert written["visemes"][0] == {
        "viseme": "MBP",
        "start": 0.4,
        "end": 0.48,
        "phone": "M",
        "word": 0,
    }
    assert [v["viseme"] for v in written["visemes"][8:12]] == ["FV", "AA", "TH", "ER"]
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    ("duration", "fps", "frames"), [(10.0, 30, 300), (0.1, 30, 3), (3.5, 25, 88), (1.0, 29.97, 30)]
)
def test_frame_count_is_ceil_of_duration_times_fps(reference, duration, fps, frames):
    result = track(reference, fps=fps, duration=duration)
    assert result["points"].shape == (frames, 68, 2)
    assert result["mouth_open"].shape == (frames,)


def test_every_arpabet_phone_has_a_viseme():
    assert set(PHONE_VISEMES) == ARPABET_PHONES
    assert set(PHONE_VISEMES.values()) <= set(VISEMES)
    assert 9 <= len(set(PHONE_VISEMES.values())) <= 12
    assert viseme_of("AA1") == "AA" and viseme_of("sil") == "rest"


def test_same_story_same_frames_other_story_other_life(reference):
    first = track(reference, seed_text="story-a: mama papa")
    again = track(reference, seed_text="story-a: mama papa")
    other = track(reference, seed_text="story-b: mama papa")
    assert np.array_equal(first["points"], again["points"])
    assert np.array_equal(first["mouth_open"], again["mouth_open"])
    assert first["blinks"] == again["blinks"]
    # The mouth follows the phones only; head motion and blinks follow the seed.
    assert np.array_equal(first["mouth_open"], other["mouth_open"])
    nose_shift = np.abs(first["points"][:, 30] - other["points"][:, 30]).max()
    assert nose_shift > 0.2
    assert first["blinks"] != other["blinks"]


@pytest.mark.parametrize("fps", [24, 30, 60])
def test_lips_close_at_m_b_p_and_in_pauses_and_open_on_aa(reference, fps):
    result = track(reference, fps=fps)
    gap = inner_lip_gap(result["points"].astype(float))
    mouth_open = result["mouth_open"]
    closed = [frame_at(t, fps) for t in phone_centres("M", "B", "P") + PAUSE_MIDDLES]
    opened = [frame_at(t, fps) for t in phone_centres("AA")]
    assert len(closed) == 8 and len(opened) == 4
    # The portrait smiles with teeth showing (its lips ~7 px apart): closed means they meet.
    assert np.abs(gap[closed]).max() < 0.3
    assert mouth_open[closed].max() < 0.01
    # Wide open (~0.4 inter-ocular distances) mid-vowel, a little less where two closures
    # squeeze a short vowel at a low frame rate.
    assert gap[opened].min() > 10
    assert mouth_open[opened].min() > 0.7
    # F: lower lip against the upper teeth, nearly closed.
    assert mouth_open[frame_at(phone_centres("F")[0], fps)] < 0.1


def test_mouth_opens_ahead_of_the_vowel(reference):
    fps = 100.0
    vowel_start = 2.78  # "hot": HH 2.72-2.78, AA 2.78-2.92
    normal = track(reference, fps=fps)["mouth_open"]
    late = track(reference, fps=fps, anticipation=0.005)["mouth_open"]
    ahead = frame_at(vowel_start - 0.04, fps)
    assert normal[ahead] > 0.3
    # Opening already under way 60 ms early, while the pause's closure is still ending.
    assert 0.01 < normal[frame_at(vowel_start - 0.06, fps)] < normal[ahead]
    assert late[ahead] < normal[ahead] - 0.1


def test_blinks_every_few_seconds_and_the_lids_meet(reference):
    fps = 30.0
    result = track(reference, fps=fps, phonemes=long_phonemes(10.5), duration=10.5)
    blinks = np.array(result["blinks"])
    assert 2 <= len(blinks) <= 6
    assert np.diff(blinks).min() >= 2.0 - 1 / fps
    assert np.diff(blinks).max() <= 6.0 + 1 / fps
    points = result["points"].astype(float)
    lid_gap = np.linalg.norm(points[:, [37, 38, 43, 44]] - points[:, [41, 40, 47, 46]], axis=2)
    closed_frames = [frame_at(start + 0.4 * 0.15, fps) for start in blinks]
    assert lid_gap[closed_frames].max() < 0.05
    open_eyes = np.median(lid_gap, axis=0)
    assert open_eyes.min() > 3
    # A blink lasts ~150 ms: about 4-5 frames at 30 fps with the lids well apart from open.
    shut = (lid_gap < 0.5 * open_eyes).all(axis=1)
    assert shut.sum() <= 3 * len(blinks)


def test_head_motion_is_small_and_optional(reference):
    phonemes = long_phonemes(10.5)
    moving = track(reference, phonemes=phonemes, duration=10.5)["points"]
    still = track(reference, phonemes=phonemes, duration=10.5, head_motion=0.0, brow_raise=0.0)[
        "points"
    ]
    nose_tip = np.array(reference["points"][30], dtype=float)
    drift = np.linalg.norm(moving[:, 30] - nose_tip, axis=1)
    assert 0.3 < drift.max() < 0.02 * reference["width"]
    # Smooth: no jumps between frames.
    assert np.linalg.norm(np.diff(moving[:, 30], axis=0), axis=1).max() < 0.5
    assert np.allclose(still[:, 30], nose_tip, atol=1e-4)
    assert np.allclose(still[:, 17:27], np.array(reference["points"])[17:27], atol=1e-4)
    assert moving.min() >= 0 and moving[..., 0].max() < reference["width"]


def test_five_minutes_at_60_fps_is_fast(reference):
    phonemes = long_phonemes(300.0)
    started = time.perf_counter()
    result = track(reference, fps=60.0, phonemes=phonemes, duration=300.0)
    elapsed = time.perf_counter() - started
    assert result["points"].shape == (18000, 68, 2)
    assert elapsed < 4.0, f"{elapsed:.2f} s for 18,000 frames"
