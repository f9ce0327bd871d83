"""The newsroom app end to end in a real headless Chromium: `python -m webapp serve
--with-watcher` runs the app and the real watcher (local inbox mode, real Snakemake) on an empty
database; the first editor creates an account on the first-run page, signs out and in again,
writes a one-sentence story, uploads an image, publishes, watches it render and plays the video.
Screenshots go to tests/artifacts/ (and, with STORYREEL_DOCS_SCREENSHOTS=1, to
docs/webapp-editor.png and docs/webapp-story.png for the README)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from importlib import resources
from pathlib import Path

import psutil
import pytest
from conftest import REPO, free_port
from PIL import Image
from webapp_support import EDITOR, PASSWORD, write_watcher_config

CHROMIUM = Path("/usr/bin/chromium")
# This machine's network is closed: without these Chromium keeps trying to reach Google.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "tests" / "artifacts"
DOCS = REPO / "docs"
# One sentence: the shortest render that still runs every step.
ONE_SENTENCE = "A rocket lifted off from Cape Canaveral on Tuesday."
RENDER_TIMEOUT_MS = 300_000

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium"
)


class NewsroomServer:
    """`python -m webapp serve --with-watcher` as a child process, stopped like Ctrl-C."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        work = folder / "work"
        self.watcher_config = write_watcher_config(
            folder,
            snakemake_args=["--configfile", str(work / "config.yaml")],
            drain_timeout_s=30,
            stop_grace_s=5,
        )
        self.workdir = work
        self.data_dir = folder / "data"
        self.log_path = folder / "serve.log"
        self.base = [sys.executable, "-m", "webapp", "--data-dir", str(self.data_dir)]
        self.base += ["--watcher-config", str(self.watcher_config)]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [*self.base, "serve", "--port", str(self.port), "--with-watcher"],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self._wait_until_up()

    def _wait_until_up(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the app exited:\n{self.tail()}"
            try:
                with urllib.request.urlopen(f"{self.url}/setup", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"the app did not answer on {self.url}:\n{self.tail()}")

    def watcher(self) -> psutil.Process:
        (child,) = [
            process
            for process in psutil.Process(self.process.pid).children()
            if "cluster_manager" in " ".join(process.cmdline())
        ]
        return child

    def interrupt(self, timeout_s: float = 60) -> int:
        """Ctrl-C: SIGINT to the app, which stops the watcher and waits for it."""
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=timeout_s)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-60:])


@pytest.fixture
def newsroom(tmp_path):
    server = NewsroomServer(tmp_path)
    yield server
    server.close()


@pytest.fixture
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()


