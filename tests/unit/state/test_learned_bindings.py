"""Bindings kvsched did not make itself, learned from the pod watch (no bindVerb: kube-scheduler
binds; or another scheduler): the pod gets a prediction as its binding arrives, keeps it through
later events and relists, a gang member takes its plan's GPUs, and a pod bound onto GPUs a plan
held releases that plan; a pod this extender placed gets its prediction written on it afterwards
(an effect), one another scheduler placed does not."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from support.gangs import LLAMA_70B, schedule, store_with
from support.k8s import gpu_node, inventory, pod

from scheduler.core.assignment import GpuPrediction
from scheduler.state.effects import Effect, RecordPlacement, WriteReservation
from scheduler.state.store import ClusterStore
from topology.presets import PRESETS

NODES = [gpu_node(f"n{i}", labels={"topology.kubernetes.io/zone": "a"}) for i in range(2)]


class Recorded:
    """An effect runner that keeps what it was given."""

    def __init__(self) -> None:
        self.effects: list[Effect] = []

    def start(self) -> None:
        pass

    def stop(self, timeout_s: float = 1.0) -> None:
        pass

    def submit(self, effects: Any) -> None:
        self.effects += list(effects)


def bound(obj: dict[str, Any], node: str) -> dict[str, Any]:
    """The pod as the watch shows it once kube-scheduler bound it (no kvsched annotation)."""
    out = copy.deepcopy(obj)
    out["spec"]["nodeName"] = node
    return out


def free(store: ClusterStore, node: str) -> frozenset[int]:
    state = store.node(node)
    assert state is not None
    return state.usable_free_gpus


def gang_member(name: str, size: int = 2) -> dict[str, Any]:
    annotations = {
        "kvsched.io/model": LLAMA_70B,
        "kvsched.io/max-model-len": "8192",
        "kvsched.io/gang": "g",
        "kvsched.io/gang-size": str(size),
    }
    return pod(name, gpus=8, annotations=annotations)


def test_a_binding_seen_on_the_watch_gets_a_prediction_that_outlives_later_events() -> None:
    first, second = pod("a", gpus=2), pod("b", gpus=2)
    store = store_with(NODES, [first, second])
    store.upsert_pod(bound(first, "n0"))
    record = store.pod("uid-llm-a")
    assert record is not None and record.prediction is not None
    assert record.prediction.node == "n0" and len(record.prediction.indices) == 2
    taken_a = set(record.prediction.indices)
    assert free(store, "n0") == frozenset(range(8)) - taken_a
    # The next pod on the node is predicted over what is left: no overlap.
    store.upsert_pod(bound(second, "n0"))
    other = store.pod("uid-llm-b")
    assert other is not None and other.prediction is not None
    assert not taken_a & set(other.prediction.indices)
    # A later event of the pod (it started) carries no prediction: the learned one stays.
    running = bound(first, "n0")
    running["status"]["phase"] = "Running"
    store.upsert_pod(running)
    again = store.pod("uid-llm-a")
    assert again is not None and again.prediction == record.prediction
    # So does a relist (the watch expired).
    store.replace_kind("Pod", [running, bound(second, "n0")])
    listed = store.pod("uid-llm-a")
    assert listed is not None and listed.prediction == record.prediction
    assert free(store, "n0") == frozenset(range(8)) - taken_a - set(other.prediction.indices)


def test_a_pod_that_arrives_bound_is_not_predicted() -> None:
    # Listed or created with a nodeName: kvsched never saw it placed; its GPUs count, unindexed.
    store = store_with(NODES, [pod("a", gpus=2, node="n0")])
    record = store.pod("uid-llm-a")
    assert record is not None and record.prediction is None
    state = store.node("n0")
    assert state is not None and state.unindexed_busy == 2


def test_a_prediction_the_pod_carries_is_kept() -> None:
    first = pod("a", gpus=2)
    store = store_with(NODES, [first])
    carried = bound(first, "n0")
    carried["metadata"]["annotations"]["kvsched.io/predicted-gpus"] = GpuPrediction(
        "n0", (6, 7)
    ).encode()
    store.upsert_pod(carried)
    record = store.pod("uid-llm-a")
    assert record is not None and record.prediction == GpuPrediction("n0", (6, 7))


def test_a_gang_member_bound_by_the_scheduler_takes_its_plans_gpus() -> None:
    leader, worker = gang_member("m-0"), gang_member("m-1")
    store = store_with(NODES, [leader, worker])
    passed, failed = schedule(store, leader)
    assert len(passed) == 1, failed
    reserved = store.reservation("uid-llm-m-0")
    assert reserved is not None
    store.upsert_pod(bound(leader, passed[0]))
    record = store.pod("uid-llm-m-0")
    assert record is not None and record.prediction is not None
    assert record.prediction.indices == reserved.reservation.indices
    assert store.reservation("uid-llm-m-0") is None  # settled: the pod holds them now
    assert store.reservation("uid-llm-m-1") is not None  # the other member's still stands


def test_a_pod_bound_onto_gpus_a_plan_held_releases_the_plan() -> None:
    effects = Recorded()
    store = ClusterStore(store_with(NODES, []).catalog, effects=effects, gang_ttl_s=120)
    leader, worker, intruder = gang_member("m-0"), gang_member("m-1"), pod("x", gpus=4)
    store.replace_kind("Node", NODES)
    for p in (leader, worker, intruder):
        store.upsert_pod(p)
    store.synced = True
    passed, _ = schedule(store, leader)
    assert len(passed) == 1
    planned = {store.reservation(u).reservation.node for u in ("uid-llm-m-0", "uid-llm-m-1")}  # type: ignore[union-attr]
    assert planned == {"n0", "n1"}  # one whole node each: nothing free left
    # kube-scheduler, which does not see reservations, binds another pod onto n1.
    store.upsert_pod(bound(intruder, "n1"))
    assert store.reservation("uid-llm-m-0") is None and store.reservation("uid-llm-m-1") is None
    record = store.pod("uid-llm-x")
    assert record is not None and record.prediction is not None
    assert len(record.prediction.indices) == 4
    assert len(free(store, "n1")) == 4 and len(free(store, "n0")) == 8
    cleared = [
        (e.name, e.reservation)
        for e in effects.effects
        if isinstance(e, WriteReservation) and e.reservation is None
    ]
    assert sorted(name for name, _ in cleared) == ["m-0", "m-1"]


def recording_store(pods: list[dict[str, Any]]) -> tuple[ClusterStore, Recorded, list[Any]]:
    """A store whose effects are kept, and the placements its listeners were told of."""
    effects = Recorded()
    store = ClusterStore(store_with(NODES, []).catalog, effects=effects, gang_ttl_s=120)
    store.replace_kind("Node", NODES)
    for p in pods:
        store.upsert_pod(p)
    store.synced = True
    told: list[Any] = []
    store.placement_listeners.append(lambda *args: told.append(args))
    return store, effects, told


def placements(effects: Recorded) -> list[RecordPlacement]:
    return [e for e in effects.effects if isinstance(e, RecordPlacement)]


def test_a_pod_this_extender_filtered_gets_its_prediction_written_after_the_binding() -> None:
    annotations = {"kvsched.io/model": LLAMA_70B, "kvsched.io/max-model-len": "8192"}
    llm = pod("a", gpus=4, annotations=annotations)
    store, effects, told = recording_store([llm])
    passed, failed = schedule(store, llm)
    assert passed, failed
    assert placements(effects) == []  # filter writes nothing
    store.upsert_pod(bound(llm, passed[0]))
    record = store.pod("uid-llm-a")
    assert record is not None and record.prediction is not None
    [written] = placements(effects)
    assert (written.namespace, written.name, written.uid) == ("llm", "a", "uid-llm-a")
    assert written.prediction == record.prediction
    # The bind verb's summary: the evaluation of the node the pod was bound to.
    indices = ",".join(map(str, record.prediction.indices))
    assert written.placement.startswith(f"predicted-gpus={indices} weights=")
    assert "set=" in written.placement
    [(namespace, name, uid, result)] = told
    assert (namespace, name, uid) == ("llm", "a", "uid-llm-a")
    assert result.prediction == record.prediction and result.placement == written.placement
    # The write coming back on the watch (the pod now carries it) asks for nothing more.
    annotated = bound(llm, passed[0])
    annotated["metadata"]["annotations"]["kvsched.io/predicted-gpus"] = written.prediction.encode()
    store.upsert_pod(annotated)
    assert len(placements(effects)) == 1 and len(told) == 1
    again = store.pod("uid-llm-a")
    assert again is not None and again.prediction == record.prediction


def test_a_pod_another_scheduler_placed_is_predicted_but_not_annotated() -> None:
    other = pod("o", gpus=2)
    store, effects, told = recording_store([other])
    store.upsert_pod(bound(other, "n1"))  # never filtered here
    record = store.pod("uid-llm-o")
    assert record is not None and record.prediction is not None
    assert placements(effects) == [] and told == []


def test_a_gang_member_bound_by_the_scheduler_gets_its_plans_gpus_written() -> None:
    leader, worker = gang_member("m-0"), gang_member("m-1")
    store, effects, _ = recording_store([leader, worker])
    passed, failed = schedule(store, leader)
    assert len(passed) == 1, failed
    reserved = store.reservation("uid-llm-m-0")
    assert reserved is not None
    store.upsert_pod(bound(leader, passed[0]))
    [written] = placements(effects)
    indices = ",".join(map(str, reserved.reservation.indices))
    assert written.placement == f"predicted-gpus={indices} gang={reserved.reservation.gang}"
    assert written.prediction.indices == reserved.reservation.indices


@pytest.mark.parametrize(("source", "annotated"), [("kubelet", False), ("prediction", True)])
def test_the_prediction_is_written_only_where_no_agent_reports_the_kubelets_truth(
    source: str, annotated: bool
) -> None:
    """A node whose agent reports the kubelet's allocation will say which GPUs the pod got
    (a restarted extender and the controller read that): the pod write, a second pod event
    for every watcher, is skipped there. The placement event is offered either way."""
    llm = pod("a", gpus=2)
    store, effects, told = recording_store([llm])
    store.replace_kind(
        "NodeInventory",
        [inventory(name, PRESETS["hgx-h100-8"], allocated_source=source) for name in ("n0", "n1")],
    )
    passed, failed = schedule(store, llm)
    assert passed, failed
    store.upsert_pod(bound(llm, passed[0]))
    record = store.pod("uid-llm-a")
    assert record is not None and record.prediction is not None
    assert len(placements(effects)) == (1 if annotated else 0)
    assert [args[:3] for args in told] == [("llm", "a", "uid-llm-a")]
