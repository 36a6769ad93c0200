"""Replay a trace against one placement policy.

The simulated cluster is a :class:`~scheduler.state.store.ClusterStore` in offline mode (an
``InMemoryBinder``, a simulated clock), fed what the watches would feed the extender:

* the pool's Node objects once;
* each pod when it arrives (pending, no node), and bound and ``Running`` once placed;
  deleted when its replica departs. A pod kvsched bound carries its
  ``kvsched.io/predicted-gpus`` as the bind wrote it; a baseline's pod carries nothing (no
  stock component writes GPU indices on a pod);
* one NodeInventory per node, as the inventory controller writes it when the node agent
  reports (``source: agent``):

  - ``allocated`` with ``allocatedSource: kubelet`` and ``allocatableGpus``: the GPUs each
    pod on the node really holds, as the agent reads them from the kubelet's PodResources
    API. This is how the real extender learns the node's truth, and the only way it does:
    it counts a listed pod's GPUs from this list, whatever the pod's prediction said
    (``scheduler.state.objects.node_state_from``). The simulator publishes the list right
    after each bind and each deletion, i.e. an agent with no delay, so between two
    placements the store never runs on a stale prediction (a real agent reports every
    ``--interval``, 60 s; meanwhile the extender counts the prediction);
  - ``status.modelCache``: what the controller would learn, its own
    :class:`~scheduler.controller.residency.ResidencyTracker` fed the same pod events at
    simulated times, read with ``learned()`` (GPU-resident while a pod of the model runs
    there, host page cache for ``host_memory_ttl_s`` after the last one stopped, then local
    disk; least recently used models evicted beyond the node's cache capacity, the
    ``kvsched.io/model-cache-bytes`` label).

**Who decides the GPUs.** A policy decides the node only. Every placed pod, under every
policy, gets the GPUs the node's kubelet and NVIDIA device plugin would hand out there
(:func:`scheduler.simulate.kubelet.kubelet_allocation`: go-gpuallocator's best-effort policy,
exactly ported, over the node's free GPUs in a random order drawn from a generator seeded
with the trace seed and the policy's name, so runs are reproducible). kvsched still binds
through the store and its prediction goes on the pod, but what the pod holds afterwards is
the plugin's set.

Every policy gets its own store and tracker, so the caches evolve with that policy's own
placements. A replica that cannot be placed (entirely, for kvsched's gangs; pod by pod for the
baselines) stays pending and is tried again after every later event that freed GPUs (nothing
else can make a pod fit), until it is placed or its replica departs.

Per placed pod the simulator records the core's cold-start estimate (engine init + weights /
bandwidth of the tier the weights were in on that node just before the pod started), how long
the pod waited, the GPUs the device plugin handed out and, for kvsched, the predicted ones.
"Best set": a pod with 2+ GPUs whose set is as good (quality within ``QUALITY_EPS``) as
:func:`topology.select.best_gpu_set` over the node's free GPUs at that moment (the kubelet's
truth, before the pod); graded for the plugin's GPUs (every policy) and for kvsched's
prediction.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from scheduler.controller.residency import ResidencySettings, ResidencyTracker
from scheduler.core.assignment import GpuPrediction
from scheduler.core.demand import A_PREDICTED_GPUS, PodDemand
from scheduler.core.node import NodeState, Tier
from scheduler.core.placement import DEFAULT_SCORING, ScoringConfig, evaluate
from scheduler.models.catalog import Catalog
from scheduler.simulate.kubelet import kubelet_allocation
from scheduler.simulate.trace import NAMESPACE, Event, PodSpec, SimNode, Trace
from scheduler.state.store import ClusterStore, InMemoryBinder
from topology.model import NodeTopology
from topology.select import best_gpu_set, score_gpu_set

EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
GPUS_PER_NODE = 8
QUALITY_EPS = 1e-9


@dataclass
class PodOutcome:
    """What happened to one pod of the trace under one policy."""

    name: str
    replica: str
    gpus: int
    model: str
    gang: str | None
    arrived: float
    placed: float | None = None
    departed: float | None = None
    node: str | None = None
    gpu_ids: tuple[int, ...] = ()  # what the device plugin handed out (the node's truth)
    node_free: tuple[int, ...] = ()  # the node's free GPUs just before (the plugin's input)
    predicted_ids: tuple[int, ...] | None = None  # kvsched's prediction (None: no prediction)
    plugin_fell_back: bool = False  # the plugin's answer was not a full set (kubelet module)
    ready_s: float | None = None
    load_s: float | None = None
    tier: str | None = None
    # Whether the plugin's GPUs are as good as the node's best free set (None for single-GPU
    # pods: every lone GPU is alike).
    best_set: bool | None = None
    predicted_best_set: bool | None = None  # the same for kvsched's prediction
    best_tier: str | None = None  # the fastest tier on any node where the pod fit then
    # Nodes holding the pod's model (any tier) when it was placed, fitting or not.
    holders: int = 0

    @property
    def prediction_hit(self) -> bool | None:
        """Whether kvsched's prediction is the set the device plugin handed out (None when
        there is no prediction)."""
        if self.predicted_ids is None:
            return None
        return tuple(sorted(self.predicted_ids)) == self.gpu_ids

    def pending_s(self, end: float) -> float:
        """How long the pod waited to be placed (until placement, departure or `end`)."""
        until = self.placed
        if until is None:
            until = self.departed if self.departed is not None else end
        return max(0.0, until - self.arrived)


@dataclass
class Sample:
    """The pool after an event: GPUs in use, free, and free but stranded (on nodes with
    fewer than 8 free, so no 8-GPU pod could use them)."""

    time: float
    used: int
    free: int
    stranded: int


@dataclass
class GangSpan:
    """A gang's partially placed periods: seconds during which some but not all members
    held GPUs."""

    size: int
    partial_since: float | None = None  # start of the current partial stretch
    partial_s: float = 0.0
    partial_gpu_s: float = 0.0  # GPU-seconds held by members of the incomplete gang
    ever_partial: bool = False
    _mark: float = 0.0
    _held: int = 0

    def update(self, now: float, placed: int, held_gpus: int) -> None:
        """The gang has `placed` members holding `held_gpus` GPUs as of `now`."""
        if self.partial_since is not None:
            self.partial_s += now - self._mark
            self.partial_gpu_s += self._held * (now - self._mark)
        if 0 < placed < self.size:
            self.ever_partial = True
            if self.partial_since is None:
                self.partial_since = now
            self._mark, self._held = now, held_gpus
        else:
            self.partial_since = None


@dataclass
class RunResult:
    policy: str
    duration_s: float
    total_gpus: int
    pods: list[PodOutcome]
    samples: list[Sample]
    gangs: dict[str, GangSpan]
    wall_s: float = 0.0
    evictions: int = 0


class Policy(Protocol):
    """Places pods on a :class:`SimCluster`; see scheduler.simulate.policies."""

    name: str

    def place(self, sim: SimCluster, pods: Sequence[PodSpec]) -> None:
        """Try to place the replica's unplaced `pods`, committing each through
        :meth:`SimCluster.commit`; what stays unplaced stays pending."""
        ...


@dataclass
class _Replica:
    name: str
    pods: list[PodSpec]
    placed: set[str] = field(default_factory=set)

    def unplaced(self) -> list[PodSpec]:
        return [p for p in self.pods if p.name not in self.placed]


class SimCluster:
    """One policy's view of the simulated cluster: store, residency tracker, clock."""

    def __init__(
        self,
        trace: Trace,
        catalog: Catalog,
        policy_name: str,
        scoring: ScoringConfig = DEFAULT_SCORING,
        residency: ResidencySettings | None = None,
    ) -> None:
        self.trace = trace
        self.catalog = catalog
        self.scoring = scoring
        self.now = 0.0
        # kube-scheduler picks at random among equally scored nodes; seeded per policy.
        self.rng = random.Random(f"{trace.config.seed}:{policy_name}")
        # The kubelet's random order of free GPUs: a generator of its own, so the device
        # plugin's draws do not shift the node choices (and the other way round).
        self.kubelet_rng = random.Random(f"{trace.config.seed}:{policy_name}:kubelet")
        self.store = ClusterStore(
            catalog, scoring, binder=InMemoryBinder(), clock=self.clock, gang_ttl_s=300.0
        )
        self.tracker = ResidencyTracker(catalog, residency)
        self.nodes: dict[str, SimNode] = {n.name: n for n in trace.nodes}
        self.node_names = [n.name for n in trace.nodes]
        self.used: dict[str, int] = dict.fromkeys(self.node_names, 0)
        # The node's truth: GPU index -> the pod (namespace/name) the kubelet gave it to.
        self.held: dict[str, dict[int, str]] = {name: {} for name in self.node_names}
        self._expiry: dict[str, float] = {}
        self.outcomes: dict[str, PodOutcome] = {}
        self._pod_objects: dict[str, dict[str, Any]] = {}
        self.store.replace_kind("NodeInventory", [], rebuild=False)
        self.store.replace_kind("Pod", [], rebuild=False)
        self.store.replace_kind("Node", [n.object() for n in trace.nodes])
        self.store.synced = True
        self._seed_caches()

    # ---- time ---------------------------------------------------------------------------

    def clock(self) -> dt.datetime:
        return EPOCH + dt.timedelta(seconds=self.now)

    def advance(self, t: float) -> None:
        """Move the clock; nodes whose cached models changed tier meanwhile are refreshed."""
        self.now = max(self.now, t)
        due = [n for n, when in self._expiry.items() if when <= self.now]
        for name in due:
            self.refresh(name)

    # ---- residency ----------------------------------------------------------------------

    def _seed_caches(self) -> None:
        """The trace's initial caches, as the controller would have learned them: a pod of
        the model ran on the node and stopped long ago (past the page-cache window)."""
        ttl = self.tracker.settings.host_memory_ttl_s
        for node, copies in self.trace.initial_cache.items():
            for i, copy in enumerate(copies):
                pod = _bound_object(
                    {
                        "metadata": {
                            "name": f"warm-{node}-{i}",
                            "namespace": "warmup",
                            "uid": f"uid-warm-{node}-{i}",
                            "annotations": {
                                "kvsched.io/model": copy.model,
                                "kvsched.io/weights-bytes": str(copy.size_bytes),
                            },
                        },
                        "spec": {"containers": []},
                    },
                    node,
                    (),
                )
                started = EPOCH - dt.timedelta(seconds=2 * ttl + 3600 + i)
                self.tracker.observe_pod(pod, started)
                self.tracker.forget_pod(f"uid-warm-{node}-{i}", started + dt.timedelta(hours=1))
            self.refresh(node)

    def refresh(self, node: str) -> None:
        """Publish `node`'s NodeInventory: the kubelet's allocations as the agent reports
        them (module docstring) and the tracker's model cache (the topology comes from the
        node's GFD labels)."""
        capacity = self.nodes[node].cache_bytes
        models, _ = self.tracker.learned(node, self.clock(), capacity)
        ttl = self.tracker.settings.host_memory_ttl_s
        expiries = [
            (m.last_used - EPOCH).total_seconds() + ttl
            for m in models
            if m.tier == "host-memory" and m.last_used is not None
        ]
        if expiries:
            self._expiry[node] = min(expiries)
        else:
            self._expiry.pop(node, None)
        held = self.held[node]
        self.store.upsert_inventory(
            {
                "apiVersion": "kvsched.io/v1alpha1",
                "kind": "NodeInventory",
                "metadata": {"name": node},
                "status": {
                    "source": "agent",
                    "allocated": [{"index": i, "pod": held[i]} for i in sorted(held)],
                    "allocatedSource": "kubelet",
                    "allocatableGpus": list(range(GPUS_PER_NODE)),
                    "modelCache": {
                        "capacityBytes": capacity,
                        "models": [m.to_dict() for m in models],
                    },
                },
            }
        )

    # ---- pods ---------------------------------------------------------------------------

    def node_state(self, name: str) -> NodeState:
        state = self.store.node(name)
        assert state is not None, name
        return state

    def arrive(self, pod: PodSpec) -> None:
        obj = pod.object()
        self._pod_objects[pod.name] = obj
        self.store.upsert_pod(obj)

    def pod_object(self, pod: PodSpec) -> dict[str, Any]:
        return self._pod_objects[pod.name]

    def free_gpus(self, node: str) -> frozenset[int]:
        """The node's GPUs the kubelet has not given to any pod (its truth)."""
        return frozenset(range(GPUS_PER_NODE)).difference(self.held[node])

    def commit(
        self,
        pod: PodSpec,
        demand: PodDemand,
        node: str,
        predicted: Sequence[int] | None = None,
    ) -> None:
        """Record that `pod` was bound to `node` (kvsched: with its `predicted` GPUs, already
        taken in the store by the bind) and started there with the GPUs the device plugin
        hands out (module docstring)."""
        state = self.node_state(node)
        topology = state.topology
        assert topology is not None, node
        free_before = self.free_gpus(node)
        if len(free_before) < demand.gpus:
            raise AssertionError(
                f"{pod.name}: {demand.gpus} GPUs asked on {node}, {len(free_before)} free"
            )
        outcome = self.outcomes[pod.name]
        cold = _cold_start(demand, state, self.scoring)
        outcome.best_tier = self._best_tier(demand, node)
        if demand.model is not None:
            outcome.holders = sum(
                1
                for name in self.node_names
                if self.node_state(name).residency(demand.model, demand.revision) is not None
            )
        gpus: tuple[int, ...] = ()
        if demand.gpus > 0:
            got = kubelet_allocation(topology, free_before, demand.gpus, self.kubelet_rng)
            gpus, outcome.plugin_fell_back = got.gpus, got.fell_back
        ref = f"{NAMESPACE}/{pod.name}"
        for index in gpus:
            self.held[node][index] = ref
        prediction = tuple(predicted) if predicted is not None else None
        bound = _bound_object(self._pod_objects[pod.name], node, prediction or ())
        self.store.upsert_pod(bound)
        outcome.placed = self.now
        outcome.node = node
        outcome.gpu_ids = gpus
        outcome.node_free = tuple(sorted(free_before))
        outcome.predicted_ids = prediction
        if cold is not None:
            outcome.ready_s, outcome.load_s, outcome.tier = cold
        if len(gpus) > 1:
            outcome.best_set = _as_good_as_best(topology, free_before, gpus)
            if prediction is not None:
                outcome.predicted_best_set = _as_good_as_best(topology, free_before, prediction)
        self.used[node] += len(gpus)
        self.tracker.observe_pod(bound, self.clock())
        self.refresh(node)

    def _best_tier(self, demand: PodDemand, chosen: str) -> str | None:
        if demand.model is None:
            return None
        evaluations = self.store.evaluations(demand, self.node_names)
        best = Tier.NETWORK
        for name, evaluation in zip(self.node_names, evaluations, strict=True):
            if evaluation.fits or name == chosen:
                copy = self.node_state(name).residency(demand.model, demand.revision)
                if copy is not None and copy.tier > best:
                    best = copy.tier
        return best.label

    def remove(self, pod: PodSpec) -> None:
        """The pod was deleted (its replica departed), placed or not."""
        outcome = self.outcomes[pod.name]
        outcome.departed = self.now
        self.store.delete_pod(pod.uid)
        self._pod_objects.pop(pod.name, None)
        if outcome.node is not None:
            self.used[outcome.node] -= outcome.gpus
            held = self.held[outcome.node]
            for index in outcome.gpu_ids:
                held.pop(index, None)
            self.tracker.forget_pod(pod.uid, self.clock())
            self.refresh(outcome.node)

    def sample(self) -> Sample:
        free = [GPUS_PER_NODE - u for u in self.used.values()]
        return Sample(
            self.now,
            sum(self.used.values()),
            sum(free),
            sum(f for f in free if f < GPUS_PER_NODE),
        )


