"""The composed video, encoded by the real ffmpeg and checked by decoding it again."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import pytest
import soundfile
from media import AUDIO_RATE, decoded_audio, decoded_frames, probe_streams, top_level_boxes
from PIL import Image, ImageDraw

from storyreel.captions import build_cues
from storyreel.compose import (
    ComposeError,
    Layout,
    PresenterFrames,
    compose,
    find_ffmpeg,
    image_segments,
    subtract_rects,
)

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
WORD_RE = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")
PARAGRAPHS = [
    ["Council approves the budget.", "Work starts in March."],
    ["The new bridge opens next spring."],
]
PRESENTER_BACKGROUND = (200, 40, 200)  # a colour no other part of the test video uses


# --- fixtures: a small story with everything the compose step reads ---------------------------


def make_transcript(paragraphs: list[list[str]]) -> dict:
    """transcript.json for sentences grouped in paragraphs (see docs/formats.md)."""
    text = ""
    sentences = []
    for paragraph, paragraph_sentences in enumerate(paragraphs):
        for position, sentence in enumerate(paragraph_sentences):
            if text:
                text += " " if position else "\n\n"
            start = len(text)
            text += sentence
            words = [
                {
                    "word": m.group(),
                    "start_offset": start + m.start(),
                    "end_offset": start + m.end(),
                }
                for m in WORD_RE.finditer(sentence)
            ]
            sentences.append(
                {
                    "index": len(sentences),
                    "paragraph": paragraph,
                    "text": sentence,
                    "start_offset": start,
                    "end_offset": len(text),
                    "words": words,
                }
            )
    return {"story": "test", "language": "en", "text": text, "sentences": sentences}


def make_phonemes(
    transcript: dict,
    *,
    lead_in=0.3,
    word=0.3,
    gap=0.04,
    sentence_pause=0.3,
    paragraph_pause=0.7,
    tail=0.3,
) -> dict:
    """phonemes.json with evenly timed words, each a consonant then a vowel."""
    words, phones = [], []
    t = lead_in
    previous_paragraph = None
    for sentence in transcript["sentences"]:
        if previous_paragraph is not None:
            new_paragraph = sentence["paragraph"] != previous_paragraph
            t += (paragraph_pause if new_paragraph else sentence_pause) - gap
        previous_paragraph = sentence["paragraph"]
        for entry in sentence["words"]:
            start, end = round(t, 3), round(t + word, 3)
            middle = round(t + word * 0.4, 3)
            index = len(words)
            words.append(
                {
                    "index": index,
                    "word": entry["word"],
                    "start": start,
                    "end": end,
                    "sentence": sentence["index"],
                    "source": "aligned",
                }
            )
            phones.append(
                {"phone": "T", "start": start, "end": middle, "word": index, "source": "aligned"}
            )
            phones.append(
                {"phone": "AA", "start": middle, "end": end, "word": index, "source": "aligned"}
            )
            t = end + gap
    duration = round(t - gap + tail, 3)
    return {"story": "test", "duration": duration, "words": words, "phones": phones}


def write_speech(path: Path, phonemes: dict, rate: int = 22_050) -> None:
    """speech.wav: a tone during every word, silence elsewhere."""
    samples = np.zeros(round(phonemes["duration"] * rate), np.float32)
    for word in phonemes["words"]:
        first, last = round(word["start"] * rate), round(word["end"] * rate)
        t = np.arange(last - first) / rate
        samples[first:last] = 0.4 * np.sin(2 * np.pi * 330 * t)
    soundfile.write(path, samples, rate, subtype="PCM_16")


def write_presenter_frames(root: Path, duration: float, fps: float, *, shards=2, size=96):
    """Presenter frames in shards: a face whose mouth opens on the vowels, on a magenta ground.

    A square in the top-left corner is white on even frames and black on odd ones, so a test can
    read back which presenter frame each video frame shows.
    """
    count = math.ceil(duration * fps - 1e-6)
    folders = [root / f"shard-{i}" for i in range(shards)]
    for folder in folders:
        folder.mkdir(parents=True)
    for k in range(count):
        image = np.zeros((size, size, 3), np.uint8)
        image[:] = PRESENTER_BACKGROUND[::-1]  # cv2 writes BGR
        centre = size // 2
        cv2.ellipse(image, (centre, centre), (size // 4, size // 3), 0, 0, 360, (150, 190, 235), -1)
        mouth = 2 + (k % 4) * size // 40
        cv2.ellipse(
            image, (centre, centre + size // 6), (size // 10, mouth), 0, 0, 360, (40, 20, 90), -1
        )
        square = 255 if k % 2 == 0 else 0
        image[size // 8 : size // 8 + size // 5, size // 8 : size // 8 + size // 5] = square
        shard = k * shards // count
        cv2.imwrite(str(folders[shard] / f"frame-{k:06d}.png"), image)
    return folders


def write_news_image(path: Path, size: tuple[int, int], top: tuple, bottom: tuple) -> None:
    """A gradient with a few shapes (no yellow, no magenta: the test reads those colours)."""
    width, height = size
    ramp = np.linspace(0, 1, height)[:, None, None]
    pixels = (np.array(top) * (1 - ramp) + np.array(bottom) * ramp).repeat(width, axis=1)
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for n in range(5):
        x = (n + 1) * width // 7
        draw.ellipse(
            (x, height // 3, x + width // 10, height // 3 + width // 10), fill=(230, 230, 230)
        )
    image.save(path, quality=90)


@dataclass
class StoryFiles:
    story: dict
    story_dir: Path
    frame_dirs: list[Path]
    wav: Path
    phonemes: dict
    transcript: dict
    fps: float
    duration: float


def make_story_files(root: Path, fps: float = 15, paragraphs=PARAGRAPHS) -> StoryFiles:
    root.mkdir(parents=True, exist_ok=True)
    (root / "assets").mkdir()
    write_news_image(root / "assets" / "image-00.jpg", (480, 300), (20, 50, 110), (10, 20, 40))
    write_news_image(root / "assets" / "image-01.jpg", (300, 400), (20, 90, 60), (5, 30, 20))
    story = {
        "id": "test",
        "title": "Council approves budget & new bridge",
        "language": "en",
        "text": "\n\n".join(" ".join(p) for p in paragraphs),
        "images": [
            {"uri": "a.jpg", "file": "assets/image-00.jpg", "credit": "City Photo Desk"},
            {"uri": "b.png", "file": "assets/image-01.jpg", "credit": "Jane Doe / Agency"},
        ],
    }
    transcript = make_transcript(paragraphs)
    phonemes = make_phonemes(transcript)
    wav = root / "speech.wav"
    write_speech(wav, phonemes)
    frame_dirs = write_presenter_frames(root / "frames", phonemes["duration"], fps)
    return StoryFiles(story, root, frame_dirs, wav, phonemes, transcript, fps, phonemes["duration"])


def run_compose(files: StoryFiles, out_dir: Path, **video) -> tuple[Path, dict, dict]:
    settings = {
        "width": 320,
        "height": 180,
        "fps": files.fps,
        "layout": "landscape",
        "intro_seconds": 1.0,
        "outro_seconds": 1.0,
        "crf": 20,
        "preset": "veryfast",
        "audio_bitrate": "96k",
        **video,
    }
    out_mp4 = out_dir / "video.mp4"
    summary = compose(
        story=files.story,
        story_dir=files.story_dir,
        frame_dirs=files.frame_dirs,
        wav=files.wav,
        phonemes=files.phonemes,
        transcript=files.transcript,
        out_mp4=out_mp4,
        out_vtt=out_dir / "captions.vtt",
        video=settings,
        progress=False,
    )
    return out_mp4, summary, settings


# --- reading the video back ---------------------------------------------------------------------


def highlight_mask(frame: np.ndarray) -> np.ndarray:
    """Pixels of the caption's yellow word highlight."""
    red, green, blue = (frame[..., i].astype(int) for i in range(3))
    return (red > 190) & (green > 150) & (blue < 110) & (red - blue > 110)


