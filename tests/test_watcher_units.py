"""The watcher's parts without a render: settings, status records, the Snakemake command and
its log, the inbox, submitting, logs, metrics, and deliveries settled without a run."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import REPO
from watcher_support import story_file

from cluster_manager.config import (
    ConfigError,
    InboxSourceSettings,
    MetricsSettings,
    WatcherConfig,
    load_config,
)
from cluster_manager.inbox import InboxSource
from cluster_manager.logs import JsonFormatter, StoryFilter, story_context
from cluster_manager.metrics import MetricsServer, WatcherMetrics
from cluster_manager.runner import LogFollower, Runner, parse_steps, published_uri
from cluster_manager.scaler import Scaler, ScalerSettings
from cluster_manager.status import new_record, read_status, step_seconds, write_status
from cluster_manager.submit import AlreadyRendering, submit_story
from cluster_manager.watcher import Watcher, _StoryRun
from storyreel.storage import storage_client
from storyreel.story import StoryError

# --- settings ------------------------------------------------------------------------------


def test_defaults_are_a_local_inbox(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(None)
    assert config.workdir == tmp_path
    assert config.source.kind == "inbox"
    assert config.inbox == tmp_path / "inbox"
    assert config.story_source == "queue/{story}.json"
    assert config.status_location == "published/{story}/status.json"
    assert config.snakemake == Path(sys.executable).with_name("snakemake")
    assert (config.max_parallel_stories, config.max_attempts) == (2, 3)
    assert config.scaler.backend == "none"


def test_repository_watcher_yaml_holds_the_defaults(monkeypatch):
    """watcher.yaml documents the defaults: loading it changes nothing but the workdir."""
    monkeypatch.chdir(REPO)
    assert load_config(REPO / "watcher.yaml") == load_config(None)
    documented = yaml.safe_load((REPO / "watcher.yaml").read_text(encoding="utf-8"))
    assert set(documented) == set(WatcherConfig.model_fields)
    assert set(documented["scaler"]) == set(ScalerSettings.model_fields)
    assert set(documented["metrics"]) == set(MetricsSettings.model_fields)
    assert set(documented["source"]) == set(InboxSourceSettings.model_fields)


def test_relative_paths_are_relative_to_the_settings_file_then_workdir(tmp_path):
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "watcher.yaml").write_text(
        "workdir: ../checkout\nprofile: profiles/gke\nsource: {inbox: drop}\n"
        "scaler: {idle_policy: delete-cluster, cluster_spec: deploy/gke/cluster-spec.yaml}\n"
    )
    config = load_config(folder / "watcher.yaml")
    assert config.workdir == tmp_path / "checkout"
    assert config.profile == "profiles/gke"
    assert config.inbox == tmp_path / "checkout" / "drop"
    assert config.scaler.cluster_spec == tmp_path / "checkout" / "deploy/gke/cluster-spec.yaml"


@pytest.mark.parametrize(
    ("text", "field", "says"),
    [
        ("bogus: 1\n", "bogus", "unknown field"),
        ("max_parallel_stories: 0\n", "max_parallel_stories", "greater than or equal to 1"),
        ("source: {kind: inbox, poll_s: -1}\n", "source.poll_s", "greater than 0"),
        ("source: {kind: pubsub, project: p}\n", "source.subscription", "Field required"),
        ("source: {kind: carrier-pigeon}\n", "source", "carrier-pigeon"),
        ("story_source: queue/story.json\n", "story_source", "{story}"),
        ("status_location: status.json\n", "status_location", "{story}"),
        ("snakemake_args: [--config, a=1]\n", "snakemake_args", "--configfile"),
        ("metrics: {port: 70000}\n", "metrics.port", "65535"),
        ("scaler: {backend: aws}\n", "scaler.backend", "'none' or 'gke'"),
    ],
)
def test_setting_errors_name_the_file_and_the_field(tmp_path, text, field, says):
    path = tmp_path / "watcher.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(f"{path}: field '{field}'"), message
    assert says in message


def test_unreadable_settings_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: cannot read"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("source: [\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- workdir\n")
    with pytest.raises(ConfigError, match="list.yaml: the watcher settings must be a mapping"):
        load_config(listed)


def test_cli_reports_a_bad_setting_and_exits_2(tmp_path):
    path = tmp_path / "watcher.yaml"
    path.write_text("drain_timeout_s: soon\n")
    result = subprocess.run(
        [sys.executable, "-m", "cluster_manager", "watch", "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert f"error: {path}: field 'drain_timeout_s'" in result.stderr


# --- status records --------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path) -> WatcherConfig:
    return WatcherConfig(workdir=tmp_path)


def test_status_record_round_trip(config, tmp_path):
    assert read_status(config, "council") is None
    written = write_status(config, new_record("council", "running", "abc", step="tts", attempts=1))
    path = tmp_path / "published" / "council" / "status.json"
    assert json.loads(path.read_text()) == written == read_status(config, "council")
    assert written["updated"].endswith("Z")
    assert written["step"] == "tts"
    assert sorted(os.listdir(path.parent)) == ["status.json"]  # no temporary file left
    assert path.stat().st_mode & 0o777 == 0o644


def test_status_record_refuses_unknown_state(config):
    with pytest.raises(ValueError, match="'rendered' is not one of"):
        write_status(config, new_record("council", "rendered", "abc"))


def test_unreadable_status_record_reads_as_none(config, tmp_path):
    path = tmp_path / "published" / "council" / "status.json"
    path.parent.mkdir(parents=True)
    path.write_text("{half")
    assert read_status(config, "council") is None


def test_status_record_in_gcs(gcs_emulator, monkeypatch, tmp_path):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    bucket = f"status-{uuid.uuid4().hex[:12]}"
    storage_client().create_bucket(bucket)
    config = WatcherConfig(
        workdir=tmp_path, status_location=f"gs://{bucket}/videos/{{story}}/status.json"
    )
    assert read_status(config, "council") is None
    written = write_status(config, new_record("council", "published", "abc", uri="gs://v/x.mp4"))
    assert read_status(config, "council") == written
    blob = storage_client().bucket(bucket).get_blob("videos/council/status.json")
    assert blob.content_type == "application/json"


def test_step_seconds_from_benchmark_files(tmp_path):
    benchmarks = tmp_path / "benchmarks"
    benchmarks.mkdir()
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    (benchmarks / "tts.tsv").write_text(
        header + "6.1234\t0:00:06\t373\t869\t351\t362\t0\t1\t67\t5\n"
    )
    (benchmarks / "render-0.tsv").write_text(header + "1.4\t0:00:01\t1\t1\t1\t1\t0\t0\t1\t1\n")
    (benchmarks / "align.tsv").write_text("")  # being written
    assert step_seconds(tmp_path) == {"render-0": 1.4, "tts": 6.123}
    assert step_seconds(tmp_path / "nothing") == {}


# --- the Snakemake command and its log ------------------------------------------------------


def test_snakemake_command_puts_targets_first_and_config_last(tmp_path):
    config = WatcherConfig(
        workdir=tmp_path,
        snakefile=REPO / "Snakefile",
        snakemake_args=["--configfile", "site.yaml"],
    )
    command = Runner(config).command("council")
    assert command[:2] == [str(config.snakemake), "stories/council/published.json"]
    assert command[-3:] == ["--config", "story_source=queue/{story}.json", "stories_dir=stories"]
    cores = command.index("--cores")
    assert command[cores : cores + 2] == ["--cores", "all"]
    assert "--rerun-incomplete" in command
    assert command[command.index("--snakefile") + 1] == str(REPO / "Snakefile")
    assert command[command.index("--directory") + 1] == str(tmp_path)
    profiled = Runner(WatcherConfig(workdir=tmp_path, profile="profiles/gke")).command("x")
    assert "--cores" not in profiled
    assert profiled[profiled.index("--profile") + 1] == "profiles/gke"
    assert "--forcerun" not in command


def test_a_forced_command_reruns_init_story_and_keeps_the_rest(tmp_path):
    from snakemake.cli import get_argument_parser

    config = WatcherConfig(workdir=tmp_path, snakemake_args=["--configfile", "site.yaml"])
    forced = Runner(config).command("council", force=True)
    plain = Runner(config).command("council")
    assert [word for word in forced if word not in ("--forcerun", "init_story")] == plain
    # Read by Snakemake's own parser: one forced rule, the target and --config untouched.
    args = get_argument_parser().parse_args(forced[1:])
    assert set(args.forcerun) == {"init_story"}
    assert args.targets == ["stories/council/published.json"]
    assert args.config == ["story_source=queue/{story}.json", "stories_dir=stories"]
    assert [str(path) for path in args.configfile] == ["site.yaml"]


SNAKEMAKE_LOG = """\
Building DAG of jobs...
Using shell: /usr/bin/bash
Job stats:
job           count
[Sun Nov 29 18:41:52 2026]
rule init_story:
    input: queue/smoke.json
    output: stories/smoke/story.json, stories/smoke/assets
    jobid: 2
