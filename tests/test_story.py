"""The story contract: every bad story is refused with a message that names the problem."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run_snakemake, write_image
from PIL import Image

from storyreel.steps import init_story
from storyreel.story import StoryError, check_story_id, load_story, validate_story

LIMITS = {"image_pixels": 40_000_000, "image_bytes": 50 * 2**20, "image_min_side": 64}
ASSETS = {"max_side": 1024, "jpeg_quality": 85}


def run_init(source: Path, tmp_path: Path, story_id: str | None = None):
    story_id = story_id or source.stem
    return init_story(
        source=str(source),
        story_json=str(tmp_path / "out" / "story.json"),
        assets=str(tmp_path / "out" / "assets"),
        story=story_id,
        limits=LIMITS,
        assets_config=ASSETS,
    )


def test_valid_story_is_normalised(story_factory, tmp_path):
    source = story_factory()
    story = run_init(source, tmp_path)
    assert story["language"] == "en"
    assert story["images"][0]["file"] == "assets/image-00.jpg"
    saved = Image.open(tmp_path / "out" / "assets" / "image-00.jpg")
    assert saved.format == "JPEG" and saved.mode == "RGB" and saved.size == (320, 200)
    assert json.loads((tmp_path / "out" / "story.json").read_text())["id"] == "council"


def test_demo_story_is_valid():
    story = load_story(REPO / "examples" / "stories" / "demo.json", expected_id="demo")
    assert story["images"] and story["title"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"text": None}, "missing required field 'text'"),
        ({"text": ""}, "field 'text' is empty"),
        ({"text": "  \n\n "}, "field 'text' is empty"),
        (
            {"text": "word " * 200_000},
            "field 'text' is 1,000,000 characters long; the limit is 20,000",
        ),
        ({"images": []}, "field 'images' is empty"),
        ({"images": [{"uri": "photo.png"}] * 21}, "field 'images' has 21 entries; the limit is 20"),
        ({"images": [{"url": "photo.png"}]}, "missing required field 'images[0].uri'"),
        ({"title": 7}, "field 'title' must be a string, not a number"),
        ({"language": "fr"}, "field 'language' is 'fr'; it must be one of"),
        ({"colour": "red"}, "unknown field(s) 'colour'"),
    ],
)
def test_bad_story_fields(story_factory, change, message):
    story = json.loads(story_factory().read_text())
    for key, value in change.items():
        if value is None:
            story.pop(key)
        else:
            story[key] = value
    with pytest.raises(StoryError) as err:
        validate_story(story, source="council.json")
    assert message in str(err.value)
    assert "story 'council' (council.json)" in str(err.value)


@pytest.mark.parametrize("story_id", ["../etc", "A B", "x/y", ".hidden", "", "/abs", "a" * 64])
def test_bad_story_ids_are_refused(story_id):
    with pytest.raises(StoryError, match="it must be 1-63 lower-case letters"):
        validate_story({"id": story_id, "title": "t", "text": "x", "images": [{"uri": "a.png"}]})
    with pytest.raises(StoryError, match="is not valid"):
        check_story_id(story_id)


@pytest.mark.parametrize(
    "target",
    [
        "stories/../etc/story.json",
        "stories/A B/story.json",
        "stories/.hidden/story.json",
        "stories/x/y/story.json",
    ],
)
def test_workflow_refuses_bad_ids(tmp_path, target):
    result = run_snakemake(tmp_path, target, check=False)
    assert result.returncode != 0
    # Either no rule matches (the wildcard constraint) or the path is refused outright.
    assert any(
        reason in result.stderr
        for reason in ("MissingRuleException", "No rule to produce", "No such file or directory")
    )
    assert [p.name for p in tmp_path.iterdir() if p.name != ".snakemake"] == []


def test_id_must_match_the_requested_story(story_factory, tmp_path):
    source = story_factory("council")
    with pytest.raises(StoryError, match="field 'id' is 'council' but the story was requested"):
        run_init(source, tmp_path, story_id="other")


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin.json"
    path.write_bytes('{"id": "latin", "title": "Caf\u00e9", "text": "x"}'.encode("latin-1"))
    with pytest.raises(StoryError, match=r"latin.json is not UTF-8 text: byte 0xe9 at offset"):
        load_story(path)


def test_broken_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"id": "broken", "title": }')
    with pytest.raises(StoryError, match=r"broken.json is not valid JSON: .* line 1, column 27"):
        load_story(path)


def test_text_file_posing_as_image(story_factory, tmp_path):
    source = story_factory(images=[{"uri": "notes.jpg"}])
    (source.parent / "notes.jpg").write_text("this is not a picture\n")
    with pytest.raises(
        StoryError, match=r"images\[0\] \(notes.jpg\): file notes.jpg is not an image"
    ):
        run_init(source, tmp_path)


def test_truncated_jpeg(story_factory, tmp_path):
    source = story_factory(images=[{"uri": "photo.png"}, {"uri": "cut.jpg"}])
    full = tmp_path / "full.jpg"
    write_image(full, size=(640, 480)).with_suffix(".jpg")
    Image.open(full).save(full, quality=95)
    data = full.read_bytes()
    (source.parent / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(StoryError, match=r"images\[1\] \(cut.jpg\): file cut.jpg is truncated"):
        run_init(source, tmp_path)


def huge_png_header(width: int, height: int) -> bytes:
    """A tiny PNG file whose header declares width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(("width", "height"), [(30000, 30000), (8000, 6000)])
