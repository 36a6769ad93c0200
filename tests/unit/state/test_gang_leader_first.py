"""Groups whose members appear one by one (leader-first controllers): planned by their declared
size when the first member arrives, absent members' room held, later members steered into it."""

from __future__ import annotations

import datetime as dt
from typing import Any

from support.k8s import gpu_node, pod

from scheduler.core.assignment import GpuPrediction, GpuReservation
from scheduler.core.demand import parse_demand
from scheduler.models.catalog import Catalog
from scheduler.state.contracts import InMemoryBinder
from scheduler.state.objects import PodRecord
from scheduler.state.store import ClusterStore

LLAMA_70B = "meta-llama/Llama-3.1-70B-Instruct"
T0 = dt.datetime(2026, 11, 28, 9, 0, tzinfo=dt.UTC)
ZONE = "topology.kubernetes.io/zone"
GROUP_KEY = "leaderworkerset.sigs.k8s.io/group-key"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


class RecordingBinder(InMemoryBinder):
    def __init__(self) -> None:
        self.reserved: list[tuple[str, GpuReservation | None]] = []

    def reserve(self, namespace: str, name: str, reservation: GpuReservation | None) -> None:
        self.reserved.append((name, reservation))


def lws_pod(
    name: str,
    index: int,
    *,
    size: int = 2,
    gpus: int = 8,
    group_key: str = "k1",
    annotations: dict[str, str] | None = None,
    model: bool = True,
) -> dict[str, Any]:
    serving = {"kvsched.io/model": LLAMA_70B, "kvsched.io/max-model-len": "8192"} if model else {}
    return pod(
        name,
        gpus=gpus,
        uid=f"uid-{name}-{group_key}",
        labels={
            GROUP_KEY: group_key,
            "leaderworkerset.sigs.k8s.io/name": "llama",
            "leaderworkerset.sigs.k8s.io/worker-index": str(index),
        },
        annotations={
            "leaderworkerset.sigs.k8s.io/size": str(size),
            **serving,
            **(annotations or {}),
        },
    )


def nodes(zones: dict[str, int]) -> list[dict[str, Any]]:
    """`{"a": 1, "b": 2}`: one 8-GPU node in zone a, two in zone b (named a0, b0, b1)."""
    return [
        gpu_node(f"{zone}{i}", gpus=8, labels={ZONE: zone})
        for zone, count in zones.items()
        for i in range(count)
    ]


def store_with(
    node_list: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    clock: Clock | None = None,
    binder: InMemoryBinder | None = None,
) -> ClusterStore:
    store = ClusterStore(
        Catalog.builtin(),
        clock=clock or Clock(),
        gang_ttl_s=120,
        gang_absent_ttl_s=600,
        binder=binder,
    )
    store.replace_kind("Node", node_list)
    for p in pods:
        store.upsert_pod(p)
    store.synced = True
    return store


