"""`kvsched agent`: the node agent (DaemonSet) that keeps its node's NodeInventory true.

Every ``--interval`` seconds it scans the model cache folders (and, once, the GPUs), builds the
node's NodeInventory status and writes it, merged with what the controller wrote. With
``--dry-run`` it prints the status instead of writing it; ``--once`` runs a single cycle.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from scheduler.agent.run import AgentLoop, AgentSettings, default_capacity
from scheduler.commands.common import fail
from scheduler.inventory.merge import merge_agent_report
from scheduler.logs import configure_logging
from scheduler.state.kube import InventoryApi, KubeApi


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
        help="kubelet PodResources socket (e.g. /var/lib/kubelet/pod-resources/kubelet.sock) "
        "to report GPUs assigned to pods; needs grpcio",
    )
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
    return AgentSettings(
        node=args.node_name or socket.gethostname(),
        caches=caches,
        capacity_bytes=capacity,
        bandwidth=bandwidth,
        interval_s=args.interval,
        pod_resources_socket=Path(args.pod_resources_socket) if args.pod_resources_socket else None,
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
    if threading.current_thread() is not threading.main_thread():
        return loop.run(once=args.once)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        loop.stop()

    # SIGTERM (pod deletion) and Ctrl-C end the wait between cycles; a cycle in progress
    # finishes first. The previous handlers come back afterwards.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return loop.run(once=args.once)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
