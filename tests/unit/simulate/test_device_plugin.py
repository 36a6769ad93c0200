"""The simulator and the real-scheduler benchmark hand out GPUs as the NVIDIA device plugin
does: through the same `topology.deviceplugin.best_effort_allocate` that
tests/unit/topology/test_gpuallocator_oracle.py checks against the real Go module."""

from __future__ import annotations

import importlib.util
import random
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from unit.simulate.helpers import arrive, depart, nodes, pod, trace

import topology.deviceplugin
from scheduler.models.catalog import Catalog
from scheduler.simulate import kubelet
from scheduler.simulate.engine import PodOutcome, RunResult, SimCluster, run_policy
from scheduler.simulate.kubelet import kubelet_allocation
from scheduler.simulate.metrics import compute, format_table
from scheduler.simulate.policies import POLICIES, KvschedPolicy, make_policy
from scheduler.simulate.trace import TraceConfig, generate_trace
from topology.deviceplugin import PADDING, reachable_allocations
from topology.model import NodeTopology
from topology.presets import preset_for_product

ROOT = Path(__file__).resolve().parents[3]
H100 = preset_for_product("NVIDIA-H100-80GB-HBM3", 8)


def outcome(result: RunResult, name: str) -> PodOutcome:
    return next(p for p in result.pods if p.name == name)


Call = tuple[NodeTopology, tuple[int, ...], int, tuple[int, ...]]


@pytest.fixture
def allocator_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Call]]:
    """Every call of topology.deviceplugin.best_effort_allocate (the oracle-checked port),
    passed through to it."""
    real = topology.deviceplugin.best_effort_allocate
    calls: list[Call] = []

    def spy(
        topo: NodeTopology, available: Sequence[int], size: int, required: Sequence[int] = ()
    ) -> tuple[int, ...]:
        got = real(topo, available, size, required)
        calls.append((topo, tuple(available), size, got))
        return got

    monkeypatch.setattr(topology.deviceplugin, "best_effort_allocate", spy)
    yield calls


def test_kubelet_allocation_is_the_ported_policy_over_a_seeded_random_order(
    allocator_calls: list[Call],
) -> None:
    assert H100 is not None
    free = frozenset({0, 2, 3, 5, 6, 7})
    first = kubelet_allocation(H100, free, 2, random.Random(5))
    again = kubelet_allocation(H100, free, 2, random.Random(5))
    assert first == again  # reproducible
    assert sorted(first.order) == sorted(free)
    assert not first.fell_back
    (call, _) = allocator_calls
    assert call[1] == first.order and call[2] == 2
    assert first.gpus == tuple(sorted(call[3]))
    assert first.gpus in reachable_allocations(H100, free, 2)
    orders = {kubelet_allocation(H100, free, 2, random.Random(s)).order for s in range(20)}
    assert len(orders) > 1  # the order is drawn, not sorted
    with pytest.raises(ValueError):
        kubelet_allocation(H100, free, 7, random.Random(0))


def test_a_padded_answer_falls_back_to_the_kubelets_own_choice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert H100 is not None

    def padded(
        topo: NodeTopology, available: Sequence[int], size: int, required: Sequence[int] = ()
    ) -> tuple[int, ...]:
        return (PADDING, available[-1])

    monkeypatch.setattr(topology.deviceplugin, "best_effort_allocate", padded)
    got = kubelet_allocation(H100, {1, 4, 5}, 2, random.Random(3))
    assert got.fell_back
    assert got.gpus == tuple(sorted(got.order[:2]))
    monkeypatch.setattr(topology.deviceplugin, "best_effort_allocate", lambda *a, **k: ())
    assert kubelet_allocation(H100, {1, 4, 5}, 2, random.Random(3)).fell_back


