"""Gang placement through the store: plans, reservations, all-or-nothing, lifecycle."""

from __future__ import annotations

import datetime as dt
from typing import Any

from support.gangs import LLAMA_70B, T0, Clock, schedule, store_with
from support.k8s import gpu_node, pod

from scheduler.core.assignment import GpuReservation
from scheduler.extender.explain import explain_rows


def zone_node(name: str, zone: str, gpus: int = 8) -> dict[str, Any]:
    return gpu_node(name, gpus=gpus, labels={"topology.kubernetes.io/zone": zone})


def member(
    name: str, gang: str = "g", size: int = 4, gpus: int = 8, **extra: str
) -> dict[str, Any]:
    annotations = {
        "kvsched.io/model": LLAMA_70B,
        "kvsched.io/max-model-len": "8192",
        "kvsched.io/gang": gang,
        "kvsched.io/gang-size": str(size),
        **extra,
    }
    return pod(name, gpus=gpus, annotations=annotations)


ZONES = [
    zone_node("a1", "a"),
    zone_node("a2", "a"),
    zone_node("a3", "a"),
    zone_node("b1", "b"),
    zone_node("b2", "b"),
    zone_node("b3", "b"),
    zone_node("b4", "b"),
]


def test_group_is_planned_whole_inside_one_zone_and_binds_as_planned() -> None:
    members = [member(f"m{i}") for i in range(4)]
    store = store_with(ZONES, members)
    placed: dict[str, str] = {}
    for m in members:
        passed, failed = schedule(store, m)
        assert len(passed) == 1, failed
        placed[m["metadata"]["name"]] = passed[0]
        assert all("planned on" in reason for reason in failed.values())
    # Only zone b has four free 8-GPU nodes.
    assert {node[0] for node in placed.values()} == {"b"}
    assert len(set(placed.values())) == 4
    for m in members:
        meta = m["metadata"]
        result = store.bind(meta["namespace"], meta["name"], meta["uid"], placed[meta["name"]])
        assert result.prediction.indices == tuple(range(8))
    assert all(not store.node(n).free_gpus for n in ("b1", "b2", "b3", "b4"))  # type: ignore[union-attr]


def test_reserved_gpus_are_not_offered_to_other_pods() -> None:
    members = [member(f"m{i}") for i in range(4)]
    store = store_with(ZONES, members)
    schedule(store, members[0])  # plans all four
    loner = pod("loner", gpus=8, annotations={"kvsched.io/model": LLAMA_70B})
    passed, failed = schedule(store, loner)
    assert set(passed) == {"a1", "a2", "a3"}
    assert all("0 of 8 GPUs free" in failed[n] for n in ("b1", "b2", "b3", "b4"))


def test_two_contending_groups_one_whole_one_waiting_whole() -> None:
    nodes = [zone_node(f"n{i}", "a") for i in range(4)]
    first = [member(f"f{i}", gang="first", size=3) for i in range(3)]
    second = [member(f"s{i}", gang="second", size=3) for i in range(3)]
    store = store_with(nodes, first + second)
    for m in first:
        passed, _ = schedule(store, m)
        assert len(passed) == 1
    for m in second:
        passed, failed = schedule(store, m)
        assert passed == []
        reasons = set(failed.values())
        assert len(reasons) == 1
        (reason,) = reasons
        assert "gang llm/second" in reason and "3" in reason


def test_group_is_planned_by_its_declared_size_before_every_member_exists() -> None:
    store = store_with(ZONES, [member("m0"), member("m1")])
    passed, failed = schedule(store, member("m0"))
    assert len(passed) == 1, failed
    # Two members exist: the other two are held as absent slots, in the same zone (only zone
    # b holds four 8-GPU members).
    assert store.reservation_count() == 4
    placed = {passed[0]}
    for name in ("m1", "m2", "m3"):
        p = member(name)
        store.upsert_pod(p)
        passed, failed = schedule(store, p)
        assert len(passed) == 1, failed
        placed.add(passed[0])
    assert len(placed) == 4 and {n[0] for n in placed} == {"b"}


def test_deleting_a_member_releases_the_plan_and_the_group_is_planned_again() -> None:
    members = [member(f"m{i}") for i in range(4)]
    store = store_with(ZONES, members)
    schedule(store, members[0])
    store.delete_pod(members[3]["metadata"]["uid"])
    # Released: the reserved GPUs are free again; the group is planned again by its declared
    # size (three members and a slot for the fourth), and the replacement takes the slot.
    assert all(len(store.node(n).free_gpus) == 8 for n in store.node_names())  # type: ignore[union-attr]
    passed, failed = schedule(store, members[0])
    assert len(passed) == 1, failed
    replacement = member("m4")
    store.upsert_pod(replacement)
    passed, _ = schedule(store, replacement)
    assert len(passed) == 1
    assert store.reservation(replacement["metadata"]["uid"]) is not None
    assert store.reservation_count() == 4


