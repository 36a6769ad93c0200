"""`kvsched controller`: keep NodeInventory objects true (leader-elected)."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import threading
from types import FrameType
from typing import Any

from prometheus_client import start_http_server

from scheduler.commands.common import add_catalog_argument, fail, load_catalog
from scheduler.controller.residency import ResidencySettings, ResidencyTracker
from scheduler.controller.run import (
    Controller,
    ControllerMetrics,
    ControllerSettings,
    ControllerState,
    Reconciler,
)
from scheduler.logs import configure_logging
from scheduler.state.kube import KubeApi, LeaseSettings, run_leader_election
from scheduler.state.sync import ClusterSync

EXIT_LOST_LEASE = 1


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "controller",
        help="keep NodeInventory objects true (residency learned from pods, agent reports)",
        description="Watch Nodes, Pods and NodeInventories; while holding the leader lease, "
        "create, update and delete NodeInventories so that they say what each GPU node holds.",
    )
    lease, residency, settings = LeaseSettings(), ResidencySettings(), ControllerSettings()
    parser.add_argument("--kubeconfig", metavar="PATH")
    parser.add_argument("--lease-name", default=lease.name)
    parser.add_argument("--lease-namespace", default=lease.namespace)
    parser.add_argument("--lease-duration-seconds", type=int, default=lease.lease_duration_s)
    parser.add_argument(
        "--identity",
        default=os.environ.get("POD_NAME") or socket.gethostname(),
        help="leader-election identity (default $POD_NAME or the host name)",
    )
    parser.add_argument("--metrics-port", type=int, default=9090, help="0 disables /metrics")
    parser.add_argument("--metrics-host", default="0.0.0.0")
    parser.add_argument("--resync-seconds", type=float, default=settings.resync_s)
    parser.add_argument(
        "--host-memory-ttl-seconds", type=float, default=residency.host_memory_ttl_s
    )
    parser.add_argument(
        "--default-cache-capacity-bytes",
        type=int,
        default=residency.default_cache_capacity_bytes,
    )
    parser.add_argument(
        "--agent-stale-after-seconds", type=float, default=residency.agent_stale_after_s
    )
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", choices=("json", "text"), default="json")
    add_catalog_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, args.log_format)
    try:
        catalog = load_catalog(args.catalog)
        residency = ResidencySettings(
            host_memory_ttl_s=args.host_memory_ttl_seconds,
            default_cache_capacity_bytes=args.default_cache_capacity_bytes,
            agent_stale_after_s=args.agent_stale_after_seconds,
        )
        lease = LeaseSettings(
            name=args.lease_name,
            namespace=args.lease_namespace,
            lease_duration_s=args.lease_duration_seconds,
            renew_deadline_s=max(2, args.lease_duration_seconds * 2 // 3),
            retry_period_s=1,
        )
        api = KubeApi.connect(args.kubeconfig)
    except Exception as exc:  # bad catalog, settings or credentials: say which and stop
        return fail(str(exc))
    settings = ControllerSettings(resync_s=args.resync_seconds)
    metrics = ControllerMetrics()
    state = ControllerState(ResidencyTracker(catalog, residency))
    controller = Controller(Reconciler(api, state, residency, settings, metrics), state, settings)
    sync = ClusterSync(api, state, observer=metrics)
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_host, registry=metrics.registry)
    sync.start()

    terminated = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        terminated.set()
        controller.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.Thread(
        target=run_leader_election,
        args=(api, lease, args.identity, controller.lead, controller.stopped_leading),
        name="leader-election",
        daemon=True,
    ).start()
    controller.stop_event.wait()
    sync.stop()
    # Losing the lease means another replica may already be writing: exit and let the
    # Deployment restart us as a follower.
    return 0 if terminated.is_set() else EXIT_LOST_LEASE
