"""GPU discovery for the node agent: NVML first, ``nvidia-smi`` second, else nothing.

:func:`discover_gpus` returns the node's :class:`NodeTopology` (GPU index, UUID, product name,
total memory, NUMA node, and the link code of every pair as ``nvidia-smi topo -m`` prints it),
or ``None`` when neither NVML nor ``nvidia-smi`` works; the node is then placed from its GFD
labels. Every failure is a log line, never an exception.

NVML is reached through :class:`NvmlLike`, a protocol of exactly the ``pynvml`` functions used
here (same names, same arguments), raising :class:`NvmlError`. :class:`PynvmlLibrary` is the
real one: it imports ``pynvml`` (nvidia-ml-py, the ``agent`` extra) on first use and turns its
errors into :class:`NvmlError`. Tests pass a fake.

How the links are decided, per GPU pair (a, b):

* **NVLink**: for every link l of a GPU with ``nvmlDeviceGetNvLinkState(h, l)`` active, the
  remote end's PCI bus id (``nvmlDeviceGetNvLinkRemotePciInfo``) is compared with the bus ids
  of the node's GPUs. A match counts one link for that pair (bridged PCIe cards, direct
  meshes). A link whose remote end is an NVSwitch (``nvmlDeviceGetNvLinkRemoteDeviceType`` says
  SWITCH, or, where that call is unsupported, the remote bus id is no local GPU) counts as a
  *switch link* of the GPU. GPUs with switch links all share the node's NVSwitch fabric (HGX
  boards have one), so every pair of them gets ``NV<min(switch links of a, of b)>`` plus any
  direct links: what ``nvidia-smi`` prints (NV18 on HGX H100, NV12 on HGX A100). Links are
  tried from 0 up to :data:`MAX_NVLINKS`; ``INVALID_ARGUMENT`` ends a GPU's list (no such
  link) and ``NOT_SUPPORTED`` on link 0 means the GPU has no NVLink.
* **PCIe** (no NVLink between them): ``nvmlDeviceGetTopologyCommonAncestor`` levels map to
  codes: SINGLE (10) -> PIX, MULTIPLE (20) -> PXB, HOSTBRIDGE (30) -> PHB, NODE (40) -> NODE,
  SYSTEM (50) -> SYS. INTERNAL (0) between two distinct GPUs (two GPUs on one board) is PIX,
  the closest PCIe code (``X`` is only the diagonal). A pair whose level cannot be read is SYS,
  the worst case, with a log line.

NUMA node: ``nvmlDeviceGetNumaNodeId`` where the driver has it, else
``/sys/bus/pci/devices/<bus id>/numa_node`` (read through an injectable reader); ``-1``
(no NUMA information) is ``None``.
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from topology.hardware import lookup_product
from topology.model import SELF_LINK, GpuInfo, Link, LinkKind, NodeTopology, TopologyError
from topology.parse import parse_nvidia_smi_topo

__all__ = [
    "MAX_NVLINKS",
    "NvmlError",
    "NvmlLike",
    "PynvmlLibrary",
    "SmiRunner",
    "discover_gpus",
    "discover_with_nvidia_smi",
    "discover_with_nvml",
    "normalize_bus_id",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# NVML return codes used here (nvml.h; pynvml exposes them as NVML_ERROR_*).
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_UNKNOWN = 999

NVML_NVLINK_DEVICE_TYPE_GPU = 0
NVML_NVLINK_DEVICE_TYPE_SWITCH = 2

# NVML_NVLINK_MAX_LINKS of current drivers; older ones answer INVALID_ARGUMENT past their own
# maximum (12 on A100, 18 on H100/B200), which ends the walk early.
MAX_NVLINKS = 36

_LEVEL_CODES: dict[int, LinkKind] = {
    0: LinkKind.PIX,  # INTERNAL: same board
    10: LinkKind.PIX,  # SINGLE
    20: LinkKind.PXB,  # MULTIPLE
    30: LinkKind.PHB,  # HOSTBRIDGE
    40: LinkKind.NODE,  # NODE (CPU)
    50: LinkKind.SYS,  # SYSTEM
}

SYSFS_PCI_DEVICES = Path("/sys/bus/pci/devices")
SMI_TIMEOUT_S = 30.0

SmiRunner = Callable[[Sequence[str]], str]
"""Runs a command line and returns its stdout; raises OSError or subprocess.SubprocessError."""

SysfsReader = Callable[[Path], str]
"""Reads a small text file; raises OSError."""


class NvmlError(Exception):
    """An NVML call failed; ``value`` is the NVML return code (NVML_ERROR_*)."""

    def __init__(self, value: int, message: str = "") -> None:
        super().__init__(message or f"NVML error {value}")
        self.value = value


class PciInfoLike(Protocol):
    @property
    def busId(self) -> bytes | str: ...  # noqa: N802 (NVML's field name)


class MemoryInfoLike(Protocol):
    @property
    def total(self) -> int: ...


class NvmlLike(Protocol):
    """The pynvml functions the agent calls, with pynvml's names; errors are NvmlError."""

    def nvmlInit(self) -> None: ...  # noqa: N802

    def nvmlShutdown(self) -> None: ...  # noqa: N802

    def nvmlDeviceGetCount(self) -> int: ...  # noqa: N802

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...  # noqa: N802

    def nvmlDeviceGetUUID(self, handle: Any) -> str: ...  # noqa: N802

    def nvmlDeviceGetName(self, handle: Any) -> str: ...  # noqa: N802

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> MemoryInfoLike: ...  # noqa: N802

    def nvmlDeviceGetPciInfo(self, handle: Any) -> PciInfoLike: ...  # noqa: N802

    def nvmlDeviceGetNumaNodeId(self, handle: Any) -> int: ...  # noqa: N802

    def nvmlDeviceGetNvLinkState(self, handle: Any, link: int) -> int: ...  # noqa: N802

    def nvmlDeviceGetNvLinkRemotePciInfo(  # noqa: N802
        self, handle: Any, link: int
    ) -> PciInfoLike: ...

    def nvmlDeviceGetNvLinkRemoteDeviceType(self, handle: Any, link: int) -> int: ...  # noqa: N802

    def nvmlDeviceGetTopologyCommonAncestor(self, first: Any, second: Any) -> int: ...  # noqa: N802


