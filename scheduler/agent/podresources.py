"""GPUs the kubelet has handed to pods, from its PodResources v1 gRPC API: the node's truth.

The kubelet serves ``v1.PodResourcesLister`` over gRPC on a unix socket,
``/var/lib/kubelet/pod-resources/kubelet.sock`` (the agent's DaemonSet mounts the folder
read-only). The client is the code grpcio-tools generates from the kubelet's own ``api.proto``
(:mod:`scheduler.agent.podresources_v1`); ``grpcio`` and ``protobuf`` come with the ``agent``
extra and are imported only when the socket is read. Two calls per read, under one deadline
(``timeout_s``) and a bounded reply size (``max_message_bytes``, gRPC's max receive length):

* ``List``: per pod, per container, the devices of ``nvidia.com/gpu`` -> which GPUs each pod
  got (:attr:`KubeletGpus.per_pod`, keyed ``namespace/name``);
* ``GetAllocatableResources``: the devices the kubelet can hand out (healthy ones) ->
  :attr:`KubeletGpus.allocatable`; None when only this call failed (an older kubelet).

The NVIDIA device plugin names GPUs by UUID (``GPU-…``), by UUID and replica under
time-slicing (``GPU-…::2``: several pods may share one GPU) or by index
(``DEVICE_ID_STRATEGY=index``); all three map to GPU indices through the discovered topology.
MIG devices (``MIG-…``, or ``<gpu>:<mig>`` under the index strategy) are not whole GPUs and are
left out; a UUID that is none of this node's GPUs is left out and named in
:attr:`KubeletGpus.unknown_devices`. GPU UUIDs with no topology to map them against make the
read fail (reason ``no_topology``) rather than report fewer GPUs than the kubelet handed out.

:class:`PodResourcesReader` is what the agent loop holds: one :meth:`~PodResourcesReader.read`
per cycle, None when the kubelet could not be read. It keeps the metrics
``kvsched_agent_podresources_up`` (0/1) and ``kvsched_agent_podresources_errors_total{reason}``
and logs a line only when the state changes (up, or down for a new reason), not every cycle.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from scheduler.inventory.status import Allocation
from topology.model import NodeTopology

if TYPE_CHECKING:
    import grpc

    from scheduler.agent.podresources_v1 import api_pb2

__all__ = [
    "DEFAULT_SOCKET",
    "DEFAULT_TIMEOUT_S",
    "GPU_RESOURCE",
    "MAX_MESSAGE_BYTES",
    "REASONS",
    "DeviceIds",
    "KubeletGpus",
    "PodResourcesError",
    "PodResourcesMetrics",
    "PodResourcesReader",
    "allocatable_devices",
    "allocations_from",
    "as_allocations",
    "devices_per_pod",
    "kubelet_gpus",
    "read_device_ids",
]

log = logging.getLogger(__name__)

DEFAULT_SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_TIMEOUT_S = 5.0
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

# Why a read failed (the `reason` label of kvsched_agent_podresources_errors_total).
NO_SOCKET = "no_socket"  # the socket file is not there (folder not mounted, no kubelet)
NO_GRPCIO = "no_grpcio"  # grpcio/protobuf not installed (no `agent` extra)
UNAVAILABLE = "unavailable"  # nothing answers on the socket (kubelet down or restarting)
TIMEOUT = "timeout"  # no answer within timeout_s
TOO_LARGE = "too_large"  # the reply is over max_message_bytes
RPC_ERROR = "rpc_error"  # any other gRPC status
NO_TOPOLOGY = "no_topology"  # GPU UUIDs, but no discovered GPUs to map them to
ALLOCATABLE = "allocatable"  # List worked, GetAllocatableResources did not
REASONS = (
    NO_SOCKET,
    NO_GRPCIO,
    UNAVAILABLE,
    TIMEOUT,
    TOO_LARGE,
    RPC_ERROR,
    NO_TOPOLOGY,
    ALLOCATABLE,
)

_MIG_INDEX = re.compile(r"^\d+:\d+$")  # MIG device under DEVICE_ID_STRATEGY=index


class PodResourcesError(Exception):
    """The kubelet could not be read; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DeviceIds:
    """Device ids of one resource as the kubelet names them (before mapping to GPU indices).

    ``allocatable`` is None when ``GetAllocatableResources`` failed (``allocatable_error``).
    """

    per_pod: Mapping[str, tuple[str, ...]]
    allocatable: tuple[str, ...] | None
    allocatable_error: PodResourcesError | None = None


