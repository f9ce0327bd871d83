"""The Pub/Sub side of the watcher, against Google's Pub/Sub emulator.

The first part drives cluster_manager.pubsub directly (no render): leases, nacks, dead letters,
draining. The second runs the real daemon (``python -m cluster_manager watch``) on the
subscription with real Snakemake renders of one-sentence stories.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import REPO, write_image
from google.cloud import pubsub_v1
from pubsub_emulator import (  # noqa: F401 - the *_fixture names register fixtures
    PubSubNames,
    create_resources,
    make_names,
    pubsub_emulator_fixture,
    pubsub_fixture,
    pubsub_host_fixture,
)
from pubsub_test_server import PubSubTestServer, pubsub_test_server_fixture  # noqa: F401
from watcher_support import finished_steps

from cluster_manager.config import WatcherConfig
from cluster_manager.pubsub import (
    PubSubDelivery,
    PubSubError,
    PubSubSource,
    publish_story,
    setup_pubsub,
)
from cluster_manager.runner import parse_steps

# ---------------------------------------------------------------------------------------------
# The source on its own


def source_config(names: PubSubNames, *, dead_letter: bool = True, **fields) -> WatcherConfig:
    settings = {
        "source": names.source_settings(with_dead_letter_topic=dead_letter),
        "max_parallel_stories": 2,
        "story_timeout_s": 600,
        **fields,
    }
    return WatcherConfig.model_validate(settings)


class Recorder:
    """A handler that records each delivery and settles it with ``decide``."""

    def __init__(self, decide: Callable[[PubSubDelivery, int], None]) -> None:
        self.decide = decide
        self.deliveries: list[tuple[str, bytes, int | None, float]] = []
        self.lock = threading.Lock()
        self.started = threading.Event()
        self.finished: list[str] = []

    def __call__(self, delivery: PubSubDelivery) -> None:
        with self.lock:
            self.deliveries.append(
                (delivery.message_id, delivery.data, delivery.delivery_attempt, time.monotonic())
            )
            number = len(self.deliveries)
        self.started.set()
        self.decide(delivery, number)
        with self.lock:
            self.finished.append(delivery.message_id)

    def wait_for(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.deliveries) >= count:
                    return
            time.sleep(0.1)
        pytest.fail(f"{len(self.deliveries)} deliveries after {timeout_s} s, expected {count}")


@contextmanager
def serving(source: PubSubSource, handle, join_timeout_s: float = 120) -> Iterator[threading.Event]:
    """Run source.serve in a thread; on exit set stop and wait for serve to return."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            source.serve(handle, stop)
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=run, name="serve")
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(join_timeout_s)
    assert not thread.is_alive(), "serve did not return after stop"
    if errors:
        raise errors[0]


@pytest.fixture(params=["emulator", "test-server"])
def any_pubsub_host(request) -> str:
    """Google's emulator, then tests/pubsub_test_server.py: the same behaviour from both."""
    if request.param == "emulator":
        return request.getfixturevalue("pubsub_host")
    return request.getfixturevalue("pubsub_test_server").host


@pytest.fixture
def any_pubsub(any_pubsub_host) -> PubSubNames:
    names = make_names(any_pubsub_host)
    create_resources(names)
    return names


def test_publish_story_sets_the_story_attribute(any_pubsub: PubSubNames):
    data = json.dumps({"id": "council", "text": "x"}).encode()
    message_id = publish_story(source_config(any_pubsub), "council", data)
    [received] = any_pubsub.pull_until(any_pubsub.subscription_path, 1, timeout_s=10)
    assert received.message.message_id == message_id
    assert received.message.data == data
    assert dict(received.message.attributes) == {"story": "council"}


def test_publish_story_names_a_missing_topic(any_pubsub_host):
    names = make_names(any_pubsub_host)  # nothing created
    with pytest.raises(PubSubError, match=f"topic {names.topic_path} does not exist"):
        publish_story(source_config(names), "council", b"{}")


def test_a_missing_subscription_is_named(any_pubsub_host):
    names = make_names(any_pubsub_host)
    source = PubSubSource(source_config(names))
    with pytest.raises(PubSubError, match=f"subscription {names.subscription_path} does not"):
        source.serve(lambda delivery: delivery.ack(), threading.Event())


