"""One Snakemake process per story: start it, follow its step, stop it cleanly.

The target is the story's ``published.json`` (the ``publish`` rule's output), so a zero exit
means the video is published. ``--rerun-incomplete`` lets a story interrupted by a crash or a
shutdown resume from its finished steps. The story itself travels as a file (``story_source``),
never on a command line. A story asked to be rendered again runs with ``--forcerun
init_story``: every other step depends on that one, so the whole story renders again, and the
target names this one story, so no other story's step runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cluster_manager.config import WatcherConfig
from storyreel.storage import is_gcs_uri, parse_gcs_uri, storage_client

log = logging.getLogger(__name__)

LOG_NAME = "watcher-snakemake.log"
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: the child only calls it

_STEP_LINE = re.compile(r"^(?:local)?rule (\w+):\s*$")
_FAILED_STEP_LINE = re.compile(r"^Error in rule (\w+):")
# What a step prints when it refuses a story ("error: story 'x' ..."), or Snakemake's own error.
_ERROR_LINE = re.compile(r"^(?:error: (.+)|(\w+(?:Error|Exception)\b.*))$")
# The first step of every story: forcing it reruns everything downstream, i.e. the whole story.
FIRST_STEP = "init_story"


@dataclass
class RunResult:
    story: str
    returncode: int | None
    published: bool
    interrupted: bool  # stopped because the watcher is shutting down
    reason: str | None  # why it did not publish
    step: str | None  # the last step that started
    log_path: Path
    started: tuple[str, ...] = ()  # every step that started, in order


class LogFollower:
    """Reads what Snakemake appended to the log since ``offset``: steps started, errors."""

    def __init__(self, path: Path, offset: int) -> None:
        self.path = path
        self.offset = offset
        self._partial = b""
        self.step: str | None = None
        self.started: list[str] = []
        self.failed_step: str | None = None
        self.error: str | None = None

    def read(self) -> None:
        try:
            with self.path.open("rb") as stream:
                stream.seek(self.offset)
                chunk = stream.read()
        except OSError:
            return
        self.offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self.parse(line.decode("utf-8", "replace").rstrip())

    def parse(self, line: str) -> None:
        if match := _STEP_LINE.match(line):
            self.step = match[1]
            self.started.append(match[1])
        elif match := _FAILED_STEP_LINE.match(line):
            self.failed_step = self.failed_step or match[1]
        elif (match := _ERROR_LINE.match(line)) and self.error is None:
            self.error = (match[1] or match[2]).strip()[:500]


def parse_steps(text: str) -> list[str]:
    """Every step a Snakemake log shows starting, in order."""
    return [match[1] for line in text.splitlines() if (match := _STEP_LINE.match(line))]


def published_uri(record: dict) -> str | None:
    """Where the publish rule stored final.mp4, from its published.json record."""
    for stored in record.get("files", []):
        if stored.get("name") == "final.mp4":
            return stored.get("uri")
    return record.get("destination")


# How a run is asked to stop: on SIGINT Snakemake cancels its running jobs and marks them
# incomplete. (Its SIGTERM handler instead waits for them to finish, and takes the scheduler's
# lock inside the handler, which deadlocks when the signal lands while the lock is held.)
STOP_SIGNAL = signal.SIGINT


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # A watcher started in the background by a shell ignores SIGINT, and its children would
    # inherit that: Snakemake must get the default, which Python turns into KeyboardInterrupt.
    signal.signal(STOP_SIGNAL, signal.SIG_DFL)
    # Linux sends the signal when the thread that forked the child ends; the worker thread
    # waits for its run, so that is when the watcher dies.
    _LIBC.prctl(_PR_SET_PDEATHSIG, STOP_SIGNAL, 0, 0, 0)


class Runner:
    def __init__(self, config: WatcherConfig) -> None:
        self.config = config

    def story_dir(self, story_id: str) -> Path:
        """The story's local directory (the watcher's log of its runs is always here)."""
        return self.config.local_path(self.config.stories_dir) / story_id

    def story_files(self, story_id: str) -> str:
        """Where the run leaves the story's files: its directory, or its gs:// prefix."""
        if self.config.storage_prefix:
            prefix = self.config.storage_prefix.rstrip("/")
            return f"{prefix}/{self.config.stories_dir}/{story_id}"
        return str(self.story_dir(story_id))

    def published_record(self, story_id: str) -> dict | None:
        """The story's published.json (the publish rule's record), or None if there is none."""
        location = f"{self.story_files(story_id)}/published.json"
        if is_gcs_uri(location):
            uri = parse_gcs_uri(location)
            blob = storage_client().bucket(uri.bucket).get_blob(uri.name)
            raw = blob.download_as_bytes() if blob is not None else None
        else:
            try:
                raw = Path(location).read_bytes()
            except FileNotFoundError:
                raw = None
        try:
            record = json.loads(raw) if raw is not None else None
        except ValueError:
            return None
        return record if isinstance(record, dict) else None

    def target(self, story_id: str) -> str:
        return f"{self.config.stories_dir}/{story_id}/published.json"

    def options(self, force: bool = False) -> list[str]:
        """Snakemake's options; ``force``: render the story again from its first step."""
        config = self.config
        options = []
        if config.snakefile is not None:
            options += ["--snakefile", str(config.local_path(config.snakefile))]
        options += ["--directory", str(config.workdir)]
        options += ["--profile", config.profile] if config.profile else ["--cores", "all"]
        options += ["--rerun-incomplete", *config.snakemake_args]
        if force:
            # --forcerun takes every rule name up to the next option: --config follows.
            options += ["--forcerun", FIRST_STEP]
        # Last: --config takes every KEY=VALUE word after it. One word per key.
        options += [
            "--config",
            f"story_source={config.story_source}",
            f"stories_dir={config.stories_dir}",
        ]
        return options

    def command(self, story_id: str, force: bool = False) -> list[str]:
        return [str(self.config.snakemake), self.target(story_id), *self.options(force)]

    def stop_leftover_runs(self) -> None:
        """Stop runs in this workdir that an earlier watcher started and did not see end.

        A watcher killed outright leaves its Snakemake processes stopping (they got the stop
        signal from the kernel); a new run of the same story must not start beside them. Our
        runs are found by their command line and by leading their own session.
        """
        for group in self._leftover_runs():
            log.warning("stopping a Snakemake run left by an earlier watcher (pid %d)", group)
            _signal_group(group, STOP_SIGNAL)
            deadline = time.monotonic() + self.config.stop_grace_s
            while _group_alive(group) and time.monotonic() < deadline:
                time.sleep(0.1)
            _signal_group(group, signal.SIGKILL)

    def _leftover_runs(self) -> list[int]:
        workdir = str(self.config.workdir)
        groups = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                args = (entry / "cmdline").read_bytes().decode("utf-8", "replace").split("\0")
                leader = os.getsid(pid) == pid
            except OSError:
                continue  # gone meanwhile, or not ours to read
            ours = (
                "--directory" in args[:-1]
                and args[args.index("--directory") + 1] == workdir
                and any(arg.endswith("/published.json") for arg in args)
            )
            if leader and ours and pid != os.getpid():
                groups.append(pid)
        return groups

    def unlock(self) -> None:
        """Clear the locks a killed run left behind; only safe while no run of ours is going."""
        command = [str(self.config.snakemake), "--unlock", *self.options()]
        try:
            result = subprocess.run(
                command,
                cwd=self.config.workdir,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=300,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            log.warning("could not clear stale Snakemake locks: %s", err)
            return
        if result.returncode != 0:
            log.warning(
                "could not clear stale Snakemake locks (exit %d): %s",
                result.returncode,
                (result.stderr or result.stdout).strip()[-1000:],
            )

    def run(
        self,
        story_id: str,
        abort: threading.Event,
        on_step: Callable[[str], None] = lambda step: None,
        force: bool = False,
    ) -> RunResult:
        """Run Snakemake for the story until it exits, ``abort`` is set, or it times out;
        ``force``: render every step again, even those that are up to date."""
        config = self.config
        story_dir = self.story_dir(story_id)
        log_path = story_dir / "logs" / LOG_NAME
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = self.command(story_id, force)
        with log_path.open("ab") as stream:
            stream.write(f"\n==== watcher: {' '.join(command)}\n".encode())
            stream.flush()
            follower = LogFollower(log_path, stream.tell())
            try:
                process = subprocess.Popen(
                    command,
                    cwd=config.workdir,
                    stdin=subprocess.DEVNULL,
                    stdout=stream,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    start_new_session=True,  # its own process group: stopped as a whole
                    preexec_fn=_die_with_parent,  # calls only the preloaded prctl
                )
            except OSError as err:
                reason = f"cannot start snakemake ({command[0]}): {err.strerror}"
                log.error("%s", reason)
                return RunResult(story_id, None, False, False, reason, None, log_path)
        log.info("snakemake started (pid %d), log %s", process.pid, log_path)
        deadline = time.monotonic() + config.story_timeout_s
        interrupted = timed_out = False
        while True:
            try:
                process.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                pass
            step = follower.step
            follower.read()
            if follower.step != step:
                on_step(follower.step)
            if abort.is_set():
                interrupted = True
            elif time.monotonic() > deadline:
                timed_out = True
            if interrupted or timed_out:
                self.stop(process)
                break
        follower.read()
        returncode = process.returncode
        published = (
            returncode == 0 and not interrupted and self.published_record(story_id) is not None
        )
        reason = None
        if interrupted:
            reason = "stopped by the watcher's shutdown"
        elif timed_out:
            reason = (
                f"timed out after {config.story_timeout_s:g} s (story_timeout_s) in step "
                f"'{follower.step}'"
            )
        elif not published:
            step = follower.failed_step or follower.step
            reason = f"snakemake exited with status {returncode}"
            if step:
                reason += f" in step '{step}'"
            if follower.error:
                reason += f": {follower.error}"
            if returncode == 0:
                reason += f", but {self.target(story_id)} is missing"
            reason += f" (log: {log_path})"
        log.info("snakemake exited with status %s", returncode)
        return RunResult(
            story_id,
            returncode,
            published,
            interrupted,
            reason,
            follower.step,
            log_path,
            tuple(follower.started),
        )

    def stop(self, process: subprocess.Popen) -> None:
        """STOP_SIGNAL to the run's process group (Snakemake cancels its jobs and marks them
        incomplete); SIGKILL after ``stop_grace_s``."""
        group = process.pid
        log.info("stopping snakemake (process group %d)", group)
        _signal_group(group, STOP_SIGNAL)
        try:
            process.wait(timeout=self.config.stop_grace_s)
        except subprocess.TimeoutExpired:
            log.warning("snakemake did not stop within %g s: killing it", self.config.stop_grace_s)
            _signal_group(group, signal.SIGKILL)
            process.wait()
        # Jobs that outlived Snakemake still hold the group id (it is not reused while they live).
        _signal_group(group, signal.SIGKILL)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def _signal_group(group: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is gone already
        os.killpg(group, signum)