@dataclass(frozen=True, slots=True)
class KubeletGpus:
    """The kubelet's GPUs: per pod (``namespace/name``) the GPU indices it got, and the GPU
    indices the kubelet can hand out (None when ``GetAllocatableResources`` was not read).

    ``unknown_devices``: device ids that are none of this node's GPUs (left out).
    """

    per_pod: Mapping[str, tuple[int, ...]]
    allocatable: tuple[int, ...] | None
    unknown_devices: tuple[str, ...] = field(default=())

    def allocations(self) -> tuple[Allocation, ...]:
        return as_allocations(self.per_pod)


# -- messages -> device ids ---------------------------------------------------------------------


def devices_per_pod(
    response: api_pb2.ListPodResourcesResponse, resource: str = GPU_RESOURCE
) -> dict[str, tuple[str, ...]]:
    """Device ids of ``resource`` per pod (``namespace/name``), all containers together, in the
    kubelet's order without repeats; pods without such devices are left out."""
    result: dict[str, tuple[str, ...]] = {}
    for pod in response.pod_resources:
        if not pod.name:
            continue
        ids = [
            device_id
            for container in pod.containers
            for devices in container.devices
            if devices.resource_name == resource
            for device_id in devices.device_ids
        ]
        if ids:
            key = f"{pod.namespace}/{pod.name}"
            result[key] = tuple(dict.fromkeys((*result.get(key, ()), *ids)))
    return result


def allocatable_devices(
    response: api_pb2.AllocatableResourcesResponse, resource: str = GPU_RESOURCE
) -> tuple[str, ...]:
    """Device ids of ``resource`` the kubelet can hand out, in its order without repeats."""
    return tuple(
        dict.fromkeys(
            device_id
            for devices in response.devices
            if devices.resource_name == resource
            for device_id in devices.device_ids
        )
    )


# -- device ids -> GPU indices ------------------------------------------------------------------


@dataclass(slots=True)
class _Mapper:
    """Maps device ids to GPU indices; collects the ids that are none of the node's GPUs."""

    by_uuid: dict[str, int]
    gpu_count: int | None  # None: no topology, numeric ids taken as they are
    unknown: dict[str, None] = field(default_factory=dict)

    @classmethod
    def of(cls, topology: NodeTopology | None) -> _Mapper:
        if topology is None:
            return cls({}, None)
        by_uuid = {gpu.uuid.lower(): gpu.index for gpu in topology.gpus if gpu.uuid}
        return cls(by_uuid, topology.gpu_count)

    def indices(self, device_ids: Iterable[str]) -> tuple[int, ...]:
        found: set[int] = set()
        for device_id in device_ids:
            base = device_id.split("::", 1)[0].strip()  # time-slicing replica suffix
            if base.upper().startswith("MIG-") or _MIG_INDEX.match(base):
                log.debug("MIG device %s is not a whole GPU; left out", device_id)
            elif base.isdigit() and (self.gpu_count is None or int(base) < self.gpu_count):
                found.add(int(base))
            elif base.lower() in self.by_uuid:
                found.add(self.by_uuid[base.lower()])
            elif base.upper().startswith("GPU-") and not self.by_uuid:
                raise PodResourcesError(
                    NO_TOPOLOGY,
                    f"the kubelet names GPUs by UUID ({device_id}) but no GPU UUIDs were "
                    "discovered on this node to map them to",
                )
            else:
                self.unknown[device_id] = None
        return tuple(sorted(found))


def kubelet_gpus(ids: DeviceIds, topology: NodeTopology | None) -> KubeletGpus:
    """Map the kubelet's device ids to GPU indices through ``topology``.

    Raises :class:`PodResourcesError` (``no_topology``) for GPU UUIDs without discovered GPUs.
    """
    mapper = _Mapper.of(topology)
    per_pod: dict[str, tuple[int, ...]] = {}
    for pod, device_ids in ids.per_pod.items():
        indices = mapper.indices(device_ids)
        if indices:
            per_pod[pod] = indices
    allocatable = None if ids.allocatable is None else mapper.indices(ids.allocatable)
    return KubeletGpus(per_pod, allocatable, tuple(mapper.unknown))


def allocations_from(
    devices: Mapping[str, Sequence[str]], topology: NodeTopology | None
) -> dict[str, tuple[int, ...]]:
    """GPU indices per pod from device ids per pod (UUIDs through ``topology``, replicas,
    numeric ids; MIG left out). Ids that are none of the node's GPUs are logged and left out;
    so are GPU UUIDs when there is no topology to map them against."""
    mapper = _Mapper.of(topology)
    result: dict[str, tuple[int, ...]] = {}
    for pod, device_ids in devices.items():
        try:
            indices = mapper.indices(device_ids)
        except PodResourcesError as exc:
            log.warning("pod %s: %s", pod, exc)
            continue
        for unknown in mapper.unknown:
            log.warning("pod %s: GPU %s is not among this node's GPUs", pod, unknown)
        mapper.unknown.clear()
        if indices:
            result[pod] = indices
    return result


