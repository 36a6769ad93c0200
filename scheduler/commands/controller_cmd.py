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
    is_gpu_node,
)
from scheduler.controller.warming import PodBook, WarmingController, WarmingControllerSettings
from scheduler.core.quantity import parse_whole_quantity
from scheduler.core.warming import WarmingSettings
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
    _add_warming_arguments(parser)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", choices=("json", "text"), default="json")
    add_catalog_argument(parser)
    parser.set_defaults(func=run)


def _byte_count(text: str) -> int:
    """A byte count as a Kubernetes quantity ("200G", "1Ti", "16060522496")."""
    try:
        value = parse_whole_quantity(text)
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a byte count: {exc}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def _add_warming_arguments(parser: argparse.ArgumentParser) -> None:
    planner, settings = WarmingSettings(), WarmingControllerSettings()
    group = parser.add_argument_group(
        "cache warming",
        "Ask node agents (spec.warming of their NodeInventory) to copy models in demand, so "
        "that each keeps --warming-holders nodes that could host its next replica holding "
        "the weights. Off unless --warming-holders is above 0. See docs/operations.md.",
    )
    group.add_argument(
        "--warming-holders",
        type=int,
        default=0,
        metavar="N",
        help="ready holders to keep per model in demand (default 0: warming off; 2 is the "
        "documented setting)",
    )
    group.add_argument(
        "--warming-hold-down-seconds",
        type=float,
        default=planner.hold_down_s,
        help="how long a model's entries stay after its demand is gone",
    )
    group.add_argument(
        "--warming-node-budget-bytes",
        type=_byte_count,
        default=None,
        metavar="BYTES",
        help="cap on each node's warming disk use (default: the node's model-cache capacity)",
    )
    group.add_argument(
        "--warming-max-inflight-bytes-per-node",
        type=_byte_count,
        default=planner.max_inflight_bytes_per_node,
        metavar="BYTES",
        help="bytes still to copy on one node (a larger model still copies alone)",
    )
    group.add_argument(
        "--warming-max-inflight-bytes",
        type=_byte_count,
        default=planner.max_inflight_bytes_pool,
        metavar="BYTES",
        help="bytes still to copy over the whole pool",
    )
    group.add_argument(
        "--warming-interval-seconds",
        type=float,
        default=settings.interval_s,
        help="least seconds between planning passes",
    )
    group.add_argument(
        "--warming-max-writes-per-pass",
        type=int,
        default=settings.max_writes_per_pass,
        help="NodeInventory spec writes per pass; the rest wait for the next pass",
    )
    group.add_argument(
        "--warming-scale-up-window-seconds",
        type=float,
        default=settings.scale_up_window_s,
        help="a pod of a model created this recently counts as a scale-up",
    )
    group.add_argument(
        "--warming-stall-seconds",
        type=float,
        default=settings.stall_after_s,
        help="a request with no progress from the node's agent after this long marks the "
        "node as not fetching",
    )


def _warming_settings(args: argparse.Namespace) -> WarmingControllerSettings:
    return WarmingControllerSettings(
        planner=WarmingSettings(
            holders=args.warming_holders,
            hold_down_s=args.warming_hold_down_seconds,
            max_inflight_bytes_per_node=args.warming_max_inflight_bytes_per_node,
            max_inflight_bytes_pool=args.warming_max_inflight_bytes,
            node_disk_budget_bytes=args.warming_node_budget_bytes,
        ),
        interval_s=args.warming_interval_seconds,
        max_writes_per_pass=args.warming_max_writes_per_pass,
        scale_up_window_s=args.warming_scale_up_window_seconds,
        stall_after_s=args.warming_stall_seconds,
    )


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
        warming_settings = _warming_settings(args)
        api = KubeApi.connect(args.kubeconfig)
    except Exception as exc:  # bad catalog, settings or credentials: say which and stop
        return fail(str(exc))
    settings = ControllerSettings(resync_s=args.resync_seconds)
    metrics = ControllerMetrics()
    book = PodBook(catalog) if warming_settings.enabled else None
    state = ControllerState(ResidencyTracker(catalog, residency), book=book)
    warming = None
    if book is not None:
        warming = WarmingController(
            api,
            book,
            lambda: state.nodes,
            lambda: state.inventories,
            # A lambda, not the bound method: a relist replaces the dict.
            lambda name, obj: state.inventories.__setitem__(name, obj),
            warming_settings,
            residency,
            metrics.warming,
            is_gpu_node=is_gpu_node,
        )
    controller = Controller(
        Reconciler(api, state, residency, settings, metrics), state, settings, warming
    )
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
