"""Hostile objects through the extender: the offline process starts and serves with a bad pod in
its cluster file, the rejection is counted on /metrics, a Warning event names it, and /readyz
says 503 (and which kind, and why) while the view is not in sync."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient
from support.events import FakeEventApi
from support.extender import sample, wait_ready
from support.k8s import gpu_node, pod

from scheduler.core.assignment import GpuPrediction
from scheduler.demo.run import free_port
from scheduler.extender.app import AppSettings, create_app
from scheduler.models.catalog import Catalog
from scheduler.state.events import BAD_OBJECT, EventRecorder
from scheduler.state.offline import ClusterObjects
from scheduler.state.store import ClusterStore

ROOT = Path(__file__).resolve().parents[2]


NAIVE_RESERVATION = '{"gang":"x/g","node":"gpu-1","indices":[0],"expires":"2026-11-28T10:00:00"}'


def hostile(name: str = "innocent") -> dict[str, Any]:
    return pod(
        name,
        gpus=0,
        namespace="someone-else",
        annotations={"kvsched.io/reservation": NAIVE_RESERVATION},
    )


def holders() -> list[dict[str, Any]]:
    return [
        pod(
            name,
            gpus=4,
            node="gpu-1",
            phase="Running",
            annotations={"kvsched.io/predicted-gpus": GpuPrediction("gpu-1", indices).encode()},
        )
        for name, indices in (("p1", (0, 1, 2, 3)), ("p2", (4, 5, 6, 7)))
    ]


def test_offline_extender_starts_and_serves_with_a_hostile_pod_in_its_file(
    tmp_path: Path,
) -> None:
    items = [
        {"kind": "Node", **gpu_node("gpu-1")},
        {"kind": "Pod", **hostile()},
        *({"kind": "Pod", **p} for p in holders()),
    ]
    cluster = tmp_path / "cluster.json"
    cluster.write_text(json.dumps({"kind": "List", "items": items}))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "scheduler.cli", "extender", "--cluster-file", str(cluster)]
    proc = subprocess.Popen(
        [*command, "--port", str(port), "--log-format", "text"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_ready(base, proc)
        body = {"Pod": pod("big", gpus=8), "Nodes": None, "NodeNames": ["gpu-1"]}
        result = httpx.post(f"{base}/filter", json=body, timeout=10.0).json()
        # The two running pods still hold all eight GPUs.
        assert result["NodeNames"] == [] and "gpu-1" in result["FailedNodes"]
        metrics = httpx.get(f"{base}/metrics", timeout=10.0).text
        assert (
            sample(metrics, "kvsched_objects_rejected_total", kind="Pod", reason="bad-annotation")
            == 1
        )
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=10)
    log = stderr.decode()
    assert "Traceback" not in log
    assert log.count("quarantined Pod someone-else/innocent") == 1


def test_rejections_are_counted_by_kind_and_reason(make_client: Any) -> None:
    store = ClusterStore(Catalog.builtin())
    bad_spec = pod("weird", gpus=1)
    bad_spec["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "2"
    store.load(
        ClusterObjects(
            nodes=[gpu_node("gpu-1"), {"metadata": {"labels": {}}}],
            pods=[hostile(), bad_spec, {"metadata": "junk"}, *holders()],
        )
    )
    client = make_client(store)
    text = client.get("/metrics").text
    for kind, reason in (
        ("Pod", "bad-annotation"),
        ("Pod", "bad-spec"),
        ("Pod", "unreadable"),
        ("Node", "unreadable"),
    ):
        assert sample(text, "kvsched_objects_rejected_total", kind=kind, reason=reason) == 1
    # A relist of the same versions is not counted again; a new version of a bad pod is.
    store.replace_kind("Pod", [hostile(), *holders()])
    newer = copy.deepcopy(hostile())
    newer["metadata"]["resourceVersion"] = "2"
    store.upsert_pod(newer)
    text = client.get("/metrics").text
    assert sample(text, "kvsched_objects_rejected_total", kind="Pod", reason="bad-annotation") == 2
    assert client.get("/readyz").status_code == 200


def test_readyz_is_503_with_the_kind_and_why_while_not_in_sync(make_client: Any) -> None:
    store = ClusterStore(Catalog.builtin())
    store.replace_kind("Node", [gpu_node("gpu-1")])
    client = make_client(store)
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["status"] == "not synced"
    store.synced = True
    assert client.get("/readyz").status_code == 200
    store.sync_problem("Pod", "list failed: connection refused")
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["kinds"] == {"Pod": "list failed: connection refused"}
    store.sync_problem("Pod", None)
    assert client.get("/readyz").json() == {"status": "ok", "nodes": 1}


def test_a_quarantined_pod_with_kvsched_annotations_gets_one_warning_event() -> None:
    api = FakeEventApi()
    recorder = EventRecorder(api)
    store = ClusterStore(Catalog.builtin())
    store.replace_kind("Node", [gpu_node("gpu-1")])
    store.synced = True
    app = create_app(store, AppSettings(), events=recorder)
    with TestClient(app):
        plain = pod("plain", gpus=0, annotations={"example.com/x": "y"})
        plain["spec"]["containers"] = "not a list"
        for _ in range(3):
            store.upsert_pod(hostile())
        store.upsert_pod(plain)  # no kvsched annotations: counted, no event
    assert api.reasons() == [BAD_OBJECT]
    namespace, event = api.events[0]
    assert namespace == "someone-else" and event["type"] == "Warning"
    assert event["regarding"]["name"] == "innocent"
    assert "timezone" in event["note"] and "GPUs count as held" in event["note"]
