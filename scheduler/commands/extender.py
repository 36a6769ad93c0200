"""`kvsched extender`: serve the kube-scheduler extender API."""

from __future__ import annotations

import argparse
import gc
import os
import ssl
import threading
from typing import Any

import uvicorn

from scheduler.commands.common import add_catalog_argument, fail, load_catalog
from scheduler.core.placement import ScoringConfig
from scheduler.extender.app import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_VERB_THREADS,
    AppSettings,
    create_app,
    create_probe_app,
)
from scheduler.extender.metrics import ExtenderMetrics
from scheduler.extender.server import (
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_KEEP_ALIVE_S,
    DEFAULT_MAX_CONNECTIONS,
    ServerSettings,
)
from scheduler.logs import configure_logging
from scheduler.state.binder import ApiBinder
from scheduler.state.effects import EffectWriter
from scheduler.state.events import EventRecorder, PodEvents
from scheduler.state.kube import KubeApi
from scheduler.state.offline import ClusterFileError, load_cluster
from scheduler.state.store import ClusterStore
from scheduler.state.sync import ClusterSync, SyncSettings


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "extender",
        help="serve filter/prioritize/bind for kube-scheduler",
        description="Serve the kube-scheduler extender API (filter, prioritize, bind, explain, "
        "healthz, readyz, metrics). Without --cluster-file it runs in cluster mode: it watches "
        "Nodes, Pods and NodeInventories and binds pods through the API server.",
    )
    parser.add_argument(
        "--cluster-file",
        metavar="PATH",
        help="offline mode: Nodes, NodeInventories and Pods from this YAML/JSON file or folder",
    )
    parser.add_argument(
        "--kubeconfig",
        metavar="PATH",
        help="cluster mode: kubeconfig to use (default: in-cluster service account, else "
        "$KUBECONFIG or ~/.kube/config)",
    )
    parser.add_argument(
        "--watch-timeout-seconds",
        type=int,
        default=SyncSettings().watch_timeout_s,
        help="server-side timeout of one watch request before it is renewed",
    )
    parser.add_argument(
        "--no-events",
        dest="events",
        action="store_false",
        help="cluster mode: do not write Kubernetes Events on pods (KvschedPlaced, "
        "KvschedUnschedulable, KvschedBadPodSpec); offline mode never writes them",
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8888, help="listen port (default 8888)")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="also serve /healthz, /readyz and /metrics (only those, plain HTTP) on this port, "
        "for kubelet probes and Prometheus while the verbs listen on loopback (default: off)",
    )
    parser.add_argument(
        "--metrics-host", default="0.0.0.0", help="listen address of --metrics-port (0.0.0.0)"
    )
    parser.add_argument(
        "--verb-threads",
        type=int,
        default=DEFAULT_VERB_THREADS,
        help="filter/prioritize/explain requests evaluated at once, each in a worker thread so "
        "that the event loop (and /healthz) never waits on them; 0 runs them on the event loop "
        f"(default {DEFAULT_VERB_THREADS})",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="reject larger requests with 413",
    )
    parser.add_argument(
        "--request-body-timeout-seconds",
        type=float,
        default=DEFAULT_BODY_TIMEOUT_S,
        help="answer 408 when a request body has not fully arrived by then",
    )
    parser.add_argument(
        "--header-timeout-seconds",
        type=_positive_float,
        default=DEFAULT_HEADER_TIMEOUT_S,
        help="close a connection that has not sent a request's complete headers by then "
        f"(default {DEFAULT_HEADER_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--max-connections",
        type=_positive_int,
        default=DEFAULT_MAX_CONNECTIONS,
        help="open connections at most; requests beyond it are answered 503 "
        f"(default {DEFAULT_MAX_CONNECTIONS})",
    )
    parser.add_argument(
        "--keep-alive-seconds",
        type=_positive_int,
        default=DEFAULT_KEEP_ALIVE_S,
        help=f"close a keep-alive connection idle for that long (default {DEFAULT_KEEP_ALIVE_S})",
    )
    parser.add_argument(
        "--score-weight",
        action="append",
        default=[],
        metavar="TERM=W",
        help="weight of a score term: ready, gpu_set, right_size, fragmentation; or kv_peer, "
        "the share of the score given to KV-transfer locality, 0..1 (repeatable)",
    )
    parser.add_argument("--engine-init-seconds", type=float, default=None)
    parser.add_argument(
        "--gang-ttl-seconds",
        type=_positive_int,
        default=300,
        help="how long a gang plan holds GPUs for members that exist but have not bound; then "
        "it is released and the group planned again (default %(default)s)",
    )
    parser.add_argument(
        "--gang-absent-ttl-seconds",
        type=_positive_int,
        default=600,
        help="how long a gang plan holds GPUs for members not created yet (LeaderWorkerSet "
        "LeaderReady creates workers once the leader is Ready; default %(default)s)",
    )
    tls = parser.add_argument_group(
        "TLS", "serve HTTPS (kube-scheduler: enableHTTPS + tlsConfig in the extender config)"
    )
    tls.add_argument("--tls-cert-file", metavar="PEM", help="serving certificate (chain)")
    tls.add_argument("--tls-key-file", metavar="PEM", help="private key of the certificate")
    tls.add_argument(
        "--tls-client-ca-file",
        metavar="PEM",
        help="require client certificates signed by this CA (so that only the scheduler, "
        "holding such a certificate, can call the extender)",
    )
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", choices=("json", "text"), default="json")
    add_catalog_argument(parser)
    parser.set_defaults(func=run)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def scoring_from_args(weights: list[str], engine_init: float | None) -> ScoringConfig:
    values: dict[str, float] = {}
    for item in weights:
        term, _, raw = item.partition("=")
        if term not in ("ready", "gpu_set", "right_size", "fragmentation", "kv_peer"):
            raise ValueError(f"--score-weight {item!r}: unknown term {term!r}")
        try:
            values[f"{term}_weight"] = float(raw)
        except ValueError:
            raise ValueError(f"--score-weight {item!r}: {raw!r} is not a number") from None
    if engine_init is not None:
        values["engine_init_seconds"] = engine_init
    return ScoringConfig(**values)


