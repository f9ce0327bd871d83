"""Snakemake executor for storyreel on GKE (`--executor storyreel`, flags `--storyreel-*`).

The upstream Kubernetes executor (snakemake-executor-plugin-kubernetes), extended rather than
rewritten: its Secret for the job environment, Job submission, status polling, failure logs
and cleanup all stay. What changes:

- the Job body upstream builds passes through pod.customise_job before it is sent: each rule's
  own image, GPUs with limits, GKE node selection, labels, non-root pods, pull secrets;
- a pod stuck Pending (unschedulable, image not pullable) fails its job after
  --storyreel-pending-timeout seconds instead of holding the run forever;
- job pods do not pip install the default storage plugin: the images carry it;
- a failed job's log is read from its pod's container as it is, not with previous=true.
"""

import dataclasses
import threading
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import snakemake_executor_plugin_kubernetes as upstream
from kubernetes.client import V1Job, V1Pod
from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo
from snakemake_interface_executor_plugins.jobs import JobExecutorInterface
from snakemake_interface_executor_plugins.settings import SharedFSUsage

from .pending import describe_stuck_pod, stuck_reason
from .pod import JobSpec, customise_job, job_image

__all__ = ["Executor", "ExecutorSettings", "JobSpec", "common_settings"]


def parse_switch(value: Any) -> bool:
    """A true/false setting from the command line or a profile (true/false, yes/no, 1/0)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise ValueError(f"expected true or false, not {value!r}")


# Snakemake turns a setting typed plain bool into a flag that can only switch it on, and a
# default-true one into a flag without the plugin's prefix. The switches here are therefore typed
# `bool | None` and take a value (--storyreel-local-ssd-selector false), read by parse_switch.
_SWITCH = {"type": parse_switch, "metavar": "true|false"}


@dataclasses.dataclass
class ExecutorSettings(upstream.ExecutorSettings):
    """Upstream's settings (namespace, service_account_name, cpu_scalar, persistent_volumes,
    omit_job_cleanup) plus storyreel's."""

    privileged: bool | None = field(
        default=False,
        metadata={"help": "Ignored: storyreel job pods never run privileged.", **_SWITCH},
    )
    image_pull_secrets: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Secrets in the namespace that job pods pull their images with "
            "(imagePullSecrets). Not needed for Artifact Registry in the cluster's own project.",
            "nargs": "+",
        },
    )
    pending_timeout: float = field(
        default=600.0,
        metadata={
            "help": "Seconds a job's pod may stay Pending unschedulable or unable to pull its "
            "image before the job is failed and deleted. Leave room for node autoscaling."
        },
    )
    local_ssd_selector: bool | None = field(
        default=True,
        metadata={
            "help": "Put group jobs and jobs with resource local_ssd=1 on nodes whose "
            "ephemeral storage is local SSD (nodeSelector "
            "cloud.google.com/gke-ephemeral-storage-local-ssd=true).",
            **_SWITCH,
        },
    )
    keep_failed_logs: bool | None = field(
        default=True,
        metadata={
            "help": "Save the events and description of a pod given up as stuck Pending to "
            ".snakemake/kubernetes-logs/<job>.log, next to the container logs of failed jobs.",
            **_SWITCH,
        },
    )


common_settings = dataclasses.replace(
    upstream.common_settings,
    # Upstream has every job pod `pip install` the default storage plugin at start. The images
    # carry snakemake-storage-plugin-gcs (pinned here too, so the main process matches), and pods
    # need no package index.
    auto_deploy_default_storage_provider=False,
    # Upstream declares that pods share no file system, and Snakemake then wants a default
    # storage before it even plans. The profile states it instead (shared-fs-usage: none, GCS
    # storage), so that without a bucket a dry run still shows the plan; a real run without
    # storage is refused in Executor.__post_init__.
    implies_no_shared_fs=False,
)

# The key in SubmittedJobInfo.aux for the time a job was submitted (time.monotonic()).
_SUBMITTED_AT = "storyreel_submitted_at"


