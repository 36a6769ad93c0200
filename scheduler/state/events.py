"""Kubernetes Events on pods: where kvsched placed a pod and why, or why it placed it nowhere.

kube-scheduler writes its own `Scheduled` and `FailedScheduling` events; these add kvsched's
side: the weights tier, time to ready and GPU set behind a placement, and the rejections of a
pod that fits no node, counted by kind. They are events.k8s.io/v1 Events, reported by
`kvsched.io/extender`, so `kubectl describe pod` and `kubectl get events` show them.

The extender's verbs sit on the scheduling hot path, so they only offer an event: a dedupe
lookup and a queue put. One writer thread builds the messages and writes them. When the queue
is full the event is dropped (and counted), never waited for.

kube-scheduler retries an unschedulable pod every few seconds, each time calling filter: the
same event of the same pod is written at most once per dedupe window (the spirit of client-go's
event correlator). A rejection event's identity is the pod, its reason and the rejection
counts per kind; when the counts change (a node filled up), that is news and is written.

Placement events (for every pod kvsched placed: offered when the bind verb binds it, or when
the pod watch shows kube-scheduler bound it) are one API write per pod, as many as the pods
scheduled: a token bucket (`placed_per_s`, `placed_burst`)
caps them, so a backlog of thousands costs the API server a sample of them, not one each, while
pods arriving at a human pace all get theirs. The placement is also on the pod itself (the
`kvsched.io/placement` annotation) and in `explain`. The Warning events (why a
pod is pending, a pod kvsched cannot read) are what an operator acts on: deduplicated, never
rate-limited.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol

from cachetools import TTLCache

from scheduler.core.demand import PodDemand
from scheduler.state.contracts import BindResult, FilterResult
from scheduler.state.kube import EventApi, KubeError, micro_time
from scheduler.state.quarantine import Rejection
from scheduler.state.worker import FailureLogLevel, QueueWorker

log = logging.getLogger(__name__)

REPORTING_CONTROLLER = "kvsched.io/extender"
PLACED = "KvschedPlaced"
UNSCHEDULABLE = "KvschedUnschedulable"
BAD_POD_SPEC = "KvschedBadPodSpec"
# A pod kvsched quarantined (scheduler.state.quarantine): its annotations are ignored.
BAD_OBJECT = "KvschedBadObject"
# events.k8s.io/v1 validation: note at most 1 kB, reportingInstance at most 128 characters.
NOTE_LIMIT_BYTES = 1024
INSTANCE_LIMIT = 128
# A DNS subdomain; the event name is the pod's plus "." and 16 hex digits of nanoseconds.
EVENT_NAME_LIMIT = 253
# Distinct rejection messages quoted in an unschedulable event; the rest are counted.
QUOTED_REASONS = 3

DEFAULT_QUEUE_SIZE = 1024
DEFAULT_DEDUPE_TTL_S = 600.0
DEFAULT_DEDUPE_KEYS = 16384
# Placement events: at most this many per second on average, this many at once.
DEFAULT_PLACED_PER_S = 5.0
DEFAULT_PLACED_BURST = 20


class TokenBucket:
    """`burst` tokens, refilled at `rate_per_s`; `take` spends one if there is one. Not
    thread-safe: the recorder calls it under its lock."""

    def __init__(self, rate_per_s: float, burst: int, timer: Callable[[], float]) -> None:
        if not rate_per_s > 0 or burst < 1:
            raise ValueError(
                f"token bucket needs a positive rate and burst, got {rate_per_s}, {burst}"
            )
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._timer = timer
        self._tokens = float(burst)
        self._at = timer()

    def take(self) -> bool:
        now = self._timer()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate_per_s)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class EventObserver(Protocol):
    def event_recorded(self, reason: str, outcome: str) -> None:
        """outcome: written, failed, dropped (queue full or stopped), deduplicated,
        rate_limited (placement events over the token bucket)."""
        ...


class PodEvents(Protocol):
    """What the extender app calls; started and stopped with the app."""

    def start(self) -> None: ...

    def stop(self, timeout_s: float = 1.0) -> None: ...

    def placed(self, namespace: str, name: str, uid: str, result: BindResult) -> None: ...

    def rejected(self, demand: PodDemand, result: FilterResult) -> None: ...

    def bad_object(self, rejection: Rejection) -> None: ...


class NoEvents:
    """Offline mode and `--no-events`: nothing is recorded."""

    def start(self) -> None:
        pass

    def stop(self, timeout_s: float = 1.0) -> None:
        pass

    def placed(self, namespace: str, name: str, uid: str, result: BindResult) -> None:
        pass

    def rejected(self, demand: PodDemand, result: FilterResult) -> None:
        pass

    def bad_object(self, rejection: Rejection) -> None:
        pass


class _NullObserver:
    def event_recorded(self, reason: str, outcome: str) -> None:
        pass


@dataclass(frozen=True, slots=True)
class _Pending:
    """An offered event; `note` is built by the writer thread, off the verb."""

    namespace: str
    name: str
    uid: str
    reason: str
    type: str
    action: str
    note: Callable[[], str]
    at: dt.datetime
    node: str | None = None


def _truncate(text: str, limit: int) -> str:
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode(errors="ignore") + "..."


def placement_note(node: str, result: BindResult) -> str:
    """E.g. `Placed on gpu-7, predicted GPUs 0,1,2,3: weights=host-memory ready~46s
    set=nvlink-complete headroom=18.3 GiB/gpu`, from the placement summary the bind recorded
    on the pod. "Predicted": the node's device plugin picks the GPUs, kvsched foresees them."""
    indices = ",".join(map(str, result.prediction.indices))
    # The summary starts with the GPUs, which the sentence already names.
    detail = result.placement.removeprefix(f"predicted-gpus={indices}").strip()
    gpus = f"predicted GPUs {indices}" if indices else "no GPUs"
    return f"Placed on {node}, {gpus}" + (f": {detail}" if detail else "")


