"""parse_nvidia_smi_topo on fixture files in every shape drivers print, and on garbage."""

from __future__ import annotations

from pathlib import Path

import pytest

from topology.model import LinkKind, TopologyError
from topology.parse import parse_nvidia_smi_topo

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "topo"


def _read(name: str) -> str:
    # newline="" keeps Windows line endings as they are in the file.
    with open(FIXTURES / name, encoding="utf-8", newline="") as handle:
        return handle.read()


def test_dgx_h100_with_nics_and_three_value_columns() -> None:
    topo = parse_nvidia_smi_topo(_read("dgx-h100-8.txt"))
    assert topo.gpu_count == 8
    assert topo.is_nvswitch
    assert all(topo.link(a, b).code == "NV18" for a in range(8) for b in range(8) if a != b)
    assert [gpu.numa_node for gpu in topo.gpus] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert topo.gpus[0].cpu_affinity == "0-55,112-167"
    assert topo.gpus[7].cpu_affinity == "56-111,168-223"
    assert len(topo.nics) == 12
    assert topo.nics[0].name == "mlx5_0"  # from the NIC legend
    assert topo.nics[11].name == "mlx5_11"
    assert topo.nics[0].links[0].kind is LinkKind.PIX
    assert topo.nics[0].links[4].kind is LinkKind.SYS
    assert topo.nics[11].links[7].kind is LinkKind.PIX


def test_dgx_a100_older_driver_device_named_nic_columns() -> None:
    topo = parse_nvidia_smi_topo(_read("dgx-a100-8.txt"))
    assert topo.gpu_count == 8
    assert topo.is_nvswitch
    assert topo.link(0, 7).code == "NV12"
    # NPS4 EPYC: NUMA affinity is per GPU pair, not two halves.
    assert [gpu.numa_node for gpu in topo.gpus] == [3, 3, 1, 1, 7, 7, 5, 5]
    assert topo.gpus[2].cpu_affinity == "16-31,144-159"
    assert [nic.name for nic in topo.nics] == [f"mlx5_{k}" for k in range(10)]
    assert topo.nics[8].links[0].code == "PXB"


def test_a100_pcie_bridge_pairs() -> None:
    topo = parse_nvidia_smi_topo(_read("a100-pcie-8-nvbridge.txt"))
    assert topo.gpu_count == 8
    assert not topo.is_nvswitch
    for a, b in [(0, 1), (2, 3), (4, 5), (6, 7)]:
        assert topo.link(a, b).code == "NV12"
    assert topo.link(0, 2).code == "NODE"
    assert topo.link(4, 6).code == "PXB"
    assert topo.link(3, 4).code == "SYS"
    assert [gpu.numa_node for gpu in topo.gpus] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [nic.name for nic in topo.nics] == ["mlx5_0", "mlx5_1"]


def test_l40s_pcie_tree() -> None:
    topo = parse_nvidia_smi_topo(_read("l40s-pcie-8.txt"))
    codes = topo.codes()
    assert codes[0] == ["X", "PIX", "PXB", "PXB", "SYS", "SYS", "SYS", "SYS"]
    assert codes[4] == ["SYS", "SYS", "SYS", "SYS", "X", "PIX", "NODE", "NODE"]
    assert {code for row in codes for code in row} == {"X", "PIX", "PXB", "NODE", "SYS"}
    assert [gpu.numa_node for gpu in topo.gpus] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_two_gpus_aligned_with_spaces_and_crlf() -> None:
    text = _read("two-gpu-spaces.txt")
    assert "\r\n" in text and "\t" not in text
    topo = parse_nvidia_smi_topo(text)
    assert topo.codes() == [["X", "PHB"], ["PHB", "X"]]
    assert [gpu.numa_node for gpu in topo.gpus] == [0, 0]
    assert topo.gpus[1].cpu_affinity == "0-31"
    assert topo.nics == ()


def test_single_gpu_with_nic_and_unknown_numa() -> None:
    topo = parse_nvidia_smi_topo(_read("single-gpu.txt"))
    assert topo.gpu_count == 1
    assert topo.codes() == [["X"]]
    assert topo.gpus[0].numa_node is None
    assert topo.gpus[0].cpu_affinity == "0-7"
    assert [nic.name for nic in topo.nics] == ["mlx5_0"]
    assert topo.nics[0].links[0].code == "PHB"


