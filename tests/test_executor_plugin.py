"""The storyreel executor plugin (plugins/snakemake-executor-plugin-storyreel), without a cluster.

Job bodies come from the upstream executor's own run_job, run against a fake API client that
records what it is sent; pod states are plain client objects.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import threading
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import kubernetes
import kubernetes_validate
import pytest
import snakemake_executor_plugin_kubernetes as upstream
import snakemake_executor_plugin_storyreel as plugin
from kubernetes.client import (
    ApiClient,
    CoreV1Event,
    CoreV1EventList,
    V1ContainerState,
    V1ContainerStateRunning,
    V1ContainerStateTerminated,
    V1ContainerStateWaiting,
    V1ContainerStatus,
    V1Job,
    V1JobStatus,
    V1ObjectMeta,
    V1ObjectReference,
    V1Pod,
    V1PodCondition,
    V1PodList,
    V1PodStatus,
)
from kubernetes.client.rest import ApiException
from snakemake_executor_plugin_storyreel.pending import stuck_reason
from snakemake_executor_plugin_storyreel.pod import JobSpec, customise_job, job_image, label_value
from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo
from snakemake_interface_executor_plugins.registry import ExecutorPluginRegistry
from snakemake_interface_executor_plugins.settings import SharedFSUsage
from throttler import Throttler

KUBERNETES_VERSION = "1.33.0"
DEFAULT_IMAGE = "snakemake/snakemake:v9.27.1"
SPEECH_IMAGE = "registry.example/newsroom/storyreel-speech:1a2b3c4"
FACE_IMAGE = "registry.example/newsroom/storyreel-face:1a2b3c4"
VIDEO_IMAGE = "registry.example/newsroom/storyreel-video:1a2b3c4"
RUN_ID = "0b6c2b5e-4f0e-4b7a-9d1e-2f3c4d5e6f70"
GPU_RESOURCES = ("nvidia.com/gpu", "amd.com/gpu")


# ---------------------------------------------------------------------------------------------
# Fakes: Snakemake jobs, the Kubernetes API, and an executor built without a cluster.


def rule_job(rule, *, image=None, story="demo", jobid=7, **resources):
    """A single Snakemake job with what the executors read of it."""
    return SimpleNamespace(
        rule=SimpleNamespace(name=rule),
        container_img_url=image,
        wildcards=SimpleNamespace(story=story) if story else SimpleNamespace(),
        resources={"_cores": 2, "_nodes": 1, "mem_mb": 2000, **resources},
        jobid=jobid,
        attempt=1,
        is_containerized=False,
        is_group=lambda: False,
        register=lambda external_jobid=None: None,
    )


def group_job(groupid, members, **resources):
    return SimpleNamespace(
        groupid=groupid,
        jobs=members,
        resources={"_cores": 4, "_nodes": 1, "mem_mb": 8000, **resources},
        jobid="5d9c1c0e-8f5e-5b8e-9a3e-6c1f4b2a7d10",
        attempt=1,
        is_containerized=False,
        is_group=lambda: True,
        register=lambda external_jobid=None: None,
    )


def video_group(story="demo", **resources):
    """storyreel's per-story group job: render shards, compose and preview in one pod."""
    members = [
        rule_job("render", image=VIDEO_IMAGE, story=story, jobid=1),
        rule_job("render", image=VIDEO_IMAGE, story=story, jobid=2),
        rule_job("compose", image=VIDEO_IMAGE, story=story, jobid=3),
        rule_job("preview", image=VIDEO_IMAGE, story=story, jobid=4),
    ]
    return group_job("video", members, disk_mb=40000, **resources)


class FakeBatchApi:
    """BatchV1Api: records created and deleted Jobs; every Job reads as still running."""

    def __init__(self):
        self.created: list[V1Job] = []
        self.deleted: list[str] = []

    def create_namespaced_job(self, namespace, body, **kwargs):
        self.created.append(body)
        return body

    def read_namespaced_job_status(self, name, namespace):
        return V1Job(metadata=V1ObjectMeta(name=name), status=V1JobStatus(active=1))

    def delete_namespaced_job(self, name, namespace, **kwargs):
        self.deleted.append(name)


