"""Score a set of GPUs on one node and choose the best k-set among the free ones.

Ordering of sets (best first), the contract the placement core relies on:

1. **tier** (:class:`SetTier`), from the pairs inside the set:

   * ``NVLINK_COMPLETE``: every pair is NVLink (a set of one GPU too: nothing to exchange).
   * ``NVLINK_PARTIAL``: not every pair, but the NVLink pairs connect the whole set, so any
     GPU reaches any other over NVLink, possibly through a peer (e.g. a hybrid cube-mesh). A
     set whose NVLink islands are joined only over PCIe (two bridged pairs) is not partial: it
     is judged by its PCIe pairs below.
   * ``PCIE_SWITCH``: every pair is NVLink, ``PIX`` or ``PXB`` (below one PCIe switch tree,
     never through the CPU).
   * ``SAME_NUMA``: every pair is at least ``PHB``/``NODE`` or joins GPUs with the same known
     NUMA node.
   * ``CROSS_NUMA``: anything else.

2. **weakest link** (``Link.rank`` of the worst pair): a ring all-reduce runs at its pace.
3. **total NVLinks** over all pairs (more bandwidth for the same weakest link).
4. **fewer NUMA nodes** (host memory and NIC locality; what tells GPUs apart on NVSwitch).

:func:`best_gpu_set` breaks remaining ties by :func:`fragmentation` of the free GPUs that the
choice leaves (less is better), then by the lowest GPU indices.

Everything is memoised on the topology's :attr:`~NodeTopology.layout` (links and NUMA nodes
only) and a bit mask of GPUs, so nodes built alike share results whatever their GPU UUIDs.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from topology.model import Link, LinkKind, NodeTopology

__all__ = [
    "GpuSetScore",
    "SetTier",
    "best_gpu_set",
    "fragmentation",
    "max_set_size_at_tier",
    "score_gpu_set",
]


class SetTier(enum.IntEnum):
    """How well a GPU set is connected; higher is better. See the module docstring."""

    CROSS_NUMA = 0
    SAME_NUMA = 1
    PCIE_SWITCH = 2
    NVLINK_PARTIAL = 3
    NVLINK_COMPLETE = 4


_TIER_TEXT = {
    SetTier.NVLINK_COMPLETE: "NVLink-complete",
    SetTier.NVLINK_PARTIAL: "NVLink-partial",
    SetTier.PCIE_SWITCH: "same PCIe switch",
    SetTier.SAME_NUMA: "same NUMA node",
    SetTier.CROSS_NUMA: "cross-NUMA",
}


@dataclass(frozen=True)
class GpuSetScore:
    """The score of one GPU set. ``weakest`` is None for sets of fewer than two GPUs.

    ``quality`` in [0, 1] is strictly increasing in the order (tier, weakest link rank,
    total NVLinks, fewer NUMA nodes), and ``tier / 5 <= quality < (tier + 1) / 5``, so a
    higher tier always scores higher. (Strictness holds up to 64 NVLinks per pair, 2^20
    NVLinks per set and 63 NUMA nodes, far beyond any board.)
    """

    gpus: tuple[int, ...]
    tier: SetTier
    weakest: Link | None
    numa_nodes: int
    quality: float
    description: str
    total_nvlinks: int = 0


# -- quality encoding ---------------------------------------------------------------------
# A mixed-radix number over the ordered criteria, scaled into [0, 1).
_NVLINK_COUNT_CAP = 64
_RANK_ORDINAL_TOP = 10 + _NVLINK_COUNT_CAP + 1  # ordinal of "no pair" (sets of 0 or 1 GPU)
_RANK_RADIX = _RANK_ORDINAL_TOP + 1
_NVLINK_TOTAL_RADIX = 1 << 20
_NUMA_RADIX = 64
_QUALITY_SCALE = len(SetTier) * _RANK_RADIX * _NVLINK_TOTAL_RADIX * _NUMA_RADIX

# Sentinel rank for "no pair yet": above every real link, so min() over pairs works.
_NO_PAIR_RANK = 1 << 30


def _rank_ordinal(rank: int) -> int:
    if rank >= _NO_PAIR_RANK:
        return _RANK_ORDINAL_TOP
    return min(rank, _RANK_ORDINAL_TOP - 1)


def _quality(tier: int, weakest_rank: int, total_nvlinks: int, numa_nodes: int) -> float:
    value = tier
    value = value * _RANK_RADIX + _rank_ordinal(weakest_rank)
    value = value * _NVLINK_TOTAL_RADIX + min(total_nvlinks, _NVLINK_TOTAL_RADIX - 1)
    value = value * _NUMA_RADIX + (_NUMA_RADIX - 1 - min(numa_nodes, _NUMA_RADIX - 1))
    return value / _QUALITY_SCALE


# -- per-layout analysis ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Level:
    """GPU pairs at one grade or better, for the fragmentation measure."""

    adjacency: tuple[int, ...]  # bit mask of qualifying partners, per GPU
    capacities: tuple[int, ...]  # group sizes when every GPU is free, largest first


@dataclass(frozen=True, slots=True)
class _Analysis:
    """Everything the search needs about one layout, precomputed once."""

    count: int
    rank: tuple[tuple[int, ...], ...]
    nvlinks: tuple[tuple[int, ...], ...]
    pair_tier: tuple[tuple[int, ...], ...]
    links: tuple[tuple[Link, ...], ...]
    nvlink_adjacency: tuple[int, ...]
    numa: tuple[int | None, ...]
    # Interchangeable GPUs: same NUMA node and the same link to every other GPU. Swapping two
    # of them maps the topology onto itself, so the search only decides how many to take.
    classes: tuple[tuple[int, ...], ...]
    levels: tuple[_Level, ...]


_PXB_RANK = Link(LinkKind.PXB).rank
_NODE_RANK = Link(LinkKind.NODE).rank


def _pair_tier(link: Link, numa_a: int | None, numa_b: int | None) -> int:
    if link.is_nvlink:
        return SetTier.NVLINK_COMPLETE
    if link.rank >= _PXB_RANK:
        return SetTier.PCIE_SWITCH
    if link.rank >= _NODE_RANK or (numa_a is not None and numa_a == numa_b):
        return SetTier.SAME_NUMA
    return SetTier.CROSS_NUMA


@functools.lru_cache(maxsize=256)
def _analyse(layout: NodeTopology) -> _Analysis:
    count = layout.gpu_count
    links = layout.links
    numa = tuple(gpu.numa_node for gpu in layout.gpus)
    rank = tuple(tuple(link.rank for link in row) for row in links)
    nvlinks = tuple(tuple(link.nvlinks for link in row) for row in links)
    pair_tier = tuple(
        tuple(_pair_tier(links[a][b], numa[a], numa[b]) for b in range(count)) for a in range(count)
    )
    nvlink_adjacency = tuple(
        sum(1 << b for b in range(count) if links[a][b].is_nvlink) for a in range(count)
    )
    return _Analysis(
        count=count,
        rank=rank,
        nvlinks=nvlinks,
        pair_tier=pair_tier,
        links=links,
        nvlink_adjacency=nvlink_adjacency,
        numa=numa,
        classes=_twin_classes(links, numa),
        levels=_levels(rank, numa),
    )


def _twin_classes(
    links: tuple[tuple[Link, ...], ...], numa: tuple[int | None, ...]
) -> tuple[tuple[int, ...], ...]:
    count = len(links)
    members: list[list[int]] = []
    for gpu in range(count):
        for group in members:
            representative = group[0]
            if numa[gpu] == numa[representative] and all(
                links[gpu][other] == links[representative][other]
                for other in range(count)
                if other not in (gpu, representative)
            ):
                # "Same links to everyone else" is an equivalence relation (and forces one
                # link kind inside the class), so comparing with one member is enough.
                group.append(gpu)
                break
        else:
            members.append([gpu])
    return tuple(tuple(group) for group in members)


def _levels(rank: tuple[tuple[int, ...], ...], numa: tuple[int | None, ...]) -> tuple[_Level, ...]:
    """One level per pair grade (link rank, then same NUMA node) except the lowest one.

    The lowest grade joins every pair, so it can never show fragmentation.
    """
    count = len(rank)

    def grade(a: int, b: int) -> tuple[int, int]:
        same_numa = numa[a] is not None and numa[a] == numa[b]
        return (rank[a][b], int(same_numa))

    grades = sorted(
        {grade(a, b) for a in range(count) for b in range(count) if a != b}, reverse=True
    )
    levels: list[_Level] = []
    everyone = (1 << count) - 1
    for threshold in grades[:-1]:
        adjacency = tuple(
            sum(1 << b for b in range(count) if b != a and grade(a, b) >= threshold)
            for a in range(count)
        )
        capacities = tuple(sorted(_clique_cover_sizes(adjacency, everyone), reverse=True))
        levels.append(_Level(adjacency, capacities))
    return tuple(levels)


# -- bit-mask graph helpers ---------------------------------------------------------------


def _bits(mask: int) -> Iterator[int]:
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


def _max_clique(adjacency: tuple[int, ...], candidates: int) -> int:
    """A largest clique (as a mask) among ``candidates``; the lowest-index one among equals."""
    best = 0
    best_size = 0

    def expand(clique: int, size: int, pool: int) -> None:
        nonlocal best, best_size
        if pool == 0:
            if size > best_size:
                best, best_size = clique, size
            return
        while pool:
            if size + pool.bit_count() <= best_size:
                return
            low = pool & -pool
            vertex = low.bit_length() - 1
            expand(clique | low, size + 1, pool & adjacency[vertex])
            pool ^= low

    expand(0, 0, candidates)
    return best


def _clique_cover_sizes(adjacency: tuple[int, ...], mask: int) -> list[int]:
    """Sizes of a greedy clique cover: take a largest clique, repeat on what is left.

    Exact for the hierarchical boards (where groups are disjoint cliques); a fair proxy
    elsewhere.
    """
    sizes: list[int] = []
    while mask:
        clique = _max_clique(adjacency, mask)
        sizes.append(clique.bit_count())
        mask &= ~clique
    return sizes


def _components(adjacency: tuple[int, ...], mask: int) -> list[int]:
    parts: list[int] = []
    while mask:
        reached = mask & -mask
        frontier = reached
        while frontier:
            grown = 0
            for vertex in _bits(frontier):
                grown |= adjacency[vertex]
            frontier = grown & mask & ~reached
            reached |= frontier
        parts.append(reached)
        mask &= ~reached
    return parts


def _nvlink_connected(analysis: _Analysis, mask: int) -> bool:
    return len(_components(analysis.nvlink_adjacency, mask)) <= 1


# -- scoring ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Stats:
    tier: int
    weakest_rank: int
    total_nvlinks: int
    numa_nodes: int

    @property
    def key(self) -> tuple[int, int, int, int]:
        return (self.tier, self.weakest_rank, self.total_nvlinks, -self.numa_nodes)


def _stats(analysis: _Analysis, gpus: tuple[int, ...]) -> _Stats:
    weakest = _NO_PAIR_RANK
    lowest_tier = int(SetTier.NVLINK_COMPLETE)
    total_nvlinks = 0
    for position, a in enumerate(gpus):
        rank_row, tier_row, nvlink_row = (
            analysis.rank[a],
            analysis.pair_tier[a],
            analysis.nvlinks[a],
        )
        for b in gpus[position + 1 :]:
            weakest = min(weakest, rank_row[b])
            lowest_tier = min(lowest_tier, tier_row[b])
            total_nvlinks += nvlink_row[b]
    tier = lowest_tier
    if tier != SetTier.NVLINK_COMPLETE:
        mask = sum(1 << gpu for gpu in gpus)
        if _nvlink_connected(analysis, mask):
            tier = SetTier.NVLINK_PARTIAL
    numa_nodes = len({analysis.numa[gpu] for gpu in gpus} - {None})
    return _Stats(tier, weakest, total_nvlinks, numa_nodes)


def _score(analysis: _Analysis, gpus: tuple[int, ...], stats: _Stats) -> GpuSetScore:
    weakest: Link | None = None
    strongest: Link | None = None
    nvlink_pairs = 0
    for position, a in enumerate(gpus):
        for b in gpus[position + 1 :]:
            link = analysis.links[a][b]
            if weakest is None or link.rank < weakest.rank:
                weakest = link
            if strongest is None or link.rank > strongest.rank:
                strongest = link
            nvlink_pairs += link.is_nvlink
    tier = SetTier(stats.tier)
    return GpuSetScore(
        gpus=gpus,
        tier=tier,
        weakest=weakest,
        numa_nodes=stats.numa_nodes,
        quality=_quality(stats.tier, stats.weakest_rank, stats.total_nvlinks, stats.numa_nodes),
        description=_describe(gpus, tier, weakest, strongest, nvlink_pairs, stats.numa_nodes),
        total_nvlinks=stats.total_nvlinks,
    )


def _describe(
    gpus: tuple[int, ...],
    tier: SetTier,
    weakest: Link | None,
    strongest: Link | None,
    nvlink_pairs: int,
    numa_nodes: int,
) -> str:
    if not gpus:
        return "no GPUs"
    who = f"GPU {gpus[0]}" if len(gpus) == 1 else "GPUs " + ",".join(map(str, gpus))
    if numa_nodes == 0:
        numa_text = "NUMA node unknown"
    else:
        numa_text = f"{numa_nodes} NUMA node" + ("s" if numa_nodes > 1 else "")
    if weakest is None:
        return f"{who}: single GPU, {numa_text}"
    if tier is SetTier.NVLINK_PARTIAL:
        pairs = len(gpus) * (len(gpus) - 1) // 2
        detail = f"{nvlink_pairs} of {pairs} pairs NVLink, weakest {weakest.code}"
    elif weakest == strongest:
        detail = weakest.code
    else:
        detail = f"weakest {weakest.code}"
    return f"{who}: {_TIER_TEXT[tier]} ({detail}), {numa_text}"


# -- input checks -------------------------------------------------------------------------


def _mask_of(topo: NodeTopology, gpus: Iterable[int], what: str) -> tuple[int, int]:
    """(bit mask, number of entries) of GPU indices; ValueError on bad ones."""
    mask = 0
    entries = 0
    for gpu in gpus:
        if isinstance(gpu, bool) or not isinstance(gpu, int):
            raise ValueError(f"{what}: GPU index {gpu!r} is not an integer")
        if not 0 <= gpu < topo.gpu_count:
            raise ValueError(f"{what}: GPU {gpu} out of range for {topo.gpu_count} GPUs")
        mask |= 1 << gpu
        entries += 1
    return mask, entries


def _indices(mask: int) -> tuple[int, ...]:
    return tuple(_bits(mask))


# -- public API ---------------------------------------------------------------------------


def score_gpu_set(topo: NodeTopology, gpus: Iterable[int]) -> GpuSetScore:
    """Score a given set of GPUs (duplicates are an error; order does not matter)."""
    mask, entries = _mask_of(topo, gpus, "score_gpu_set")
    if mask.bit_count() != entries:
        raise ValueError("score_gpu_set: the same GPU is listed twice")
    return _score_cached(topo.layout, mask)


@functools.lru_cache(maxsize=65536)
def _score_cached(layout: NodeTopology, mask: int) -> GpuSetScore:
    analysis = _analyse(layout)
    gpus = _indices(mask)
    return _score(analysis, gpus, _stats(analysis, gpus))


def best_gpu_set(topo: NodeTopology, free: Iterable[int], k: int) -> GpuSetScore | None:
    """The best set of ``k`` GPUs among ``free``, or None if fewer than ``k`` are free.

    Exact (every k-subset is considered, up to symmetry) with branch and bound; see the module
    docstring for the order and the tie-breaks. Memoised on ``(topo, frozenset(free), k)``;
    passing a frozenset saves building one per call.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"best_gpu_set: k must be a positive integer, got {k!r}")
    free_set = free if isinstance(free, frozenset) else frozenset(free)
    return _best_front(topo, free_set, k)