class PynvmlLibrary:
    """:class:`NvmlLike` over the real ``pynvml`` module, imported on first use.

    A missing module or shared library is ``NvmlError(LIBRARY_NOT_FOUND)``; a function this
    pynvml lacks is ``NvmlError(FUNCTION_NOT_FOUND)``; pynvml's own errors keep their code.
    """

    def __init__(self) -> None:
        self._module: Any = None

    def _call(self, name: str, *args: Any) -> Any:
        module = self._module
        if module is None:
            try:
                import pynvml  # the `agent` extra; absent on CPU-only installs
            except ImportError as exc:
                raise NvmlError(
                    NVML_ERROR_LIBRARY_NOT_FOUND, f"nvidia-ml-py is not installed: {exc}"
                ) from None
            module = self._module = pynvml
        function = getattr(module, name, None)
        if function is None:
            raise NvmlError(NVML_ERROR_FUNCTION_NOT_FOUND, f"pynvml has no {name}")
        try:
            return function(*args)
        except module.NVMLError as exc:
            raise NvmlError(int(getattr(exc, "value", NVML_ERROR_UNKNOWN)), str(exc)) from None

    def nvmlInit(self) -> None:  # noqa: N802
        self._call("nvmlInit")

    def nvmlShutdown(self) -> None:  # noqa: N802
        self._call("nvmlShutdown")

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return int(self._call("nvmlDeviceGetCount"))

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:  # noqa: N802
        return self._call("nvmlDeviceGetHandleByIndex", index)

    def nvmlDeviceGetUUID(self, handle: Any) -> str:  # noqa: N802
        return _text(self._call("nvmlDeviceGetUUID", handle))

    def nvmlDeviceGetName(self, handle: Any) -> str:  # noqa: N802
        return _text(self._call("nvmlDeviceGetName", handle))

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> MemoryInfoLike:  # noqa: N802
        info: MemoryInfoLike = self._call("nvmlDeviceGetMemoryInfo", handle)
        return info

    def nvmlDeviceGetPciInfo(self, handle: Any) -> PciInfoLike:  # noqa: N802
        info: PciInfoLike = self._call("nvmlDeviceGetPciInfo", handle)
        return info

    def nvmlDeviceGetNumaNodeId(self, handle: Any) -> int:  # noqa: N802
        return int(self._call("nvmlDeviceGetNumaNodeId", handle))

    def nvmlDeviceGetNvLinkState(self, handle: Any, link: int) -> int:  # noqa: N802
        return int(self._call("nvmlDeviceGetNvLinkState", handle, link))

    def nvmlDeviceGetNvLinkRemotePciInfo(self, handle: Any, link: int) -> PciInfoLike:  # noqa: N802
        # pynvml's wrapper of this name calls the C function nvmlDeviceGetNvLinkRemotePciInfo_v2.
        info: PciInfoLike = self._call("nvmlDeviceGetNvLinkRemotePciInfo", handle, link)
        return info

    def nvmlDeviceGetNvLinkRemoteDeviceType(self, handle: Any, link: int) -> int:  # noqa: N802
        return int(self._call("nvmlDeviceGetNvLinkRemoteDeviceType", handle, link))

    def nvmlDeviceGetTopologyCommonAncestor(self, first: Any, second: Any) -> int:  # noqa: N802
        return int(self._call("nvmlDeviceGetTopologyCommonAncestor", first, second))


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


