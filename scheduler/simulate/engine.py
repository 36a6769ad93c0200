"""Replay a trace against one placement policy.

Two things are simulated side by side, and kept apart:

* **What kvsched sees** (the view): a :class:`~scheduler.state.store.ClusterStore` in offline
  mode (an ``InMemoryBinder``, a simulated clock), fed what the watches would feed the
  extender: the pool's Node objects once; each pod when it arrives (pending), bound and
  ``Running`` once placed (the kubelet starts its container within seconds), ``Ready`` once
  its weights are loaded and its engine initialised (the readiness probe passes), deleted
  when its replica
  departs; one NodeInventory per node as the inventory controller writes it from the node
  agent's report (``source: agent``): ``allocated`` with ``allocatedSource: kubelet`` (the
  GPUs each pod really holds, published right after each bind and deletion: an agent with no
  delay), ``bandwidth`` (the world's links, as an agent measuring them would report) and
  ``modelCache`` as the controller learns it: its own
  :class:`~scheduler.controller.residency.ResidencyTracker` fed the same pod events
  (GPU-resident while a Ready pod of the model runs there, from its readiness;
  host page cache for ``host_memory_ttl_s`` after the last one stopped, then local disk;
  least recently used models evicted beyond the node's ``kvsched.io/model-cache-bytes``),
  plus the files warming copies completed (the agent's disk scan reports those).
* **What really happens** (:mod:`scheduler.simulate.physics`): residency appears when a load
  completes; a pod placed where its weights are still arriving waits for that fill and then
  reads the page cache; no engine reads another engine's GPU memory; concurrent loads share
  each node's network, disk and host links. A pod's *weight-load time* is from its start on
  the node until its engine holds the weights; *time to ready* adds the engine init.

The view can be wrong where the real controller's would be (a replica still downloading puts
nothing in the view, and a copy the view still lists may have left the page cache); the
metrics are always the world's.

**Who decides the GPUs.** A policy decides the node only. Every placed pod, under every
policy, gets the GPUs the node's kubelet and NVIDIA device plugin would hand out there
(:func:`scheduler.simulate.kubelet.kubelet_allocation`: go-gpuallocator's best-effort policy,
exactly ported, over the node's free GPUs in a random order drawn from a generator seeded
with the trace seed and the policy's name, so runs are reproducible). kvsched still binds
through the store and its prediction goes on the pod, but what the pod holds afterwards is
the plugin's set.

**Failed starts.** A pod placed on GPUs whose memory cannot hold its weights + KV budget (only
the memory-blind stock policy does that) holds its GPUs, loads, crashes and is never ready;
it is counted, and stays until its replica departs (crash-loop restarts are not replayed).

Every policy gets its own store, tracker and world. A replica that cannot be placed
(entirely, for kvsched's gangs; pod by pod for the baselines) stays pending and is tried
again after every later departure (nothing else frees GPUs), until it is placed or departs.

**Warming hook.** With a :class:`Warming`, its planner is called every ``interval_s`` of
simulated time with the cluster (:class:`SimCluster`: the view's node states, the world, the
pods); its :class:`CopyOrder` s become copies on the target node's network link at the copy
rate (at most ``max_concurrent_per_node`` at a time per node); bytes moved are reported.

"Best set": a pod with 2+ GPUs whose set is as good (quality within ``QUALITY_EPS``) as
:func:`topology.select.best_gpu_set` over the node's free GPUs at that moment (the kubelet's
truth, before the pod); graded for the plugin's GPUs (every policy) and for kvsched's
prediction.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import heapq
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from scheduler.controller.residency import ResidencySettings, ResidencyTracker
from scheduler.core.assignment import GpuPrediction
from scheduler.core.demand import A_PREDICTED_GPUS, PodDemand
from scheduler.core.node import NodeState
from scheduler.core.placement import DEFAULT_SCORING, ScoringConfig, evaluate
from scheduler.models.catalog import Catalog
from scheduler.models.kvplan import fit_on_gpu
from scheduler.simulate.kubelet import kubelet_allocation
from scheduler.simulate.physics import LoadModel, ModelKey, World
from scheduler.simulate.trace import NAMESPACE, Event, PodSpec, SimNode, Trace
from scheduler.state.store import ClusterStore, InMemoryBinder
from topology.model import NodeTopology
from topology.select import best_gpu_set, score_gpu_set

EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
GPUS_PER_NODE = 8
QUALITY_EPS = 1e-9
ZONE_LABEL = "topology.kubernetes.io/zone"

# Why a pod's weights did not come from the page cache (PodOutcome.loss), judged on the world
# at the moment the pod was placed, in this order:
LOSS_NONE = "page cache (any excess is link contention)"
LOSS_COLDER = "chose a colder node: a node with a faster copy had room"
LOSS_ARRIVING = "waited for a download already under way (no complete copy anywhere)"
LOSS_FIRST_USE = "first use: no node had ever held the weights"
LOSS_EVICTED = "evicted everywhere: no node holds the weights any more"
LOSS_NO_FIT = "no fitting holder: the nodes holding it have GPUs too small for the pod"
LOSS_BUSY_SAME = "fitting holders busy, mostly with the same model"
LOSS_BUSY_OTHER = "fitting holders busy, mostly with other models"
LOSS_DISK_ONLY = "fitting holders with room had it on disk only (page cache cold)"
LOSSES = (
    LOSS_NONE,
    LOSS_COLDER,
    LOSS_ARRIVING,
    LOSS_FIRST_USE,
    LOSS_EVICTED,
    LOSS_NO_FIT,
    LOSS_BUSY_SAME,
    LOSS_BUSY_OTHER,
    LOSS_DISK_ONLY,
)


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
    # The world's numbers: seconds from the pod's start until its engine held the weights,
    # and that plus engine init; None until loaded (and for failed starts: never ready).
    ready_s: float | None = None
    load_s: float | None = None
    tier: str | None = None  # where the weights came from (physics.SOURCES)
    weights_bytes: int = 0
    ideal_load_s: float | None = None  # the same weights read from the page cache, alone
    estimated_ready_s: float | None = None  # the core's estimate from the view, for comparison
    loss: str | None = None  # LOSSES: why not the page cache
    failed_start: bool = False  # weights + KV do not fit the GPUs: loads, crashes, never ready
    # Whether the plugin's GPUs are as good as the node's best free set (None for single-GPU
    # pods: every lone GPU is alike).
    best_set: bool | None = None
    predicted_best_set: bool | None = None  # the same for kvsched's prediction
    # Nodes holding the pod's weights complete on disk when it was placed, fitting or not.
    holders: int = 0

    @property
    def prediction_hit(self) -> bool | None:
        """Whether kvsched's prediction is the set the device plugin handed out (None when
        there is no prediction)."""
        if self.predicted_ids is None:
            return None
        return tuple(sorted(self.predicted_ids)) == self.gpu_ids

    @property
    def excess_load_s(self) -> float:
        """Load seconds beyond a lone page-cache read (0 until loaded)."""
        if self.load_s is None or self.ideal_load_s is None:
            return 0.0
        return max(0.0, self.load_s - self.ideal_load_s)

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
    evictions: int = 0  # the view's (the controller's tracker)
    disk_evictions: int = 0  # the world's
    bytes_copied: float = 0.0  # by warming copies
    copies: int = 0
    warming: bool = False


class Policy(Protocol):
    """Places pods on a :class:`SimCluster`; see scheduler.simulate.policies."""

    name: str

    def place(self, sim: SimCluster, pods: Sequence[PodSpec]) -> None:
        """Try to place the replica's unplaced `pods`, committing each through
        :meth:`SimCluster.commit`; what stays unplaced stays pending."""
        ...


@dataclass(frozen=True)
class CopyOrder:
    """Copy `model` (canonical lower-case id) at `revision` onto `node`."""

    node: str
    model: str
    revision: str | None
    size_bytes: int


class WarmingPlanner(Protocol):
    def __call__(self, sim: SimCluster) -> Sequence[CopyOrder]:
        """The copies to start now, given the cluster (view and world) at ``sim.now``."""
        ...


@dataclass(frozen=True)
class Warming:
    planner: WarmingPlanner
    interval_s: float = 60.0
    max_concurrent_per_node: int = 1

    def __post_init__(self) -> None:
        if not self.interval_s > 0 or self.max_concurrent_per_node < 1:
            raise ValueError("warming interval_s must be > 0 and max_concurrent_per_node >= 1")


@dataclass
class _Replica:
    name: str
    pods: list[PodSpec]
    placed: set[str] = field(default_factory=set)

    def unplaced(self) -> list[PodSpec]:
        return [p for p in self.pods if p.name not in self.placed]


class SimCluster:
    """One policy's simulated cluster: the view (store, residency tracker), the world
    (physics) and the clock."""

    def __init__(
        self,
        trace: Trace,
        catalog: Catalog,
        policy_name: str,
        scoring: ScoringConfig = DEFAULT_SCORING,
        residency: ResidencySettings | None = None,
        load_model: LoadModel | None = None,
        warming: Warming | None = None,
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
        self.load_model = load_model or LoadModel(
            page_cache_ttl_s=self.tracker.settings.host_memory_ttl_s
        )
        self.warming = warming
        self._next_warming = 0.0 if warming is not None else float("inf")
        self._copy_queue: dict[str, list[CopyOrder]] = {}
        self.nodes: dict[str, SimNode] = {n.name: n for n in trace.nodes}
        self.node_names = [n.name for n in trace.nodes]
        self.world = World(self.load_model, {n.name: n.cache_bytes for n in trace.nodes})
        self.used: dict[str, int] = dict.fromkeys(self.node_names, 0)
        self._zones = {
            n.name: str(n.object()["metadata"]["labels"].get(ZONE_LABEL, "")) for n in trace.nodes
        }
        # Placed replicas per node and deployment (PodTopologySpread counts them).
        self._replicas: dict[str, dict[str, int]] = {name: {} for name in self.node_names}
        # The node's truth: GPU index -> the pod (namespace/name) the kubelet gave it to.
        self.held: dict[str, dict[int, str]] = {name: {} for name in self.node_names}
        self._expiry: dict[str, float] = {}
        self.outcomes: dict[str, PodOutcome] = {}
        self._pods: dict[str, PodSpec] = {}
        self._pod_objects: dict[str, dict[str, Any]] = {}
        # Placed pods as the watch last showed them, and when each turns Ready (its weights
        # loaded + engine init): (time, pod name), a heap.
        self._bound_objects: dict[str, dict[str, Any]] = {}
        self._ready_due: list[tuple[float, str]] = []
        self._fits: dict[tuple[int, int, float], bool] = {}
        self.store.replace_kind("NodeInventory", [], rebuild=False)
        self.store.replace_kind("Pod", [], rebuild=False)
        self.store.replace_kind("Node", [n.object() for n in trace.nodes])
        self.store.synced = True
        self._seed_caches()

    # ---- time ---------------------------------------------------------------------------

    def clock(self) -> dt.datetime:
        return EPOCH + dt.timedelta(seconds=self.now)

    def advance(self, t: float) -> None:
        """Move the clock to `t`: transfers progress and complete, warming rounds run at
        their times, and nodes whose cached models changed tier in the view are refreshed."""
        while self._next_warming <= t:
            self._move(self._next_warming)
            self._warm()
            assert self.warming is not None
            self._next_warming += self.warming.interval_s
        self._move(t)

    def _move(self, t: float) -> None:
        self.world.advance(t)
        self.now = max(self.now, t)
        landed = set(self.world.take_landed())
        landed |= self._turn_ready(t)
        for node in sorted(landed):
            self._start_copies(node)
            self.refresh(node)
        due = [n for n, when in self._expiry.items() if when <= self.now and n not in landed]
        for name in due:
            self.refresh(name)

    def _turn_ready(self, t: float) -> set[str]:
        """Pods whose readiness came by `t`, shown Ready to the tracker at their own time
        (what the controller learns GPU residency from); returns their nodes."""
        nodes: set[str] = set()
        while self._ready_due and self._ready_due[0][0] <= t:
            when, name = heapq.heappop(self._ready_due)
            bound = self._bound_objects.get(name)
            if bound is None:  # departed before it turned ready
                continue
            status = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
            ready = {**bound, "status": status}
            self._bound_objects[name] = ready
            self.tracker.observe_pod(ready, EPOCH + dt.timedelta(seconds=when))
            nodes.add(ready["spec"]["nodeName"])
        return nodes

    def _warm(self) -> None:
        """One warming round: the planner's orders join each node's queue (the agent copies
        ``max_concurrent_per_node`` at a time, the rest wait, as its fetcher queues them)."""
        assert self.warming is not None
        for order in self.warming.planner(self):
            if order.node not in self.nodes:
                raise ValueError(f"warming order for unknown node {order.node!r}")
            queue = self._copy_queue.setdefault(order.node, [])
            if order not in queue:
                queue.append(order)
        for node in sorted(self._copy_queue):
            self._start_copies(node)  # the view changes when a copy lands, not before

    def _start_copies(self, node: str) -> bool:
        if self.warming is None:
            return False
        queue = self._copy_queue.get(node, [])
        started = False
        while queue and self.world.copying(node) < self.warming.max_concurrent_per_node:
            order = queue.pop(0)
            key = (order.model.lower(), order.revision)
            started = self.world.copy(node, key, order.size_bytes) or started
        return started

    def queued_copies(self, node: str) -> list[CopyOrder]:
        return list(self._copy_queue.get(node, []))

    # ---- residency ----------------------------------------------------------------------

    def _seed_caches(self) -> None:
        """The trace's initial caches: in the world, complete files on disk (page cache
        cold); in the view, as the controller would have learned them (a pod of the model
        ran on the node and stopped long ago, past the page-cache window)."""
        ttl = self.tracker.settings.host_memory_ttl_s
        for node, copies in self.trace.initial_cache.items():
            for i, copy in enumerate(copies):
                self.world.seed(
                    node, (copy.model.lower(), copy.revision), copy.size_bytes, -2 * ttl - i
                )
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
                # It ran to readiness (loaded its weights) before the trace began.
                pod["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
                self.tracker.observe_pod(pod, started)
                self.tracker.forget_pod(f"uid-warm-{node}-{i}", started + dt.timedelta(hours=1))
            self.refresh(node)
        for node in self.node_names:
            if node not in self.trace.initial_cache:
                self.refresh(node)

    def refresh(self, node: str) -> None:
        """Publish `node`'s NodeInventory (module docstring)."""
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
        listed = [m.to_dict() for m in models]
        known = {(str(m["name"]).lower(), m.get("revision")) for m in listed}
        # Files warming copies put there: the agent's disk scan reports them.
        for key, entry in self.world.complete_files(node):
            if key not in known and (node, key) in self.world.copied:
                item: dict[str, Any] = {
                    "name": key[0],
                    "sizeBytes": entry.size,
                    "tier": "local-disk",
                }
                if key[1] is not None:
                    item["revision"] = key[1]
                listed.append(item)
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
                    "bandwidth": self.load_model.inventory_bandwidth(),
                    "modelCache": {"capacityBytes": capacity, "models": listed},
                },
            }
        )

    # ---- what policies ask ----------------------------------------------------------------

    def node_state(self, name: str) -> NodeState:
        state = self.store.node(name)
        assert state is not None, name
        return state

    def zone(self, node: str) -> str:
        return self._zones[node]

    def replicas_on(self, node: str, deployment: str) -> int:
        return self._replicas[node].get(deployment, 0)

    def memory_fits(self, demand: PodDemand, node: str) -> bool:
        """Whether the node's GPUs hold the pod's weights + KV budget (fit_on_gpu)."""
        if demand.plan is None:
            return True
        memory = self.node_state(node).gpu_memory_bytes
        if memory <= 0:
            return False
        key = (demand.plan.required_bytes_per_gpu, memory, demand.gpu_memory_utilization)
        fits = self._fits.get(key)
        if fits is None:
            fits = self._fits[key] = fit_on_gpu(
                demand.plan, memory, demand.gpu_memory_utilization
            ).fits
        return fits

    def pod_spec(self, name: str) -> PodSpec:
        return self._pods[name]

    # ---- pods ---------------------------------------------------------------------------

    def arrive(self, pod: PodSpec) -> None:
        obj = pod.object()
        self._pods[pod.name] = pod
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
        hands out; its engine starts loading in the world (module docstring)."""
        state = self.node_state(node)
        topology = state.topology
        assert topology is not None, node
        free_before = self.free_gpus(node)
        if len(free_before) < demand.gpus:
            raise AssertionError(
                f"{pod.name}: {demand.gpus} GPUs asked on {node}, {len(free_before)} free"
            )
        outcome = self.outcomes[pod.name]
        estimate = _estimate(demand, state, self.scoring)
        if estimate is not None:
            outcome.estimated_ready_s = estimate
        key = _key(demand)
        if key is not None:
            outcome.holders = len(self.world.holders(key))
            outcome.loss = self._loss(demand, key, node)
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
        self._bound_objects[pod.name] = bound
        outcome.placed = self.now
        outcome.node = node
        outcome.gpu_ids = gpus
        outcome.node_free = tuple(sorted(free_before))
        outcome.predicted_ids = prediction
        if len(gpus) > 1:
            outcome.best_set = _as_good_as_best(topology, free_before, gpus)
            if prediction is not None:
                outcome.predicted_best_set = _as_good_as_best(topology, free_before, prediction)
        self.used[node] += len(gpus)
        counts = self._replicas[node]
        counts[pod.deployment] = counts.get(pod.deployment, 0) + 1
        outcome.failed_start = not self.memory_fits(demand, node)
        if key is not None and demand.plan is not None:
            size = demand.plan.weights_bytes_stage
            outcome.weights_bytes = size
            outcome.ideal_load_s = size / self.load_model.host_bytes_per_s
            outcome.tier = self.world.start_load(pod.name, node, key, size, self._loaded)
        self.tracker.observe_pod(bound, self.clock())
        self.refresh(node)

    def _loaded(self, pod: str, t: float) -> None:
        outcome = self.outcomes[pod]
        if outcome.failed_start:
            self.world.mark_failed(pod)
            return
        assert outcome.placed is not None
        outcome.load_s = t - outcome.placed
        outcome.ready_s = outcome.load_s + self.scoring.engine_init_seconds
        heapq.heappush(self._ready_due, (outcome.placed + outcome.ready_s, pod))

    def _loss(self, demand: PodDemand, key: ModelKey, chosen: str) -> str:
        """Why the pod's weights will not come from the page cache (LOSSES), from the world
        just before the pod takes its GPUs."""
        world = self.world

        def rank(node: str) -> int:
            fill = world.arriving(node, key)
            if fill is not None:
                return 1 if fill.source == "disk" else 0
            return world.source_rank(node, key)

        got = rank(chosen)
        if got == 2:
            return LOSS_NONE
        roomy = [
            n
            for n in self.node_names
            if len(self.free_gpus(n)) >= demand.gpus and self.memory_fits(demand, n)
        ]
        if any(rank(n) > got for n in roomy):
            return LOSS_COLDER
        holders = world.holders(key)
        if not holders:
            if world.arriving(chosen, key) is not None:
                return LOSS_ARRIVING
            return LOSS_EVICTED if key in world.ever_held else LOSS_FIRST_USE
        fitting = [h for h in holders if self.memory_fits(demand, h)]
        if not fitting:
            return LOSS_NO_FIT
        if not any(len(self.free_gpus(h)) >= demand.gpus for h in fitting):
            same = other = 0
            for holder in fitting:
                for ref in self.held[holder].values():
                    owner = self.outcomes.get(ref.split("/", 1)[1])
                    if owner is not None and owner.model.lower() == key[0]:
                        same += 1
                    else:
                        other += 1
            return LOSS_BUSY_SAME if same >= other else LOSS_BUSY_OTHER
        return LOSS_DISK_ONLY

    def remove(self, pod: PodSpec) -> None:
        """The pod was deleted (its replica departed), placed or not."""
        outcome = self.outcomes[pod.name]
        outcome.departed = self.now
        self.store.delete_pod(pod.uid)
        self._pod_objects.pop(pod.name, None)
        self._bound_objects.pop(pod.name, None)
        if outcome.node is not None:
            self.world.stop(pod.name, failed=outcome.failed_start)
            self.used[outcome.node] -= len(outcome.gpu_ids)
            counts = self._replicas[outcome.node]
            counts[pod.deployment] = counts.get(pod.deployment, 1) - 1
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


def _key(demand: PodDemand) -> ModelKey | None:
    return (demand.model, demand.revision) if demand.model is not None else None


def _as_good_as_best(topology: NodeTopology, free: frozenset[int], gpus: Sequence[int]) -> bool:
    """Whether `gpus` is as good as the best set of its size among `free` (within eps)."""
    best = best_gpu_set(topology.layout, free, len(gpus))
    chosen = score_gpu_set(topology.layout, gpus)
    return best is None or chosen.quality >= best.quality - QUALITY_EPS


def _estimate(demand: PodDemand, state: NodeState, config: ScoringConfig) -> float | None:
    """The core's time-to-ready estimate on `state` as the view shows it (fit aside)."""
    if state.topology is None:
        return None
    everything_free = dataclasses.replace(
        state, free_gpus=frozenset(range(state.topology.gpu_count)), unindexed_busy=0
    )
    cold = evaluate(demand, everything_free, config).cold_start
    return None if cold is None else cold.ready_seconds


