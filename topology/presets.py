"""Assumed topologies for common boards, for nodes known only by their GFD labels.

Two shapes cover the boards a GPU pool is built from (DESIGN.md, "node inventory"):

* **NVSwitch** (SXM parts): every pair ``NV<n>``; GPUs split into two NUMA halves (lower
  indices on NUMA node 0), which is what distinguishes GPUs on such a board.
* **PCIe tree** (PCIe cards): GPUs sit in pairs under one PCIe switch (``PIX``), two pairs
  share an upper switch (a "quad", ``PXB``), quads in the same NUMA half meet at the CPU
  (``NODE``) and the two halves talk over the socket interconnect (``SYS``). Cards sold with
  NVLink bridges (A100 PCIe, H100 NVL) are bridged within each pair (``NV12``).

Results are cached: the same inputs return the very same object, so memo keys built from
them collapse to one entry.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from types import MappingProxyType

from topology.hardware import GpuProduct, lookup_product
from topology.model import GpuInfo, Link, LinkKind, NodeTopology

__all__ = [
    "MAX_PRESET_GPUS",
    "PRESETS",
    "nvswitch_topology",
    "pcie_tree_topology",
    "preset_for_product",
]

MAX_PRESET_GPUS = 16
_SELF = Link(LinkKind.SELF)


def _numa_half(position: int, groups: int) -> int:
    """NUMA node 0 for the lower half of ``groups`` (GPUs or pairs), 1 for the upper half."""
    return (2 * position) // groups if groups > 1 else 0


def _gpu_infos(numa_nodes: list[int], product: GpuProduct | None) -> tuple[GpuInfo, ...]:
    return tuple(
        GpuInfo(
            index=index,
            numa_node=numa,
            product=product.name if product is not None else None,
            memory_bytes=product.memory_bytes if product is not None else None,
        )
        for index, numa in enumerate(numa_nodes)
    )


@functools.lru_cache(maxsize=256)
def nvswitch_topology(count: int, nvlinks: int, product: GpuProduct | None = None) -> NodeTopology:
    """``count`` GPUs, all pairs ``NV<nvlinks>``, two NUMA halves."""
    if count < 1:
        raise ValueError(f"a topology needs at least one GPU, got {count}")
    nvlink = Link(LinkKind.NVLINK, nvlinks)
    numa_nodes = [_numa_half(index, count) for index in range(count)]
    links = tuple(tuple(_SELF if a == b else nvlink for b in range(count)) for a in range(count))
    return NodeTopology(_gpu_infos(numa_nodes, product), links)


@functools.lru_cache(maxsize=256)
def pcie_tree_topology(
    count: int, bridge_nvlinks: int = 0, product: GpuProduct | None = None
) -> NodeTopology:
    """``count`` PCIe GPUs: PIX (or ``NV<bridge_nvlinks>``) pairs, PXB quads, NODE, SYS.

    Pairs are split between the two NUMA halves first, and quads never straddle a half, so
    the link codes and the NUMA nodes agree for every count (an odd last GPU has no partner).
    """
    if count < 1:
        raise ValueError(f"a topology needs at least one GPU, got {count}")
    pair_count = (count + 1) // 2
    pair_of = [index // 2 for index in range(count)]
    pair_numa = [_numa_half(pair, pair_count) for pair in range(pair_count)]
    # Quads: consecutive pairs within one NUMA half, two at a time.
    pair_quad: list[tuple[int, int]] = []
    first_pair_in_half: dict[int, int] = {}
    for pair, numa in enumerate(pair_numa):
        first = first_pair_in_half.setdefault(numa, pair)
        pair_quad.append((numa, (pair - first) // 2))
    pair_link = Link(LinkKind.NVLINK, bridge_nvlinks) if bridge_nvlinks > 0 else Link(LinkKind.PIX)

    def link(a: int, b: int) -> Link:
        if a == b:
            return _SELF
        pair_a, pair_b = pair_of[a], pair_of[b]
        if pair_a == pair_b:
            return pair_link
        if pair_quad[pair_a] == pair_quad[pair_b]:
            return Link(LinkKind.PXB)
        if pair_numa[pair_a] == pair_numa[pair_b]:
            return Link(LinkKind.NODE)
        return Link(LinkKind.SYS)

    links = tuple(tuple(link(a, b) for b in range(count)) for a in range(count))
    numa_nodes = [pair_numa[pair_of[index]] for index in range(count)]
    return NodeTopology(_gpu_infos(numa_nodes, product), links)


def preset_for_product(product_label: str, gpu_count: int) -> NodeTopology | None:
    """The assumed topology of a node with ``gpu_count`` GPUs of this product (GFD label,
    NVML name or short name), or None for an unknown product or a count outside 1..16.

    SXM parts get the NVSwitch shape, PCIe parts the PCIe tree (NVLink-bridged pairs where
    the card is sold with bridges). GPUs carry the product's canonical name and memory.
    """
    product = lookup_product(product_label)
    if product is None or not 1 <= gpu_count <= MAX_PRESET_GPUS:
        return None
    return _for_product(product, gpu_count)


def _for_product(product: GpuProduct, gpu_count: int) -> NodeTopology:
    if product.form == "sxm" and product.nvlink:
        return nvswitch_topology(gpu_count, product.nvlinks_per_pair, product)
    bridge = product.nvlinks_per_pair if product.nvlink else 0
    return pcie_tree_topology(gpu_count, bridge, product)


def _preset(label: str, count: int) -> NodeTopology:
    topology = preset_for_product(label, count)
    if topology is None:
        raise AssertionError(f"no preset for {label} x{count}")
    return topology


def _build_presets() -> dict[str, NodeTopology]:
    presets: dict[str, NodeTopology] = {}
    for family, label in (
        ("hgx-h100", "H100-80"),
        ("hgx-h200", "H200-141"),
        ("hgx-b200", "B200"),
        ("hgx-a100", "A100-80"),
    ):
        for count in (8, 4):
            presets[f"{family}-{count}"] = _preset(label, count)
    presets["dgx-a100-8"] = _preset("A100-80", 8)
    presets["dgx-h100-8"] = _preset("H100-80", 8)
    for count in (8, 4, 2):
        presets[f"a100-pcie-{count}-nvbridge"] = _preset("A100-PCIE-80", count)
    for family, label in (("l40s-pcie", "L40S"), ("l4-pcie", "L4")):
        for count in (8, 4, 2, 1):
            presets[f"{family}-{count}"] = _preset(label, count)
    presets["h100-pcie-1"] = _preset("H100-PCIE", 1)
    return presets


PRESETS: Mapping[str, NodeTopology] = MappingProxyType(_build_presets())
