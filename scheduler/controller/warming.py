"""The warming controller: turns what the inventory controller watches into planner input,
runs the warming planner (scheduler.core.warming) and writes each node's ``spec.warming``.

Part of `kvsched controller` and run by its leader only; off unless ``--warming-holders`` is
above 0. It writes nothing but ``spec.warming`` (a merge patch of the spec; the status is the
agent's and the inventory reconciler's), at most ``max_writes_per_pass`` nodes per pass and
one pass per ``interval_s``.

Planner input, from the controller's watches:

* **Demand per model** (pods carrying ``kvsched.io/model``): running replicas (bound, not
  finished), pending pods (not yet bound) and scale-ups (pods created within
  ``scale_up_window_s``). The next replica's demand is that of the newest such pod. When a
  model was last in demand is remembered for the hold-down, and models named in some node's
  spec but unknown to this process (it just became leader) count as in demand at that moment.
* **Nodes**: GPU nodes with a NodeInventory, as the placement core sees them (the extender's
  own conversion: scheduler.state.objects.node_state), their spec.warming and status.warming.
  The disk budget is the cache capacity the inventory reconciler uses. An agent fetches
  there only if it reported recently (``agent_stale_after_s``) and has not left an entry
  without any progress for ``stall_after_s``: such an entry counts as a failed copy (it holds
  no weights) and the node gets no new ones, or a node without a fetching agent would pass for
  a holder forever.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from scheduler.controller.residency import cache_capacity_bytes
from scheduler.core.demand import A_MODEL, PodDemand, parse_demand
from scheduler.core.warming import (
    CopyProgress,
    ModelDemand,
    WarmingNode,
    WarmingPlan,
    WarmingSettings,
    WarmingTarget,
    plan_warming,
)
from scheduler.inventory.merge import agent_is_fresh
from scheduler.inventory.settings import ResidencySettings
from scheduler.inventory.spec import WarmingRequest, WarmingSpec
from scheduler.inventory.status import InventoryStatus, now, parse_time
from scheduler.models.catalog import Catalog
from scheduler.state.kube import InventorySpecApi, KubeError
from scheduler.state.objects import TERMINAL_PHASES, PodRecord, node_state, read_pod

log = logging.getLogger(__name__)

__all__ = [
    "PodBook",
    "WarmingController",
    "WarmingControllerSettings",
    "WarmingMetrics",
]

ModelKey = tuple[str, str | None]


@dataclass(frozen=True, slots=True)
class WarmingControllerSettings:
    """``planner``: the policy (holders 0: the controller is off). ``interval_s``: least
    seconds between passes. ``max_writes_per_pass``: spec writes per pass (the rest wait for
    the next one). ``scale_up_window_s``: a pod created this recently is a scale-up.
    ``stall_after_s``: an entry without any progress this long after it was asked for marks
    the node as one whose agent does not fetch."""

    planner: WarmingSettings = field(default_factory=lambda: WarmingSettings(holders=0))
    interval_s: float = 15.0
    max_writes_per_pass: int = 20
    scale_up_window_s: float = 600.0
    stall_after_s: float = 300.0

    @property
    def enabled(self) -> bool:
        return self.planner.holders > 0

    def __post_init__(self) -> None:
        for label, value in (
            ("interval", self.interval_s),
            ("scale-up window", self.scale_up_window_s),
            ("stall-after", self.stall_after_s),
        ):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"warming {label} must be >= 0 seconds, not {value}")
        if self.max_writes_per_pass < 1:
            raise ValueError(
                f"warming max writes per pass must be >= 1, not {self.max_writes_per_pass}"
            )


class WarmingMetrics:
    """kvsched_warming_*: exported by every controller replica (zero while warming is off or
    the replica does not lead)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.desired = Gauge(
            "kvsched_warming_desired",
            "Models the warming controller asks nodes to hold (spec.warming entries, all nodes).",
            registry=registry,
        )
        self.in_progress = Gauge(
            "kvsched_warming_in_progress",
            "spec.warming entries not yet held by their node (queued, copying or not started).",
            registry=registry,
        )
        self.in_flight_bytes = Gauge(
            "kvsched_warming_in_flight_bytes",
            "Bytes the nodes still have to copy for spec.warming, all nodes.",
            registry=registry,
        )
        self.short_models = Gauge(
            "kvsched_warming_short_models",
            "Models in demand with fewer ready holders than --warming-holders after a pass.",
            registry=registry,
        )
        self.requested_bytes = Counter(
            "kvsched_warming_requested_bytes",
            "Bytes of the copies the warming controller asked for.",
            registry=registry,
        )
        self.changes = Counter(
            "kvsched_warming_changes",
            "spec.warming entries added or withdrawn, by action.",
            ["action"],
            registry=registry,
        )
        self.writes = Counter(
            "kvsched_warming_writes",
            "spec.warming writes by result (written, failed, deferred by the rate limit).",
            ["result"],
            registry=registry,
        )
        for action in ("add", "withdraw"):
            self.changes.labels(action)
        for result in ("written", "failed", "deferred"):
            self.writes.labels(result)


