"""The GPU topology of one node: links between GPU pairs, GPU facts and NIC affinity.

Everything here is immutable and hashable, because the placement core memoises its work on
topologies: thousands of nodes share a handful of distinct topologies, and a memo key must be
cheap to hash. ``NodeTopology`` computes its hash once, at construction.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import networkx as nx

__all__ = [
    "GpuInfo",
    "Link",
    "LinkKind",
    "NicInfo",
    "NodeTopology",
    "TopologyError",
]


class TopologyError(ValueError):
    """A topology that cannot be right: bad link code, non-square or asymmetric matrix, ...

    Subclasses ``ValueError`` so callers that only care about "bad input" can catch that.
    """


class LinkKind(enum.Enum):
    """How two devices are connected, in the words of ``nvidia-smi topo -m``."""

    SELF = "X"
    NVLINK = "NV"
    PIX = "PIX"  # at most one PCIe bridge (same PCIe switch)
    PXB = "PXB"  # several PCIe bridges, no host bridge
    PHB = "PHB"  # through a PCIe host bridge (the CPU)
    NODE = "NODE"  # between host bridges within one NUMA node
    SYS = "SYS"  # across the SMP interconnect between NUMA nodes (QPI/UPI/xGMI)


# Ranks of the PCIe/system kinds. NVLink ranks start above all of them so that any NVLink,
# even a single link, beats the best PCIe path; more bonded links rank higher still.
_PCIE_RANKS: dict[LinkKind, int] = {
    LinkKind.SYS: 1,
    LinkKind.NODE: 2,
    LinkKind.PHB: 3,
    LinkKind.PXB: 4,
    LinkKind.PIX: 5,
}
NVLINK_RANK_BASE = 10
# "X" is not a connection; it ranks above every real link so a min() over pairs never picks it.
SELF_RANK = 1_000_000

_CODE_PATTERN = re.compile(r"^\s*(?:NV(?P<nvlinks>\d+)|(?P<word>X|PIX|PXB|PHB|NODE|SYS|SOC))\s*$")


@dataclass(frozen=True, slots=True)
class Link:
    """One pair's connection: ``Link(LinkKind.NVLINK, 18)`` is what nvidia-smi prints as NV18."""

    kind: LinkKind
    nvlinks: int = 0

    def __post_init__(self) -> None:
        if self.kind is LinkKind.NVLINK:
            if self.nvlinks < 1:
                raise TopologyError(
                    f"an NVLink connection needs at least 1 link, got {self.nvlinks}"
                )
        elif self.nvlinks != 0:
            raise TopologyError(f"{self.kind.value} is not NVLink, so nvlinks must be 0")

    @property
    def code(self) -> str:
        """The text nvidia-smi prints for this link: ``NV18``, ``PIX``, ``X``..."""
        if self.kind is LinkKind.NVLINK:
            return f"NV{self.nvlinks}"
        return str(self.kind.value)

    @property
    def rank(self) -> int:
        """Higher is better: NV(more) > NV(fewer) > PIX > PXB > PHB > NODE > SYS."""
        if self.kind is LinkKind.NVLINK:
            return NVLINK_RANK_BASE + self.nvlinks
        if self.kind is LinkKind.SELF:
            return SELF_RANK
        return _PCIE_RANKS[self.kind]

    @property
    def is_nvlink(self) -> bool:
        return self.kind is LinkKind.NVLINK

    @staticmethod
    def parse(code: str) -> Link:
        """Read a link code as nvidia-smi prints it (case-insensitive, surrounding blanks ok).

        ``SOC`` is the name older drivers used for ``SYS``.
        """
        return _parse_link(code.upper())

    def __str__(self) -> str:
        return self.code


@functools.lru_cache(maxsize=256)
def _parse_link(code: str) -> Link:
    # Cached: a topology of n GPUs parses n^2 codes drawn from a handful of values, and the
    # cache hands back one shared Link object per code.
    match = _CODE_PATTERN.match(code)
    if match is None:
        raise TopologyError(
            f"unknown link code {code.strip()!r}: expected X, NV<n>, PIX, PXB, PHB, NODE or SYS"
        )
    if match["nvlinks"] is not None:
        return Link(LinkKind.NVLINK, int(match["nvlinks"]))
    word = match["word"]
    if word == "SOC":
        return Link(LinkKind.SYS)
    return Link(LinkKind(word))