@functools.lru_cache(maxsize=65536)
def _best_front(topo: NodeTopology, free: frozenset[int], k: int) -> GpuSetScore | None:
    # The front memo answers repeat calls for one node with one hash lookup; the layout memo
    # behind it shares the search between nodes that differ only in GPU UUIDs or products.
    mask, _ = _mask_of(topo, free, "best_gpu_set")
    if mask.bit_count() < k:
        return None
    return _best_cached(topo.layout, mask, k)


def fragmentation(topo: NodeTopology, free: Iterable[int]) -> float:
    """How scattered the free GPUs are, in [0, 1]: 0 is as intact as their number allows.

    For each grade of GPU pair on the node (a link rank, and within it same NUMA node or
    not), the free GPUs are split greedily into largest groups whose pairs are all at that
    grade or better. The sum of squared group sizes (the expected group size seen by a random
    free GPU, times their number) is compared with the best possible for that many free GPUs,
    i.e. filling the node's own groups largest first. Fragmentation is one minus the mean of
    these ratios over the grades. It is 0 with no, one or all GPUs free, and whenever the free
    GPUs are packed into as few and as whole groups as possible (an intact NVLink pair, PCIe
    quad or NUMA half); it grows as they scatter across groups.
    """
    free_set = free if isinstance(free, frozenset) else frozenset(free)
    return _fragmentation_front(topo, free_set)


