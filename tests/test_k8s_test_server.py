"""The Kubernetes test server, driven through the official ``kubernetes`` client.

These tests pin the behaviour the executor plugin and the end-to-end tests rely on: jobs run and
report like on a real cluster, bad objects are refused like by the real API, and the scheduler
places pods (GPU nodes, taints, node-local volumes) or explains why it cannot.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
import uuid
from dataclasses import dataclass

import kubernetes.client as k8s
import kubernetes.config
import kubernetes_validate
import pytest
from k8s_test_server import (
    KUBERNETES_VERSION,
    K8sTestServer,
    SimulatedNode,
    k8s_server_fixture,  # noqa: F401 - the fixture, registered as "k8s_server"
    start_server,
    wait_until,
)
from kubernetes.client.rest import ApiException

NAMESPACE = "default"
IMAGE = "python:3.11-slim"  # never pulled: the pod runs with the Python running these tests
GPU_TOLERATION = k8s.V1Toleration(
    key="nvidia.com/gpu", operator="Equal", value="present", effect="NoSchedule"
)


@dataclass
class Api:
    client: k8s.ApiClient
    core: k8s.CoreV1Api
    batch: k8s.BatchV1Api


@pytest.fixture
def api(k8s_server: K8sTestServer):
    client = k8s.ApiClient(k8s_server.client_configuration())
    yield Api(client, k8s.CoreV1Api(client), k8s.BatchV1Api(client))
    client.close()


def python_container(code: str, name: str = "main", **fields) -> k8s.V1Container:
    return k8s.V1Container(name=name, image=IMAGE, command=["python", "-c", code], **fields)


def job_body(
    name: str,
    container: k8s.V1Container,
    *,
    volumes: list[k8s.V1Volume] | None = None,
    node_selector: dict[str, str] | None = None,
    tolerations: list[k8s.V1Toleration] | None = None,
    affinity: k8s.V1Affinity | None = None,
    backoff_limit: int = 0,
) -> k8s.V1Job:
    return k8s.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=k8s.V1ObjectMeta(name=name, labels={"app": "storyreel"}),
        spec=k8s.V1JobSpec(
            backoff_limit=backoff_limit,
            template=k8s.V1PodTemplateSpec(
                spec=k8s.V1PodSpec(
                    restart_policy="Never",
                    containers=[container],
                    volumes=volumes,
                    node_selector=node_selector,
                    tolerations=tolerations,
                    affinity=affinity,
                )
            ),
        ),
    )


def gpu_resources(count: int, *, with_limit: bool = True) -> k8s.V1ResourceRequirements:
    requests = {"cpu": "500m", "memory": "512Mi", "nvidia.com/gpu": str(count)}
    limits = {"nvidia.com/gpu": str(count)} if with_limit else None
    return k8s.V1ResourceRequirements(requests=requests, limits=limits)


def job_condition(api: Api, name: str) -> str | None:
    """The job's terminal condition type (Complete or Failed), None while it runs."""
    conditions = api.batch.read_namespaced_job_status(name, NAMESPACE).status.conditions or []
    for condition in conditions:
        if condition.type in ("Complete", "Failed") and condition.status == "True":
            return condition.type
    return None


def job_pods(api: Api, job_name: str) -> list[k8s.V1Pod]:
    return api.core.list_namespaced_pod(NAMESPACE, label_selector=f"job-name={job_name}").items


def only_pod(api: Api, job_name: str) -> k8s.V1Pod:
    return wait_until(lambda: (job_pods(api, job_name) or [None])[0])


def scheduling_message(api: Api, job_name: str) -> str | None:
    """The scheduler's message once it has given up on the job's pod."""
    for pod in job_pods(api, job_name):
        for condition in pod.status.conditions or []:
            if condition.type == "PodScheduled" and condition.reason == "Unschedulable":
                return condition.message
    return None


def api_error(call) -> tuple[ApiException, dict]:
    with pytest.raises(ApiException) as caught:
        call()
    return caught.value, json.loads(caught.value.body)


def assert_schema_valid(api: Api, obj: object) -> None:
    """What the server answers must itself be a valid object of the official schema."""
    data = api.client.sanitize_for_serialization(obj)
    kubernetes_validate.validate(data, KUBERNETES_VERSION, strict=True)


