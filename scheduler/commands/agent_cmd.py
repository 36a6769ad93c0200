"""`kvsched agent`: the node agent (DaemonSet) that keeps its node's NodeInventory true.

Every ``--interval`` seconds it scans the model cache folders (and, once, the GPUs), reads the
kubelet's PodResources API (which GPUs each pod got: the truth that replaces kvsched's
predictions), builds the node's NodeInventory status and writes it, merged with what the
controller wrote. With ``--dry-run`` it prints the status instead of writing it; ``--once``
runs a single cycle. Metrics (``kvsched_agent_podresources_up``,
``kvsched_agent_podresources_errors_total``) are served on ``--metrics-port`` (not in a dry run).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from prometheus_client import start_http_server

from scheduler.agent.podresources import DEFAULT_SOCKET, DEFAULT_TIMEOUT_S
from scheduler.agent.run import AgentLoop, AgentSettings, default_capacity
from scheduler.commands.common import fail
from scheduler.inventory.merge import merge_agent_report
from scheduler.logs import configure_logging
from scheduler.state.kube import InventoryApi, KubeApi

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "agent",
        help="node agent: report GPUs, links and cached models to the node's NodeInventory",
        description="Discover the node's GPUs (NVML, else nvidia-smi), scan its model cache "
        "folders (Hugging Face hub layout and plain model folders), and publish the node's "
        "NodeInventory status. Failures are logged and retried on the next cycle.",
    )
    parser.add_argument(
        "--node-name",
        default=os.environ.get("NODE_NAME"),
        help="this node's name (default $NODE_NAME, else the host name)",
    )
    parser.add_argument(
        "--model-cache",
        action="append",
        default=[],
        metavar="PATH",
        help="model cache folder: a Hugging Face hub cache, HF_HOME, or a folder of model "
        "folders (repeatable)",
    )
    parser.add_argument(
        "--cache-capacity-bytes",
        type=int,
        metavar="N",
        help="room for cached models (default: size of the filesystems holding the caches)",
    )
    for name, key in (
        ("local-disk", "localDisk"),
        ("host-memory", "hostMemory"),
        ("network", "network"),
    ):
        parser.add_argument(
            f"--bandwidth-{name}",
            type=float,
            metavar="B",
            dest=f"bandwidth_{key}",
            help=f"measured {name} load bandwidth in bytes/s (status.bandwidth.{key})",
        )
    parser.add_argument(
        "--pod-resources-socket",
        metavar="PATH",
        default=str(DEFAULT_SOCKET),
        help="the kubelet's PodResources socket, read every cycle for the GPUs each pod got "
        "(default %(default)s; a missing socket is logged and the rest is still reported)",
    )
    parser.add_argument(
        "--no-pod-resources",
        action="store_true",
        help="do not read the kubelet's PodResources API (allocations are left to the "
        "controller's predictions)",
    )
    parser.add_argument(
        "--pod-resources-timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help="deadline for one PodResources read (default %(default)s)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=9090,
        help="Prometheus /metrics port (default %(default)s; 0 disables; never in --dry-run)",
    )
    parser.add_argument("--metrics-host", default="0.0.0.0")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between cycles")
    parser.add_argument("--once", action="store_true", help="run one cycle and exit")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the status JSON instead of publishing"
    )
    parser.add_argument(
        "--kubeconfig",
        metavar="PATH",
        help="kubeconfig (default: in-cluster service account, else $KUBECONFIG or ~/.kube/config)",
    )
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", choices=("json", "text"), default="json")
    parser.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> AgentSettings:
    if args.interval <= 0:
        raise ValueError(f"--interval must be positive, got {args.interval}")
    if args.pod_resources_timeout <= 0:
        raise ValueError(
            f"--pod-resources-timeout must be positive, got {args.pod_resources_timeout}"
        )
    if not 0 <= args.metrics_port <= 65535:
        raise ValueError(f"--metrics-port must be 0..65535, got {args.metrics_port}")
    if args.cache_capacity_bytes is not None and args.cache_capacity_bytes < 0:
        raise ValueError(f"--cache-capacity-bytes must be >= 0, got {args.cache_capacity_bytes}")
    bandwidth: dict[str, float] = {}
    for key in ("localDisk", "hostMemory", "network"):
        value = getattr(args, f"bandwidth_{key}")
        if value is not None:
            if value <= 0:
                raise ValueError(f"bandwidth {key} must be positive, got {value}")
            bandwidth[key] = float(value)
    caches = tuple(Path(path) for path in args.model_cache)
    capacity = args.cache_capacity_bytes
    if capacity is None:
        capacity = default_capacity(caches)
    socket_path = None
    if not args.no_pod_resources and args.pod_resources_socket:
        socket_path = Path(args.pod_resources_socket)
    return AgentSettings(
        node=args.node_name or socket.gethostname(),
        caches=caches,
        capacity_bytes=capacity,
        bandwidth=bandwidth,
        interval_s=args.interval,
        pod_resources_socket=socket_path,
        pod_resources_timeout_s=args.pod_resources_timeout,
        dry_run=args.dry_run,
    )


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, args.log_format)
    try:
        settings = settings_from_args(args)
    except ValueError as error:
        return fail(f"agent: {error}")

    def connect() -> InventoryApi:
        return KubeApi.connect(args.kubeconfig)

    loop = AgentLoop(settings, merge_agent_report, api=connect)
    if settings.pod_resources_socket is None:
        log.info("PodResources: not read (--no-pod-resources); no kubelet GPU allocations")
    server = None
    if args.metrics_port and not settings.dry_run:
        try:
            server, _ = start_http_server(
                args.metrics_port, addr=args.metrics_host, registry=loop.registry
            )
        except OSError as error:
            return fail(
                f"agent: cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {error}"
            )
    try:
        return _run_loop(loop, args.once)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()


def _run_loop(loop: AgentLoop, once: bool) -> int:
    if threading.current_thread() is not threading.main_thread():
        return loop.run(once=once)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        loop.stop()

    # SIGTERM (pod deletion) and Ctrl-C end the wait between cycles; a cycle in progress
    # finishes first. The previous handlers come back afterwards.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return loop.run(once=once)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
