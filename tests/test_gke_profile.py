"""profiles/gke read the way a newsroom engineer first meets it: on a machine with no cluster,
no bucket and no Google credentials, `snakemake --profile profiles/gke -n` shows the plan, the
short form `--profile gke` works after `make gke-profile`, and a real run without a bucket
stops with a message that says what to set."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
import yaml
from conftest import REPO, SNAKEMAKE

# Each rule and the image family its pod runs (rules/*.smk).
RULE_FAMILY = {
    "init_story": "intake",
    "transcript": "intake",
    "tts": "speech",
    "align": "timing",
    "phonemes": "timing",
    "landmarks": "face",
    "animate": "face",
    "render": "video",
    "compose": "video",
    "preview": "video",
    "publish": "intake",
}


@pytest.fixture(scope="module")
def bare_env(tmp_path_factory) -> dict[str, str]:
    """The environment of a machine that never saw Google Cloud or Kubernetes."""
    home = tmp_path_factory.mktemp("home")
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("STORYREEL_", "GOOGLE_", "CLOUDSDK_", "KUBE"))
        and name not in ("STORAGE_EMULATOR_HOST", "XDG_CONFIG_HOME")
    }
    env.update(
        HOME=str(home),  # no ~/.config/gcloud credentials, no ~/.kube, no user profiles
        KUBECONFIG=str(home / "no-kubeconfig"),
        GCE_METADATA_HOST="127.0.0.1:9",  # nothing answers: not a GCE machine
        NO_GCE_CHECK="true",
    )
    return env


def snakemake(env, *args, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(SNAKEMAKE), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    if check and result.returncode != 0:
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{result.stderr[-4000:]}")
    return result


def listed_jobs(output: str) -> dict[str, str]:
    """rule -> the resources line of its job in a dry run's listing."""
    jobs = {}
    for block in re.split(r"\n\s*\[[^\]]+\]\n", output):
        rule = re.search(r"^\s*(?:local)?rule (\w+):", block, re.MULTILINE)
        resources = re.search(r"^\s*resources: (.*)$", block, re.MULTILINE)
        if rule and resources:
            jobs[rule.group(1)] = resources.group(1)
    return jobs


def image_of(family: str) -> str:
    containers = yaml.safe_load((REPO / "profiles/gke/workflow-config.yaml").read_text())
    registry, tag = containers["containers"]["registry"], containers["containers"]["tag"]
    return f"{registry}/storyreel-{family}:{tag}"


@pytest.fixture(scope="module")
def dry_run(bare_env) -> str:
    result = snakemake(bare_env, "--profile", "profiles/gke", "-n", "stories/123/published.json")
    return result.stdout + result.stderr


def test_a_dry_run_needs_no_cluster_and_no_credentials(dry_run):
    assert "This was a dry-run" in dry_run
    assert "DefaultCredentialsError" not in dry_run


def test_a_dry_run_lists_every_job_with_its_image_and_requests(dry_run):
    jobs = listed_jobs(dry_run)
    assert set(jobs) == set(RULE_FAMILY), sorted(jobs)
    for rule, resources in jobs.items():
        assert f"container_image={image_of(RULE_FAMILY[rule])}" in resources, (rule, resources)
        assert "mem_mb=2000" in resources, (rule, resources)
        # Snakemake's own default would ask 50 GB of disk of a job without inputs.
        assert "disk_mb=50000" not in resources, (rule, resources)


def test_a_dry_run_shows_the_video_group_and_its_node_local_frames(dry_run):
    assert "Group job video" in dry_run
    assert "stories/123/frames/shard-0 (nodelocal)" in dry_run


def test_the_stories_come_from_and_go_to_gcs(bare_env):
    result = snakemake(
        bare_env, "stories/123/published.json", "--profile", "profiles/gke", "--rulegraph"
    )
    assert result.stdout.lstrip().startswith("digraph")
    assert "publish" in result.stdout and "init_story" in result.stdout
    config = yaml.safe_load((REPO / "profiles/gke/workflow-config.yaml").read_text())
    assert config["story_source"].startswith("gs://")
    assert config["storage"]["publish_prefix"].startswith("gs://")


def test_a_real_run_without_a_bucket_says_what_to_set(bare_env):
    result = snakemake(
        bare_env, "--profile", "profiles/gke", "stories/123/published.json", check=False
    )
    assert result.returncode != 0
    assert "STORYREEL_GCS_PREFIX" in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


def test_the_short_form_works_after_make_gke_profile(bare_env):
    subprocess.run(
        ["make", "--no-print-directory", "gke-profile"],
        cwd=REPO,
        env=bare_env,
        check=True,
        capture_output=True,
    )
    linked = os.path.join(bare_env["HOME"], ".config", "snakemake", "gke")
    assert os.path.realpath(linked) == str(REPO / "profiles" / "gke")
    result = snakemake(bare_env, "--profile", "gke", "-n", "stories/123/final.mp4")
    assert f"container_image={image_of('video')}" in result.stdout
