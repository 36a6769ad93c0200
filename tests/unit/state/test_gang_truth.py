"""A gang member's reserved GPUs against the kubelet's truth: the plan's indices are kvsched's
prediction at planning time, and the device plugin may hand an earlier member other GPUs."""

from __future__ import annotations

from typing import Any

from support.k8s import gpu_node, inventory, pod

from scheduler.models.catalog import Catalog
from scheduler.state.store import ClusterStore
from topology.presets import PRESETS


def member(name: str) -> dict[str, Any]:
    return pod(name, gpus=4, annotations={"kvsched.io/gang": "g", "kvsched.io/gang-size": "2"})


def test_a_member_whose_reserved_gpus_the_kubelet_gave_a_sibling_is_predicted_afresh() -> None:
    first, second = member("m0"), member("m1")
    store = ClusterStore(Catalog.builtin())
    store.replace_kind("Node", [gpu_node("n")])
    store.replace_kind("NodeInventory", [inventory("n", PRESETS["hgx-h100-8"])])
    for p in (first, second):
        store.upsert_pod(p)
    store.synced = True
    assert store.filter(store.demand(first), ["n"]).passed == ["n"]
    uid0, uid1 = (p["metadata"]["uid"] for p in (first, second))
    reserved = [store.reservation(uid) for uid in (uid0, uid1)]
    assert reserved[0] is not None and reserved[1] is not None
    planned0, planned1 = (r.reservation.indices for r in reserved if r is not None)
    assert set(planned0).isdisjoint(planned1)

    bound = store.bind("llm", "m0", uid0, "n")
    assert bound.prediction.indices == planned0
    # The device plugin gave m0 the GPUs the plan had meant for m1; the agent reports it.
    store.upsert_inventory(
        inventory("n", PRESETS["hgx-h100-8"], allocated=[(i, "llm/m0") for i in planned1])
    )
    assert store.filter(store.demand(second), ["n"]).passed == ["n"]
    again = store.bind("llm", "m1", uid1, "n")
    assert sorted(again.prediction.indices) == sorted(planned0)  # the GPUs really free
    state = store.node("n")
    assert state is not None and state.free_gpus == frozenset()
