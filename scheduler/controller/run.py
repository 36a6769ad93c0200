"""The inventory controller: watches Nodes, Pods and NodeInventories and, while it holds the
leader lease, keeps every GPU node's NodeInventory status true.

- residency is learned from pods (scheduler.controller.residency) and merged with what an
  agent reported (scheduler.inventory.merge): fresh agent facts win;
- missing inventories of GPU nodes are created, those of deleted nodes deleted;
- writes use optimistic concurrency (resourceVersion) and retry on conflict;
- a node is reconciled when something about it changed, and all nodes every resync period
  (so tiers age: host-memory becomes local-disk without any event).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from scheduler.controller.residency import (
    ResidencySettings,
    ResidencyTracker,
    cache_capacity_bytes,
)
from scheduler.controller.warming import PodBook, WarmingController, WarmingMetrics
from scheduler.core.quantity import parse_whole_quantity
from scheduler.inventory.merge import merge_controller_view, status_changed
from scheduler.inventory.status import InventoryStatus, now, parse_time
from scheduler.state.kube import ConflictError, InventoryApi, KubeError, NotFoundError
from scheduler.state.objects import GFD_COUNT, GFD_PRODUCT, GPU_RESOURCE, pod_key, read_pod
from scheduler.state.quarantine import UNREADABLE, Problem, Quarantine

log = logging.getLogger(__name__)

OWNER_LABEL = "kvsched.io/node"


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    """resync_s: every node is reconciled at least this often (tiers age with time).
    write_attempts: optimistic-concurrency retries per inventory write."""

    resync_s: float = 30.0
    write_attempts: int = 5


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.inventories = Gauge(
            "kvsched_controller_inventories",
            "NodeInventories the controller keeps.",
            registry=self.registry,
        )
        self.cached_models = Gauge(
            "kvsched_controller_cached_models",
            "Model copies in all inventories, by source.",
            ["source"],
            registry=self.registry,
        )
        self.writes = Counter(
            "kvsched_controller_inventory_writes",
            "Inventory writes by result (written, unchanged, created, deleted, failed).",
            ["result"],
            registry=self.registry,
        )
        self.conflicts = Counter(
            "kvsched_controller_write_conflicts",
            "Inventory status writes refused because the object changed meanwhile.",
            registry=self.registry,
        )
        self.watch_restarts = Counter(
            "kvsched_controller_watch_restarts",
            "Informer restarts by kind and reason.",
            ["kind", "reason"],
            registry=self.registry,
        )
        self.leader = Gauge(
            "kvsched_controller_leader",
            "1 while this replica holds the leader lease.",
            registry=self.registry,
        )
        self.evictions = Gauge(
            "kvsched_controller_evictions",
            "Models evicted from learned residency (total).",
            registry=self.registry,
        )
        self.agent_report_age = Gauge(
            "kvsched_controller_agent_report_age_seconds",
            "Seconds since the oldest of the node agents' last reports (status.observedAt of an "
            "inventory written by the agent), over the nodes whose agent reported while this "
            "replica leads; 0 when none. Set by the leader only.",
            registry=self.registry,
        )
        # The warming controller's (zero while it is off): exported by every replica alike.
        self.warming = WarmingMetrics(self.registry)

    # SyncObserver
    def watch_restarted(self, kind: str, reason: str) -> None:
        self.watch_restarts.labels(kind, reason).inc()

    def listed(self, kind: str, count: int) -> None:
        pass


def is_gpu_node(node: Mapping[str, Any]) -> bool:
    status = _mapping(node.get("status"))
    for field in ("allocatable", "capacity"):
        value = _mapping(status.get(field)).get(GPU_RESOURCE)
        if value is not None:
            try:
                return parse_whole_quantity(value) > 0
            except (ValueError, TypeError, OverflowError):
                return False
    labels = _mapping(_mapping(node.get("metadata")).get("labels"))
    return GFD_PRODUCT in labels or GFD_COUNT in labels


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


class ControllerState:
    """What the informers feed (a SyncTarget); marks nodes dirty for the reconciler."""

    def __init__(
        self,
        tracker: ResidencyTracker,
        clock: Callable[[], datetime] = now,
        book: PodBook | None = None,
    ) -> None:
        self.tracker = tracker
        self.clock = clock
        # The warming controller's view of pods (None while warming is off).
        self.book = book
        self.synced = False
        self.sync_problems: dict[str, str] = {}
        # Objects the controller cannot understand: logged once per version, then skipped.
        self.quarantine = Quarantine()
        self.nodes: dict[str, Mapping[str, Any]] = {}
        self.inventories: dict[str, Mapping[str, Any]] = {}
        self._dirty: set[str] = set()
        self._lock = threading.Lock()
        self.changed = threading.Event()

    def mark(self, *names: str | None) -> None:
        with self._lock:
            self._dirty.update(n for n in names if n)
        self.changed.set()

    def take_dirty(self) -> set[str]:
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        self.changed.clear()
        return dirty

    def sync_problem(self, kind: str, problem: str | None) -> None:
        if problem is None:
            self.sync_problems.pop(kind, None)
        else:
            self.sync_problems[kind] = problem

    def replace_kind(self, kind: str, items: Iterable[Mapping[str, Any]]) -> None:
        items = list(items)  # the whole list first: a list that breaks midway replaces nothing
        if kind == "Node":
            nodes = self._named(kind, items)
            gone = set(self.nodes) - set(nodes)
            for name in gone:
                self.tracker.forget_node(name)
            self.nodes = nodes
            self.mark(*self.nodes, *gone)
        elif kind == "NodeInventory":
            self.inventories = self._named(kind, items)
            self.mark(*self.inventories)
        elif kind == "Pod":
            moment = self.clock()
            if self.book is not None:
                self.book.clear()
            for pod in items:
                self._observe(pod, moment)
            self.mark(*self.nodes)

    def upsert(self, kind: str, obj: Mapping[str, Any]) -> None:
        if kind == "Pod":
            self._observe(obj, self.clock())
            self.mark(_node_name(obj))
            return
        name = self._name(kind, obj)
        if name is None:
            return
        if kind == "Node":
            self.nodes[name] = obj
            self.mark(name)
        elif kind == "NodeInventory":
            self.inventories[name] = obj
            self.mark(name)

    def delete(self, kind: str, obj: Mapping[str, Any]) -> None:
        if kind == "Pod":
            uid = pod_key(obj)
            if uid is not None:
                self.tracker.forget_pod(uid, self.clock())
                if self.book is not None:
                    self.book.forget(uid)
            self.mark(_node_name(obj))
            return
        name = self._name(kind, obj)
        if name is None:
            return
        if kind == "Node":
            self.nodes.pop(name, None)
            self.tracker.forget_node(name)
            self.mark(name)
        elif kind == "NodeInventory":
            self.inventories.pop(name, None)
            self.mark(name)

    def _observe(self, pod: Mapping[str, Any], moment: datetime) -> None:
        """One pod into the tracker; what it cannot understand is quarantined (logged once per
        pod version): a pod whose annotations cannot be read is tracked by its GPUs only, one
        that cannot be read at all is skipped."""
        try:
            record, problem = read_pod(pod)
            if problem is not None:
                self.quarantine.reject("Pod", record.uid, pod, problem)
            self.tracker.observe_pod(pod, moment)
            if self.book is not None:
                self.book.observe(pod)
        except Exception as exc:
            key = pod_key(pod) or ""
            self.quarantine.reject("Pod", key, pod, Problem(UNREADABLE, f"{exc}"))

    def _name(self, kind: str, obj: object) -> str | None:
        meta = obj.get("metadata") if isinstance(obj, Mapping) else None
        name = meta.get("name") if isinstance(meta, Mapping) else None
        if isinstance(name, str) and name:
            return name
        self.quarantine.reject(kind, "", obj, Problem(UNREADABLE, "no metadata.name"))
        return None

    def _named(self, kind: str, items: list[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
        named: dict[str, Mapping[str, Any]] = {}
        for obj in items:
            name = self._name(kind, obj)
            if name is not None:
                named[name] = obj
        return named


def _node_name(obj: object) -> str | None:
    spec = obj.get("spec") if isinstance(obj, Mapping) else None
    name = spec.get("nodeName") if isinstance(spec, Mapping) else None
    return name if isinstance(name, str) else None


class Reconciler:
    """Makes one node's inventory match what the controller knows. Leader only."""

    def __init__(
        self,
        api: InventoryApi,
        state: ControllerState,
        residency: ResidencySettings,
        settings: ControllerSettings,
        metrics: ControllerMetrics,
    ) -> None:
        self.api = api
        self.state = state
        self.residency = residency
        self.settings = settings
        self.metrics = metrics

    def reconcile(self, name: str) -> None:
        node = self.state.nodes.get(name)
        if node is None or not is_gpu_node(node):
            if name in self.state.inventories:
                self._delete(name)
            return
        for _ in range(self.settings.write_attempts):
            obj = self.state.inventories.get(name)
            if obj is None:
                obj = self._create(name)
            try:
                self._write(name, node, obj)
                return
            except ConflictError:
                # Someone (the agent, another controller) wrote first: re-read and merge again.
                self.metrics.conflicts.inc()
                fresh = self.api.get_inventory(name)
                if fresh is None:
                    self.state.inventories.pop(name, None)
                else:
                    self.state.inventories[name] = fresh
        self.metrics.writes.labels("failed").inc()
        log.warning("inventory %s: gave up after %d conflicts", name, self.settings.write_attempts)

    def _write(self, name: str, node: Mapping[str, Any], obj: Mapping[str, Any]) -> None:
        moment = self.state.clock()
        capacity = self._capacity(node, obj)
        models, allocated = self.state.tracker.learned(name, moment, capacity)
        current = InventoryStatus.from_status(obj.get("status"))
        for problem in current.problems if current is not None else ():
            log.warning("inventory %s: %s", name, problem)
        new = merge_controller_view(current, models, allocated, capacity, moment, self.residency)
        if not status_changed(current, new):
            self.metrics.writes.labels("unchanged").inc()
            return
        version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        written = self.api.replace_inventory_status(name, new.to_status(), version)
        self.state.inventories[name] = written
        self.metrics.writes.labels("written").inc()

    def _capacity(self, node: Mapping[str, Any], obj: Mapping[str, Any]) -> int:
        current = InventoryStatus.from_status(obj.get("status"))
        return cache_capacity_bytes(node, current, self.residency)

    def _create(self, name: str) -> Mapping[str, Any]:
        try:
            obj = self.api.create_inventory(name, {OWNER_LABEL: name})
            self.metrics.writes.labels("created").inc()
        except ConflictError:  # created meanwhile (agent): use theirs
            found = self.api.get_inventory(name)
            if found is None:
                raise KubeError(f"inventory {name} neither creatable nor readable") from None
            obj = found
        self.state.inventories[name] = obj
        return obj

    def _delete(self, name: str) -> None:
        try:
            self.api.delete_inventory(name)
            self.metrics.writes.labels("deleted").inc()
        except NotFoundError:
            pass
        self.state.inventories.pop(name, None)