SELF_LINK = Link(LinkKind.SELF)


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """What is known about one GPU; only ``index`` is required."""

    index: int
    numa_node: int | None = None
    uuid: str | None = None
    product: str | None = None
    memory_bytes: int | None = None
    cpu_affinity: str | None = None


@dataclass(frozen=True, slots=True)
class NicInfo:
    """A network device from the topology matrix and its link to each GPU (in GPU order)."""

    name: str
    links: tuple[Link, ...]


@dataclass(frozen=True)
class NodeTopology:
    """GPUs of one node and the link between every pair, in GPU index order.

    Invariants (checked at construction, ``TopologyError`` otherwise): ``gpus[i].index == i``,
    ``links`` is an n x n matrix with ``X`` exactly on the diagonal and is symmetric, and every
    NIC has one link per GPU. A topology with no GPUs is allowed (it offers nothing).

    Equality compares everything, GPU UUIDs included. Code that wants nodes of the same shape
    to share work (the placement memo) should key on :attr:`layout` instead.
    """

    gpus: tuple[GpuInfo, ...]
    links: tuple[tuple[Link, ...], ...]
    nics: tuple[NicInfo, ...] = ()
    # Computed once in __post_init__; this object is a memo key on hot paths.
    _hash: int = field(init=False, repr=False, compare=False, default=0)
    # The layout (see below), built on first use. Never this object itself, so that
    # dataclasses.asdict() and friends do not loop; a bare topology is its own layout.
    _layout: NodeTopology | None = field(init=False, repr=False, compare=False, default=None)
    _bare: bool = field(init=False, repr=False, compare=False, default=False)

    def __post_init__(self) -> None:
        # Accept lists from callers but store tuples, so the object is truly immutable.
        object.__setattr__(self, "gpus", tuple(self.gpus))
        object.__setattr__(self, "links", tuple(tuple(row) for row in self.links))
        object.__setattr__(self, "nics", tuple(self.nics))
        self._validate()
        object.__setattr__(self, "_hash", hash((self.gpus, self.links, self.nics)))
        bare = not self.nics and all(
            gpu == GpuInfo(gpu.index, numa_node=gpu.numa_node) for gpu in self.gpus
        )
        object.__setattr__(self, "_bare", bare)

    def _validate(self) -> None:
        count = len(self.gpus)
        for position, gpu in enumerate(self.gpus):
            if gpu.index != position:
                raise TopologyError(
                    f"GPU at position {position} has index {gpu.index}: "
                    f"GPUs must be listed in index order 0..{count - 1}"
                )
        if len(self.links) != count:
            raise TopologyError(f"link matrix has {len(self.links)} rows for {count} GPUs")
        for a, row in enumerate(self.links):
            if len(row) != count:
                raise TopologyError(f"link matrix row {a} has {len(row)} entries, expected {count}")
            for b, link in enumerate(row):
                if not isinstance(link, Link):
                    raise TopologyError(f"link ({a}, {b}) is {link!r}, not a Link")
                if (a == b) != (link.kind is LinkKind.SELF):
                    where = "on the diagonal" if a == b else "off the diagonal"
                    raise TopologyError(f"link ({a}, {b}) is {link.code} {where}")
        for a in range(count):
            for b in range(a + 1, count):
                if self.links[a][b] != self.links[b][a]:
                    raise TopologyError(
                        f"link matrix is not symmetric: GPU{a}->GPU{b} is "
                        f"{self.links[a][b].code} but GPU{b}->GPU{a} is {self.links[b][a].code}"
                    )
        for nic in self.nics:
            if len(nic.links) != count:
                raise TopologyError(
                    f"NIC {nic.name} has {len(nic.links)} GPU links, expected {count}"
                )

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, NodeTopology):
            return NotImplemented
        # The cached hashes settle most inequalities without walking the matrices.
        return (
            self._hash == other._hash
            and self.links == other.links
            and self.gpus == other.gpus
            and self.nics == other.nics
        )

    # -- queries -------------------------------------------------------------------------

    @property
    def gpu_count(self) -> int:
        return len(self.gpus)

    def link(self, a: int, b: int) -> Link:
        """The link between GPU ``a`` and GPU ``b`` (``X`` when they are the same GPU)."""
        self._check_index(a)
        self._check_index(b)
        return self.links[a][b]

    def numa_of(self, index: int) -> int | None:
        self._check_index(index)
        return self.gpus[index].numa_node

    @property
    def is_nvswitch(self) -> bool:
        """True when every pair is NVLink with the same link count.

        That is an NVSwitch baseboard (HGX/DGX), where only NUMA and NIC affinity tell GPUs
        apart; a direct all-to-all mesh or a single bridged pair behaves the same for
        placement and is reported the same way. False for fewer than two GPUs.
        """
        if self.gpu_count < 2:
            return False
        first = self.links[0][1]
        if not first.is_nvlink:
            return False
        return all(
            self.links[a][b] == first
            for a in range(self.gpu_count)
            for b in range(self.gpu_count)
            if a != b
        )

    @property
    def layout(self) -> NodeTopology:
        """This topology reduced to what placement depends on: links and NUMA nodes.

        UUIDs, products, memory, CPU affinity and NICs are dropped, so two nodes built the
        same way get equal layouts (and equal hashes) and can share memoised results.
        """
        if self._bare:
            return self
        cached = self._layout
        if cached is None:
            stripped = tuple(GpuInfo(gpu.index, numa_node=gpu.numa_node) for gpu in self.gpus)
            cached = NodeTopology(stripped, self.links)
            object.__setattr__(self, "_layout", cached)
        return cached

    def codes(self) -> list[list[str]]:
        """The square matrix of link codes as nvidia-smi prints them (NodeInventory links)."""
        return [[link.code for link in row] for row in self.links]

    def graph(self) -> nx.Graph:
        """A fresh ``networkx.Graph``: one node per GPU index, one edge per GPU pair.

        Node attributes: ``numa``, ``uuid``, ``product``, ``memory_bytes``. Edge attributes:
        ``kind`` (LinkKind), ``code``, ``nvlinks``, ``rank``. A new graph is built on every
        call because networkx graphs are mutable and this object is not.
        """
        graph = nx.Graph()
        for gpu in self.gpus:
            graph.add_node(
                gpu.index,
                numa=gpu.numa_node,
                uuid=gpu.uuid,
                product=gpu.product,
                memory_bytes=gpu.memory_bytes,
            )
        for a in range(self.gpu_count):
            for b in range(a + 1, self.gpu_count):
                link = self.links[a][b]
                graph.add_edge(
                    a, b, kind=link.kind, code=link.code, nvlinks=link.nvlinks, rank=link.rank
                )
        return graph

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.gpu_count:
            raise IndexError(f"GPU index {index} out of range for {self.gpu_count} GPUs")

    # -- construction --------------------------------------------------------------------

    @classmethod
    def from_codes(
        cls,
        codes: Sequence[Sequence[str]],
        numa_nodes: Sequence[int | None] | None = None,
        gpus: Sequence[GpuInfo] | None = None,
    ) -> NodeTopology:
        """Build a topology from a matrix of link codes (e.g. NodeInventory ``status.links``).

        ``gpus`` gives per-GPU facts (default: bare GPUs 0..n-1); ``numa_nodes``, when given,
        sets each GPU's NUMA node and wins over the one in ``gpus``.
        """
        if isinstance(codes, str):
            raise TopologyError("link codes must be a matrix (list of rows), not a string")
        rows = [list(row) for row in codes]
        count = len(rows)
        for position, row in enumerate(rows):
            if isinstance(row, str) or len(row) != count:
                raise TopologyError(
                    f"link code row {position} has {len(row)} entries, expected {count}"
                )
        links = tuple(tuple(Link.parse(str(code)) for code in row) for row in rows)
        if gpus is None:
            infos = [GpuInfo(index) for index in range(count)]
        else:
            infos = list(gpus)
            if len(infos) != count:
                raise TopologyError(f"{len(infos)} GPUs given for a {count} x {count} link matrix")
        if numa_nodes is not None:
            if len(numa_nodes) != count:
                raise TopologyError(f"{len(numa_nodes)} NUMA nodes given for {count} GPUs")
            infos = [
                replace(info, numa_node=numa) for info, numa in zip(infos, numa_nodes, strict=True)
            ]
        return cls(tuple(infos), links)
