"""`kvsched demo`: start the extender on the example cluster and schedule pods through it.

The driver plays kube-scheduler's part over real HTTP: its in-tree resource filter (only nodes
with enough unallocated nvidia.com/gpu are sent), then the extender's filter, prioritize (skipped
when one node is left, as kube-scheduler does), the highest score wins, bind. Then it asks
/explain for the breakdown and prints where each pod went, the runner-up, the estimated time to
ready, the chosen GPUs and why the other nodes lost.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from scheduler.core.demand import gpu_request
from scheduler.demo.cluster import cluster_objects, demo_pods

READY_TIMEOUT_S = 30.0
SHOWN_REASONS = 4


@dataclass
class Outcome:
    pod: str
    gpus: int
    model: str
    node: str | None = None
    score: int | None = None
    gpu_indices: list[int] = field(default_factory=list)
    gpu_set: str = ""
    weights_from: str = ""
    ready_seconds: float | None = None
    runner_up: str = ""
    losers: list[str] = field(default_factory=list)
    error: str = ""


def write_cluster(folder: Path) -> Path:
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump_all(cluster_objects(), sort_keys=False), encoding="utf-8")
    (folder / "pods.yaml").write_text(
        yaml.safe_dump_all(demo_pods(), sort_keys=False), encoding="utf-8"
    )
    return path


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports on 127.0.0.1. The sockets are held until all are chosen:
    one at a time, the kernel may hand the same port out twice (two servers then race for it,
    and one client talks to the other's server)."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def free_port() -> int:
    return free_ports(1)[0]


@contextlib.contextmanager
def running_server(
    command: list[str], port: int, timeout_s: float = READY_TIMEOUT_S
) -> Iterator[str]:
    """Run an HTTP server process (the extender, or the benchmark's floor) until the block
    ends; yields its URL once GET /readyz answers 200."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{' '.join(command[:5])} exited with {process.returncode}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(command[:5])} not ready after {timeout_s:.0f}s")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def extender_command(cluster_file: Path, port: int) -> list[str]:
    """`kvsched extender` on a cluster file, as its own process, as it runs beside
    kube-scheduler."""
    return [
        sys.executable,
        "-m",
        "scheduler.cli",
        "extender",
        "--cluster-file",
        str(cluster_file),
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]


class SchedulerEmulator:
    """The parts of kube-scheduler's cycle that decide what the extender sees and does."""

    def __init__(self, client: httpx.Client, objects: Sequence[Mapping[str, Any]]) -> None:
        self.client = client
        self.free: dict[str, int] = {}
        for obj in objects:
            if obj["kind"] == "Node":
                alloc = obj["status"].get("allocatable", {}).get("nvidia.com/gpu", "0")
                self.free[obj["metadata"]["name"]] = int(alloc)
        for obj in objects:
            if obj["kind"] == "Pod" and obj["spec"].get("nodeName"):
                self.free[obj["spec"]["nodeName"]] -= gpu_request(obj)

    def schedule(self, pod: Mapping[str, Any]) -> Outcome:
        meta = pod["metadata"]
        gpus = gpu_request(pod)
        outcome = Outcome(
            pod=meta["name"],
            gpus=gpus,
            model=meta.get("annotations", {}).get("kvsched.io/model", "-"),
        )
        # In-tree NodeResourcesFit: only nodes with enough unallocated GPUs reach the extender.
        names = sorted(n for n, free in self.free.items() if free >= gpus)
        result = self._post("/filter", {"Pod": pod, "Nodes": None, "NodeNames": names})
        passed: list[str] = result["NodeNames"] or []
        if not passed:
            reasons = {**result["FailedNodes"], **result["FailedAndUnresolvableNodes"]}
            outcome.error = "Pending: " + summarize(reasons, len(self.free) - len(names), gpus)
            return outcome
        if len(passed) == 1:
            scores = {passed[0]: 0}
        else:
            ranked = self._post("/prioritize", {"Pod": pod, "Nodes": None, "NodeNames": passed})
            scores = {entry["Host"]: entry["Score"] for entry in ranked}
        # kube-scheduler breaks ties at random; the demo breaks them by name to be repeatable.
        node = sorted(passed, key=lambda n: (-scores[n], n))[0]
        explanation = self._post("/explain", {"Pod": pod, "Nodes": None, "NodeNames": names})
        bind = self._post(
            "/bind",
            {
                "PodName": meta["name"],
                "PodNamespace": meta["namespace"],
                "PodUID": meta["uid"],
                "Node": node,
            },
        )
        if bind["Error"]:
            outcome.error = "bind failed: " + bind["Error"]
            return outcome
        self.free[node] -= gpus
        rows = {row["node"]: row for row in explanation["nodes"]}
        chosen = rows[node]
        outcome.node, outcome.score = node, scores[node]
        outcome.gpu_indices = chosen["predictedGpus"]
        outcome.gpu_set = chosen.get("gpuSet", {}).get("tier", "")
        cold = chosen.get("coldStart")
        if cold is not None:
            outcome.weights_from = cold["tier"]
            outcome.ready_seconds = cold["readySeconds"]
        others = [n for n in sorted(passed, key=lambda n: (-scores[n], n)) if n != node]
        if others:
            outcome.runner_up = f"{others[0]} ({scores[others[0]]})"
            outcome.losers.append(lost_by_score(chosen, rows[others[0]]))
        failed = {
            r["node"]: r["reason"]
            for r in explanation["nodes"]
            if not r["fits"] and r["node"] in names
        }
        if failed:
            outcome.losers.append(summarize(failed, len(self.free) - len(names), gpus))
        return outcome

    def _post(self, path: str, body: Mapping[str, Any]) -> Any:
        response = self.client.post(path, json=body)
        response.raise_for_status()
        return response.json()


