from __future__ import annotations

import math

import pytest
from unit.simulate.helpers import LLAMA_8B, LLAMA_70B, arrive, nodes, pod, trace

from scheduler.models.catalog import Catalog
from scheduler.simulate.engine import PodOutcome, RunResult, SimCluster, run_policy
from scheduler.simulate.metrics import compute
from scheduler.simulate.policies import (
    POLICIES,
    balanced_allocation,
    least_allocated,
    make_policy,
    spread_scores,
)
from scheduler.simulate.trace import CachedCopy


def outcome(result: RunResult, name: str) -> PodOutcome:
    return next(p for p in result.pods if p.name == name)


def test_default_profile_scores_cpu_and_memory_as_upstream() -> None:
    # 3 GPUs' requests: 24 cpu of 220 and 192Gi of 1980Gi.
    cpu = (220_000 - 24_000) * 100 // 220_000  # 89
    memory = (1980 - 192) * 100 // 1980  # 90
    assert least_allocated(3) == (cpu + memory) // 2 == 89
    fractions = (24 / 220, 192 / 1980)
    assert balanced_allocation(3) == int((1 - abs(fractions[0] - fractions[1]) / 2) * 100)
    assert least_allocated(0) == 100 and balanced_allocation(0) == 100


def test_pod_topology_spread_system_defaults_score_as_upstream() -> None:
    # Two zone-a nodes; one replica of "dep" on h100-2. Upstream: raw = count x log(domains+2)
    # + (maxSkew - 1) per constraint, rounded; normalised 100 * (max + min - s) / max.
    t = trace(nodes("h100-1", "h100-2"), [arrive(0, pod("a1", 1))])
    sim = SimCluster(t, Catalog.builtin(), "probe")
    sim._replicas["h100-2"]["dep"] = 1
    zone = 1 * math.log(1 + 2) + 4
    raw = [round(zone + 0 + 2), round(zone + 1 * math.log(2 + 2) + 2)]
    assert raw == [7, 8]
    expected = [100 * (8 + 7 - s) // 8 for s in raw]
    assert spread_scores(sim, "dep", ["h100-1", "h100-2"], sim.node_names) == expected
    assert spread_scores(sim, "other", ["h100-1", "h100-2"], sim.node_names) == [100, 100]


def test_default_profile_spreads_replicas_of_one_workload_over_nodes() -> None:
    # One node runs 2 GPUs of another workload, the other one replica of "dep". LeastAllocated
    # alone prefers the latter (fewer GPUs used); PodTopologySpread's default hostname
    # constraint (weight 2) outweighs it and sends the second replica to the former.
    other = pod("other", 2, deployment="other")
    first, second = pod("first", 1), pod("second", 1)
    t = trace(
        nodes("h100-1", "h100-2"),
        [arrive(0, other), arrive(1, first), arrive(2, second)],
    )
    for name in ("stock-hinted", "stock-blind"):
        result = run_policy(t, make_policy(name))
        busy = outcome(result, "other").node
        assert outcome(result, "first").node != busy, name
        assert outcome(result, "second").node == busy, name


def test_memory_blind_places_a_70b_on_a_48gb_gpu_and_counts_a_failed_start() -> None:
    big = pod("big", 1, model=LLAMA_70B)
    t = trace(nodes("l40s-1"), [arrive(0, big)], duration=3600)
    blind = run_policy(t, make_policy("stock-blind"))
    placed = outcome(blind, "big")
    assert placed.node == "l40s-1" and placed.failed_start
    assert placed.load_s is None and placed.ready_s is None  # loads, crashes, never ready
    metrics = compute(blind)
    assert metrics.failed_starts == 1 and metrics.loaded == 0
    for name in ("stock-hinted", "kvsched", "pinning"):
        result = run_policy(t, make_policy(name))
        assert outcome(result, "big").placed is None, name
        assert compute(result).failed_starts == 0


def _cached_on_second() -> dict[str, tuple[CachedCopy, ...]]:
    return {"h100-2": (CachedCopy(LLAMA_8B, None, 16_060_522_496),)}


def test_pinning_only_where_cached() -> None:
    pods = [pod(f"p{i}", 1) for i in range(3)]
    t = trace(
        nodes("h100-1", "h100-2", "h100-3"),
        [arrive(i, p) for i, p in enumerate(pods)],
        _cached_on_second(),
    )
    result = run_policy(t, make_policy("pinning"))
    assert {outcome(result, p.name).node for p in pods} == {"h100-2"}


def test_kvsched_prefers_the_warm_node() -> None:
    p = pod("p", 2)
    t = trace(nodes("h100-1", "h100-2", "h100-3"), [arrive(0, p)], _cached_on_second())
    result = run_policy(t, make_policy("kvsched"))
    placed = outcome(result, "p")
    assert placed.node == "h100-2"
    assert placed.tier == "local-disk"
    assert placed.load_s == pytest.approx(16_060_522_496 / 5e9)


def test_baseline_partial_gang_kvsched_none() -> None:
    # Two 8-GPU nodes; a 1-GPU pod takes a GPU of one of them; then a gang of two 8-GPU
    # members cannot be placed whole. The baselines bind the member that fits; kvsched binds
    # none of them.
    single = pod("single", 1)
    gang = [pod(f"g-{i}", 8, gang=("g", 2)) for i in range(2)]
    t = trace(nodes("h100-1", "h100-2"), [arrive(0, single), arrive(5, *gang)], duration=100)
    for name in POLICIES:
        if name == "kvsched":
            continue
        metrics = compute(run_policy(t, make_policy(name)))
        assert metrics.partial_gangs == 1, name
        assert metrics.partial_gang_gpu_s == 8 * 95
    kv = run_policy(t, make_policy("kvsched"))
    metrics = compute(kv)
    assert metrics.partial_gangs == 0
    assert all(outcome(kv, p.name).placed is None for p in gang)
    assert metrics.never_placed == 2


def test_kvsched_places_a_gang_that_fits_whole() -> None:
    gang = [pod(f"g-{i}", 8, gang=("g", 2)) for i in range(2)]
    t = trace(nodes("h100-1", "h100-2"), [arrive(0, *gang)])
    kv = run_policy(t, make_policy("kvsched"))
    assert {outcome(kv, p.name).node for p in gang} == {"h100-1", "h100-2"}
    assert compute(kv).partial_gangs == 0
