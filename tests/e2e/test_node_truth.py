"""The node's truth against kvsched's prediction, end to end: the real kube-scheduler binds
through the extender, the real agent reads the kubelet's PodResources API (served by the
kubelet's own generated gRPC server code, hack/podresources) and publishes it, and the
extender counts what the kubelet gave, not what it predicted.

The node has no GPUs here, so the agent discovers them through a stand-in `nvidia-smi` that
prints a real DGX H100 `topo -m` capture (tests/fixtures/topo) and per-GPU UUIDs: that is the
only part of the node that is not the real program.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.controlplane import REPO_ROOT
from support.e2e import Cluster, Extender, run_agent_once, wait_until
from support.podresources import KubeletServer, gpu_pod, podresources_binary, short_dir

pytestmark = pytest.mark.e2e

TOPO = REPO_ROOT / "tests" / "fixtures" / "topo" / "dgx-h100-8.txt"
GPU_MIB = 81559


def fake_nvidia_smi(folder: Path, node: str) -> Path:
    """A `nvidia-smi` answering the agent's two questions for an 8-GPU DGX H100 whose GPU
    UUIDs are GPU-<node>-<index>."""
    query = "".join(f"{i}, GPU-{node}-{i}, NVIDIA H100 80GB HBM3, {GPU_MIB}\n" for i in range(8))
    (folder / "topo.txt").write_text(TOPO.read_text())
    (folder / "query.txt").write_text(query)
    script = folder / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = topo ]; then cat "{folder}/topo.txt"; else cat "{folder}/query.txt"; fi\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return folder


def uuids(node: str, *indices: int) -> list[str]:
    return [f"GPU-{node}-{i}" for i in indices]


def predicted(extender: Extender, node: str, pod: dict[str, Any]) -> list[int]:
    """The GPUs the extender predicted for `pod`, from its view: on a node whose agent reports
    the kubelet's allocation kvsched writes no prediction on the pod."""
    annotations = pod["metadata"].get("annotations") or {}
    assert "kvsched.io/predicted-gpus" not in annotations, annotations
    ref = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
    gpus: list[int] = wait_until(
        lambda: sorted(
            i
            for i, (holder, source) in held(extender, node).items()
            if holder == ref and source == "prediction"
        ),
        what=f"{ref}'s predicted GPUs in the extender's view",
    )
    return gpus


@pytest.fixture
def kubelet(tmp_path: Path) -> Iterator[KubeletServer]:
    binary = podresources_binary()
    for folder in short_dir(tmp_path):
        server = KubeletServer(
            socket=folder / "kubelet.sock",
            state=tmp_path / "podresources.json",
            log=tmp_path / "podresources.log",
        )
        with server.serving(binary):
            yield server


class Agent:
    """`kvsched agent --once` against the test's node, as the DaemonSet runs it each cycle."""

    def __init__(self, cluster: Cluster, node: str, tmp: Path, socket: Path | None) -> None:
        self.cluster, self.node, self.socket = cluster, node, socket
        self.bin = fake_nvidia_smi(tmp, node)
        self.cache = tmp / "models"
        self.cache.mkdir(exist_ok=True)

    def cycle(self) -> subprocess.CompletedProcess[str]:
        socket_args = (
            ["--pod-resources-socket", str(self.socket)]
            if self.socket is not None
            else ["--pod-resources-socket", str(self.cache / "no-kubelet.sock")]
        )
        result = run_agent_once(
            self.cluster,
            self.node,
            self.cache,
            *socket_args,
            "--metrics-port",
            "0",
            env={**os.environ, "PATH": f"{self.bin}:{os.environ['PATH']}"},
        )
        assert result.returncode == 0, result.stderr
        return result


def held(extender: Extender, node: str) -> dict[int, tuple[str, str]]:
    """GPU -> (pod, source) as the extender's explain shows the node."""
    (row,) = extender.explain(node, namespace="x")
    return {h["index"]: (h["pod"], h["source"]) for h in row.get("heldGpus", [])}


