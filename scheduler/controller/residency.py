"""What pods say about a node's model residency and GPU allocations (pure; no I/O, no clock).

The controller feeds every Pod it sees to a :class:`ResidencyTracker` and asks it, per node,
for the picture it has learned (:meth:`ResidencyTracker.learned`): the models that have run
there, in which tier their weights are now, and which GPU indices each pod holds.
:mod:`scheduler.inventory.merge` then combines that picture with what a node agent reported.

Rules (the tests pin each of them down):

* **Which pods count.** A pod counts when it carries ``kvsched.io/model`` and is bound to a
  node (``spec.nodeName``). Its model is the catalog's canonical name, lower-cased, when the
  catalog knows it, else the annotation lower-cased (the same key the extender's demand uses);
  ``kvsched.io/model-revision`` keeps revisions apart.
* **Tiers.** While some pod of a model is in phase ``Running`` *and Ready* on the node, the
  model is ``gpu``-resident (its engine holds the weights). Phase ``Running`` alone says only
  that the container started: a serving engine passes its readiness probe once the weights
  are loaded, so a pod still loading (``Running``, not Ready) puts nothing in the cache yet,
  like one that is bound but not started (``Pending``, ``Unknown``): counting the weights
  from the start would send the next replica to a node where they are still arriving. (A
  pod without a readiness probe is Ready as soon as it starts; nothing better is known.)
  Once the last pod of a model stopped (phase ``Succeeded``/``Failed``, or deleted) the
  weights count as ``host-memory`` (page cache) for ``host_memory_ttl_s`` after its stop
  time, then as ``local-disk``: downloaded files stay until evicted. A pod that failed
  before loading anything still counts: its phase cannot tell, and residency is only ever
  a score.
* **lastUsed** is the latest time the model was seen in use on the node: the latest
  observation of a running pod, or the time a pod stopped (the latest container
  ``finishedAt`` when the pod status has one, else the time the controller saw it stop or
  be deleted).
* **Size** is ``kvsched.io/weights-bytes`` when the pod sets a valid one, else the catalog's
  checkpoint size (``weights_bytes(spec)``: the files on disk, whatever dtype the engine
  converts to), else unknown.
* **Eviction.** A node's cache holds ``capacity_bytes``. GPU-resident models are in use and
  are never evicted, but their files take room; the other models are filled, least recently
  used first, into a ``cachetools.LRUCache`` of the room left, so what remains is the most
  recently used models that fit together. A model whose size is unknown counts as 0 bytes (it
  is never evicted for size: guessing a size would evict real entries for an invented one),
  and a model larger than the whole room is evicted on its own. Evicted models are forgotten,
  and no node keeps more than ``max_models_per_node`` models (the CRD's limit), so the
  history stays bounded.
* **Allocations.** A pod bound to the node, not finished, asking for GPUs and carrying a
  ``kvsched.io/predicted-gpus`` annotation for that node holds those GPU indices, model or not.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from cachetools import LRUCache

from scheduler.core.demand import A_REVISION, A_WEIGHTS_BYTES
from scheduler.core.quantity import parse_whole_quantity
from scheduler.inventory.settings import ResidencySettings
from scheduler.inventory.status import Allocation, InventoryStatus, ModelEntry, parse_time
from scheduler.models.catalog import Catalog
from scheduler.models.kvplan import weights_bytes
from scheduler.state.objects import TERMINAL_PHASES, PodRecord, pod_record

__all__ = [
    "CACHE_BYTES_LABEL",
    "ModelKey",
    "PodUse",
    "ResidencySettings",
    "ResidencyTracker",
    "cache_capacity_bytes",
    "pod_use",
]

CACHE_BYTES_LABEL = "kvsched.io/model-cache-bytes"
RUNNING_PHASE = "Running"
# The kubelet writes five pod conditions; more is someone else's invention, not read.
MAX_CONDITIONS = 32

_T = TypeVar("_T")

ModelKey = tuple[str, str | None]
"""(canonical lower-case model name, revision or None): one cached copy."""


@dataclass(frozen=True)
class PodUse:
    """What the controller remembers of a pod that runs (or ran) a model on a node.

    ``running``: phase ``Running`` and condition Ready (the model is GPU-resident).
    ``stopped``: phase ``Succeeded``/``Failed``. Neither: bound but not started or still
    loading (``Pending``/``Unknown``, or ``Running`` and not Ready).
    ``last_seen``: ``now`` unless stopped; when stopped, the latest container ``finishedAt``
    (never later than ``now``), else ``now``. ``gpu_indices``: the GPUs the pod holds
    (empty once it finished, or without an ``predicted-gpus`` annotation for its node).
    """

    pod: str
    uid: str
    node: str
    model: str
    revision: str | None
    size_bytes: int | None
    running: bool
    last_seen: dt.datetime
    gpu_indices: tuple[int, ...] = ()
    stopped: bool = False

    @property
    def key(self) -> ModelKey:
        return (self.model, self.revision)


def pod_use(pod: Mapping[str, Any], catalog: Catalog, now: dt.datetime) -> PodUse | None:
    """The model use a Pod dict shows, or None without a model annotation or a node."""
    return _use_of(pod_record(pod), pod, catalog, now)


def cache_capacity_bytes(
    node: Mapping[str, Any] | None,
    inventory: InventoryStatus | None,
    settings: ResidencySettings,
) -> int:
    """A node's model-cache capacity in bytes.

    First an agent's inventory (``source: agent``, stale or not: a disk's size outlives a
    report), then the node label ``kvsched.io/model-cache-bytes`` (a byte quantity such as
    ``2Ti``; an unreadable label is skipped), then ``settings.default_cache_capacity_bytes``.
    A controller-written capacity is not read back: it is this function's own output.
    """
    if (
        inventory is not None
        and inventory.source == "agent"
        and inventory.cache_capacity_bytes is not None
        and inventory.cache_capacity_bytes >= 0
    ):
        return inventory.cache_capacity_bytes
    labels = _mapping(_mapping(_mapping(node).get("metadata")).get("labels"))
    raw = labels.get(CACHE_BYTES_LABEL)
    if isinstance(raw, str | int) and not isinstance(raw, bool):
        try:
            return parse_whole_quantity(raw)
        except ValueError:
            pass
    return settings.default_cache_capacity_bytes


@dataclass(frozen=True, slots=True)
class _Sighting:
    size_bytes: int | None
    last_seen: dt.datetime


@dataclass(frozen=True, slots=True)
class _Holding:
    node: str
    pod: str
    indices: tuple[int, ...]


class ResidencyTracker:
    """The controller's memory of which models ran where, and of who holds which GPUs.

    Mutable, one per controller; every method is a pure function of its arguments and the
    tracker's own state (the caller passes ``now``). Feed it every Pod event with
    :meth:`observe_pod` (adds and updates alike, resyncs included: re-observing a pod in the
    same state changes nothing but a running model's lastUsed), deletions with
    :meth:`forget_pod`, Node deletions with :meth:`forget_node`.
    """

    def __init__(self, catalog: Catalog, settings: ResidencySettings | None = None) -> None:
        self.catalog = catalog
        self.settings = settings if settings is not None else ResidencySettings()
        self.evictions = 0
        """Models dropped from the picture so far (no room left, or over the entry limit)."""
        self._uses: _ByNode[PodUse] = _ByNode()
        self._holdings: _ByNode[_Holding] = _ByNode()
        self._history: dict[str, dict[ModelKey, _Sighting]] = {}

    # ------------------------------------------------------------------ events

    def observe_pod(self, pod: Mapping[str, Any], now: dt.datetime) -> PodUse | None:
        """Take in a pod's current state; returns its model use (None when it has none)."""
        record = pod_record(pod)
        if record.holds_gpus and (indices := _assigned(record)):
            assert record.node is not None
            self._holdings.put(record.uid, record.node, _Holding(record.node, record.ref, indices))
        else:
            self._holdings.pop(record.uid)

        use = _use_of(record, pod, self.catalog, now)
        previous = self._uses.pop(record.uid)
        if previous is not None and (
            use is None or use.key != previous.key or use.node != previous.node
        ):
            self._end(previous, now)  # the model annotation changed or went away
            previous = None
        if use is None:
            return None
        if use.stopped and previous is not None and previous.stopped:
            # Recorded when first seen stopped; a resync must not make it newer.
            use = replace(use, last_seen=previous.last_seen)
            self._uses.put(record.uid, use.node, use)
            return use
        self._uses.put(record.uid, use.node, use)  # first: a running key is never trimmed
        if use.running or use.stopped:
            self._record(use.node, use.key, use.size_bytes, use.last_seen)
        return use

    def forget_pod(self, uid: str, now: dt.datetime) -> None:
        """The pod was deleted: its GPUs are free; its model stays in the node's history."""
        self._holdings.pop(uid)
        previous = self._uses.pop(uid)
        if previous is not None:
            self._end(previous, now)

    def forget_node(self, name: str) -> None:
        """The node was deleted: forget everything about it."""
        self._history.pop(name, None)
        self._uses.drop_node(name)
        self._holdings.drop_node(name)

    # ------------------------------------------------------------------ queries

    def nodes(self) -> frozenset[str]:
        """Every node the tracker knows something about."""
        return frozenset(self._history) | self._uses.nodes() | self._holdings.nodes()

    def learned(
        self, node: str, now: dt.datetime, capacity_bytes: int
    ) -> tuple[tuple[ModelEntry, ...], tuple[Allocation, ...]]:
        """The node's models (sorted by name, revision) and allocations (sorted by index).

        Models that no longer fit ``capacity_bytes`` are evicted here (see the module
        docstring), counted in :attr:`evictions` and forgotten.
        """
        running = self._running(node)
        history = self._history.get(node, {})
        gpu: list[ModelEntry] = []
        others: list[ModelEntry] = []
        for key, seen in history.items():
            if key in running:
                gpu.append(_entry(key, "gpu", seen))
                continue
            elapsed = (now - seen.last_seen).total_seconds()
            tier = "host-memory" if elapsed < self.settings.host_memory_ttl_s else "local-disk"
            others.append(_entry(key, tier, seen))

        room = max(0, capacity_bytes - sum(e.size_bytes or 0 for e in gpu))
        cache: LRUCache[ModelKey, ModelEntry] = LRUCache(maxsize=room, getsizeof=_size_of)
        for entry in sorted(others, key=_recency):
            # Evicts the least recently used until it fits; ValueError: larger than the
            # whole room, so it cannot be there at all.
            with contextlib.suppress(ValueError):
                cache[entry.key] = entry
        kept = [*gpu, *cache.values()]
        evicted = [e.key for e in others if e.key not in cache]
        for key in evicted:
            del history[key]
        self.evictions += len(evicted)
        if not history:
            self._history.pop(node, None)

        allocations = sorted(
            {
                Allocation(index, holding.pod)
                for holding in self._holdings.on(node)
                for index in holding.indices
            },
            key=lambda a: (a.index, a.pod),
        )
        return tuple(sorted(kept, key=_order)), tuple(allocations)

    # ------------------------------------------------------------------ internals

    def _running(self, node: str) -> set[ModelKey]:
        return {u.key for u in self._uses.on(node) if u.running}

    def _end(self, previous: PodUse, now: dt.datetime) -> None:
        """A pod's use ended at ``now`` (deleted, or its model annotation changed)."""
        if previous.running:
            self._record(previous.node, previous.key, previous.size_bytes, now)

    def _record(self, node: str, key: ModelKey, size_bytes: int | None, seen: dt.datetime) -> None:
        history = self._history.setdefault(node, {})
        old = history.get(key)
        if old is not None:
            size_bytes = size_bytes if size_bytes is not None else old.size_bytes
            seen = max(seen, old.last_seen)
        history[key] = _Sighting(size_bytes, seen)
        limit = self.settings.max_models_per_node
        if len(history) > limit:
            running = self._running(node)
            idle = sorted(
                (k for k in history if k not in running),
                key=lambda k: (history[k].last_seen, k[0], k[1] or ""),
            )
            for stale in idle[: len(history) - limit]:
                del history[stale]
                self.evictions += 1


class _ByNode(Generic[_T]):
    """Values keyed by pod uid, indexed by node so that per-node queries stay O(pods there)."""

    __slots__ = ("_by_node", "_node_of")

    def __init__(self) -> None:
        self._node_of: dict[str, str] = {}
        self._by_node: dict[str, dict[str, _T]] = {}

    def put(self, uid: str, node: str, value: _T) -> None:
        if self._node_of.get(uid, node) != node:
            self.pop(uid)
        self._node_of[uid] = node
        self._by_node.setdefault(node, {})[uid] = value

    def pop(self, uid: str) -> _T | None:
        node = self._node_of.pop(uid, None)
        if node is None:
            return None
        values = self._by_node[node]
        value = values.pop(uid)
        if not values:
            del self._by_node[node]
        return value

    def on(self, node: str) -> list[_T]:
        return list(self._by_node.get(node, {}).values())

    def nodes(self) -> frozenset[str]:
        return frozenset(self._by_node)

    def drop_node(self, node: str) -> None:
        for uid in self._by_node.pop(node, {}):
            del self._node_of[uid]


def _use_of(
    record: PodRecord, pod: Mapping[str, Any], catalog: Catalog, now: dt.datetime
) -> PodUse | None:
    if record.model is None or not record.model.strip() or record.node is None:
        return None
    annotations = _mapping(_mapping(pod.get("metadata")).get("annotations"))
    raw_name = record.model.strip()
    spec = catalog.get(raw_name)
    revision = annotations.get(A_REVISION)
    size = _weights_override(annotations.get(A_WEIGHTS_BYTES))
    if size is None and spec is not None:
        size = weights_bytes(spec)
    stopped = record.phase in TERMINAL_PHASES
    return PodUse(
        pod=record.ref,
        uid=record.uid,
        node=record.node,
        model=(spec.name if spec is not None else raw_name).lower(),
        revision=revision if isinstance(revision, str) and revision.strip() else None,
        size_bytes=size,
        running=record.phase == RUNNING_PHASE and _ready(pod),
        last_seen=_finished_at(pod, now) if stopped else now,
        gpu_indices=_assigned(record) if record.holds_gpus else (),
        stopped=stopped,
    )


def _ready(pod: Mapping[str, Any]) -> bool:
    """Whether the pod's ``Ready`` condition is ``True`` (bounded: any pod can carry any
    status, and the kubelet writes a handful of conditions)."""
    conditions = _mapping(pod.get("status")).get("conditions")
    if not isinstance(conditions, list):
        return False
    for item in conditions[:MAX_CONDITIONS]:
        condition = _mapping(item)
        if condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return False


def _assigned(record: PodRecord) -> tuple[int, ...]:
    """The pod's assigned GPU indices on its own node (() without a usable annotation)."""
    prediction = record.prediction
    if prediction is None or prediction.node != record.node:
        return ()
    return tuple(sorted(prediction.indices))


def _weights_override(raw: object) -> int | None:
    if not isinstance(raw, str):
        return None
    try:
        value = parse_whole_quantity(raw)
    except ValueError:
        return None  # the extender rejects the pod with the reason; here it is just unknown
    return value if value > 0 else None


def _finished_at(pod: Mapping[str, Any], now: dt.datetime) -> dt.datetime:
    """The latest container finishedAt in the pod status (at most ``now``), else ``now``."""
    status = _mapping(pod.get("status"))
    latest: dt.datetime | None = None
    for field in ("containerStatuses", "initContainerStatuses"):
        statuses = status.get(field)
        for item in statuses if isinstance(statuses, list) else []:
            terminated = _mapping(_mapping(_mapping(item).get("state")).get("terminated"))
            text = terminated.get("finishedAt")
            if not isinstance(text, str):
                continue
            try:
                when = parse_time(text)
            except ValueError:
                continue
            latest = when if latest is None else max(latest, when)
    return now if latest is None else min(latest, now)


def _entry(key: ModelKey, tier: str, seen: _Sighting) -> ModelEntry:
    return ModelEntry(
        name=key[0],
        tier=tier,
        revision=key[1],
        size_bytes=seen.size_bytes,
        last_used=seen.last_seen,
    )


def _size_of(entry: ModelEntry) -> int:
    return entry.size_bytes or 0


def _recency(entry: ModelEntry) -> tuple[dt.datetime, str, str]:
    assert entry.last_used is not None
    return (entry.last_used, entry.name, entry.revision or "")


def _order(entry: ModelEntry) -> tuple[str, str]:
    return (entry.name, entry.revision or "")


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
