"""The cluster scaler: its policy alone, and the real GKE client against tests/gke_api_test_server.

Time is a fake clock shared by the scaler (decisions, cooldown, idle period) and the operation
polling (its sleep advances the clock), so nothing here sleeps and every run decides the same.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest
import requests
from gke_api_test_server import GkeApiTestServer
from google.cloud import container_v1
from pydantic import ValidationError

from cluster_manager import gke
from cluster_manager.scaler import (
    Scaler,
    ScalerConfigError,
    ScalerSettings,
    ScalingPolicy,
    load_cluster_spec,
    make_scaler,
)

REPO = Path(__file__).resolve().parent.parent
CLUSTER_SPEC = REPO / "deploy" / "gke" / "cluster-spec.yaml"
PARENT = "projects/reel-test/locations/us-central1-a"
CLUSTER = f"{PARENT}/clusters/storyreel"
GPU_POOL = f"{CLUSTER}/nodePools/storyreel-gpu"
INTERVAL = 15.0
IDLE = 600.0
COOLDOWN = 120.0


class FakeClock:
    def __init__(self, start: float = 10_000.0) -> None:
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds

    advance = sleep


@pytest.fixture
def server():
    with GkeApiTestServer(polls_until_done=2) as running:
        yield running


@pytest.fixture
def clock():
    return FakeClock()


def settings_for(server: GkeApiTestServer | None, **overrides) -> ScalerSettings:
    values = {
        "backend": "gke",
        "project": "reel-test",
        "location": "us-central1-a",
        "cluster": "storyreel",
        "node_pool": "storyreel-gpu",
        "idle_period_s": IDLE,
        "cooldown_s": COOLDOWN,
        "interval_s": INTERVAL,
        "operation_poll_s": 5,
        "operation_timeout_s": 300,
        "endpoint": server.endpoint if server else "http://127.0.0.1:9",
    }
    values.update(overrides)
    return ScalerSettings(**values)


def gke_scaler(server, clock, **overrides):
    return make_scaler(
        settings_for(server, **overrides), clock=clock, sleep=clock.sleep, retry=None
    )


def add_spec_cluster(server: GkeApiTestServer) -> None:
    """The stored cluster spec, already created (pools at their initial counts: GPU at 0)."""
    spec = load_cluster_spec(CLUSTER_SPEC, settings_for(server))
    server.add_cluster(PARENT, spec)


def step(scaler: Scaler, clock: FakeClock, waiting: int, running: int, seconds=INTERVAL):
    """One interval of the watcher's loop: time passes, then the scaler observes."""
    clock.advance(seconds)
    scaler.observe(waiting, running)
    assert scaler.wait(timeout=30), "the scaler's change did not finish"