def schedule(store: ClusterStore, p: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    result = store.filter(store.demand(p), store.node_names())
    return result.passed, {**result.failed, **result.unresolvable}


def bind(store: ClusterStore, p: dict[str, Any], node: str) -> tuple[int, ...]:
    """Bind through the store, then feed the bound pod back as the watch would."""
    meta = p["metadata"]
    result = store.bind(meta["namespace"], meta["name"], meta["uid"], node)
    p["spec"]["nodeName"] = node
    p["status"]["phase"] = "Running"
    p["metadata"]["annotations"]["kvsched.io/predicted-gpus"] = GpuPrediction(
        node, result.prediction.indices
    ).encode()
    store.upsert_pod(p)
    return result.prediction.indices


def gpus_held(store: ClusterStore) -> dict[str, list[tuple[int, ...]]]:
    held: dict[str, list[tuple[int, ...]]] = {}
    for record in store.cache.pods.values():
        if record.holds_gpus and record.prediction is not None:
            held.setdefault(record.prediction.node, []).append(record.prediction.indices)
    return held


def assert_no_gpu_twice(store: ClusterStore) -> None:
    for node, sets in gpus_held(store).items():
        flat = [i for s in sets for i in s]
        assert len(flat) == len(set(flat)), (node, sets)


def test_leader_ready_leader_alone_is_planned_with_its_worker_and_binds() -> None:
    """LWS startupPolicy LeaderReady: only the leader exists. It is planned with a slot for
    its worker, in the only zone that holds both, binds, and the worker (created once the
    leader is Ready) takes the slot; a competing pod never gets the slot's GPUs."""
    binder = RecordingBinder()
    leader = lws_pod("llama-0", 0)
    store = store_with(nodes({"a": 1, "b": 2}), [leader], binder=binder)
    passed, failed = schedule(store, leader)
    assert len(passed) == 1 and passed[0].startswith("b"), failed
    assert store.reservation_count() == 2
    # Only the leader's reservation is written on a pod; the slot lives in the store.
    assert [name for name, _ in binder.reserved] == ["llama-0"]
    bind(store, leader, passed[0])

    competitor = pod("other", gpus=8, uid="uid-other")
    store.upsert_pod(competitor)
    passed_other, _ = schedule(store, competitor)
    assert passed_other == ["a0"]  # the other zone-b node is held for the worker

    worker = lws_pod("llama-0-1", 1)
    store.upsert_pod(worker)
    passed_worker, failed = schedule(store, worker)
    assert len(passed_worker) == 1 and passed_worker[0].startswith("b"), failed
    assert passed_worker[0] != leader["spec"]["nodeName"]
    bind(store, worker, passed_worker[0])
    assert store.reservation_count() == 0
    assert_no_gpu_twice(store)


def test_a_worker_takes_the_slot_of_its_index() -> None:
    leader = lws_pod("llama-0", 0, size=3, gpus=4)
    store = store_with(nodes({"a": 2}), [leader])
    passed, failed = schedule(store, leader)
    assert passed, failed
    slots = {r.index: r for r in store.gangs.book.absent("llm/lws-k1")}
    assert set(slots) == {1, 2}
    assert {r.name for r in slots.values()} == {"llama-0-1", "llama-0-2"}
    second = lws_pod("llama-0-2", 2, size=3, gpus=4)
    store.upsert_pod(second)
    passed, failed = schedule(store, second)
    assert passed == [slots[2].reservation.node], failed
    reserved = store.reservation(second["metadata"]["uid"])
    assert reserved is not None and reserved.reservation.indices == slots[2].reservation.indices


def test_absent_slots_expire_after_their_own_ttl() -> None:
    clock = Clock()
    leader = lws_pod("llama-0", 0)
    store = store_with(nodes({"b": 2}), [leader], clock)
    passed, _ = schedule(store, leader)
    bind(store, leader, passed[0])
    competitor = pod("other", gpus=8, uid="uid-other")
    store.upsert_pod(competitor)
    clock.now = T0 + dt.timedelta(seconds=599)
    assert schedule(store, competitor)[0] == []  # still held for the worker
    clock.now = T0 + dt.timedelta(seconds=601)
    assert len(schedule(store, competitor)[0]) == 1
    assert store.reservation_count() == 0


def test_a_member_unlike_its_slot_makes_the_group_be_planned_again_in_its_domain() -> None:
    """A 1-GPU leader alone: its worker's slot is planned as 1 GPU (absent members are assumed
    shaped like the present ones). The 8-GPU worker fits no slot, so the group is planned
    again, keeping to the bound leader's zone (here it fits there; when it does not, the
    worker waits: the documented limit of a leader shaped unlike its workers)."""
    leader = lws_pod("llama-0", 0, gpus=1, model=False)
    store = store_with(nodes({"b": 2, "c": 1}), [leader])
    passed, _ = schedule(store, leader)
    bind(store, leader, passed[0])
    zone = passed[0][0]
    worker = lws_pod("llama-0-1", 1, model=False)
    store.upsert_pod(worker)
    passed, failed = schedule(store, worker)
    assert len(passed) == 1 and passed[0][0] == zone, failed
    bind(store, worker, passed[0])
    assert store.reservation_count() == 0
    assert_no_gpu_twice(store)


def test_a_restarted_extender_plans_the_rest_of_the_group_in_the_leaders_domain() -> None:
    """Absent slots are not written anywhere: after a restart, the next member plans the
    group again by its declared size, in the domain of the members already bound."""
    leader = lws_pod("llama-0", 0, size=3)
    first = store_with(nodes({"a": 3, "b": 3}), [leader])
    passed, _ = schedule(first, leader)
    node = passed[0]
    bind(first, leader, node)
    second = store_with(nodes({"a": 3, "b": 3}), [leader])  # the restart: pods as listed
    assert second.reservation_count() == 0
    worker = lws_pod("llama-0-1", 1, size=3)
    second.upsert_pod(worker)
    passed, failed = schedule(second, worker)
    assert len(passed) == 1 and passed[0][0] == node[0] and passed[0] != node, failed
    assert second.reservation_count() == 2  # the worker and a slot for the third member


def test_exclusive_topology_annotation_is_the_groups_topology_key() -> None:
    rack = "example.com/rack"
    node_list = [
        gpu_node("r1a", gpus=8, labels={ZONE: "z", rack: "r1"}),
        gpu_node("r2a", gpus=8, labels={ZONE: "z", rack: "r2"}),
        gpu_node("r2b", gpus=8, labels={ZONE: "z", rack: "r2"}),
    ]
    exclusive = {"leaderworkerset.sigs.k8s.io/exclusive-topology": rack}
    leader = lws_pod("llama-0", 0, annotations=exclusive)
    assert parse_demand(leader, Catalog.builtin()).topology_key == rack
    store = store_with(node_list, [leader])
    passed, failed = schedule(store, leader)
    assert passed and passed[0].startswith("r2"), failed
    slots = store.gangs.book.absent("llm/lws-k1")
    assert [s.reservation.node[:2] for s in slots] == ["r2"]


def test_kvsched_gang_on_a_replicated_lws_template_is_one_gang_per_replica() -> None:
    """`kvsched.io/gang` on an LWS template: every replica's pods carry it; each replica (its
    group key) is a gang of its own, leader and workers together although their controllers
    (the leader and the worker StatefulSets) differ."""
    gang = {"kvsched.io/gang": "llama", "kvsched.io/gang-size": "2"}

    def owned(p: dict[str, Any], owner: str) -> dict[str, Any]:
        p["metadata"]["ownerReferences"] = [
            {"kind": "StatefulSet", "name": owner, "uid": f"uid-{owner}", "controller": True}
        ]
        return p

    replicas = {
        key: [
            owned(lws_pod(f"llama-{r}", 0, group_key=key, annotations=gang), "leaders"),
            owned(lws_pod(f"llama-{r}-1", 1, group_key=key, annotations=gang), f"workers-{r}"),
        ]
        for r, key in enumerate(("k1", "k2"))
    }
    everyone = [p for members in replicas.values() for p in members]
    store = store_with(nodes({"a": 2, "b": 2}), everyone)
    demands = {p["metadata"]["name"]: store.demand(p) for p in everyone}
    assert demands["llama-0"].gang is not None and demands["llama-1"].gang is not None
    assert demands["llama-0"].gang.key != demands["llama-1"].gang.key
    ids = {name: store.gangs.gang_id(d) for name, d in demands.items()}
    assert ids["llama-0"] == ids["llama-0-1"] != ids["llama-1"] == ids["llama-1-1"]
    placed: dict[str, str] = {}
    for p in everyone:
        passed, failed = schedule(store, p)
        assert len(passed) == 1, failed
        placed[p["metadata"]["name"]] = passed[0]
        bind(store, p, passed[0])
    # Each replica whole in one zone, on two nodes; nothing shared.
    for r in ("0", "1"):
        pair = {placed[f"llama-{r}"], placed[f"llama-{r}-1"]}
        assert len(pair) == 2 and len({n[0] for n in pair}) == 1, placed
    assert_no_gpu_twice(store)


def test_recorded_slots_are_records_holding_gpus() -> None:
    leader = lws_pod("llama-0", 0)
    store = store_with(nodes({"b": 2}), [leader])
    schedule(store, leader)
    (slot,) = store.gangs.book.absent("llm/lws-k1")
    record: PodRecord = slot.record()
    assert record.node == slot.reservation.node and record.gpus == 8
    state = store.node(slot.reservation.node)
    assert state is not None and not state.free_gpus
