"""GPU discovery: a fake NVML (HGX H100, A100 PCIe with bridges) and the nvidia-smi fallback."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from scheduler import cli
from scheduler.agent import gpus
from scheduler.agent.gpus import (
    NvmlError,
    PynvmlLibrary,
    discover_gpus,
    discover_with_nvidia_smi,
    discover_with_nvml,
    normalize_bus_id,
)
from topology.model import LinkKind
from topology.parse import parse_nvidia_smi_topo

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "topo"
GIB = 1024**3

INVALID_ARGUMENT, NOT_SUPPORTED, NO_PERMISSION = 2, 3, 4
DRIVER_NOT_LOADED, LIBRARY_NOT_FOUND, FUNCTION_NOT_FOUND, GPU_IS_LOST = 9, 12, 13, 15
TYPE_GPU, TYPE_SWITCH = 0, 2


@dataclass
class Pci:
    busId: str  # noqa: N815 (NVML's field name)


@dataclass
class Memory:
    total: int


@dataclass
class FakeLink:
    remote_bus: str
    remote_type: int
    active: int = 1


@dataclass
class FakeGpu:
    uuid: str
    name: str
    memory: int
    bus: str
    numa: int | None  # None: nvmlDeviceGetNumaNodeId not supported
    links: list[FakeLink] = field(default_factory=list)


class FakeNvml:
    """NVML as seen through pynvml, for a described board; ``fail`` injects errors.

    ``fail`` maps a method name to an NvmlError code (or an exception) raised on every call,
    or to a callable ``(args) -> exception | None`` deciding per call.
    """

    def __init__(
        self,
        devices: list[FakeGpu],
        levels: Callable[[int, int], int],
        fail: dict[str, Any] | None = None,
        max_links: int = 18,
    ) -> None:
        self.devices = devices
        self.levels = levels
        self.fail = fail or {}
        self.max_links = max_links
        self.calls: list[str] = []
        self.shutdown = 0

    def _check(self, name: str, *args: Any) -> None:
        self.calls.append(name)
        rule = self.fail.get(name)
        if rule is None:
            return
        if callable(rule) and not isinstance(rule, type):
            error = rule(args)
            if error is not None:
                raise error
            return
        if isinstance(rule, int):
            raise NvmlError(rule)
        raise rule

    def nvmlInit(self) -> None:  # noqa: N802
        self._check("nvmlInit")

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.shutdown += 1
        self._check("nvmlShutdown")

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        self._check("nvmlDeviceGetCount")
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:  # noqa: N802
        self._check("nvmlDeviceGetHandleByIndex", index)
        return ("handle", index)

    def _gpu(self, handle: Any) -> FakeGpu:
        return self.devices[int(handle[1])]

    def nvmlDeviceGetUUID(self, handle: Any) -> str:  # noqa: N802
        self._check("nvmlDeviceGetUUID", handle)
        return self._gpu(handle).uuid

    def nvmlDeviceGetName(self, handle: Any) -> str:  # noqa: N802
        self._check("nvmlDeviceGetName", handle)
        return self._gpu(handle).name

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Memory:  # noqa: N802
        self._check("nvmlDeviceGetMemoryInfo", handle)
        return Memory(self._gpu(handle).memory)

    def nvmlDeviceGetPciInfo(self, handle: Any) -> Pci:  # noqa: N802
        self._check("nvmlDeviceGetPciInfo", handle)
        return Pci(self._gpu(handle).bus)

    def nvmlDeviceGetNumaNodeId(self, handle: Any) -> int:  # noqa: N802
        self._check("nvmlDeviceGetNumaNodeId", handle)
        numa = self._gpu(handle).numa
        if numa is None:
            raise NvmlError(NOT_SUPPORTED)
        return numa

    def _link(self, handle: Any, link: int) -> FakeLink:
        if link >= self.max_links:
            raise NvmlError(INVALID_ARGUMENT)
        links = self._gpu(handle).links
        if not links:
            raise NvmlError(NOT_SUPPORTED)
        if link >= len(links):
            return FakeLink("", TYPE_GPU, active=0)
        return links[link]

    def nvmlDeviceGetNvLinkState(self, handle: Any, link: int) -> int:  # noqa: N802
        self._check("nvmlDeviceGetNvLinkState", handle, link)
        return self._link(handle, link).active

    def nvmlDeviceGetNvLinkRemotePciInfo(self, handle: Any, link: int) -> Pci:  # noqa: N802
        self._check("nvmlDeviceGetNvLinkRemotePciInfo", handle, link)
        return Pci(self._link(handle, link).remote_bus)

    def nvmlDeviceGetNvLinkRemoteDeviceType(self, handle: Any, link: int) -> int:  # noqa: N802
        self._check("nvmlDeviceGetNvLinkRemoteDeviceType", handle, link)
        return self._link(handle, link).remote_type

    def nvmlDeviceGetTopologyCommonAncestor(self, first: Any, second: Any) -> int:  # noqa: N802
        self._check("nvmlDeviceGetTopologyCommonAncestor", first, second)
        return self.levels(first[1], second[1])


# -- boards --------------------------------------------------------------------------------------

H100_BUSES = ["18", "2A", "3A", "5D", "9A", "AB", "BA", "DB"]
SWITCH_BUSES = ["00000000:05:00.0", "00000000:06:00.0", "00000000:07:00.0", "00000000:08:00.0"]


def hgx_h100() -> list[FakeGpu]:
    """8 x H100 SXM on an NVSwitch baseboard: 18 links per GPU, all to the 4 NVSwitches."""
    devices = []
    for index, bus in enumerate(H100_BUSES):
        links = [FakeLink(SWITCH_BUSES[link % 4], TYPE_SWITCH) for link in range(18)]
        devices.append(
            FakeGpu(
                uuid=f"GPU-h100-{index}",
                name="NVIDIA H100 80GB HBM3",
                memory=81559 * 1024 * 1024,
                bus=f"00000000:{bus}:00.0",
                numa=0 if index < 4 else 1,
                links=links,
            )
        )
    return devices


def hgx_levels(a: int, b: int) -> int:
    return 40 if (a < 4) == (b < 4) else 50  # NODE within a socket, SYS across


A100_BUSES = ["17", "31", "4B", "65", "98", "B1", "CA", "E3"]


def a100_pcie_bridged() -> list[FakeGpu]:
    """8 x A100 PCIe, NVLink bridges on pairs (0,1) (2,3) (4,5) (6,7): 12 links each."""
    devices = []
    for index, bus in enumerate(A100_BUSES):
        partner = index ^ 1
        links = [FakeLink(f"00000000:{A100_BUSES[partner]}:00.0", TYPE_GPU) for _ in range(12)]
        devices.append(
            FakeGpu(
                uuid=f"GPU-a100-{index}",
                name="NVIDIA A100 80GB PCIe",
                memory=81920 * 1024 * 1024,
                bus=f"00000000:{bus}:00.0",
                numa=None,  # older driver: NUMA comes from sysfs
                links=links,
            )
        )
    return devices


def a100_levels(a: int, b: int) -> int:
    # As tests/fixtures/topo/a100-pcie-8-nvbridge.txt: NUMA 0 GPUs meet at the CPU (NODE),
    # NUMA 1 GPUs share a PCIe switch tree (PXB), the halves are SYS apart.
    if (a < 4) != (b < 4):
        return 50
    return 40 if a < 4 else 20


def a100_sysfs(path: Path) -> str:
    bus = path.parent.name
    assert path.name == "numa_node" and str(path).startswith("/sys/bus/pci/devices/")
    index = [f"0000:{b.lower()}:00.0" for b in A100_BUSES].index(bus)
    return "0\n" if index < 4 else "1\n"


def no_smi(argv: Sequence[str]) -> str:
    raise FileNotFoundError(2, "No such file or directory", argv[0])


# -- NVML path -----------------------------------------------------------------------------------


def test_hgx_h100_nvswitch_is_all_pairs_nv18() -> None:
    nvml = FakeNvml(hgx_h100(), hgx_levels)
    topo = discover_gpus(nvml, smi=no_smi)
    assert topo is not None
    assert topo.gpu_count == 8
    assert topo.is_nvswitch
    assert {link.code for row in topo.links for link in row} == {"X", "NV18"}
    assert [gpu.numa_node for gpu in topo.gpus] == [0, 0, 0, 0, 1, 1, 1, 1]
    first = topo.gpus[0]
    assert first.uuid == "GPU-h100-0"
    assert first.product == "NVIDIA H100 80GB HBM3"
    assert first.memory_bytes == 81559 * 1024 * 1024
    # NVLink decides every pair, so the PCIe level is never asked for.
    assert "nvmlDeviceGetTopologyCommonAncestor" not in nvml.calls
    assert nvml.shutdown == 1


def test_nvswitch_without_remote_device_type_still_reads_as_switch() -> None:
    # Drivers without nvmlDeviceGetNvLinkRemoteDeviceType: a remote that is no local GPU is
    # taken as the NVSwitch.
    nvml = FakeNvml(
        hgx_h100(), hgx_levels, fail={"nvmlDeviceGetNvLinkRemoteDeviceType": FUNCTION_NOT_FOUND}
    )
    topo = discover_with_nvml(nvml)
    assert topo.is_nvswitch and topo.link(0, 7).code == "NV18"


def test_a100_pcie_bridged_pairs_match_nvidia_smi() -> None:
    read: list[Path] = []

    def sysfs(path: Path) -> str:
        read.append(path)
        return a100_sysfs(path)

    topo = discover_gpus(FakeNvml(a100_pcie_bridged(), a100_levels), smi=no_smi, read_sysfs=sysfs)
    assert topo is not None
    expected = parse_nvidia_smi_topo((FIXTURES / "a100-pcie-8-nvbridge.txt").read_text())
    assert topo.codes() == expected.codes()
    assert topo.layout == expected.layout  # links and NUMA nodes
    assert topo.link(2, 3).code == "NV12"
    assert not topo.is_nvswitch
    assert read[0] == Path("/sys/bus/pci/devices/0000:17:00.0/numa_node")


def test_levels_map_to_codes() -> None:
    levels = {(0, 1): 0, (0, 2): 10, (0, 3): 20, (1, 2): 30, (1, 3): 40, (2, 3): 50}
    devices = [
        FakeGpu(f"GPU-{i}", "NVIDIA L40S", 48 * GIB, f"0000:{i + 1:02x}:00.0", 0) for i in range(4)
    ]
    topo = discover_with_nvml(FakeNvml(devices, lambda a, b: levels[(min(a, b), max(a, b))]))
    assert topo.codes()[0] == ["X", "PIX", "PIX", "PXB"]
    assert topo.codes()[1] == ["PIX", "X", "PHB", "NODE"]
    assert topo.codes()[2][3] == "SYS"


def test_direct_and_switch_links_add_up() -> None:
    # Two GPUs with 2 direct links between them and 4 switch links each: NV6.
    devices = [
        FakeGpu("GPU-0", "x", GIB, "0000:01:00.0", 0),
        FakeGpu("GPU-1", "x", GIB, "0000:02:00.0", 0),
    ]
    devices[0].links = [FakeLink("0000:02:00.0", TYPE_GPU)] * 2 + [
        FakeLink("0000:f0:00.0", TYPE_SWITCH)
    ] * 4
    devices[1].links = [FakeLink("00000000:01:00.0", TYPE_GPU)] * 2 + [
        FakeLink("0000:f0:00.0", TYPE_SWITCH)
    ] * 4
    topo = discover_with_nvml(FakeNvml(devices, lambda a, b: 50))
    assert topo.link(0, 1).code == "NV6"


def test_inactive_links_and_ibm_npu_links_do_not_count() -> None:
    devices = [
        FakeGpu("GPU-0", "x", GIB, "0000:01:00.0", 0),
        FakeGpu("GPU-1", "x", GIB, "0000:02:00.0", 0),
    ]
    devices[0].links = [
        FakeLink("0000:02:00.0", TYPE_GPU),
        FakeLink("0000:02:00.0", TYPE_GPU, active=0),
        FakeLink("0000:77:00.0", 1),  # IBM NPU
    ]
    devices[1].links = [FakeLink("0000:01:00.0", TYPE_GPU), FakeLink("0000:77:00.0", 1)]
    topo = discover_with_nvml(FakeNvml(devices, lambda a, b: 10))
    assert topo.link(0, 1).code == "NV1"


def test_one_sided_link_read_failure_takes_the_smaller_count() -> None:
    def fail_some(args: tuple[Any, ...]) -> Exception | None:
        handle, link = args
        return NvmlError(NO_PERMISSION) if handle[1] == 1 and link >= 10 else None

    nvml = FakeNvml(a100_pcie_bridged(), a100_levels, fail={"nvmlDeviceGetNvLinkState": fail_some})
    topo = discover_with_nvml(nvml, a100_sysfs)
    assert topo.link(0, 1).code == "NV10"
    assert topo.link(2, 3).code == "NV12"


# -- NVML failures -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "error"),
    [
        ("nvmlInit", NvmlError(LIBRARY_NOT_FOUND)),
        ("nvmlInit", NvmlError(DRIVER_NOT_LOADED)),
        ("nvmlDeviceGetCount", NvmlError(GPU_IS_LOST)),
        ("nvmlDeviceGetHandleByIndex", NvmlError(GPU_IS_LOST)),
        ("nvmlDeviceGetHandleByIndex", RuntimeError("unexpected")),
    ],
)
def test_unusable_nvml_falls_back_to_nvidia_smi(
    method: str, error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    nvml = FakeNvml(hgx_h100(), hgx_levels, fail={method: error})
    commands: list[tuple[str, ...]] = []

    def smi(argv: Sequence[str]) -> str:
        commands.append(tuple(argv))
        if argv[1] == "topo":
            return (FIXTURES / "dgx-h100-8.txt").read_text()
        return "\n".join(f"{i}, GPU-smi-{i}, NVIDIA H100 80GB HBM3, 81559" for i in range(8))

    with caplog.at_level(logging.WARNING):
        topo = discover_gpus(nvml, smi=smi)
    assert topo is not None and topo.gpu_count == 8
    assert topo.gpus[3].uuid == "GPU-smi-3"
    assert commands[0] == ("nvidia-smi", "topo", "-m")
    assert "trying nvidia-smi" in caplog.text
    if method != "nvmlInit":
        assert nvml.shutdown == 1  # initialised, so shut down again


def test_missing_driver_and_missing_nvidia_smi_is_none_with_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    nvml = FakeNvml([], hgx_levels, fail={"nvmlInit": LIBRARY_NOT_FOUND})
    with caplog.at_level(logging.WARNING):
        assert discover_gpus(nvml, smi=no_smi) is None
    assert "NVML library not found" in caplog.text
    assert "no GPU information" in caplog.text


@pytest.mark.parametrize(
    ("method", "check"),
    [
        ("nvmlDeviceGetUUID", lambda topo: topo.gpus[0].uuid is None),
        ("nvmlDeviceGetName", lambda topo: topo.gpus[0].product is None),
        ("nvmlDeviceGetMemoryInfo", lambda topo: topo.gpus[0].memory_bytes is None),
        ("nvmlDeviceGetNumaNodeId", lambda topo: topo.gpus[5].numa_node == 1),  # via sysfs
        ("nvmlDeviceGetPciInfo", lambda topo: topo.gpus[0].numa_node == 0),
        (
            "nvmlDeviceGetNvLinkRemotePciInfo",
            lambda topo: topo.link(0, 1).kind is LinkKind.NODE and not topo.is_nvswitch,
        ),
        ("nvmlDeviceGetNvLinkState", lambda topo: topo.link(0, 4).code == "SYS"),
    ],
)
def test_per_gpu_failures_leave_that_fact_unknown(
    method: str, check: Callable[[Any], bool]
) -> None:
    nvml = FakeNvml(hgx_h100(), hgx_levels, fail={method: NO_PERMISSION})
    topo = discover_gpus(nvml, smi=no_smi, read_sysfs=lambda path: "1\n")
    assert topo is not None and topo.gpu_count == 8
    assert check(topo)


def test_pcie_level_failure_or_unknown_level_is_sys(caplog: pytest.LogCaptureFixture) -> None:
    devices = a100_pcie_bridged()
    for device in devices:
        device.links = []
        device.numa = 0
    with caplog.at_level(logging.WARNING):
        failing = discover_with_nvml(
            FakeNvml(devices, a100_levels, fail={"nvmlDeviceGetTopologyCommonAncestor": 999})
        )
        odd = discover_with_nvml(FakeNvml(devices, lambda a, b: 35))
    assert {link.code for row in failing.links for link in row} == {"X", "SYS"}
    assert {link.code for row in odd.links for link in row} == {"X", "SYS"}
    assert "assuming SYS" in caplog.text


def test_numa_minus_one_and_unreadable_sysfs_are_unknown() -> None:
    devices = hgx_h100()[:2]
    devices[0].numa = -1
    devices[1].numa = None

    def sysfs(path: Path) -> str:
        raise PermissionError(13, "Permission denied", str(path))

    topo = discover_with_nvml(FakeNvml(devices, hgx_levels), sysfs)
    assert [gpu.numa_node for gpu in topo.gpus] == [None, None]
    topo = discover_with_nvml(FakeNvml(devices, hgx_levels), lambda path: "-1")
    assert [gpu.numa_node for gpu in topo.gpus] == [None, None]


def test_shutdown_failure_is_not_fatal() -> None:
    nvml = FakeNvml(hgx_h100(), hgx_levels, fail={"nvmlShutdown": 1})
    assert discover_with_nvml(nvml).gpu_count == 8


def test_no_gpus_is_an_empty_topology() -> None:
    topo = discover_gpus(FakeNvml([], hgx_levels), smi=no_smi)
    assert topo is not None and topo.gpu_count == 0


# -- nvidia-smi ----------------------------------------------------------------------------------


def test_nvidia_smi_fills_uuid_name_memory() -> None:
    def smi(argv: Sequence[str]) -> str:
        if argv[1] == "topo":
            return (FIXTURES / "a100-pcie-8-nvbridge.txt").read_text()
        assert list(argv) == list(gpus.QUERY_COMMAND)
        return (
            "0, GPU-aaa, NVIDIA A100 80GB PCIe, 81920\n"
            "1, GPU-bbb, NVIDIA A100 80GB PCIe, [N/A]\n"
            "garbage\n"
        )

    topo = discover_with_nvidia_smi(smi)
    assert topo is not None and topo.gpu_count == 8
    assert topo.gpus[0].uuid == "GPU-aaa"
    assert topo.gpus[0].memory_bytes == 81920 * 1024 * 1024
    assert topo.gpus[1].product == "NVIDIA A100 80GB PCIe" and topo.gpus[1].memory_bytes is None
    assert topo.gpus[2].uuid is None
    assert topo.gpus[5].numa_node == 1
    assert [nic.name for nic in topo.nics] == ["mlx5_0", "mlx5_1"]


def test_nvidia_smi_query_failure_keeps_the_matrix() -> None:
    def smi(argv: Sequence[str]) -> str:
        if argv[1] == "topo":
            return (FIXTURES / "single-gpu.txt").read_text()
        raise subprocess.TimeoutExpired(list(argv), 30)

    topo = discover_with_nvidia_smi(smi)
    assert topo is not None and topo.gpu_count == 1 and topo.gpus[0].uuid is None


@pytest.mark.parametrize(
    "failure",
    [
        subprocess.CalledProcessError(9, ["nvidia-smi"], "", "NVIDIA-SMI has failed"),
        PermissionError(13, "Permission denied"),
        "this is not a topology matrix",
    ],
)
def test_nvidia_smi_failures_are_none(failure: object, caplog: pytest.LogCaptureFixture) -> None:
    def smi(argv: Sequence[str]) -> str:
        if isinstance(failure, str):
            return failure
        assert isinstance(failure, BaseException)
        raise failure

    with caplog.at_level(logging.WARNING):
        assert discover_with_nvidia_smi(smi) is None
    assert "nvidia-smi" in caplog.text


# -- helpers and the real library ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("00000000:18:00.0", "0000:18:00.0"),
        (b"00000000:DB:00.0\x00", "0000:db:00.0"),
        ("0000:3a:00.1", "0000:3a:00.1"),
        ("18:00.0", "0000:18:00.0"),
        ("", None),
        ("not a bus id", None),
    ],
)
def test_normalize_bus_id(raw: bytes | str, expected: str | None) -> None:
    assert normalize_bus_id(raw) == expected


# -- PynvmlLibrary over canned pynvml answers (the NVML path is not verified on a GPU) -----------


class CannedNVMLError(Exception):
    """pynvml.NVMLError: the NVML return code in ``value``."""

    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


def canned_pynvml() -> tuple[types.ModuleType, list[str]]:
    """A ``pynvml`` module answering as nvidia-ml-py does on a 4-GPU PCIe board: GPUs 0 and 1
    joined by an NVLink bridge of 4 links, GPUs 2 and 3 without NVLink (NOT_SUPPORTED); names
    and UUIDs as bytes (older nvidia-ml-py); GPU 3's NUMA node only in sysfs; no
    nvmlDeviceGetNvLinkRemoteDeviceType (an old nvidia-ml-py lacks it)."""
    calls: list[str] = []
    buses = ["00000000:17:00.0", "00000000:31:00.0", "00000000:B1:00.0", "00000000:CA:00.0"]
    levels = {(0, 1): 20, (0, 2): 50, (0, 3): 50, (1, 2): 50, (1, 3): 50, (2, 3): 10}

    def record(name: str) -> None:
        calls.append(name)

    def index(handle: Any) -> int:
        kind, number = handle
        assert kind == "canned-handle"
        return int(number)

    def nvlink_state(handle: Any, link: int) -> int:
        record("nvmlDeviceGetNvLinkState")
        if index(handle) >= 2:
            raise CannedNVMLError(NOT_SUPPORTED)
        if link >= 12:  # A100 PCIe: 12 links, past them INVALID_ARGUMENT
            raise CannedNVMLError(INVALID_ARGUMENT)
        return 1 if link < 4 else 0

    def numa(handle: Any) -> int:
        record("nvmlDeviceGetNumaNodeId")
        if index(handle) == 3:
            raise CannedNVMLError(NOT_SUPPORTED)
        return 0 if index(handle) < 2 else 1

    module = types.ModuleType("pynvml")
    functions: dict[str, Callable[..., Any]] = {
        "nvmlInit": lambda: record("nvmlInit"),
        "nvmlShutdown": lambda: record("nvmlShutdown"),
        "nvmlDeviceGetCount": lambda: 4,
        "nvmlDeviceGetHandleByIndex": lambda i: ("canned-handle", i),
        "nvmlDeviceGetUUID": lambda h: f"GPU-canned-{index(h)}".encode(),
        "nvmlDeviceGetName": lambda h: b"NVIDIA A100 80GB PCIe",
        "nvmlDeviceGetMemoryInfo": lambda h: Memory(81920 * 1024 * 1024),
        "nvmlDeviceGetPciInfo": lambda h: Pci(buses[index(h)]),
        "nvmlDeviceGetNumaNodeId": numa,
        "nvmlDeviceGetNvLinkState": nvlink_state,
        "nvmlDeviceGetNvLinkRemotePciInfo": lambda h, link: Pci(buses[index(h) ^ 1]),
        "nvmlDeviceGetTopologyCommonAncestor": lambda a, b: levels[
            (min(index(a), index(b)), max(index(a), index(b)))
        ],
    }
    for name, function in functions.items():
        setattr(module, name, function)
    module.NVMLError = CannedNVMLError  # type: ignore[attr-defined]
    return module, calls


def test_pynvml_library_over_canned_answers_gives_the_exact_topology(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module, calls = canned_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", module)
    sysfs: list[Path] = []

    def read_sysfs(path: Path) -> str:
        sysfs.append(path)
        return "1\n"

    topo = discover_gpus(PynvmlLibrary(), smi=no_smi, read_sysfs=read_sysfs)
    assert topo is not None
    assert topo.codes() == [
        ["X", "NV4", "SYS", "SYS"],
        ["NV4", "X", "SYS", "SYS"],
        ["SYS", "SYS", "X", "PIX"],
        ["SYS", "SYS", "PIX", "X"],
    ]
    assert [gpu.uuid for gpu in topo.gpus] == [f"GPU-canned-{i}" for i in range(4)]
    assert {gpu.product for gpu in topo.gpus} == {"NVIDIA A100 80GB PCIe"}
    assert {gpu.memory_bytes for gpu in topo.gpus} == {81920 * 1024 * 1024}
    assert [gpu.numa_node for gpu in topo.gpus] == [0, 0, 1, 1]
    assert sysfs == [Path("/sys/bus/pci/devices/0000:ca:00.0/numa_node")]
    assert not topo.is_nvswitch
    assert calls[0] == "nvmlInit" and calls[-1] == "nvmlShutdown"
    # GPUs 0 and 1 walk their 12 links and stop at INVALID_ARGUMENT; 2 and 3 stop at link 0.
    assert calls.count("nvmlDeviceGetNvLinkState") == 2 * 13 + 2


def test_pynvml_library_keeps_nvml_codes_and_names_missing_functions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module, _ = canned_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", module)
    library = PynvmlLibrary()
    with pytest.raises(NvmlError) as raised:
        library.nvmlDeviceGetNvLinkState(("canned-handle", 2), 0)
    assert raised.value.value == NOT_SUPPORTED
    with pytest.raises(NvmlError) as raised:
        library.nvmlDeviceGetNvLinkRemoteDeviceType(("canned-handle", 0), 0)
    assert raised.value.value == FUNCTION_NOT_FOUND
    assert str(raised.value) == "pynvml has no nvmlDeviceGetNvLinkRemoteDeviceType"
    assert library.nvmlDeviceGetUUID(("canned-handle", 1)) == "GPU-canned-1"


def test_pynvml_library_without_nvml_is_library_not_found(monkeypatch: pytest.MonkeyPatch) -> None:
    # nvidia-ml-py not installed (a CPU-only install without the `agent` extra).
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(NvmlError) as raised:
        PynvmlLibrary().nvmlInit()
    assert raised.value.value == LIBRARY_NOT_FOUND
    assert str(raised.value).startswith("nvidia-ml-py is not installed: ")
    monkeypatch.delitem(sys.modules, "pynvml")

    # nvidia-ml-py installed, libnvidia-ml.so.1 not loadable (no driver), whatever this
    # machine has: the real pynvml's own error, with its code and text.
    pynvml = pytest.importorskip("pynvml")

    def no_library(name: str, *args: Any, **kwargs: Any) -> Any:
        raise OSError(f"{name}: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(pynvml, "CDLL", no_library)
    monkeypatch.setattr(pynvml, "nvmlLib", None)
    with pytest.raises(NvmlError) as raised:
        PynvmlLibrary().nvmlInit()
    assert raised.value.value == LIBRARY_NOT_FOUND
    assert str(raised.value) == "NVML Shared Library Not Found"


def test_agent_without_nvml_or_nvidia_smi_exits_0_and_reports_no_gpus(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi either
    assert discover_gpus() is None
    status = cli.main(
        [
            "agent",
            "--node-name",
            "cpu-node",
            "--once",
            "--dry-run",
            "--no-pod-resources",
            "--log-format",
            "text",
        ]
    )
    assert status == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["source"] == "agent"
    assert "gpus" not in report and "links" not in report
    assert report["allocated"] == [] and "allocatedSource" not in report
    assert (
        "GPU discovery through NVML failed (NVML library not found: nvidia-ml-py is not "
        "installed" in captured.err
    )
    assert "`nvidia-smi topo -m` failed: [Errno 2] No such file or directory" in captured.err
    assert (
        "no GPU information from NVML or nvidia-smi: the node's inventory has no GPUs and the "
        "scheduler places it from its GFD labels" in captured.err
    )