def test_plan_expires_and_frees_its_gpus() -> None:
    clock = Clock()
    members = [member(f"m{i}") for i in range(4)]
    store = store_with(ZONES, members, clock)
    schedule(store, members[0])
    loner = pod("loner", gpus=8)
    assert len(schedule(store, loner)[0]) == 3
    clock.now = T0 + dt.timedelta(seconds=121)
    assert len(schedule(store, loner)[0]) == 7


def test_reservations_are_rebuilt_from_annotated_pods_after_a_restart() -> None:
    members = [member(f"m{i}") for i in range(4)]
    first = store_with(ZONES, members)
    schedule(first, members[0])
    annotated = []
    for m in members:
        reserved = first.reservation(m["metadata"]["uid"])
        assert reserved is not None
        copy = {
            **m,
            "metadata": {
                **m["metadata"],
                "annotations": {
                    **m["metadata"]["annotations"],
                    "kvsched.io/reservation": reserved.reservation.encode(),
                },
            },
        }
        annotated.append(copy)
    second = store_with(ZONES, annotated)
    for m, original in zip(annotated, members, strict=True):
        passed, _ = schedule(second, m)
        expected = first.reservation(original["metadata"]["uid"])
        assert expected is not None and passed == [expected.reservation.node]


def test_leaderworkerset_labels_form_a_group_without_kvsched_annotations() -> None:
    def lws_pod(name: str, gpus: int) -> dict[str, Any]:
        return pod(
            name,
            gpus=gpus,
            labels={
                "leaderworkerset.sigs.k8s.io/group-key": "abc123",
                "leaderworkerset.sigs.k8s.io/name": "llama",
            },
            annotations={
                "leaderworkerset.sigs.k8s.io/size": "3",
                "kvsched.io/model": LLAMA_70B,
                "kvsched.io/max-model-len": "8192",
            },
        )

    group = [lws_pod("leader", 4), lws_pod("w1", 8), lws_pod("w2", 8)]
    store = store_with(ZONES, group)
    nodes = {schedule(store, p)[0][0] for p in group}
    zones = {n[0] for n in nodes}
    assert len(zones) == 1


def test_reservation_annotation_round_trip() -> None:
    reservation = GpuReservation("llm/g", "n1", (0, 1), T0)
    assert GpuReservation.decode(reservation.encode()) == reservation


def test_deleted_members_do_not_count_for_a_new_group_of_the_same_name() -> None:
    old = [member(f"old{i}", size=2) for i in range(2)]
    store = store_with(ZONES, old)
    for m in old:
        schedule(store, m)
    for m in old:
        store.delete_pod(m["metadata"]["uid"])
    new = [member(f"new{i}", size=2) for i in range(2)]
    for m in new:
        store.upsert_pod(m)
    passed, failed = schedule(store, new[0])
    assert len(passed) == 1, failed


def test_decode_pods_score_higher_near_their_prefill_peers() -> None:
    nodes = [
        gpu_node(
            "same", labels={"topology.kubernetes.io/zone": "a", "nvidia.com/gpu.clique": "c1"}
        ),
        gpu_node(
            "clique", labels={"topology.kubernetes.io/zone": "a", "nvidia.com/gpu.clique": "c1"}
        ),
        gpu_node(
            "zone", labels={"topology.kubernetes.io/zone": "a", "nvidia.com/gpu.clique": "c2"}
        ),
        gpu_node("far", labels={"topology.kubernetes.io/zone": "b", "nvidia.com/gpu.clique": "c3"}),
    ]
    prefill = pod(
        "prefill",
        gpus=4,
        node="same",
        phase="Running",
        annotations={
            "kvsched.io/role": "prefill",
            "kvsched.io/gang": "pf",
            "kvsched.io/gang-size": "1",
        },
    )
    store = store_with(nodes, [prefill])
    decode = pod(
        "decode", gpus=4, annotations={"kvsched.io/role": "decode", "kvsched.io/kv-peer": "pf"}
    )
    names = ["same", "clique", "zone", "far"]
    scores = dict(zip(names, store.prioritize_scores(store.demand(decode), names), strict=True))
    assert scores["same"] > scores["clique"] > scores["zone"] > scores["far"], scores
    rows = {r["node"]: r for r in explain_rows(store, store.demand(decode), names)}
    assert rows["same"]["terms"]["kv_peer"] == 1.0 and rows["far"]["terms"]["kv_peer"] == 0.0
    # Without peers running, locality plays no part.
    lone = pod(
        "decode2", gpus=4, annotations={"kvsched.io/role": "decode", "kvsched.io/kv-peer": "nobody"}
    )
    assert len(set(store.prioritize_scores(store.demand(lone), ["clique", "zone", "far"]))) == 1