def screenshot(page, name: str, for_docs: bool = True, docs_full_page: bool = True) -> Path:
    """The whole page under tests/artifacts/; with STORYREEL_DOCS_SCREENSHOTS=1 also a small
    copy in docs/ for the README (256 colours: the pages are mostly flat colour)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    if for_docs and os.environ.get("STORYREEL_DOCS_SCREENSHOTS"):
        docs_copy = ARTIFACTS / f"docs-{name}"
        page.screenshot(path=str(docs_copy), full_page=docs_full_page)
        with Image.open(docs_copy) as image:
            image.convert("RGB").quantize(256).save(DOCS / f"webapp-{name}", optimize=True)
    return path


@needs_chromium
def test_an_editor_writes_publishes_and_watches_a_story_render(newsroom, browser, tmp_path):
    # A real photograph (public domain, shipped with scikit-image) for the README's screenshots.
    photo = resources.files("skimage") / "data" / "rocket.jpg"
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    problems: list[str] = []  # script errors, and what the console reports (CSP, 404s)

    def watch(new_page) -> None:
        new_page.on("pageerror", lambda error: problems.append(str(error)))
        new_page.on(
            "console",
            lambda message: (
                message.type == "error"
                and problems.append(f"{message.text} {message.location.get('url')}")
            ),
        )

    context.on("page", watch)
    page = context.new_page()

    # No account yet: the app leads to its first-run page, and the editor makes one.
    page.goto(f"{newsroom.url}/stories")
    assert page.url == f"{newsroom.url}/setup"
    assert "open only to a browser on the machine the app runs on" in " ".join(
        page.text_content("#setup-rule").split()
    )
    page.fill("input[name=name]", EDITOR)
    page.fill("input[name=password]", PASSWORD)
    page.fill("input[name=password_again]", PASSWORD)
    screenshot(page, "setup.png", for_docs=False)
    page.click("button:text('Create account')")
    page.wait_for_url(f"{newsroom.url}/stories")
    assert page.locator(".flash").text_content().startswith(f"Welcome, {EDITOR}")
    assert "open http://127.0.0.1" in newsroom.tail()  # the log said where to go
    # The account signs in like any other; the first-run page is gone.
    page.click(f"button:text('Sign out {EDITOR}')")
    page.wait_for_url(f"{newsroom.url}/signin")
    page.goto(f"{newsroom.url}/setup")
    assert page.url == f"{newsroom.url}/signin"
    page.fill("input[name=name]", EDITOR)
    page.fill("input[name=password]", PASSWORD)
    page.click("button:text('Sign in')")
    page.wait_for_url(f"{newsroom.url}/stories")

    page.click("a:text('New story')")
    page.fill("#title", "Rocket lifts off from Cape Canaveral")
    assert page.get_attribute("#story_id", "placeholder") == "rocket-lifts-off-from-cape-canaveral"
    page.fill("#text", ONE_SENTENCE)
    assert page.text_content("#estimate").startswith("Video about 7 s (9 words")
    page.set_input_files("#upload", str(photo))
    page.click(".actions button[value=save]")
    page.wait_for_url(f"{newsroom.url}/stories/rocket-lifts-off-from-cape-canaveral/edit")
    assert page.locator(".flash").text_content() == "Draft saved."
    page.fill("input[name=caption]", "A Falcon 9 lifts off")
    page.fill("input[name=credit]", "SpaceX (public domain)")
    screenshot(page, "editor.png")

    page.click("button:text('Publish')")
    page.wait_for_url(f"{newsroom.url}/stories/rocket-lifts-off-from-cape-canaveral")
    # The story list, open beside it, follows the render without being reloaded.
    story_list = context.new_page()
    story_list.goto(f"{newsroom.url}/stories")
    row_state = story_list.locator("tr[data-story=rocket-lifts-off-from-cape-canaveral] .state")
    assert re.fullmatch(r"queued|rendering(, step \S+)?", row_state.text_content())
    # The page follows the status record by itself: rendering, then published.
    page.wait_for_selector("#state:text-matches('rendering', 'i')", timeout=RENDER_TIMEOUT_MS)
    page.wait_for_selector(
        "#state.published, #state.failed", state="attached", timeout=RENDER_TIMEOUT_MS
    )
    assert page.text_content("#state") == "published", newsroom.tail()

    video = page.locator("#video")
    video.wait_for()
    page.wait_for_function(
        "() => { const v = document.getElementById('video'); return v.readyState >= 1 "
        "&& v.duration > 0; }",
        timeout=30_000,
    )
    duration = page.evaluate("document.getElementById('video').duration")
    assert 3 < duration < 20
    page.evaluate("() => { const v = document.getElementById('video'); v.muted = true; v.play(); }")
    page.wait_for_function(
        "() => document.getElementById('video').currentTime > 0.5", timeout=30_000
    )
    # The presenter at work for the screenshot, past the title card.
    page.evaluate(
        "() => new Promise(done => { const v = document.getElementById('video'); v.pause(); "
        "v.addEventListener('seeked', done, {once: true}); v.currentTime = v.duration / 2; })"
    )
    assert page.locator("table.steps td:text('compose')").count() == 1
    cues = page.locator("ol.cues li").all_text_contents()
    assert cues[-1].endswith("Canaveral on Tuesday.")
    tracks = page.evaluate("document.getElementById('video').textTracks.length")
    assert tracks == 1
    shot = screenshot(page, "story.png", docs_full_page=False)
    print(f"screenshots: {shot.parent}")

    story_list.wait_for_function(
        "() => document.querySelector('tr[data-story=rocket-lifts-off-from-cape-canaveral] .state')"
        ".textContent === 'published'",
        timeout=30_000,
    )
    assert story_list.url == f"{newsroom.url}/stories"
    assert not story_list.locator("[data-field=changed]").is_visible()  # not edited since
    screenshot(story_list, "list.png", for_docs=False)
    assert problems == []

    watcher = newsroom.watcher()
    assert newsroom.interrupt() == 0, newsroom.tail()
    assert not watcher.is_running() or watcher.status() == psutil.STATUS_ZOMBIE


def test_the_app_stops_when_its_watcher_dies(newsroom):
    newsroom.watcher().kill()
    assert newsroom.process.wait(timeout=30) == 1
    assert "the watcher exited" in newsroom.tail()
