"""`kubectl kvsched` (scheduler/commands/kubectl_plugin.py) over a canned cluster: offline
objects in the shapes the API server returns, read through --cluster-file or passed directly."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.k8s import cached, cpu_node, gpu_node, inventory, model_annotations, pod

from scheduler.commands import kubectl_plugin as plugin
from scheduler.commands.explain_cmd import explain_pod, explanation_lines
from scheduler.models.catalog import Catalog
from scheduler.state.offline import ClusterObjects
from topology.presets import PRESETS

NOW = dt.datetime(2026, 11, 28, 8, 0, 0, tzinfo=dt.UTC)
LLAMA_70B = "meta-llama/Llama-3.1-70B-Instruct"
LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"
QWEN_32B = "Qwen/Qwen2.5-32B-Instruct"


def ago(seconds: int) -> str:
    return (NOW - dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def canned() -> ClusterObjects:
    """h100-1: agent inventory (kubelet truth: GPUs 0-3 held by llm/busy), models in all three
    tiers, observed 90 s ago. a100p-1: A100 PCIe with NVLink-bridge pairs, controller
    inventory, all free. h100-2: no inventory (GFD labels). cpu-1: no GPUs (not listed)."""
    objects = ClusterObjects()
    a100_product = "NVIDIA-A100-PCIE-80GB"
    objects.nodes = [
        gpu_node("h100-1"),
        gpu_node("h100-2"),
        gpu_node("a100p-1", product=a100_product, memory_mib=81920),
        cpu_node("cpu-1"),
    ]
    a100 = inventory(
        "a100p-1",
        PRESETS["a100-pcie-8-nvbridge"],
        product="A100-PCIE-80GB",
        models=[cached(QWEN_32B, "local-disk")],
        observed_at=ago(7200),
        allocated_source="prediction",
    )
    a100["status"]["source"] = "controller"
    objects.inventories = [
        inventory(
            "h100-1",
            PRESETS["hgx-h100-8"],
            models=[
                cached(LLAMA_70B, "host-memory"),
                cached(LLAMA_8B, "gpu", revision="abc123"),
                cached(QWEN_32B, "local-disk"),
            ],
            allocated=[(i, "llm/busy") for i in range(4)],
            observed_at=ago(90),
        ),
        a100,
    ]
    objects.pods = [
        pod(
            "busy",
            gpus=4,
            node="h100-1",
            phase="Running",
            annotations=model_annotations(LLAMA_8B),
        ),
        pod("pending", gpus=2, annotations=model_annotations(LLAMA_70B, max_model_len="8192")),
        pod("bad", gpus=1, annotations={"kvsched.io/max-num-seqs": "lots"}),
    ]
    return objects


@pytest.fixture
def cluster_file(tmp_path: Path) -> Path:
    objects = canned()
    items = [*objects.nodes, *objects.inventories, *objects.pods]
    kinds = ["Node"] * len(objects.nodes) + ["NodeInventory"] * len(objects.inventories)
    kinds += ["Pod"] * len(objects.pods)
    for item, kind in zip(items, kinds, strict=True):
        item.setdefault("kind", kind)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = plugin.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


# ---- nodes ---------------------------------------------------------------------------------


def test_node_rows_free_gpus_best_set_models_and_inventory() -> None:
    rows = {r["node"]: r for r in plugin.node_rows(canned(), Catalog.builtin(), clock=lambda: NOW)}
    assert sorted(rows) == ["a100p-1", "h100-1", "h100-2"]  # the CPU node is not a GPU node

    h100 = rows["h100-1"]
    assert h100["gpus"] == {"free": 4, "total": 8, "freeIndices": [4, 5, 6, 7]}
    assert h100["bestFreeSet"] == {"size": 4, "tier": "nvlink-complete", "gpus": [4, 5, 6, 7]}
    assert h100["models"] == {
        "gpu": [f"{LLAMA_8B}@abc123"],
        "host-memory": [LLAMA_70B],
        "local-disk": [QWEN_32B],
    }
    assert h100["warming"] is None
    assert h100["inventory"] == {
        "observedAt": "2026-11-28T07:58:30+00:00",
        "ageSeconds": 90.0,
        "source": "agent",
        "allocatedSource": "kubelet",
    }

    # NVLink-bridge pairs: the best set of free GPUs at the best tier is a pair, not all 8.
    a100 = rows["a100p-1"]
    assert a100["gpus"]["free"] == 8
    assert a100["bestFreeSet"]["size"] == 2
    assert a100["bestFreeSet"]["tier"] == "nvlink-complete"
    assert a100["inventory"]["source"] == "controller"
    assert a100["inventory"]["allocatedSource"] == "prediction"

    labels_only = rows["h100-2"]
    assert labels_only["inventory"] is None
    assert labels_only["gpus"]["free"] == 8
    assert labels_only["placedFrom"] == "labels"


def test_nodes_table(cluster_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "nodes", "--cluster-file", str(cluster_file))
    assert status == 0
    header, *lines = out.splitlines()
    assert header.split()[:4] == ["NODE", "GPUS", "FREE", "BEST"]
    assert "WARMING" in header and "INVENTORY AGE" in header and "ALLOCATED" in header
    by_node = {line.split()[0]: line for line in lines}
    assert sorted(by_node) == ["a100p-1", "h100-1", "h100-2"]
    h100 = by_node["h100-1"]
    assert "4/8" in h100 and "4 nvlink-complete" in h100
    assert f"gpu: {LLAMA_8B}@abc123; host-memory: {LLAMA_70B}; local-disk: {QWEN_32B}" in h100
    assert h100.split()[-2:] == ["agent", "kubelet"]
    assert "2 nvlink-complete" in by_node["a100p-1"]
    assert by_node["a100p-1"].split()[-2:] == ["controller", "prediction"]
    # No inventory: placed from labels, no age, warming '-'.
    assert by_node["h100-2"].split()[-3:] == ["-", "labels", "-"]


def test_nodes_json_and_a_filter(cluster_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(
        capsys, "-o", "json", "nodes", "h100-1", "--cluster-file", str(cluster_file)
    )
    assert status == 0
    rows = json.loads(out)["nodes"]
    assert [r["node"] for r in rows] == ["h100-1"]
    assert rows[0]["gpus"]["free"] == 4

    status, _, err = run(capsys, "nodes", "nope", "--cluster-file", str(cluster_file))
    assert status == 1 and "no GPU node named nope" in err


def test_warming_is_shown_as_asked_and_as_copied() -> None:
    objects = canned()
    inventory = objects.inventories[0]
    inventory["spec"] = {
        "warming": {
            "models": [
                {"name": LLAMA_70B, "reason": "2 holders wanted"},
                {"name": QWEN_32B},
                {"name": 7},  # unreadable: left out, the rest still shown
            ]
        }
    }
    moment = "2026-01-01T00:00:00Z"
    inventory["status"]["warming"] = {
        "models": [
            {
                "name": LLAMA_70B,
                "revision": "a" * 40,
                "state": "copying",
                "bytesDone": 40,
                "bytesTotal": 100,
                "updatedAt": moment,
            },
            {"name": "org/evicted", "state": "evicted", "updatedAt": moment},
            {"name": "org/bad", "state": "exploded", "updatedAt": moment},
            "garbage",
        ]
    }
    rows = plugin.node_rows(objects, Catalog.builtin(), only=["h100-1"], clock=lambda: NOW)
    assert rows[0]["warming"] == [
        {"name": LLAMA_70B, "state": "copying", "progress": 0.4},
        {"name": "org/evicted", "state": "evicted", "progress": None},
        {"name": QWEN_32B, "state": "asked", "progress": None},
    ]
    line = plugin.nodes_lines(rows)[1]
    assert f"{LLAMA_70B} copying 40%, org/evicted evicted, {QWEN_32B} asked" in line


def test_a_broken_inventory_does_not_break_the_listing() -> None:
    objects = canned()
    status = objects.inventories[0]["status"]
    status["source"] = "x" * 1000
    status["observedAt"] = "yesterday"
    status["allocatedSource"] = 7
    status["modelCache"] = "garbage"
    rows = plugin.node_rows(objects, Catalog.builtin(), only=["h100-1"], clock=lambda: NOW)
    assert rows[0]["inventory"] == {
        "observedAt": None,
        "ageSeconds": None,
        "source": "x" * 31 + "…",
        "allocatedSource": None,
    }
    assert plugin.nodes_lines(rows)[1].split()[0] == "h100-1"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (-3, "0s"),
        (45, "45s"),
        (200, "3m20s"),
        (1020, "17m"),
        (5 * 3600 + 180, "5h3m"),
        (30 * 3600, "30h"),
        (4 * 86400, "4d"),
    ],
)
def test_ages_read_like_kubectl(seconds: float | None, text: str) -> None:
    assert plugin.human_age(seconds) == text


# ---- explain -------------------------------------------------------------------------------


def test_explain_table(cluster_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "explain", "llm/pending", "--cluster-file", str(cluster_file))
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "pod llm/pending: 2 GPU(s), model meta-llama/llama-3.1-70b-instruct"
    assert lines[1].split()[:3] == ["NODE", "FITS", "SCORE"]
    by_node = {line.split()[0]: line for line in lines[2:]}
    assert sorted(by_node) == ["a100p-1", "cpu-1", "h100-1", "h100-2"]
    # h100-1 holds the weights in host memory: it fits, and says who holds GPUs 0-3.
    h100 = by_node["h100-1"]
    assert h100.split()[1:3] == ["yes", "10"]
    assert "host-memory" in h100 and "0,1,2,3:llm/busy(kubelet)" in h100
    assert "ready=1.0" in h100
    assert "no" in by_node["cpu-1"].split() and "node has no nvidia.com/gpu" in by_node["cpu-1"]


def test_explain_json_is_kvsched_explains(
    cluster_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(
        capsys, "explain", "pending", "-n", "llm", "-o", "json", "--cluster-file", str(cluster_file)
    )
    assert status == 0
    answer = json.loads(out)
    assert answer == explain_pod(canned(), "llm/pending", Catalog.builtin())
    rows = {r["node"]: r for r in answer["nodes"]}
    assert rows["h100-1"]["heldGpus"][0] == {"index": 0, "pod": "llm/busy", "source": "kubelet"}
    assert len(rows["h100-1"]["predictedGpus"]) == 2


def test_explain_a_bad_pod_and_a_missing_one(
    cluster_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(capsys, "explain", "llm/bad", "--cluster-file", str(cluster_file))
    assert status == 0
    assert "rejected on every node: annotation kvsched.io/max-num-seqs='lots'" in out

    status, _, err = run(capsys, "explain", "llm/nope", "--cluster-file", str(cluster_file))
    assert status == 1 and "pod 'llm/nope' not found" in err
    status, _, err = run(capsys, "explain", "--cluster-file", str(cluster_file))
    assert status == 2 and "name the pod" in err


def test_explain_a_pod_from_a_file(
    cluster_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = tmp_path / "pod.yaml"
    new.write_text(yaml.safe_dump({"kind": "Pod", **pod("new", gpus=8, namespace="team")}))
    status, out, _ = run(capsys, "explain", "-f", str(new), "--cluster-file", str(cluster_file))
    assert status == 0
    assert out.startswith("pod team/new: 8 GPU(s)")


def test_kvsched_explain_prints_the_shared_lines(
    cluster_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from scheduler.cli import main as kvsched

    assert kvsched(["explain", "llm/pending", "--cluster-file", str(cluster_file)]) == 0
    out = capsys.readouterr().out
    expected = explanation_lines(explain_pod(canned(), "llm/pending", Catalog.builtin()) or {})
    assert out.splitlines() == expected


# ---- finding the cluster as kubectl does ---------------------------------------------------


def kubeconfig(path: Path, namespace: str | None) -> Path:
    context: dict[str, Any] = {"cluster": "c", "user": "u"}
    if namespace:
        context["namespace"] = namespace
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [
                    {"name": "main", "context": context},
                    {"name": "other", "context": {"cluster": "c", "user": "u", "namespace": "o"}},
                ],
                "current-context": "main",
            }
        )
    )
    return path


def test_kubeconfig_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugin, "DEFAULT_KUBECONFIG", tmp_path / "absent")
    assert plugin.kubeconfig_path("x", {"KUBECONFIG": "y"}) == "x"
    assert plugin.kubeconfig_path(None, {"KUBECONFIG": "a:b"}) == "a:b"
    assert plugin.kubeconfig_path(None, {"KUBECONFIG": ""}) is None
    home = kubeconfig(tmp_path / "config", None)
    monkeypatch.setattr(plugin, "DEFAULT_KUBECONFIG", home)
    assert plugin.kubeconfig_path(None, {}) == str(home)


def test_bare_pod_names_take_the_contexts_namespace(tmp_path: Path) -> None:
    path = str(kubeconfig(tmp_path / "kc", "llm"))
    assert plugin.context_namespace(path, None) == "llm"
    assert plugin.context_namespace(path, "other") == "o"
    assert plugin.context_namespace(str(kubeconfig(tmp_path / "kc2", None)), None) is None
    assert plugin.pod_reference("p", None) == "default/p"
    assert plugin.pod_reference("p", "llm") == "llm/p"
    assert plugin.pod_reference("ns/p", "llm") == "ns/p"


def test_flags_before_and_after_the_command() -> None:
    parser = plugin.build_parser()
    before = parser.parse_args(["--context", "a", "-o", "json", "nodes"])
    after = parser.parse_args(["nodes", "--context", "a", "-o", "json"])
    for args in (before, after):
        assert args.context == "a" and args.output == "json" and args.kubeconfig is None
    default = parser.parse_args(["explain", "p"])
    assert default.output == "text" and default.namespace is None


def test_an_unreachable_cluster_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    status, out, err = run(capsys, "nodes")
    assert status == 1 and out == ""
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