def _as_good_as_best(topology: NodeTopology, free: frozenset[int], gpus: Sequence[int]) -> bool:
    """Whether `gpus` is as good as the best set of its size among `free` (within eps)."""
    best = best_gpu_set(topology.layout, free, len(gpus))
    chosen = score_gpu_set(topology.layout, gpus)
    return best is None or chosen.quality >= best.quality - QUALITY_EPS


def _cold_start(
    demand: PodDemand, state: NodeState, config: ScoringConfig
) -> tuple[float, float, str] | None:
    """The core's cold-start estimate on `state` (fit aside: the pod is being placed)."""
    if state.topology is None:
        return None
    everything_free = dataclasses.replace(
        state, free_gpus=frozenset(range(state.topology.gpu_count)), unindexed_busy=0
    )
    evaluation = evaluate(demand, everything_free, config)
    cold = evaluation.cold_start
    if cold is None:
        return None
    return cold.ready_seconds, cold.load_seconds, Tier(cold.tier).label


def _bound_object(pod: Mapping[str, Any], node: str, gpus: tuple[int, ...]) -> dict[str, Any]:
    """The pod as the watch shows it after the bind: on `node`, Running, with kvsched's
    prediction when there is one (`gpus`; a baseline's pod carries none)."""
    meta = dict(pod["metadata"])
    annotations = dict(meta.get("annotations") or {})
    if gpus:
        annotations[A_PREDICTED_GPUS] = GpuPrediction(node, gpus).encode()
    meta["annotations"] = annotations
    spec = dict(pod.get("spec") or {})
    spec["nodeName"] = node
    return {**pod, "metadata": meta, "spec": spec, "status": {"phase": "Running"}}