class FakeCoreApi:
    """CoreV1Api: pods by job, events by pod; records deleted pods."""

    def __init__(self, pods_by_job=None, events=(), events_forbidden=False):
        self.pods_by_job = pods_by_job or {}
        self.events = list(events)
        self.events_forbidden = events_forbidden
        self.deleted_pods: list[str] = []

    def create_namespaced_secret(self, namespace, body):
        return body

    def list_namespaced_pod(self, namespace, label_selector):
        job_name = label_selector.removeprefix("job-name=")
        return V1PodList(items=self.pods_by_job.get(job_name, []))

    def list_namespaced_event(self, namespace, field_selector):
        if self.events_forbidden:
            raise ApiException(status=403, reason="Forbidden")
        return CoreV1EventList(items=self.events)

    def delete_namespaced_pod(self, name, namespace, body=None):
        self.deleted_pods.append(name)


def make_settings(**values) -> plugin.ExecutorSettings:
    return plugin.ExecutorSettings(namespace="storyreel", **values)


# Pods share files through GCS, as profiles/gke has it.
GCS_STORAGE = SimpleNamespace(shared_fs_usage=frozenset(), default_storage_provider="gcs")


def make_executor(
    executor_class,
    monkeypatch,
    tmp_path,
    settings=None,
    batch=None,
    core=None,
    storage_settings=None,
):
    """An executor of executor_class whose upstream part talks to fakes.

    Only upstream's __post_init__ is replaced (it loads a kubeconfig and creates the run's
    Secret); everything storyreel's executor does on top runs as in a real run.
    """
    settings = settings or make_settings()

    def upstream_post_init_without_cluster(self):
        self.k8s_cpu_scalar = settings.cpu_scalar
        self.k8s_service_account_name = settings.service_account_name
        self.kubeapi = core or FakeCoreApi()
        self.batchapi = batch or FakeBatchApi()
        self.namespace = settings.namespace
        self.secret_files = {}
        self.run_namespace = RUN_ID
        self.secret_envvars = {"snakemake_storage_gcs_project": "SNAKEMAKE_STORAGE_GCS_PROJECT"}
        self.log_path = tmp_path / "kubernetes-logs"
        self.log_path.mkdir(exist_ok=True)
        self.container_image = DEFAULT_IMAGE
        self.privileged = settings.privileged
        self.persistent_volumes = settings.persistent_volumes

    monkeypatch.setattr(upstream.Executor, "__post_init__", upstream_post_init_without_cluster)
    executor = executor_class.__new__(executor_class)
    executor.workflow = SimpleNamespace(
        executor_settings=settings,
        remote_execution_settings=SimpleNamespace(container_image=DEFAULT_IMAGE),
        deployment_settings=SimpleNamespace(deployment_method=set()),
        storage_settings=storage_settings or GCS_STORAGE,
        scheduler=SimpleNamespace(submit_callback=lambda job: None),
        # The job environment upstream puts in the run's Secret (again when it re-authenticates).
        spawned_job_args_factory=SimpleNamespace(envvars=dict),
    )
    executor.logger = logging.getLogger("test_executor_plugin")
    executor.lock = threading.Lock()
    executor.active_jobs = []
    executor.status_rate_limiter = Throttler(rate_limit=1000, period=1)
    executor.format_job_exec = lambda job: "python -m snakemake --target-jobs 'tts:story=demo'"
    executor.errors = []
    executor.successes = []
    executor.report_job_error = lambda job_info, msg=None, **kwargs: executor.errors.append(
        (job_info, msg, kwargs)
    )
    executor.report_job_success = executor.successes.append
    executor.__post_init__()
    return executor


@pytest.fixture
def submit(monkeypatch, tmp_path):
    """submit(job, **settings) -> the body storyreel's executor sends for the job."""

    def run(job, **settings):
        batch = FakeBatchApi()
        executor = make_executor(
            plugin.Executor, monkeypatch, tmp_path, make_settings(**settings), batch=batch
        )
        executor.run_job(job)
        (body,) = batch.created
        return body

    return run


@pytest.fixture
def upstream_body(monkeypatch, tmp_path):
    """upstream_body(job, **settings) -> the body the upstream executor alone sends."""

    def run(job, **settings):
        batch = FakeBatchApi()
        executor = make_executor(
            upstream.Executor, monkeypatch, tmp_path, make_settings(**settings), batch=batch
        )
        executor.run_job(job)
        (body,) = batch.created
        return body

    return run


