"""A Kubernetes API server for tests: the real REST/JSON protocol on 127.0.0.1, pods as processes.

Code that drives Kubernetes through the official ``kubernetes`` Python client (or anything else
that speaks the REST API) can be tested here without a cluster::

    with start_server([SimulatedNode("node-1", cpu="4", memory="16Gi")]) as server:
        client = kubernetes.client.ApiClient(server.client_configuration())
        kubernetes.client.BatchV1Api(client).create_namespaced_job("default", job)
        wait_until(lambda: server.job_pod_records("render"))

Besides the API, a test can look at what the cluster did: ``pod_records`` / ``pod_record`` /
``job_pod_records`` (every pod with its image, resources, node, labels, tolerations, volumes,
host directories, exit codes and logs, kept after deletion), ``get_object`` / ``list_objects``,
``claim_dir`` and ``node_dir``; and change it: ``add_node``, ``set_image_pullable``.
``write_kubeconfig`` serves code that calls ``kubernetes.config.load_kube_config``. The pytest
fixture ``k8s_server`` (import ``k8s_server_fixture``) gives a server with ``DEFAULT_NODES``.

The server plays the parts of a cluster that such code relies on; a real API server has no
controllers of its own, so each part is simulated here:

* API server: namespaced Secrets, ConfigMaps, PersistentVolumeClaims, Pods and batch/v1 Jobs
  (create, get, list with ``labelSelector``/``fieldSelector``, delete), Nodes (list, get), pod
  logs (``container``, ``previous``, ``tailLines``, ``limitBytes``), the ``status`` subresource of
  pods and jobs, and ``/version``. Failures are ``Status`` objects shaped like the real ones:
  404 NotFound, 409 AlreadyExists, 422 Invalid (with ``details.causes``), 400 BadRequest, 405.
* Admission: every created object is checked against the official OpenAPI schema of Kubernetes
  1.33 with kubernetes-validate in strict mode (unknown fields are errors), defaulted as the API
  server does (a Job's selector and pod labels, a container's requests copied from its limits,
  ``imagePullPolicy``, ...) and then checked with a subset of the API server's semantic rules:
  names, quantities, requests against limits, extended resources such as ``nvidia.com/gpu``
  needing an equal limit, volume mounts naming a volume, a Job template's ``restartPolicy``,
  claims' access modes and size, Secret data. Failures answer 422 Invalid, naming the field.
* Job controller: creates the pods (``<job>-<5 chars>``, labels ``job-name``,
  ``controller-uid`` and their ``batch.kubernetes.io/`` forms, an owner reference), replaces
  failed ones up to ``backoffLimit``, honours ``parallelism``/``completions``,
  ``activeDeadlineSeconds`` and ``ttlSecondsAfterFinished``, and keeps ``status`` like Kubernetes
  1.33: ``startTime``, ``active``/``ready``/``succeeded``/``failed``/``terminating`` and
  the conditions ``SuccessCriteriaMet`` + ``Complete`` or ``FailureTarget`` + ``Failed``.
* Garbage collector: deleting a Job without ``propagationPolicy`` orphans its pods (the batch/v1
  default, as on a real cluster); ``Orphan`` does the same, ``Background`` deletes the job then its
  pods, ``Foreground`` deletes the pods first and the job once they are gone. A claim in use by a
  running pod stays (``kubernetes.io/pvc-protection``) until the pod ends.
* Scheduler: over the ``SimulatedNode`` list: ``nodeName`` pins, cordoned nodes, taints against
  tolerations (NoSchedule, NoExecute), ``nodeSelector`` and required node affinity (In, NotIn,
  Exists, DoesNotExist, Gt, Lt; ``matchFields`` on ``metadata.name``), requests against free
  allocatable capacity (cpu, memory, ephemeral-storage, ``nvidia.com/gpu`` and other extended
  resources, pod count). Claims bind on first use (WaitForFirstConsumer): a ReadWriteOnce claim is
  bound to the node of the first pod that mounts it and pulls every later pod that mounts it to that
  node. A pod that fits nowhere stays ``Pending`` with ``PodScheduled=False``, reason
  ``Unschedulable`` and the scheduler's message, e.g. ``0/2 nodes are available: 1 Insufficient
  nvidia.com/gpu, 1 node(s) had untolerated taint {nvidia.com/gpu: present}. preemption: ...``;
  it is retried whenever capacity frees up.
* Kubelet: images named unpullable leave the container waiting in ``ErrImagePull`` then
  ``ImagePullBackOff``; a missing Secret or key leaves it in ``CreateContainerConfigError``. A
  started pod runs each container's ``command`` + ``args`` (after ``$(VAR)`` expansion) as a local
  process from an argument list, with no shell unless the command is one (``/bin/sh -c ...``);
  init containers run first, one by one. Its environment holds only the container's ``env`` and
  ``envFrom`` (values, Secret and ConfigMap keys, ``fieldRef``, ``resourceFieldRef``), the image's
  env (``ImageConfig``), the server's ``pod_env`` and a few basics (PATH with this Python's
  directory first, HOME, TMPDIR, HOSTNAME). Its stdout and stderr together are the container log.
  Phases go Pending -> Running -> Succeeded/Failed with container states (``running``,
  ``terminated`` with ``exitCode`` and reason ``Completed``/``Error``/``StartError``), restarts
  per ``restartPolicy`` (``lastState``, ``restartCount``, ``CrashLoopBackOff``), conditions and
  ``qosClass``. Deleting a running pod sends SIGTERM to its processes, then SIGKILL after the grace
  period.

File system: a process cannot see container paths, so each pod gets a scratch directory::

    <root>/pods/<namespace>/<pod>-<uid8>/root/       the container's view: every volume mount's
                                                     mountPath is a symlink to the volume's dir
    <root>/pods/<namespace>/<pod>-<uid8>/volumes/    emptyDir, secret, configMap and other volumes
    <root>/pods/<namespace>/<pod>-<uid8>/logs/       <container>-<restart>.log
    <node local dir>/pvc/<namespace>/<claim>/        ReadWriteOnce claims: the node's LocalSSD
    <node local dir>/hostpath/<path>/                hostPath volumes
    <root>/shared-volumes/<namespace>/<claim>/       ReadWriteMany/ReadOnlyMany claims

The process starts in ``<pod root>/<workingDir>`` (the image's working dir or the pod root when
unset; through the symlinks, a workingDir under a mount is inside the volume). It finds its mounts
through the environment: ``K8S_TEST_ROOT`` (the pod root), ``K8S_TEST_MOUNTS`` (a JSON object,
mountPath -> host directory) and ``K8S_TEST_NODE`` (the node's name).

Limits, on purpose:

* No container runtime: images are never pulled, the process runs on the host with the host's
  tools (``python`` is the Python running the server), and absolute container paths in a command
  (``cd /workdir``) are not rewritten: use relative paths, the working directory or
  ``K8S_TEST_MOUNTS``. The containers of a pod share one root, so two mounts at one path in two
  containers meet at the first one's volume. Nothing isolates a pod's files, network, users or
  resource use; limits are not enforced (no OOMKilled), ``securityContext``, probes, ports and
  sidecar containers are ignored, and a claim's size is not checked against any disk.
* No watch, patch, update or delete-collection requests; no namespaces objects (any namespace name
  is accepted), no authentication or authorization, no admission plugins (no default tolerations,
  service account, LimitRanges or quotas), no events.
* Validation is stricter in one way: the real server drops unknown fields unless asked for
  ``fieldValidation=Strict`` and answers type and quantity errors 400 while decoding; here all of
  them answer 422 Invalid. kubernetes-validate reports one schema error at a time.
* The job controller retries a failed pod at once (no exponential back-off), treats Indexed jobs
  like NonIndexed ones and ignores ``podFailurePolicy`` and ``successPolicy``; restart back-off and
  termination grace are capped (``restart_backoff_s``, ``max_termination_grace_s``) to keep tests
  fast; the scheduler neither scores beyond "least allocated" nor preempts.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import hashlib
import itertools
import json
import math
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from aiohttp import web
from threaded_http_server import ThreadedHttpServer

__all__ = [
    "DEFAULT_NODES",
    "ImageConfig",
    "K8sTestServer",
    "KUBERNETES_VERSION",
    "PodRecord",
    "SimulatedNode",
    "k8s_server_fixture",
    "parse_quantity",
    "start_server",
    "wait_until",
]

KUBERNETES_VERSION = "1.33.0"
TERMINAL_PHASES = ("Succeeded", "Failed")
BACKOFF_LIMIT_MESSAGE = "Job has reached the specified backoff limit"
DEADLINE_MESSAGE = "Job was active longer than specified deadline"
COMPLETIONS_MESSAGE = "Reached expected number of succeeded pods"
# Room for a Secret of the maximum size (1 MiB) once base64-encoded, plus the rest of the body.
MAX_REQUEST_BYTES = 8 * 1024 * 1024
TICK_SECONDS = 0.05  # how often timers (image back-off, deadlines, TTLs) are looked at


# --------------------------------------------------------------------------------------------
# Configuration the tests give


@dataclass
class SimulatedNode:
    """A node of the simulated cluster. ``local_dir`` stands in for its LocalSSD."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)
    # {"key": ..., "value": ..., "effect": ...} or kubectl's "key=value:Effect"
    taints: list[dict[str, str] | str] = field(default_factory=list)
    cpu: str = "4"
    memory: str = "16Gi"
    gpus: int = 0  # nvidia.com/gpu
    ephemeral_storage: str = "100Gi"
    max_pods: int = 110
    extended_resources: dict[str, str] = field(default_factory=dict)  # e.g. {"amd.com/gpu": "2"}
    local_dir: Path | None = None  # default: <server root>/nodes/<name>
    unschedulable: bool = False  # cordoned

    def allocatable(self) -> dict[str, str]:
        resources = {
            "cpu": self.cpu,
            "memory": self.memory,
            "ephemeral-storage": self.ephemeral_storage,
            "pods": str(self.max_pods),
        }
        if self.gpus:
            resources["nvidia.com/gpu"] = str(self.gpus)
        resources.update(self.extended_resources)
        return resources

    def taint_list(self) -> list[dict[str, str]]:
        taints = []
        for taint in self.taints:
            if isinstance(taint, str):
                key_value, _, effect = taint.partition(":")
                key, _, value = key_value.partition("=")
                taint = {"key": key, "value": value, "effect": effect}
            taints.append({name: text for name, text in taint.items() if text})
        return taints


