"""What the NVIDIA device plugin will pick on a node, and kvsched's prediction of it.

kvsched decides the node; on the node the kubelet asks the NVIDIA device plugin
(``GetPreferredAllocation``) which GPUs a pod gets, and the plugin answers with
github.com/NVIDIA/go-gpuallocator v0.6.0's best-effort policy run over the free devices in the
order the kubelet hands them over (Go map order: random on every call). Nothing on the node reads
a kvsched annotation, so kvsched can only *predict* that choice; this module holds

* a faithful port of the policy (:func:`best_effort_allocate`), the baseline the simulator and
  benchmarks use and what ``tests/unit/topology/test_gpuallocator_oracle.py`` checks against the
  real Go code (``hack/gpuallocator``);
* :func:`reachable_allocations`, every set the policy can return for *some* input order;
* :func:`predict_allocation`, kvsched's single best guess, cheap enough for the scheduler's hot
  path.

**The policy** (``gpuallocator/besteffort_policy.go``). Pair score: the sum over the pair's
P2P links of SYS 10, NODE 20, PHB 30, PXB 40, PIX 50, same board 60 and 100 per NVLink. The
free list is padded with nil to a multiple of ``size``; every partition into ``size``-sets is
enumerated (the set holding padding must hold all of it), the first partition in enumeration
order with the highest total wins, and within it the first set with the highest set score is
returned, in input order. ``size == 1`` returns the first device. Two quirks of the Go code are
reproduced because the plugin has them too:

* the **padded set can win**: with ``n % size != 0`` the set holding the padding has fewer real
  GPUs, and if its score is the highest it is returned, nil entries included (shown here as
  :data:`PADDING`, -1). The plugin then dereferences nil (``device.UUID``) while building its
  answer, so the pod does not get that set.
* **slice aliasing**: partitions are built with ``append(accum, set)`` on shared backing
  arrays, so the winning partition stored by the policy is overwritten by later candidates
  that share its first ``s + 1`` sets, where ``s`` is the largest of 0, 1, 2, 4, 8, ... below
  the number of sets ``m`` (Go's slice growth). When ``m >= s + 3`` (7 or 8 sets, i.e. 13-16
  GPUs taken 2 at a time) the sets after slot ``s`` are those of the *last* partition
  enumerated with that prefix, and the answer is picked among those.

**From nvidia-smi codes to go-gpuallocator links (an assumption: it cannot be checked
without the hardware).** The allocator reads NVML: one PCIe level per pair, plus an NVLink
entry counting the GPU's NVLinks whose remote PCI bus id is the other GPU. ``PIX``, ``PXB``,
``PHB``, ``NODE`` and ``SYS`` map to SingleSwitch, MultiSwitch, HostBridge, SameCPU and
CrossCPU. An ``NV#`` pair hides its PCIe path, so its level is taken from the NUMA nodes:
same node -> SameCPU (NODE), different -> CrossCPU (SYS), unknown -> SameCPU. The NVLinks only
count when they are direct GPU-to-GPU links: on NVSwitch boards (HGX/DGX H100, H200, B200,
DGX A100) they end at the switch and the allocator sees none. A GPU is taken to be switched
when the sum of its NVLink counts over all peers exceeds :data:`NVSWITCH_NVLINK_THRESHOLD`
(18, the most NVLinks any GPU has), which is exactly what an NVSwitch board shows (every pair
NV12/NV18); bridged A100 PCIe pairs (NV12) or a V100 hybrid cube-mesh stay direct. A pair
counts its NVLinks only when neither GPU is switched (the allocator's link lists must be
symmetric). Go counts at most 18 NVLinks per pair. "Same board" (type 6) has no nvidia-smi
code, so it never appears here.

**Cost.** The port is exact for every input. The best partition total is a dynamic programme
over bit masks of free GPUs (independent of the input order, so it is memoised per board
layout and shared by every call); the first-in-order tie rule then walks the input order once,
using that table. That is at most ~2^(n-1) states: about a millisecond for 8 free GPUs, up to
1.6 s cold for 16 (k=6; then memoised), and refused (``ValueError``) above
:data:`MAX_EXACT_GPUS` free GPUs, a size at which the Go code itself enumerates billions of
partitions.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from topology.model import LinkKind, NodeTopology
from topology.select import GpuSetScore, SetTier, best_gpu_set, score_gpu_set

__all__ = [
    "MAX_EXACT_GPUS",
    "NVSWITCH_NVLINK_THRESHOLD",
    "P2P_LINK_SCORES",
    "PADDING",
    "allocator_links",
    "allocator_pair_scores",
    "best_effort_allocate",
    "predict_allocation",
    "reachable_allocations",
]

PADDING = -1
"""Stands for a nil (padding) entry in an allocation: Go returned fewer real GPUs than asked."""

# P2PLinkType numbers of go-gpuallocator's internal/links package.
_P2P_CROSS_CPU = 1  # SYS
_P2P_SAME_CPU = 2  # NODE
_P2P_HOST_BRIDGE = 3  # PHB
_P2P_MULTI_SWITCH = 4  # PXB
_P2P_SINGLE_SWITCH = 5  # PIX
_P2P_NVLINK_BASE = 6  # SingleNVLINKLink is 7, EighteenNVLINKLinks 24
_MAX_NVLINKS = 18

P2P_LINK_SCORES: tuple[int, ...] = (
    0,
    10,
    20,
    30,
    40,
    50,
    60,
    *(100 * links for links in range(1, _MAX_NVLINKS + 1)),
)
"""calculateGPUPairScore's table, indexed by P2PLinkType (0 unknown ... 24 eighteen NVLinks)."""

