"""The controller's reconciler against a fake NodeInventory API: creation, deletion,
optimistic-concurrency retries, no needless writes, non-GPU nodes left alone."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import pytest
from support.k8s import cpu_node, gpu_node, model_annotations, pod

from scheduler.controller.residency import ResidencySettings, ResidencyTracker
from scheduler.controller.run import (
    ControllerMetrics,
    ControllerSettings,
    ControllerState,
    Reconciler,
    is_gpu_node,
)
from scheduler.inventory.status import InventoryStatus, format_time
from scheduler.models.catalog import Catalog
from scheduler.state.kube import ConflictError

NOW = dt.datetime(2026, 11, 28, 9, 0, tzinfo=dt.UTC)
LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"


class FakeInventories:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.version = 0
        self.conflicts_to_raise = 0
        self.writes: list[str] = []
        self.deleted: list[str] = []

    def _bump(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        return obj

    def get_inventory(self, name: str) -> dict[str, Any] | None:
        return self.objects.get(name)

    def create_inventory(self, name: str, labels: Mapping[str, str]) -> dict[str, Any]:
        if name in self.objects:
            raise ConflictError("exists", 409)
        self.objects[name] = self._bump({"metadata": {"name": name, "labels": dict(labels)}})
        return self.objects[name]

    def replace_inventory_status(
        self, name: str, status: Mapping[str, Any], resource_version: str
    ) -> dict[str, Any]:
        current = self.objects[name]
        if self.conflicts_to_raise:
            self.conflicts_to_raise -= 1
            # Someone else (the agent) wrote meanwhile.
            self._bump(current)
            raise ConflictError("changed", 409)
        if current["metadata"]["resourceVersion"] != resource_version:
            raise ConflictError("stale", 409)
        current["status"] = dict(status)
        self.writes.append(name)
        return self._bump(current)

    def delete_inventory(self, name: str) -> None:
        self.objects.pop(name)
        self.deleted.append(name)


def setup() -> tuple[FakeInventories, ControllerState, Reconciler, ControllerMetrics]:
    api = FakeInventories()
    settings = ResidencySettings()
    state = ControllerState(ResidencyTracker(Catalog.builtin(), settings), clock=lambda: NOW)
    metrics = ControllerMetrics()
    return api, state, Reconciler(api, state, settings, ControllerSettings(), metrics), metrics


def test_creates_and_fills_the_inventory_of_a_gpu_node() -> None:
    api, state, reconciler, _ = setup()
    state.replace_kind("Node", [gpu_node("a")])
    state.replace_kind(
        "Pod", [pod("p", node="a", phase="Running", annotations=model_annotations(LLAMA_8B))]
    )
    reconciler.reconcile("a")
    status = InventoryStatus.from_status(api.objects["a"]["status"])
    assert status is not None and status.source == "controller"
    assert [(m.name, m.tier) for m in status.models] == [(LLAMA_8B.lower(), "gpu")]
    assert api.objects["a"]["metadata"]["labels"] == {"kvsched.io/node": "a"}


def test_no_write_when_nothing_changed() -> None:
    api, state, reconciler, _ = setup()
    state.replace_kind("Node", [gpu_node("a")])
    reconciler.reconcile("a")
    reconciler.reconcile("a")
    assert api.writes == ["a"]


def test_conflicts_are_retried_on_a_fresh_read() -> None:
    api, state, reconciler, metrics = setup()
    state.replace_kind("Node", [gpu_node("a")])
    api.conflicts_to_raise = 2
    reconciler.reconcile("a")
    assert api.writes == ["a"]
    assert metrics.conflicts._value.get() == 2


def test_gives_up_after_the_configured_attempts() -> None:
    api, state, reconciler, metrics = setup()
    state.replace_kind("Node", [gpu_node("a")])
    api.conflicts_to_raise = 99
    reconciler.reconcile("a")
    assert api.writes == []
    assert metrics.writes.labels("failed")._value.get() == 1


def test_inventory_of_a_deleted_node_is_deleted_and_cpu_nodes_get_none() -> None:
    api, state, reconciler, _ = setup()
    state.replace_kind("Node", [gpu_node("a"), cpu_node("cpu")])
    reconciler.reconcile("a")
    reconciler.reconcile("cpu")
    assert set(api.objects) == {"a"}
    state.replace_kind("NodeInventory", [api.objects["a"]])
    state.delete("Node", gpu_node("a"))
    reconciler.reconcile("a")
    assert api.deleted == ["a"] and not api.objects


def test_fresh_agent_report_is_kept() -> None:
    api, state, reconciler, _ = setup()
    state.replace_kind("Node", [gpu_node("a")])
    api.objects["a"] = {
        "metadata": {"name": "a", "resourceVersion": "7"},
        "status": {
            "source": "agent",
            "observedAt": format_time(NOW),
            "modelCache": {"models": [{"name": "acme/x", "tier": "local-disk"}]},
        },
    }
    state.replace_kind("NodeInventory", [api.objects["a"]])
    reconciler.reconcile("a")
    status = InventoryStatus.from_status(api.objects["a"]["status"])
    assert status is not None and status.source == "agent"
    assert [m.name for m in status.models] == ["acme/x"]


@pytest.mark.parametrize(
    ("node", "expected"),
    [(gpu_node("a"), True), (cpu_node("c"), False), (gpu_node("z", gpus=0), False)],
)
def test_is_gpu_node(node: dict[str, Any], expected: bool) -> None:
    assert is_gpu_node(node) is expected


def test_dirty_marks_follow_events() -> None:
    _, state, _, _ = setup()
    state.replace_kind("Node", [gpu_node("a"), gpu_node("b")])
    assert state.take_dirty() == {"a", "b"}
    state.upsert("Pod", pod("p", node="b", phase="Running"))
    assert state.take_dirty() == {"b"}
    assert state.take_dirty() == set()
