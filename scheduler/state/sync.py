"""Keep a ClusterStore in step with the API server: list, then watch, per kind, in threads.

Each kind (Node, Pod, NodeInventory, PodGroup) runs the informer loop:

1. list everything (paged) and replace the store's objects of that kind; the list's
   resourceVersion is where the watch starts;
2. watch from there with bookmarks (which only move the resourceVersion forward) and a
   server-side timeout, after which it simply watches again from the last version seen;
3. on 410 GoneError (history compacted) list again; on any other error back off exponentially
   (with jitter, capped) and list again, counting the restart.

The store is ready once every kind has been listed once. A missing NodeInventory CRD is not
fatal: inventories count as empty and the list is retried with backoff, so nodes are still
scheduled from their labels. Nor is a missing PodGroup CRD (or, for PodGroups alone, a 403:
RBAC from before kvsched read them): pod-group members then need kvsched.io/gang-size.

Hostile objects: the target converts each object on its own and quarantines what it cannot
understand, so neither a watch event nor a relist fails on one object; should applying one
event still raise (a bug), the event is logged and skipped and the watch goes on. The target
is told which kinds are out of sync (`sync_problem`): never listed yet, or a relist that
failed, until the next list succeeds (a watch that ends or fails is routine: the view stays
whole and the informer lists again).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from scheduler.state.kube import (
    KINDS,
    OPTIONAL_KINDS,
    ClusterApi,
    GoneError,
    KubeError,
    NotFoundError,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SyncSettings:
    """How the informers behave.

    watch_timeout_s: server-side timeout of one watch request (the API server closes it; we
    watch again from the last resourceVersion). backoff_*: delay after an error, doubled per
    consecutive error up to the cap, with +-20% jitter so replicas do not retry in step.
    """

    watch_timeout_s: int = 300
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0


class SyncTarget(Protocol):
    """Where the informers put what they see (the extender's ClusterStore, the controller's
    state)."""

    synced: bool

    def sync_problem(self, kind: str, problem: str | None) -> None:
        """The view of `kind` is out of sync (`problem` says why) or in sync again (None)."""
        ...

    def replace_kind(self, kind: str, items: Iterable[Mapping[str, Any]]) -> None: ...

    def upsert(self, kind: str, obj: Mapping[str, Any]) -> None: ...

    def delete(self, kind: str, obj: Mapping[str, Any]) -> None: ...


class SyncObserver(Protocol):
    def watch_restarted(self, kind: str, reason: str) -> None: ...

    def listed(self, kind: str, count: int) -> None: ...


class _NullObserver:
    def watch_restarted(self, kind: str, reason: str) -> None:
        pass

    def listed(self, kind: str, count: int) -> None:
        pass


class ClusterSync:
    def __init__(
        self,
        api: ClusterApi,
        store: SyncTarget,
        settings: SyncSettings | None = None,
        observer: SyncObserver | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.api = api
        self.store = store
        self.settings = settings or SyncSettings()
        self.observer: SyncObserver = observer or _NullObserver()
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait
        self._listed: set[str] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._note_never_listed()
        for kind in KINDS:
            thread = threading.Thread(
                target=self.run_kind, args=(kind,), name=f"sync-{kind}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout_s: float = 1.0) -> None:
        """Ask the informers to stop and wait at most `timeout_s` in all: a thread blocked in
        a watch read only notices at the next event, and they are daemon threads anyway."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _note_never_listed(self) -> None:
        with self._lock:
            for kind in KINDS:
                if kind not in self._listed:
                    self.store.sync_problem(kind, "never listed yet")

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def run_kind(self, kind: str) -> None:
        """The informer loop of one kind; returns when stopped."""
        failures = 0
        while not self._stop.is_set():
            listing = True
            try:
                version = self._list(kind)
                listing = False
                failures = 0
                self._watch(kind, version)
            except GoneError:
                self.observer.watch_restarted(kind, "gone")
                log.info("watch %s: resourceVersion expired, listing again", kind)
            except NotFoundError as exc:
                if kind not in OPTIONAL_KINDS:
                    raise
                # No CRD: schedule from labels (NodeInventory) or from the members' own
                # annotations (PodGroup); keep looking for it.
                failures += 1
                self._not_served(kind, "not_found", f"{kind} not served ({exc}); retrying")
                self._sleep(self._backoff(failures))
            except Exception as exc:  # any error: back off and start over from a list
                failures += 1
                if kind == "PodGroup" and isinstance(exc, KubeError) and exc.status == 403:
                    # Not allowed to read PodGroups (RBAC from before kvsched read them):
                    # members need kvsched.io/gang-size, as without the CRD; keep trying.
                    message = f"PodGroup not readable ({exc}): grant list/watch on podgroups"
                    self._not_served(kind, "forbidden", message)
                    self._sleep(self._backoff(failures))
                    continue
                self.observer.watch_restarted(kind, "error")
                if listing:
                    self.store.sync_problem(kind, f"list failed: {str(exc)[:200]}")
                delay = self._backoff(failures)
                log.warning("sync %s failed (%s); retrying in %.1fs", kind, exc, delay)
                self._sleep(delay)

    def _list(self, kind: str) -> str:
        result = self.api.list(kind)
        self.store.replace_kind(kind, result.items)
        self.observer.listed(kind, len(result.items))
        self._mark_listed(kind)
        self.store.sync_problem(kind, None)
        return result.resource_version

    def _watch(self, kind: str, version: str) -> None:
        while not self._stop.is_set():
            for event in self.api.watch(kind, version, self.settings.watch_timeout_s):
                if self._stop.is_set():
                    return
                version = self._apply(kind, event, version)

    def _apply(self, kind: str, event: dict[str, Any], version: str) -> str:
        kind_of_event = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, dict):
            raise KubeError(f"watch {kind}: event without an object: {event!r:.200}")
        meta = obj.get("metadata")
        raw_version = meta.get("resourceVersion") if isinstance(meta, dict) else None
        new_version = raw_version if isinstance(raw_version, str) and raw_version else version
        if kind_of_event == "BOOKMARK":
            return new_version
        if kind_of_event == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise GoneError(f"watch {kind}: {obj.get('message')}", 410)
            raise KubeError(f"watch {kind}: {obj.get('message')}", int(code or 0))
        obj.setdefault("kind", kind)
        try:
            if kind_of_event in ("ADDED", "MODIFIED"):
                self.store.upsert(kind, obj)
            elif kind_of_event == "DELETED":
                self.store.delete(kind, obj)
            else:
                log.warning("watch %s: ignoring event type %r", kind, kind_of_event)
        except Exception:
            # The target quarantines objects it cannot understand; this is a bug in applying
            # one. The watch goes on: one object must not stop the view of all the others.
            log.exception("watch %s: applying a %s event failed; skipped", kind, kind_of_event)
        return new_version

    def _not_served(self, kind: str, reason: str, message: str) -> None:
        """An optional kind that cannot be read: counts as listed (empty), retried."""
        self._mark_listed(kind)
        self.store.sync_problem(kind, None)
        self.observer.watch_restarted(kind, reason)
        log.warning("%s", message)

    def _mark_listed(self, kind: str) -> None:
        with self._lock:
            self._listed.add(kind)
            if self._listed >= set(KINDS) and not self.store.synced:
                self.store.synced = True
                log.info("cluster view synced")

    def _backoff(self, failures: int) -> float:
        base = min(
            self.settings.backoff_max_s,
            self.settings.backoff_initial_s * 2.0 ** max(0, failures - 1),
        )
        return base * random.uniform(0.8, 1.2)