NVSWITCH_NVLINK_THRESHOLD = 18
"""A GPU whose NVLink counts over all peers add up to more than this is behind an NVSwitch."""

MAX_EXACT_GPUS = 20
"""Most free GPUs :func:`best_effort_allocate` accepts (the mask table grows as 2^n)."""

# Above this many free GPUs predict_allocation does not search the reachable sets.
_PREDICT_EXACT_GPUS = 8
# Most optimal partitions reachable_allocations walks for one padded candidate before it
# counts the candidate as reachable (an over-approximation; never hit on real boards).
_PADDED_WALK_LIMIT = 20_000
# Per-board memo tables are dropped when they grow past this many entries.
_TABLE_LIMIT = 1 << 20

_PCIE_LINK_TYPE = {
    LinkKind.PIX: _P2P_SINGLE_SWITCH,
    LinkKind.PXB: _P2P_MULTI_SWITCH,
    LinkKind.PHB: _P2P_HOST_BRIDGE,
    LinkKind.NODE: _P2P_SAME_CPU,
    LinkKind.SYS: _P2P_CROSS_CPU,
}

_MINUS_INFINITY = -(1 << 62)


# -- the board as the allocator sees it ------------------------------------------------------


def allocator_links(topo: NodeTopology) -> tuple[tuple[tuple[int, ...], ...], ...]:
    """Per pair ``(a, b)``, the P2PLinkType numbers go-gpuallocator would list (``()`` on the
    diagonal): the PCIe level, then the NVLink count type when the NVLinks are direct.

    This is the input of the Go oracle (``hack/gpuallocator``); see the module docstring for
    the mapping and why it is an assumption.
    """
    return _links(topo.layout)


def allocator_pair_scores(topo: NodeTopology) -> tuple[tuple[int, ...], ...]:
    """The pair-score matrix go-gpuallocator would compute on this board (0 on the diagonal),
    derived from :func:`allocator_links` with the Go score table."""
    return _board(topo.layout).scores


