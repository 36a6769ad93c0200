"""`kvsched demo`: the extender on the bundled example cluster, driven like kube-scheduler."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from scheduler.commands.common import fail


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="schedule example LLM pods onto an example GPU pool through the extender",
        description="Start the extender on the bundled example cluster (28 GPU nodes), send "
        "example LLM pods through filter, prioritize and bind over HTTP, print where they went.",
    )
    parser.add_argument(
        "--dump",
        metavar="DIR",
        help="also write the example cluster.yaml and pods.yaml into DIR",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here so that `kvsched --help` does not pay for httpx and the demo data.
    from scheduler.demo.run import run_demo

    try:
        print(run_demo(Path(args.dump) if args.dump else None))
    except RuntimeError as exc:
        return fail(str(exc))
    return 0
