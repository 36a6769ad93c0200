"""The warming controller against a fake NodeInventory API: what it reads from pods, nodes and
inventories, what it writes (spec.warming only), rate limits, hold-down, stalled agents,
metrics, and its wiring into `kvsched controller`."""

from __future__ import annotations

import argparse
import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any

import pytest
from support.k8s import gpu_node, inventory, model_annotations, pod

from scheduler.commands import controller_cmd
from scheduler.controller.residency import ResidencySettings, ResidencyTracker
from scheduler.controller.run import (
    Controller,
    ControllerMetrics,
    ControllerSettings,
    ControllerState,
    Reconciler,
    is_gpu_node,
)
from scheduler.controller.warming import (
    PodBook,
    WarmingController,
    WarmingControllerSettings,
)
from scheduler.core.warming import WarmingSettings
from scheduler.inventory.spec import WarmingSpec
from scheduler.inventory.status import InventoryStatus, format_time
from scheduler.models.catalog import Catalog
from topology.presets import PRESETS

LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"
QWEN_7B = "Qwen/Qwen2.5-7B-Instruct"
START = dt.datetime(2026, 11, 28, 9, 0, tzinfo=dt.UTC)
CATALOG = Catalog.builtin()


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


class FakeInventories:
    """NodeInventories as the API server keeps them: spec and status written separately."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.spec_writes: list[str] = []
        self.status_writes: list[str] = []
        self.version = 0
        self.fail_spec = False

    def _bump(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        return obj

    def get_inventory(self, name: str) -> dict[str, Any] | None:
        return self.objects.get(name)

    def create_inventory(self, name: str, labels: Mapping[str, str]) -> dict[str, Any]:
        self.objects[name] = self._bump({"metadata": {"name": name}, "spec": {}})
        return self.objects[name]

    def replace_inventory_status(
        self, name: str, status: Mapping[str, Any], resource_version: str
    ) -> dict[str, Any]:
        obj = self.objects[name]
        assert obj["metadata"]["resourceVersion"] == resource_version
        obj["status"] = dict(status)
        self.status_writes.append(name)
        return self._bump(obj)

    def delete_inventory(self, name: str) -> None:
        self.objects.pop(name)

    def patch_inventory_spec(self, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        from scheduler.state.kube import KubeError

        if self.fail_spec:
            raise KubeError("apiserver unavailable", 503)
        obj = self.objects[name]
        merged = dict(obj.get("spec") or {})
        merged.update(spec)  # merge patch: top-level keys of spec replace, lists whole
        obj["spec"] = merged
        self.spec_writes.append(name)
        return self._bump(obj)


def agent_inventory(name: str, clock: Clock, **kwargs: Any) -> dict[str, Any]:
    obj = inventory(name, PRESETS["hgx-h100-8"], observed_at=format_time(clock()), **kwargs)
    obj["metadata"]["resourceVersion"] = "1"
    obj["spec"] = {}
    return obj


def model_pod(
    name: str, model: str = LLAMA_8B, node: str | None = None, created: dt.datetime = START
) -> dict[str, Any]:
    obj = pod(
        name,
        annotations=model_annotations(model, max_model_len="8192"),
        node=node,
        phase="Running" if node else "Pending",
        uid=str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
    )
    obj["metadata"]["creationTimestamp"] = format_time(created)
    return obj


class Rig:
    def __init__(self, settings: WarmingControllerSettings | None = None, nodes: int = 3) -> None:
        self.clock = Clock()
        self.api = FakeInventories()
        self.residency = ResidencySettings()
        self.metrics = ControllerMetrics()
        self.book = PodBook(CATALOG)
        self.state = ControllerState(
            ResidencyTracker(CATALOG, self.residency), clock=self.clock, book=self.book
        )
        self.state.replace_kind("Node", [gpu_node(f"n{i}") for i in range(nodes)])
        for i in range(nodes):
            self.api.objects[f"n{i}"] = agent_inventory(f"n{i}", self.clock)
        self.state.replace_kind("NodeInventory", list(self.api.objects.values()))
        self.settings = settings or WarmingControllerSettings(
            planner=WarmingSettings(holders=2), interval_s=10
        )
        self.warming = WarmingController(
            self.api,
            self.book,
            lambda: self.state.nodes,
            lambda: self.state.inventories,
            lambda name, obj: self.state.inventories.__setitem__(name, obj),
            self.settings,
            self.residency,
            self.metrics.warming,
            clock=self.clock,
            is_gpu_node=is_gpu_node,
        )

    def spec(self, name: str) -> WarmingSpec:
        return WarmingSpec.from_spec(self.api.objects[name].get("spec"))

    def wanted_on(self, model: str = LLAMA_8B) -> list[str]:
        return sorted(
            name
            for name in self.api.objects
            if any(m.name == model for m in self.spec(name).models)
        )

    def refresh_agents(self) -> None:
        """The agents report again (fresh observedAt), keeping their status.warming."""
        for obj in self.api.objects.values():
            obj["status"]["observedAt"] = format_time(self.clock())
        self.state.replace_kind("NodeInventory", list(self.api.objects.values()))


def value(metric: Any, *labels: str) -> float:
    target = metric.labels(*labels) if labels else metric
    return float(target._value.get())


def test_off_by_default() -> None:
    assert not WarmingControllerSettings().enabled
    rig = Rig(WarmingControllerSettings())
    rig.state.upsert("Pod", model_pod("p0", node="n0"))
    assert rig.warming.maybe_run() is None
    assert rig.api.spec_writes == []
    parser = argparse.ArgumentParser()
    controller_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["controller"])
    assert args.warming_holders == 0
    assert not controller_cmd._warming_settings(args).enabled


def test_asks_for_a_model_in_demand_on_fitting_nodes_and_writes_only_the_spec() -> None:
    rig = Rig()
    rig.state.upsert("Pod", model_pod("p0", node="n2"))
    statuses = {n: dict(o["status"]) for n, o in rig.api.objects.items()}
    plan = rig.warming.maybe_run()
    assert plan is not None
    # n2 runs the replica (one GPU taken, seven free) and holds no copy on disk, as its agent
    # says: any of the three could take the next replica; the two with most free GPUs win.
    assert rig.wanted_on() == ["n0", "n1"]
    (entry,) = rig.spec("n0").models
    assert entry.name == LLAMA_8B and entry.revision is None
    assert entry.size_bytes is not None and entry.size_bytes > 15 * 10**9
    assert entry.requested_at == START and "keep 2 ready holders" in entry.reason
    assert {n: o["status"] for n, o in rig.api.objects.items()} == statuses
    assert rig.api.status_writes == []
    assert value(rig.metrics.warming.desired) == 2
    assert value(rig.metrics.warming.in_progress) == 2
    assert value(rig.metrics.warming.requested_bytes) == 2 * entry.size_bytes
    assert value(rig.metrics.warming.in_flight_bytes) == 2 * entry.size_bytes
    assert value(rig.metrics.warming.changes, "add") == 2
    assert value(rig.metrics.warming.writes, "written") == 2


def test_nothing_rewritten_when_nothing_changed_and_passes_are_rate_limited() -> None:
    rig = Rig()
    rig.state.upsert("Pod", model_pod("p0", node="n2"))
    rig.warming.maybe_run()
    writes = list(rig.api.spec_writes)
    rig.clock.advance(5)
    assert rig.warming.maybe_run() is None  # within the 10 s interval
    rig.clock.advance(5)
    rig.refresh_agents()
    assert rig.warming.maybe_run() is not None
    assert rig.api.spec_writes == writes


def test_writes_per_pass_are_capped_and_the_rest_follow() -> None:
    settings = WarmingControllerSettings(
        planner=WarmingSettings(holders=2), interval_s=0, max_writes_per_pass=1
    )
    rig = Rig(settings)
    rig.state.upsert("Pod", model_pod("p0", node="n2"))
    rig.warming.maybe_run()
    assert rig.api.spec_writes == ["n0"]
    assert value(rig.metrics.warming.writes, "deferred") == 1
    rig.warming.maybe_run()
    assert rig.api.spec_writes == ["n0", "n1"]
    assert rig.wanted_on() == ["n0", "n1"]


def test_nodes_without_a_fresh_agent_are_not_asked() -> None:
    rig = Rig()
    stale = rig.api.objects["n0"]
    stale["status"]["observedAt"] = format_time(START - dt.timedelta(hours=1))
    rig.state.upsert("NodeInventory", stale)
    rig.state.upsert("Pod", model_pod("p0", node="n2"))
    rig.warming.maybe_run()
    assert rig.wanted_on() == ["n1", "n2"]


def test_copies_under_way_count_and_finished_ones_hold() -> None:
    rig = Rig()
    rig.state.upsert("Pod", model_pod("p0", node="n2"))
    rig.warming.maybe_run()
    size = rig.spec("n0").models[0].size_bytes
    assert size is not None
    # n0's agent copies; n1's finished and lists the model in its cache.
    rig.api.objects["n0"]["status"]["warming"] = {
        "models": [
            {
                "name": LLAMA_8B,
                "state": "copying",
                "bytesDone": size // 4,
                "bytesTotal": size,
                "updatedAt": format_time(rig.clock()),
            }
        ]
    }
    rig.api.objects["n1"]["status"]["modelCache"]["models"] = [
        {"name": LLAMA_8B, "tier": "local-disk", "sizeBytes": size}
    ]
    rig.clock.advance(30)
    rig.refresh_agents()
    rig.warming.maybe_run()
    assert rig.wanted_on() == ["n0", "n1"]  # no third node
    assert value(rig.metrics.warming.in_progress) == 1
    assert value(rig.metrics.warming.in_flight_bytes) == size - size // 4


def test_a_node_whose_agent_never_starts_is_given_up_for_another() -> None:
    rig = Rig()
    rig.state.upsert("Pod", model_pod("p0", node="n2"))
    rig.warming.maybe_run()
    assert rig.wanted_on() == ["n0", "n1"]
    # n0's agent reports (fresh) but never picks the request up; n1's queues it.
    rig.api.objects["n1"]["status"]["warming"] = {
        "models": [{"name": LLAMA_8B, "state": "queued", "updatedAt": format_time(rig.clock())}]
    }
    rig.clock.advance(rig.settings.stall_after_s + 1)
    rig.refresh_agents()
    rig.warming.maybe_run()
    # The request stays on n0 (the model is still in demand) but counts for nothing.
    assert rig.wanted_on() == ["n0", "n1", "n2"]


def test_withdraws_after_the_hold_down() -> None:
    settings = WarmingControllerSettings(
        planner=WarmingSettings(holders=2, hold_down_s=600), interval_s=0
    )
    rig = Rig(settings)
    replica = model_pod("p0", node="n2")
    rig.state.upsert("Pod", replica)
    rig.warming.maybe_run()
    assert rig.wanted_on() == ["n0", "n1"]
    rig.state.delete("Pod", replica)
    rig.clock.advance(300)
    rig.refresh_agents()
    rig.warming.maybe_run()
    assert rig.wanted_on() == ["n0", "n1"]  # held down
    rig.clock.advance(301)
    rig.refresh_agents()
    rig.warming.maybe_run()
    assert rig.wanted_on() == []
    assert rig.api.objects["n0"]["spec"] == {"warming": {"models": []}}
    assert value(rig.metrics.warming.changes, "withdraw") == 2


def test_a_new_leader_holds_down_what_it_finds_in_the_spec() -> None:
    settings = WarmingControllerSettings(
        planner=WarmingSettings(holders=2, hold_down_s=600), interval_s=0
    )
    rig = Rig(settings)
    rig.api.objects["n0"]["spec"] = {
        "warming": {
            "models": [{"name": QWEN_7B, "requestedAt": format_time(START - dt.timedelta(days=1))}]
        }
    }
    rig.state.upsert("NodeInventory", rig.api.objects["n0"])
    rig.warming.maybe_run()  # no pod of Qwen here; the hold-down starts now
    assert rig.wanted_on(QWEN_7B) == ["n0"]
    rig.clock.advance(601)
    rig.refresh_agents()
    rig.warming.maybe_run()
    assert rig.wanted_on(QWEN_7B) == []


def test_pending_pods_and_scale_ups_are_demand() -> None:
    rig = Rig(nodes=2)
    rig.state.upsert("Pod", model_pod("waiting", QWEN_7B))
    demands = rig.book.demands(rig.clock().timestamp(), 600)
    (qwen,) = demands
    assert (qwen.name, qwen.running, qwen.pending, qwen.scale_ups) == (QWEN_7B, 0, 1, 1)
    old = model_pod("old", LLAMA_8B, node="n0", created=START - dt.timedelta(hours=2))
    rig.state.upsert("Pod", old)
    llama = next(d for d in rig.book.demands(rig.clock().timestamp(), 600) if d.name == LLAMA_8B)
    assert (llama.running, llama.pending, llama.scale_ups) == (1, 0, 0)
    finished = model_pod("done", LLAMA_8B, node="n1")
    finished["status"]["phase"] = "Succeeded"
    rig.state.upsert("Pod", finished)
    llama = next(d for d in rig.book.demands(rig.clock().timestamp(), 600) if d.name == LLAMA_8B)
    assert llama.running == 1


def test_a_failed_write_is_counted_and_retried_next_pass() -> None:
    rig = Rig()
    rig.state.upsert("Pod", model_pod("p0", node="n2"))
    rig.api.fail_spec = True
    rig.warming.maybe_run()
    assert value(rig.metrics.warming.writes, "failed") == 2 and rig.wanted_on() == []
    rig.api.fail_spec = False
    rig.clock.advance(10)
    rig.refresh_agents()
    rig.warming.maybe_run()
    assert rig.wanted_on() == ["n0", "n1"]


def test_the_leader_loop_runs_passes_and_the_reconciler_keeps_warming_status() -> None:
    rig = Rig()
    progress = {
        "models": [
            {
                "name": QWEN_7B,
                "state": "copying",
                "bytesDone": 5,
                "bytesTotal": 10,
                "updatedAt": format_time(START),
            }
        ]
    }
    rig.api.objects["n0"]["status"]["warming"] = progress
    rig.state.upsert("NodeInventory", rig.api.objects["n0"])
    reconciler = Reconciler(rig.api, rig.state, rig.residency, ControllerSettings(), rig.metrics)
    controller = Controller(reconciler, rig.state, ControllerSettings(), rig.warming)
    rig.state.upsert("Pod", model_pod("p0", node="n2"))
    rig.state.synced = True

    def stop_after_one_round() -> None:
        controller.stop_event.set()

    rig.state.changed.wait = lambda timeout=None: (stop_after_one_round(), True)[1]  # type: ignore[method-assign]
    controller.lead()
    # The reconciler ran first and wrote n2's running model into its status (gpu tier): with
    # seven GPUs free, n2 is a ready holder, so one more node is asked.
    assert "n2" in rig.api.status_writes
    assert rig.wanted_on() == ["n0"]
    # The reconciler's status writes carry the agent's warming progress over.
    for name in rig.api.status_writes:
        status = InventoryStatus.from_status(rig.api.objects[name]["status"])
        assert status is not None
        if name == "n0":
            assert [(w.name, w.state, w.bytes_done) for w in status.warming] == [
                (QWEN_7B, "copying", 5)
            ]


def test_byte_flags_take_quantities_and_refuse_nonsense() -> None:
    parser = argparse.ArgumentParser()
    controller_cmd.register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "controller",
            "--warming-holders=2",
            "--warming-node-budget-bytes=1Ti",
            "--warming-max-inflight-bytes-per-node=200G",
        ]
    )
    settings = controller_cmd._warming_settings(args)
    assert settings.enabled and settings.planner.holders == 2
    assert settings.planner.node_disk_budget_bytes == 2**40
    assert settings.planner.max_inflight_bytes_per_node == 200 * 10**9
    with pytest.raises(SystemExit):
        parser.parse_args(["controller", "--warming-max-inflight-bytes=lots"])
    with pytest.raises(ValueError, match="max writes per pass"):
        WarmingControllerSettings(max_writes_per_pass=0)
