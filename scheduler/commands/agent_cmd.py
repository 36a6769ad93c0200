"""`kvsched agent`: the node agent (DaemonSet) that keeps its node's NodeInventory true.

Every ``--interval`` seconds it scans the model cache folders (and, once, the GPUs), reads the
kubelet's PodResources API (which GPUs each pod got: the truth that replaces kvsched's
predictions), builds the node's NodeInventory status and writes it, merged with what the
controller wrote. With ``--dry-run`` it prints the status instead of writing it; ``--once``
runs a single cycle. Metrics (``kvsched_agent_podresources_up``,
``kvsched_agent_podresources_errors_total``) are served on ``--metrics-port`` (not in a dry run).

``--warm-source DIR`` turns on the fetcher (:mod:`scheduler.agent.fetch`): the models the
controller writes into the node's ``spec.warming`` are copied from that shared folder into
``--warm-cache-dir`` (default: the first ``--model-cache``), within ``--warm-budget-bytes``, at
most ``--warm-bandwidth`` bytes/s, ``--warm-max-concurrent`` at a time; progress goes to
``status.warming``. With ``--once`` the agent waits for the copies its cycle started.
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

from scheduler.agent.fetch import Fetcher, FetchSettings
from scheduler.agent.podresources import DEFAULT_SOCKET, DEFAULT_TIMEOUT_S
from scheduler.agent.run import AgentLoop, AgentSettings, default_capacity
from scheduler.agent.sources import FilesystemSource
from scheduler.commands.common import fail
from scheduler.core.quantity import parse_whole_quantity
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
    warm = parser.add_argument_group(
        "cache warming", "copy the models the controller asks for (spec.warming) into the cache"
    )
    warm.add_argument(
        "--warm-source",
        metavar="DIR",
        help="turns the fetcher on: a shared folder (NFS or PVC mount) holding Hugging Face hub "
        "caches (models--org--name/...) or plain model folders (<org>/<name>/config.json)",
    )
    warm.add_argument(
        "--warm-cache-dir",
        metavar="DIR",
        help="where copies go, in the hub layout (default: the first --model-cache; scanned "
        "like one)",
    )
    warm.add_argument(
        "--warm-budget-bytes",
        metavar="N",
        help="disk budget of the cache dir (bytes, or a quantity such as 500Gi); the least "
        "recently used models are evicted within it, never one in use (default: no budget, "
        "a copy needs the free space)",
    )
    warm.add_argument(
        "--warm-bandwidth",
        metavar="BYTES_PER_S",
        help="copy rate limit over all copies (bytes/s or a quantity such as 500Mi; default "
        "unlimited)",
    )
    warm.add_argument(
        "--warm-max-concurrent",
        type=int,
        default=1,
        metavar="N",
        help="models copied at once (default %(default)s)",
    )
    warm.add_argument(
        "--warm-retry-seconds",
        type=float,
        default=300.0,
        metavar="S",
        help="wait before retrying a failed copy (default %(default)s)",
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
    warm = warm_settings_from_args(args)
    if warm is not None and not any(_within(warm.cache_dir, root) for root in caches):
        caches = (*caches, warm.cache_dir)  # copies must be scanned to be reported
    capacity = args.cache_capacity_bytes
    if capacity is None:
        capacity = default_capacity(caches)
        if warm is not None and warm.budget_bytes is not None:
            # The warming planner budgets each node by this capacity: reporting the whole
            # filesystem would let it ask for copies the fetcher then refuses as over budget.
            capacity = warm.budget_bytes if capacity is None else min(capacity, warm.budget_bytes)
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


def warm_settings_from_args(args: argparse.Namespace) -> FetchSettings | None:
    """The fetcher's settings, or None without --warm-source (other --warm-* flags then are
    a mistake, reported as one)."""
    if not args.warm_source:
        given = [
            flag
            for flag, value in (
                ("--warm-cache-dir", args.warm_cache_dir),
                ("--warm-budget-bytes", args.warm_budget_bytes),
                ("--warm-bandwidth", args.warm_bandwidth),
            )
            if value is not None
        ]
        if given:
            raise ValueError(f"{', '.join(given)} given without --warm-source")
        return None
    cache = args.warm_cache_dir or (args.model_cache[0] if args.model_cache else None)
    if not cache:
        raise ValueError("--warm-source needs --warm-cache-dir or a --model-cache to copy into")
    return FetchSettings(
        cache_dir=Path(cache),
        budget_bytes=_quantity("--warm-budget-bytes", args.warm_budget_bytes),
        bandwidth=_quantity("--warm-bandwidth", args.warm_bandwidth),
        max_concurrent=args.warm_max_concurrent,
        retry_after_s=args.warm_retry_seconds,
    )


def _quantity(flag: str, text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return parse_whole_quantity(text)
    except ValueError as error:
        raise ValueError(f"{flag} {text!r}: {error}") from None


def _within(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def build_fetcher(args: argparse.Namespace) -> Fetcher | None:
    """The fetcher for --warm-source (its cache folder created), or None."""
    settings = warm_settings_from_args(args)
    if settings is None:
        return None
    source = Path(args.warm_source)
    if not source.is_dir():
        # A mount that is not there yet is worth saying, not fatal: each copy reports it too.
        log.warning("warming: source %s is not a readable folder (yet)", source)
    try:
        settings.cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(
            f"--warm-cache-dir {settings.cache_dir}: cannot create: {error.strerror}"
        ) from None
    if not os.access(settings.cache_dir, os.W_OK):
        raise ValueError(f"--warm-cache-dir {settings.cache_dir} is not writable")
    return Fetcher(FilesystemSource(source), settings)


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, args.log_format)
    try:
        settings = settings_from_args(args)
        fetcher = None if settings.dry_run else build_fetcher(args)
    except ValueError as error:
        return fail(f"agent: {error}")

    def connect() -> InventoryApi:
        return KubeApi.connect(args.kubeconfig)

    loop = AgentLoop(settings, merge_agent_report, api=connect, fetcher=fetcher)
    if fetcher is not None:
        log.info(
            "warming: copying from %s into %s (budget %s, bandwidth %s, %d at a time)",
            fetcher.source.describe(),
            fetcher.cache_dir,
            fetcher.settings.budget_bytes or "none",
            fetcher.settings.bandwidth or "unlimited",
            fetcher.settings.max_concurrent,
        )
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
