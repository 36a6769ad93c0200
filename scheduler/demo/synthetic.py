"""Seeded synthetic GPU pools of any size, for benchmarks (and, later, the simulator).

Node kinds, busy GPUs and cached models are drawn from a seeded RNG, so the same arguments
always give the same cluster. Busy GPUs are handed out the way a topology-aware allocator
would (best set for each running pod), which is what the node states of a real pool look like.
"""

from __future__ import annotations

import random
from typing import Any

from scheduler.demo.cluster import (
    KINDS,
    NodeKind,
    inventory_object,
    llm_pod,
    node_object,
    running_pod,
)
from scheduler.models.catalog import Catalog
from topology.presets import PRESETS
from topology.select import best_gpu_set

TIERS = ("gpu", "host-memory", "local-disk")


def synthetic_cluster(
    nodes: int, seed: int = 7, inventory_share: float = 0.8
) -> list[dict[str, Any]]:
    """`nodes` GPU nodes with inventories for about `inventory_share` of them, plus pods."""
    rng = random.Random(seed)
    models = list(Catalog.builtin().names())
    objects: list[dict[str, Any]] = []
    for i in range(nodes):
        kind: NodeKind = KINDS[i % len(KINDS)]
        name = f"{kind.prefix}-{i:05d}"
        objects.append(node_object(name, kind))
        topology = PRESETS[kind.preset]
        free = set(range(topology.gpu_count))
        busy: list[tuple[str, tuple[int, ...]]] = []
        for j in range(rng.choice((0, 0, 1, 1, 2, 3))):
            size = rng.choice((1, 1, 2, 4))
            chosen = best_gpu_set(topology, free, size)
            if chosen is None:
                break
            free -= set(chosen.gpus)
            busy.append((f"run-{name}-{j}", chosen.gpus))
        if rng.random() < inventory_share:
            inventory = inventory_object(name, kind)
            status = inventory["status"]
            status["allocated"] = [
                {"index": g, "pod": f"default/{pod}"} for pod, gpus in busy for g in gpus
            ]
            status["allocatedSource"] = "kubelet"
            status["modelCache"]["models"] = [
                {
                    "name": model,
                    "revision": None,
                    "sizeBytes": None,
                    "tier": rng.choice(TIERS),
                    "lastUsed": "2026-11-28T07:00:00Z",
                }
                for model in rng.sample(models, rng.choice((0, 1, 2, 3)))
            ]
            objects.append(inventory)
        objects.extend(running_pod(pod, name, gpus) for pod, gpus in busy)
    return objects


def bench_pod(gpus: int = 4, model: str = "meta-llama/Llama-3.1-70B-Instruct") -> dict[str, Any]:
    """A realistic pending LLM pod as kube-scheduler sends it."""
    return llm_pod(
        "bench-llm",
        gpus,
        {
            "kvsched.io/model": model,
            "kvsched.io/max-model-len": "16384",
            "kvsched.io/max-num-seqs": "8",
        },
    )