def test_job_reads_a_secret_completes_and_keeps_its_log(api: Api, k8s_server: K8sTestServer):
    secret = k8s.V1Secret(
        metadata=k8s.V1ObjectMeta(name="story-credentials"),
        data={"greeting": base64.b64encode(b"hello from the secret").decode()},
    )
    api.core.create_namespaced_secret(NAMESPACE, secret)
    variable = k8s.V1EnvVar(
        name="GREETING",
        value_from=k8s.V1EnvVarSource(
            secret_key_ref=k8s.V1SecretKeySelector(name="story-credentials", key="greeting")
        ),
    )
    container = python_container("import os; print(os.environ['GREETING'])", env=[variable])
    api.batch.create_namespaced_job(NAMESPACE, job_body("greet", container))

    assert wait_until(lambda: job_condition(api, "greet")) == "Complete"
    job = api.batch.read_namespaced_job_status("greet", NAMESPACE)
    assert job.status.succeeded == 1 and not job.status.failed
    assert job.status.start_time and job.status.completion_time
    assert job.spec.selector.match_labels == {
        "batch.kubernetes.io/controller-uid": job.metadata.uid
    }
    pod = only_pod(api, "greet")
    assert pod.metadata.name.startswith("greet-")
    assert pod.metadata.owner_references[0].uid == job.metadata.uid
    assert pod.status.phase == "Succeeded"
    (status,) = pod.status.container_statuses
    assert (status.name, status.state.terminated.exit_code) == ("main", 0)
    assert status.state.terminated.reason == "Completed"
    log = api.core.read_namespaced_pod_log(pod.metadata.name, NAMESPACE, container="main")
    assert log == "hello from the secret\n"
    for obj in (job, api.core.read_namespaced_pod(pod.metadata.name, NAMESPACE)):
        assert_schema_valid(api, obj)
    for node in api.core.list_node().items:
        assert_schema_valid(api, api.core.read_node(node.metadata.name))
    assert k8s_server.pod_record(pod.metadata.name).log() == "hello from the secret\n"


def test_failing_command_fails_the_job_with_its_exit_code(api: Api):
    container = python_container("import sys; print('oops', file=sys.stderr); sys.exit(3)")
    api.batch.create_namespaced_job(NAMESPACE, job_body("broken", container))

    assert wait_until(lambda: job_condition(api, "broken")) == "Failed"
    job = api.batch.read_namespaced_job_status("broken", NAMESPACE)
    assert job.status.failed == 1 and not job.status.succeeded
    failed = next(c for c in job.status.conditions if c.type == "Failed")
    assert failed.reason == "BackoffLimitExceeded"
    assert [c.type for c in job.status.conditions] == ["FailureTarget", "Failed"]
    pod = only_pod(api, "broken")
    assert pod.status.phase == "Failed"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (3, "Error")
    assert api.core.read_namespaced_pod_log(pod.metadata.name, NAMESPACE) == "oops\n"
    # A container that never restarted has no previous instance: the real API answers 400.
    error, status = api_error(
        lambda: api.core.read_namespaced_pod_log(pod.metadata.name, NAMESPACE, previous=True)
    )
    assert error.status == 400 and status["reason"] == "BadRequest"
    assert status["message"] == (
        f'previous terminated container "main" in pod "{pod.metadata.name}" not found'
    )


def test_failed_pods_are_retried_up_to_the_backoff_limit(api: Api):
    container = python_container("raise SystemExit(1)")
    api.batch.create_namespaced_job(NAMESPACE, job_body("retried", container, backoff_limit=2))

    assert wait_until(lambda: job_condition(api, "retried")) == "Failed"
    assert api.batch.read_namespaced_job_status("retried", NAMESPACE).status.failed == 3
    assert len(job_pods(api, "retried")) == 3


