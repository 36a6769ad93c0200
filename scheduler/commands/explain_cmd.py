"""`kvsched explain`: the per-node breakdown for a pod, from a live cluster or a cluster file."""

from __future__ import annotations

import argparse
import json
from typing import Any

from scheduler.commands.common import add_catalog_argument, fail, load_catalog
from scheduler.core.demand import parse_demand
from scheduler.extender.explain import explanation
from scheduler.models.catalog import Catalog
from scheduler.state.kube import KubeApi, KubeError, NotFoundError
from scheduler.state.offline import ClusterFileError, ClusterObjects, load_cluster
from scheduler.state.store import ClusterStore


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "explain",
        help="show every score term and rejection reason per node for one pod",
        description="Evaluate a pod against every node and print, per node, whether it fits "
        "(and why not), the score terms and the chosen GPUs. The cluster is read from the API "
        "server (kubeconfig) unless --cluster-file is given.",
    )
    parser.add_argument(
        "pod_ref",
        nargs="?",
        metavar="NAMESPACE/POD",
        help="the pod to explain (in the cluster, or in the cluster file)",
    )
    parser.add_argument("--cluster-file", metavar="PATH", help="offline: read this file instead")
    parser.add_argument("--kubeconfig", metavar="PATH")
    parser.add_argument(
        "--pod",
        metavar="REF",
        help="NAMESPACE/NAME, or a file holding one Pod (e.g. one not created yet)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_catalog_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    ref = args.pod or args.pod_ref
    if not ref:
        return fail("name the pod: kvsched explain NAMESPACE/POD (or --pod FILE)")
    try:
        catalog = load_catalog(args.catalog)
        objects = (
            load_cluster(args.cluster_file)
            if args.cluster_file is not None
            else list_cluster(KubeApi.connect(args.kubeconfig))
        )
    except (ValueError, OSError, ClusterFileError, KubeError) as exc:
        return fail(str(exc))
    except Exception as exc:  # the client raises several unrelated types for bad configs
        return fail(f"cannot read the cluster: {exc}")
    where = "the cluster file" if args.cluster_file else "the cluster"
    answer = explain_pod(objects, ref, catalog)
    if answer is None:
        return fail(f"pod {ref!r} is neither NAMESPACE/NAME in {where} nor a file")
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    for line in explanation_lines(answer):
        print(line)
    return 0


def explain_pod(objects: ClusterObjects, ref: str, catalog: Catalog) -> dict[str, Any] | None:
    """The extender's explanation of one pod against a snapshot of the cluster: what
    `kvsched explain` and `kubectl kvsched explain` print. `ref` is NAMESPACE/NAME of a pod in
    `objects`, or a file holding one Pod; None when it is neither.

    The extender's own answer (scheduler.extender.explain.explanation, what POST /explain
    gives): `pod` (NAMESPACE/NAME), `gpus`, `model`, `error` (the pod's own spec error, which
    rejects it everywhere), `plan`, `nodes` (per node, best first: fits, reason, score, terms,
    predictedGpus, gpuSet, coldStart, memory, heldGpus)."""
    store = ClusterStore(catalog)
    store.load(objects)
    pod = _find_pod(store, ref)
    if pod is None:
        return None
    return explanation(store, parse_demand(pod, catalog), None)


def explanation_lines(answer: dict[str, Any]) -> list[str]:
    """`explain_pod`'s answer as text: one line per node (and one for its held GPUs)."""
    lines = [f"pod {answer['pod']}: {answer['gpus']} GPU(s), model {answer['model'] or '-'}"]
    if answer["error"]:
        lines.append(f"  rejected everywhere: {answer['error']}")
        return lines
    for row in answer["nodes"]:
        if row["fits"]:
            cold = row.get("coldStart", {})
            lines.append(
                f"  {row['node']:<12} score {row['score']:>2}  "
                f"predicted gpus {row['predictedGpus']}  "
                f"set {row.get('gpuSet', {}).get('tier', '-')}  weights {cold.get('tier', '-')}"
                f"  ready {cold.get('readySeconds', '-')}s  terms {row['terms']}"
            )
        else:
            lines.append(f"  {row['node']:<12} no: {row['reason']}")
        held = ", ".join(
            f"{h['index']}:{h['pod'] or '-'} ({h['source']})" for h in row.get("heldGpus", [])
        )
        if held:
            lines.append(f"  {'':<12} held: {held}")
    return lines


def list_cluster(api: KubeApi) -> ClusterObjects:
    """One consistent-enough snapshot of the cluster: Nodes, NodeInventories (if served), Pods."""
    objects = ClusterObjects()
    objects.nodes = api.list("Node").items
    objects.pods = api.list("Pod").items
    try:
        objects.inventories = api.list("NodeInventory").items
    except NotFoundError:
        objects.inventories = []
    return objects


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
