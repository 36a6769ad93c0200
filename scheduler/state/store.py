"""ClusterStore: the in-memory cluster view behind the extender, and the memo that keeps it fast.

The store keeps the raw objects it was fed (Nodes, NodeInventories, Pods), derives one
NodeState per node from them (scheduler.state.objects), and answers filter / prioritize /
bind / explain by calling the pure core. Offline mode feeds it once from a file; cluster mode
feeds it from watches. Either way, a change to a node's objects rebuilds that node's state.

Evaluations are memoised on (pod demand, node shape, residency tier of the pod's model): nodes
that look alike to the core share one evaluation, so a request over thousands of nodes costs
one dictionary lookup per node after the first pod of a kind.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cachetools import LRUCache

from scheduler.core.assignment import GpuPrediction, GpuReservation, uuids_for
from scheduler.core.demand import PodDemand, parse_demand
from scheduler.core.gang import (
    DEFAULT_TOPOLOGY_KEYS,
    NVLINK_DOMAIN_LABEL,
    GangFailure,
    GangMember,
    kv_peer_distance,
    kv_peer_term,
    plan_gang,
    topology_key_for,
)
from scheduler.core.node import NodeState
from scheduler.core.placement import (
    DEFAULT_SCORING,
    NodeEvaluation,
    ScoringConfig,
    demand_rejection,
    evaluate,
)
from scheduler.core.scoring import ScoredNode, blend_locality, relative_scores, score_table
from scheduler.inventory.status import now
from scheduler.models.catalog import Catalog
from scheduler.state.gangs import GangBook, Reserved
from scheduler.state.objects import (
    TERMINAL_PHASES,
    NodeFacts,
    PodRecord,
    controller_uid,
    gang_identity,
    gang_key,
    node_facts,
    node_state_from,
    pod_key,
    pod_record,
    read_pod,
)
from scheduler.state.offline import ClusterObjects
from scheduler.state.quarantine import UNREADABLE, Problem, Quarantine

log = logging.getLogger(__name__)

UNKNOWN_NODE = NodeEvaluation(
    False,
    "node unknown to kvsched (not in its cluster view yet)",
    unresolvable=False,
    rejection="unknown-node",
)


class BindError(RuntimeError):
    """A bind that must not happen (the node no longer fits, the pod was never seen...)."""


class Binder(Protocol):
    """Makes binds and gang reservations durable. Offline mode keeps them in memory; cluster
    mode posts pods/binding and annotates pods."""

    def bind(
        self, pod: PodRecord, assignment: GpuPrediction, placement: str
    ) -> GpuPrediction | None:
        """Bind `pod` with `assignment`. Returns None, or, when the API server had bound the
        pod already (an earlier call that went through), the GPUs that binding recorded."""
        ...

    def reserve(self, namespace: str, name: str, reservation: GpuReservation | None) -> None:
        """Record (or with None, clear) a gang member's reservation on the member pod."""
        ...


class StoreObserver(Protocol):
    """Told about what the store learns as it rebuilds nodes (the extender's metrics)."""

    def prediction_mismatch(self, node: str, pod: str) -> None:
        """The kubelet gave `pod` other GPUs than kvsched predicted (counted once per pod and
        GPU set)."""
        ...


class InMemoryBinder:
    """Offline mode: the store's own record is the only record."""

    def bind(
        self, pod: PodRecord, assignment: GpuPrediction, placement: str
    ) -> GpuPrediction | None:
        log.info("bound %s to %s gpus=%s (%s)", pod.ref, pod.node, assignment.indices, placement)
        return None

    def reserve(self, namespace: str, name: str, reservation: GpuReservation | None) -> None:
        pass


@dataclass(frozen=True, slots=True)
class FilterResult:
    passed: list[str]
    failed: dict[str, str]
    unresolvable: dict[str, str]
    # Rejected nodes per NodeEvaluation.rejection word (for metrics).
    rejections: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BindResult:
    assignment: GpuPrediction
    placement: str
    already_bound: bool


@dataclass(frozen=True, slots=True)
class _BindCall:
    """A bind waiting on the API server; `done` is set when it has succeeded or failed."""

    done: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True, slots=True)
class _DemandMemo:
    """Evaluations of one kind of pod (one demand key).

    by_shape: (node shape id << 3 | residency tier + 1) -> evaluation; never stale, because
    the key holds every input of the evaluation.
    by_name: node name -> evaluation; a shortcut that `_rebuild` invalidates per node.
    """

    by_shape: dict[int, NodeEvaluation]
    by_name: dict[str, NodeEvaluation]


