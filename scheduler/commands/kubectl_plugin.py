"""``kubectl kvsched``: kvsched's view of the cluster from kubectl.

Installed as the ``kubectl-kvsched`` console script; kubectl finds it on ``PATH`` and runs it
for ``kubectl kvsched ...``. Two commands:

- ``explain [NAMESPACE/]POD`` (or ``-f pod.yaml``): per node whether the pod fits and why not,
  the score and its terms, the GPUs kvsched predicts the device plugin will hand out, and who
  holds each busy GPU on whose word (``kubelet``: the agent read the truth; ``prediction``:
  kvsched's). The same computation as ``kvsched explain`` (:func:`explain_cmd.explain_pod`):
  the extender's store over a snapshot of Nodes, Pods and NodeInventories.
- ``nodes [NODE...]``: per GPU node the free and total GPUs, the largest free GPU set at the
  best link tier the free GPUs offer, the cached models by tier, cache warming (``-`` until
  NodeInventory reports any), the inventory's age (``status.observedAt``), who wrote it
  (``agent``/``controller``) and who vouches for its GPU list (``kubelet``/``prediction``).

The cluster is reached as kubectl reaches it: ``--kubeconfig``, else ``$KUBECONFIG`` (a
list of files is merged), else ``~/.kube/config``, else the in-cluster service account;
``--context`` picks a context; a bare POD is looked up in ``-n/--namespace``, else the
context's namespace, else ``default``. Output is a plain text table, or ``-o json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from scheduler.commands.common import add_catalog_argument, load_catalog, run_parsed
from scheduler.commands.explain_cmd import explain_pod, list_cluster
from scheduler.core.node import NodeState
from scheduler.inventory.spec import WarmingSpec
from scheduler.inventory.status import (
    MAX_WARMING_MODELS,
    InventoryStatus,
    WarmingProgress,
    now,
)
from scheduler.models.catalog import Catalog
from scheduler.state.kube import KubeApi, KubeError
from scheduler.state.offline import ClusterFileError, ClusterObjects, load_cluster
from scheduler.state.store import ClusterStore
from topology.select import best_gpu_set

PROG = "kubectl kvsched"
EXIT_ERROR = 1
EXIT_USAGE = 2
# Tiers in the order `nodes` lists them: fastest to load from first.
MODEL_TIERS = ("gpu", "host-memory", "local-disk")
DEFAULT_KUBECONFIG = Path("~/.kube/config")


# ---- arguments -----------------------------------------------------------------------------


def _global_flags(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """kubectl's connection flags and -o. Defined on the main parser and again (defaults
    suppressed) on each command, so that they work before and after the command name, as
    `kubectl kvsched nodes --context x` passes them."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--kubeconfig", metavar="PATH", default=default(None), help="kubeconfig file"
    )
    parser.add_argument(
        "--context", metavar="NAME", default=default(None), help="kubeconfig context"
    )
    parser.add_argument(
        "-n",
        "--namespace",
        metavar="NS",
        default=default(None),
        help="namespace of a bare POD (default: the context's, else 'default')",
    )
    parser.add_argument(
        "-o",
        "--output",
        choices=("text", "json"),
        default=default("text"),
        help="plain text table (default) or JSON",
    )
    parser.add_argument(
        "--cluster-file",
        metavar="PATH",
        default=default(None),
        help="read Nodes, Pods and NodeInventories from this file or folder instead "
        "(`kubectl get -o yaml` output)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="kvsched's view of the cluster: why a pod goes where, and what each GPU "
        "node holds. Uses the current kubeconfig context, like kubectl.",
    )
    _global_flags(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    explain = commands.add_parser(
        "explain",
        help="per node: fits or why not, score and terms, predicted GPUs, who holds busy GPUs",
        description="Evaluate one pod against every node as the kvsched extender does.",
    )
    _global_flags(explain, suppress=True)
    explain.add_argument("pod_ref", nargs="?", metavar="[NAMESPACE/]POD")
    explain.add_argument(
        "-f", "--filename", metavar="FILE", help="a file holding one Pod (e.g. not created yet)"
    )
    add_catalog_argument(explain)
    explain.set_defaults(func=run_explain)

    nodes = commands.add_parser(
        "nodes",
        help="per GPU node: free GPUs, best free set, cached models, inventory age and source",
        description="What kvsched knows about each GPU node.",
    )
    _global_flags(nodes, suppress=True)
    nodes.add_argument("names", nargs="*", metavar="NODE", help="only these nodes")
    add_catalog_argument(nodes)
    nodes.set_defaults(func=run_nodes)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_parsed(build_parser().parse_args(argv))


def _fail(message: str, status: int = EXIT_ERROR) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


# ---- the cluster, as kubectl finds it ----------------------------------------------------


def kubeconfig_path(explicit: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """kubectl's order: --kubeconfig, $KUBECONFIG (':'-separated files, merged), then
    ~/.kube/config; None when none of them exists (then the in-cluster account is tried)."""
    if explicit:
        return explicit
    env = os.environ if environ is None else environ
    if env.get("KUBECONFIG"):
        return env["KUBECONFIG"]
    default = DEFAULT_KUBECONFIG.expanduser()
    return str(default) if default.exists() else None


def context_namespace(path: str | None, context: str | None) -> str | None:
    """The namespace the kubeconfig context names (the current one unless `context`)."""
    if path is None:
        return None
    from kubernetes import config

    try:
        contexts, current = config.list_kube_config_contexts(config_file=path)  # type: ignore[no-untyped-call]
    except Exception:  # no contexts, unreadable: the connection will say what is wrong
        return None
    wanted = context or (current or {}).get("name")
    for entry in contexts or []:
        if entry.get("name") == wanted:
            namespace = (entry.get("context") or {}).get("namespace")
            return namespace if isinstance(namespace, str) and namespace else None
    return None


def connect(kubeconfig: str | None, context: str | None) -> KubeApi:
    path = kubeconfig_path(kubeconfig)
    if path is None and context is None:
        return KubeApi.connect(None)  # in-cluster, else the client's own error
    return KubeApi.connect(path, context)


def read_cluster(args: argparse.Namespace) -> ClusterObjects:
    if args.cluster_file is not None:
        return load_cluster(args.cluster_file)
    return list_cluster(connect(args.kubeconfig, args.context))


def _snapshot(args: argparse.Namespace) -> tuple[Catalog, ClusterObjects] | int:
    """The catalog and the cluster's objects, or an exit status (the error printed)."""
    try:
        catalog = load_catalog(args.catalog)
        return catalog, read_cluster(args)
    except (ValueError, OSError, ClusterFileError, KubeError) as exc:
        return _fail(str(exc))
    except Exception as exc:  # the client raises several unrelated types for bad configs
        return _fail(f"cannot read the cluster: {exc}")


# ---- explain -------------------------------------------------------------------------------


def pod_reference(ref: str, namespace: str | None) -> str:
    """NAMESPACE/POD as given, or POD in `namespace` (default `default`)."""
    if "/" in ref:
        return ref
    return f"{namespace or 'default'}/{ref}"


def run_explain(args: argparse.Namespace) -> int:
    if args.filename:
        ref = args.filename
    elif args.pod_ref:
        namespace = args.namespace
        if namespace is None and args.cluster_file is None:
            namespace = context_namespace(kubeconfig_path(args.kubeconfig), args.context)
        ref = pod_reference(args.pod_ref, namespace)
    else:
        return _fail(f"name the pod: {PROG} explain [NAMESPACE/]POD (or -f FILE)", EXIT_USAGE)
    snapshot = _snapshot(args)
    if isinstance(snapshot, int):
        return snapshot
    catalog, objects = snapshot
    explanation = explain_pod(objects, ref, catalog)
    if explanation is None:
        what = f"file {ref!r}" if args.filename else f"pod {ref!r}"
        return _fail(f"{what} not found")
    if args.output == "json":
        print(json.dumps(explanation, indent=2))
        return 0
    for line in explain_lines(explanation):
        print(line)
    return 0


def explain_lines(explanation: Mapping[str, Any]) -> list[str]:
    """The explanation as a header line and a table, best node first."""
    header = (
        f"pod {explanation['pod']}: {explanation['gpus']} GPU(s), "
        f"model {explanation['model'] or '-'}"
    )
    if explanation["error"]:
        return [header, f"rejected on every node: {explanation['error']}"]
    rows: list[list[str]] = []
    for row in explanation["nodes"]:
        fits = bool(row["fits"])
        cold = row.get("coldStart") or {}
        terms = " ".join(f"{k}={v}" for k, v in (row.get("terms") or {}).items())
        rows.append(
            [
                str(row["node"]),
                "yes" if fits else "no",
                str(row["score"]) if fits else "-",
                _indices(row.get("predictedGpus") or []) if fits else "-",
                str((row.get("gpuSet") or {}).get("tier") or "-") if fits else "-",
                str(cold.get("tier") or "-") if fits else "-",
                f"{cold['readySeconds']:g}s" if fits and "readySeconds" in cold else "-",
                held_text(row.get("heldGpus") or []),
                terms if fits else str(row.get("reason") or ""),
            ]
        )
    columns = [
        "NODE",
        "FITS",
        "SCORE",
        "PREDICTED GPUS",
        "GPU SET",
        "WEIGHTS FROM",
        "READY",
        "BUSY GPUS (HOLDER, ON WHOSE WORD)",
        "TERMS / REASON",
    ]
    return [header, *table(columns, rows)]


def held_text(held: Sequence[Mapping[str, Any]]) -> str:
    """Busy GPUs grouped by holder: `0,1:ns/a(kubelet) 2:ns/b(prediction) 7:-(unavailable)`."""
    groups: dict[tuple[str, str], list[int]] = {}
    for entry in held:
        key = (str(entry.get("pod") or "-"), str(entry.get("source") or "-"))
        groups.setdefault(key, []).append(int(entry["index"]))
    if not groups:
        return "-"
    return " ".join(f"{_indices(ix)}:{pod}({source})" for (pod, source), ix in groups.items())


def _indices(indices: Sequence[int]) -> str:
    return ",".join(str(i) for i in indices) or "-"


# ---- nodes ---------------------------------------------------------------------------------


def run_nodes(args: argparse.Namespace) -> int:
    snapshot = _snapshot(args)
    if isinstance(snapshot, int):
        return snapshot
    catalog, objects = snapshot
    rows = node_rows(objects, catalog, only=args.names or None)
    missing = sorted(set(args.names) - {r["node"] for r in rows})
    if args.output == "json":
        print(json.dumps({"nodes": rows}, indent=2))
    else:
        for line in nodes_lines(rows):
            print(line)
    if missing:
        return _fail(f"no GPU node named {', '.join(missing)}")
    return 0


def node_rows(
    objects: ClusterObjects,
    catalog: Catalog,
    *,
    only: Sequence[str] | None = None,
    clock: Callable[[], dt.datetime] = now,
) -> list[dict[str, Any]]:
    """Per GPU node (GPUs allocatable, or a NodeInventory), sorted by name."""
    store = ClusterStore(catalog)
    store.load(objects)
    inventories = {
        str(inv.get("metadata", {}).get("name")): inv
        for inv in objects.inventories
        if isinstance(inv.get("metadata"), Mapping)
    }
    moment = clock()
    rows = []
    for name in sorted(store.node_names()):
        if only is not None and name not in only:
            continue
        state = store.node(name)
        inventory = inventories.get(name)
        if state is None or (state.allocatable_gpus <= 0 and inventory is None):
            continue
        rows.append(node_row(state, inventory, moment))
    return rows


def node_row(
    state: NodeState, inventory: Mapping[str, Any] | None, moment: dt.datetime
) -> dict[str, Any]:
    free = sorted(state.usable_free_gpus)
    status = _inventory_status(inventory)
    models: dict[str, list[str]] = {tier: [] for tier in MODEL_TIERS}
    observed: dt.datetime | None = None
    if status is not None:
        for model in sorted(status.models, key=lambda m: m.name.lower()):
            label = model.name + (f"@{model.revision}" if model.revision else "")
            models.setdefault(model.tier, []).append(label)
        observed = status.observed_at
    return {
        "node": state.name,
        "product": state.gpu_product,
        "gpus": {"free": len(free), "total": state.allocatable_gpus, "freeIndices": free},
        "bestFreeSet": best_free_set(state, free),
        "models": models,
        "warming": warming(inventory),
        "inventory": None
        if inventory is None
        else {
            "observedAt": observed.isoformat() if observed is not None else None,
            "ageSeconds": (
                round((moment - observed).total_seconds(), 1) if observed is not None else None
            ),
            # As written (the parsed status defaults a bad value; people want to see it).
            "source": _short(inventory.get("status"), "source"),
            "allocatedSource": _short(inventory.get("status"), "allocatedSource"),
        },
        # Where the extender's facts about the node come from: its inventory, or its GPU
        # Feature Discovery labels.
        "placedFrom": state.source,
    }


def best_free_set(state: NodeState, free: Sequence[int]) -> dict[str, Any] | None:
    """The largest set of free GPUs at the best link tier any free pair reaches (one GPU:
    `single-gpu`), i.e. the biggest well-connected pod the node can take now. None when no
    GPU is free or the node's topology is unknown."""
    topology = state.topology
    if topology is None or not free:
        return None
    free_set = frozenset(free)
    if len(free) == 1:
        return {"size": 1, "tier": "single-gpu", "gpus": list(free)}
    best = best_gpu_set(topology, free_set, 2)
    if best is None:
        return None
    for k in range(3, len(free) + 1):
        candidate = best_gpu_set(topology, free_set, k)
        if candidate is None or candidate.tier < best.tier:
            break
        best = candidate
    return {
        "size": len(best.gpus),
        "tier": best.tier.name.lower().replace("_", "-"),
        "gpus": list(best.gpus),
    }


def warming(inventory: Mapping[str, Any] | None) -> list[dict[str, Any]] | None:
    """Cache warming on the node: each model the controller asks for (``spec.warming``) or the
    agent is copying or has copied (``status.warming.models``), with the agent's state
    (``asked`` while the agent has not picked it up) and ``progress`` in [0, 1] where the
    agent knows the total. None when neither side lists anything. Entries that do not parse
    are left out: a listing must not fail over one node's odd object."""
    if not isinstance(inventory, Mapping):
        return None
    asked = WarmingSpec.from_spec(inventory.get("spec"))
    rows: dict[tuple[str, str | None], dict[str, Any]] = {}
    for request in asked.models:
        rows[request.key] = {"name": request.name, "state": "asked", "progress": None}
    status = inventory.get("status")
    reported = status.get("warming") if isinstance(status, Mapping) else None
    items = reported.get("models") if isinstance(reported, Mapping) else None
    for item in items[:MAX_WARMING_MODELS] if isinstance(items, list) else []:
        try:
            copy = WarmingProgress.from_dict(item)
        except (ValueError, TypeError):
            continue
        fraction = None
        if copy.bytes_total:
            fraction = min(1.0, copy.bytes_done / copy.bytes_total)
        # The agent may name the revision it resolved where the controller asked for none.
        key = copy.key if copy.key in rows else (copy.name.lower(), None)
        if key not in rows:
            key = copy.key
        rows[key] = {"name": copy.name, "state": copy.state, "progress": fraction}
    return [rows[key] for key in sorted(rows, key=lambda k: (k[0], k[1] or ""))] or None


def _short(status: object, field: str, limit: int = 32) -> str | None:
    value = status.get(field) if isinstance(status, Mapping) else None
    if not isinstance(value, str) or not value:
        return None
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _inventory_status(inventory: Mapping[str, Any] | None) -> InventoryStatus | None:
    if inventory is None:
        return None
    try:
        return InventoryStatus.from_status(inventory.get("status"))
    except (ValueError, TypeError):  # a broken inventory: the extender ignores it too
        return None


def nodes_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    columns = [
        "NODE",
        "GPUS FREE",
        "BEST FREE SET",
        "CACHED MODELS (BY TIER)",
        "WARMING",
        "INVENTORY AGE",
        "SOURCE",
        "ALLOCATED",
    ]
    lines = []
    for row in rows:
        best = row["bestFreeSet"]
        inventory = row["inventory"] or {}
        models = "; ".join(
            f"{tier}: {', '.join(names)}" for tier, names in row["models"].items() if names
        )
        warm = row["warming"]
        lines.append(
            [
                row["node"],
                f"{row['gpus']['free']}/{row['gpus']['total']}",
                f"{best['size']} {best['tier']}" if best else "-",
                models or "-",
                ", ".join(
                    f"{w['name']} {w['state']}"
                    + (f" {w['progress']:.0%}" if w["progress"] is not None else "")
                    for w in warm
                )
                if warm
                else "-",
                human_age(inventory.get("ageSeconds")),
                inventory.get("source") or ("labels" if not row["inventory"] else "-"),
                inventory.get("allocatedSource") or "-",
            ]
        )
    return table(columns, lines)


def human_age(seconds: float | None) -> str:
    """Ages as kubectl prints them: 45s, 3m20s, 17m, 5h3m, 3d."""
    if seconds is None:
        return "-"
    if seconds < 0:
        return "0s"  # clock skew: observed "in the future"
    total = int(seconds)
    if total < 120:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 10:
        return f"{minutes}m{secs}s" if secs else f"{minutes}m"
    hours, mins = divmod(minutes, 60)
    if hours < 1:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{mins}m" if mins else f"{hours}h"
    days = hours // 24
    if days < 2:
        return f"{hours}h"
    return f"{days}d"


def table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """kubectl's plain table: upper-case headers, columns padded by three spaces."""
    widths = [len(c) for c in columns]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "   ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return [line(columns), *(line(row) for row in rows)]


if __name__ == "__main__":
    sys.exit(main())