def test_the_kubelets_gpus_replace_the_prediction(
    cluster: Cluster, extender: Extender, kubelet: KubeletServer, tmp_path: Path
) -> None:
    node = cluster.node("truth")
    kubelet.set(allocatable=uuids(node, *range(8)))
    agent = Agent(cluster, node, tmp_path, kubelet.socket)
    agent.cycle()
    inventory = cluster.get_inventory(node)
    assert inventory is not None
    status = inventory["status"]
    assert status["source"] == "agent" and status["allocatedSource"] == "kubelet"
    assert status["allocatableGpus"] == list(range(8)) and status["allocated"] == []
    wait_until(lambda: extender.knows(node) and held(extender, node) == {}, what="inventory seen")
    mismatches = extender.metric("kvsched_gpu_prediction_mismatches_total")

    # kvsched predicts 0-3 for the first 4-GPU pod; the device plugin hands out 4-7.
    cluster.pod("first", gpus=4)
    first = cluster.wait_bound("first")
    assert first["spec"]["nodeName"] == node
    assert predicted(extender, node, first) == [0, 1, 2, 3]
    ns = first["metadata"]["namespace"]
    kubelet.set(
        pods=[gpu_pod(ns, "first", *uuids(node, 4, 5, 6, 7))], allocatable=uuids(node, *range(8))
    )
    agent.cycle()  # one agent cycle
    status = cluster.get_inventory(node)["status"]  # type: ignore[index]
    assert [(a["index"], a["pod"]) for a in status["allocated"]] == [
        (i, f"{ns}/first") for i in (4, 5, 6, 7)
    ]
    wait_until(
        lambda: held(extender, node) == dict.fromkeys((4, 5, 6, 7), (f"{ns}/first", "kubelet")),
        what="the extender counts the kubelet's GPUs 4-7, and 0-3 free",
    )
    assert extender.metric("kvsched_gpu_prediction_mismatches_total") == mismatches + 1

    # The next 4-GPU pod is predicted on the GPUs that are really free.
    cluster.pod("second", gpus=4)
    second = cluster.wait_bound("second")
    assert second["spec"]["nodeName"] == node
    assert predicted(extender, node, second) == [0, 1, 2, 3]

    # A pod gone from the kubelet's report frees its GPUs: "first" is deleted; while the
    # kubelet still lists it (its containers stopping) 4-7 stay held, then they are free.
    cluster.delete_pod("first")
    kubelet.set(
        pods=[gpu_pod(ns, "second", *uuids(node, 0, 1, 2, 3))], allocatable=uuids(node, *range(8))
    )
    agent.cycle()
    wait_until(
        lambda: held(extender, node) == dict.fromkeys((0, 1, 2, 3), (f"{ns}/second", "kubelet")),
        what="GPUs 4-7 freed once the kubelet no longer reports the deleted pod",
    )
    cluster.pod("third", gpus=4)
    third = cluster.wait_bound("third")
    assert third["spec"]["nodeName"] == node
    assert predicted(extender, node, third) == [4, 5, 6, 7]


def test_an_agent_without_the_kubelet_socket_still_publishes_its_caches(
    cluster: Cluster, tmp_path: Path
) -> None:
    node = cluster.node("nosocket")
    agent = Agent(cluster, node, tmp_path, socket=None)
    snapshot = agent.cache / "models--Qwen--Qwen2.5-7B-Instruct"
    (snapshot / "refs").mkdir(parents=True)
    (snapshot / "refs" / "main").write_text("0123abcd")
    files = snapshot / "snapshots" / "0123abcd"
    files.mkdir(parents=True)
    (files / "config.json").write_text('{"model_type": "qwen2"}')
    (files / "model.safetensors").write_bytes(b"\0" * 65536)
    result = agent.cycle()
    assert "PodResources" in result.stderr  # one clear line saying the kubelet was not read
    status = cluster.get_inventory(node)["status"]  # type: ignore[index]
    assert status["source"] == "agent" and len(status["gpus"]) == 8
    assert [m["name"] for m in status["modelCache"]["models"]] == ["Qwen/Qwen2.5-7B-Instruct"]
    assert "allocatedSource" not in status
