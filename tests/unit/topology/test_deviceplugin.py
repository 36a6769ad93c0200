"""The go-gpuallocator port: link mapping, exactness against a naive reading of the Go code,
reachable sets against all input orders, and the prediction's contract."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from topology.deviceplugin import (
    P2P_LINK_SCORES,
    PADDING,
    allocator_links,
    allocator_pair_scores,
    best_effort_allocate,
    predict_allocation,
    reachable_allocations,
)
from topology.model import NodeTopology
from topology.parse import parse_nvidia_smi_topo
from topology.presets import PRESETS, nvswitch_topology, pcie_tree_topology
from topology.select import score_gpu_set

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "topo"
CODES = ("PIX", "PXB", "PHB", "NODE", "SYS", "NV1", "NV2", "NV4", "NV12")


def random_topology(rng: random.Random, count: int, codes: Sequence[str] = CODES) -> NodeTopology:
    matrix = [["X"] * count for _ in range(count)]
    for a in range(count):
        for b in range(a + 1, count):
            matrix[a][b] = matrix[b][a] = rng.choice(codes)
    return NodeTopology.from_codes(matrix, [rng.randint(0, 1) for _ in range(count)])


# -- a naive reading of besteffort_policy.go, for boards of at most 4 sets -----------------


def naive_allocate(
    scores: Sequence[Sequence[int]], order: Sequence[int], size: int, required: Sequence[int] = ()
) -> tuple[int, ...]:
    """Enumerate partitions exactly as iterateGPUPartitions does (no slice aliasing below 7
    sets), keep the first best one holding a full set with all required, return its first
    best set holding the required GPUs. None stands for padding."""
    if size <= 0 or len(order) < size or len(required) > size or len(required) > len(order):
        return ()
    devices: list[int | None] = list(order)
    if size == 1:
        for gpu in order:
            if all(r == gpu for r in required):
                return (gpu,)
        return ()
    while len(devices) % size:
        devices.append(None)
    padding = devices.count(None)

    def set_score(group: Sequence[int | None]) -> int:
        return sum(
            scores[a][b]
            for a, b in itertools.combinations(group, 2)
            if a is not None and b is not None
        )

    def partitions(rest: list[int | None]) -> list[list[tuple[int | None, ...]]]:
        if len(rest) == size:
            return [[tuple(rest)]]
        out = []
        for combo in itertools.combinations(range(1, len(rest)), size - 1):
            group = (rest[0], *(rest[i] for i in combo))
            nils = group.count(None)
            if nils not in (0, padding):
                continue
            left = [gpu for gpu in rest if gpu not in group]
            out.extend([group, *tail] for tail in partitions(left))
        return out

    best: list[tuple[int | None, ...]] | None = None
    best_total = 0
    for partition in partitions(devices):
        if not any(all(r in group for r in required) and None not in group for group in partition):
            continue
        total = sum(set_score(group) for group in partition)
        if best is None or total > best_total:
            best, best_total = partition, total
    if best is None:
        return ()
    chosen = [group for group in best if all(r in group for r in required)]
    winner = max(chosen, key=set_score)  # max() keeps the first of equals
    return tuple(PADDING if gpu is None else gpu for gpu in winner)


# -- mapping ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in PRESETS if n.startswith(("hgx", "dgx"))])
def test_nvswitch_boards_show_no_nvlink_to_the_allocator(name: str) -> None:
    topo = PRESETS[name]
    links = allocator_links(topo)
    scores = allocator_pair_scores(topo)
    for a in range(topo.gpu_count):
        for b in range(topo.gpu_count):
            if a == b:
                assert links[a][b] == () and scores[a][b] == 0
                continue
            same = topo.numa_of(a) == topo.numa_of(b)
            assert links[a][b] == ((2,) if same else (1,))
            assert scores[a][b] == (20 if same else 10)


def test_bridged_a100_pcie_pairs_score_1200_plus_their_pcie_level() -> None:
    topo = PRESETS["a100-pcie-8-nvbridge"]
    scores = allocator_pair_scores(topo)
    assert allocator_links(topo)[0][1] == (2, 18)  # SameCPU + TwelveNVLINKLinks
    assert scores[0][1] == scores[6][7] == 1220
    assert scores[0][2] == 40  # PXB
    assert scores[0][4] == scores[0][7] == 10  # SYS
    parsed = parse_nvidia_smi_topo((FIXTURES / "a100-pcie-8-nvbridge.txt").read_text())
    parsed_scores = allocator_pair_scores(parsed)
    assert parsed_scores[0][1] == 1220  # NV12, same NUMA node
    assert parsed_scores[0][2] == 20 and parsed_scores[0][4] == 10  # NODE, SYS


def test_pcie_codes_map_directly_and_fixtures_of_nvswitch_boards_hide_nvlink() -> None:
    topo = NodeTopology.from_codes(
        [
            ["X", "PIX", "PXB", "PHB", "SYS"],
            ["PIX", "X", "NODE", "PXB", "SYS"],
            ["PXB", "NODE", "X", "PIX", "SYS"],
            ["PHB", "PXB", "PIX", "X", "SYS"],
            ["SYS", "SYS", "SYS", "SYS", "X"],
        ]
    )
    scores = allocator_pair_scores(topo)
    assert scores[0][1:] == (50, 40, 30, 10)
    assert scores[1][2] == 20
    for name in ("dgx-a100-8.txt", "dgx-h100-8.txt"):
        parsed = parse_nvidia_smi_topo((FIXTURES / name).read_text())
        flat = [t for row in allocator_links(parsed) for types in row for t in types]
        assert flat and max(flat) <= 2


def test_hybrid_cube_mesh_nvlinks_are_direct() -> None:
    # DGX-1 V100: 6 NVLinks per GPU as NV1/NV2 to four peers; the rest is PCIe.
    nv = {(0, 1): 1, (0, 2): 1, (0, 3): 2, (0, 4): 2, (1, 2): 2, (1, 3): 1, (1, 5): 2}
    codes = [["X" if a == b else "SYS" for b in range(6)] for a in range(6)]
    for (a, b), count in nv.items():
        codes[a][b] = codes[b][a] = f"NV{count}"
    topo = NodeTopology.from_codes(codes, [0] * 6)
    scores = allocator_pair_scores(topo)
    assert scores[0][3] == 220 and scores[0][1] == 120 and scores[2][3] == 10
    assert scores[0][1] == P2P_LINK_SCORES[2] + P2P_LINK_SCORES[7]


# -- the port -----------------------------------------------------------------------------


def test_port_matches_the_naive_reading_on_small_boards() -> None:
    rng = random.Random(20261201)
    checked = 0
    for _ in range(150):
        count = rng.randint(1, 8)
        topo = random_topology(rng, count)
        scores = allocator_pair_scores(topo)
        free = rng.sample(range(count), rng.randint(1, count))
        for size in range(len(free) + 2):
            for _ in range(3):
                rng.shuffle(free)
                wanted = rng.randint(0, min(2, count))
                required = rng.sample(range(count), wanted) if rng.random() < 0.2 else []
                expected = naive_allocate(scores, free, size, required)
                assert best_effort_allocate(topo, free, size, required) == expected, (
                    topo.codes(),
                    free,
                    size,
                    required,
                )
                checked += 1
    assert checked > 1000


def test_known_answers() -> None:
    bridge = PRESETS["a100-pcie-8-nvbridge"]
    assert best_effort_allocate(bridge, [7, 3, 2, 6], 2) == (7, 6)
    assert best_effort_allocate(bridge, [5, 0, 1, 4], 1) == (5,)
    assert best_effort_allocate(bridge, [0, 1], 3) == ()
    assert best_effort_allocate(bridge, [0, 1, 2], 2, required=[2]) == (0, 2)  # PXB, first
    assert best_effort_allocate(bridge, [0, 1, 2], 2, required=[5]) == ()
    hgx = PRESETS["hgx-h100-8"]
    assert best_effort_allocate(hgx, [4, 0, 5, 1], 2) == (4, 5)


def test_padded_set_can_win() -> None:
    # Size 3 from 5 GPUs: a triple and a padded pair. The NVLink pair outscores any triple.
    codes = [["X" if a == b else "SYS" for b in range(5)] for a in range(5)]
    codes[3][4] = codes[4][3] = "NV2"
    topo = NodeTopology.from_codes(codes, [0] * 5)
    assert best_effort_allocate(topo, [0, 1, 2, 3, 4], 3) == (3, 4, PADDING)
    assert (PADDING, 3, 4) in reachable_allocations(topo, frozenset(range(5)), 3)
    prediction = predict_allocation(topo, frozenset(range(5)), 3)
    assert prediction is not None and len(prediction.gpus) == 3


def test_bad_input_is_refused() -> None:
    topo = PRESETS["l40s-pcie-8"]
    with pytest.raises(ValueError):
        best_effort_allocate(topo, [0, 0, 1], 2)
    with pytest.raises(ValueError):
        best_effort_allocate(topo, [0, 9], 1)
    with pytest.raises(ValueError):
        reachable_allocations(topo, frozenset({0, 1}), 0)
    with pytest.raises(ValueError):
        predict_allocation(topo, frozenset({0, 1}), 0)


def test_sixteen_gpus_stay_fast() -> None:
    for topo in (pcie_tree_topology(16, 12), nvswitch_topology(16, 18)):
        for size in (2, 4, 8):
            result = best_effort_allocate(topo, list(range(15, -1, -1)), size)
            assert len(result) == size and PADDING not in result


# -- reachable sets -----------------------------------------------------------------------


def brute_reachable(topo: NodeTopology, free: frozenset[int], size: int) -> set[tuple[int, ...]]:
    return {
        tuple(sorted(best_effort_allocate(topo, order, size)))
        for order in itertools.permutations(sorted(free))
    }


@pytest.mark.parametrize("seed", range(4))
def test_reachable_equals_all_input_orders(seed: int) -> None:
    rng = random.Random(seed)
    codes = CODES if seed % 2 else ("SYS", "SYS", "NODE", "PIX", "NV4")  # padded wins too
    for _ in range(40):
        count = rng.randint(2, 7)
        topo = random_topology(rng, count, codes)
        free = frozenset(rng.sample(range(count), rng.randint(1, count)))
        for size in range(1, len(free) + 1):
            assert reachable_allocations(topo, free, size) == brute_reachable(topo, free, size)


def test_reachable_on_presets() -> None:
    for name in ("a100-pcie-4-nvbridge", "hgx-h100-4", "l40s-pcie-4"):
        topo = PRESETS[name]
        for size in (1, 2, 3):
            free = frozenset(range(4))
            assert reachable_allocations(topo, free, size) == brute_reachable(topo, free, size)


# -- prediction ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a100-pcie-8-nvbridge", "hgx-h100-8", "l40s-pcie-8"])
def test_prediction_is_reachable_and_of_the_best_reachable_tier(name: str) -> None:
    topo = PRESETS[name]
    rng = random.Random(name)
    for _ in range(60):
        free = frozenset(rng.sample(range(8), rng.randint(1, 8)))
        size = rng.randint(1, len(free))
        prediction = predict_allocation(topo, free, size)
        assert prediction is not None
        reachable = {s for s in reachable_allocations(topo, free, size) if PADDING not in s}
        assert prediction.gpus in reachable
        best_tier = max(score_gpu_set(topo, s).tier for s in reachable)
        assert prediction.tier == best_tier
        ascending = best_effort_allocate(topo, sorted(free), size)
        if score_gpu_set(topo, ascending).tier == best_tier:
            assert prediction.gpus == tuple(sorted(ascending))
    assert predict_allocation(topo, frozenset({1}), 2) is None


def test_prediction_avoids_the_plugins_bad_draws_on_bridged_pairs() -> None:
    # Free: one intact bridge pair (6, 7) and GPUs 0, 2 whose partners are taken.
    topo = PRESETS["a100-pcie-8-nvbridge"]
    prediction = predict_allocation(topo, frozenset({0, 2, 6, 7}), 2)
    assert prediction is not None and prediction.gpus == (6, 7)


def test_prediction_on_sixteen_gpus_is_bounded_and_keeps_the_tier() -> None:
    topo = pcie_tree_topology(16, 12)
    rng = random.Random(16)
    for _ in range(20):
        free = frozenset(rng.sample(range(16), rng.randint(9, 16)))
        size = rng.choice([2, 4, 6, 8])
        prediction = predict_allocation(topo, free, size)
        assert prediction is not None and len(prediction.gpus) == size
        assert set(prediction.gpus) <= free


@settings(max_examples=150, deadline=None)
@given(
    count=st.integers(1, 8),
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(1, 8),
    data=st.data(),
)
def test_properties(count: int, seed: int, size: int, data: st.DataObject) -> None:
    rng = random.Random(seed)
    topo = random_topology(rng, count)
    available = data.draw(st.permutations(range(count)))
    available = available[: data.draw(st.integers(0, count))]
    required = (
        data.draw(st.lists(st.sampled_from(available), max_size=2, unique=True))
        if (available)
        else []
    )
    result = best_effort_allocate(topo, available, size, required)
    if len(available) < size or len(required) > size:
        assert result == ()
        return
    assert len(result) == size
    real = [gpu for gpu in result if gpu != PADDING]
    assert set(real) <= set(available) and len(set(real)) == len(real)
    assert set(required) <= set(real)
    assert [available.index(gpu) for gpu in real] == sorted(available.index(gpu) for gpu in real)
    if not required:
        assert tuple(sorted(result)) in reachable_allocations(topo, frozenset(available), size)