@dataclass(frozen=True, slots=True)
class _PodEntry:
    record: PodRecord
    model: str | None  # the id as the spec should spell it
    demand: PodDemand | None
    created: float | None  # metadata.creationTimestamp, Unix seconds


class PodBook:
    """What the warming controller keeps of each pod: its GPU accounting record and, for pods
    of a model, their parsed demand. Fed by the informer threads; read by the leader's pass.
    Also remembers when each model was last in demand (the hold-down's clock)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._pods: dict[str, _PodEntry] = {}
        self._lock = threading.Lock()
        self.last_active: dict[ModelKey, float] = {}

    def observe(self, pod: Mapping[str, Any]) -> None:
        record, _ = read_pod(pod)  # problems are quarantined by the caller
        entry = _PodEntry(record, None, None, _created(pod))
        annotations = (pod.get("metadata") or {}).get("annotations")
        if isinstance(annotations, Mapping) and isinstance(annotations.get(A_MODEL), str):
            demand = parse_demand(pod, self.catalog)
            if demand.error is None and demand.model is not None and demand.plan is not None:
                spelled = (
                    demand.model_spec.name
                    if demand.model_spec is not None
                    else str(annotations[A_MODEL]).strip()
                )
                if spelled.lower() != demand.model:
                    spelled = demand.model
                entry = _PodEntry(record, spelled, demand, entry.created)
        with self._lock:
            if entry.demand is None and record.gpus == 0:
                # Neither demand nor GPUs: nothing the planner reads (most of a cluster's pods).
                self._pods.pop(record.uid, None)
            else:
                self._pods[record.uid] = entry

    def forget(self, uid: str) -> None:
        with self._lock:
            self._pods.pop(uid, None)

    def clear(self) -> None:
        """Before a relist's pods are observed again: pods gone meanwhile are dropped."""
        with self._lock:
            self._pods.clear()

    def records(self) -> list[PodRecord]:
        with self._lock:
            return [e.record for e in self._pods.values()]

    def demands(self, moment: float, window_s: float) -> list[ModelDemand]:
        """One ModelDemand per model with live pods; updates ``last_active``."""
        with self._lock:
            entries = list(self._pods.values())
        counts: dict[ModelKey, list[int]] = {}
        newest: dict[ModelKey, tuple[float, str, _PodEntry]] = {}
        for entry in entries:
            record, demand = entry.record, entry.demand
            if demand is None or entry.model is None:
                continue
            if record.phase in TERMINAL_PHASES or record.terminating:
                continue
            key = (demand.model or "", demand.revision)
            running, pending, scale_ups = counts.setdefault(key, [0, 0, 0])
            if record.node is not None:
                running += 1
            else:
                pending += 1
            if entry.created is not None and moment - entry.created <= window_s:
                scale_ups += 1
            counts[key] = [running, pending, scale_ups]
            order = (entry.created or 0.0, record.ref)
            seen = newest.get(key)
            if seen is None or order > seen[:2]:
                newest[key] = (*order, entry)
        out: list[ModelDemand] = []
        for key, (running, pending, scale_ups) in sorted(counts.items(), key=_key_order):
            entry = newest[key][2]
            assert entry.demand is not None and entry.model is not None
            self.last_active[key] = moment
            out.append(
                ModelDemand(
                    entry.model,
                    entry.demand,
                    running=running,
                    pending=pending,
                    scale_ups=scale_ups,
                    last_active=moment,
                )
            )
        return out