@dataclass(frozen=True, slots=True)
class _Entry:
    """A node's state with what the hot path needs precomputed: its interned shape id and, per
    cached model, the best residency tier + 1 (0 = not cached)."""

    state: NodeState
    shape_id: int
    tiers: dict[str, int]


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
        clock: Callable[[], dt.datetime] = now,
        bind_retry_wait_s: float = 2.0,
    ) -> None:
        """gang_ttl_s: how long a gang plan holds its GPUs for members that have not bound;
        after that it is released and the group planned again. bind_retry_wait_s: how long a
        retried bind waits for an earlier bind of the same pod that is still under way
        (well inside kube-scheduler's 5 s extender timeout)."""
        self.bind_retry_wait_s = bind_retry_wait_s
        self.catalog = catalog
        self.gang_ttl_s = gang_ttl_s
        self.clock = clock
        self._gangs = GangBook(clock)
        self.scoring = scoring
        self.binder: Binder = binder or InMemoryBinder()
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        self._node_objects: dict[str, Mapping[str, Any]] = {}
        self._inventories: dict[str, Mapping[str, Any]] = {}
        self._pods: dict[str, PodRecord] = {}
        # Pods we bound whose binding the watch has not shown yet (see _put_pod).
        self._assumed: dict[str, PodRecord] = {}
        # Per node: its Node and NodeInventory objects and the facts parsed from them (None:
        # the Node cannot be understood; it is quarantined and not offered).
        self._facts: dict[
            str, tuple[Mapping[str, Any], Mapping[str, Any] | None, NodeFacts | None]
        ] = {}
        # Binds waiting on the API server, by pod UID (see bind).
        self._in_flight: dict[str, _BindCall] = {}
        self._pod_objects: dict[tuple[str, str], Mapping[str, Any]] = {}
        self._pods_by_node: dict[str, dict[str, PodRecord]] = {}
        self._shape_ids: dict[tuple[object, ...], int] = {}
        self._max_shapes = max_shapes
        # One table per kind of pod (demand key); LRU over kinds, plain dicts inside.
        self._memo: LRUCache[tuple[object, ...], _DemandMemo] = LRUCache(memo_pods)
        # Pods seen by filter/prioritize, by UID: bind gets only names and must re-evaluate.
        self._seen: LRUCache[str, PodDemand] = LRUCache(pending_pods)
        # Their groups' identities (gang key and controller), by UID.
        self._seen_gang_ids: LRUCache[str, str] = LRUCache(pending_pods)
        # Predictions the kubelet contradicted, each counted once: (node, pod, actual GPUs).
        self._mismatches_seen: LRUCache[tuple[str, str, tuple[int, ...]], bool] = LRUCache(
            pending_pods
        )
        self.prediction_mismatches = 0
        self.observer: StoreObserver | None = None
        self.synced = False
        # Objects that could not be understood (see scheduler.state.quarantine).
        self.quarantine = Quarantine()
        # Kinds whose view is not in sync now, and why (never listed, a relist failed); the
        # informers keep it (`sync_problem`), /readyz reports it.
        self.sync_problems: dict[str, str] = {}

    def sync_problem(self, kind: str, problem: str | None) -> None:
        """The informer of `kind` reports its view out of sync (`problem`) or in sync (None)."""
        with self._lock:
            if problem is None:
                self.sync_problems.pop(kind, None)
            else:
                self.sync_problems[kind] = problem

    # ---- feeding -------------------------------------------------------------------------

    def load(self, objects: ClusterObjects) -> None:
        """Offline mode: replace everything with the objects of a cluster file."""
        with self._lock:
            self.replace_kind("NodeInventory", objects.inventories, rebuild=False)
            self.replace_kind("Pod", objects.pods, rebuild=False)
            self.replace_kind("Node", objects.nodes)
            self.synced = True

    def replace_kind(
        self, kind: str, items: Iterable[Mapping[str, Any]], rebuild: bool = True
    ) -> None:
        """All objects of one kind, as a (re-)list returns them.

        Atomic: every object is converted first, aside, and the view is replaced only once
        the whole list has arrived and been converted; an object that cannot be converted is
        quarantined, never the end of the relist."""
        if kind not in ("Node", "NodeInventory", "Pod"):
            raise ValueError(f"kvsched does not track {kind}")
        named: dict[str, Mapping[str, Any]] = {}
        pods: list[tuple[PodRecord, Mapping[str, Any]]] = []
        for obj in items:
            if kind == "Pod":
                converted = self._convert_pod(obj)
                if converted is not None:
                    pods.append(converted)
            else:
                name = self._name_of(kind, obj)
                if name is not None:
                    named[name] = obj
        with self._lock:
            if kind == "Node":
                self._node_objects = named
            elif kind == "NodeInventory":
                self._inventories = named
            else:
                self.quarantine.retain("Pod", {record.uid for record, _ in pods})
                self._pods, self._pod_objects, self._pods_by_node = {}, {}, {}
                for record, pod in pods:
                    self._put_pod(record, pod)
                for uid, assumed in list(self._assumed.items()):
                    if uid not in self._pods:
                        # Listed before our bind landed, or deleted: the next watch event
                        # settles it; until then the GPUs stay taken.
                        self._put_pod(assumed)
            if rebuild:
                self._entries = {}
                for memo in self._memo.values():
                    memo.by_name.clear()
                for name in self._node_objects:
                    self._rebuild(name)

    def upsert(self, kind: str, obj: Mapping[str, Any]) -> None:
        """An ADDED or MODIFIED object from a watch."""
        if kind == "Node":
            self.upsert_node(obj)
        elif kind == "NodeInventory":
            self.upsert_inventory(obj)
        elif kind == "Pod":
            self.upsert_pod(obj)
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
        if kind not in ("Node", "NodeInventory"):
            raise ValueError(f"kvsched does not track {kind}")
        name = self._name_of(kind, obj)
        if name is None:
            return
        self.quarantine.clear(kind, name)
        if kind == "Node":
            self.delete_node(name)
        else:
            self.delete_inventory(name)

    def upsert_node(self, node: Mapping[str, Any]) -> None:
        name = self._name_of("Node", node)
        if name is None:
            return
        with self._lock:
            self._node_objects[name] = node
            self._rebuild(name)

    def delete_node(self, name: str) -> None:
        with self._lock:
            self._node_objects.pop(name, None)
            self._rebuild(name)

    def upsert_inventory(self, inventory: Mapping[str, Any]) -> None:
        name = self._name_of("NodeInventory", inventory)
        if name is None:
            return
        with self._lock:
            self._inventories[name] = inventory
            self._rebuild(name)

    def delete_inventory(self, name: str) -> None:
        with self._lock:
            self._inventories.pop(name, None)
            self._rebuild(name)

    def _name_of(self, kind: str, obj: object) -> str | None:
        """A Node's or NodeInventory's name; None (and quarantined) when it has none."""
        meta = obj.get("metadata") if isinstance(obj, Mapping) else None
        name = meta.get("name") if isinstance(meta, Mapping) else None
        if isinstance(name, str) and name:
            return name
        self.quarantine.reject(kind, "", obj, Problem(UNREADABLE, "no metadata.name"))
        return None

    def _convert_pod(self, obj: object) -> tuple[PodRecord, Mapping[str, Any]] | None:
        """The pod's record, quarantining what cannot be read (None: nothing usable)."""
        try:
            record, problem = read_pod(obj)
        except Exception as exc:
            key = pod_key(obj) or ""
            self.quarantine.reject("Pod", key, obj, Problem(UNREADABLE, str(exc)))
            return None
        assert isinstance(obj, Mapping)
        if problem is not None:
            self.quarantine.reject("Pod", record.uid, obj, problem)
        else:
            self.quarantine.clear("Pod", record.uid)
        return record, obj

    def upsert_pod(self, pod: Mapping[str, Any]) -> None:
        converted = self._convert_pod(pod)
        if converted is None:
            return  # what the store knew of it (if anything) stands
        record = converted[0]
        with self._lock:
            old = self._pods.get(record.uid)
            self._put_pod(record, pod)
            for node in {record.node, old.node if old else None} - {None}:
                assert node is not None
                self._rebuild(node)

    def delete_pod(self, uid: str) -> None:
        with self._lock:
            self._assumed.pop(uid, None)
            # A deleted pod must not come back as a gang member through the filter's memory.
            self._seen.pop(uid, None)
            self._seen_gang_ids.pop(uid, None)
            gang = self._gangs.gang_of(uid)
            known = self._pods.get(uid)
            if gang is None and known is not None and known.gang_member:
                assert known.gang_id is not None
                plan = self._gangs.plan(known.gang_id)
                # A member recreated under a new UID took over its reservation: the plan
                # stands. A pod that was no longer a member (Terminating) changes nothing.
                if plan is not None and all(r.name != known.name for r in plan.values()):
                    gang = known.gang_id
            if gang is not None and self._gangs.plan(gang) is not None:
                log.info("gang %s: member %s deleted; releasing its plan", gang, uid)
                self._release_gang(gang)
            old = self._pods.pop(uid, None)
            if old is not None:
                self._pod_objects.pop((old.namespace, old.name), None)
            if old is not None and old.node is not None:
                self._pods_by_node.get(old.node, {}).pop(uid, None)
                self._rebuild(old.node)

    def _put_pod(self, record: PodRecord, obj: Mapping[str, Any] | None = None) -> None:
        assumed = self._assumed.get(record.uid)
        if assumed is not None and record is not assumed:
            if record.node is None and record.phase not in TERMINAL_PHASES:
                # A watch event older than our bind: keep the bind, or the GPUs would look
                # free until the API server's view of the binding reaches us.
                record, obj = assumed, None
            else:
                del self._assumed[record.uid]
        self._track_reservation(record)
        if obj is not None and (record.gpus > 0 or record.model is not None):
            # Kept for explain; pods without GPUs are only counted, not stored whole.
            self._pod_objects[(record.namespace, record.name)] = obj
        old = self._pods.get(record.uid)
        if old is not None and old.node is not None:
            self._pods_by_node.get(old.node, {}).pop(record.uid, None)
        self._pods[record.uid] = record
        if record.node is not None:
            self._pods_by_node.setdefault(record.node, {})[record.uid] = record

    def _rebuild(self, name: str) -> None:
        for memo in self._memo.values():
            memo.by_name.pop(name, None)
        node = self._node_objects.get(name)
        if node is None:
            self._entries.pop(name, None)
            self._facts.pop(name, None)
            return
        pods = list(self._pods_by_node.get(name, {}).values())
        for reserved in self._gangs.records_on(name):
            holder = self._pods.get(reserved.uid)
            if holder is None or holder.node is None:
                pods.append(reserved)
        inventory = self._inventories.get(name)
        # The watch replaces an object's dict when it changes, so identity says "unchanged".
        cached = self._facts.get(name)
        if cached is not None and cached[0] is node and cached[1] is inventory:
            facts = cached[2]
        else:
            facts = self._convert_node(name, node, inventory)
            self._facts[name] = (node, inventory, facts)
        if facts is None:
            self._entries.pop(name, None)  # quarantined: not offered
            return
        state = node_state_from(facts, pods)
        self._entries[name] = self._entry(state)
        for mismatch in state.mismatches:
            key = (name, mismatch.pod, mismatch.actual)
            if key in self._mismatches_seen:
                continue
            self._mismatches_seen[key] = True
            self.prediction_mismatches += 1
            log.debug(
                "node %s: pod %s predicted on GPUs %s, the kubelet gave it %s; counting the "
                "kubelet's",
                name,
                mismatch.pod,
                list(mismatch.predicted),
                list(mismatch.actual),
            )
            if self.observer is not None:
                self.observer.prediction_mismatch(name, mismatch.pod)

    def _convert_node(
        self, name: str, node: Mapping[str, Any], inventory: Mapping[str, Any] | None
    ) -> NodeFacts | None:
        """The node's facts; an inventory that breaks them is quarantined and the node judged
        from its labels; a Node that cannot be understood is quarantined (None)."""
        try:
            facts = node_facts(node, inventory, self.catalog)
        except Exception as exc:
            failure = f"{type(exc).__name__}: {exc}"
        else:
            self.quarantine.clear("Node", name)
            if inventory is not None:
                self.quarantine.clear("NodeInventory", name)
            return facts
        if inventory is not None:
            try:
                facts = node_facts(node, None, self.catalog)
            except Exception:
                pass
            else:
                self.quarantine.reject(
                    "NodeInventory", name, inventory, Problem(UNREADABLE, failure)
                )
                self.quarantine.clear("Node", name)
                return facts
        self.quarantine.reject("Node", name, node, Problem(UNREADABLE, failure))
        return None

    # ---- queries -------------------------------------------------------------------------

    def node(self, name: str) -> NodeState | None:
        entry = self._entries.get(name)
        return entry.state if entry is not None else None

    def node_names(self) -> list[str]:
        return sorted(self._entries)

    def pod(self, uid: str) -> PodRecord | None:
        return self._pods.get(uid)

    def pod_object(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The pod as last fed to the store (file or watch), for explain."""
        return self._pod_objects.get((namespace, name))

    def demand(self, pod: Mapping[str, Any]) -> PodDemand:
        demand = parse_demand(pod, self.catalog)
        if demand.uid:
            gang_id = None
            if demand.gang is not None:
                meta = pod.get("metadata")
                owner = controller_uid(meta) if isinstance(meta, Mapping) else None
                gang_id = gang_identity(demand.gang.key, demand.gang.source, owner)
            with self._lock:  # binds run in worker threads and read it
                self._seen[demand.uid] = demand
                if gang_id is not None:
                    self._seen_gang_ids[demand.uid] = gang_id
        return demand

    def evaluations(
        self, demand: PodDemand, names: Sequence[str], extra: Mapping[str, NodeState] | None = None
    ) -> list[NodeEvaluation]:
        """Evaluate `demand` on each named node (same order); `extra` supplies nodes the store
        lacks (full-Nodes requests).

        This is the hot path. Once a kind of pod has been seen, each node costs one dict lookup
        (`by_name`, done in C by `map`); only nodes that changed since fall through to the
        per-shape table, and only new shapes reach the core.
        """
        rejection = demand_rejection(demand)
        if rejection is not None:
            return [rejection] * len(names)
        with self._lock:  # the LRU reorders on every read; watch threads invalidate it
            memo = self._memo_for(demand)
        result = list(map(memo.by_name.get, names))
        if None not in result:
            return result  # type: ignore[return-value]
        model, revision = demand.model, demand.revision
        for position, name in enumerate(names):
            if result[position] is not None:
                continue
            entry = self._entries.get(name)
            known = entry is not None
            if entry is None:
                state = extra.get(name) if extra else None
                if state is None:
                    result[position] = UNKNOWN_NODE
                    continue
                entry = self._entry(state)
            if model is None:
                key = entry.shape_id << 3
            elif revision is None:
                key = (entry.shape_id << 3) | entry.tiers.get(model, 0)
            else:
                copy = entry.state.residency(model, revision)
                key = (entry.shape_id << 3) | (0 if copy is None else int(copy.tier) + 1)
            evaluation = memo.by_shape.get(key)
            if evaluation is None:
                evaluation = memo.by_shape[key] = evaluate(demand, entry.state, self.scoring)
            if known:
                memo.by_name[name] = evaluation
            result[position] = evaluation
        return result  # type: ignore[return-value]

    def _memo_for(self, demand: PodDemand) -> _DemandMemo:
        memo = self._memo.get(demand.key)
        if memo is None:
            memo = self._memo[demand.key] = _DemandMemo({}, {})
        return memo

    def _entry(self, state: NodeState) -> _Entry:
        shape_id = self._shape_ids.get(state.shape)
        if shape_id is None:
            if len(self._shape_ids) >= self._max_shapes:
                # Shapes only accumulate (every free-GPU mask a node ever had); start afresh
                # rather than grow without bound. Evaluations are recomputed on demand.
                self._shape_ids.clear()
                self._memo.clear()
                for name, old in list(self._entries.items()):
                    self._entries[name] = self._entry(old.state)
            shape_id = self._shape_ids[state.shape] = len(self._shape_ids)
        tiers: dict[str, int] = {}
        for model, copies in state.models.items():
            tiers[model] = max(int(c.tier) for c in copies) + 1
        return _Entry(state, shape_id, tiers)

    # ---- gangs ---------------------------------------------------------------------------

    def _track_reservation(self, record: PodRecord) -> None:
        """Keep the gang book in step with a pod as listed or watched."""
        if record.node is not None:
            if self._gangs.settle(record.uid) is not None:
                log.info("gang %s: member %s bound", record.gang, record.ref)
            return
        reservation = record.reservation
        moment = self.clock()
        if (
            reservation is None
            or not record.gang_member
            or self._gangs.reservation(record.uid) is not None
            or reservation.expires <= moment
        ):
            return
        if (
            reservation.gang != record.gang_id
            or len(reservation.indices) != record.gpus
            or reservation.expires > moment + dt.timedelta(seconds=self.gang_ttl_s)
        ):
            # Not one of our plans for this pod (any pod can carry any annotation): a
            # reservation must name the pod's own group, its GPU count, and expire within a
            # plan's lifetime, or it could hold GPUs for anyone, for ever.
            log.info("pod %s: ignoring a reservation that is not its group's plan", record.ref)
            return
        # Found on a listed pod: a plan made before a restart of ours.
        self._gangs.restore(
            Reserved(record.uid, record.namespace, record.name, record.gpus, reservation)
        )
        if reservation.node in self._node_objects:
            self._rebuild(reservation.node)

    def _release_gang(self, gang: str, clear_annotations: bool = True) -> None:
        released = self._gangs.release(gang)
        for reserved in released:
            if clear_annotations:
                try:
                    self.binder.reserve(reserved.namespace, reserved.name, None)
                except BindError as exc:  # best effort: an expired annotation is ignored
                    log.warning(
                        "gang %s: cannot clear reservation of %s: %s", gang, reserved.name, exc
                    )
        for node in {r.reservation.node for r in released}:
            self._rebuild(node)

    def _expire_gangs(self) -> None:
        for gang in self._gangs.expired():
            log.info("gang %s: plan expired before every member bound; releasing", gang)
            self._release_gang(gang)

    def _gang_id(self, demand: PodDemand) -> str:
        """The identity of the pod's group (see objects.gang_identity)."""
        assert demand.gang is not None
        found = self._seen_gang_ids.get(demand.uid)
        if found is None:
            record = self._pods.get(demand.uid)
            found = record.gang_id if record is not None else None
        return found or demand.gang.key

    def _gang_members(
        self, demand: PodDemand, gang_id: str
    ) -> tuple[list[PodDemand], list[PodRecord]]:
        """(unbound members' demands, bound members) of the pod's group, as far as known.

        Members are the pods of the same group identity (name and controller) that are neither
        finished nor Terminating, one per pod name: a member recreated under a new UID
        replaces its earlier incarnation, which may still be in the view (its DELETE on its
        way) or in the filter's memory (a DELETE the informer never saw)."""
        unbound: dict[str, PodDemand] = {demand.name: demand}
        bound: dict[str, PodRecord] = {}
        for record in list(self._pods.values()):
            if record.gang_id != gang_id or not record.gang_member:
                continue
            if record.name == demand.name and record.uid != demand.uid:
                continue  # the asking pod's earlier incarnation
            if record.node is not None:
                bound[record.name] = record
                continue
            if record.name not in unbound and record.name not in bound:
                obj = self._pod_objects.get((record.namespace, record.name))
                if obj is not None:
                    unbound[record.name] = parse_demand(obj, self.catalog)
        for seen in list(self._seen.values()):
            if (
                seen.gang is None
                or seen.name in unbound
                or seen.name in bound
                or self._seen_gang_ids.get(seen.uid, seen.gang.key) != gang_id
            ):
                continue
            known = self._pods.get(seen.uid)
            if known is None or (known.node is None and known.gang_member):
                unbound[seen.name] = seen
        return [d for name, d in unbound.items() if name not in bound], list(bound.values())

    def _plan_gang(self, demand: PodDemand, names: Sequence[str], gang_id: str) -> str | None:
        """Plan the pod's whole group; None on success, else the reason every node fails."""
        assert demand.gang is not None
        gang = demand.gang
        unbound, bound = self._gang_members(demand, gang_id)
        sizes: dict[int | None, list[str]] = {}
        for d in unbound:
            sizes.setdefault(d.gang.size if d.gang is not None else None, []).append(d.name)
        for record in bound:
            sizes.setdefault(record.gang_size, []).append(record.name)
        if len(sizes) > 1:
            return f"gang {gang.key}: members disagree on kvsched.io/gang-size: " + " vs ".join(
                f"{'unset' if size is None else size} ({_names(members)})"
                for size, members in sorted(sizes.items(), key=lambda item: item[0] or 0)
            )
        if gang.size is None:
            return (
                f"gang {gang.key} has no size: set kvsched.io/gang-size (or the "
                "LeaderWorkerSet size annotation) on its members"
            )
        total = len(unbound) + len(bound)
        if total < gang.size:
            return f"gang {gang.key}: {total} of {gang.size} members exist; waiting for the rest"
        if total > gang.size:
            return f"gang {gang.key}: {total} members exist but kvsched.io/gang-size is {gang.size}"
        nodes = [self._entries[n].state for n in names if n in self._entries]
        key = topology_key_for(demand.topology_key, nodes)
        if bound and key is not None:
            # Members already running fix the domain: the rest must join them.
            domains = {
                (self._entries[r.node].state.labels.get(key) if r.node in self._entries else None)
                for r in bound
            }
            nodes = [n for n in nodes if n.labels.get(key) in domains]
        members = [GangMember(d.uid, d.name, d) for d in sorted(unbound, key=lambda d: d.name)]
        result = plan_gang(members, nodes, topology_key=key, config=self.scoring)
        if isinstance(result, GangFailure):
            return result.reason
        expires = self.clock() + dt.timedelta(seconds=self.gang_ttl_s)
        reserved = [
            Reserved(
                p.uid,
                gang.namespace,
                p.name,
                len(p.gpus),
                GpuReservation(gang_id, p.node, p.gpus, expires),
            )
            for p in result.placements
        ]
        self._gangs.record(gang_id, reserved)
        for node in {r.reservation.node for r in reserved}:
            self._rebuild(node)
        log.info("gang %s planned: %s", gang.key, result.describe())
        for r in reserved:
            try:
                self.binder.reserve(r.namespace, r.name, r.reservation)
            except BindError as exc:
                # Not durable for this member: a restart would forget it, nothing worse.
                log.warning("gang %s: cannot record reservation on %s: %s", gang.key, r.name, exc)
        return None

    def _gang_filter(self, demand: PodDemand, names: Sequence[str]) -> FilterResult:
        assert demand.gang is not None
        with self._lock:
            self._expire_gangs()
            gang_id = self._gang_id(demand)
            reserved = self._gangs.reservation(demand.uid)
            if reserved is None:
                reserved = self._adopt(demand, gang_id)
            if reserved is None:
                if self._gangs.plan(gang_id) is not None:
                    # A member the plan does not know (a replacement): plan the group again.
                    self._release_gang(gang_id)
                reason = self._plan_gang(demand, names, gang_id)
                if reason is not None:
                    return FilterResult([], dict.fromkeys(names, reason), {}, {"gang": len(names)})
                reserved = self._gangs.reservation(demand.uid)
                assert reserved is not None
            node = reserved.reservation.node
            elsewhere = f"gang {demand.gang.key}: {demand.name} is planned on {node}"
            failed = {n: elsewhere for n in names if n != node}
            if node not in names:
                failed[node] = f"gang {demand.gang.key}: planned node {node} was not offered"
            return FilterResult([node] if node in names else [], {}, failed, {"gang": len(failed)})

    def _adopt(self, demand: PodDemand, gang_id: str) -> Reserved | None:
        """A member recreated under a new UID (same name, same GPU count) takes over its
        earlier incarnation's reservation instead of forcing the group to be planned again."""
        earlier = self._gangs.find(gang_id, demand.namespace, demand.name)
        if earlier is None or earlier.uid == demand.uid or earlier.gpus != demand.gpus:
            return None
        adopted = self._gangs.adopt(earlier.uid, demand.uid)
        if adopted is None:
            return None
        log.info(
            "gang %s: %s recreated (uid %s); it keeps its plan", gang_id, demand.ref, demand.uid
        )
        try:
            self.binder.reserve(adopted.namespace, adopted.name, adopted.reservation)
        except BindError as exc:
            log.warning("gang %s: cannot record reservation on %s: %s", gang_id, demand.name, exc)
        return adopted

    def filter(
        self, demand: PodDemand, names: Sequence[str], extra: Mapping[str, NodeState] | None = None
    ) -> FilterResult:
        if demand.gang is not None and demand.error is None and demand.gpus > 0:
            return self._gang_filter(demand, names)
        if self._gangs.gangs():
            with self._lock:
                self._expire_gangs()
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
            reserved = self._gangs.reservation(demand.uid)
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
        peer = demand.kv_peer.strip().lower()
        peer_gang = f"{demand.namespace}/{demand.kv_peer.strip()}"
        peer_nodes = [
            self._entries[r.node].state
            for r in list(self._pods.values())
            if r.role == "prefill"
            and r.node in self._entries
            and r.phase not in TERMINAL_PHASES
            and (r.gang == peer_gang or (r.model or "").lower() == peer)
        ]
        if not peer_nodes:
            return None
        states = [self._entries[n].state for n in names if n in self._entries]
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
            kv_peer_term(kv_peer_distance(self._entries[n].state, peer_nodes, key))
            if n in self._entries
            else 0.0
            for n in names
        ]

    # ---- bind ----------------------------------------------------------------------------

    def bind(self, namespace: str, name: str, uid: str, node_name: str) -> BindResult:
        """Choose the pod's GPUs on `node_name`, make the bind durable, record it.

        The GPUs are taken in the store first (under the lock, so no other bind or filter can
        get them), then the binder's API calls run outside the lock, so that filters for the
        next pods do not wait behind them; a failed bind gives the GPUs back.
        Idempotent: a retry for a pod already bound to that node returns the same GPUs.

        A retry that arrives while an earlier bind of the same pod still waits on the API
        server (kube-scheduler gave up on it after its httpTimeout) waits for that call's
        outcome, up to `bind_retry_wait_s`; if it is still under way, the retry fails and
        kube-scheduler tries again later. Answering "bound" from the unconfirmed record would
        be a lie when that call then fails: kube-scheduler would count the pod bound and never
        schedule it again.
        """
        while True:
            with self._lock:
                earlier = self._in_flight.get(uid)
                if earlier is None:
                    existing = self._pods.get(uid)
                    if existing is not None and existing.node is not None:
                        if existing.node != node_name:
                            raise BindError(
                                f"pod {namespace}/{name} is already bound to {existing.node}, "
                                f"not {node_name}"
                            )
                        if existing.assignment is not None:
                            return BindResult(
                                existing.assignment, "already bound", already_bound=True
                            )
                    reserved = self._gangs.reservation(uid)
                    if reserved is not None:
                        record, placement = self._claim_reserved(reserved, node_name)
                    else:
                        record, placement = self._claim(namespace, name, uid, node_name)
                    assert record.assignment is not None
                    mine = self._in_flight[uid] = _BindCall()
                    self._assumed[uid] = record
                    self._put_pod(record)
                    self._rebuild(node_name)
                    break
            if not earlier.done.wait(self.bind_retry_wait_s):
                raise BindError(
                    f"pod {namespace}/{name}: an earlier bind is still waiting on the API "
                    "server; try again later"
                )
            # Done: succeeded (the record says so now) or failed (GPUs given back): look again.
        try:
            recorded = self.binder.bind(record, record.assignment, placement)
            if recorded is not None and recorded != record.assignment:
                # Bound before, by a call whose answer was lost: the GPUs that binding wrote
                # on the pod are the ones it holds, not the ones chosen just now.
                with self._lock:
                    if self._pods.get(uid) is record:
                        adopted = dataclasses.replace(record, assignment=recorded)
                        self._assumed[uid] = adopted
                        self._put_pod(adopted)
                        self._rebuild(node_name)
                return BindResult(recorded, "already bound", already_bound=True)
        except BindError:
            with self._lock:
                self._assumed.pop(uid, None)
                seen = self._pods.get(uid)
                if seen is not None and seen is not record:
                    # The watch showed the pod while the call was under way: the API server's
                    # view wins over the call's outcome. A call that timed out after the
                    # server applied it leaves the pod bound; rolling back would free GPUs a
                    # running pod holds.
                    if seen.node == node_name and seen.assignment is not None:
                        log.info("bind %s: the call failed, but the pod is bound", seen.ref)
                        return BindResult(seen.assignment, "bound", already_bound=True)
                else:
                    self._pods.pop(uid, None)
                    self._pods_by_node.get(node_name, {}).pop(uid, None)
                    if existing is not None:
                        self._put_pod(existing)
                if reserved is not None:
                    self._gangs.restore(reserved)
                self._rebuild(node_name)
            raise
        finally:
            with self._lock:
                del self._in_flight[uid]
            mine.done.set()
        return BindResult(record.assignment, placement, already_bound=False)

    def _claim(self, namespace: str, name: str, uid: str, node_name: str) -> tuple[PodRecord, str]:
        demand = self._seen.get(uid)
        if demand is None:
            # E.g. filter ran before a restart of ours: the watched pod says the same.
            obj = self._pod_objects.get((namespace, name))
            if obj is not None and pod_record(obj).uid == uid:
                demand = parse_demand(obj, self.catalog)
        if demand is None:
            raise BindError(
                f"pod {namespace}/{name} (uid {uid}) was not seen by filter: cannot bind"
            )
        entry = self._entries.get(node_name)
        if entry is None:
            raise BindError(f"node {node_name} unknown to kvsched")
        evaluation = evaluate(demand, entry.state, self.scoring)
        if not evaluation.fits:
            raise BindError(
                f"pod {namespace}/{name} no longer fits {node_name}: {evaluation.reason}"
            )
        assignment = _assignment(node_name, entry.state, evaluation.gpus)
        record = PodRecord(
            uid=uid,
            namespace=namespace,
            name=name,
            node=node_name,
            gpus=demand.gpus,
            assignment=assignment,
            model=demand.model,
            phase="Pending",
            gang=demand.gang.key if demand.gang is not None else None,
            gang_id=self._gang_id(demand) if demand.gang is not None else None,
            gang_size=demand.gang.size if demand.gang is not None else None,
            role=demand.role,
        )
        return record, evaluation.summary()

    def _claim_reserved(self, reserved: Reserved, node_name: str) -> tuple[PodRecord, str]:
        """A gang member binds onto the GPUs its plan reserved (no re-evaluation: the plan
        already judged them, and they are held for it)."""
        plan = reserved.reservation
        if node_name != plan.node:
            raise BindError(
                f"gang {plan.gang}: {reserved.name} is planned on {plan.node}, not {node_name}"
            )
        entry = self._entries.get(node_name)
        if entry is None:
            raise BindError(f"node {node_name} unknown to kvsched")
        assignment = _assignment(node_name, entry.state, plan.indices)
        record = PodRecord(
            uid=reserved.uid,
            namespace=reserved.namespace,
            name=reserved.name,
            node=node_name,
            gpus=len(plan.indices),
            assignment=assignment,
            model=None,
            phase="Pending",
            gang=gang_key(plan.gang),
            gang_id=plan.gang,
        )
        return record, f"predicted-gpus={','.join(map(str, plan.indices))} gang={plan.gang}"

    def reservation_count(self) -> int:
        """GPU reservations of gang plans still waiting for their members to bind."""
        return sum(len(self._gangs.plan(g) or {}) for g in self._gangs.gangs())

    def allocations(self) -> dict[str, GpuPrediction]:
        """Pod ref -> assignment, for every pod holding indexed GPUs."""
        return {
            pod.ref: pod.assignment
            for pod in self._pods.values()
            if pod.holds_gpus and pod.assignment is not None
        }

    # ---- explain -------------------------------------------------------------------------

    def explain(
        self,
        demand: PodDemand,
        names: Iterable[str] | None = None,
        extra: Mapping[str, NodeState] | None = None,
    ) -> list[dict[str, Any]]:
        """Every term per node, with the reason for every rejection, best node first."""
        names = list(names) if names is not None else self.node_names()
        pairs = list(zip(names, self.evaluations(demand, names, extra), strict=True))
        scores = {s.node: s for s in relative_scores(pairs, self.scoring)}
        rows = [explain_row(name, evaluation, scores[name]) for name, evaluation in pairs]
        for row in rows:
            entry = self._entries.get(row["node"])
            if entry is not None:
                row["heldGpus"] = held_gpus(entry.state)
        terms = self.kv_peer_terms(demand, names)
        if terms is not None:
            blended = blend_locality([r["score"] for r in rows], terms, self.scoring.kv_peer_weight)
            for row, term, score in zip(rows, terms, blended, strict=True):
                row["terms"]["kv_peer"] = round(term, 4)
                if row["fits"]:
                    row["score"] = score
        rows.sort(key=lambda r: (not r["fits"], -r["score"], -r["raw"], r["node"]))
        return rows


