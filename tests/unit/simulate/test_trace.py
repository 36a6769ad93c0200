from __future__ import annotations

import collections
import dataclasses
import random

from scheduler.simulate.trace import (
    REFERENCE,
    TraceConfig,
    _Sampler,
    generate_trace,
    pool_nodes,
    zipf_weights,
)

SMALL = TraceConfig(seed=3, nodes=12, duration_s=3 * 3600.0, deployment_rate_per_h=6.0)


def test_same_seed_same_trace() -> None:
    first, second = generate_trace(SMALL), generate_trace(SMALL)
    assert first.events == second.events
    assert first.initial_cache == second.initial_cache
    assert first.events, "the trace is not empty"


def test_other_seed_other_trace() -> None:
    other = generate_trace(dataclasses.replace(SMALL, seed=4))
    assert other.events != generate_trace(SMALL).events


def test_events_are_ordered_and_replicas_depart_after_arriving() -> None:
    trace = generate_trace(SMALL)
    times = [e.time for e in trace.events]
    assert times == sorted(times)
    arrived: dict[str, float] = {}
    for event in trace.events:
        if event.kind == "arrive":
            assert event.replica not in arrived
            arrived[event.replica] = event.time
        else:
            assert arrived[event.replica] <= event.time
        assert all(1 <= p.gpus <= 8 for p in event.pods)
        if event.pods[0].gang is not None:
            assert 2 <= len(event.pods) <= 4
            assert all(p.gang_size == len(event.pods) for p in event.pods)


def test_zipf_sampler_is_skewed_as_the_weights_say() -> None:
    items = [f"m{i}" for i in range(10)]
    weights = zipf_weights(10, 1.1)
    sampler = _Sampler(items, weights)
    rng = random.Random(0)
    counts = collections.Counter(sampler.draw(rng) for _ in range(20_000))
    expected_top = weights[0] / sum(weights)
    assert abs(counts["m0"] / 20_000 - expected_top) < 0.02
    assert counts["m0"] > 2 * counts["m2"] > 0
    assert counts["m0"] / 20_000 > 3 * (1 / 10)  # far above a uniform share


def test_trace_popularity_follows_zipf() -> None:
    trace = generate_trace(dataclasses.replace(SMALL, deployment_rate_per_h=20.0))
    deployments = {p.deployment: p.model for p in trace.pods()}
    counts = collections.Counter(deployments.values())
    top = counts.most_common(1)[0][0]
    assert top in trace.popularity[:3]
    assert counts[top] / len(deployments) > 2 / len(trace.popularity)


def test_pool_mix_by_share() -> None:
    kinds = collections.Counter(n.kind.prefix for n in pool_nodes(REFERENCE))
    assert sum(kinds.values()) == REFERENCE.nodes
    assert set(kinds) == {"h100", "h200", "a100p", "l40s"}
    assert kinds["h100"] >= kinds["h200"]
