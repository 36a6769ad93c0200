"""Combine a node agent's report and the controller's picture into one NodeInventory status.

Two writers share each NodeInventory: the node agent (on the node; it measures GPUs, links,
bandwidth and what lies in the page cache and on disk) and the controller (it sees every pod,
so it alone knows which engine runs which model and who holds which GPU). Pure functions of
their arguments; the caller reads the clock.

Who owns what, whichever of them writes:

* **Agent facts**: ``gpus``, ``links``, ``bandwidth``, ``cache_capacity_bytes``,
  ``observed_at`` and the ``host-memory``/``local-disk`` tier of each model. A fresh agent
  report (``observed_at`` at most ``agent_stale_after_s`` old) wins over the controller.
* **Allocations**: the kubelet's list, as the agent read it from the PodResources API
  (``allocatedSource: kubelet``), is the truth and is never overwritten by the controller's
  list, which only mirrors kvsched's predictions (the pods' ``predicted-gpus`` annotations,
  ``allocatedSource: prediction``). The controller's list stands only where no fresh agent
  vouches for the kubelet's.
* **Controller facts**: the ``gpu`` tier (a running pod of that model on the node). A
  ``gpu`` entry the controller no longer confirms is demoted by the next controller write,
  whoever wrote it: without that, an entry upgraded while an engine ran would outlive the
  engine, since both merges keep ``gpu``.
* **Warming progress** (``status.warming``): the agent's alone; the controller's writes keep
  it as the object holds it.
* **Both**: ``lastUsed`` of a model both list is the newer of the two; ``sizeBytes`` is the
  report's when known, else the other's.

Models are matched by :attr:`ModelEntry.key` (lower-cased name, revision) and written sorted
by it, with one entry per key.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from scheduler.inventory.settings import ResidencySettings
from scheduler.inventory.status import Allocation, InventoryStatus, ModelEntry

__all__ = [
    "agent_is_fresh",
    "merge_agent_report",
    "merge_controller_view",
    "status_changed",
]

_TIER_RANK = {"gpu": 2, "host-memory": 1, "local-disk": 0}


def agent_is_fresh(status: InventoryStatus, now: dt.datetime, settings: ResidencySettings) -> bool:
    """Whether ``status`` is an agent report young enough to win.

    A report without ``observedAt`` is stale; one from the future (clock skew) is fresh.
    """
    if status.source != "agent" or status.observed_at is None:
        return False
    return (now - status.observed_at).total_seconds() <= settings.agent_stale_after_s


def merge_agent_report(current: InventoryStatus | None, report: InventoryStatus) -> InventoryStatus:
    """The status the node agent writes: its ``report`` over the object's ``current`` status.

    * ``source`` is ``agent``; ``gpus``, ``links``, ``bandwidth``, ``cache_capacity_bytes``,
      ``observed_at`` and ``problems`` are the report's.
    * ``allocated``: the report's when it carries the kubelet's list (the truth wins);
      otherwise ``current``'s predictions, if that is what ``current`` holds. A kubelet list
      in ``current`` that this report cannot confirm (the agent could not read the kubelet
      this cycle) is dropped rather than republished under a fresh ``observedAt``.
    * ``allocatableGpus`` is the report's (None when the kubelet was not read).
    * Models: every model the report lists. Where ``current`` lists it at ``gpu`` tier, the
      tier stays ``gpu`` (the better of the two: only the controller sees engines run);
      otherwise the report's tier stands (``host-memory`` vs ``local-disk`` is the agent's
      measurement). ``lastUsed`` is the newer of the two, ``sizeBytes`` the report's or else
      ``current``'s. Models only ``current`` lists are kept when at ``gpu`` tier and dropped
      otherwise (the agent looked and they are not in its cache).

    Idempotent: merging the same report into the result again changes nothing.
    """
    reported = _dedupe(report.models)
    models = dict(reported)
    if current is not None:
        for key, old in _dedupe(current.models).items():
            new = models.get(key)
            if new is None:
                if old.tier == "gpu":
                    models[key] = old
                continue
            tier = "gpu" if old.tier == "gpu" else new.tier
            models[key] = _combine(new, old, tier)
    if report.allocations_are_truth:
        allocated, allocated_source = report.allocated, report.allocated_source
    elif current is not None and current.allocated_source == "prediction":
        allocated, allocated_source = current.allocated, current.allocated_source
    else:
        allocated, allocated_source = (), None
    return InventoryStatus(
        source="agent",
        gpus=report.gpus,
        links=report.links,
        allocated=_sorted_allocations(allocated),
        cache_capacity_bytes=report.cache_capacity_bytes,
        models=_sorted(models.values()),
        bandwidth=dict(report.bandwidth),
        observed_at=report.observed_at,
        problems=report.problems,
        allocated_source=allocated_source,
        allocatable_gpus=report.allocatable_gpus,
        warming=report.warming,
    )


def merge_controller_view(
    current: InventoryStatus | None,
    models: tuple[ModelEntry, ...],
    allocated: tuple[Allocation, ...],
    capacity_bytes: int,
    now: dt.datetime,
    settings: ResidencySettings,
) -> InventoryStatus:
    """The status the controller writes, from its learned ``models`` and ``allocated``.

    **Fresh agent** (``current`` is an agent report no older than ``agent_stale_after_s``):
    the agent's status is kept as it is (``source`` stays ``agent``, ``observed_at``,
    hardware facts and capacity unchanged) except that

    * ``allocated`` stays the agent's when it is the kubelet's list, and becomes the
      controller's predictions otherwise;
    * a model the controller has at ``gpu`` tier is added, or upgraded to ``gpu`` if listed;
    * a ``gpu`` entry the controller does not have at ``gpu`` tier is demoted to the
      controller's tier for it, or, for a model the controller does not know, to
      ``host-memory`` while its ``lastUsed`` is within ``host_memory_ttl_s`` of ``now`` and
      ``local-disk`` otherwise;
    * a model both list gets the newer ``lastUsed`` (and the controller's size when the agent
      has none); models only the controller has below ``gpu`` tier are not added (the agent
      looked at the cache).

    **No agent, or a stale one**: ``source`` is ``controller``, models and allocations are the
    controller's (allocations as predictions: a silent agent's kubelet list is not trusted),
    the capacity is ``capacity_bytes`` and ``observed_at`` is ``now``; ``gpus``, ``links`` and
    ``bandwidth`` are kept from ``current`` when present, since hardware facts of a silent
    agent stay true far longer than its cache facts.
    """
    learned = _dedupe(models)
    if current is not None and agent_is_fresh(current, now, settings):
        merged = _dedupe(e for e in current.models if e.tier != "gpu")
        for key, claim in _dedupe(e for e in current.models if e.tier == "gpu").items():
            mine = learned.get(key)
            if mine is None or mine.tier != "gpu":
                claim = replace(claim, tier=_demoted_tier(claim, mine, now, settings))
            fact = merged.get(key)
            merged[key] = claim if fact is None else _best(claim, fact)
        for key, mine in learned.items():
            entry = merged.get(key)
            if entry is not None:
                merged[key] = _combine(entry, mine, "gpu" if mine.tier == "gpu" else entry.tier)
            elif mine.tier == "gpu":
                merged[key] = mine
        if current.allocations_are_truth:
            return replace(current, models=_sorted(merged.values()))
        return replace(
            current,
            allocated=_sorted_allocations(allocated),
            allocated_source="prediction",
            models=_sorted(merged.values()),
        )
    return InventoryStatus(
        source="controller",
        gpus=current.gpus if current is not None else (),
        links=current.links if current is not None else (),
        allocated=_sorted_allocations(allocated),
        allocated_source="prediction",
        cache_capacity_bytes=capacity_bytes,
        models=_sorted(learned.values()),
        bandwidth=dict(current.bandwidth) if current is not None else {},
        observed_at=now,
        # Only the agent writes warming progress; the controller carries it over as it is.
        warming=current.warming if current is not None else (),
    )


def status_changed(old: InventoryStatus | None, new: InventoryStatus) -> bool:
    """Whether writing ``new`` over ``old`` would change anything that matters.

    Compared in the written (JSON) form, so sub-second differences that the API server
    drops do not count, nor does the order of models or allocations. Ignored: ``observedAt``
    when both are controller-written (it would otherwise change on every resync), and
    ``lastUsed`` of a model that is ``gpu``-resident in both (it moves with every
    observation of the running pod; the tier change when it stops is what matters).
    """
    if old is None:
        return True
    before, after = old.to_status(), new.to_status()
    if old.source == "controller" and new.source == "controller":
        before.pop("observedAt", None)
        after.pop("observedAt", None)
    gpu_in_both = {m.key for m in old.models if m.tier == "gpu"} & {
        m.key for m in new.models if m.tier == "gpu"
    }
    return _normal(before, gpu_in_both) != _normal(after, gpu_in_both)


def _normal(status: dict[str, Any], gpu_in_both: set[tuple[str, str | None]]) -> dict[str, Any]:
    cache = dict(status.get("modelCache", {}))
    models = []
    for item in cache.get("models", []):
        entry = dict(item)
        if entry["tier"] == "gpu" and (entry["name"].lower(), entry.get("revision")) in gpu_in_both:
            entry.pop("lastUsed", None)
        models.append(entry)
    cache["models"] = sorted(models, key=lambda m: (m["name"].lower(), m.get("revision") or ""))
    status["modelCache"] = cache
    status["allocated"] = sorted(status.get("allocated", []), key=lambda a: (a["index"], a["pod"]))
    return status


def _demoted_tier(
    entry: ModelEntry, mine: ModelEntry | None, now: dt.datetime, settings: ResidencySettings
) -> str:
    if mine is not None:
        return mine.tier
    if (
        entry.last_used is not None
        and (now - entry.last_used).total_seconds() < settings.host_memory_ttl_s
    ):
        return "host-memory"
    return "local-disk"


def _combine(primary: ModelEntry, other: ModelEntry, tier: str) -> ModelEntry:
    """``primary``'s entry with ``tier``, the newer lastUsed and ``other``'s size as fallback."""
    return replace(
        primary,
        tier=tier,
        size_bytes=primary.size_bytes if primary.size_bytes is not None else other.size_bytes,
        last_used=_newer(primary.last_used, other.last_used),
    )


def _newer(a: dt.datetime | None, b: dt.datetime | None) -> dt.datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def _dedupe(models: Iterable[ModelEntry]) -> dict[tuple[str, str | None], ModelEntry]:
    """One entry per key (see :func:`_best`)."""
    out: dict[tuple[str, str | None], ModelEntry] = {}
    for entry in models:
        seen = out.get(entry.key)
        out[entry.key] = entry if seen is None else _best(seen, entry)
    return out


def _best(a: ModelEntry, b: ModelEntry) -> ModelEntry:
    """Two entries for one copy as one: the better tier (``a``'s on a tie), the newer
    lastUsed, a known size."""
    best, rest = (b, a) if _TIER_RANK[b.tier] > _TIER_RANK[a.tier] else (a, b)
    return _combine(best, rest, best.tier)


def _sorted(models: Iterable[ModelEntry]) -> tuple[ModelEntry, ...]:
    return tuple(sorted(models, key=lambda m: (m.name.lower(), m.revision or "")))


def _sorted_allocations(allocated: Iterable[Allocation]) -> tuple[Allocation, ...]:
    return tuple(sorted(set(allocated), key=lambda a: (a.index, a.pod)))
