"""`kvsched explain`: the per-node breakdown for a pod, offline, from a cluster file."""

from __future__ import annotations

import argparse
import json
from typing import Any

from scheduler.commands.common import add_catalog_argument, fail, load_catalog
from scheduler.core.demand import parse_demand
from scheduler.state.offline import ClusterFileError, load_cluster
from scheduler.state.store import ClusterStore


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "explain",
        help="show every score term and rejection reason per node for one pod",
        description="Evaluate a pod against every node of a cluster file and print, per node, "
        "whether it fits (and why not), the score terms and the chosen GPUs.",
    )
    parser.add_argument("--cluster-file", required=True, metavar="PATH")
    parser.add_argument(
        "--pod",
        required=True,
        metavar="REF",
        help="NAMESPACE/NAME of a pod in the cluster file, or a file holding one Pod",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_catalog_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        catalog = load_catalog(args.catalog)
        objects = load_cluster(args.cluster_file)
    except (ValueError, OSError, ClusterFileError) as exc:
        return fail(str(exc))
    store = ClusterStore(catalog)
    store.load(objects)
    pod = _find_pod(store, args.pod)
    if pod is None:
        return fail(f"pod {args.pod!r} is neither NAMESPACE/NAME in the cluster file nor a file")
    demand = parse_demand(pod, catalog)
    rows = store.explain(demand)
    if args.json:
        print(json.dumps({"pod": demand.ref, "error": demand.error, "nodes": rows}, indent=2))
        return 0
    print(f"pod {demand.ref}: {demand.gpus} GPU(s), model {demand.model or '-'}")
    if demand.error:
        print(f"  rejected everywhere: {demand.error}")
        return 0
    for row in rows:
        if row["fits"]:
            cold = row.get("coldStart", {})
            print(
                f"  {row['node']:<12} score {row['score']:>2}  gpus {row['gpus']}  "
                f"set {row.get('gpuSet', {}).get('tier', '-')}  weights {cold.get('tier', '-')}"
                f"  ready {cold.get('readySeconds', '-')}s  terms {row['terms']}"
            )
        else:
            print(f"  {row['node']:<12} no: {row['reason']}")
    return 0


def _find_pod(store: ClusterStore, ref: str) -> dict[str, Any] | None:
    namespace, _, name = ref.partition("/")
    if name:
        found = store.pod_object(namespace, name)
        if found is not None:
            return dict(found)
    try:
        pods = load_cluster(ref).pods
    except ClusterFileError:
        return None
    return pods[0] if pods else None
