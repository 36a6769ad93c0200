"""NodeInventory `.status` as typed values, and its JSON form (manifests/crd defines the schema).

The agent and the controller build these and write `to_status()`; both read an existing
object with `InventoryStatus.from_status()`, which is lenient (a field it cannot read is
dropped with the reason in `problems`) because the object may come from another version.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

# Re-exported for the agent and the controller, which stamp status times with it.
from scheduler.clock import now as now

TIERS = ("gpu", "host-memory", "local-disk")
SOURCES = ("agent", "controller")
# Who vouches for `allocated`: the kubelet (the agent read its PodResources API: the truth),
# or kvsched's own prediction of the device plugin's choice (the controller mirrors the pods'
# kvsched.io/predicted-gpus annotations). Only the kubelet's list counts in placement.
ALLOCATION_SOURCES = ("kubelet", "prediction")
# status.warming.models[].state, as the CRD enumerates it: queued (asked for, not started),
# copying, done (complete and verified: the model is then also in modelCache), failed (message
# says why), evicted (copied once, since removed by LRU within the agent's budget).
WARMING_STATES = ("queued", "copying", "done", "failed", "evicted")
# The CRD's bounds (manifests/crd): a write beyond them is refused whole by the API server.
MAX_WARMING_MODELS = 64
MAX_MODEL_NAME = 256
MAX_REVISION = 128
MAX_MESSAGE = 256
INT64_MAX = 2**63 - 1


def format_time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> dt.datetime:
    """RFC 3339 as the API server writes it ("2026-11-28T08:00:00Z")."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(dt.UTC)


@dataclass(frozen=True, slots=True)
class GpuEntry:
    index: int
    uuid: str | None = None
    product: str | None = None
    memory_bytes: int | None = None
    numa_node: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index}
        if self.uuid is not None:
            out["uuid"] = self.uuid
        if self.product is not None:
            out["product"] = self.product
        if self.memory_bytes is not None:
            out["memoryBytes"] = self.memory_bytes
        if self.numa_node is not None:
            out["numaNode"] = self.numa_node
        return out