[Sun Nov 29 18:41:53 2026]
localrule transcript:
    input: stories/smoke/story.json
[Sun Nov 29 18:41:55 2026]
rule tts:
    reason: Missing output files: stories/smoke/speech.wav
error: story 'smoke' images[0] (cut.png): file cut.png is truncated or corrupt
[Sun Nov 29 18:41:56 2026]
Error in rule tts:
    message: None
"""


def test_steps_are_parsed_from_the_snakemake_log():
    assert parse_steps(SNAKEMAKE_LOG) == ["init_story", "transcript", "tts"]


def test_log_follower_reads_what_was_appended(tmp_path):
    log_path = tmp_path / "watcher-snakemake.log"
    log_path.write_text("earlier run\nrule compose:\n")
    follower = LogFollower(log_path, log_path.stat().st_size)
    follower.read()
    assert follower.step is None  # only what this run wrote
    head, tail = SNAKEMAKE_LOG[:200], SNAKEMAKE_LOG[200:]
    with log_path.open("a") as stream:
        stream.write(head + "rule rend")  # a line cut in the middle
    follower.read()
    assert follower.step == "init_story"
    with log_path.open("a") as stream:
        stream.write("er:\n" + tail.split("rule init_story:\n", 1)[-1])
    follower.read()
    assert follower.step == "tts"
    assert follower.started == ["init_story", "transcript", "tts"]
    assert follower.failed_step == "tts"
    assert follower.error == (
        "story 'smoke' images[0] (cut.png): file cut.png is truncated or corrupt"
    )


def test_published_uri_is_where_final_mp4_went(tmp_path):
    record = {
        "story": "smoke",
        "destination": "gs://videos/smoke/",
        "files": [
            {"name": "captions.vtt", "uri": "gs://videos/smoke/captions.vtt"},
            {"name": "final.mp4", "uri": "gs://videos/smoke/final.mp4"},
        ],
    }
    assert published_uri(record) == "gs://videos/smoke/final.mp4"
    runner = Runner(WatcherConfig(workdir=tmp_path))
    assert runner.published_record("smoke") is None
    (tmp_path / "stories" / "smoke").mkdir(parents=True)
    (tmp_path / "stories" / "smoke" / "published.json").write_text(json.dumps(record))
    assert runner.published_record("smoke") == record


def test_story_files_in_object_storage(gcs_emulator, monkeypatch, tmp_path):
    """With a cluster profile the run's files (published.json, benchmarks) live under the
    profile's default storage prefix, not in workdir."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    bucket = storage_client().create_bucket(f"work-{uuid.uuid4().hex[:12]}")
    config = WatcherConfig(workdir=tmp_path, storage_prefix=f"gs://{bucket.name}/runs/")
    runner = Runner(config)
    assert runner.story_files("smoke") == f"gs://{bucket.name}/runs/stories/smoke"
    assert runner.published_record("smoke") is None
    record = {"story": "smoke", "files": [{"name": "final.mp4", "uri": "gs://v/smoke.mp4"}]}
    bucket.blob("runs/stories/smoke/published.json").upload_from_string(json.dumps(record))
    bucket.blob("runs/stories/smoke/benchmarks/tts.tsv").upload_from_string("s\th:m:s\n4.5\t0\n")
    bucket.blob("runs/stories/smoke/benchmarks/render-1.tsv").upload_from_string("s\n2\n")
    assert runner.published_record("smoke") == record
    assert step_seconds(runner.story_files("smoke")) == {"render-1": 2.0, "tts": 4.5}


