"""The warming planner: ready holders per model in demand, fit, sole holders, budgets, caps,
withdrawal with hold-down, determinism."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from support.k8s import model_annotations, pod

from scheduler.core.demand import PodDemand, parse_demand
from scheduler.core.node import CachedModel, NodeState, Tier
from scheduler.core.warming import (
    COPY_STATES,
    CopyProgress,
    ModelDemand,
    WarmingNode,
    WarmingPlan,
    WarmingSettings,
    WarmingTarget,
    plan_warming,
)
from scheduler.inventory.status import WARMING_STATES
from scheduler.models.catalog import Catalog
from topology.hardware import lookup_product
from topology.presets import PRESETS

CATALOG = Catalog.builtin()
LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"
LLAMA_70B = "meta-llama/Llama-3.1-70B-Instruct"
QWEN_7B = "Qwen/Qwen2.5-7B-Instruct"
TB = 10**12
NOW = 10_000.0


def state(
    name: str,
    *,
    free: set[int] | None = None,
    models: dict[str, Tier] | None = None,
    preset: str = "hgx-h100-8",
    product: str = "H100-80",
    sizes: dict[str, int] | None = None,
) -> NodeState:
    topology = PRESETS[preset]
    gpu = lookup_product(product)
    assert gpu is not None
    cached = {
        m.lower(): (CachedModel(m.lower(), tier, size_bytes=(sizes or {}).get(m)),)
        for m, tier in (models or {}).items()
    }
    return NodeState(
        name=name,
        topology=topology,
        gpu_product=gpu.name,
        gpu_memory_bytes=gpu.memory_bytes,
        allocatable_gpus=topology.gpu_count,
        free_gpus=frozenset(range(topology.gpu_count) if free is None else free),
        models=cached,
    )


def node(name: str, budget: int = 2 * TB, **kwargs: object) -> WarmingNode:
    desired = kwargs.pop("desired", ())
    progress = kwargs.pop("progress", ())
    can_fetch = kwargs.pop("can_fetch", True)
    return WarmingNode(
        state(name, **kwargs),  # type: ignore[arg-type]
        budget,
        can_fetch=bool(can_fetch),
        desired=desired,  # type: ignore[arg-type]
        progress=progress,  # type: ignore[arg-type]
    )


def pod_demand(model: str, gpus: int = 1, **extra: str) -> PodDemand:
    return parse_demand(pod("p", gpus=gpus, annotations=model_annotations(model, **extra)), CATALOG)


def wanted(model: str = LLAMA_8B, gpus: int = 1, running: int = 1, **extra: object) -> ModelDemand:
    annotations = {k: v for k, v in extra.items() if isinstance(v, str)}
    counts = {k: v for k, v in extra.items() if not isinstance(v, str)}
    spec = CATALOG.get(model)
    name = spec.name if spec is not None else model
    return ModelDemand(
        name,
        pod_demand(model, gpus, max_model_len="8192", **annotations),
        running=running,
        **counts,  # type: ignore[arg-type]
    )


def targets(plan: WarmingPlan, model: str = LLAMA_8B) -> list[str]:
    return sorted(n for n, ts in plan.desired.items() if any(t.key[0] == model.lower() for t in ts))


SETTINGS = WarmingSettings(holders=2)


def test_keeps_n_ready_holders_of_a_model_in_demand() -> None:
    nodes = [node(f"n{i}") for i in range(5)]
    plan = plan_warming([wanted()], nodes, NOW, SETTINGS)
    assert targets(plan) == ["n0", "n1"]  # equal nodes: by name
    assert [c.action for c in plan.changes] == ["add", "add"]
    entry = plan.desired["n0"][0]
    assert entry.name == "meta-llama/Llama-3.1-8B-Instruct"  # spelt as the hub spells it
    assert entry.size_bytes == wanted().size_bytes and entry.size_bytes > 15 * 10**9
    assert entry.requested_at == NOW and "keep 2 ready holders" in entry.reason
    assert plan.requested_bytes == 2 * wanted().size_bytes
    assert plan.in_flight_bytes == plan.requested_bytes and plan.in_progress == 2
    assert plan.ready_holders[(LLAMA_8B.lower(), None)] == 2
    three = plan_warming([wanted()], nodes, NOW, WarmingSettings(holders=3))
    assert targets(three) == ["n0", "n1", "n2"]


def test_existing_ready_holders_count_and_busy_ones_do_not() -> None:
    ready = node("a", models={LLAMA_8B: Tier.LOCAL_DISK})
    busy = node("b", models={LLAMA_8B: Tier.GPU}, free=set())  # all 8 GPUs taken
    others = [node(n) for n in ("c", "d", "e")]
    plan = plan_warming([wanted()], [ready, busy, *others], NOW, SETTINGS)
    # a counts (holds it, could host the next replica); b holds it but has no free GPU.
    assert targets(plan) == ["c"]
    assert plan.ready_holders[(LLAMA_8B.lower(), None)] == 2


def test_targets_only_nodes_where_the_next_replica_fits() -> None:
    # 70B at TP4 with 16 sequences of 8k tokens: ~46 GB a GPU, more than an L40S (48 GB, 90%
    # usable) holds; four free H100s hold it.
    demand = wanted(LLAMA_70B, gpus=4, max_num_seqs="16")
    nodes = [
        node("a-two-free", free={0, 1}),
        node("b-l40s", preset="l40s-pcie-8", product="L40S"),
        node("c"),
        node("d", free={4, 5, 6, 7}),
    ]
    plan = plan_warming([demand], nodes, NOW, WarmingSettings(holders=3))
    assert targets(plan, LLAMA_70B) == ["c", "d"]
    assert len(plan.shortfalls) == 1
    short = plan.shortfalls[0]
    assert (short.holders, short.wanted) == (2, 3)
    assert "could host its next replica" in short.reason


def test_prefers_right_sized_gpus_and_free_room() -> None:
    # An 8B model fits an L40S: the planner keeps it off the H200s, then prefers more free GPUs.
    nodes = [
        node("a-h200", preset="hgx-h200-8", product="H200-141"),
        node("b-l40s-two", preset="l40s-pcie-8", product="L40S", free={0, 1}),
        node("c-l40s-all", preset="l40s-pcie-8", product="L40S"),
    ]
    plan = plan_warming([wanted()], nodes, NOW, SETTINGS)
    assert targets(plan) == ["b-l40s-two", "c-l40s-all"]


def test_never_the_sole_ready_holder_of_another_model_in_demand() -> None:
    # x alone holds Qwen, which is in demand: warming Llama there would let Llama's next
    # replica take the GPUs Qwen's next replica needs.
    nodes = [node("x", models={QWEN_7B: Tier.LOCAL_DISK}), node("y"), node("z")]
    qwen = wanted(QWEN_7B)
    plan = plan_warming([wanted(), qwen], nodes, NOW, WarmingSettings(holders=1))
    assert targets(plan) == ["y"]
    # Two holders for each: Llama (first by name at equal demand) gets y and z; Qwen's second
    # may then share y, since Llama has two ready holders there and y is no sole holder.
    plan2 = plan_warming([wanted(), qwen], nodes, NOW, SETTINGS)
    assert targets(plan2) == ["y", "z"]
    assert targets(plan2, QWEN_7B) == ["y"]
    assert plan2.shortfalls == ()
    # With only x and y, each model's sole holder is off limits to the other.
    tight = plan_warming([wanted(), qwen], nodes[:2], NOW, SETTINGS)
    assert targets(tight) == ["y"] and targets(tight, QWEN_7B) == []
    short = {s.name: s for s in tight.shortfalls}
    assert set(short) == {"meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-7B-Instruct"}
    assert all(
        s.reason
        == "1 more fitting node(s), but: 1 the only ready holder of another model in demand"
        for s in short.values()
    )


def test_a_second_holder_frees_the_node_for_others() -> None:
    nodes = [
        node("x", models={QWEN_7B: Tier.LOCAL_DISK}),
        node("w", models={QWEN_7B: Tier.LOCAL_DISK}),
    ]
    plan = plan_warming([wanted(), wanted(QWEN_7B)], nodes, NOW, SETTINGS)
    # Qwen has two ready holders, so neither is its sole one: Llama may go to both.
    assert targets(plan) == ["w", "x"]


def test_sole_holder_of_a_model_not_in_demand_is_fair_game() -> None:
    nodes = [node("x", models={QWEN_7B: Tier.LOCAL_DISK})]
    plan = plan_warming([wanted()], nodes, NOW, SETTINGS)
    assert targets(plan) == ["x"]


def test_disk_budget_counts_wanted_and_in_demand_copies_only() -> None:
    size = wanted().size_bytes
    qwen = wanted(QWEN_7B)
    nodes = [
        # Holds Qwen, which is in demand: Qwen's bytes stay, leaving one byte too few.
        node("b-full", budget=size + qwen.size_bytes - 1, models={QWEN_7B: Tier.LOCAL_DISK}),
        # Holds a model nobody wants: the agent's LRU may evict it, so it does not count.
        node("c-idle", budget=size, models={"mistralai/Mistral-7B-Instruct-v0.3": Tier.LOCAL_DISK}),
        node("d-tiny", budget=size - 1),
        # Qwen's second ready holder (no agent fetches there), so b is not its sole one.
        node("q", models={QWEN_7B: Tier.LOCAL_DISK}, can_fetch=False),
    ]
    plan = plan_warming([wanted(), qwen], nodes, NOW, SETTINGS)
    assert targets(plan) == ["c-idle"]
    (short,) = plan.shortfalls
    assert short.name == "meta-llama/Llama-3.1-8B-Instruct" and short.holders == 1
    assert short.reason == "2 more fitting node(s), but: 2 without room in the disk budget"
    # Once Qwen's demand is gone (past the hold-down), its copy on b may be evicted.
    idle = replace(qwen, running=0, last_active=0.0)
    assert targets(plan_warming([wanted(), idle], nodes, NOW, SETTINGS)) == ["b-full", "c-idle"]
    # The settings' budget caps every node below its own.
    capped = plan_warming([wanted()], [node("a")], NOW, replace(SETTINGS, node_disk_budget_bytes=1))
    assert targets(capped) == []


def test_per_node_cap_on_bytes_in_flight() -> None:
    size = wanted().size_bytes
    qwen = wanted(QWEN_7B)
    copying = CopyProgress(QWEN_7B, "copying", bytes_done=0, bytes_total=qwen.size_bytes)
    busy = node(
        "a",
        desired=(WarmingTarget(QWEN_7B, None, qwen.size_bytes, "r", 1.0),),
        progress=(copying,),
    )
    # Qwen's other ready holder (no agent fetches there): a is not Qwen's sole holder.
    other = node("q", models={QWEN_7B: Tier.LOCAL_DISK}, can_fetch=False)
    settings = WarmingSettings(holders=1, max_inflight_bytes_per_node=qwen.size_bytes + size - 1)
    plan = plan_warming([wanted(), qwen], [busy, other], NOW, settings)
    assert targets(plan) == []
    assert plan.shortfalls[0].reason == (
        "1 more fitting node(s), but: 1 at the cap of bytes in flight per node"
    )
    # Halfway through, the remaining bytes leave room.
    half = replace(copying, bytes_done=qwen.size_bytes // 2)
    plan = plan_warming([wanted(), qwen], [replace(busy, progress=(half,)), other], NOW, settings)
    assert targets(plan) == ["a"]
    assert plan.in_flight_bytes == qwen.size_bytes - qwen.size_bytes // 2 + size
    # A cap smaller than one model still lets it copy alone.
    alone = plan_warming(
        [wanted()], [node("a")], NOW, WarmingSettings(holders=1, max_inflight_bytes_per_node=1)
    )
    assert targets(alone) == ["a"]


def test_pool_cap_on_bytes_in_flight() -> None:
    size = wanted().size_bytes
    nodes = [node(f"n{i}") for i in range(4)]
    settings = WarmingSettings(holders=4, max_inflight_bytes_pool=2 * size)
    plan = plan_warming([wanted()], nodes, NOW, settings)
    assert targets(plan) == ["n0", "n1"]
    assert plan.in_flight_bytes == 2 * size
    assert plan.shortfalls[0].reason == (
        "2 more fitting node(s), but: the pool is at its cap of bytes in flight"
    )
    # One model bigger than the whole cap: one copy at a time.
    one = plan_warming([wanted()], nodes, NOW, replace(settings, max_inflight_bytes_pool=1))
    assert targets(one) == ["n0"]


def test_withdraws_after_the_hold_down_and_not_before() -> None:
    entry = WarmingTarget(LLAMA_8B, None, 16 * 10**9, "r", 1.0)
    held = node("a", desired=(entry,), models={LLAMA_8B: Tier.LOCAL_DISK})
    settings = WarmingSettings(holders=2, hold_down_s=900)
    idle = replace(wanted(), running=0, last_active=NOW - 100)
    kept = plan_warming([idle], [held, node("b")], NOW, settings)
    assert kept.desired["a"] == (entry,) and kept.changes == ()
    # Idle models get no new holders during the hold-down either.
    assert kept.desired["b"] == ()
    gone = plan_warming([replace(idle, last_active=NOW - 901)], [held], NOW, settings)
    assert gone.desired["a"] == ()
    (change,) = gone.changes
    assert change.action == "withdraw" and "no demand for 901s (hold-down 900s)" in change.reason
    unknown = plan_warming([], [held], NOW, settings)
    assert unknown.desired["a"] == () and unknown.changes[0].reason.endswith("no demand")
    # A model without pods whose last demand the caller remembers: held down the same way.
    key = (LLAMA_8B.lower(), None)
    remembered = plan_warming([], [held], NOW, settings, last_active={key: NOW - 100})
    assert remembered.desired["a"] == (entry,)
    expired = plan_warming([], [held], NOW, settings, last_active={key: NOW - 1000})
    assert expired.desired["a"] == ()


def test_in_demand_entries_stay_whatever_the_node_now_looks_like() -> None:
    entry = WarmingTarget(LLAMA_8B, None, 16 * 10**9, "r", 1.0)
    full = node("a", desired=(entry,), free=set())
    plan = plan_warming([wanted()], [full, node("b"), node("c")], NOW, SETTINGS)
    assert plan.desired["a"] == (entry,)  # kept: a copy is not wasted by busy GPUs
    assert targets(plan) == ["a", "b", "c"]  # but it is no ready holder now


def test_copies_in_progress_count_failed_ones_do_not() -> None:
    entry = WarmingTarget(LLAMA_8B, None, 16 * 10**9, "r", 1.0)
    copying = node(
        "a",
        desired=(entry,),
        progress=(CopyProgress(LLAMA_8B, "copying", bytes_done=6 * 10**9, bytes_total=16 * 10**9),),
    )
    failed = node(
        "b", desired=(entry,), progress=(CopyProgress(LLAMA_8B, "failed", bytes_done=10**9),)
    )
    plan = plan_warming([wanted()], [copying, failed, node("c")], NOW, SETTINGS)
    assert targets(plan) == ["a", "b", "c"]
    assert [c.node for c in plan.changes] == ["c"]  # a counts; b's failed copy does not
    size = wanted().size_bytes
    assert plan.in_flight_bytes == 10 * 10**9 + size
    assert plan.in_progress == 2  # a and c


def test_nodes_without_a_fetching_agent_are_never_targets() -> None:
    plan = plan_warming([wanted()], [node("a", can_fetch=False), node("b")], NOW, SETTINGS)
    assert targets(plan) == ["b"]


def test_feeding_the_plan_back_changes_nothing() -> None:
    nodes = [node(f"n{i}") for i in range(4)]
    demands = [wanted(), wanted(QWEN_7B, pending=2)]
    first = plan_warming(demands, nodes, NOW, SETTINGS)
    again = [replace(n, desired=first.desired[n.name]) for n in nodes]
    second = plan_warming(demands, again, NOW + 60, SETTINGS)
    assert second.changes == () and second.desired == first.desired


def test_deterministic_whatever_the_input_order() -> None:
    nodes = [node(f"n{i:02d}", free=set(range(i % 8 + 1))) for i in range(20)]
    demands = [wanted(), wanted(QWEN_7B, pending=1), wanted(LLAMA_70B, gpus=4, running=2)]
    reference = plan_warming(demands, nodes, NOW, SETTINGS)
    rng = random.Random(7)
    for _ in range(5):
        rng.shuffle(nodes)
        rng.shuffle(demands)
        assert plan_warming(demands, nodes, NOW, SETTINGS) == reference


def test_pending_demand_goes_first_when_caps_bind() -> None:
    size = wanted().size_bytes
    settings = WarmingSettings(holders=1, max_inflight_bytes_pool=size)
    plan = plan_warming(
        [wanted(running=5), wanted(QWEN_7B, running=0, pending=1)],
        [node("a"), node("b")],
        NOW,
        settings,
    )
    assert targets(plan, QWEN_7B) == ["a"] and targets(plan) == []


def test_holders_zero_adds_nothing() -> None:
    plan = plan_warming([wanted()], [node("a")], NOW, WarmingSettings(holders=0))
    assert plan.desired == {"a": ()} and plan.changes == ()


def test_bad_input_is_refused_with_its_name() -> None:
    with pytest.raises(ValueError, match="its pod's model"):
        ModelDemand("other/model", pod_demand(LLAMA_8B))
    with pytest.raises(ValueError, match="running -1"):
        ModelDemand(LLAMA_8B, pod_demand(LLAMA_8B), running=-1)
    with pytest.raises(ValueError, match="listed twice"):
        plan_warming([], [node("a"), node("a")], NOW, SETTINGS)
    with pytest.raises(ValueError, match="listed twice"):
        plan_warming([wanted(), wanted()], [], NOW, SETTINGS)
    with pytest.raises(ValueError, match="holders"):
        WarmingSettings(holders=-1)
    with pytest.raises(ValueError, match="state 'half'"):
        CopyProgress(LLAMA_8B, "half")


def test_copy_states_match_the_inventory() -> None:
    assert COPY_STATES == WARMING_STATES
