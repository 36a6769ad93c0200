"""What the placement core knows about one node: plain, immutable data.

`scheduler.state` builds these from Node, NodeInventory and Pod objects; the core never sees a
Kubernetes object. A NodeState is replaced (never mutated) when anything about the node
changes, so evaluations memoised on its `shape` stay valid for as long as the shape is equal.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from topology.model import NodeTopology


class Tier(enum.IntEnum):
    """Where a model's weights already are on a node; higher loads faster."""

    NETWORK = 0
    LOCAL_DISK = 1
    HOST_MEMORY = 2
    GPU = 3

    @property
    def label(self) -> str:
        return _TIER_LABELS[self]

    @classmethod
    def parse(cls, text: str) -> Tier:
        """The NodeInventory spelling (`gpu`, `host-memory`, `local-disk`, `network`)."""
        try:
            return _TIER_BY_LABEL[text.strip().lower()]
        except KeyError:
            valid = ", ".join(_TIER_BY_LABEL)
            raise ValueError(f"unknown cache tier {text!r} (valid: {valid})") from None


_TIER_LABELS = {
    Tier.NETWORK: "network",
    Tier.LOCAL_DISK: "local-disk",
    Tier.HOST_MEMORY: "host-memory",
    Tier.GPU: "gpu",
}
_TIER_BY_LABEL = {label: tier for tier, label in _TIER_LABELS.items()}


@dataclass(frozen=True, slots=True)
class Bandwidth:
    """Bytes per second at which a node can load weights from each tier.

    Defaults are the middle of the ranges in reference/facts.md: remote object store or network
    volume ~1.5 GB/s, local NVMe ~5 GB/s with a stock loader, host page cache ~20 GB/s (PCIe
    bound).

    There is no GPU rate: weights GPU-resident on a node are held by a running engine, and a
    new pod's engine cannot read another process's GPU memory. What such a copy gives a new
    replica is the page cache its holder loaded through, so :meth:`for_tier` rates ``GPU`` as
    host memory (an upper bound: the holder may have loaded long ago and the pages gone).
    """

    network: float = 1.5e9
    local_disk: float = 5e9
    host_memory: float = 20e9

    def for_tier(self, tier: Tier) -> float:
        if tier >= Tier.HOST_MEMORY:
            return self.host_memory
        if tier is Tier.LOCAL_DISK:
            return self.local_disk
        return self.network


@dataclass(frozen=True, slots=True)
class CachedModel:
    """One model copy a node holds, as NodeInventory `status.modelCache.models[]` lists it."""

    name: str
    tier: Tier
    revision: str | None = None
    size_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class GpuHolder:
    """Who holds one GPU, and on whose word: ``kubelet`` (the node agent read the kubelet's
    PodResources API: the truth), ``prediction`` (kvsched's prediction of the device plugin's
    choice, until the truth is known) or ``unavailable`` (the kubelet does not offer the GPU:
    unhealthy or reserved; ``pod`` is empty)."""

    pod: str
    source: str


@dataclass(frozen=True, slots=True)
class PredictionMismatch:
    """A bound pod whose GPUs, as the kubelet reports them, differ from kvsched's prediction."""

    pod: str
    predicted: tuple[int, ...]
    actual: tuple[int, ...]


@dataclass(frozen=True)
class NodeState:
    """One node as the placement core sees it.

    `free_gpus` are indices known to be free. `unindexed_busy` counts GPUs held by pods whose
    GPU indices nobody reported (bound by another scheduler, no inventory): they are subtracted
    from the free count, charged to the lowest free indices (a guess: nobody can know which).

    `holders` (per busy GPU: which pod, on whose word) and `mismatches` (predictions the
    kubelet contradicted) are for explain and metrics; they are not part of the shape, so
    nodes that differ only in who holds their GPUs still share evaluations.
    """

    name: str
    topology: NodeTopology | None
    gpu_product: str | None
    gpu_memory_bytes: int
    allocatable_gpus: int
    free_gpus: frozenset[int]
    unindexed_busy: int = 0
    models: Mapping[str, tuple[CachedModel, ...]] = field(default_factory=dict)
    bandwidth: Bandwidth = field(default_factory=Bandwidth)
    labels: Mapping[str, str] = field(default_factory=dict)
    source: str = "labels"
    holders: Mapping[int, GpuHolder] = field(default_factory=dict, compare=False, repr=False)
    mismatches: tuple[PredictionMismatch, ...] = field(default=(), compare=False, repr=False)
    shape: tuple[object, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Everything evaluation depends on except the model cache (which is looked up per
        # model). Equal shapes mean equal evaluations, which is what the memo relies on.
        object.__setattr__(
            self,
            "shape",
            (
                # The layout (links + NUMA), not UUIDs: two nodes built alike share a shape.
                self.topology.layout if self.topology is not None else None,
                self.gpu_product,
                self.gpu_memory_bytes,
                self.allocatable_gpus,
                self.usable_free_gpus,
                self.bandwidth,
            ),
        )

    @property
    def usable_free_gpus(self) -> frozenset[int]:
        """Free indices after charging the unindexed busy GPUs to the lowest free indices."""
        if self.unindexed_busy <= 0:
            return self.free_gpus
        ordered = sorted(self.free_gpus)
        return frozenset(ordered[self.unindexed_busy :])

    def residency(self, model: str, revision: str | None) -> CachedModel | None:
        """The best-tier copy of `model` (canonical lower-case id) matching `revision`."""
        best: CachedModel | None = None
        for copy in self.models.get(model, ()):
            # A pinned revision needs that exact revision: other weights are other bytes.
            if revision is not None and copy.revision != revision:
                continue
            if best is None or copy.tier > best.tier:
                best = copy
        return best
