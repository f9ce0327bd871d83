"""Where stories come from: a delivery is one submitted story, a source hands deliveries over.

Two sources implement :class:`StorySource`: the local inbox directory
(:mod:`cluster_manager.inbox`) and a Pub/Sub subscription (:mod:`cluster_manager.pubsub`).
The watcher only sees deliveries and settles each one exactly once: ack, nack or dead_letter.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol


class Delivery(Protocol):
    data: bytes  # the story JSON exactly as submitted
    label: str  # for logs and errors: "inbox/council.json", "message 42"
    delivery_attempt: int | None  # Pub/Sub's count where known (1 = first delivery)

    def ack(self) -> None:
        """Handled for good: published, or given up with a recorded reason."""

    def nack(self) -> None:
        """Deliver again later: a transient failure, or the watcher is shutting down."""

    def dead_letter(self, reason: str) -> None:
        """Never retry: the story is malformed, or it failed too often."""


class StorySource(Protocol):
    def serve(self, handle: Callable[[Delivery], None], stop: threading.Event) -> None:
        """Block, calling handle(delivery) in worker threads, at most
        config.max_parallel_stories at once, until `stop` is set. Then stop taking new
        deliveries and return once the handlers that are running have returned (the watcher
        makes them return within the drain timeout)."""

    def waiting(self) -> int:
        """Deliveries received but not yet handed to `handle` (0 if the source cannot tell)."""