@functools.lru_cache(maxsize=65536)
def _fragmentation_front(topo: NodeTopology, free: frozenset[int]) -> float:
    mask, _ = _mask_of(topo, free, "fragmentation")
    return _fragmentation_cached(topo.layout, mask)


def max_set_size_at_tier(topo: NodeTopology, free: Iterable[int], tier: SetTier) -> int:
    """The largest number of ``free`` GPUs that form a set of ``tier`` or better."""
    mask, _ = _mask_of(topo, free, "max_set_size_at_tier")
    return _max_size_cached(topo.layout, mask, SetTier(tier))


# -- memoised implementations -------------------------------------------------------------


@functools.lru_cache(maxsize=65536)
def _fragmentation_cached(layout: NodeTopology, free_mask: int) -> float:
    analysis = _analyse(layout)
    free_count = free_mask.bit_count()
    if free_count <= 1 or not analysis.levels:
        return 0.0
    total = 0.0
    for level in analysis.levels:
        actual = sum(size * size for size in _clique_cover_sizes(level.adjacency, free_mask))
        ideal = 0
        remaining = free_count
        for capacity in level.capacities:
            if remaining == 0:
                break
            taken = min(capacity, remaining)
            ideal += taken * taken
            remaining -= taken
        # The greedy cover of a subset can beat the node's own greedy cover on odd graphs.
        total += min(1.0, actual / ideal)
    return max(0.0, 1.0 - total / len(analysis.levels))


