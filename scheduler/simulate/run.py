"""One call for the command and the benchmark: generate a trace, replay it per policy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scheduler.models.catalog import Catalog
from scheduler.simulate.engine import RunResult, run_policy
from scheduler.simulate.metrics import Metrics, compute
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
) -> Simulation:
    catalog = catalog if catalog is not None else Catalog.builtin()
    for name in policies:
        make_policy(name)  # unknown names fail before any work
    trace = generate_trace(config, catalog)
    results = [run_policy(trace, make_policy(name), catalog) for name in policies]
    return Simulation(trace, results, [compute(r) for r in results])
