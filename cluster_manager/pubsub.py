"""Stories from a Pub/Sub subscription, through the official client's streaming pull.

A story render takes far longer than any Pub/Sub ack deadline (10-600 s). The client's lease
management keeps each received message leased, extending its deadline in the background, for
up to ``story_timeout_s`` (``FlowControl.max_lease_duration``); if the watcher dies, the leases
stop and Pub/Sub delivers the message again when the last extension runs out (at most
``LEASE_EXTENSION_S``).

Each message is one :class:`PubSubDelivery`, settled exactly once by the watcher:

- ``ack``: the story is published, or given up with its reason recorded;
- ``nack``: deliver it again (a transient failure, or the watcher is shutting down);
- ``dead_letter(reason)``: never retry. The raw bytes go to ``source.dead_letter_topic`` with the
  attributes ``reason``, ``story`` (when known) and ``delivery_attempt`` (when known), then the
  message is acked. Without a dead-letter topic it is only acked: the reason is in the status
  record and the log.

``delivery_attempt`` is Pub/Sub's own count (1 = first delivery). Pub/Sub only keeps it on a
subscription with a dead-letter policy; elsewhere it is None. It counts deliveries, not failed
renders: a nack at shutdown and a lease lost with a dead watcher count too.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from google.api_core import exceptions as api_exceptions
from google.cloud import pubsub_v1
from google.cloud.pubsub_v1.subscriber.scheduler import ThreadScheduler

from storyreel.story import StoryError, check_story_id

if TYPE_CHECKING:
    from google.cloud.pubsub_v1.subscriber.message import Message

    from cluster_manager.config import PubSubSourceSettings, WatcherConfig
    from cluster_manager.sources import Delivery

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 60.0
# Pub/Sub limits attribute values to 1024 bytes.
MAX_ATTRIBUTE_BYTES = 1024
# Pub/Sub's bounds for a dead-letter policy's max_delivery_attempts.
MIN_DELIVERY_ATTEMPTS = 5
MAX_DELIVERY_ATTEMPTS = 100
# The longest single extension of a message's lease. The client otherwise grows it to its
# longest ack latency, up to 600 s: stories take hours, so a dead watcher's stories would wait
# ten minutes to be delivered again. It is also the stream's ack deadline.
LEASE_EXTENSION_S = 60
# How often serve() looks at the stop event and the health of the stream.
POLL_S = 0.5
# Pause before opening a new stream after the old one failed for a reason the client does not
# retry by itself.
RESUBSCRIBE_PAUSE_S = 5.0


class PubSubError(RuntimeError):
    """A Pub/Sub resource that is missing or cannot be used; the message names it."""


def resource_path(project: str, collection: str, name: str) -> str:
    """``projects/P/<collection>/NAME``; a name that is already a full path is kept."""
    if name.startswith("projects/"):
        return name
    return f"projects/{project}/{collection}/{name}"


def _pubsub_settings(config: WatcherConfig) -> PubSubSourceSettings:
    settings = config.source
    if getattr(settings, "kind", None) != "pubsub":
        raise PubSubError(
            f"the watcher settings' source is {getattr(settings, 'kind', None)!r}, not 'pubsub': "
            "set source.kind: pubsub with project, subscription and topic"
        )
    return settings


def _attribute(value: str) -> str:
    """``value`` cut to Pub/Sub's attribute size limit, on a character boundary."""
    encoded = value.encode("utf-8")
    if len(encoded) <= MAX_ATTRIBUTE_BYTES:
        return value
    return encoded[: MAX_ATTRIBUTE_BYTES - 3].decode("utf-8", errors="ignore") + "..."


def _story_id_of(message: Message) -> str | None:
    """The story id, from the ``story`` attribute or else the JSON itself, when it is valid."""
    candidates: list[Any] = [message.attributes.get("story")]
    try:
        data = json.loads(message.data)
    except ValueError:  # not JSON, not UTF-8: a dead letter without a story
        data = None
    if isinstance(data, dict):
        candidates.append(data.get("id"))
    for candidate in candidates:
        try:
            return check_story_id(candidate)
        except StoryError:
            continue
    return None