def container(body: V1Job):
    (the_container,) = body.spec.template.spec.containers
    return the_container


def tolerations(body: V1Job) -> list:
    return body.spec.template.spec.tolerations or []


def node_selector(body: V1Job) -> dict:
    return body.spec.template.spec.node_selector or {}


def assert_valid(body: V1Job):
    manifest = ApiClient().sanitize_for_serialization(body)
    try:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        pytest.fail(f"{'.'.join(map(str, error.path))}: {error.message}")


# ---------------------------------------------------------------------------------------------
# The image


def test_a_pod_runs_its_rules_image(submit):
    body = submit(rule_job("tts", image=SPEECH_IMAGE))
    assert container(body).image == SPEECH_IMAGE
    # Upstream's command is untouched.
    assert container(body).args[-1].startswith("python -m snakemake")


def test_the_container_image_resource_overrides_the_rules_image(submit):
    body = submit(rule_job("tts", image=SPEECH_IMAGE, container_image=FACE_IMAGE))
    assert container(body).image == FACE_IMAGE


def test_a_rule_without_an_image_falls_back_to_the_container_image_flag(submit):
    assert container(submit(rule_job("tts"))).image == DEFAULT_IMAGE


def test_a_group_runs_the_image_its_rules_agree_on(submit):
    assert container(submit(video_group())).image == VIDEO_IMAGE


def test_a_group_whose_rules_disagree_on_the_image_fails_before_submission(monkeypatch, tmp_path):
    batch = FakeBatchApi()
    executor = make_executor(plugin.Executor, monkeypatch, tmp_path, batch=batch)
    mixed = group_job(
        "video",
        [rule_job("render", image=FACE_IMAGE), rule_job("compose", image=VIDEO_IMAGE)],
    )
    listing = f"compose: {VIDEO_IMAGE}, render: {FACE_IMAGE}"
    with pytest.raises(WorkflowError, match=re.escape(listing)):
        executor.run_job(mixed)
    assert batch.created == []


def test_group_image_agreement_counts_a_rule_without_an_image_as_disagreeing():
    with pytest.raises(WorkflowError, match="preview: no container:"):
        job_image("video", [("compose", VIDEO_IMAGE), ("preview", None)], {})


def test_the_container_image_resource_settles_a_group():
    pairs = [("render", FACE_IMAGE), ("compose", VIDEO_IMAGE)]
    assert job_image("video", pairs, {"container_image": VIDEO_IMAGE}) == VIDEO_IMAGE


# ---------------------------------------------------------------------------------------------
# GPUs


def test_a_gpu_job_gets_gpus_with_limit_equal_to_request_on_its_model(submit):
    body = submit(rule_job("animate", gpu=1, gpu_model="nvidia-l4", gpu_manufacturer="nvidia"))
    resources = container(body).resources
    assert resources.requests["nvidia.com/gpu"] == "1"
    assert resources.limits == {"nvidia.com/gpu": "1"}  # upstream's scale=1: no CPU limits
    assert node_selector(body)["cloud.google.com/gke-accelerator"] == "nvidia-l4"
    gpu_tolerations = [t for t in tolerations(body) if t.key == "nvidia.com/gpu"]
    assert [(t.operator, t.value, t.effect) for t in gpu_tolerations] == [
        ("Equal", "present", "NoSchedule")
    ]


def test_gpu_limits_keep_upstreams_other_limits_when_scale_is_off(submit):
    body = submit(
        rule_job("animate", gpu=2, gpu_model="nvidia-tesla-t4", gpu_manufacturer="nvidia", scale=0)
    )
    limits = container(body).resources.limits
    assert limits["nvidia.com/gpu"] == container(body).resources.requests["nvidia.com/gpu"] == "2"
    assert limits["memory"] == "2000M"


