"""Hostile objects: quarantined at the object boundary, never a dead informer, never GPUs freed.

The worked example of issue 12: one pod (any namespace, no GPUs) whose `kvsched.io/reservation`
has an `expires` without a timezone used to break the pod informer (the upsert raised, the
relist emptied the pod map and raised again), after which a routine Node update rebuilt the
node from that empty map and an 8-GPU pod was placed onto GPUs two running pods hold.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import pytest
from support.fake_kube import FakeApi, run_until_exhausted, with_kind
from support.k8s import gpu_node, pod

from scheduler.core.assignment import GpuPrediction
from scheduler.models.catalog import Catalog
from scheduler.state.kube import KubeError, ObjectList
from scheduler.state.objects import read_pod
from scheduler.state.store import ClusterStore
from scheduler.state.sync import ClusterSync

NAIVE_RESERVATION = '{"gang":"x/g","node":"a","indices":[0],"expires":"2026-11-28T10:00:00"}'


def running(name: str, indices: tuple[int, ...]) -> dict[str, Any]:
    return pod(
        name,
        gpus=len(indices),
        node="a",
        phase="Running",
        annotations={"kvsched.io/predicted-gpus": GpuPrediction("a", indices).encode()},
    )


def hostile() -> dict[str, Any]:
    """Not a GPU pod, not even in the workloads' namespace."""
    return pod(
        "innocent",
        gpus=0,
        namespace="someone-else",
        annotations={"kvsched.io/reservation": NAIVE_RESERVATION},
    )


def test_naive_reservation_expiry_is_a_bad_annotation_not_a_crash() -> None:
    record, problem = read_pod(hostile())
    assert problem is not None and problem.reason == "bad-annotation"
    assert "timezone" in problem.detail
    assert record.reservation is None and record.ref == "someone-else/innocent"


def test_hostile_pod_in_a_watch_keeps_the_informer_and_the_gpus_held() -> None:
    api = FakeApi()
    holders = [
        with_kind(running("p1", (0, 1, 2, 3)), "Pod"),
        with_kind(running("p2", (4, 5, 6, 7)), "Pod"),
    ]
    api.lists["Pod"] = [
        ObjectList(holders, "1"),
        ObjectList([*holders, with_kind(hostile(), "Pod")], "2"),
    ]
    api.watches["Pod"] = [[{"type": "ADDED", "object": with_kind(hostile(), "Pod", "2")}]]
    store = ClusterStore(Catalog.builtin())
    store.replace_kind("Node", [gpu_node("a")])
    run_until_exhausted(api, store, "Pod")
    # The watch event was taken: no relist was needed, and the pod map is whole.
    assert [c for c in api.calls if c[0] == "list"] == [("list", "Pod")]
    assert {p.name for p in store.cache.pods.values()} == {"p1", "p2", "innocent"}
    # A routine Node update rebuilds the node from the pods it knows: all eight GPUs held.
    store.upsert("Node", with_kind(gpu_node("a"), "Node", "3"))
    state = store.node("a")
    assert state is not None and state.free_gpus == frozenset()
    big = pod("big", gpus=8)
    assert store.filter(store.demand(big), ["a"]).passed == []
    assert store.quarantine.counts() == {("Pod", "bad-annotation"): 1}


def test_hostile_pod_in_a_relist_replaces_nothing_with_emptiness() -> None:
    api = FakeApi()
    holders = [
        with_kind(running("p1", (0, 1, 2, 3)), "Pod"),
        with_kind(running("p2", (4, 5, 6, 7)), "Pod"),
    ]
    # The hostile pod first: a relist that raised on it left the map empty.
    api.lists["Pod"] = [ObjectList([with_kind(hostile(), "Pod"), *holders], "1")]
    store = ClusterStore(Catalog.builtin())
    store.replace_kind("Node", [gpu_node("a")])
    run_until_exhausted(api, store, "Pod")
    assert [c for c in api.calls if c[0] == "list"] == [("list", "Pod")]
    store.upsert("Node", with_kind(gpu_node("a"), "Node", "3"))
    state = store.node("a")
    assert state is not None and state.free_gpus == frozenset()
    assert store.filter(store.demand(pod("big", gpus=8)), ["a"]).passed == []


def test_a_relist_that_breaks_midway_leaves_the_previous_view() -> None:
    store = ClusterStore(Catalog.builtin())
    store.replace_kind("Node", [gpu_node("a")])
    store.replace_kind("Pod", [running("p1", (0, 1, 2, 3))])

    def broken() -> Any:
        yield running("p2", (4, 5, 6, 7))
        raise KubeError("connection reset while paging")

    with pytest.raises(KubeError):
        store.replace_kind("Pod", broken())
    state = store.node("a")
    assert state is not None and state.free_gpus == frozenset({4, 5, 6, 7})
    assert {p.name for p in store.cache.pods.values()} == {"p1"}


def test_unreadable_annotations_of_a_bound_gpu_pod_still_hold_its_gpus() -> None:
    bad = running("p1", (0, 1, 2, 3))
    bad["metadata"]["annotations"]["kvsched.io/predicted-gpus"] = "{not json"
    bad["metadata"]["annotations"]["kvsched.io/gang"] = "g"
    bad["metadata"]["annotations"]["kvsched.io/gang-size"] = "1"
    store = ClusterStore(Catalog.builtin())
    store.replace_kind("Node", [gpu_node("a")])
    store.upsert_pod(bad)
    state = store.node("a")
    assert (
        state is not None and state.unindexed_busy == 4 and state.free_gpus == frozenset(range(8))
    )
    record = store.pod("uid-llm-p1")
    # Ignored for other pods' decisions: no gang, no model, no prediction; only its GPUs.
    assert record is not None and record.gang is None and record.prediction is None
    assert record.gpus == 4 and record.holds_gpus


