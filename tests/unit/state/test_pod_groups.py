"""PodGroup objects (scheduling.x-k8s.io/v1alpha1): their minMember sizes the groups of
`scheduling.x-k8s.io/pod-group` members without kvsched.io/gang-size, in cluster mode (the
informer, the CRD optional) and offline (the cluster file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from support.fake_kube import FakeApi, run_until_exhausted, with_kind
from support.gangs import LLAMA_70B, schedule, store_with
from support.k8s import gpu_node, pod

from scheduler.core.demand import gang_of, parse_demand
from scheduler.models.catalog import Catalog
from scheduler.state.kube import KubeError, NotFoundError, ObjectList
from scheduler.state.offline import load_cluster
from scheduler.state.podgroups import PodGroups
from scheduler.state.store import ClusterStore
from scheduler.state.sync import ClusterSync

POD_GROUP = "scheduling.x-k8s.io/pod-group"


def pod_group(name: str, min_member: Any, namespace: str = "llm") -> dict[str, Any]:
    return {
        "apiVersion": "scheduling.x-k8s.io/v1alpha1",
        "kind": "PodGroup",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"},
        "spec": {"minMember": min_member},
    }


def member(name: str, group: str = "pg", **annotations: str) -> dict[str, Any]:
    return pod(
        name,
        gpus=8,
        labels={POD_GROUP: group},
        annotations={
            "kvsched.io/model": LLAMA_70B,
            "kvsched.io/max-model-len": "8192",
            **annotations,
        },
    )


ZONES = [
    gpu_node(f"{zone}{i}", labels={"topology.kubernetes.io/zone": zone})
    for zone, count in (("a", 2), ("b", 3))
    for i in range(count)
]


def test_demand_takes_the_pod_groups_min_member_when_the_pod_has_no_size() -> None:
    catalog = Catalog.builtin()
    p = member("m0")
    assert parse_demand(p, catalog).gang.size is None  # type: ignore[union-attr]
    demand = parse_demand(p, catalog, {"llm/pg": 3})
    assert demand.gang is not None and (demand.gang.size, demand.gang.source) == (3, "pod-group")
    ref = gang_of(p, {"llm/pg": 3})
    assert ref is not None and ref.size == 3
    # The member's own annotation wins; another namespace's PodGroup of that name does not count.
    sized = parse_demand(member("m0", **{"kvsched.io/gang-size": "2"}), catalog, {"llm/pg": 3})
    assert sized.gang is not None and sized.gang.size == 2
    assert parse_demand(p, catalog, {"other/pg": 3}).gang.size is None  # type: ignore[union-attr]


def test_pod_groups_keep_only_positive_min_members() -> None:
    groups = PodGroups()
    groups.replace(
        [pod_group("a", 2), pod_group("b", 0), pod_group("c", "4"), pod_group("d", True)]
    )
    assert dict(groups) == {"llm/a": 2}
    groups.put(pod_group("b", 5))
    groups.put(pod_group("a", -1))  # changed to nonsense: its members have no size again
    assert dict(groups) == {"llm/b": 5}
    groups.remove(pod_group("b", 5))
    assert len(groups) == 0


def test_group_of_pod_group_members_is_planned_by_min_member() -> None:
    """Two of three members exist; the PodGroup says 3: the first member plans the group with a
    slot for the third, in the only zone that holds three 8-GPU members."""
    store = store_with(ZONES, [member("m0"), member("m1")])
    store.upsert("PodGroup", pod_group("pg", 3))
    passed, failed = schedule(store, member("m0"))
    assert len(passed) == 1, failed
    assert store.reservation_count() == 3
    placed = {passed[0]}
    for name in ("m1", "m2"):
        p = member(name)
        store.upsert_pod(p)
        passed, failed = schedule(store, p)
        assert len(passed) == 1, failed
        placed.add(passed[0])
    assert len(placed) == 3 and {n[0] for n in placed} == {"b"}


def test_without_the_pod_group_the_members_say_they_have_no_size() -> None:
    store = store_with(ZONES, [member("m0")])
    store.upsert("PodGroup", pod_group("pg", 3))
    store.delete("PodGroup", pod_group("pg", 3))
    passed, failed = schedule(store, member("m0"))
    assert passed == []
    assert all("PodGroup" in reason for reason in failed.values()), failed


def test_informer_lists_and_watches_pod_groups() -> None:
    api = FakeApi()
    api.lists["PodGroup"] = [ObjectList([with_kind(pod_group("pg", 2), "PodGroup")], "1")]
    api.watches["PodGroup"] = [
        [
            {"type": "ADDED", "object": with_kind(pod_group("other", 4), "PodGroup", "2")},
            {"type": "MODIFIED", "object": with_kind(pod_group("pg", 5), "PodGroup", "3")},
            {"type": "DELETED", "object": with_kind(pod_group("other", 4), "PodGroup", "4")},
        ]
    ]
    store = ClusterStore(Catalog.builtin())
    run_until_exhausted(api, store, "PodGroup")
    assert dict(store.pod_groups) == {"llm/pg": 5}


@pytest.mark.parametrize(
    "error",
    [
        NotFoundError("the server could not find the requested resource", 404),
        KubeError("list PodGroup: HTTP 403: forbidden", 403),
    ],
    ids=["no-crd", "forbidden"],
)
def test_missing_pod_group_crd_or_no_rbac_is_not_fatal(error: KubeError) -> None:
    api = FakeApi()
    api.lists["PodGroup"] = [error]
    store = ClusterStore(Catalog.builtin())
    sync = ClusterSync(api, store, sleep=lambda _: None)
    for kind in ("Node", "Pod", "NodeInventory"):
        sync._list(kind)
    assert not store.synced
    api.exhausted.set()
    stopper = ClusterSync(api, store, sleep=lambda _: stopper.stop())
    stopper._listed = sync._listed
    stopper.run_kind("PodGroup")  # returns: neither raised nor retried for ever
    assert store.synced
    assert "PodGroup" not in store.sync_problems
    assert len(store.pod_groups) == 0


def test_other_pod_group_errors_are_sync_problems() -> None:
    api = FakeApi()
    api.lists["PodGroup"] = [KubeError("list PodGroup: HTTP 500: boom", 500)]
    store = ClusterStore(Catalog.builtin())
    stopper = ClusterSync(api, store, sleep=lambda _: stopper.stop())
    stopper.run_kind("PodGroup")
    assert "list failed" in store.sync_problems["PodGroup"]


def test_offline_reads_pod_groups_from_the_cluster_file(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(
        yaml.safe_dump_all(
            [
                {"apiVersion": "v1", "kind": "List", "items": [pod_group("pg", 3)]},
                *ZONES,
                member("m0"),
                member("m1"),
            ]
        )
    )
    objects = load_cluster(path)
    assert [o["metadata"]["name"] for o in objects.pod_groups] == ["pg"]
    store = ClusterStore(Catalog.builtin())
    store.load(objects)
    assert dict(store.pod_groups) == {"llm/pg": 3}
    demand = store.demand(member("m0"))
    assert demand.gang is not None and demand.gang.size == 3