def rejection_note(result: FilterResult) -> str:
    """E.g. `0/3 nodes fit (2 gpu-memory, 1 no-gpus): 2 nodes: NVIDIA-L40S: needs ... | 1 node:
    node has no nvidia.com/gpu`: the kinds of rejection with counts, then the commonest
    messages (kube-scheduler's FailedScheduling lists every distinct one, unclassified)."""
    total = len(result.passed) + len(result.failed) + len(result.unresolvable)
    kinds = ", ".join(
        f"{count} {word}"
        for word, count in sorted(result.rejections.items(), key=lambda item: (-item[1], item[0]))
    )
    texts = Counter(result.failed.values())
    texts.update(result.unresolvable.values())
    quoted = [
        f"{count} {'node' if count == 1 else 'nodes'}: {text}"
        for text, count in texts.most_common(QUOTED_REASONS)
    ]
    if len(texts) > QUOTED_REASONS:
        quoted.append(f"{len(texts) - QUOTED_REASONS} more distinct reasons")
    head = f"{len(result.passed)}/{total} nodes fit" + (f" ({kinds})" if kinds else "")
    return f"{head}: {' | '.join(quoted)}"


def quarantine_note(rejection: Rejection) -> str:
    """E.g. `kvsched cannot read this pod (bad-annotation): kvsched.io/reservation=...: 'expires'
    has no timezone; it ignores the pod's kvsched annotations, and its GPUs count as held
    where it runs`."""
    return (
        f"kvsched cannot read this pod ({rejection.reason}): {rejection.detail}; it ignores the "
        "pod's kvsched annotations, and its GPUs count as held where it runs"
    )


