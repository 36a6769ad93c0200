"""The evaluation memo: (kind of pod, node shape, residency tier) -> NodeEvaluation.

`evaluate(demand, node)` is a pure function of two immutable values, and thousands of nodes
look alike to it (same topology, same free-GPU mask, same tier of the pod's model), so the
memo keeps one evaluation per equivalence class. After the first pod of a kind, a request
over thousands of nodes costs one dictionary lookup per node.

Two levels per kind of pod (demand key; an LRU over kinds, plain dicts inside):

* `by_shape`: (node shape id << 3 | residency tier + 1) -> evaluation. Never stale: the key
  holds every input of the evaluation.
* `by_name`: node name -> evaluation, the hot path's shortcut; the node cache invalidates it
  per node (`forget`) whenever it rebuilds that node.

Shapes are interned to small integers (`entry`); they only accumulate (every free-GPU mask a
node ever had), so past `max_shapes` the interning and every table start afresh.

Thread safety: the LRU reorders on every read and the node cache invalidates from watch
threads, so both take the store's lock (passed in); the per-kind dicts are read without it
(single dict operations are atomic under the GIL, and a stale `by_name` miss only falls
through to `by_shape`).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass

from cachetools import LRUCache

from scheduler.core.demand import PodDemand
from scheduler.core.node import NodeState
from scheduler.core.placement import NodeEvaluation, ScoringConfig, demand_rejection, evaluate

__all__ = ["UNKNOWN_NODE", "Entry", "EvaluationMemo"]

UNKNOWN_NODE = NodeEvaluation(
    False,
    "node unknown to kvsched (not in its cluster view yet)",
    unresolvable=False,
    rejection="unknown-node",
)


@dataclass(frozen=True, slots=True)
class Entry:
    """A node's state with what the hot path needs precomputed: its interned shape id and, per
    cached model, the best residency tier + 1 (0 = not cached)."""

    state: NodeState
    shape_id: int
    tiers: dict[str, int]


@dataclass(frozen=True, slots=True)
class _DemandMemo:
    """Evaluations of one kind of pod (one demand key); see the module docstring."""

    by_shape: dict[int, NodeEvaluation]
    by_name: dict[str, NodeEvaluation]


class EvaluationMemo:
    def __init__(
        self,
        scoring: ScoringConfig,
        lock: threading.RLock,
        memo_pods: int = 4096,
        max_shapes: int = 1_000_000,
    ) -> None:
        self.scoring = scoring
        self._lock = lock
        self._shape_ids: dict[tuple[object, ...], int] = {}
        self._max_shapes = max_shapes
        self._tables: LRUCache[tuple[object, ...], _DemandMemo] = LRUCache(memo_pods)

    # ---- node entries --------------------------------------------------------------------

    def entry(self, state: NodeState, others: MutableMapping[str, Entry]) -> Entry:
        """`state` with its interned shape. Called with the store's lock held; when interning
        starts afresh, the entries in `others` (the node cache's) are re-interned in place."""
        shape_id = self._shape_ids.get(state.shape)
        if shape_id is None:
            if len(self._shape_ids) >= self._max_shapes:
                # Start afresh rather than grow without bound; evaluations are recomputed on
                # demand.
                self._shape_ids.clear()
                self._tables.clear()
                for name, old in list(others.items()):
                    others[name] = self.entry(old.state, others)
            shape_id = self._shape_ids[state.shape] = len(self._shape_ids)
        tiers: dict[str, int] = {}
        for model, copies in state.models.items():
            tiers[model] = max(int(c.tier) for c in copies) + 1
        return Entry(state, shape_id, tiers)

    def forget(self, name: str) -> None:
        """The node changed: drop its by-name shortcuts (store lock held)."""
        for table in self._tables.values():
            table.by_name.pop(name, None)

    def forget_names(self) -> None:
        """Every node changed (a relist): drop every by-name shortcut (store lock held)."""
        for table in self._tables.values():
            table.by_name.clear()

    # ---- the hot path --------------------------------------------------------------------

    def covers(self, demand: PodDemand, names: Sequence[str], slack: int = 32) -> bool:
        """Whether evaluating `demand` on `names` is only lookups: every node but at most
        `slack` already has this kind of pod's evaluation by name (store lock held). The
        extender answers such requests on its event loop and sends the rest to threads."""
        if demand_rejection(demand) is not None:
            return True
        table = self._tables.get(demand.key)
        if table is None:
            return False
        known = table.by_name
        if len(known) + slack < len(names):
            return False
        return len(names) - sum(map(known.__contains__, names)) <= slack

    def evaluations(
        self,
        demand: PodDemand,
        names: Sequence[str],
        entries: MutableMapping[str, Entry],
        extra: Mapping[str, NodeState] | None = None,
    ) -> list[NodeEvaluation]:
        """Evaluate `demand` on each named node (same order); `extra` supplies nodes the cache
        lacks (full-Nodes requests), which are evaluated but never remembered by name.
        `entries` is the node cache's (interning a sent node may re-intern them all).

        Once a kind of pod has been seen, each node costs one dict lookup (`by_name`, done in
        C by `map`); only nodes that changed since fall through to the per-shape table, and
        only new shapes reach the core.
        """
        rejection = demand_rejection(demand)
        if rejection is not None:
            return [rejection] * len(names)
        with self._lock:
            table = self._tables.get(demand.key)
            if table is None:
                table = self._tables[demand.key] = _DemandMemo({}, {})
        result = list(map(table.by_name.get, names))
        if None not in result:
            return result  # type: ignore[return-value]
        model, revision = demand.model, demand.revision
        for position, name in enumerate(names):
            if result[position] is not None:
                continue
            entry = entries.get(name)
            known = entry is not None
            if entry is None:
                state = extra.get(name) if extra else None
                if state is None:
                    result[position] = UNKNOWN_NODE
                    continue
                with self._lock:
                    entry = self.entry(state, entries)
            if model is None:
                key = entry.shape_id << 3
            elif revision is None:
                key = (entry.shape_id << 3) | entry.tiers.get(model, 0)
            else:
                copy = entry.state.residency(model, revision)
                key = (entry.shape_id << 3) | (0 if copy is None else int(copy.tier) + 1)
            evaluation = table.by_shape.get(key)
            if evaluation is None:
                evaluation = table.by_shape[key] = evaluate(demand, entry.state, self.scoring)
            if known:
                table.by_name[name] = evaluation
            result[position] = evaluation
        return result  # type: ignore[return-value]