def test_storage_prefix_must_be_a_gcs_prefix(tmp_path):
    path = tmp_path / "watcher.yaml"
    path.write_text("storage_prefix: /shared/runs\n")
    with pytest.raises(ConfigError, match="field 'storage_prefix': '/shared/runs' is not a gs://"):
        load_config(path)


# The runner's process handling, with a stand-in for Snakemake: a process that starts a child
# (as Snakemake starts jobs), ignores the stop signal (SIGINT) if asked to, and reports its pids.
STAND_IN = """\
#!{python}
import os, signal, subprocess, sys, time
if os.environ.get("IGNORE_STOP"):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(os.environ["PIDS_FILE"], "w") as pids:
    pids.write(f"{{os.getpid()}} {{job.pid}}")
print("rule tts:", flush=True)
time.sleep(600)
"""


@pytest.fixture
def stand_in(tmp_path, monkeypatch) -> WatcherConfig:
    script = tmp_path / "fake-snakemake"
    script.write_text(STAND_IN.format(python=sys.executable))
    script.chmod(0o755)
    monkeypatch.setenv("PIDS_FILE", str(tmp_path / "pids"))
    return WatcherConfig(workdir=tmp_path, snakemake=script, stop_grace_s=1)


def _pids(tmp_path: Path, timeout_s: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = (tmp_path / "pids").read_text() if (tmp_path / "pids").exists() else ""
        if len(text.split()) == 2:
            return [int(pid) for pid in text.split()]
        time.sleep(0.05)
    raise AssertionError("the stand-in never started")


def _gone(pids: list[int], timeout_s: float = 15) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if psutil.pid_exists(pid) and _not_zombie(pid)]
        if not alive:
            return True
        time.sleep(0.05)
    return False


def _not_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("ignore_stop", [False, True])
def test_abort_stops_the_whole_process_group(stand_in, tmp_path, monkeypatch, ignore_stop):
    if ignore_stop:
        monkeypatch.setenv("IGNORE_STOP", "1")
    abort = threading.Event()
    steps: list[str] = []
    results = []
    worker = threading.Thread(
        target=lambda: results.append(Runner(stand_in).run("council", abort, steps.append))
    )
    worker.start()
    pids = _pids(tmp_path)
    deadline = time.monotonic() + 10
    while not steps and time.monotonic() < deadline:
        time.sleep(0.1)
    abort.set()
    worker.join(30)
    assert not worker.is_alive()
    (result,) = results
    assert result.interrupted and not result.published
    assert result.reason == "stopped by the watcher's shutdown"
    assert steps == ["tts"]
    assert _gone(pids), "a process of the run outlived it"


def test_a_run_past_its_timeout_is_stopped(stand_in, tmp_path):
    config = stand_in.model_copy(update={"story_timeout_s": 1.5})
    result = Runner(config).run("council", threading.Event())
    assert not result.published and not result.interrupted
    assert result.reason.startswith("timed out after 1.5 s (story_timeout_s) in step 'tts'")
    assert _gone(_pids(tmp_path))


