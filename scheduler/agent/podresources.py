"""GPUs the kubelet has handed to pods, from its PodResources API (optional).

The kubelet serves ``v1.PodResourcesLister/List`` over gRPC on a unix socket (by default
``/var/lib/kubelet/pod-resources/kubelet.sock``; the agent pod mounts it read-only). Talking to
it needs ``grpcio``, which kvsched does **not** depend on: when ``grpcio`` is not importable,
or no socket path is configured, the agent logs that the allocations are not read and reports
none (the controller's view of allocations stands).

No generated protobuf code is used: the request is empty and the reply is read by the small
protobuf wire-format reader below, which knows the few fields needed (from the kubelet's
``pkg/kubelet/apis/podresources/v1`` messages):

    ListPodResourcesResponse { repeated PodResources pod_resources = 1; }
    PodResources             { string name = 1; string namespace = 2;
                               repeated ContainerResources containers = 3; }
    ContainerResources       { string name = 1; repeated ContainerDevices devices = 2; }
    ContainerDevices         { string resource_name = 1; repeated string device_ids = 2; }

The NVIDIA device plugin names GPUs by UUID (``GPU-…``), by UUID and replica under
time-slicing (``GPU-…::2``) or by index (``DEVICE_ID_STRATEGY=index``); all three are mapped
to GPU indices. MIG devices (``MIG-…``) are not whole GPUs and are left out.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from scheduler.inventory.status import Allocation
from topology.model import NodeTopology

__all__ = [
    "DEFAULT_SOCKET",
    "GPU_RESOURCE",
    "ProtobufError",
    "allocations_from",
    "as_allocations",
    "decode_list_response",
    "grpc_available",
    "read_gpu_allocations",
]

log = logging.getLogger(__name__)

DEFAULT_SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
GPU_RESOURCE = "nvidia.com/gpu"
LIST_METHOD = "/v1.PodResourcesLister/List"

ListCall = Callable[[Path, float], bytes]
"""Sends an empty ListPodResourcesRequest to the socket; returns the raw reply message."""


class ProtobufError(ValueError):
    """The reply is not a well-formed protobuf message."""


def grpc_available() -> bool:
    try:
        importlib.import_module("grpc")
    except ImportError:
        return False
    return True


def _grpc_list(socket: Path, timeout_s: float) -> bytes:
    grpc: Any = importlib.import_module("grpc")
    channel = grpc.insecure_channel(f"unix://{socket}")
    try:
        # No (de)serialisers: the request goes out as the bytes given (an empty message is
        # zero bytes) and the reply comes back as bytes.
        call = channel.unary_unary(LIST_METHOD)
        reply = call(b"", timeout=timeout_s)
    finally:
        channel.close()
    return bytes(reply)


def read_gpu_allocations(
    socket: Path | None,
    topology: NodeTopology | None,
    *,
    resource: str = GPU_RESOURCE,
    list_call: ListCall | None = None,
    timeout_s: float = 5.0,
) -> dict[str, tuple[int, ...]] | None:
    """GPU indices per pod (``namespace/name``), or None when they cannot be read (logged).

    ``list_call`` replaces the gRPC call (tests); without it ``grpcio`` must be importable.
    """
    if socket is None:
        return None
    if list_call is None:
        if not grpc_available():
            log.warning(
                "PodResources socket %s given but grpcio is not installed: GPU allocations "
                "are not read (pip install grpcio to enable)",
                socket,
            )
            return None
        list_call = _grpc_list
    try:
        data = list_call(socket, timeout_s)
        devices = decode_list_response(data, resource)
    except ProtobufError as exc:
        log.warning("PodResources %s: unreadable reply: %s", socket, exc)
        return None
    except Exception as exc:  # grpc.RpcError, OSError: the kubelet is not answering
        log.warning("PodResources %s: List failed: %s", socket, exc)
        return None
    return allocations_from(devices, topology)


def allocations_from(
    devices: dict[str, tuple[str, ...]], topology: NodeTopology | None
) -> dict[str, tuple[int, ...]]:
    """Map device ids per pod to GPU indices (by UUID through ``topology``, or numeric ids)."""
    by_uuid: dict[str, int] = {}
    if topology is not None:
        by_uuid = {gpu.uuid.lower(): gpu.index for gpu in topology.gpus if gpu.uuid}
    result: dict[str, tuple[int, ...]] = {}
    for pod, ids in devices.items():
        indices: set[int] = set()
        for device_id in ids:
            base = device_id.split("::", 1)[0].strip()
            if base.isdigit():
                indices.add(int(base))
            elif base.lower() in by_uuid:
                indices.add(by_uuid[base.lower()])
            elif base.upper().startswith("MIG-"):
                log.debug("pod %s: MIG device %s is not a whole GPU; left out", pod, base)
            else:
                log.warning("pod %s: GPU %s is not among this node's GPUs", pod, device_id)
        if indices:
            result[pod] = tuple(sorted(indices))
    return result


def as_allocations(per_pod: dict[str, tuple[int, ...]]) -> tuple[Allocation, ...]:
    return tuple(
        sorted(
            (Allocation(index, pod) for pod, indices in per_pod.items() for index in indices),
            key=lambda a: (a.index, a.pod),
        )
    )


# -- protobuf wire format ------------------------------------------------------------------------

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
        if shift > 63:
            raise ProtobufError("varint longer than 10 bytes")


def _fields(data: bytes) -> Iterator[tuple[int, bytes | int]]:
    """(field number, value) pairs: bytes for length-delimited fields, int for the others."""
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtobufError("field number 0")
        if wire == _VARINT:
            value, position = _varint(data, position)
            yield number, value
        elif wire == _LENGTH:
            length, position = _varint(data, position)
            end = position + length
            if end > len(data):
                raise ProtobufError(f"field {number}: {length} bytes announced, fewer left")
            yield number, data[position:end]
            position = end
        elif wire in (_FIXED64, _FIXED32):
            size = 8 if wire == _FIXED64 else 4
            if position + size > len(data):
                raise ProtobufError(f"field {number}: truncated fixed-width value")
            yield number, int.from_bytes(data[position : position + size], "little")
            position += size
        else:
            raise ProtobufError(f"field {number}: unsupported wire type {wire}")


def _text(value: bytes | int) -> str:
    if not isinstance(value, bytes):
        raise ProtobufError("expected a string field")
    return value.decode("utf-8", errors="replace")


def decode_list_response(data: bytes, resource: str = GPU_RESOURCE) -> dict[str, tuple[str, ...]]:
    """Device ids of ``resource`` per pod (``namespace/name``), from a ListPodResourcesResponse."""
    result: dict[str, tuple[str, ...]] = {}
    for number, pod_bytes in _fields(data):
        if number != 1 or not isinstance(pod_bytes, bytes):
            continue
        name = namespace = ""
        ids: list[str] = []
        for field, value in _fields(pod_bytes):
            if field == 1:
                name = _text(value)
            elif field == 2:
                namespace = _text(value)
            elif field == 3 and isinstance(value, bytes):
                ids.extend(_container_devices(value, resource))
        if ids and name:
            key = f"{namespace}/{name}"
            result[key] = tuple(dict.fromkeys((*result.get(key, ()), *ids)))
    return result


def _container_devices(container: bytes, resource: str) -> list[str]:
    ids: list[str] = []
    for field, devices in _fields(container):
        if field != 2 or not isinstance(devices, bytes):
            continue
        resource_name = ""
        device_ids: list[str] = []
        for number, value in _fields(devices):
            if number == 1:
                resource_name = _text(value)
            elif number == 2:
                device_ids.append(_text(value))
        if resource_name == resource:
            ids.extend(device_ids)
    return ids
