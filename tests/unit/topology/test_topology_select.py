"""GPU-set scoring and choice: board scenarios, exactness against brute force, speed."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from topology.model import GpuInfo, NodeTopology
from topology.parse import parse_nvidia_smi_topo
from topology.presets import PRESETS, nvswitch_topology, pcie_tree_topology
from topology.select import (
    GpuSetScore,
    SetTier,
    best_gpu_set,
    fragmentation,
    max_set_size_at_tier,
    score_gpu_set,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "topo"
BRIDGE = PRESETS["a100-pcie-8-nvbridge"]
HGX = PRESETS["hgx-h100-8"]
L40S = PRESETS["l40s-pcie-8"]
NO_PAIR = 1 << 40


def key(score: GpuSetScore) -> tuple[int, int, int, int]:
    weakest = score.weakest.rank if score.weakest is not None else NO_PAIR
    return (score.tier, weakest, score.total_nvlinks, -score.numa_nodes)


def chosen(topo: NodeTopology, free: list[int] | range, k: int) -> tuple[int, ...]:
    result = best_gpu_set(topo, free, k)
    assert result is not None
    return result.gpus


# -- scoring ------------------------------------------------------------------------------


def test_score_tiers_on_the_bridge_box() -> None:
    pair = score_gpu_set(BRIDGE, [1, 0])
    assert pair.gpus == (0, 1)
    assert pair.tier is SetTier.NVLINK_COMPLETE
    assert pair.weakest is not None and pair.weakest.code == "NV12"
    assert pair.description == "GPUs 0,1: NVLink-complete (NV12), 1 NUMA node"
    quad = score_gpu_set(BRIDGE, [0, 1, 2, 3])
    assert quad.tier is SetTier.PCIE_SWITCH  # two NVLink islands joined over PCIe
    assert quad.weakest is not None and quad.weakest.code == "PXB"
    assert quad.total_nvlinks == 24
    cross = score_gpu_set(BRIDGE, [0, 4])
    assert cross.tier is SetTier.CROSS_NUMA
    assert cross.numa_nodes == 2
    assert "cross-NUMA (SYS), 2 NUMA nodes" in cross.description


def test_single_and_empty_sets() -> None:
    one = score_gpu_set(L40S, [5])
    assert one.tier is SetTier.NVLINK_COMPLETE
    assert one.weakest is None
    assert one.description == "GPU 5: single GPU, 1 NUMA node"
    none = score_gpu_set(L40S, [])
    assert none.weakest is None and none.description == "no GPUs"


def test_same_numa_tier_from_links_or_numa_nodes() -> None:
    fixture = parse_nvidia_smi_topo((FIXTURES / "a100-pcie-8-nvbridge.txt").read_text())
    assert score_gpu_set(fixture, [0, 2]).tier is SetTier.SAME_NUMA  # NODE
    sys_same_numa = NodeTopology.from_codes([["X", "SYS"], ["SYS", "X"]], numa_nodes=[1, 1])
    assert score_gpu_set(sys_same_numa, [0, 1]).tier is SetTier.SAME_NUMA
    sys_unknown = NodeTopology.from_codes([["X", "SYS"], ["SYS", "X"]])
    score = score_gpu_set(sys_unknown, [0, 1])
    assert score.tier is SetTier.CROSS_NUMA
    assert "NUMA node unknown" in score.description


def test_partial_nvlink_when_nvlink_connects_the_set() -> None:
    # A chain 0-1-2-3 of NVLinks (hybrid cube-mesh style): connected, not complete.
    codes = [
        ["X", "NV2", "SYS", "SYS"],
        ["NV2", "X", "NV2", "SYS"],
        ["SYS", "NV2", "X", "NV2"],
        ["SYS", "SYS", "NV2", "X"],
    ]
    topo = NodeTopology.from_codes(codes, numa_nodes=[0, 0, 1, 1])
    chain = score_gpu_set(topo, [0, 1, 2, 3])
    assert chain.tier is SetTier.NVLINK_PARTIAL
    assert "3 of 6 pairs NVLink" in chain.description
    assert score_gpu_set(topo, [0, 1, 3]).tier is SetTier.CROSS_NUMA
    assert max_set_size_at_tier(topo, range(4), SetTier.NVLINK_PARTIAL) == 4
    assert max_set_size_at_tier(topo, range(4), SetTier.NVLINK_COMPLETE) == 2
    assert chosen(topo, range(4), 4) == (0, 1, 2, 3)


def test_score_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="out of range"):
        score_gpu_set(L40S, [8])
    with pytest.raises(ValueError, match="twice"):
        score_gpu_set(L40S, [1, 1])
    with pytest.raises(ValueError, match="not an integer"):
        score_gpu_set(L40S, ["1"])  # type: ignore[list-item]


# -- choice on real boards ----------------------------------------------------------------


def test_bridge_box_k2_takes_an_nvlink_pair() -> None:
    result = best_gpu_set(BRIDGE, range(8), 2)
    assert result is not None
    assert result.gpus == (0, 1)
    assert result.tier is SetTier.NVLINK_COMPLETE


def test_bridge_box_with_gpu1_busy_keeps_pairs_intact() -> None:
    free = [0, 2, 3, 4, 5, 6, 7]
    pair = chosen(BRIDGE, free, 2)
    assert pair in {(2, 3), (4, 5), (6, 7)}
    # Taking the pair in GPU 0's quad keeps the other quad (4-7) whole for a 4-GPU pod.
    assert pair == (2, 3)
    # One GPU: take the one whose partner is busy rather than break a pair.
    assert chosen(BRIDGE, free, 1) == (0,)
    assert fragmentation(BRIDGE, [2, 3, 4, 5, 6, 7]) == 0.0
    assert fragmentation(BRIDGE, [0, 3, 4, 5, 6, 7]) > 0.0


def test_bridge_box_k4_takes_two_pairs_in_one_numa_half() -> None:
    assert chosen(BRIDGE, range(8), 4) == (0, 1, 2, 3)
    assert chosen(BRIDGE, [0, 2, 3, 4, 5, 6, 7], 4) == (4, 5, 6, 7)
    result = best_gpu_set(BRIDGE, range(8), 4)
    assert result is not None and result.numa_nodes == 1


def test_bridge_fixture_prefers_pxb_pairs_over_node_pairs() -> None:
    fixture = parse_nvidia_smi_topo((FIXTURES / "a100-pcie-8-nvbridge.txt").read_text())
    assert chosen(fixture, range(8), 4) == (4, 5, 6, 7)


def test_l40s_k2_takes_a_pix_pair_and_k4_stays_in_one_numa_node() -> None:
    pair = best_gpu_set(L40S, range(8), 2)
    assert pair is not None
    assert pair.weakest is not None and pair.weakest.code == "PIX"
    assert pair.gpus == (0, 1)
    quad = best_gpu_set(L40S, range(8), 4)
    assert quad is not None and quad.numa_nodes == 1
    assert quad.gpus == (0, 1, 2, 3)
    assert chosen(L40S, [0, 1, 2, 4, 5, 6, 7], 4) == (4, 5, 6, 7)


def test_l40s_fixture_protects_the_pxb_quad() -> None:
    fixture = parse_nvidia_smi_topo((FIXTURES / "l40s-pcie-8.txt").read_text())
    pair = best_gpu_set(fixture, range(8), 2)
    assert pair is not None and pair.weakest is not None and pair.weakest.code == "PIX"
    # Either PIX pair is as good; the one in the NODE-joined half leaves the PXB quad whole.
    assert pair.gpus == (4, 5)
    assert chosen(fixture, range(8), 4) == (0, 1, 2, 3)


def test_hgx_k4_takes_one_numa_half_and_k8_everything() -> None:
    assert chosen(HGX, range(8), 4) == (0, 1, 2, 3)
    assert chosen(HGX, [0, 1, 2, 4, 5, 6, 7], 4) == (4, 5, 6, 7)
    assert chosen(HGX, range(8), 8) == tuple(range(8))
    # Two GPUs come out of the already broken half.
    assert chosen(HGX, [0, 1, 2, 4, 5, 6, 7], 2) == (0, 1)
    assert chosen(HGX, [1, 2, 3, 4, 5, 6, 7], 1) == (1,)


def test_best_gpu_set_edge_cases() -> None:
    assert best_gpu_set(HGX, [0, 1], 3) is None
    assert best_gpu_set(HGX, [], 1) is None
    with pytest.raises(ValueError, match="positive"):
        best_gpu_set(HGX, range(8), 0)
    with pytest.raises(ValueError, match="out of range"):
        best_gpu_set(HGX, [0, 9], 1)


def test_results_are_shared_between_nodes_with_equal_layouts() -> None:
    named = NodeTopology(
        tuple(
            GpuInfo(i, numa_node=gpu.numa_node, uuid=f"GPU-{i}") for i, gpu in enumerate(HGX.gpus)
        ),
        HGX.links,
    )
    first = best_gpu_set(HGX, frozenset(range(8)), 4)
    assert best_gpu_set(named, range(8), 4) is first
    assert best_gpu_set(HGX, [3, 2, 1, 0, 4, 5, 6, 7], 4) is first


@pytest.mark.parametrize(
    "topo",
    [
        nvswitch_topology(16, 18),
        pcie_tree_topology(16),
        pcie_tree_topology(16, 12),
    ],
    ids=["nvswitch-16", "pcie-16", "bridge-16"],
)
def test_sixteen_gpu_exact_search_is_fast(topo: NodeTopology) -> None:
    started = time.perf_counter()
    result = best_gpu_set(topo, range(16), 8)
    free = [0, 1, 2, 3, 5, 7, 8, 9, 10, 11, 13, 14, 15]
    for k in range(1, 14):
        assert best_gpu_set(topo, free, k) is not None
    elapsed = time.perf_counter() - started
    assert result is not None and result.gpus == tuple(range(8))
    # Measured at about 1-40 ms on one core; generous bound for a loaded CI machine.
    assert elapsed < 2.0


def test_sixteen_gpu_asymmetric_search_is_fast() -> None:
    import random

    rng = random.Random(7)
    codes = [["X"] * 16 for _ in range(16)]
    for a in range(16):
        for b in range(a + 1, 16):
            codes[a][b] = codes[b][a] = rng.choice(["NV4", "NV12", "PIX", "PXB", "NODE", "SYS"])
    topo = NodeTopology.from_codes(codes, numa_nodes=[i // 8 for i in range(16)])
    started = time.perf_counter()
    result = best_gpu_set(topo, range(16), 8)
    assert time.perf_counter() - started < 3.0
    assert result is not None and len(result.gpus) == 8


# -- fragmentation ------------------------------------------------------------------------


def test_fragmentation_is_zero_when_intact_and_grows_when_scattered() -> None:
    assert fragmentation(BRIDGE, []) == 0.0
    assert fragmentation(BRIDGE, [3]) == 0.0
    assert fragmentation(BRIDGE, range(8)) == 0.0
    assert fragmentation(BRIDGE, [0, 1, 2, 3]) == 0.0
    one_pair_each_half = fragmentation(BRIDGE, [0, 1, 4, 5])
    no_pairs = fragmentation(BRIDGE, [0, 2, 4, 6])
    assert 0.0 < one_pair_each_half < no_pairs <= 1.0
    assert fragmentation(HGX, [0, 1, 2, 3]) == 0.0
    assert fragmentation(HGX, [2, 3, 4, 5]) > 0.0


def test_max_set_size_at_tier() -> None:
    assert max_set_size_at_tier(BRIDGE, range(8), SetTier.NVLINK_COMPLETE) == 2
    assert max_set_size_at_tier(BRIDGE, range(8), SetTier.PCIE_SWITCH) == 4
    assert max_set_size_at_tier(BRIDGE, range(8), SetTier.CROSS_NUMA) == 8
    assert max_set_size_at_tier(BRIDGE, [0, 2, 4, 6], SetTier.NVLINK_COMPLETE) == 1
    assert max_set_size_at_tier(BRIDGE, [], SetTier.CROSS_NUMA) == 0
    assert max_set_size_at_tier(HGX, range(8), SetTier.NVLINK_COMPLETE) == 8


# -- properties ---------------------------------------------------------------------------

LINK_CODES = ["NV2", "NV4", "NV12", "PIX", "PXB", "PHB", "NODE", "SYS"]


@st.composite
def random_topologies(draw: st.DrawFn) -> NodeTopology:
    count = draw(st.integers(min_value=1, max_value=7))
    codes = [["X"] * count for _ in range(count)]
    for a in range(count):
        for b in range(a + 1, count):
            codes[a][b] = codes[b][a] = draw(st.sampled_from(LINK_CODES))
    numa = draw(st.lists(st.sampled_from([None, 0, 1]), min_size=count, max_size=count))
    return NodeTopology.from_codes(codes, numa_nodes=numa)


@st.composite
def board_topologies(draw: st.DrawFn) -> NodeTopology:
    """Symmetric boards, where the search works on classes of interchangeable GPUs."""
    count = draw(st.integers(min_value=1, max_value=10))
    kind = draw(st.sampled_from(["nvswitch", "pcie", "bridge"]))
    if kind == "nvswitch":
        return nvswitch_topology(count, 18)
    return pcie_tree_topology(count, 12 if kind == "bridge" else 0)


def _check_against_brute_force(topo: NodeTopology, free: list[int], k: int) -> None:
    result = best_gpu_set(topo, free, k)
    if len(free) < k:
        assert result is None
        return
    assert result is not None
    assert len(result.gpus) == k and set(result.gpus) <= set(free)
    assert result == score_gpu_set(topo, result.gpus)
    scores = [score_gpu_set(topo, subset) for subset in itertools.combinations(free, k)]
    best_key = max(key(score) for score in scores)
    # No other k-subset of the free GPUs scores strictly better.
    assert key(result) == best_key
    # Among equals: least fragmentation left, then lowest indices.
    ties = [score.gpus for score in scores if key(score) == best_key]
    expected = min(
        ties,
        key=lambda gpus: (
            round(fragmentation(topo, [g for g in free if g not in gpus]), 12),
            gpus,
        ),
    )
    assert result.gpus == expected


@settings(max_examples=150, deadline=None)
@given(random_topologies(), st.data())
def test_best_gpu_set_matches_brute_force_on_random_topologies(
    topo: NodeTopology, data: st.DataObject
) -> None:
    free = data.draw(st.lists(st.sampled_from(range(topo.gpu_count)), unique=True).map(sorted))
    k = data.draw(st.integers(min_value=1, max_value=topo.gpu_count))
    _check_against_brute_force(topo, free, k)


@settings(max_examples=100, deadline=None)
@given(board_topologies(), st.data())
def test_best_gpu_set_matches_brute_force_on_boards(
    topo: NodeTopology, data: st.DataObject
) -> None:
    free = data.draw(st.lists(st.sampled_from(range(topo.gpu_count)), unique=True).map(sorted))
    k = data.draw(st.integers(min_value=1, max_value=max(1, len(free))))
    _check_against_brute_force(topo, free, k)


@settings(max_examples=100, deadline=None)
@given(random_topologies(), st.data())
def test_quality_is_monotone_in_the_set_order(topo: NodeTopology, data: st.DataObject) -> None:
    gpus = st.lists(st.sampled_from(range(topo.gpu_count)), unique=True)
    first = score_gpu_set(topo, data.draw(gpus))
    second = score_gpu_set(topo, data.draw(gpus))
    for score in (first, second):
        assert 0.0 <= score.quality <= 1.0
        assert score.tier / 5 <= score.quality < (score.tier + 1) / 5
    if key(first) < key(second):
        assert first.quality < second.quality
    elif key(first) == key(second):
        assert first.quality == second.quality
    if first.tier < second.tier:
        assert first.quality < second.quality


@settings(max_examples=100, deadline=None)
@given(random_topologies(), st.data())
def test_fragmentation_is_in_range(topo: NodeTopology, data: st.DataObject) -> None:
    free = data.draw(st.lists(st.sampled_from(range(topo.gpu_count)), unique=True))
    value = fragmentation(topo, free)
    assert 0.0 <= value <= 1.0
    assert fragmentation(topo, range(topo.gpu_count)) == 0.0