def _names(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(sorted(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _assignment(node: str, state: NodeState, indices: tuple[int, ...]) -> GpuPrediction:
    """The chosen GPUs with their UUIDs where the node's inventory knows them."""
    topology = state.topology
    uuid_by_index = [g.uuid for g in topology.gpus] if topology is not None else []
    return GpuPrediction(node, indices, uuids_for(indices, uuid_by_index))


def held_gpus(state: NodeState) -> list[dict[str, Any]]:
    """The node's busy GPUs for explain: per GPU the pod holding it and on whose word
    (`kubelet`: the truth the agent read; `prediction`: kvsched's, until the truth is known;
    `unavailable`: the kubelet does not offer it). GPUs charged to pods nobody indexed are
    counted in `unindexed` on the node, not listed here."""
    return [
        {"index": index, "pod": holder.pod, "source": holder.source}
        for index, holder in sorted(state.holders.items())
    ]


def explain_row(name: str, evaluation: NodeEvaluation, scored: ScoredNode) -> dict[str, Any]:
    row: dict[str, Any] = {
        "node": name,
        "fits": evaluation.fits,
        "reason": evaluation.reason,
        "unresolvable": evaluation.unresolvable,
        "score": scored.score,
        "raw": round(scored.raw, 4),
        "terms": {k: round(v, 4) for k, v in scored.terms.items()},
        # What kvsched predicts the device plugin will hand the pod on this node: the node's
        # kubelet decides, and the agent reports what it really gave.
        "predictedGpus": list(evaluation.gpus),
    }
    if evaluation.gpu_set is not None:
        row["gpuSet"] = {
            "tier": evaluation.set_label,
            "quality": round(evaluation.gpu_set.quality, 4),
            "description": evaluation.gpu_set.description,
        }
    if evaluation.cold_start is not None:
        cold = evaluation.cold_start
        row["coldStart"] = {
            "tier": cold.tier.label,
            "bandwidthBytesPerSecond": cold.bandwidth_bytes_per_s,
            "weightsBytes": cold.weights_bytes,
            "loadSeconds": round(cold.load_seconds, 2),
            "readySeconds": round(cold.ready_seconds, 2),
        }
    if evaluation.memory is not None:
        memory = evaluation.memory
        row["memory"] = {
            "usableBytesPerGpu": memory.usable_bytes_per_gpu,
            "headroomBytesPerGpu": memory.headroom_bytes,
            "maxKvTokens": memory.max_kv_tokens,
            "reason": memory.reason,
        }
    if evaluation.fits:
        row["rightSize"] = round(evaluation.right_size, 4)
        row["fragmentationAfter"] = round(evaluation.fragmentation_after, 4)
    return row