@functools.lru_cache(maxsize=4096)
def _max_size_cached(layout: NodeTopology, free_mask: int, tier: SetTier) -> int:
    analysis = _analyse(layout)
    if free_mask == 0:
        return 0
    if tier == SetTier.CROSS_NUMA:
        return free_mask.bit_count()
    nvlink_component = max(
        part.bit_count() for part in _components(analysis.nvlink_adjacency, free_mask)
    )
    if tier == SetTier.NVLINK_PARTIAL:
        return nvlink_component
    # The other tiers are "every pair at least this good": a clique in that pair graph.
    adjacency = tuple(
        sum(1 << b for b in range(analysis.count) if b != a and analysis.pair_tier[a][b] >= tier)
        for a in range(analysis.count)
    )
    clique = _max_clique(adjacency, free_mask).bit_count()
    if tier == SetTier.NVLINK_COMPLETE:
        return clique
    return max(clique, nvlink_component)


# Above this many distinct choices (only reachable with more than 16 GPUs and little
# symmetry) the search falls back to a greedy construction instead of hanging the scheduler.
_EXACT_SEARCH_LIMIT = 200_000


@dataclass(slots=True)
class _Candidate:
    key: tuple[int, int, int, int]
    stats: _Stats
    mask: int


@functools.lru_cache(maxsize=65536)
def _best_cached(layout: NodeTopology, free_mask: int, k: int) -> GpuSetScore:
    analysis = _analyse(layout)
    # Free GPUs of each class, lowest first: within a class, taking the lowest indices is
    # both the canonical choice and the lowest-index tie-break.
    groups = [tuple(gpu for gpu in members if free_mask >> gpu & 1) for members in analysis.classes]
    groups = [group for group in groups if group]
    if _count_choices([len(group) for group in groups], k) <= _EXACT_SEARCH_LIMIT:
        candidates = _search(analysis, groups, free_mask, k)
    else:
        candidates = _greedy(analysis, free_mask, k)

    def tie_break(candidate: _Candidate) -> tuple[float, tuple[int, ...]]:
        left = _fragmentation_cached(layout, free_mask & ~candidate.mask)
        return (round(left, 12), _indices(candidate.mask))

    chosen = min(candidates, key=tie_break)
    return _score(analysis, _indices(chosen.mask), chosen.stats)


