"""Placement policies for the simulator: kvsched and the baselines it is measured against.

Every policy sees the same cluster state (the simulated ClusterStore) and never places what
cannot run: the baselines use the core's own fit check (``ClusterStore.evaluations``: GPU
count, weights + KV in GPU memory), only their node ordering differs. No policy chooses GPUs:
on the chosen node every pod gets what the NVIDIA device plugin hands out (go-gpuallocator's
best-effort policy over the free GPUs in the kubelet's random order; see
:mod:`scheduler.simulate.kubelet` and :meth:`SimCluster.commit`).

* ``kvsched``: the extender's path, verbatim: ``ClusterStore.filter`` (for gang members the
  store's gang path: the first member plans the whole group, the others pass only on their
  planned node), ``prioritize_scores``, then ``bind`` (which writes kvsched's prediction of
  the plugin's GPUs on the pod). The node kube-scheduler picks is the highest total score:
  the extender's 0..10 x weight 20 x 10 (the shipped scheduler configuration) plus
  kube-scheduler's own LeastAllocated and BalancedAllocation (0..100 each); among equal
  totals a seeded random one, as kube-scheduler's selectHost does.
* ``spread``: stock kube-scheduler: LeastAllocated + BalancedAllocation over cpu, memory and
  nvidia.com/gpu (the requests are proportional to the GPUs, so this spreads GPUs), random
  among equals.
* ``binpack``: MostAllocated over the same resources.
* ``pinning``: hard residency pinning: only nodes that hold the model (any tier) when one of
  them fits, else anywhere; spread among them.
* ``topology``: kvsched's score with residency removed (ready weight 0; the GPU-set term
  rates each node by the set the device plugin is predicted to hand out), without gang
  planning.

The baselines place gang members one at a time, as kube-scheduler without a coscheduling
plugin does: members that fit are bound even when the rest cannot be, which is how partially
placed gangs happen. kvsched plans whole gangs.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from scheduler.core.demand import PodDemand, parse_demand
from scheduler.core.placement import DEFAULT_SCORING, NodeEvaluation, ScoringConfig
from scheduler.core.scoring import score_table
from scheduler.simulate.engine import GPUS_PER_NODE, SimCluster
from scheduler.simulate.trace import NAMESPACE, PodSpec

EXTENDER_WEIGHT = 20  # manifests/scheduler/scheduler-config.yaml
EXTENDER_SCALE = 10  # kube-scheduler: MaxNodeScore / MaxExtenderPriority
MAX_NODE_SCORE = 100.0
# Node allocatable and per-GPU requests of the simulated pool (scheduler.demo.cluster and
# scheduler.simulate.trace.PodSpec): cpu, memory in GiB, GPUs.
ALLOCATABLE = (220.0, 1980.0, float(GPUS_PER_NODE))
PER_GPU_REQUEST = (8.0, 64.0, 1.0)


def _fractions(used_gpus: int) -> list[float]:
    return [min(1.0, used_gpus * r / a) for r, a in zip(PER_GPU_REQUEST, ALLOCATABLE, strict=True)]


def least_allocated(used_after: int) -> float:
    """kube-scheduler's LeastAllocated score (0..100) after placing the pod."""
    return MAX_NODE_SCORE * statistics.fmean(1.0 - f for f in _fractions(used_after))


def most_allocated(used_after: int) -> float:
    """kube-scheduler's MostAllocated score (0..100) after placing the pod."""
    return MAX_NODE_SCORE * statistics.fmean(_fractions(used_after))


def balanced(used_after: int) -> float:
    """kube-scheduler's BalancedAllocation score (0..100): 1 - std of the fractions."""
    return MAX_NODE_SCORE * (1.0 - statistics.pstdev(_fractions(used_after)))


def _pick(sim: SimCluster, names: Sequence[str], totals: Sequence[float]) -> str:
    best = max(totals)
    top = [n for n, t in zip(names, totals, strict=True) if t >= best - 1e-9]
    return top[0] if len(top) == 1 else sim.rng.choice(top)


def _stock_score(sim: SimCluster, node: str, gpus: int) -> float:
    used_after = sim.used[node] + gpus
    return least_allocated(used_after) + balanced(used_after)


