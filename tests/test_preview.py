"""The lip-sync preview sheet, drawn from a small hand-built story."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from test_compose import make_story_files

from storyreel.preview import SHEET_WIDTH, make_preview, span_at


@pytest.fixture(scope="module")
def story_files(tmp_path_factory):
    return make_story_files(tmp_path_factory.mktemp("preview-story"))


def visemes_for(phonemes: dict) -> dict:
    return {
        "fps": 15,
        "frames": 0,
        "visemes": [
            {
                "viseme": phone["phone"],
                "start": phone["start"],
                "end": phone["end"],
                "phone": phone["phone"],
                "word": phone["word"],
            }
            for phone in phonemes["phones"]
        ],
        "blinks": [0.5, 2.0],
    }


def test_preview_sheet_with_everything(story_files, tmp_path):
    fps = story_files.fps
    frames = math.ceil(story_files.duration * fps - 1e-6)
    mouth = (np.sin(np.arange(frames) / 2) + 1) / 2
    out = make_preview(
        frame_dirs=story_files.frame_dirs,
        wav=story_files.wav,
        phonemes=story_files.phonemes,
        visemes=visemes_for(story_files.phonemes),
        mouth_open=mouth,
        fps=fps,
        out_png=tmp_path / "preview" / "sheet.png",
    )
    with Image.open(out) as sheet:
        assert sheet.format == "PNG"
        assert sheet.width == SHEET_WIDTH
        # Three rows of square thumbnails (about 260 px each) plus a five-row timeline.
        assert 1300 < sheet.height < 1900
        pixels = np.asarray(sheet.convert("RGB"))
    # The presenter's magenta ground shows in the contact sheet, the waveform's blue below it.
    assert ((pixels[..., 0] > 150) & (pixels[..., 2] > 150) & (pixels[..., 1] < 90)).sum() > 10000
    assert not list(out.parent.glob("*.tmp.png"))


def test_preview_without_animation_data(story_files, tmp_path):
    out = make_preview(
        frame_dirs=story_files.frame_dirs,
        wav=story_files.wav,
        phonemes=story_files.phonemes,
        visemes=None,
        mouth_open=None,
        fps=story_files.fps,
        out_png=tmp_path / "sheet.png",
        columns=4,
        rows=2,
    )
    with Image.open(out) as sheet:
        assert sheet.width == SHEET_WIDTH
        assert 900 < sheet.height < 1500


def test_span_at():
    words = [{"word": "a", "start": 0.5, "end": 0.8}, {"word": "b", "start": 1.0, "end": 1.2}]
    assert span_at(words, 0.2) is None
    assert span_at(words, 0.5)["word"] == "a"
    assert span_at(words, 0.9) is None
    assert span_at(words, 1.1)["word"] == "b"
    assert span_at(words, 1.2) is None
