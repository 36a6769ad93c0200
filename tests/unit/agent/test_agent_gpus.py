"""GPU discovery: a fake NVML (HGX H100, A100 PCIe with bridges) and the nvidia-smi fallback."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

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


def test_real_pynvml_without_a_driver_raises_nvml_error() -> None:
    library = PynvmlLibrary()
    try:
        library.nvmlInit()
    except NvmlError as exc:
        assert exc.value in (LIBRARY_NOT_FOUND, DRIVER_NOT_LOADED, 999) or exc.value > 0
        return
    library.nvmlShutdown()
    pytest.skip("an NVIDIA driver is present on this machine")


def test_default_discovery_never_raises() -> None:
    result = discover_gpus(smi=no_smi)
    assert result is None or result.gpu_count >= 0