def test_rejections_are_counted_and_logged_once_per_object_version(caplog: Any) -> None:
    store = ClusterStore(Catalog.builtin())
    store.replace_kind("Node", [gpu_node("a")])
    bad = with_kind(hostile(), "Pod", "7")
    with caplog.at_level("WARNING", logger="scheduler.state.quarantine"):
        for _ in range(3):
            store.replace_kind("Pod", [bad])
            store.upsert_pod(bad)
    assert store.quarantine.counts() == {("Pod", "bad-annotation"): 1}
    assert len([r for r in caplog.records if "innocent" in r.getMessage()]) == 1
    newer = copy.deepcopy(bad)
    newer["metadata"]["resourceVersion"] = "8"
    store.upsert_pod(newer)
    assert store.quarantine.counts() == {("Pod", "bad-annotation"): 2}
    # Fixed: no longer quarantined.
    fixed = copy.deepcopy(newer)
    fixed["metadata"]["annotations"] = {}
    store.upsert_pod(fixed)
    assert store.quarantine.current() == {}


def test_unreadable_objects_never_stop_the_watch() -> None:
    api = FakeApi()
    weird: list[dict[str, Any]] = [
        {"kind": "Pod", "metadata": "not a mapping"},
        {"kind": "Pod", "metadata": {"name": "n", "uid": "u", "annotations": ["a", "list"]}},
        {"kind": "Pod", "metadata": {"name": "m", "uid": "v"}, "spec": {"containers": "x"}},
        {"kind": "Pod", "metadata": {"name": "k", "uid": "w"}, "spec": [], "status": 5},
    ]
    api.watches["Pod"] = [
        [{"type": "ADDED", "object": o} for o in weird]
        + [{"type": "ADDED", "object": with_kind(running("p1", (0, 1)), "Pod", "9")}]
    ]
    store = ClusterStore(Catalog.builtin())
    store.replace_kind("Node", [gpu_node("a")])
    run_until_exhausted(api, store, "Pod")
    assert [c for c in api.calls if c[0] == "list"] == [("list", "Pod")]
    state = store.node("a")
    assert state is not None and state.free_gpus == frozenset(range(2, 8))
    counts = store.quarantine.counts()
    assert sum(counts.values()) == 4
    assert {reason for _, reason in counts} <= {"bad-annotation", "bad-spec", "unreadable"}


def test_bad_inventory_falls_back_to_labels_and_bad_node_is_not_offered() -> None:
    store = ClusterStore(Catalog.builtin())
    node = gpu_node("a")
    node["status"]["allocatable"]["nvidia.com/gpu"] = float("inf")  # YAML can say .inf
    store.replace_kind("Node", [node, gpu_node("b")])
    inventory = {
        "kind": "NodeInventory",
        "metadata": {"name": "b"},
        "status": {"gpus": [{"index": float("inf")}], "links": [["X"]]},
    }
    store.upsert("NodeInventory", inventory)
    b = store.node("b")
    assert b is not None and b.source == "labels" and len(b.free_gpus) == 8
    assert store.node("a") is None or store.node("a").allocatable_gpus == 0  # type: ignore[union-attr]


def test_sync_reports_a_failed_relist_until_the_next_success() -> None:
    api = FakeApi()
    api.lists["Pod"] = [KubeError("down"), ObjectList([], "3")]
    store = ClusterStore(Catalog.builtin())
    problems: list[dict[str, str]] = []
    sync = ClusterSync(api, store)

    def sleep(_: float) -> None:
        problems.append(dict(store.sync_problems))
        if api.exhausted.is_set():
            sync.stop()

    sync._sleep = sleep
    sync._note_never_listed()
    assert set(store.sync_problems) == {"Node", "Pod", "NodeInventory", "PodGroup"}
    sync.run_kind("Pod")
    assert "down" in problems[0]["Pod"]
    # Listed again: the pod kind is in sync (the watch failing afterwards is routine).
    assert "Pod" not in problems[1]


def test_controller_state_survives_hostile_pods() -> None:
    from scheduler.controller.residency import ResidencySettings, ResidencyTracker
    from scheduler.controller.run import ControllerState

    state = ControllerState(ResidencyTracker(Catalog.builtin(), ResidencySettings()))
    state.replace_kind("Pod", [hostile(), {"metadata": "x"}, running("p1", (0,))])
    state.upsert("Pod", {"metadata": {"name": "n", "annotations": ["x"]}, "spec": 3})
    state.delete("Pod", {"metadata": 7})


def test_store_is_safe_under_concurrent_hostile_relists() -> None:
    store = ClusterStore(Catalog.builtin())
    store.replace_kind("Node", [gpu_node("a")])
    good = [running("p1", (0, 1, 2, 3)), running("p2", (4, 5, 6, 7))]
    errors: list[BaseException] = []

    def relist() -> None:
        try:
            for _ in range(20):
                store.replace_kind("Pod", [hostile(), *good])
        except BaseException as exc:  # pragma: no cover - the failure being tested for
            errors.append(exc)

    threads = [threading.Thread(target=relist) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    state = store.node("a")
    assert state is not None and state.free_gpus == frozenset()
