"""Pod events through the verbs: kube-scheduler's retries of an unschedulable pod give one
event, a bind (or a binding seen on the watch) gives one placement event, and a retried bind
none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from support.events import FakeEventApi
from support.k8s import gpu_node, model_annotations, pod

from scheduler import cli
from scheduler.commands import extender as extender_cmd
from scheduler.extender.app import AppSettings, create_app
from scheduler.extender.metrics import ExtenderMetrics
from scheduler.state.events import BAD_POD_SPEC, PLACED, UNSCHEDULABLE, EventRecorder, NoEvents
from scheduler.state.store import ClusterStore

LLAMA_70B = "meta-llama/Llama-3.1-70B-Instruct"
LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture
def api() -> FakeEventApi:
    return FakeEventApi()


def app_client(store: ClusterStore, api: FakeEventApi) -> TestClient:
    """Leaving its `with` block stops the app, and so the recorder: its queue is drained."""
    metrics = ExtenderMetrics()
    recorder = EventRecorder(api, metrics, instance="test")
    return TestClient(create_app(store, AppSettings(), metrics, events=recorder))


def filter_names(client: TestClient, body: dict[str, object], names: list[str]) -> list[str]:
    response = client.post("/filter", json={"Pod": body, "NodeNames": names})
    assert response.status_code == 200
    result: list[str] = response.json()["NodeNames"]
    return result


def metric(client: TestClient, reason: str, outcome: str) -> float:
    sample = f'kvsched_events_total{{outcome="{outcome}",reason="{reason}"}} '
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(sample):
            return float(line.split()[-1])
    return 0.0


def test_a_pod_rejected_by_every_node_five_times_gets_one_event(
    store: ClusterStore, api: FakeEventApi
) -> None:
    # 70B weights do not fit an L40S; cpu-1 has no GPU.
    big = pod("big", gpus=1, annotations=model_annotations(LLAMA_70B))
    with app_client(store, api) as client:
        for _ in range(5):
            assert filter_names(client, big, ["l40s", "cpu-1"]) == []
        assert metric(client, UNSCHEDULABLE, "deduplicated") == 4
    assert api.reasons() == [UNSCHEDULABLE]
    event = api.events[0][1]
    assert event["regarding"]["uid"] == "uid-llm-big"
    assert event["note"].startswith("0/2 nodes fit (1 gpu-memory, 1 no-gpus): 1 node: ")
    assert "L40S" in event["note"]


def test_a_bind_gets_one_placement_event_and_a_retried_bind_none(
    store: ClusterStore, api: FakeEventApi
) -> None:
    the_pod = pod("vllm-0", gpus=2, annotations=model_annotations(LLAMA_8B))
    binding = {"PodName": "vllm-0", "PodNamespace": "llm", "PodUID": "uid-llm-vllm-0"}
    with app_client(store, api) as client:
        assert "gpu-a" in filter_names(client, the_pod, ["gpu-a", "l40s"])
        for _ in range(2):
            response = client.post("/bind", json={**binding, "Node": "gpu-a"})
            assert response.json() == {"Error": ""}
    assert api.reasons() == [PLACED]
    event = api.events[0][1]
    assert event["note"].startswith("Placed on gpu-a, predicted GPUs ")
    assert "weights=network" in event["note"] and "set=" in event["note"]
    assert event["related"]["name"] == "gpu-a"


def test_a_pod_the_scheduler_bound_gets_one_placement_event(
    store: ClusterStore, api: FakeEventApi
) -> None:
    """The shipped profile (no bindVerb): the pod watch shows kube-scheduler's binding; the
    placement event is the bind verb's, and a later event of the same pod adds none."""
    the_pod = pod("vllm-1", gpus=2, annotations=model_annotations(LLAMA_8B))
    store.upsert_pod(the_pod)  # the watch shows it pending first
    with app_client(store, api) as client:
        assert "gpu-a" in filter_names(client, the_pod, ["gpu-a", "l40s"])
        bound = {**the_pod, "spec": {**the_pod["spec"], "nodeName": "gpu-a"}}
        store.upsert_pod(bound)
        running = {**bound, "status": {"phase": "Running"}}
        store.upsert_pod(running)
    assert api.reasons() == [PLACED]
    event = api.events[0][1]
    assert event["regarding"]["uid"] == "uid-llm-vllm-1"
    assert event["note"].startswith("Placed on gpu-a, predicted GPUs ")
    assert "weights=network" in event["note"] and "set=" in event["note"]


def test_a_broken_annotation_gets_one_event_naming_it(
    store: ClusterStore, api: FakeEventApi
) -> None:
    typo = pod("typo", annotations={**model_annotations(LLAMA_8B), "kvsched.io/max-num-seqs": "x"})
    with app_client(store, api) as client:
        for _ in range(3):
            assert filter_names(client, typo, ["gpu-a", "gpu-b"]) == []
    assert api.reasons() == [BAD_POD_SPEC]
    assert "kvsched.io/max-num-seqs='x'" in api.events[0][1]["note"]


def test_without_a_recorder_the_verbs_write_no_events(client: TestClient) -> None:
    big = pod("big", gpus=1, annotations=model_annotations(LLAMA_70B))
    assert filter_names(client, big, ["l40s"]) == []
    assert "kvsched_events_total{" not in client.get("/metrics").text


@pytest.mark.parametrize(
    ("argv", "recorder"),
    [
        ([], EventRecorder),
        (["--no-events"], NoEvents),
        (["--cluster-file", "CLUSTER"], NoEvents),
    ],
)
def test_events_are_on_in_cluster_mode_unless_turned_off(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, argv: list[str], recorder: type
) -> None:
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump({"kind": "Node", **gpu_node("a")}))
    argv = [str(cluster) if a == "CLUSTER" else a for a in argv]
    served: list[Any] = []
    # The command configures the process (root logger, frozen heap): not this test process.
    monkeypatch.setattr(extender_cmd, "configure_logging", lambda *_: None)
    monkeypatch.setattr(extender_cmd.gc, "freeze", lambda: None)
    monkeypatch.setattr(extender_cmd.KubeApi, "connect", lambda *_: FakeEventApi())
    monkeypatch.setattr(extender_cmd.uvicorn, "run", lambda app, **_: served.append(app))
    args = cli.build_parser().parse_args(["extender", *argv])
    assert args.func(args) == 0
    assert isinstance(served[0].state.events, recorder)
