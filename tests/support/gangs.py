"""Gang tests through the ClusterStore: a store at a settable clock over given nodes and pods, and
one scheduling pass (filter over every node) of a pod."""

from __future__ import annotations

import datetime as dt
from typing import Any

from scheduler.models.catalog import Catalog
from scheduler.state.store import ClusterStore

LLAMA_70B = "meta-llama/Llama-3.1-70B-Instruct"
T0 = dt.datetime(2026, 11, 28, 9, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


def store_with(
    nodes: list[dict[str, Any]], pods: list[dict[str, Any]], clock: Clock | None = None
) -> ClusterStore:
    store = ClusterStore(Catalog.builtin(), clock=clock or Clock(), gang_ttl_s=120)
    store.replace_kind("Node", nodes)
    for p in pods:
        store.upsert_pod(p)
    store.synced = True
    return store


def schedule(store: ClusterStore, p: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    names = store.node_names()
    result = store.filter(store.demand(p), names)
    return result.passed, {**result.failed, **result.unresolvable}
