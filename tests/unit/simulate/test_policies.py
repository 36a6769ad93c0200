from __future__ import annotations

from unit.simulate.helpers import LLAMA_8B, arrive, nodes, pod, trace

from scheduler.simulate.engine import PodOutcome, RunResult, run_policy
from scheduler.simulate.metrics import compute
from scheduler.simulate.policies import make_policy
from scheduler.simulate.trace import CachedCopy


def outcome(result: RunResult, name: str) -> PodOutcome:
    return next(p for p in result.pods if p.name == name)


def test_spread_and_binpack_choose_differently() -> None:
    first, second = pod("first", 4), pod("second", 1)
    t = trace(nodes("h100-1", "h100-2"), [arrive(0, first), arrive(10, second)])
    spread = run_policy(t, make_policy("spread"))
    binpack = run_policy(t, make_policy("binpack"))
    assert outcome(spread, "second").node != outcome(spread, "first").node
    assert outcome(binpack, "second").node == outcome(binpack, "first").node


def test_stock_and_kvsched_tp_pods_on_the_best_set_by_the_device_plugins_gpus() -> None:
    # l40s: pairs under one PCIe switch; a 1-GPU pod takes a GPU, then a 2-GPU pod. This test
    # used to assert that the stock policy got the lowest free GPUs {1, 2} (across two
    # switches, not the best set); every policy now gets the device plugin's best-effort
    # choice, a same-switch pair (tests/unit/simulate/test_device_plugin.py).
    one, two = pod("one", 1), pod("two", 2)
    t = trace(nodes("l40s-1"), [arrive(0, one), arrive(1, two)])
    for name in ("spread", "kvsched", "topology"):
        result = run_policy(t, make_policy(name))
        gpus = outcome(result, "two").gpu_ids
        assert len(gpus) == 2 and gpus[0] // 2 == gpus[1] // 2, (name, gpus)
        assert outcome(result, "two").best_set is True
        assert compute(result).best_set_share == 1.0


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
    assert outcome(run_policy(t, make_policy("spread")), "p").tier in {"local-disk", "network"}


def test_baseline_partial_gang_kvsched_none() -> None:
    # Two 8-GPU nodes; a 1-GPU pod takes a GPU of one of them; then a gang of two 8-GPU
    # members cannot be placed whole. The baselines bind the member that fits; kvsched binds
    # none of them.
    single = pod("single", 1)
    gang = [pod(f"g-{i}", 8, gang=("g", 2)) for i in range(2)]
    t = trace(nodes("h100-1", "h100-2"), [arrive(0, single), arrive(5, *gang)], duration=100)
    for name in ("spread", "binpack", "topology"):
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