def test_a_killed_watcher_takes_its_run_down(stand_in, tmp_path):
    """PR_SET_PDEATHSIG: Snakemake gets SIGINT when the watcher dies, even by SIGKILL."""
    program = textwrap.dedent(
        """
        import sys, threading, time
        from pathlib import Path
        from cluster_manager.config import WatcherConfig
        from cluster_manager.runner import Runner
        config = WatcherConfig(workdir=Path(sys.argv[1]), snakemake=Path(sys.argv[2]))
        threading.Thread(target=Runner(config).run, args=("council", threading.Event())).start()
        time.sleep(600)
        """
    )
    command = [sys.executable, "-c", program, str(tmp_path), str(stand_in.snakemake)]
    watcher = subprocess.Popen(command, cwd=REPO)
    try:
        snakemake_pid, job_pid = _pids(tmp_path)
        watcher.send_signal(signal.SIGKILL)
        watcher.wait()
        # The stand-in dies of its SIGINT; its job (which Snakemake itself would stop) is
        # cleaned up here.
        assert _gone([snakemake_pid])
    finally:
        if watcher.poll() is None:
            watcher.kill()
        for pid in _pids(tmp_path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_runs_left_by_an_earlier_watcher_are_stopped(stand_in, tmp_path, monkeypatch):
    monkeypatch.setenv("IGNORE_STOP", "1")  # so that it takes the SIGKILL
    command = [str(stand_in.snakemake), "stories/council/published.json"]
    command += ["--directory", str(tmp_path)]
    leftover = subprocess.Popen(command, start_new_session=True)
    # The same command, but not leading its own session: not a watcher's run (an operator's).
    monkeypatch.setenv("PIDS_FILE", str(tmp_path / "operator-pids"))
    operator = subprocess.Popen(command)
    try:
        pids = _pids(tmp_path)
        assert Runner(stand_in)._leftover_runs() == [leftover.pid]
        Runner(stand_in).stop_leftover_runs()
        leftover.wait(10)
        assert _gone(pids)
        assert operator.poll() is None
    finally:
        for process in (leftover, operator):
            process.kill()
            process.wait()
        with contextlib.suppress(OSError, IndexError):  # the operator run's job
            os.kill(int((tmp_path / "operator-pids").read_text().split()[1]), signal.SIGKILL)


# --- submitting --------------------------------------------------------------------------------


def test_submit_drops_a_valid_story_into_the_inbox(config, tmp_path):
    path = story_file(tmp_path / "newsroom", "council")
    story_id = submit_story(config, path.read_bytes(), base_dir=path.parent, label=str(path))
    assert story_id == "council"
    dropped = tmp_path / "inbox" / "council.json"
    story = json.loads(dropped.read_text())
    # The image path is made absolute: the story moves away from its photo.
    assert story["images"][0]["uri"] == str(tmp_path / "newsroom" / "photo.png")
    assert sorted(p.name for p in (tmp_path / "inbox").iterdir()) == ["council.json"]
    record = read_status(config, "council")
    assert record["state"] == "queued"
    assert record["digest"] == hashlib.sha256(dropped.read_bytes()).hexdigest()
    assert record["attempts"] == 0


def test_submit_keeps_a_story_without_relative_images_byte_for_byte(config, tmp_path):
    data = (REPO / "examples" / "stories" / "demo.json").read_bytes()
    submit_story(config, data, base_dir=tmp_path)
    assert (tmp_path / "inbox" / "demo.json").read_bytes() == data


def test_submit_refuses_an_invalid_story(config, tmp_path):
    path = story_file(tmp_path / "newsroom", "council", text="")
    with pytest.raises(StoryError, match="field 'text' is empty"):
        submit_story(config, path.read_bytes(), base_dir=path.parent, label=str(path))
    assert not (tmp_path / "inbox").exists()
    assert read_status(config, "council") is None


def test_submit_leaves_a_running_record_of_the_same_story(config, tmp_path):
    path = story_file(tmp_path / "newsroom", "council")
    submit_story(config, path.read_bytes(), base_dir=path.parent)
    queued = read_status(config, "council")
    write_status(config, {**queued, "state": "running", "step": "tts", "attempts": 1})
    submit_story(config, path.read_bytes(), base_dir=path.parent)
    assert read_status(config, "council")["state"] == "running"
    # Given up earlier: a new submission gets a fresh set of attempts.
    write_status(config, {**queued, "state": "failed", "attempts": 3, "reason": "x"})
    submit_story(config, path.read_bytes(), base_dir=path.parent)
    assert read_status(config, "council")["state"] == "queued"
    assert read_status(config, "council")["attempts"] == 0


def test_submit_again_asks_for_a_new_render_of_the_same_story(config, tmp_path):
    path = story_file(tmp_path / "newsroom", "council")
    inbox_file = tmp_path / "inbox" / "council.json"
    submit_story(config, path.read_bytes(), base_dir=path.parent)
    queued = read_status(config, "council")
    assert queued["render_again"] is False
    published = write_status(
        config, {**queued, "state": "published", "attempts": 1, "uri": "file:///v/final.mp4"}
    )
    inbox_file.unlink()  # taken and settled
    # Unchanged and not forced: the published record stays; the watcher will ack it.
    submit_story(config, path.read_bytes(), base_dir=path.parent)
    assert read_status(config, "council") == published
    inbox_file.unlink()

    submit_story(config, path.read_bytes(), base_dir=path.parent, force=True)
    again = read_status(config, "council")
    assert again["state"] == "queued" and again["render_again"] is True
    assert (again["digest"], again["attempts"], again["uri"]) == (queued["digest"], 0, None)
    assert inbox_file.exists()
    # While these very bytes render, a request to render them again would be overwritten by
    # the run's own records: it is refused, and the record stays as it is.
    running = write_status(config, {**again, "state": "running", "step": "tts", "attempts": 1})
    with pytest.raises(AlreadyRendering, match=r"'council' is being rendered now \(step tts\)"):
        submit_story(config, path.read_bytes(), base_dir=path.parent, force=True)
    assert read_status(config, "council") == running


def test_submit_and_status_commands(tmp_path):
    (tmp_path / "watcher.yaml").write_text(f"workdir: {tmp_path}\n")
    good = story_file(tmp_path / "newsroom", "council")
    bad = story_file(tmp_path / "newsroom", "Bad-Id")

    def cli(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "cluster_manager", *args]
        return subprocess.run(command, capture_output=True, text=True, cwd=REPO)

    settings = str(tmp_path / "watcher.yaml")
    submitted = cli("submit", str(good), "--config", settings)
    assert submitted.returncode == 0, submitted.stderr
    assert submitted.stdout.strip() == "queued story 'council' (inbox)"
    refused = cli("submit", str(bad), "--config", settings)
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"error: {bad}: field 'id' is 'Bad-Id'")
    missing = cli("submit", str(tmp_path / "nope.json"), "--config", settings)
    assert missing.returncode == 1 and "cannot read story file" in missing.stderr
    shown = cli("status", "council", "--config", settings)
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["state"] == "queued"
    assert json.loads(shown.stdout)["render_again"] is False
    assert cli("status", "other", "--config", settings).returncode == 1
    again = cli("submit", "--again", str(good), "--config", settings)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "queued story 'council' to render again (inbox)"
    assert json.loads(cli("status", "council", "--config", settings).stdout)["render_again"]


