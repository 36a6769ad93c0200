"""Cache warming planner: which nodes should copy which models to local disk, and why.

A pure function of plain data (`plan_warming`), shared by the warming controller
(scheduler.controller.warming, which writes the result into NodeInventory ``spec.warming``)
and the simulator, so that both run the same policy.

The policy (issue 14, "A warming controller"):

* A model is **in demand** while it has running replicas, pending pods or recent scale-ups.
  For each such model, keep at least ``holders`` nodes that could host its *next* replica
  (the placement core's own fit: free GPUs, weights plus KV cache in GPU memory) holding its
  weights on the node (any cache tier) or being warmed with them. A holder whose GPUs are all
  busy does not count: the next replica cannot use its copy.
* Targets are chosen among fitting nodes that do not hold the model and that the agent can
  fetch to, never the **sole** ready holder of another model in demand: the next replica of
  this model would land there (kvsched prefers the copy) and take the GPUs that the other
  model's next replica needs. Among the rest, nodes least involved with other models in
  demand come first, then the placement core's right-size (don't warm a small model onto the
  biggest GPUs), then the most free GPUs, then the name (deterministic).
* Budgets: the models a node is asked to hold, plus the models in demand it already holds,
  fit its disk budget (models nobody wants are the agent's LRU eviction candidates, so they
  do not count); the bytes still to copy stay under a per-node and a pool-wide cap. A cap
  smaller than one model still lets that model copy alone (nothing else in flight), or a
  large model could never be warmed.
* Withdrawal: an entry stays while its model is in demand (finished or not, on a node that
  still fits or not: a copy is not wasted because GPUs are momentarily busy). Once demand
  is gone, entries stay for ``hold_down_s`` after the model was last in demand, so a model
  whose demand flickers is not asked for, dropped and asked for again.

Everything is processed in a fixed order (models by demand, then key; nodes by name), so
equal inputs give equal plans.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from scheduler.core.bounds import clip
from scheduler.core.demand import PodDemand
from scheduler.core.node import NodeState
from scheduler.core.placement import evaluate

__all__ = [
    "COPY_STATES",
    "MAX_WARMING_MODELS",
    "CopyProgress",
    "ModelDemand",
    "Shortfall",
    "WarmingChange",
    "WarmingNode",
    "WarmingPlan",
    "WarmingSettings",
    "WarmingTarget",
    "plan_warming",
]

# The agent's states of one copy (NodeInventory status.warming.models[].state; the inventory
# package spells the same tuple, and a test keeps them equal).
COPY_STATES = ("queued", "copying", "done", "failed", "evicted")
# Copies that ended without leaving the model on the node: they neither hold nor move bytes.
_ENDED = frozenset({"failed", "evicted"})
# The CRD's maxItems of spec.warming.models.
MAX_WARMING_MODELS = 64
# The CRD's maxLength of a reason.
_MAX_REASON = 256

ModelKey = tuple[str, str | None]


@dataclass(frozen=True, slots=True)
class WarmingSettings:
    """``holders``: ready holders to keep per model in demand (0: warm nothing, withdraw
    what demand no longer needs). ``hold_down_s``: how long after its last demand a model's
    entries stay. ``max_inflight_bytes_per_node`` / ``max_inflight_bytes_pool``: bytes still to
    copy, per node and over all nodes. ``node_disk_budget_bytes``: a cap on each node's
    warming disk use, below the node's own budget; None: the node's own budget only."""

    holders: int = 2
    hold_down_s: float = 900.0
    max_inflight_bytes_per_node: int = 200 * 10**9
    max_inflight_bytes_pool: int = 2 * 10**12
    node_disk_budget_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.holders < 0:
            raise ValueError(f"warming holders must be >= 0, not {self.holders}")
        if not math.isfinite(self.hold_down_s) or self.hold_down_s < 0:
            raise ValueError(f"warming hold-down must be >= 0 seconds, not {self.hold_down_s}")
        if self.max_inflight_bytes_per_node <= 0:
            raise ValueError(
                f"max in-flight bytes per node must be > 0, not {self.max_inflight_bytes_per_node}"
            )
        if self.max_inflight_bytes_pool <= 0:
            raise ValueError(
                f"max in-flight bytes for the pool must be > 0, not {self.max_inflight_bytes_pool}"
            )
        if self.node_disk_budget_bytes is not None and self.node_disk_budget_bytes < 0:
            raise ValueError(
                f"node disk budget must be >= 0 bytes, not {self.node_disk_budget_bytes}"
            )


@dataclass(frozen=True, slots=True)
class ModelDemand:
    """One model and how much it is wanted.

    ``name``: the model id as the spec should spell it (the Hugging Face hub id; its
    lower-cased form must be ``pod.model``). ``pod``: the demand of its next replica (GPUs,
    memory plan, revision), judged on each node by the placement core. ``running``,
    ``pending``, ``scale_ups``: running replicas, pods waiting to be placed, replicas started
    within the caller's scale-up window. ``last_active``: when the caller last saw the model in
    demand (seconds, same clock as ``now``); needed for the hold-down once demand is gone.
    """

    name: str
    pod: PodDemand
    running: int = 0
    pending: int = 0
    scale_ups: int = 0
    last_active: float | None = None

    def __post_init__(self) -> None:
        if self.pod.model is None or self.pod.model != self.name.lower():
            raise ValueError(
                f"model demand {self.name!r}: its pod's model is {self.pod.model!r}, "
                f"expected {self.name.lower()!r}"
            )
        if self.pod.plan is None:
            raise ValueError(f"model demand {self.name!r}: its pod has no memory plan")
        for label, count in (
            ("running", self.running),
            ("pending", self.pending),
            ("scale_ups", self.scale_ups),
        ):
            if count < 0:
                raise ValueError(f"model demand {self.name!r}: {label} {count} is negative")

    @property
    def key(self) -> ModelKey:
        return (self.name.lower(), self.pod.revision)

    @property
    def revision(self) -> str | None:
        return self.pod.revision

    @property
    def size_bytes(self) -> int:
        """Bytes one copy takes: the whole model's weights (any stage may be asked of it)."""
        assert self.pod.plan is not None  # checked in __post_init__
        return self.pod.plan.weights_bytes_total

    @property
    def active(self) -> bool:
        return self.running + self.pending + self.scale_ups > 0