def test_restarted_container_keeps_the_previous_log(api: Api):
    flaky = (
        "import pathlib, sys; attempts = pathlib.Path('attempts');"
        "n = int(attempts.read_text()) + 1 if attempts.exists() else 1;"
        "attempts.write_text(str(n)); print('attempt', n); sys.exit(0 if n > 1 else 3)"
    )
    pod = k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="flaky"),
        spec=k8s.V1PodSpec(
            restart_policy="OnFailure",
            volumes=[k8s.V1Volume(name="scratch", empty_dir=k8s.V1EmptyDirVolumeSource())],
            containers=[
                python_container(
                    flaky,
                    working_dir="/scratch",
                    volume_mounts=[k8s.V1VolumeMount(name="scratch", mount_path="/scratch")],
                )
            ],
        ),
    )
    api.core.create_namespaced_pod(NAMESPACE, pod)

    def succeeded():
        pod = api.core.read_namespaced_pod_status("flaky", NAMESPACE)
        return pod if pod.status.phase == "Succeeded" else None

    status = wait_until(succeeded).status.container_statuses[0]
    assert status.restart_count == 1
    assert status.last_state.terminated.exit_code == 3
    assert api.core.read_namespaced_pod_log("flaky", NAMESPACE) == "attempt 2\n"
    previous = api.core.read_namespaced_pod_log("flaky", NAMESPACE, previous=True)
    assert previous == "attempt 1\n"


def test_invalid_objects_are_rejected_with_422(api: Api):
    unknown_field = {
        "metadata": {"name": "typo"},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "imagee": IMAGE}],
                }
            }
        },
    }
    error, status = api_error(lambda: api.batch.create_namespaced_job(NAMESPACE, unknown_field))
    assert (error.status, status["kind"], status["reason"]) == (422, "Status", "Invalid")
    assert status["details"]["kind"] == "Job" and status["details"]["group"] == "batch"
    assert status["details"]["causes"][0]["field"] == "spec.template.spec.containers[0]"
    assert "'imagee' was unexpected" in status["message"]
    assert status["message"].startswith('Job.batch "typo" is invalid: ')

    no_restart_policy = job_body("policy", python_container("pass"))
    no_restart_policy.spec.template.spec.restart_policy = None
    error, status = api_error(lambda: api.batch.create_namespaced_job(NAMESPACE, no_restart_policy))
    assert error.status == 422
    assert status["message"] == (
        'Job.batch "policy" is invalid: spec.template.spec.restartPolicy: Unsupported value: '
        '"Always": supported values: "OnFailure", "Never"'
    )

    lots = k8s.V1ResourceRequirements(requests={"cpu": "lots"})
    bad = job_body("Bad_Name", python_container("pass", resources=lots))
    error, status = api_error(lambda: api.batch.create_namespaced_job(NAMESPACE, bad))
    fields = [cause["field"] for cause in status["details"]["causes"]]
    assert fields == ["metadata.name", "spec.template.spec.containers[0].resources.requests[cpu]"]
    assert api.batch.list_namespaced_job(NAMESPACE).items == []


def test_gpu_request_without_an_equal_limit_is_rejected(api: Api):
    container = python_container("pass", resources=gpu_resources(1, with_limit=False))
    body = job_body("gpu-no-limit", container, tolerations=[GPU_TOLERATION])
    error, status = api_error(lambda: api.batch.create_namespaced_job(NAMESPACE, body))
    assert error.status == 422 and status["reason"] == "Invalid"
    assert status["message"] == (
        'Job.batch "gpu-no-limit" is invalid: spec.template.spec.containers[0].resources.limits: '
        "Required value: Limit must be set for non overcommitable resources"
    )
    unequal = k8s.V1ResourceRequirements(
        requests={"nvidia.com/gpu": "1"}, limits={"nvidia.com/gpu": "2"}
    )
    body = job_body("gpu-unequal", python_container("pass", resources=unequal))
    _, status = api_error(lambda: api.batch.create_namespaced_job(NAMESPACE, body))
    assert "must be equal to nvidia.com/gpu limit of 2" in status["message"]