def test_the_lease_outlives_the_ack_deadline(pubsub: PubSubNames):
    """A message held 25 s on a 10 s ack deadline subscription is not delivered again."""

    def hold_then_ack(delivery: PubSubDelivery, number: int) -> None:
        time.sleep(25)
        delivery.ack()

    recorder = Recorder(hold_then_ack)
    source = PubSubSource(source_config(pubsub))
    message_id = pubsub.publish(b'{"id": "long"}', story="long")
    with serving(source, recorder):
        recorder.wait_for(1, timeout_s=20)
        # Two handler slots: a redelivered copy would be handed over at once, not held back.
        deadline = time.monotonic() + 60
        while not recorder.finished and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(12)  # past another ack deadline: an ack that never went out would show
    assert [entry[0] for entry in recorder.deliveries] == [message_id]
    assert recorder.deliveries[0][2] == 1
    assert pubsub.pull(pubsub.subscription_path, ack=False) == []


def test_nack_delivers_again_with_the_next_attempt(any_pubsub: PubSubNames):
    def nack_first(delivery: PubSubDelivery, number: int) -> None:
        if number == 1:
            delivery.nack()
        else:
            delivery.ack()

    recorder = Recorder(nack_first)
    message_id = any_pubsub.publish(b'{"id": "again"}')
    with serving(PubSubSource(source_config(any_pubsub)), recorder):
        recorder.wait_for(2, timeout_s=30)
        time.sleep(1)
    assert [(entry[0], entry[2]) for entry in recorder.deliveries] == [
        (message_id, 1),
        (message_id, 2),
    ]


def test_delivery_attempt_is_none_without_a_dead_letter_policy(any_pubsub_host):
    names = make_names(any_pubsub_host)
    create_resources(names, dead_letter_policy=False)
    recorder = Recorder(lambda delivery, number: delivery.ack())
    names.publish(b"{}")
    with serving(PubSubSource(source_config(names)), recorder):
        recorder.wait_for(1, timeout_s=30)
    assert recorder.deliveries[0][2] is None


def test_a_failing_or_silent_handler_gets_the_message_again(any_pubsub: PubSubNames):
    def misbehave(delivery: PubSubDelivery, number: int) -> None:
        if number == 1:
            raise RuntimeError("the handler broke")
        if number == 2:
            return  # neither ack nor nack
        delivery.ack()

    recorder = Recorder(misbehave)
    message_id = any_pubsub.publish(b"{}")
    with serving(PubSubSource(source_config(any_pubsub)), recorder):
        recorder.wait_for(3, timeout_s=30)
    assert [entry[0] for entry in recorder.deliveries] == [message_id] * 3
    assert [entry[2] for entry in recorder.deliveries] == [1, 2, 3]


def test_dead_letter_publishes_the_raw_bytes_with_the_reason(any_pubsub: PubSubNames):
    bad_json = b'{"id": "council", "text": '
    bad_schema = json.dumps({"id": "budget", "title": 5}).encode()
    reasons = {
        bad_json: "story file message 1 is not valid JSON: Expecting value at line 1, column 27",
        bad_schema: "story 'budget': field 'text' is missing " + "x" * 2000,
    }

    def reject(delivery: PubSubDelivery, number: int) -> None:
        delivery.dead_letter(reasons[delivery.data])

    recorder = Recorder(reject)
    any_pubsub.publish(bad_json)
    any_pubsub.publish(bad_schema)  # no story attribute: the id comes from the JSON
    with serving(PubSubSource(source_config(any_pubsub)), recorder):
        recorder.wait_for(2, timeout_s=30)
        dead = any_pubsub.pull_until(any_pubsub.dead_letter_subscription_path, 2, timeout_s=20)
    by_data = {item.message.data: dict(item.message.attributes) for item in dead}
    assert set(by_data) == {bad_json, bad_schema}
    assert by_data[bad_json]["reason"] == reasons[bad_json]
    assert "story" not in by_data[bad_json]
    assert by_data[bad_json]["delivery_attempt"] == "1"
    assert by_data[bad_schema]["story"] == "budget"
    # Cut to Pub/Sub's attribute limit of 1024 bytes.
    assert by_data[bad_schema]["reason"].startswith("story 'budget': field 'text' is missing")
    assert len(by_data[bad_schema]["reason"].encode()) <= 1024
    assert by_data[bad_schema]["reason"].endswith("...")
    assert len(recorder.deliveries) == 2
    assert any_pubsub.pull(any_pubsub.subscription_path, ack=False) == []