# --- the inbox ---------------------------------------------------------------------------------


class _Serving:
    """An InboxSource serving in a thread, handing deliveries to ``handle``."""

    def __init__(self, config: WatcherConfig, handle) -> None:
        self.source = InboxSource(config)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.source.serve, args=(handle, self.stop))
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


def _wait(condition, what: str, timeout_s: float = 15):
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return result


def _drop(inbox: Path, name: str, text: str, age_s: float = 5) -> Path:
    inbox.mkdir(parents=True, exist_ok=True)
    path = inbox / name
    path.write_text(text)
    past = time.time() - age_s  # settled: not a file still being written
    os.utime(path, (past, past))
    return path


@pytest.fixture
def inbox_config(tmp_path) -> WatcherConfig:
    return WatcherConfig.model_validate(
        {"workdir": tmp_path, "source": {"kind": "inbox", "poll_s": 0.05}}
    )


def test_inbox_settles_files_as_told(inbox_config, tmp_path):
    inbox = tmp_path / "inbox"
    _drop(inbox, "a.json", "A")
    _drop(inbox, "b.json", "B")
    _drop(inbox, ".c.json", "being written")
    _drop(inbox, "notes.txt", "not a story")
    seen = []

    def handle(delivery):
        seen.append((delivery.label, delivery.data, delivery.delivery_attempt))
        if delivery.data == b"A":
            delivery.ack()
        else:
            delivery.dead_letter("field 'text' is empty")

    serving = _Serving(inbox_config, handle)
    try:
        _wait(lambda: len(seen) == 2, "two deliveries")
    finally:
        serving.close()
    assert sorted(seen) == [("inbox/a.json", b"A", None), ("inbox/b.json", b"B", None)]
    assert (inbox / "done" / "a.json").read_text() == "A"
    assert (inbox / "failed" / "b.json").read_text() == "B"
    assert (inbox / "failed" / "b.json.reason.txt").read_text() == "field 'text' is empty\n"
    assert sorted(p.name for p in inbox.iterdir() if p.is_file()) == [".c.json", "notes.txt"]
    assert list((inbox / "processing").iterdir()) == []


def test_inbox_takes_a_nacked_story_again_after_a_backoff(inbox_config, tmp_path):
    inbox = tmp_path / "inbox"
    _drop(inbox, "a.json", "A")
    taken: list[float] = []

    def handle(delivery):
        taken.append(time.monotonic())
        if len(taken) < 3:
            delivery.nack()
        else:
            delivery.ack()

    serving = _Serving(inbox_config, handle)
    try:
        _wait(lambda: len(taken) == 3, "three deliveries")
    finally:
        serving.close()
    # poll_s 0.05 doubled per nack: at least 0.1 s, then 0.2 s between the deliveries.
    assert taken[1] - taken[0] >= 0.1
    assert taken[2] - taken[1] >= 0.2
    assert (inbox / "done" / "a.json").read_text() == "A"


def test_inbox_runs_at_most_max_parallel_stories(tmp_path):
    config = WatcherConfig.model_validate(
        {"workdir": tmp_path, "max_parallel_stories": 2, "source": {"poll_s": 0.05}}
    )
    for name in "abcde":
        _drop(tmp_path / "inbox", f"{name}.json", name)
    release = threading.Event()
    running, most = [0], [0]
    lock = threading.Lock()

    def handle(delivery):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        release.wait(10)
        with lock:
            running[0] -= 1
        delivery.ack()

    serving = _Serving(config, handle)
    try:
        _wait(lambda: most[0] == 2, "two stories at once")
        assert serving.source.waiting() == 3
        time.sleep(0.3)
        assert most[0] == 2
        release.set()
        _wait(lambda: len(list((tmp_path / "inbox" / "done").iterdir())) == 5, "all done")
    finally:
        release.set()
        serving.close()
    assert serving.source.waiting() == 0


def test_inbox_a_second_submission_while_the_first_is_handled_is_a_delivery_of_its_own(
    inbox_config, tmp_path
):
    inbox = tmp_path / "inbox"
    _drop(inbox, "a.json", "first")
    first_taken, release = threading.Event(), threading.Event()
    seen = []

    def handle(delivery):
        seen.append(delivery.data)
        if delivery.data == b"first":
            first_taken.set()
            release.wait(10)
            delivery.nack()  # goes back only if the name is free: the newer file wins
        else:
            delivery.ack()

    serving = _Serving(inbox_config, handle)
    try:
        first_taken.wait(10)
        _drop(inbox, "a.json", "second")
        _wait(lambda: b"second" in seen, "the second submission")
        _drop(inbox, "a.json", "third")
        release.set()
        _wait(lambda: b"third" in seen, "the third submission")
    finally:
        release.set()
        serving.close()
    assert seen.count(b"first") == 1  # its nack found a newer a.json and left it alone


