"""NodeInventory `.spec.warming` as typed values, and its JSON form (manifests/crd: the schema).

The kvsched controller (warming planner) writes the spec; the node agent reads it and fetches
the models it names. `WarmingSpec.from_spec()` is lenient in the way `InventoryStatus` is: an
entry it cannot read is dropped with the reason (naming the field and value) in `problems`, so
one bad entry does not stop the agent from fetching the others.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from scheduler.inventory.status import (
    INT64_MAX,
    MAX_MODEL_NAME,
    MAX_REVISION,
    MAX_WARMING_MODELS,
    format_time,
    parse_time,
)

__all__ = ["MAX_REASON", "WarmingRequest", "WarmingSpec"]

MAX_REASON = 256


@dataclass(frozen=True, slots=True)
class WarmingRequest:
    """One entry of ``spec.warming.models``: a model the controller wants on the node's disk."""

    name: str
    revision: str | None = None
    size_bytes: int | None = None
    reason: str = ""
    requested_at: dt.datetime | None = None

    def __post_init__(self) -> None:
        if not 1 <= len(self.name) <= MAX_MODEL_NAME:
            raise ValueError(
                f"spec.warming name {self.name[:64]!r}: must be 1..{MAX_MODEL_NAME} chars"
            )
        if self.revision is not None and not 1 <= len(self.revision) <= MAX_REVISION:
            raise ValueError(
                f"spec.warming {self.name}: revision {self.revision[:64]!r} must be "
                f"1..{MAX_REVISION} chars"
            )
        if self.size_bytes is not None and not 0 <= self.size_bytes <= INT64_MAX:
            raise ValueError(f"spec.warming {self.name}: sizeBytes {self.size_bytes} out of range")
        if len(self.reason) > MAX_REASON:
            raise ValueError(
                f"spec.warming {self.name}: reason is {len(self.reason)} chars, "
                f"at most {MAX_REASON}"
            )

    @property
    def key(self) -> tuple[str, str | None]:
        """Same matching as status.modelCache entries: lower-cased name and revision."""
        return (self.name.lower(), self.revision)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.revision is not None:
            out["revision"] = self.revision
        if self.size_bytes is not None:
            out["sizeBytes"] = self.size_bytes
        if self.reason:
            out["reason"] = self.reason
        if self.requested_at is not None:
            out["requestedAt"] = format_time(self.requested_at)
        return out

    @classmethod
    def from_dict(cls, item: object) -> WarmingRequest:
        """Strict: a malformed field raises ValueError naming the field and its value."""
        if not isinstance(item, Mapping):
            raise ValueError(f"spec.warming entry {str(item)[:80]!r} is not an object")
        name = item.get("name")
        if not isinstance(name, str):
            raise ValueError(f"spec.warming entry: name {str(name)[:80]!r} is not a string")
        revision = item.get("revision")
        if revision is not None and not isinstance(revision, str):
            raise ValueError(f"spec.warming {name}: revision {str(revision)[:80]!r} not a string")
        size = item.get("sizeBytes")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
            raise ValueError(f"spec.warming {name}: sizeBytes {str(size)[:80]!r} not an integer")
        reason = item.get("reason", "")
        if not isinstance(reason, str):
            raise ValueError(f"spec.warming {name}: reason {str(reason)[:80]!r} not a string")
        requested = item.get("requestedAt")
        if requested is not None and not isinstance(requested, str):
            raise ValueError(
                f"spec.warming {name}: requestedAt {str(requested)[:80]!r} not a date-time"
            )
        try:
            requested_at = parse_time(requested) if requested is not None else None
        except ValueError:
            raise ValueError(
                f"spec.warming {name}: requestedAt {str(requested)[:80]!r} not a date-time"
            ) from None
        return cls(
            name=name,
            revision=revision or None,
            size_bytes=size,
            reason=reason,
            requested_at=requested_at,
        )


@dataclass(frozen=True)
class WarmingSpec:
    """``spec.warming``: the models the controller wants on the node, one per key."""

    models: tuple[WarmingRequest, ...] = ()
    problems: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if len(self.models) > MAX_WARMING_MODELS:
            raise ValueError(
                f"spec.warming lists {len(self.models)} models; the CRD allows {MAX_WARMING_MODELS}"
            )
        keys = [m.key for m in self.models]
        if len(set(keys)) != len(keys):
            raise ValueError("spec.warming lists a model (name, revision) twice")

    def to_spec(self) -> dict[str, Any]:
        """The ``warming`` value of the object's spec, models sorted by key."""
        ordered = sorted(self.models, key=lambda m: (m.name.lower(), m.revision or ""))
        return {"models": [m.to_dict() for m in ordered]}

    @classmethod
    def from_spec(cls, spec: object) -> WarmingSpec:
        """Read an object's ``spec`` (the whole spec, as the API returns it)."""
        if spec is None:
            return cls()
        if not isinstance(spec, Mapping):
            return cls(problems=(f"spec {str(spec)[:80]!r} is not an object",))
        warming = spec.get("warming")
        if warming is None:
            return cls()
        if not isinstance(warming, Mapping):
            return cls(problems=(f"spec.warming {str(warming)[:80]!r} is not an object",))
        raw = warming.get("models")
        if raw is None:
            return cls()
        if not isinstance(raw, list):
            return cls(problems=(f"spec.warming.models {str(raw)[:80]!r} is not a list",))
        problems: list[str] = []
        if len(raw) > MAX_WARMING_MODELS:
            problems.append(
                f"spec.warming.models lists {len(raw)} models; read the first {MAX_WARMING_MODELS}"
            )
        models: dict[tuple[str, str | None], WarmingRequest] = {}
        for item in raw[:MAX_WARMING_MODELS]:
            try:
                request = WarmingRequest.from_dict(item)
            except ValueError as exc:
                problems.append(str(exc))
                continue
            if request.key in models:
                problems.append(f"spec.warming lists {request.name} twice; kept the first")
                continue
            models[request.key] = request
        return cls(models=tuple(models.values()), problems=tuple(problems))
