"""Pieces several subcommands share: catalog loading and error exits."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from scheduler.models.catalog import Catalog

EXIT_USAGE = 2


def add_catalog_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--catalog",
        action="append",
        default=[],
        metavar="PATH",
        help="extra model catalog: YAML entries, a ConfigMap, HF config.json, or a folder of "
        "them (repeatable; later files win over earlier ones and over the built-in catalog)",
    )


def load_catalog(paths: Sequence[str]) -> Catalog:
    catalog = Catalog.builtin()
    for path in paths:
        catalog = catalog.merged(Catalog.from_path(path))
    return catalog


def fail(message: str) -> int:
    print(f"kvsched: {message}", file=sys.stderr)
    return EXIT_USAGE


def run_parsed(args: argparse.Namespace) -> int:
    """Run a parsed command (its `func`) as a console script: a reader that left the pipe
    (`kvsched plan ... | head`) is not an error of ours, and Ctrl-C exits 130."""
    try:
        status: int = args.func(args)
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
    return status