def test_inbox_returns_stories_an_earlier_watcher_was_handling(inbox_config, tmp_path):
    processing = tmp_path / "inbox" / "processing"
    processing.mkdir(parents=True)
    (processing / "0123abcd-council.json").write_text("C")
    InboxSource(inbox_config)
    assert (tmp_path / "inbox" / "council.json").read_text() == "C"
    assert list(processing.iterdir()) == []


# --- logs and metrics --------------------------------------------------------------------------


def test_log_lines_are_json_with_the_story_of_the_thread():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(StoryFilter())
    logger = logging.getLogger("test_watcher_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("idle")
        with story_context("council"):
            logger.info("step %s", "tts")
            other = threading.Thread(target=logger.info, args=("other thread",))
            other.start()
            other.join()
        logger.info("after")
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["message"], line.get("story")) for line in lines] == [
        ("idle", None),
        ("step tts", "council"),
        ("other thread", None),
        ("after", None),
    ]
    assert lines[1]["level"] == "info" and lines[1]["logger"] == "test_watcher_logs"


def test_metrics_and_health_over_http(tmp_path):
    metrics = WatcherMetrics()
    benchmarks = tmp_path / "benchmarks"
    benchmarks.mkdir()
    for name, seconds in [("tts", 6.5), ("render-0", 1.5), ("render-1", 2.0)]:
        (benchmarks / f"{name}.tsv").write_text(f"s\th:m:s\n{seconds}\t0:00:01\n")
    assert metrics.observe_steps(tmp_path) == {"render-0": 1.5, "render-1": 2.0, "tts": 6.5}
    metrics.published.inc()
    metrics.failed.labels("invalid").inc()
    healthy = [True]
    server = MetricsServer(metrics, "127.0.0.1", 0, lambda: healthy[0])
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as answer:
            assert answer.status == 200
        healthy[0] = False
        with pytest.raises(urllib.error.HTTPError) as unhealthy:
            urllib.request.urlopen(f"{base}/healthz", timeout=5)
        assert unhealthy.value.code == 503
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    finally:
        server.close()
    assert "storyreel_stories_published_total 1.0" in text
    assert 'storyreel_stories_failed_total{reason="invalid"} 1.0' in text
    assert 'storyreel_stories_failed_total{reason="gave_up"} 0.0' in text
    assert 'storyreel_step_seconds_count{step="render"} 2.0' in text
    assert 'storyreel_step_seconds_sum{step="tts"} 6.5' in text
    for gauge in ("stories_waiting", "stories_running", "cluster_nodes"):
        assert f"# TYPE storyreel_{gauge} gauge" in text


# --- deliveries the watcher settles without a run ----------------------------------------------


class RecordedDelivery:
    """A delivery that remembers how it was settled."""

    def __init__(self, data: bytes, delivery_attempt: int | None = None) -> None:
        self.data = data
        self.label = "test delivery"
        self.delivery_attempt = delivery_attempt
        self.settled: list[tuple] = []

    def ack(self) -> None:
        self.settled.append(("ack",))

    def nack(self) -> None:
        self.settled.append(("nack",))

    def dead_letter(self, reason: str) -> None:
        self.settled.append(("dead_letter", reason))


@pytest.fixture
def idle_watcher(tmp_path) -> Watcher:
    """A watcher whose every Snakemake run would fail at once (no such program)."""
    config = WatcherConfig(workdir=tmp_path, snakemake=tmp_path / "no-snakemake", max_attempts=3)
    return Watcher(config, source=InboxSource(config))


GOOD = json.dumps(
    {"id": "council", "title": "T", "text": "Hello.", "images": [{"uri": "/photos/a.png"}]}
).encode()


def test_a_malformed_story_is_dead_lettered_with_its_reason(idle_watcher):
    garbage = RecordedDelivery(b"{not json")
    idle_watcher.handle(garbage)
    ((how, reason),) = garbage.settled
    assert how == "dead_letter"
    assert reason.startswith("story file test delivery is not valid JSON")
    missing_text = RecordedDelivery(
        json.dumps({"id": "council", "title": "T", "images": [{"uri": "a.png"}]}).encode()
    )
    idle_watcher.handle(missing_text)
    ((how, reason),) = missing_text.settled
    assert how == "dead_letter" and "missing required field 'text'" in reason
    record = read_status(idle_watcher.config, "council")
    assert (record["state"], record["reason"]) == ("failed", reason)
    invalid = idle_watcher.metrics.failed.labels("invalid")._value.get()
    assert invalid == 2


def test_a_story_published_with_the_same_digest_is_acked_without_a_run(idle_watcher):
    digest = hashlib.sha256(GOOD).hexdigest()
    write_status(idle_watcher.config, new_record("council", "published", digest, uri="x"))
    delivery = RecordedDelivery(GOOD)
    idle_watcher.handle(delivery)
    assert delivery.settled == [("ack",)]
    assert not (idle_watcher.config.workdir / "queue").exists()  # nothing was written or run