@dataclass(frozen=True)
class ImageConfig:
    """What the server knows of an image instead of pulling it: ENTRYPOINT, CMD, ENV, WORKDIR."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    working_dir: str | None = None


DEFAULT_NODES = (
    SimulatedNode(
        "cpu-node",
        labels={
            "node.kubernetes.io/instance-type": "e2-standard-4",
            "cloud.google.com/gke-nodepool": "cpu-pool",
        },
        cpu="4",
        memory="16Gi",
    ),
    SimulatedNode(
        "gpu-node",
        labels={
            "node.kubernetes.io/instance-type": "g2-standard-8",
            "cloud.google.com/gke-nodepool": "gpu-pool",
            "cloud.google.com/gke-accelerator": "nvidia-l4",
        },
        taints=["nvidia.com/gpu=present:NoSchedule"],
        cpu="8",
        memory="32Gi",
        gpus=1,
    ),
)


# --------------------------------------------------------------------------------------------
# Small helpers: time, quantities, selectors


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_QUANTITY = re.compile(
    r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:[eE]([+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E))?$"
)
_QUANTITY_FACTORS = {
    None: Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
_QUANTITY_HELP = (
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
)


def parse_quantity(value: str | int | float) -> Decimal:
    """A Kubernetes quantity ("950m", "2Gi", "1e3", 4) as a number of base units."""
    if isinstance(value, bool):
        raise ValueError(f"not a quantity: {value!r}")
    if isinstance(value, int | float):
        return Decimal(str(value))
    match = _QUANTITY.match(value.strip())
    if not match:
        raise ValueError(f"not a quantity: {value!r}")
    number, exponent, suffix = match.groups()
    if exponent is not None:
        return Decimal(number) * Decimal(10) ** int(exponent)
    return Decimal(number) * _QUANTITY_FACTORS[suffix]


_LABEL_TERM = re.compile(
    r"^(?:!(?P<absent>[^\s!=,()]+)"
    r"|(?P<key>[^\s!=,()]+)(?:\s*(?P<op>==|=|!=)\s*(?P<value>[^\s!=,()]*)"
    r"|\s+(?P<set_op>in|notin)\s*\((?P<values>[^()]*)\))?)$"
)


def _parse_label_selector(selector: str) -> list[tuple[str, str, list[str]]]:
    """``a=b,c!=d,e in (f,g),!h`` as (key, operator, values) terms."""
    terms = []
    for text in re.split(r",(?![^()]*\))", selector):
        text = text.strip()
        if not text:
            continue
        match = _LABEL_TERM.match(text)
        if not match:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {text!r}")
        if match["absent"]:
            terms.append((match["absent"], "!", []))
        elif match["op"]:
            terms.append((match["key"], "!=" if match["op"] == "!=" else "=", [match["value"]]))
        elif match["set_op"]:
            values = [value.strip() for value in match["values"].split(",") if value.strip()]
            terms.append((match["key"], match["set_op"], values))
        else:
            terms.append((match["key"], "exists", []))
    return terms


def _labels_match(terms: list[tuple[str, str, list[str]]], labels: Mapping[str, str]) -> bool:
    return all(_label_term_matches(*term, labels) for term in terms)


def _label_term_matches(
    key: str, operator: str, values: list[str], labels: Mapping[str, str]
) -> bool:
    present, value = key in labels, labels.get(key)
    if operator in ("=", "in"):
        return present and value in values
    if operator in ("!=", "notin"):
        return not present or value not in values
    return present if operator == "exists" else not present  # "exists" or "!"


def _query_flag(value: str | None) -> bool:
    """A boolean query parameter as the API server reads it (Go's strconv.ParseBool)."""
    return value in ("1", "t", "T", "true", "TRUE", "True")


def _field_value(obj: Mapping[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


_VARIABLE_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def _expand(text: str, variables: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known names are replaced, ``$$`` is an escaped ``$``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return variables.get(match.group(1), match.group(0))

    return _VARIABLE_REFERENCE.sub(replace, text)


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll until ``predicate()`` is truthy and return it; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(interval)


# --------------------------------------------------------------------------------------------
# API kinds and errors


@dataclass(frozen=True)
class _Kind:
    kind: str
    plural: str
    group: str = ""
    namespaced: bool = True
    field_labels: tuple[str, ...] = ()  # fieldSelector keys beyond metadata.name/namespace

    @property
    def api_version(self) -> str:
        return f"{self.group}/v1" if self.group else "v1"

    @property
    def resource(self) -> str:
        """How messages name the resource: ``jobs.batch``, ``pods``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind

    def details(self, name: str, **extra: Any) -> dict[str, Any]:
        details: dict[str, Any] = {"name": name}
        if self.group:
            details["group"] = self.group
        details["kind"] = self.plural
        details.update(extra)
        return details


SECRETS = _Kind("Secret", "secrets", field_labels=("type",))
CONFIG_MAPS = _Kind("ConfigMap", "configmaps")
CLAIMS = _Kind("PersistentVolumeClaim", "persistentvolumeclaims")
PODS = _Kind(
    "Pod",
    "pods",
    field_labels=(
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "status.phase",
        "status.podIP",
    ),
)
JOBS = _Kind("Job", "jobs", group="batch")
NODES = _Kind("Node", "nodes", namespaced=False, field_labels=("spec.unschedulable",))
_KINDS = {
    (kind.group, kind.plural): kind for kind in (SECRETS, CONFIG_MAPS, CLAIMS, PODS, JOBS, NODES)
}


def _kind_named(plural: str) -> _Kind:
    for kind in _KINDS.values():
        if kind.plural == plural:
            return kind
    known = ", ".join(kind.plural for kind in _KINDS.values())
    raise KeyError(f"the test server has no {plural!r}; it serves {known}")


class ApiError(Exception):
    """An answer other than success, sent as a ``Status`` object like the real API's."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details:
            status["details"] = self.details
        status["code"] = self.code
        return status


def _not_found(kind: _Kind, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{kind.resource} "{name}" not found', kind.details(name))


def _bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


_NO_VALUE = object()
_CAUSE_REASONS = {
    "Required value": "FieldValueRequired",
    "Invalid value": "FieldValueInvalid",
    "Not found": "FieldValueNotFound",
    "Unsupported value": "FieldValueNotSupported",
    "Duplicate value": "FieldValueDuplicate",
    "Too long": "FieldValueTooLong",
}


@dataclass
class _FieldError:
    """One problem with one field, worded as the API server's field.Error."""

    field: str
    type: str  # a key of _CAUSE_REASONS
    detail: str = ""
    value: Any = _NO_VALUE

    def body(self) -> str:
        text = self.type
        if self.value is not _NO_VALUE:
            text += f": {json.dumps(self.value)}"
        if self.detail:
            text += f": {self.detail}"
        return text

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"


def _invalid(kind: _Kind, name: str, errors: list[_FieldError]) -> ApiError:
    summary = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(map(str, errors)) + "]"
    details: dict[str, Any] = {"name": name}
    if kind.group:
        details["group"] = kind.group
    details["kind"] = kind.kind
    details["causes"] = [
        {"reason": _CAUSE_REASONS[error.type], "message": error.body(), "field": error.field}
        for error in errors
    ]
    message = f'{kind.qualified_kind} "{name}" is invalid: {summary}'
    return ApiError(422, "Invalid", message, details)


# --------------------------------------------------------------------------------------------
# Semantic validation and defaulting (after the schema check)

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_SUBDOMAIN_HELP = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
    "for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_LABEL_HELP = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used "
    "for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
_CONFIG_KEY_HELP = (
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. "
    "'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"
)
MAX_SECRET_BYTES = 1024 * 1024


def _overcommittable(resource: str) -> bool:
    """Native resources (cpu, memory, ...) may be requested below their limit; others may not."""
    domain = resource.split("/")[0] if "/" in resource else ""
    native = not domain or domain == "kubernetes.io" or domain.endswith(".kubernetes.io")
    return native and not resource.startswith("hugepages-")


def _check_resources(resources: Mapping[str, Any], path: str, errors: list[_FieldError]) -> None:
    limits = resources.get("limits") or {}
    requests = resources.get("requests") or {}
    parsed: dict[tuple[str, str], Decimal] = {}
    for section, values in (("limits", limits), ("requests", requests)):
        for name, value in values.items():
            where = f"{path}.{section}[{name}]"
            try:
                amount = parse_quantity(value)
            except ValueError:
                errors.append(_FieldError(where, "Invalid value", _QUANTITY_HELP, value))
                continue
            if amount < 0:
                detail = "must be greater than or equal to 0"
                errors.append(_FieldError(where, "Invalid value", detail, str(value)))
            parsed[section, name] = amount
    for name, value in requests.items():
        if ("requests", name) not in parsed:
            continue
        request = parsed["requests", name]
        if name in limits:
            if ("limits", name) not in parsed:
                continue
            limit = parsed["limits", name]
            if not _overcommittable(name) and request != limit:
                detail = f"must be equal to {name} limit of {limits[name]}"
                errors.append(_FieldError(f"{path}.requests", "Invalid value", detail, str(value)))
            elif request > limit:
                detail = f"must be less than or equal to {name} limit of {limits[name]}"
                errors.append(_FieldError(f"{path}.requests", "Invalid value", detail, str(value)))
        elif not _overcommittable(name):
            detail = "Limit must be set for non overcommitable resources"
            errors.append(_FieldError(f"{path}.limits", "Required value", detail))


def _check_pod_spec(
    spec: Mapping[str, Any], path: str, errors: list[_FieldError], *, in_job: bool
) -> None:
    if not spec.get("containers"):
        errors.append(_FieldError(f"{path}.containers", "Required value"))
    volume_names: set[str] = set()
    for index, volume in enumerate(spec.get("volumes") or []):
        name = volume.get("name", "")
        if name in volume_names:
            where = f"{path}.volumes[{index}].name"
            errors.append(_FieldError(where, "Duplicate value", value=name))
        volume_names.add(name)
    container_names: set[str] = set()
    for group in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(group) or []):
            where = f"{path}.{group}[{index}]"
            name = container.get("name", "")
            if not _DNS_LABEL.match(name) or len(name) > 63:
                errors.append(_FieldError(f"{where}.name", "Invalid value", _LABEL_HELP, name))
            elif name in container_names:
                errors.append(_FieldError(f"{where}.name", "Duplicate value", value=name))
            container_names.add(name)
            if not container.get("image"):
                errors.append(_FieldError(f"{where}.image", "Required value"))
            for mount_index, mount in enumerate(container.get("volumeMounts") or []):
                if mount.get("name") not in volume_names:
                    where_mount = f"{where}.volumeMounts[{mount_index}].name"
                    errors.append(_FieldError(where_mount, "Not found", value=mount.get("name")))
            _check_resources(container.get("resources") or {}, f"{where}.resources", errors)
    policy = spec.get("restartPolicy")
    if in_job and policy not in ("OnFailure", "Never"):
        detail = 'supported values: "OnFailure", "Never"'
        errors.append(_FieldError(f"{path}.restartPolicy", "Unsupported value", detail, policy))


def _image_tag(image: str) -> str:
    if "@" in image:
        return ""
    last = image.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else "latest"


def _default_pod_spec(spec: dict[str, Any]) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("terminationGracePeriodSeconds", 30)
    for group in ("initContainers", "containers"):
        for container in spec.get(group) or []:
            container.setdefault("terminationMessagePath", "/dev/termination-log")
            container.setdefault("terminationMessagePolicy", "File")
            tag = _image_tag(container.get("image") or "")
            container.setdefault("imagePullPolicy", "Always" if tag == "latest" else "IfNotPresent")
            resources = container.get("resources") or {}
            container["resources"] = resources
            # The API server copies a limit into a missing request of the same resource.
            limits = resources.get("limits") or {}
            if limits:
                resources["requests"] = {**limits, **(resources.get("requests") or {})}


def _pod_requests(spec: Mapping[str, Any]) -> dict[str, Decimal]:
    """What the scheduler counts: the sum over containers, at least any one init container."""
    total: dict[str, Decimal] = {}
    for container in spec.get("containers") or []:
        for name, value in ((container.get("resources") or {}).get("requests") or {}).items():
            total[name] = total.get(name, Decimal(0)) + parse_quantity(value)
    for container in spec.get("initContainers") or []:
        for name, value in ((container.get("resources") or {}).get("requests") or {}).items():
            total[name] = max(total.get(name, Decimal(0)), parse_quantity(value))
    for name, value in (spec.get("overhead") or {}).items():
        total[name] = total.get(name, Decimal(0)) + parse_quantity(value)
    return total


def _qos_class(spec: Mapping[str, Any]) -> str:
    containers = list(spec.get("initContainers") or []) + list(spec.get("containers") or [])
    resources = [container.get("resources") or {} for container in containers]
    if not any(item.get("requests") or item.get("limits") for item in resources):
        return "BestEffort"
    guaranteed = all(
        all(
            name in (item.get("limits") or {})
            and parse_quantity((item.get("limits") or {})[name])
            == parse_quantity((item.get("requests") or {}).get(name, "0"))
            for name in ("cpu", "memory")
        )
        for item in resources
    )
    return "Guaranteed" if guaranteed else "Burstable"


# --------------------------------------------------------------------------------------------
# Scheduling predicates


def _tolerates(toleration: Mapping[str, Any], taint: Mapping[str, str]) -> bool:
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    operator = toleration.get("operator") or "Equal"
    key = toleration.get("key") or ""
    if not key:
        return operator == "Exists"  # an empty key with Exists tolerates every taint
    if key != taint.get("key"):
        return False
    return operator == "Exists" or (toleration.get("value") or "") == (taint.get("value") or "")


def _expression_matches(expression: Mapping[str, Any], values_by_key: Mapping[str, str]) -> bool:
    key, operator = expression["key"], expression["operator"]
    values = expression.get("values") or []
    present = key in values_by_key
    value = values_by_key.get(key)
    if operator == "In":
        return present and value in values
    if operator == "NotIn":
        return not present or value not in values
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    if operator in ("Gt", "Lt") and present and values:
        try:
            number, bound = int(value or ""), int(values[0])
        except ValueError:
            return False
        return number > bound if operator == "Gt" else number < bound
    return False


def _matches_node_affinity(spec: Mapping[str, Any], name: str, labels: Mapping[str, str]) -> bool:
    selector = spec.get("nodeSelector") or {}
    if any(labels.get(key) != value for key, value in selector.items()):
        return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms")
    if not terms:
        return True

    def term_matches(term: Mapping[str, Any]) -> bool:
        expressions = term.get("matchExpressions") or []
        fields = term.get("matchFields") or []
        if not expressions and not fields:
            return False  # an empty term selects no node
        return all(_expression_matches(e, labels) for e in expressions) and all(
            _expression_matches(f, {"metadata.name": name}) for f in fields
        )

    return any(term_matches(term) for term in terms)


# --------------------------------------------------------------------------------------------
# Runtime state of pods


@dataclass
class _ContainerRun:
    name: str
    image: str
    init: bool
    state: dict[str, Any] = field(
        default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}}
    )
    last_state: dict[str, Any] = field(default_factory=dict)
    restart_count: int = 0
    container_id: str = ""
    image_id: str = ""
    process: asyncio.subprocess.Process | None = None
    log_paths: list[Path] = field(default_factory=list)
    pull_failed_since: float | None = None

    def status(self) -> dict[str, Any]:
        running = "running" in self.state
        succeeded = self.state.get("terminated", {}).get("exitCode") == 0
        status = {
            "name": self.name,
            "state": self.state,
            "lastState": self.last_state,
            "ready": succeeded if self.init else running,
            "restartCount": self.restart_count,
            "image": self.image,
            "imageID": self.image_id,
            "started": running,
        }
        if self.container_id:
            status["containerID"] = self.container_id
        return status

    @property
    def has_started(self) -> bool:
        return "running" in self.state or "terminated" in self.state


@dataclass
class _PodRun:
    """The kubelet's side of a bound pod: where it runs and what its containers are doing."""

    uid: str
    node: str
    scratch: Path
    containers: dict[str, _ContainerRun]
    env: dict[str, dict[str, str]] = field(default_factory=dict)
    cwd: dict[str, Path] = field(default_factory=dict)
    volume_dirs: dict[str, Path] = field(default_factory=dict)
    task: asyncio.Task | None = None
    initialized: bool = False
    stopping: bool = False  # no container may start (again): the pod is deleted or cannot start

    @property
    def root(self) -> Path:
        return self.scratch / "root"

    def processes(self) -> list[asyncio.subprocess.Process]:
        return [c.process for c in self.containers.values() if c.process is not None]


def _signal_group(process: asyncio.subprocess.Process, signum: int) -> None:
    # The whole process group: ``/bin/sh -c`` would otherwise leave its children running.
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signum)


@dataclass
class PodRecord:
    """What the server saw of one pod, kept after the pod is deleted so tests can check it."""

    namespace: str
    name: str
    uid: str
    scratch_dir: Path
    pod: dict[str, Any]  # the last stored version of the Pod object
    volume_dirs: dict[str, Path] = field(default_factory=dict)
    log_files: dict[str, list[Path]] = field(default_factory=dict)
    deleted: bool = False

    @property
    def spec(self) -> dict[str, Any]:
        return self.pod["spec"]

    @property
    def labels(self) -> dict[str, str]:
        return self.pod["metadata"].get("labels") or {}

    @property
    def job_name(self) -> str | None:
        return self.labels.get("job-name")

    @property
    def node(self) -> str | None:
        return self.spec.get("nodeName")

    @property
    def phase(self) -> str:
        return self.pod["status"].get("phase", "Pending")

    @property
    def images(self) -> dict[str, str]:
        return {c["name"]: c.get("image", "") for c in self.spec["containers"]}

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return {c["name"]: c.get("resources") or {} for c in self.spec["containers"]}

    @property
    def tolerations(self) -> list[dict[str, Any]]:
        return self.spec.get("tolerations") or []

    @property
    def node_selector(self) -> dict[str, str]:
        return self.spec.get("nodeSelector") or {}

    @property
    def volumes(self) -> list[dict[str, Any]]:
        return self.spec.get("volumes") or []

    @property
    def exit_codes(self) -> dict[str, int]:
        codes = {}
        for status in self.pod["status"].get("containerStatuses") or []:
            terminated = status["state"].get("terminated")
            if terminated:
                codes[status["name"]] = terminated["exitCode"]
        return codes

    def log(self, container: str | None = None) -> str:
        """The latest log of a container (the first one by default); "" when it never ran."""
        paths = self.log_files.get(container or self.spec["containers"][0]["name"]) or []
        if not paths or not paths[-1].exists():
            return ""
        return paths[-1].read_text(encoding="utf-8", errors="replace")


# --------------------------------------------------------------------------------------------
# The server


class K8sTestServer(ThreadedHttpServer):
    """The API server and its simulated controllers, scheduler and kubelets, on one event loop.

    All state lives on the server's event loop thread; the public methods hand their work to it,
    so tests may call them from any thread.
    """

    def __init__(
        self,
        nodes: Iterable[SimulatedNode] = DEFAULT_NODES,
        *,
        root: Path | None = None,
        images: Mapping[str, ImageConfig] | None = None,
        unpullable_images: Iterable[str] = (),
        pod_env: Mapping[str, str] | None = None,
        kubernetes_version: str = KUBERNETES_VERSION,
        max_termination_grace_s: float = 2.0,
        restart_backoff_s: float = 0.2,
        image_pull_backoff_s: float = 0.3,
        port: int = 0,
    ):
        super().__init__(port=port)
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="k8s-test-server-")) if root is None else root
        self.root.mkdir(parents=True, exist_ok=True)
        self.images = dict(images or {})
        self.pod_env = dict(pod_env or {})
        self.kubernetes_version = kubernetes_version
        self.max_termination_grace_s = max_termination_grace_s
        self.restart_backoff_s = restart_backoff_s
        self.image_pull_backoff_s = image_pull_backoff_s
        self._unpullable = set(unpullable_images)
        self._nodes: dict[str, SimulatedNode] = {}
        self._store: dict[_Kind, dict[tuple[str, str], dict[str, Any]]] = {
            kind: {} for kind in _KINDS.values()
        }
        self._version = 0
        self._pod_ips = itertools.count(2)
        self._runs: dict[str, _PodRun] = {}  # by pod uid
        self._records: dict[str, PodRecord] = {}  # by pod uid, in creation order
        self._job_tracked: dict[str, dict[str, str]] = {}  # job uid -> pod uid -> final phase
        self._job_started: dict[str, float] = {}  # job uid -> monotonic start
        self._job_finished: dict[str, float] = {}  # job uid -> monotonic end
        self._tasks: set[asyncio.Task] = set()
        self._reconcile_pending = False
        for node in nodes:
            self._add_node(copy.deepcopy(node))

    # ---- lifecycle

    name = "Kubernetes test server"

    def stop(self) -> None:
        """Kill every pod's processes, close the HTTP server and end the thread."""
        super().stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    async def _make_app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._status_middleware], client_max_size=MAX_REQUEST_BYTES
        )
        app.add_routes(self._routes())
        return app

    async def _after_start(self) -> None:
        self._spawn(self._tick())

    async def _before_shutdown(self) -> None:
        for run in self._runs.values():
            run.stopping = True
            for process in run.processes():
                _signal_group(process, signal.SIGKILL)
        # Let the pods see their processes end (so no process transport outlives the loop).
        runs = [run.task for run in self._runs.values() if run.task and not run.task.done()]
        if runs:
            await asyncio.wait(runs, timeout=5)
        tasks = [task for task in self._tasks if not task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coroutine: Any) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)  # a reference, so that the task is not collected while it runs
        task.add_done_callback(self._tasks.discard)
        return task

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            self._reconcile()

    def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run ``function`` on the server's loop and return its result (for other threads)."""
        if self._loop is None or self._thread is None:
            return function(*args)

        async def call() -> Any:
            return function(*args)

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout=30)

    # ---- public helpers for tests

    def client_configuration(self) -> Any:
        """A ``kubernetes.client.Configuration`` for this server."""
        import kubernetes.client

        configuration = kubernetes.client.Configuration(host=self.url)
        configuration.retries = False  # a failed request should fail the test, not be repeated
        return configuration

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig file whose current context is this server (for ``load_kube_config``)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "k8s-test-server", "cluster": {"server": self.url}}],
            "users": [{"name": "k8s-test-user", "user": {"token": "unchecked"}}],
            "contexts": [
                {
                    "name": "k8s-test-server",
                    "context": {
                        "cluster": "k8s-test-server",
                        "user": "k8s-test-user",
                        "namespace": namespace,
                    },
                }
            ],
            "current-context": "k8s-test-server",
        }
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return path

    def add_node(self, node: SimulatedNode) -> None:
        self._call(self._add_node, copy.deepcopy(node))
        self._call(self._request_reconcile)

    def set_image_pullable(self, image: str, pullable: bool = True) -> None:
        self._call(self._unpullable.discard if pullable else self._unpullable.add, image)

    def get_object(self, plural: str, name: str, namespace: str = "default") -> dict | None:
        """A stored object (a copy), e.g. ``get_object("jobs", "render")``; None if absent."""
        kind = _kind_named(plural)
        key = (namespace if kind.namespaced else "", name)
        return self._call(lambda: copy.deepcopy(self._store[kind].get(key)))

    def list_objects(self, plural: str, namespace: str | None = None) -> list[dict]:
        kind = _kind_named(plural)
        return self._call(
            lambda: [
                copy.deepcopy(obj)
                for (obj_namespace, _), obj in sorted(self._store[kind].items())
                if namespace is None or obj_namespace == namespace
            ]
        )

    @property
    def pod_records(self) -> list[PodRecord]:
        """Every pod the server has seen, deleted ones included, oldest first."""
        return self._call(lambda: list(self._records.values()))

    def pod_record(self, name: str, namespace: str = "default") -> PodRecord:
        """The newest pod of that name."""
        matches = [r for r in self.pod_records if r.name == name and r.namespace == namespace]
        if not matches:
            raise KeyError(f"no pod {namespace}/{name} was created")
        return matches[-1]

    def job_pod_records(self, job_name: str, namespace: str = "default") -> list[PodRecord]:
        return [
            record
            for record in self.pod_records
            if record.job_name == job_name and record.namespace == namespace
        ]

    def node_dir(self, node_name: str) -> Path:
        """The node's local directory (its LocalSSD)."""
        node = self._nodes[node_name]
        return node.local_dir if node.local_dir is not None else self.root / "nodes" / node_name

    def claim_dir(self, claim_name: str, namespace: str = "default") -> Path | None:
        """Where a bound claim's files are; None while it is unbound or absent."""
        return self._call(self._claim_dir_by_name, namespace, claim_name)

    # ---- the HTTP layer

    def _routes(self) -> list[web.RouteDef]:
        # The official client asks for "/version/".
        routes = [web.get(path, self._handle_version) for path in ("/version", "/version/")]
        for prefix in ("/api/v1", "/apis/batch/v1"):
            namespaced = prefix + "/namespaces/{namespace}/{plural}"
            routes += [
                web.get(namespaced, self._handle_list),
                web.post(namespaced, self._handle_create),
                web.get(namespaced + "/{name}", self._handle_get),
                web.delete(namespaced + "/{name}", self._handle_delete),
                web.get(namespaced + "/{name}/{subresource}", self._handle_subresource),
                web.get(prefix + "/{plural}", self._handle_list),
                web.get(prefix + "/{plural}/{name}", self._handle_get),
            ]
        return routes

    @web.middleware
    async def _status_middleware(self, request: web.Request, handler: Callable) -> web.Response:
        try:
            return await handler(request)
        except ApiError as error:
            return web.json_response(error.status(), status=error.code)
        except web.HTTPNotFound:
            error = ApiError(404, "NotFound", "the server could not find the requested resource")
            return web.json_response(error.status(), status=404)
        except web.HTTPMethodNotAllowed:
            message = "the server does not allow this method on the requested resource"
            error = ApiError(405, "MethodNotAllowed", message)
            return web.json_response(error.status(), status=405)
        except Exception as error:  # a bug in the server: say so to the client, like the API does
            traceback.print_exc()
            failure = ApiError(500, "InternalError", f"Internal error occurred: {error!r}")
            return web.json_response(failure.status(), status=500)

    def _kind_of(self, request: web.Request) -> tuple[_Kind, str]:
        group = "batch" if request.path.startswith("/apis/batch/") else ""
        kind = _KINDS.get((group, request.match_info["plural"]))
        namespace = request.match_info.get("namespace")
        scoped_right = kind is not None and (namespace is None or kind.namespaced)
        if kind is None or not scoped_right:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if kind.namespaced and namespace is None and "name" in request.match_info:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return kind, namespace or ""

    async def _handle_version(self, request: web.Request) -> web.Response:
        major, minor, _ = self.kubernetes_version.split(".")
        return web.json_response(
            {
                "major": major,
                "minor": minor,
                "gitVersion": f"v{self.kubernetes_version}",
                "gitCommit": "0" * 40,
                "gitTreeState": "clean",
                "buildDate": "2025-04-23T00:00:00Z",
                "goVersion": "go1.24.2",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        )

    async def _handle_list(self, request: web.Request) -> web.Response:
        kind, namespace = self._kind_of(request)
        if _query_flag(request.query.get("watch")):
            raise _bad_request("watch is not supported by the Kubernetes test server")
        labels = _parse_label_selector(request.query.get("labelSelector", ""))
        fields = self._parse_field_selector(kind, request.query.get("fieldSelector", ""))
        items = []
        for (obj_namespace, _), obj in sorted(self._store[kind].items()):
            if namespace and obj_namespace != namespace:
                continue
            if not _labels_match(labels, obj["metadata"].get("labels") or {}):
                continue
            if any((_field_value(obj, key) == value) != equal for key, equal, value in fields):
                continue
            items.append({k: v for k, v in obj.items() if k not in ("kind", "apiVersion")})
        return web.json_response(
            {
                "kind": f"{kind.kind}List",
                "apiVersion": kind.api_version,
                "metadata": {"resourceVersion": str(self._version)},
                "items": items,
            }
        )

    @staticmethod
    def _parse_field_selector(kind: _Kind, selector: str) -> list[tuple[str, bool, str]]:
        terms = []
        for text in filter(None, (part.strip() for part in selector.split(","))):
            match = re.match(r"^([^!=]+)(==|=|!=)(.*)$", text)
            if not match:
                raise _bad_request(f"invalid selector: '{selector}'; can't understand '{text}'")
            key, operator, value = match.groups()
            if key not in ("metadata.name", "metadata.namespace", *kind.field_labels):
                raise _bad_request(f'field label not supported: "{key}"')
            terms.append((key, operator != "!=", value))
        return terms

    async def _handle_get(self, request: web.Request) -> web.Response:
        kind, namespace = self._kind_of(request)
        return web.json_response(self._get_or_404(kind, namespace, request.match_info["name"]))

    def _get_or_404(self, kind: _Kind, namespace: str, name: str) -> dict[str, Any]:
        obj = self._store[kind].get((namespace, name))
        if obj is None:
            raise _not_found(kind, name)
        return obj

    async def _handle_subresource(self, request: web.Request) -> web.Response:
        kind, namespace = self._kind_of(request)
        name, subresource = request.match_info["name"], request.match_info["subresource"]
        if subresource == "status" and kind in (PODS, JOBS):
            return web.json_response(self._get_or_404(kind, namespace, name))
        if subresource == "log" and kind is PODS:
            return self._read_log(self._get_or_404(kind, namespace, name), request.query)
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    async def _read_body(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError as error:
            raise _bad_request(f"the request body is not valid JSON: {error}") from error
        if not isinstance(body, dict):
            raise _bad_request("the request body must be a JSON object")
        return body

    async def _handle_create(self, request: web.Request) -> web.Response:
        kind, namespace = self._kind_of(request)
        obj = self._admit(kind, namespace, await self._read_body(request))
        if request.query.get("dryRun") == "All":
            return web.json_response(obj, status=201)
        name = obj["metadata"]["name"]
        if (namespace, name) in self._store[kind]:
            message = f'{kind.resource} "{name}" already exists'
            raise ApiError(409, "AlreadyExists", message, kind.details(name))
        self._store_new(kind, obj)
        return web.json_response(obj, status=201)

    async def _handle_delete(self, request: web.Request) -> web.Response:
        kind, namespace = self._kind_of(request)
        obj = self._get_or_404(kind, namespace, request.match_info["name"])
        options = {**request.query, **await self._read_body(request)}
        policy = options.get("propagationPolicy")
        orphan = str(options.get("orphanDependents", "")).lower()
        if policy is None and orphan in ("true", "false"):
            policy = "Orphan" if orphan == "true" else "Background"
        if policy not in (None, "Orphan", "Background", "Foreground"):
            detail = 'supported values: "Foreground", "Background", "Orphan"'
            error = _FieldError("propagationPolicy", "Unsupported value", detail, policy)
            raise ApiError(422, "Invalid", f"DeleteOptions is invalid: {error}")
        grace = options.get("gracePeriodSeconds")
        grace_seconds = None if grace in (None, "") else float(grace)
        if request.query.get("dryRun") == "All":
            return web.json_response(obj)
        if kind is PODS:
            pending = self._delete_pod(obj, grace_seconds)
            return web.json_response(obj, status=202 if pending else 200)
        if kind is JOBS:
            return self._delete_job(obj, policy or "Orphan")  # batch/v1's legacy default
        if kind is CLAIMS:
            pending = self._delete_claim(obj)
            return web.json_response(obj, status=202 if pending else 200)
        del self._store[kind][(namespace, obj["metadata"]["name"])]
        self._request_reconcile()
        return web.json_response(self._success(kind, obj))

    @staticmethod
    def _success(kind: _Kind, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": kind.details(meta["name"], uid=meta["uid"]),
        }

    # ---- admission: schema, defaults, semantics

    def _admit(self, kind: _Kind, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(body)
        # Like the real server, fill in the type from the URL when the body leaves it out.
        obj["apiVersion"] = obj.get("apiVersion") or kind.api_version
        obj["kind"] = obj.get("kind") or kind.kind
        if obj["apiVersion"] != kind.api_version or obj["kind"] != kind.kind:
            raise _bad_request(
                f"the API version and kind in the data ({obj['apiVersion']}, {obj['kind']}) do "
                f"not match the expected ones ({kind.api_version}, {kind.kind})"
            )
        meta = obj.get("metadata") or {}
        obj["metadata"] = meta
        if kind.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise _bad_request(
                    "the namespace of the provided object does not match the namespace sent on "
                    "the request"
                )
            meta["namespace"] = namespace
        for server_set in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp"):
            meta.pop(server_set, None)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + _random_suffix()
        name = meta.get("name") or ""
        try:
            kubernetes_validate.validate(obj, self.kubernetes_version, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = "".join(
                f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path
            ).lstrip(".")
            problem = _FieldError(where or "<root>", "Invalid value", error.message)
            raise _invalid(kind, name, [problem]) from error
        obj.pop("status", None)  # status is the server's, whatever the client sent

        errors: list[_FieldError] = []
        if not name:
            detail = "name or generateName is required"
            errors.append(_FieldError("metadata.name", "Required value", detail))
        elif not _DNS_SUBDOMAIN.match(name) or len(name) > 253:
            errors.append(_FieldError("metadata.name", "Invalid value", _SUBDOMAIN_HELP, name))
        if kind is SECRETS:
            self._admit_secret(obj, errors)
        elif kind is CONFIG_MAPS:
            for key in list(obj.get("data") or {}) + list(obj.get("binaryData") or {}):
                if not _CONFIG_KEY.match(key):
                    where = f"data[{key}]"
                    errors.append(_FieldError(where, "Invalid value", _CONFIG_KEY_HELP, key))
        elif kind is CLAIMS:
            spec = obj.setdefault("spec", {})
            spec.setdefault("volumeMode", "Filesystem")
            if not spec.get("accessModes"):
                detail = "at least 1 access mode is required"
                errors.append(_FieldError("spec.accessModes", "Required value", detail))
            if "storage" not in ((spec.get("resources") or {}).get("requests") or {}):
                errors.append(_FieldError("spec.resources[storage]", "Required value"))
        elif kind is PODS:
            spec = obj.setdefault("spec", {})
            _default_pod_spec(spec)
            _check_pod_spec(spec, "spec", errors, in_job=False)
        elif kind is JOBS:
            self._admit_job(obj, errors)
        if errors:
            raise _invalid(kind, name, errors)
        return obj

    @staticmethod
    def _admit_job(job: dict[str, Any], errors: list[_FieldError]) -> None:
        name = job["metadata"].get("name") or ""
        if len(name) > 63:  # it becomes the value of the job-name label
            detail = "must be no more than 63 characters"
            errors.append(_FieldError("metadata.name", "Invalid value", detail, name))
        spec = job.setdefault("spec", {})
        if "template" not in spec:
            errors.append(_FieldError("spec.template", "Required value"))
            return
        if "completions" not in spec and "parallelism" not in spec:
            spec["completions"] = 1
        spec.setdefault("parallelism", 1)
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
        for count in ("backoffLimit", "parallelism", "completions"):
            if (spec.get(count) or 0) < 0:
                detail = "must be greater than or equal to 0"
                errors.append(_FieldError(f"spec.{count}", "Invalid value", detail, spec[count]))
        template_spec = spec["template"].setdefault("spec", {})
        _default_pod_spec(template_spec)
        _check_pod_spec(template_spec, "spec.template.spec", errors, in_job=True)

    def _admit_secret(self, secret: dict[str, Any], errors: list[_FieldError]) -> None:
        data = dict(secret.get("data") or {})
        for key, value in data.items():
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError) as error:
                raise _bad_request(
                    f'Secret in version "v1" cannot be handled as a Secret: illegal base64 data '
                    f"for key {key}: {error}"
                ) from error
        # The API server folds the write-only stringData into data.
        for key, value in (secret.pop("stringData", None) or {}).items():
            data[key] = base64.b64encode(value.encode()).decode()
        for key in data:
            if not _CONFIG_KEY.match(key):
                errors.append(_FieldError(f"data[{key}]", "Invalid value", _CONFIG_KEY_HELP, key))
        size = sum(len(base64.b64decode(value)) for value in data.values())
        if size > MAX_SECRET_BYTES:
            detail = f"must have at most {MAX_SECRET_BYTES} bytes"
            errors.append(_FieldError("data", "Too long", detail))
        if data:
            secret["data"] = data
        secret.setdefault("type", "Opaque")

    def _store_new(self, kind: _Kind, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["resourceVersion"] = self._next_version()
        if kind is JOBS:
            meta["generation"] = 1
            self._default_job_selector(obj)
            obj["status"] = {}
            self._job_tracked[meta["uid"]] = {}
        elif kind is PODS:
            obj["status"] = {"phase": "Pending", "qosClass": _qos_class(obj["spec"])}
            self._records[meta["uid"]] = PodRecord(
                namespace=meta["namespace"],
                name=meta["name"],
                uid=meta["uid"],
                scratch_dir=self._scratch_dir(obj),
                pod=copy.deepcopy(obj),
            )
        elif kind is CLAIMS:
            meta.setdefault("finalizers", []).append("kubernetes.io/pvc-protection")
            obj["status"] = {"phase": "Pending"}
        self._store[kind][(meta.get("namespace", ""), meta["name"])] = obj
        self._request_reconcile()

    @staticmethod
    def _default_job_selector(job: dict[str, Any]) -> None:
        meta = job["metadata"]
        template_meta = job["spec"]["template"].setdefault("metadata", {})
        labels = template_meta.get("labels") or {}
        labels.update(
            {
                "batch.kubernetes.io/controller-uid": meta["uid"],
                "batch.kubernetes.io/job-name": meta["name"],
                "controller-uid": meta["uid"],
                "job-name": meta["name"],
            }
        )
        template_meta["labels"] = labels
        if not job["spec"].get("manualSelector"):
            match = {"batch.kubernetes.io/controller-uid": meta["uid"]}
            job["spec"]["selector"] = {"matchLabels": match}

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def _touch(self, obj: dict[str, Any]) -> None:
        obj["metadata"]["resourceVersion"] = self._next_version()

    # ---- nodes

    def _add_node(self, node: SimulatedNode) -> None:
        self._nodes[node.name] = node
        self.node_dir(node.name).mkdir(parents=True, exist_ok=True)
        allocatable = node.allocatable()
        now = _now()
        node_object: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": node.name,
                "uid": str(uuid.uuid4()),
                "creationTimestamp": now,
                "resourceVersion": self._next_version(),
                "labels": {
                    "kubernetes.io/arch": "amd64",
                    "kubernetes.io/hostname": node.name,
                    "kubernetes.io/os": "linux",
                    **node.labels,
                },
            },
            "spec": {},
            "status": {
                "capacity": allocatable,
                "allocatable": allocatable,
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "kubelet is posting ready status",
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": now,
                    }
                ],
                "addresses": [
                    {"type": "InternalIP", "address": "127.0.0.1"},
                    {"type": "Hostname", "address": node.name},
                ],
                "nodeInfo": {
                    "architecture": "amd64",
                    "bootID": str(uuid.uuid4()),
                    "containerRuntimeVersion": "containerd://1.7.0",
                    "kernelVersion": os.uname().release,
                    "kubeProxyVersion": f"v{self.kubernetes_version}",
                    "kubeletVersion": f"v{self.kubernetes_version}",
                    "machineID": uuid.uuid4().hex,
                    "operatingSystem": "linux",
                    "osImage": "Kubernetes test server (local processes)",
                    "systemUUID": str(uuid.uuid4()),
                },
            },
        }
        if node.taint_list():
            node_object["spec"]["taints"] = node.taint_list()
        if node.unschedulable:
            node_object["spec"]["unschedulable"] = True
        self._store[NODES][("", node.name)] = node_object

    def _node_usage(self, node_name: str, except_uid: str = "") -> tuple[dict[str, Decimal], int]:
        used: dict[str, Decimal] = {}
        count = 0
        for pod in self._store[PODS].values():
            bound_here = pod["spec"].get("nodeName") == node_name
            if not bound_here or pod["metadata"]["uid"] == except_uid:
                continue
            if pod["status"].get("phase") in TERMINAL_PHASES:
                continue  # a finished pod gives its resources back
            count += 1
            for name, amount in _pod_requests(pod["spec"]).items():
                used[name] = used.get(name, Decimal(0)) + amount
        return used, count

    def _insufficient(self, pod: Mapping[str, Any], node: SimulatedNode) -> list[str]:
        used, count = self._node_usage(node.name, except_uid=pod["metadata"]["uid"])
        allocatable = {name: parse_quantity(v) for name, v in node.allocatable().items()}
        reasons = []
        if count + 1 > allocatable["pods"]:
            reasons.append("Too many pods")
        for name, amount in _pod_requests(pod["spec"]).items():
            free = allocatable.get(name, Decimal(0)) - used.get(name, Decimal(0))
            if amount > 0 and amount > free:
                reasons.append(f"Insufficient {name}")
        return reasons

    # ---- the reconcile loop: garbage collector, job controller, scheduler, kubelet

    def _request_reconcile(self) -> None:
        if not self._reconcile_pending and self._loop is not None:
            self._reconcile_pending = True
            self._loop.call_soon(self._reconcile)

    def _reconcile(self) -> None:
        self._reconcile_pending = False
        self._collect_garbage()
        for job in list(self._store[JOBS].values()):
            self._sync_job(job)
        for pod in list(self._store[PODS].values()):
            if pod["metadata"].get("deletionTimestamp") or pod["status"]["phase"] != "Pending":
                continue
            if pod["metadata"]["uid"] not in self._runs:
                self._schedule(pod)
        for pod in list(self._store[PODS].values()):
            run = self._runs.get(pod["metadata"]["uid"])
            if run is not None and run.task is None and not run.stopping:
                self._start_when_ready(pod, run)

    def _live_uids(self) -> set[str]:
        return {obj["metadata"]["uid"] for objs in self._store.values() for obj in objs.values()}

    def _owned_pods(self, owner_uid: str) -> list[dict[str, Any]]:
        return [
            pod
            for pod in self._store[PODS].values()
            if any(ref["uid"] == owner_uid for ref in pod["metadata"].get("ownerReferences") or [])
        ]

    def _collect_garbage(self) -> None:
        for key, job in list(self._store[JOBS].items()):
            meta = job["metadata"]
            finalizers = meta.get("finalizers") or []
            if "orphan" in finalizers:
                for pod in self._owned_pods(meta["uid"]):
                    refs = pod["metadata"]["ownerReferences"]
                    remaining = [ref for ref in refs if ref["uid"] != meta["uid"]]
                    if remaining:
                        pod["metadata"]["ownerReferences"] = remaining
                    else:
                        del pod["metadata"]["ownerReferences"]
                    self._pod_changed(pod)
                del self._store[JOBS][key]
            elif "foregroundDeletion" in finalizers:
                owned = self._owned_pods(meta["uid"])
                for pod in owned:
                    self._delete_pod(pod, None)
                if not self._owned_pods(meta["uid"]):
                    del self._store[JOBS][key]
            elif self._ttl_expired(job):
                del self._store[JOBS][key]
        live = self._live_uids()
        for pod in list(self._store[PODS].values()):
            refs = pod["metadata"].get("ownerReferences") or []
            if refs and not any(ref["uid"] in live for ref in refs):
                self._delete_pod(pod, None)  # every owner is gone: background deletion
        for key, claim in list(self._store[CLAIMS].items()):
            if claim["metadata"].get("deletionTimestamp") and not self._claim_in_use(claim):
                self._remove_claim(key, claim)

    def _ttl_expired(self, job: Mapping[str, Any]) -> bool:
        ttl = job["spec"].get("ttlSecondsAfterFinished")
        finished = self._job_finished.get(job["metadata"]["uid"])
        return ttl is not None and finished is not None and time.monotonic() - finished >= ttl

    # ---- job controller

    def _sync_job(self, job: dict[str, Any]) -> None:
        meta, spec, status = job["metadata"], job["spec"], job["status"]
        if meta.get("deletionTimestamp") or _condition_true(status, "Complete", "Failed"):
            return
        if spec.get("suspend"):
            return
        before = json.dumps(status, sort_keys=True)
        uid = meta["uid"]
        tracked = self._job_tracked.setdefault(uid, {})
        pods = self._owned_pods(uid)
        for pod in pods:
            phase = pod["status"]["phase"]
            if phase in TERMINAL_PHASES:
                tracked.setdefault(pod["metadata"]["uid"], phase)
        succeeded = sum(phase == "Succeeded" for phase in tracked.values())
        failed = sum(phase == "Failed" for phase in tracked.values())
        unfinished = [pod for pod in pods if pod["status"]["phase"] not in TERMINAL_PHASES]
        terminating = [pod for pod in unfinished if pod["metadata"].get("deletionTimestamp")]
        active = [pod for pod in unfinished if not pod["metadata"].get("deletionTimestamp")]
        status.setdefault("startTime", _now())
        started = self._job_started.setdefault(uid, time.monotonic())

        failure = _condition(status, "FailureTarget")
        failure_reason = (failure["reason"], failure["message"]) if failure else None
        if failure_reason is None:
            restarts = sum(
                container["restartCount"]
                for pod in active
                for group in ("initContainerStatuses", "containerStatuses")
                for container in pod["status"].get(group) or []
            )
            backoff_limit = spec["backoffLimit"]
            restarts_exceeded = restarts > 0 if backoff_limit == 0 else restarts >= backoff_limit
            deadline = spec.get("activeDeadlineSeconds")
            if failed > backoff_limit or (
                spec["template"]["spec"]["restartPolicy"] == "OnFailure" and restarts_exceeded
            ):
                failure_reason = ("BackoffLimitExceeded", BACKOFF_LIMIT_MESSAGE)
            elif deadline is not None and time.monotonic() - started > deadline:
                failure_reason = ("DeadlineExceeded", DEADLINE_MESSAGE)
        completions = spec.get("completions")
        # Without completions (a work queue) the job is done once a pod succeeded and none runs.
        done = succeeded >= completions if completions is not None else succeeded > 0 and not active

        if failure_reason is not None:
            _set_job_condition(status, "FailureTarget", *failure_reason)
            for pod in active:
                self._delete_pod(pod, None)
            if not unfinished:  # the terminal condition waits for the pods to be gone
                _set_job_condition(status, "Failed", *failure_reason)
                self._job_finished[uid] = time.monotonic()
            active = []
        elif done:
            reason = ("CompletionsReached", COMPLETIONS_MESSAGE)
            _set_job_condition(status, "SuccessCriteriaMet", *reason)
            for pod in active:
                self._delete_pod(pod, None)
            if not unfinished:
                _set_job_condition(status, "Complete", *reason)
                status["completionTime"] = _now()
                self._job_finished[uid] = time.monotonic()
            active = []
        else:
            if completions is not None:
                remaining = completions - succeeded
            else:
                remaining = 0 if succeeded else spec["parallelism"]
            wanted = min(spec["parallelism"], remaining) - len(active) - len(terminating)
            for _ in range(max(0, wanted)):
                active.append(self._create_job_pod(job))

        for name, value in (
            ("active", len(active)),
            ("succeeded", succeeded),
            ("failed", failed),
        ):
            if value:
                status[name] = value
            else:
                status.pop(name, None)
        status["ready"] = sum(_condition_true(pod["status"], "Ready") for pod in active)
        status["terminating"] = len(terminating)
        status["uncountedTerminatedPods"] = {}
        if json.dumps(status, sort_keys=True) != before:
            self._touch(job)

    def _create_job_pod(self, job: Mapping[str, Any]) -> dict[str, Any]:
        meta = job["metadata"]
        template = copy.deepcopy(job["spec"]["template"])
        template_meta = template.get("metadata") or {}
        namespace = meta["namespace"]
        while True:
            name = f"{meta['name'][:57]}-{_random_suffix()}"
            if (namespace, name) not in self._store[PODS]:
                break
        pod_meta: dict[str, Any] = {
            "name": name,
            "generateName": f"{meta['name'][:57]}-",
            "namespace": namespace,
            "labels": dict(template_meta.get("labels") or {}),
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        }
        if template_meta.get("annotations"):
            pod_meta["annotations"] = dict(template_meta["annotations"])
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": template["spec"]}
        self._store_new(PODS, pod)
        return pod

    def _delete_job(self, job: dict[str, Any], policy: str) -> web.Response:
        meta = job["metadata"]
        if meta.get("deletionTimestamp"):
            return web.json_response(job, status=202)
        if policy == "Background":
            del self._store[JOBS][(meta["namespace"], meta["name"])]
            self._request_reconcile()  # the garbage collector then deletes the pods
            return web.json_response(self._success(JOBS, job))
        meta["deletionTimestamp"] = _now()
        meta["deletionGracePeriodSeconds"] = 0
        meta.setdefault("finalizers", []).append(
            "foregroundDeletion" if policy == "Foreground" else "orphan"
        )
        self._touch(job)
        self._request_reconcile()
        return web.json_response(job, status=202)

    # ---- scheduler

    def _schedule(self, pod: dict[str, Any]) -> None:
        spec = pod["spec"]
        if spec.get("nodeName"):
            self._admit_on_pinned_node(pod, spec["nodeName"])
            return
        nodes = [self._nodes[name] for name in sorted(self._nodes)]
        if not nodes:
            self._mark_unschedulable(pod, "no nodes available to schedule pods")
            return
        claims, problem = self._pod_claims(pod)
        count = len(nodes)
        if problem:
            self._mark_unschedulable(
                pod,
                f"0/{count} nodes are available: {problem}. preemption: 0/{count} nodes are "
                f"available: {count} Preemption is not helpful for scheduling.",
            )
            return
        feasible, reasons_by_node = [], {}
        for node in nodes:
            reasons = self._filter(pod, node, claims)
            if reasons:
                reasons_by_node[node.name] = reasons
            else:
                feasible.append(node)
        if not feasible:
            self._mark_unschedulable(pod, _fit_error(count, reasons_by_node))
            return
        chosen = min(feasible, key=lambda node: (self._allocated_share(node), node.name))
        self._bind(pod, chosen, claims)

    def _filter(
        self, pod: Mapping[str, Any], node: SimulatedNode, claims: list[dict[str, Any]]
    ) -> list[str]:
        """Why the pod cannot go to the node: the first filter that rejects it (kube-scheduler)."""
        spec = pod["spec"]
        tolerations = spec.get("tolerations") or []
        if node.unschedulable:
            cordon = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}
            if not any(_tolerates(toleration, cordon) for toleration in tolerations):
                return ["node(s) were unschedulable"]
        for taint in node.taint_list():
            if taint.get("effect") not in ("NoSchedule", "NoExecute"):
                continue
            if not any(_tolerates(toleration, taint) for toleration in tolerations):
                taint_text = f"{taint['key']}: {taint.get('value', '')}"
                return [f"node(s) had untolerated taint {{{taint_text}}}"]
        labels = self._store[NODES][("", node.name)]["metadata"]["labels"]
        if not _matches_node_affinity(spec, node.name, labels):
            return ["node(s) didn't match Pod's node affinity/selector"]
        insufficient = self._insufficient(pod, node)
        if insufficient:
            return insufficient
        for claim in claims:
            bound_node = _selected_node(claim)
            if _node_local(claim) and bound_node and bound_node != node.name:
                return ["node(s) had volume node affinity conflict"]
        return []

    def _allocated_share(self, node: SimulatedNode) -> Decimal:
        used, _ = self._node_usage(node.name)
        allocatable = node.allocatable()
        shares = [
            used.get(name, Decimal(0)) / parse_quantity(allocatable[name])
            for name in ("cpu", "memory")
            if parse_quantity(allocatable[name]) > 0
        ]
        return sum(shares, Decimal(0))

    def _pod_claims(self, pod: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
        claims = []
        namespace = pod["metadata"]["namespace"]
        for volume in pod["spec"].get("volumes") or []:
            source = volume.get("persistentVolumeClaim")
            if not source:
                continue
            claim = self._store[CLAIMS].get((namespace, source["claimName"]))
            if claim is None:
                return [], f'persistentvolumeclaim "{source["claimName"]}" not found'
            if claim["metadata"].get("deletionTimestamp"):
                return [], f'persistentvolumeclaim "{source["claimName"]}" is being deleted'
            claims.append(claim)
        return claims, None

    def _mark_unschedulable(self, pod: dict[str, Any], message: str) -> None:
        existing = _condition(pod["status"], "PodScheduled")
        if existing and existing.get("message") == message:
            return
        pod["status"]["conditions"] = [
            {
                "type": "PodScheduled",
                "status": "False",
                "lastProbeTime": None,
                "lastTransitionTime": _now(),
                "reason": "Unschedulable",
                "message": message,
            }
        ]
        self._pod_changed(pod)

    def _admit_on_pinned_node(self, pod: dict[str, Any], node_name: str) -> None:
        """A pod with spec.nodeName skips the scheduler; that node's kubelet admits it or not."""
        node = self._nodes.get(node_name)
        if node is None:
            return  # no kubelet will ever pick it up: it stays Pending, as on a real cluster
        insufficient = self._insufficient(pod, node)
        if insufficient:
            resource = insufficient[0].removeprefix("Insufficient ")
            pod["status"].update(
                phase="Failed",
                reason=f"OutOf{resource}",
                message=f"Pod was rejected: Node didn't have enough resource: {resource}",
            )
            self._pod_changed(pod)
            return
        claims, _ = self._pod_claims(pod)
        self._bind(pod, node, claims)

    def _bind(self, pod: dict[str, Any], node: SimulatedNode, claims: list[dict]) -> None:
        spec, status, meta = pod["spec"], pod["status"], pod["metadata"]
        spec["nodeName"] = node.name
        for claim in claims:
            if claim["status"].get("phase") != "Bound":
                self._bind_claim(claim, node.name if _node_local(claim) else None)
        number = next(self._pod_ips)
        pod_ip = f"10.244.{number // 250 % 250}.{number % 250}"
        status.update(
            hostIP="127.0.0.1",
            hostIPs=[{"ip": "127.0.0.1"}],
            podIP=pod_ip,
            podIPs=[{"ip": pod_ip}],
            startTime=_now(),
        )
        status["conditions"] = [
            {
                "type": "PodScheduled",
                "status": "True",
                "lastProbeTime": None,
                "lastTransitionTime": _now(),
            }
        ]
        init_names = [c["name"] for c in spec.get("initContainers") or []]
        waiting = {"waiting": {"reason": "PodInitializing"}} if init_names else None
        containers = {
            c["name"]: _ContainerRun(c["name"], c.get("image", ""), init=c["name"] in init_names)
            for c in (spec.get("initContainers") or []) + spec["containers"]
        }
        if waiting:
            for container in spec["containers"]:
                containers[container["name"]].state = dict(waiting)
        self._runs[meta["uid"]] = _PodRun(
            uid=meta["uid"],
            node=node.name,
            scratch=self._scratch_dir(pod),
            containers=containers,
            initialized=not init_names,
        )
        self._pod_changed(pod)

    # ---- claims

    def _claim_dir(self, claim: Mapping[str, Any]) -> Path:
        meta = claim["metadata"]
        node = _selected_node(claim)
        if _node_local(claim) and node:
            return self.node_dir(node) / "pvc" / meta["namespace"] / meta["name"]
        return self.root / "shared-volumes" / meta["namespace"] / meta["name"]

    def _claim_dir_by_name(self, namespace: str, name: str) -> Path | None:
        claim = self._store[CLAIMS].get((namespace, name))
        if claim is None or claim["status"].get("phase") != "Bound":
            return None
        return self._claim_dir(claim)

    def _bind_claim(self, claim: dict[str, Any], node_name: str | None) -> None:
        meta, spec = claim["metadata"], claim["spec"]
        annotations = meta.setdefault("annotations", {})
        if node_name:
            annotations["volume.kubernetes.io/selected-node"] = node_name
        annotations["pv.kubernetes.io/bind-completed"] = "yes"
        annotations["pv.kubernetes.io/bound-by-controller"] = "yes"
        spec["volumeName"] = f"pvc-{meta['uid']}"
        claim["status"] = {
            "phase": "Bound",
            "accessModes": list(spec["accessModes"]),
            "capacity": {"storage": spec["resources"]["requests"]["storage"]},
        }
        self._touch(claim)
        self._claim_dir(claim).mkdir(parents=True, exist_ok=True)

    def _claim_in_use(self, claim: Mapping[str, Any]) -> bool:
        meta = claim["metadata"]
        for pod in self._store[PODS].values():
            if pod["metadata"]["namespace"] != meta["namespace"]:
                continue
            if pod["status"]["phase"] in TERMINAL_PHASES:
                continue
            for volume in pod["spec"].get("volumes") or []:
                if (volume.get("persistentVolumeClaim") or {}).get("claimName") == meta["name"]:
                    return True
        return False

    def _delete_claim(self, claim: dict[str, Any]) -> bool:
        """Delete now, or once no running pod uses it (pvc-protection). True if it waits."""
        meta = claim["metadata"]
        if self._claim_in_use(claim):
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = _now()
                meta["deletionGracePeriodSeconds"] = 0
                self._touch(claim)
            return True
        self._remove_claim((meta["namespace"], meta["name"]), claim)
        return False

    def _remove_claim(self, key: tuple[str, str], claim: Mapping[str, Any]) -> None:
        bound = claim["status"].get("phase") == "Bound"
        del self._store[CLAIMS][key]
        if bound:  # a dynamically provisioned volume's reclaim policy is Delete
            shutil.rmtree(self._claim_dir(claim), ignore_errors=True)

    # ---- kubelet: start, run, stop

    def _scratch_dir(self, pod: Mapping[str, Any]) -> Path:
        meta = pod["metadata"]
        return self.root / "pods" / meta["namespace"] / f"{meta['name']}-{meta['uid'][:8]}"

    def _start_when_ready(self, pod: dict[str, Any], run: _PodRun) -> None:
        changed = self._pull_images(run)
        ready = not any(c.pull_failed_since is not None for c in run.containers.values())
        if ready:
            try:
                for container in self._all_containers(pod):
                    run.env[container["name"]] = self._container_env(pod, run, container)
                self._check_volume_sources(pod)
            except _ContainerConfigError as error:
                ready = False
                container = run.containers[error.container]
                reason = "CreateContainerConfigError"
                waiting = {"waiting": {"reason": reason, "message": str(error)}}
                if container.state != waiting:
                    container.state = waiting
                    changed = True
        if ready:
            for container in run.containers.values():
                if container.state.get("waiting", {}).get("reason") == "CreateContainerConfigError":
                    container.state = {"waiting": {"reason": "ContainerCreating"}}
            try:
                self._prepare_file_system(pod, run)
            except OSError as error:  # e.g. two mounts at one path: the pod cannot start
                pod["status"].update(phase="Failed", message=f"cannot prepare volumes: {error}")
                run.stopping = True
                self._pod_changed(pod)
                return
            run.task = self._spawn(self._run_pod(pod, run))
            changed = True
        if changed:
            self._pod_changed(pod)

    def _pull_images(self, run: _PodRun) -> bool:
        changed = False
        for container in run.containers.values():
            if container.image_id:
                continue
            if container.image not in self._unpullable:
                if container.pull_failed_since is not None:
                    container.pull_failed_since = None
                    container.state = {"waiting": {"reason": "ContainerCreating"}}
                    changed = True
                digest = hashlib.sha256(container.image.encode()).hexdigest()
                container.image_id = f"{container.image.split(':')[0]}@sha256:{digest}"
                continue
            now = time.monotonic()
            if container.pull_failed_since is None:
                container.pull_failed_since = now
            if now - container.pull_failed_since < self.image_pull_backoff_s:
                reason = "ErrImagePull"
                message = f'failed to pull and unpack image "{container.image}": not found'
            else:
                reason = "ImagePullBackOff"
                message = f'Back-off pulling image "{container.image}"'
            waiting = {"waiting": {"reason": reason, "message": message}}
            if container.state != waiting:
                container.state = waiting
                changed = True
        return changed

    @staticmethod
    def _all_containers(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
        return list(pod["spec"].get("initContainers") or []) + list(pod["spec"]["containers"])

    def _container_env(
        self, pod: Mapping[str, Any], run: _PodRun, container: Mapping[str, Any]
    ) -> dict[str, str]:
        """The container's own variables (envFrom, then env), resolved as the kubelet does."""
        name = container["name"]
        namespace = pod["metadata"]["namespace"]
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            for ref_kind, ref_key in ((SECRETS, "secretRef"), (CONFIG_MAPS, "configMapRef")):
                ref = source.get(ref_key)
                if not ref:
                    continue
                obj = self._store[ref_kind].get((namespace, ref["name"]))
                if obj is None:
                    if ref.get("optional"):
                        continue
                    message = f'{ref_kind.kind.lower()} "{ref["name"]}" not found'
                    raise _ContainerConfigError(name, message)
                for key, value in _config_data(obj).items():
                    env[prefix + key] = value.decode(errors="replace")
        for variable in container.get("env") or []:
            value_from = variable.get("valueFrom")
            if value_from is None:
                env[variable["name"]] = _expand(variable.get("value", ""), env)
                continue
            value = self._env_value_from(pod, container, value_from, namespace)
            if value is not None:
                env[variable["name"]] = value
        return env

    def _env_value_from(
        self,
        pod: Mapping[str, Any],
        container: Mapping[str, Any],
        source: Mapping[str, Any],
        namespace: str,
    ) -> str | None:
        for ref_kind, ref_key in ((SECRETS, "secretKeyRef"), (CONFIG_MAPS, "configMapKeyRef")):
            ref = source.get(ref_key)
            if not ref:
                continue
            obj = self._store[ref_kind].get((namespace, ref["name"]))
            data = _config_data(obj) if obj is not None else {}
            if obj is None or ref["key"] not in data:
                if ref.get("optional"):
                    return None
                if obj is None:
                    message = f'{ref_kind.kind.lower()} "{ref["name"]}" not found'
                else:
                    message = (
                        f"couldn't find key {ref['key']} in {ref_kind.kind} "
                        f"{namespace}/{ref['name']}"
                    )
                raise _ContainerConfigError(container["name"], message)
            return data[ref["key"]].decode(errors="replace")
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            match = re.match(r"^metadata\.(labels|annotations)\['(.+)'\]$", path)
            if match:
                return (pod["metadata"].get(match[1]) or {}).get(match[2], "")
            return _field_value(pod, path)
        if "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            section, _, resource = ref["resource"].partition(".")
            resources = container.get("resources") or {}
            amount = (resources.get(section) or {}).get(resource)
            if amount is None:  # no limit: the node's allocatable amount
                node = self._nodes[pod["spec"]["nodeName"]]
                amount = node.allocatable().get(resource, "0")
            divisor = parse_quantity(ref.get("divisor") or "1")
            return str(math.ceil(parse_quantity(amount) / divisor))
        return None

    def _check_volume_sources(self, pod: Mapping[str, Any]) -> None:
        namespace = pod["metadata"]["namespace"]
        first = pod["spec"]["containers"][0]["name"]
        for volume in pod["spec"].get("volumes") or []:
            for ref_kind, ref_key, name_key in (
                (SECRETS, "secret", "secretName"),
                (CONFIG_MAPS, "configMap", "name"),
            ):
                source = volume.get(ref_key)
                if not source or source.get("optional"):
                    continue
                if (namespace, source.get(name_key)) not in self._store[ref_kind]:
                    message = f'{ref_kind.kind.lower()} "{source.get(name_key)}" not found'
                    raise _ContainerConfigError(first, message)

    def _prepare_file_system(self, pod: Mapping[str, Any], run: _PodRun) -> None:
        """Make the volumes' directories and the pod root's mount-path symlinks to them."""
        namespace = pod["metadata"]["namespace"]
        node_dir = self.node_dir(run.node)
        for sub in ("root", "volumes", "logs", "home", "tmp"):
            (run.scratch / sub).mkdir(parents=True, exist_ok=True)
        for volume in pod["spec"].get("volumes") or []:
            name = volume["name"]
            if "persistentVolumeClaim" in volume:
                claim_name = volume["persistentVolumeClaim"]["claimName"]
                directory = self._claim_dir(self._store[CLAIMS][(namespace, claim_name)])
            elif "hostPath" in volume:
                directory = node_dir / "hostpath" / volume["hostPath"]["path"].lstrip("/")
            else:
                directory = run.scratch / "volumes" / name
            directory.mkdir(parents=True, exist_ok=True)
            if "secret" in volume or "configMap" in volume:
                self._write_config_volume(volume, namespace, directory)
            run.volume_dirs[name] = directory
        for container in self._all_containers(pod):
            for mount in container.get("volumeMounts") or []:
                target = run.volume_dirs[mount["name"]]
                if mount.get("subPath"):
                    target = target / mount["subPath"]
                    target.mkdir(parents=True, exist_ok=True)
                link = run.root / mount["mountPath"].strip("/")
                if link == run.root or link.is_symlink() or link.exists():
                    continue
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(target, target_is_directory=True)
            image = self.images.get(container.get("image", ""), ImageConfig())
            working_dir = container.get("workingDir") or image.working_dir or "/"
            cwd = run.root / working_dir.strip("/")
            cwd.mkdir(parents=True, exist_ok=True)  # the runtime creates a missing workingDir
            run.cwd[container["name"]] = cwd

    def _write_config_volume(self, volume: Mapping[str, Any], namespace: str, path: Path) -> None:
        if "secret" in volume:
            source = volume["secret"]
            obj = self._store[SECRETS].get((namespace, source.get("secretName")))
        else:
            source = volume["configMap"]
            obj = self._store[CONFIG_MAPS].get((namespace, source.get("name")))
        if obj is None:
            return  # optional and absent: an empty directory
        data = _config_data(obj)
        items = source.get("items") or [{"key": key, "path": key} for key in data]
        for item in items:
            if item["key"] in data:
                file = path / item["path"]
                file.parent.mkdir(parents=True, exist_ok=True)
                file.write_bytes(data[item["key"]])
                file.chmod(item.get("mode", source.get("defaultMode", 0o644)))

    def _process_env(self, pod: Mapping[str, Any], run: _PodRun, container: Mapping) -> dict:
        image = self.images.get(container.get("image", ""), ImageConfig())
        mounts = {
            mount["mountPath"]: str(run.volume_dirs[mount["name"]] / mount.get("subPath", ""))
            for mount in container.get("volumeMounts") or []
        }
        python_dir = str(Path(sys.executable).parent)
        env = {
            "PATH": f"{python_dir}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
            "HOME": str(run.scratch / "home"),
            "TMPDIR": str(run.scratch / "tmp"),
            "HOSTNAME": pod["metadata"]["name"],
            "LANG": "C.UTF-8",
            **image.env,
            **self.pod_env,
            "K8S_TEST_ROOT": str(run.root),
            "K8S_TEST_MOUNTS": json.dumps(mounts),
            "K8S_TEST_NODE": run.node,
        }
        env.update(run.env[container["name"]])
        return env

    def _argv(self, container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
        image = self.images.get(container.get("image", ""), ImageConfig())
        command = container.get("command") or list(image.entrypoint)
        if "args" in container:
            args = container.get("args") or []
        else:  # an image's CMD only applies when the container keeps the image's ENTRYPOINT
            args = [] if container.get("command") else list(image.cmd)
        return [_expand(part, env) for part in [*command, *args]]

    async def _run_pod(self, pod: dict[str, Any], run: _PodRun) -> None:
        spec = pod["spec"]
        policy = spec["restartPolicy"]
        try:
            for container in spec.get("initContainers") or []:
                exit_code = await self._run_container(pod, run, container, policy, init=True)
                if exit_code != 0:
                    self._finish_pod(pod, "Failed")
                    return
            run.initialized = True
            pod["status"]["phase"] = "Running"
            self._pod_changed(pod)
            exit_codes = await asyncio.gather(
                *(self._run_container(pod, run, c, policy, init=False) for c in spec["containers"])
            )
            self._finish_pod(pod, "Succeeded" if not any(exit_codes) else "Failed")
        except asyncio.CancelledError:
            for process in run.processes():
                _signal_group(process, signal.SIGKILL)
            raise
        except Exception as error:  # a bug here must show in the pod, not vanish in a task
            pod["status"]["message"] = f"Kubernetes test server error: {error!r}"
            self._finish_pod(pod, "Failed")

    def _finish_pod(self, pod: dict[str, Any], phase: str) -> None:
        pod["status"]["phase"] = phase
        self._pod_changed(pod)

    async def _run_container(
        self,
        pod: dict[str, Any],
        run: _PodRun,
        container: Mapping[str, Any],
        policy: str,
        *,
        init: bool,
    ) -> int:
        state = run.containers[container["name"]]
        while True:
            exit_code = await self._run_container_once(pod, run, container, state)
            restart = (policy == "Always" and not init) or (policy != "Never" and exit_code != 0)
            if run.stopping or not restart:
                return exit_code
            delay = min(self.restart_backoff_s * 2**state.restart_count, 5.0)
            state.last_state, state.restart_count = state.state, state.restart_count + 1
            message = (
                f"back-off {delay:g}s restarting failed container={state.name} "
                f"pod={pod['metadata']['name']}_{pod['metadata']['namespace']}"
                f"({pod['metadata']['uid']})"
            )
            state.state = {"waiting": {"reason": "CrashLoopBackOff", "message": message}}
            self._pod_changed(pod)
            await asyncio.sleep(delay)
            if run.stopping:
                return exit_code

    async def _run_container_once(
        self, pod: dict[str, Any], run: _PodRun, container: Mapping[str, Any], state: _ContainerRun
    ) -> int:
        env = self._process_env(pod, run, container)
        argv = self._argv(container, run.env[container["name"]])
        log_path = run.scratch / "logs" / f"{state.name}-{state.restart_count}.log"
        state.log_paths = [*state.log_paths, log_path]
        state.container_id = f"containerd://{secrets.token_hex(32)}"
        started = _now()
        if run.stopping:
            return 137
        try:
            if not argv:
                raise FileNotFoundError("no command specified")
            with log_path.open("wb") as log:
                process = await asyncio.create_subprocess_exec(
                    *argv,
                    cwd=run.cwd[state.name],
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,  # its own process group, to stop it with its children
                )
        except OSError as error:
            log_path.touch()
            target = argv[0] if argv else ""
            state.state = {
                "terminated": {
                    "exitCode": 128,
                    "reason": "StartError",
                    "message": (
                        "failed to create containerd task: failed to create shim task: OCI runtime "
                        f'create failed: unable to start container process: exec: "{target}": '
                        f"{error.strerror or error}"
                    ),
                    "startedAt": "1970-01-01T00:00:00Z",
                    "finishedAt": _now(),
                    "containerID": state.container_id,
                }
            }
            self._pod_changed(pod)
            return 128
        state.process = process
        state.state = {"running": {"startedAt": started}}
        self._pod_changed(pod)
        try:
            return_code = await process.wait()
        except asyncio.CancelledError:
            _signal_group(process, signal.SIGKILL)
            raise
        finally:
            state.process = None
        exit_code = return_code if return_code >= 0 else 128 - return_code  # killed by a signal
        state.state = {
            "terminated": {
                "exitCode": exit_code,
                "reason": "Completed" if exit_code == 0 else "Error",
                "startedAt": started,
                "finishedAt": _now(),
                "containerID": state.container_id,
            }
        }
        self._pod_changed(pod)
        return exit_code

    def _delete_pod(self, pod: dict[str, Any], grace_seconds: float | None) -> bool:
        """Delete at once, or stop the processes first (graceful). True if deletion is pending."""
        meta = pod["metadata"]
        if meta.get("deletionTimestamp"):
            return True
        run = self._runs.get(meta["uid"])
        running = run is not None and run.task is not None and not run.task.done()
        if not running:
            self._remove_pod(pod)
            return False
        if grace_seconds is None:
            grace_seconds = float(pod["spec"].get("terminationGracePeriodSeconds", 30))
        meta["deletionTimestamp"] = _now()
        meta["deletionGracePeriodSeconds"] = int(grace_seconds)
        self._pod_changed(pod)
        self._spawn(self._stop_pod(pod, run, min(grace_seconds, self.max_termination_grace_s)))
        return True

    async def _stop_pod(self, pod: dict[str, Any], run: _PodRun, grace_seconds: float) -> None:
        run.stopping = True
        for process in run.processes():
            _signal_group(process, signal.SIGTERM)
        assert run.task is not None
        done, _ = await asyncio.wait({run.task}, timeout=grace_seconds)
        if not done:
            for process in run.processes():
                _signal_group(process, signal.SIGKILL)
            # Let the run see its processes end, so that their exit codes are recorded.
            done, _ = await asyncio.wait({run.task}, timeout=5)
            if not done:
                run.task.cancel()
                await asyncio.wait({run.task})
        self._remove_pod(pod)

    def _remove_pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        if self._store[PODS].get(key) is pod:
            del self._store[PODS][key]
        unfinished = pod["status"]["phase"] not in TERMINAL_PHASES
        for ref in meta.get("ownerReferences") or []:
            # A job counts a pod deleted before it finished as failed (pod tracking).
            tracked = self._job_tracked.get(ref["uid"])
            if tracked is not None and unfinished:
                tracked.setdefault(meta["uid"], "Failed")
        record = self._records.get(meta["uid"])
        if record is not None:
            record.deleted = True
        self._request_reconcile()

    def _pod_changed(self, pod: dict[str, Any]) -> None:
        """Bring a pod's status up to date with its run, store a new version, tell the others."""
        run = self._runs.get(pod["metadata"]["uid"])
        if run is not None:
            _refresh_pod_status(pod, run)
        self._touch(pod)
        record = self._records.get(pod["metadata"]["uid"])
        if record is not None:
            record.pod = copy.deepcopy(pod)
            if run is not None:
                record.volume_dirs = dict(run.volume_dirs)
                record.log_files = {c.name: list(c.log_paths) for c in run.containers.values()}
        self._request_reconcile()

    # ---- logs

    def _read_log(self, pod: Mapping[str, Any], query: Mapping[str, str]) -> web.Response:
        name = pod["metadata"]["name"]
        names = [c["name"] for c in pod["spec"]["containers"]]
        init_names = [c["name"] for c in pod["spec"].get("initContainers") or []]
        container = query.get("container")
        if not container:
            if len(names) != 1:
                message = (
                    f"a container name must be specified for pod {name}, "
                    f"choose one of: [{' '.join(names)}]"
                )
                if init_names:
                    message += f" or one of the init containers: [{' '.join(init_names)}]"
                raise _bad_request(message)
            container = names[0]
        if container not in names + init_names:
            raise _bad_request(f"container {container} is not valid for pod {name}")
        run = self._runs.get(pod["metadata"]["uid"])
        if run is None:
            return web.Response(text="", content_type="text/plain")  # not on a node yet
        state = run.containers[container]
        if _query_flag(query.get("previous")):
            if "terminated" not in state.last_state:
                raise _bad_request(
                    f'previous terminated container "{container}" in pod "{name}" not found'
                )
            path = state.log_paths[-2] if state.has_started else state.log_paths[-1]
        elif state.has_started or "terminated" in state.last_state:
            path = state.log_paths[-1]
        else:
            reason = state.state.get("waiting", {}).get("reason", "ContainerCreating")
            explained = {
                "ErrImagePull": "image can't be pulled",
                "ImagePullBackOff": "trying and failing to pull image",
            }.get(reason, reason)
            raise _bad_request(
                f'container "{container}" in pod "{name}" is waiting to start: {explained}'
            )
        data = path.read_bytes() if path.exists() else b""
        if query.get("tailLines"):
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-int(query["tailLines"]) :]) if int(query["tailLines"]) else b""
        if query.get("limitBytes"):
            data = data[: int(query["limitBytes"])]
        return web.Response(body=data, content_type="text/plain", charset="utf-8")


class _ContainerConfigError(Exception):
    """A container cannot be configured yet (a missing Secret or key): the kubelet retries."""

    def __init__(self, container: str, message: str):
        super().__init__(message)
        self.container = container


def _random_suffix(length: int = 5) -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' generateName alphabet
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _config_data(obj: Mapping[str, Any]) -> dict[str, bytes]:
    """A Secret's or ConfigMap's data as bytes by key."""
    if obj.get("kind") == "Secret":
        return {key: base64.b64decode(value) for key, value in (obj.get("data") or {}).items()}
    data = {key: value.encode() for key, value in (obj.get("data") or {}).items()}
    for key, value in (obj.get("binaryData") or {}).items():
        data[key] = base64.b64decode(value)
    return data


def _node_local(claim: Mapping[str, Any]) -> bool:
    """Whether a claim's volume lives on one node (ReadWriteOnce, like a LocalSSD volume)."""
    modes = claim["spec"].get("accessModes") or []
    return not any(mode in ("ReadWriteMany", "ReadOnlyMany") for mode in modes)


def _selected_node(claim: Mapping[str, Any]) -> str | None:
    return (claim["metadata"].get("annotations") or {}).get("volume.kubernetes.io/selected-node")


def _condition(status: Mapping[str, Any], condition_type: str) -> dict[str, Any] | None:
    for condition in status.get("conditions") or []:
        if condition["type"] == condition_type:
            return condition
    return None


def _condition_true(status: Mapping[str, Any], *condition_types: str) -> bool:
    return any((_condition(status, name) or {}).get("status") == "True" for name in condition_types)


def _set_job_condition(
    status: dict[str, Any], condition_type: str, reason: str, message: str
) -> None:
    if _condition(status, condition_type):
        return
    now = _now()
    status.setdefault("conditions", []).append(
        {
            "type": condition_type,
            "status": "True",
            "lastProbeTime": now,
            "lastTransitionTime": now,
            "reason": reason,
            "message": message,
        }
    )


def _fit_error(node_count: int, reasons_by_node: Mapping[str, list[str]]) -> str:
    """kube-scheduler's FitError message, with the preemption plugin's summary after it."""
    histogram: dict[str, int] = {}
    preemption: dict[str, int] = {}
    for reasons in reasons_by_node.values():
        for reason in reasons:
            histogram[reason] = histogram.get(reason, 0) + 1
        resources_only = all(r.startswith("Insufficient ") or r == "Too many pods" for r in reasons)
        outcome = (
            "No preemption victims found for incoming pod"
            if resources_only
            else "Preemption is not helpful for scheduling"
        )
        preemption[outcome] = preemption.get(outcome, 0) + 1
    summary = ", ".join(sorted(f"{count} {reason}" for reason, count in histogram.items()))
    after = ", ".join(sorted(f"{count} {outcome}" for outcome, count in preemption.items()))
    return (
        f"0/{node_count} nodes are available: {summary}. "
        f"preemption: 0/{node_count} nodes are available: {after}."
    )


def _refresh_pod_status(pod: dict[str, Any], run: _PodRun) -> None:
    spec, status = pod["spec"], pod["status"]
    init_names = [c["name"] for c in spec.get("initContainers") or []]
    names = [c["name"] for c in spec["containers"]]
    if init_names:
        status["initContainerStatuses"] = [run.containers[n].status() for n in init_names]
    status["containerStatuses"] = [run.containers[n].status() for n in names]
    terminal = status.get("phase") in TERMINAL_PHASES
    unready = [n for n in names if "running" not in run.containers[n].state]
    incomplete = [n for n in init_names if not run.containers[n].status()["ready"]]
    previous = {c["type"]: c for c in status.get("conditions") or []}

    def condition(kind: str, ok: bool, reason: str = "", message: str = "") -> dict[str, Any]:
        value = "True" if ok else "False"
        before = previous.get(kind)
        unchanged = before is not None and before["status"] == value
        changed_at = before["lastTransitionTime"] if unchanged else _now()
        entry: dict[str, Any] = {
            "type": kind,
            "status": value,
            "lastProbeTime": None,
            "lastTransitionTime": changed_at,
        }
        if reason:
            entry["reason"] = reason
        if message:
            entry["message"] = message
        return entry

    ready = not terminal and not unready
    if ready:
        why_not_ready: tuple[str, ...] = ()
    elif terminal:
        why_not_ready = ("PodCompleted",)
    else:
        unready_text = " ".join(unready)
        why_not_ready = ("ContainersNotReady", f"containers with unready status: [{unready_text}]")
    why_not_initialized: tuple[str, ...] = ()
    if not run.initialized:
        why_not_initialized = (
            "ContainersNotInitialized",
            f"containers with incomplete status: [{' '.join(incomplete)}]",
        )
    status["conditions"] = [
        condition("PodReadyToStartContainers", run.task is not None and not terminal),
        condition("Initialized", run.initialized, *why_not_initialized),
        condition("Ready", ready, *why_not_ready),
        condition("ContainersReady", ready, *why_not_ready),
        previous.get("PodScheduled") or condition("PodScheduled", True),
    ]


# --------------------------------------------------------------------------------------------
# Entry points


def start_server(nodes: Iterable[SimulatedNode] = DEFAULT_NODES, **options: Any) -> K8sTestServer:
    """Start a server on a free 127.0.0.1 port, on a background thread; ``.stop()`` ends it.

    Options: ``root`` (a directory for pods' and nodes' files; a temporary one, removed on stop,
    by default), ``images`` (name -> ``ImageConfig``), ``unpullable_images``, ``pod_env`` (extra
    variables for every process), ``kubernetes_version`` (of the schemas, default 1.33.0),
    ``max_termination_grace_s``, ``restart_backoff_s``, ``image_pull_backoff_s``, ``port``.
    """
    return K8sTestServer(nodes, **options).start()


@pytest.fixture(name="k8s_server")
def k8s_server_fixture(tmp_path: Path) -> Iterator[K8sTestServer]:
    """A running server with DEFAULT_NODES (a CPU node, a tainted one-GPU node) under tmp_path.

    Use it from another test module with ``from k8s_test_server import k8s_server_fixture``
    (the fixture's name is ``k8s_server``).
    """
    with start_server(DEFAULT_NODES, root=tmp_path / "k8s-test-server") as server:
        yield server