def test_dead_letter_without_a_topic_only_acks(any_pubsub: PubSubNames):
    recorder = Recorder(lambda delivery, number: delivery.dead_letter("malformed"))
    any_pubsub.publish(b"not json")
    with serving(PubSubSource(source_config(any_pubsub, dead_letter=False)), recorder):
        recorder.wait_for(1, timeout_s=30)
    assert len(recorder.deliveries) == 1
    # Acked: it does not come back once the lease would have run out (10 s).
    assert any_pubsub.pull_until(any_pubsub.subscription_path, 1, timeout_s=15) == []
    assert any_pubsub.pull(any_pubsub.dead_letter_subscription_path) == []


def test_dead_letter_to_a_missing_topic_keeps_the_message(pubsub: PubSubNames):
    config = source_config(pubsub)
    config.source.dead_letter_topic = "no-such-topic"

    def reject_then_ack(delivery: PubSubDelivery, number: int) -> None:
        if number == 1:
            delivery.dead_letter("malformed")
            assert delivery.settled == "nack"
        else:
            delivery.ack()

    recorder = Recorder(reject_then_ack)
    message_id = pubsub.publish(b"not json")
    with serving(PubSubSource(config), recorder):
        recorder.wait_for(2, timeout_s=90)
    assert [entry[0] for entry in recorder.deliveries] == [message_id] * 2


def test_waiting_counts_messages_held_for_a_free_handler(pubsub: PubSubNames):
    release = threading.Event()

    def block(delivery: PubSubDelivery, number: int) -> None:
        release.wait(60)
        delivery.ack()

    recorder = Recorder(block)
    source = PubSubSource(source_config(pubsub, max_parallel_stories=1))
    for number in range(3):
        pubsub.publish(json.dumps({"id": f"s{number}"}).encode())
    with serving(source, recorder):
        recorder.wait_for(1, timeout_s=30)
        deadline = time.monotonic() + 15
        while source.waiting() < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert source.waiting() == 2
        assert source.running == 1
        release.set()
        recorder.wait_for(3, timeout_s=30)
    assert source.waiting() == 0


def test_stop_drains_running_handlers_and_returns_held_messages(
    pubsub_test_server: PubSubTestServer,
):
    """On stop the running handler finishes and its ack goes out; held messages come back.

    On the test server only: the emulator keeps handing messages to the closed stream (see
    pubsub_test_server.py), so whether the nacked ones reach the pull below is up to chance.
    """
    any_pubsub = make_names(pubsub_test_server.host)
    create_resources(any_pubsub)

    def slow_ack(delivery: PubSubDelivery, number: int) -> None:
        time.sleep(15)  # longer than the 10 s ack deadline: the lease must hold during the drain
        delivery.ack()

    recorder = Recorder(slow_ack)
    source = PubSubSource(source_config(any_pubsub, max_parallel_stories=1))
    ids = [any_pubsub.publish(json.dumps({"id": f"s{number}"}).encode()) for number in range(3)]
    with serving(source, recorder) as stop:
        assert recorder.started.wait(30)
        stop.set()
    # serve returned only once the running handler had returned.
    assert len(recorder.deliveries) == 1
    assert recorder.finished == [recorder.deliveries[0][0]]
    handled = recorder.deliveries[0][0]
    # The held ones were nacked at once; the handled one was acked, so it never comes back.
    back = any_pubsub.pull_until(any_pubsub.subscription_path, 2, timeout_s=10)
    assert sorted(item.message.message_id for item in back) == sorted(set(ids) - {handled})
    assert any_pubsub.pull_until(any_pubsub.subscription_path, 1, timeout_s=15) == []


def test_setup_creates_the_topics_and_the_dead_letter_policy(pubsub_host):
    names = make_names(pubsub_host)
    config = source_config(names, max_attempts=4)
    created = setup_pubsub(config, ack_deadline_s=30)
    assert sorted(created) == sorted(
        [
            names.topic_path,
            names.dead_letter_topic_path,
            names.dead_letter_subscription_path,
            names.subscription_path,
        ]
    )
    subscriber = pubsub_v1.SubscriberClient()
    try:
        subscription = subscriber.get_subscription(subscription=names.subscription_path)
    finally:
        subscriber.close()
    assert subscription.topic == names.topic_path
    assert subscription.ack_deadline_seconds == 30
    assert subscription.dead_letter_policy.dead_letter_topic == names.dead_letter_topic_path
    assert subscription.dead_letter_policy.max_delivery_attempts == 6
    assert setup_pubsub(config) == []  # a second run changes nothing


# ---------------------------------------------------------------------------------------------
# The daemon: `python -m cluster_manager watch` with real renders