def test_a_story_out_of_attempts_is_given_up_without_a_run(idle_watcher):
    digest = hashlib.sha256(GOOD).hexdigest()
    write_status(
        idle_watcher.config,
        new_record("council", "queued", digest, attempts=3, reason="attempt 3 failed: boom"),
    )
    delivery = RecordedDelivery(GOOD)
    idle_watcher.handle(delivery)
    ((how, reason),) = delivery.settled
    assert how == "dead_letter"
    assert reason.startswith("gave up after 3 attempts; the last: attempt 3 failed: boom")
    assert read_status(idle_watcher.config, "council")["state"] == "failed"


def test_pubsub_deliveries_are_no_failure_count(idle_watcher):
    # Redelivered after shutdown nacks or a killed watcher: no run of it has failed yet.
    redelivered = RecordedDelivery(GOOD, delivery_attempt=4)
    idle_watcher.handle(redelivered)
    assert redelivered.settled == [("nack",)]  # it ran (and failed: no snakemake here)
    assert read_status(idle_watcher.config, "council")["attempts"] == 1
    # A message that keeps coming back unsettled is given up all the same.
    endless = RecordedDelivery(GOOD, delivery_attempt=3 * 3 + 1)
    idle_watcher.handle(endless)
    ((how, reason),) = endless.settled
    assert how == "dead_letter" and reason == "gave up after 10 deliveries never settled"


def test_a_run_that_cannot_start_is_a_failed_attempt(idle_watcher):
    delivery = RecordedDelivery(GOOD)
    idle_watcher.handle(delivery)
    assert delivery.settled == [("nack",)]
    record = read_status(idle_watcher.config, "council")
    assert (record["state"], record["attempts"]) == ("queued", 1)
    assert record["reason"].startswith("attempt 1 of 3 failed: cannot start snakemake")
    # The story was written where init_story reads it, with its bytes unchanged.
    assert (idle_watcher.config.workdir / "queue" / "council.json").read_bytes() == GOOD


class CountingScaler(Scaler):
    """The scaler of backend none, remembering what the watcher told it."""

    def __init__(self) -> None:
        super().__init__(ScalerSettings())
        self.observed: list[tuple[int, int]] = []

    def observe(self, waiting: int, running: int) -> None:
        self.observed.append((waiting, running))

    @property
    def nodes(self) -> int | None:
        return 3


def test_the_main_loop_reports_to_the_scaler_serves_metrics_and_stops(tmp_path):
    config = WatcherConfig.model_validate(
        {
            "workdir": tmp_path,
            "snakemake": str(tmp_path / "no-snakemake"),  # --unlock fails: logged, not fatal
            "source": {"poll_s": 0.05},
            "scaler": {"interval_s": 0.05},
            "metrics": {"port": 0},
        }
    )
    scaler = CountingScaler()
    watcher = Watcher(config, source=InboxSource(config), scaler=scaler)
    exit_status = []
    main_loop = threading.Thread(target=lambda: exit_status.append(watcher.run()))
    main_loop.start()
    try:
        _wait(lambda: len(scaler.observed) >= 2, "two reports to the scaler")
        base = f"http://127.0.0.1:{watcher.metrics_port}"
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as answer:
            assert answer.status == 200
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as answer:
            assert "storyreel_cluster_nodes 3.0" in answer.read().decode()
        _drop(tmp_path / "inbox", "empty.json", "{}")
        failed = tmp_path / "inbox" / "failed" / "empty.json.reason.txt"
        _wait(failed.exists, "the empty story to be refused")
        assert "missing required field 'id'" in failed.read_text()
    finally:
        watcher.stop.set()
        main_loop.join(30)
    assert exit_status == [0]
    assert scaler.observed[0] == (0, 0)


# --- rendering a published story again ---------------------------------------------------------

# A stand-in for a Snakemake run that starts init_story and tts, then waits to be released and
# publishes (or fails in tts). Each run appends its arguments to ARGS_FILE.
RENDER_STAND_IN = """\
#!{python}
import json, os, pathlib, sys, time
with open(os.environ["ARGS_FILE"], "a") as out:
    out.write(" ".join(sys.argv[1:]) + "\\n")
print("rule init_story:", flush=True)
print("rule tts:", flush=True)
while not pathlib.Path(os.environ["RELEASE_FILE"]).exists():
    time.sleep(0.05)
if os.environ.get("FAIL_IN_TTS"):
    print("error: story 'council': the voice is missing", flush=True)
    sys.exit(1)
target = pathlib.Path(sys.argv[1])
target.parent.mkdir(parents=True, exist_ok=True)
video = {{"name": "final.mp4", "uri": "file:///videos/council/final.mp4"}}
target.write_text(json.dumps({{"files": [video]}}))
"""


class StandInRuns:
    """A watcher whose Snakemake is RENDER_STAND_IN; ``release()`` lets the runs finish."""

    def __init__(self, tmp_path: Path, monkeypatch) -> None:
        script = tmp_path / "fake-snakemake"
        script.write_text(RENDER_STAND_IN.format(python=sys.executable))
        script.chmod(0o755)
        self.args_file = tmp_path / "runs.txt"
        self.release_file = tmp_path / "release"
        monkeypatch.setenv("ARGS_FILE", str(self.args_file))
        monkeypatch.setenv("RELEASE_FILE", str(self.release_file))
        self.config = WatcherConfig(workdir=tmp_path, snakemake=script, stop_grace_s=1)
        self.watcher = Watcher(self.config, source=InboxSource(self.config))
        self.threads: list[threading.Thread] = []

    def runs(self) -> list[str]:
        return self.args_file.read_text().splitlines() if self.args_file.exists() else []

    def handle(self, delivery: RecordedDelivery) -> None:
        thread = threading.Thread(target=self.watcher.handle, args=(delivery,))
        thread.start()
        self.threads.append(thread)

    def release(self) -> None:
        self.release_file.touch()
        for thread in self.threads:
            thread.join(30)
            assert not thread.is_alive()
        self.release_file.unlink()
        self.threads.clear()