def event_object(pending: _Pending, note: str, instance: str) -> dict[str, Any]:
    """The events.k8s.io/v1 Event, named as client-go names events (object name + time)."""
    stamp = f"{time.time_ns():x}"
    prefix = pending.name[: EVENT_NAME_LIMIT - len(stamp) - 1].rstrip("-.")
    regarding = {
        "apiVersion": "v1",
        "kind": "Pod",
        "namespace": pending.namespace,
        "name": pending.name,
    }
    if pending.uid:
        regarding["uid"] = pending.uid
    event: dict[str, Any] = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": f"{prefix}.{stamp}", "namespace": pending.namespace},
        "eventTime": micro_time(pending.at),
        "reportingController": REPORTING_CONTROLLER,
        "reportingInstance": instance,
        "action": pending.action,
        "reason": pending.reason,
        "type": pending.type,
        "note": _truncate(note, NOTE_LIMIT_BYTES),
        "regarding": regarding,
    }
    if pending.node is not None:
        event["related"] = {"apiVersion": "v1", "kind": "Node", "name": pending.node}
    return event


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class EventRecorder:
    """Events on pods, deduplicated, written by one background thread.

    queue_size: events waiting to be written; more are dropped. dedupe_ttl_s: how long an
    event written (or queued) for a pod suppresses the same one. placed_per_s, placed_burst:
    the placement events' token bucket (module docstring). timer: the dedupe cache's and the
    bucket's clock (monotonic seconds); clock: the events' time.
    """

    def __init__(
        self,
        api: EventApi,
        observer: EventObserver | None = None,
        *,
        instance: str | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        dedupe_ttl_s: float = DEFAULT_DEDUPE_TTL_S,
        dedupe_keys: int = DEFAULT_DEDUPE_KEYS,
        placed_per_s: float = DEFAULT_PLACED_PER_S,
        placed_burst: int = DEFAULT_PLACED_BURST,
        timer: Callable[[], float] = time.monotonic,
        clock: Callable[[], dt.datetime] = _utc_now,
    ) -> None:
        self.api = api
        self.observer: EventObserver = observer or _NullObserver()
        self.instance = (instance or socket.gethostname() or "kvsched")[:INSTANCE_LIMIT]
        self.clock = clock
        self._worker: QueueWorker[_Pending] = QueueWorker("events", self.write, queue_size)
        self._recent: TTLCache[Hashable, bool] = TTLCache(dedupe_keys, dedupe_ttl_s, timer=timer)
        self._placed_tokens = TokenBucket(placed_per_s, placed_burst, timer)
        # Verbs offer from the event loop and from bind threads at once.
        self._lock = threading.Lock()
        self._failure_level = FailureLogLevel()

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._worker.start()

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop taking events, write those already queued, and wait at most `timeout_s`: a
        write stuck on an unreachable API server is abandoned (a daemon thread)."""
        self._worker.stop(timeout_s)

    @property
    def running(self) -> bool:
        return self._worker.running

    # ---- offered by the verbs (hot path: no I/O, no message building) --------------------

    def placed(self, namespace: str, name: str, uid: str, result: BindResult) -> None:
        node = result.prediction.node
        key = (namespace, name, uid, PLACED, (node, result.prediction.indices))
        if not self._admit(key, PLACED):
            return
        with self._lock:
            allowed = self._placed_tokens.take()
        if not allowed:
            with self._lock:
                # Not written: a retry of the same bind may be.
                self._recent.pop(key, None)
            self.observer.event_recorded(PLACED, "rate_limited")
            return
        note = functools.partial(placement_note, node, result)
        self._enqueue(
            key,
            _Pending(namespace, name, uid, PLACED, "Normal", "Binding", note, self.clock(), node),
        )

    def rejected(self, demand: PodDemand, result: FilterResult) -> None:
        """A filter that rejected every node it was asked about (and at least one)."""
        if result.passed or not (result.failed or result.unresolvable):
            return
        error = demand.error
        what: Hashable
        if error is not None:
            # The pod itself is broken: the same sentence for every node, said once.
            reason, what = BAD_POD_SPEC, error
        else:
            reason, what = UNSCHEDULABLE, frozenset(result.rejections.items())
        key = (demand.namespace, demand.name, demand.uid, reason, what)
        if not self._admit(key, reason):
            return
        note: Callable[[], str]
        if error is not None:
            note = functools.partial(str, error)
        else:
            note = functools.partial(rejection_note, result)
        self._enqueue(
            key,
            _Pending(
                demand.namespace,
                demand.name,
                demand.uid,
                reason,
                "Warning",
                "Scheduling",
                note,
                self.clock(),
            ),
        )

    def bad_object(self, rejection: Rejection) -> None:
        """A quarantined pod that carries kvsched annotations (its owner meant kvsched to read
        them): a Warning on the pod, once per pod version and problem."""
        if rejection.kind != "Pod" or not rejection.kvsched or not rejection.name:
            return
        namespace = rejection.namespace or "default"
        key = (namespace, rejection.name, rejection.uid, BAD_OBJECT, rejection.detail)
        if not self._admit(key, BAD_OBJECT):
            return
        note = functools.partial(quarantine_note, rejection)
        self._enqueue(
            key,
            _Pending(
                namespace,
                rejection.name,
                rejection.uid,
                BAD_OBJECT,
                "Warning",
                "Reading",
                note,
                self.clock(),
            ),
        )

    def _admit(self, key: Hashable, reason: str) -> bool:
        """Whether an event is news: not stopped, and not offered within the dedupe window."""
        if self._worker.closed:
            self.observer.event_recorded(reason, "dropped")
            return False
        with self._lock:
            duplicate = key in self._recent
            if not duplicate:
                self._recent[key] = True
        if duplicate:
            self.observer.event_recorded(reason, "deduplicated")
        return not duplicate

    def _enqueue(self, key: Hashable, pending: _Pending) -> None:
        if not self._worker.offer(pending):
            with self._lock:
                # Not written: a later occurrence may try again.
                self._recent.pop(key, None)
            self.observer.event_recorded(pending.reason, "dropped")

    # ---- the writer thread --------------------------------------------------------------

    def write(self, pending: _Pending) -> None:
        """Write one event; a failure is counted and logged, never raised."""
        try:
            event = event_object(pending, pending.note(), self.instance)
            self.api.create_event(pending.namespace, event)
        except KubeError as exc:
            self._failed(pending, str(exc))
            return
        except Exception as exc:  # a bug in a message must not end the writer
            log.exception("event %s on %s/%s", pending.reason, pending.namespace, pending.name)
            self._failed(pending, repr(exc))
            return
        self.observer.event_recorded(pending.reason, "written")

    def _failed(self, pending: _Pending, error: str) -> None:
        self.observer.event_recorded(pending.reason, "failed")
        log.log(
            self._failure_level.next(),
            "cannot write event %s on pod %s/%s: %s",
            pending.reason,
            pending.namespace,
            pending.name,
            error,
        )
