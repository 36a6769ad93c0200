"""kvsched's own Events on pods, through the real kube-scheduler and API server: a placement
says where and why, a pod that fits nowhere gets a Warning once (not once per retry), and a
broken annotation is named."""

from __future__ import annotations

from typing import Any

import pytest
from support.e2e import NAMESPACE, Cluster, Extender, kubectl, wait_until

from topology.presets import PRESETS

pytestmark = pytest.mark.e2e

LLAMA_70B = "meta-llama/Llama-3.1-70B-Instruct"
LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"
REPORTER = "kvsched.io/extender"


def kvsched_events(cluster: Cluster, pod: str) -> list[dict[str, Any]]:
    """The pod's events written by kvsched, as core/v1 (what `kubectl get events` reads)."""
    answer = cluster.cp.request(
        "GET",
        f"/api/v1/namespaces/{NAMESPACE}/events?fieldSelector=involvedObject.name%3D{pod}",
    )
    return [e for e in answer.get("items", []) if e.get("reportingComponent") == REPORTER]


def wait_kvsched_event(cluster: Cluster, pod: str, reason: str) -> dict[str, Any]:
    event: dict[str, Any] = wait_until(
        lambda: next((e for e in kvsched_events(cluster, pod) if e["reason"] == reason), None),
        timeout=60,
        what=f"{reason} event on {pod}",
    )
    return event


def kubectl_events(cluster: Cluster, pod: str) -> str:
    result = kubectl(
        cluster.cp,
        "get",
        "events",
        "-n",
        NAMESPACE,
        "--field-selector",
        f"involvedObject.name={pod}",
    )
    assert result.returncode == 0, result.stderr
    print(result.stdout)  # shown with -rP: what a user sees
    return result.stdout


def test_a_placed_pod_gets_a_placement_event_saying_why(cluster: Cluster) -> None:
    warm = cluster.node("warm")
    cluster.inventory(
        warm, PRESETS["hgx-h100-8"], models=[{"name": LLAMA_70B, "tier": "host-memory"}]
    )
    cluster.pod(
        "placed",
        gpus=4,
        annotations={"kvsched.io/model": LLAMA_70B, "kvsched.io/max-model-len": "8192"},
    )
    pod = cluster.wait_placed("placed")
    event = wait_kvsched_event(cluster, "placed", "KvschedPlaced")
    assert event["type"] == "Normal"
    assert event["involvedObject"]["uid"] == pod["metadata"]["uid"]
    assert event["message"].startswith(f"Placed on {warm}, predicted GPUs ")
    assert "weights=host-memory" in event["message"] and "ready~" in event["message"]
    assert event["related"]["name"] == warm
    assert "KvschedPlaced" in kubectl_events(cluster, "placed")


def test_a_pod_that_fits_nowhere_gets_one_warning_across_retries(
    cluster: Cluster, extender: Extender
) -> None:
    cluster.node("l40s", product="NVIDIA-L40S", memory_mib=46068)
    cluster.pod("nowhere", gpus=1, annotations={"kvsched.io/model": LLAMA_70B})
    event = wait_kvsched_event(cluster, "nowhere", "KvschedUnschedulable")
    assert event["type"] == "Warning"
    assert event["message"].startswith("0/1 nodes fit (1 gpu-memory): 1 node: ")
    assert "L40S" in event["message"] and "needs" in event["message"]

    # A change to the pod sends it back through the scheduler: the same verdict, no new event.
    deduplicated = extender.metric(
        "kvsched_events_total", reason="KvschedUnschedulable", outcome="deduplicated"
    )
    cluster.cp.request(
        "PATCH",
        f"/api/v1/namespaces/{NAMESPACE}/pods/nowhere",
        {"metadata": {"labels": {"retry": "1"}}},
        content_type="application/merge-patch+json",
    )
    wait_until(
        lambda: (
            extender.metric(
                "kvsched_events_total", reason="KvschedUnschedulable", outcome="deduplicated"
            )
            > deduplicated
        ),
        timeout=60,
        what="the retried filter deduplicated",
    )
    assert [e["reason"] for e in kvsched_events(cluster, "nowhere")] == ["KvschedUnschedulable"]
    assert "KvschedUnschedulable" in kubectl_events(cluster, "nowhere")


def test_a_broken_annotation_gets_a_warning_naming_it(cluster: Cluster) -> None:
    cluster.node("a")
    cluster.pod(
        "broken", annotations={"kvsched.io/model": LLAMA_8B, "kvsched.io/max-num-seqs": "lots"}
    )
    event = wait_kvsched_event(cluster, "broken", "KvschedBadPodSpec")
    assert event["type"] == "Warning"
    assert "kvsched.io/max-num-seqs='lots'" in event["message"]
    assert "KvschedBadPodSpec" in kubectl_events(cluster, "broken")
