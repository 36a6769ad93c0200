"""build_report and publish against a fake InventoryApi (missing object, conflicts, errors)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import pytest

from scheduler.agent.cache_scan import ScanResult
from scheduler.agent.podresources import KubeletGpus
from scheduler.agent.report import NODE_LABEL, PublishError, build_report, publish
from scheduler.inventory.merge import merge_agent_report
from scheduler.inventory.status import Allocation, InventoryStatus, ModelEntry
from scheduler.state.kube import ConflictError, InventoryApi, KubeError
from topology.presets import PRESETS

NOW = dt.datetime(2026, 11, 28, 8, 0, tzinfo=dt.UTC)
MODEL = ModelEntry("org/m", "local-disk", "c" * 40, 1000, NOW)


class FakeInventoryApi:
    """One NodeInventory store with resourceVersions; ``conflicts`` writes fail with 409."""

    def __init__(self, objects: dict[str, dict[str, Any]] | None = None, conflicts: int = 0):
        self.objects = objects or {}
        self.conflicts = conflicts
        self.create_conflicts = 0
        self.version = 100
        self.calls: list[str] = []
        self.created_labels: dict[str, str] = {}
        self.fail_get: KubeError | None = None

    def _bump(self) -> str:
        self.version += 1
        return str(self.version)

    def get_inventory(self, name: str) -> dict[str, Any] | None:
        self.calls.append("get")
        if self.fail_get is not None:
            raise self.fail_get
        obj = self.objects.get(name)
        return None if obj is None else {**obj, "metadata": dict(obj["metadata"])}

    def create_inventory(self, name: str, labels: Mapping[str, str]) -> dict[str, Any]:
        self.calls.append("create")
        if self.create_conflicts:
            self.create_conflicts -= 1
            # Someone else created it meanwhile.
            self.objects[name] = {"metadata": {"name": name, "resourceVersion": self._bump()}}
            raise ConflictError("already exists", 409)
        self.created_labels = dict(labels)
        obj = {"metadata": {"name": name, "labels": dict(labels), "resourceVersion": self._bump()}}
        self.objects[name] = obj
        return obj

    def replace_inventory_status(
        self, name: str, status: Mapping[str, Any], resource_version: str
    ) -> dict[str, Any]:
        self.calls.append("replace")
        obj = self.objects[name]
        if self.conflicts:
            self.conflicts -= 1
            obj["metadata"]["resourceVersion"] = self._bump()  # another writer got there first
            raise ConflictError("changed", 409)
        if obj["metadata"]["resourceVersion"] != resource_version:
            raise ConflictError("stale resourceVersion", 409)
        obj["status"] = dict(status)
        obj["metadata"]["resourceVersion"] = self._bump()
        return obj

    def delete_inventory(self, name: str) -> None:
        self.objects.pop(name, None)


def _api(fake: FakeInventoryApi) -> InventoryApi:
    return fake


def report(**overrides: Any) -> InventoryStatus:
    topo = PRESETS["hgx-h100-8"]
    args: dict[str, Any] = {
        "node": "gpu-1",
        "topology": topo,
        "scan": ScanResult((MODEL,), ("org/x@abc: unfinished download, skipped",)),
        "capacity_bytes": 10**12,
        "bandwidth": {"localDisk": 5e9},
        "now": NOW,
    }
    args.update(overrides)
    return build_report(**args)


def test_build_report_from_topology_and_scan() -> None:
    status = report()
    topo = PRESETS["hgx-h100-8"]
    assert status.source == "agent"
    assert len(status.gpus) == topo.gpu_count
    assert [list(row) for row in status.links] == topo.codes()
    assert status.models == (MODEL,)
    assert status.cache_capacity_bytes == 10**12
    assert status.bandwidth == {"localDisk": 5e9}
    assert status.observed_at == NOW
    assert status.problems == ("org/x@abc: unfinished download, skipped",)
    written = status.to_status()
    assert written["observedAt"] == "2026-11-28T08:00:00Z"
    assert written["modelCache"]["models"][0]["name"] == "org/m"


def test_build_report_without_gpus() -> None:
    kubelet = KubeletGpus({"ns/b": (1,), "ns/a": (0,)}, None)
    status = report(topology=None, kubelet=kubelet)
    assert status.gpus == () and status.links == ()
    assert "no GPU information" in status.problems[0]
    assert [a.index for a in status.allocated] == [0, 1]
    assert "gpus" not in status.to_status()


def test_build_report_carries_the_kubelets_allocations() -> None:
    kubelet = KubeletGpus({"ns/b": (3, 2), "ns/a": (0,)}, (0, 1, 2, 3, 5))
    status = report(kubelet=kubelet)
    assert status.allocated == (
        Allocation(0, "ns/a"),
        Allocation(2, "ns/b"),
        Allocation(3, "ns/b"),
    )
    assert status.allocated_source == "kubelet" and status.allocations_are_truth
    assert status.allocatable_gpus == (0, 1, 2, 3, 5)
    written = status.to_status()
    assert written["allocatedSource"] == "kubelet"
    assert written["allocatableGpus"] == [0, 1, 2, 3, 5]


def test_build_report_without_the_kubelet_vouches_for_nothing() -> None:
    status = report()
    assert status.allocated == ()
    assert status.allocated_source is None and status.allocatable_gpus is None
    written = status.to_status()
    assert "allocatedSource" not in written and "allocatableGpus" not in written
    # Read, but GetAllocatableResources failed: allocations are the truth, allocatable unknown.
    partial = report(kubelet=KubeletGpus({}, None))
    assert partial.allocated_source == "kubelet" and partial.allocatable_gpus is None


def test_publish_creates_a_missing_object_with_the_node_label() -> None:
    fake = FakeInventoryApi()
    seen: list[InventoryStatus | None] = []

    def merge(current: InventoryStatus | None, new: InventoryStatus) -> InventoryStatus:
        seen.append(current)
        return new

    stored = publish(_api(fake), "gpu-1", report(), merge)
    assert fake.calls == ["get", "create", "replace"]
    assert fake.created_labels == {NODE_LABEL: "gpu-1"}
    assert seen == [None]
    assert stored["status"]["source"] == "agent"
    assert stored["status"]["modelCache"]["models"][0]["name"] == "org/m"


def test_publish_retries_a_conflict_from_a_fresh_read() -> None:
    current = InventoryStatus(
        source="controller",
        allocated=(Allocation(2, "ns/engine"),),
        allocated_source="prediction",
        observed_at=NOW,
    )
    fake = FakeInventoryApi(
        {
            "gpu-1": {
                "metadata": {"name": "gpu-1", "resourceVersion": "7"},
                "status": current.to_status(),
            }
        },
        conflicts=1,
    )
    stored = publish(_api(fake), "gpu-1", report(), merge_agent_report)
    assert fake.calls == ["get", "replace", "get", "replace"]
    # The real merge keeps the controller's predictions when the kubelet was not read ...
    assert stored["status"]["allocated"] == [{"index": 2, "pod": "ns/engine"}]
    assert stored["status"]["allocatedSource"] == "prediction"
    assert stored["status"]["source"] == "agent"
    # ... and the kubelet's list replaces them when it was.
    kubelet = KubeletGpus({"ns/engine": (5,)}, tuple(range(8)))
    stored = publish(_api(fake), "gpu-1", report(kubelet=kubelet), merge_agent_report)
    assert stored["status"]["allocated"] == [{"index": 5, "pod": "ns/engine"}]
    assert stored["status"]["allocatedSource"] == "kubelet"
    assert stored["status"]["allocatableGpus"] == list(range(8))


def test_publish_gives_up_after_attempts() -> None:
    fake = FakeInventoryApi(
        {"gpu-1": {"metadata": {"name": "gpu-1", "resourceVersion": "7"}}}, conflicts=10
    )
    with pytest.raises(PublishError, match="3 attempt"):
        publish(_api(fake), "gpu-1", report(), merge_agent_report, attempts=3)
    assert fake.calls.count("replace") == 3


def test_publish_when_someone_else_creates_the_object_first() -> None:
    fake = FakeInventoryApi()
    fake.create_conflicts = 1
    publish(_api(fake), "gpu-1", report(), merge_agent_report)
    assert fake.calls == ["get", "create", "get", "replace"]
    assert fake.objects["gpu-1"]["status"]["source"] == "agent"


def test_publish_lets_other_api_errors_through() -> None:
    fake = FakeInventoryApi()
    fake.fail_get = KubeError("forbidden", 403)
    with pytest.raises(KubeError, match="forbidden"):
        publish(_api(fake), "gpu-1", report(), merge_agent_report)


def test_publish_reads_an_odd_stored_status_leniently() -> None:
    fake = FakeInventoryApi(
        {
            "gpu-1": {
                "metadata": {"name": "gpu-1", "resourceVersion": "3"},
                "status": {"source": "somebody", "gpus": [{"no": "index"}], "modelCache": "x"},
            }
        }
    )
    seen: list[InventoryStatus | None] = []

    def merge(current: InventoryStatus | None, new: InventoryStatus) -> InventoryStatus:
        seen.append(current)
        return merge_agent_report(current, new)

    publish(_api(fake), "gpu-1", report(), merge)
    assert seen[0] is not None and seen[0].problems


def test_publish_needs_a_resource_version() -> None:
    fake = FakeInventoryApi({"gpu-1": {"metadata": {"name": "gpu-1"}}})
    with pytest.raises(PublishError, match="resourceVersion"):
        publish(_api(fake), "gpu-1", report(), merge_agent_report)