@functools.lru_cache(maxsize=256)
def _links(layout: NodeTopology) -> tuple[tuple[tuple[int, ...], ...], ...]:
    count = layout.gpu_count
    links = layout.links
    switched = tuple(
        sum(links[gpu][peer].nvlinks for peer in range(count)) > NVSWITCH_NVLINK_THRESHOLD
        for gpu in range(count)
    )
    numa = tuple(gpu.numa_node for gpu in layout.gpus)

    def pair(a: int, b: int) -> tuple[int, ...]:
        link = links[a][b]
        if a == b:
            return ()
        if not link.is_nvlink:
            return (_PCIE_LINK_TYPE[link.kind],)
        apart = numa[a] is not None and numa[b] is not None and numa[a] != numa[b]
        level = _P2P_CROSS_CPU if apart else _P2P_SAME_CPU
        if switched[a] or switched[b]:
            return (level,)
        return (level, _P2P_NVLINK_BASE + min(link.nvlinks, _MAX_NVLINKS))

    return tuple(tuple(pair(a, b) for b in range(count)) for a in range(count))


@dataclass(eq=False)
class _Board:
    """One layout's pair scores and the order-independent memo tables built on them."""

    count: int
    scores: tuple[tuple[int, ...], ...]
    block: dict[int, int] = field(default_factory=dict)  # GPU mask -> set score
    # (size, cap, mask) -> best partition total of mask with every set scoring <= cap.
    totals: dict[tuple[int, int, int], int] = field(default_factory=dict)

    def block_score(self, mask: int) -> int:
        got = self.block.get(mask)
        if got is not None:
            return got
        low = mask & -mask
        rest = mask ^ low
        row = self.scores[low.bit_length() - 1]
        value = (self.block_score(rest) if rest else 0) + sum(row[b] for b in _bits(rest))
        if len(self.block) > _TABLE_LIMIT:
            self.block.clear()
        self.block[mask] = value
        return value


@functools.lru_cache(maxsize=256)
def _board(layout: NodeTopology) -> _Board:
    links = _links(layout)
    scores = tuple(tuple(sum(P2P_LINK_SCORES[t] for t in types) for types in row) for row in links)
    return _Board(layout.gpu_count, scores)


def _bits(mask: int) -> Iterator[int]:
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


def _mask(gpus: Iterable[int]) -> int:
    return sum(1 << gpu for gpu in gpus)


# -- best partition totals (order-independent) -----------------------------------------------

_NO_CAP = 1 << 40


def _best_total(board: _Board, size: int, mask: int, cap: int = _NO_CAP) -> int:
    """Best total over partitions of ``mask`` into ``size``-sets plus, when ``size`` does not
    divide the count, one padded set of ``count % size`` GPUs; only sets scoring <= ``cap``.

    ``_MINUS_INFINITY`` when no such partition exists. The value does not depend on the order
    of the GPUs, so the table is shared by every call on the board.
    """
    if mask == 0:
        return 0
    key = (size, cap, mask)
    got = board.totals.get(key)
    if got is not None:
        return got
    low = mask & -mask
    others = list(_bits(mask ^ low))
    count = len(others) + 1
    best = _MINUS_INFINITY
    for take in _set_sizes(count, size):
        for combo in itertools.combinations(others, take - 1):
            chosen = low | _mask(combo)
            score = board.block_score(chosen)
            if score > cap:
                continue
            rest = _best_total(board, size, mask ^ chosen, cap)
            if rest != _MINUS_INFINITY and score + rest > best:
                best = score + rest
    if len(board.totals) > _TABLE_LIMIT:
        board.totals.clear()
    board.totals[key] = best
    return best


def _set_sizes(count: int, size: int) -> tuple[int, ...]:
    """Sizes the set holding the lowest GPU can have: full, or the padded remainder."""
    remainder = count % size
    sizes = (size,) if count >= size else ()
    return (*sizes, remainder) if remainder else sizes


