"""Relative scores: the feasible nodes' breakdowns mapped onto kube-scheduler's integers 0..10.

Each term is in [0, 1] and higher is better:

* ready: fastest time to ready among the candidates / this node's time to ready (a node that
  needs twice as long as the best one gets 0.5);
* gpu_set: quality of the chosen GPU set (topology.select, monotone in the DESIGN.md order);
* right_size: share of each GPU's usable memory the pod needs (don't burn 141 GB GPUs on a pod
  that fits 80 GB ones);
* fragmentation: 1 - how scattered the node's free GPUs are after the placement.

The weighted mean is divided by the best candidate's, so the best node always gets 10 and the
others keep their proportion to it; scores are ints, as the extender API demands.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from scheduler.core.placement import DEFAULT_SCORING, NodeEvaluation, ScoringConfig

MAX_SCORE = 10


@dataclass(frozen=True, slots=True)
class ScoredNode:
    node: str
    score: int
    raw: float
    terms: Mapping[str, float]


def score_terms(evaluation: NodeEvaluation, fastest_ready: float | None) -> dict[str, float]:
    """The four [0, 1] terms of one feasible node, given the fastest candidate's ready time."""
    ready_seconds = evaluation.ready_seconds
    if ready_seconds is None or fastest_ready is None or ready_seconds <= 0:
        ready = 1.0
    else:
        ready = fastest_ready / ready_seconds
    gpu_set = evaluation.gpu_set.quality if evaluation.gpu_set is not None else 1.0
    return {
        "ready": ready,
        "gpu_set": gpu_set,
        "right_size": evaluation.right_size,
        "fragmentation": 1.0 - evaluation.fragmentation_after,
    }


def weighted(terms: Mapping[str, float], config: ScoringConfig) -> float:
    total = (
        config.ready_weight
        + config.gpu_set_weight
        + config.right_size_weight
        + config.fragmentation_weight
    )
    value = (
        config.ready_weight * terms["ready"]
        + config.gpu_set_weight * terms["gpu_set"]
        + config.right_size_weight * terms["right_size"]
        + config.fragmentation_weight * terms["fragmentation"]
    )
    return value / total


@dataclass(frozen=True, slots=True)
class Score:
    """The score of one distinct evaluation among a candidate set."""

    score: int
    raw: float
    terms: Mapping[str, float]


NO_SCORE = Score(0, 0.0, {})


def score_table(
    evaluations: Iterable[NodeEvaluation], config: ScoringConfig = DEFAULT_SCORING
) -> dict[int, Score]:
    """Scores keyed by `id()` of each distinct feasible evaluation among the candidates.

    Nodes of one shape share an evaluation object, so this costs one computation per distinct
    evaluation, not per node; callers look their nodes up by `id(evaluation)` while they hold
    the evaluations.
    """
    # Thousands of nodes, a handful of distinct evaluations: dedupe first, then look at them.
    evaluations = list(evaluations)
    everything = dict(zip(map(id, evaluations), evaluations, strict=True))  # a C-level pass
    distinct = {key: e for key, e in everything.items() if e.fits}
    ready_times = [e.ready_seconds for e in distinct.values() if e.ready_seconds is not None]
    fastest = min(ready_times) if ready_times else None
    raws: dict[int, tuple[float, dict[str, float]]] = {}
    for key, evaluation in distinct.items():
        terms = score_terms(evaluation, fastest)
        raws[key] = (weighted(terms, config), terms)
    best = max((raw for raw, _ in raws.values()), default=0.0)
    table: dict[int, Score] = {}
    for key, (raw, terms) in raws.items():
        score = math.floor(MAX_SCORE * raw / best + 0.5) if best > 0 else 0
        table[key] = Score(max(0, min(MAX_SCORE, score)), raw, terms)
    return table


def relative_scores(
    evaluations: Iterable[tuple[str, NodeEvaluation]], config: ScoringConfig = DEFAULT_SCORING
) -> list[ScoredNode]:
    """Integer scores 0..10 for (node name, evaluation) pairs; infeasible nodes score 0."""
    pairs = list(evaluations)
    table = score_table((e for _, e in pairs), config)
    scored: list[ScoredNode] = []
    for name, evaluation in pairs:
        found = table.get(id(evaluation), NO_SCORE)
        scored.append(ScoredNode(name, found.score, found.raw, found.terms))
    return scored


def blend_locality(scores: Sequence[int], terms: Sequence[float], weight: float) -> list[int]:
    """Mix KV-transfer locality terms ([0, 1] per node) into integer scores 0..10: the score
    keeps (1 - weight) of its value and locality adds weight x 10 x term."""
    return [
        max(0, min(MAX_SCORE, math.floor((1 - weight) * s + weight * MAX_SCORE * t + 0.5)))
        for s, t in zip(scores, terms, strict=True)
    ]
