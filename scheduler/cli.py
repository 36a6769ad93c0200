"""The ``kvsched`` console script: one subcommand per module under ``scheduler.commands``.

Each command module exposes ``register(subparsers)``, which adds its parser and sets
``func`` (``Callable[[argparse.Namespace], int]``) as the parser default.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from scheduler import __version__
from scheduler.commands.common import run_parsed

# Modules under scheduler.commands, in the order `kvsched --help` lists them.
COMMAND_MODULES = (
    "extender",
    "controller_cmd",
    "agent_cmd",
    "demo",
    "topology_cmd",
    "plan_cmd",
    "explain_cmd",
    "simulate_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvsched",
        description="KV-cache-aware scheduler extender for LLM-serving pods on GPU nodes.",
    )
    # The image check (hack/image) runs `kvsched --version` to prove the entrypoint works.
    parser.add_argument("--version", action="version", version=f"kvsched {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"scheduler.commands.{name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_parsed(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