_BUS_ID = re.compile(
    r"^(?:(?P<domain>[0-9a-f]{1,8}):)?(?P<bus>[0-9a-f]{1,2}):(?P<device>[0-9a-f]{1,2})\.(?P<function>[0-7])$"
)


def normalize_bus_id(raw: bytes | str) -> str | None:
    """A PCI address in the form sysfs uses (``0000:18:00.0``), or None if it is not one.

    NVML writes an 8-digit domain in upper case (``00000000:18:00.0``).
    """
    text = _text(raw).strip().rstrip("\x00").lower()
    match = _BUS_ID.match(text)
    if match is None:
        return None
    domain = int(match["domain"] or "0", 16)
    bus = int(match["bus"], 16)
    device = int(match["device"], 16)
    return f"{domain:04x}:{bus:02x}:{device:02x}.{match['function']}"


def _read_sysfs(path: Path) -> str:
    return path.read_text(encoding="ascii", errors="replace")


def _run_command(argv: Sequence[str]) -> str:
    done = subprocess.run(
        list(argv), capture_output=True, text=True, check=True, timeout=SMI_TIMEOUT_S
    )
    return done.stdout


# -- NVML ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Device:
    index: int
    handle: Any
    bus_id: str | None = None


def discover_gpus(
    nvml: NvmlLike | None = None,
    *,
    smi: SmiRunner | None = None,
    read_sysfs: SysfsReader | None = None,
) -> NodeTopology | None:
    """The node's GPUs and links: NVML, else ``nvidia-smi``, else None (with log lines)."""
    try:
        return discover_with_nvml(nvml if nvml is not None else PynvmlLibrary(), read_sysfs)
    except NvmlError as exc:
        log.warning("GPU discovery through NVML failed (%s); trying nvidia-smi", _describe(exc))
    except Exception:  # the agent must survive any NVML oddity; say what it was
        log.exception("GPU discovery through NVML failed unexpectedly; trying nvidia-smi")
    topology = discover_with_nvidia_smi(smi if smi is not None else _run_command)
    if topology is None:
        log.warning(
            "no GPU information from NVML or nvidia-smi: the node's inventory has no GPUs and "
            "the scheduler places it from its GFD labels"
        )
    return topology


def _describe(exc: NvmlError) -> str:
    if exc.value == NVML_ERROR_LIBRARY_NOT_FOUND:
        return f"NVML library not found: {exc}"
    if exc.value == NVML_ERROR_DRIVER_NOT_LOADED:
        return f"NVIDIA driver not loaded: {exc}"
    return f"NVML error {exc.value}: {exc}"


def discover_with_nvml(nvml: NvmlLike, read_sysfs: SysfsReader | None = None) -> NodeTopology:
    """The topology as NVML reports it; raises NvmlError when NVML itself is unusable.

    Per-GPU facts that fail (name, UUID, memory, NUMA) are left unknown with a log line; a
    device NVML cannot open, or a count it cannot give, is an error (GPU indices must be
    complete), and the caller falls back to nvidia-smi.
    """
    reader = read_sysfs if read_sysfs is not None else _read_sysfs
    nvml.nvmlInit()
    try:
        count = nvml.nvmlDeviceGetCount()
        devices = [_Device(index, nvml.nvmlDeviceGetHandleByIndex(index)) for index in range(count)]
        for device in devices:
            device.bus_id = _bus_id_of(nvml, device)
        gpus = tuple(_gpu_info(nvml, device, reader) for device in devices)
        links = _links(nvml, devices)
    finally:
        try:
            nvml.nvmlShutdown()
        except NvmlError as exc:
            log.debug("nvmlShutdown: %s", exc)
    topology = NodeTopology(gpus, links)
    log.info(
        "found %d GPU(s) through NVML%s",
        count,
        ", NVSwitch board" if topology.is_nvswitch else "",
    )
    return topology