@pytest.mark.parametrize(
    "resources",
    [{}, {"gpu": 0, "gpu_manufacturer": "nvidia"}, {"gpu": 0, "gpu_manufacturer": "amd"}],
    ids=["no gpu resource", "gpu=0 nvidia", "gpu=0 amd"],
)
def test_a_cpu_job_carries_nothing_of_gpus(submit, upstream_body, resources):
    job = rule_job("align", **resources)
    body = submit(job)
    requirements = container(body).resources
    for quantities in (requirements.requests or {}, requirements.limits or {}):
        assert not set(quantities) & set(GPU_RESOURCES)
    assert not [t for t in tolerations(body) if t.key in GPU_RESOURCES]
    assert "cloud.google.com/gke-accelerator" not in node_selector(body)
    if resources:
        # What is removed: upstream tolerates GPU taints even for gpu=0.
        assert [t for t in tolerations(upstream_body(job)) if t.key in GPU_RESOURCES]


def test_gpus_of_another_manufacturer_are_refused(submit):
    with pytest.raises(WorkflowError, match="NVIDIA GPUs only"):
        submit(rule_job("animate", gpu=1, gpu_manufacturer="amd"))


def _minimal_job_spec():
    return kubernetes.client.V1JobSpec(
        template=kubernetes.client.V1PodTemplateSpec(
            spec=kubernetes.client.V1PodSpec(
                containers=[kubernetes.client.V1Container(name="snakemake", image=DEFAULT_IMAGE)]
            )
        )
    )


def test_a_gpu_count_must_be_a_whole_number():
    spec = JobSpec(name="animate", rules=("animate",), run_id=RUN_ID, resources={"gpu": "one"})
    with pytest.raises(WorkflowError, match="gpu must be a whole number"):
        customise_job(V1Job(spec=_minimal_job_spec()), spec, make_settings())


# ---------------------------------------------------------------------------------------------
# Labels


def test_the_job_and_its_pods_are_labelled(submit):
    body = submit(rule_job("tts", image=SPEECH_IMAGE, story="council-budget"))
    expected = {
        "app.kubernetes.io/name": "storyreel",
        "storyreel/rule": "tts",
        "storyreel/story": "council-budget",
        "storyreel/run": RUN_ID,
    }
    for metadata in (body.metadata, body.spec.template.metadata):
        assert expected.items() <= metadata.labels.items()
    # Upstream's own label stays.
    assert body.metadata.labels["app"] == "snakemake"


def test_a_group_job_is_labelled_with_its_group(submit):
    labels = submit(video_group(story="demo")).spec.template.metadata.labels
    assert labels["storyreel/rule"] == "video"
    assert labels["storyreel/story"] == "demo"


def test_a_job_without_a_story_has_no_story_label(submit):
    body = submit(rule_job("tts", story=None))
    assert "storyreel/story" not in body.metadata.labels


@pytest.mark.parametrize(
    "text, value",
    [
        ("init_story", "init_story"),
        ("group with spaces/and:colons", "group-with-spaces-and-colons"),
        ("_leading.and.trailing-", "leading.and.trailing"),
        ("x" * 70, "x" * 63),
    ],
)
def test_label_values_are_sanitised(text, value):
    assert label_value(text) == value


# ---------------------------------------------------------------------------------------------
# Pod settings, security, placement


def test_pull_secrets_and_service_account(submit):
    body = submit(
        rule_job("tts", image=SPEECH_IMAGE),
        image_pull_secrets=["registry-pull", "mirror-pull"],
        service_account_name="storyreel-job",
    )
    pod_spec = body.spec.template.spec
    assert [secret.name for secret in pod_spec.image_pull_secrets] == [
        "registry-pull",
        "mirror-pull",
    ]
    assert pod_spec.service_account_name == "storyreel-job"


def test_no_pull_secrets_unless_configured(submit):
    assert submit(rule_job("tts")).spec.template.spec.image_pull_secrets is None


@pytest.mark.parametrize("privileged", [False, True], ids=["default", "privileged setting"])
def test_pods_run_as_the_images_user_and_never_privileged(submit, upstream_body, privileged):
    job = rule_job("tts", image=SPEECH_IMAGE)
    if privileged:
        # Upstream makes the container privileged for this setting.
        assert container(upstream_body(job, privileged=True)).security_context.privileged
    body = submit(job, privileged=privileged)
    pod_spec = body.spec.template.spec
    assert pod_spec.automount_service_account_token is False
    assert pod_spec.security_context.run_as_non_root is True
    assert pod_spec.security_context.run_as_user == 10001
    context = container(body).security_context
    assert not context.privileged
    assert context.run_as_non_root is True
    assert context.run_as_user == 10001
    assert context.allow_privilege_escalation is False
    assert context.capabilities.drop == ["ALL"]


