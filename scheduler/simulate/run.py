"""One call for the command and the benchmark: generate a trace, replay it per policy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scheduler.core.placement import DEFAULT_SCORING, ScoringConfig
from scheduler.models.catalog import Catalog
from scheduler.simulate.engine import RunResult, Warming, run_policy
from scheduler.simulate.metrics import Metrics, compute
from scheduler.simulate.physics import LoadModel
from scheduler.simulate.policies import POLICIES, make_policy
from scheduler.simulate.trace import Trace, TraceConfig, generate_trace


@dataclass(frozen=True)
class Simulation:
    trace: Trace
    results: list[RunResult]
    metrics: list[Metrics]


def simulate(
    config: TraceConfig,
    policies: Sequence[str] = tuple(POLICIES),
    catalog: Catalog | None = None,
    scoring: ScoringConfig = DEFAULT_SCORING,
    load_model: LoadModel | None = None,
    warming: Warming | None = None,
    trace: Trace | None = None,
) -> Simulation:
    """Replay `config`'s trace (or `trace`, already generated from it) under each policy."""
    catalog = catalog if catalog is not None else Catalog.builtin()
    for name in policies:
        make_policy(name)  # unknown names fail before any work
    trace = trace if trace is not None else generate_trace(config, catalog)
    results = [
        run_policy(
            trace, make_policy(name), catalog, scoring, load_model=load_model, warming=warming
        )
        for name in policies
    ]
    return Simulation(trace, results, [compute(r) for r in results])