@dataclass(frozen=True, slots=True)
class WarmingTarget:
    """One model a node is asked to hold (an entry of spec.warming.models)."""

    name: str
    revision: str | None = None
    size_bytes: int | None = None
    reason: str = ""
    requested_at: float = 0.0

    @property
    def key(self) -> ModelKey:
        return (self.name.lower(), self.revision)


@dataclass(frozen=True, slots=True)
class CopyProgress:
    """The agent's word on one copy (an entry of status.warming.models)."""

    name: str
    state: str
    revision: str | None = None
    bytes_done: int = 0
    bytes_total: int | None = None

    def __post_init__(self) -> None:
        if self.state not in COPY_STATES:
            raise ValueError(f"copy of {self.name}: state {self.state!r} not one of {COPY_STATES}")

    @property
    def key(self) -> ModelKey:
        return (self.name.lower(), self.revision)


@dataclass(frozen=True)
class WarmingNode:
    """One node as the planner sees it.

    ``state``: the placement core's view (free GPUs, shape, models held by tier).
    ``disk_budget_bytes``: what its model cache may hold (the agent's budget, or the
    inventory's capacity). ``can_fetch``: whether an agent there fetches (no agent: asking is
    pointless). ``desired``: its spec.warming as it stands; ``progress``: its status.warming.
    """

    state: NodeState
    disk_budget_bytes: int
    can_fetch: bool = True
    desired: tuple[WarmingTarget, ...] = ()
    progress: tuple[CopyProgress, ...] = ()

    @property
    def name(self) -> str:
        return self.state.name


