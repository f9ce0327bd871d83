"""What storyreel changes in the Job body that the upstream Kubernetes executor builds.

Everything here is pure (no API calls), so it is tested on plain client objects.
"""

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client import (
    V1Capabilities,
    V1Job,
    V1LocalObjectReference,
    V1ObjectMeta,
    V1PodSecurityContext,
    V1ResourceRequirements,
    V1SeccompProfile,
    V1SecurityContext,
    V1Toleration,
)
from snakemake_interface_common.exceptions import WorkflowError

# The numeric user and group every storyreel image runs as (containers/base.Dockerfile).
IMAGE_UID = 10001
IMAGE_GID = 10001

LABEL_APP = "app.kubernetes.io/name"
LABEL_RULE = "storyreel/rule"
LABEL_STORY = "storyreel/story"
LABEL_RUN = "storyreel/run"
APP_NAME = "storyreel"

NVIDIA_GPU = "nvidia.com/gpu"
# Upstream requests one of these (and tolerates its taint) for any job that names a gpu
# resource, even gpu=0; a job without GPUs must carry none of them.
GPU_RESOURCE_NAMES = (NVIDIA_GPU, "amd.com/gpu")
# GKE taints its GPU nodes with nvidia.com/gpu=present:NoSchedule and labels them with the
# accelerator model.
GPU_TOLERATION = V1Toleration(
    key=NVIDIA_GPU, operator="Equal", value="present", effect="NoSchedule"
)
ACCELERATOR_SELECTOR = "cloud.google.com/gke-accelerator"
# Nodes whose emptyDir volumes and writable layers live on local SSD
# (node pools created with --ephemeral-storage-local-ssd).
LOCAL_SSD_SELECTOR = "cloud.google.com/gke-ephemeral-storage-local-ssd"

_LABEL_VALUE_MAX = 63
_NOT_LABEL_CHARACTERS = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class JobSpec:
    """What customise_job needs to know about one Snakemake job, single or group."""

    name: str  # the rule's name, or the group's id for a group job
    rules: tuple[str, ...]
    run_id: str
    story: str | None = None  # the {story} wildcard, when the job has one
    resources: Mapping[str, Any] = field(default_factory=dict)
    image: str | None = None  # None: the pod keeps the image upstream set (--container-image)
    is_group: bool = False


def job_image(
    name: str, rule_images: Iterable[tuple[str, str | None]], resources: Mapping[str, Any]
) -> str | None:
    """The image a job's pod runs.

    The resource container_image wins; otherwise the rules' `container:` directive, given as
    (rule, image or None) pairs, one for each rule of the job. A group runs in one pod, so its
    rules must name the same image (or all none). None means neither is set, and the pod keeps
    the executor's --container-image.
    """
    override = resources.get("container_image")
    if override:
        return str(override)
    distinct_pairs = sorted(set(rule_images), key=lambda pair: (pair[0], pair[1] or ""))
    images = {image for _, image in distinct_pairs}
    if len(images) > 1:
        listing = ", ".join(f"{rule}: {image or 'no container:'}" for rule, image in distinct_pairs)
        raise WorkflowError(
            f"The rules of group job {name} run in one pod, so in one image, but their "
            f"container: directives differ ({listing}). Give them the same container:, or "
            "give each of them the same resource container_image."
        )
    return images.pop() if images else None


def label_value(text: str) -> str:
    """text as a valid Kubernetes label value: at most 63 letters, digits, '-', '_' or '.',
    beginning and ending with a letter or digit (anything else becomes '-')."""
    return _NOT_LABEL_CHARACTERS.sub("-", text)[:_LABEL_VALUE_MAX].strip("-_.")


