"""A GKE API server for tests: the v1 REST/JSON protocol on 127.0.0.1, clusters kept in memory.

Code that drives GKE through the official google-cloud-container client is tested against it::

    with GkeApiTestServer() as server:
        server.add_cluster("projects/p/locations/l", {"name": "c", "nodePools": [{"name": "gpu"}]})
        client = server.client()
        operation = client.set_node_pool_size(
            request={"name": "projects/p/locations/l/clusters/c/nodePools/gpu", "node_count": 2},
            retry=None,
        )

It answers the calls the scaler makes, on the paths and with the JSON the client's REST
transport uses: get_cluster (GET .../clusters/C), create_cluster (POST .../clusters),
delete_cluster (DELETE .../clusters/C), set_node_pool_size (POST .../nodePools/NP:setSize),
set_node_pool_autoscaling (POST .../nodePools/NP:setAutoscaling) and get_operation
(GET .../operations/OP). Anything else is 404, as on the real API.

Like GKE:

* each request body is parsed as the real request message (``from_json`` with unknown fields
  refused), so a misspelt field is 400 INVALID_ARGUMENT naming it; then checked against a subset
  of GKE's rules (names, counts, autoscaling bounds, a cluster's node pools);
* each mutation answers an Operation, RUNNING until it has been polled
  ``polls_until_done`` times (0: DONE at once), and takes effect when it is DONE: a new cluster
  is PROVISIONING until then, a deleted one STOPPING, a resized one RECONCILING;
* a second mutation on a cluster while one of its operations runs is refused (400
  FAILED_PRECONDITION, "incompatible operation");
* errors are the JSON ``{"error": {"code", "message", "status"}}`` that the client maps to its
  exceptions (403 PermissionDenied, 404 NotFound, 409 Conflict, 429 TooManyRequests, ...).

For tests: ``calls`` records every request (rpc name, resource name, parsed body, answer code);
``inject_error`` makes the next call(s) of a kind fail with a given status; ``fail_operation``
makes the next operation of a kind end DONE with an error; ``node_pool_size`` tells how many
nodes a pool has (GKE's API has no such read; a test can).
"""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.auth.credentials import AnonymousCredentials
from google.cloud import container_v1
from google.protobuf import json_format
from google.rpc import status_pb2

Operation = container_v1.Operation
Cluster = container_v1.Cluster

HTTP_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}

_NAME = r"[^/:?]+"
_LOCATION = rf"projects/(?P<project>{_NAME})/locations/(?P<location>{_NAME})"
_CLUSTER = rf"{_LOCATION}/clusters/(?P<cluster>{_NAME})"
_NODE_POOL = rf"{_CLUSTER}/nodePools/(?P<node_pool>{_NAME})"

# (HTTP method, path pattern under /v1/, rpc name, request message type, resource field)
ROUTES: list[tuple[str, re.Pattern[str], str, type, str]] = [
    (
        "GET",
        re.compile(rf"^(?P<resource>{_CLUSTER})$"),
        "get_cluster",
        container_v1.GetClusterRequest,
        "name",
    ),
    (
        "DELETE",
        re.compile(rf"^(?P<resource>{_CLUSTER})$"),
        "delete_cluster",
        container_v1.DeleteClusterRequest,
        "name",
    ),
    (
        "POST",
        re.compile(rf"^(?P<resource>{_LOCATION})/clusters$"),
        "create_cluster",
        container_v1.CreateClusterRequest,
        "parent",
    ),
    (
        "POST",
        re.compile(rf"^(?P<resource>{_NODE_POOL}):setSize$"),
        "set_node_pool_size",
        container_v1.SetNodePoolSizeRequest,
        "name",
    ),
    (
        "POST",
        re.compile(rf"^(?P<resource>{_NODE_POOL}):setAutoscaling$"),
        "set_node_pool_autoscaling",
        container_v1.SetNodePoolAutoscalingRequest,
        "name",
    ),
    (
        "GET",
        re.compile(rf"^(?P<resource>{_LOCATION}/operations/(?P<operation>{_NAME}))$"),
        "get_operation",
        container_v1.GetOperationRequest,
        "name",
    ),
]

