"""The kubelet's PodResources API: GPU-id mapping through the generated messages (no server),
then the real gRPC client against the kubelet's own server code (hack/podresources, see
conftest.py) and the agent loop that reports what it read."""

from __future__ import annotations

import json
import logging
import socket as socketlib
import time
from collections.abc import Sequence
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from support.podresources import KubeletServer, gpu_pod

from scheduler.agent.cache_scan import ScanResult
from scheduler.agent.podresources import (
    DeviceIds,
    KubeletGpus,
    PodResourcesError,
    PodResourcesMetrics,
    PodResourcesReader,
    allocatable_devices,
    allocations_from,
    as_allocations,
    devices_per_pod,
    kubelet_gpus,
)
from scheduler.agent.podresources_v1 import api_pb2
from scheduler.agent.run import AgentLoop, AgentSettings
from scheduler.inventory.merge import merge_agent_report
from scheduler.inventory.status import Allocation, InventoryStatus, ModelEntry
from scheduler.state.kube import InventoryApi
from topology.model import GpuInfo, NodeTopology
from topology.presets import PRESETS

UUIDS = [f"GPU-{index:04d}-aaaa" for index in range(8)]


def topology() -> NodeTopology:
    base = PRESETS["hgx-h100-8"]
    gpus = tuple(GpuInfo(g.index, g.numa_node, uuid=UUIDS[g.index]) for g in base.gpus)
    return NodeTopology(gpus, base.links)


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


# -- messages and id mapping (no server) ---------------------------------------------------------


def devices(resource: str, *ids: str) -> api_pb2.ContainerDevices:
    return api_pb2.ContainerDevices(resource_name=resource, device_ids=ids)


def container(name: str, *sets: api_pb2.ContainerDevices) -> api_pb2.ContainerResources:
    return api_pb2.ContainerResources(name=name, devices=sets, cpu_ids=[7])


def pod(name: str, namespace: str, *containers: api_pb2.ContainerResources) -> api_pb2.PodResources:
    return api_pb2.PodResources(name=name, namespace=namespace, containers=containers)


REPLY = api_pb2.ListPodResourcesResponse(
    pod_resources=[
        pod(
            "engine-0",
            "llm",
            container("vllm", devices("nvidia.com/gpu", UUIDS[0], UUIDS[1])),
            container("sidecar", devices("example.com/nic", "mlx5_0")),
        ),
        pod(
            "slice",
            "team",
            container("c", devices("nvidia.com/gpu", f"{UUIDS[3]}::1", f"{UUIDS[3]}::2")),
        ),
        pod("by-index", "team", container("c", devices("nvidia.com/gpu", "5"))),
        pod("mig", "team", container("c", devices("nvidia.com/gpu", "MIG-abc", "0:1"))),
        pod("cpu-only", "team", container("c")),
    ]
)


def test_devices_per_pod_filters_by_resource() -> None:
    # Through the wire format and back, as the client receives it.
    reply = api_pb2.ListPodResourcesResponse.FromString(REPLY.SerializeToString())
    assert devices_per_pod(reply) == {
        "llm/engine-0": (UUIDS[0], UUIDS[1]),
        "team/slice": (f"{UUIDS[3]}::1", f"{UUIDS[3]}::2"),
        "team/by-index": ("5",),
        "team/mig": ("MIG-abc", "0:1"),
    }
    assert devices_per_pod(reply, "example.com/nic") == {"llm/engine-0": ("mlx5_0",)}
    assert devices_per_pod(api_pb2.ListPodResourcesResponse()) == {}


def test_allocatable_devices_filters_by_resource_without_repeats() -> None:
    reply = api_pb2.AllocatableResourcesResponse(
        devices=[
            devices("nvidia.com/gpu", UUIDS[0], UUIDS[1]),
            devices("example.com/nic", "mlx5_0"),
            devices("nvidia.com/gpu", UUIDS[1], UUIDS[2]),
        ],
        cpu_ids=[0, 1],
    )
    assert allocatable_devices(reply) == (UUIDS[0], UUIDS[1], UUIDS[2])