def _bus_id_of(nvml: NvmlLike, device: _Device) -> str | None:
    pci = _optional(lambda: nvml.nvmlDeviceGetPciInfo(device.handle), f"GPU{device.index} PCI")
    return normalize_bus_id(pci.busId) if pci is not None else None


def _optional(read: Callable[[], _T], what: str) -> _T | None:
    try:
        return read()
    except NvmlError as exc:
        if exc.value not in (NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_FUNCTION_NOT_FOUND):
            log.warning("NVML: cannot read %s: %s", what, _describe(exc))
        return None


def _gpu_info(nvml: NvmlLike, device: _Device, read_sysfs: SysfsReader) -> GpuInfo:
    handle = device.handle
    where = f"GPU{device.index}"
    uuid = _optional(lambda: nvml.nvmlDeviceGetUUID(handle), f"{where} UUID")
    name = _optional(lambda: nvml.nvmlDeviceGetName(handle), f"{where} name")
    memory = _optional(lambda: int(nvml.nvmlDeviceGetMemoryInfo(handle).total), f"{where} memory")
    numa = _optional(lambda: nvml.nvmlDeviceGetNumaNodeId(handle), f"{where} NUMA node")
    if numa is None and device.bus_id is not None:
        numa = _sysfs_numa(device.bus_id, read_sysfs)
    if isinstance(numa, int) and numa < 0:
        numa = None
    if name and lookup_product(name) is None:
        log.info("%s: product %r is not in kvsched's GPU table; reported as is", where, name)
    return GpuInfo(
        index=device.index,
        numa_node=numa,
        uuid=uuid or None,
        product=name or None,
        memory_bytes=memory,
    )


def _sysfs_numa(bus_id: str, read_sysfs: SysfsReader) -> int | None:
    path = SYSFS_PCI_DEVICES / bus_id / "numa_node"
    try:
        value = int(read_sysfs(path).strip())
    except (OSError, ValueError) as exc:
        log.warning("cannot read the NUMA node of GPU %s from %s: %s", bus_id, path, exc)
        return None
    return value if value >= 0 else None


def _links(nvml: NvmlLike, devices: Sequence[_Device]) -> tuple[tuple[Link, ...], ...]:
    count = len(devices)
    by_bus = {d.bus_id: d.index for d in devices if d.bus_id is not None}
    direct = [[0] * count for _ in range(count)]
    switch_links = [0] * count
    for device in devices:
        for remote in _active_link_remotes(nvml, device, by_bus):
            if remote is None:
                switch_links[device.index] += 1
            elif remote != device.index:
                direct[device.index][remote] += 1
    rows: list[list[Link]] = [[SELF_LINK] * count for _ in range(count)]
    for a in range(count):
        for b in range(a + 1, count):
            # Each end counts the same direct links; take the smaller in case one end's
            # query failed for some of them.
            nvlinks = min(direct[a][b], direct[b][a])
            if switch_links[a] and switch_links[b]:
                nvlinks += min(switch_links[a], switch_links[b])
            if nvlinks:
                link = Link(LinkKind.NVLINK, nvlinks)
            else:
                link = _pcie_link(nvml, devices[a], devices[b])
            rows[a][b] = rows[b][a] = link
    return tuple(tuple(row) for row in rows)


def _active_link_remotes(
    nvml: NvmlLike, device: _Device, by_bus: dict[str, int]
) -> list[int | None]:
    """For each active NVLink of a GPU: the local GPU index at its far end, or None for a switch.

    Links to anything else (an IBM NPU, an unreadable remote) are left out.
    """
    remotes: list[int | None] = []
    failed: list[str] = []  # one log line per GPU, not one per link
    for link in range(MAX_NVLINKS):
        try:
            active = nvml.nvmlDeviceGetNvLinkState(device.handle, link)
        except NvmlError as exc:
            if exc.value == NVML_ERROR_INVALID_ARGUMENT:
                break  # past this GPU's last link
            if exc.value in (NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_FUNCTION_NOT_FOUND):
                if link == 0:
                    break  # no NVLink on this GPU
                continue
            failed.append(f"link {link} state: {_describe(exc)}")
            continue
        if not active:
            continue
        try:
            remote_bus = normalize_bus_id(
                nvml.nvmlDeviceGetNvLinkRemotePciInfo(device.handle, link).busId
            )
        except NvmlError as exc:
            failed.append(f"link {link} remote: {_describe(exc)}")
            continue
        if remote_bus is not None and remote_bus in by_bus:
            remotes.append(by_bus[remote_bus])
            continue
        try:
            kind = nvml.nvmlDeviceGetNvLinkRemoteDeviceType(device.handle, link)
        except NvmlError:
            # Older drivers: a remote that is not one of our GPUs is taken as the NVSwitch.
            kind = NVML_NVLINK_DEVICE_TYPE_SWITCH
        if kind == NVML_NVLINK_DEVICE_TYPE_SWITCH:
            remotes.append(None)
        elif kind == NVML_NVLINK_DEVICE_TYPE_GPU:
            failed.append(f"link {link} leads to GPU {remote_bus}, not one of this node's")
    if failed:
        log.warning(
            "NVML: GPU%d: %d NVLink(s) not counted (%s%s)",
            device.index,
            len(failed),
            "; ".join(failed[:2]),
            "; ..." if len(failed) > 2 else "",
        )
    return remotes