class KvschedPolicy:
    name = "kvsched"

    def place(self, sim: SimCluster, pods: Sequence[PodSpec]) -> None:
        store = sim.store
        for pod in pods:
            demand = store.demand(sim.pod_object(pod))
            result = store.filter(demand, sim.node_names)
            if not result.passed:
                if pod.gang is not None:
                    return  # the group failed as a whole: every member fails alike
                continue
            scores = store.prioritize_scores(demand, result.passed)
            totals = [
                s * EXTENDER_WEIGHT * EXTENDER_SCALE + _stock_score(sim, n, demand.gpus)
                for n, s in zip(result.passed, scores, strict=True)
            ]
            node = _pick(sim, result.passed, totals)
            bound = store.bind(NAMESPACE, pod.name, pod.uid, node)
            sim.commit(pod, demand, node, predicted=bound.prediction.indices)


@dataclass
class _Candidate:
    node: str
    evaluation: NodeEvaluation


class _Baseline:
    """One pod at a time: the core's fit check, then the policy's node order."""

    name = "baseline"

    def place(self, sim: SimCluster, pods: Sequence[PodSpec]) -> None:
        for pod in pods:
            demand = parse_demand(sim.pod_object(pod), sim.catalog)
            evaluations = sim.store.evaluations(demand, sim.node_names)
            feasible = [
                _Candidate(n, e) for n, e in zip(sim.node_names, evaluations, strict=True) if e.fits
            ]
            if not feasible:
                continue
            candidates = self.candidates(sim, demand, feasible)
            totals = self.scores(sim, demand, candidates)
            node = _pick(sim, [c.node for c in candidates], totals)
            sim.commit(pod, demand, node)

    def candidates(
        self, sim: SimCluster, demand: PodDemand, feasible: list[_Candidate]
    ) -> list[_Candidate]:
        return feasible

    def scores(
        self, sim: SimCluster, demand: PodDemand, candidates: list[_Candidate]
    ) -> list[float]:
        return [_stock_score(sim, c.node, demand.gpus) for c in candidates]


class SpreadPolicy(_Baseline):
    name = "spread"


class BinpackPolicy(_Baseline):
    name = "binpack"

    def scores(
        self, sim: SimCluster, demand: PodDemand, candidates: list[_Candidate]
    ) -> list[float]:
        return [
            most_allocated(sim.used[c.node] + demand.gpus)
            + balanced(sim.used[c.node] + demand.gpus)
            for c in candidates
        ]


class PinningPolicy(_Baseline):
    name = "pinning"

    def candidates(
        self, sim: SimCluster, demand: PodDemand, feasible: list[_Candidate]
    ) -> list[_Candidate]:
        if demand.model is None:
            return feasible
        cached = [
            c
            for c in feasible
            if sim.node_state(c.node).residency(demand.model, demand.revision) is not None
        ]
        return cached or feasible


class TopologyPolicy(_Baseline):
    """kvsched's scoring without residency: ready weight 0; no gang planning."""

    name = "topology"

    def __init__(self, base: ScoringConfig = DEFAULT_SCORING) -> None:
        self.config = ScoringConfig(
            ready_weight=0.0,
            gpu_set_weight=base.gpu_set_weight,
            right_size_weight=base.right_size_weight,
            fragmentation_weight=base.fragmentation_weight,
            engine_init_seconds=base.engine_init_seconds,
        )

    def scores(
        self, sim: SimCluster, demand: PodDemand, candidates: list[_Candidate]
    ) -> list[float]:
        table = score_table((c.evaluation for c in candidates), self.config)
        return [
            table[id(c.evaluation)].score * EXTENDER_WEIGHT * EXTENDER_SCALE
            + _stock_score(sim, c.node, demand.gpus)
            for c in candidates
        ]


POLICIES: dict[str, Callable[[], KvschedPolicy | _Baseline]] = {
    "kvsched": KvschedPolicy,
    "spread": SpreadPolicy,
    "binpack": BinpackPolicy,
    "pinning": PinningPolicy,
    "topology": TopologyPolicy,
}
STOCK = "spread"


def make_policy(name: str) -> KvschedPolicy | _Baseline:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown policy {name!r} (known: {', '.join(POLICIES)})") from None