def test_unschedulable_gpu_request_stays_pending_with_the_schedulers_reason(api: Api):
    # DEFAULT_NODES: a CPU node and a node with one GPU, tainted nvidia.com/gpu=present.
    two_gpus = python_container("pass", resources=gpu_resources(2))
    api.batch.create_namespaced_job(
        NAMESPACE, job_body("two-gpus", two_gpus, tolerations=[GPU_TOLERATION])
    )
    no_toleration = python_container("pass", resources=gpu_resources(1))
    api.batch.create_namespaced_job(NAMESPACE, job_body("untolerated", no_toleration))

    assert wait_until(lambda: scheduling_message(api, "two-gpus")) == (
        "0/2 nodes are available: 2 Insufficient nvidia.com/gpu. preemption: 0/2 nodes are "
        "available: 2 No preemption victims found for incoming pod."
    )
    assert wait_until(lambda: scheduling_message(api, "untolerated")) == (
        "0/2 nodes are available: 1 Insufficient nvidia.com/gpu, 1 node(s) had untolerated "
        "taint {nvidia.com/gpu: present}. preemption: 0/2 nodes are available: 1 No preemption "
        "victims found for incoming pod, 1 Preemption is not helpful for scheduling."
    )
    time.sleep(0.3)  # a pending pod is never failed: the job stays active, as on a real cluster
    pod = only_pod(api, "two-gpus")
    assert pod.status.phase == "Pending" and pod.spec.node_name is None
    assert job_condition(api, "two-gpus") is None
    assert api.batch.read_namespaced_job_status("two-gpus", NAMESPACE).status.active == 1


def test_node_selector_affinity_and_tolerations_place_pods(api: Api, k8s_server: K8sTestServer):
    gpu_container = python_container("pass", resources=gpu_resources(1))
    api.batch.create_namespaced_job(
        NAMESPACE, job_body("on-gpu", gpu_container, tolerations=[GPU_TOLERATION])
    )
    cpu_selector = {"node.kubernetes.io/instance-type": "e2-standard-4"}
    api.batch.create_namespaced_job(
        NAMESPACE, job_body("on-cpu", python_container("pass"), node_selector=cpu_selector)
    )
    not_cpu_pool = k8s.V1Affinity(
        node_affinity=k8s.V1NodeAffinity(
            required_during_scheduling_ignored_during_execution=k8s.V1NodeSelector(
                node_selector_terms=[
                    k8s.V1NodeSelectorTerm(
                        match_expressions=[
                            k8s.V1NodeSelectorRequirement(
                                key="cloud.google.com/gke-nodepool",
                                operator="NotIn",
                                values=["cpu-pool"],
                            )
                        ]
                    )
                ]
            )
        )
    )
    api.batch.create_namespaced_job(
        NAMESPACE,
        job_body(
            "by-affinity",
            python_container("pass"),
            affinity=not_cpu_pool,
            tolerations=[GPU_TOLERATION],
        ),
    )
    gpu_pool = {"cloud.google.com/gke-nodepool": "gpu-pool"}
    untolerated = job_body(
        "selector-no-toleration", python_container("pass"), node_selector=gpu_pool
    )
    api.batch.create_namespaced_job(NAMESPACE, untolerated)

    for name in ("on-gpu", "on-cpu", "by-affinity"):
        assert wait_until(lambda name=name: job_condition(api, name)) == "Complete"
    (gpu_pod,) = k8s_server.job_pod_records("on-gpu")
    assert gpu_pod.node == "gpu-node"
    assert gpu_pod.tolerations == [
        {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}
    ]
    assert gpu_pod.resources["main"]["limits"] == {"nvidia.com/gpu": "1"}
    assert gpu_pod.images == {"main": IMAGE}
    assert k8s_server.job_pod_records("on-cpu")[0].node == "cpu-node"
    assert k8s_server.job_pod_records("by-affinity")[0].node == "gpu-node"
    assert wait_until(lambda: scheduling_message(api, "selector-no-toleration")) == (
        "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, "
        "1 node(s) had untolerated taint {nvidia.com/gpu: present}. preemption: 0/2 nodes are "
        "available: 2 Preemption is not helpful for scheduling."
    )


@pytest.fixture
def two_node_api(tmp_path):
    nodes = [SimulatedNode(name, cpu="2", memory="4Gi") for name in ("node-a", "node-b")]
    with start_server(nodes, root=tmp_path / "cluster") as server:
        client = k8s.ApiClient(server.client_configuration())
        yield server, Api(client, k8s.CoreV1Api(client), k8s.BatchV1Api(client))
        client.close()