def _constrained_total(
    board: _Board, size: int, mask: int, required: int, memo: dict[int, int]
) -> int:
    """:func:`_best_total` where a set touching ``required`` must be full and hold all of it."""
    if mask == 0:
        return 0
    got = memo.get(mask)
    if got is not None:
        return got
    low = mask & -mask
    others = list(_bits(mask ^ low))
    best = _MINUS_INFINITY
    for take in _set_sizes(len(others) + 1, size):
        for combo in itertools.combinations(others, take - 1):
            chosen = low | _mask(combo)
            if not _respects(chosen, required, take == size):
                continue
            rest = _constrained_total(board, size, mask ^ chosen, required, memo)
            if rest != _MINUS_INFINITY:
                best = max(best, board.block_score(chosen) + rest)
    memo[mask] = best
    return best


def _respects(chosen: int, required: int, full: bool) -> bool:
    return not chosen & required or (full and chosen & required == required)


# -- the policy ------------------------------------------------------------------------------


def best_effort_allocate(
    topo: NodeTopology, available: Sequence[int], size: int, required: Sequence[int] = ()
) -> tuple[int, ...]:
    """go-gpuallocator's ``NewBestEffortPolicy().Allocate(available, required, size)``.

    ``available`` is the input order (significant: ties go to the first partition and set in
    that order). Returns GPU indices in the order Go returns the devices (input order), with
    :data:`PADDING` for nil entries when the padded set wins; ``()`` wherever Go returns an
    empty list (``size <= 0``, too few devices, too many required, a required GPU not
    available). Exact, including the slice-aliasing quirk (module docstring). ``ValueError``
    for indices out of range, repeated available GPUs, or more than :data:`MAX_EXACT_GPUS`
    available GPUs.
    """
    order = tuple(available)
    need = tuple(required)
    for gpu in (*order, *need):
        if isinstance(gpu, bool) or not isinstance(gpu, int) or not 0 <= gpu < topo.gpu_count:
            raise ValueError(f"best_effort_allocate: bad GPU index {gpu!r}")
    if len(set(order)) != len(order):
        raise ValueError("best_effort_allocate: a GPU is listed twice in available")
    if len(order) > MAX_EXACT_GPUS:
        raise ValueError(
            f"best_effort_allocate: {len(order)} available GPUs, at most {MAX_EXACT_GPUS}"
        )
    if size <= 0 or len(order) < size or len(need) > size or len(need) > len(order):
        return ()
    if size == 1:
        # Every partition scores 0, so the first one holding the required GPU wins.
        for gpu in order:
            if all(other == gpu for other in need):
                return (gpu,)
        return ()
    if not set(need) <= set(order):
        return ()
    return _allocate(_board(topo.layout), order, size, _mask(need))


def _allocate(board: _Board, order: tuple[int, ...], size: int, required: int) -> tuple[int, ...]:
    count = len(order)
    padding = -count % size
    device_mask = _mask(order)
    if required:
        memo: dict[int, int] = {}

        def total(mask: int) -> int:
            return _constrained_total(board, size, mask, required, memo)

    else:

        def total(mask: int) -> int:
            return _best_total(board, size, mask)

    # Walk the enumeration order: at each step the first set (in input order) holding the
    # first remaining device that still completes to a best partition.
    remaining = list(range(count + padding))  # positions; count.. are the nil padding
    partition: list[tuple[int, ...]] = []
    mask = device_mask
    while remaining:
        block, chosen = next(
            (block, chosen)
            for block, chosen in _blocks(order, remaining, size, padding)
            if (not required or _respects(chosen, required, chosen.bit_count() == size))
            and (rest := total(mask ^ chosen)) != _MINUS_INFINITY
            and board.block_score(chosen) + rest == total(mask)
        )
        partition.append(block)
        remaining = [position for position in remaining if position not in block]
        mask ^= chosen

    # Go's slice aliasing: sets after slot s are those of the last partition enumerated with
    # the same first s + 1 sets.
    sets = len(partition)
    shared = 1 << ((sets - 1).bit_length() - 1) if sets > 1 else 0
    if sets - 1 >= shared + 2:
        used = {position for block in partition[: shared + 1] for position in block}
        left = [position for position in range(count + padding) if position not in used]
        partition[shared + 1 :] = _last_completion(order, left, size, padding)

    best: tuple[int, ...] | None = None
    best_score = 0
    for block in partition:
        chosen = _mask(order[position] for position in block if position < count)
        if chosen & required != required:
            continue
        score = board.block_score(chosen)
        if best is None or score > best_score:
            best, best_score = block, score
    if best is None:
        return ()
    return tuple(order[position] if position < count else PADDING for position in best)


