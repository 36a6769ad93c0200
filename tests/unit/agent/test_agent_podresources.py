"""PodResources reply decoding (hand-encoded protobuf) and GPU-id mapping; no grpcio needed."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from scheduler.agent.podresources import (
    ProtobufError,
    allocations_from,
    as_allocations,
    decode_list_response,
    grpc_available,
    read_gpu_allocations,
)
from topology.model import GpuInfo, NodeTopology
from topology.presets import PRESETS

SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, payload: bytes | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else payload
    return varint(number << 3 | 2) + varint(len(data)) + data


def devices(resource: str, *ids: str) -> bytes:
    return field(1, resource) + b"".join(field(2, i) for i in ids)


def container(name: str, *device_sets: bytes) -> bytes:
    cpu_ids = varint(3 << 3 | 0) + varint(7)  # an unpacked int64 cpu id, to be skipped
    return field(1, name) + b"".join(field(2, d) for d in device_sets) + cpu_ids


def pod(name: str, namespace: str, *containers: bytes) -> bytes:
    return field(1, name) + field(2, namespace) + b"".join(field(3, c) for c in containers)


def response(*pods: bytes) -> bytes:
    return b"".join(field(1, p) for p in pods)


def topology() -> NodeTopology:
    base = PRESETS["hgx-h100-8"]
    gpus = tuple(GpuInfo(g.index, g.numa_node, uuid=f"GPU-{g.index:04d}") for g in base.gpus)
    return NodeTopology(gpus, base.links)


REPLY = response(
    pod(
        "engine-0",
        "llm",
        container("vllm", devices("nvidia.com/gpu", "GPU-0000", "GPU-0001")),
        container("sidecar", devices("example.com/nic", "mlx5_0")),
    ),
    pod("slice", "team", container("c", devices("nvidia.com/gpu", "GPU-0003::1", "GPU-0003::2"))),
    pod("by-index", "team", container("c", devices("nvidia.com/gpu", "5"))),
    pod("mig", "team", container("c", devices("nvidia.com/gpu", "MIG-abc"))),
    pod("cpu-only", "team", container("c")),
)


def test_decode_list_response_filters_by_resource() -> None:
    decoded = decode_list_response(REPLY)
    assert decoded == {
        "llm/engine-0": ("GPU-0000", "GPU-0001"),
        "team/slice": ("GPU-0003::1", "GPU-0003::2"),
        "team/by-index": ("5",),
        "team/mig": ("MIG-abc",),
    }
    assert decode_list_response(REPLY, "example.com/nic") == {"llm/engine-0": ("mlx5_0",)}
    assert decode_list_response(b"") == {}


def test_allocations_map_uuids_replicas_and_indices() -> None:
    per_pod = allocations_from(decode_list_response(REPLY), topology())
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


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x05ab",  # length beyond the end
        b"\x0a",  # truncated varint
        b"\x0b",  # wire type 3 (groups) unsupported
        b"\x00\x01",  # field number 0
    ],
)
def test_malformed_replies_raise_protobuf_error(data: bytes) -> None:
    with pytest.raises(ProtobufError):
        decode_list_response(data)


def test_read_gpu_allocations_with_an_injected_call() -> None:
    calls: list[tuple[Path, float]] = []

    def list_call(socket: Path, timeout_s: float) -> bytes:
        calls.append((socket, timeout_s))
        return REPLY

    result = read_gpu_allocations(SOCKET, topology(), list_call=list_call, timeout_s=2.0)
    assert result is not None and result["llm/engine-0"] == (0, 1)
    assert calls == [(SOCKET, 2.0)]


def test_read_gpu_allocations_failures_are_none(caplog: pytest.LogCaptureFixture) -> None:
    def refused(socket: Path, timeout_s: float) -> bytes:
        raise ConnectionRefusedError(111, "Connection refused")

    with caplog.at_level(logging.WARNING):
        assert read_gpu_allocations(SOCKET, topology(), list_call=refused) is None
        assert read_gpu_allocations(SOCKET, topology(), list_call=lambda s, t: b"\x0a") is None
    assert "List failed" in caplog.text and "unreadable reply" in caplog.text
    assert read_gpu_allocations(None, topology()) is None


@pytest.mark.skipif(grpc_available(), reason="grpcio is installed here")
def test_without_grpcio_the_socket_is_not_read(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert read_gpu_allocations(SOCKET, topology()) is None
    assert "grpcio is not installed" in caplog.text
