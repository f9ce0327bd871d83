"""Running the real watcher daemon in tests: settings, the process, what it left behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import yaml
from conftest import REPO, SHORT_TEXT, free_port, write_image

# One sentence: the shortest render that still runs every step.
ONE_SENTENCE = SHORT_TEXT.split("\n\n")[1]


def watcher_settings(workdir: Path, **fields: Any) -> dict[str, Any]:
    """Settings for a watcher in a scratch workdir that renders with the repository's workflow."""
    settings = {
        "workdir": str(workdir),
        "snakefile": str(REPO / "Snakefile"),
        "snakemake_args": ["--configfile", str(REPO / "config.yaml")],
        "max_parallel_stories": 2,
        "drain_timeout_s": 60,
        "stop_grace_s": 10,
        "source": {"kind": "inbox", "inbox": "inbox", "poll_s": 0.2},
        "metrics": {"host": "127.0.0.1", "port": free_port()},
    }
    settings.update(fields)
    return settings


def write_settings(path: Path, settings: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


def story_file(folder: Path, story_id: str, text: str = ONE_SENTENCE, **fields: Any) -> Path:
    """A story file with a real image beside it, referenced by a relative path."""
    folder.mkdir(parents=True, exist_ok=True)
    write_image(folder / "photo.png")
    story = {
        "id": story_id,
        "title": f"Story {story_id}",
        "text": text,
        "images": [{"uri": "photo.png", "caption": "A photo"}],
        **fields,
    }
    path = folder / f"{story_id}.json"
    path.write_text(json.dumps(story), encoding="utf-8")
    return path


class WatcherProcess:
    """``python -m cluster_manager watch --config ...`` as a child process."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.settings = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        self.workdir = Path(self.settings["workdir"])
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cluster_manager", "watch", "--config", str(config_path)],
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"},
        )

    @property
    def inbox(self) -> Path:
        return self.workdir / "inbox"

    def log_lines(self) -> list[dict]:
        lines = []
        for line in self.log_path.read_text(encoding="utf-8").splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                lines.append({"message": line})
        return lines

    def status(self, story_id: str) -> dict | None:
        path = self.workdir / "published" / story_id / "status.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.settings['metrics']['port']}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.read().decode()

    def wait_for(self, condition: Callable[[], Any], what: str, timeout_s: float = 240) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            result = condition()
            if result:
                return result
            if self.process.poll() is not None:
                raise AssertionError(f"watcher exited ({self.process.returncode}) {self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.tail()}")
            time.sleep(0.2)

    def wait_for_state(self, story_id: str, *states: str, timeout_s: float = 240) -> dict:
        def reached():
            record = self.status(story_id)
            return record if record and record["state"] in states else None

        return self.wait_for(reached, f"story {story_id} to be {'/'.join(states)}", timeout_s)

    def stop(self, signum: int = signal.SIGTERM, timeout_s: float = 120) -> int:
        self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=timeout_s)
        finally:
            self._log.close()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()

    def tail(self) -> str:
        return "\n".join(self.log_path.read_text(encoding="utf-8").splitlines()[-40:])


def snakemake_processes(workdir: Path) -> list[psutil.Process]:
    """Snakemake runs and their jobs working in ``workdir``."""
    found = []
    for process in psutil.process_iter(["cmdline", "cwd"]):
        try:
            cmdline = " ".join(process.info["cmdline"] or [])
            cwd = process.info["cwd"] or ""
        except psutil.Error:
            continue
        inside = str(workdir) in cmdline or cwd == str(workdir) or cwd.startswith(f"{workdir}/")
        # Not this test process, not the watcher itself.
        if inside and process.pid != os.getpid() and "cluster_manager" not in cmdline:
            found.append(process)
    return found


def wait_until_gone(workdir: Path, timeout_s: float = 30) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout_s
    while (left := snakemake_processes(workdir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def watcher_runs(log_path: Path) -> int:
    """How many Snakemake runs the watcher started for a story (one header line each)."""
    if not log_path.exists():
        return 0
    return log_path.read_text(encoding="utf-8").count("==== watcher: ")


def finished_steps(log_path: Path) -> set[str]:
    """The rules Snakemake itself recorded as finished in a story's runs so far. A benchmark
    file alone does not say that: a job cut between writing it and being recorded is rerun."""
    if not log_path.exists():
        return set()
    text = log_path.read_text(encoding="utf-8")
    return set(re.findall(r"^Finished jobid: \d+ \(Rule: (\w+)\)", text, re.MULTILINE))
