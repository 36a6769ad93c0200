"""The extender HTTP service: thin handlers over ClusterStore and the placement core.

Verbs (POST, JSON): /filter, /prioritize, /bind, /explain. kube-scheduler's three (filter,
prioritize, bind) are answered by the `HotVerbs` middleware straight from the raw request
(bytes in, orjson bytes out), past FastAPI's routing and per-request middleware; their routes
stay declared for the OpenAPI document. Probes: GET /healthz, /readyz,
/metrics, /explain/{namespace}/{name}. kube-scheduler counts only HTTP 200, so "no node fits"
is a 200 with failed nodes; a request we cannot decode is a 400 with the reason; a body over
the configured limit is a 413.

The event loop never waits: it reads bodies and writes answers; each verb's work (decoding,
evaluating, encoding) runs in a worker thread (`AppSettings.verb_threads` at once; bind in
threads of its own, as many as pooled API connections), so a cold memo, a gang to plan or a
huge body does not hold /healthz, and a bind waiting on the API server holds no other verb.
Only bounded work is answered on the loop: a filter or prioritize that is nothing but memo
lookups, when the store's lock is free (see VerbRunner). The store itself never holds its
lock across API I/O (see scheduler.state.store).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Receive, Scope, Send

from scheduler.core.demand import PodDemand, parse_demand
from scheduler.core.node import NodeState
from scheduler.extender import openapi
from scheduler.extender.explain import explanation
from scheduler.extender.metrics import ExtenderMetrics
from scheduler.extender.runner import VerbRunner, Work, json_response
from scheduler.extender.wire import (
    ExtenderArgs,
    filter_result,
    host_priorities,
    parse_binding_args,
    parse_extender_args,
)
from scheduler.state.contracts import BindError
from scheduler.state.events import NoEvents, PodEvents
from scheduler.state.objects import node_state
from scheduler.state.store import ClusterStore

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 64 * 2**20
DEFAULT_BODY_TIMEOUT_S = 10.0
# Verbs (filter, prioritize, explain) evaluated at once in worker threads; more wait their
# turn. kube-scheduler sends one pod's filter and prioritize at a time per profile.
DEFAULT_VERB_THREADS = 2
# At shutdown, how long queued pod events and effects may take to be written before they are
# abandoned.
EVENTS_DRAIN_S = 2.0


@dataclass(frozen=True, slots=True)
class AppSettings:
    """HTTP-level settings of the extender app.

    max_body_bytes: larger requests get 413. A 5,000-node full-Nodes request with managedFields
    is tens of MB; cache mode (node names only) stays far below.
    body_timeout_s: a request whose body has not fully arrived by then gets 408, so a slow or
    stuck caller cannot hold the extender (kube-scheduler's own httpTimeout is 5 s).

    verb_threads: filter, prioritize and explain requests evaluated at once, each in a worker
    thread (0: on the event loop, which then answers nothing else meanwhile).
    """

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    verb_threads: int = DEFAULT_VERB_THREADS


class Background(Protocol):
    """Work that lives as long as the app (the cluster informers)."""

    def start(self) -> None: ...

    def stop(self, timeout_s: float = 1.0) -> None: ...


class Verbs:
    """What each verb does with its decoded body; synchronous, so that it can run in a worker
    thread. Filter and prioritize are split in two: `parse` (decode the envelope, parse and
    remember the pod) and the evaluation, so that the runner can tell bounded work from the
    rest (`lookup_only`)."""

    def __init__(self, store: ClusterStore, metrics: ExtenderMetrics, recorder: PodEvents) -> None:
        self.store = store
        self.metrics = metrics
        self.recorder = recorder

    def extra_nodes(self, nodes: list[Any] | None) -> dict[str, NodeState] | None:
        """Full-Nodes mode: nodes the store does not know are judged from the sent object."""
        if nodes is None:
            return None
        extra: dict[str, NodeState] = {}
        for node in nodes:
            name = node["metadata"]["name"]
            if self.store.node(name) is None:
                extra[name] = node_state(node, None, (), self.store.catalog)
        return extra

    def parse(self, data: Any) -> tuple[ExtenderArgs, PodDemand]:
        args = parse_extender_args(data)
        return args, self.store.demand(args.pod)

    def lookup_only(self, parsed: tuple[ExtenderArgs, PodDemand]) -> bool:
        """Whether the verb is only memo lookups (cache mode, no gang, warm memo; store lock
        held by the caller)."""
        args, demand = parsed
        return args.nodes is None and self.store.is_lookup(demand, args.node_names)

    def filter(self, parsed: tuple[ExtenderArgs, PodDemand]) -> Any:
        args, demand = parsed
        result = self.store.filter(demand, args.node_names, self.extra_nodes(args.nodes))
        metrics = self.metrics
        metrics.filter_nodes.labels("passed").inc(len(result.passed))
        metrics.filter_nodes.labels("failed").inc(len(result.failed))
        metrics.filter_nodes.labels("unresolvable").inc(len(result.unresolvable))
        for reason, count in result.rejections.items():
            metrics.rejections.labels(reason).inc(count)
        self.recorder.rejected(demand, result)
        return filter_result(args, result.passed, result.failed, result.unresolvable)

    def prioritize(self, parsed: tuple[ExtenderArgs, PodDemand]) -> Any:
        args, demand = parsed
        scores = self.store.prioritize_scores(demand, args.node_names, self.extra_nodes(args.nodes))
        return host_priorities(args.node_names, scores)

    def bind(self, data: Any) -> Any:
        args = parse_binding_args(data)
        try:
            result = self.store.bind(args.pod_namespace, args.pod_name, args.pod_uid, args.node)
        except BindError as exc:
            self.metrics.binds.labels("rejected").inc()
            log.warning(
                "bind %s/%s -> %s rejected: %s", args.pod_namespace, args.pod_name, args.node, exc
            )
            return {"Error": str(exc)}
        self.metrics.binds.labels("already_bound" if result.already_bound else "bound").inc()
        if not result.already_bound:
            self.recorder.placed(args.pod_namespace, args.pod_name, args.pod_uid, result)
        return {"Error": ""}

    def explain(self, data: Any) -> Any:
        # A bare Pod, or ExtenderArgs; naming no nodes means every node the store knows.
        is_envelope = isinstance(data, dict) and any(
            isinstance(key, str) and key.lower() == "pod" for key in data
        )
        if isinstance(data, dict) and "metadata" in data and not is_envelope:
            data = {"Pod": data}
        args = parse_extender_args(data, default_names=self.store.node_names())
        # explain must not make a pod bindable: parse without recording it as seen.
        demand = parse_demand(args.pod, self.store.catalog, self.store.pod_groups)
        return explanation(self.store, demand, args.node_names, self.extra_nodes(args.nodes))

    def explain_stored(self, namespace: str, name: str) -> tuple[Any, int]:
        pod = self.store.pod_object(namespace, name)
        if pod is None:
            return {"Error": f"pod {namespace}/{name} not found"}, 404
        return explanation(
            self.store, parse_demand(pod, self.store.catalog, self.store.pod_groups), None
        ), 200


def _lifespan(
    store: ClusterStore, recorder: PodEvents, background: Background | None
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """Starts what lives as long as the app: the event recorder, the effect runner, the
    informers; stops them in reverse, giving queued writes EVENTS_DRAIN_S."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        recorder.start()
        store.effects.start()
        if background is not None:
            background.start()
        try:
            yield
        finally:
            if background is not None:
                background.stop()
            store.effects.stop(EVENTS_DRAIN_S)
            recorder.stop(EVENTS_DRAIN_S)

    return lifespan


class HotVerbs:
    """ASGI middleware that answers kube-scheduler's verbs (POST /filter, /prioritize, /bind)
    without the rest of the stack: no routing over every route, no FastAPI endpoint wrapper and
    dependency solving, no exception and exit-stack middleware per request. The VerbRunner
    does what those would (body limits, 400/408/413/500 answers), so the answer is the same as
    through the FastAPI route, which stays declared for the OpenAPI document and is what any
    other method or path reaches."""

    def __init__(self, app: ASGIApp, run: VerbRunner, works: dict[str, tuple[str, Work]]) -> None:
        self.app = app
        self.run = run
        self.works = works

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hot = self.works.get(scope["path"]) if scope["type"] == "http" else None
        if hot is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        verb, work = hot
        response = await self.run(verb, Request(scope, receive), work)
        await response(scope, receive, send)


def _add_verbs(app: FastAPI, run: VerbRunner, verbs: Verbs) -> None:
    filter_work = Work(verbs.filter, verbs.parse, verbs.lookup_only)
    prioritize_work = Work(verbs.prioritize, verbs.parse, verbs.lookup_only)
    bind_work = Work(verbs.bind, blocking=True)
    explain_work = Work(verbs.explain)
    app.add_middleware(
        HotVerbs,
        run=run,
        works={
            "/filter": ("filter", filter_work),
            "/prioritize": ("prioritize", prioritize_work),
            "/bind": ("bind", bind_work),
        },
    )

    @app.post(
        "/filter", openapi_extra=openapi.verb_openapi(openapi.EXTENDER_ARGS, openapi.FILTER_RESULT)
    )
    async def filter_verb(request: Request) -> Response:
        return await run("filter", request, filter_work)

    @app.post(
        "/prioritize",
        openapi_extra=openapi.verb_openapi(openapi.EXTENDER_ARGS, openapi.HOST_PRIORITY_LIST),
    )
    async def prioritize_verb(request: Request) -> Response:
        return await run("prioritize", request, prioritize_work)

    @app.post("/bind", openapi_extra=openapi.verb_openapi(openapi.BINDING_ARGS, openapi.ERROR))
    async def bind_verb(request: Request) -> Response:
        return await run("bind", request, bind_work)

    @app.post(
        "/explain", openapi_extra=openapi.verb_openapi(openapi.EXPLAIN_BODY, openapi.EXPLAINED)
    )
    async def explain_verb(request: Request) -> Response:
        return await run("explain", request, explain_work)

    @app.get(
        "/explain/{namespace}/{name}",
        responses={
            200: openapi.json_content(openapi.EXPLAINED, "the stored pod's explanation"),
            404: openapi.json_content(openapi.ERROR, "no such pod in the store"),
        },
    )
    async def explain_pod(namespace: str, name: str) -> Response:
        content, status = await run.call(lambda: verbs.explain_stored(namespace, name))
        return json_response(content, status)


def _add_probes(app: FastAPI, store: ClusterStore, metrics: ExtenderMetrics) -> None:
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


def create_probe_app(store: ClusterStore, metrics: ExtenderMetrics) -> FastAPI:
    """/healthz, /readyz and /metrics alone, for a listener the kubelet and Prometheus reach
    (the pod IP) while the verbs stay on loopback: a kubelet probe with ``host: 127.0.0.1``
    would dial the node's loopback, not the pod's."""
    app = FastAPI(title="kvsched extender probes", docs_url=None, redoc_url=None, openapi_url=None)
    _add_probes(app, store, metrics)
    return app


def create_app(
    store: ClusterStore,
    settings: AppSettings | None = None,
    metrics: ExtenderMetrics | None = None,
    background: Background | None = None,
    events: PodEvents | None = None,
) -> FastAPI:
    """The extender app over `store`; `background` (cluster sync), `events` (the pod event
    recorder) and the store's effect runner run for the app's life."""
    settings = settings or AppSettings()
    metrics = metrics or ExtenderMetrics()
    recorder: PodEvents = events or NoEvents()
    app = FastAPI(
        title="kvsched extender",
        version="0.1.0",
        docs_url=None,
        redoc_url=None,
        lifespan=_lifespan(store, recorder, background),
    )
    app.state.store = store
    app.state.metrics = metrics
    app.state.events = recorder
    store.observer = metrics
    # Quarantined pods that carry kvsched annotations get a Warning event.
    store.quarantine.listeners[:] = [recorder.bad_object]
    # Placements learned from the watch (kube-scheduler bound the pod) get the placement event
    # the bind verb gives the pods it binds.
    store.placement_listeners[:] = [recorder.placed]
    _add_verbs(app, VerbRunner(settings, metrics, store), Verbs(store, metrics, recorder))
    _add_probes(app, store, metrics)
    return app
