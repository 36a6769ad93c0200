"""What the store promises its callers and asks of its binder: verb results, errors, protocols.

Every piece of the store (scheduler.state.nodecache, .memo, .gang_coordinator,
.bind_coordinator, and the ClusterStore facade in .store) speaks these types, and so do the
layers around it (the extender app, the event recorder, the simulator), so they live apart
from any one piece.

* `FilterResult`, `BindResult`: what filter and bind answer (the extender turns them into
  wire JSON; the event recorder into Events).
* `BindError`: a bind (or a reservation write) that must not or could not happen.
* `Binder`: the one place where binds, gang reservations and learned placements become
  durable: in cluster mode pods/binding and pod annotations (scheduler.state.binder), offline
  only the store's memory. `bind` runs in a bind worker thread, outside the store's lock;
  `reserve` and `record_placement` run only in the effect writer (scheduler.state.effects),
  never in a verb.
* `StoreObserver`: told what the node cache learns while it rebuilds nodes (metrics).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from scheduler.core.assignment import GpuPrediction, GpuReservation
from scheduler.state.objects import PodRecord

log = logging.getLogger(__name__)

__all__ = [
    "BindError",
    "BindResult",
    "Binder",
    "FilterResult",
    "InMemoryBinder",
    "StoreObserver",
]


class BindError(RuntimeError):
    """A bind that must not happen (the node no longer fits, the pod was never seen...), or
    an API write that failed."""


@dataclass(frozen=True, slots=True)
class FilterResult:
    passed: list[str]
    failed: dict[str, str]
    unresolvable: dict[str, str]
    # Rejected nodes per NodeEvaluation.rejection word (for metrics).
    rejections: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BindResult:
    prediction: GpuPrediction
    placement: str
    already_bound: bool


class Binder(Protocol):
    """Makes binds and gang reservations durable. Offline mode keeps them in memory; cluster
    mode posts pods/binding and annotates pods."""

    def bind(
        self, pod: PodRecord, prediction: GpuPrediction, placement: str
    ) -> GpuPrediction | None:
        """Bind `pod` with `prediction`. Returns None, or, when the API server had bound the
        pod already (an earlier call that went through), the GPUs that binding recorded."""
        ...

    def reserve(self, namespace: str, name: str, reservation: GpuReservation | None) -> None:
        """Record (or with None, clear) a gang member's reservation on the member pod."""
        ...

    def record_placement(
        self, namespace: str, name: str, uid: str, prediction: GpuPrediction, placement: str
    ) -> None:
        """Record the GPU prediction and placement of a pod bound by someone else (kube-scheduler,
        after this extender placed it) on the pod with that `uid`."""
        ...


class StoreObserver(Protocol):
    """Told about what the store learns as it rebuilds nodes (the extender's metrics)."""

    def prediction_mismatch(self, node: str, pod: str) -> None:
        """The kubelet gave `pod` other GPUs than kvsched predicted (counted once per pod and
        GPU set)."""
        ...


class InMemoryBinder:
    """Offline mode: the store's own record is the only record."""

    def bind(
        self, pod: PodRecord, prediction: GpuPrediction, placement: str
    ) -> GpuPrediction | None:
        log.info("bound %s to %s gpus=%s (%s)", pod.ref, pod.node, prediction.indices, placement)
        return None

    def reserve(self, namespace: str, name: str, reservation: GpuReservation | None) -> None:
        pass

    def record_placement(
        self, namespace: str, name: str, uid: str, prediction: GpuPrediction, placement: str
    ) -> None:
        log.info(
            "placed %s/%s on %s gpus=%s (%s)",
            namespace,
            name,
            prediction.node,
            prediction.indices,
            placement,
        )
