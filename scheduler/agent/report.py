"""The node agent's NodeInventory status, and writing it without losing anyone else's update.

:func:`build_report` turns what the agent found into an :class:`InventoryStatus` (source
``agent``). :func:`publish` writes it to the node's NodeInventory: it reads the object
(creating it when missing, labelled ``kvsched.io/node: <node>``), merges its report into the
status there (the merge function decides what the agent owns: the controller keeps, e.g.,
allocations), and replaces the status at the resourceVersion it read. A write that lost a race
(409) is retried from a fresh read, up to ``attempts`` times.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from typing import Any

from scheduler.agent.cache_scan import ScanResult
from scheduler.agent.podresources import KubeletGpus
from scheduler.inventory.status import GpuEntry, InventoryStatus
from scheduler.inventory.status import now as utc_now
from scheduler.state.kube import ConflictError, InventoryApi, KubeError
from topology.model import NodeTopology

__all__ = ["NODE_LABEL", "Merge", "PublishError", "build_report", "publish"]

log = logging.getLogger(__name__)

NODE_LABEL = "kvsched.io/node"

Merge = Callable[[InventoryStatus | None, InventoryStatus], InventoryStatus]


class PublishError(KubeError):
    """The status could not be written: every attempt lost a race, or the object is odd."""


def build_report(
    node: str,
    topology: NodeTopology | None,
    scan: ScanResult,
    capacity_bytes: int | None,
    bandwidth: Mapping[str, float],
    now: dt.datetime | None = None,
    kubelet: KubeletGpus | None = None,
) -> InventoryStatus:
    """The agent's view of ``node``: GPUs and links (none when discovery failed), cached models.

    ``kubelet`` is what the kubelet's PodResources API said this cycle, None when it was not
    read. When read: ``allocated`` is the kubelet's allocations with ``allocated_source``
    ``kubelet`` (the truth, which wins over predictions), and ``allocatable_gpus`` the GPUs it
    can hand out (None when only that call failed). When not read: ``allocated`` is empty and
    both are None (the merge then keeps the controller's predictions, not an old kubelet list).
    ``problems`` carries the scan's problem lines (they are not written to the object).
    """
    gpus: tuple[GpuEntry, ...] = ()
    links: tuple[tuple[str, ...], ...] = ()
    if topology is not None:
        gpus = tuple(
            GpuEntry(
                index=gpu.index,
                uuid=gpu.uuid,
                product=gpu.product,
                memory_bytes=gpu.memory_bytes,
                numa_node=gpu.numa_node,
            )
            for gpu in topology.gpus
        )
        links = tuple(tuple(row) for row in topology.codes())
    problems = list(scan.problems)
    if topology is None:
        problems.insert(0, f"{node}: no GPU information (NVML and nvidia-smi unavailable)")
    return InventoryStatus(
        source="agent",
        gpus=gpus,
        links=links,
        allocated=kubelet.allocations() if kubelet is not None else (),
        allocated_source="kubelet" if kubelet is not None else None,
        allocatable_gpus=kubelet.allocatable if kubelet is not None else None,
        cache_capacity_bytes=capacity_bytes,
        models=scan.models,
        bandwidth={str(k): float(v) for k, v in bandwidth.items()},
        observed_at=now if now is not None else utc_now(),
        problems=tuple(problems),
    )


def publish(
    api: InventoryApi,
    node: str,
    report: InventoryStatus,
    merge: Merge,
    attempts: int = 5,
) -> dict[str, Any]:
    """Write ``merge(current, report)`` to the node's NodeInventory; return the stored object.

    Raises :class:`PublishError` after ``attempts`` conflicting writes, and lets other
    :class:`KubeError` (no permission, API server down, CRD missing) through.
    """
    last: KubeError | None = None
    for attempt in range(1, max(attempts, 1) + 1):
        current = api.get_inventory(node)
        if current is None:
            try:
                current = api.create_inventory(node, {NODE_LABEL: node})
                log.info("created NodeInventory %s", node)
            except ConflictError as exc:  # created by someone else since our read
                last = exc
                continue
        version = str((current.get("metadata") or {}).get("resourceVersion") or "")
        if not version:
            raise PublishError(f"NodeInventory {node} has no metadata.resourceVersion")
        status = current.get("status")
        existing = InventoryStatus.from_status(status if isinstance(status, Mapping) else None)
        if existing is not None and existing.problems:
            log.warning(
                "NodeInventory %s: parts of the stored status unreadable: %s",
                node,
                "; ".join(existing.problems),
            )
        merged = merge(existing, report)
        try:
            stored = api.replace_inventory_status(node, merged.to_status(), version)
        except ConflictError as exc:
            last = exc
            log.info("NodeInventory %s changed since read (attempt %d); retrying", node, attempt)
            continue
        return stored
    raise PublishError(
        f"NodeInventory {node}: status not written after {attempts} attempt(s): {last}",
        409,
    )