@pytest.mark.parametrize("name", sorted(path.name for path in FIXTURES.glob("*.txt")))
def test_every_fixture_parses_to_a_valid_square_symmetric_matrix(name: str) -> None:
    topo = parse_nvidia_smi_topo(_read(name))
    codes = topo.codes()
    assert len(codes) == topo.gpu_count
    assert all(codes[i][i] == "X" for i in range(topo.gpu_count))
    assert all(codes[a][b] == codes[b][a] for a in range(len(codes)) for b in range(len(codes)))


def test_leading_text_and_trailing_blanks_are_ignored() -> None:
    text = (
        "NVIDIA Topology: \n"
        "        GPU0    GPU1    CPU Affinity    NUMA Affinity   \n"
        "GPU0     X      NV4     0-15    0   \n"
        "GPU1    NV4      X      0-15    0   \n"
    )
    topo = parse_nvidia_smi_topo(text)
    assert topo.codes() == [["X", "NV4"], ["NV4", "X"]]


def test_header_without_value_columns_and_old_soc_code() -> None:
    text = "\tGPU0\tGPU1\nGPU0\t X \tSOC\nGPU1\tSOC\t X \n"
    topo = parse_nvidia_smi_topo(text)
    assert topo.link(0, 1).kind is LinkKind.SYS
    assert topo.gpus[0].numa_node is None
    assert topo.gpus[0].cpu_affinity is None


def test_gpu_numa_id_is_used_when_numa_affinity_is_na() -> None:
    text = (
        "\tGPU0\tGPU1\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\n"
        "GPU0\t X \tNV18\t0-71\tN/A\t\t2\n"
        "GPU1\tNV18\t X \t0-71\t0\t\t3\n"
    )
    topo = parse_nvidia_smi_topo(text)
    assert [gpu.numa_node for gpu in topo.gpus] == [2, 0]


def test_blank_cpu_affinity_aligns_values_to_the_right() -> None:
    # Grace-based trays print no CPU list for GPUs on a CPU-less NUMA node.
    text = (
        "\t\x1b[4mGPU0\tGPU1\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\x1b[0m\n"
        "GPU0\t X \tNV18\t0-71\t0\t\tN/A\n"
        "GPU1\tNV18\t X \t\t1\t\tN/A\n"
    )
    topo = parse_nvidia_smi_topo(text)
    assert [gpu.numa_node for gpu in topo.gpus] == [0, 1]
    assert [gpu.cpu_affinity for gpu in topo.gpus] == ["0-71", None]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no GPU header"),
        ("No devices were found\n", "no GPU header"),
        ("GPU0\t X \tNV12\nGPU1\tNV12\t X \n", "no GPU header"),
        ("\tGPU0\tGPU1\nGPU0\t X \nGPU1\tPIX\t X \n", "ragged"),
        ("\tGPU0\tGPU1\nGPU0\t X \tFOO\nGPU1\tFOO\t X \n", "unknown link code 'FOO'"),
        ("\tGPU0\tGPU1\nGPU0\t X \tPIX\n", "missing rows for GPU1"),
        ("\tGPU0\tGPU1\nGPU0\t X \tPIX\nGPU0\t X \tPIX\n", "duplicate row"),
        ("\tGPU0\tGPU1\nGPU0\t X \tPIX\nGPU1\tPIX\t X \nCPU0\tPIX\tPIX\n", "unexpected row"),
        ("\tGPU0\tGPU1\nGPU0\t X \tPIX\nGPU1\tPIX\t X \nGPU2\tPIX\tPIX\n", "only 2 GPU"),
        ("\tGPU0\tGPU2\nGPU0\t X \tPIX\n", "in order"),
        ("\tGPU0\tCPU Affinity\nGPU0\t X \t0-3\t0\n", "values after the device columns"),
        ("\tGPU0\tGPU1\nGPU0\t X \tSYS\nGPU1\tPIX\t X \n", "not symmetric"),
    ],
)
def test_garbage_raises_a_helpful_topology_error(text: str, message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        parse_nvidia_smi_topo(text)