def customise_job(body: V1Job, job_spec: JobSpec, settings: Any) -> V1Job:
    """A copy of upstream's Job body with storyreel's image, GPUs, placement, labels and
    security settings; the body passed in is left as it is.

    settings is the executor's ExecutorSettings (image_pull_secrets, service_account_name,
    local_ssd_selector).
    """
    job = copy.deepcopy(body)
    # Upstream leaves these out (the typed endpoint implies them); set, the body is a complete
    # manifest that validates and reads on its own.
    job.api_version = "batch/v1"
    job.kind = "Job"
    pod_spec = job.spec.template.spec
    resources = job_spec.resources

    for container in pod_spec.containers:
        if job_spec.image:
            container.image = job_spec.image
        if not container.image:
            raise WorkflowError(
                f"No container image for {job_spec.name}: give the rule a container: "
                "directive or the executor a --container-image."
            )

    node_selector = dict(pod_spec.node_selector or {})
    _set_gpus(pod_spec, node_selector, resources)
    if settings.local_ssd_selector and (
        job_spec.is_group or _whole_number(resources, "local_ssd") > 0
    ):
        node_selector[LOCAL_SSD_SELECTOR] = "true"
    pod_spec.node_selector = node_selector or None

    labels = {
        LABEL_APP: APP_NAME,
        LABEL_RULE: label_value(job_spec.name),
        LABEL_RUN: label_value(job_spec.run_id),
    }
    if job_spec.story is not None:
        labels[LABEL_STORY] = label_value(job_spec.story)
    job.metadata = job.metadata or V1ObjectMeta()
    job.metadata.labels = {**(job.metadata.labels or {}), **labels}
    template = job.spec.template
    template.metadata = template.metadata or V1ObjectMeta()
    template.metadata.labels = {**(template.metadata.labels or {}), **labels}

    if settings.image_pull_secrets:
        pod_spec.image_pull_secrets = [
            V1LocalObjectReference(name=name) for name in settings.image_pull_secrets
        ]
    if settings.service_account_name:
        pod_spec.service_account_name = settings.service_account_name
    _restrict(pod_spec)
    return job


def _set_gpus(pod_spec, node_selector: dict[str, str], resources: Mapping[str, Any]) -> None:
    """Exactly the resource gpu's count of NVIDIA GPUs of model gpu_model, or no GPU at all."""
    # Start from no GPU: upstream adds a request and a toleration for any job naming gpu,
    # and limits only with scale=0, which Kubernetes rejects for GPUs (request must equal limit).
    for container in pod_spec.containers:
        container.resources = container.resources or V1ResourceRequirements()
        for attribute in ("requests", "limits"):
            quantities = {
                name: quantity
                for name, quantity in (getattr(container.resources, attribute) or {}).items()
                if name not in GPU_RESOURCE_NAMES
            }
            setattr(container.resources, attribute, quantities or None)
    pod_spec.tolerations = [
        toleration
        for toleration in pod_spec.tolerations or []
        if toleration.key not in GPU_RESOURCE_NAMES
    ] or None
    node_selector.pop(ACCELERATOR_SELECTOR, None)

    gpus = _whole_number(resources, "gpu")
    if gpus == 0:
        return
    manufacturer = str(resources.get("gpu_manufacturer", "nvidia")).lower()
    if manufacturer != "nvidia":
        raise WorkflowError(
            f"gpu_manufacturer={manufacturer!r}: GKE offers NVIDIA GPUs only (gpu_manufacturer="
            "'nvidia', gpu_model e.g. 'nvidia-l4')."
        )
    # One container, upstream's: its Snakemake runs every rule of the job.
    requirements = pod_spec.containers[0].resources
    requirements.requests = {**(requirements.requests or {}), NVIDIA_GPU: str(gpus)}
    requirements.limits = {**(requirements.limits or {}), NVIDIA_GPU: str(gpus)}
    pod_spec.tolerations = [*(pod_spec.tolerations or []), copy.deepcopy(GPU_TOLERATION)]
    # Without a model the pod may land on any GPU node pool.
    if resources.get("gpu_model"):
        node_selector[ACCELERATOR_SELECTOR] = str(resources["gpu_model"])


def _restrict(pod_spec) -> None:
    """Non-root as the images' user, no privilege, no capabilities, no service account token:
    what Pod Security's "restricted" level asks for."""
    pod_spec.automount_service_account_token = False
    pod_spec.security_context = V1PodSecurityContext(
        run_as_non_root=True,
        run_as_user=IMAGE_UID,
        run_as_group=IMAGE_GID,
        # Volumes are made writable for the images' group.
        fs_group=IMAGE_GID,
        seccomp_profile=V1SeccompProfile(type="RuntimeDefault"),
    )
    # Replaced, not edited: upstream sets privileged=True for Apptainer jobs and for any value of
    # its privileged setting, "false" included.
    for container in [*pod_spec.containers, *(pod_spec.init_containers or [])]:
        container.security_context = V1SecurityContext(
            run_as_non_root=True,
            run_as_user=IMAGE_UID,
            run_as_group=IMAGE_GID,
            allow_privilege_escalation=False,
            capabilities=V1Capabilities(drop=["ALL"]),
            seccomp_profile=V1SeccompProfile(type="RuntimeDefault"),
        )


def _whole_number(resources: Mapping[str, Any], name: str) -> int:
    value = resources.get(name, 0)
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = -1
    if number < 0 or str(number) != str(value).strip():
        raise WorkflowError(f"Resource {name} must be a whole number of at least 0, not {value!r}.")
    return number
