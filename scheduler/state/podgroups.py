"""PodGroup objects (`scheduling.x-k8s.io/v1alpha1`, namespaced, the coscheduling plugin's CRD):
`namespace/name` -> `spec.minMember`, the size of the group whose members carry the label
`scheduling.x-k8s.io/pod-group: name` and no `kvsched.io/gang-size` (see core.demand).

The map is read without the store's lock (a dict lookup) and written under it; a PodGroup
without a positive whole `minMember` is left out (its members then have no size, and say so).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

log = logging.getLogger(__name__)

GROUP = "scheduling.x-k8s.io"
VERSION = "v1alpha1"
PLURAL = "podgroups"
KIND = "PodGroup"


def pod_group_key(obj: Mapping[str, Any]) -> str | None:
    """`namespace/name` of a PodGroup object, or None when it has no name."""
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        return None
    namespace = meta.get("namespace")
    return f"{namespace if isinstance(namespace, str) and namespace else 'default'}/{name}"


def min_member(obj: Mapping[str, Any]) -> int | None:
    """The PodGroup's `spec.minMember` when it is a positive whole number, else None."""
    spec = obj.get("spec")
    value = spec.get("minMember") if isinstance(spec, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


class PodGroups(Mapping[str, int]):
    """`namespace/name` -> minMember of the PodGroups the informer (or a cluster file) gave."""

    def __init__(self) -> None:
        self._sizes: dict[str, int] = {}

    def __getitem__(self, key: str) -> int:
        return self._sizes[key]

    def __iter__(self) -> Iterator[str]:
        return iter(dict(self._sizes))

    def __len__(self) -> int:
        return len(self._sizes)

    def get(self, key: str, default: Any = None) -> Any:  # the hot path: one dict lookup
        return self._sizes.get(key, default)

    def replace(self, items: Iterable[Mapping[str, Any]]) -> None:
        """All PodGroups, as a list returns them."""
        sizes: dict[str, int] = {}
        for obj in items:
            key = pod_group_key(obj)
            if key is None:
                continue
            size = min_member(obj)
            if size is None:
                log.info("PodGroup %s: no positive spec.minMember; its members have no size", key)
                continue
            sizes[key] = size
        self._sizes = sizes  # one assignment: readers see the old map or the new one

    def put(self, obj: Mapping[str, Any]) -> None:
        key = pod_group_key(obj)
        if key is None:
            return
        size = min_member(obj)
        sizes = dict(self._sizes)
        if size is None:
            log.info("PodGroup %s: no positive spec.minMember; its members have no size", key)
            sizes.pop(key, None)
        else:
            sizes[key] = size
        self._sizes = sizes

    def remove(self, obj: Mapping[str, Any]) -> None:
        key = pod_group_key(obj)
        if key is not None and key in self._sizes:
            sizes = dict(self._sizes)
            del sizes[key]
            self._sizes = sizes
