"""Google's Pub/Sub emulator for the tests, and fresh topics and subscriptions on it.

Import the fixture functions into a test module (``from pubsub_emulator import
pubsub_fixture, ...``; each is registered under its name without ``_fixture``):
``pubsub_emulator`` (one per test run) starts ``gcloud beta emulators pubsub start`` on
127.0.0.1 and yields its ``host:port``; ``pubsub_host`` sets PUBSUB_EMULATOR_HOST for one test
(and the processes it starts); ``pubsub`` also creates a topic, a watcher subscription (10 s
ack deadline, dead-letter policy of 5 attempts), a dead-letter topic and a subscription on it,
all named uniquely for the test.

The emulator is the Debian package ``google-cloud-cli-pubsub-emulator`` (Java 17) from Google's
apt repository, or ``gcloud components install pubsub-emulator``; the tests are skipped where
``gcloud`` is missing. It runs offline and starts in 1-3 s.

What the emulator (cloud-pubsub-emulator 0.8.20, gcloud 528.0.0) does and does not do, as tried:

- Dead-letter policies work: after ``max_delivery_attempts`` deliveries it moves the message to
  the dead-letter topic itself, adding the CloudPubSubDeadLetterSource* attributes as Pub/Sub
  does. It checks the policy as Pub/Sub does: max_delivery_attempts 5-100, the dead-letter topic
  must exist.
- ``delivery_attempt`` is counted (1, 2, ...) on a subscription with a dead-letter policy and is
  0 (the client's None) without one, as in Pub/Sub.
- Retry policies are accepted and stored, but their backoff is ignored: a nacked message comes
  back at once, whatever minimum_backoff says.
- It ignores the streaming pull's flow control: it sends every available message at once, and
  the client holds the extra ones (leased) until a handler is free.
- An unacked message comes back when the ack deadline passes (10 s deadline: ~10 s); the
  client's lease extension (ModifyAckDeadline) keeps it from coming back for as long as the
  subscriber lives.
- A streaming pull that ends by the client's cancel (a clean shutdown too) or by the client's
  process dying is never unregistered: grpc-java inside the emulator fails with
  NoSuchMethodError (``ServerImpl$JumpToApplicationThreadServerStreamListener.closedInternal``,
  in its log). The dead stream keeps getting its share of deliveries, each lost for that
  stream's ack deadline (60 s with the Python client) and counted as a delivery attempt; with
  no live stream beside it, it gets them all, and a unary Pull never sees the message. A
  watcher restarted after a kill or a stop got its message back after 3 s to over 300 s in
  trials, with delivery_attempt run up to 5. Scenarios that restart a subscriber therefore
  run on tests/pubsub_test_server.py.
- Ack deadlines above 600 s are refused, as are resource names under 3 characters.
- IAM is disabled (no policy methods, no permission errors); exactly-once delivery is accepted
  as a setting. Nothing persists across restarts of the emulator.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from conftest import free_port, wait_until_answering
from google.cloud import pubsub_v1

from cluster_manager.pubsub import ensure_subscription, ensure_topic, resource_path

PROJECT = "storyreel-test"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):  # gone (or the id is someone else's now)
        return False
    return True


def stop_process_group(process: subprocess.Popen, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the group led by ``process`` (gcloud and the java it spawned), then SIGKILL."""
    pgid = process.pid  # the leader of its own session and group
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + timeout_s
        # poll() reaps the leader: a zombie leader would keep the group "alive".
        while (process.poll() is None or _group_alive(pgid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if process.poll() is not None and not _group_alive(pgid):
            break


@pytest.fixture(name="pubsub_emulator", scope="session")
def pubsub_emulator_fixture(tmp_path_factory) -> Iterator[str]:
    """``host:port`` of a running Pub/Sub emulator (the whole process tree stops at the end)."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        pytest.skip(
            "gcloud is not installed: install the Pub/Sub emulator (Debian package "
            "google-cloud-cli-pubsub-emulator from Google's apt repository)"
        )
    folder = tmp_path_factory.mktemp("pubsub-emulator")
    port = free_port()
    host = f"127.0.0.1:{port}"
    env = {
        **os.environ,
        # gcloud's own settings and logs stay in the test's folder, not the user's home.
        "CLOUDSDK_CONFIG": str(folder / "gcloud"),
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
    }
    command = [
        gcloud,
        *("beta", "emulators", "pubsub", "start"),
        f"--host-port={host}",
        f"--project={PROJECT}",
        f"--data-dir={folder / 'data'}",
    ]
    (folder / "data").mkdir()
    log_file = folder / "emulator.log"
    with log_file.open("wb") as log:
        # Its own session: gcloud starts java as a child, and the group takes both down.
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        # The emulator answers a plain HTTP GET / with "Ok" once it serves.
        wait_until_answering(
            process, f"http://{host}/", "the Pub/Sub emulator", log_file, START_TIMEOUT_S
        )
        yield host
    finally:
        stop_process_group(process)


@dataclass
class PubSubNames:
    """Fresh resources on the emulator, as short names (for settings) and full paths."""

    host: str
    project: str
    topic: str
    subscription: str
    dead_letter_topic: str
    dead_letter_subscription: str

    def path(self, collection: str, name: str) -> str:
        return resource_path(self.project, collection, name)

    @property
    def topic_path(self) -> str:
        return self.path("topics", self.topic)

    @property
    def subscription_path(self) -> str:
        return self.path("subscriptions", self.subscription)

    @property
    def dead_letter_topic_path(self) -> str:
        return self.path("topics", self.dead_letter_topic)

    @property
    def dead_letter_subscription_path(self) -> str:
        return self.path("subscriptions", self.dead_letter_subscription)

    def source_settings(self, with_dead_letter_topic: bool = True) -> dict:
        """The ``source`` block of watcher settings for these resources."""
        return {
            "kind": "pubsub",
            "project": self.project,
            "subscription": self.subscription,
            "topic": self.topic,
            "dead_letter_topic": self.dead_letter_topic if with_dead_letter_topic else None,
        }

    def publish(self, data: bytes, **attributes: str) -> str:
        publisher = pubsub_v1.PublisherClient()
        try:
            return publisher.publish(self.topic_path, data, **attributes).result(timeout=30)
        finally:
            publisher.stop()

    def pull(self, subscription_path: str, max_messages: int = 10, ack: bool = True) -> list:
        """Messages waiting on a subscription now (acked unless ``ack`` is False)."""
        subscriber = pubsub_v1.SubscriberClient()
        try:
            with warnings.catch_warnings():
                # Deprecated for consumers that wait for messages; a test asks what is there now.
                warnings.simplefilter("ignore", DeprecationWarning)
                response = subscriber.pull(
                    subscription=subscription_path,
                    max_messages=max_messages,
                    return_immediately=True,
                    timeout=30,
                )
            received = list(response.received_messages)
            if received:
                ack_ids = [item.ack_id for item in received]
                if ack:
                    subscriber.acknowledge(subscription=subscription_path, ack_ids=ack_ids)
                else:
                    subscriber.modify_ack_deadline(
                        subscription=subscription_path, ack_ids=ack_ids, ack_deadline_seconds=0
                    )
            return received
        finally:
            subscriber.close()

    def pull_until(
        self, subscription_path: str, count: int, timeout_s: float, ack: bool = True
    ) -> list:
        """Pull until ``count`` messages came or ``timeout_s`` passed; return what came."""
        received: list = []
        deadline = time.monotonic() + timeout_s
        while len(received) < count and time.monotonic() < deadline:
            batch = self.pull(subscription_path, count - len(received), ack=ack)
            received += batch
            if not batch:
                time.sleep(0.5)
        return received


def make_names(host: str, prefix: str = "stories") -> PubSubNames:
    tag = uuid.uuid4().hex[:8]
    return PubSubNames(
        host=host,
        project=PROJECT,
        topic=f"{prefix}-{tag}",
        subscription=f"{prefix}-watcher-{tag}",
        dead_letter_topic=f"{prefix}-dead-{tag}",
        dead_letter_subscription=f"{prefix}-dead-{tag}",
    )


def create_resources(
    names: PubSubNames,
    *,
    ack_deadline_s: int = 10,
    dead_letter_policy: bool = True,
    max_delivery_attempts: int = 5,
) -> None:
    """The topic, the dead-letter topic and its subscription, and the watcher subscription."""
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    try:
        ensure_topic(publisher, names.topic_path)
        ensure_topic(publisher, names.dead_letter_topic_path)
        ensure_subscription(
            subscriber, names.dead_letter_subscription_path, names.dead_letter_topic_path
        )
        ensure_subscription(
            subscriber,
            names.subscription_path,
            names.topic_path,
            ack_deadline_s=ack_deadline_s,
            dead_letter_topic=names.dead_letter_topic_path if dead_letter_policy else None,
            max_delivery_attempts=max_delivery_attempts,
        )
    finally:
        publisher.stop()
        subscriber.close()


@pytest.fixture(name="pubsub_host")
def pubsub_host_fixture(pubsub_emulator, monkeypatch) -> str:
    """The emulator, with PUBSUB_EMULATOR_HOST set for this test (and its subprocesses)."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator)
    return pubsub_emulator


@pytest.fixture(name="pubsub")
def pubsub_fixture(pubsub_host) -> PubSubNames:
    """Fresh resources for one test: a 10 s ack deadline, a dead-letter policy of 5 attempts."""
    names = make_names(pubsub_host)
    create_resources(names)
    return names
