"""One daemon thread working through a bounded queue, in order: how kvsched's writes to the API
server (pod events, gang reservation effects) leave the verbs.

A verb offers an item and returns at once; a full queue or a stopped worker refuses it (the
caller counts the drop). `stop` takes no more, lets the thread finish what is queued, and waits
at most a timeout: a write stuck on an unreachable API server is abandoned with the daemon
thread rather than holding up shutdown.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["FAILURE_LOG_INTERVAL_S", "FailureLogLevel", "QueueWorker"]

# A writer failing on every item (API server down) warns at most this often; the rest is debug.
FAILURE_LOG_INTERVAL_S = 60.0

T = TypeVar("T")


class FailureLogLevel:
    """The log level of a writer's next failure: WARNING at most once per interval, DEBUG
    otherwise, so that an unreachable API server is said once a minute, not once per write."""

    def __init__(self, interval_s: float = FAILURE_LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._last: float | None = None

    def next(self) -> int:
        moment = time.monotonic()
        if self._last is None or moment - self._last >= self.interval_s:
            self._last = moment
            return logging.WARNING
        return logging.DEBUG


class QueueWorker(Generic[T]):
    def __init__(self, name: str, handle: Callable[[T], None], queue_size: int) -> None:
        """`handle` is called in the worker thread for every item, in offer order; it must not
        raise (an exception would end the thread)."""
        self.name = name
        self._handle = handle
        self._queue: queue.Queue[T | None] = queue.Queue(queue_size)
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def running(self) -> bool:
        """Whether the thread is alive (started, and not finished after `stop`)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 1.0) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout_s
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            return
        self._thread.join(max(0.0, deadline - time.monotonic()))

    def offer(self, item: T) -> bool:
        """Queue `item`; False when the worker is stopped or its queue is full."""
        if self._closed:
            return False
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            return False
        return True

    def pending(self) -> int:
        """Items queued and not yet handled."""
        return self._queue.qsize()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._handle(item)
