"""Cluster scaler of the watcher: sizes the GPU node pool to the stories in flight.

The watcher calls `Scaler.observe(waiting, running)` every `interval_s`. The number of nodes the
stories need is ceil((waiting + running) / stories_per_node), kept within [min_nodes, max_nodes].
`ScalingPolicy` turns that demand into a decision (pure: it only reads the clock it is given):

* scale up at once;
* scale down only once no demand for the higher count was seen for `idle_period_s`, and never
  below the nodes that running stories occupy;
* at most one change per `cooldown_s` (measured from the end of the last change);
* with `idle_policy: delete-cluster` the cluster itself goes when the pool would go to zero
  (never while a story runs or waits) and is created again from `cluster_spec` on demand.

`GkeScaler` carries the decisions out through the GKE API (`cluster_manager.gke`) in one
background thread, one change at a time, so the watcher's loop never waits for an operation
(creating a cluster takes minutes). A failed call is logged with the call and tried again at a
later interval; `observe` never raises.

GKE has no read of a node pool's current size, so with `method: size` the scaler knows only the
size it set itself. Until it has set one (after a start or a failed operation) the size is
unknown: demand sets it at once; with no demand it is set to min_nodes after the idle period.
With `method: autoscaling` the pool's autoscaling maximum is read back as the current count.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from google.cloud import container_v1
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cluster_manager import gke

log = logging.getLogger(__name__)


class ScalerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: Literal["none", "gke"] = "none"
    # Log the calls the scaler would make, make none (not even reads).
    dry_run: bool = False
    project: str | None = None
    location: str | None = None
    cluster: str | None = None
    node_pool: str | None = None
    min_nodes: int = Field(0, ge=0)
    max_nodes: int = Field(4, ge=0)
    stories_per_node: int = Field(1, ge=1)
    idle_period_s: float = Field(600, ge=0)
    cooldown_s: float = Field(120, ge=0)
    interval_s: float = Field(15, gt=0)
    idle_policy: Literal["scale-to-zero", "delete-cluster"] = "scale-to-zero"
    method: Literal["size", "autoscaling"] = "size"
    # For delete-cluster: the Cluster resource (GKE API field names, YAML or JSON) to create.
    cluster_spec: Path | None = None
    # API endpoint override (a local test server); production uses application credentials.
    endpoint: str | None = None
    # How long one operation may take (creating a cluster takes 5-15 minutes) and how often
    # it is polled.
    operation_timeout_s: float = Field(1800, gt=0)
    operation_poll_s: float = Field(5, gt=0)

    @model_validator(mode="after")
    def _check_backend(self) -> ScalerSettings:
        if self.max_nodes < self.min_nodes:
            raise ValueError(f"max_nodes ({self.max_nodes}) is below min_nodes ({self.min_nodes})")
        if self.backend == "gke":
            missing = [
                name
                for name in ("project", "location", "cluster", "node_pool")
                if not getattr(self, name)
            ]
            if missing:
                raise ValueError(f"backend gke needs {', '.join(missing)}")
        if self.idle_policy == "delete-cluster":
            if self.cluster_spec is None:
                raise ValueError(
                    "idle_policy delete-cluster needs cluster_spec (the cluster to create)"
                )
            if self.min_nodes:
                raise ValueError(
                    "idle_policy delete-cluster deletes the cluster: min_nodes must be 0"
                )
        return self


class ScalerConfigError(ValueError):
    """The scaler's settings or cluster spec cannot be used; the message names the file/field."""


# ---------------------------------------------------------------------------------------------
# Policy


Action = Literal["hold", "read-cluster", "resize", "create-cluster", "delete-cluster"]


@dataclass(frozen=True)
class Decision:
    action: Action
    desired: int
    current: int | None
    target: int | None
    reason: str

    def describe(self) -> str:
        current = "unknown" if self.current is None else self.current
        target = "" if self.target is None else f" -> {self.target}"
        return (
            f"scaler: {self.action}{target} (desired {self.desired}, current {current}): "
            f"{self.reason}"
        )


