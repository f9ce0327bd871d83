"""The watcher: takes story deliveries, renders each with one Snakemake run, settles them.

For each delivery:

1. a malformed story (not JSON, schema error, bad id) is dead-lettered with its reason;
2. a story already rendering in this watcher is not started twice: the delivery waits for the
   run, then is acked if that published the same bytes (nacked if not);
3. a story whose status record is ``published`` with the same digest is acked at once;
4. otherwise the story is written to ``story_source`` and Snakemake renders and publishes it:
   ack on success; on failure nack (delivered again later), or dead-letter once it has failed
   ``max_attempts`` times. A record that asks for the story to be rendered again
   (``render_again``, from ``submit --again``) makes the run start over from the first step.

Stopping (SIGTERM): no new deliveries are taken, running stories get ``drain_timeout_s`` to
finish, then their Snakemake runs are stopped and their deliveries nacked; a later start resumes
them from their finished steps.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from cluster_manager.config import InboxSourceSettings, WatcherConfig
from cluster_manager.logs import story_context
from cluster_manager.metrics import MetricsServer, WatcherMetrics
from cluster_manager.runner import FIRST_STEP, Runner, published_uri
from cluster_manager.scaler import Scaler, make_scaler
from cluster_manager.sources import Delivery, StorySource
from cluster_manager.status import digest, new_record, read_status, write_status
from cluster_manager.submit import absolute_image_paths
from storyreel.storage import is_gcs_uri, parse_gcs_uri, storage_client
from storyreel.story import StoryError, check_story_id, parse_story

# Deliveries of one version of a story, per allowed attempt, before it is given up even though
# no run of it ever failed (it keeps coming back unsettled).
UNSETTLED_DELIVERIES = 3

log = logging.getLogger(__name__)

TICK_S = 1.0  # how often the main loop refreshes the gauges


def make_source(config: WatcherConfig) -> StorySource:
    if isinstance(config.source, InboxSourceSettings):
        from cluster_manager.inbox import InboxSource

        return InboxSource(config)
    from cluster_manager.pubsub import PubSubSource  # the Pub/Sub client loads only when used

    return PubSubSource(config)


@dataclass
class _StoryRun:
    """A story this watcher is handling; later deliveries of the same story wait for it."""

    digest: str
    done: threading.Event = field(default_factory=threading.Event)
    started: bool = False  # Snakemake is running
    published: bool = False


class _SettleOnce:
    """A delivery that is acked, nacked or dead-lettered at most once."""

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        self.settled = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.delivery, name)

    def _settle(self, how: str, *args: str) -> None:
        if self.settled:
            return
        self.settled = True
        getattr(self.delivery, how)(*args)

    def ack(self) -> None:
        self._settle("ack")

    def nack(self) -> None:
        self._settle("nack")

    def dead_letter(self, reason: str) -> None:
        self._settle("dead_letter", reason)


class Watcher:
    def __init__(
        self,
        config: WatcherConfig,
        source: StorySource | None = None,
        scaler: Scaler | None = None,
    ) -> None:
        self.config = config
        self.source = source if source is not None else make_source(config)
        self.scaler = scaler if scaler is not None else make_scaler(config.scaler)
        self.runner = Runner(config)
        self.metrics = WatcherMetrics()
        self.stop = threading.Event()  # set: take no more deliveries, drain
        self.abort = threading.Event()  # set: stop the running Snakemake processes now
        self._lock = threading.Lock()
        self._stories: dict[str, _StoryRun] = {}
        self._source_thread: threading.Thread | None = None
        self._source_failed = False
        self.metrics_port: int | None = None

    # The main loop ---------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until ``stop`` is set, then drain; return the process exit status."""
        # Before any run of ours starts: every run still going and every lock is a stale one.
        self.runner.stop_leftover_runs()
        self.runner.unlock()
        host, port = self.config.metrics.host, self.config.metrics.port
        try:
            server = MetricsServer(self.metrics, host, port, self.healthy)
        except OSError as err:
            log.error("cannot serve metrics on %s:%d (settings: metrics): %s", host, port, err)
            return 1
        server.start()
        self.metrics_port = server.port
        log.info(
            "watching for stories (%s source); metrics on http://%s:%d/metrics",
            self.config.source.kind,
            self.config.metrics.host,
            server.port,
        )
        self._source_thread = threading.Thread(target=self._serve, name="source")
        self._source_thread.start()
        next_scaling = 0.0
        try:
            while not self.stop.is_set() and self._source_thread.is_alive():
                if time.monotonic() >= next_scaling:
                    self._scale()
                    next_scaling = time.monotonic() + self.config.scaler.interval_s
                self._refresh_gauges()
                self.stop.wait(TICK_S)
            self._drain()
        finally:
            server.close()
        return 1 if self._source_failed else 0

    def healthy(self) -> bool:
        thread = self._source_thread
        return not self.stop.is_set() and thread is not None and thread.is_alive()

    def _serve(self) -> None:
        try:
            self.source.serve(self.handle, self.stop)
        except Exception:
            log.exception("the story source failed")
            self._source_failed = True
        if not self.stop.is_set():
            self._source_failed = True
            log.error("the story source stopped on its own: shutting down")
            self.stop.set()

    def _drain(self) -> None:
        self.stop.set()
        running = self.running()
        if running:
            log.info(
                "stopping: waiting up to %g s for %d running stories",
                self.config.drain_timeout_s,
                running,
            )
        deadline = time.monotonic() + self.config.drain_timeout_s
        while self._source_thread.is_alive() and not self.abort.is_set():
            if time.monotonic() >= deadline:
                log.info("drain timeout: stopping %d running stories", self.running())
                self.abort.set()
                break
            self._source_thread.join(min(TICK_S, max(0.0, deadline - time.monotonic())))
        self._source_thread.join()
        log.info("stopped")

    def _scale(self) -> None:
        try:
            self.scaler.observe(self.source.waiting(), self.running())
        except Exception:
            log.exception("the scaler failed; trying again in %g s", self.config.scaler.interval_s)

    def _refresh_gauges(self) -> None:
        try:
            self.metrics.waiting.set(self.source.waiting())
        except Exception:
            log.exception("could not count the waiting stories")
        self.metrics.running.set(self.running())
        nodes = self.scaler.nodes
        self.metrics.cluster_nodes.set(float("nan") if nodes is None else nodes)  # NaN: unknown

    def running(self) -> int:
        with self._lock:
            return sum(1 for story in self._stories.values() if story.started)

    # One delivery ------------------------------------------------------------------------------

    def handle(self, delivery: Delivery) -> None:
        """Settle one delivery; never raises (a failure of the watcher itself nacks it)."""
        delivery = _SettleOnce(delivery)
        try:
            self._handle(delivery)
        except Exception:
            log.exception("handling %s failed; it will be delivered again", delivery.label)
            delivery.nack()

    def _handle(self, delivery: _SettleOnce) -> None:
        data_digest = digest(delivery.data)
        try:
            story = parse_story(delivery.data, source=delivery.label)
        except StoryError as err:
            self._refuse(delivery, data_digest, str(err))
            return
        with story_context(story["id"]):
            self._handle_story(delivery, story["id"], data_digest)

    def _refuse(self, delivery: _SettleOnce, data_digest: str, reason: str) -> None:
        story_id = _declared_id(delivery.data)
        with story_context(story_id):
            log.warning("refused %s: %s", delivery.label, reason)
            self.metrics.failed.labels("invalid").inc()
            with self._lock:
                rendering = story_id in self._stories
            # A record needs a safe id; a story rendering now keeps its own record.
            if story_id is not None and not rendering:
                self._record(new_record(story_id, "failed", data_digest, reason=reason))
            delivery.dead_letter(reason)

    def _handle_story(self, delivery: _SettleOnce, story_id: str, data_digest: str) -> None:
        while True:
            with self._lock:
                current = self._stories.get(story_id)
                if current is None:
                    mine = self._stories[story_id] = _StoryRun(data_digest)
                    break
            log.info("already rendering here: %s waits for that run", delivery.label)
            current.done.wait()
            if current.digest == data_digest:
                if not current.published:
                    delivery.nack()
                    return
                if not self._render_again_asked(story_id, data_digest):
                    log.info("%s: published by the run it waited for", delivery.label)
                    delivery.ack()
                    return
                # Asked to render again after that run had read the record: this one's turn.
            # Another version of the story rendered meanwhile: now it is this one's turn.
        try:
            self._render(delivery, story_id, data_digest, mine)
        finally:
            with self._lock:
                del self._stories[story_id]
            mine.done.set()

    def _render(
        self, delivery: _SettleOnce, story_id: str, data_digest: str, mine: _StoryRun
    ) -> None:
        config = self.config
        record = read_status(config, story_id)
        same = record is not None and record.get("digest") == data_digest
        force = same and bool(record.get("render_again"))
        if same and record.get("state") == "published" and not force:
            log.info("%s: already published as %s", delivery.label, record.get("uri"))
            mine.published = True
            delivery.ack()
            return
        if self.stop.is_set():
            delivery.nack()
            return
        # Failed runs are counted in the status record. Pub/Sub's delivery count is no failure
        # count (a nack at shutdown and a lease lost with a killed watcher add to it); it only
        # stops a message that keeps coming back without ever being settled.
        earlier = int(record.get("attempts") or 0) if same else 0
        attempt = earlier + 1
        deliveries = delivery.delivery_attempt or 0
        if attempt > config.max_attempts:
            last = f"; the last: {record['reason']}" if same and record.get("reason") else ""
            self._give_up(delivery, story_id, data_digest, earlier, f"{earlier} attempts{last}")
            return
        if deliveries > UNSETTLED_DELIVERIES * config.max_attempts:
            self._give_up(
                delivery, story_id, data_digest, earlier, f"{deliveries} deliveries never settled"
            )
            return
        self._write_story(story_id, delivery)
        running = new_record(story_id, "running", data_digest, attempts=attempt, render_again=force)
        self._record(running)
        log.info(
            "rendering %s%s (attempt %d of %d)",
            delivery.label,
            " again from its first step, as asked" if force else "",
            attempt,
            config.max_attempts,
        )

        def on_step(step: str) -> None:
            log.info("step %s", step)
            running["step"] = step
            self._record(running)

        with self._lock:
            mine.started = True
        result = self.runner.run(story_id, self.abort, on_step, force=force)
        with self._lock:
            mine.started = False
        # Once the first step has run again, every later step is older than its inputs (or
        # marked incomplete), so a retry finishes the new render without being forced, and
        # resumes from its finished steps. Before that, the request stands.
        force_still = force and FIRST_STEP not in result.started
        if result.published:
            steps = self.metrics.observe_steps(self.runner.story_files(story_id))
            uri = published_uri(self.runner.published_record(story_id) or {})
            mine.published = True
            self._record(
                new_record(
                    story_id, "published", data_digest, uri=uri, attempts=attempt, steps=steps
                )
            )
            self.metrics.published.inc()
            log.info("published %s", uri)
            delivery.ack()
        elif result.interrupted:
            # Not the story's fault: the attempt does not count.
            self._record(
                new_record(
                    story_id,
                    "queued",
                    data_digest,
                    step=result.step,
                    attempts=attempt - 1,
                    reason="interrupted by the watcher's shutdown; resumes from its last step",
                    render_again=force_still,
                )
            )
            delivery.nack()
        elif attempt >= config.max_attempts:
            self._give_up(
                delivery,
                story_id,
                data_digest,
                attempt,
                f"{attempt} attempts; the last: {result.reason}",
            )
        else:
            log.warning("attempt %d failed: %s", attempt, result.reason)
            self.metrics.failed.labels("failed").inc()
            self._record(
                new_record(
                    story_id,
                    "queued",
                    data_digest,
                    step=result.step,
                    attempts=attempt,
                    reason=f"attempt {attempt} of {config.max_attempts} failed: {result.reason}",
                    render_again=force_still,
                )
            )
            delivery.nack()

    def _give_up(
        self, delivery: _SettleOnce, story_id: str, data_digest: str, attempts: int, what: str
    ) -> None:
        reason = f"gave up after {what}"
        log.error("%s: %s", delivery.label, reason)
        self.metrics.failed.labels("gave_up").inc()
        self._record(new_record(story_id, "failed", data_digest, attempts=attempts, reason=reason))
        delivery.dead_letter(reason)

    def _render_again_asked(self, story_id: str, data_digest: str) -> bool:
        """Whether the story's record asks for these bytes to be rendered again."""
        record = read_status(self.config, story_id)
        return (
            record is not None
            and record.get("digest") == data_digest
            and record.get("state") == "queued"
            and bool(record.get("render_again"))
        )

    def _record(self, record: dict[str, Any]) -> None:
        """Write a status record; a failure to write one is logged, never fatal to the story."""
        try:
            write_status(self.config, record)
        except Exception:
            log.exception("could not write the status record of story '%s'", record["story"])

    def _write_story(self, story_id: str, delivery: _SettleOnce) -> None:
        """Put the story where init_story reads it (config story_source)."""
        location = self.config.story_source.replace("{story}", story_id)
        data = delivery.data
        base_dir = getattr(delivery, "base_dir", None)
        if is_gcs_uri(location):
            uri = parse_gcs_uri(location)
            blob = storage_client().bucket(uri.bucket).blob(uri.name)
            blob.upload_from_string(data, content_type="application/json")
            return
        if base_dir is not None:
            data = absolute_image_paths(data, base_dir)
        path = self.config.local_path(location)
        # Same bytes: leave the file (and its time) alone, or Snakemake would see a newer
        # input and render the story again from the start instead of resuming it.
        if path.is_file() and path.read_bytes() == data:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
            os.replace(partial, path)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)


def _declared_id(data: bytes) -> str | None:
    """The id a malformed story declares, if it is a safe one (for its status record)."""
    try:
        story = json.loads(data.decode("utf-8-sig"))
        return check_story_id(story.get("id")) if isinstance(story, dict) else None
    except (ValueError, StoryError):
        return None