def _blocks(
    order: tuple[int, ...], remaining: list[int], size: int, padding: int
) -> Iterator[tuple[tuple[int, ...], int]]:
    """Sets holding the first remaining position, in Go's order, as (positions, GPU mask);
    a set holding padding holds all of it (iterateGPUPartitions skips the others)."""
    count = len(order)
    first = remaining[0]
    for combo in itertools.combinations(remaining[1:], size - 1):
        nils = sum(position >= count for position in combo)
        if nils not in (0, padding):
            continue
        block = (first, *combo)
        yield block, _mask(order[position] for position in block if position < count)


def _last_completion(
    order: tuple[int, ...], remaining: list[int], size: int, padding: int
) -> list[tuple[int, ...]]:
    """The partition of ``remaining`` that Go enumerates last (whatever its score)."""
    partition: list[tuple[int, ...]] = []
    while remaining:
        block = max(block for block, _ in _blocks(order, remaining, size, padding))
        partition.append(block)
        remaining = [position for position in remaining if position not in block]
    return partition


# -- what some input order can give ----------------------------------------------------------


def reachable_allocations(
    topo: NodeTopology, free: frozenset[int], size: int
) -> frozenset[tuple[int, ...]]:
    """Every result (a sorted tuple) :func:`best_effort_allocate` gives for some order of
    ``free`` with nothing required; padded results hold :data:`PADDING` (sorted, so first).

    Exact without the slice-aliasing quirk (argument below), checked against all
    permutations in the tests. With it (7+ sets: 13-16 GPUs taken 2 at a time) this is an
    over-approximation: every ``size``-set and every padded remainder set of ``free``.

    Why exact: for any order the chosen partition P is a best one and the result is the
    first best-scoring set T of P, so every result is a top set of a best partition.
    Conversely, for a full T that tops a best P, put T's GPUs first and each other set of P
    after it, each set's GPUs together: the first set in Go's order holding the first GPU is
    then T itself (the smallest tuple there is, and it completes to P), and so on, so P is
    chosen and T, first of its top sets, is returned. A padded T is returned when it comes
    first among P's top sets, so lower sets go before it and the other top sets C after it;
    with T's GPUs together, the only sets Go tries before T's are full sets holding all of T,
    so T is returned exactly when no best partition of T ∪ C has a full set containing T
    (more GPUs after T only add such partitions, so this placement is the most favourable).
    Best partitions whose other sets score at most T's are walked to find such a C; past a
    limit of walked partitions the candidate counts as reachable (over-approximation).
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"reachable_allocations: size must be a positive integer, got {size!r}")
    mask = _checked_mask(topo, free, "reachable_allocations")
    return _reachable(topo.layout, mask, size)


@functools.lru_cache(maxsize=4096)
def _reachable(layout: NodeTopology, mask: int, size: int) -> frozenset[tuple[int, ...]]:
    gpus = tuple(_bits(mask))
    count = len(gpus)
    if count < size:
        return frozenset()
    if size == 1:
        return frozenset((gpu,) for gpu in gpus)
    remainder = count % size
    padding = (size - remainder) % size
    pad = (PADDING,) * padding
    sets = (count + padding) // size
    shared = 1 << ((sets - 1).bit_length() - 1) if sets > 1 else 0
    if sets - 1 >= shared + 2:
        everything = {tuple(combo) for combo in itertools.combinations(gpus, size)}
        if remainder:
            everything |= {pad + combo for combo in itertools.combinations(gpus, remainder)}
        return frozenset(everything)
    board = _board(layout)
    best = _best_total(board, size, mask)
    found: set[tuple[int, ...]] = set()
    for combo in itertools.combinations(gpus, size):
        if _tops_a_best_partition(board, size, mask, _mask(combo), best):
            found.add(combo)
    if remainder:
        for combo in itertools.combinations(gpus, remainder):
            if _padded_reachable(board, size, mask, _mask(combo), best):
                found.add(pad + combo)
    return frozenset(found)


def _tops_a_best_partition(board: _Board, size: int, mask: int, chosen: int, best: int) -> bool:
    score = board.block_score(chosen)
    rest = _best_total(board, size, mask ^ chosen, score)
    return rest != _MINUS_INFINITY and score + rest == best


def _padded_reachable(board: _Board, size: int, mask: int, chosen: int, best: int) -> bool:
    score = board.block_score(chosen)
    rest_mask = mask ^ chosen
    if score + _best_total(board, size, rest_mask, score - 1) == best:
        return True  # a best partition where T is the only top set: C is empty
    if not _tops_a_best_partition(board, size, mask, chosen, best):
        return False
    tried: set[int] = set()
    walked = 0
    for tops in _top_sets_of_best_partitions(board, size, rest_mask, score):
        walked += 1
        if walked > _PADDED_WALK_LIMIT:
            return True
        if tops in tried:
            continue
        tried.add(tops)
        if not _full_set_beats_padded(board, size, chosen | tops, chosen):
            return True
    return False


def _top_sets_of_best_partitions(board: _Board, size: int, mask: int, cap: int) -> Iterator[int]:
    """For each best partition of ``mask`` (all full sets) with sets scoring <= ``cap``, the
    union of its sets scoring exactly ``cap``."""
    target = _best_total(board, size, mask, cap)

    def walk(left: int, need: int, tops: int) -> Iterator[int]:
        if left == 0:
            yield tops
            return
        low = left & -left
        for combo in itertools.combinations(list(_bits(left ^ low)), size - 1):
            chosen = low | _mask(combo)
            score = board.block_score(chosen)
            if score > cap:
                continue
            rest = _best_total(board, size, left ^ chosen, cap)
            if rest != _MINUS_INFINITY and score + rest == need:
                yield from walk(left ^ chosen, rest, tops | chosen if score == cap else tops)

    if target != _MINUS_INFINITY:
        yield from walk(mask, target, 0)


def _full_set_beats_padded(board: _Board, size: int, union: int, padded: int) -> bool:
    """Whether a best partition of ``union`` has a full set containing all of ``padded``."""
    best = _best_total(board, size, union)
    others = list(_bits(union ^ padded))
    for combo in itertools.combinations(others, size - padded.bit_count()):
        chosen = padded | _mask(combo)
        if board.block_score(chosen) + _best_total(board, size, union ^ chosen) == best:
            return True
    return False


def _checked_mask(topo: NodeTopology, free: Iterable[int], what: str) -> int:
    mask = 0
    for gpu in free:
        if isinstance(gpu, bool) or not isinstance(gpu, int) or not 0 <= gpu < topo.gpu_count:
            raise ValueError(f"{what}: bad GPU index {gpu!r}")
        mask |= 1 << gpu
    return mask


# -- kvsched's prediction --------------------------------------------------------------------


def predict_allocation(topo: NodeTopology, free: frozenset[int], size: int) -> GpuSetScore | None:
    """kvsched's prediction of the set the device plugin gives a ``size``-GPU pod on a node
    whose free GPUs are ``free``; None when fewer than ``size`` are free.

    Among the full sets of :func:`reachable_allocations`, keep those of the best
    :class:`SetTier`; among them the set the policy returns for the ascending input order if
    it is one of them (the kubelet's order is random, and that draw is as good a guess as any
    and is right whenever the result does not depend on the order), else the best by
    kvsched's order (tier, weakest link, NVLinks, fewer NUMA nodes) then lowest indices. So the
    prediction is reachable and never of a lower tier than what the plugin can return.

    Fallbacks, documented because they are not the contract above: with more than 8 free
    GPUs, or when no full set is reachable (every order makes the padded set win, and the
    plugin fails), the reachable sets are not searched: the prediction is the ascending-order
    result unless kvsched's own best set (:func:`best_gpu_set`) has a strictly better tier,
    then that set, which may not be reachable (an over-approximation that keeps the tier
    guarantee). With 13-16 free GPUs taken 3 to ``n - 4`` at a time even the ascending-order
    run costs 0.1-1 s in Python, so there the prediction is kvsched's own best set.

    Memoised on (layout, free mask, size). Measured on the 2-core dev machine, every (mask, k)
    of a fresh 8-GPU preset (HGX H100, A100 PCIe bridged, L40S): a new key takes 0.05 ms
    median, 0.3 ms p99, 4 ms worst (the first call on a board). On 16-GPU boards, random
    keys: ~1 ms median, tens of ms worst.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"predict_allocation: size must be a positive integer, got {size!r}")
    free_set = free if isinstance(free, frozenset) else frozenset(free)
    mask = _checked_mask(topo, free_set, "predict_allocation")
    if mask.bit_count() < size:
        return None
    return _predict(topo.layout, mask, size)