class ScalingPolicy:
    """Decides what the node pool should become; keeps the demand history it needs."""

    def __init__(self, settings: ScalerSettings, now: float) -> None:
        self.settings = settings
        # Demand before the start is unknown: every count counts as needed at the start, so
        # nothing is scaled down within the first idle period.
        self._last_needed: dict[int, float] = {n: now for n in range(1, settings.max_nodes + 1)}
        self._last_change: float | None = None

    def desired(self, waiting: int, running: int) -> int:
        need = math.ceil((max(waiting, 0) + max(running, 0)) / self.settings.stories_per_node)
        return min(self.settings.max_nodes, max(self.settings.min_nodes, need))

    def running_floor(self, running: int) -> int:
        """The nodes running stories occupy: never scaled away under them."""
        return min(
            self.settings.max_nodes, math.ceil(max(running, 0) / self.settings.stories_per_node)
        )

    def note_demand(self, now: float, desired: int) -> None:
        for count in range(1, desired + 1):
            self._last_needed[count] = now

    def note_change(self, now: float) -> None:
        self._last_change = now

    def keep(self, now: float, desired: int, running: int) -> int:
        """The count to hold: the highest one needed within the idle period."""
        recent = [
            count
            for count, seen in self._last_needed.items()
            if now - seen < self.settings.idle_period_s
        ]
        return max([desired, self.running_floor(running), *recent])

    def decide(
        self,
        now: float,
        waiting: int,
        running: int,
        current: int | None,
        cluster_exists: bool | None,
    ) -> Decision:
        s = self.settings
        desired = self.desired(waiting, running)
        self.note_demand(now, desired)
        demand = f"{waiting} waiting, {running} running, {s.stories_per_node} per node"

        def hold(reason: str) -> Decision:
            return Decision("hold", desired, current, None, reason)

        if cluster_exists is None:
            return Decision("read-cluster", desired, current, None, "cluster state unknown")

        if not cluster_exists:
            if desired == 0:
                return hold(f"no cluster and no demand ({demand})")
            if s.idle_policy != "delete-cluster":
                return hold(
                    f"cluster {s.cluster} does not exist; idle_policy {s.idle_policy} "
                    "never creates one"
                )
            return self._change(
                now, Decision("create-cluster", desired, 0, desired, f"no cluster; {demand}")
            )

        keep = self.keep(now, desired, running)
        if current is None:
            if desired > s.min_nodes:
                target, reason = desired, f"pool size unknown; {demand}"
            elif keep == desired:
                target = desired
                reason = f"pool size unknown; no demand above {desired} for {s.idle_period_s:g} s"
            else:
                return hold(
                    f"pool size unknown; setting {desired} once nothing more was needed for "
                    f"{s.idle_period_s:g} s ({demand})"
                )
        elif desired > current:
            target, reason = desired, f"scale up: {demand}"
        elif keep < current:
            target = keep
            reason = (
                f"scale down: no demand for more than {keep} for {s.idle_period_s:g} s ({demand})"
            )
        elif desired == current:
            return hold(f"at the desired count ({demand})")
        else:
            since = now - self._last_needed.get(current, now)
            return hold(
                f"demand for {current} node(s) last seen {since:g} s ago; scaling down after "
                f"{s.idle_period_s:g} s without it ({demand})"
            )

        if target == 0 and s.idle_policy == "delete-cluster":
            if running or waiting:  # unreachable through the floor above; kept as a guard
                return hold(f"never deleting the cluster while stories run or wait ({demand})")
            return self._change(
                now, Decision("delete-cluster", desired, current, 0, f"idle: {reason}")
            )
        return self._change(now, Decision("resize", desired, current, target, reason))

    def _change(self, now: float, decision: Decision) -> Decision:
        if self._last_change is not None:
            since = now - self._last_change
            if since < self.settings.cooldown_s:
                return Decision(
                    "hold",
                    decision.desired,
                    decision.current,
                    None,
                    f"cooldown: last change {since:g} s ago, {self.settings.cooldown_s:g} s "
                    f"between changes (wanted {decision.action} -> {decision.target})",
                )
        return decision


# ---------------------------------------------------------------------------------------------
# Scalers