def lost_by_score(winner: Mapping[str, Any], other: Mapping[str, Any]) -> str:
    """Say which term cost the runner-up the most."""
    gaps = {term: winner["terms"][term] - other["terms"].get(term, 0.0) for term in winner["terms"]}
    term = max(gaps, key=lambda t: gaps[t])
    if gaps[term] <= 0:
        return f"runner-up {other['node']} tied on every term (ties broken by name)"
    cold = other.get("coldStart", {})
    detail = {
        "ready": f"weights from {cold.get('tier', '?')}, ready ~{cold.get('readySeconds', 0):.0f}s",
        "gpu_set": other.get("gpuSet", {}).get("description", "?"),
        "right_size": f"uses {other.get('rightSize', 0):.0%} of each GPU",
        "fragmentation": f"leaves free GPUs {other.get('fragmentationAfter', 0):.0%} fragmented",
    }[term]
    return f"runner-up {other['node']} lost on {term}: {detail}"


def summarize(reasons: Mapping[str, str], resource_filtered: int, gpus: int) -> str:
    counts = Counter(reasons.values())
    parts = [f"{n} node{'s' if n > 1 else ''}: {reason}" for reason, n in counts.most_common(3)]
    if len(counts) > 3:
        parts.append(
            f"{sum(counts.values()) - sum(n for _, n in counts.most_common(3))} "
            "nodes: other reasons"
        )
    if resource_filtered:
        parts.append(
            f"{resource_filtered} nodes: fewer than {gpus} unallocated "
            f"GPU{'s' if gpus > 1 else ''} (kube-scheduler's own filter)"
        )
    return "; ".join(parts)


def render(outcomes: Sequence[Outcome]) -> str:
    header = (
        "POD",
        "GPUS",
        "MODEL",
        "NODE",
        "PREDICTED GPUS",
        "GPU SET",
        "WEIGHTS FROM",
        "READY",
        "RUNNER-UP",
    )
    rows = [header]
    for o in outcomes:
        ready = f"{o.ready_seconds:.0f}s" if o.ready_seconds is not None else "-"
        rows.append(
            (
                o.pod,
                str(o.gpus),
                short_model(o.model),
                o.node or "PENDING",
                ",".join(map(str, o.gpu_indices)) or "-",
                o.gpu_set or "-",
                o.weights_from or "-",
                ready if o.node else "-",
                o.runner_up or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append("Why the other nodes lost:")
    for o in outcomes:
        notes = [o.error] if o.error else o.losers
        for note in notes:
            lines.append(f"  {o.pod}: {note}")
    return "\n".join(lines)


def short_model(model: str) -> str:
    return model.split("/")[-1]


def run_demo(dump: Path | None = None) -> str:
    objects = cluster_objects()
    with tempfile.TemporaryDirectory(prefix="kvsched-demo-") as tmp:
        folder = dump if dump is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        cluster_file = write_cluster(folder)
        port = free_port()
        with (
            running_server(extender_command(cluster_file, port), port) as url,
            httpx.Client(base_url=url, timeout=10.0) as client,
        ):
            emulator = SchedulerEmulator(client, objects)
            outcomes = [emulator.schedule(pod) for pod in demo_pods()]
    gpu_nodes = sum(1 for o in objects if o["kind"] == "Node") - 2
    title = (
        f"kvsched demo: {len(outcomes)} LLM pods onto {gpu_nodes} GPU nodes "
        "(kube-scheduler emulated; extender over HTTP)"
    )
    return title + "\n\n" + render(outcomes)
