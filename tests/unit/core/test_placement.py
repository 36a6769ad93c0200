"""Fit decisions, the score breakdown and relative integer scores of the placement core."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.k8s import model_annotations, pod

from scheduler.core.demand import PodDemand, parse_demand
from scheduler.core.node import Bandwidth, CachedModel, NodeState, Tier
from scheduler.core.placement import ScoringConfig, evaluate
from scheduler.core.scoring import relative_scores
from scheduler.models.catalog import Catalog
from topology.hardware import lookup_product
from topology.presets import PRESETS, preset_for_product

LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"
LLAMA_70B = "meta-llama/Llama-3.1-70B-Instruct"
CATALOG = Catalog.builtin()


def node(
    name: str,
    preset: str = "hgx-h100-8",
    product: str = "H100-80",
    free: set[int] | None = None,
    models: dict[str, Tier] | None = None,
) -> NodeState:
    topology = PRESETS[preset]
    gpu = lookup_product(product)
    assert gpu is not None
    cached = {m.lower(): (CachedModel(m.lower(), tier),) for m, tier in (models or {}).items()}
    return NodeState(
        name=name,
        topology=topology,
        gpu_product=gpu.name,
        gpu_memory_bytes=gpu.memory_bytes,
        allocatable_gpus=topology.gpu_count,
        free_gpus=frozenset(range(topology.gpu_count) if free is None else free),
        models=cached,
    )


def demand(gpus: int = 1, model: str | None = LLAMA_8B, **extra: str) -> PodDemand:
    annotations = model_annotations(model, **extra) if model else {}
    return parse_demand(pod("p", gpus=gpus, annotations=annotations), CATALOG)


def test_fits_and_reports_the_breakdown() -> None:
    result = evaluate(demand(4, LLAMA_70B, max_model_len="8192"), node("n"))
    assert result.fits
    assert len(result.gpus) == 4
    assert result.gpu_set is not None and result.gpu_set.tier.name == "NVLINK_COMPLETE"
    assert result.cold_start is not None and result.cold_start.tier is Tier.NETWORK
    # 141 GB over the assumed 1.5 GB/s network plus 30 s engine init.
    assert result.cold_start.ready_seconds == pytest.approx(
        30 + result.cold_start.weights_bytes / 1.5e9
    )
    assert result.memory is not None and result.memory.headroom_bytes > 0


def test_hgx_four_gpu_pod_stays_in_one_numa_half() -> None:
    result = evaluate(demand(4, LLAMA_70B, max_model_len="8192"), node("n"))
    numa = {PRESETS["hgx-h100-8"].numa_of(i) for i in result.gpus}
    assert len(numa) == 1


def test_weights_and_kv_that_do_not_fit_are_unresolvable_with_the_numbers() -> None:
    result = evaluate(demand(1, LLAMA_70B), node("n"))
    assert not result.fits and result.unresolvable
    assert "GiB" in result.reason and "H100" in result.reason


def test_kv_budget_decides_the_fit() -> None:
    small = evaluate(demand(1, LLAMA_8B, max_model_len="8192"), node("l", "l40s-pcie-8", "L40S"))
    assert small.fits
    # 131,072 B/token x 400k tokens = 48.8 GiB of KV alone: more than an L40S holds.
    big = evaluate(demand(1, LLAMA_8B, kv_cache_tokens="400000"), node("l", "l40s-pcie-8", "L40S"))
    assert not big.fits and big.unresolvable


def test_too_few_free_gpus_is_resolvable() -> None:
    result = evaluate(demand(4, LLAMA_70B, max_model_len="8192"), node("n", free={0, 1, 2}))
    assert not result.fits and not result.unresolvable
    assert "3 of 8 GPUs free" in result.reason


def test_too_few_gpus_in_total_is_unresolvable() -> None:
    topology = preset_for_product("NVIDIA-L4", 2)
    assert topology is not None
    small = replace(
        node("n", "l4-pcie-8", "L4"),
        topology=topology,
        allocatable_gpus=2,
        free_gpus=frozenset({0, 1}),
    )
    result = evaluate(demand(4, None), small)
    assert not result.fits and result.unresolvable and "2 GPUs in total" in result.reason


def test_node_without_gpus_is_unresolvable() -> None:
    cpu = NodeState("cpu", None, None, 0, 0, frozenset())
    result = evaluate(demand(1), cpu)
    assert not result.fits and result.unresolvable and "no nvidia.com/gpu" in result.reason


def test_bad_annotation_fails_every_node_with_its_reason() -> None:
    bad = demand(1, LLAMA_8B, max_num_seqs="lots")
    for n in (node("a"), node("b", "l40s-pcie-8", "L40S")):
        result = evaluate(bad, n)
        assert not result.fits and result.unresolvable
        assert "kvsched.io/max-num-seqs" in result.reason and "lots" in result.reason


def test_bridge_pair_box_gets_an_nvlink_pair() -> None:
    result = evaluate(
        demand(2, None), node("p", "a100-pcie-8-nvbridge", "A100-PCIE-40GB", free={1, 2, 3, 4, 6})
    )
    assert result.fits and result.gpus == (2, 3)
    assert result.gpu_set is not None and result.gpu_set.tier.name == "NVLINK_COMPLETE"


def test_unindexed_busy_gpus_reduce_free_count() -> None:
    busy = replace(node("n"), unindexed_busy=6)
    result = evaluate(demand(4, None), busy)
    assert not result.fits and "2 of 8 GPUs free" in result.reason


def test_residency_tiers_order_scores() -> None:
    d = demand(4, LLAMA_70B, max_model_len="8192")
    nodes = [
        node("gpu", models={LLAMA_70B: Tier.GPU}),
        node("host", models={LLAMA_70B: Tier.HOST_MEMORY}),
        node("disk", models={LLAMA_70B: Tier.LOCAL_DISK}),
        node("cold"),
    ]
    scored = relative_scores([(n.name, evaluate(d, n)) for n in nodes])
    scores = [s.score for s in scored]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] == 10 and scores[-1] < scores[1]


def test_pinned_revision_needs_that_revision() -> None:
    copy = CachedModel(LLAMA_8B.lower(), Tier.HOST_MEMORY, revision="abc")
    n = replace(node("n"), models={LLAMA_8B.lower(): (copy,)})
    assert n.residency(LLAMA_8B.lower(), None) == copy
    assert n.residency(LLAMA_8B.lower(), "abc") == copy
    assert n.residency(LLAMA_8B.lower(), "def") is None


def test_right_size_prefers_the_smaller_gpu_that_fits() -> None:
    d = demand(1, LLAMA_8B, max_model_len="8192")
    small = node("l40s", "l40s-pcie-8", "L40S")
    big = node("h200", "hgx-h200-8", "H200")
    scored = {s.node: s for s in relative_scores([(n.name, evaluate(d, n)) for n in (small, big)])}
    assert scored["l40s"].terms["right_size"] > scored["h200"].terms["right_size"]
    assert scored["l40s"].score >= scored["h200"].score


def test_one_feasible_node_gets_ten_and_infeasible_get_zero() -> None:
    d = demand(8, None)
    scored = relative_scores(
        [
            ("ok", evaluate(d, node("ok"))),
            ("busy", evaluate(d, node("busy", free={0}))),
        ]
    )
    assert [(s.node, s.score) for s in scored] == [("ok", 10), ("busy", 0)]


def test_scoring_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        ScoringConfig(ready_weight=-1)
    with pytest.raises(ValueError):
        ScoringConfig(0, 0, 0, 0)


tiers = st.sampled_from([None, *Tier])
presets = st.sampled_from(
    [
        ("hgx-h100-8", "H100-80"),
        ("hgx-h200-8", "H200"),
        ("l40s-pcie-8", "L40S"),
        ("a100-pcie-8-nvbridge", "A100-PCIE-80GB"),
    ]
)


@st.composite
def random_node(draw: st.DrawFn, name: str) -> NodeState:
    preset, product = draw(presets)
    free = draw(st.sets(st.integers(0, 7)))
    tier = draw(tiers)
    bandwidth = Bandwidth(
        network=draw(st.floats(0.2e9, 3e9)),
        local_disk=draw(st.floats(3e9, 25e9)),
        host_memory=draw(st.floats(25e9, 60e9)),
    )
    models = {LLAMA_8B: tier} if tier is not None else {}
    return replace(node(name, preset, product, free=free, models=models), bandwidth=bandwidth)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(0, 1000), min_size=1, max_size=12, unique=True).flatmap(
        lambda ids: st.tuples(*[random_node(f"n{i}") for i in ids])
    ),
    st.sampled_from([1, 2, 4, 8]),
)
def test_scores_are_ints_in_range_for_exactly_the_sent_nodes(
    nodes: tuple[NodeState, ...], gpus: int
) -> None:
    d = demand(gpus, LLAMA_8B, max_model_len="4096")
    scored = relative_scores([(n.name, evaluate(d, n)) for n in nodes])
    assert [s.node for s in scored] == [n.name for n in nodes]
    for s in scored:
        assert isinstance(s.score, int) and 0 <= s.score <= 10
    feasible = [s for s, n in zip(scored, nodes, strict=True) if evaluate(d, n).fits]
    if feasible:
        assert max(s.score for s in feasible) == 10


@settings(max_examples=150, deadline=None)
@given(
    random_node("a"),
    st.sampled_from(list(Tier)),
    st.sampled_from(list(Tier)),
    st.lists(random_node("other"), max_size=4),
)
def test_better_residency_tier_never_scores_lower(
    base: NodeState, tier_a: Tier, tier_b: Tier, others: list[NodeState]
) -> None:
    if tier_a < tier_b:
        tier_a, tier_b = tier_b, tier_a
    key = LLAMA_8B.lower()
    better = replace(base, name="better", models={key: (CachedModel(key, tier_a),)})
    worse = replace(base, name="worse", models={key: (CachedModel(key, tier_b),)})
    d = demand(1, LLAMA_8B, max_model_len="4096")
    others = [replace(o, name=f"o{i}") for i, o in enumerate(others)]
    scored = {
        s.node: s
        for s in relative_scores([(n.name, evaluate(d, n)) for n in (better, worse, *others)])
    }
    assert scored["better"].score >= scored["worse"].score
    assert scored["better"].raw >= scored["worse"].raw