def presenter_mask(frame: np.ndarray) -> np.ndarray:
    red, green, blue = (frame[..., i].astype(int) for i in range(3))
    return (red > 150) & (blue > 150) & (green < 90)


# --- tests ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def story_files(tmp_path_factory) -> StoryFiles:
    return make_story_files(tmp_path_factory.mktemp("story"))


@pytest.fixture(scope="module")
def landscape(story_files, tmp_path_factory):
    out_mp4, summary, settings = run_compose(story_files, tmp_path_factory.mktemp("landscape"))
    return out_mp4, summary, settings, decoded_frames(out_mp4)


def test_streams_sizes_and_lengths(landscape, story_files):
    out_mp4, summary, settings, frames = landscape
    streams = probe_streams(out_mp4)
    assert [s["kind"] for s in streams] == ["video", "audio"]
    video, audio = streams
    assert video["codec"] == "h264" and video["pix_fmt"] == "yuv420p"
    assert video["size"] == (320, 180)
    assert video["fps"] == 15
    assert audio["codec"] == "aac"

    fps = settings["fps"]
    expected = settings["intro_seconds"] + story_files.duration + settings["outro_seconds"]
    frame_count, _ = imageio_ffmpeg.count_frames_and_secs(str(out_mp4))
    assert frame_count == len(frames) == summary["frames"]
    assert abs(frame_count / fps - expected) <= 1 / fps
    audio_seconds = decoded_audio(out_mp4).size / AUDIO_RATE
    assert abs(audio_seconds - frame_count / fps) <= 1 / fps
    assert frames.shape[1:] == (180, 320, 3)


