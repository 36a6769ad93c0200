"""ClusterStore: the in-memory cluster view behind the extender, composed of its parts.

A thin facade, so that every user (the extender app, offline mode, the simulator, the command
modules) has one object to feed and to ask. The work is done by the parts, each cut where
kube-scheduler cuts its own scheduler cache:

* `nodecache.NodeCache`: objects per kind, per-node facts, pods by node, assumed pods
  (assume / forget / confirm), one NodeState per node.
* `memo.EvaluationMemo`: (kind of pod, node shape, residency tier) -> NodeEvaluation.
* `pending.PendingPods`: the pods filter saw (bind gets only names; gangs need every member).
* `gang_coordinator.GangCoordinator`: gang plans and reservations; returns effects.
* `bind_coordinator.BindCoordinator`: the bind transaction (in-flight calls, retries,
  rollback).
* `effects`: the API writes the gang coordinator asks for, run after the lock is released,
  off the verb (`EffectWriter` in cluster mode).

Presentation (explain rows, wire JSON) is the extender's (scheduler.extender.explain and
.wire). Offline mode feeds the store once from a file; cluster mode from watches.

Concurrency: one re-entrant lock (`NodeCache.lock`) guards the state. No method holds it
across API I/O: binds call the API outside it, and reservation writes are effects submitted
after it is released.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from scheduler.clock import now
from scheduler.core.assignment import GpuPrediction
from scheduler.core.demand import PodDemand, parse_demand
from scheduler.core.gang import (
    DEFAULT_TOPOLOGY_KEYS,
    NVLINK_DOMAIN_LABEL,
    kv_peer_distance,
    kv_peer_term,
)
from scheduler.core.node import NodeState
from scheduler.core.placement import DEFAULT_SCORING, NodeEvaluation, ScoringConfig
from scheduler.core.scoring import ScoredNode, blend_locality, relative_scores, score_table
from scheduler.models.catalog import Catalog
from scheduler.state.bind_coordinator import BindCoordinator
from scheduler.state.contracts import (
    Binder,
    BindError,
    BindResult,
    FilterResult,
    InMemoryBinder,
    StoreObserver,
)
from scheduler.state.effects import Effect, EffectRunner, InlineEffects, RecordPlacement
from scheduler.state.gang_coordinator import GangCoordinator
from scheduler.state.gangs import Reserved
from scheduler.state.memo import UNKNOWN_NODE, EvaluationMemo
from scheduler.state.nodecache import KINDS, NodeCache
from scheduler.state.objects import TERMINAL_PHASES, PodRecord, pod_key
from scheduler.state.offline import ClusterObjects
from scheduler.state.pending import PendingPods
from scheduler.state.podgroups import KIND as POD_GROUP
from scheduler.state.podgroups import PodGroups
from scheduler.state.quarantine import Quarantine

log = logging.getLogger(__name__)

__all__ = [
    "UNKNOWN_NODE",
    "BindError",
    "BindResult",
    "Binder",
    "ClusterStore",
    "FilterResult",
    "InMemoryBinder",
    "StoreObserver",
]


class ClusterStore:
    def __init__(
        self,
        catalog: Catalog,
        scoring: ScoringConfig = DEFAULT_SCORING,
        binder: Binder | None = None,
        memo_pods: int = 4096,
        max_shapes: int = 1_000_000,
        pending_pods: int = 10_000,
        gang_ttl_s: float = 300.0,
        gang_absent_ttl_s: float = 600.0,
        clock: Callable[[], dt.datetime] = now,
        bind_retry_wait_s: float = 2.0,
        effects: EffectRunner | None = None,
    ) -> None:
        """gang_ttl_s: how long a gang plan holds its GPUs for members that have not bound;
        after that it is released and the group planned again. gang_absent_ttl_s: how long a
        plan holds GPUs for members that do not exist yet (a leader-first controller creates
        them once the leader is scheduled or Ready: room for an image pull, a weight load and
        a readiness probe). bind_retry_wait_s: how long a
        retried bind waits for an earlier bind of the same pod that is still under way
        (well inside kube-scheduler's 5 s extender timeout). effects: where reservation
        writes go (default: carried out inline, after the lock is released; cluster mode
        passes an `effects.EffectWriter` over the same binder)."""
        self.catalog = catalog
        self.scoring = scoring
        self.clock = clock
        self.gang_ttl_s = gang_ttl_s
        self.bind_retry_wait_s = bind_retry_wait_s
        self.binder: Binder = binder or InMemoryBinder()
        self.effects: EffectRunner = effects or InlineEffects(self.binder)
        self._lock = threading.RLock()
        # Objects that could not be understood (see scheduler.state.quarantine).
        self.quarantine = Quarantine()
        self.memo = EvaluationMemo(scoring, self._lock, memo_pods, max_shapes)
        self.cache = NodeCache(catalog, self.memo, self._lock, self.quarantine, pending_pods)
        self.pending = PendingPods(self._lock, pending_pods)
        # PodGroup minMember by `namespace/name` (the size of pod-group members without one).
        self.pod_groups = PodGroups()
        self.gangs = GangCoordinator(
            self.cache,
            self.pending,
            catalog,
            scoring,
            clock,
            gang_ttl_s,
            gang_absent_ttl_s,
            pod_groups=self.pod_groups,
        )
        self.cache.reserved_on = self.gangs.records_on
        self.cache.on_put = self.gangs.track
        self.binds = BindCoordinator(
            self.cache,
            self.gangs,
            self.pending,
            self.binder,
            catalog,
            scoring,
            bind_retry_wait_s,
            pod_groups=self.pod_groups,
        )
        self.cache.learn = self.binds.learn
        # Told of every placement kvsched learned from the watch and records on the pod (the
        # extender's placement events); called after the lock is released.
        self.placement_listeners: list[Callable[[str, str, str, BindResult], None]] = []
        self.synced = False
        # Kinds whose view is not in sync now, and why (never listed, a relist failed); the
        # informers keep it (`sync_problem`), /readyz reports it.
        self.sync_problems: dict[str, str] = {}

    @property
    def observer(self) -> StoreObserver | None:
        return self.cache.observer

    @observer.setter
    def observer(self, observer: StoreObserver | None) -> None:
        self.cache.observer = observer

    @property
    def prediction_mismatches(self) -> int:
        return self.cache.prediction_mismatches

    def sync_problem(self, kind: str, problem: str | None) -> None:
        """The informer of `kind` reports its view out of sync (`problem`) or in sync (None)."""
        with self._lock:
            if problem is None:
                self.sync_problems.pop(kind, None)
            else:
                self.sync_problems[kind] = problem

    def _submit(self, effects: list[Effect]) -> None:
        """Hand effects over; called only after the lock is released."""
        if not effects:
            return
        writes: list[Effect] = []
        for effect in effects:
            if isinstance(effect, RecordPlacement):
                result = BindResult(effect.prediction, effect.placement, already_bound=False)
                for listener in self.placement_listeners:
                    listener(effect.namespace, effect.name, effect.uid, result)
                if not effect.annotate:
                    continue
            writes.append(effect)
        if writes:
            self.effects.submit(writes)

    # ---- feeding -------------------------------------------------------------------------

    def load(self, objects: ClusterObjects) -> None:
        """Offline mode: replace everything with the objects of a cluster file."""
        with self._lock:
            self.replace_kind(POD_GROUP, objects.pod_groups)
            self.replace_kind("NodeInventory", objects.inventories, rebuild=False)
            self.replace_kind("Pod", objects.pods, rebuild=False)
            self.replace_kind("Node", objects.nodes)
            self.synced = True

    def replace_kind(
        self, kind: str, items: Iterable[Mapping[str, Any]], rebuild: bool = True
    ) -> None:
        """All objects of one kind, as a (re-)list returns them (see NodeCache.replace_kind)."""
        if kind == POD_GROUP:
            with self._lock:
                self.pod_groups.replace(items)
            return
        self.cache.replace_kind(kind, items, rebuild)

    def upsert(self, kind: str, obj: Mapping[str, Any]) -> None:
        """An ADDED or MODIFIED object from a watch."""
        if kind == "Pod":
            self.upsert_pod(obj)
        elif kind == POD_GROUP:
            with self._lock:
                self.pod_groups.put(obj)
        elif kind in KINDS:
            self.cache.put_node(kind, obj)
        else:
            raise ValueError(f"kvsched does not track {kind}")

    def delete(self, kind: str, obj: Mapping[str, Any]) -> None:
        """A DELETED object from a watch."""
        if kind == "Pod":
            key = pod_key(obj)
            if key is not None:
                self.quarantine.clear("Pod", key)
                self.delete_pod(key)
            return
        if kind == POD_GROUP:
            with self._lock:
                self.pod_groups.remove(obj)
            return
        if kind not in KINDS:
            raise ValueError(f"kvsched does not track {kind}")
        name = self.cache.name_of(kind, obj)
        if name is None:
            return
        self.quarantine.clear(kind, name)
        self.cache.remove_node(kind, name)

    def upsert_node(self, node: Mapping[str, Any]) -> None:
        self.cache.put_node("Node", node)

    def delete_node(self, name: str) -> None:
        self.cache.remove_node("Node", name)

    def upsert_inventory(self, inventory: Mapping[str, Any]) -> None:
        self.cache.put_node("NodeInventory", inventory)

    def delete_inventory(self, name: str) -> None:
        self.cache.remove_node("NodeInventory", name)

    def upsert_pod(self, pod: Mapping[str, Any]) -> None:
        self._submit(self.cache.upsert_pod(pod))

    def delete_pod(self, uid: str) -> None:
        with self._lock:
            # A deleted pod must not come back as a gang member through the filter's memory.
            self.pending.forget(uid)
            effects = self.gangs.pod_deleted(uid)
            self.cache.remove_pod(uid)
        self._submit(effects)

    # ---- queries -------------------------------------------------------------------------

    def node(self, name: str) -> NodeState | None:
        return self.cache.node(name)

    def node_names(self) -> list[str]:
        return self.cache.node_names()

    def pod(self, uid: str) -> PodRecord | None:
        return self.cache.pods.get(uid)

    def pod_object(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The pod as last fed to the store (file or watch), for explain."""
        return self.cache.pod_object(namespace, name)

    def reservation(self, uid: str) -> Reserved | None:
        """The GPUs a gang plan holds for the member `uid`, if any."""
        return self.gangs.reservation(uid)

    def reservation_count(self) -> int:
        """GPU reservations of gang plans still waiting for their members to bind."""
        return self.gangs.reservation_count()

    def allocations(self) -> dict[str, GpuPrediction]:
        """Pod ref -> prediction, for every pod holding indexed GPUs."""
        return {
            pod.ref: pod.prediction
            for pod in self.cache.pods.values()
            if pod.holds_gpus and pod.prediction is not None
        }

    def demand(self, pod: Mapping[str, Any]) -> PodDemand:
        """The pod's demand, remembered for bind and gang planning."""
        demand = parse_demand(pod, self.catalog, self.pod_groups)
        self.pending.remember(demand, pod)
        return demand

    @property
    def lock(self) -> threading.RLock:
        """The store's one lock (re-entrant). The extender's event loop only ever tries it
        (`acquire(blocking=False)`), never waits on it."""
        return self._lock

    def is_lookup(self, demand: PodDemand, names: Sequence[str]) -> bool:
        """Whether filter/prioritize of `demand` over `names` is bounded work: no gang to plan
        and every node's evaluation already memoised (lock held)."""
        if demand.gang is not None and demand.error is None:
            return False
        return self.memo.covers(demand, names)

    def evaluations(
        self, demand: PodDemand, names: Sequence[str], extra: Mapping[str, NodeState] | None = None
    ) -> list[NodeEvaluation]:
        """Evaluate `demand` on each named node (same order); `extra` supplies nodes the store
        lacks (full-Nodes requests). The hot path: see scheduler.state.memo."""
        return self.memo.evaluations(demand, names, self.cache.entries, extra)

    # ---- verbs ---------------------------------------------------------------------------

    def filter(
        self, demand: PodDemand, names: Sequence[str], extra: Mapping[str, NodeState] | None = None
    ) -> FilterResult:
        if demand.gang is not None and demand.error is None and demand.gpus > 0:
            with self._lock:
                result, effects = self.gangs.filter(demand, names)
            self._submit(effects)
            return result
        if self.gangs.active():
            with self._lock:
                effects = self.gangs.expire()
            self._submit(effects)
        evaluations = self.evaluations(demand, names, extra)
        passed: list[str] = []
        failed: dict[str, str] = {}
        unresolvable: dict[str, str] = {}
        keep = passed.append
        for name, e in zip(names, evaluations, strict=True):
            if e.fits:
                keep(name)
            elif e.unresolvable:
                unresolvable[name] = e.reason
            else:
                failed[name] = e.reason
        rejections: Counter[str] = Counter()
        if failed or unresolvable:
            # Equal evaluations share one object and one reason string: count reasons (in C)
            # and map each to its evaluation's reason word, instead of a pass per node.
            word = {e.reason: e.rejection for e in set(evaluations) if not e.fits}
            for reason, count in (
                Counter(failed.values()) + Counter(unresolvable.values())
            ).items():
                rejections[word[reason]] += count
        return FilterResult(passed, failed, unresolvable, rejections)

    def prioritize(
        self, demand: PodDemand, names: Sequence[str], extra: Mapping[str, NodeState] | None = None
    ) -> list[ScoredNode]:
        """Scores with their terms, for explain and tests."""
        pairs = zip(names, self.evaluations(demand, names, extra), strict=True)
        return relative_scores(pairs, self.scoring)

    def prioritize_scores(
        self, demand: PodDemand, names: Sequence[str], extra: Mapping[str, NodeState] | None = None
    ) -> list[int]:
        """Scores only, in the order of `names`: the extender's prioritize, no per-node objects."""
        if demand.gang is not None and demand.error is None:
            reserved = self.gangs.reservation(demand.uid)
            if reserved is not None:
                return [10 if n == reserved.reservation.node else 0 for n in names]
        evaluations = self.evaluations(demand, names, extra)
        score_of = dict.fromkeys(map(id, evaluations), 0)
        score_of.update((key, s.score) for key, s in score_table(evaluations, self.scoring).items())
        scores = list(map(score_of.__getitem__, map(id, evaluations)))
        terms = self.kv_peer_terms(demand, names)
        if terms is None:
            return scores
        fits = [e.fits for e in evaluations]
        blended = blend_locality(scores, terms, self.scoring.kv_peer_weight)
        return [b if ok else 0 for b, ok in zip(blended, fits, strict=True)]

    def kv_peer_terms(self, demand: PodDemand, names: Sequence[str]) -> list[float] | None:
        """KV-transfer locality per node for a decode pod whose prefill peers run somewhere
        (pods with kvsched.io/role=prefill whose group or model is the pod's kv-peer); None
        when that does not apply."""
        if demand.role != "decode" or not demand.kv_peer:
            return None
        entries = self.cache.entries
        peer = demand.kv_peer.strip().lower()
        peer_gang = f"{demand.namespace}/{demand.kv_peer.strip()}"
        peer_nodes = [
            entries[r.node].state
            for r in list(self.cache.pods.values())
            if r.role == "prefill"
            and r.node in entries
            and r.phase not in TERMINAL_PHASES
            and (r.gang == peer_gang or (r.model or "").lower() == peer)
        ]
        if not peer_nodes:
            return None
        states = [entries[n].state for n in names if n in entries]
        # The NVLink domain is distance 1 already; "same rack" is the next wider key.
        key = demand.topology_key or next(
            (
                k
                for k in DEFAULT_TOPOLOGY_KEYS
                if k != NVLINK_DOMAIN_LABEL and any(k in state.labels for state in states)
            ),
            None,
        )
        return [
            kv_peer_term(kv_peer_distance(entries[n].state, peer_nodes, key))
            if n in entries
            else 0.0
            for n in names
        ]

    def bind(self, namespace: str, name: str, uid: str, node_name: str) -> BindResult:
        """Choose the pod's GPUs on `node_name`, make the bind durable, record it (see
        scheduler.state.bind_coordinator). Waits on the API server: call it from a worker
        thread."""
        return self.binds.bind(namespace, name, uid, node_name)
