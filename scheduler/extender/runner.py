"""How a verb runs: its body read on the event loop, its work on the loop or in a thread.

`VerbRunner` reads the body (408 when it does not arrive in time, 413 when too large), then
answers on the loop only when the work is bounded (a filter or prioritize that is nothing but
memo lookups, with the store's lock free *now*: the loop tries the lock, never waits for it),
else in a worker thread under the verb's limiter; maps failures to answers (400 for a body
that is not a valid envelope, 500 with the message for a bug); counts and times every verb.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import orjson
from fastapi import Request
from fastapi.responses import Response

from scheduler.extender.metrics import ExtenderMetrics
from scheduler.extender.wire import WireError, decode_json
from scheduler.state.kube import API_CONNECTIONS
from scheduler.state.store import ClusterStore

if TYPE_CHECKING:
    from scheduler.extender.app import AppSettings

log = logging.getLogger(__name__)

__all__ = [
    "INLINE_BODY_BYTES",
    "RequestBodyError",
    "VerbRunner",
    "Work",
    "json_response",
    "read_body",
]

# Larger bodies (full-Nodes mode, huge clusters) are decoded in a worker thread, never on the
# event loop. Cache mode at 5,000 nodes sends about 100 KiB.
INLINE_BODY_BYTES = 1 * 2**20


class RequestBodyError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_response(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_body(request, limit)
    except TimeoutError:
        raise RequestBodyError(408, f"request body not received within {timeout_s:g} s") from None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestBodyError(
            413, f"request body of {declared} bytes exceeds the {limit}-byte limit"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestBodyError(413, f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


class VerbRunner:
    """Runs a verb: reads the body on the event loop; then either answers there, when the
    work is bounded, or in a worker thread; maps failures to answers; counts and times.

    Bounded work (answered on the loop, no thread hop: the latency benchmark's hot path): a
    body of at most INLINE_BODY_BYTES whose verb is only memo lookups, checked and answered
    while holding the store's lock, which the loop only *tries* to take: when a watch, a
    bind or a gang plan holds it, the verb goes to a thread instead of waiting. Everything
    else (a cold memo, a gang to plan, full-Nodes mode, explain, bind) runs in threads."""

    def __init__(
        self, settings: AppSettings, metrics: ExtenderMetrics, store: ClusterStore
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = store
        threads = settings.verb_threads
        self.verb_slots = anyio.CapacityLimiter(threads) if threads > 0 else None
        # Bind waits on the API server: no more binds at once than pooled API connections
        # (one more would open, and then close, a connection of its own).
        self.bind_slots = anyio.CapacityLimiter(API_CONNECTIONS)

    async def __call__(self, verb: str, request: Request, work: Work) -> Response:
        started = time.perf_counter()
        try:
            body = await read_body(
                request, self.settings.max_body_bytes, self.settings.body_timeout_s
            )
            limiter = self.bind_slots if work.blocking else self.verb_slots
            answer = self._inline(work, body) if limiter is not None else work.run(body)
            if answer is None:
                assert limiter is not None
                answer = await anyio.to_thread.run_sync(work.run, body, limiter=limiter)
            outcome = "ok"
            response = Response(answer, media_type="application/json")
        except RequestBodyError as exc:
            outcome, response = "bad_request", json_response({"Error": exc.message}, exc.status)
        except WireError as exc:
            outcome, response = "bad_request", json_response({"Error": str(exc)}, 400)
        except Exception as exc:  # a bug must still answer, and leave a trace
            log.exception("%s failed", verb)
            outcome = "error"
            response = json_response({"Error": f"internal error in {verb}: {exc}"}, 500)
        self.metrics.requests.labels(verb, outcome).inc()
        self.metrics.request_duration.labels(verb).observe(time.perf_counter() - started)
        return response

    def _inline(self, work: Work, body: bytes) -> bytes | None:
        """The answer, when it is bounded work and the store's lock is free; else None."""
        if work.lookup_only is None or len(body) > INLINE_BODY_BYTES:
            return None
        lock = self.store.lock
        if not lock.acquire(blocking=False):
            return None
        try:
            parsed = work.parse(decode_json(body))
            if not work.lookup_only(parsed):
                return None
            return orjson.dumps(work.handle(parsed))
        finally:
            lock.release()

    async def call(self, handle: Callable[[], Any]) -> Any:
        """Other work that grows with the cluster (an explanation), off the loop."""
        if self.verb_slots is None:
            return handle()
        return await anyio.to_thread.run_sync(handle, limiter=self.verb_slots)


@dataclass(frozen=True, slots=True)
class Work:
    """One verb's work: parse the decoded body, handle it; `lookup_only` (filter and
    prioritize) tells bounded work; `blocking`: it waits on the API server (bind)."""

    handle: Callable[[Any], Any]
    parse: Callable[[Any], Any] = lambda data: data
    lookup_only: Callable[[Any], bool] | None = None
    blocking: bool = False

    def run(self, body: bytes) -> bytes:
        return orjson.dumps(self.handle(self.parse(decode_json(body))))
