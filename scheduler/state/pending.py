"""Pods seen by filter and prioritize, remembered for bind and for gang planning.

kube-scheduler's bind call carries only a pod's name, UID and node, so the store keeps the
demand it parsed at filter time; a gang is planned from every member the scheduler has shown
it, and a member's group identity (name and controller) comes from the pod it was shown.
Bounded (an LRU over pods); a deleted pod is forgotten at once, so that it never comes back
as a gang member through this memory.

Thread safety: filter (event loop or verb threads) writes, binds (worker threads) read; the
store's lock guards both.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from cachetools import LRUCache

from scheduler.core.demand import PodDemand
from scheduler.state.objects import controller_uid, gang_identity

__all__ = ["PendingPods"]


class PendingPods:
    def __init__(self, lock: threading.RLock, size: int = 10_000) -> None:
        self._lock = lock
        self._demands: LRUCache[str, PodDemand] = LRUCache(size)
        # Their groups' identities (gang key and controller), by UID.
        self._gang_ids: LRUCache[str, str] = LRUCache(size)

    def remember(self, demand: PodDemand, pod: Mapping[str, Any]) -> None:
        """Filter or prioritize was asked about `pod` (parsed as `demand`)."""
        if not demand.uid:
            return
        gang_id = None
        if demand.gang is not None:
            meta = pod.get("metadata")
            owner = controller_uid(meta) if isinstance(meta, Mapping) else None
            gang_id = gang_identity(demand.gang.key, demand.gang.source, owner)
        with self._lock:
            self._demands[demand.uid] = demand
            if gang_id is not None:
                self._gang_ids[demand.uid] = gang_id

    def forget(self, uid: str) -> None:
        """The pod was deleted (lock held)."""
        self._demands.pop(uid, None)
        self._gang_ids.pop(uid, None)

    def demand(self, uid: str) -> PodDemand | None:
        return self._demands.get(uid)

    def gang_id(self, uid: str) -> str | None:
        return self._gang_ids.get(uid)

    def demands(self) -> list[PodDemand]:
        """Every remembered demand (lock held; a copy)."""
        return list(self._demands.values())