class WarmingController:
    """One pass: read, plan, write. Called by the inventory controller's leader loop."""

    def __init__(
        self,
        api: InventorySpecApi,
        book: PodBook,
        nodes: Callable[[], Mapping[str, Mapping[str, Any]]],
        inventories: Callable[[], Mapping[str, Mapping[str, Any]]],
        store: Callable[[str, Mapping[str, Any]], None],
        settings: WarmingControllerSettings,
        residency: ResidencySettings,
        metrics: WarmingMetrics,
        clock: Callable[[], dt.datetime] = now,
        is_gpu_node: Callable[[Mapping[str, Any]], bool] = lambda node: True,
    ) -> None:
        self.api = api
        self.book = book
        self.nodes = nodes
        self.inventories = inventories
        self.store = store
        self.settings = settings
        self.residency = residency
        self.metrics = metrics
        self.clock = clock
        self.is_gpu_node = is_gpu_node
        self._last_pass: float | None = None
        self.last_plan: WarmingPlan | None = None

    def due(self, moment: float) -> bool:
        return self._last_pass is None or moment - self._last_pass >= self.settings.interval_s

    def maybe_run(self) -> WarmingPlan | None:
        """A pass when one is due (the rate limit), else None."""
        moment = self.clock().timestamp()
        if not self.settings.enabled or not self.due(moment):
            return None
        return self.run_pass()

    def run_pass(self) -> WarmingPlan:
        current = self.clock()
        moment = current.timestamp()
        self._last_pass = moment
        nodes = dict(self.nodes())
        inventories = dict(self.inventories())
        demands = self.book.demands(moment, self.settings.scale_up_window_s)
        records = self.book.records()
        by_node: dict[str, list[PodRecord]] = {}
        for record in records:
            if record.node is not None:
                by_node.setdefault(record.node, []).append(record)

        inputs: list[WarmingNode] = []
        specs: dict[str, WarmingSpec] = {}
        for name in sorted(nodes):
            node, inventory = nodes[name], inventories.get(name)
            if inventory is None or not self.is_gpu_node(node):
                continue
            spec = WarmingSpec.from_spec(inventory.get("spec"))
            for problem in spec.problems:
                log.warning("inventory %s: %s", name, problem)
            specs[name] = spec
            inputs.append(self._node(node, inventory, spec, by_node.get(name, ()), current))
        known = {d.key for d in demands}
        for spec in specs.values():
            for request in spec.models:
                # Asked for before this process knew of it (a new leader): the hold-down runs
                # from now, not from a demand nobody here saw end.
                if request.key not in known:
                    self.book.last_active.setdefault(request.key, moment)
        hold = self.settings.planner.hold_down_s
        for key in [k for k, t in self.book.last_active.items() if moment - t > hold]:
            del self.book.last_active[key]

        plan = plan_warming(
            demands, inputs, moment, self.settings.planner, last_active=self.book.last_active
        )
        self._write(plan, specs)
        self.last_plan = plan
        self.metrics.desired.set(sum(len(t) for t in plan.desired.values()))
        self.metrics.in_progress.set(plan.in_progress)
        self.metrics.in_flight_bytes.set(plan.in_flight_bytes)
        self.metrics.short_models.set(len(plan.shortfalls))
        for shortfall in plan.shortfalls:
            log.info(
                "warming: %s has %d of %d ready holders: %s",
                shortfall.name,
                shortfall.holders,
                shortfall.wanted,
                shortfall.reason,
            )
        return plan

    def _node(
        self,
        node: Mapping[str, Any],
        inventory: Mapping[str, Any],
        spec: WarmingSpec,
        records: Iterable[PodRecord],
        current: dt.datetime,
    ) -> WarmingNode:
        status = InventoryStatus.from_status(inventory.get("status"))
        state = node_state(node, inventory, records, self.book.catalog)
        progress = {p.key: p for p in status.warming} if status is not None else {}
        copies: list[CopyProgress] = [
            CopyProgress(p.name, p.state, p.revision, p.bytes_done, p.bytes_total)
            for p in progress.values()
        ]
        fetching = status is not None and agent_is_fresh(status, current, self.residency)
        desired: list[WarmingTarget] = []
        for request in spec.models:
            asked = request.requested_at or current
            desired.append(
                WarmingTarget(
                    request.name,
                    request.revision,
                    request.size_bytes,
                    request.reason,
                    asked.timestamp(),
                )
            )
            held = state.residency(request.key[0], request.revision) is not None
            stalled = (current - asked).total_seconds() > self.settings.stall_after_s
            if request.key not in progress and not held and stalled:
                fetching = False
                copies.append(CopyProgress(request.name, "failed", request.revision))
        return WarmingNode(
            state,
            cache_capacity_bytes(node, status, self.residency),
            can_fetch=fetching,
            desired=tuple(desired),
            progress=tuple(copies),
        )

    def _write(self, plan: WarmingPlan, specs: Mapping[str, WarmingSpec]) -> None:
        for change in plan.changes:
            self.metrics.changes.labels(change.action).inc()
            log.info(
                "warming: %s %s on %s: %s", change.action, change.name, change.node, change.reason
            )
        written = 0
        for name in sorted(plan.desired):
            wanted = WarmingSpec(tuple(_request(t) for t in plan.desired[name]))
            old = specs.get(name)
            if old is not None and old.to_spec() == wanted.to_spec() and not old.problems:
                continue
            if written >= self.settings.max_writes_per_pass:
                self.metrics.writes.labels("deferred").inc()
                continue
            written += 1
            try:
                obj = self.api.patch_inventory_spec(name, {"warming": wanted.to_spec()})
            except KubeError as exc:
                self.metrics.writes.labels("failed").inc()
                log.warning("warming: spec of inventory %s not written: %s", name, exc)
                continue
            self.store(name, obj)
            self.metrics.writes.labels("written").inc()
            added = {c.name.lower() for c in plan.changes if c.node == name and c.action == "add"}
            self.metrics.requested_bytes.inc(
                sum(t.size_bytes or 0 for t in plan.desired[name] if t.key[0] in added)
            )


def _request(target: WarmingTarget) -> WarmingRequest:
    return WarmingRequest(
        name=target.name,
        revision=target.revision,
        size_bytes=target.size_bytes,
        reason=target.reason,
        requested_at=dt.datetime.fromtimestamp(target.requested_at, dt.UTC),
    )


def _created(pod: Mapping[str, Any]) -> float | None:
    meta = pod.get("metadata")
    text = meta.get("creationTimestamp") if isinstance(meta, Mapping) else None
    if not isinstance(text, str):
        return None
    try:
        return parse_time(text).timestamp()
    except ValueError:
        return None


def _key_order(item: tuple[ModelKey, object]) -> tuple[str, str]:
    return (item[0][0], item[0][1] or "")
