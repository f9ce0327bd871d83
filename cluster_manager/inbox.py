"""The local story source: a directory inbox.

A story is a file ``inbox/<name>.json`` (names starting with '.' are files still being
written, and are left alone). Taking a story moves it into ``inbox/processing/`` under a unique
name, so a second submission of the same story while the first renders is a delivery of its
own. Settling it:

- ack: the file moves to ``inbox/done/<name>``;
- dead_letter: it moves to ``inbox/failed/<name>``, with ``<name>.reason.txt`` beside it;
- nack: it goes back to ``inbox/<name>`` (unless a newer submission took that name meanwhile)
  and is taken again after a backoff, so a failing story does not spin.

Files left in ``processing/`` by a watcher that was killed go back to the inbox at start-up.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cluster_manager.config import InboxSourceSettings, WatcherConfig
from cluster_manager.sources import Delivery

log = logging.getLogger(__name__)

# A file this recently modified may still be being written by a plain copy: take it next poll.
SETTLE_S = 0.5
MAX_BACKOFF_S = 60.0


@dataclass
class _Backoff:
    inode: int
    not_before: float
    nacks: int


class InboxDelivery:
    """One story file taken from the inbox; settled exactly once."""

    def __init__(self, source: InboxSource, claimed: Path, name: str, data: bytes) -> None:
        self.data = data
        self.label = f"{source.settings.inbox}/{name}"
        self.delivery_attempt: int | None = None
        self.base_dir = source.inbox  # relative image paths are relative to the story file
        self.name = name
        self._source = source
        self._claimed = claimed
        self.settled: str | None = None

    def ack(self) -> None:
        self._settle("ack")

    def nack(self) -> None:
        self._settle("nack")

    def dead_letter(self, reason: str) -> None:
        self._settle("dead_letter", reason)

    def _settle(self, how: str, reason: str | None = None) -> None:
        if self.settled is not None:
            log.warning("%s was already settled (%s); ignoring %s", self.label, self.settled, how)
            return
        self.settled = how
        source = self._source
        if how == "ack":
            os.replace(self._claimed, source.done / self.name)
            source.forget_backoff(self.name)
        elif how == "dead_letter":
            _write_atomically(source.failed / f"{self.name}.reason.txt", f"{reason}\n")
            os.replace(self._claimed, source.failed / self.name)
            source.forget_backoff(self.name)
        else:
            source.return_to_inbox(self._claimed, self.name, backoff=True)


class InboxSource:
    """The StorySource of local mode: polls ``inbox/*.json`` every ``poll_s`` seconds."""

    def __init__(self, config: WatcherConfig) -> None:
        if not isinstance(config.source, InboxSourceSettings):
            raise TypeError("InboxSource needs source.kind: inbox")
        self.settings = config.source
        self.max_parallel = config.max_parallel_stories
        self.inbox = config.local_path(config.source.inbox)
        self.done = self.inbox / "done"
        self.failed = self.inbox / "failed"
        self.processing = self.inbox / "processing"
        for folder in (self.inbox, self.done, self.failed, self.processing):
            folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._backoff: dict[str, _Backoff] = {}
        self._recover()

    def serve(self, handle: Callable[[Delivery], None], stop: threading.Event) -> None:
        in_flight = 0
        counter = threading.Lock()

        def run(delivery: InboxDelivery) -> None:
            nonlocal in_flight
            try:
                handle(delivery)
            except Exception:
                log.exception("handling %s failed", delivery.label)
            finally:
                if delivery.settled is None:  # the handler must settle; deliver again if not
                    delivery.nack()
                with counter:
                    in_flight -= 1

        with ThreadPoolExecutor(self.max_parallel, thread_name_prefix="story") as workers:
            while not stop.is_set():
                with counter:
                    free = self.max_parallel - in_flight
                for path in self._ready()[:free]:
                    delivery = self._take(path)
                    if delivery is not None:
                        with counter:
                            in_flight += 1
                        workers.submit(run, delivery)
                stop.wait(self.settings.poll_s)
        # Leaving the with block waited for the running handlers.

    def waiting(self) -> int:
        # Stories backing off after a failure wait too: the cluster is still needed for them.
        return sum(1 for path in self.inbox.glob("*.json") if not path.name.startswith("."))

    def forget_backoff(self, name: str) -> None:
        with self._lock:
            self._backoff.pop(name, None)

    def return_to_inbox(self, claimed: Path, name: str, backoff: bool) -> None:
        """Put a taken story back as ``inbox/<name>``, unless a newer one has that name now."""
        target = self.inbox / name
        try:
            os.link(claimed, target)  # unlike a rename, never replaces a newer submission
        except FileExistsError:
            log.info("%s was submitted again meanwhile; the newer file stays", target.name)
        else:
            if backoff:
                self._delay(name, target.stat().st_ino)
        claimed.unlink()

    def _delay(self, name: str, inode: int) -> None:
        with self._lock:
            previous = self._backoff.get(name)
            nacks = previous.nacks + 1 if previous and previous.inode == inode else 1
            delay = min(MAX_BACKOFF_S, self.settings.poll_s * 2**nacks)
            self._backoff[name] = _Backoff(inode, time.monotonic() + delay, nacks)

    def _ready(self) -> list[Path]:
        """Story files that may be taken now, oldest first."""
        now_monotonic, now = time.monotonic(), time.time()
        ready = []
        for path in self.inbox.glob("*.json"):
            if path.name.startswith("."):
                continue
            try:
                info = path.stat()
            except FileNotFoundError:
                continue
            if not path.is_file() or now - info.st_mtime < SETTLE_S:
                continue
            with self._lock:
                backoff = self._backoff.get(path.name)
            if backoff and backoff.inode == info.st_ino and now_monotonic < backoff.not_before:
                continue
            ready.append((info.st_mtime, path.name, path))
        return [path for _, _, path in sorted(ready)]

    def _take(self, path: Path) -> InboxDelivery | None:
        claimed = self.processing / f"{uuid.uuid4().hex}-{path.name}"
        try:
            os.rename(path, claimed)
        except FileNotFoundError:
            return None  # removed meanwhile
        try:
            data = claimed.read_bytes()
        except OSError as err:
            log.error("cannot read %s: %s", path, err)
            self.return_to_inbox(claimed, path.name, backoff=True)
            return None
        log.info("took %s from the inbox", path.name)
        return InboxDelivery(self, claimed, path.name, data)

    def _recover(self) -> None:
        for claimed in sorted(self.processing.iterdir()):
            _, _, name = claimed.name.partition("-")
            if claimed.is_file() and name:
                log.info("returning %s, taken by an earlier watcher, to the inbox", name)
                self.return_to_inbox(claimed, name, backoff=False)


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
