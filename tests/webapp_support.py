"""Fixtures of the newsroom app's tests: a watcher workdir, the app on a scratch database,
signed-in clients, and small real media files (an MP4, captions, a PNG)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import imageio_ffmpeg
import pytest
import yaml
from conftest import REPO, write_image
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy.orm import Session

from webapp import accounts
from webapp.app import create_app
from webapp.settings import AppSettings

EDITOR, PASSWORD = "ada", "correct horse battery"
LOOPBACK = ("127.0.0.1", 50000)  # TestClient's own default address is "testclient"
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def write_watcher_config(folder: Path, **overrides) -> Path:
    """A watcher.yaml for a local run in ``folder/work``: inbox, queue and published/ inside
    it; the repository's Snakefile and config.yaml (copied, so the app reads the same one)."""
    work = folder / "work"
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "config.yaml", work / "config.yaml")
    settings = {
        "workdir": str(work),
        "snakefile": str(REPO / "Snakefile"),
        "metrics": {"port": 0},
        "source": {"kind": "inbox", "inbox": "inbox", "poll_s": 0.2},
        **overrides,
    }
    path = folder / "watcher.yaml"
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


@pytest.fixture(name="app_settings")
def app_settings_fixture(tmp_path) -> AppSettings:
    return AppSettings(
        data_dir=tmp_path / "data",
        watcher_config=write_watcher_config(tmp_path),
        secret_key="a test secret that is long enough",
        max_upload_bytes=400_000,
    )


@pytest.fixture(name="client")
def client_fixture(app_settings) -> TestClient:
    """The app on an empty database, asked from an address that is not this machine's."""
    with TestClient(create_app(app_settings), follow_redirects=False) as test_client:
        yield test_client


def local_client(app, **options) -> TestClient:
    """A client of ``app`` at a loopback address, as a browser on the app's machine."""
    return TestClient(app, follow_redirects=False, client=LOOPBACK, **options)


@pytest.fixture(name="editor")
def editor_fixture(client) -> TestClient:
    """``client``, signed in as an editor."""
    add_editor(client)
    answer = client.post(
        "/signin",
        data={"name": EDITOR, "password": PASSWORD, "csrf_token": csrf_of(client, "/signin")},
    )
    assert answer.status_code == 303, answer.text
    return client


def add_editor(client: TestClient, name: str = EDITOR, password: str = PASSWORD) -> None:
    with Session(client.app.state.engine) as db:
        accounts.add_user(db, name, password)


def csrf_of(client: TestClient, path: str) -> str:
    answer = client.get(path)
    assert answer.status_code == 200, answer.text
    return CSRF_FIELD.search(answer.text).group(1)


def png_bytes(tmp_path: Path, size=(320, 200), color=(40, 90, 160), name="photo.png") -> bytes:
    return write_image(tmp_path / name, size=size, color=color).read_bytes()


def story_form(client: TestClient, path: str = "/stories/new", **fields) -> dict:
    form = {
        "csrf_token": csrf_of(client, path),
        "action": "save",
        "story_id": "council",
        "title": "Council approves budget",
        "text": "The city council approved a new budget on Tuesday.",
        "presenter": "",
        "voice": "",
    }
    form.update(fields)
    return form


def write_published_files(folder: Path, seconds: float = 1.0) -> Path:
    """A real little H.264 + AAC final.mp4 with captions.vtt and preview.png beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    video = folder / "final.mp4"
    subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            *("-hide_banner", "-loglevel", "error", "-y"),
            *("-f", "lavfi", "-i", f"testsrc=size=320x180:rate=25:duration={seconds}"),
            *("-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}"),
            *("-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest"),
            *("-movflags", "+faststart", str(video)),
        ],
        check=True,
    )
    (folder / "captions.vtt").write_text(
        "WEBVTT\n\n00:00:00.100 --> 00:00:00.600\nThe city council\n\n"
        "00:00:00.600 --> 00:00:00.950\napproved a budget &amp; more.\n",
        encoding="utf-8",
    )
    Image.new("RGB", (200, 100), (200, 200, 200)).save(folder / "preview.png")
    return video