class PubSubDelivery:
    """One received message as the watcher sees it (a :class:`~cluster_manager.sources.Delivery`).

    ``settled`` tells what became of it: None while it is open, then "ack", "nack" or
    "dead-letter". A second settlement is ignored: Pub/Sub takes only the first anyway.
    """

    def __init__(
        self,
        message: Message,
        publish_dead_letter: Callable[[bytes, dict[str, str]], str] | None,
    ) -> None:
        self._message = message
        self._publish_dead_letter = publish_dead_letter
        self._lock = threading.Lock()
        self.data: bytes = message.data
        self.message_id: str = message.message_id
        self.label = f"message {message.message_id}"
        self.delivery_attempt: int | None = message.delivery_attempt
        self.settled: str | None = None

    def _settle(self, outcome: str) -> bool:
        with self._lock:
            if self.settled is not None:
                log.warning(
                    "%s: already settled (%s); ignoring %s", self.label, self.settled, outcome
                )
                return False
            self.settled = outcome
            return True

    def ack(self) -> None:
        if self._settle("ack"):
            self._message.ack()

    def nack(self) -> None:
        if self._settle("nack"):
            self._message.nack()

    def dead_letter(self, reason: str) -> None:
        with self._lock:
            if self.settled is not None:
                log.warning("%s: already settled (%s); not dead-lettered", self.label, self.settled)
                return
            if self._publish_dead_letter is not None:
                attributes = {"reason": _attribute(reason), "message_id": self.message_id}
                story = _story_id_of(self._message)
                if story is not None:
                    attributes["story"] = story
                if self.delivery_attempt is not None:
                    attributes["delivery_attempt"] = str(self.delivery_attempt)
                try:
                    dead_letter_id = self._publish_dead_letter(self.data, attributes)
                except Exception as err:
                    # Acking now would lose the story: let Pub/Sub deliver it again instead.
                    log.error(
                        "%s: could not publish it to the dead-letter topic (%s); "
                        "it will be delivered again",
                        self.label,
                        err,
                    )
                    self.settled = "nack"
                    self._message.nack()
                    return
                log.info("%s: dead-lettered as message %s: %s", self.label, dead_letter_id, reason)
            else:
                log.info("%s: given up (no dead-letter topic configured): %s", self.label, reason)
            self.settled = "dead-letter"
            self._message.ack()


