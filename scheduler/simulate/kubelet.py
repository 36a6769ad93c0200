"""The GPUs a node's kubelet gives a pod: the NVIDIA device plugin's best-effort choice.

kvsched (or kube-scheduler's default profile) decides the node; on the node the kubelet asks
the NVIDIA device plugin (``GetPreferredAllocation``) which GPUs the pod gets, and the plugin
runs go-gpuallocator's best-effort policy over the free devices in the order the kubelet
hands them over: Go map order, random on every call. :func:`kubelet_allocation` is that step
for the simulator (:mod:`scheduler.simulate.engine`) and the real-scheduler benchmark
(``hack/bench_scheduler.py``): the free GPUs are shuffled with the caller's seeded
:class:`random.Random` (runs stay reproducible) and handed to
:func:`topology.deviceplugin.best_effort_allocate`, the exact port of the Go policy that
``tests/unit/topology/test_gpuallocator_oracle.py`` checks against the real Go module. The
function is looked up on :mod:`topology.deviceplugin` at every call, never copied, so there is
one implementation.

**When the policy returns no full set** (the padded set won, so the answer holds nil
entries, or it returned fewer than ``k`` GPUs), the plugin's preferred allocation is not
usable, and the kubelet falls back to its own choice: this module takes the first ``k`` GPUs of
the same random order, and says so (``fell_back``). That ending is an assumption, not
observed: on a real node the Go plugin dereferences the nil entry while building its answer,
and what the kubelet then does depends on how that failure surfaces. It is rare (a padded set
wins only when its fewer GPUs outscore every full set) and counted in the metrics.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from topology import deviceplugin
from topology.model import NodeTopology

__all__ = ["KubeletAllocation", "kubelet_allocation"]


@dataclass(frozen=True, slots=True)
class KubeletAllocation:
    """The GPUs the pod got (sorted), the order the kubelet offered them in, and whether the
    kubelet fell back to its own choice because the plugin's answer was not a full set."""

    gpus: tuple[int, ...]
    order: tuple[int, ...]
    fell_back: bool


def kubelet_allocation(
    topo: NodeTopology, free: Iterable[int], k: int, rng: random.Random
) -> KubeletAllocation:
    """The ``k`` GPUs the kubelet gives a pod on a node whose free GPUs are ``free``.

    ``rng`` draws the kubelet's random order (one ``shuffle`` per call). ``ValueError`` when
    fewer than ``k`` GPUs are free or ``k < 1``: the caller placed a pod that cannot run.
    """
    order = sorted(set(free))
    if k < 1 or len(order) < k:
        raise ValueError(f"kubelet_allocation: {k} GPUs asked, {len(order)} free")
    rng.shuffle(order)
    offered = tuple(order)
    got = deviceplugin.best_effort_allocate(topo.layout, offered, k)
    if len(got) == k and deviceplugin.PADDING not in got:
        return KubeletAllocation(tuple(sorted(got)), offered, fell_back=False)
    return KubeletAllocation(tuple(sorted(offered[:k])), offered, fell_back=True)
