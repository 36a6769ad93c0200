"""Explain: every score term per node, and the reason for every rejection, as JSON rows.

Presentation of what the store and the core decided; it decides nothing. `explain_rows` asks
the store for the evaluations, scores and KV-peer terms the verbs use (so an explanation
never differs from a decision) and writes one row per node, best node first. `explanation`
is the whole answer of POST /explain and GET /explain/{namespace}/{name}, and of
`kvsched explain --json`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from scheduler.core.demand import PodDemand
from scheduler.core.node import NodeState
from scheduler.core.placement import NodeEvaluation
from scheduler.core.scoring import ScoredNode, blend_locality, relative_scores
from scheduler.state.store import ClusterStore

__all__ = ["explain_row", "explain_rows", "explanation", "held_gpus"]


def explain_rows(
    store: ClusterStore,
    demand: PodDemand,
    names: Iterable[str] | None = None,
    extra: Mapping[str, NodeState] | None = None,
) -> list[dict[str, Any]]:
    """Every term per node, with the reason for every rejection, best node first; `names`
    None means every node the store knows."""
    names = list(names) if names is not None else store.node_names()
    pairs = list(zip(names, store.evaluations(demand, names, extra), strict=True))
    scores = {s.node: s for s in relative_scores(pairs, store.scoring)}
    rows = [explain_row(name, evaluation, scores[name]) for name, evaluation in pairs]
    for row in rows:
        state = store.node(row["node"])
        if state is not None:
            row["heldGpus"] = held_gpus(state)
            # Busy GPUs nobody can name (a pod bound before kvsched saw it placed and not yet
            # reported by the node's agent): counted busy, not listed.
            row["unindexedBusyGpus"] = state.unindexed_busy
    terms = store.kv_peer_terms(demand, names)
    if terms is not None:
        blended = blend_locality([r["score"] for r in rows], terms, store.scoring.kv_peer_weight)
        for row, term, score in zip(rows, terms, blended, strict=True):
            row["terms"]["kv_peer"] = round(term, 4)
            if row["fits"]:
                row["score"] = score
    rows.sort(key=lambda r: (not r["fits"], -r["score"], -r["raw"], r["node"]))
    return rows


def explanation(
    store: ClusterStore,
    demand: PodDemand,
    names: list[str] | None,
    extra: Mapping[str, NodeState] | None = None,
) -> dict[str, Any]:
    """The pod's demand (memory plan included) and its rows."""
    return {
        "pod": demand.ref,
        "gpus": demand.gpus,
        "model": demand.model,
        "error": demand.error,
        "plan": demand.plan.to_dict() if demand.plan is not None else None,
        "nodes": explain_rows(store, demand, names, extra),
    }


def held_gpus(state: NodeState) -> list[dict[str, Any]]:
    """The node's busy GPUs for explain: per GPU the pod holding it and on whose word
    (`kubelet`: the truth the agent read; `prediction`: kvsched's, until the truth is known;
    `unavailable`: the kubelet does not offer it). GPUs charged to pods nobody indexed are
    counted in `unindexed` on the node, not listed here."""
    return [
        {"index": index, "pod": holder.pod, "source": holder.source}
        for index, holder in sorted(state.holders.items())
    ]


def explain_row(name: str, evaluation: NodeEvaluation, scored: ScoredNode) -> dict[str, Any]:
    row: dict[str, Any] = {
        "node": name,
        "fits": evaluation.fits,
        "reason": evaluation.reason,
        "unresolvable": evaluation.unresolvable,
        "score": scored.score,
        "raw": round(scored.raw, 4),
        "terms": {k: round(v, 4) for k, v in scored.terms.items()},
        # What kvsched predicts the device plugin will hand the pod on this node: the node's
        # kubelet decides, and the agent reports what it really gave.
        "predictedGpus": list(evaluation.gpus),
    }
    if evaluation.gpu_set is not None:
        row["gpuSet"] = {
            "tier": evaluation.set_label,
            "quality": round(evaluation.gpu_set.quality, 4),
            "description": evaluation.gpu_set.description,
        }
    if evaluation.cold_start is not None:
        cold = evaluation.cold_start
        row["coldStart"] = {
            "tier": cold.tier.label,
            "bandwidthBytesPerSecond": cold.bandwidth_bytes_per_s,
            "weightsBytes": cold.weights_bytes,
            "loadSeconds": round(cold.load_seconds, 2),
            "readySeconds": round(cold.ready_seconds, 2),
        }
    if evaluation.memory is not None:
        memory = evaluation.memory
        row["memory"] = {
            "usableBytesPerGpu": memory.usable_bytes_per_gpu,
            "headroomBytesPerGpu": memory.headroom_bytes,
            "maxKvTokens": memory.max_kv_tokens,
            "reason": memory.reason,
        }
    if evaluation.fits:
        row["rightSize"] = round(evaluation.right_size, 4)
        row["fragmentationAfter"] = round(evaluation.fragmentation_after, 4)
    return row