class PubSubSource:
    """A :class:`~cluster_manager.sources.StorySource` on ``config.source.subscription``."""

    def __init__(self, config: WatcherConfig) -> None:
        settings = _pubsub_settings(config)
        self.config = config
        self.subscription = resource_path(settings.project, "subscriptions", settings.subscription)
        self.dead_letter_topic = (
            resource_path(settings.project, "topics", settings.dead_letter_topic)
            if settings.dead_letter_topic
            else None
        )
        self._subscriber = pubsub_v1.SubscriberClient()
        self._publisher: pubsub_v1.PublisherClient | None = None
        self._future: pubsub_v1.subscriber.futures.StreamingPullFuture | None = None
        self._lock = threading.Lock()
        self._running = 0

    @property
    def running(self) -> int:
        """Handlers running now."""
        with self._lock:
            return self._running

    def waiting(self) -> int:
        """Messages received and leased by the client, held back until a handler is free.

        Pub/Sub honours the stream's flow control only as far as it can (the emulator not at
        all): extra messages wait, leased, inside the client. Their count is the client's own
        and not public, so this answers 0 where that changes.
        """
        manager = getattr(self._future, "_StreamingPullFuture__manager", None)
        on_hold = getattr(manager, "_messages_on_hold", None)
        try:
            return int(on_hold.size) if on_hold is not None else 0
        except (AttributeError, TypeError, ValueError):
            return 0

    def _publish_dead_letter(self, data: bytes, attributes: dict[str, str]) -> str:
        assert self.dead_letter_topic is not None
        with self._lock:
            if self._publisher is None:
                self._publisher = pubsub_v1.PublisherClient()
            publisher = self._publisher
        future = publisher.publish(self.dead_letter_topic, data, **attributes)
        return future.result(timeout=PUBLISH_TIMEOUT_S)

    def check(self) -> None:
        """Raise PubSubError if the subscription does not exist.

        Reading a subscription's settings needs pubsub.subscriptions.get, which
        roles/pubsub.subscriber lacks: without it the check is skipped and the stream reports.
        """
        try:
            self._subscriber.get_subscription(subscription=self.subscription, timeout=30)
        except api_exceptions.NotFound:
            raise self._missing() from None
        except api_exceptions.PermissionDenied:
            log.info("cannot read the settings of %s; pulling anyway", self.subscription)

    def _missing(self) -> PubSubError:
        settings = self.config.source
        topic = resource_path(settings.project, "topics", settings.topic)
        return PubSubError(
            f"subscription {self.subscription} does not exist (source.subscription in the "
            f"watcher settings): create it first, e.g. gcloud pubsub subscriptions create "
            f"{self.subscription} --topic {topic} (docs/watcher.md)"
        )

    def serve(self, handle: Callable[[Delivery], None], stop: threading.Event) -> None:
        self.check()
        while not stop.is_set():
            future = self._subscribe(handle, stop)
            while not future.done() and not stop.wait(POLL_S):
                pass
            if stop.is_set():
                log.info("stopping: no new messages; waiting for the running stories")
                future.cancel()
                self._result(future)
                break
            # The stream ended by itself: the client gave up on an error it does not retry.
            error = self._result(future)
            if isinstance(error, api_exceptions.NotFound):
                raise self._missing()
            if isinstance(error, api_exceptions.PermissionDenied):
                raise PubSubError(
                    f"subscription {self.subscription}: permission denied ({error.message}); "
                    "the watcher's account needs roles/pubsub.subscriber on it"
                )
            log.error(
                "the stream from %s ended (%s); opening a new one in %.0f s",
                self.subscription,
                error,
                RESUBSCRIBE_PAUSE_S,
            )
            stop.wait(RESUBSCRIBE_PAUSE_S)
        self._future = None
        log.info("stopped pulling from %s", self.subscription)

    @staticmethod
    def _result(future: pubsub_v1.subscriber.futures.StreamingPullFuture) -> Exception | None:
        """Wait for the stream to shut down (running callbacks included); return its error."""
        try:
            future.result()
        except Exception as err:
            return err
        return None

    def _subscribe(
        self, handle: Callable[[Delivery], None], stop: threading.Event
    ) -> pubsub_v1.subscriber.futures.StreamingPullFuture:
        workers = self.config.max_parallel_stories
        flow_control = pubsub_v1.types.FlowControl(
            max_messages=workers,
            max_lease_duration=self.config.story_timeout_s,
            max_duration_per_lease_extension=LEASE_EXTENSION_S,
        )
        scheduler = ThreadScheduler(
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="story")
        )
        publish_dead_letter = self._publish_dead_letter if self.dead_letter_topic else None

        def on_message(message: Message) -> None:
            delivery = PubSubDelivery(message, publish_dead_letter)
            if stop.is_set():
                # Received as the watcher stops: another watcher (or this one, later) takes it.
                delivery.nack()
                return
            with self._lock:
                self._running += 1
            try:
                handle(delivery)
            except Exception:
                log.exception("%s: the handler failed; it will be delivered again", delivery.label)
            finally:
                with self._lock:
                    self._running -= 1
                if delivery.settled is None:
                    log.warning("%s: left unsettled by the handler; nacking it", delivery.label)
                    delivery.nack()

        log.info("pulling stories from %s (%d at a time)", self.subscription, workers)
        # await_callbacks_on_shutdown: on stop, the client keeps the leases alive and sends the
        # acks and nacks of the handlers still running before the stream's future resolves.
        self._future = self._subscriber.subscribe(
            self.subscription,
            on_message,
            flow_control=flow_control,
            scheduler=scheduler,
            await_callbacks_on_shutdown=True,
        )
        return self._future


