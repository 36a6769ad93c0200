"""GPU product lookup and the assumed topologies built from it."""

from __future__ import annotations

import pytest

from topology.hardware import COMMON_GPUS, PRODUCTS, GpuProduct, lookup_product
from topology.model import LinkKind, NodeTopology
from topology.presets import PRESETS, preset_for_product


@pytest.mark.parametrize(
    ("label", "name"),
    [
        # GPU Feature Discovery nvidia.com/gpu.product labels
        ("NVIDIA-H100-80GB-HBM3", "H100-SXM-80GB"),
        ("NVIDIA-A100-SXM4-80GB", "A100-SXM-80GB"),
        ("NVIDIA-A100-SXM4-40GB", "A100-SXM-40GB"),
        ("NVIDIA-A100-PCIE-40GB", "A100-PCIe-40GB"),
        ("NVIDIA-A100-80GB-PCIe", "A100-PCIe-80GB"),
        ("NVIDIA-L40S", "L40S-48GB"),
        ("NVIDIA-L40", "L40-48GB"),
        ("NVIDIA-L4", "L4-24GB"),
        ("NVIDIA-A10G", "A10G-24GB"),
        ("NVIDIA-H200", "H200-SXM-141GB"),
        ("NVIDIA-H20", "H20-96GB"),
        ("NVIDIA-B200", "B200-180GB"),
        ("NVIDIA-GB200", "GB200-186GB"),
        ("NVIDIA-H100-PCIe", "H100-PCIe-80GB"),
        ("NVIDIA-H100-NVL", "H100-NVL-94GB"),
        ("NVIDIA-RTX-6000-Ada-Generation", "RTX-6000-Ada-48GB"),
        ("Tesla-T4", "T4-16GB"),
        # suffixes from time-slicing and the mixed MIG strategy
        ("NVIDIA-A100-SXM4-40GB-SHARED", "A100-SXM-40GB"),
        ("NVIDIA-A100-SXM4-40GB-MIG-1g.5gb", "A100-SXM-40GB"),
        ("NVIDIA-H100-80GB-HBM3-MIG-3g.40gb-SHARED", "H100-SXM-80GB"),
        # NVML / nvidia-smi names
        ("NVIDIA H100 80GB HBM3", "H100-SXM-80GB"),
        ("NVIDIA A100-SXM4-80GB", "A100-SXM-80GB"),
        ("NVIDIA A100 80GB PCIe", "A100-PCIe-80GB"),
        ("NVIDIA H200", "H200-SXM-141GB"),
        ("NVIDIA L40S", "L40S-48GB"),
        ("Tesla T4", "T4-16GB"),
        # short names
        ("H100-80", "H100-SXM-80GB"),
        ("h100", "H100-SXM-80GB"),
        ("A100-40", "A100-SXM-40GB"),
        ("a100-80", "A100-SXM-80GB"),
        ("H200-141", "H200-SXM-141GB"),
        ("L40S-48", "L40S-48GB"),
        ("b200", "B200-180GB"),
        ("B200-SXM-180GB", "B200-180GB"),
        ("H100-SXM-80GB", "H100-SXM-80GB"),
    ],
)
def test_lookup_product_resolves_labels_and_names(label: str, name: str) -> None:
    product = lookup_product(label)
    assert product is not None, label
    assert product.name == name


@pytest.mark.parametrize("label", ["", "NVIDIA", "NVIDIA-Z9000", "H300", "A100-99"])
def test_unknown_products_are_none(label: str) -> None:
    assert lookup_product(label) is None


def test_every_product_resolves_from_its_own_names() -> None:
    for product in PRODUCTS:
        for name in (product.name, *product.aliases):
            assert lookup_product(name) is product