def test_every_policy_gets_the_device_plugins_gpus(allocator_calls: list[Call]) -> None:
    # l40s: GPUs in pairs under one PCIe switch. A 1-GPU pod takes one GPU; for the 2-GPU pod
    # the plugin's best-effort policy finds a same-switch pair, whatever the random order:
    # the stock policies no longer get "lowest free" (formerly {1, 2}, across switches).
    one, two = pod("one", 1), pod("two", 2)
    t = trace(nodes("l40s-1"), [arrive(0, one), arrive(1, two)])
    for name in POLICIES:
        allocator_calls.clear()
        result = run_policy(t, make_policy(name))
        placed = outcome(result, "two")
        assert placed.node == "l40s-1"
        free = frozenset(placed.node_free)
        assert len(free) == 7 and outcome(result, "one").gpu_ids[0] not in free
        assert placed.gpu_ids in reachable_allocations(_layout("l40s-1"), free, 2), name
        assert placed.best_set is True, name
        assert [c[2] for c in allocator_calls] == [1, 2], name
        assert placed.gpu_ids == tuple(sorted(allocator_calls[-1][3]))
        assert compute(result).best_set_share == 1.0
        if name == "kvsched":
            assert placed.predicted_ids is not None and placed.predicted_best_set is True
        else:
            assert placed.predicted_ids is None and placed.predicted_best_set is None


def _layout(node: str) -> NodeTopology:
    sim = SimCluster(trace(nodes(node), []), Catalog.builtin(), "probe")
    topo = sim.node_state(node).topology
    assert topo is not None
    return topo


def test_kvsched_binds_its_prediction_and_the_store_counts_the_kubelets_gpus() -> None:
    # An HGX H100 (NVSwitch): every 2-set is alike, so the plugin's choice depends on the
    # random order and often is not the prediction. Find a seed where it is not.
    for seed in range(1, 40):
        t = trace(nodes("h100-1"), [], seed=seed)
        sim = SimCluster(t, Catalog.builtin(), "kvsched")
        first = pod("first", 2)
        sim.outcomes[first.name] = PodOutcome(first.name, first.replica, 2, first.model, None, 0)
        sim.arrive(first)
        KvschedPolicy().place(sim, [first])
        placed = sim.outcomes[first.name]
        if placed.prediction_hit is False:
            break
    else:
        pytest.fail("the plugin agreed with every prediction: no mismatch to check")
    assert placed.predicted_ids is not None
    state = sim.node_state("h100-1")
    # The truth, as the agent reports it, is what the store counts: the pod holds the
    # plugin's GPUs, by the kubelet's word, and the predicted ones are free again.
    assert {i for i, h in state.holders.items() if h.source == "kubelet"} == set(placed.gpu_ids)
    assert state.free_gpus == frozenset(range(8)) - set(placed.gpu_ids)
    assert set(placed.predicted_ids) - set(placed.gpu_ids) <= state.free_gpus
    record = sim.store.pod(first.uid)
    assert record is not None and record.prediction is not None
    assert tuple(record.prediction.indices) == placed.predicted_ids  # the annotation stays
    # The next pod is predicted and placed on what is really free.
    second = pod("second", 6)
    sim.outcomes[second.name] = PodOutcome(second.name, second.replica, 6, second.model, None, 1)
    sim.arrive(second)
    KvschedPolicy().place(sim, [second])
    assert set(sim.outcomes[second.name].gpu_ids) == set(range(8)) - set(placed.gpu_ids)
    assert sim.outcomes[second.name].prediction_hit is True  # only one set is left
    sim.remove(first)
    assert sim.node_state("h100-1").free_gpus == frozenset(placed.gpu_ids)


def test_simulated_run_every_tp_pod_holds_a_reachable_allocation(
    allocator_calls: list[Call],
) -> None:
    catalog = Catalog.builtin()
    config = TraceConfig(seed=3, nodes=8, duration_s=3 * 3600, deployment_rate_per_h=3.0)
    t = generate_trace(config, catalog)
    for name in ("kvsched", "stock-hinted"):
        allocator_calls.clear()
        result = run_policy(t, make_policy(name), catalog)
        placed = [p for p in result.pods if p.placed is not None and p.gpus > 0]
        assert len(allocator_calls) == len(placed) > 0
        tp = [p for p in placed if p.gpus > 1]
        assert tp
        for p in tp:
            topo = _node_layout(t.nodes, p.node)
            free = frozenset(p.node_free)
            assert set(p.gpu_ids) <= free
            if not p.plugin_fell_back:
                assert p.gpu_ids in reachable_allocations(topo, free, p.gpus), p
        metrics = compute(result)
        if name == "kvsched":
            assert metrics.tp_predicted == metrics.tp_pods
            assert 0 <= metrics.tp_prediction_hits <= metrics.tp_pods
            assert metrics.predicted_pods == len(placed)
            taken = [p for p in placed if not set(p.predicted_ids or ()) <= set(p.node_free)]
            assert metrics.predictions_on_taken_gpus == len(taken)
            assert all(p.gang is not None for p in taken)  # only stale gang reservations
        else:
            assert metrics.tp_predicted == 0 and metrics.predicted_best_set_share is None
    table = format_table([compute(run_policy(t, make_policy("stock-hinted"), catalog))])
    assert "BEST SET (PLUGIN)" in table and "BEST SET (PREDICTED)" in table


