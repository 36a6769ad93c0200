"""`kubectl kvsched` against the real API server: the `kubectl-kvsched` console script run
with KUBECONFIG set (as kubectl users have it), and through the real kubectl binary, which
finds the plugin on PATH."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support.controlplane import REPO_ROOT
from support.e2e import NAMESPACE, Cluster

from topology.presets import PRESETS

pytestmark = pytest.mark.e2e

LLAMA_70B = "meta-llama/Llama-3.1-70B-Instruct"
LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"
PLUGIN = Path(sys.executable).parent / "kubectl-kvsched"


def plugin_env(cluster: Cluster, kubeconfig: Path | None = None) -> dict[str, str]:
    """KUBECONFIG at the test control plane and the virtualenv's bin first on PATH."""
    return {
        **os.environ,
        "KUBECONFIG": str(kubeconfig or cluster.cp.kubeconfig),
        "PATH": f"{PLUGIN.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def scene(cluster: Cluster) -> tuple[Cluster, str]:
    """One H100 node whose agent inventory says: GPUs 0-1 held by e2e/holder (the kubelet's
    word), Llama-3.1-70B in host memory, Llama-3.1-8B on local disk; a pending pod for a
    scheduler that is not running (so it stays pending)."""
    assert PLUGIN.exists(), f"{PLUGIN} missing: run `make install` (pyproject [project.scripts])"
    node = cluster.node("h100")
    cluster.run_pod("holder", node, gpus=2)
    cluster.inventory(
        node,
        PRESETS["hgx-h100-8"],
        models=[
            {"name": LLAMA_70B, "tier": "host-memory"},
            {"name": LLAMA_8B, "tier": "local-disk"},
        ],
        allocated=[(0, f"{NAMESPACE}/holder"), (1, f"{NAMESPACE}/holder")],
        allocated_source="kubelet",
    )
    cluster.pod(
        "waiting",
        gpus=2,
        annotations={"kvsched.io/model": LLAMA_70B, "kvsched.io/max-model-len": "8192"},
        scheduler="not-running-scheduler",
    )
    return cluster, node


def test_nodes_and_explain_through_the_console_script(scene: tuple[Cluster, str]) -> None:
    cluster, node = scene
    env = plugin_env(cluster)

    nodes = run([str(PLUGIN), "nodes", node], env)
    assert nodes.returncode == 0, nodes.stderr
    header, row = nodes.stdout.splitlines()
    assert header.startswith("NODE") and "BEST FREE SET" in header
    assert row.split()[0] == node
    assert "6/8" in row and "6 nvlink-complete" in row
    assert f"host-memory: {LLAMA_70B}; local-disk: {LLAMA_8B}" in row
    assert row.split()[-2:] == ["agent", "kubelet"]

    as_json = run([str(PLUGIN), "nodes", node, "-o", "json"], env)
    assert as_json.returncode == 0, as_json.stderr
    (entry,) = json.loads(as_json.stdout)["nodes"]
    assert entry["gpus"]["freeIndices"] == [2, 3, 4, 5, 6, 7]
    assert entry["inventory"]["source"] == "agent"
    assert 0 <= entry["inventory"]["ageSeconds"] < 600

    explain = run([str(PLUGIN), "explain", f"{NAMESPACE}/waiting"], env)
    assert explain.returncode == 0, explain.stderr
    lines = explain.stdout.splitlines()
    assert lines[0].startswith(f"pod {NAMESPACE}/waiting: 2 GPU(s)")
    (mine,) = [line for line in lines if line.split()[0] == node]
    assert mine.split()[1] == "yes"
    assert "host-memory" in mine and f"0,1:{NAMESPACE}/holder(kubelet)" in mine

    explain_json = run([str(PLUGIN), "explain", "waiting", "-n", NAMESPACE, "-o", "json"], env)
    assert explain_json.returncode == 0, explain_json.stderr
    rows = {r["node"]: r for r in json.loads(explain_json.stdout)["nodes"]}
    assert rows[node]["fits"] and len(rows[node]["predictedGpus"]) == 2
    assert not set(rows[node]["predictedGpus"]) & {0, 1}
    assert rows[node]["heldGpus"][0] == {
        "index": 0,
        "pod": f"{NAMESPACE}/holder",
        "source": "kubelet",
    }


def test_a_bare_pod_name_uses_the_current_contexts_namespace(
    scene: tuple[Cluster, str], tmp_path: Path
) -> None:
    cluster, _ = scene
    config = yaml.safe_load(cluster.cp.kubeconfig.read_text())
    current = config["current-context"]
    for context in config["contexts"]:
        if context["name"] == current:
            context["context"]["namespace"] = NAMESPACE
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    result = run([str(PLUGIN), "explain", "waiting"], plugin_env(cluster, kubeconfig))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"pod {NAMESPACE}/waiting:")
    # --context names a context; an unknown one is one error line, not a traceback.
    wrong = run([str(PLUGIN), "nodes", "--context", "nope"], plugin_env(cluster, kubeconfig))
    assert wrong.returncode == 1
    assert wrong.stderr.startswith("error: ") and "Traceback" not in wrong.stderr


def test_kubectl_finds_the_plugin_on_path(scene: tuple[Cluster, str]) -> None:
    cluster, node = scene
    kubectl = str(cluster.cp.bin_dir / "kubectl")
    env = plugin_env(cluster)

    listed = run([kubectl, "plugin", "list"], env)
    assert str(PLUGIN) in listed.stdout, listed.stdout + listed.stderr

    nodes = run([kubectl, "kvsched", "nodes", node], env)
    assert nodes.returncode == 0, nodes.stderr
    assert nodes.stdout.splitlines()[1].split()[0] == node

    explain = run([kubectl, "kvsched", "explain", f"{NAMESPACE}/waiting", "-o", "json"], env)
    assert explain.returncode == 0, explain.stderr
    assert json.loads(explain.stdout)["pod"] == f"{NAMESPACE}/waiting"
