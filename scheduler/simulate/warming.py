"""The warming controller's planner (:func:`scheduler.core.warming.plan_warming`, called, not
copied) driving the simulator's warming hook (:class:`scheduler.simulate.engine.Warming`).

Each round this adapter hands the planner what the controller would have:

* **demand** per model key seen so far (model, revision): running replicas (placed pods not
  yet departed), pending pods, scale-ups (pods that arrived within ``scale_up_window_s``) and
  when it was last active; the next replica's demand is that of the latest pod of the key;
* **nodes**: the view's node states (what the NodeInventory shows: free GPUs, models by
  tier, warmed copies once they landed), the node's cache capacity as disk budget, the spec
  the last round wanted (``desired``), and the agent's progress: ``copying`` with the bytes
  done for a copy under way, ``queued`` for one waiting in the node's queue, ``done`` once it
  landed.

The plan's ``add`` changes become :class:`CopyOrder` s; withdrawals need nothing (the agent
never deletes a model just because it left the list; LRU eviction within the budget does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from scheduler.core.demand import PodDemand
from scheduler.core.warming import (
    CopyProgress,
    ModelDemand,
    WarmingNode,
    WarmingSettings,
    WarmingTarget,
    plan_warming,
)
from scheduler.simulate.engine import CopyOrder, SimCluster

ModelKey = tuple[str, str | None]


@dataclass
class _Seen:
    name: str  # the hub spelling
    demand: PodDemand
    last_active: float | None = None


@dataclass
class PlannerWarming:
    """A :class:`~scheduler.simulate.engine.WarmingPlanner` backed by the real planner."""

    settings: WarmingSettings = field(default_factory=WarmingSettings)
    scale_up_window_s: float = 600.0
    rounds: int = 0
    _desired: dict[str, tuple[WarmingTarget, ...]] = field(default_factory=dict)
    _seen: dict[ModelKey, _Seen] = field(default_factory=dict)

    @property
    def desired(self) -> dict[str, tuple[WarmingTarget, ...]]:
        """Every node's wanted models after the last round (its spec.warming)."""
        return dict(self._desired)

    def __call__(self, sim: SimCluster) -> Sequence[CopyOrder]:
        self.rounds += 1
        now = sim.now
        running: dict[ModelKey, int] = {}
        pending: dict[ModelKey, int] = {}
        scale_ups: dict[ModelKey, int] = {}
        for outcome in sorted(sim.outcomes.values(), key=lambda o: o.arrived):
            if outcome.departed is not None:
                continue
            spec = sim.pod_spec(outcome.name)
            demand = sim.store.demand(spec.object())
            if demand.model is None or demand.plan is None or demand.error is not None:
                continue
            key = (demand.model, demand.revision)
            seen = self._seen.get(key)
            if seen is None:
                seen = self._seen[key] = _Seen(spec.model, demand)
            seen.demand = demand  # the latest pod's shape is the next replica's
            seen.last_active = now
            if outcome.placed is None:
                pending[key] = pending.get(key, 0) + 1
            else:
                running[key] = running.get(key, 0) + 1
            if now - outcome.arrived <= self.scale_up_window_s:
                scale_ups[key] = scale_ups.get(key, 0) + 1
        demands = [
            ModelDemand(
                seen.name,
                seen.demand,
                running=running.get(key, 0),
                pending=pending.get(key, 0),
                scale_ups=scale_ups.get(key, 0),
                last_active=seen.last_active,
            )
            for key, seen in sorted(self._seen.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))
        ]
        nodes = [self._node(sim, name) for name in sim.node_names]
        plan = plan_warming(demands, nodes, now, self.settings)
        self._desired = {node: tuple(targets) for node, targets in plan.desired.items()}
        orders = []
        for change in plan.changes:
            if change.action != "add":
                continue
            target = next(
                t
                for t in plan.desired[change.node]
                if t.key == (change.name.lower(), change.revision)
            )
            size = target.size_bytes
            if size is None:
                raise ValueError(f"warming target {change.name} on {change.node} has no size")
            orders.append(CopyOrder(change.node, change.name, change.revision, size))
        return orders

    def _node(self, sim: SimCluster, name: str) -> WarmingNode:
        desired = self._desired.get(name, ())
        progress = []
        queued = {(o.model.lower(), o.revision) for o in sim.queued_copies(name)}
        for target in desired:
            key = target.key
            fill = sim.world.arriving(name, key)
            if sim.world.on_disk(name, key):
                progress.append(CopyProgress(target.name, "done", target.revision))
            elif fill is not None and fill.source == "copy":
                done = int(fill.size - (fill.flow.remaining if fill.flow is not None else 0))
                progress.append(
                    CopyProgress(target.name, "copying", target.revision, done, fill.size)
                )
            elif key in queued:
                progress.append(CopyProgress(target.name, "queued", target.revision))
        return WarmingNode(
            sim.node_state(name),
            sim.nodes[name].cache_bytes,
            desired=desired,
            progress=tuple(progress),
        )