@dataclass(frozen=True, slots=True)
class WarmingChange:
    """One addition to or withdrawal from a node's spec.warming, with the reason."""

    node: str
    action: str  # "add" or "withdraw"
    name: str
    revision: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class Shortfall:
    """A model in demand left with fewer ready holders than wanted, and what stood in the way."""

    name: str
    revision: str | None
    holders: int
    wanted: int
    reason: str


@dataclass(frozen=True)
class WarmingPlan:
    """The desired spec.warming of every node given, and what changed.

    ``desired``: node -> its entries, sorted by key (every input node is present, with ``()``
    when nothing is wanted). ``in_flight_bytes``: bytes still to copy over all nodes, counting
    this pass's additions. ``requested_bytes``: bytes of this pass's additions.
    ``in_progress``: entries not yet on their node (queued, copying or not yet picked up).
    ``ready_holders``: per model in demand, its ready holders after this pass.
    """

    desired: Mapping[str, tuple[WarmingTarget, ...]]
    changes: tuple[WarmingChange, ...] = ()
    shortfalls: tuple[Shortfall, ...] = ()
    in_flight_bytes: int = 0
    requested_bytes: int = 0
    in_progress: int = 0
    ready_holders: Mapping[ModelKey, int] = field(default_factory=dict)

    def changed_nodes(self) -> tuple[str, ...]:
        """Nodes whose spec.warming this plan changes, sorted."""
        return tuple(sorted({c.node for c in self.changes}))


@dataclass
class _Node:
    """Working copy of one node during a pass."""

    node: WarmingNode
    budget: int
    desired: dict[ModelKey, WarmingTarget]
    progress: dict[ModelKey, CopyProgress]
    sizes: dict[ModelKey, int]  # bytes of each model on disk, where the node says

    def holds(self, key: ModelKey) -> bool:
        return self.node.state.residency(key[0], key[1]) is not None

    def warming(self, key: ModelKey) -> bool:
        """Asked for, not yet held, and the copy has not ended badly."""
        if key not in self.desired or self.holds(key):
            return False
        copy = self.progress.get(key)
        return copy is None or copy.state not in _ENDED

    def outstanding(self, key: ModelKey, fallback: int) -> int:
        """Bytes still to copy of a warming entry."""
        copy = self.progress.get(key)
        target = self.desired[key]
        total = (
            copy.bytes_total
            if copy is not None and copy.bytes_total is not None
            else target.size_bytes
            if target.size_bytes is not None
            else fallback
        )
        done = copy.bytes_done if copy is not None else 0
        return max(0, total - done)


