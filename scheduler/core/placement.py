"""Fit and score breakdown of one pod on one node: a pure function of two immutable values.

The breakdown follows DESIGN.md ("Scoring: estimated time to ready, then quality"):

1. cold start: engine init + weight bytes / bandwidth of the best tier holding the weights;
2. GPU-set quality: the k-set of the node's free GPUs that the NVIDIA device plugin is
   predicted to hand out (topology.deviceplugin; scored by topology.select);
3. fit: right-sizing (share of each GPU's usable memory the pod actually needs) and how
   fragmented the node's free GPUs are after the placement.

`scoring.relative_scores` turns the raw values of all feasible nodes into integers 0..10.
"""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.core.demand import GPU_RESOURCE, PodDemand
from scheduler.core.node import NodeState, Tier
from scheduler.models.kvplan import GpuFit, MemoryPlan, fit_on_gpu, format_bytes
from topology.deviceplugin import predict_allocation
from topology.select import GpuSetScore, fragmentation


@dataclass(frozen=True, slots=True)
class ScoringConfig:
    """Weights of the score terms and the cold-start model; all configurable.

    The weights need not add up to 1: the final value is their weighted mean. Time to ready
    dominates by default because a cold 70B load costs minutes while the other terms are
    differences of steady-state quality.
    """

    ready_weight: float = 0.55
    gpu_set_weight: float = 0.25
    right_size_weight: float = 0.10
    fragmentation_weight: float = 0.10
    # Seconds from container start to serving, besides loading weights (CUDA context, graph
    # capture, KV allocation); vLLM takes tens of seconds for this on large models.
    engine_init_seconds: float = 30.0
    # Share of the final score given to KV-transfer locality for decode pods whose prefill
    # peers (kvsched.io/kv-peer) are running: 0.3 lets a peer's node or NVLink domain beat a
    # slightly better node elsewhere, but not a node that is much faster to get ready.
    kv_peer_weight: float = 0.3

    def __post_init__(self) -> None:
        weights = (
            self.ready_weight,
            self.gpu_set_weight,
            self.right_size_weight,
            self.fragmentation_weight,
        )
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError("score weights must be >= 0 and not all zero")
        if self.engine_init_seconds < 0:
            raise ValueError("engine_init_seconds must be >= 0")
        if not 0.0 <= self.kv_peer_weight <= 1.0:
            raise ValueError("kv_peer_weight must be in [0, 1]")


DEFAULT_SCORING = ScoringConfig()


@dataclass(frozen=True, slots=True)
class ColdStart:
    tier: Tier
    bandwidth_bytes_per_s: float
    weights_bytes: int
    load_seconds: float
    ready_seconds: float


@dataclass(frozen=True, eq=False)
class NodeEvaluation:
    """The verdict on one node for one pod.

    It does not name the node: nodes of equal shape share one evaluation (see the store's memo).

    `unresolvable` failures cannot be cured by preempting pods on the node (too few GPUs in
    total, GPUs too small, a broken pod spec); kube-scheduler then keeps preemption off it.
    """

    fits: bool
    reason: str
    unresolvable: bool = False
    gpus: tuple[int, ...] = ()
    gpu_set: GpuSetScore | None = None
    cold_start: ColdStart | None = None
    memory: GpuFit | None = None
    right_size: float = 0.0
    fragmentation_after: float = 0.0
    # Why it failed, as a short fixed word (metrics label): pod-spec, no-gpus, gpu-count,
    # gpu-memory, gpu-memory-unknown, free-gpus, unknown-node, gang; "" when it fits.
    rejection: str = ""

    @property
    def set_label(self) -> str:
        """The GPU set's tier for people: a lone GPU talks to nobody, so "nvlink-complete"
        would be true but misleading."""
        if self.gpu_set is None:
            return ""
        if len(self.gpus) == 1:
            return "single-gpu"
        return self.gpu_set.tier.name.lower().replace("_", "-")

    @property
    def ready_seconds(self) -> float | None:
        return None if self.cold_start is None else self.cold_start.ready_seconds

    def summary(self) -> str:
        """One line for the `kvsched.io/placement` annotation and the demo table."""
        if not self.fits:
            return self.reason
        parts = [f"predicted-gpus={','.join(map(str, self.gpus))}"]
        if self.cold_start is not None:
            parts.append(
                f"weights={self.cold_start.tier.label} ready~{self.cold_start.ready_seconds:.0f}s"
            )
        if self.gpu_set is not None:
            parts.append(f"set={self.set_label}")
        if self.memory is not None:
            parts.append(f"headroom={format_bytes(self.memory.headroom_bytes)}/gpu")
        return " ".join(parts)


