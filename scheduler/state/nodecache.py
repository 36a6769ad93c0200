"""The node cache: the objects kvsched was fed, the pods on each node, and one NodeState per node.

The counterpart of kube-scheduler's scheduler cache (pkg/scheduler/backend/cache):

* **Objects per kind**: Nodes and NodeInventories by name, Pods by UID (as `PodRecord`s, the
  pods that use GPUs or models also whole, for explain), and pods by node.
* **Per-node facts**: what a Node and its NodeInventory say (GPUs, topology, residency),
  parsed once per object version (`objects.node_facts`); a node whose objects cannot be
  understood is quarantined and not offered.
* **Assumed pods**: a bind takes its GPUs here first (`assume`), before the API call; the
  watch later confirms it (`put_pod` with the bound pod drops the assumption), or the failed
  call undoes it (`forget`). Until confirmed, a watch event that still shows the pod unbound
  does not free the GPUs.
* **Learned bindings**: a pod the watch shows becoming bound with no prediction on it
  (kube-scheduler bound it: the shipped configuration has no bindVerb) gets one from `learn`
  (the bind coordinator's) as it arrives, and keeps it through its later events and relists,
  which do not carry it (it lives only here).
* **NodeState building**: `rebuild(name)` derives the node's state from its facts, its pods
  and the GPUs gang plans hold there (`reserved_on`), interns its shape in the evaluation
  memo and invalidates the memo's by-name shortcuts for it.

Conversion is defensive: an object that cannot be read is quarantined
(scheduler.state.quarantine), never the end of a watch or a relist, and a relist replaces the
view only once it has fully arrived.

Locking: `lock` (re-entrant) is the store's one lock. Every method that changes the cache
takes it; callers that combine several steps (the coordinators) hold it across them. Nothing
holding it performs API I/O.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from cachetools import LRUCache

from scheduler.core.node import NodeState
from scheduler.models.catalog import Catalog
from scheduler.state.contracts import StoreObserver
from scheduler.state.effects import Effect
from scheduler.state.memo import Entry, EvaluationMemo
from scheduler.state.objects import (
    TERMINAL_PHASES,
    NodeFacts,
    PodRecord,
    node_facts,
    node_state_from,
    pod_key,
    read_pod,
)
from scheduler.state.quarantine import UNREADABLE, Problem, Quarantine

log = logging.getLogger(__name__)

__all__ = ["KINDS", "NodeCache"]

KINDS = ("Node", "NodeInventory", "Pod")


def _no_reservations(node: str) -> list[PodRecord]:
    return []


def _as_is(record: PodRecord) -> tuple[PodRecord, list[Effect]]:
    return record, []


def _predicted_here(record: PodRecord) -> bool:
    """Whether the record carries a prediction for the node it is bound to."""
    prediction = record.prediction
    return (
        prediction is not None
        and prediction.node == record.node
        and len(prediction.indices) == record.gpus
    )


class NodeCache:
    def __init__(
        self,
        catalog: Catalog,
        memo: EvaluationMemo,
        lock: threading.RLock,
        quarantine: Quarantine,
        pending_pods: int = 10_000,
    ) -> None:
        self.catalog = catalog
        self.memo = memo
        self.lock = lock
        self.quarantine = quarantine
        self.observer: StoreObserver | None = None
        # Wired by the store: the GPUs gang plans hold on a node (as records), and what to do
        # with every pod record put in the cache (the gang book keeps in step).
        self.reserved_on: Callable[[str], list[PodRecord]] = _no_reservations
        self.on_put: Callable[[PodRecord], None] = lambda record: None
        # Wired by the store: the prediction for a pod seen bound without one (see upsert_pod).
        self.learn: Callable[[PodRecord], tuple[PodRecord, list[Effect]]] = _as_is
        self.entries: dict[str, Entry] = {}
        self._node_objects: dict[str, Mapping[str, Any]] = {}
        self._inventories: dict[str, Mapping[str, Any]] = {}
        # Per node: its Node and NodeInventory objects and the facts parsed from them (None:
        # the Node cannot be understood; it is quarantined and not offered).
        self._facts: dict[
            str, tuple[Mapping[str, Any], Mapping[str, Any] | None, NodeFacts | None]
        ] = {}
        self.pods: dict[str, PodRecord] = {}
        self._pod_objects: dict[tuple[str, str], Mapping[str, Any]] = {}
        self._pods_by_node: dict[str, dict[str, PodRecord]] = {}
        # Pods we bound whose binding the watch has not shown yet (see put_pod).
        self._assumed: dict[str, PodRecord] = {}
        # Predictions the kubelet contradicted, each counted once: (node, pod, actual GPUs).
        self._mismatches_seen: LRUCache[tuple[str, str, tuple[int, ...]], bool] = LRUCache(
            pending_pods
        )
        self.prediction_mismatches = 0

    # ---- queries (no lock: single dict reads) ---------------------------------------------

    def node(self, name: str) -> NodeState | None:
        entry = self.entries.get(name)
        return entry.state if entry is not None else None

    def node_names(self) -> list[str]:
        return sorted(self.entries)

    def has_node_object(self, name: str) -> bool:
        return name in self._node_objects

    def pod_object(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The pod as last fed to the cache (file or watch), for explain."""
        return self._pod_objects.get((namespace, name))

    # ---- feeding -------------------------------------------------------------------------

    def replace_kind(
        self, kind: str, items: Iterable[Mapping[str, Any]], rebuild: bool = True
    ) -> None:
        """All objects of one kind, as a (re-)list returns them.

        Atomic: every object is converted first, aside, and the view is replaced only once
        the whole list has arrived and been converted; an object that cannot be converted is
        quarantined, never the end of the relist."""
        if kind not in KINDS:
            raise ValueError(f"kvsched does not track {kind}")
        named: dict[str, Mapping[str, Any]] = {}
        pods: list[tuple[PodRecord, Mapping[str, Any]]] = []
        for obj in items:
            if kind == "Pod":
                converted = self.convert_pod(obj)
                if converted is not None:
                    pods.append(converted)
            else:
                name = self.name_of(kind, obj)
                if name is not None:
                    named[name] = obj
        with self.lock:
            if kind == "Node":
                self._node_objects = named
            elif kind == "NodeInventory":
                self._inventories = named
            else:
                self.quarantine.retain("Pod", {record.uid for record, _ in pods})
                known = self.pods
                self.pods, self._pod_objects, self._pods_by_node = {}, {}, {}
                for record, pod in pods:
                    self.put_pod(self._carried(record, known.get(record.uid)), pod)
                for uid, assumed in list(self._assumed.items()):
                    if uid not in self.pods:
                        # Listed before our bind landed, or deleted: the next watch event
                        # settles it; until then the GPUs stay taken.
                        self.put_pod(assumed)
            if rebuild:
                self.entries = {}
                self.memo.forget_names()
                for name in self._node_objects:
                    self.rebuild(name)

    def put_node(self, kind: str, obj: Mapping[str, Any]) -> None:
        """A Node or NodeInventory added or changed."""
        name = self.name_of(kind, obj)
        if name is None:
            return
        with self.lock:
            (self._node_objects if kind == "Node" else self._inventories)[name] = obj
            self.rebuild(name)

    def remove_node(self, kind: str, name: str) -> None:
        """A Node or NodeInventory deleted."""
        with self.lock:
            (self._node_objects if kind == "Node" else self._inventories).pop(name, None)
            self.rebuild(name)

    def name_of(self, kind: str, obj: object) -> str | None:
        """A Node's or NodeInventory's name; None (and quarantined) when it has none."""
        meta = obj.get("metadata") if isinstance(obj, Mapping) else None
        name = meta.get("name") if isinstance(meta, Mapping) else None
        if isinstance(name, str) and name:
            return name
        self.quarantine.reject(kind, "", obj, Problem(UNREADABLE, "no metadata.name"))
        return None

    def convert_pod(self, obj: object) -> tuple[PodRecord, Mapping[str, Any]] | None:
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

    def kubelet_reports(self, name: str) -> bool:
        """Whether the node's agent reports the kubelet's GPU allocation (lock held)."""
        cached = self._facts.get(name)
        facts = cached[2] if cached is not None else None
        return facts is not None and facts.kubelet_reports

    def upsert_pod(self, pod: Mapping[str, Any]) -> list[Effect]:
        """A pod added or changed. A pod bound without a prediction on it is given one: kept
        from what this cache learned before, else, when this event is its binding, learned
        now (`learn`, before the pod is recorded, so that it is predicted over the GPUs the
        others hold). Returns the API
        writes that calls for (a gang plan released), for the caller to submit after the
        lock."""
        converted = self.convert_pod(pod)
        if converted is None:
            return []  # what the cache knew of it (if anything) stands
        record = converted[0]
        effects: list[Effect] = []
        with self.lock:
            old = self.pods.get(record.uid)
            record = self._carried(record, old)
            # Only a binding seen happen (the pod known unbound before): a pod that arrives
            # bound (listed, created with a nodeName) was not placed in kvsched's view, and
            # its GPUs count as held, unindexed, as before.
            binding = old is not None and old.node is None and record.holds_gpus
            if binding and not _predicted_here(record) and record.uid not in self._assumed:
                record, effects = self.learn(record)
            self.put_pod(record, pod)
            for node in {record.node, old.node if old else None} - {None}:
                assert node is not None
                self.rebuild(node)
        return effects

    @staticmethod
    def _carried(record: PodRecord, old: PodRecord | None) -> PodRecord:
        """`record`, with the prediction this cache learned for it earlier when it carries
        none of its own (its events after the binding, a relist: they do not carry it)."""
        if (
            old is None
            or record.node is None
            or old.node != record.node
            or not _predicted_here(old)
            or _predicted_here(record)
        ):
            return record
        return dataclasses.replace(record, prediction=old.prediction)

    def put_pod(self, record: PodRecord, obj: Mapping[str, Any] | None = None) -> None:
        """Record a pod (lock held; the caller rebuilds the nodes concerned). A bound pod
        confirms an assumption of ours; an unbound one older than our bind does not undo it."""
        assumed = self._assumed.get(record.uid)
        if assumed is not None and record is not assumed:
            if record.node is None and record.phase not in TERMINAL_PHASES:
                # A watch event older than our bind: keep the bind, or the GPUs would look
                # free until the API server's view of the binding reaches us.
                record, obj = assumed, None
            else:
                del self._assumed[record.uid]  # confirmed (or finished)
        self.on_put(record)
        if obj is not None and (record.gpus > 0 or record.model is not None):
            # Kept for explain; pods without GPUs are only counted, not stored whole.
            self._pod_objects[(record.namespace, record.name)] = obj
        old = self.pods.get(record.uid)
        if old is not None and old.node is not None:
            self._pods_by_node.get(old.node, {}).pop(record.uid, None)
        self.pods[record.uid] = record
        if record.node is not None:
            self._pods_by_node.setdefault(record.node, {})[record.uid] = record

    def remove_pod(self, uid: str) -> None:
        """A pod deleted (lock held by the caller or taken here)."""
        with self.lock:
            self._assumed.pop(uid, None)
            old = self.pods.pop(uid, None)
            if old is None:
                return
            self._pod_objects.pop((old.namespace, old.name), None)
            if old.node is not None:
                self._pods_by_node.get(old.node, {}).pop(uid, None)
                self.rebuild(old.node)

    # ---- assume / forget (the bind transaction's side of the cache) ------------------------

    def assume(self, record: PodRecord) -> None:
        """A bind under way holds `record`'s GPUs until the watch confirms it or `forget`
        undoes it (lock held)."""
        assert record.node is not None
        self._assumed[record.uid] = record
        self.put_pod(record)
        self.rebuild(record.node)

    def forget(self, record: PodRecord, previous: PodRecord | None) -> PodRecord | None:
        """The bind of `record` failed: drop the assumption (lock held). Returns the pod as
        the watch showed it while the call was under way (the API server's view wins; the
        caller decides), else None: the record is removed and `previous` put back. The
        caller rebuilds the node."""
        self._assumed.pop(record.uid, None)
        seen = self.pods.get(record.uid)
        if seen is not None and seen is not record:
            return seen
        self.pods.pop(record.uid, None)
        if record.node is not None:
            self._pods_by_node.get(record.node, {}).pop(record.uid, None)
        if previous is not None:
            self.put_pod(previous)
        return None

    # ---- node states ---------------------------------------------------------------------

    def rebuild(self, name: str) -> None:
        """Derive the node's state again from its objects and pods (lock held)."""
        self.memo.forget(name)
        node = self._node_objects.get(name)
        if node is None:
            self.entries.pop(name, None)
            self._facts.pop(name, None)
            return
        pods = list(self._pods_by_node.get(name, {}).values())
        for reserved in self.reserved_on(name):
            holder = self.pods.get(reserved.uid)
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
            self.entries.pop(name, None)  # quarantined: not offered
            return
        state = node_state_from(facts, pods)
        self.entries[name] = self.memo.entry(state, self.entries)
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