def test_the_video_group_goes_to_local_ssd_nodes_with_its_disk_request(submit):
    body = submit(video_group())
    assert node_selector(body)["cloud.google.com/gke-ephemeral-storage-local-ssd"] == "true"
    assert container(body).resources.requests["ephemeral-storage"] == "40000M"


def test_a_rule_asking_for_local_ssd_gets_it(submit):
    body = submit(rule_job("tts", local_ssd=1))
    assert node_selector(body)["cloud.google.com/gke-ephemeral-storage-local-ssd"] == "true"


def test_other_jobs_and_a_switched_off_selector_get_no_local_ssd(submit):
    assert "cloud.google.com/gke-ephemeral-storage-local-ssd" not in node_selector(
        submit(rule_job("tts"))
    )
    assert "cloud.google.com/gke-ephemeral-storage-local-ssd" not in node_selector(
        submit(video_group(), local_ssd_selector=False)
    )


def test_customise_job_leaves_its_input_alone(upstream_body):
    body = upstream_body(rule_job("tts"))
    before = ApiClient().sanitize_for_serialization(body)
    spec = JobSpec(name="tts", rules=("tts",), run_id=RUN_ID, image=SPEECH_IMAGE)
    customise_job(body, spec, make_settings(image_pull_secrets=["pull"]))
    assert ApiClient().sanitize_for_serialization(body) == before


BODIES = {
    "cpu rule": (rule_job("tts", image=SPEECH_IMAGE), {}),
    "no image, no story": (rule_job("tts", story=None), {}),
    "gpu rule": (
        rule_job(
            "animate",
            image=FACE_IMAGE,
            gpu=1,
            gpu_model="nvidia-l4",
            gpu_manufacturer="nvidia",
            scale=0,
        ),
        {},
    ),
    "gpu=0": (rule_job("align", gpu=0, gpu_manufacturer="nvidia"), {}),
    "video group": (video_group(), {}),
    "pull secrets, service account, privileged setting": (
        rule_job("tts", image=SPEECH_IMAGE),
        {
            "image_pull_secrets": ["pull"],
            "service_account_name": "storyreel-job",
            "privileged": True,
        },
    ),
}


@pytest.mark.parametrize("case", BODIES, ids=str)
def test_every_body_validates_against_kubernetes_1_33(submit, case):
    job, settings = BODIES[case]
    assert_valid(submit(job, **settings))