def demand_rejection(demand: PodDemand) -> NodeEvaluation | None:
    """The verdict for every node, known or not, when the pod itself is broken."""
    if demand.error is not None:
        return NodeEvaluation(False, demand.error, unresolvable=True, rejection="pod-spec")
    return None


def evaluate(
    demand: PodDemand, node: NodeState, config: ScoringConfig = DEFAULT_SCORING
) -> NodeEvaluation:
    """Decide whether `demand` fits on `node` and, if it does, how well."""
    rejection = demand_rejection(demand)
    if rejection is not None:
        return rejection
    if demand.gpus == 0:
        # Not ours to judge: the pod was sent although it requests no GPU; every node passes
        # with a neutral breakdown.
        return NodeEvaluation(True, f"pod requests no {GPU_RESOURCE}")
    if node.topology is None or node.allocatable_gpus == 0:
        return NodeEvaluation(
            False, f"node has no {GPU_RESOURCE}", unresolvable=True, rejection="no-gpus"
        )
    if demand.plan is not None and node.gpu_memory_bytes <= 0:
        return NodeEvaluation(
            False,
            "GPU memory size unknown: no NodeInventory and no nvidia.com/gpu.memory or known "
            "nvidia.com/gpu.product label",
            unresolvable=True,
            rejection="gpu-memory-unknown",
        )
    if node.allocatable_gpus < demand.gpus:
        return NodeEvaluation(
            False,
            f"node has {node.allocatable_gpus} GPUs in total, pod needs {demand.gpus}",
            unresolvable=True,
            rejection="gpu-count",
        )

    memory: GpuFit | None = None
    if demand.plan is not None:
        memory = fit_on_gpu(demand.plan, node.gpu_memory_bytes, demand.gpu_memory_utilization)
        if not memory.fits:
            reason = _memory_reason(node.gpu_product or "GPU", demand.plan, memory)
            return NodeEvaluation(
                False, reason, unresolvable=True, memory=memory, rejection="gpu-memory"
            )

    free = node.usable_free_gpus
    if len(free) < demand.gpus:
        return NodeEvaluation(
            False,
            f"{len(free)} of {node.allocatable_gpus} GPUs free, pod needs {demand.gpus}",
            memory=memory,
            rejection="free-gpus",
        )
    # The node's device plugin, not kvsched, picks the GPUs: score the set it will hand out
    # (kvsched's prediction of go-gpuallocator's best-effort choice), not the best set there is.
    gpu_set = predict_allocation(node.topology.layout, free, demand.gpus)
    if gpu_set is None:  # pragma: no cover - len(free) >= k guarantees a set
        return NodeEvaluation(False, "no GPU set available", memory=memory, rejection="free-gpus")

    cold = _cold_start(demand, node, config)
    right_size = 1.0
    if memory is not None and memory.usable_bytes_per_gpu > 0:
        right_size = (
            min(1.0, demand.plan.required_bytes_per_gpu / memory.usable_bytes_per_gpu)
            if demand.plan is not None
            else 1.0
        )
    frag_after = fragmentation(node.topology.layout, free - set(gpu_set.gpus))
    return NodeEvaluation(
        True,
        "fits",
        gpus=gpu_set.gpus,
        gpu_set=gpu_set,
        cold_start=cold,
        memory=memory,
        right_size=right_size,
        fragmentation_after=frag_after,
    )


def _memory_reason(product: str, plan: MemoryPlan, memory: GpuFit) -> str:
    """Short and equal for equal GPUs, so that kube-scheduler's event aggregates it
    ("1666 nodes: ..."); the itemised arithmetic is in `memory.reason` (explain)."""
    needs = format_bytes(plan.required_bytes_per_gpu)
    usable = format_bytes(memory.usable_bytes_per_gpu)
    if memory.max_kv_tokens == 0 or not plan.kv_known:
        return f"{product}: needs {needs}/GPU, {usable} usable; weights alone do not fit"
    return (
        f"{product}: needs {needs}/GPU, {usable} usable; KV room for "
        f"{memory.max_kv_tokens:,} of {plan.kv_tokens:,} tokens"
    )


def _cold_start(demand: PodDemand, node: NodeState, config: ScoringConfig) -> ColdStart | None:
    if demand.model is None or demand.plan is None:
        return None
    copy = node.residency(demand.model, demand.revision)
    tier = copy.tier if copy is not None else Tier.NETWORK
    bandwidth = node.bandwidth.for_tier(tier)
    # A pipeline stage loads only its share of the weights (the whole model when pp = 1).
    weights = demand.plan.weights_bytes_stage
    load = weights / bandwidth
    return ColdStart(tier, bandwidth, weights, load, config.engine_init_seconds + load)
