"""The real `kvsched extender` process for API tests: its command line over a cluster file, a
one-node cluster file, waiting for /readyz, and reading one sample off /metrics."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import httpx
import yaml

from scheduler.demo import run
from support.k8s import gpu_node

STARTUP_TIMEOUT_S = 30.0


def extender_command(cluster: Path, port: int, *flags: str) -> list[str]:
    """`kvsched extender` serving `cluster` on `port`, warnings only, then `flags`."""
    return [*run.extender_command(cluster, port), *flags]


def one_node_cluster(folder: Path) -> Path:
    """folder/cluster.yaml holding one idle 8-GPU node named "a"."""
    cluster = folder / "cluster.yaml"
    cluster.write_text(yaml.safe_dump({"kind": "Node", **gpu_node("a")}))
    return cluster


def wait_ready(
    base: str, proc: subprocess.Popen[bytes], timeout_s: float = STARTUP_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"extender exited early with {proc.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("extender did not become ready")


def sample(text: str, name: str, **labels: str) -> float:
    """The value of metric `name` with (at least) `labels` in Prometheus text, else 0."""
    for line in text.splitlines():
        match = re.match(rf"^{name}(\{{[^}}]*\}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            return float(match.group(2))
    return 0.0