def as_allocations(per_pod: Mapping[str, Sequence[int]]) -> tuple[Allocation, ...]:
    return tuple(
        sorted(
            (Allocation(index, pod) for pod, indices in per_pod.items() for index in indices),
            key=lambda a: (a.index, a.pod),
        )
    )


# -- the gRPC calls -----------------------------------------------------------------------------


class _Lister(Protocol):
    """The generated ``PodResourcesListerStub``, as far as it is used here."""

    List: grpc.UnaryUnaryMultiCallable[
        api_pb2.ListPodResourcesRequest, api_pb2.ListPodResourcesResponse
    ]
    GetAllocatableResources: grpc.UnaryUnaryMultiCallable[
        api_pb2.AllocatableResourcesRequest, api_pb2.AllocatableResourcesResponse
    ]


def _check_socket(socket: Path) -> None:
    try:
        mode = os.stat(socket).st_mode
    except FileNotFoundError:
        raise PodResourcesError(
            NO_SOCKET,
            f"no kubelet PodResources socket at {socket} (is /var/lib/kubelet/pod-resources "
            "mounted, and the kubelet running?)",
        ) from None
    except OSError as exc:
        raise PodResourcesError(NO_SOCKET, f"cannot reach {socket}: {exc}") from None
    if not stat.S_ISSOCK(mode):
        raise PodResourcesError(NO_SOCKET, f"{socket} is not a unix socket")


def _rpc_error(
    exc: grpc.RpcError, call: str, timeout_s: float, max_bytes: int, past_deadline: bool
) -> PodResourcesError:
    import grpc

    code = exc.code() if callable(getattr(exc, "code", None)) else None
    details = (exc.details() if callable(getattr(exc, "details", None)) else None) or str(exc)
    if code == grpc.StatusCode.UNAVAILABLE:
        return PodResourcesError(UNAVAILABLE, f"{call}: the kubelet does not answer: {details}")
    # A deadline can also surface as CANCELLED: the server gave up on the call first and
    # reset the stream.
    if code == grpc.StatusCode.DEADLINE_EXCEEDED or (
        past_deadline and code == grpc.StatusCode.CANCELLED
    ):
        return PodResourcesError(TIMEOUT, f"{call}: no answer within {timeout_s:g}s")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return PodResourcesError(
            TOO_LARGE, f"{call}: reply over the {max_bytes} byte limit: {details}"
        )
    name = code.name if code is not None else "unknown status"
    return PodResourcesError(RPC_ERROR, f"{call}: {name}: {details}")


def read_device_ids(
    socket: Path,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    resource: str = GPU_RESOURCE,
) -> DeviceIds:
    """``List`` and ``GetAllocatableResources`` on ``socket``, both within ``timeout_s``.

    Raises :class:`PodResourcesError` when ``List`` fails; a failed
    ``GetAllocatableResources`` is ``allocatable=None`` with ``allocatable_error`` set.
    """
    _check_socket(socket)
    try:
        import grpc

        from scheduler.agent.podresources_v1 import api_pb2, api_pb2_grpc
    except ImportError as exc:
        raise PodResourcesError(
            NO_GRPCIO,
            f"cannot load the gRPC client ({exc}); install kvsched with the `agent` extra",
        ) from None
    deadline = time.monotonic() + timeout_s
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", 1024 * 1024),  # requests are empty or tiny
        ("grpc.enable_retries", 0),
    ]
    channel = grpc.insecure_channel(f"unix://{socket.absolute()}", options=options)
    try:
        # The generated stub module is untyped; _Lister states what it provides.
        stub: _Lister = api_pb2_grpc.PodResourcesListerStub(channel)  # type: ignore[no-untyped-call]
        try:
            listed = stub.List(api_pb2.ListPodResourcesRequest(), timeout=timeout_s)
        except grpc.RpcError as exc:
            past = time.monotonic() >= deadline
            raise _rpc_error(exc, "List", timeout_s, max_message_bytes, past) from None
        per_pod = devices_per_pod(listed, resource)
        allocatable: tuple[str, ...] | None = None
        allocatable_error: PodResourcesError | None = None
        left = max(deadline - time.monotonic(), 0.001)
        try:
            reply = stub.GetAllocatableResources(
                api_pb2.AllocatableResourcesRequest(), timeout=left
            )
            allocatable = allocatable_devices(reply, resource)
        except grpc.RpcError as exc:
            past = time.monotonic() >= deadline
            allocatable_error = _rpc_error(
                exc, "GetAllocatableResources", timeout_s, max_message_bytes, past
            )
    finally:
        channel.close()
    return DeviceIds(per_pod, allocatable, allocatable_error)