def _node_layout(pool: Sequence[Any], name: str | None) -> NodeTopology:
    node = next(n for n in pool if n.name == name)
    topo = preset_for_product(node.kind.product_label, 8)
    assert topo is not None
    return topo


def test_departures_give_the_plugins_gpus_back() -> None:
    a, b = pod("a", 4), pod("b", 8)
    t = trace(nodes("h100-1"), [arrive(0, a), arrive(1, b), depart(10, a)], duration=20)
    result = run_policy(t, make_policy("stock-hinted"))
    assert outcome(result, "b").placed == 10
    assert outcome(result, "b").gpu_ids == tuple(range(8))


# ---- hack/bench_scheduler.py's replay ------------------------------------------------------


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "bench_scheduler_under_test", ROOT / "hack" / "bench_scheduler.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_bench_replay_grades_the_device_plugins_gpus_and_the_prediction(
    allocator_calls: list[Call],
) -> None:
    bench = _bench()
    assert bench.kubelet_allocation is kubelet.kubelet_allocation
    catalog = Catalog.builtin()
    objects = bench.pool_objects(12, 7, 1.0)
    initial = bench.initial_states(objects, catalog)
    names = [n["metadata"]["name"] for n in objects["Node"]]
    node = next(n for n in names if len(initial[n].free_gpus) == 8)
    pods = {
        f"p{i}": bench._pod("meta-llama/Llama-3.1-8B-Instruct", tp, f"p{i}")
        for i, tp in enumerate((2, 2, 4))
    }
    predicted = {"p0": (0, 1), "p1": (2, 3), "p2": (4, 5, 6, 7)}

    def bound(name: str, profile: str) -> dict[str, Any]:
        obj = {**pods[name], "spec": {**pods[name]["spec"], "nodeName": node}}
        if profile == "kvsched":
            encoded = bench.GpuPrediction(node, predicted[name]).encode()
            obj["metadata"] = {
                **obj["metadata"],
                "annotations": {
                    **obj["metadata"]["annotations"],
                    bench.A_PREDICTED_GPUS: encoded,
                },
            }
        return obj

    for profile in ("default", "kvsched"):
        allocator_calls.clear()
        result = bench.PhaseResult(
            profile=profile,
            pods=3,
            bound=3,
            create_s=0.0,
            sched_start_s=0.0,
            first_bind_s=0.0,
            last_bind_s=1.0,
            origin="first create",
            wall_s=1.0,
            order=list(pods),
            final={n: bound(n, profile) for n in pods},
            failed_events=0,
            log_notes={},
        )
        got = bench.replay(result, pods, initial, catalog, 7)
        again = bench.replay(result, pods, initial, catalog, 7)
        assert got["tp total"] == 3 and got["conflicts"] == 0
        assert [c[2] for c in allocator_calls] == [2, 2, 4, 2, 2, 4]
        assert got["tp best"] == again["tp best"]  # seeded
        # Every plugin set is a reachable allocation on the node's free GPUs then.
        free = frozenset(range(8))
        topo = initial[node].topology
        assert topo is not None
        for _, available, size, answer in allocator_calls[:3]:
            assert frozenset(available) == free
            assert tuple(sorted(answer)) in reachable_allocations(topo, free, size)
            free -= set(answer)
        if profile == "default":
            assert got["tp predicted"] == 0 and got["predicted pods"] == 0
        else:
            assert got["tp predicted"] == 3 and got["predicted pods"] == 3
            plugin = [tuple(sorted(c[3])) for c in allocator_calls[:3]]
            assert got["hits"] == sum(
                p == predicted[n] for p, n in zip(plugin, ("p0", "p1", "p2"), strict=True)
            )
    assert bench.share_text(0, 0) == "-"