def _count_choices(sizes: list[int], k: int) -> int:
    """How many count vectors (c_i <= sizes[i], sum k) the exact search may visit."""
    ways = [1] + [0] * k
    for size in sizes:
        updated = [0] * (k + 1)
        for total, count in enumerate(ways):
            if count:
                for take in range(min(size, k - total) + 1):
                    updated[total + take] += count
        ways = updated
    return ways[k]


def _search(
    analysis: _Analysis, groups: list[tuple[int, ...]], free_mask: int, k: int
) -> list[_Candidate]:
    """Every optimal k-set (one per class-count vector), by branch and bound over classes."""
    has_nvlink = any(analysis.nvlink_adjacency[gpu] & free_mask for gpu in _bits(free_mask))
    # Capacity of the classes after position i, to stop early when k can no longer be met.
    room_after = [0] * (len(groups) + 1)
    for position in range(len(groups) - 1, -1, -1):
        room_after[position] = room_after[position + 1] + len(groups[position])
    best: list[_Candidate] = []
    best_bound: tuple[int, int] = (-1, -1)
    chosen: list[int] = []

    def visit(position: int, weakest: int, lowest_tier: int, nvlinks: int) -> None:
        nonlocal best, best_bound
        need = k - len(chosen)
        if need == 0:
            record(weakest, lowest_tier, nvlinks)
            return
        if position == len(groups) or room_after[position] < need:
            return
        # Upper bound: the weakest link and pair tier only get worse as GPUs are added; the
        # tier can still rise to NVLINK_PARTIAL if NVLink later joins the set up.
        if lowest_tier == SetTier.NVLINK_COMPLETE:
            tier_bound = int(SetTier.NVLINK_COMPLETE)
        elif has_nvlink:
            tier_bound = max(lowest_tier, int(SetTier.NVLINK_PARTIAL))
        else:
            tier_bound = lowest_tier
        if (tier_bound, weakest) < best_bound:
            return
        group = groups[position]
        # Taking more from one class first finds packed (usually best) sets early.
        for take in range(min(len(group), need), -1, -1):
            new_weakest, new_tier, new_nvlinks = weakest, lowest_tier, nvlinks
            for gpu in group[:take]:
                rank_row = analysis.rank[gpu]
                tier_row = analysis.pair_tier[gpu]
                nvlink_row = analysis.nvlinks[gpu]
                for other in chosen:
                    new_weakest = min(new_weakest, rank_row[other])
                    new_tier = min(new_tier, tier_row[other])
                    new_nvlinks += nvlink_row[other]
                chosen.append(gpu)
            visit(position + 1, new_weakest, new_tier, new_nvlinks)
            if take:
                del chosen[-take:]

    def record(weakest: int, lowest_tier: int, nvlinks: int) -> None:
        nonlocal best, best_bound
        mask = sum(1 << gpu for gpu in chosen)
        tier = lowest_tier
        if tier != SetTier.NVLINK_COMPLETE and _nvlink_connected(analysis, mask):
            tier = int(SetTier.NVLINK_PARTIAL)
        numa_nodes = len({analysis.numa[gpu] for gpu in chosen} - {None})
        stats = _Stats(tier, weakest, nvlinks, numa_nodes)
        candidate = _Candidate(stats.key, stats, mask)
        if not best or candidate.key > best[0].key:
            best = [candidate]
            best_bound = (tier, weakest)
        elif candidate.key == best[0].key:
            best.append(candidate)

    visit(0, _NO_PAIR_RANK, int(SetTier.NVLINK_COMPLETE), 0)
    return best


def _greedy(analysis: _Analysis, free_mask: int, k: int) -> list[_Candidate]:
    """Grow a set from every free GPU, adding the GPU that keeps the set best; keep the best."""
    free = _indices(free_mask)
    results: dict[int, _Candidate] = {}
    for seed in free:
        members = [seed]
        while len(members) < k:
            options = []
            for gpu in free:
                if gpu not in members:
                    trial = tuple(sorted([*members, gpu]))
                    options.append((_stats(analysis, trial).key, -gpu, gpu))
            members.append(max(options)[2])
        gpus = tuple(sorted(members))
        stats = _stats(analysis, gpus)
        mask = sum(1 << gpu for gpu in gpus)
        results[mask] = _Candidate(stats.key, stats, mask)
    top = max(candidate.key for candidate in results.values())
    return [candidate for candidate in results.values() if candidate.key == top]