class Controller:
    """Runs the reconciler while leading; returns when stopped or when leadership is lost."""

    def __init__(
        self,
        reconciler: Reconciler,
        state: ControllerState,
        settings: ControllerSettings,
        warming: WarmingController | None = None,
    ) -> None:
        self.reconciler = reconciler
        self.state = state
        self.settings = settings
        self.warming = warming
        self.stop_event = threading.Event()
        # node -> (status.observedAt as written, parsed) of its agent's last report, kept when
        # the controller's own view takes over: its age is how stale that node's agent is.
        self._agent_reports: dict[str, tuple[str, datetime]] = {}

    def agent_report_age(self, moment: datetime) -> float:
        """For ``kvsched_controller_agent_report_age_seconds``: the age of the oldest last
        agent report among existing nodes (0 when no agent has reported)."""
        for name, obj in self.state.inventories.items():
            status = obj.get("status")
            if not isinstance(status, Mapping) or status.get("source") != "agent":
                continue
            text = status.get("observedAt")
            known = self._agent_reports.get(name)
            if not isinstance(text, str) or (known is not None and known[0] == text):
                continue
            try:
                observed = parse_time(text)
            except ValueError:
                continue
            if known is None or observed > known[1]:
                self._agent_reports[name] = (text, observed)
        for name in [n for n in self._agent_reports if n not in self.state.nodes]:
            del self._agent_reports[name]
        ages = [(moment - seen).total_seconds() for _, seen in self._agent_reports.values()]
        return max(0.0, *ages) if ages else 0.0

    def lead(self) -> None:
        """The leader's loop (the lease library calls it in a thread once elected)."""
        metrics = self.reconciler.metrics
        metrics.leader.set(1)
        log.info("leading: reconciling NodeInventories")
        last_full = 0.0
        while not self.stop_event.is_set():
            if not self.state.synced:
                self.stop_event.wait(0.2)
                continue
            moment = self.state.clock().timestamp()
            names = self.state.take_dirty()
            if moment - last_full >= self.settings.resync_s:
                names |= set(self.state.nodes) | set(self.state.inventories)
                last_full = moment
            for name in sorted(names):
                try:
                    self.reconciler.reconcile(name)
                except KubeError as exc:
                    metrics.writes.labels("failed").inc()
                    log.warning("inventory %s: %s; will retry", name, exc)
                    self.state.mark(name)
            if self.warming is not None:
                try:
                    self.warming.maybe_run()
                except Exception:  # a bad pass must not stop the inventories being kept
                    log.exception("warming pass failed; next one at the next interval")
            metrics.inventories.set(len(self.state.inventories))
            metrics.evictions.set(self.state.tracker.evictions)
            metrics.agent_report_age.set(self.agent_report_age(self.state.clock()))
            self.state.changed.wait(1.0)

    def stopped_leading(self) -> None:
        self.reconciler.metrics.leader.set(0)
        log.warning("lost the leader lease; stopping")
        self.stop_event.set()
