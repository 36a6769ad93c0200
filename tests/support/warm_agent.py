"""The node agent with its fetcher on (`kvsched agent --warm-source ...`), as a long-running
child process the way the DaemonSet runs it, plus helpers for e2e tests of cache warming:
a real model folder on disk, and spec.warming written on the node's NodeInventory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from support.controlplane import REPO_ROOT, ApiError, ControlPlane
from support.e2e import INVENTORY_PATH, ChildProcess


class WarmAgent(ChildProcess):
    """`kvsched agent` for ``node`` copying from ``source`` into ``cache`` (also its
    --model-cache), cycling every ``interval`` seconds, without the kubelet socket."""

    def __init__(
        self,
        plane: ControlPlane,
        node: str,
        source: Path,
        cache: Path,
        log_dir: Path,
        extra: Sequence[str] = (),
        interval: float = 1.0,
    ) -> None:
        self.plane, self.node, self.source, self.cache = plane, node, source, cache
        self.extra = list(extra)
        self.interval = interval
        self.log_path = log_dir / f"agent-{node}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "scheduler.cli",
            "agent",
            "--node-name",
            self.node,
            "--model-cache",
            str(self.cache),
            "--warm-source",
            str(self.source),
            "--warm-cache-dir",
            str(self.cache),
            *self.extra,
            "--interval",
            str(self.interval),
            "--no-pod-resources",
            "--metrics-port",
            "0",
            "--kubeconfig",
            str(self.plane.kubeconfig),
            "--log-format",
            "text",
        ]

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command(),
            cwd=REPO_ROOT,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def kill(self) -> None:
        """SIGKILL: the agent dies mid-whatever, as on an OOM kill or a node reboot."""
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
            self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def write_model(folder: Path, weight_files: Mapping[str, int], seed: int = 0) -> int:
    """A plain model folder: config.json plus weight files of the given sizes (bytes that
    differ per file and seed); the total size."""
    folder.mkdir(parents=True, exist_ok=True)
    config = b'{"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2}'
    (folder / "config.json").write_bytes(config)
    total = len(config)
    for index, (name, size) in enumerate(sorted(weight_files.items())):
        block = bytes((seed * 31 + index * 7 + i) % 256 for i in range(4096))
        with open(folder / name, "wb") as handle:
            left = size
            while left > 0:
                handle.write(block[: min(left, len(block))])
                left -= len(block)
        total += size
    return total


def set_warming(plane: ControlPlane, node: str, models: Sequence[Mapping[str, Any]]) -> None:
    """Write spec.warming on the node's NodeInventory (created when missing), as the
    controller's warming planner does."""
    body = {"spec": {"warming": {"models": list(models)}}}
    try:
        plane.request(
            "PATCH",
            f"{INVENTORY_PATH}/{node}",
            body,
            content_type="application/merge-patch+json",
        )
    except ApiError as exc:
        if exc.status != 404:
            raise
        plane.request(
            "POST",
            INVENTORY_PATH,
            {
                "apiVersion": "kvsched.io/v1alpha1",
                "kind": "NodeInventory",
                "metadata": {"name": node, "labels": {"kvsched.io/node": node}},
                **body,
            },
        )


def warming_states(plane: ControlPlane, node: str) -> dict[str, dict[str, Any]]:
    """status.warming.models by lower-cased name."""
    try:
        inventory = plane.request("GET", f"{INVENTORY_PATH}/{node}")
    except ApiError:
        return {}
    warming = ((inventory.get("status") or {}).get("warming") or {}).get("models") or []
    return {m["name"].lower(): m for m in warming}