def plan_warming(
    demands: Sequence[ModelDemand],
    nodes: Sequence[WarmingNode],
    now: float,
    settings: WarmingSettings,
    last_active: Mapping[ModelKey, float] | None = None,
) -> WarmingPlan:
    """The desired spec.warming of every node in ``nodes``; see the module's docstring.

    ``now`` is in seconds on the caller's clock (the controller: Unix time; the simulator:
    simulated time); ``ModelDemand.last_active`` and ``WarmingTarget.requested_at`` use it.
    ``last_active``: when models that ``demands`` does not list were last in demand, keyed by
    (lower-cased name, revision): their entries stay for the hold-down from then (a caller
    that no longer sees any pod of a model, or that just started, says so here).
    """
    by_key: dict[ModelKey, ModelDemand] = {}
    for demand in demands:
        if demand.key in by_key:
            raise ValueError(f"model {demand.name!r} revision {demand.revision!r} listed twice")
        by_key[demand.key] = demand
    work: dict[str, _Node] = {}
    for node in sorted(nodes, key=lambda n: n.name):
        if node.name in work:
            raise ValueError(f"node {node.name!r} listed twice")
        work[node.name] = _working(node, settings)

    changes: list[WarmingChange] = []
    _withdraw(work, by_key, last_active or {}, now, settings, changes)

    active = sorted(
        (d for d in by_key.values() if d.active),
        key=lambda d: (-d.pending, -d.scale_ups, -d.running, d.key[0], d.key[1] or ""),
    )
    fits = _FitMemo()
    # Ready holders: nodes holding or warming the model that could host its next replica.
    ready: dict[ModelKey, set[str]] = {
        d.key: {
            name
            for name, w in work.items()
            if (w.holds(d.key) or w.warming(d.key)) and fits.fits(d.pod, w.node.state)
        }
        for d in active
    }
    # The same, per node: the models in demand it is a ready holder of.
    ready_on: dict[str, set[ModelKey]] = {name: set() for name in work}
    for key, names in ready.items():
        for name in names:
            ready_on[name].add(key)
    outstanding = {name: _outstanding(w, by_key) for name, w in work.items()}
    disk = {name: _disk_use(w, by_key) for name, w in work.items()}
    pool = sum(outstanding.values())
    requested = 0
    shortfalls: list[Shortfall] = []

    for demand in active:
        key = demand.key
        holders = ready[key]
        if len(holders) >= settings.holders:
            continue
        size = demand.size_bytes
        blocked: list[str] = []
        candidates: list[tuple[tuple[object, ...], _Node]] = []
        for name, w in work.items():
            if not w.node.can_fetch or key in w.desired or w.holds(key):
                continue
            fit = fits.evaluation(demand.pod, w.node.state)
            if not fit[0]:
                continue
            involved = ready_on[name] - {key}
            if any(len(ready[k]) == 1 for k in involved):
                blocked.append("sole")
                continue
            order = (len(involved), -fit[1], -len(w.node.state.usable_free_gpus), name)
            candidates.append((order, w))
        candidates.sort(key=lambda c: c[0])
        added = 0
        for _, w in candidates:
            if len(holders) >= settings.holders:
                break
            name = w.node.name
            if len(w.desired) >= MAX_WARMING_MODELS:
                blocked.append("entries")
                continue
            if disk[name] + size > w.budget:
                blocked.append("disk")
                continue
            if outstanding[name] > 0 and outstanding[name] + size > (
                settings.max_inflight_bytes_per_node
            ):
                blocked.append("node-cap")
                continue
            if pool > 0 and pool + size > settings.max_inflight_bytes_pool:
                blocked.append("pool-cap")
                break  # the pool's cap blocks every other node alike
            reason = clip(
                f"keep {settings.holders} ready holders of {demand.name}: "
                f"{len(holders)} fitting node(s) held it (running {demand.running}, "
                f"pending {demand.pending}, recent scale-ups {demand.scale_ups})",
                _MAX_REASON - 1,
            )
            w.desired[key] = WarmingTarget(demand.name, demand.revision, size, reason, now)
            changes.append(WarmingChange(name, "add", demand.name, demand.revision, reason))
            holders.add(name)
            added += 1
            ready_on[name].add(key)
            disk[name] += size
            outstanding[name] += size
            pool += size
            requested += size
        if len(holders) < settings.holders:
            shortfalls.append(
                Shortfall(
                    demand.name,
                    demand.revision,
                    len(holders),
                    settings.holders,
                    _shortfall_reason(blocked, len(candidates) - added + blocked.count("sole")),
                )
            )

    desired = {
        name: tuple(sorted(w.desired.values(), key=lambda t: (t.key[0], t.key[1] or "")))
        for name, w in work.items()
    }
    in_progress = sum(1 for w in work.values() for key in w.desired if w.warming(key))
    return WarmingPlan(
        desired=desired,
        changes=tuple(sorted(changes, key=lambda c: (c.node, c.name.lower(), c.revision or ""))),
        shortfalls=tuple(shortfalls),
        in_flight_bytes=pool,
        requested_bytes=requested,
        in_progress=in_progress,
        ready_holders={key: len(names) for key, names in sorted(ready.items(), key=_key_order)},
    )


def _key_order(item: tuple[ModelKey, object]) -> tuple[str, str]:
    return (item[0][0], item[0][1] or "")


