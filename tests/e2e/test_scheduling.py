"""The real kube-scheduler, configured with manifests/scheduler/scheduler-config.yaml, placing
pods through the kvsched extender (cluster mode) on a real kube-apiserver."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support.controlplane import REPO_ROOT, ApiError, ControlPlane
from support.e2e import INVENTORY_PATH, Cluster, Extender, kubectl, wait_until

from topology.presets import PRESETS

pytestmark = pytest.mark.e2e

LLAMA_70B = "meta-llama/Llama-3.1-70B-Instruct"
LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"


def assigned(pod: dict[str, object]) -> dict[str, object]:
    annotations = pod["metadata"]["annotations"]  # type: ignore[index]
    value: dict[str, object] = json.loads(annotations["kvsched.io/predicted-gpus"])
    return value


def test_pod_lands_where_its_weights_are(cluster: Cluster) -> None:
    cold = cluster.node("cold")
    warm = cluster.node("warm")
    for node, models in ((cold, []), (warm, [{"name": LLAMA_70B, "tier": "host-memory"}])):
        cluster.inventory(node, PRESETS["hgx-h100-8"], models=models)
    cluster.pod(
        "llama",
        gpus=4,
        annotations={"kvsched.io/model": LLAMA_70B, "kvsched.io/max-model-len": "8192"},
    )
    pod = cluster.wait_placed("llama")
    assert pod["spec"]["nodeName"] == warm
    placement = pod["metadata"]["annotations"]["kvsched.io/placement"]
    assert "weights=host-memory" in placement
    # Written after kube-scheduler's binding: the GPUs kvsched predicted, with their UUIDs.
    gpus = assigned(pod)
    assert gpus["node"] == warm and len(gpus["indices"]) == 4  # type: ignore[arg-type]
    assert gpus["uuids"] == [f"GPU-{warm}-{i}" for i in gpus["indices"]]  # type: ignore[attr-defined]


def test_tp_pod_gets_the_best_gpu_set(cluster: Cluster, extender: Extender) -> None:
    """Both nodes' agents report the kubelet's allocation: kvsched predicts the pod's GPUs in
    its view and writes nothing on the pod (the kubelet's truth will replace the prediction)."""
    box = PRESETS["a100-pcie-8-nvbridge"]
    memory = 80 * 2**30
    # Same free count (4) on both; only "intact" still has whole NVLink-bridged pairs.
    broken = cluster.node("broken", product="NVIDIA-A100-PCIE-80GB", memory_mib=81920)
    intact = cluster.node("intact", product="NVIDIA-A100-PCIE-80GB", memory_mib=81920)
    cluster.inventory(
        broken,
        box,
        memory_bytes=memory,
        product="A100-PCIe-80GB",
        allocated=[(i, "other/x") for i in (1, 3, 5, 7)],
        allocated_source="kubelet",
    )
    cluster.inventory(
        intact,
        box,
        memory_bytes=memory,
        product="A100-PCIe-80GB",
        allocated=[(i, "other/y") for i in (0, 1, 2, 3)],
        allocated_source="kubelet",
    )
    cluster.pod("tp2", gpus=2, annotations={"kvsched.io/model": LLAMA_8B})
    pod = cluster.wait_bound("tp2")
    assert pod["spec"]["nodeName"] == intact
    ref = f"{pod['metadata']['namespace']}/tp2"
    gpus = wait_until(
        lambda: sorted(
            h["index"]
            for h in extender.explain(intact)[0].get("heldGpus", [])
            if h["pod"] == ref and h["source"] == "prediction"
        ),
        what="tp2's predicted GPUs in the extender's view",
    )
    assert gpus in ([4, 5], [6, 7])
    annotations = cluster.get_pod("tp2")["metadata"].get("annotations") or {}
    assert "kvsched.io/predicted-gpus" not in annotations


def test_pod_that_fits_nowhere_stays_pending_with_kvsched_reason(cluster: Cluster) -> None:
    cluster.node("l40s", product="NVIDIA-L40S", memory_mib=46068)
    cluster.pod("too-big", gpus=1, annotations={"kvsched.io/model": LLAMA_70B})
    message = cluster.wait_event("too-big", "L40S")
    assert "needs" in message and "usable" in message
    assert not cluster.get_pod("too-big")["spec"].get("nodeName")


def test_malformed_annotation_gives_a_clear_reason(cluster: Cluster) -> None:
    cluster.node("a")
    cluster.pod(
        "typo", annotations={"kvsched.io/model": LLAMA_8B, "kvsched.io/max-num-seqs": "lots"}
    )
    message = cluster.wait_event("typo", "kvsched.io/max-num-seqs")
    assert "'lots'" in message


def test_restarting_the_extender_loses_no_allocation(cluster: Cluster, extender: Extender) -> None:
    node = cluster.node("shared")
    cluster.inventory(node, PRESETS["hgx-h100-8"])
    cluster.pod("first", gpus=4, annotations={"kvsched.io/model": LLAMA_8B})
    first = assigned(cluster.wait_placed("first"))
    extender.restart()
    cluster.pod("second", gpus=4, annotations={"kvsched.io/model": LLAMA_8B})
    second = assigned(cluster.wait_placed("second", timeout=90))
    assert first["node"] == second["node"] == node
    assert set(first["indices"]).isdisjoint(second["indices"])  # type: ignore[arg-type]


def test_pod_without_gpus_is_not_sent_to_the_extender(cluster: Cluster, extender: Extender) -> None:
    cluster.node("cpu")
    before = extender.metric("kvsched_extender_requests_total", verb="filter")
    cluster.pod("no-gpu", gpus=0)
    pod = cluster.wait_bound("no-gpu")
    assert "kvsched.io/predicted-gpus" not in (pod["metadata"].get("annotations") or {})
    assert extender.metric("kvsched_extender_requests_total", verb="filter") == before


def test_extender_sees_inventory_changes(cluster: Cluster) -> None:
    """An inventory that appears later moves the next pod of that model to its node."""
    left, right = cluster.node("left"), cluster.node("right")
    for node in (left, right):
        cluster.inventory(node, PRESETS["hgx-h100-8"])
    cluster.cp.request(
        "PATCH",
        f"{INVENTORY_PATH}/{right}/status",
        {"status": {"modelCache": {"models": [{"name": LLAMA_8B, "tier": "local-disk"}]}}},
        content_type="application/merge-patch+json",
    )
    cluster.pod("follow", annotations={"kvsched.io/model": LLAMA_8B})
    assert cluster.wait_bound("follow")["spec"]["nodeName"] == right


def test_manifests_are_accepted_and_the_crd_rejects_malformed_inventories(
    control_plane: ControlPlane, manifests_applied: object
) -> None:
    for path in (
        "/apis/apps/v1/namespaces/kvsched-system/deployments/kvsched-scheduler",
        "/api/v1/namespaces/kvsched-system/configmaps/kvsched-scheduler-config",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/kvsched-extender",
    ):
        control_plane.request("GET", path)
    control_plane.request(
        "POST",
        INVENTORY_PATH,
        {
            "apiVersion": "kvsched.io/v1alpha1",
            "kind": "NodeInventory",
            "metadata": {"name": "schema-check"},
        },
    )
    try:
        for bad in (
            {"links": [["X", "NVLINK"], ["NVLINK", "X"]]},
            {"modelCache": {"models": [{"name": "m", "tier": "floppy"}]}},
            {"gpus": [{"index": -1}]},
        ):
            with pytest.raises(ApiError) as caught:
                control_plane.request(
                    "PATCH",
                    f"{INVENTORY_PATH}/schema-check/status",
                    {"status": bad},
                    content_type="application/merge-patch+json",
                )
            assert caught.value.status == 422, caught.value
    finally:
        control_plane.request("DELETE", f"{INVENTORY_PATH}/schema-check")


def test_every_manifest_applies_server_side(control_plane: ControlPlane) -> None:
    """The inventory placeholders and examples too, each accepted by the API server (the
    LeaderWorkerSet example only as far as the server knows the kind: no LWS CRD here)."""
    for target in ("manifests/inventory", "manifests/examples/llm-pods.yaml"):
        flag = "-k" if not target.endswith(".yaml") else "-f"
        result = kubectl(control_plane, "apply", "--server-side", "--dry-run=server", flag, target)
        assert result.returncode == 0, result.stderr
    lws = kubectl(
        control_plane,
        "apply",
        "--server-side",
        "--dry-run=server",
        "-f",
        "manifests/examples/leaderworkerset.yaml",
    )
    assert 'no matches for kind "LeaderWorkerSet"' in lws.stderr


def test_explain_a_pod_of_the_live_cluster(cluster: Cluster) -> None:
    small = cluster.node("l40s", product="NVIDIA-L40S", memory_mib=46068)
    big = cluster.node("h100")
    cluster.pod(
        "explained",
        gpus=1,
        annotations={"kvsched.io/model": LLAMA_70B, "kvsched.io/max-model-len": "8192"},
        scheduler="not-running-scheduler",
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scheduler.cli",
            "explain",
            "e2e/explained",
            "--kubeconfig",
            str(cluster.cp.kubeconfig),
            "--json",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = {row["node"]: row for row in json.loads(result.stdout)["nodes"]}
    assert not rows[small]["fits"] and "L40S" in rows[small]["reason"]
    assert not rows[big]["fits"] and "H100" in rows[big]["reason"]
