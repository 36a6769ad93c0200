"""Gangs nobody else can hijack: size disagreements, outsiders using the gang's name,
Terminating and finished pods, and members recreated under a new UID."""

from __future__ import annotations

from typing import Any

from support.gangs import LLAMA_70B, schedule
from support.gangs import store_with as gang_store
from support.k8s import gpu_node, pod

from scheduler.state.store import ClusterStore

NODES = [gpu_node(f"n{i}", labels={"topology.kubernetes.io/zone": "a"}) for i in range(4)]


def member(
    name: str,
    size: int = 2,
    *,
    owner: str | None = "job-uid",
    uid: str | None = None,
    gang: str = "g",
    **extra: Any,
) -> dict[str, Any]:
    annotations = {
        "kvsched.io/model": LLAMA_70B,
        "kvsched.io/max-model-len": "8192",
        "kvsched.io/gang": gang,
        "kvsched.io/gang-size": str(size),
    }
    obj = pod(name, gpus=8, annotations=annotations, uid=uid, **extra)
    if owner is not None:
        obj["metadata"]["ownerReferences"] = [
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "name": "job",
                "uid": owner,
                "controller": True,
            }
        ]
    return obj


def store_with(pods: list[dict[str, Any]]) -> ClusterStore:
    return gang_store(NODES, pods)


def test_members_disagreeing_on_size_each_get_a_reason_naming_both_values() -> None:
    small, large = member("m0", size=2), member("m1", size=3)
    store = store_with([small, large])
    for p in (small, large):
        passed, failed = schedule(store, p)
        assert passed == []
        (reason,) = set(failed.values())
        assert "gang-size" in reason and "2" in reason and "3" in reason, reason
    # Agreement restores the group.
    fixed = member("m1", size=2)
    store.upsert_pod(fixed)
    assert len(schedule(store, small)[0]) == 1


def test_a_pod_of_another_owner_using_the_gangs_name_does_not_count() -> None:
    members = [member("m0"), member("m1")]
    outsiders = [member("intruder", owner=None), member("other", owner="someone-elses-job")]
    store = store_with([*members, *outsiders])
    planned = {}
    for m in members:
        passed, failed = schedule(store, m)
        assert len(passed) == 1, failed
        planned[m["metadata"]["name"]] = passed[0]
    assert len(set(planned.values())) == 2
    # The outsiders are groups of their own (of their own owner), not members of this one:
    # the intruder's group (itself and a slot for its absent second member) is planned on the
    # two nodes the group left free, and the group's plan is untouched.
    passed, failed = schedule(store, outsiders[0])
    assert len(passed) == 1 and passed[0] not in planned.values(), failed
    intruder = store.reservation(outsiders[0]["metadata"]["uid"])
    assert intruder is not None and intruder.reservation.gang == "llm/g"  # no owner: the name
    slots = store.gangs.book.absent("llm/g")
    assert len(slots) == 1 and slots[0].reservation.node not in planned.values()
    for m in members:
        reserved = store.reservation(m["metadata"]["uid"])
        assert reserved is not None and reserved.reservation.gang == "llm/g@job-uid"


def test_terminating_and_finished_pods_are_not_members_but_terminating_gpus_stay_held() -> None:
    running = member("m0", node="n0", phase="Running")
    leaving = member("m1", node="n1", phase="Running")
    leaving["metadata"]["deletionTimestamp"] = "2026-11-28T08:59:00Z"
    done = member("m2", node="n2", phase="Succeeded")
    replacement = member("m3")
    store = store_with([running, leaving, done, replacement])
    passed, failed = schedule(store, replacement)
    # n2's pod finished (its GPUs are free); n1's is still leaving.
    assert passed in (["n2"], ["n3"]), failed
    # The Terminating member still holds its node's GPUs until it is gone.
    n1 = store.node("n1")
    assert n1 is not None and n1.unindexed_busy == 8


def test_a_member_recreated_with_a_new_uid_joins_the_existing_plan() -> None:
    members = [member("m0"), member("m1")]
    store = store_with(members)
    planned = {m["metadata"]["name"]: schedule(store, m)[0] for m in members}
    # m1 is deleted and recreated (same name, new UID); the relist that shows the new pod is
    # the first the store hears of it, and the old UID's DELETE was never seen.
    again = member("m1", uid="uid-llm-m1-second")
    store.replace_kind("Pod", [members[0], again])
    passed, failed = schedule(store, again)
    assert passed == planned["m1"], failed
    assert schedule(store, members[0])[0] == planned["m0"]
    meta = again["metadata"]
    result = store.bind(meta["namespace"], meta["name"], meta["uid"], planned["m1"][0])
    assert result.prediction.indices == tuple(range(8))


def test_a_recreated_member_whose_old_pod_is_still_in_the_view_is_not_counted_twice() -> None:
    members = [member("m0"), member("m1")]
    store = store_with(members)
    planned = {m["metadata"]["name"]: schedule(store, m)[0] for m in members}
    again = member("m1", uid="uid-llm-m1-second")
    store.upsert_pod(again)  # the old pod's DELETE is still on its way
    passed, failed = schedule(store, again)
    assert passed == planned["m1"], failed
    store.delete_pod("uid-llm-m1")  # now it arrives: the adopted plan stays
    assert schedule(store, again)[0] == planned["m1"]
    assert schedule(store, members[0])[0] == planned["m0"]


def test_a_recreated_member_asking_for_other_gpus_replans_the_group() -> None:
    members = [member("m0"), member("m1")]
    store = store_with(members)
    for m in members:
        schedule(store, m)
    again = member("m1", uid="uid-llm-m1-second")
    again["spec"]["containers"][0]["resources"] = {
        "limits": {"nvidia.com/gpu": "4"},
        "requests": {"nvidia.com/gpu": "4"},
    }
    store.replace_kind("Pod", [members[0], again])
    passed, failed = schedule(store, again)
    assert len(passed) == 1, failed
    reserved = store.reservation("uid-llm-m1-second")
    assert reserved is not None and len(reserved.reservation.indices) == 4
