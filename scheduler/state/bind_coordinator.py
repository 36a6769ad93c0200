"""The bind coordinator: kube-scheduler's bind call as a transaction over the node cache.

1. Under the store's lock: choose the pod's GPUs on the node (a gang member takes the GPUs
   its plan reserved; any other pod is evaluated again, from the demand filter saw), and
   **assume** them in the node cache, so that no other bind or filter can get them.
2. Outside the lock, in the caller's worker thread: the binder makes the bind durable (in
   cluster mode, pods/binding carrying the GPU prediction). Filters for the next pods do not
   wait behind it.
3. Under the lock again: on success the assumption stands until the watch confirms it (an
   API server that reports an earlier binding with other GPUs wins: those are adopted); on
   failure it is **forgotten**: the GPUs go back, a gang member's reservation is restored,
   unless the watch showed the pod bound to that node meanwhile (the call timed out after
   the server applied it: the server's view wins, and rolling back would free GPUs a running
   pod holds).

Without a bindVerb (the shipped configuration: kube-scheduler binds with its own Go client
in its binding cycle), there is no bind call: `learn` is step 1 done when the pod watch shows
the binding, and step 2 (the prediction written on the pod) an effect after it (see its
docstring). The bind verb stays served for the configuration that names it
(manifests/scheduler/scheduler-config-bind.yaml).

Idempotent: a retry for a pod already bound to that node answers the same GPUs. A retry that
arrives while an earlier bind of the same pod still waits on the API server (kube-scheduler
gave up after its httpTimeout) waits for that call's outcome, up to `retry_wait_s`, then
fails so that kube-scheduler tries again: answering "bound" from the unconfirmed record would
be a lie if that call then failed (kube-scheduler would never schedule the pod again).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from scheduler.core.assignment import GpuPrediction, uuids_for
from scheduler.core.demand import parse_demand
from scheduler.core.node import NodeState
from scheduler.core.placement import ScoringConfig, evaluate
from scheduler.models.catalog import Catalog
from scheduler.state.contracts import Binder, BindError, BindResult
from scheduler.state.effects import Effect, RecordPlacement
from scheduler.state.gang_coordinator import GangCoordinator
from scheduler.state.gangs import Reserved
from scheduler.state.nodecache import NodeCache
from scheduler.state.objects import PodRecord, gang_key, pod_record
from scheduler.state.pending import PendingPods
from topology.deviceplugin import predict_allocation

log = logging.getLogger(__name__)

__all__ = ["BindCoordinator", "gpu_prediction"]


@dataclass(frozen=True, slots=True)
class _BindCall:
    """A bind waiting on the API server; `done` is set when it has succeeded or failed."""

    done: threading.Event = field(default_factory=threading.Event)


def gpu_prediction(node: str, state: NodeState, indices: tuple[int, ...]) -> GpuPrediction:
    """The chosen GPUs with their UUIDs where the node's inventory knows them."""
    topology = state.topology
    uuid_by_index = [g.uuid for g in topology.gpus] if topology is not None else []
    return GpuPrediction(node, indices, uuids_for(indices, uuid_by_index))


def _gpus_placement(indices: tuple[int, ...]) -> str:
    return f"predicted-gpus={','.join(map(str, indices))}"


def _gang_placement(indices: tuple[int, ...], gang: str) -> str:
    return f"{_gpus_placement(indices)} gang={gang}"