class Executor(upstream.Executor):
    # The job being submitted by run_job, while upstream's run_job runs; see batchapi.
    _job_being_submitted: JobSpec | None = None
    _batch_client = None
    _core_client = None

    def __post_init__(self):
        storage = self.workflow.storage_settings
        if SharedFSUsage.INPUT_OUTPUT in storage.shared_fs_usage or not getattr(
            storage, "default_storage_provider", None
        ):
            raise WorkflowError(
                "The storyreel executor needs a default storage: job pods share no file system. "
                "Set STORYREEL_GCS_PREFIX=gs://BUCKET/PATH for profiles/gke, or pass "
                "--shared-fs-usage none --default-storage-provider gcs "
                "--default-storage-prefix gs://BUCKET/PATH."
            )
        super().__post_init__()
        self._submission_lock = threading.Lock()
        if self.workflow.executor_settings.privileged:
            self.logger.warning("--storyreel-privileged is ignored: job pods never run privileged.")
        self.logger.info(
            "Job pods run the image of their rule's container: directive (or resource "
            "container_image); the image above only serves rules without one. This run's Jobs: "
            f"kubectl get jobs -n {self.namespace} -l storyreel/run={self.run_id}"
        )

    @property
    def run_id(self) -> str:
        """Upstream names the run's Secret after a fresh UUID; the same id labels the run's Jobs
        and pods, so one selector finds all of a run's objects."""
        return self.run_namespace

    # Upstream's run_job builds the Job body inline and hands it straight to
    # self.batchapi.create_namespaced_job. While run_job submits a job, reading self.batchapi
    # gives a wrapper whose create_namespaced_job sends customise_job's copy of that body; every
    # other call, and every read outside a submission, reaches the plain client. A property
    # (rather than swapping the attribute for the call) keeps this true when upstream assigns a
    # fresh client mid-submission, as it does when it re-authenticates after a 401 and retries.
    @property
    def batchapi(self):
        job_spec = self._job_being_submitted
        if job_spec is None:
            return self._batch_client
        settings = self.workflow.executor_settings
        return _CustomisingBatchApi(
            self._batch_client, lambda body: customise_job(body, job_spec, settings)
        )

    @batchapi.setter
    def batchapi(self, client):
        self._batch_client = client

    # Upstream reads a failed job's log with previous=true, i.e. from the container's run before
    # a restart. Job pods never restart (restartPolicy Never, backoffLimit 0): the failed
    # container is the current one, and a real API server answers that request with 400 ("previous
    # terminated container ... not found"), which ends the whole run instead of failing the one
    # job. Reading self.kubeapi gives a wrapper that asks for the current container's log; as
    # with batchapi, a property keeps that true for the client upstream assigns when it
    # re-authenticates.
    @property
    def kubeapi(self):
        if self._core_client is None:
            return None
        return _CurrentLogCoreApi(self._core_client)

    @kubeapi.setter
    def kubeapi(self, client):
        self._core_client = client

    def run_job(self, job: JobExecutorInterface):
        job_spec = self.job_spec(job)  # before upstream's run_job: a bad group image fails early
        # Snakemake submits from its one scheduler thread, one job after the other; the status
        # thread never creates jobs, and its reads pass through the wrapper untouched. The lock
        # only makes a concurrent submission, should one ever come, wait its turn instead of
        # sending its body with this job's spec.
        with self._submission_lock:
            self._job_being_submitted = job_spec
            try:
                super().run_job(job)
            finally:
                self._job_being_submitted = None

    def job_spec(self, job: JobExecutorInterface) -> JobSpec:
        """What customise_job needs to know about a Snakemake job or group job."""
        if job.is_group():
            members = list(job.jobs)
            name = str(job.groupid)
        else:
            members = [job]
            name = job.rule.name
        resources = dict(job.resources)
        stories = {getattr(member.wildcards, "story", None) for member in members} - {None}
        return JobSpec(
            name=name,
            rules=tuple(sorted({member.rule.name for member in members})),
            run_id=self.run_id,
            story=stories.pop() if len(stories) == 1 else None,
            resources=resources,
            image=job_image(
                name,
                [(member.rule.name, member.container_img_url) for member in members],
                resources,
            ),
            is_group=job.is_group(),
        )

    def report_job_submission(self, job_info: SubmittedJobInfo, register_job: bool = True):
        job_info.aux = {**(job_info.aux or {}), _SUBMITTED_AT: time.monotonic()}
        super().report_job_submission(job_info, register_job=register_job)

    async def check_active_jobs(
        self, active_jobs: list[SubmittedJobInfo]
    ) -> AsyncGenerator[SubmittedJobInfo, None]:
        """Fail the jobs whose pod is stuck Pending; hand all others to upstream's check."""
        timeout = self.workflow.executor_settings.pending_timeout
        not_stuck = []
        for job_info in active_jobs:
            # A pod cannot have been Pending for longer than its job exists: younger jobs need
            # no pod lookup (by this process's clock, so no skew with the API server's).
            submitted_at = (job_info.aux or {}).get(_SUBMITTED_AT)
            if submitted_at is not None and time.monotonic() - submitted_at <= timeout:
                not_stuck.append(job_info)
                continue
            async with self.status_rate_limiter:
                stuck = self._stuck_pod(job_info.external_jobid, timeout)
            if stuck is None:
                not_stuck.append(job_info)
            else:
                self._fail_stuck_job(job_info, *stuck)
        async for job_info in super().check_active_jobs(not_stuck):
            yield job_info

    def _stuck_pod(self, jobid: str, timeout: float) -> tuple[V1Pod, str] | None:
        try:
            pods = self._kubernetes_retry(
                lambda: self.kubeapi.list_namespaced_pod(
                    namespace=self.namespace, label_selector=f"job-name={jobid}"
                )
            )
        except WorkflowError as error:
            # Upstream's check right after reads the same pods and reports what is wrong.
            self.logger.warning(f"Could not read the pods of job {jobid}: {error}")
            return None
        now = datetime.now(UTC)
        for pod in pods.items:
            reason = stuck_reason(pod, now, timeout)
            if reason is not None:
                return pod, reason
        return None

    def _fail_stuck_job(self, job_info: SubmittedJobInfo, pod: V1Pod, reason: str) -> None:
        jobid = job_info.external_jobid
        message = f"Kubernetes job {jobid} never started: pod {pod.metadata.name} {reason}."
        aux_logs = []
        if self.workflow.executor_settings.keep_failed_logs:
            aux_logs.append(str(self._save_stuck_pod(jobid, pod, reason)))
        # Deleted even with --storyreel-omit-job-cleanup: a stuck pod left in place could still
        # start once a node or the image turns up, and run a job Snakemake has given up on,
        # perhaps next to its retry.
        try:
            self._kubernetes_retry(lambda: self.safe_delete_job(jobid, ignore_not_found=True))
        except WorkflowError as error:
            self.logger.error(
                f"Could not delete stuck job {jobid}: {error}. Delete it with: "
                f"kubectl delete job {jobid} -n {self.namespace}"
            )
        self.logger.error(message)
        self.report_job_error(job_info, msg=message, aux_logs=aux_logs)

    def _save_stuck_pod(self, jobid: str, pod: V1Pod, reason: str) -> Path:
        events, events_error = [], None
        try:
            events = self._kubernetes_retry(
                lambda: self.kubeapi.list_namespaced_event(
                    namespace=self.namespace,
                    field_selector=f"involvedObject.name={pod.metadata.name}",
                )
            ).items
        except WorkflowError as error:
            events_error = str(error)
        path = self.log_path / f"{jobid}.log"
        path.write_text(describe_stuck_pod(pod, reason, events, events_error), encoding="utf-8")
        return path


class _CustomisingBatchApi:
    """A BatchV1Api whose create_namespaced_job sends customise(body) instead of body; all
    other attributes are the wrapped client's."""

    def __init__(self, client, customise: Callable[[V1Job], V1Job]):
        self._client = client
        self._customise = customise

    def create_namespaced_job(self, namespace, body, **kwargs):
        return self._client.create_namespaced_job(namespace, self._customise(body), **kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


class _CurrentLogCoreApi:
    """A CoreV1Api whose read_namespaced_pod_log reads the current container's log whatever
    `previous` asks for; all other attributes are the wrapped client's."""

    def __init__(self, client):
        self._client = client

    def read_namespaced_pod_log(self, name, namespace, **kwargs):
        kwargs.pop("previous", None)
        return self._client.read_namespaced_pod_log(name, namespace, **kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)
