"""Hand-made tiny traces for the simulator tests."""

from __future__ import annotations

from collections.abc import Sequence

from scheduler.demo.cluster import KINDS
from scheduler.simulate.trace import CachedCopy, Event, PodSpec, SimNode, Trace, TraceConfig

KIND = {k.prefix: k for k in KINDS}
LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"
LLAMA_70B = "meta-llama/Llama-3.1-70B-Instruct"
TB = 10**12


def nodes(*names: str) -> tuple[SimNode, ...]:
    """Nodes named <kind>-<n>, e.g. "h100-1"."""
    return tuple(SimNode(name, KIND[name.split("-")[0]], 2 * TB) for name in names)


def pod(
    name: str,
    gpus: int,
    model: str = LLAMA_8B,
    gang: tuple[str, int] | None = None,
    deployment: str = "dep",
) -> PodSpec:
    annotations = [("kvsched.io/model", model), ("kvsched.io/max-model-len", "4096")]
    if gang is None:
        return PodSpec(name, gpus, model, tuple(annotations), deployment, name)
    gname, size = gang
    annotations += [("kvsched.io/gang", gname), ("kvsched.io/gang-size", str(size))]
    return PodSpec(
        name, gpus, model, tuple(annotations), deployment, gname, gang=gname, gang_size=size
    )


def arrive(t: float, *pods: PodSpec) -> Event:
    return Event(t, "arrive", pods[0].replica, pods)


def depart(t: float, *pods: PodSpec) -> Event:
    return Event(t, "depart", pods[0].replica, pods)


def trace(
    pool: Sequence[SimNode],
    events: Sequence[Event],
    cache: dict[str, tuple[CachedCopy, ...]] | None = None,
    duration: float = 3600.0,
    seed: int = 1,
) -> Trace:
    config = TraceConfig(seed=seed, nodes=len(pool), duration_s=duration)
    return Trace(config, tuple(pool), tuple(events), cache or {})