def test_pods_sharing_a_claim_are_pulled_to_its_node(two_node_api):
    server, api = two_node_api
    claim = k8s.V1PersistentVolumeClaim(
        metadata=k8s.V1ObjectMeta(name="story-scratch"),
        spec=k8s.V1PersistentVolumeClaimSpec(
            access_modes=["ReadWriteOnce"],
            resources=k8s.V1VolumeResourceRequirements(requests={"storage": "10Gi"}),
        ),
    )
    api.core.create_namespaced_persistent_volume_claim(NAMESPACE, claim)
    assert (
        api.core.read_namespaced_persistent_volume_claim("story-scratch", NAMESPACE).status.phase
        == "Pending"  # WaitForFirstConsumer: unbound until a pod uses it
    )
    volume = k8s.V1Volume(
        name="scratch",
        persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(claim_name="story-scratch"),
    )
    mount = [k8s.V1VolumeMount(name="scratch", mount_path="/story")]

    def sharing_job(name: str, cpu: str, code: str) -> k8s.V1Job:
        resources = k8s.V1ResourceRequirements(requests={"cpu": cpu})
        container = python_container(
            code, working_dir="/story", volume_mounts=mount, resources=resources
        )
        return job_body(name, container, volumes=[volume])

    # The writer takes most of its node's CPU and waits until the reader has been.
    writer = (
        "import pathlib, time; pathlib.Path('shared.txt').write_text('from the writer');"
        "[time.sleep(0.05) for _ in range(200) if not pathlib.Path('done').exists()]"
    )
    api.batch.create_namespaced_job(NAMESPACE, sharing_job("writer", "1500m", writer))

    def written() -> bool:
        directory = server.claim_dir("story-scratch")
        return directory is not None and (directory / "shared.txt").exists()

    wait_until(written)
    writer_node = server.job_pod_records("writer")[0].node
    bound = api.core.read_namespaced_persistent_volume_claim("story-scratch", NAMESPACE)
    assert bound.status.phase == "Bound"
    assert bound.metadata.annotations["volume.kubernetes.io/selected-node"] == writer_node
    assert server.claim_dir("story-scratch").is_relative_to(server.node_dir(writer_node))

    # Too big for what is left on the claim's node, and the other node cannot have the volume.
    late = sharing_job("late", "1", "print(open('done').read())")
    api.batch.create_namespaced_job(NAMESPACE, late)
    assert wait_until(lambda: scheduling_message(api, "late")) == (
        "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) had volume node affinity "
        "conflict. preemption: 0/2 nodes are available: 1 No preemption victims found for "
        "incoming pod, 1 Preemption is not helpful for scheduling."
    )
    # The other node is emptier, yet the reader goes where the volume is.
    reader = (
        "import pathlib; print(pathlib.Path('shared.txt').read_text());"
        "pathlib.Path('done').write_text('read')"
    )
    api.batch.create_namespaced_job(NAMESPACE, sharing_job("reader", "400m", reader))

    for name in ("writer", "reader", "late"):
        assert wait_until(lambda name=name: job_condition(api, name)) == "Complete"
    nodes = {name: server.job_pod_records(name)[0].node for name in ("writer", "reader", "late")}
    assert set(nodes.values()) == {writer_node}
    assert server.job_pod_records("reader")[0].log() == "from the writer\n"
    assert server.job_pod_records("late")[0].log() == "read\n"


def test_deleting_a_job_without_propagation_policy_keeps_its_pods(
    api: Api, k8s_server: K8sTestServer
):
    for name in ("orphaned", "foreground", "background"):
        api.batch.create_namespaced_job(NAMESPACE, job_body(name, python_container("pass")))
    for name in ("orphaned", "foreground", "background"):
        assert wait_until(lambda name=name: job_condition(api, name)) == "Complete"

    api.batch.delete_namespaced_job("orphaned", NAMESPACE)  # batch/v1 orphans by default
    orphaned = "metadata.name=orphaned"
    wait_until(lambda: not api.batch.list_namespaced_job(NAMESPACE, field_selector=orphaned).items)
    time.sleep(0.2)
    (kept,) = job_pods(api, "orphaned")
    assert kept.metadata.owner_references is None

    api.batch.delete_namespaced_job(
        "foreground", NAMESPACE, propagation_policy="Foreground", body=k8s.V1DeleteOptions()
    )
    api.batch.delete_namespaced_job("background", NAMESPACE, propagation_policy="Background")
    wait_until(lambda: not job_pods(api, "foreground") and not job_pods(api, "background"))
    for name in ("foreground", "background"):
        error, _ = api_error(lambda name=name: api.batch.read_namespaced_job(name, NAMESPACE))
        assert error.status == 404


