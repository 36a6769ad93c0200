"""GPU topology of one node: link graph, nvidia-smi parsing, presets and k-GPU set choice.

Depends on the standard library and networkx only.
"""

from topology.hardware import COMMON_GPUS, GpuProduct, lookup_product
from topology.model import GpuInfo, Link, LinkKind, NicInfo, NodeTopology, TopologyError
from topology.parse import parse_nvidia_smi_topo
from topology.presets import PRESETS, preset_for_product
from topology.select import (
    GpuSetScore,
    SetTier,
    best_gpu_set,
    fragmentation,
    max_set_size_at_tier,
    score_gpu_set,
)

__all__ = [
    "COMMON_GPUS",
    "PRESETS",
    "GpuInfo",
    "GpuProduct",
    "GpuSetScore",
    "Link",
    "LinkKind",
    "NicInfo",
    "NodeTopology",
    "SetTier",
    "TopologyError",
    "best_gpu_set",
    "fragmentation",
    "lookup_product",
    "max_set_size_at_tier",
    "parse_nvidia_smi_topo",
    "preset_for_product",
    "score_gpu_set",
]