def test_decompression_bomb(story_factory, tmp_path, width, height):
    source = story_factory(images=[{"uri": "bomb.png"}])
    (source.parent / "bomb.png").write_bytes(huge_png_header(width, height))
    with pytest.raises(StoryError, match=r"images\[0\] \(bomb.png\): image is .*40 megapixels"):
        run_init(source, tmp_path)


def test_missing_image_file(story_factory, tmp_path):
    source = story_factory(images=[{"uri": "gone.jpg"}])
    with pytest.raises(
        StoryError, match=r"images\[0\] \(gone.jpg\): file .*gone.jpg does not exist"
    ):
        run_init(source, tmp_path)


def test_unsupported_image_scheme(story_factory, tmp_path):
    source = story_factory(images=[{"uri": "ftp://example.invalid/a.jpg"}])
    with pytest.raises(StoryError, match="the ftp:// scheme is not supported"):
        run_init(source, tmp_path)


def test_odd_images_are_normalised(story_factory, tmp_path):
    folder = story_factory().parent
    Image.new("RGBA", (3000, 90), (255, 0, 0, 0)).save(folder / "banner.png")
    Image.new("L", (100, 2500), 128).save(folder / "tall.gif")
    source = story_factory(images=[{"uri": "banner.png"}, {"uri": f"file://{folder}/tall.gif"}])
    story = run_init(source, tmp_path)
    assert [(i["width"], i["height"]) for i in story["images"]] == [(1024, 31), (41, 1024)]
    for image in story["images"]:
        assert Image.open(tmp_path / "out" / image["file"]).mode == "RGB"


def test_unicode_story(story_factory, tmp_path):
    text = (
        "\u201cWe\u2019re ready\u201d \u2014 the mayor said \U0001f389 at 9:30."
        "\n\nCaf\u00e9s reopen\u2026"
    )
    story = run_init(story_factory(text=text, title="Caf\u00e9s \U0001f389"), tmp_path)
    assert story["text"] == text


def test_bad_story_through_the_workflow(story_factory, tmp_path):
    source = story_factory("council", text="")
    result = run_snakemake(
        tmp_path,
        "stories/council/story.json",
        config={"story_source": str(source.parent / "{story}.json")},
        check=False,
    )
    assert result.returncode != 0
    assert "story 'council'" in result.stderr and "field 'text' is empty" in result.stderr
    assert not (tmp_path / "stories" / "council" / "story.json").exists()


def test_huge_but_legal_image_is_downscaled(story_factory, tmp_path):
    folder = story_factory().parent
    noise = np.random.default_rng(7).integers(0, 255, (4000, 6000, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "huge.jpg", quality=80)
    story = run_init(story_factory(images=[{"uri": "huge.jpg"}]), tmp_path)
    assert (story["images"][0]["width"], story["images"][0]["height"]) == (1024, 683)