def test_faststart_puts_the_index_first(landscape):
    boxes = top_level_boxes(landscape[0])
    assert "moov" in boxes and "mdat" in boxes
    assert boxes.index("moov") < boxes.index("mdat")


def test_speech_is_delayed_by_the_intro(landscape, story_files):
    out_mp4, _, settings, _ = landscape
    samples = decoded_audio(out_mp4)
    loud = np.flatnonzero(np.abs(samples) > 0.05)
    onset = loud[0] / AUDIO_RATE
    expected = settings["intro_seconds"] + story_files.phonemes["words"][0]["start"]
    assert abs(onset - expected) < 0.03
    # Silence through the outro.
    speech_end = settings["intro_seconds"] + story_files.phonemes["words"][-1]["end"]
    assert loud[-1] / AUDIO_RATE < speech_end + 0.03


def test_presenter_frames_are_in_sync(landscape, story_files):
    """Output frame intro_frames + k shows presenter frame k (read back from its parity square)."""
    _, _, settings, frames = landscape
    fps = settings["fps"]
    intro_frames = round(settings["intro_seconds"] * fps)
    x, y, width, height = Layout.create(320, 180, "landscape", (96, 96)).panel
    # The square spans 1/8 .. 1/8 + 1/5 of the presenter frame: sample its centre.
    centre_x, centre_y = x + round(width * 0.225), y + round(height * 0.225)
    speech_frames = math.ceil(story_files.duration * fps - 1e-6)
    for k in range(0, speech_frames - 1):
        value = frames[intro_frames + k, centre_y - 1 : centre_y + 2, centre_x - 1 : centre_x + 2]
        assert (value.mean() > 128) == (k % 2 == 0), f"presenter frame {k}"


