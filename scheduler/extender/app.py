"""The extender HTTP service: thin handlers over ClusterStore and the placement core.

Verbs (POST, JSON): /filter, /prioritize, /bind, /explain. Probes: GET /healthz, /readyz,
/metrics, /explain/{namespace}/{name}. kube-scheduler counts only HTTP 200, so "no node fits"
is a 200 with failed nodes; a request we cannot decode is a 400 with the reason; a body over
the configured limit is a 413.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from scheduler.core.demand import PodDemand, parse_demand
from scheduler.core.node import NodeState
from scheduler.extender.metrics import ExtenderMetrics
from scheduler.extender.wire import (
    WireError,
    decode_json,
    filter_result,
    host_priorities,
    parse_binding_args,
    parse_extender_args,
)
from scheduler.state.events import NoEvents, PodEvents
from scheduler.state.kube import API_CONNECTIONS
from scheduler.state.objects import node_state
from scheduler.state.store import BindError, ClusterStore

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 64 * 2**20
DEFAULT_BODY_TIMEOUT_S = 10.0
# At shutdown, how long queued pod events may take to be written before they are abandoned.
EVENTS_DRAIN_S = 2.0


# OpenAPI documentation of the wire format. The handlers read raw bodies on purpose (embedded
# core/v1 objects must never be rejected by validation), so FastAPI cannot derive these; they
# only document, and open schemas (additionalProperties) keep unknown fields acceptable.
_OBJECT_WITH_NAME: dict[str, Any] = {
    "type": "object",
    "required": ["metadata"],
    "properties": {
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "minLength": 1}},
        }
    },
}
_EXTENDER_ARGS: dict[str, Any] = {
    "title": "ExtenderArgs",
    "type": "object",
    "description": "k8s.io/kube-scheduler/extender/v1 ExtenderArgs: keys are Go field names, "
    "matched case-insensitively. NodeNames (cache mode) or Nodes (full-Nodes mode).",
    "required": ["Pod"],
    "properties": {
        "Pod": {**_OBJECT_WITH_NAME, "description": "a core/v1 Pod, accepted whole"},
        "Nodes": {
            "description": "a core/v1 NodeList (full-Nodes mode), or null",
            "anyOf": [
                {
                    "type": "object",
                    "required": ["items"],
                    "properties": {"items": {"type": "array", "items": _OBJECT_WITH_NAME}},
                },
                {"type": "null"},
            ],
        },
        "NodeNames": {
            "description": "candidate node names (cache mode), or null",
            "anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}],
        },
    },
}
_EXPLAIN_BODY: dict[str, Any] = {
    "description": "ExtenderArgs, or a bare core/v1 Pod; naming no nodes means every node",
    "anyOf": [_EXTENDER_ARGS, {**_OBJECT_WITH_NAME, "title": "Pod"}],
}
_BINDING_ARGS: dict[str, Any] = {
    "title": "ExtenderBindingArgs",
    "type": "object",
    "required": ["PodName", "PodNamespace", "PodUID", "Node"],
    "properties": {
        key: {"type": "string", "minLength": 1}
        for key in ("PodName", "PodNamespace", "PodUID", "Node")
    },
}
_ERROR: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["Error"],
    "properties": {"Error": {"type": "string"}},
}
_STRING_MAP: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "string"}}
_FILTER_RESULT: dict[str, Any] = {
    "title": "ExtenderFilterResult",
    "type": "object",
    "required": ["Nodes", "NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error"],
    "properties": {
        "Nodes": {"anyOf": [{"type": "object"}, {"type": "null"}]},
        "NodeNames": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}]},
        "FailedNodes": _STRING_MAP,
        "FailedAndUnresolvableNodes": _STRING_MAP,
        "Error": {"type": "string"},
    },
}
_HOST_PRIORITY_LIST: dict[str, Any] = {
    "title": "HostPriorityList",
    "type": "array",
    "items": {
        "type": "object",
        "required": ["Host", "Score"],
        "properties": {"Host": {"type": "string"}, "Score": {"type": "integer"}},
    },
}
_EXPLANATION: dict[str, Any] = {
    "title": "Explanation",
    "type": "object",
    "required": ["pod", "gpus", "model", "error", "plan", "nodes"],
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _verb_openapi(body: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """openapi_extra of a POST verb: its JSON body and its answers."""
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {
            "200": _json(result, "the verb's answer (kube-scheduler counts only 200)"),
            "400": _json(_ERROR, "the body is not valid JSON or not a valid envelope"),
            "408": _json(_ERROR, "the body did not fully arrive within the time limit"),
            "413": _json(_ERROR, "the body exceeds the configured size limit"),
            "500": _json(_ERROR, "an internal error (a bug), with its message"),
        },
    }


@dataclass(frozen=True, slots=True)
class AppSettings:
    """HTTP-level settings of the extender app.

    max_body_bytes: larger requests get 413. A 5,000-node full-Nodes request with managedFields
    is tens of MB; cache mode (node names only) stays far below.
    body_timeout_s: a request whose body has not fully arrived by then gets 408, so a slow or
    stuck caller cannot hold the extender (kube-scheduler's own httpTimeout is 5 s).
    """

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S


class Background(Protocol):
    """Work that lives as long as the app (the cluster informers)."""

    def start(self) -> None: ...

    def stop(self, timeout_s: float = 1.0) -> None: ...


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


def create_app(
    store: ClusterStore,
    settings: AppSettings | None = None,
    metrics: ExtenderMetrics | None = None,
    background: Background | None = None,
    events: PodEvents | None = None,
) -> FastAPI:
    """The extender app over `store`; `background` (cluster sync) and `events` (the pod event
    recorder) run for the app's life."""
    settings = settings or AppSettings()
    metrics = metrics or ExtenderMetrics()
    recorder: PodEvents = events or NoEvents()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        recorder.start()
        if background is not None:
            background.start()
        try:
            yield
        finally:
            if background is not None:
                background.stop()
            recorder.stop(EVENTS_DRAIN_S)

    app = FastAPI(
        title="kvsched extender",
        version="0.1.0",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.metrics = metrics
    store.observer = metrics
    app.state.events = recorder
    # Quarantined pods that carry kvsched annotations get a Warning event.
    store.quarantine.listeners[:] = [recorder.bad_object]

    bind_slots = anyio.CapacityLimiter(API_CONNECTIONS)

    async def run_verb(
        verb: str, request: Request, handle: Callable[[Any], Any], blocking: bool = False
    ) -> Response:
        started = time.perf_counter()
        try:
            body = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
            data = decode_json(body)
            # Bind waits on the API server: off the event loop, so that the scheduler's next
            # filter is not queued behind it. No more binds at once than pooled API
            # connections: one more would open (and then close) a connection of its own.
            if blocking:
                result = await anyio.to_thread.run_sync(handle, data, limiter=bind_slots)
            else:
                result = handle(data)
            outcome, response = "ok", json_response(result)
        except RequestBodyError as exc:
            outcome, response = "bad_request", json_response({"Error": exc.message}, exc.status)
        except WireError as exc:
            outcome, response = "bad_request", json_response({"Error": str(exc)}, 400)
        except Exception as exc:  # a bug must still answer, and leave a trace
            log.exception("%s failed", verb)
            outcome = "error"
            response = json_response({"Error": f"internal error in {verb}: {exc}"}, 500)
        metrics.requests.labels(verb, outcome).inc()
        metrics.request_duration.labels(verb).observe(time.perf_counter() - started)
        return response

    def extra_nodes(nodes: list[Any] | None) -> dict[str, NodeState] | None:
        """Full-Nodes mode: nodes the store does not know are judged from the sent object."""
        if nodes is None:
            return None
        extra: dict[str, NodeState] = {}
        for node in nodes:
            name = node["metadata"]["name"]
            if store.node(name) is None:
                extra[name] = node_state(node, None, (), store.catalog)
        return extra

    def do_filter(data: Any) -> Any:
        args = parse_extender_args(data)
        demand = store.demand(args.pod)
        result = store.filter(demand, args.node_names, extra_nodes(args.nodes))
        metrics.filter_nodes.labels("passed").inc(len(result.passed))
        metrics.filter_nodes.labels("failed").inc(len(result.failed))
        metrics.filter_nodes.labels("unresolvable").inc(len(result.unresolvable))
        for reason, count in result.rejections.items():
            metrics.rejections.labels(reason).inc(count)
        recorder.rejected(demand, result)
        return filter_result(args, result.passed, result.failed, result.unresolvable)

    def do_prioritize(data: Any) -> Any:
        args = parse_extender_args(data)
        demand = store.demand(args.pod)
        scores = store.prioritize_scores(demand, args.node_names, extra_nodes(args.nodes))
        return host_priorities(args.node_names, scores)

    def do_bind(data: Any) -> Any:
        args = parse_binding_args(data)
        try:
            result = store.bind(args.pod_namespace, args.pod_name, args.pod_uid, args.node)
        except BindError as exc:
            metrics.binds.labels("rejected").inc()
            log.warning(
                "bind %s/%s -> %s rejected: %s", args.pod_namespace, args.pod_name, args.node, exc
            )
            return {"Error": str(exc)}
        metrics.binds.labels("already_bound" if result.already_bound else "bound").inc()
        if not result.already_bound:
            recorder.placed(args.pod_namespace, args.pod_name, args.pod_uid, result)
        return {"Error": ""}

    def do_explain(data: Any) -> Any:
        # A bare Pod, or ExtenderArgs; naming no nodes means every node the store knows.
        is_envelope = isinstance(data, dict) and any(
            isinstance(key, str) and key.lower() == "pod" for key in data
        )
        if isinstance(data, dict) and "metadata" in data and not is_envelope:
            data = {"Pod": data}
        args = parse_extender_args(data, default_names=store.node_names())
        # explain must not make a pod bindable: parse without recording it as seen.
        demand = parse_demand(args.pod, store.catalog)
        return explanation(demand, args.node_names, extra_nodes(args.nodes))

    def explanation(
        demand: PodDemand,
        names: list[str] | None,
        extra: dict[str, NodeState] | None = None,
    ) -> dict[str, Any]:
        return {
            "pod": demand.ref,
            "gpus": demand.gpus,
            "model": demand.model,
            "error": demand.error,
            "plan": demand.plan.to_dict() if demand.plan is not None else None,
            "nodes": store.explain(demand, names, extra),
        }

    @app.post("/filter", openapi_extra=_verb_openapi(_EXTENDER_ARGS, _FILTER_RESULT))
    async def filter_verb(request: Request) -> Response:
        return await run_verb("filter", request, do_filter)

    @app.post("/prioritize", openapi_extra=_verb_openapi(_EXTENDER_ARGS, _HOST_PRIORITY_LIST))
    async def prioritize_verb(request: Request) -> Response:
        return await run_verb("prioritize", request, do_prioritize)

    @app.post("/bind", openapi_extra=_verb_openapi(_BINDING_ARGS, _ERROR))
    async def bind_verb(request: Request) -> Response:
        return await run_verb("bind", request, do_bind, blocking=True)

    @app.post("/explain", openapi_extra=_verb_openapi(_EXPLAIN_BODY, _EXPLANATION))
    async def explain_verb(request: Request) -> Response:
        return await run_verb("explain", request, do_explain)

    @app.get(
        "/explain/{namespace}/{name}",
        responses={
            200: _json(_EXPLANATION, "the stored pod's explanation"),
            404: _json(_ERROR, "no such pod in the store"),
        },
    )
    async def explain_pod(namespace: str, name: str) -> Response:
        pod = store.pod_object(namespace, name)
        if pod is None:
            return json_response({"Error": f"pod {namespace}/{name} not found"}, 404)
        return json_response(explanation(parse_demand(pod, store.catalog), None))

    @app.get("/healthz")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get(
        "/readyz",
        responses={
            503: {
                "description": "the store is not in sync: not every kind listed yet, or a kind "
                "whose relist failed (`kinds`: kind -> why)"
            }
        },
    )
    async def readyz() -> Response:
        problems = dict(store.sync_problems)
        if not store.synced or problems:
            return json_response({"status": "not synced", "kinds": problems}, 503)
        return json_response({"status": "ok", "nodes": len(store.node_names())})

    @app.get(
        "/metrics",
        responses={200: {"description": "Prometheus text", "content": {CONTENT_TYPE_LATEST: {}}}},
    )
    async def metrics_endpoint() -> Response:
        metrics.nodes.set(len(store.node_names()))
        metrics.synced.set(1 if store.synced else 0)
        metrics.reservations.set(store.reservation_count())
        metrics.export_rejections(store.quarantine.counts())
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
