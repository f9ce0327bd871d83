"""The real daemon (`python -m cluster_manager watch`) in local inbox mode, with real renders.

Two tests, about four renders in all: stories submitted side by side (plus malformed ones,
a duplicate, a resubmission, and one story rendered again on request), and a story interrupted
twice (the watcher killed, then stopped) that resumes from its finished steps.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import pytest
from conftest import REPO
from watcher_support import (
    WatcherProcess,
    finished_steps,
    snakemake_processes,
    story_file,
    wait_until_gone,
    watcher_runs,
    watcher_settings,
    write_settings,
)

from cluster_manager.config import load_config
from cluster_manager.runner import Runner, parse_steps


@pytest.fixture
def workdir(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    yield work
    # Whatever happened in the test: no Snakemake run of it may outlive it.
    left = wait_until_gone(work, timeout_s=30)
    for process in left:
        process.kill()
    assert not left, f"processes left over: {[p.cmdline() for p in left]}"


def submit(path, config_path, *options: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cluster_manager",
            "submit",
            *options,
            str(path),
            "--config",
            str(config_path),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr


def planned_jobs(config_path, story_id: str, force: bool) -> list[tuple[str, str]]:
    """(step, story) of each job the watcher's Snakemake command would run now (a dry run)."""
    config = load_config(config_path)
    command = Runner(config).command(story_id, force=force)
    command.insert(2, "--dry-run")  # after the target; --config stays last
    plan = subprocess.run(command, cwd=config.workdir, capture_output=True, text=True)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    stories = re.findall(r"^\s+wildcards: story=([\w-]+)", plan.stdout, re.MULTILINE)
    # The jobs of a group (render, compose, preview) are listed indented under it.
    steps = re.findall(r"^\s*(?:local)?rule (\w+):\s*$", plan.stdout, re.MULTILINE)
    assert len(steps) == len(stories), plan.stdout
    return sorted(zip(steps, stories, strict=True))


def mtimes(folder) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in the metrics"
    return float(match[1])


