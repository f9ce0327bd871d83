"""The GKE profile end to end: the real Snakemake with the storyreel executor renders and
publishes stories through the Kubernetes test server and the GCS emulator.

`snakemake --profile profiles/gke` runs here as documented, from a copy of the workflow. The
test server runs each pod's command (upstream's `/bin/sh -c "python -m snakemake ..."`) as a
local process with this environment's Python, so every job image "contains" what the venv
holds; what the test checks is what the cluster was asked to do: which image, which node,
which resources, which objects reached GCS.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import REPO, SNAKEMAKE, write_image
from k8s_test_server import DEFAULT_NODES, ImageConfig, K8sTestServer, SimulatedNode, start_server

from storyreel.storage import storage_client

NAMESPACE = "storyreel"
REGISTRY = "registry.test/storyreel"
TAG = "e2e"
FAMILIES = ("intake", "speech", "timing", "face", "video")
# The image each rule's pod must run: its conda: environment's family, except render, which
# runs in the video group's image.
RULE_FAMILY = {
    "init_story": "intake",
    "transcript": "intake",
    "tts": "speech",
    "align": "timing",
    "phonemes": "timing",
    "landmarks": "face",
    "animate": "face",
    "video": "video",  # the group job: render (both shards), compose, preview
    "publish": "intake",
}
# What the workflow needs to run; everything else of the repository stays out of the copy.
WORKFLOW_FILES = ("Snakefile", "config.yaml", "rules", "scripts", "envs", "schemas", "profiles")
LOCAL_SSD = {"cloud.google.com/gke-ephemeral-storage-local-ssd": "true"}
# Two CPU nodes (so two stories' pods run side by side) and the tainted GPU node.
NODES = (
    SimulatedNode("cpu-node-1", labels={**DEFAULT_NODES[0].labels, **LOCAL_SSD}, cpu="4"),
    SimulatedNode("cpu-node-2", labels={**DEFAULT_NODES[0].labels, **LOCAL_SSD}, cpu="4"),
    DEFAULT_NODES[1],
)
STORIES = ("harbour", "library")
PENDING_TIMEOUT_S = 4


def image(family: str, tag: str = TAG) -> str:
    return f"{REGISTRY}/storyreel-{family}:{tag}"


@dataclass
class Cluster:
    server: K8sTestServer
    work: Path  # the copy of the workflow snakemake runs in
    env: dict[str, str]
    buckets: dict[str, str]  # role -> bucket name

    def snakemake(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        command = [str(SNAKEMAKE), "--profile", "profiles/gke", *args]
        return subprocess.run(
            command, cwd=self.work, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def objects(self, role: str) -> dict[str, int]:
        """Object name -> size of one bucket."""
        bucket = storage_client().bucket(self.buckets[role])
        return {blob.name: blob.size for blob in bucket.list_blobs()}


@pytest.fixture(scope="module")
def cluster(gcs_emulator, tmp_path_factory) -> Cluster:
    root = tmp_path_factory.mktemp("gke")
    work = root / "workflow"
    for name in WORKFLOW_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, work / name)
        else:
            work.mkdir(exist_ok=True)
            shutil.copy2(source, work / name)

    # Snakemake deploys the git-managed files of the working directory to the pods (besides
    # Snakefiles, scripts, environments and config files): the copy is a git checkout as well.
    subprocess.run(["git", "init", "--quiet", str(work)], check=True)
    subprocess.run(["git", "-C", str(work), "add", "."], check=True)

    old_emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = gcs_emulator  # for storage_client() in this process
    suffix = uuid.uuid4().hex[:8]
    buckets = {role: f"{role}-{suffix}" for role in ("inbox", "work", "videos")}
    client = storage_client()
    for name in buckets.values():
        client.create_bucket(name)
    photo = write_image(root / "photo.png", size=(320, 200))
    inbox = client.bucket(buckets["inbox"])
    photo_blob = inbox.blob("stories/photos/photo.png")
    photo_blob.upload_from_filename(str(photo), content_type="image/png")
    for story_id in STORIES:
        story = {
            "id": story_id,
            "title": f"News from the {story_id}",
            # Shell metacharacters on purpose: story text must never reach a command line.
            "text": "The $HOME of `ships` opened today.\n\nIt cost 3 million; 'quite' a lot.",
            "images": [{"uri": "photos/photo.png", "caption": "The site"}],
        }
        inbox.blob(f"stories/{story_id}.json").upload_from_string(
            json.dumps(story), content_type="application/json"
        )

    overlay = {
        "story_source": f"gs://{buckets['inbox']}/stories/{{story}}.json",
        "storage": {
            "allowed_image_prefixes": [f"gs://{buckets['inbox']}/stories/photos/"],
            "publish_prefix": f"gs://{buckets['videos']}/videos/{{story}}/",
        },
        "containers": {"registry": REGISTRY, "tag": TAG, "video_disk_mb": 2000},
        "formats": {"tiny": {"width": 320, "height": 180, "fps": 15, "layout": "landscape"}},
        "video": {"format": "tiny", "intro_seconds": 0.5, "outro_seconds": 0.5},
    }
    (work / "tiny.yaml").write_text(yaml.safe_dump(overlay), encoding="utf-8")

    images = {image(family): ImageConfig(working_dir="/workdir") for family in FAMILIES}
    with start_server(NODES, root=root / "k8s", images=images) as server:
        kubeconfig = server.write_kubeconfig(root / "kubeconfig", namespace=NAMESPACE)
        env = {
            **os.environ,
            "HOME": str(root / "home"),  # no ~/.config/snakemake profiles of the user
            "KUBECONFIG": str(kubeconfig),
            "STORAGE_EMULATOR_HOST": gcs_emulator,
            "STORYREEL_GCS_PREFIX": f"gs://{buckets['work']}/runs",
            "STORYREEL_GCP_PROJECT": "test-project",
            "STORYREEL_NAMESPACE": NAMESPACE,
            "PYTHONUNBUFFERED": "1",
        }
        yield Cluster(server, work, env, buckets)
    if old_emulator is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = old_emulator


@pytest.fixture(scope="module")
def published(cluster) -> subprocess.CompletedProcess:
    """Two stories rendered and published in one run."""
    result = cluster.snakemake(
        *(f"stories/{story}/published.json" for story in STORIES),
        "--configfile",
        "tiny.yaml",
        # The pods reach the emulator too (through the run's Secret, as Snakemake passes it).
        "--envvars",
        "STORAGE_EMULATOR_HOST",
    )
    if result.returncode != 0:
        logs = "\n".join(
            f"--- {record.name} ({record.labels.get('storyreel/rule')}):\n{record.log()[-3000:]}"
            for record in cluster.server.pod_records
            if record.exit_codes and any(record.exit_codes.values())
        )
        pytest.fail(f"snakemake failed:\n{result.stderr[-8000:]}\n{logs}")
    return result


def story_pods(cluster, story):
    return [
        record
        for record in cluster.server.pod_records
        if record.labels.get("storyreel/story") == story
    ]


def test_each_story_is_published_to_gcs(cluster, published):
    videos = cluster.objects("videos")
    for story in STORIES:
        for name in ("final.mp4", "captions.vtt", "preview.png"):
            assert videos.get(f"videos/{story}/{name}", 0) > 0, sorted(videos)


def test_each_rule_ran_in_its_own_image(cluster, published):
    for story in STORIES:
        pods = story_pods(cluster, story)
        ran = {pod.labels["storyreel/rule"]: pod.images["snakemake"] for pod in pods}
        assert ran == {rule: image(family) for rule, family in RULE_FAMILY.items()}
        assert all(pod.exit_codes == {"snakemake": 0} for pod in pods)


def test_render_compose_and_preview_share_one_pod(cluster, published):
    for story in STORIES:
        (video_pod,) = [
            pod for pod in story_pods(cluster, story) if pod.labels["storyreel/rule"] == "video"
        ]
        log = video_pod.log()
        for rule in ("render", "compose", "preview"):
            assert f"rule {rule}:" in log or f"localrule {rule}:" in log, log[-3000:]
        assert log.count("rule render:") == 2  # both shards
        # The frames lived on the pod's node-local disk, and its request says so.
        assert video_pod.node_selector.get(next(iter(LOCAL_SSD))) == "true"
        requests = video_pod.resources["snakemake"]["requests"]
        assert requests["ephemeral-storage"] == "2000M"


def test_no_frame_reaches_gcs(cluster, published):
    work_objects = cluster.objects("work")
    assert not [
        name
        for name in work_objects
        if "/frames/" in name or name.endswith(".png") and "frame-" in name
    ]
    # What did go through: the sources, and each story's small files, the video and preview.
    for story in STORIES:
        assert any(name.endswith(f"stories/{story}/final.mp4") for name in work_objects)


def test_a_story_moves_little_data_through_gcs(cluster, published):
    """Between jobs only the story's small files, the speech, the animation and the finished
    video travel through GCS: a few hundred kB for this story, where the frames alone would be
    several MB even at 320x180."""
    work_objects = cluster.objects("work")
    for story in STORIES:
        story_bytes = {
            name: size for name, size in work_objects.items() if f"/stories/{story}/" in name
        }
        print(story, sum(story_bytes.values()), json.dumps(story_bytes, indent=1))  # pytest -rP
        assert 0 < sum(story_bytes.values()) < 3_000_000, story_bytes


def test_no_pod_asks_for_a_gpu(cluster, published):
    for pod in cluster.server.pod_records:
        assert "nvidia.com/gpu" not in json.dumps(pod.resources)
        assert pod.node != "gpu-node"
        assert not pod.tolerations or all(t.get("key") != "nvidia.com/gpu" for t in pod.tolerations)


def test_stories_ran_side_by_side(cluster, published):
    pods = [p for story in STORIES for p in story_pods(cluster, story)]
    assert {pod.node for pod in pods} == {"cpu-node-1", "cpu-node-2"}
    # The two stories' first steps were submitted together, not one story after the other.
    first = {
        story: min(p.pod["metadata"]["creationTimestamp"] for p in story_pods(cluster, story))
        for story in STORIES
    }
    last_init = max(
        p.pod["metadata"]["creationTimestamp"]
        for p in cluster.server.pod_records
        if p.labels.get("storyreel/rule") == "init_story"
    )
    assert last_init < min(
        p.pod["metadata"]["creationTimestamp"]
        for story in STORIES
        for p in story_pods(cluster, story)
        if p.labels["storyreel/rule"] == "publish"
    ), first


def test_nothing_is_left_in_the_cluster(cluster, published):
    assert cluster.server.list_objects("jobs", NAMESPACE) == []
    assert cluster.server.list_objects("secrets", NAMESPACE) == []
    assert [p["metadata"]["name"] for p in cluster.server.list_objects("pods", NAMESPACE)] == []


def test_a_job_that_cannot_be_scheduled_fails_with_the_reason(cluster, published):
    started = time.monotonic()
    result = cluster.snakemake(
        "stories/harbour/transcript.json",
        "--configfile",
        "tiny.yaml",
        "--envvars",
        "STORAGE_EMULATOR_HOST",
        "--forcerun",
        "transcript",
        # More memory than any node has.
        "--set-resources",
        "transcript:mem_mb=1000000",
        "--storyreel-pending-timeout",
        str(PENDING_TIMEOUT_S),
        "--retries",
        "0",
        timeout=120,
    )
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert "Unschedulable" in result.stderr and "Insufficient memory" in result.stderr, (
        result.stderr[-4000:]
    )
    assert elapsed < 60
    assert cluster.server.list_objects("jobs", NAMESPACE) == []
    assert cluster.server.list_objects("secrets", NAMESPACE) == []
    assert cluster.server.list_objects("pods", NAMESPACE) == []
