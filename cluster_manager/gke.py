"""The Google Kubernetes Engine calls of the scaler: one cluster, one node pool.

Every change GKE makes is a long-running Operation: each mutating call here waits for its
operation (get_operation until DONE) and raises `OperationFailed` or `OperationTimeout` with the
call spelled out. Any other failure of a call (permission, not found, quota, connection) raises
`GkeError`, again naming the call, so that the caller can log it and try again later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import google.auth.exceptions
import requests
from google.api_core import exceptions as api_exceptions
from google.api_core import gapic_v1
from google.cloud import container_v1

log = logging.getLogger(__name__)

# The client's own retry/timeout policy; pass retry=None to fail at once (tests).
DEFAULT = gapic_v1.method.DEFAULT

OPERATION_DONE = container_v1.Operation.Status.DONE


class GkeError(Exception):
    """A GKE call that failed; the message names the call and the API's answer."""

    def __init__(self, message: str, *, call: str, code: int | None = None) -> None:
        super().__init__(message)
        self.call = call
        self.code = code


class OperationFailed(GkeError):
    """The operation ended (DONE) with an error."""


class OperationTimeout(GkeError):
    """The operation was not DONE within the timeout; it may still finish on its own."""


@dataclass(frozen=True)
class NodePoolRef:
    """Where the managed node pool lives."""

    project: str
    location: str
    cluster: str
    node_pool: str

    @property
    def location_path(self) -> str:
        return f"projects/{self.project}/locations/{self.location}"

    @property
    def cluster_path(self) -> str:
        return f"{self.location_path}/clusters/{self.cluster}"

    @property
    def node_pool_path(self) -> str:
        return f"{self.cluster_path}/nodePools/{self.node_pool}"

    def operation_path(self, operation_name: str) -> str:
        return f"{self.location_path}/operations/{operation_name}"


def make_client(endpoint: str | None = None) -> container_v1.ClusterManagerClient:
    """The REST client: application default credentials, or anonymous ones at an endpoint
    override (a local test server speaks plain HTTP and checks no tokens)."""
    if endpoint:
        from google.auth.credentials import AnonymousCredentials

        return container_v1.ClusterManagerClient(
            transport="rest",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": endpoint},
        )
    return container_v1.ClusterManagerClient(transport="rest")


# What a failing call can raise besides the API's own errors: no credentials, no connection.
_CALL_ERRORS = (
    api_exceptions.GoogleAPIError,
    google.auth.exceptions.GoogleAuthError,
    requests.exceptions.RequestException,
)