@dataclass(frozen=True, slots=True)
class _Ranked:
    key: tuple[int, int, int, int]
    gpus: tuple[int, ...]


def _rank(score: GpuSetScore) -> tuple[int, int, int, int]:
    weakest = score.weakest.rank if score.weakest is not None else 1 << 40
    return (int(score.tier), weakest, score.total_nvlinks, -score.numa_nodes)


@functools.lru_cache(maxsize=65536)
def _predict(layout: NodeTopology, mask: int, size: int) -> GpuSetScore:
    gpus = tuple(_bits(mask))
    count = len(gpus)
    board = _board(layout)
    if count > _PREDICT_EXACT_GPUS and not _cheap_policy_run(count, size):
        return _fallback(layout, mask, size, None)
    ascending = _allocate(board, gpus, size, 0) if size > 1 else gpus[:1]
    ascending_score = score_gpu_set(layout, ascending) if PADDING not in ascending else None
    if count > _PREDICT_EXACT_GPUS:
        return _fallback(layout, mask, size, ascending_score)
    sets = -(-count // size)
    shared = 1 << ((sets - 1).bit_length() - 1) if sets > 1 else 0
    exact = sets - 1 < shared + 2
    best = _best_total(board, size, mask) if size > 1 else 0
    floor = ascending_score.tier if ascending_score is not None else SetTier.CROSS_NUMA
    ranked = sorted(
        (
            _Ranked(_rank(score), score.gpus)
            for combo in itertools.combinations(gpus, size)
            if (score := score_gpu_set(layout, combo)).tier >= floor
        ),
        key=lambda item: (tuple(-value for value in item.key), item.gpus),
    )
    for item in ranked:
        tier = item.key[0]
        if ascending_score is not None and tier == ascending_score.tier:
            return ascending_score  # nothing of a better tier is reachable
        if (
            size == 1
            or not exact
            or _tops_a_best_partition(board, size, mask, _mask(item.gpus), best)
        ):
            return score_gpu_set(layout, item.gpus)
    return _fallback(layout, mask, size, ascending_score)


def _cheap_policy_run(count: int, size: int) -> bool:
    """Whether the policy's best-total table for ``count`` free GPUs taken ``size`` at a time
    fills in tens of milliseconds cold. Its cost depends on nothing else; measured: at most
    ~15 ms up to 12 GPUs, for pairs, and for sets of all but at most 3 GPUs (~25 ms with
    16), but 0.1-1 s for 13-16 GPUs taken 3 to 12 at a time."""
    return count <= 12 or size <= 2 or size >= count - 3


def _fallback(
    layout: NodeTopology, mask: int, size: int, ascending: GpuSetScore | None
) -> GpuSetScore:
    kvsched = best_gpu_set(layout, frozenset(_bits(mask)), size)
    assert kvsched is not None  # at least size GPUs are free
    if ascending is None or kvsched.tier > ascending.tier:
        return kvsched
    return ascending