def test_foreground_deletion_stops_a_running_pod_first(api: Api, k8s_server: K8sTestServer):
    api.batch.create_namespaced_job(
        NAMESPACE, job_body("sleeper", python_container("import time; time.sleep(60)"))
    )
    wait_until(lambda: only_pod(api, "sleeper").status.phase == "Running")
    api.batch.delete_namespaced_job("sleeper", NAMESPACE, propagation_policy="Foreground")
    wait_until(lambda: not job_pods(api, "sleeper"))
    wait_until(lambda: not api.batch.list_namespaced_job(NAMESPACE).items)
    (record,) = k8s_server.job_pod_records("sleeper")
    assert record.deleted
    assert record.exit_codes == {"main": 128 + signal.SIGTERM}


def test_missing_objects_answer_404_and_duplicates_409(api: Api):
    error, status = api_error(lambda: api.batch.read_namespaced_job("missing", NAMESPACE))
    assert (error.status, status["reason"], status["code"]) == (404, "NotFound", 404)
    assert status["message"] == 'jobs.batch "missing" not found'
    assert status["details"] == {"name": "missing", "group": "batch", "kind": "jobs"}
    for call in (
        lambda: api.batch.read_namespaced_job_status("missing", NAMESPACE),
        lambda: api.batch.delete_namespaced_job("missing", NAMESPACE),
        lambda: api.core.read_namespaced_secret("missing", NAMESPACE),
        lambda: api.core.delete_namespaced_secret("missing", NAMESPACE),
        lambda: api.core.read_namespaced_pod_log("missing", NAMESPACE),
        lambda: api.core.read_namespaced_persistent_volume_claim("missing", NAMESPACE),
        lambda: api.core.read_node("missing"),
        lambda: k8s.AppsV1Api(api.client).list_namespaced_deployment(NAMESPACE),
    ):
        error, status = api_error(call)
        assert (error.status, status["kind"], status["reason"]) == (404, "Status", "NotFound")

    secret = k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="twice"), string_data={"a": "b"})
    api.core.create_namespaced_secret(NAMESPACE, secret)
    assert api.core.read_namespaced_secret("twice", NAMESPACE).data == {"a": "Yg=="}
    error, status = api_error(lambda: api.core.create_namespaced_secret(NAMESPACE, secret))
    assert (error.status, status["reason"]) == (409, "AlreadyExists")
    assert status["message"] == 'secrets "twice" already exists'


def test_unpullable_image_waits_in_image_pull_back_off(api: Api, k8s_server: K8sTestServer):
    image = "example.invalid/storyreel/missing:1"
    k8s_server.set_image_pullable(image, False)
    container = k8s.V1Container(name="main", image=image, command=["python", "-c", "print(1)"])
    api.batch.create_namespaced_job(NAMESPACE, job_body("no-image", container))

    def waiting_reason():
        statuses = only_pod(api, "no-image").status.container_statuses or []
        return statuses and statuses[0].state.waiting and statuses[0].state.waiting.reason

    assert wait_until(lambda: waiting_reason() in ("ErrImagePull", "ImagePullBackOff"))
    assert wait_until(lambda: waiting_reason() == "ImagePullBackOff")
    pod = only_pod(api, "no-image")
    assert pod.status.phase == "Pending"
    error, status = api_error(
        lambda: api.core.read_namespaced_pod_log(pod.metadata.name, NAMESPACE)
    )
    assert status["message"].endswith("is waiting to start: trying and failing to pull image")

    k8s_server.set_image_pullable(image)  # e.g. the image was pushed meanwhile
    assert wait_until(lambda: job_condition(api, "no-image")) == "Complete"