def test_the_validator_rejects_a_misspelt_field(submit):
    # Strict mode must catch an unknown field, or the test above proves nothing.
    manifest = ApiClient().sanitize_for_serialization(submit(rule_job("tts")))
    manifest["spec"]["template"]["spec"]["nodeSelektor"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


# ---------------------------------------------------------------------------------------------
# The hook into upstream's run_job


def test_after_a_submission_the_plain_client_is_back(monkeypatch, tmp_path):
    batch = FakeBatchApi()
    executor = make_executor(plugin.Executor, monkeypatch, tmp_path, batch=batch)
    executor.run_job(rule_job("tts", image=SPEECH_IMAGE))
    assert executor.batchapi is batch
    (job_info,) = executor.active_jobs
    assert job_info.external_jobid == batch.created[0].metadata.name


def test_a_retry_after_reauthentication_still_sends_the_customised_body(monkeypatch, tmp_path):
    class ExpiredTokenBatchApi(FakeBatchApi):
        def create_namespaced_job(self, namespace, body, **kwargs):
            raise ApiException(status=401, reason="Unauthorized")

    fresh_client = FakeBatchApi()
    # Upstream re-authenticates by reloading the kubeconfig and making new clients.
    monkeypatch.setattr(kubernetes.config, "load_kube_config", lambda: None)
    monkeypatch.setattr(upstream.subprocess, "run", lambda *args, **kwargs: None)
    monkeypatch.setattr(kubernetes.client, "BatchV1Api", lambda: fresh_client)
    monkeypatch.setattr(kubernetes.client, "CoreV1Api", FakeCoreApi)
    executor = make_executor(plugin.Executor, monkeypatch, tmp_path, batch=ExpiredTokenBatchApi())
    executor.run_job(rule_job("tts", image=SPEECH_IMAGE))
    (body,) = fresh_client.created
    assert container(body).image == SPEECH_IMAGE
    assert body.metadata.labels["storyreel/run"] == RUN_ID


# ---------------------------------------------------------------------------------------------
# Stuck pods

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
TIMEOUT = 600.0


def pending_pod(age_seconds, *, conditions=None, waiting=None, name="snakejob-x-abcde"):
    statuses = None
    if waiting is not None:
        reason, message = waiting
        statuses = [
            V1ContainerStatus(
                name="snakemake",
                image=SPEECH_IMAGE,
                image_id="",
                ready=False,
                restart_count=0,
                state=V1ContainerState(
                    waiting=V1ContainerStateWaiting(reason=reason, message=message)
                ),
            )
        ]
    return V1Pod(
        metadata=V1ObjectMeta(name=name, creation_timestamp=NOW - timedelta(seconds=age_seconds)),
        status=V1PodStatus(phase="Pending", conditions=conditions, container_statuses=statuses),
    )


UNSCHEDULABLE = [
    V1PodCondition(
        type="PodScheduled",
        status="False",
        reason="Unschedulable",
        message="0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
    )
]


def test_an_unschedulable_pod_past_the_timeout_is_stuck():
    reason = stuck_reason(pending_pod(TIMEOUT + 60, conditions=UNSCHEDULABLE), NOW, TIMEOUT)
    assert reason.startswith("Pending for 660 s")
    assert "Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu." in reason


@pytest.mark.parametrize("waiting_reason", ["ImagePullBackOff", "ErrImagePull", "InvalidImageName"])
def test_a_pod_that_cannot_pull_its_image_past_the_timeout_is_stuck(waiting_reason):
    message = f'Back-off pulling image "{SPEECH_IMAGE}"'
    pod = pending_pod(TIMEOUT + 1, waiting=(waiting_reason, message))
    reason = stuck_reason(pod, NOW, TIMEOUT)
    assert f"{waiting_reason}: container snakemake (image {SPEECH_IMAGE}): {message}" in reason


@pytest.mark.parametrize(
    "pod",
    [
        pending_pod(TIMEOUT - 1, conditions=UNSCHEDULABLE),
        pending_pod(60, waiting=("ImagePullBackOff", "Back-off pulling image")),
        # Waiting for something that resolves itself (a volume, a starting node).
        pending_pod(TIMEOUT * 3, waiting=("ContainerCreating", None)),
    ],
    ids=["unschedulable but young", "pull backoff but young", "creating"],
)
def test_a_young_or_merely_slow_pending_pod_is_not_stuck(pod):
    assert stuck_reason(pod, NOW, TIMEOUT) is None


def test_a_running_pod_is_not_stuck():
    pod = V1Pod(
        metadata=V1ObjectMeta(name="p", creation_timestamp=NOW - timedelta(hours=2)),
        status=V1PodStatus(
            phase="Running",
            container_statuses=[
                V1ContainerStatus(
                    name="snakemake",
                    image=SPEECH_IMAGE,
                    image_id="",
                    ready=True,
                    restart_count=0,
                    state=V1ContainerState(running=V1ContainerStateRunning()),
                )
            ],
        ),
    )
    assert stuck_reason(pod, NOW, TIMEOUT) is None


def stuck_and_running_jobs():
    """Two submitted jobs (long ago): one with an unschedulable pod, one with a running pod."""
    long_ago = datetime.now(UTC) - timedelta(seconds=TIMEOUT * 2)
    stuck = pending_pod(0, conditions=UNSCHEDULABLE, name="snakejob-stuck-abcde")
    stuck.metadata.creation_timestamp = long_ago
    running = V1Pod(
        metadata=V1ObjectMeta(name="snakejob-running-fghij", creation_timestamp=long_ago),
        status=V1PodStatus(phase="Running"),
    )
    pods = {"snakejob-stuck": [stuck], "snakejob-running": [running]}
    jobs = [SubmittedJobInfo(job=rule_job("tts"), external_jobid=name, aux={}) for name in pods]
    return pods, jobs


def check(executor, jobs):
    async def collect():
        return [job_info async for job_info in executor.check_active_jobs(jobs)]

    return asyncio.run(collect())


def test_a_stuck_job_fails_with_the_reason_its_pod_is_saved_and_it_is_deleted(
    monkeypatch, tmp_path
):
    pods, jobs = stuck_and_running_jobs()
    event = CoreV1Event(
        metadata=V1ObjectMeta(name="e1"),
        involved_object=V1ObjectReference(kind="Pod", name="snakejob-stuck-abcde"),
        type="Warning",
        reason="FailedScheduling",
        message="0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
        count=4,
        last_timestamp=NOW,
    )
    batch, core = FakeBatchApi(), FakeCoreApi(pods, events=[event])
    executor = make_executor(plugin.Executor, monkeypatch, tmp_path, batch=batch, core=core)

    still_active = check(executor, jobs)

    assert [job_info.external_jobid for job_info in still_active] == ["snakejob-running"]
    ((failed, message, details),) = executor.errors
    assert failed.external_jobid == "snakejob-stuck"
    assert "Unschedulable: 0/3 nodes are available" in message
    (log,) = details["aux_logs"]
    saved = (tmp_path / "kubernetes-logs" / "snakejob-stuck.log").read_text()
    assert log.endswith("snakejob-stuck.log")
    assert "Warning  FailedScheduling (x4): 0/3 nodes are available" in saved
    assert '"phase": "Pending"' in saved
    assert batch.deleted == ["snakejob-stuck"]
    assert core.deleted_pods == ["snakejob-stuck-abcde"]


def test_unreadable_events_are_noted_and_the_job_still_fails(monkeypatch, tmp_path):
    pods, jobs = stuck_and_running_jobs()
    core = FakeCoreApi(pods, events_forbidden=True)
    executor = make_executor(plugin.Executor, monkeypatch, tmp_path, core=core)
    check(executor, jobs)
    ((_, message, _),) = executor.errors
    assert "Unschedulable" in message
    saved = (tmp_path / "kubernetes-logs" / "snakejob-stuck.log").read_text()
    assert "Events:\n  (not readable:" in saved


def test_with_failed_logs_switched_off_nothing_is_saved(monkeypatch, tmp_path):
    pods, jobs = stuck_and_running_jobs()
    executor = make_executor(
        plugin.Executor,
        monkeypatch,
        tmp_path,
        settings=make_settings(keep_failed_logs=False),
        core=FakeCoreApi(pods),
    )
    check(executor, jobs)
    ((_, message, details),) = executor.errors
    assert "Unschedulable" in message
    assert details["aux_logs"] == []
    assert list((tmp_path / "kubernetes-logs").iterdir()) == []


def test_recently_submitted_jobs_skip_the_pod_lookup(monkeypatch, tmp_path):
    class CountingCoreApi(FakeCoreApi):
        lookups = 0

        def list_namespaced_pod(self, namespace, label_selector):
            CountingCoreApi.lookups += 1
            return super().list_namespaced_pod(namespace, label_selector)

    batch = FakeBatchApi()
    executor = make_executor(
        plugin.Executor, monkeypatch, tmp_path, batch=batch, core=CountingCoreApi()
    )
    executor.run_job(rule_job("tts"))
    assert check(executor, list(executor.active_jobs)) == executor.active_jobs
    # Only upstream's own status lookup, none for the stuck check.
    assert CountingCoreApi.lookups == 1


def test_a_failed_job_log_is_read_from_the_current_container(monkeypatch, tmp_path):
    """Job pods never restart, so there is no previous container: a real API server answers a
    log request with previous=true with 400, and upstream would end the whole run on it."""

    class LogCoreApi(FakeCoreApi):
        log_requests: list[dict] = []

        def read_namespaced_pod_log(self, name, namespace, **kwargs):
            LogCoreApi.log_requests.append({"name": name, **kwargs})
            if kwargs.get("previous"):
                raise ApiException(status=400, reason="Bad Request")
            return "Error in rule tts: the voice is missing\n"

    class FailedBatchApi(FakeBatchApi):
        def read_namespaced_job_status(self, name, namespace):
            return V1Job(metadata=V1ObjectMeta(name=name), status=V1JobStatus(failed=1))

    failed_pod = V1Pod(
        metadata=V1ObjectMeta(name="snakejob-failed-abcde"),
        status=V1PodStatus(
            phase="Failed",
            container_statuses=[
                V1ContainerStatus(
                    name="snakemake",
                    image=SPEECH_IMAGE,
                    image_id="",
                    ready=False,
                    restart_count=0,
                    state=V1ContainerState(
                        terminated=V1ContainerStateTerminated(exit_code=1, reason="Error")
                    ),
                )
            ],
        ),
    )
    core = LogCoreApi({"snakejob-failed": [failed_pod]})
    executor = make_executor(
        plugin.Executor, monkeypatch, tmp_path, batch=FailedBatchApi(), core=core
    )
    job = SubmittedJobInfo(job=rule_job("tts"), external_jobid="snakejob-failed", aux={})

    assert check(executor, [job]) == []

    ((failed, _, details),) = executor.errors
    assert failed.external_jobid == "snakejob-failed"
    assert [request.get("previous") for request in LogCoreApi.log_requests] == [None]
    (log,) = details["aux_logs"]
    saved = tmp_path / "kubernetes-logs" / "snakejob-failed.log"
    assert log == str(saved)
    assert "the voice is missing" in saved.read_text()


# ---------------------------------------------------------------------------------------------
# The plugin as Snakemake sees it


def test_the_plugin_is_discovered_with_its_settings():
    registry = ExecutorPluginRegistry()
    assert registry.is_installed("storyreel")
    found = registry.get_plugin("storyreel")
    assert found.executor is plugin.Executor
    assert found.settings_cls is plugin.ExecutorSettings
    assert issubclass(plugin.Executor, upstream.Executor)
    assert issubclass(plugin.ExecutorSettings, upstream.ExecutorSettings)


def test_common_settings_deploy_sources_without_pip_in_pods():
    settings = plugin.common_settings
    # The profile says pods share no file system (so a dry run plans without a bucket) ...
    assert settings.implies_no_shared_fs is False
    assert settings.job_deploy_sources is True
    assert settings.auto_deploy_default_storage_provider is False
    assert settings.non_local_exec is True
    # Upstream's: envvars travel in the run's Secret, not on the command line.
    assert settings.pass_envvar_declarations_to_cmd is False


@pytest.mark.parametrize(
    "storage",
    [
        SimpleNamespace(shared_fs_usage=frozenset(), default_storage_provider=None),
        SimpleNamespace(
            shared_fs_usage=frozenset(SharedFSUsage.all()), default_storage_provider="gcs"
        ),
    ],
    ids=["no default storage", "shared file system assumed"],
)
def test_a_run_without_gcs_between_the_pods_is_refused(monkeypatch, tmp_path, storage):
    # ... and the executor refuses to run without it.
    with pytest.raises(WorkflowError, match="STORYREEL_GCS_PREFIX"):
        make_executor(plugin.Executor, monkeypatch, tmp_path, storage_settings=storage)


def parse_flags(*argv) -> plugin.ExecutorSettings:
    found = ExecutorPluginRegistry().get_plugin("storyreel")
    parser = argparse.ArgumentParser()
    found.register_cli_args(parser, "executor")
    return found.get_settings(parser.parse_args(list(argv)))


def test_flags_reach_the_settings():
    settings = parse_flags(
        *["--storyreel-namespace", "storyreel"],
        *["--storyreel-service-account-name", "storyreel-job"],
        *["--storyreel-image-pull-secrets", "one", "two"],
        *["--storyreel-pending-timeout", "900"],
        *["--storyreel-local-ssd-selector", "false"],
        *["--storyreel-keep-failed-logs", "no"],
    )
    assert settings.namespace == "storyreel"
    assert settings.service_account_name == "storyreel-job"
    assert settings.image_pull_secrets == ["one", "two"]
    assert settings.pending_timeout == 900.0
    assert settings.local_ssd_selector is False
    assert settings.keep_failed_logs is False


def test_flag_defaults():
    settings = parse_flags()
    assert settings.image_pull_secrets == []
    assert settings.pending_timeout == 600.0
    assert settings.local_ssd_selector is True
    assert settings.keep_failed_logs is True
    assert settings.privileged is False