OPERATION_TYPES = {
    "create_cluster": Operation.Type.CREATE_CLUSTER,
    "delete_cluster": Operation.Type.DELETE_CLUSTER,
    "set_node_pool_size": Operation.Type.SET_NODE_POOL_SIZE,
    "set_node_pool_autoscaling": Operation.Type.UPDATE_CLUSTER,
}

CLUSTER_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$")


class ApiError(Exception):
    def __init__(self, code: int, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or HTTP_STATUS_NAMES.get(code, "UNKNOWN")


@dataclass
class ApiCall:
    """One request as the server saw it."""

    rpc: str  # get_cluster, create_cluster, ... or "unknown"
    http_method: str
    path: str
    resource: str  # the name/parent from the path
    body: dict[str, Any]  # the JSON body as sent ({} for none)
    code: int = 200  # the HTTP status answered


@dataclass
class _Injected:
    code: int
    message: str
    times: int


@dataclass
class _OperationRecord:
    operation: Operation
    cluster_path: str
    rpc: str
    apply: Any  # callable run under the lock when the operation is DONE
    on_failure: Any = None
    polls: int = 0
    fail_with: tuple[int, str] | None = None


@dataclass
class _ClusterRecord:
    cluster: Cluster
    pool_sizes: dict[str, int] = field(default_factory=dict)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class GkeApiTestServer:
    """The server; start with `start()` or use it as a context manager."""

    def __init__(self, *, polls_until_done: int = 1) -> None:
        self.polls_until_done = polls_until_done
        self.calls: list[ApiCall] = []
        self._lock = threading.RLock()
        self._clusters: dict[str, _ClusterRecord] = {}
        self._operations: dict[str, _OperationRecord] = {}
        self._errors: dict[str, _Injected] = {}
        self._operation_failures: dict[str, tuple[int, str]] = {}
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- life cycle -------------------------------------------------------------------------

    def start(self) -> GkeApiTestServer:
        server = self

        class Handler(_Handler):
            api = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="gke-api-test-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> GkeApiTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        assert self._httpd is not None, "start the server first"
        return f"http://127.0.0.1:{self._httpd.server_port}"

    def client(self) -> container_v1.ClusterManagerClient:
        return container_v1.ClusterManagerClient(
            transport="rest",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.endpoint},
        )

    # ---- what tests set up and look at ------------------------------------------------------

    def add_cluster(self, parent: str, cluster: Cluster | dict[str, Any]) -> Cluster:
        """Adds a RUNNING cluster (as if created long ago); `cluster` in API field names."""
        if isinstance(cluster, dict):
            cluster = Cluster.from_json(json.dumps(cluster), ignore_unknown_fields=False)
        with self._lock:
            self._check_cluster(cluster)
            record = self._store_cluster(parent, cluster)
            record.cluster.status = Cluster.Status.RUNNING
            for node_pool in record.cluster.node_pools:
                node_pool.status = container_v1.NodePool.Status.RUNNING
            return Cluster(record.cluster)

    def cluster(self, path: str) -> Cluster | None:
        with self._lock:
            record = self._clusters.get(path)
            return None if record is None else Cluster(record.cluster)

    def node_pool_size(self, path: str) -> int:
        """Nodes in the pool at `path` (projects/P/locations/L/clusters/C/nodePools/NP)."""
        cluster_path, _, pool = path.partition("/nodePools/")
        with self._lock:
            record = self._clusters.get(cluster_path)
            if record is None or pool not in record.pool_sizes:
                raise KeyError(f"no node pool {path}")
            return record.pool_sizes[pool]

    def inject_error(self, rpc: str, code: int, message: str = "", *, times: int = 1) -> None:
        """The next `times` calls of `rpc` (e.g. "set_node_pool_size") answer `code`."""
        with self._lock:
            self._errors[rpc] = _Injected(code, message or f"injected error {code}", times)

    def fail_operation(self, rpc: str, message: str, code: int = 9) -> None:
        """The next operation started by `rpc` ends DONE with this error (google.rpc.Code)."""
        with self._lock:
            self._operation_failures[rpc] = (code, message)

    def calls_of(self, *rpcs: str) -> list[ApiCall]:
        with self._lock:
            return [call for call in self.calls if call.rpc in rpcs]

    def mutations(self) -> list[ApiCall]:
        """The calls that change something (everything but get_cluster / get_operation)."""
        return [
            call
            for call in self.calls_of(*OPERATION_TYPES)
            if call.http_method in ("POST", "DELETE")
        ]

    def running_operations(self) -> list[Operation]:
        with self._lock:
            return [
                Operation(record.operation)
                for record in self._operations.values()
                if record.operation.status != Operation.Status.DONE
            ]

    # ---- the API ----------------------------------------------------------------------------

    def handle(self, http_method: str, raw_path: str, body: bytes) -> tuple[int, str]:
        url = urllib.parse.urlsplit(raw_path)
        path = urllib.parse.unquote(url.path)
        query = urllib.parse.parse_qs(url.query)
        enum_ints = any("enum-encoding=int" in value for value in query.get("$alt", []))
        text = body.decode("utf-8") if body else ""
        try:
            sent = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError:
            sent = {"<not JSON>": text}
        call = ApiCall("unknown", http_method, path, "", sent if isinstance(sent, dict) else {})
        with self._lock:
            self.calls.append(call)
            try:
                response = self._dispatch(call, text)
            except ApiError as error:
                call.code = error.code
                payload = {
                    "error": {
                        "code": error.code,
                        "message": error.message,
                        "status": error.status,
                    }
                }
                return error.code, json.dumps(payload)
            return 200, type(response).to_json(response, use_integers_for_enums=enum_ints)

    def _dispatch(self, call: ApiCall, text: str) -> Any:
        if not call.path.startswith("/v1/"):
            raise ApiError(404, f"Not found: {call.path}")
        rest = call.path[len("/v1/") :]
        route = next(
            (
                (entry, match)
                for entry in ROUTES
                if entry[0] == call.http_method and (match := entry[1].match(rest))
            ),
            None,
        )
        if route is None:
            raise ApiError(404, f"Method not found: {call.http_method} {call.path}")
        (_, _, rpc, request_type, resource_field), match = route
        call.rpc = rpc
        call.resource = match["resource"]
        injected = self._errors.get(rpc)
        if injected is not None:
            injected.times -= 1
            if injected.times <= 0:
                del self._errors[rpc]
            raise ApiError(injected.code, injected.message)
        try:
            request = request_type.from_json(text or "{}", ignore_unknown_fields=False)
        except json_format.ParseError as error:
            raise ApiError(400, f"Invalid JSON payload received. {error}") from error
        sent_resource = getattr(request, resource_field)
        if sent_resource and sent_resource != call.resource:
            raise ApiError(
                400, f"{resource_field} {sent_resource!r} in the body differs from the URL"
            )
        setattr(request, resource_field, call.resource)
        return getattr(self, f"_{rpc}")(request, match)

    def _cluster_record(self, path: str) -> _ClusterRecord:
        record = self._clusters.get(path)
        if record is None:
            raise ApiError(404, f"Not found: {path}.")
        return record

    def _check_idle(self, cluster_path: str) -> None:
        for name, record in self._operations.items():
            if record.cluster_path == cluster_path and record.operation.status != (
                Operation.Status.DONE
            ):
                raise ApiError(
                    400,
                    f"Cluster is running incompatible operation {name}.",
                    "FAILED_PRECONDITION",
                )

    def _get_cluster(self, request: Any, match: re.Match[str]) -> Cluster:
        return self._cluster_record(request.name).cluster

    def _create_cluster(self, request: Any, match: re.Match[str]) -> Operation:
        cluster = request.cluster
        self._check_cluster(cluster)
        path = f"{request.parent}/clusters/{cluster.name}"
        if path in self._clusters:
            raise ApiError(409, f"Already exists: {path}.")
        record = self._store_cluster(request.parent, cluster)
        record.cluster.status = Cluster.Status.PROVISIONING

        def apply() -> None:
            record.cluster.status = Cluster.Status.RUNNING
            for node_pool in record.cluster.node_pools:
                node_pool.status = container_v1.NodePool.Status.RUNNING

        def on_failure(message: str) -> None:
            record.cluster.status = Cluster.Status.ERROR
            record.cluster.status_message = message

        return self._start_operation("create_cluster", path, path, apply, on_failure)

    def _delete_cluster(self, request: Any, match: re.Match[str]) -> Operation:
        record = self._cluster_record(request.name)
        self._check_idle(request.name)
        record.cluster.status = Cluster.Status.STOPPING

        def apply() -> None:
            self._clusters.pop(request.name, None)

        def on_failure(message: str) -> None:
            record.cluster.status = Cluster.Status.ERROR

        return self._start_operation(
            "delete_cluster", request.name, request.name, apply, on_failure
        )

    def _node_pool(self, match: re.Match[str]) -> tuple[str, _ClusterRecord, Any]:
        cluster_path = (
            f"projects/{match['project']}/locations/{match['location']}/clusters/{match['cluster']}"
        )
        record = self._cluster_record(cluster_path)
        for node_pool in record.cluster.node_pools:
            if node_pool.name == match["node_pool"]:
                return cluster_path, record, node_pool
        raise ApiError(404, f"Not found: {cluster_path}/nodePools/{match['node_pool']}.")

    def _check_running(self, cluster_path: str, record: _ClusterRecord) -> None:
        self._check_idle(cluster_path)
        if record.cluster.status != Cluster.Status.RUNNING:
            status = Cluster.Status(record.cluster.status).name
            raise ApiError(
                400, f"Cluster {cluster_path} is {status}; try again later.", "FAILED_PRECONDITION"
            )

    def _set_node_pool_size(self, request: Any, match: re.Match[str]) -> Operation:
        cluster_path, record, node_pool = self._node_pool(match)
        if request.node_count < 0:
            raise ApiError(400, f"node_count must be >= 0, got {request.node_count}.")
        self._check_running(cluster_path, record)
        record.cluster.status = Cluster.Status.RECONCILING
        name = node_pool.name

        def apply() -> None:
            record.pool_sizes[name] = request.node_count
            self._count_nodes(record)
            record.cluster.status = Cluster.Status.RUNNING

        def on_failure(message: str) -> None:
            record.cluster.status = Cluster.Status.RUNNING

        return self._start_operation(
            "set_node_pool_size", cluster_path, request.name, apply, on_failure
        )

    def _set_node_pool_autoscaling(self, request: Any, match: re.Match[str]) -> Operation:
        cluster_path, record, node_pool = self._node_pool(match)
        self._check_autoscaling(request.autoscaling, f"node pool {request.name}")
        self._check_running(cluster_path, record)
        record.cluster.status = Cluster.Status.RECONCILING
        name = node_pool.name
        autoscaling = container_v1.NodePoolAutoscaling(request.autoscaling)

        def apply() -> None:
            for pool in record.cluster.node_pools:
                if pool.name == name:
                    pool.autoscaling = autoscaling
            # The autoscaler keeps the pool within its bounds.
            high = autoscaling.total_max_node_count or autoscaling.max_node_count
            low = autoscaling.total_min_node_count or autoscaling.min_node_count
            if autoscaling.enabled:
                record.pool_sizes[name] = max(low, min(high, record.pool_sizes.get(name, 0)))
            self._count_nodes(record)
            record.cluster.status = Cluster.Status.RUNNING

        def on_failure(message: str) -> None:
            record.cluster.status = Cluster.Status.RUNNING

        return self._start_operation(
            "set_node_pool_autoscaling", cluster_path, request.name, apply, on_failure
        )

    def _get_operation(self, request: Any, match: re.Match[str]) -> Operation:
        record = self._operations.get(match["operation"])
        if record is None:
            raise ApiError(404, f"Not found: operation {request.name}.")
        if record.operation.status != Operation.Status.DONE:
            record.polls += 1
            if record.polls >= self.polls_until_done:
                self._finish(record)
        return record.operation

    # ---- the state --------------------------------------------------------------------------

    def _check_cluster(self, cluster: Cluster) -> None:
        if not CLUSTER_NAME.match(cluster.name):
            raise ApiError(
                400,
                f"Invalid value for field 'cluster.name': {cluster.name!r}. Must be 1-40 "
                "lowercase letters, digits or hyphens, starting with a letter.",
            )
        if cluster.initial_node_count and cluster.node_pools:
            raise ApiError(
                400, "Cluster.initial_node_count and Cluster.node_pools cannot both be set."
            )
        if not cluster.node_pools:
            raise ApiError(400, "Cluster.node_pools must name at least one node pool.")
        names = [node_pool.name for node_pool in cluster.node_pools]
        for name in names:
            if not CLUSTER_NAME.match(name):
                raise ApiError(400, f"Invalid value for field 'node_pool.name': {name!r}.")
            if names.count(name) > 1:
                raise ApiError(400, f"Node pool {name!r} is given twice.")
        for node_pool in cluster.node_pools:
            if node_pool.initial_node_count < 0:
                raise ApiError(400, f"node pool {node_pool.name}: initial_node_count < 0.")
            if "autoscaling" in node_pool and node_pool.autoscaling.enabled:
                self._check_autoscaling(node_pool.autoscaling, f"node pool {node_pool.name}")

    @staticmethod
    def _check_autoscaling(autoscaling: Any, where: str) -> None:
        if not autoscaling.enabled:
            return
        per_zone = autoscaling.min_node_count or autoscaling.max_node_count
        total = autoscaling.total_min_node_count or autoscaling.total_max_node_count
        if per_zone and total:
            raise ApiError(
                400,
                f"{where}: per-zone (min/max_node_count) and total (total_min/max_node_count) "
                "limits cannot both be set.",
            )
        for low, high in (
            (autoscaling.min_node_count, autoscaling.max_node_count),
            (autoscaling.total_min_node_count, autoscaling.total_max_node_count),
        ):
            if low < 0 or high < 0 or high < low:
                raise ApiError(
                    400, f"{where}: autoscaling needs 0 <= min <= max, got {low}/{high}."
                )

    def _store_cluster(self, parent: str, cluster: Cluster) -> _ClusterRecord:
        stored = Cluster(cluster)
        location = parent.rsplit("/", 1)[-1]
        path = f"{parent}/clusters/{stored.name}"
        stored.location = location
        stored.self_link = f"https://container.googleapis.com/v1/{path}"
        stored.create_time = _now()
        record = _ClusterRecord(stored)
        for node_pool in stored.node_pools:
            node_pool.self_link = f"{stored.self_link}/nodePools/{node_pool.name}"
            node_pool.status = container_v1.NodePool.Status.PROVISIONING
            record.pool_sizes[node_pool.name] = node_pool.initial_node_count
        self._count_nodes(record)
        self._clusters[path] = record
        return record

    @staticmethod
    def _count_nodes(record: _ClusterRecord) -> None:
        record.cluster.current_node_count = sum(record.pool_sizes.values())

    def _start_operation(
        self, rpc: str, cluster_path: str, target: str, apply: Any, on_failure: Any
    ) -> Operation:
        name = f"operation-{uuid.uuid4().hex[:16]}"
        location = cluster_path.split("/")[3]
        operation = Operation(
            name=name,
            operation_type=OPERATION_TYPES[rpc],
            status=Operation.Status.RUNNING,
            location=location,
            zone=location,
            self_link=f"https://container.googleapis.com/v1/"
            f"{cluster_path.split('/clusters/')[0]}/operations/{name}",
            target_link=f"https://container.googleapis.com/v1/{target}",
            start_time=_now(),
        )
        record = _OperationRecord(
            operation,
            cluster_path,
            rpc,
            apply,
            on_failure,
            fail_with=self._operation_failures.pop(rpc, None),
        )
        self._operations[name] = record
        if self.polls_until_done <= 0:
            self._finish(record)
        return Operation(operation)

    def _finish(self, record: _OperationRecord) -> None:
        record.operation.status = Operation.Status.DONE
        record.operation.end_time = _now()
        if record.fail_with is not None:
            code, message = record.fail_with
            record.operation.error = status_pb2.Status(code=code, message=message)
            record.operation.status_message = message
            record.on_failure(message)
        else:
            record.apply()


class _Handler(BaseHTTPRequestHandler):
    api: GkeApiTestServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without this, Nagle's algorithm and delayed ACKs
    # add ~40 ms to every answer.
    disable_nagle_algorithm = True

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        code, payload = self.api.handle(self.command, self.path, body)
        data = payload.encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass
