"""The node agent's loop: discover GPUs, scan the model caches, build the report, publish it.

GPUs are discovered once (they do not change while the node runs) and again on every cycle
until a discovery succeeds. Every cycle reads the kubelet's PodResources API (when a socket is
configured): the GPUs each pod got, reported as ``allocated`` with ``allocatedSource: kubelet``,
and the GPUs the kubelet can hand out (``allocatableGpus``); a kubelet that cannot be read
costs only those fields. Each cycle's failure (scan, kubelet, API server, a conflict storm) is a
log line, and the next cycle tries again; :meth:`AgentLoop.stop` (SIGTERM) ends the wait
between cycles at once. :attr:`AgentLoop.registry` holds the agent's metrics.

With a :class:`~scheduler.agent.fetch.Fetcher` (``--warm-source``), each publish hands the
object's ``spec.warming`` and status to the fetcher, whose copies run in their own threads;
each report carries their progress (``status.warming``), read *before* the cache scan so that a
copy reported ``done`` is always in the same report's ``modelCache``. A copy changing state
wakes the loop for an early cycle.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

from prometheus_client import CollectorRegistry

from scheduler.agent.cache_scan import ScanResult, scan_model_caches
from scheduler.agent.fetch import Fetcher
from scheduler.agent.gpus import discover_gpus
from scheduler.agent.podresources import (
    DEFAULT_TIMEOUT_S,
    KubeletGpus,
    PodResourcesMetrics,
    PodResourcesReader,
)
from scheduler.agent.report import Merge, build_report, publish
from scheduler.inventory.spec import WarmingSpec
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
        fetcher: Fetcher | None = None,
    ) -> None:
        self.settings = settings
        self.merge = merge
        self._api_factory = api
        self._api: InventoryApi | None = None
        self._discover = discover
        self._scan = scan if scan is not None else (lambda paths: scan_model_caches(paths))
        self._out = out
        self._stop = threading.Event()
        # Set by stop() and by the fetcher when a copy changes state: ends the wait early.
        self._wake = threading.Event()
        self.fetcher = fetcher
        if fetcher is not None:
            fetcher.on_change = self._wake.set
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
        self._wake.set()

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
        # Before the scan: a copy done by now is installed, so the scan below lists it.
        warming = self.fetcher.progress() if self.fetcher is not None else ()
        try:
            scan = self._scan(self.settings.caches)
        except Exception as exc:
            log.exception("model cache scan failed")
            scan = ScanResult((), (f"model cache scan failed: {exc}",))
        kubelet: KubeletGpus | None = None
        if self.kubelet is not None:
            kubelet = self.kubelet.read(self.topology)  # None when unreadable (logged, counted)
        report = build_report(
            self.settings.node,
            self.topology,
            scan,
            self.settings.capacity_bytes,
            self.settings.bandwidth,
            utc_now(),
            kubelet,
        )
        return replace(report, warming=warming) if warming else report

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
            stored = publish(api, self.settings.node, report, self.merge)
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
        if self.fetcher is not None:
            self._hand_to_fetcher(self.fetcher, stored)
        return True

    def _hand_to_fetcher(self, fetcher: Fetcher, stored: Mapping[str, object]) -> None:
        status = stored.get("status")
        try:
            fetcher.update(
                WarmingSpec.from_spec(stored.get("spec")),
                InventoryStatus.from_status(status if isinstance(status, Mapping) else None),
            )
        except Exception:
            log.exception("warming: planning the copies failed")

    def _connect(self) -> InventoryApi:
        if self._api is None:
            if self._api_factory is None:
                raise RuntimeError("no Kubernetes API configured")
            self._api = self._api_factory()
        return self._api

    def run(self, once: bool = False) -> int:
        """Cycle until stopped; with ``once``, one cycle (exit status 1 if it failed). With a
        fetcher, ``once`` also waits for the copies that cycle started and publishes again."""
        try:
            while True:
                ok = self.run_once()
                if once:
                    if ok and self.fetcher is not None and self.fetcher.busy():
                        while self.fetcher.busy() and not self._stop.is_set():
                            self._wake.wait(1.0)
                            self._wake.clear()
                        ok = self.run_once()
                    return 0 if ok else 1
                self._wake.wait(self.settings.interval_s)
                self._wake.clear()
                if self._stop.is_set():
                    log.info("agent stopping")
                    return 0
        finally:
            if self.fetcher is not None:
                self.fetcher.stop()
