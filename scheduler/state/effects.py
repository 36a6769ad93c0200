"""Effects: the API writes a state change calls for, carried out after it, off the verb.

The gang coordinator changes the store's state under its lock and *returns* what must be
written to the API server (a member's reservation annotation written or cleared) instead of
writing it; the store hands the effects to an `EffectRunner` once the lock is released. So no
verb performs API I/O, and nothing waits on a lock held across API I/O.

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
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from scheduler.core.assignment import GpuReservation
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

    def apply(self, binder: Binder) -> None:
        binder.reserve(self.namespace, self.name, self.reservation)


# The one kind of effect so far; a union as more appear.
Effect = WriteReservation


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
            "gang %s: cannot write %s on pod %s/%s (the plan stands, but is not durable): %s",
            effect.gang,
            effect.kind,
            effect.namespace,
            effect.name,
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
                log.warning(
                    "gang %s: effect queue full; %s on %s/%s dropped (not durable)",
                    effect.gang,
                    effect.kind,
                    effect.namespace,
                    effect.name,
                )

    def pending(self) -> int:
        """Effects queued and not yet written."""
        return self._worker.pending()