def publish_story(config: WatcherConfig, story_id: str, data: bytes) -> str:
    """Publish a story's bytes to ``source.topic`` with attribute ``story``; return the id."""
    settings = _pubsub_settings(config)
    topic = resource_path(settings.project, "topics", settings.topic)
    publisher = pubsub_v1.PublisherClient()
    try:
        return publisher.publish(topic, data, story=story_id).result(timeout=PUBLISH_TIMEOUT_S)
    except api_exceptions.NotFound:
        raise PubSubError(
            f"topic {topic} does not exist (source.topic in the watcher settings): create it "
            f"first, e.g. gcloud pubsub topics create {topic} (docs/watcher.md)"
        ) from None
    except api_exceptions.PermissionDenied as err:
        raise PubSubError(
            f"topic {topic}: permission denied ({err.message}); the account needs "
            "roles/pubsub.publisher on it"
        ) from None
    finally:
        publisher.stop()


def ensure_topic(publisher: pubsub_v1.PublisherClient, topic: str) -> bool:
    """Create ``topic`` unless it exists; True if it was created."""
    try:
        publisher.create_topic(name=topic)
    except api_exceptions.AlreadyExists:
        return False
    return True


def ensure_subscription(
    subscriber: pubsub_v1.SubscriberClient,
    subscription: str,
    topic: str,
    *,
    ack_deadline_s: int = 60,
    dead_letter_topic: str | None = None,
    max_delivery_attempts: int = MIN_DELIVERY_ATTEMPTS,
) -> bool:
    """Create ``subscription`` on ``topic`` unless it exists; True if it was created.

    With ``dead_letter_topic``, Pub/Sub itself moves a message there after
    ``max_delivery_attempts`` deliveries (5-100): a backstop for a message that never gets
    settled, e.g. one that takes the watcher down each time. The ack deadline only matters
    when a watcher dies (the client extends the leases of live ones): it is how long Pub/Sub
    waits before delivering that watcher's messages again.
    """
    request: dict[str, Any] = {
        "name": subscription,
        "topic": topic,
        "ack_deadline_seconds": ack_deadline_s,
    }
    if dead_letter_topic is not None:
        if not MIN_DELIVERY_ATTEMPTS <= max_delivery_attempts <= MAX_DELIVERY_ATTEMPTS:
            raise ValueError(
                f"max_delivery_attempts is {max_delivery_attempts}; Pub/Sub accepts "
                f"{MIN_DELIVERY_ATTEMPTS} to {MAX_DELIVERY_ATTEMPTS}"
            )
        request["dead_letter_policy"] = {
            "dead_letter_topic": dead_letter_topic,
            "max_delivery_attempts": max_delivery_attempts,
        }
    try:
        subscriber.create_subscription(request=request)
    except api_exceptions.AlreadyExists:
        return False
    return True


def setup_pubsub(config: WatcherConfig, *, ack_deadline_s: int = 60) -> list[str]:
    """Create what ``config.source`` names, where missing; return what was created.

    The topic and the watcher's subscription; with a dead-letter topic also that topic, a
    subscription of the same name on it (a topic without subscriptions drops what is
    published to it) and the watcher subscription's dead-letter policy, whose
    max_delivery_attempts leaves the watcher its own ``max_attempts`` plus two deliveries lost
    to restarts. An existing subscription is left as it is.
    """
    settings = _pubsub_settings(config)
    topic = resource_path(settings.project, "topics", settings.topic)
    subscription = resource_path(settings.project, "subscriptions", settings.subscription)
    created = []
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    try:
        if ensure_topic(publisher, topic):
            created.append(topic)
        dead_letter_topic = None
        if settings.dead_letter_topic:
            dead_letter_topic = resource_path(
                settings.project, "topics", settings.dead_letter_topic
            )
            if ensure_topic(publisher, dead_letter_topic):
                created.append(dead_letter_topic)
            dead_letter_subscription = dead_letter_topic.replace("/topics/", "/subscriptions/")
            if ensure_subscription(subscriber, dead_letter_subscription, dead_letter_topic):
                created.append(dead_letter_subscription)
        attempts = min(MAX_DELIVERY_ATTEMPTS, max(MIN_DELIVERY_ATTEMPTS, config.max_attempts + 2))
        if ensure_subscription(
            subscriber,
            subscription,
            topic,
            ack_deadline_s=ack_deadline_s,
            dead_letter_topic=dead_letter_topic,
            max_delivery_attempts=attempts,
        ):
            created.append(subscription)
    finally:
        publisher.stop()
        subscriber.close()
    return created