class Scaler:
    """Backend "none": the nodes are someone else's business; observe only records demand."""

    def __init__(self, settings: ScalerSettings) -> None:
        self.settings = settings

    def observe(self, waiting: int, running: int) -> None:
        log.debug("scaler (backend none): %d waiting, %d running", waiting, running)

    @property
    def nodes(self) -> int | None:
        """The node count the scaler last saw or set (None: unknown)."""
        return None

    def wait(self, timeout: float | None = None) -> bool:
        """Waits for a change in progress; False if it still runs after `timeout`."""
        return True


class DryRunNodePool:
    """Stands in for gke.GkeNodePool with dry_run: logs each call it would make."""

    def __init__(self, ref: gke.NodePoolRef) -> None:
        self.ref = ref

    def _would(self, call: str) -> None:
        log.info("scaler: dry run: would call %s and wait for its operation", call)

    def get_cluster(self) -> container_v1.Cluster | None:  # never reached: state is assumed
        raise AssertionError("a dry run reads nothing")

    def create_cluster(self, cluster: container_v1.Cluster) -> None:
        self._would(f"create_cluster(parent={self.ref.location_path}, cluster.name={cluster.name})")

    def delete_cluster(self) -> None:
        self._would(f"delete_cluster(name={self.ref.cluster_path})")

    def set_node_pool_size(self, node_count: int) -> None:
        self._would(f"set_node_pool_size(name={self.ref.node_pool_path}, node_count={node_count})")

    def set_node_pool_autoscaling(self, min_nodes: int, max_nodes: int) -> None:
        self._would(
            f"set_node_pool_autoscaling(name={self.ref.node_pool_path}, "
            f"total_min_node_count={min_nodes}, total_max_node_count={max_nodes})"
        )


# Cluster states in which GKE refuses changes: look again at the next interval.
_BUSY_CLUSTER_STATES = {
    container_v1.Cluster.Status.PROVISIONING,
    container_v1.Cluster.Status.STOPPING,
}


