"""/bind and /explain through HTTP."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from support.k8s import gpu_node, model_annotations, pod

from scheduler.state.store import ClusterStore

LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"
KNOWN = ["gpu-a", "gpu-b", "gpu-busy", "l40s", "cpu-1"]


def filter_call(client: TestClient, the_pod: dict[str, Any], names: list[str]) -> Any:
    response = client.post("/filter", json={"Pod": the_pod, "Nodes": None, "NodeNames": names})
    assert response.status_code == 200
    return response.json()


def bind_call(
    client: TestClient, name: str, node: str, uid: str | None = None, namespace: str = "llm"
) -> Any:
    body = {
        "PodName": name,
        "PodNamespace": namespace,
        "PodUID": uid or f"uid-{namespace}-{name}",
        "Node": node,
    }
    response = client.post("/bind", json=body)
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"Error"}
    return response.json()


# ---- bind ---------------------------------------------------------------------------------


def test_bind_after_filter_records_the_gpus(client: TestClient, store: ClusterStore) -> None:
    the_pod = pod("vllm-0", gpus=4, realistic=True, annotations=model_annotations(LLAMA_8B))
    assert "gpu-a" in filter_call(client, the_pod, KNOWN)["NodeNames"]
    assert bind_call(client, "vllm-0", "gpu-a") == {"Error": ""}
    record = store.pod("uid-llm-vllm-0")
    assert record is not None and record.node == "gpu-a"
    assert record.prediction is not None and len(record.prediction.indices) == 4
    state = store.node("gpu-a")
    assert state is not None
    assert state.free_gpus == frozenset(range(8)) - set(record.prediction.indices)
    # The next 8-GPU pod no longer fits gpu-a, but still fits gpu-b.
    result = filter_call(client, pod("whole", gpus=8), ["gpu-a", "gpu-b"])
    assert result["NodeNames"] == ["gpu-b"]
    assert "4 of 8 GPUs free" in result["FailedNodes"]["gpu-a"]


def test_bind_retry_is_idempotent(client: TestClient, store: ClusterStore) -> None:
    filter_call(client, pod("p", gpus=2), ["gpu-a"])
    assert bind_call(client, "p", "gpu-a") == {"Error": ""}
    first = store.pod("uid-llm-p")
    assert bind_call(client, "p", "gpu-a") == {"Error": ""}
    second = store.pod("uid-llm-p")
    assert first is not None and second is not None
    assert first.prediction == second.prediction
    metrics = client.get("/metrics").text
    assert 'kvsched_binds_total{result="bound"} 1.0' in metrics
    assert 'kvsched_binds_total{result="already_bound"} 1.0' in metrics


def test_bind_to_another_node_after_bind_is_an_error(client: TestClient) -> None:
    filter_call(client, pod("p", gpus=2), ["gpu-a", "gpu-b"])
    assert bind_call(client, "p", "gpu-a") == {"Error": ""}
    answer = bind_call(client, "p", "gpu-b")
    assert "already bound to gpu-a" in answer["Error"]


def test_bind_of_an_unknown_pod_is_200_with_an_error(
    client: TestClient, store: ClusterStore
) -> None:
    answer = bind_call(client, "never-filtered", "gpu-a")
    assert answer["Error"]
    assert "llm/never-filtered" in answer["Error"]
    assert store.pod("uid-llm-never-filtered") is None
    state = store.node("gpu-a")
    assert state is not None and state.free_gpus == frozenset(range(8))
    assert 'kvsched_binds_total{result="rejected"} 1.0' in client.get("/metrics").text


def test_bind_when_the_node_filled_up_meanwhile(client: TestClient) -> None:
    filter_call(client, pod("first", gpus=8), ["gpu-a"])
    filter_call(client, pod("second", gpus=8), ["gpu-a"])
    assert bind_call(client, "first", "gpu-a") == {"Error": ""}
    answer = bind_call(client, "second", "gpu-a")
    assert "no longer fits gpu-a" in answer["Error"]


def test_bind_args_keys_in_other_cases(client: TestClient, store: ClusterStore) -> None:
    filter_call(client, pod("p", gpus=1), ["gpu-b"])
    body = {"podname": "p", "PODNAMESPACE": "llm", "podUid": "uid-llm-p", "node": "gpu-b"}
    response = client.post("/bind", json=body)
    assert response.status_code == 200
    assert response.json() == {"Error": ""}
    record = store.pod("uid-llm-p")
    assert record is not None and record.node == "gpu-b"


@pytest.mark.parametrize(
    ("body", "missing"),
    [
        ({"PodName": "p", "PodNamespace": "llm", "Node": "gpu-a"}, "PodUID"),
        ({"PodName": "p", "PodNamespace": "llm", "PodUID": "u", "Node": ""}, "Node"),
        ({"PodName": 7, "PodNamespace": "llm", "PodUID": "u", "Node": "gpu-a"}, "PodName"),
    ],
)
def test_bind_with_a_broken_envelope_is_400(
    client: TestClient, body: dict[str, Any], missing: str
) -> None:
    response = client.post("/bind", json=body)
    assert response.status_code == 400
    assert missing in response.json()["Error"]


# ---- explain ------------------------------------------------------------------------------


def test_explain_with_a_pod_covers_every_node(client: TestClient) -> None:
    the_pod = pod("probe", gpus=2, annotations=model_annotations(LLAMA_8B, max_model_len="8192"))
    response = client.post("/explain", json=the_pod)
    assert response.status_code == 200
    data = response.json()
    assert data["pod"] == "llm/probe"
    assert data["gpus"] == 2
    assert data["model"] == LLAMA_8B.lower()
    assert data["error"] is None
    assert data["plan"] is not None
    rows = {row["node"]: row for row in data["nodes"]}
    assert set(rows) == set(KNOWN)
    assert rows["gpu-a"]["fits"] and rows["gpu-a"]["reason"] == "fits"
    assert len(rows["gpu-a"]["predictedGpus"]) == 2
    assert {"ready", "gpu_set", "right_size", "fragmentation"} <= set(rows["gpu-a"]["terms"])
    assert rows["gpu-a"]["coldStart"]["tier"] == "network"
    assert not rows["cpu-1"]["fits"] and rows["cpu-1"]["reason"]
    # Best first: every fitting node before every failing one.
    fits = [row["fits"] for row in data["nodes"]]
    assert fits == sorted(fits, reverse=True)


def test_explain_with_extender_args_limits_the_nodes(client: TestClient) -> None:
    body = {"Pod": pod("probe", gpus=4), "Nodes": None, "NodeNames": ["gpu-busy", "gpu-b"]}
    response = client.post("/explain", json=body)
    assert response.status_code == 200
    rows = {row["node"]: row for row in response.json()["nodes"]}
    assert set(rows) == {"gpu-busy", "gpu-b"}
    assert rows["gpu-b"]["fits"]
    assert not rows["gpu-busy"]["fits"]
    assert "2 of 8 GPUs free" in rows["gpu-busy"]["reason"]


def test_explain_without_node_names_means_all_nodes(client: TestClient) -> None:
    response = client.post("/explain", json={"Pod": pod("probe", gpus=1)})
    assert response.status_code == 200
    assert {row["node"] for row in response.json()["nodes"]} == set(KNOWN)


def test_explain_reports_a_broken_pod(client: TestClient) -> None:
    the_pod = pod("bad", gpus=1, annotations={"kvsched.io/gpu-memory-utilization": "1.5"})
    data = client.post("/explain", json=the_pod).json()
    assert "kvsched.io/gpu-memory-utilization" in data["error"]
    assert all(not row["fits"] and "1.5" in row["reason"] for row in data["nodes"])


def test_explain_does_not_make_a_pod_bindable(client: TestClient) -> None:
    client.post("/explain", json=pod("peek", gpus=1))
    answer = bind_call(client, "peek", "gpu-a")
    assert "not seen" in answer["Error"]


def test_explain_agrees_with_filter_in_full_nodes_mode(client: TestClient) -> None:
    fresh = gpu_node("fresh", gpus=8, realistic=True)
    body = {"Pod": pod("p", gpus=2), "Nodes": {"items": [fresh]}, "NodeNames": None}
    filtered = client.post("/filter", json=body).json()
    assert [n["metadata"]["name"] for n in filtered["Nodes"]["items"]] == ["fresh"]
    rows = client.post("/explain", json=body).json()["nodes"]
    assert rows[0]["node"] == "fresh"
    assert rows[0]["fits"], rows[0]["reason"]


def test_explain_of_a_pod_in_the_store(client: TestClient) -> None:
    response = client.get("/explain/llm/waiting")
    assert response.status_code == 200
    data = response.json()
    assert data["pod"] == "llm/waiting"
    assert data["gpus"] == 2
    assert {row["node"] for row in data["nodes"]} == set(KNOWN)


def test_explain_of_an_unknown_pod_is_404(client: TestClient) -> None:
    response = client.get("/explain/llm/nobody")
    assert response.status_code == 404
    assert "llm/nobody" in response.json()["Error"]
    assert client.get("/explain/other-ns/waiting").status_code == 404


def test_explain_with_a_broken_body_is_400(client: TestClient) -> None:
    response = client.post("/explain", json={"NodeNames": ["gpu-a"]})
    assert response.status_code == 400
    assert response.json()["Error"]


def test_explain_accepts_node_names_in_other_cases(client: TestClient) -> None:
    body = {"pod": pod("probe", gpus=1), "nodeNames": ["gpu-a"]}
    response = client.post("/explain", json=body)
    assert response.status_code == 200
    assert [row["node"] for row in response.json()["nodes"]] == ["gpu-a"]
