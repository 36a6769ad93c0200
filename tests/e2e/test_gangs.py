"""Gangs with the real kube-scheduler: whole groups in one domain, contention, deletion,
extender restart mid-group, LeaderWorkerSet labels."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from support.e2e import Cluster, Extender, wait_until

pytestmark = pytest.mark.e2e

LLAMA_70B = "meta-llama/Llama-3.1-70B-Instruct"
ZONE = "topology.kubernetes.io/zone"


def gang(name: str, size: int, **extra: str) -> dict[str, str]:
    return {
        "kvsched.io/model": LLAMA_70B,
        "kvsched.io/max-model-len": "8192",
        "kvsched.io/gang": name,
        "kvsched.io/gang-size": str(size),
        **extra,
    }


def zones(cluster: Cluster, layout: dict[str, int]) -> dict[str, str]:
    """Nodes per zone; returns node -> zone."""
    where = {}
    for zone, count in layout.items():
        for i in range(count):
            where[cluster.node(f"{zone}{i}", labels={ZONE: zone})] = zone
    return where


def reservation(pod: dict[str, Any]) -> dict[str, Any] | None:
    raw = (pod["metadata"].get("annotations") or {}).get("kvsched.io/reservation")
    return json.loads(raw) if raw else None


def test_four_member_group_lands_inside_one_zone(cluster: Cluster) -> None:
    where = zones(cluster, {"a": 3, "b": 4})
    members = [cluster.pod(f"m{i}", gpus=8, annotations=gang("g", 4)) for i in range(4)]
    nodes = [cluster.wait_placed(m)["spec"]["nodeName"] for m in members]
    assert {where[n] for n in nodes} == {"b"} and len(set(nodes)) == 4
    for m in members:
        assigned = json.loads(
            cluster.get_pod(m)["metadata"]["annotations"]["kvsched.io/predicted-gpus"]
        )
        assert assigned["indices"] == list(range(8))


def test_contending_groups_one_whole_one_pending_whole(cluster: Cluster) -> None:
    zones(cluster, {"a": 4})
    first = [cluster.pod(f"f{i}", gpus=8, annotations=gang("first", 3)) for i in range(3)]
    second = [cluster.pod(f"s{i}", gpus=8, annotations=gang("second", 3)) for i in range(3)]
    everyone = first + second
    wait_until(
        lambda: sum(1 for n in cluster.bound_nodes(everyone).values() if n) >= 3,
        timeout=60,
        what="one group bound",
    )
    time.sleep(3)  # let the other group have its chances
    bound = cluster.bound_nodes(everyone)
    winners = [g for g in (first, second) if all(bound[m] for m in g)]
    losers = [g for g in (first, second) if not any(bound[m] for m in g)]
    assert len(winners) == 1 and len(losers) == 1, bound
    loser = "first" if losers[0] is first else "second"
    message = cluster.wait_event(losers[0][0], f"gang e2e/{loser}")
    assert "3 members" in message


def test_deleting_a_member_releases_its_gpus_and_replans(cluster: Cluster) -> None:
    zones(cluster, {"a": 3})
    # The held member first, so that the extender's watch has it when m0 is filtered (else
    # m0 would plan it as an absent member and it would claim that slot: same outcome).
    cluster.pod("held", gpus=8, annotations=gang("g", 2), gated=True)
    time.sleep(1)
    cluster.pod("m0", gpus=8, annotations=gang("g", 2))
    first = cluster.wait_bound("m0")["spec"]["nodeName"]
    held = wait_until(
        lambda: reservation(cluster.get_pod("held")),
        timeout=30,
        what="reservation recorded on the held member",
    )
    assert held["node"] != first
    # The held member's node is reserved: an 8-GPU pod cannot take it ...
    cluster.pod("loner", gpus=8)
    loner = cluster.wait_bound("loner")["spec"]["nodeName"]
    assert loner not in (first, held["node"])
    cluster.delete_pod("loner")
    # ... until the member is deleted: the plan is released and the group planned again.
    cluster.delete_pod("held")
    cluster.pod("replacement", gpus=8, annotations=gang("g", 2))
    node = cluster.wait_bound("replacement")["spec"]["nodeName"]
    assert node != first


def test_extender_restart_mid_group_completes_the_plan(
    cluster: Cluster, extender: Extender
) -> None:
    zones(cluster, {"a": 3, "b": 3})
    cluster.pod("m2", gpus=8, annotations=gang("g", 3), gated=True)
    time.sleep(1)
    cluster.pod("m0", gpus=8, annotations=gang("g", 3))
    cluster.pod("m1", gpus=8, annotations=gang("g", 3))
    bound = [cluster.wait_bound(m)["spec"]["nodeName"] for m in ("m0", "m1")]
    planned = wait_until(
        lambda: reservation(cluster.get_pod("m2")),
        timeout=30,
        what="reservation on the held member",
    )
    extender.restart()
    cluster.ungate("m2")
    node = cluster.wait_bound("m2", timeout=90)["spec"]["nodeName"]
    assert node == planned["node"]
    assert len({*bound, node}) == 3
    assert {n[-2] for n in (*bound, node)} == {bound[0][-2]}  # one zone


def test_leaderworkerset_group_without_kvsched_annotations(cluster: Cluster) -> None:
    where = zones(cluster, {"a": 1, "b": 2})
    lws = {
        "leaderworkerset.sigs.k8s.io/name": "llama",
        "leaderworkerset.sigs.k8s.io/group-key": "0f1e2d",
    }
    size = {"leaderworkerset.sigs.k8s.io/size": "2"}
    cluster.pod(
        "leader",
        gpus=8,
        labels={**lws, "leaderworkerset.sigs.k8s.io/worker-index": "0"},
        annotations=size,
    )
    cluster.pod(
        "worker",
        gpus=8,
        labels={**lws, "leaderworkerset.sigs.k8s.io/worker-index": "1"},
        annotations=size,
    )
    nodes = [cluster.wait_bound(p)["spec"]["nodeName"] for p in ("leader", "worker")]
    assert {where[n] for n in nodes} == {"b"}
