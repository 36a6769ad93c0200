"""HTTP-level contract: 400/413 answers, case-insensitive keys, probes and metrics."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from support.k8s import pod

from scheduler.extender.app import AppSettings
from scheduler.models.catalog import Catalog
from scheduler.state.offline import ClusterObjects
from scheduler.state.store import ClusterStore

MakeClient = Callable[..., TestClient]
VERBS = ["filter", "prioritize"]


# ---- malformed requests -------------------------------------------------------------------


@pytest.mark.parametrize("verb", [*VERBS, "bind", "explain"])
@pytest.mark.parametrize("body", [b"{", b"", b"\xff\xfe", b'{"Pod": }', b"nul"])
def test_malformed_json_is_400_with_a_message(client: TestClient, verb: str, body: bytes) -> None:
    response = client.post(f"/{verb}", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "malformed JSON" in response.json()["Error"]


GOOD_POD = pod("p", gpus=1)


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize(
    ("body", "needle"),
    [
        pytest.param([], "JSON object", id="array"),
        pytest.param("filter me", "JSON object", id="string"),
        pytest.param({"NodeNames": ["gpu-a"]}, "Pod", id="pod-missing"),
        pytest.param({"Pod": None, "NodeNames": ["gpu-a"]}, "Pod", id="pod-null"),
        pytest.param({"Pod": "p", "NodeNames": ["gpu-a"]}, "Pod", id="pod-string"),
        pytest.param(
            {"Pod": {"spec": {}}, "NodeNames": ["gpu-a"]}, "metadata.name", id="pod-nameless"
        ),
        pytest.param({"Pod": GOOD_POD, "NodeNames": "gpu-a"}, "NodeNames", id="names-string"),
        pytest.param({"Pod": GOOD_POD, "NodeNames": [1, 2]}, "NodeNames", id="names-ints"),
        pytest.param({"Pod": GOOD_POD, "NodeNames": {"gpu-a": 1}}, "NodeNames", id="names-map"),
        pytest.param(
            {"Pod": GOOD_POD, "Nodes": None, "NodeNames": None}, "NodeNames", id="both-null"
        ),
        pytest.param({"Pod": GOOD_POD}, "NodeNames", id="both-missing"),
        pytest.param(
            {"Pod": GOOD_POD, "Nodes": [{"metadata": {"name": "a"}}]}, "Nodes", id="nodes-bare-list"
        ),
        pytest.param({"Pod": GOOD_POD, "Nodes": {"items": None}}, "Nodes", id="nodes-no-items"),
        pytest.param(
            {"Pod": GOOD_POD, "Nodes": {"items": [{"spec": {}}]}},
            "metadata.name",
            id="node-nameless",
        ),
        pytest.param({"Pod": GOOD_POD, "Nodes": {"items": ["gpu-a"]}}, "Nodes", id="node-string"),
    ],
)
def test_wrong_envelope_is_400_with_a_message(
    client: TestClient, verb: str, body: Any, needle: str
) -> None:
    response = client.post(f"/{verb}", json=body)
    assert response.status_code == 400, response.text
    message = response.json()["Error"]
    assert needle in message


@pytest.mark.parametrize("verb", VERBS)
def test_keys_in_other_cases_are_accepted(client: TestClient, verb: str) -> None:
    body = {"pod": pod("p", gpus=8), "nodes": None, "nodenames": ["gpu-a", "gpu-busy"]}
    response = client.post(f"/{verb}", json=body)
    assert response.status_code == 200
    if verb == "filter":
        result = response.json()
        assert result["NodeNames"] == ["gpu-a"]
        assert set(result["FailedNodes"]) == {"gpu-busy"}
    else:
        assert [s["Host"] for s in response.json()] == ["gpu-a", "gpu-busy"]


def test_full_mode_keys_in_other_cases(
    client: TestClient, realistic_nodes: dict[str, dict[str, Any]]
) -> None:
    body = {
        "POD": pod("p", gpus=8),
        "NODES": {"items": [realistic_nodes["gpu-b"]]},
        "NODENAMES": None,
    }
    result = client.post("/filter", json=body).json()
    assert result["Nodes"]["items"] == [realistic_nodes["gpu-b"]]
    assert result["NodeNames"] is None


def test_unknown_top_level_keys_are_ignored(client: TestClient) -> None:
    body = {"Pod": pod("p", gpus=1), "Nodes": None, "NodeNames": ["gpu-a"], "Future": {"x": 1}}
    response = client.post("/filter", json=body)
    assert response.status_code == 200
    assert response.json()["NodeNames"] == ["gpu-a"]


def test_internal_failure_answers_500_with_the_error(
    client: TestClient, store: ClusterStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(store, "filter", explode)
    response = client.post("/filter", json={"Pod": pod("p"), "NodeNames": ["gpu-a"]})
    assert response.status_code == 500
    assert "boom" in response.json()["Error"]
    metrics = client.get("/metrics").text
    assert 'kvsched_extender_requests_total{outcome="error",verb="filter"} 1.0' in metrics


# ---- body size ----------------------------------------------------------------------------


@pytest.fixture
def small_client(store: ClusterStore, make_client: MakeClient) -> TestClient:
    return make_client(store, AppSettings(max_body_bytes=4096))


def big_body() -> bytes:
    return b'{"Pod": {"metadata": {"name": "p"}}, "NodeNames": [' + b'"n",' * 3000 + b'"n"]}'


@pytest.mark.parametrize("verb", [*VERBS, "bind", "explain"])
def test_oversized_body_with_content_length_is_413(small_client: TestClient, verb: str) -> None:
    body = big_body()
    response = small_client.post(
        f"/{verb}", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert "4096" in response.json()["Error"]


def test_oversized_streamed_body_is_413(small_client: TestClient) -> None:
    body = big_body()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    response = small_client.post(
        "/filter", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    # No Content-Length was sent: the limit is enforced while reading the stream.
    assert response.json()["Error"] == "request body exceeds the 4096-byte limit"


def test_streamed_body_under_the_limit_is_read_whole(small_client: TestClient) -> None:
    import json

    body = json.dumps({"Pod": pod("p", gpus=1), "NodeNames": ["gpu-a", "gpu-b"]}).encode()
    assert len(body) < 4096

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 100):
            yield body[start : start + 100]

    response = small_client.post("/filter", content=chunks())
    assert response.status_code == 200
    assert response.json()["NodeNames"] == ["gpu-a", "gpu-b"]


def test_body_at_the_limit_is_accepted(store: ClusterStore, make_client: MakeClient) -> None:
    import json

    body = json.dumps({"Pod": pod("p", gpus=1), "NodeNames": ["gpu-a"]}).encode()
    exact = make_client(store, AppSettings(max_body_bytes=len(body)))
    assert exact.post("/filter", content=body).status_code == 200
    under = make_client(store, AppSettings(max_body_bytes=len(body) - 1))
    assert under.post("/filter", content=body).status_code == 413


# ---- probes and metrics -------------------------------------------------------------------


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_readyz_waits_for_the_load(make_client: MakeClient) -> None:
    store = ClusterStore(Catalog.builtin())
    client = make_client(store)
    assert client.get("/healthz").status_code == 200
    response = client.get("/readyz")
    assert response.status_code == 503
    store.load(ClusterObjects(nodes=[]))
    assert client.get("/readyz").status_code == 200


def test_readyz_reports_the_node_count(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "nodes": 5}


def test_metrics_after_a_filter(client: TestClient) -> None:
    client.post(
        "/filter",
        json={
            "Pod": pod("p", gpus=8),
            "Nodes": None,
            "NodeNames": ["gpu-a", "gpu-busy", "cpu-1", "ghost"],
        },
    )
    client.post("/filter", content=b"{")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert re.search(
        r'^kvsched_extender_request_duration_seconds_bucket\{(?=[^}]*verb="filter")'
        r'(?=[^}]*le="\+Inf")[^}]*\} 2\.0$',
        text,
        re.MULTILINE,
    ), text
    assert re.search(
        r'^kvsched_extender_request_duration_seconds_count\{verb="filter"\} 2\.0$',
        text,
        re.MULTILINE,
    )
    assert 'kvsched_extender_requests_total{outcome="ok",verb="filter"} 1.0' in text
    assert 'kvsched_extender_requests_total{outcome="bad_request",verb="filter"} 1.0' in text
    assert 'kvsched_filter_nodes_total{result="passed"} 1.0' in text
    assert 'kvsched_filter_nodes_total{result="failed"} 2.0' in text
    assert 'kvsched_filter_nodes_total{result="unresolvable"} 1.0' in text
    assert re.search(r"^kvsched_nodes 5\.0$", text, re.MULTILINE)
    assert re.search(r"^kvsched_cluster_synced 1\.0$", text, re.MULTILINE)


def test_metrics_are_per_app(store: ClusterStore, make_client: MakeClient) -> None:
    first, second = make_client(store), make_client(store)
    first.post("/filter", json={"Pod": pod("p"), "NodeNames": ["gpu-a"]})
    assert 'verb="filter"' in first.get("/metrics").text
    assert 'kvsched_extender_requests_total{outcome="ok",verb="filter"}' not in (
        second.get("/metrics").text
    )


def test_unknown_route_and_wrong_method(client: TestClient) -> None:
    assert client.get("/filter").status_code == 405
    assert client.post("/preempt", json={}).status_code == 404


def test_the_hot_verbs_skip_the_router_and_answer_as_it_would(store: ClusterStore) -> None:
    """POST /filter, /prioritize, /bind are answered by the HotVerbs middleware: the router is
    never entered for them, and the answers (errors included) are the routes' answers; any
    other method or path goes on to the router."""
    from scheduler.extender.app import HotVerbs, create_app

    app = create_app(store)
    assert any(m.cls is HotVerbs for m in app.user_middleware)
    routed: list[tuple[str, str]] = []
    router = app.router

    class Spy:
        def __getattr__(self, name: str) -> Any:
            return getattr(router, name)

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                routed.append((scope["method"], scope["path"]))
            await router(scope, receive, send)

    app.router = Spy()  # type: ignore[assignment]
    with TestClient(app) as client:
        body = {"Pod": pod("p"), "NodeNames": ["gpu-a"]}
        assert client.post("/filter", json=body).json()["NodeNames"] == ["gpu-a"]
        assert [s["Host"] for s in client.post("/prioritize", json=body).json()] == ["gpu-a"]
        broken = client.post("/filter", content=b"{")
        assert broken.status_code == 400 and "malformed JSON" in broken.json()["Error"]
        assert client.post("/bind", json={"PodName": ""}).status_code == 400
        assert routed == []
        assert client.get("/filter").status_code == 405
        assert client.get("/healthz").status_code == 200
    assert routed == [("GET", "/filter"), ("GET", "/healthz")]
