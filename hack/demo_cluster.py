"""`make demo-cluster`: the demo on a real control plane, scheduled by the real kube-scheduler.

Starts etcd + kube-apiserver (hack/controlplane), applies manifests/ with kubectl, creates the
example GPU pool of `kvsched demo` (Nodes, NodeInventories, running pods), starts the kvsched
extender in cluster mode and kube-scheduler with manifests/scheduler/scheduler-config.yaml,
then submits the example LLM pods one by one and prints where the real scheduler put them
(or the FailedScheduling event that kvsched's reasons produced). Stops everything at the end.

    python hack/demo_cluster.py
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from support.controlplane import ControlPlane, ControlPlaneUnavailable  # noqa: E402
from support.e2e import Extender, kubectl, scheduler_config  # noqa: E402

from scheduler.core.demand import gpu_request  # noqa: E402
from scheduler.demo.cluster import cluster_objects, demo_pods  # noqa: E402

POD_TIMEOUT_S = 30.0


def create(plane: ControlPlane, obj: dict[str, Any]) -> None:
    obj = copy.deepcopy(obj)
    kind = obj["kind"]
    meta = obj["metadata"]
    meta.pop("uid", None)
    if kind == "Node":
        plane.request("POST", "/api/v1/nodes", obj)
    elif kind == "NodeInventory":
        status = obj.pop("status")
        path = "/apis/kvsched.io/v1alpha1/nodeinventories"
        plane.request("POST", path, obj)
        plane.request(
            "PATCH",
            f"{path}/{meta['name']}/status",
            {"status": status},
            content_type="application/merge-patch+json",
        )
    elif kind == "Pod":
        obj.pop("status", None)
        plane.request("POST", f"/api/v1/namespaces/{meta['namespace']}/pods", obj)


def ensure_namespace(plane: ControlPlane, name: str) -> None:
    try:
        plane.request(
            "POST",
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
        )
    except Exception as exc:  # already there is fine
        if "AlreadyExists" not in str(exc):
            raise


def outcome(plane: ControlPlane, namespace: str, name: str) -> tuple[str, str, str]:
    """(node or PENDING, GPU ids, placement or the scheduling event) once it is known."""
    deadline = time.monotonic() + POD_TIMEOUT_S
    while True:
        pod = plane.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
        node = pod["spec"].get("nodeName")
        annotations = pod["metadata"].get("annotations") or {}
        if node:
            placement = annotations.get("kvsched.io/placement", "(bound without kvsched)")
            assigned = annotations.get("kvsched.io/predicted-gpus", "")
            gpus = assigned.split('"indices":[')[1].split("]")[0] if assigned else "-"
            return node, gpus, placement
        events = plane.request(
            "GET",
            f"/api/v1/namespaces/{namespace}/events?fieldSelector=involvedObject.name%3D{name}",
        )
        failed = [
            e["message"] for e in events.get("items", []) if e.get("reason") == "FailedScheduling"
        ]
        if failed:
            return "PENDING", "-", failed[-1]
        if time.monotonic() > deadline:
            return "PENDING", "-", "(no decision within the timeout)"
        time.sleep(0.3)


def main() -> int:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    work = Path(tempfile.mkdtemp(prefix="kvsched-demo-cluster-"))
    try:
        plane = ControlPlane.start(work / "controlplane")
    except ControlPlaneUnavailable as exc:
        print(f"demo-cluster: control plane unavailable: {exc}", file=sys.stderr)
        return 2
    extender = Extender(plane.kubeconfig, work)
    scheduler = None
    try:
        applied = kubectl(plane, "apply", "--server-side", "-k", "manifests/")
        if applied.returncode != 0:
            print(applied.stderr, file=sys.stderr)
            return 1
        kubectl(
            plane,
            "wait",
            "--for=condition=Established",
            "crd/nodeinventories.kvsched.io",
            "--timeout=60s",
        )
        ensure_namespace(plane, "llm")
        for obj in cluster_objects():
            create(plane, obj)
        extender.start()
        scheduler = plane.start_scheduler(scheduler_config(plane, extender.url, work))
        rows = [("POD", "GPUS", "NODE", "GPU IDS", "PLACEMENT / WHY PENDING")]
        for pod in demo_pods():
            create(plane, pod)
            meta = pod["metadata"]
            node, gpus, note = outcome(plane, meta["namespace"], meta["name"])
            rows.append((meta["name"], str(gpu_request(pod)), node, gpus, note))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        print(
            f"kvsched demo-cluster: real kube-scheduler {plane.server_url}, "
            f"extender {extender.url}\n"
        )
        for row in rows:
            print(
                "  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
            )
    finally:
        if scheduler is not None:
            plane.stop_scheduler(scheduler)
        extender.stop()
        plane.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