def run_for(scaler, clock, seconds: float, waiting: int, running: int) -> None:
    for _ in range(int(seconds // INTERVAL)):
        step(scaler, clock, waiting, running)


def sizes(server: GkeApiTestServer) -> list[int]:
    """The node counts of every setSize call, in order (JSON drops 0: {} means 0)."""
    return [
        container_v1.SetNodePoolSizeRequest.from_json(json.dumps(call.body)).node_count
        for call in server.calls_of("set_node_pool_size")
        if call.code == 200
    ]


def mutation_names(server: GkeApiTestServer) -> list[str]:
    return [call.rpc for call in server.mutations() if call.code == 200]


# ---- policy, no API ------------------------------------------------------------------------


def policy(now: float = 0.0, **overrides) -> ScalingPolicy:
    return ScalingPolicy(settings_for(None, **overrides), now)


@pytest.mark.parametrize(
    ("waiting", "running", "per_node", "min_nodes", "max_nodes", "expected"),
    [
        (0, 0, 1, 0, 4, 0),
        (2, 0, 1, 0, 4, 2),
        (1, 1, 1, 0, 4, 2),
        (3, 0, 2, 0, 4, 2),  # ceil(3 / 2)
        (1, 0, 2, 0, 4, 1),
        (10, 0, 1, 0, 3, 3),  # max_nodes caps
        (0, 0, 1, 1, 4, 1),  # min_nodes floors
    ],
)
def test_desired_nodes(waiting, running, per_node, min_nodes, max_nodes, expected):
    rule = policy(stories_per_node=per_node, min_nodes=min_nodes, max_nodes=max_nodes)
    assert rule.desired(waiting, running) == expected


def test_policy_scales_up_at_once_and_down_only_after_the_idle_period():
    rule = policy(now=0)
    up = rule.decide(0, waiting=2, running=0, current=0, cluster_exists=True)
    assert (up.action, up.target, up.desired, up.current) == ("resize", 2, 2, 0)
    rule.note_change(0)
    # Demand for 2 was last seen at t=0; below the idle period the pool holds.
    hold = rule.decide(IDLE - 1, waiting=0, running=0, current=2, cluster_exists=True)
    assert hold.action == "hold"
    assert "scaling down after 600 s without it" in hold.reason
    down = rule.decide(IDLE, waiting=0, running=0, current=2, cluster_exists=True)
    assert (down.action, down.target) == ("resize", 0)


def test_policy_never_scales_below_running_stories():
    rule = policy(now=0, stories_per_node=2)
    # Three stories run on a pool of 3 (grown earlier): ceil(3 / 2) = 2 nodes stay.
    decisions = [
        rule.decide(now, waiting=0, running=3, current=3, cluster_exists=True)
        for now in range(0, int(IDLE), int(INTERVAL))
    ]
    assert {decision.action for decision in decisions} == {"hold"}
    down = rule.decide(IDLE, waiting=0, running=3, current=3, cluster_exists=True)
    assert (down.action, down.target) == ("resize", 2)
    for now in range(int(IDLE), int(5 * IDLE), int(INTERVAL)):
        held = rule.decide(now, waiting=0, running=3, current=2, cluster_exists=True)
        assert held.action == "hold", held
    # One story left: ceil(1 / 2) = 1 node, after the idle period without the demand for 2.
    later = rule.decide(6 * IDLE, waiting=0, running=1, current=2, cluster_exists=True)
    assert (later.action, later.target) == ("resize", 1)


def test_policy_holds_everything_in_the_first_idle_period_after_a_start():
    # What ran before the start is unknown: no scale-down until a full idle period has passed.
    rule = policy(now=0)
    assert rule.decide(10, 0, 0, current=3, cluster_exists=True).action == "hold"
    assert rule.decide(IDLE + 1, 0, 0, current=3, cluster_exists=True).target == 0


def test_policy_unknown_size_is_set_on_demand_or_after_the_idle_period():
    rule = policy(now=0)
    first = rule.decide(0, 1, 0, current=None, cluster_exists=True)
    assert (first.action, first.target) == ("resize", 1)
    quiet = policy(now=0)
    assert quiet.decide(INTERVAL, 0, 0, current=None, cluster_exists=True).action == "hold"
    late = quiet.decide(IDLE + INTERVAL, 0, 0, current=None, cluster_exists=True)
    assert (late.action, late.target) == ("resize", 0)


def test_policy_cooldown_between_changes():
    rule = policy(now=0, cooldown_s=300, idle_period_s=0)
    rule.note_change(0)
    held = rule.decide(100, 3, 0, current=1, cluster_exists=True)
    assert held.action == "hold" and "cooldown" in held.reason
    assert rule.decide(300, 3, 0, current=1, cluster_exists=True).target == 3


def test_policy_delete_cluster_only_when_nothing_runs_or_waits(tmp_path):
    spec = tmp_path / "spec.yaml"
    rule = policy(now=0, idle_policy="delete-cluster", cluster_spec=spec)
    assert rule.decide(0, 1, 0, current=0, cluster_exists=False).action == "create-cluster"
    rule.note_change(0)
    for now in range(0, int(3 * IDLE), int(INTERVAL)):
        assert rule.decide(now, 0, 1, current=1, cluster_exists=True).action == "hold"
    gone = rule.decide(5 * IDLE, 0, 0, current=1, cluster_exists=True)
    assert (gone.action, gone.target) == ("delete-cluster", 0)


def test_policy_reads_the_cluster_first():
    decision = policy().decide(0, 1, 0, current=None, cluster_exists=None)
    assert decision.action == "read-cluster"
    assert "desired 1, current unknown" in decision.describe()


def test_scale_to_zero_never_creates_a_missing_cluster():
    decision = policy().decide(0, 2, 0, current=0, cluster_exists=False)
    assert decision.action == "hold"
    assert "never creates one" in decision.reason


# ---- settings and spec ---------------------------------------------------------------------


def test_settings_defaults_and_validation(tmp_path):
    defaults = ScalerSettings()
    assert (defaults.backend, defaults.min_nodes, defaults.max_nodes) == ("none", 0, 4)
    with pytest.raises(ValidationError, match="backend gke needs project, location"):
        ScalerSettings(backend="gke", cluster="c", node_pool="p")
    with pytest.raises(ValidationError, match="delete-cluster needs cluster_spec"):
        settings_for(None, idle_policy="delete-cluster")
    with pytest.raises(ValidationError, match="min_nodes must be 0"):
        settings_for(None, idle_policy="delete-cluster", cluster_spec=tmp_path, min_nodes=1)
    with pytest.raises(ValidationError, match="max_nodes"):
        ScalerSettings(min_nodes=3, max_nodes=2)
    with pytest.raises(ValidationError, match="stories_per_node"):
        ScalerSettings(stories_per_node=0)
    with pytest.raises(ValidationError, match="node_pools"):
        ScalerSettings(node_pools="x")  # extra fields are refused


def test_backend_none_never_calls_out():
    scaler = make_scaler(ScalerSettings())
    scaler.observe(5, 2)
    assert scaler.nodes is None
    assert scaler.wait(0)


def test_stored_cluster_spec_is_a_valid_cluster():
    spec = load_cluster_spec(CLUSTER_SPEC, settings_for(None))
    assert spec.name == "storyreel"
    assert spec.workload_identity_config.workload_pool == "reel-test.svc.id.goog"
    gpu = next(pool for pool in spec.node_pools if pool.name == "storyreel-gpu")
    assert gpu.config.accelerators[0].accelerator_count == 1
    assert gpu.config.ephemeral_storage_local_ssd_config.local_ssd_count == 1
    taint = gpu.config.taints[0]
    assert (taint.key, taint.value, taint.effect) == (
        "nvidia.com/gpu",
        "present",
        container_v1.NodeTaint.Effect.NO_SCHEDULE,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: storyreel\nnodePool: []\n", "nodePool"),  # misspelt field
        ("name: other\nnodePools: [{name: storyreel-gpu}]\n", "differs from scaler.cluster"),
        ("name: storyreel\nnodePools: [{name: cpu}]\n", "no node pool 'storyreel-gpu'"),
        ("- a list\n", "a mapping"),
        ("name: [unclosed\n", "not YAML"),
    ],
)
def test_cluster_spec_errors_name_the_file_and_field(tmp_path, text, message):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(ScalerConfigError, match=message) as caught:
        load_cluster_spec(path, settings_for(None))
    assert str(path) in str(caught.value)


# ---- the test server itself ----------------------------------------------------------------


def test_server_refuses_a_misspelt_field(server):
    add_spec_cluster(server)
    answer = requests.post(f"{server.endpoint}/v1/{GPU_POOL}:setSize", json={"nodecount": 2})
    assert answer.status_code == 400
    assert "nodecount" in answer.json()["error"]["message"]
    assert server.node_pool_size(GPU_POOL) == 0


def test_server_refuses_a_change_while_an_operation_runs(server):
    add_spec_cluster(server)
    client = server.client()
    client.set_node_pool_size(request={"name": GPU_POOL, "node_count": 1}, retry=None)
    with pytest.raises(Exception, match="incompatible operation"):
        client.set_node_pool_size(request={"name": GPU_POOL, "node_count": 2}, retry=None)


# ---- the scaler against the API ------------------------------------------------------------


def test_scales_up_on_backlog(server, clock, caplog):
    caplog.set_level(logging.INFO, logger="cluster_manager")
    add_spec_cluster(server)
    scaler = gke_scaler(server, clock)
    step(scaler, clock, waiting=2, running=0)
    assert server.node_pool_size(GPU_POOL) == 2
    assert scaler.nodes == 2
    # The cluster was read once, then one resize, waited on until DONE.
    assert [call.rpc for call in server.calls] == [
        "get_cluster",
        "set_node_pool_size",
        "get_operation",
        "get_operation",
    ]
    assert sizes(server) == [2]
    assert not server.running_operations()
    assert "resize -> 2 (desired 2, current unknown)" in caplog.text
    assert "2 waiting, 0 running" in caplog.text


def test_holds_while_stories_run(server, clock):
    add_spec_cluster(server)
    scaler = gke_scaler(server, clock)
    step(scaler, clock, waiting=2, running=0)
    run_for(scaler, clock, 3 * IDLE, waiting=0, running=2)
    assert sizes(server) == [2]
    # One story ends: one node goes after the idle period, never the one still in use.
    run_for(scaler, clock, 2 * IDLE, waiting=0, running=1)
    assert sizes(server) == [2, 1]
    assert server.node_pool_size(GPU_POOL) == 1


def test_scales_to_zero_after_the_idle_period(server, clock, caplog):
    caplog.set_level(logging.INFO, logger="cluster_manager")
    add_spec_cluster(server)
    scaler = gke_scaler(server, clock)
    step(scaler, clock, waiting=1, running=0)
    run_for(scaler, clock, 300, waiting=0, running=1)
    # Idle from here: nothing during the idle period, then one call to zero.
    run_for(scaler, clock, IDLE - 2 * INTERVAL, waiting=0, running=0)
    assert sizes(server) == [1]
    run_for(scaler, clock, 3 * INTERVAL, waiting=0, running=0)
    assert sizes(server) == [1, 0]
    assert server.calls_of("set_node_pool_size")[-1].body == {}  # JSON drops the zero
    assert server.node_pool_size(GPU_POOL) == 0
    assert scaler.nodes == 0
    # A new story brings a node back at the end of the cooldown that the last change started.
    step(scaler, clock, waiting=1, running=0)
    assert sizes(server) == [1, 0]
    assert "cooldown" in caplog.text
    run_for(scaler, clock, COOLDOWN, waiting=1, running=0)
    assert sizes(server) == [1, 0, 1]


def test_delete_cluster_policy_creates_waits_deletes_and_creates_again(clock):
    with GkeApiTestServer(polls_until_done=4) as server:
        scaler = gke_scaler(server, clock, idle_policy="delete-cluster", cluster_spec=CLUSTER_SPEC)
        step(scaler, clock, waiting=0, running=0)
        assert scaler.nodes == 0  # read: no cluster
        assert mutation_names(server) == []

        step(scaler, clock, waiting=1, running=0)
        cluster = server.cluster(CLUSTER)
        assert cluster is not None
        assert cluster.status == container_v1.Cluster.Status.RUNNING  # waited until DONE
        created = server.calls_of("create_cluster")
        assert len(created) == 1
        sent = container_v1.CreateClusterRequest.from_json(json.dumps(created[0].body))
        gpu = next(pool for pool in sent.cluster.node_pools if pool.name == "storyreel-gpu")
        assert gpu.initial_node_count == 1
        assert gpu.config.taints[0].key == "nvidia.com/gpu"
        assert server.node_pool_size(GPU_POOL) == 1
        polls = [call for call in server.calls if call.rpc == "get_operation"]
        assert len(polls) == 4
        assert scaler.nodes == 1

        # Never deleted under a running story, however long it runs.
        run_for(scaler, clock, 3 * IDLE, waiting=0, running=1)
        assert mutation_names(server) == ["create_cluster"]
        # Deleted after the idle period.
        run_for(scaler, clock, IDLE - INTERVAL, waiting=0, running=0)
        assert mutation_names(server) == ["create_cluster"]
        run_for(scaler, clock, 2 * INTERVAL, waiting=0, running=0)
        assert mutation_names(server) == ["create_cluster", "delete_cluster"]
        assert server.cluster(CLUSTER) is None
        assert scaler.nodes == 0

        # The next story creates it again from the spec.
        run_for(scaler, clock, 2 * COOLDOWN, waiting=0, running=0)
        step(scaler, clock, waiting=2, running=0)
        assert mutation_names(server) == ["create_cluster", "delete_cluster", "create_cluster"]
        assert server.node_pool_size(GPU_POOL) == 2


def test_no_flapping_when_stories_trickle_in(server, clock):
    add_spec_cluster(server)
    scaler = gke_scaler(server, clock)
    # A story every 300 s (half the idle period): waits one interval, runs 210 s, then the
    # cluster is idle for 75 s before the next one.
    for _ in range(12):
        step(scaler, clock, waiting=1, running=0)
        run_for(scaler, clock, 210, waiting=0, running=1)
        run_for(scaler, clock, 75, waiting=0, running=0)
    assert sizes(server) == [1]
    # The trickle stops: one scale-down after the idle period, nothing else.
    run_for(scaler, clock, IDLE + 2 * INTERVAL, waiting=0, running=0)
    assert sizes(server) == [1, 0]
    assert mutation_names(server) == ["set_node_pool_size", "set_node_pool_size"]


def test_cooldown_between_changes(server, clock):
    add_spec_cluster(server)
    scaler = gke_scaler(server, clock, cooldown_s=300)
    step(scaler, clock, waiting=1, running=0)
    changed_at = clock()
    changes = {1: changed_at}
    while len(sizes(server)) < 2:
        step(scaler, clock, waiting=3, running=1)
        changes.setdefault(len(sizes(server)), clock())
        assert clock() - changed_at < 400, "the second change never came"
    assert sizes(server) == [1, 4]
    # The change came at the first interval after the cooldown, not before.
    assert 300 <= changes[2] - changed_at < 300 + INTERVAL + 2 * 5


def test_max_nodes_cap(server, clock):
    add_spec_cluster(server)
    scaler = gke_scaler(server, clock, max_nodes=3)
    step(scaler, clock, waiting=10, running=0)
    run_for(scaler, clock, 120, waiting=8, running=3)
    assert sizes(server) == [3]
    assert scaler.nodes == 3


def test_autoscaling_method_sends_the_bounds(server, clock):
    add_spec_cluster(server)  # the GPU pool autoscales 0..2
    scaler = gke_scaler(server, clock, method="autoscaling")
    step(scaler, clock, waiting=0, running=0)
    assert scaler.nodes == 2  # the autoscaling maximum, read back
    step(scaler, clock, waiting=3, running=0)
    run_for(scaler, clock, 300, waiting=0, running=3)
    run_for(scaler, clock, IDLE + 2 * INTERVAL, waiting=0, running=0)
    bounds = [
        container_v1.SetNodePoolAutoscalingRequest.from_json(json.dumps(call.body)).autoscaling
        for call in server.calls_of("set_node_pool_autoscaling")
    ]
    assert [(b.enabled, b.total_min_node_count, b.total_max_node_count) for b in bounds] == [
        (True, 0, 3),
        (True, 0, 0),
    ]
    assert all(b.location_policy == b.LocationPolicy.ANY for b in bounds)
    assert server.calls_of("set_node_pool_size") == []
    stored = server.cluster(CLUSTER)
    gpu = next(pool for pool in stored.node_pools if pool.name == "storyreel-gpu")
    assert gpu.autoscaling.enabled and gpu.autoscaling.total_max_node_count == 0
    assert scaler.nodes == 0


@pytest.mark.parametrize("idle_policy", ["scale-to-zero", "delete-cluster"])
def test_dry_run_makes_no_calls(server, clock, caplog, idle_policy):
    caplog.set_level(logging.INFO, logger="cluster_manager")
    add_spec_cluster(server)
    calls_before = len(server.calls)
    scaler = gke_scaler(
        server, clock, dry_run=True, idle_policy=idle_policy, cluster_spec=CLUSTER_SPEC
    )
    step(scaler, clock, waiting=2, running=0)
    assert scaler.nodes == 2
    run_for(scaler, clock, IDLE + 3 * INTERVAL, waiting=0, running=0)
    assert scaler.nodes == 0
    assert len(server.calls) == calls_before
    assert server.node_pool_size(GPU_POOL) == 0
    if idle_policy == "delete-cluster":
        assert "would call create_cluster(parent=projects/reel-test" in caplog.text
        assert f"would call delete_cluster(name={CLUSTER})" in caplog.text
    else:
        assert f"would call set_node_pool_size(name={GPU_POOL}, node_count=2)" in caplog.text
        assert f"would call set_node_pool_size(name={GPU_POOL}, node_count=0)" in caplog.text


def test_api_errors_are_logged_and_retried_next_interval(server, clock, caplog):
    caplog.set_level(logging.INFO, logger="cluster_manager")
    add_spec_cluster(server)
    scaler = gke_scaler(server, clock)
    server.inject_error("get_cluster", 500, "backend error")
    step(scaler, clock, waiting=1, running=0)  # must not raise
    assert "get_cluster(name=projects/reel-test" in caplog.text
    assert "backend error" in caplog.text

    server.inject_error("set_node_pool_size", 403, "Required 'container.clusters.update'")
    step(scaler, clock, waiting=1, running=0)
    assert server.node_pool_size(GPU_POOL) == 0
    assert scaler.nodes is None
    failure = next(r for r in caplog.records if "Required 'container" in r.getMessage())
    assert failure.levelno == logging.ERROR
    assert f"set_node_pool_size(name={GPU_POOL}, node_count=1)" in failure.getMessage()
    assert "403" in failure.getMessage()

    server.inject_error("set_node_pool_size", 429, "Quota 'NVIDIA_T4_GPUS' exceeded")
    step(scaler, clock, waiting=1, running=0)
    assert "NVIDIA_T4_GPUS" in caplog.text

    step(scaler, clock, waiting=1, running=0)  # the next interval succeeds
    assert server.node_pool_size(GPU_POOL) == 1
    assert scaler.nodes == 1
    answered = [call.code for call in server.calls_of("set_node_pool_size")]
    assert answered == [403, 429, 200]


def test_a_dead_endpoint_is_logged_not_raised(clock, caplog):
    caplog.set_level(logging.INFO, logger="cluster_manager")
    with GkeApiTestServer() as server:
        endpoint = server.endpoint
    scaler = make_scaler(
        settings_for(None, endpoint=endpoint), clock=clock, sleep=clock.sleep, retry=None
    )
    step(scaler, clock, waiting=1, running=0)
    step(scaler, clock, waiting=1, running=0)
    assert scaler.nodes is None
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert all("get_cluster(name=" in r.getMessage() for r in errors)


def test_a_missing_node_pool_is_reported(server, clock, caplog):
    add_spec_cluster(server)
    scaler = gke_scaler(server, clock, node_pool="storyreel-tpu")
    step(scaler, clock, waiting=1, running=0)
    assert "has no node pool 'storyreel-tpu'" in caplog.text
    assert "storyreel-gpu" in caplog.text
    assert mutation_names(server) == []


def test_operation_timeout_gives_a_clear_error(clock):
    with GkeApiTestServer(polls_until_done=10_000) as server:
        add_spec_cluster(server)
        pool = gke.GkeNodePool(
            gke.NodePoolRef("reel-test", "us-central1-a", "storyreel", "storyreel-gpu"),
            endpoint=server.endpoint,
            retry=None,
            poll_interval_s=5,
            operation_timeout_s=60,
            clock=clock,
            sleep=clock.sleep,
        )
        with pytest.raises(gke.OperationTimeout) as caught:
            pool.set_node_pool_size(2)
        message = str(caught.value)
        assert f"set_node_pool_size(name={GPU_POOL}, node_count=2)" in message
        assert "not DONE after 60 s (status RUNNING)" in message
        assert server.running_operations()[0].name in message
        assert len(server.calls_of("get_operation")) == 12


def test_scaler_reads_the_cluster_again_after_an_operation_timeout(clock, caplog):
    with GkeApiTestServer(polls_until_done=10_000) as server:
        add_spec_cluster(server)
        scaler = gke_scaler(server, clock, operation_timeout_s=60)
        step(scaler, clock, waiting=1, running=0)
        assert "not DONE after 60 s" in caplog.text
        assert scaler.nodes is None
        calls = len(server.calls)
        # The operation still runs: GKE refuses another change; nothing raises.
        step(scaler, clock, waiting=1, running=0)
        assert [call.rpc for call in server.calls[calls:]][:2] == [
            "get_cluster",
            "set_node_pool_size",
        ]
        assert "incompatible operation" in caplog.text
        # Once it is done, the scaler's next change goes through.
        server.polls_until_done = 1
        server.client().get_operation(
            name=f"{PARENT}/operations/{server.running_operations()[0].name}", retry=None
        )
        step(scaler, clock, waiting=2, running=0)
        assert server.node_pool_size(GPU_POOL) == 2


def test_a_failed_operation_is_logged_and_retried(server, clock, caplog):
    add_spec_cluster(server)
    scaler = gke_scaler(server, clock)
    server.fail_operation("set_node_pool_size", "Insufficient regional quota: NVIDIA_T4_GPUS")
    step(scaler, clock, waiting=1, running=0)
    assert "failed: Insufficient regional quota: NVIDIA_T4_GPUS" in caplog.text
    assert server.node_pool_size(GPU_POOL) == 0
    step(scaler, clock, waiting=1, running=0)
    assert server.node_pool_size(GPU_POOL) == 1


def test_observe_returns_while_an_operation_runs(server, clock):
    add_spec_cluster(server)
    release = threading.Event()
    polling = threading.Event()

    def slow_sleep(seconds: float) -> None:
        polling.set()
        assert release.wait(30)
        clock.sleep(seconds)

    scaler = make_scaler(settings_for(server), clock=clock, sleep=slow_sleep, retry=None)
    scaler.observe(2, 0)  # returns at once; the change runs in the background
    assert polling.wait(30)
    assert scaler.nodes is None
    assert not scaler.wait(timeout=0.05)
    calls = len(server.calls)
    scaler.observe(3, 0)  # a change is in progress: no second call
    assert len(server.calls) == calls
    release.set()
    assert scaler.wait(timeout=30)
    assert scaler.nodes == 2
    assert sizes(server) == [2]


def test_scale_to_zero_reads_a_missing_cluster_again_each_interval(server, clock, caplog):
    scaler = gke_scaler(server, clock)
    step(scaler, clock, waiting=1, running=0)
    step(scaler, clock, waiting=1, running=0)
    assert "does not exist; idle_policy scale-to-zero never creates one" in caplog.text
    assert mutation_names(server) == []
    add_spec_cluster(server)  # created by hand: the next interval uses it
    step(scaler, clock, waiting=1, running=0)
    assert server.node_pool_size(GPU_POOL) == 1
    assert [call.rpc for call in server.calls_of("get_cluster")] == ["get_cluster"] * 3
