"""`kvsched simulate`: replay a seeded workload trace under kvsched and baseline policies."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from scheduler.commands.common import add_catalog_argument, fail, load_catalog
from scheduler.simulate.engine import Warming
from scheduler.simulate.metrics import format_table, targets
from scheduler.simulate.policies import BLIND, POLICIES, STOCK
from scheduler.simulate.run import simulate
from scheduler.simulate.trace import REFERENCE, UNTUNED


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "simulate",
        help="trace-driven placement simulator: kvsched vs the stock scheduler",
        description="Generate a seeded workload trace (GPU pool, deployments scaling up and "
        "down, Zipf-popular models, gangs, node caches of limited size) and replay it under "
        "each policy with the placement core the extender uses. Defaults are the reference "
        "trace of docs/benchmarks.md.",
    )
    parser.add_argument(
        "--trace",
        type=int,
        choices=range(1, len(UNTUNED) + 1),
        metavar="N",
        help="replay untuned trace N of docs/benchmarks.md instead ("
        + "; ".join(f"{i}: {label}" for i, (label, _) in enumerate(UNTUNED, 1))
        + "); --seed/--nodes/--duration/--rate then do not apply",
    )
    parser.add_argument(
        "--warming",
        action="store_true",
        help="run the warming controller's planner (scheduler.core.warming) every minute of "
        "simulated time, its copies at 1.5 GB/s",
    )
    parser.add_argument("--seed", type=int, default=REFERENCE.seed)
    parser.add_argument("--nodes", type=int, default=REFERENCE.nodes)
    parser.add_argument("--duration", type=float, default=REFERENCE.duration_s, metavar="SECONDS")
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        metavar="PER_HOUR",
        help="new deployments per hour (default: the reference rate scaled to --nodes)",
    )
    parser.add_argument(
        "--policies",
        nargs="+",
        default=list(POLICIES),
        choices=list(POLICIES),
        metavar="POLICY",
        help=f"policies to compare (default: all of {', '.join(POLICIES)})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--plots", metavar="DIR", help="write PNG plots into DIR")
    add_catalog_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rate = args.rate
    if rate is None:
        rate = REFERENCE.deployment_rate_per_h * args.nodes / REFERENCE.nodes
    try:
        catalog = load_catalog(args.catalog)
        if args.trace is not None:
            config = UNTUNED[args.trace - 1][1]
        else:
            config = dataclasses.replace(
                REFERENCE,
                seed=args.seed,
                nodes=args.nodes,
                duration_s=args.duration,
                deployment_rate_per_h=rate,
            )
    except (ValueError, OSError) as exc:
        return fail(str(exc))
    warming = None
    if args.warming:
        from scheduler.simulate.warming import PlannerWarming

        warming = Warming(PlannerWarming(), interval_s=60.0)
    started = time.perf_counter()
    sim = simulate(config, args.policies, catalog, warming=warming)
    wall = time.perf_counter() - started
    found = targets(sim.metrics, STOCK, blind=BLIND)
    plots: list[str] = []
    if args.plots:
        from scheduler.simulate.plots import write_plots

        try:
            plots = [str(p) for p in write_plots(sim.results, sim.metrics, Path(args.plots))]
        except (RuntimeError, OSError) as exc:
            return fail(str(exc))
    if args.json:
        print(
            json.dumps(
                {
                    "trace": {
                        **dataclasses.asdict(config),
                        "events": len(sim.trace.events),
                        "pods": len(sim.trace.pods()),
                    },
                    "policies": [m.to_dict() for m in sim.metrics],
                    "targets": [dataclasses.asdict(t) for t in found],
                    "plots": plots,
                    "wall_s": wall,
                },
                indent=2,
            )
        )
        return 0
    print(
        f"trace: seed {config.seed}, {config.nodes} nodes, {config.duration_s / 3600:.1f} h, "
        f"{config.deployment_rate_per_h:.1f} deployments/h, {len(sim.trace.pods())} pods "
        f"({sum(1 for e in sim.trace.events if e.kind == 'arrive')} replicas); "
        f"simulated in {wall:.1f}s"
    )
    print(format_table(sim.metrics))
    for target in found:
        print(f"{'met' if target.met else 'MISSED'}: {target.name}: {target.detail}")
    for path in plots:
        print(f"wrote {path}")
    return 0