def _working(node: WarmingNode, settings: WarmingSettings) -> _Node:
    budget = node.disk_budget_bytes
    if settings.node_disk_budget_bytes is not None:
        budget = min(budget, settings.node_disk_budget_bytes)
    desired: dict[ModelKey, WarmingTarget] = {}
    for target in node.desired:
        desired.setdefault(target.key, target)  # the first of duplicates, as the spec reader
    progress = {copy.key: copy for copy in node.progress}
    sizes: dict[ModelKey, int] = {}
    for model, copies in node.state.models.items():
        for copy in copies:
            if copy.size_bytes is not None:
                sizes[(model, copy.revision)] = max(
                    copy.size_bytes, sizes.get((model, copy.revision), 0)
                )
    return _Node(node, budget, desired, progress, sizes)


def _withdraw(
    work: Mapping[str, _Node],
    by_key: Mapping[ModelKey, ModelDemand],
    last_active: Mapping[ModelKey, float],
    now: float,
    settings: WarmingSettings,
    changes: list[WarmingChange],
) -> None:
    for name, w in work.items():
        for key, target in list(w.desired.items()):
            demand = by_key.get(key)
            if demand is not None and demand.active:
                continue
            seen = demand.last_active if demand is not None else last_active.get(key)
            if seen is not None:
                idle = now - seen
                if idle < settings.hold_down_s:
                    continue
                reason = (
                    f"{target.name}: no demand for {idle:.0f}s "
                    f"(hold-down {settings.hold_down_s:.0f}s)"
                )
            else:
                reason = f"{target.name}: no demand"
            del w.desired[key]
            changes.append(
                WarmingChange(
                    name, "withdraw", target.name, target.revision, clip(reason, _MAX_REASON - 1)
                )
            )


def _demand_size(key: ModelKey, by_key: Mapping[ModelKey, ModelDemand]) -> int:
    demand = by_key.get(key)
    return demand.size_bytes if demand is not None else 0


def _outstanding(w: _Node, by_key: Mapping[ModelKey, ModelDemand]) -> int:
    return sum(w.outstanding(key, _demand_size(key, by_key)) for key in w.desired if w.warming(key))


def _disk_use(w: _Node, by_key: Mapping[ModelKey, ModelDemand]) -> int:
    """Bytes the node is to keep: every model asked of it, and the models in demand it holds
    (their copies are what warming is for); other copies are LRU eviction candidates."""
    keys = set(w.desired)
    keys.update(k for k, d in by_key.items() if d.active and w.holds(k))
    total = 0
    for key in keys:
        target = w.desired.get(key)
        if key in w.sizes:
            total += w.sizes[key]
        elif target is not None and target.size_bytes is not None:
            total += target.size_bytes
        else:
            total += _demand_size(key, by_key)
    return total


_REASONS = {
    "sole": "{n} the only ready holder of another model in demand",
    "entries": "{n} already asked for the most models the spec allows",
    "disk": "{n} without room in the disk budget",
    "node-cap": "{n} at the cap of bytes in flight per node",
}


def _shortfall_reason(blocked: Sequence[str], left: int) -> str:
    """Why a model is short of holders, given the fitting nodes without it that were not
    asked (``left``): every obstacle met, counted, in a fixed order (the same message for
    the same state)."""
    if left == 0:
        return "no other node that the agent fetches to could host its next replica"
    parts = [text.format(n=blocked.count(b)) for b, text in _REASONS.items() if b in blocked]
    if "pool-cap" in blocked:
        parts.append("the pool is at its cap of bytes in flight")
    return f"{left} more fitting node(s), but: " + "; ".join(parts)


class _FitMemo:
    """The placement core's verdict per (pod demand, node shape): nodes of equal shape get
    equal verdicts (NodeState.shape), and a pool has few shapes."""

    def __init__(self) -> None:
        self._seen: dict[tuple[object, ...], tuple[bool, float]] = {}

    def evaluation(self, pod: PodDemand, node: NodeState) -> tuple[bool, float]:
        """(fits, right-size) of ``pod`` on ``node``."""
        key = (pod.key, node.shape)
        found = self._seen.get(key)
        if found is None:
            verdict = evaluate(pod, node)
            found = (verdict.fits, verdict.right_size)
            self._seen[key] = found
        return found

    def fits(self, pod: PodDemand, node: NodeState) -> bool:
        return self.evaluation(pod, node)[0]