# -- the agent's reader: state, log lines and metrics -------------------------------------------


class PodResourcesMetrics:
    """``kvsched_agent_podresources_up`` and ``kvsched_agent_podresources_errors_total``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.up = Gauge(
            "kvsched_agent_podresources_up",
            "1 when the last cycle read the kubelet's PodResources API, else 0.",
            registry=self.registry,
        )
        self.errors = Counter(
            "kvsched_agent_podresources_errors",
            "Cycles whose PodResources read failed (or was partial: allocatable), by reason.",
            ["reason"],
            registry=self.registry,
        )
        for reason in REASONS:
            self.errors.labels(reason=reason)


class PodResourcesReader:
    """Reads the kubelet's GPUs once per agent cycle; never raises.

    Logs once per state change: when the kubelet first answers or answers again (info), and
    when it stops answering or fails for another reason (warning), naming the socket and why;
    a new set of unknown device ids, or a change in whether ``GetAllocatableResources``
    works, is a line too. Every cycle updates the metrics.
    """

    def __init__(
        self,
        socket: Path,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        resource: str = GPU_RESOURCE,
        metrics: PodResourcesMetrics | None = None,
    ) -> None:
        self.socket = socket
        self.timeout_s = timeout_s
        self.max_message_bytes = max_message_bytes
        self.resource = resource
        self.metrics = metrics if metrics is not None else PodResourcesMetrics()
        self._state: str | None = None  # "up", or the reason of the last failure
        self._allocatable_state: str | None = None
        self._unknown: tuple[str, ...] = ()

    @property
    def state(self) -> str | None:
        """``up``, the reason of the last failure, or None before the first read."""
        return self._state

    def read(self, topology: NodeTopology | None) -> KubeletGpus | None:
        """This cycle's kubelet GPUs, or None when they could not be read (state logged)."""
        try:
            ids = read_device_ids(
                self.socket,
                timeout_s=self.timeout_s,
                max_message_bytes=self.max_message_bytes,
                resource=self.resource,
            )
            gpus = kubelet_gpus(ids, topology)
        except PodResourcesError as exc:
            self._failed(exc)
            return None
        except Exception as exc:  # a last guard: the agent keeps publishing everything else
            log.exception("PodResources %s: unexpected failure", self.socket)
            self._failed(PodResourcesError(RPC_ERROR, f"unexpected: {exc!r}"))
            return None
        self._succeeded(gpus, ids.allocatable_error)
        return gpus

    def _failed(self, exc: PodResourcesError) -> None:
        self.metrics.up.set(0)
        self.metrics.errors.labels(reason=exc.reason).inc()
        if self._state != exc.reason:
            log.warning(
                "PodResources %s: %s [%s]; GPU allocations are not reported until the kubelet "
                "answers (the rest of the inventory still is); logged again when this changes",
                self.socket,
                exc,
                exc.reason,
            )
        self._state = exc.reason
        self._allocatable_state = None
        self._unknown = ()

    def _succeeded(self, gpus: KubeletGpus, allocatable_error: PodResourcesError | None) -> None:
        self.metrics.up.set(1)
        if self._state != "up":
            log.info(
                "PodResources %s: reading GPU allocations from the kubelet%s: %d pod(s) with GPUs",
                self.socket,
                " again" if self._state is not None else "",
                len(gpus.per_pod),
            )
        self._state = "up"
        allocatable_state = "up" if allocatable_error is None else allocatable_error.reason
        if allocatable_error is not None:
            self.metrics.errors.labels(reason=ALLOCATABLE).inc()
            if self._allocatable_state != allocatable_state:
                log.warning(
                    "PodResources %s: %s; allocatable GPUs not reported (allocations are)",
                    self.socket,
                    allocatable_error,
                )
        self._allocatable_state = allocatable_state
        if gpus.unknown_devices and gpus.unknown_devices != self._unknown:
            log.warning(
                "PodResources %s: device id(s) %s are none of this node's GPUs; left out",
                self.socket,
                ", ".join(gpus.unknown_devices[:8]),
            )
        self._unknown = gpus.unknown_devices
