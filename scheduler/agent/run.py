"""The node agent's loop: discover GPUs, scan the model caches, build the report, publish it.

GPUs are discovered once (they do not change while the node runs) and again on every cycle
until a discovery succeeds. Every cycle reads the kubelet's PodResources API (when a socket is
configured): the GPUs each pod got, reported as ``allocated`` with ``allocatedSource: kubelet``,
and the GPUs the kubelet can hand out (``allocatableGpus``); a kubelet that cannot be read
costs only those fields. Each cycle's failure (scan, kubelet, API server, a conflict storm) is a
log line, and the next cycle tries again; :meth:`AgentLoop.stop` (SIGTERM) ends the wait
between cycles at once. :attr:`AgentLoop.registry` holds the agent's metrics.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from prometheus_client import CollectorRegistry

from scheduler.agent.cache_scan import ScanResult, scan_model_caches
from scheduler.agent.gpus import discover_gpus
from scheduler.agent.podresources import (
    DEFAULT_TIMEOUT_S,
    KubeletGpus,
    PodResourcesMetrics,
    PodResourcesReader,
)
from scheduler.agent.report import Merge, build_report, publish
from scheduler.inventory.status import InventoryStatus
from scheduler.inventory.status import now as utc_now
from scheduler.state.kube import InventoryApi
from topology.model import NodeTopology

__all__ = ["AgentLoop", "AgentSettings", "default_capacity"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentSettings:
    """``pod_resources_socket``: the kubelet's PodResources socket; None: not read (the
    command's default is :data:`~scheduler.agent.podresources.DEFAULT_SOCKET`)."""

    node: str
    caches: tuple[Path, ...] = ()
    capacity_bytes: int | None = None
    bandwidth: Mapping[str, float] = field(default_factory=dict)
    interval_s: float = 60.0
    pod_resources_socket: Path | None = None
    pod_resources_timeout_s: float = DEFAULT_TIMEOUT_S
    dry_run: bool = False


def default_capacity(paths: Sequence[Path]) -> int | None:
    """Total size of the filesystems holding ``paths`` (each filesystem once), or None."""
    seen: set[int] = set()
    total = 0
    for path in paths:
        try:
            device = os.stat(path).st_dev
            if device in seen:
                continue
            total += shutil.disk_usage(path).total
            seen.add(device)
        except OSError:
            continue
    return total or None


class AgentLoop:
    """One node agent. ``api`` is called on each publish (so a failed connect is retried)."""

    def __init__(
        self,
        settings: AgentSettings,
        merge: Merge,
        *,
        api: Callable[[], InventoryApi] | None = None,
        discover: Callable[[], NodeTopology | None] = discover_gpus,
        scan: Callable[[Sequence[Path]], ScanResult] | None = None,
        out: TextIO | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.merge = merge
        self._api_factory = api
        self._api: InventoryApi | None = None
        self._discover = discover
        self._scan = scan if scan is not None else (lambda paths: scan_model_caches(paths))
        self._out = out
        self._stop = threading.Event()
        self.topology: NodeTopology | None = None
        self._discovered = False
        self.registry = registry if registry is not None else CollectorRegistry()
        self.pod_resources_metrics = PodResourcesMetrics(self.registry)
        self.kubelet: PodResourcesReader | None = None
        if settings.pod_resources_socket is not None:
            self.kubelet = PodResourcesReader(
                settings.pod_resources_socket,
                timeout_s=settings.pod_resources_timeout_s,
                metrics=self.pod_resources_metrics,
            )

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def report(self) -> InventoryStatus:
        """Discover (if not yet done), scan, read the kubelet and build this cycle's report."""
        if not self._discovered:
            try:
                self.topology = self._discover()
            except Exception:  # discovery swallows its own errors; this is a last guard
                log.exception("GPU discovery failed")
                self.topology = None
            self._discovered = self.topology is not None
        try:
            scan = self._scan(self.settings.caches)
        except Exception as exc:
            log.exception("model cache scan failed")
            scan = ScanResult((), (f"model cache scan failed: {exc}",))
        kubelet: KubeletGpus | None = None
        if self.kubelet is not None:
            kubelet = self.kubelet.read(self.topology)  # None when unreadable (logged, counted)
        return build_report(
            self.settings.node,
            self.topology,
            scan,
            self.settings.capacity_bytes,
            self.settings.bandwidth,
            utc_now(),
            kubelet,
        )

    def run_once(self) -> bool:
        """One cycle; True when the report was published (or printed, in a dry run)."""
        try:
            report = self.report()
        except Exception:
            log.exception("building the report failed")
            return False
        if self.settings.dry_run:
            out = self._out if self._out is not None else sys.stdout
            out.write(json.dumps(report.to_status(), indent=2, sort_keys=True) + "\n")
            out.flush()
            return True
        try:
            api = self._connect()
            publish(api, self.settings.node, report, self.merge)
        except Exception as exc:
            log.warning("publishing NodeInventory %s failed: %s", self.settings.node, exc)
            self._api = None  # reconnect next time
            return False
        log.info(
            "published NodeInventory %s: %d GPU(s), %d model(s), %s, %d problem(s)",
            self.settings.node,
            len(report.gpus),
            len(report.models),
            f"{len(report.allocated)} GPU allocation(s) from the kubelet"
            if report.allocated_source == "kubelet"
            else "GPU allocations not read",
            len(report.problems),
        )
        return True

    def _connect(self) -> InventoryApi:
        if self._api is None:
            if self._api_factory is None:
                raise RuntimeError("no Kubernetes API configured")
            self._api = self._api_factory()
        return self._api

    def run(self, once: bool = False) -> int:
        """Cycle until stopped; with ``once``, one cycle (exit status 1 if it failed)."""
        while True:
            ok = self.run_once()
            if once:
                return 0 if ok else 1
            if self._stop.wait(self.settings.interval_s):
                log.info("agent stopping")
                return 0