def run_policy(
    trace: Trace,
    policy: Policy,
    catalog: Catalog | None = None,
    scoring: ScoringConfig = DEFAULT_SCORING,
    clock: Callable[[], float] | None = None,
) -> RunResult:
    """Replay `trace` under `policy`."""
    import time

    timer = clock or time.perf_counter
    started = timer()
    catalog = catalog if catalog is not None else Catalog.builtin()
    sim = SimCluster(trace, catalog, policy.name, scoring)
    pending: dict[str, _Replica] = {}
    replicas: dict[str, _Replica] = {}
    gangs: dict[str, GangSpan] = {}
    samples = [sim.sample()]

    def attempt(replica: _Replica) -> None:
        todo = replica.unplaced()
        if todo:
            policy.place(sim, todo)
            for pod in todo:
                if sim.outcomes[pod.name].placed is not None:
                    replica.placed.add(pod.name)
        if not replica.unplaced():
            pending.pop(replica.name, None)
        else:
            pending[replica.name] = replica

    def track_gang(replica: _Replica) -> None:
        span = gangs.get(replica.name)
        if span is not None:
            held = sum(p.gpus for p in replica.pods if p.name in replica.placed)
            span.update(sim.now, len(replica.placed), held)

    for event in trace.events:
        sim.advance(event.time)
        if event.kind == "arrive":
            replica = _Replica(event.replica, list(event.pods))
            replicas[replica.name] = replica
            for pod in event.pods:
                sim.outcomes[pod.name] = PodOutcome(
                    pod.name, pod.replica, pod.gpus, pod.model, pod.gang, sim.now
                )
                sim.arrive(pod)
            if event.pods[0].gang is not None:
                gangs[replica.name] = GangSpan(len(event.pods))
            attempt(replica)
            track_gang(replica)
        else:
            _depart(sim, event, replicas, pending)
            if event.replica in gangs:
                track_gang(_Replica(event.replica, list(event.pods)))
            for waiting in list(pending.values()):
                attempt(waiting)
                track_gang(waiting)
        samples.append(sim.sample())
    end = trace.duration_s
    sim.advance(end)
    for span in gangs.values():
        span.update(end, 0, 0)
    samples.append(sim.sample())
    return RunResult(
        policy=policy.name,
        duration_s=end,
        total_gpus=GPUS_PER_NODE * len(trace.nodes),
        pods=list(sim.outcomes.values()),
        samples=samples,
        gangs=gangs,
        wall_s=timer() - started,
        evictions=sim.tracker.evictions,
    )


def _depart(
    sim: SimCluster, event: Event, replicas: dict[str, _Replica], pending: dict[str, _Replica]
) -> None:
    replica = replicas.pop(event.replica, None)
    pending.pop(event.replica, None)
    if replica is None:
        return
    for pod in replica.pods:
        sim.remove(pod)
    replica.placed.clear()
