"""``/metrics`` (Prometheus) and ``/healthz`` over HTTP, from a thread of the watcher.

The metrics live in their own registry, so one process can hold several watchers (tests) and
the exposition shows only what the watcher counts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

from cluster_manager.status import step_seconds

log = logging.getLogger(__name__)

FAILURE_KINDS = ("invalid", "failed", "gave_up")
# Steps take from a fraction of a second (transcript) to many minutes (render of a long story).
STEP_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 3600, float("inf"))


class WatcherMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.waiting = Gauge(
            "storyreel_stories_waiting",
            "Stories received but not yet started",
            registry=registry,
        )
        self.running = Gauge(
            "storyreel_stories_running", "Stories being rendered now", registry=registry
        )
        self.cluster_nodes = Gauge(
            "storyreel_cluster_nodes",
            "Nodes of the render node pool, as the scaler last saw or set them",
            registry=registry,
        )
        self.published = Counter(
            "storyreel_stories_published",
            "Stories rendered and published",
            registry=registry,
        )
        self.failed = Counter(
            "storyreel_stories_failed",
            "Stories that did not publish: invalid (refused), failed (a run failed; retried), "
            "gave_up (failed max_attempts times)",
            ["reason"],
            registry=registry,
        )
        for kind in FAILURE_KINDS:
            self.failed.labels(kind)  # shown as 0 before the first failure
        self.step_seconds = Histogram(
            "storyreel_step_seconds",
            "Wall time of each finished workflow step, from the story's benchmark files",
            ["step"],
            buckets=STEP_BUCKETS,
            registry=registry,
        )

    def observe_steps(self, story_files: str | Path) -> dict[str, float]:
        """Feed the story's step times to the histogram; return them (for the status record)."""
        seconds = step_seconds(story_files)
        for step, value in seconds.items():
            # render-0, render-1: one label per rule, not per shard.
            rule = step.rsplit("-", 1)[0] if step.rsplit("-", 1)[-1].isdigit() else step
            self.step_seconds.labels(rule).observe(value)
        return seconds


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never holds up the watcher's exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass  # a scrape every few seconds is not news


class MetricsServer:
    """Serves ``/metrics`` and ``/healthz`` on ``host:port`` (port 0: a free one) in a thread."""

    def __init__(
        self, metrics: WatcherMetrics, host: str, port: int, healthy: Callable[[], bool]
    ) -> None:
        metrics_app = make_wsgi_app(metrics.registry)

        def app(environ, start_response):
            if environ.get("PATH_INFO") == "/healthz":
                ok = healthy()
                start_response(
                    "200 OK" if ok else "503 Service Unavailable",
                    [("Content-Type", "text/plain; charset=utf-8")],
                )
                return [b"ok\n" if ok else b"stopping\n"]
            return metrics_app(environ, start_response)

        self._server = make_server(
            host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler
        )
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
