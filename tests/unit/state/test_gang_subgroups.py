"""LWS subgroups with `subgroup-exclusive-topology` through the store: the leader plans the
whole group, each subgroup's slots within one zone, subgroups (of this group and of others)
in different zones; workers claim their slots; all or nothing."""

from __future__ import annotations

from typing import Any

from unit.state.test_gang_leader_first import (
    ZONE,
    assert_no_gpu_twice,
    bind,
    lws_pod,
    nodes,
    schedule,
    store_with,
)

from scheduler.core.demand import parse_demand
from scheduler.models.catalog import Catalog

SUBGROUP = {
    "leaderworkerset.sigs.k8s.io/subgroup-size": "2",
    "leaderworkerset.sigs.k8s.io/subgroup-exclusive-topology": ZONE,
}


def member(index: int, group_key: str = "k1", size: int = 4) -> dict[str, Any]:
    """Worker `index` as LWS's webhook labels it (subgroup index = index // 2 for size 4)."""
    p = lws_pod(
        f"llama-{group_key}-{index}", index, size=size, group_key=group_key, annotations=SUBGROUP
    )
    p["metadata"]["labels"]["leaderworkerset.sigs.k8s.io/subgroup-index"] = str(index // 2)
    return p


def zone_of(node: str) -> str:
    return node[0]


def test_demand_reads_the_subgroup_labels() -> None:
    demand = parse_demand(member(3), Catalog.builtin())
    assert (demand.subgroup_key, demand.subgroup, demand.subgroup_size) == (ZONE, 1, 2)
    plain = lws_pod("x-1", 1, annotations={"leaderworkerset.sigs.k8s.io/subgroup-size": "2"})
    assert parse_demand(plain, Catalog.builtin()).subgroup_key is None


def test_leader_plans_subgroups_apart_and_workers_claim_their_slots() -> None:
    leader = member(0)
    store = store_with(nodes({"a": 2, "b": 2}), [leader])
    passed, failed = schedule(store, leader)
    assert len(passed) == 1, failed
    slots = {s.index: s.reservation.node for s in store.gangs.book.absent("llm/lws-k1")}
    assert set(slots) == {1, 2, 3}
    assert zone_of(slots[1]) == zone_of(passed[0])
    assert zone_of(slots[2]) == zone_of(slots[3]) != zone_of(passed[0])
    placed = {0: passed[0]}
    bind(store, leader, passed[0])
    for index in (1, 2, 3):
        worker = member(index)
        store.upsert_pod(worker)
        got, failed = schedule(store, worker)
        assert got == [slots[index]], failed
        bind(store, worker, got[0])
        placed[index] = got[0]
    assert len(set(placed.values())) == 4
    assert_no_gpu_twice(store)


def test_one_zone_cannot_hold_two_exclusive_subgroups() -> None:
    leader = member(0)
    store = store_with(nodes({"a": 4}), [leader])
    passed, failed = schedule(store, leader)
    assert not passed
    assert "each subgroup in its own" in next(iter(failed.values()))


def test_a_second_group_keeps_off_the_first_groups_subgroup_zones() -> None:
    first, second = member(0, "k1"), member(0, "k2")
    store = store_with(nodes({"a": 2, "b": 2, "c": 2, "d": 2}), [first, second])
    one, _ = schedule(store, first)
    two, _ = schedule(store, second)
    held = {
        "k1": {zone_of(n) for n in one}
        | {zone_of(s.reservation.node) for s in store.gangs.book.absent("llm/lws-k1")},
        "k2": {zone_of(n) for n in two}
        | {zone_of(s.reservation.node) for s in store.gangs.book.absent("llm/lws-k2")},
    }
    assert len(held["k1"]) == len(held["k2"]) == 2
    assert not held["k1"] & held["k2"], held
    # A third group finds no zone free of other groups' subgroups: it waits whole.
    third = member(0, "k3")
    store.upsert_pod(third)
    passed, failed = schedule(store, third)
    assert not passed
    assert "held by other groups' subgroups" in next(iter(failed.values()))
