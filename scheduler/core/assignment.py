"""The `kvsched.io/predicted-gpus` annotation: the GPUs kvsched predicts the device plugin will
hand the pod on its node.

kvsched decides the node; on the node the kubelet asks the NVIDIA device plugin, which picks
whole GPUs itself (go-gpuallocator's best-effort policy over the free devices the kubelet
lists in random order) and reads no kvsched annotation. So this is a *prediction*
(topology.deviceplugin), written at bind so that the GPUs count as taken until the truth is
known, and read back when the cluster state is rebuilt (a restart loses nothing). As soon as
the node agent reports the kubelet's own allocation (PodResources, `allocatedSource: kubelet`
in the NodeInventory), that truth replaces the prediction in kvsched's accounting.

JSON so that tools can read it:
``{"node": "gpu-a", "indices": [0, 1], "uuids": ["GPU-…", "GPU-…"]}``; `uuids` is empty when
the node's GPU UUIDs are unknown (no inventory). The annotation's earlier name,
`kvsched.io/assigned-gpus`, is still read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from scheduler.core.bounds import echo, json_depth_exceeds

# Bounds on the JSON annotations kvsched reads back (any pod may carry any text under these
# names). Ours nest two deep ({"indices": [...]}) and stay under 4 KiB even with 72 GPUs'
# UUIDs; a longer or deeper text is refused before it is decoded (a deep one would make the
# decoder recurse until RecursionError).
MAX_ANNOTATION_JSON_CHARS = 64 * 2**10
MAX_ANNOTATION_JSON_DEPTH = 8


@dataclass(frozen=True, slots=True)
class GpuPrediction:
    node: str
    indices: tuple[int, ...]
    uuids: tuple[str, ...] = ()

    def encode(self) -> str:
        return json.dumps(
            {"node": self.node, "indices": list(self.indices), "uuids": list(self.uuids)},
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, text: str) -> GpuPrediction:
        """Parse the annotation; ValueError with the reason when it is not one of ours."""
        data = _json_object(text)
        node = data.get("node")
        indices = data.get("indices")
        uuids = data.get("uuids", [])
        if not isinstance(node, str) or not node:
            raise ValueError("'node' must be a non-empty string")
        if (
            not isinstance(indices, list)
            or not _int_list(indices)
            or len(set(indices)) != len(indices)
        ):
            raise ValueError("'indices' must be a list of distinct GPU indices >= 0")
        if not isinstance(uuids, list) or not all(isinstance(u, str) for u in uuids):
            raise ValueError("'uuids' must be a list of strings")
        return cls(node, tuple(indices), tuple(uuids))


def _json_object(text: str) -> dict[str, object]:
    if not isinstance(text, str):
        raise ValueError(f"not JSON text: {echo(text)}")
    if len(text) > MAX_ANNOTATION_JSON_CHARS:
        raise ValueError(f"longer than {MAX_ANNOTATION_JSON_CHARS} characters")
    if json_depth_exceeds(text, MAX_ANNOTATION_JSON_DEPTH):
        raise ValueError(f"nested deeper than {MAX_ANNOTATION_JSON_DEPTH} levels")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _int_list(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value
    )


def uuids_for(indices: Sequence[int], uuid_by_index: Sequence[str | None]) -> tuple[str, ...]:
    """UUIDs of the chosen GPUs, or () if any is unknown (a partial list would mislead)."""
    found = [uuid_by_index[i] if i < len(uuid_by_index) else None for i in indices]
    if any(u is None for u in found):
        return ()
    return tuple(u for u in found if u is not None)


@dataclass(frozen=True, slots=True)
class GpuReservation:
    """The `kvsched.io/reservation` annotation: GPUs a gang plan holds for a member until it
    binds or the plan expires. Kept on the member pod so that a restarted extender rebuilds
    the plan from the API server: ``{"gang": "ns/name", "node": "n", "indices": [0, 1],
    "expires": "2026-11-28T10:00:00Z"}``."""

    gang: str
    node: str
    indices: tuple[int, ...]
    expires: datetime

    def encode(self) -> str:
        return json.dumps(
            {
                "gang": self.gang,
                "node": self.node,
                "indices": list(self.indices),
                "expires": self.expires.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, text: str) -> GpuReservation:
        data = _json_object(text)
        gang, node, indices, expires = (data.get(k) for k in ("gang", "node", "indices", "expires"))
        if not isinstance(gang, str) or "/" not in gang:
            raise ValueError("'gang' must be namespace/name")
        if not isinstance(node, str) or not node:
            raise ValueError("'node' must be a non-empty string")
        if not isinstance(indices, list) or not _int_list(indices):
            raise ValueError("'indices' must be a list of GPU indices >= 0")
        if not isinstance(expires, str):
            raise ValueError("'expires' must be an RFC 3339 time")
        try:
            when = datetime.fromisoformat(expires.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"'expires' {echo(expires)} is not an RFC 3339 time") from None
        return cls(gang, node, tuple(indices), when)
