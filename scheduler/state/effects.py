"""Effects: the API writes a state change calls for, carried out after it, off the verb.

The store's coordinators change its state under its lock and *return* what must be written to
the API server instead of writing it: a gang member's reservation annotation written or
cleared (the gang coordinator), and the GPU prediction and placement of a pod kube-scheduler
bound after this extender placed it, on a node whose agent does not report the kubelet's
allocation (the bind coordinator's `learn`: the shipped profile has no bindVerb). The store
hands the effects to an `EffectRunner` once the lock is released. So no verb and no watch event
performs API I/O, and nothing waits on a lock held across API I/O.

Runners:

* `InlineEffects`: carries them out at once, in the caller's thread, after the lock is
  released. For offline mode and the simulator, whose binder only logs.
* `EffectWriter`: cluster mode. One writer thread and a bounded queue (the pattern of the
  pod event recorder, scheduler.state.events): submitting is a queue put, never a wait. One
  thread in FIFO order keeps every pod's writes in the order they were decided (a write, then
  its clear). When the queue is full the effect is dropped; a write that fails is logged
  (rate-limited) and counted; neither is retried.

What a lost reservation write means: the plan stands in the store, which is the authority
while it runs; the annotation only makes the plan **durable** across a restart of the
extender. A reservation that could not be written is therefore only not durable: an extender
restarted before the members bind plans the group again. A clear that is lost leaves a stale
annotation, which matters only to an extender restarted before it expires (at most the gang
TTL); a reservation whose time is up is ignored when read back.

What a lost placement write means: the store keeps the prediction it learned (the authority
while the extender runs); the pod only lacks the `kvsched.io/predicted-gpus` and
`kvsched.io/placement` annotations, so the controller's allocation mirror does not show it and
an extender restarted later counts its GPUs as held, unindexed, until the node agent reports
the kubelet's truth.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from scheduler.core.assignment import GpuPrediction, GpuReservation
from scheduler.state.contracts import Binder
from scheduler.state.worker import FailureLogLevel, QueueWorker

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_QUEUE_SIZE",
    "Effect",
    "EffectObserver",
    "EffectRunner",
    "EffectWriter",
    "InlineEffects",
    "RecordPlacement",
    "WriteReservation",
]

DEFAULT_QUEUE_SIZE = 4096
# Logging every failure of an unreachable API server would flood the log; the metric counts.


@dataclass(frozen=True, slots=True)
class WriteReservation:
    """Write a gang member's reservation on the member pod (`kvsched.io/reservation`), or with
    `reservation` None, remove it."""

    namespace: str
    name: str
    gang: str
    reservation: GpuReservation | None

    @property
    def kind(self) -> str:
        return "reservation" if self.reservation is not None else "reservation-clear"

    @property
    def subject(self) -> str:
        return f"gang {self.gang}: {self.kind} on {self.namespace}/{self.name}"

    def apply(self, binder: Binder) -> None:
        binder.reserve(self.namespace, self.name, self.reservation)


@dataclass(frozen=True, slots=True)
class RecordPlacement:
    """Write kvsched's GPU prediction and placement summary on a pod kube-scheduler bound
    after this extender filtered it (`kvsched.io/predicted-gpus`, `kvsched.io/placement`), on
    that very pod (`uid`): what the bind verb wrote with the binding, written after it."""

    namespace: str
    name: str
    uid: str
    prediction: GpuPrediction
    placement: str
    # False on a node whose agent reports the kubelet's allocation: only the placement event
    # is offered (the store does that); nothing is written, the kubelet's truth will say it.
    annotate: bool = True

    @property
    def kind(self) -> str:
        return "placement"

    @property
    def subject(self) -> str:
        return f"placement of {self.namespace}/{self.name}"

    def apply(self, binder: Binder) -> None:
        binder.record_placement(
            self.namespace, self.name, self.uid, self.prediction, self.placement
        )


Effect = WriteReservation | RecordPlacement


class EffectObserver(Protocol):
    def effect_done(self, kind: str, outcome: str) -> None:
        """outcome: written, failed, dropped (queue full or stopped)."""
        ...


class EffectRunner(Protocol):
    """Where the store sends effects (after releasing its lock); started and stopped with
    the app."""

    def start(self) -> None: ...

    def stop(self, timeout_s: float = 1.0) -> None: ...

    def submit(self, effects: Sequence[Effect]) -> None:
        """Carry out `effects` in order, now or later; never raises."""
        ...


class _NullObserver:
    def effect_done(self, kind: str, outcome: str) -> None:
        pass


class _Applier:
    """Applies effects through a binder; failures are counted and logged, never raised."""

    def __init__(self, binder: Binder, observer: EffectObserver | None) -> None:
        self.binder = binder
        self.observer: EffectObserver = observer or _NullObserver()
        self._failure_level = FailureLogLevel()

    def apply(self, effect: Effect) -> None:
        try:
            effect.apply(self.binder)
        except Exception as exc:  # a BindError, or a bug: never the end of the writer
            self._failed(effect, exc)
            return
        self.observer.effect_done(effect.kind, "written")

    def _failed(self, effect: Effect, exc: Exception) -> None:
        self.observer.effect_done(effect.kind, "failed")
        log.log(
            self._failure_level.next(),
            "cannot write %s (the store keeps it, but it is not durable): %s",
            effect.subject,
            exc,
        )


class InlineEffects:
    """Effects carried out at once by the submitting thread (which holds no lock)."""

    def __init__(self, binder: Binder, observer: EffectObserver | None = None) -> None:
        self._applier = _Applier(binder, observer)

    def start(self) -> None:
        pass

    def stop(self, timeout_s: float = 1.0) -> None:
        pass

    def submit(self, effects: Sequence[Effect]) -> None:
        for effect in effects:
            self._applier.apply(effect)


class EffectWriter:
    """Effects written by one background thread, in submission order, from a bounded queue."""

    def __init__(
        self,
        binder: Binder,
        observer: EffectObserver | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
    ) -> None:
        self._applier = _Applier(binder, observer)
        self._worker: QueueWorker[Effect] = QueueWorker("effects", self._applier.apply, queue_size)

    @property
    def observer(self) -> EffectObserver:
        return self._applier.observer

    @observer.setter
    def observer(self, observer: EffectObserver) -> None:
        self._applier.observer = observer

    def start(self) -> None:
        self._worker.start()

    def stop(self, timeout_s: float = 1.0) -> None:
        """Take no more, write what is queued, and wait at most `timeout_s`: a write stuck on
        an unreachable API server is abandoned (a daemon thread)."""
        self._worker.stop(timeout_s)

    def submit(self, effects: Sequence[Effect]) -> None:
        for effect in effects:
            if self._worker.offer(effect):
                continue
            self._applier.observer.effect_done(effect.kind, "dropped")
            if not self._worker.closed:
                log.warning("effect queue full; %s dropped (not durable)", effect.subject)

    def pending(self) -> int:
        """Effects queued and not yet written."""
        return self._worker.pending()
