"""GPU products a scheduler meets, and how to recognise them from the names in the wild.

Names come from three places, all resolved by :func:`lookup_product`:

* NVIDIA GPU Feature Discovery node labels, ``nvidia.com/gpu.product``: the NVML name with
  blanks turned into dashes (``NVIDIA-H100-80GB-HBM3``, ``NVIDIA-A100-SXM4-40GB``,
  ``Tesla-T4``), plus ``-SHARED`` under time-slicing and ``-MIG-<profile>`` under the mixed
  MIG strategy;
* NVML / nvidia-smi product names (``NVIDIA H100 80GB HBM3``, ``NVIDIA A100 80GB PCIe``);
* the short names people type (``H100-80``, ``A100-40``, ``L40S``).

Matching is on the set of significant words, so word order, case and separators don't matter
and vendor words (``NVIDIA``, ``Tesla``) and memory-type words (``HBM3``) are ignored.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["COMMON_GPUS", "PRODUCTS", "GpuProduct", "lookup_product"]

_MIB = 1024 * 1024


@dataclass(frozen=True)
class GpuProduct:
    """One GPU model.

    ``memory_bytes`` is the total memory the driver reports (nvidia-smi "MiB" total, which is
    also what GFD puts in ``nvidia.com/gpu.memory``), not the marketing figure: that is what an
    engine can actually allocate from. ``nvlink`` says whether the usual board connects GPUs
    by NVLink: NVSwitch/all-to-all for SXM parts, bridged pairs for PCIe cards usually sold with
    bridges. ``nvlinks_per_pair`` is the NV# nvidia-smi shows between linked GPUs.
    ``aliases`` are extra names it is known by; the first one is its short name.
    """

    name: str
    memory_bytes: int
    form: Literal["sxm", "pcie"]
    nvlink: bool
    aliases: tuple[str, ...] = ()
    nvlinks_per_pair: int = 0

    @property
    def short_name(self) -> str:
        """A compact name such as ``H100-80``, for tables and messages."""
        return self.aliases[0] if self.aliases else self.name

    @property
    def memory_mib(self) -> int:
        return self.memory_bytes // _MIB


def _product(
    name: str,
    memory_mib: int,
    form: Literal["sxm", "pcie"],
    aliases: tuple[str, ...],
    nvlinks_per_pair: int = 0,
) -> GpuProduct:
    return GpuProduct(
        name=name,
        memory_bytes=memory_mib * _MIB,
        form=form,
        nvlink=nvlinks_per_pair > 0,
        aliases=aliases,
        nvlinks_per_pair=nvlinks_per_pair,
    )


# Memory totals are the per-GPU totals drivers report for each part. Where a family has one
# dominant variant, the bare family name (e.g. "H100", "A100") resolves to it.
PRODUCTS: tuple[GpuProduct, ...] = (
    _product("A100-SXM-40GB", 40960, "sxm", ("A100-40", "A100-SXM4-40GB", "A100-SXM-40"), 12),
    _product(
        "A100-SXM-80GB", 81920, "sxm", ("A100-80", "A100-SXM4-80GB", "A100-SXM-80", "A100"), 12
    ),
    # PCIe A100s are assumed to carry NVLink bridges in pairs (see DESIGN.md).
    _product("A100-PCIe-40GB", 40960, "pcie", ("A100-PCIE-40", "A100-40GB-PCIE"), 12),
    _product("A100-PCIe-80GB", 81920, "pcie", ("A100-PCIE-80", "A100-80GB-PCIE", "A100-PCIE"), 12),
    _product(
        "H100-SXM-80GB",
        81559,
        "sxm",
        ("H100-80", "H100-80GB-HBM3", "H100-SXM5-80GB", "H100-SXM", "H100"),
        18,
    ),
    _product("H100-PCIe-80GB", 81559, "pcie", ("H100-PCIE", "H100-PCIE-80", "H100-80GB-PCIE")),
    # H100 NVL cards ship as bridged pairs.
    _product("H100-NVL-94GB", 95830, "pcie", ("H100-NVL", "H100-NVL-94", "H100-NVL-96"), 12),
    _product(
        "H200-SXM-141GB",
        143771,
        "sxm",
        ("H200-141", "H200", "H200-SXM", "H200-141GB-HBM3E", "H200-SXM-141"),
        18,
    ),
    _product("H20-96GB", 97871, "sxm", ("H20-96", "H20", "H20-96GB-HBM3"), 18),
    _product("B200-180GB", 183359, "sxm", ("B200-180", "B200", "B200-SXM", "B200-192"), 18),
    _product("GB200-186GB", 189471, "sxm", ("GB200-186", "GB200", "GB200-192"), 18),
    _product("L40S-48GB", 46068, "pcie", ("L40S-48", "L40S")),
    _product("L40-48GB", 46068, "pcie", ("L40-48", "L40")),
    _product("L4-24GB", 23034, "pcie", ("L4-24", "L4")),
    _product("A10G-24GB", 23028, "pcie", ("A10G-24", "A10G")),
    _product(
        "RTX-6000-Ada-48GB",
        49140,
        "pcie",
        ("RTX6000-ADA", "RTX-6000-ADA", "RTX-6000-ADA-GENERATION", "RTX-6000-ADA-48"),
    ),
    _product("T4-16GB", 15360, "pcie", ("T4-16", "T4")),
)

_PRODUCTS_BY_NAME = {product.name: product for product in PRODUCTS}

# What `kvsched plan` lists when it says where a model fits, smallest to largest.
COMMON_GPUS: tuple[GpuProduct, ...] = tuple(
    _PRODUCTS_BY_NAME[name]
    for name in (
        "A100-SXM-40GB",
        "A100-SXM-80GB",
        "H100-SXM-80GB",
        "H200-SXM-141GB",
        "L40S-48GB",
        "B200-180GB",
    )
)

# Words that carry no identity: vendor and brand words, memory types, "Generation".
_NOISE_WORDS = frozenset(
    {"NVIDIA", "TESLA", "HBM2", "HBM2E", "HBM3", "HBM3E", "GDDR6", "GENERATION", "SHARED"}
)
_FORM_WORDS = {"SXM2": "SXM", "SXM4": "SXM", "SXM5": "SXM", "SXM6": "SXM"}
_MEMORY_WORD = re.compile(r"^(\d+)(?:GB|G|GIB)$")
# GFD's mixed MIG strategy appends "-MIG-<profile>", e.g. "-MIG-1g.10gb"; nvidia-smi prints
# "MIG 1g.10gb Device". Everything from there on describes the slice, not the product.
_MIG_SUFFIX = re.compile(r"[-_\s]MIG([-_\s].*)?$", re.IGNORECASE)
_SEPARATORS = re.compile(r"[^A-Z0-9.]+")


def _signature(label: str) -> frozenset[str]:
    """The significant words of a product name, normalised: ``{"H100", "80"}``."""
    text = _MIG_SUFFIX.sub("", label.strip()).upper()
    words: set[str] = set()
    for word in _SEPARATORS.split(text):
        if not word or word in _NOISE_WORDS:
            continue
        memory = _MEMORY_WORD.match(word)
        if memory is not None:
            word = memory[1]
        words.add(_FORM_WORDS.get(word, word))
    return frozenset(words)


def _build_index() -> dict[frozenset[str], GpuProduct]:
    index: dict[frozenset[str], GpuProduct] = {}
    for product in PRODUCTS:
        for name in (product.name, *product.aliases):
            signature = _signature(name)
            owner = index.setdefault(signature, product)
            if owner is not product:
                raise AssertionError(f"{name!r} names both {owner.name} and {product.name}")
    return index


_INDEX = _build_index()


@functools.lru_cache(maxsize=1024)
def lookup_product(label: str) -> GpuProduct | None:
    """The product a GFD label, NVML name or short name refers to, or None if unknown.

    ``-SHARED`` and ``-MIG-...`` suffixes are ignored: the result is the physical GPU (its
    whole memory), not a slice of it.
    """
    signature = _signature(label)
    if not signature:
        return None
    found = _INDEX.get(signature)
    if found is not None:
        return found
    # NVML spells some SXM parts without a form word ("NVIDIA H100 80GB HBM3") and some
    # labels add it ("H200-SXM-141GB"); try the name without it before giving up.
    without_form = signature - {"SXM"}
    if without_form != signature:
        return _INDEX.get(without_form)
    return None