class BindCoordinator:
    def __init__(
        self,
        cache: NodeCache,
        gangs: GangCoordinator,
        pending: PendingPods,
        binder: Binder,
        catalog: Catalog,
        scoring: ScoringConfig,
        retry_wait_s: float = 2.0,
        pod_groups: Mapping[str, int] | None = None,
    ) -> None:
        self.cache = cache
        self.gangs = gangs
        self.pending = pending
        self.binder = binder
        self.catalog = catalog
        self.scoring = scoring
        self.retry_wait_s = retry_wait_s
        self.pod_groups: Mapping[str, int] = pod_groups if pod_groups is not None else {}
        # Binds waiting on the API server, by pod UID.
        self._in_flight: dict[str, _BindCall] = {}

    def bind(self, namespace: str, name: str, uid: str, node_name: str) -> BindResult:
        """Bind the pod to `node_name` (see the module docstring). Blocks on the API server:
        call it from a worker thread, never from the event loop."""
        lock = self.cache.lock
        while True:
            with lock:
                earlier = self._in_flight.get(uid)
                if earlier is None:
                    existing = self.cache.pods.get(uid)
                    if existing is not None and existing.node is not None:
                        if existing.node != node_name:
                            raise BindError(
                                f"pod {namespace}/{name} is already bound to {existing.node}, "
                                f"not {node_name}"
                            )
                        if existing.prediction is not None:
                            return BindResult(
                                existing.prediction, "already bound", already_bound=True
                            )
                    reserved = self.gangs.reservation(uid)
                    if reserved is not None:
                        record, placement = self._claim_reserved(reserved, node_name)
                    else:
                        record, placement = self._claim(namespace, name, uid, node_name)
                    assert record.prediction is not None
                    mine = self._in_flight[uid] = _BindCall()
                    self.cache.assume(record)
                    break
            if not earlier.done.wait(self.retry_wait_s):
                raise BindError(
                    f"pod {namespace}/{name}: an earlier bind is still waiting on the API "
                    "server; try again later"
                )
            # Done: succeeded (the record says so now) or failed (GPUs given back): look again.
        try:
            recorded = self.binder.bind(record, record.prediction, placement)
            if recorded is not None and recorded != record.prediction:
                # Bound before, by a call whose answer was lost: the GPUs that binding wrote
                # on the pod are the ones it holds, not the ones chosen just now.
                with lock:
                    if self.cache.pods.get(uid) is record:
                        self.cache.assume(dataclasses.replace(record, prediction=recorded))
                return BindResult(recorded, "already bound", already_bound=True)
        except BindError:
            with lock:
                seen = self.cache.forget(record, existing)
                if seen is not None and seen.node == node_name and seen.prediction is not None:
                    # The watch showed the pod bound while the call was under way.
                    log.info("bind %s: the call failed, but the pod is bound", seen.ref)
                    return BindResult(seen.prediction, "bound", already_bound=True)
                if reserved is not None:
                    self.gangs.book.restore(reserved)
                self.cache.rebuild(node_name)
            raise
        finally:
            with lock:
                del self._in_flight[uid]
            mine.done.set()
        return BindResult(record.prediction, placement, already_bound=False)

    def learn(self, record: PodRecord) -> tuple[PodRecord, list[Effect]]:
        """A pod the watch shows bound to a node with no usable prediction of ours (lock held,
        before the cache records it): kube-scheduler bound it itself (the shipped profile has
        no bindVerb), or another scheduler did. Its GPUs are predicted now, over the node's GPUs
        as kvsched sees them before this pod, as the bind would have: a gang member's from its
        plan's reservation, a pod this extender filtered by the same evaluation the bind makes,
        any other pod's with the device plugin's policy over the free GPUs. Pods are learned in
        watch order, which on one node is bind order, so no two predictions overlap.

        A pod this extender placed (it filtered it, or planned its gang) gets a
        `RecordPlacement`: its placement event and, on a node whose kubelet allocation no agent
        reports, its prediction and placement written on it as the bind would have written
        them, by the effect writer after the lock, off every verb. That record is what a
        restarted extender and the controller's allocation mirror read; on a node whose agent
        reports the kubelet's truth they read that truth instead (within one agent cycle), so
        the write (a second pod write, and a second pod event for kube-scheduler and every pod
        watcher: measured to cost about what the bind verb does, docs/benchmarks.md) is
        skipped there. A pod some other scheduler placed is predicted, not annotated: kvsched
        did not place it.

        kube-scheduler does not see kvsched's gang reservations: a pod it bound where only
        reserved GPUs were left took some of a plan's room. Those plans are released (their
        members are planned again at their next filter, where they would otherwise find the
        node full until the plan expired); the clears are returned as effects.

        Without a topology for the node, or fewer free GPUs than the pod asks for even then,
        the record is kept as it is (its GPUs count as held, unindexed)."""
        node = record.node
        entry = self.cache.entries.get(node) if node is not None else None
        if node is None or entry is None or entry.state.topology is None:
            return record, []
        effects: list[Effect] = []
        placement: str | None = None
        reserved = self.gangs.reservation(record.uid)
        if reserved is not None and reserved.reservation.node == node:
            planned = self._current_prediction(reserved, entry.state)
            indices: tuple[int, ...] | None = planned
            placement = _gang_placement(planned, reserved.reservation.gang)
        else:
            free = entry.state.usable_free_gpus
            if len(free) < record.gpus and self.gangs.book.gangs_on(node):
                for gang in sorted(self.gangs.book.gangs_on(node)):
                    log.info(
                        "gang %s: %s was bound onto GPUs the plan held on %s; planning again",
                        gang,
                        record.ref,
                        node,
                    )
                    effects += self.gangs.release(gang)
                entry = self.cache.entries.get(node) or entry
                free = entry.state.usable_free_gpus
            demand = self.pending.demand(record.uid)
            evaluation = evaluate(demand, entry.state, self.scoring) if demand is not None else None
            if evaluation is not None and evaluation.fits and len(evaluation.gpus) == record.gpus:
                indices, placement = evaluation.gpus, evaluation.summary()
            else:
                topology = entry.state.topology
                assert topology is not None
                predicted = predict_allocation(topology.layout, free, record.gpus)
                indices = predicted.gpus if predicted is not None else None
                if demand is not None and indices is not None:
                    # Ours, though it no longer fits as kvsched sees the node (something
                    # changed between filter and the binding): the prediction alone.
                    placement = _gpus_placement(indices)
        if indices is None:
            return record, effects
        prediction = gpu_prediction(node, entry.state, indices)
        if placement is not None:
            effects.append(
                RecordPlacement(
                    record.namespace,
                    record.name,
                    record.uid,
                    prediction,
                    placement,
                    annotate=not self.cache.kubelet_reports(node),
                )
            )
        return dataclasses.replace(record, prediction=prediction), effects

    def _claim(self, namespace: str, name: str, uid: str, node_name: str) -> tuple[PodRecord, str]:
        demand = self.pending.demand(uid)
        if demand is None:
            # E.g. filter ran before a restart of ours: the watched pod says the same.
            obj = self.cache.pod_object(namespace, name)
            if obj is not None and pod_record(obj).uid == uid:
                demand = parse_demand(obj, self.catalog, self.pod_groups)
        if demand is None:
            raise BindError(
                f"pod {namespace}/{name} (uid {uid}) was not seen by filter: cannot bind"
            )
        entry = self.cache.entries.get(node_name)
        if entry is None:
            raise BindError(f"node {node_name} unknown to kvsched")
        evaluation = evaluate(demand, entry.state, self.scoring)
        if not evaluation.fits:
            raise BindError(
                f"pod {namespace}/{name} no longer fits {node_name}: {evaluation.reason}"
            )
        record = PodRecord(
            uid=uid,
            namespace=namespace,
            name=name,
            node=node_name,
            gpus=demand.gpus,
            prediction=gpu_prediction(node_name, entry.state, evaluation.gpus),
            model=demand.model,
            phase="Pending",
            gang=demand.gang.key if demand.gang is not None else None,
            gang_id=self.gangs.gang_id(demand) if demand.gang is not None else None,
            gang_size=demand.gang.size if demand.gang is not None else None,
            role=demand.role,
        )
        return record, evaluation.summary()

    def _claim_reserved(self, reserved: Reserved, node_name: str) -> tuple[PodRecord, str]:
        """A gang member binds onto the GPUs its plan reserved (no re-evaluation: the plan
        already judged the node, and the GPUs are held for it).

        The reserved indices are kvsched's prediction at planning time. When the kubelet has
        since handed some of them to another pod (the device plugin chose differently for an
        earlier member: its truth holds them now), the member's prediction is made again over
        the GPUs that are really free plus its own untouched reserved ones, as the device
        plugin will see them; a stale prediction would name GPUs someone else holds."""
        plan = reserved.reservation
        if node_name != plan.node:
            raise BindError(
                f"gang {plan.gang}: {reserved.name} is planned on {plan.node}, not {node_name}"
            )
        entry = self.cache.entries.get(node_name)
        if entry is None:
            raise BindError(f"node {node_name} unknown to kvsched")
        indices = self._current_prediction(reserved, entry.state)
        record = PodRecord(
            uid=reserved.uid,
            namespace=reserved.namespace,
            name=reserved.name,
            node=node_name,
            gpus=len(plan.indices),
            prediction=gpu_prediction(node_name, entry.state, indices),
            model=None,
            phase="Pending",
            gang=gang_key(plan.gang),
            gang_id=plan.gang,
        )
        return record, _gang_placement(indices, plan.gang)

    @staticmethod
    def _current_prediction(reserved: Reserved, state: NodeState) -> tuple[int, ...]:
        plan = reserved.reservation
        own = f"{reserved.namespace}/{reserved.name}"
        taken = {i for i, holder in state.holders.items() if holder.pod != own}
        if state.topology is None or not taken.intersection(plan.indices):
            return plan.indices
        candidates = state.free_gpus | (frozenset(plan.indices) - taken)
        predicted = predict_allocation(state.topology.layout, candidates, len(plan.indices))
        if predicted is None:  # fewer GPUs free than the member needs: keep the plan's
            return plan.indices
        log.info(
            "gang %s: %s planned on GPUs %s, now partly held by others; predicted %s",
            plan.gang,
            own,
            list(plan.indices),
            list(predicted.gpus),
        )
        return predicted.gpus
