"""/filter and /prioritize with the bodies kube-scheduler really sends, in both modes."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.k8s import gpu_node, model_annotations, pod

from scheduler.state.store import ClusterStore

FILTER_KEYS = {"Nodes", "NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error"}
KNOWN = ["gpu-a", "gpu-b", "gpu-busy", "l40s", "cpu-1"]
LLAMA_70B = "meta-llama/Llama-3.1-70B-Instruct"
FIXTURE_SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def cache_args(the_pod: dict[str, Any], names: list[str]) -> dict[str, Any]:
    return {"Pod": the_pod, "Nodes": None, "NodeNames": names}


def full_args(the_pod: dict[str, Any], nodes: list[dict[str, Any]]) -> dict[str, Any]:
    return {"Pod": the_pod, "Nodes": {"metadata": {}, "items": nodes}, "NodeNames": None}


def post(client: TestClient, verb: str, body: dict[str, Any]) -> Any:
    response = client.post(
        f"/{verb}", content=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


# ---- cache mode (nodeCacheCapable: true) --------------------------------------------------


def test_cache_mode_filter_result_shape_and_verdicts(client: TestClient) -> None:
    body = cache_args(pod("vllm-7d9f8-abcde", gpus=4, realistic=True), KNOWN)
    result = post(client, "filter", body)
    assert set(result) == FILTER_KEYS
    assert result["Nodes"] is None
    assert result["Error"] == ""
    assert result["NodeNames"] == ["gpu-a", "gpu-b", "l40s"]
    assert set(result["FailedNodes"]) == {"gpu-busy"}
    assert "2 of 8 GPUs free" in result["FailedNodes"]["gpu-busy"]
    assert set(result["FailedAndUnresolvableNodes"]) == {"cpu-1"}
    assert all(isinstance(r, str) and r for r in result["FailedNodes"].values())


def test_cache_mode_keeps_the_sent_order(client: TestClient) -> None:
    names = ["l40s", "gpu-b", "gpu-a"]
    result = post(client, "filter", cache_args(pod("p", gpus=1), names))
    assert result["NodeNames"] == names


def test_no_fit_is_200_with_failed_nodes_and_no_error(client: TestClient) -> None:
    result = post(client, "filter", cache_args(pod("huge", gpus=16), KNOWN))
    assert result["Error"] == ""
    assert result["NodeNames"] == []
    assert set(result["FailedAndUnresolvableNodes"]) | set(result["FailedNodes"]) == set(KNOWN)
    assert "pod needs 16" in result["FailedAndUnresolvableNodes"]["gpu-a"]


def test_model_that_does_not_fit_small_gpus(client: TestClient) -> None:
    # 70B in bf16 on one GPU: too big for any single GPU here, so nothing passes.
    the_pod = pod("big", gpus=1, annotations=model_annotations(LLAMA_70B))
    result = post(client, "filter", cache_args(the_pod, ["gpu-a", "l40s"]))
    assert result["NodeNames"] == []
    assert set(result["FailedAndUnresolvableNodes"]) == {"gpu-a", "l40s"}
    # TP=4 with the full 128k context: ~35 GB weights + ~11 GB KV per GPU fits an H100, not an
    # L40S (48 GB x 0.9).
    the_pod = pod("big4", gpus=4, annotations=model_annotations(LLAMA_70B))
    result = post(client, "filter", cache_args(the_pod, ["gpu-a", "l40s"]))
    assert result["NodeNames"] == ["gpu-a"]
    assert "l40s" in result["FailedAndUnresolvableNodes"]


def test_unknown_node_names_come_back_failed_never_passed(client: TestClient) -> None:
    result = post(client, "filter", cache_args(pod("p", gpus=1), ["gpu-a", "new-node-1"]))
    assert result["NodeNames"] == ["gpu-a"]
    assert "new-node-1" in result["FailedNodes"]


def test_empty_node_list(client: TestClient) -> None:
    result = post(client, "filter", cache_args(pod("p", gpus=1), []))
    assert result == {
        "Nodes": None,
        "NodeNames": [],
        "FailedNodes": {},
        "FailedAndUnresolvableNodes": {},
        "Error": "",
    }


def test_malformed_annotation_fails_every_node_unresolvably(client: TestClient) -> None:
    the_pod = pod(
        "bad",
        gpus=2,
        realistic=True,
        annotations=model_annotations(LLAMA_70B, max_model_len="lots"),
    )
    known = ["gpu-a", "gpu-b", "gpu-busy", "l40s", "cpu-1"]
    result = post(client, "filter", cache_args(the_pod, known))
    assert result["Error"] == ""
    assert result["NodeNames"] == []
    assert result["FailedNodes"] == {}
    assert set(result["FailedAndUnresolvableNodes"]) == set(known)
    for reason in result["FailedAndUnresolvableNodes"].values():
        assert "kvsched.io/max-model-len" in reason
        assert "lots" in reason


def test_unknown_kvsched_annotation_is_named(client: TestClient) -> None:
    the_pod = pod("typo", gpus=1, annotations={"kvsched.io/modle": LLAMA_70B})
    result = post(client, "filter", cache_args(the_pod, ["gpu-a"]))
    assert "kvsched.io/modle" in result["FailedAndUnresolvableNodes"]["gpu-a"]


def test_broken_pod_fails_unknown_nodes_unresolvably_too(client: TestClient) -> None:
    # DESIGN: a malformed annotation fails *every* node with a reason naming it; a resolvable
    # failure invites kube-scheduler to preempt pods on that node for a pod that cannot run.
    the_pod = pod("bad", gpus=2, annotations=model_annotations(LLAMA_70B, max_model_len="lots"))
    result = post(client, "filter", cache_args(the_pod, ["gpu-a", "not-yet-watched"]))
    assert result["FailedNodes"] == {}
    assert "kvsched.io/max-model-len" in result["FailedAndUnresolvableNodes"]["not-yet-watched"]


@FIXTURE_SETTINGS
@given(
    known=st.lists(st.sampled_from(KNOWN), unique=True),
    unknown=st.lists(
        st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True).filter(lambda n: n not in KNOWN),
        unique=True,
        max_size=5,
    ),
    gpus=st.integers(min_value=1, max_value=9),
    seed=st.randoms(use_true_random=False),
)
def test_cache_mode_returns_only_sent_names(
    client: TestClient, known: list[str], unknown: list[str], gpus: int, seed: Any
) -> None:
    names = known + unknown
    seed.shuffle(names)
    result = post(client, "filter", cache_args(pod("p", gpus=gpus), names))
    passed = result["NodeNames"]
    failed, unresolvable = result["FailedNodes"], result["FailedAndUnresolvableNodes"]
    # Every sent name is judged exactly once; nothing is invented.
    assert sorted([*passed, *failed, *unresolvable]) == sorted(names)
    assert passed == [n for n in names if n in set(passed)]
    assert set(unknown) <= set(failed)
    assert set(passed) <= set(known)

    scores = post(client, "prioritize", cache_args(pod("p", gpus=gpus), names))
    assert [s["Host"] for s in scores] == names
    for entry in scores:
        assert type(entry["Score"]) is int and 0 <= entry["Score"] <= 10
        if entry["Host"] not in passed:
            assert entry["Score"] == 0
    if passed:
        assert max(s["Score"] for s in scores) == 10


# ---- full-Nodes mode (nodeCacheCapable: false) --------------------------------------------


def test_full_mode_returns_the_sent_node_objects(
    client: TestClient, realistic_nodes: dict[str, dict[str, Any]]
) -> None:
    sent = list(realistic_nodes.values())
    body = full_args(pod("vllm-7d9f8-abcde", gpus=4, realistic=True), sent)
    result = post(client, "filter", body)
    assert set(result) == FILTER_KEYS
    assert result["NodeNames"] is None
    assert result["Error"] == ""
    # The passing nodes come back whole: unknown fields, managedFields, quantities as strings.
    assert result["Nodes"]["items"] == [
        realistic_nodes["gpu-a"],
        realistic_nodes["gpu-b"],
        realistic_nodes["l40s"],
    ]
    assert result["Nodes"]["items"][0]["status"]["someFutureField"] == {"x": 1}
    assert set(result["FailedNodes"]) == {"gpu-busy"}
    assert set(result["FailedAndUnresolvableNodes"]) == {"cpu-1"}


def test_full_mode_judges_nodes_the_store_does_not_know_from_the_sent_object(
    client: TestClient,
) -> None:
    fresh = gpu_node("fresh-8", gpus=8, realistic=True)
    small = gpu_node("fresh-2", gpus=2, realistic=True)
    result = post(client, "filter", full_args(pod("p", gpus=4), [fresh, small]))
    assert result["Nodes"]["items"] == [fresh]
    assert "fresh-2" in result["FailedAndUnresolvableNodes"]


def test_full_mode_prioritize(
    client: TestClient, realistic_nodes: dict[str, dict[str, Any]]
) -> None:
    sent = list(realistic_nodes.values())
    scores = post(client, "prioritize", full_args(pod("p", gpus=2, realistic=True), sent))
    assert [s["Host"] for s in scores] == KNOWN
    by_host = {s["Host"]: s["Score"] for s in scores}
    assert by_host["cpu-1"] == 0
    assert max(by_host.values()) == 10


@FIXTURE_SETTINGS
@given(
    picks=st.lists(
        st.sampled_from([*KNOWN, "extra-8", "extra-1", "extra-cpu"]), unique=True, min_size=1
    ),
    gpus=st.integers(min_value=1, max_value=9),
)
def test_full_mode_returns_only_sent_objects(
    client: TestClient,
    realistic_nodes: dict[str, dict[str, Any]],
    picks: list[str],
    gpus: int,
) -> None:
    pool = {
        **realistic_nodes,
        "extra-8": gpu_node("extra-8", gpus=8, realistic=True),
        "extra-1": gpu_node("extra-1", gpus=1, realistic=True),
        "extra-cpu": {"metadata": {"name": "extra-cpu"}, "status": {"allocatable": {}}},
    }
    sent = [copy.deepcopy(pool[name]) for name in picks]
    result = post(client, "filter", full_args(pod("p", gpus=gpus), sent))
    items = result["Nodes"]["items"]
    returned = [n["metadata"]["name"] for n in items]
    assert returned == [n for n in picks if n in set(returned)]
    for item in items:
        assert item == pool[item["metadata"]["name"]]
    assert sorted([*returned, *result["FailedNodes"], *result["FailedAndUnresolvableNodes"]]) == (
        sorted(picks)
    )


# ---- prioritize wire format ---------------------------------------------------------------


def test_prioritize_is_a_bare_array_of_integer_scores(client: TestClient) -> None:
    body = cache_args(pod("p", gpus=2, realistic=True), ["gpu-b", "cpu-1", "gpu-busy", "ghost"])
    response = client.post("/prioritize", json=body)
    assert response.status_code == 200
    text = response.text
    assert text.startswith("[")
    scores = re.findall(r'"Score":\s*([^,}\s]+)', text)
    assert len(scores) == 4
    assert all(re.fullmatch(r"\d+", s) for s in scores), text
    data = response.json()
    assert all(set(entry) == {"Host", "Score"} for entry in data)
    assert [entry["Host"] for entry in data] == ["gpu-b", "cpu-1", "gpu-busy", "ghost"]
    by_host = {entry["Host"]: entry["Score"] for entry in data}
    assert by_host["cpu-1"] == 0 and by_host["ghost"] == 0
    assert by_host["gpu-b"] == 10


def test_prioritize_prefers_idle_nvlink_nodes_for_a_model(client: TestClient) -> None:
    the_pod = pod(
        "m",
        gpus=2,
        annotations=model_annotations("meta-llama/Llama-3.1-8B-Instruct", max_model_len="8192"),
    )
    data = post(client, "prioritize", cache_args(the_pod, ["l40s", "gpu-a", "gpu-busy"]))
    by_host = {entry["Host"]: entry["Score"] for entry in data}
    assert by_host["gpu-a"] == 10
    assert by_host["l40s"] < by_host["gpu-a"]


def test_filter_and_prioritize_do_not_change_the_cluster(
    client: TestClient, store: ClusterStore
) -> None:
    before = {name: store.node(name) for name in KNOWN}
    post(client, "filter", cache_args(pod("p", gpus=8), KNOWN))
    post(client, "prioritize", cache_args(pod("p", gpus=8), KNOWN))
    assert {name: store.node(name) for name in KNOWN} == before