@dataclass(frozen=True, slots=True)
class Allocation:
    index: int
    pod: str  # namespace/name

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "pod": self.pod}


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One cached copy of a model on the node."""

    name: str
    tier: str
    revision: str | None = None
    size_bytes: int | None = None
    last_used: dt.datetime | None = None

    def __post_init__(self) -> None:
        if self.tier not in TIERS:
            raise ValueError(f"model {self.name}: tier {self.tier!r} not one of {TIERS}")

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.name.lower(), self.revision)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "tier": self.tier}
        if self.revision is not None:
            out["revision"] = self.revision
        if self.size_bytes is not None:
            out["sizeBytes"] = self.size_bytes
        if self.last_used is not None:
            out["lastUsed"] = format_time(self.last_used)
        return out


@dataclass(frozen=True, slots=True)
class WarmingProgress:
    """One entry of ``status.warming.models``: how the agent's copy of a model is going.

    Written only by the node agent; the controller reads it and carries it over untouched.
    """

    name: str
    state: str
    updated_at: dt.datetime
    revision: str | None = None
    bytes_done: int = 0
    bytes_total: int | None = None
    message: str = ""
    started_at: dt.datetime | None = None

    def __post_init__(self) -> None:
        if not 1 <= len(self.name) <= MAX_MODEL_NAME:
            raise ValueError(f"warming model name {self.name[:64]!r}: 1..{MAX_MODEL_NAME} chars")
        if self.state not in WARMING_STATES:
            raise ValueError(
                f"warming {self.name}: state {self.state!r} not one of {WARMING_STATES}"
            )
        if self.revision is not None and not 1 <= len(self.revision) <= MAX_REVISION:
            raise ValueError(f"warming {self.name}: revision longer than {MAX_REVISION} chars")
        for label, value in (("bytesDone", self.bytes_done), ("bytesTotal", self.bytes_total)):
            if value is not None and not 0 <= value <= INT64_MAX:
                raise ValueError(f"warming {self.name}: {label} {value} outside 0..2^63-1")

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.name.lower(), self.revision)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "state": self.state,
            "bytesDone": self.bytes_done,
            "updatedAt": format_time(self.updated_at),
        }
        if self.revision is not None:
            out["revision"] = self.revision
        if self.bytes_total is not None:
            out["bytesTotal"] = self.bytes_total
        if self.message:
            # Messages carry error text from the file system or the source; the API server
            # would refuse the whole status over one long message, so it is cut here.
            out["message"] = _clip(self.message, MAX_MESSAGE)
        if self.started_at is not None:
            out["startedAt"] = format_time(self.started_at)
        return out

    @classmethod
    def from_dict(cls, item: Mapping[str, Any]) -> WarmingProgress:
        """Strict: a missing or malformed field raises ValueError naming it and its value."""
        if not isinstance(item, Mapping):
            raise ValueError(f"warming entry {str(item)[:80]!r} is not an object")
        name = item.get("name")
        if not isinstance(name, str):
            raise ValueError(f"warming entry: name {str(name)[:80]!r} is not a string")
        updated = item.get("updatedAt")
        if not isinstance(updated, str):
            raise ValueError(f"warming {name}: updatedAt {str(updated)[:80]!r} is not a date-time")
        started = item.get("startedAt")
        if started is not None and not isinstance(started, str):
            raise ValueError(f"warming {name}: startedAt {str(started)[:80]!r} is not a date-time")
        message = item.get("message", "")
        if not isinstance(message, str):
            raise ValueError(f"warming {name}: message is not a string")
        return cls(
            name=name,
            state=str(item.get("state")),
            updated_at=_strict_time(updated, "updatedAt", name),
            revision=_optional_str(item, "revision", name),
            bytes_done=_strict_int(item.get("bytesDone", 0), "bytesDone", name),
            bytes_total=None
            if item.get("bytesTotal") is None
            else _strict_int(item.get("bytesTotal"), "bytesTotal", name),
            message=message[:MAX_MESSAGE],
            started_at=_strict_time(started, "startedAt", name) if started is not None else None,
        )


@dataclass(frozen=True)
class InventoryStatus:
    source: str
    gpus: tuple[GpuEntry, ...] = ()
    links: tuple[tuple[str, ...], ...] = ()
    allocated: tuple[Allocation, ...] = ()
    cache_capacity_bytes: int | None = None
    models: tuple[ModelEntry, ...] = ()
    bandwidth: Mapping[str, float] = field(default_factory=dict)
    observed_at: dt.datetime | None = None
    problems: tuple[str, ...] = field(default=(), compare=False)
    # "kubelet" or "prediction" (see ALLOCATION_SOURCES); None: unknown, not trusted.
    allocated_source: str | None = None
    # GPU indices the kubelet can hand out (PodResources GetAllocatableResources: healthy,
    # not reserved); None when not read.
    allocatable_gpus: tuple[int, ...] | None = None
    # status.warming.models: the agent's copies in progress (written by the agent only; the
    # controller's merge keeps whatever the object holds).
    warming: tuple[WarmingProgress, ...] = ()

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source {self.source!r} not one of {SOURCES}")
        if len(self.warming) > MAX_WARMING_MODELS:
            raise ValueError(
                f"status.warming lists {len(self.warming)} models; the CRD allows "
                f"{MAX_WARMING_MODELS}"
            )
        if self.allocated_source is not None and self.allocated_source not in ALLOCATION_SOURCES:
            raise ValueError(
                f"allocatedSource {self.allocated_source!r} not one of {ALLOCATION_SOURCES}"
            )

    @property
    def allocations_are_truth(self) -> bool:
        """Whether `allocated` is the kubelet's own list (and so wins over predictions)."""
        return self.allocated_source == "kubelet"

    def with_models(self, models: tuple[ModelEntry, ...]) -> InventoryStatus:
        return replace(self, models=models)

    def to_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {"source": self.source}
        if self.gpus:
            status["gpus"] = [g.to_dict() for g in self.gpus]
            status["gpuCount"] = len(self.gpus)
        if self.links:
            status["links"] = [list(row) for row in self.links]
        status["allocated"] = [a.to_dict() for a in self.allocated]
        if self.allocated_source is not None:
            status["allocatedSource"] = self.allocated_source
        if self.allocatable_gpus is not None:
            status["allocatableGpus"] = sorted(self.allocatable_gpus)
        cache: dict[str, Any] = {"models": [m.to_dict() for m in self.models]}
        if self.cache_capacity_bytes is not None:
            cache["capacityBytes"] = self.cache_capacity_bytes
        status["modelCache"] = cache
        if self.bandwidth:
            status["bandwidth"] = dict(self.bandwidth)
        if self.observed_at is not None:
            status["observedAt"] = format_time(self.observed_at)
        if self.warming:
            status["warming"] = {
                "models": [w.to_dict() for w in sorted(self.warming, key=_warming_order)]
            }
        return status

    @classmethod
    def from_status(cls, status: Mapping[str, Any] | None) -> InventoryStatus | None:
        """Read an object's status; None when there is none (a fresh object)."""
        if not status:
            return None
        problems: list[str] = []
        source = status.get("source")
        if source not in SOURCES:
            problems.append(f"source {source!r} unknown; read as controller")
            source = "controller"
        gpus: list[GpuEntry] = []
        for item in _list(status.get("gpus")):
            try:
                gpus.append(
                    GpuEntry(
                        int(item["index"]),
                        _str(item.get("uuid")),
                        _str(item.get("product")),
                        _int(item.get("memoryBytes")),
                        _int(item.get("numaNode")),
                    )
                )
            except (KeyError, TypeError, ValueError) as exc:
                problems.append(f"gpus entry {item!r}: {exc}")
        links = tuple(tuple(str(code) for code in _list(row)) for row in _list(status.get("links")))
        allocated: list[Allocation] = []
        for item in _list(status.get("allocated")):
            try:
                allocated.append(Allocation(int(item["index"]), str(item["pod"])))
            except (KeyError, TypeError, ValueError) as exc:
                problems.append(f"allocated entry {item!r}: {exc}")
        allocated_source = status.get("allocatedSource")
        if allocated_source is not None and allocated_source not in ALLOCATION_SOURCES:
            problems.append(f"allocatedSource {allocated_source!r} unknown; not trusted")
            allocated_source = None
        allocatable_gpus: tuple[int, ...] | None = None
        raw_allocatable = status.get("allocatableGpus")
        if raw_allocatable is not None:
            if isinstance(raw_allocatable, list) and all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in raw_allocatable
            ):
                allocatable_gpus = tuple(sorted(set(raw_allocatable)))
            else:
                problems.append("allocatableGpus is not a list of GPU indices; ignored")
        cache = status.get("modelCache") if isinstance(status.get("modelCache"), Mapping) else {}
        assert isinstance(cache, Mapping)
        models: list[ModelEntry] = []
        for item in _list(cache.get("models")):
            try:
                last_used = item.get("lastUsed")
                models.append(
                    ModelEntry(
                        name=str(item["name"]),
                        tier=str(item["tier"]),
                        revision=_str(item.get("revision")),
                        size_bytes=_int(item.get("sizeBytes")),
                        last_used=parse_time(last_used) if isinstance(last_used, str) else None,
                    )
                )
            except (KeyError, TypeError, ValueError) as exc:
                problems.append(f"model entry {item!r}: {exc}")
        warming: list[WarmingProgress] = []
        raw_warming = status.get("warming")
        items = _list(raw_warming.get("models")) if isinstance(raw_warming, Mapping) else []
        for item in items[:MAX_WARMING_MODELS]:
            try:
                warming.append(WarmingProgress.from_dict(item))
            except ValueError as exc:
                problems.append(str(exc))
        bandwidth = status.get("bandwidth")
        observed = status.get("observedAt")
        try:
            observed_at = parse_time(observed) if isinstance(observed, str) else None
        except ValueError as exc:
            problems.append(f"observedAt {observed!r}: {exc}")
            observed_at = None
        return cls(
            source=str(source),
            gpus=tuple(gpus),
            links=links,
            allocated=tuple(allocated),
            cache_capacity_bytes=_int(cache.get("capacityBytes")),
            models=tuple(models),
            bandwidth={str(k): float(v) for k, v in bandwidth.items() if isinstance(v, int | float)}
            if isinstance(bandwidth, Mapping)
            else {},
            observed_at=observed_at,
            problems=tuple(problems),
            allocated_source=allocated_source,
            allocatable_gpus=allocatable_gpus,
            warming=tuple(warming),
        )


def _warming_order(entry: WarmingProgress) -> tuple[str, str]:
    return (entry.name.lower(), entry.revision or "")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _optional_str(item: Mapping[str, Any], field: str, owner: str) -> str | None:
    value = item.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{owner}: {field} {str(value)[:80]!r} is not a non-empty string")
    return value


def _strict_time(text: str, field: str, owner: str) -> dt.datetime:
    try:
        return parse_time(text)
    except ValueError:
        raise ValueError(f"{owner}: {field} {text[:80]!r} is not a date-time") from None


def _strict_int(value: object, field: str, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{owner}: {field} {str(value)[:80]!r} is not an integer")
    return value


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)
