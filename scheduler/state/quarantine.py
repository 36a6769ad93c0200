"""Objects kvsched cannot understand: counted, logged once per version, reported, ignored.

Any user who can create a pod can put anything in it. A Pod, Node or NodeInventory that
cannot be converted is *quarantined*: the conversion's exception stops at the object (a watch
or relist never dies on it), the rejection is counted by kind and reason (the extender's
`kvsched_objects_rejected_total{kind,reason}`), logged once per object version (a relist does
not log it again), and offered to listeners (the extender's event recorder writes a Warning
Event on a pod that carries kvsched annotations). What the store still uses of a quarantined
pod is only what Kubernetes itself vouches for: where it runs and how many GPUs it requests
(see `objects.read_pod`).

Reasons are short fixed words: `bad-annotation` (a kvsched annotation that does not parse),
`bad-spec` (the pod's GPU request cannot be read), `unreadable` (the object's structure is
not a Kubernetes object's, or its conversion failed in some other way).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache

log = logging.getLogger(__name__)

BAD_ANNOTATION = "bad-annotation"
BAD_SPEC = "bad-spec"
UNREADABLE = "unreadable"
REASONS = (BAD_ANNOTATION, BAD_SPEC, UNREADABLE)

# Echoed values are cut here (a 256 KiB annotation must not become a 256 KiB log line).
DETAIL_LIMIT = 200
# Object versions remembered as already reported; more are forgotten oldest first.
DEFAULT_REMEMBERED = 16384


def clip(text: str, limit: int = DETAIL_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class Problem:
    """Why an object cannot be (fully) understood: a fixed reason word and a short detail."""

    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Rejection:
    """One quarantined object version."""

    kind: str
    key: str  # the object's identity in the store: a pod's UID, a node's name
    namespace: str
    name: str
    uid: str
    version: str
    reason: str
    detail: str
    kvsched: bool  # the object carries kvsched.io/ annotations (an event is worth writing)


Listener = Callable[[Rejection], None]


def identity(obj: object) -> tuple[str, str, str, str, bool]:
    """(namespace, name, uid, resourceVersion, has kvsched annotations), as far as readable;
    never raises."""
    try:
        meta = obj.get("metadata") if isinstance(obj, Mapping) else None
        if not isinstance(meta, Mapping):
            return "", "", "", "", False
        fields = [meta.get(k) for k in ("namespace", "name", "uid", "resourceVersion")]
        namespace, name, uid, version = (clip(f, 253) if isinstance(f, str) else "" for f in fields)
        annotations = meta.get("annotations")
        kvsched = isinstance(annotations, Mapping) and any(
            isinstance(k, str) and k.startswith("kvsched.io/") for k in annotations
        )
        return namespace, name, uid, version, kvsched
    except Exception:  # a pathological mapping: nothing more can be said about it
        return "", "", "", "", False


class Quarantine:
    """The book of rejected objects (thread-safe: informer threads and verbs use it)."""

    def __init__(self, remembered: int = DEFAULT_REMEMBERED) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()
        self._reported: LRUCache[tuple[str, str, str, str], bool] = LRUCache(remembered)
        self._current: dict[tuple[str, str], Rejection] = {}
        self.listeners: list[Listener] = []

    def reject(self, kind: str, key: str, obj: object, problem: Problem) -> Rejection:
        """Record that this version of the object is quarantined; counts, logs and notifies
        only the first time a version is seen."""
        namespace, name, uid, version, kvsched = identity(obj)
        rejection = Rejection(
            kind,
            key,
            namespace,
            name,
            uid,
            version,
            problem.reason,
            clip(problem.detail),
            kvsched,
        )
        seen = (kind, key, version, problem.reason)
        with self._lock:
            self._current[(kind, key)] = rejection
            if seen in self._reported:
                return rejection
            self._reported[seen] = True
            self._counts[(kind, problem.reason)] += 1
        where = f"{namespace}/{name}" if namespace else name or "(unnamed)"
        log.warning(
            "quarantined %s %s (%s, version %s): %s; ignored for placement",
            kind,
            where,
            problem.reason,
            version or "?",
            rejection.detail,
        )
        for listener in list(self.listeners):
            try:
                listener(rejection)
            except Exception:  # a listener's bug must not reach the informer
                log.exception("quarantine listener failed")
        return rejection

    def clear(self, kind: str, key: str) -> None:
        """The object was understood (fixed) or is gone."""
        if (kind, key) in self._current:
            with self._lock:
                self._current.pop((kind, key), None)

    def retain(self, kind: str, keys: set[str]) -> None:
        """After a relist: forget quarantined objects of `kind` that are no longer listed."""
        with self._lock:
            for k in [k for k in self._current if k[0] == kind and k[1] not in keys]:
                del self._current[k]

    def counts(self) -> dict[tuple[str, str], int]:
        """Rejected object versions so far, by (kind, reason)."""
        with self._lock:
            return dict(self._counts)

    def current(self) -> dict[tuple[str, str], Rejection]:
        """Objects quarantined now, by (kind, key)."""
        with self._lock:
            return dict(self._current)


def guarded(
    quarantine: Quarantine, kind: str, key: str, obj: Any, convert: Callable[[], Any]
) -> Any:
    """Run `convert`; on any exception quarantine the object as unreadable and return None."""
    try:
        return convert()
    except Exception as exc:
        quarantine.reject(kind, key, obj, Problem(UNREADABLE, f"{type(exc).__name__}: {exc}"))
        return None