class GkeScaler(Scaler):
    """Sizes one GKE node pool (and, with delete-cluster, its cluster) to the demand."""

    def __init__(
        self,
        settings: ScalerSettings,
        pool: gke.GkeNodePool | DryRunNodePool,
        *,
        cluster_spec: container_v1.Cluster | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(settings)
        self._pool = pool
        self._spec = cluster_spec
        self._clock = clock
        self._policy = ScalingPolicy(settings, clock())
        self._lock = threading.Condition()
        self._busy = False
        self._current: int | None = None
        self._cluster_exists: bool | None = None
        self._last_logged: tuple[Any, ...] | None = None
        if settings.dry_run:
            # A dry run reads nothing either: start from the state the policy implies.
            if settings.idle_policy == "delete-cluster":
                self._cluster_exists, self._current = False, 0
            else:
                self._cluster_exists = True
            log.info(
                "scaler: dry run for %s: assuming %s",
                pool.ref.node_pool_path,
                "no cluster" if self._cluster_exists is False else "the cluster exists",
            )

    @property
    def nodes(self) -> int | None:
        with self._lock:
            return self._current

    def wait(self, timeout: float | None = None) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: not self._busy, timeout)

    def observe(self, waiting: int, running: int) -> None:
        try:
            self._observe(waiting, running)
        except Exception:  # the watcher must keep going; the next interval tries again
            log.exception("scaler: observing %d waiting, %d running failed", waiting, running)

    def _observe(self, waiting: int, running: int) -> None:
        now = self._clock()
        with self._lock:
            if self._busy:
                self._policy.note_demand(now, self._policy.desired(waiting, running))
                log.debug(
                    "scaler: a change is in progress (%d waiting, %d running)", waiting, running
                )
                return
            decision = self._policy.decide(
                now, waiting, running, self._current, self._cluster_exists
            )
            self._log(decision)
            if decision.action == "hold":
                return
            self._busy = True
        worker = threading.Thread(
            target=self._carry_out, args=(decision, waiting, running), name="scaler", daemon=True
        )
        try:
            worker.start()
        except BaseException:
            with self._lock:
                self._busy = False
                self._lock.notify_all()
            raise

    def _log(self, decision: Decision) -> None:
        # Every decision is logged; repeats of the same hold go to debug to keep the log
        # readable at one line per interval.
        key = (decision.action, decision.desired, decision.current, decision.target)
        level = (
            logging.DEBUG
            if key == self._last_logged and decision.action == "hold"
            else logging.INFO
        )
        self._last_logged = key
        log.log(level, "%s", decision.describe())

    def _carry_out(self, decision: Decision, waiting: int, running: int) -> None:
        try:
            while True:
                try:
                    self._execute(decision)
                except gke.GkeError as error:
                    self._failed(decision, error)
                    return
                except Exception:
                    log.exception(
                        "scaler: %s failed; trying again at a later interval", decision.action
                    )
                    self._forget()
                    return
                if decision.action != "read-cluster":
                    return
                # Having read the cluster, act on the same demand now rather than an interval
                # later.
                with self._lock:
                    decision = self._policy.decide(
                        self._clock(), waiting, running, self._current, self._cluster_exists
                    )
                    if decision.action == "read-cluster":  # still unknown: the log says why
                        return
                    self._log(decision)
                if decision.action == "hold":
                    return
        finally:
            with self._lock:
                self._busy = False
                self._lock.notify_all()

    def _execute(self, decision: Decision) -> None:
        if decision.action == "read-cluster":
            self._read_cluster()
        elif decision.action == "create-cluster":
            self._create_cluster(decision.target or 0)
        elif decision.action == "delete-cluster":
            self._pool.delete_cluster()
            self._changed(cluster_exists=False, current=0)
        elif decision.action == "resize":
            self._resize(decision.target or 0)

    def _resize(self, target: int) -> None:
        if self.settings.method == "autoscaling":
            # GKE's autoscaler picks the count within the bounds; the maximum is the scaler's.
            self._pool.set_node_pool_autoscaling(self.settings.min_nodes, target)
        else:
            self._pool.set_node_pool_size(target)
        self._changed(cluster_exists=True, current=target)

    def _create_cluster(self, target: int) -> None:
        assert self._spec is not None  # make_scaler loads it for delete-cluster
        cluster = container_v1.Cluster(self._spec)
        for node_pool in cluster.node_pools:
            if node_pool.name == self.settings.node_pool:
                node_pool.initial_node_count = target
                if self.settings.method == "autoscaling":
                    node_pool.autoscaling = gke.autoscaling_bounds(self.settings.min_nodes, target)
        self._pool.create_cluster(cluster)
        self._changed(cluster_exists=True, current=target)

    def _changed(self, *, cluster_exists: bool, current: int) -> None:
        with self._lock:
            self._cluster_exists = cluster_exists
            self._current = current
            self._policy.note_change(self._clock())
        log.info(
            "scaler: done: %s, node pool %s at %d",
            "cluster exists" if cluster_exists else "cluster deleted",
            self.settings.node_pool,
            current,
        )

    def _read_cluster(self) -> None:
        assert isinstance(self._pool, gke.GkeNodePool)
        cluster = self._pool.get_cluster()
        path = self._pool.ref.cluster_path
        if cluster is None:
            if self.settings.idle_policy != "delete-cluster":
                # Only delete-cluster creates clusters: read again at each interval, so that a
                # cluster created by hand is picked up.
                log.error(
                    "scaler: cluster %s does not exist; idle_policy %s never creates one",
                    path,
                    self.settings.idle_policy,
                )
                return
            log.info("scaler: cluster %s does not exist", path)
            with self._lock:
                self._cluster_exists, self._current = False, 0
            return
        if cluster.status in _BUSY_CLUSTER_STATES:
            status = container_v1.Cluster.Status(cluster.status).name
            log.info("scaler: cluster %s is %s; looking again at the next interval", path, status)
            return
        if cluster.status == container_v1.Cluster.Status.ERROR:
            log.error(
                "scaler: cluster %s is in ERROR (%s); the scaler changes nothing until it is "
                "repaired or deleted",
                path,
                cluster.status_message or "no message",
            )
            return
        pools = {node_pool.name: node_pool for node_pool in cluster.node_pools}
        node_pool = pools.get(self.settings.node_pool)
        if node_pool is None:
            log.error(
                "scaler: cluster %s has no node pool %r (it has: %s); check scaler.node_pool",
                path,
                self.settings.node_pool,
                ", ".join(sorted(pools)) or "none",
            )
            return
        current: int | None = None
        autoscaling = node_pool.autoscaling
        if self.settings.method == "autoscaling" and autoscaling.enabled:
            current = autoscaling.total_max_node_count or autoscaling.max_node_count
        if self.settings.method == "size" and len(node_pool.locations) > 1:
            log.warning(
                "scaler: node pool %s spans %d zones and set_node_pool_size counts nodes per "
                "zone: it will have that many times the nodes asked for (method autoscaling "
                "sets totals)",
                self.settings.node_pool,
                len(node_pool.locations),
            )
        log.info(
            "scaler: cluster %s exists; node pool %s at %s",
            path,
            self.settings.node_pool,
            "an unknown size" if current is None else current,
        )
        with self._lock:
            self._cluster_exists, self._current = True, current

    def _failed(self, decision: Decision, error: gke.GkeError) -> None:
        log.error(
            "scaler: %s failed: %s; trying again in %g s",
            decision.action,
            error,
            self.settings.interval_s,
        )
        # A timed-out or failed operation may have changed something, a missing cluster or pool
        # means the state is not what was thought: read it again. A refused call (permission,
        # quota) changed nothing: the same decision is tried again.
        if isinstance(error, gke.OperationFailed | gke.OperationTimeout) or error.code == 404:
            self._forget()

    def _forget(self) -> None:
        if self.settings.dry_run:  # a dry run never reads: keep the assumed state
            return
        with self._lock:
            self._cluster_exists = None
            self._current = None