def test_product_facts() -> None:
    h100 = lookup_product("H100-80")
    assert h100 is not None
    assert h100.form == "sxm" and h100.nvlink and h100.nvlinks_per_pair == 18
    assert h100.memory_mib == 81559
    assert h100.short_name == "H100-80"
    l40s = lookup_product("L40S")
    assert l40s is not None and l40s.form == "pcie" and not l40s.nvlink
    a100_pcie = lookup_product("NVIDIA-A100-PCIE-40GB")
    assert a100_pcie is not None and a100_pcie.nvlink and a100_pcie.form == "pcie"


def test_common_gpus_in_order() -> None:
    assert [gpu.short_name for gpu in COMMON_GPUS] == [
        "A100-40",
        "A100-80",
        "H100-80",
        "H200-141",
        "L40S-48",
        "B200-180",
    ]
    memories = [gpu.memory_bytes for gpu in COMMON_GPUS]
    assert memories[0] < memories[1] < memories[3] < memories[5]


def test_required_presets_exist() -> None:
    for name in [
        "hgx-h100-8",
        "hgx-h200-8",
        "hgx-b200-8",
        "dgx-a100-8",
        "a100-pcie-8-nvbridge",
        "l40s-pcie-8",
        "l4-pcie-8",
        "l40s-pcie-4",
        "l40s-pcie-2",
        "l40s-pcie-1",
    ]:
        assert isinstance(PRESETS[name], NodeTopology)


@pytest.mark.parametrize(("name", "code"), [("hgx-h100-8", "NV18"), ("dgx-a100-8", "NV12")])
def test_nvswitch_presets(name: str, code: str) -> None:
    topo = PRESETS[name]
    assert topo.is_nvswitch
    assert topo.link(0, 7).code == code
    assert [gpu.numa_node for gpu in topo.gpus] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_bridge_pair_preset() -> None:
    codes = PRESETS["a100-pcie-8-nvbridge"].codes()
    assert codes[0] == ["X", "NV12", "PXB", "PXB", "SYS", "SYS", "SYS", "SYS"]
    assert codes[6] == ["SYS", "SYS", "SYS", "SYS", "PXB", "PXB", "X", "NV12"]


def test_pcie_preset_and_sixteen_gpu_generation() -> None:
    assert PRESETS["l40s-pcie-8"].codes()[0] == [
        "X", "PIX", "PXB", "PXB", "SYS", "SYS", "SYS", "SYS",
    ]  # fmt: skip
    big = preset_for_product("L40S", 16)
    assert big is not None
    assert big.link(0, 4).code == "NODE"  # two quads in one NUMA half
    assert big.link(0, 8).code == "SYS"


def test_preset_for_product_is_cached_and_filled_from_hardware() -> None:
    first = preset_for_product("NVIDIA-H100-80GB-HBM3", 8)
    assert first is not None
    assert first is preset_for_product("NVIDIA-H100-80GB-HBM3", 8)
    assert first is preset_for_product("H100-80", 8)  # same product, same object
    assert first is PRESETS["hgx-h100-8"]
    assert first.gpus[3].product == "H100-SXM-80GB"
    assert first.gpus[3].memory_bytes == 81559 * 1024 * 1024


@pytest.mark.parametrize(("label", "count"), [("NVIDIA-Z9000", 8), ("H100", 0), ("H100", 17)])
def test_preset_for_product_none(label: str, count: int) -> None:
    assert preset_for_product(label, count) is None


@pytest.mark.parametrize("product", PRODUCTS, ids=lambda product: product.name)
def test_generated_presets_are_consistent_for_every_count(product: GpuProduct) -> None:
    for count in range(1, 17):
        topo = preset_for_product(product.name, count)
        assert topo is not None and topo.gpu_count == count
        numa = [gpu.numa_node for gpu in topo.gpus]
        assert set(numa) <= {0, 1}
        for a in range(count):
            for b in range(a + 1, count):
                link = topo.link(a, b)
                # Links and NUMA nodes agree: only SYS crosses NUMA halves.
                assert (link.kind is LinkKind.SYS) == (numa[a] != numa[b]) or link.is_nvlink