def check_metrics_port(args: argparse.Namespace) -> None:
    """ValueError for a --metrics-port out of range or the verbs' own port."""
    if args.metrics_port is None:
        return
    if not 1 <= args.metrics_port <= 65535:
        raise ValueError(f"--metrics-port must be 1..65535, got {args.metrics_port}")
    if args.metrics_port == args.port:
        raise ValueError(f"--metrics-port {args.metrics_port} is the verbs' --port")


def tls_options(args: argparse.Namespace) -> dict[str, Any]:
    """uvicorn's TLS settings; ValueError for an incomplete or unreadable set."""
    if args.tls_cert_file is None and args.tls_key_file is None:
        if args.tls_client_ca_file is not None:
            raise ValueError("--tls-client-ca-file needs --tls-cert-file and --tls-key-file")
        return {}
    if args.tls_cert_file is None or args.tls_key_file is None:
        raise ValueError("TLS needs both --tls-cert-file and --tls-key-file")
    for path in (args.tls_cert_file, args.tls_key_file, args.tls_client_ca_file):
        if path is not None and not os.access(path, os.R_OK):
            raise ValueError(f"cannot read {path}")
    options: dict[str, Any] = {
        "ssl_certfile": args.tls_cert_file,
        "ssl_keyfile": args.tls_key_file,
    }
    if args.tls_client_ca_file is not None:
        options["ssl_ca_certs"] = args.tls_client_ca_file
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, args.log_format)
    try:
        tls_options(args)
        check_metrics_port(args)
        scoring = scoring_from_args(args.score_weight, args.engine_init_seconds)
        catalog = load_catalog(args.catalog)
    except (ValueError, OSError) as exc:
        return fail(str(exc))
    metrics = ExtenderMetrics()
    background: ClusterSync | None = None
    events: PodEvents | None = None
    if args.cluster_file is not None:
        try:
            objects = load_cluster(args.cluster_file)
        except ClusterFileError as exc:
            return fail(str(exc))
        store = ClusterStore(
            catalog,
            scoring,
            gang_ttl_s=args.gang_ttl_seconds,
            gang_absent_ttl_s=args.gang_absent_ttl_seconds,
        )
        store.load(objects)
        # The loaded cluster is a large, long-lived heap; without this every full collection
        # walks all of it and shows up as p99 spikes in filter/prioritize. Frozen objects are
        # still freed by reference counting when the store replaces them.
        gc.collect()
        gc.freeze()
    else:
        try:
            api = KubeApi.connect(args.kubeconfig)
        except Exception as exc:  # the client raises several unrelated types for bad configs
            return fail(f"cannot load Kubernetes credentials: {exc}")
        binder = ApiBinder(api)
        # Gang reservation writes leave the verbs: one writer thread carries them out.
        effects = EffectWriter(binder, metrics)
        store = ClusterStore(
            catalog,
            scoring,
            binder=binder,
            effects=effects,
            gang_ttl_s=args.gang_ttl_seconds,
            gang_absent_ttl_s=args.gang_absent_ttl_seconds,
        )
        background = ClusterSync(
            api, store, SyncSettings(watch_timeout_s=args.watch_timeout_seconds), metrics
        )
        if args.events:
            events = EventRecorder(api, metrics)
    settings = AppSettings(
        max_body_bytes=args.max_body_bytes,
        body_timeout_s=args.request_body_timeout_seconds,
        verb_threads=args.verb_threads,
    )
    app = create_app(store, settings, metrics, background, events)
    server = ServerSettings(
        header_timeout_s=args.header_timeout_seconds,
        max_connections=args.max_connections,
        keep_alive_s=args.keep_alive_seconds,
    )
    if args.metrics_port is not None:
        probes = uvicorn.Server(
            uvicorn.Config(
                create_probe_app(store, metrics),
                host=args.metrics_host,
                port=args.metrics_port,
                log_config=None,
                access_log=False,
                lifespan="off",
                **server.uvicorn_options(),
            )
        )
        # Its own thread and loop: a slow verb never delays a probe, and uvicorn captures
        # signals only on the main thread, so SIGTERM still stops the main server (and the
        # process, this thread being a daemon).
        threading.Thread(target=probes.run, name="probe-server", daemon=True).start()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        **server.uvicorn_options(),
        **tls_options(args),
    )
    return 0