def load_cluster_spec(path: Path, settings: ScalerSettings) -> container_v1.Cluster:
    """The cluster to create, from a Cluster resource in the API's field names (YAML or JSON)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ScalerConfigError(f"scaler.cluster_spec {path}: cannot read it: {error}") from error
    except yaml.YAMLError as error:
        raise ScalerConfigError(f"scaler.cluster_spec {path}: not YAML: {error}") from error
    if not isinstance(data, dict):
        raise ScalerConfigError(
            f"scaler.cluster_spec {path}: expected a Cluster resource (a mapping)"
        )
    try:
        cluster = container_v1.Cluster.from_json(json.dumps(data), ignore_unknown_fields=False)
    except Exception as error:  # json_format.ParseError names the field
        raise ScalerConfigError(
            f"scaler.cluster_spec {path}: not a GKE Cluster resource: {error}"
        ) from error
    if not cluster.name:
        cluster.name = settings.cluster
    elif cluster.name != settings.cluster:
        raise ScalerConfigError(
            f"scaler.cluster_spec {path}: name {cluster.name!r} differs from scaler.cluster "
            f"{settings.cluster!r}"
        )
    if "workload_identity_config" in cluster and not cluster.workload_identity_config.workload_pool:
        cluster.workload_identity_config.workload_pool = f"{settings.project}.svc.id.goog"
    names = [node_pool.name for node_pool in cluster.node_pools]
    if settings.node_pool not in names:
        raise ScalerConfigError(
            f"scaler.cluster_spec {path}: no node pool {settings.node_pool!r} in nodePools "
            f"(it has: {', '.join(names) or 'none'})"
        )
    return cluster


def make_scaler(
    settings: ScalerSettings,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    retry: Any = gke.DEFAULT,
    client: container_v1.ClusterManagerClient | None = None,
) -> Scaler:
    """The scaler the settings ask for. Raises ScalerConfigError for an unusable cluster spec.
    `clock`, `sleep`, `retry` and `client` are there for tests."""
    if settings.backend == "none":
        return Scaler(settings)
    ref = gke.NodePoolRef(
        project=settings.project or "",
        location=settings.location or "",
        cluster=settings.cluster or "",
        node_pool=settings.node_pool or "",
    )
    spec = None
    if settings.idle_policy == "delete-cluster" and settings.cluster_spec is not None:
        spec = load_cluster_spec(settings.cluster_spec, settings)
    pool: gke.GkeNodePool | DryRunNodePool
    if settings.dry_run:
        pool = DryRunNodePool(ref)
    else:
        pool = gke.GkeNodePool(
            ref,
            endpoint=settings.endpoint,
            client=client,
            retry=retry,
            poll_interval_s=settings.operation_poll_s,
            operation_timeout_s=settings.operation_timeout_s,
            clock=clock,
            sleep=sleep,
        )
    return GkeScaler(settings, pool, cluster_spec=spec, clock=clock)