class GkeNodePool:
    """The calls the scaler makes on one cluster and one of its node pools."""

    def __init__(
        self,
        ref: NodePoolRef,
        *,
        endpoint: str | None = None,
        client: container_v1.ClusterManagerClient | None = None,
        retry: Any = DEFAULT,
        timeout: float | None = 60.0,
        poll_interval_s: float = 5.0,
        operation_timeout_s: float = 1800.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.ref = ref
        self._endpoint = endpoint
        self._client = client
        self._retry = retry
        self._timeout = timeout
        self.poll_interval_s = poll_interval_s
        self.operation_timeout_s = operation_timeout_s
        self._clock = clock
        self._sleep = sleep

    def _api(self) -> container_v1.ClusterManagerClient:
        # Made on first use: without credentials the error belongs to a call that is logged
        # and retried, not to the watcher's start-up.
        if self._client is None:
            self._client = make_client(self._endpoint)
        return self._client

    def _call(self, call: str, method: str, request: Any) -> Any:
        try:
            return getattr(self._api(), method)(
                request=request, retry=self._retry, timeout=self._timeout
            )
        except _CALL_ERRORS as error:
            code = getattr(error, "code", None)
            raise GkeError(
                f"GKE call {call} failed: {error}",
                call=call,
                code=code if isinstance(code, int) else None,
            ) from error

    def get_cluster(self) -> container_v1.Cluster | None:
        """The cluster, or None when it does not exist."""
        call = f"get_cluster(name={self.ref.cluster_path})"
        try:
            return self._call(
                call, "get_cluster", container_v1.GetClusterRequest(name=self.ref.cluster_path)
            )
        except GkeError as error:
            if isinstance(error.__cause__, api_exceptions.NotFound):
                return None
            raise

    def create_cluster(self, cluster: container_v1.Cluster) -> container_v1.Operation:
        call = f"create_cluster(parent={self.ref.location_path}, cluster.name={cluster.name})"
        request = container_v1.CreateClusterRequest(parent=self.ref.location_path, cluster=cluster)
        return self.wait(self._call(call, "create_cluster", request), call)

    def delete_cluster(self) -> container_v1.Operation:
        call = f"delete_cluster(name={self.ref.cluster_path})"
        request = container_v1.DeleteClusterRequest(name=self.ref.cluster_path)
        return self.wait(self._call(call, "delete_cluster", request), call)

    def set_node_pool_size(self, node_count: int) -> container_v1.Operation:
        call = f"set_node_pool_size(name={self.ref.node_pool_path}, node_count={node_count})"
        request = container_v1.SetNodePoolSizeRequest(
            name=self.ref.node_pool_path, node_count=node_count
        )
        return self.wait(self._call(call, "set_node_pool_size", request), call)

    def set_node_pool_autoscaling(self, min_nodes: int, max_nodes: int) -> container_v1.Operation:
        call = (
            f"set_node_pool_autoscaling(name={self.ref.node_pool_path}, "
            f"total_min_node_count={min_nodes}, total_max_node_count={max_nodes})"
        )
        autoscaling = autoscaling_bounds(min_nodes, max_nodes)
        request = container_v1.SetNodePoolAutoscalingRequest(
            name=self.ref.node_pool_path, autoscaling=autoscaling
        )
        return self.wait(self._call(call, "set_node_pool_autoscaling", request), call)

    def wait(self, operation: container_v1.Operation, call: str) -> container_v1.Operation:
        """Polls `operation` until DONE; raises OperationFailed / OperationTimeout."""
        deadline = self._clock() + self.operation_timeout_s
        name = operation.name
        while operation.status != OPERATION_DONE:
            if self._clock() >= deadline:
                status = container_v1.Operation.Status(operation.status).name
                raise OperationTimeout(
                    f"GKE call {call}: operation {name} not DONE after "
                    f"{self.operation_timeout_s:g} s (status {status}); it may still finish, "
                    "the scaler reads the cluster again before its next change",
                    call=call,
                )
            self._sleep(self.poll_interval_s)
            operation = self._call(
                f"get_operation(name={self.ref.operation_path(name)}) for {call}",
                "get_operation",
                container_v1.GetOperationRequest(name=self.ref.operation_path(name)),
            )
        # status_message is the older, deprecated form of `error`.
        if operation.error.code or operation.error.message or operation.status_message:
            detail = operation.error.message or operation.status_message
            raise OperationFailed(
                f"GKE call {call}: operation {name} failed: {detail} (code {operation.error.code})",
                call=call,
                code=operation.error.code or None,
            )
        log.debug("GKE call %s: operation %s done", call, name)
        return operation


def autoscaling_bounds(min_nodes: int, max_nodes: int) -> container_v1.NodePoolAutoscaling:
    """Bounds over the whole pool (total_*, not per zone, as deploy/gke/nodepools.sh sets them).
    location_policy ANY lets the autoscaler take a GPU in whichever zone has one free; the call
    replaces the pool's whole autoscaling setting, so it is spelled out each time."""
    return container_v1.NodePoolAutoscaling(
        enabled=True,
        total_min_node_count=min_nodes,
        total_max_node_count=max_nodes,
        location_policy=container_v1.NodePoolAutoscaling.LocationPolicy.ANY,
    )