def test_missing_secret_holds_the_container_until_it_exists(api: Api):
    variable = k8s.V1EnvVar(
        name="TOKEN",
        value_from=k8s.V1EnvVarSource(
            secret_key_ref=k8s.V1SecretKeySelector(name="late-secret", key="token")
        ),
    )
    container = python_container("import os; print(os.environ['TOKEN'])", env=[variable])
    api.batch.create_namespaced_job(NAMESPACE, job_body("needs-secret", container))

    def config_error():
        statuses = only_pod(api, "needs-secret").status.container_statuses or []
        waiting = statuses[0].state.waiting if statuses else None
        return waiting if waiting and waiting.reason == "CreateContainerConfigError" else None

    assert wait_until(config_error).message == 'secret "late-secret" not found'
    secret = k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="late-secret"), string_data={"token": "t"})
    api.core.create_namespaced_secret(NAMESPACE, secret)
    assert wait_until(lambda: job_condition(api, "needs-secret")) == "Complete"


def test_active_deadline_fails_a_job_whose_pod_never_runs(api: Api):
    # The upstream plugin waits forever on a pending pod; a deadline is the cluster's way out.
    body = job_body("stuck", python_container("pass", resources=gpu_resources(4)))
    body.spec.active_deadline_seconds = 1
    api.batch.create_namespaced_job(NAMESPACE, body)

    assert wait_until(lambda: job_condition(api, "stuck"), timeout=5) == "Failed"
    failed = api.batch.read_namespaced_job_status("stuck", NAMESPACE).status.conditions[-1]
    assert (failed.type, failed.reason) == ("Failed", "DeadlineExceeded")
    assert job_pods(api, "stuck") == []  # the pending pod was deleted


def test_the_upstream_plugins_calls_round_trip(api: Api, k8s_server: K8sTestServer):
    """The calls and objects of snakemake-executor-plugin-kubernetes 0.5.1, in its order."""
    run_namespace = str(uuid.uuid4())
    secret = k8s.V1Secret()
    secret.metadata = k8s.V1ObjectMeta()
    secret.metadata.name = run_namespace
    secret.type = "Opaque"
    secret.data = {"storage_token": base64.b64encode(b"s3cr3t").decode()}
    api.core.create_namespaced_secret(NAMESPACE, secret)

    jobid = f"snakejob-{uuid.uuid4()}"
    body = k8s.V1Job()  # no apiVersion/kind: the server takes them from the URL
    body.metadata = k8s.V1ObjectMeta(labels={"app": "snakemake"})
    body.metadata.name = jobid
    container = k8s.V1Container(name="snakemake")
    container.image = IMAGE
    container.command = ["/bin/sh"]
    container.args = ["-c", 'echo "$STORAGE_TOKEN" > token.txt && python -c "print(42)"']
    container.working_dir = "/workdir"
    container.volume_mounts = [k8s.V1VolumeMount(name="workdir", mount_path="/workdir")]
    pod_spec = k8s.V1PodSpec(containers=[container], node_selector={}, restart_policy="Never")
    body.spec = k8s.V1JobSpec(backoff_limit=0, template=k8s.V1PodTemplateSpec(spec=pod_spec))
    pod_spec.volumes = [k8s.V1Volume(name="workdir", empty_dir=k8s.V1EmptyDirVolumeSource())]
    variable = k8s.V1EnvVar(name="STORAGE_TOKEN")
    variable.value_from = k8s.V1EnvVarSource(
        secret_key_ref=k8s.V1SecretKeySelector(key="storage_token", name=run_namespace)
    )
    container.env = [variable]
    container.resources = k8s.V1ResourceRequirements(requests={"cpu": "950m", "memory": "1000M"})
    api.batch.create_namespaced_job(NAMESPACE, body)

    def finished():
        job = api.batch.read_namespaced_job_status(jobid, NAMESPACE)
        pods = api.core.list_namespaced_pod(NAMESPACE, label_selector=f"job-name={jobid}")
        assert len(pods.items) <= 1
        statuses = pods.items[0].status.container_statuses if pods.items else None
        snakemake = [c for c in statuses or [] if c.name == "snakemake"]
        terminated = snakemake[0].state.terminated if snakemake else None
        exit_code = terminated.exit_code if terminated else None
        done = job.status.succeeded or job.status.failed or exit_code is not None
        return (job.status.succeeded, exit_code) if done else None

    assert wait_until(finished) == (1, 0)
    (record,) = k8s_server.job_pod_records(jobid)
    # The Job's own labels stay on the Job; its pods get the controller's labels.
    assert "app" not in record.labels and record.labels["job-name"] == jobid
    assert record.resources["snakemake"]["requests"] == {"cpu": "950m", "memory": "1000M"}
    assert record.log("snakemake") == "42\n"
    assert (record.volume_dirs["workdir"] / "token.txt").read_text() == "s3cr3t\n"

    # safe_delete_job: delete the pods, then the job (Foreground); then the secret.
    options = k8s.V1DeleteOptions()
    for pod in api.core.list_namespaced_pod(NAMESPACE, label_selector=f"job-name={jobid}").items:
        api.core.delete_namespaced_pod(pod.metadata.name, NAMESPACE, body=options)
    api.batch.delete_namespaced_job(jobid, NAMESPACE, propagation_policy="Foreground", body=options)
    api.core.delete_namespaced_secret(run_namespace, NAMESPACE, body=options)
    wait_until(lambda: not api.batch.list_namespaced_job(NAMESPACE).items)
    assert api.core.list_namespaced_pod(NAMESPACE).items == []
    assert api.core.list_namespaced_secret(NAMESPACE).items == []