def test_presenter_at_half_the_video_rate(story_files, tmp_path):
    """Presenter frames rendered at 15 fps in a 30 fps video: each one is shown twice."""
    out_mp4, _, settings = run_compose(
        story_files, tmp_path, fps=30, presenter_fps=15, intro_seconds=0.5, outro_seconds=0
    )
    frames = decoded_frames(out_mp4)
    x, y, width, height = Layout.create(320, 180, "landscape", (96, 96)).panel
    centre_x, centre_y = x + round(width * 0.225), y + round(height * 0.225)
    intro_frames = 15
    for n in range(len(frames) - intro_frames - 1):
        value = frames[intro_frames + n, centre_y - 1 : centre_y + 2, centre_x - 1 : centre_x + 2]
        assert (value.mean() > 128) == ((n // 2) % 2 == 0), f"video frame {n} of the speech"


def test_layout_landscape_presenter_on_the_right(landscape):
    _, _, settings, frames = landscape
    middle = frames[len(frames) // 2]
    ys, xs = np.nonzero(presenter_mask(middle))
    assert xs.size > 500
    assert xs.min() > 320 * 0.6
    assert ys.mean() < 180 * 0.5


def test_cards_hide_the_presenter(landscape):
    _, _, _, frames = landscape
    assert presenter_mask(frames[0]).sum() == 0  # intro card
    assert presenter_mask(frames[-1]).sum() == 0  # outro card
    assert highlight_mask(frames[0]).sum() == 0


def test_burned_in_captions_follow_the_words(landscape, story_files):
    """The yellow highlight moves right word by word through a cue, and the cues change."""
    _, _, settings, frames = landscape
    fps, intro = settings["fps"], settings["intro_seconds"]
    cues = build_cues(story_files.phonemes, story_files.transcript)
    assert len(cues) >= 2

    def frame_at(speech_time: float) -> np.ndarray:
        return frames[math.floor((intro + speech_time) * fps)]

    for cue in cues[:2]:
        centres = []
        for word in cue.words:
            mask = highlight_mask(frame_at((word.start + word.end) / 2))
            assert mask.sum() > 10, f"no highlight on {word.text!r}"
            ys, xs = np.nonzero(mask)
            assert ys.mean() > 180 * 0.75  # captions sit at the bottom
            centres.append(xs.mean())
        assert centres == sorted(centres) and len(set(centres)) == len(centres)

    # Different cues show different text: compare the caption band between them.
    band = slice(int(180 * 0.82), 180)
    first = frame_at(cues[0].words[0].start + 0.05)[band].astype(int)
    second = frame_at(cues[1].words[0].start + 0.05)[band].astype(int)
    assert np.abs(first - second).mean() > 3


def test_vtt_matches_the_video_timeline(landscape, story_files):
    out_mp4, _, settings, _ = landscape
    vtt = (out_mp4.parent / "captions.vtt").read_text(encoding="utf-8")
    assert vtt.startswith("WEBVTT\n")
    first_start = re.search(r"(\d\d):(\d\d):(\d\d)\.(\d{3}) -->", vtt).groups()
    seconds = int(first_start[1]) * 60 + int(first_start[2]) + int(first_start[3]) / 1000
    word = story_files.phonemes["words"][0]["start"]
    assert seconds == pytest.approx(settings["intro_seconds"] + word, abs=0.002)


def test_portrait_layout(story_files, tmp_path):
    out_mp4, summary, _ = run_compose(
        story_files,
        tmp_path,
        width=180,
        height=320,
        layout="portrait",
        intro_seconds=0.4,
        outro_seconds=0.4,
    )
    video = probe_streams(out_mp4)[0]
    assert video["size"] == (180, 320)
    assert video["size"][0] * 16 == video["size"][1] * 9
    frames = decoded_frames(out_mp4)
    ys, xs = np.nonzero(presenter_mask(frames[len(frames) // 2]))
    assert ys.mean() > 320 * 0.45  # lower half
    assert abs(xs.mean() - 90) < 12  # centred


def test_no_intro_or_outro(story_files, tmp_path):
    out_mp4, summary, settings = run_compose(
        story_files, tmp_path, intro_seconds=0, outro_seconds=0
    )
    assert summary["frames"] == math.ceil(story_files.duration * settings["fps"] - 1e-6)
    assert abs(decoded_audio(out_mp4).size / AUDIO_RATE - summary["duration"]) <= 1 / 15


def test_image_segments_switch_between_paragraphs(story_files):
    three = [["One two three."], ["Four five."], ["Six seven eight."]]
    transcript = make_transcript(three)
    phonemes = make_phonemes(transcript)
    segments = image_segments(story_files.story, transcript, phonemes, 1.0, 10.0)
    assert [s.image for s in segments] == [0, 1, 0]  # two images cycle over three paragraphs
    words = phonemes["words"]
    first_pause = (words[2]["end"] + 1.0, words[3]["start"] + 1.0)
    switch = segments[1].start + segments[1].fade_in / 2
    assert first_pause[0] < switch < first_pause[1]
    assert segments[0].start == 0 and segments[-1].end == 10.0

    single = {**story_files.story, "images": story_files.story["images"][:1]}
    assert len(image_segments(single, transcript, phonemes, 1.0, 10.0)) == 1


def test_missing_ffmpeg_binary_is_a_clear_error(story_files, tmp_path):
    missing = tmp_path / "no-such-ffmpeg"
    with pytest.raises(ComposeError, match="no-such-ffmpeg does not exist"):
        find_ffmpeg(str(missing))
    with pytest.raises(ComposeError, match="ffmpeg binary"):
        compose(
            story=story_files.story,
            story_dir=story_files.story_dir,
            frame_dirs=story_files.frame_dirs,
            wav=story_files.wav,
            phonemes=story_files.phonemes,
            transcript=story_files.transcript,
            out_mp4=tmp_path / "v.mp4",
            out_vtt=tmp_path / "v.vtt",
            video={"width": 320, "height": 180, "fps": 15},
            ffmpeg=str(missing),
            progress=False,
        )
    assert not (tmp_path / "v.mp4").exists()


def test_system_ffmpeg_missing_from_path(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ComposeError, match="no ffmpeg is on PATH"):
        find_ffmpeg("system")


def test_missing_presenter_frames_are_named(story_files, tmp_path):
    partial = tmp_path / "frames"
    partial.mkdir()
    for path in sorted(story_files.frame_dirs[0].glob("frame-*.png"))[:5]:
        (partial / path.name).write_bytes(path.read_bytes())
    with pytest.raises(ComposeError, match="presenter frames: .* missing .*frame 5"):
        compose(
            story=story_files.story,
            story_dir=story_files.story_dir,
            frame_dirs=[partial],
            wav=story_files.wav,
            phonemes=story_files.phonemes,
            transcript=story_files.transcript,
            out_mp4=tmp_path / "v.mp4",
            out_vtt=tmp_path / "v.vtt",
            video={"width": 320, "height": 180, "fps": 15},
            progress=False,
        )


def test_ffmpeg_failure_is_reported(story_files, tmp_path):
    with pytest.raises(ComposeError, match="ffmpeg failed"):
        run_compose(story_files, tmp_path, preset="no-such-preset")
    assert not list(tmp_path.glob("*.mp4"))


def test_bad_video_settings(story_files, tmp_path):
    with pytest.raises(ValueError, match="even"):
        run_compose(story_files, tmp_path, width=321)
    with pytest.raises(ValueError, match="layout"):
        run_compose(story_files, tmp_path, layout="square")


def test_subtract_rects_tiles_the_area_around_the_holes():
    area = (0, 0, 40, 30)
    holes = [(5, 3, 15, 20), (10, 10, 35, 25), (30, -5, 60, 4), (50, 50, 60, 60)]
    rects = subtract_rects(area, holes)
    covered = np.zeros((30, 40), int)
    for x0, y0, x1, y1 in rects:
        assert x0 < x1 and y0 < y1
        covered[y0:y1, x0:x1] += 1
    expected = np.ones((30, 40), int)
    for x0, y0, x1, y1 in holes:
        expected[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = 0
    np.testing.assert_array_equal(covered, expected)  # each visible pixel exactly once
    assert subtract_rects(area, []) == [area]


def test_presenter_frames_read_ahead_match_direct_reads(story_files, tmp_path):
    fps, size = story_files.fps, (120, 150)
    direct = PresenterFrames(story_files.frame_dirs, story_files.duration, fps)
    ahead = PresenterFrames(story_files.frame_dirs, story_files.duration, fps)
    planned = [n / (2 * fps) for n in range(-4, 40)]  # a video at twice the rate, clamped at 0
    ahead.read_ahead(planned, size, frames=3)
    try:
        asked = planned[:10] + planned[14:30] + [planned[3]] + planned[30:]  # skips, one back
        for speech_time in asked:
            np.testing.assert_array_equal(ahead.at(speech_time, size), direct.at(speech_time, size))
        np.testing.assert_array_equal(ahead.at(0.5, (64, 80)), direct.at(0.5, (64, 80)))
    finally:
        ahead.close()

    folder = tmp_path / "frames"
    folder.mkdir()
    for path in sorted(p for d in story_files.frame_dirs for p in d.glob("frame-*.png")):
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "frame-000004.png").write_bytes(b"not a png")
    broken = PresenterFrames([folder], story_files.duration, fps)
    broken.read_ahead([n / fps for n in range(10)], size)
    try:
        broken.at(3 / fps, size)
        with pytest.raises(ComposeError, match="frame-000004.png cannot be read"):
            broken.at(4 / fps, size)
    finally:
        broken.close()