def test_allocations_map_uuids_replicas_and_indices() -> None:
    per_pod = allocations_from(devices_per_pod(REPLY), topology())
    assert per_pod == {"llm/engine-0": (0, 1), "team/slice": (3,), "team/by-index": (5,)}
    allocations = as_allocations(per_pod)
    assert [(a.index, a.pod) for a in allocations] == [
        (0, "llm/engine-0"),
        (1, "llm/engine-0"),
        (3, "team/slice"),
        (5, "team/by-index"),
    ]


def test_unknown_uuid_is_logged_and_left_out(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert allocations_from({"a/b": ("GPU-elsewhere",)}, topology()) == {}
    assert "GPU-elsewhere" in caplog.text


def test_kubelet_gpus_maps_allocatable_and_names_unknown_devices() -> None:
    ids = DeviceIds(
        per_pod={"a/p": (UUIDS[2].lower(), "GPU-elsewhere"), "a/q": ("9",)},  # 9: no such GPU
        allocatable=(*UUIDS[:7], "MIG-xyz"),  # GPU 7 unhealthy: not allocatable
    )
    gpus = kubelet_gpus(ids, topology())
    assert gpus == KubeletGpus({"a/p": (2,)}, (0, 1, 2, 3, 4, 5, 6), ("GPU-elsewhere", "9"))
    assert gpus.allocations() == (Allocation(2, "a/p"),)


def test_uuids_without_a_topology_are_not_guessed() -> None:
    with pytest.raises(PodResourcesError) as raised:
        kubelet_gpus(DeviceIds({"a/p": (UUIDS[0],)}, None), None)
    assert raised.value.reason == "no_topology"
    # Indices (DEVICE_ID_STRATEGY=index) need no topology.
    assert kubelet_gpus(DeviceIds({"a/p": ("1", "0::3")}, ("0", "1")), None) == KubeletGpus(
        {"a/p": (0, 1)}, (0, 1)
    )


def test_a_missing_socket_is_none_quickly_with_one_log_line_and_the_metric(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = PodResourcesMetrics()
    reader = PodResourcesReader(tmp_path / "kubelet.sock", metrics=metrics)
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="scheduler.agent.podresources"):
        assert reader.read(topology()) is None
        assert reader.read(topology()) is None
        assert reader.read(topology()) is None
    assert time.monotonic() - started < 1.0
    lines = [r for r in caplog.records if r.name == "scheduler.agent.podresources"]
    assert len(lines) == 1
    assert lines[0].levelno == logging.WARNING
    assert str(tmp_path / "kubelet.sock") in lines[0].getMessage()
    assert "[no_socket]" in lines[0].getMessage()
    assert reader.state == "no_socket"
    assert metric(metrics.registry, "kvsched_agent_podresources_up") == 0
    errors = "kvsched_agent_podresources_errors_total"
    assert metric(metrics.registry, errors, reason="no_socket") == 3
    assert metric(metrics.registry, errors, reason="unavailable") == 0


def test_a_socket_nobody_listens_on_is_unavailable(
    socket_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # What a kubelet that died leaves behind: the socket file, and nothing accepting on it.
    path = socket_dir / "kubelet.sock"
    stale = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    reader = PodResourcesReader(path, timeout_s=2.0)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert reader.read(topology()) is None
    assert time.monotonic() - started < 2.5
    assert reader.state == "unavailable"
    assert "does not answer" in caplog.text


def test_not_a_socket_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "kubelet.sock"
    path.write_text("not a socket")
    reader = PodResourcesReader(path)
    assert reader.read(topology()) is None
    assert reader.state == "no_socket"


# -- against the kubelet's own server code -------------------------------------------------------


def test_list_and_allocatable_through_the_kubelets_server(kubelet_server: KubeletServer) -> None:
    kubelet_server.set(
        pods=[
            gpu_pod("llm", "engine-0", UUIDS[0], UUIDS[1], container="vllm"),
            gpu_pod("llm", "engine-1", UUIDS[4].upper(), UUIDS[5], UUIDS[6], UUIDS[7]),
            # Time-slicing: two pods on replicas of GPU 3.
            gpu_pod("team", "slice-a", f"{UUIDS[3]}::0"),
            gpu_pod("team", "slice-b", f"{UUIDS[3]}::1"),
            gpu_pod("team", "cpu-only"),
            {
                "namespace": "net",
                "name": "nic-user",
                "containers": [
                    {
                        "name": "c",
                        "devices": [{"resourceName": "example.com/nic", "deviceIds": ["mlx5_0"]}],
                    }
                ],
            },
        ],
        # GPU 2 is unhealthy: the kubelet does not offer it.
        allocatable=[UUIDS[i] for i in (0, 1, 3, 4, 5, 6, 7)]
        + [{"resourceName": "example.com/nic", "deviceIds": ["mlx5_0"]}],
    )
    reader = PodResourcesReader(kubelet_server.socket)
    gpus = reader.read(topology())
    assert gpus == KubeletGpus(
        per_pod={
            "llm/engine-0": (0, 1),
            "llm/engine-1": (4, 5, 6, 7),
            "team/slice-a": (3,),
            "team/slice-b": (3,),
        },
        allocatable=(0, 1, 3, 4, 5, 6, 7),
    )
    assert reader.state == "up"
    assert metric(reader.metrics.registry, "kvsched_agent_podresources_up") == 1


def test_a_pod_removed_from_the_kubelet_disappears_from_the_next_read(
    kubelet_server: KubeletServer,
) -> None:
    reader = PodResourcesReader(kubelet_server.socket)
    kubelet_server.set(
        pods=[gpu_pod("llm", "a", UUIDS[0]), gpu_pod("llm", "b", UUIDS[1])], allocatable=UUIDS
    )
    first = reader.read(topology())
    assert first is not None and set(first.per_pod) == {"llm/a", "llm/b"}
    kubelet_server.set(pods=[gpu_pod("llm", "b", UUIDS[1])], allocatable=UUIDS)
    second = reader.read(topology())
    assert second is not None and dict(second.per_pod) == {"llm/b": (1,)}
    kubelet_server.set(pods=[], allocatable=UUIDS)
    third = reader.read(topology())
    assert third is not None and dict(third.per_pod) == {} and third.allocatable == tuple(range(8))


def test_unknown_uuids_and_mig_devices(
    kubelet_server: KubeletServer, caplog: pytest.LogCaptureFixture
) -> None:
    kubelet_server.set(
        pods=[
            gpu_pod("llm", "whole", UUIDS[0], "GPU-not-on-this-node"),
            gpu_pod("llm", "mig", "MIG-4f1c2e7a-0000-0000-0000-000000000000"),
            gpu_pod("llm", "mig-index", "1:0"),
        ],
        allocatable=[UUIDS[0], "MIG-4f1c2e7a-0000-0000-0000-000000000000"],
    )
    reader = PodResourcesReader(kubelet_server.socket)
    with caplog.at_level(logging.WARNING, logger="scheduler.agent.podresources"):
        gpus = reader.read(topology())
        again = reader.read(topology())
    assert gpus is not None and again == gpus
    assert dict(gpus.per_pod) == {"llm/whole": (0,)}
    assert gpus.allocatable == (0,)
    assert gpus.unknown_devices == ("GPU-not-on-this-node",)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "GPU-not-on-this-node" in warnings[0]  # once, not per cycle


def test_index_ids_and_uuids_without_topology(kubelet_server: KubeletServer) -> None:
    kubelet_server.set(pods=[gpu_pod("llm", "a", "0", "1")], allocatable=["0", "1", "2"])
    reader = PodResourcesReader(kubelet_server.socket)
    assert reader.read(None) == KubeletGpus({"llm/a": (0, 1)}, (0, 1, 2))
    kubelet_server.set(pods=[gpu_pod("llm", "a", UUIDS[0])], allocatable=UUIDS)
    assert reader.read(None) is None
    assert reader.state == "no_topology"
    assert reader.read(topology()) == KubeletGpus({"llm/a": (0,)}, tuple(range(8)))


def test_a_kubelet_that_does_not_answer_in_time(
    kubelet_server: KubeletServer, caplog: pytest.LogCaptureFixture
) -> None:
    kubelet_server.set(pods=[gpu_pod("llm", "a", UUIDS[0])], allocatable=UUIDS, delay_ms=5000)
    reader = PodResourcesReader(kubelet_server.socket, timeout_s=0.3)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert reader.read(topology()) is None
    assert time.monotonic() - started < 2.0
    assert reader.state == "timeout"
    assert "no answer within 0.3s" in caplog.text
    errors = "kvsched_agent_podresources_errors_total"
    assert metric(reader.metrics.registry, errors, reason="timeout") == 1


def test_a_reply_over_the_size_limit_is_refused(kubelet_server: KubeletServer) -> None:
    pods = [gpu_pod("llm", f"pod-{n:04d}", UUIDS[n % 8]) for n in range(200)]
    kubelet_server.set(pods=pods, allocatable=UUIDS)
    reader = PodResourcesReader(kubelet_server.socket, max_message_bytes=4096)
    assert reader.read(topology()) is None
    assert reader.state == "too_large"
    assert PodResourcesReader(kubelet_server.socket).read(topology()) is not None  # 16 MiB


def test_an_older_kubelet_without_allocatable_resources(
    kubelet_server: KubeletServer, caplog: pytest.LogCaptureFixture
) -> None:
    kubelet_server.set(
        pods=[gpu_pod("llm", "a", UUIDS[0])],
        allocatable=UUIDS,
        unimplemented=["GetAllocatableResources"],
    )
    reader = PodResourcesReader(kubelet_server.socket)
    with caplog.at_level(logging.WARNING, logger="scheduler.agent.podresources"):
        assert reader.read(topology()) == KubeletGpus({"llm/a": (0,)}, None)
        assert reader.read(topology()) == KubeletGpus({"llm/a": (0,)}, None)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "UNIMPLEMENTED" in warnings[0]
    errors = "kvsched_agent_podresources_errors_total"
    assert metric(reader.metrics.registry, errors, reason="allocatable") == 2
    assert metric(reader.metrics.registry, "kvsched_agent_podresources_up") == 1


def test_the_kubelet_going_away_and_coming_back_is_two_log_lines(
    kubelet_server: KubeletServer,
    podresources_server_binary: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    kubelet_server.set(pods=[gpu_pod("llm", "a", UUIDS[0])], allocatable=UUIDS)
    reader = PodResourcesReader(kubelet_server.socket, timeout_s=2.0)
    with caplog.at_level(logging.INFO, logger="scheduler.agent.podresources"):
        assert reader.read(topology()) is not None
        kubelet_server.stop()  # removes its socket
        assert reader.read(topology()) is None
        assert reader.read(topology()) is None
        kubelet_server.start(podresources_server_binary)
        assert reader.read(topology()) is not None
        assert reader.read(topology()) is not None
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3, messages
    assert "reading GPU allocations from the kubelet: 1 pod(s)" in messages[0]
    assert "[no_socket]" in messages[1]
    assert "from the kubelet again" in messages[2]


def test_get_is_served_by_the_kubelets_code(kubelet_server: KubeletServer) -> None:
    # The agent uses List and GetAllocatableResources; Get completes the kubelet's service.
    import grpc

    from scheduler.agent.podresources_v1 import api_pb2_grpc

    kubelet_server.set(pods=[gpu_pod("llm", "a", UUIDS[0])])
    with grpc.insecure_channel(f"unix://{kubelet_server.socket}") as channel:
        stub = api_pb2_grpc.PodResourcesListerStub(channel)  # type: ignore[no-untyped-call]
        reply = stub.Get(api_pb2.GetPodResourcesRequest(pod_name="a", pod_namespace="llm"))
        assert reply.pod_resources.containers[0].devices[0].device_ids == [UUIDS[0]]
        with pytest.raises(grpc.RpcError) as raised:
            stub.Get(api_pb2.GetPodResourcesRequest(pod_name="b", pod_namespace="llm"))
        assert "pod b in namespace llm not found" in str(raised.value.details())


# -- the agent loop ------------------------------------------------------------------------------


MODEL = ModelEntry("org/m", "local-disk", None, 10)


def fixed_scan(paths: Sequence[Path]) -> ScanResult:
    return ScanResult((MODEL,))


class RecordingApi:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}

    def get_inventory(self, name: str) -> dict[str, Any] | None:
        return self.objects.get(name)

    def create_inventory(self, name: str, labels: Any) -> dict[str, Any]:
        self.objects[name] = {"metadata": {"name": name, "resourceVersion": "1"}}
        return self.objects[name]

    def replace_inventory_status(
        self, name: str, status: Any, resource_version: str
    ) -> dict[str, Any]:
        self.objects[name]["status"] = json.loads(json.dumps(dict(status)))
        self.objects[name]["metadata"]["resourceVersion"] = str(int(resource_version) + 1)
        return self.objects[name]

    def delete_inventory(self, name: str) -> None:
        self.objects.pop(name, None)


def loop_for(socket: Path | None, api: RecordingApi | None = None, **settings: Any) -> AgentLoop:
    def connect() -> InventoryApi:
        assert api is not None
        return api

    return AgentLoop(
        AgentSettings(node="n1", pod_resources_socket=socket, **settings),
        merge_agent_report,
        api=connect if api is not None else None,
        discover=topology,
        scan=fixed_scan,
        out=StringIO() if settings.get("dry_run") else None,
    )


def test_the_dry_run_report_carries_the_kubelets_allocations(
    kubelet_server: KubeletServer,
) -> None:
    kubelet_server.set(
        pods=[gpu_pod("llm", "engine-0", UUIDS[1], UUIDS[0])],
        allocatable=UUIDS[:6],
    )
    loop = loop_for(kubelet_server.socket, dry_run=True)
    assert loop.run_once()
    assert isinstance(loop._out, StringIO)
    printed = json.loads(loop._out.getvalue())
    assert printed["allocated"] == [
        {"index": 0, "pod": "llm/engine-0"},
        {"index": 1, "pod": "llm/engine-0"},
    ]
    assert printed["allocatedSource"] == "kubelet"
    assert printed["allocatableGpus"] == [0, 1, 2, 3, 4, 5]
    assert len(printed["gpus"]) == 8


def test_published_allocations_follow_the_kubelet(kubelet_server: KubeletServer) -> None:
    api = RecordingApi()
    loop = loop_for(kubelet_server.socket, api)
    kubelet_server.set(
        pods=[gpu_pod("llm", "a", UUIDS[0]), gpu_pod("llm", "b", UUIDS[2])], allocatable=UUIDS
    )
    assert loop.run_once()
    status = InventoryStatus.from_status(api.objects["n1"]["status"])
    assert status is not None and status.allocations_are_truth
    assert status.allocated == (Allocation(0, "llm/a"), Allocation(2, "llm/b"))
    assert status.allocatable_gpus == tuple(range(8))
    kubelet_server.set(pods=[gpu_pod("llm", "b", UUIDS[2])], allocatable=UUIDS[1:])
    assert loop.run_once()
    status = InventoryStatus.from_status(api.objects["n1"]["status"])
    assert status is not None
    assert status.allocated == (Allocation(2, "llm/b"),)
    assert status.allocatable_gpus == tuple(range(1, 8))
    assert metric(loop.registry, "kvsched_agent_podresources_up") == 1


def test_without_a_socket_the_agent_still_publishes_caches_and_gpus(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    api = RecordingApi()
    loop = loop_for(tmp_path / "kubelet.sock", api)
    with caplog.at_level(logging.WARNING, logger="scheduler.agent.podresources"):
        assert loop.run_once() and loop.run_once()
    written = api.objects["n1"]["status"]
    assert "allocatedSource" not in written and "allocatableGpus" not in written
    assert written["allocated"] == []
    status = InventoryStatus.from_status(written)
    assert status is not None
    assert len(status.gpus) == 8 and status.gpus[3].uuid == UUIDS[3]
    assert status.models == (MODEL,)
    assert len(caplog.records) == 1  # one line for two cycles
    errors = "kvsched_agent_podresources_errors_total"
    assert metric(loop.registry, errors, reason="no_socket") == 2
    assert metric(loop.registry, "kvsched_agent_podresources_up") == 0


def test_no_socket_configured_reads_nothing(tmp_path: Path) -> None:
    loop = loop_for(None, RecordingApi())
    assert loop.kubelet is None
    report = loop.report()
    assert report.allocated == () and report.allocated_source is None
    assert report.allocatable_gpus is None
    assert metric(loop.registry, "kvsched_agent_podresources_errors_total", reason="no_socket") == 0