def _pcie_link(nvml: NvmlLike, a: _Device, b: _Device) -> Link:
    try:
        level = nvml.nvmlDeviceGetTopologyCommonAncestor(a.handle, b.handle)
    except NvmlError as exc:
        log.warning("NVML: PCIe path GPU%d-GPU%d unknown (%s); assuming SYS", a.index, b.index, exc)
        return Link(LinkKind.SYS)
    kind = _LEVEL_CODES.get(level)
    if kind is None:
        log.warning(
            "NVML: unknown topology level %r for GPU%d-GPU%d; assuming SYS", level, a.index, b.index
        )
        kind = LinkKind.SYS
    return Link(kind)


# -- nvidia-smi ------------------------------------------------------------------------------

TOPO_COMMAND = ("nvidia-smi", "topo", "-m")
QUERY_COMMAND = (
    "nvidia-smi",
    "--query-gpu=index,uuid,name,memory.total",
    "--format=csv,noheader,nounits",
)
_MIB = 1024 * 1024


def discover_with_nvidia_smi(run: SmiRunner) -> NodeTopology | None:
    """``nvidia-smi topo -m`` for links and NUMA, ``--query-gpu`` for UUID, name and memory.

    None (with a log line) when the matrix cannot be had; a failed query only loses the
    per-GPU facts it would have added.
    """
    try:
        topology = parse_nvidia_smi_topo(run(TOPO_COMMAND))
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("`%s` failed: %s", " ".join(TOPO_COMMAND), _command_error(exc))
        return None
    except TopologyError as exc:
        log.warning("cannot read the output of `%s`: %s", " ".join(TOPO_COMMAND), exc)
        return None
    try:
        facts = _parse_query(run(QUERY_COMMAND))
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning(
            "`%s` failed: %s; GPUs reported without UUID, name and memory",
            " ".join(QUERY_COMMAND),
            _command_error(exc),
        )
        facts = {}
    if facts and set(facts) != set(range(topology.gpu_count)):
        log.warning(
            "nvidia-smi lists GPUs %s but its topology matrix has %d; using the matching ones",
            sorted(facts),
            topology.gpu_count,
        )
    gpus = tuple(
        replace(gpu, **facts[gpu.index]) if gpu.index in facts else gpu for gpu in topology.gpus
    )
    log.info("found %d GPU(s) through nvidia-smi", topology.gpu_count)
    return NodeTopology(gpus, topology.links, topology.nics)


def _command_error(exc: BaseException) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        output = exc.stderr or exc.stdout or ""
        text = output.strip() if isinstance(output, str) else repr(output)
        return f"exit status {exc.returncode}: {text[:200]}"
    return str(exc)


def _parse_query(text: str) -> dict[int, dict[str, Any]]:
    facts: dict[int, dict[str, Any]] = {}
    for line in text.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) < 4 or not parts[0].isdigit():
            if line.strip():
                log.warning("nvidia-smi --query-gpu: cannot read line %r", line)
            continue
        entry: dict[str, Any] = {}
        uuid = parts[1]
        name = ",".join(parts[2:-1]).strip()
        memory = parts[-1]
        if uuid and not uuid.startswith("["):  # "[N/A]", "[Unknown Error]"
            entry["uuid"] = uuid
        if name and not name.startswith("["):
            entry["product"] = name
        if memory.isdigit():
            entry["memory_bytes"] = int(memory) * _MIB
        facts[int(parts[0])] = entry
    return facts