ONE_SENTENCE = "The city council approved the new bridge on Tuesday."
RENDER_TIMEOUT_S = 300  # a one-sentence story renders in 20-40 s on 2 cores; two at once, slower
# A killed watcher's lease runs out within a minute (cluster_manager.pubsub.LEASE_EXTENSION_S).
REDELIVERY_TIMEOUT_S = 90


@dataclass
class WatcherProcess:
    process: subprocess.Popen
    log_path: Path

    def log_entries(self) -> list[dict]:
        entries = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                entries.append({"message": line})
        return entries

    def messages(self, story: str | None = None) -> list[str]:
        return [
            entry.get("message", "")
            for entry in self.log_entries()
            if story is None or entry.get("story") == story
        ]

    def tail(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-6000:]


@dataclass
class Newsroom:
    """A scratch workdir for the watcher, the Pub/Sub resources it uses, and its processes."""

    work: Path
    names: PubSubNames
    image: Path
    watchers: list[WatcherProcess] = field(default_factory=list)

    def settings(self, **fields) -> Path:
        settings = {
            "workdir": str(self.work),
            "snakefile": str(REPO / "Snakefile"),
            "snakemake_args": ["--configfile", str(REPO / "config.yaml")],
            "max_parallel_stories": 2,
            "source": self.names.source_settings(),
            "metrics": {"port": 0},
            **fields,
        }
        path = self.work / f"watcher-{len(self.watchers)}.yaml"
        path.write_text(yaml.safe_dump(settings), encoding="utf-8")
        return path

    def start_watcher(self, **fields) -> WatcherProcess:
        config = self.settings(**fields)
        log_path = self.work / f"watcher-{len(self.watchers)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "cluster_manager", "watch", "--config", str(config)],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        watcher = WatcherProcess(process, log_path)
        self.watchers.append(watcher)
        return watcher

    def story(self, story_id: str, text: str = ONE_SENTENCE) -> bytes:
        story = {
            "id": story_id,
            "title": f"Story {story_id}",
            "text": text,
            "images": [{"uri": str(self.image), "caption": "The council chamber"}],
        }
        return json.dumps(story).encode()

    def publish(self, story_id: str, data: bytes | None = None) -> str:
        return self.names.publish(data or self.story(story_id), story=story_id)

    def status(self, story_id: str) -> dict | None:
        path = self.work / "published" / story_id / "status.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def story_dir(self, story_id: str) -> Path:
        return self.work / "stories" / story_id

    def runs(self, story_id: str) -> list[list[str]]:
        """The steps each Snakemake run of the story started, from the watcher's run log."""
        log_path = self.story_dir(story_id) / "logs" / "watcher-snakemake.log"
        text = log_path.read_text(encoding="utf-8", errors="replace")
        return [parse_steps(run) for run in text.split("==== watcher: ")[1:]]

    def wait_for(self, what: str, predicate, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            for watcher in self.watchers:
                code = watcher.process.poll()
                if code is not None and watcher.process.returncode not in (0, -9):
                    pytest.fail(f"the watcher exited with {code}:\n{watcher.tail()}")
            if time.monotonic() > deadline:
                logs = "\n".join(watcher.tail() for watcher in self.watchers)
                pytest.fail(f"timed out after {timeout_s} s waiting for {what}:\n{logs}")
            time.sleep(0.5)

    def wait_published(self, story_id: str, timeout_s: float = RENDER_TIMEOUT_S) -> dict:
        self.wait_for(
            f"story {story_id} to be published",
            lambda: (self.status(story_id) or {}).get("state") == "published",
            timeout_s,
        )
        return self.status(story_id)

    def wait_running(self, story_id: str, timeout_s: float = 120) -> dict:
        def running() -> bool:
            record = self.status(story_id) or {}
            return record.get("state") == "running" and record.get("step") is not None

        self.wait_for(f"story {story_id} to run a step", running, timeout_s)
        return self.status(story_id)

    def stop_all(self) -> None:
        """Kill what is still running: the watchers and every process they started."""
        for watcher in self.watchers:
            try:
                family = psutil.Process(watcher.process.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                family = []
            if watcher.process.poll() is None:
                watcher.process.kill()
                watcher.process.wait()
            for process in family:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
            psutil.wait_procs(family, timeout=10)


def leftover_processes(work: Path) -> list[str]:
    """Processes whose command line mentions the scratch workdir (Snakemake runs and jobs)."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if str(work) in cmdline and process.info["pid"] != os.getpid():
            found.append(f"{process.info['pid']}: {cmdline[:200]}")
    return found


@contextmanager
def scratch_newsroom(names: PubSubNames, tmp_path: Path) -> Iterator[Newsroom]:
    work = tmp_path / "work"
    work.mkdir()
    image = write_image(tmp_path / "council.png")
    room = Newsroom(work, names, image)
    try:
        yield room
    finally:
        room.stop_all()
    assert leftover_processes(work) == []


@pytest.fixture
def newsroom(pubsub: PubSubNames, tmp_path: Path) -> Iterator[Newsroom]:
    """The watcher on Google's emulator."""
    with scratch_newsroom(pubsub, tmp_path) as room:
        yield room


@pytest.fixture
def restart_newsroom(pubsub_test_server: PubSubTestServer, tmp_path: Path) -> Iterator[Newsroom]:
    """The watcher on tests/pubsub_test_server.py, for scenarios that restart it.

    The emulator keeps handing messages to the stream of a watcher that was killed or stopped
    (see pubsub_test_server.py): a restarted watcher gets its story back after seconds,
    minutes or never, with the delivery count run up.
    """
    names = make_names(pubsub_test_server.host)
    create_resources(names)
    with scratch_newsroom(names, tmp_path) as room:
        yield room


def sigterm_and_wait(watcher: WatcherProcess, timeout_s: float) -> int:
    watcher.process.send_signal(signal.SIGTERM)
    try:
        return watcher.process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the watcher did not exit within {timeout_s} s of SIGTERM:\n{watcher.tail()}")


def test_watcher_renders_published_stories_and_dead_letters_bad_ones(newsroom: Newsroom):
    """Three stories, a duplicate, two malformed messages; SIGTERM drains the last story."""
    names = newsroom.names
    watcher = newsroom.start_watcher(max_parallel_stories=3, drain_timeout_s=600)
    first = newsroom.story("bridge-vote")
    newsroom.publish("bridge-vote", first)
    newsroom.publish("river-park")
    bad_json = b'{"id": "broken", "text": "The council'
    bad_schema = json.dumps({"id": "no-text", "title": "No text", "images": []}).encode()
    names.publish(bad_json)
    names.publish(bad_schema, story="no-text")

    newsroom.wait_running("bridge-vote")
    newsroom.publish("bridge-vote", first)  # the same story again while it renders

    dead = names.pull_until(names.dead_letter_subscription_path, 2, timeout_s=60)
    # Refused at once, while the good stories are still rendering.
    assert (newsroom.status("bridge-vote") or {}).get("state") == "running"
    reasons = {item.message.data: dict(item.message.attributes) for item in dead}
    assert set(reasons) == {bad_json, bad_schema}
    assert "is not valid JSON" in reasons[bad_json]["reason"]
    assert reasons[bad_json]["delivery_attempt"] == "1"
    assert "'text'" in reasons[bad_schema]["reason"]
    assert reasons[bad_schema]["story"] == "no-text"
    assert newsroom.status("no-text")["state"] == "failed"

    for story_id in ("bridge-vote", "river-park"):
        record = newsroom.wait_published(story_id)
        assert record["uri"].endswith(f"published/{story_id}/final.mp4")
        assert (newsroom.work / "published" / story_id / "final.mp4").stat().st_size > 0
        assert record["attempts"] == 1

    # SIGTERM with a story running and a long drain: it finishes and the exit is clean. (That
    # its ack goes out is checked on the test server: once this watcher has gone, the emulator
    # hands an unacked message to its dead stream, where no pull can see it.)
    newsroom.publish("harbour")
    newsroom.wait_running("harbour")
    assert sigterm_and_wait(watcher, timeout_s=RENDER_TIMEOUT_S) == 0
    assert newsroom.status("harbour")["state"] == "published"
    assert (newsroom.work / "published" / "harbour" / "final.mp4").is_file()

    # One run per story: the duplicate waited for the first run instead of starting another.
    for story_id in ("bridge-vote", "river-park", "harbour"):
        assert len(newsroom.runs(story_id)) == 1, story_id
        rendering = [m for m in watcher.messages(story_id) if m.startswith("rendering ")]
        assert len(rendering) == 1, story_id
    # Each message was handled once: an ack that did not go out would have brought the message
    # back to this watcher within its 10 s lease, while harbour rendered.
    duplicate_notes = [
        m
        for m in watcher.messages("bridge-vote")
        if "published by the run it waited for" in m or "already published" in m
    ]
    assert len(duplicate_notes) == 1
    assert [m for m in watcher.messages("river-park") if "already published" in m] == []
    refused = [m for m in watcher.messages() if m.startswith("refused ")]
    assert len(refused) == 2
    assert names.pull(names.dead_letter_subscription_path) == []


def test_a_killed_watcher_resumes_the_story_from_its_finished_steps(
    restart_newsroom: Newsroom, pubsub_test_server: PubSubTestServer
):
    """SIGKILL mid-story; the next watcher gets the message again and resumes the story."""
    newsroom = restart_newsroom
    names = newsroom.names
    first = newsroom.start_watcher()
    newsroom.publish("night-bus")
    benchmarks = newsroom.story_dir("night-bus") / "benchmarks"
    snakemake_log = newsroom.story_dir("night-bus") / "logs" / "watcher-snakemake.log"
    newsroom.wait_for(
        "the tts step of night-bus to finish",
        lambda: "tts" in finished_steps(snakemake_log),
        RENDER_TIMEOUT_S,
    )
    # Steps Snakemake recorded as finished (a benchmark file alone may belong to a job cut
    # before it was recorded, which is then rightly run again).
    done_before = {
        f"{step}.tsv": (benchmarks / f"{step}.tsv").stat().st_mtime_ns
        for step in finished_steps(snakemake_log) - {"render"}
    }
    assert newsroom.status("night-bus")["state"] == "running"
    family = psutil.Process(first.process.pid).children(recursive=True)
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()
    # Its Snakemake run goes down with it (PR_SET_PDEATHSIG), jobs included.
    gone, alive = psutil.wait_procs(family, timeout=60)
    assert alive == []

    # Pub/Sub delivers the message again once the dead watcher's lease runs out.
    second = newsroom.start_watcher()
    record = newsroom.wait_published("night-bus", REDELIVERY_TIMEOUT_S + RENDER_TIMEOUT_S)
    assert record["uri"].endswith("published/night-bus/final.mp4")
    # The steps done before the kill did not run again.
    for name, mtime in done_before.items():
        assert (benchmarks / name).stat().st_mtime_ns == mtime, name
    runs = newsroom.runs("night-bus")
    assert len(runs) == 2
    assert "tts" in runs[0]
    assert "tts" not in runs[1] and "init_story" not in runs[1]
    assert "publish" in runs[1]
    # Published once, by the second watcher, from Pub/Sub's second delivery.
    assert [m for m in first.messages("night-bus") if m.startswith("published ")] == []
    assert len([m for m in second.messages("night-bus") if m.startswith("published ")]) == 1
    rendering = [m for m in second.messages("night-bus") if m.startswith("rendering ")]
    assert len(rendering) == 1 and "(attempt 2 of 3)" in rendering[0]
    assert sigterm_and_wait(second, timeout_s=60) == 0
    assert pubsub_test_server.messages_left(names.subscription_path) == 0
    assert names.pull(names.dead_letter_subscription_path) == []


def test_sigterm_drains_a_short_drain_stops_the_run_and_the_next_watcher_finishes_it(
    restart_newsroom: Newsroom, pubsub_test_server: PubSubTestServer
):
    """A short drain stops the run and nacks; a long one lets the story finish and acks."""
    newsroom = restart_newsroom
    subscription = newsroom.names.subscription_path
    first = newsroom.start_watcher(drain_timeout_s=1)
    newsroom.publish("ferry")
    newsroom.wait_running("ferry")
    assert sigterm_and_wait(first, timeout_s=120) == 0
    record = newsroom.status("ferry")
    assert record["state"] == "queued"
    assert "interrupted" in record["reason"]
    assert not (newsroom.work / "published" / "ferry" / "final.mp4").exists()
    # Nacked, not acked: the message is still in the subscription.
    assert pubsub_test_server.messages_left(subscription) == 1

    # The next watcher takes it at once; SIGTERM while it runs, with a long drain.
    second = newsroom.start_watcher(drain_timeout_s=600)
    newsroom.wait_running("ferry")
    assert sigterm_and_wait(second, timeout_s=RENDER_TIMEOUT_S) == 0
    assert newsroom.status("ferry")["state"] == "published"
    assert (newsroom.work / "published" / "ferry" / "final.mp4").is_file()
    assert len(newsroom.runs("ferry")) == 2
    assert len([m for m in second.messages("ferry") if m.startswith("published ")]) == 1
    # The ack went out during the drain, before the watcher exited.
    assert pubsub_test_server.messages_left(subscription) == 0