@pytest.fixture
def stand_in_runs(tmp_path, monkeypatch) -> StandInRuns:
    return StandInRuns(tmp_path, monkeypatch)


def _published_before(config: WatcherConfig) -> dict:
    digest = hashlib.sha256(GOOD).hexdigest()
    return write_status(config, new_record("council", "published", digest, uri="x", attempts=1))


def test_a_story_asked_to_render_again_runs_once_forced_while_a_duplicate_waits(
    stand_in_runs, caplog
):
    caplog.set_level(logging.INFO, logger="cluster_manager")
    config = stand_in_runs.config
    _published_before(config)
    submit_story(config, GOOD, force=True)
    first, duplicate = RecordedDelivery(GOOD), RecordedDelivery(GOOD)
    stand_in_runs.handle(first)
    _wait(lambda: stand_in_runs.runs(), "the forced run to start")
    _wait(lambda: read_status(config, "council")["step"] == "tts", "the run's step in the record")
    running = read_status(config, "council")
    assert (running["state"], running["render_again"], running["attempts"]) == (
        "running",
        True,
        1,
    )
    stand_in_runs.handle(duplicate)
    _wait(lambda: any("waits for that run" in m for m in caplog.messages), "the duplicate to wait")
    stand_in_runs.release()

    (run,) = stand_in_runs.runs()  # the duplicate started no second run
    assert run.startswith("stories/council/published.json ")
    assert " --forcerun init_story --config " in run
    assert first.settled == duplicate.settled == [("ack",)]
    record = read_status(config, "council")
    assert (record["state"], record["render_again"], record["attempts"]) == ("published", False, 1)
    assert record["uri"] == "file:///videos/council/final.mp4"
    # Delivered once more: published, nothing asked for, so acked without a run.
    late = RecordedDelivery(GOOD)
    stand_in_runs.watcher.handle(late)
    assert late.settled == [("ack",)] and len(stand_in_runs.runs()) == 1


def test_a_forced_run_that_fails_after_its_first_step_is_retried_unforced(
    stand_in_runs, monkeypatch
):
    """init_story ran again: the later steps are older than its output now, so the retry
    finishes the new render by itself and resumes from the steps that did finish."""
    monkeypatch.setenv("FAIL_IN_TTS", "1")
    config = stand_in_runs.config
    _published_before(config)
    submit_story(config, GOOD, force=True)
    failing = RecordedDelivery(GOOD)
    stand_in_runs.handle(failing)
    stand_in_runs.release()
    assert failing.settled == [("nack",)]
    record = read_status(config, "council")
    assert (record["state"], record["attempts"], record["render_again"]) == ("queued", 1, False)
    assert record["reason"].startswith("attempt 1 of 3 failed: snakemake exited with status 1")

    monkeypatch.delenv("FAIL_IN_TTS")
    retry = RecordedDelivery(GOOD)
    stand_in_runs.handle(retry)
    stand_in_runs.release()
    assert retry.settled == [("ack",)]
    forced, unforced = stand_in_runs.runs()
    assert "--forcerun init_story" in forced and "--forcerun" not in unforced
    record = read_status(config, "council")
    assert (record["state"], record["attempts"]) == ("published", 2)


def test_a_request_to_render_again_stands_until_the_first_step_has_run(idle_watcher):
    """Snakemake cannot start at all: the story is not taken as published, and the request to
    render it again is kept for the next attempt."""
    config = idle_watcher.config
    _published_before(config)
    submit_story(config, GOOD, force=True)
    for attempt in (1, 2):
        delivery = RecordedDelivery(GOOD)
        idle_watcher.handle(delivery)
        assert delivery.settled == [("nack",)]
        record = read_status(config, "council")
        assert (record["state"], record["attempts"]) == ("queued", attempt)
        assert record["render_again"] is True
        assert record["reason"].startswith(f"attempt {attempt} of 3 failed: cannot start")


def test_a_request_that_came_while_a_duplicate_was_settled_is_not_lost(stand_in_runs, caplog):
    """A delivery that read the record just before a request to render again was written is
    acked as published; a forced delivery waiting for it then takes its own turn."""
    caplog.set_level(logging.INFO, logger="cluster_manager")
    config = stand_in_runs.config
    watcher = stand_in_runs.watcher
    _published_before(config)
    settling = watcher._stories["council"] = _StoryRun(hashlib.sha256(GOOD).hexdigest())
    forced = RecordedDelivery(GOOD)
    stand_in_runs.handle(forced)
    _wait(lambda: any("waits for that run" in m for m in caplog.messages), "the wait")
    submit_story(config, GOOD, force=True)
    # What the settling delivery does when it has acked a published story.
    settling.published = True
    del watcher._stories["council"]
    settling.done.set()
    _wait(lambda: stand_in_runs.runs(), "the forced run")
    stand_in_runs.release()
    (run,) = stand_in_runs.runs()
    assert "--forcerun init_story" in run and forced.settled == [("ack",)]
    assert read_status(config, "council")["render_again"] is False