def _bound_object(pod: Mapping[str, Any], node: str, gpus: tuple[int, ...]) -> dict[str, Any]:
    """The pod as the watch shows it after the bind: on `node`, Running (not Ready: its
    engine is loading), with kvsched's prediction when there is one (`gpus`; a baseline's
    pod carries none)."""
    meta = dict(pod["metadata"])
    annotations = dict(meta.get("annotations") or {})
    if gpus:
        annotations[A_PREDICTED_GPUS] = GpuPrediction(node, gpus).encode()
    meta["annotations"] = annotations
    spec = dict(pod.get("spec") or {})
    spec["nodeName"] = node
    status = {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]}
    return {**pod, "metadata": meta, "spec": spec, "status": status}


def run_policy(
    trace: Trace,
    policy: Policy,
    catalog: Catalog | None = None,
    scoring: ScoringConfig = DEFAULT_SCORING,
    clock: Callable[[], float] | None = None,
    load_model: LoadModel | None = None,
    warming: Warming | None = None,
) -> RunResult:
    """Replay `trace` under `policy`."""
    import time

    timer = clock or time.perf_counter
    started = timer()
    catalog = catalog if catalog is not None else Catalog.builtin()
    sim = SimCluster(trace, catalog, policy.name, scoring, load_model=load_model, warming=warming)
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
        disk_evictions=sim.world.evictions,
        bytes_copied=sim.world.bytes_copied,
        copies=sim.world.copies_done,
        warming=warming is not None,
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