def test_selectors_kubeconfig_and_mount_translation(api: Api, k8s_server: K8sTestServer, tmp_path):
    show_mounts = (
        "import json, os; print(os.environ['K8S_TEST_NODE'], "
        "json.loads(os.environ['K8S_TEST_MOUNTS'])['/cache'] == os.path.realpath('.'))"
    )
    container = python_container(
        show_mounts,
        working_dir="/cache",
        volume_mounts=[k8s.V1VolumeMount(name="cache", mount_path="/cache")],
    )
    volume = k8s.V1Volume(name="cache", host_path=k8s.V1HostPathVolumeSource(path="/mnt/cache"))
    api.batch.create_namespaced_job(NAMESPACE, job_body("mounts", container, volumes=[volume]))
    api.batch.create_namespaced_job(NAMESPACE, job_body("other", python_container("pass")))
    for name in ("mounts", "other"):
        assert wait_until(lambda name=name: job_condition(api, name)) == "Complete"
    (record,) = k8s_server.job_pod_records("mounts")
    assert record.log() == "cpu-node True\n"
    assert record.volume_dirs["cache"] == k8s_server.node_dir("cpu-node") / "hostpath/mnt/cache"

    def names(**selectors) -> set[str]:
        pods = api.core.list_namespaced_pod(NAMESPACE, **selectors).items
        return {pod.metadata.labels["job-name"] for pod in pods}

    both = "job-name in (mounts, other),batch.kubernetes.io/job-name"
    assert names(label_selector=both) == {"mounts", "other"}
    assert names(label_selector="job-name notin (mounts),!no-such-label") == {"other"}
    assert names(label_selector="job-name!=other") == {"mounts"}
    assert names(field_selector=f"metadata.name={record.name}") == {"mounts"}
    assert names(field_selector="status.phase=Running") == set()

    kubeconfig = k8s_server.write_kubeconfig(tmp_path / "kubeconfig")
    client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    nodes = k8s.CoreV1Api(client).list_node().items
    assert [node.metadata.name for node in nodes] == ["cpu-node", "gpu-node"]
    assert nodes[1].status.allocatable["nvidia.com/gpu"] == "1"
    assert nodes[1].spec.taints[0].key == "nvidia.com/gpu"
    client.close()


def test_stop_kills_running_pod_processes(tmp_path):
    server = start_server(root=tmp_path / "cluster")
    client = k8s.ApiClient(server.client_configuration())
    try:
        record_pid = "import os, time; open('pid', 'w').write(str(os.getpid())); time.sleep(60)"
        k8s.BatchV1Api(client).create_namespaced_job(
            NAMESPACE, job_body("long", python_container(record_pid))
        )

        def written_pid() -> str | None:
            records = server.job_pod_records("long")
            pid_file = records[0].scratch_dir / "root" / "pid" if records else None
            return pid_file.read_text() if pid_file and pid_file.exists() else None

        pid = int(wait_until(written_pid))
    finally:
        client.close()
        server.stop()

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    assert wait_until(gone, timeout=5)
