"""Placement policies for the simulator: kvsched and the stock baselines it is measured against.

Every policy is kube-scheduler's **default profile as shipped** (kubescheduler.config.k8s.io/v1
defaults: ``pkg/scheduler/apis/config/v1/default_plugins.go`` and ``defaults.go``), with or
without something on top. The default profile's score plugins that tell the simulated nodes
apart (:class:`DefaultProfile`):

* ``NodeResourcesFit`` (weight 1), strategy ``LeastAllocated`` over **cpu and memory**, weight
  1 each (the defaults do not score ``nvidia.com/gpu``; the simulated pods request 8 cpu and
  64Gi per GPU, so this still spreads by GPUs, coarsely);
* ``NodeResourcesBalancedAllocation`` (weight 1) over cpu and memory;
* ``PodTopologySpread`` (weight 2) with the **system default constraints** (``ScheduleAnyway``:
  ``topology.kubernetes.io/zone`` maxSkew 5, ``kubernetes.io/hostname`` maxSkew 3), which
  apply to pods owned by a ReplicaSet/StatefulSet, i.e. the replicas of one Deployment (or
  LeaderWorkerSet) count together; scored as upstream's ``scoring.go`` does (counts times
  ``log(domains + 2)`` plus ``maxSkew - 1``, rounded, then normalised to
  ``100 * (max + min - s) / max``), counting pods on the nodes that match the pod's required
  node affinity;
* ``TaintToleration``, ``NodeAffinity`` (only preferred terms score), ``InterPodAffinity``
  (no terms) and ``ImageLocality`` (one serving image everywhere) give every node the same
  score here and are left out.

Ties go to a seeded random node among the best, as kube-scheduler's ``selectHost`` does. No
policy chooses GPUs: on the chosen node every pod gets what the NVIDIA device plugin hands out
(:mod:`scheduler.simulate.kubelet`, :meth:`SimCluster.commit`).

* ``kvsched``: the default profile plus the extender, verbatim: ``ClusterStore.filter`` (gang
  members through the store's gang path), ``prioritize_scores`` x weight 20 x 10 (the shipped
  scheduler configuration) added to the default profile's scores, then ``bind``.
* ``stock-hinted``: the default profile with the per-model GPU-product affinity careful
  operators write (a required ``nvidia.com/gpu.product In [...]`` listing the products
  whose memory holds the pod's weights + KV budget at its TP size): the core's memory-fit
  check, nothing else of kvsched.
* ``stock-blind``: the default profile on GPU count alone. A pod placed where weights + KV do
  not fit is a **failed start**: it holds its GPUs, loads, crashes, never gets ready.
* ``pinning``: residency pinning as model-cache operators do it (a hard constraint to nodes
  the controller lists as holding the model, any tier, when one of them fits; anywhere else
  otherwise), on top of ``stock-hinted``.

The baselines place gang members one at a time, as kube-scheduler without a coscheduling
plugin does: members that fit are bound even when the rest cannot be, which is how partially
placed gangs happen. kvsched plans whole gangs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from scheduler.core.demand import PodDemand, parse_demand
from scheduler.simulate.engine import SimCluster
from scheduler.simulate.trace import NAMESPACE, PodSpec

EXTENDER_WEIGHT = 20  # manifests/scheduler/scheduler-config.yaml
EXTENDER_SCALE = 10  # kube-scheduler: MaxNodeScore / MaxExtenderPriority
MAX_NODE_SCORE = 100
# Node allocatable (scheduler.demo.cluster.node_object) and the simulated pods' requests per
# GPU (scheduler.simulate.trace.PodSpec): milli-cpu and bytes, as kube-scheduler counts them.
ALLOCATABLE_MILLICPU = 220_000
ALLOCATABLE_MEMORY = 1980 * 2**30
MILLICPU_PER_GPU = 8_000
MEMORY_PER_GPU = 64 * 2**30
# Default plugin weights (default_plugins.go).
FIT_WEIGHT, BALANCED_WEIGHT, SPREAD_WEIGHT = 1, 1, 2
# PodTopologySpread's system default constraints: (topology key, maxSkew).
ZONE_KEY, HOSTNAME_KEY = "topology.kubernetes.io/zone", "kubernetes.io/hostname"
DEFAULT_CONSTRAINTS = ((ZONE_KEY, 5), (HOSTNAME_KEY, 3))


def least_allocated(used_gpus_after: int) -> int:
    """NodeResourcesFit LeastAllocated (0..100) over cpu and memory, integer math as upstream
    (per resource ``(allocatable - requested) * 100 / allocatable``, then the weighted mean)."""
    cpu = MILLICPU_PER_GPU * used_gpus_after
    memory = MEMORY_PER_GPU * used_gpus_after
    cpu_score = max(0, ALLOCATABLE_MILLICPU - cpu) * MAX_NODE_SCORE // ALLOCATABLE_MILLICPU
    memory_score = max(0, ALLOCATABLE_MEMORY - memory) * MAX_NODE_SCORE // ALLOCATABLE_MEMORY
    return (cpu_score + memory_score) // 2


def balanced_allocation(used_gpus_after: int) -> int:
    """NodeResourcesBalancedAllocation (0..100): ``(1 - std of the fractions) * 100`` over cpu
    and memory (for two resources upstream's std is half their difference)."""
    cpu = min(1.0, MILLICPU_PER_GPU * used_gpus_after / ALLOCATABLE_MILLICPU)
    memory = min(1.0, MEMORY_PER_GPU * used_gpus_after / ALLOCATABLE_MEMORY)
    return int((1.0 - abs(cpu - memory) / 2) * MAX_NODE_SCORE)


def spread_scores(
    sim: SimCluster, deployment: str, candidates: Sequence[str], counted: Sequence[str]
) -> list[int]:
    """PodTopologySpread's normalised scores (0..100) of `candidates` for a replica of
    `deployment` under the system default constraints; `counted`: the nodes whose pods count
    (those matching the pod's required node affinity)."""
    if not candidates:
        return []
    zone_of = {n: sim.zone(n) for n in counted}
    zones = {sim.zone(n) for n in candidates}
    per_zone: dict[str, int] = dict.fromkeys(zones, 0)
    for node in counted:
        zone = zone_of[node]
        if zone in per_zone:
            per_zone[zone] += sim.replicas_on(node, deployment)
    zone_weight = math.log(len(zones) + 2)
    host_weight = math.log(len(candidates) + 2)
    raw = []
    for node in candidates:
        score = 0.0
        for key, skew in DEFAULT_CONSTRAINTS:
            if key == ZONE_KEY:
                score += per_zone[sim.zone(node)] * zone_weight + (skew - 1)
            else:
                score += sim.replicas_on(node, deployment) * host_weight + (skew - 1)
        raw.append(math.floor(score + 0.5))  # Go's math.Round on positive values
    low, high = min(raw), max(raw)
    if high == 0:
        return [MAX_NODE_SCORE] * len(raw)
    return [MAX_NODE_SCORE * (high + low - s) // high for s in raw]


class DefaultProfile:
    """The default profile's scores (module docstring) for one pod over candidate nodes."""

    def scores(
        self,
        sim: SimCluster,
        pod: PodSpec,
        gpus: int,
        candidates: Sequence[str],
        counted: Sequence[str],
    ) -> list[int]:
        spread = spread_scores(sim, pod.deployment, candidates, counted)
        totals = []
        for node, pts in zip(candidates, spread, strict=True):
            after = sim.used[node] + gpus
            totals.append(
                FIT_WEIGHT * least_allocated(after)
                + BALANCED_WEIGHT * balanced_allocation(after)
                + SPREAD_WEIGHT * pts
            )
        return totals


PROFILE = DefaultProfile()


def _pick(sim: SimCluster, names: Sequence[str], totals: Sequence[float]) -> str:
    best = max(totals)
    top = [n for n, t in zip(names, totals, strict=True) if t >= best - 1e-9]
    return top[0] if len(top) == 1 else sim.rng.choice(top)


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
            stock = PROFILE.scores(sim, pod, demand.gpus, result.passed, sim.node_names)
            totals = [
                s * EXTENDER_WEIGHT * EXTENDER_SCALE + d for s, d in zip(scores, stock, strict=True)
            ]
            node = _pick(sim, result.passed, totals)
            bound = store.bind(NAMESPACE, pod.name, pod.uid, node)
            sim.commit(pod, demand, node, predicted=bound.prediction.indices)


class _Stock:
    """The default profile, one pod at a time; subclasses say which nodes are feasible."""

    name = "stock"

    def place(self, sim: SimCluster, pods: Sequence[PodSpec]) -> None:
        for pod in pods:
            demand = parse_demand(sim.pod_object(pod), sim.catalog)
            counted = self.affinity(sim, demand)
            feasible = [n for n in counted if len(sim.free_gpus(n)) >= demand.gpus]
            feasible = self.narrow(sim, demand, feasible)
            if not feasible:
                continue
            totals = PROFILE.scores(sim, pod, demand.gpus, feasible, counted)
            sim.commit(pod, demand, _pick(sim, feasible, totals))

    def affinity(self, sim: SimCluster, demand: PodDemand) -> list[str]:
        """Nodes matching the pod's required node affinity (all of them: none)."""
        return list(sim.node_names)

    def narrow(self, sim: SimCluster, demand: PodDemand, feasible: list[str]) -> list[str]:
        return feasible


class StockBlindPolicy(_Stock):
    """GPU count only; the engine judges the failed starts (SimCluster.commit)."""

    name = "stock-blind"


class StockHintedPolicy(_Stock):
    """Per-model GPU-product affinity: the products whose memory holds the pod."""

    name = "stock-hinted"

    def affinity(self, sim: SimCluster, demand: PodDemand) -> list[str]:
        return [n for n in sim.node_names if sim.memory_fits(demand, n)]


class PinningPolicy(StockHintedPolicy):
    name = "pinning"

    def narrow(self, sim: SimCluster, demand: PodDemand, feasible: list[str]) -> list[str]:
        if demand.model is None:
            return feasible
        cached = [
            n
            for n in feasible
            if sim.node_state(n).residency(demand.model, demand.revision) is not None
        ]
        return cached or feasible


POLICIES: dict[str, Callable[[], KvschedPolicy | _Stock]] = {
    "kvsched": KvschedPolicy,
    "stock-hinted": StockHintedPolicy,
    "stock-blind": StockBlindPolicy,
    "pinning": PinningPolicy,
}
STOCK = "stock-hinted"  # the baseline of the load-time target
BLIND = "stock-blind"  # the baseline of the failed-starts comparison


def make_policy(name: str) -> KvschedPolicy | _Stock:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown policy {name!r} (known: {', '.join(POLICIES)})") from None