def test_stories_render_side_by_side_and_bad_ones_are_refused(tmp_path, workdir):
    config_path = write_settings(
        tmp_path / "watcher.yaml",
        watcher_settings(workdir, max_parallel_stories=4, max_attempts=2),
    )
    newsroom = tmp_path / "newsroom"
    bravo_log = workdir / "stories" / "bravo" / "logs" / "watcher-snakemake.log"
    bravo_benchmarks = workdir / "stories" / "bravo" / "benchmarks"
    alpha_benchmarks = workdir / "stories" / "alpha" / "benchmarks"
    alpha = story_file(newsroom, "alpha")
    bravo = story_file(newsroom, "bravo", text="Rain is expected on Friday.")
    torn = story_file(newsroom / "torn", "torn")
    photo = (newsroom / "torn" / "photo.png").read_bytes()
    (newsroom / "torn" / "photo.png").write_bytes(photo[: len(photo) // 2])

    watcher = WatcherProcess(config_path, tmp_path / "watcher.log")
    try:
        submit(alpha, config_path)
        submit(bravo, config_path)
        submit(torn, config_path)  # valid, but its image is cut short: init_story fails
        inbox = workdir / "inbox"
        (inbox / "garbage.json").write_text("{not json")
        nameless = {"id": "nameless", "title": "No text", "images": [{"uri": "a.png"}]}
        (inbox / "nameless.json").write_text(json.dumps(nameless))

        # A duplicate of alpha while alpha renders: it waits for that run, no second run.
        watcher.wait_for(
            lambda: (watcher.status("alpha") or {}).get("step"), "alpha to start a step"
        )
        submit(alpha, config_path)
        watcher.wait_for(
            lambda: any(
                line.get("story") == "alpha" and "waits for that run" in line["message"]
                for line in watcher.log_lines()
            ),
            "the duplicate of alpha to wait",
        )
        alpha_done = watcher.wait_for_state("alpha", "published", timeout_s=600)
        bravo_done = watcher.wait_for_state("bravo", "published", timeout_s=600)
        watcher.wait_for(
            lambda: any(
                "published by the run it waited for" in line["message"]
                for line in watcher.log_lines()
            ),
            "the duplicate of alpha to be acked",
        )
        torn_failed = watcher.wait_for_state("torn", "failed", timeout_s=300)

        # bravo again, unchanged: already published, acked without a run.
        submit(bravo, config_path)
        watcher.wait_for(
            lambda: any(
                line.get("story") == "bravo" and "already published" in line["message"]
                for line in watcher.log_lines()
            ),
            "the resubmitted bravo to be acked",
        )
        watcher.wait_for(lambda: not list(inbox.glob("*.json")), "an empty inbox")
        watcher.wait_for(
            lambda: metric(watcher.metrics(), "storyreel_stories_running") == 0,
            "no story running",
        )
        assert watcher.status("bravo")["updated"] == bravo_done["updated"]

        # bravo rendered again on request. Snakemake alone would run nothing; forced, it runs
        # every step of bravo (all that its first run ran) and nothing of another story.
        first_run = parse_steps(bravo_log.read_text(encoding="utf-8"))
        assert planned_jobs(config_path, "bravo", force=False) == []
        assert planned_jobs(config_path, "bravo", force=True) == sorted(
            (step, "bravo") for step in first_run
        )
        bravo_files, alpha_files = mtimes(bravo_benchmarks), mtimes(alpha_benchmarks)
        bravo_video = (workdir / "published" / "bravo" / "final.mp4").stat().st_mtime_ns
        submit(bravo, config_path, "--again")
        # The watcher takes an inbox file only once it is SETTLE_S old: still queued here.
        asked = watcher.status("bravo")
        assert (asked["state"], asked["render_again"]) == ("queued", True)
        rendering = watcher.wait_for_state("bravo", "running")
        assert rendering["render_again"] is True
        bravo_again = watcher.wait_for_state("bravo", "published", timeout_s=600)
        watcher.wait_for(
            lambda: metric(watcher.metrics(), "storyreel_stories_running") == 0,
            "no story running",
        )
        metrics = watcher.metrics()
        assert watcher.stop() == 0
    finally:
        watcher.close()

    for story_id, record in (("alpha", alpha_done), ("bravo", bravo_done), ("bravo", bravo_again)):
        video = workdir / "published" / story_id / "final.mp4"
        assert video.stat().st_size > 10_000
        assert record["uri"] == video.resolve().as_uri()
        assert record["attempts"] == 1 and record["reason"] is None
        assert record["render_again"] is False
        assert {"init_story", "tts", "compose", "publish"} <= set(record["steps"])
        assert all(seconds >= 0 for seconds in record["steps"].values())
        assert (workdir / "inbox" / "done" / f"{story_id}.json").exists()
    # The duplicate and the unchanged resubmission ran nothing; the request to render again ran
    # bravo once more, from its first step, and touched nothing of alpha.
    assert watcher_runs(workdir / "stories" / "alpha" / "logs" / "watcher-snakemake.log") == 1
    assert watcher_runs(bravo_log) == 2
    assert bravo_again["updated"] > bravo_done["updated"]
    assert bravo_again["digest"] == bravo_done["digest"]
    second_run = bravo_log.read_text(encoding="utf-8").split("==== watcher: ")[2]
    assert " --forcerun init_story --config " in second_run.splitlines()[0]
    assert sorted(parse_steps(second_run)) == sorted(first_run)
    rewritten = mtimes(bravo_benchmarks)
    assert rewritten.keys() == bravo_files.keys()
    assert all(rewritten[name] > bravo_files[name] for name in bravo_files), bravo_files
    assert mtimes(alpha_benchmarks) == alpha_files
    assert (workdir / "published" / "bravo" / "final.mp4").stat().st_mtime_ns > bravo_video

    failed = workdir / "inbox" / "failed"
    assert "not valid JSON" in (failed / "garbage.json.reason.txt").read_text()
    nameless_reason = (failed / "nameless.json.reason.txt").read_text().strip()
    assert "missing required field 'text'" in nameless_reason
    nameless_record = watcher.status("nameless")
    assert (nameless_record["state"], nameless_record["reason"]) == ("failed", nameless_reason)
    # torn failed twice (max_attempts 2), the reason naming its image, then was given up.
    torn_reason = (failed / "torn.json.reason.txt").read_text().strip()
    assert torn_reason == torn_failed["reason"]
    assert torn_reason.startswith("gave up after 2 attempts; the last: snakemake exited with")
    assert "in step 'init_story'" in torn_reason and "truncated or corrupt" in torn_reason
    assert torn_failed["attempts"] == 2
    assert watcher_runs(workdir / "stories" / "torn" / "logs" / "watcher-snakemake.log") == 2

    assert metric(metrics, "storyreel_stories_published_total") == 3
    assert metric(metrics, 'storyreel_stories_failed_total{reason="invalid"}') == 2
    assert metric(metrics, 'storyreel_stories_failed_total{reason="failed"}') == 1
    assert metric(metrics, 'storyreel_stories_failed_total{reason="gave_up"}') == 1
    assert metric(metrics, 'storyreel_step_seconds_count{step="tts"}') == 3
    assert metric(metrics, 'storyreel_step_seconds_count{step="render"}') == 6  # 2 shards each

    # Every line about a story names it.
    lines = watcher.log_lines()
    assert all("time" in line and "level" in line for line in lines)
    assert any(
        line.get("story") == "torn" and "attempt 1 failed" in line["message"] for line in lines
    )
    assert not snakemake_processes(workdir)


def test_an_interrupted_story_resumes_from_its_finished_steps(tmp_path, workdir):
    config_path = write_settings(
        tmp_path / "watcher.yaml",
        watcher_settings(workdir, max_parallel_stories=1, drain_timeout_s=1, stop_grace_s=20),
    )
    story = story_file(tmp_path / "newsroom", "harbour")
    log = workdir / "stories" / "harbour" / "logs" / "watcher-snakemake.log"

    # 1. The watcher is killed outright mid-story: its Snakemake run goes down with it.
    watcher = WatcherProcess(config_path, tmp_path / "watcher-1.log")
    try:
        submit(story, config_path)
        watcher.wait_for(lambda: "init_story" in finished_steps(log), "init_story to finish")
        assert watcher.status("harbour")["state"] == "running"
        watcher.stop(signal.SIGKILL)
    finally:
        watcher.close()
    assert not wait_until_gone(workdir), "Snakemake outlived the killed watcher"
    assert not list((workdir / "inbox").glob("*.json"))  # still taken, in processing/

    # 2. Restarted, it takes the story back and resumes; SIGTERM with a 1 s drain stops it.
    watcher = WatcherProcess(config_path, tmp_path / "watcher-2.log")
    try:
        watcher.wait_for(lambda: watcher_runs(log) == 2, "the second run")
        watcher.wait_for(
            lambda: (watcher.status("harbour") or {}).get("step"), "the second run's first step"
        )
        assert watcher.stop(signal.SIGTERM) == 0
    finally:
        watcher.close()
    assert not wait_until_gone(workdir), "Snakemake outlived the drain"
    assert (workdir / "inbox" / "harbour.json").exists()  # nacked: back in the inbox
    queued = watcher.status("harbour")
    assert queued["state"] == "queued"
    assert queued["reason"].startswith("interrupted by the watcher's shutdown")
    assert queued["attempts"] == 1  # the killed run counts, the drained one does not
    # Render shards are left out: one finished shard does not make the render rule done.
    finished = finished_steps(log) - {"render"}
    assert "init_story" in finished
    messages = [line["message"] for line in watcher.log_lines()]
    assert any(message.startswith("drain timeout: stopping 1 running") for message in messages)

    # 3. Restarted again, it finishes the story without redoing the finished steps.
    watcher = WatcherProcess(config_path, tmp_path / "watcher-3.log")
    try:
        published = watcher.wait_for_state("harbour", "published", timeout_s=600)
        assert watcher.stop(signal.SIGTERM) == 0
    finally:
        watcher.close()
    assert published["attempts"] == 2
    assert (workdir / "published" / "harbour" / "final.mp4").stat().st_size > 10_000
    third_run = log.read_text().split("==== watcher: ")[3]
    rerun = {step for step in finished if re.search(rf"^(local)?rule {step}:", third_run, re.M)}
    assert not rerun, f"finished steps ran again: {rerun}"
    assert (workdir / "inbox" / "done" / "harbour.json").exists()
