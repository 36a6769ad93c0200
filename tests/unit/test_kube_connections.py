"""KubeApi hands every connection back to its pool: writes reuse one keep-alive connection.

Against a local HTTP/1.1 server that counts the TCP connections it accepts. A raw response
left unread kept its connection out of the pool, so every bind opened a new connection (a
TLS handshake per bind against a real API server); this pins the fix.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes import client

from scheduler.state.kube import API_CONNECTIONS, KubeApi, KubeError, NotFoundError


class CountingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.connections = 0
        self.requests: list[tuple[str, str]] = []
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server: CountingServer

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _answer(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.server.lock:
            self.server.requests.append((self.command, self.path))
            self.server.bodies.append(body)
        if self.path.endswith("/missing"):
            self._answer(404, {"kind": "Status", "reason": "NotFound", "code": 404})
        elif self.path.endswith("/forbidden/events"):
            self._answer(403, {"kind": "Status", "reason": "Forbidden", "code": 403})
        elif self.path.endswith("/binding"):
            self._answer(201, {"kind": "Status", "status": "Success", "code": 201})
        else:
            self._answer(200, {"kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}})

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()


@pytest.fixture
def server() -> Iterator[CountingServer]:
    srv = CountingServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def api_for(server: CountingServer) -> KubeApi:
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{server.server_address[1]}"
    configuration.connection_pool_maxsize = API_CONNECTIONS
    return KubeApi(client.ApiClient(configuration), request_timeout_s=5)


def test_binds_and_patches_reuse_one_connection(server: CountingServer) -> None:
    api = api_for(server)
    for index in range(20):
        api.bind_pod("ns", f"p{index}", f"uid-{index}", "gpu-1", {"kvsched.io/a": "0"})
        api.annotate_pod("ns", f"p{index}", {"kvsched.io/b": "1"})
        assert api.get_pod("ns", f"p{index}")["metadata"]["name"] == "p"
    assert len(server.requests) == 60
    assert server.connections == 1


def test_error_answers_hand_their_connection_back(server: CountingServer) -> None:
    api = api_for(server)
    for _ in range(5):
        with pytest.raises(NotFoundError):
            api.get_pod("ns", "missing")
    api.bind_pod("ns", "p", "uid", "gpu-1", {})
    assert server.connections == 1


def test_concurrent_binds_need_no_more_connections_than_callers(server: CountingServer) -> None:
    api = api_for(server)
    callers, rounds = 8, 10

    def bind_many(caller: int) -> None:
        for index in range(rounds):
            api.bind_pod("ns", f"p{caller}-{index}", "uid", "gpu-1", {})

    threads = [threading.Thread(target=bind_many, args=(caller,)) for caller in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(server.requests) == callers * rounds
    assert server.connections <= callers


def test_events_go_to_events_k8s_io_as_sent_and_reuse_the_connection(
    server: CountingServer,
) -> None:
    api = api_for(server)
    event = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": "p.17", "namespace": "ns"},
        "eventTime": "2026-01-02T03:04:05.000001Z",
        "reportingController": "kvsched.io/extender",
        "reportingInstance": "kvsched-0",
        "action": "Binding",
        "reason": "KvschedPlaced",
        "type": "Normal",
        "note": "Placed on gpu-1, GPUs 0",
        "regarding": {"apiVersion": "v1", "kind": "Pod", "namespace": "ns", "name": "p"},
    }
    for _ in range(3):
        api.create_event("ns", event)
    with pytest.raises(KubeError) as caught:
        api.create_event("forbidden", event)
    assert caught.value.status == 403
    assert server.requests[0] == ("POST", "/apis/events.k8s.io/v1/namespaces/ns/events")
    sent = json.loads(server.bodies[0])
    assert sent["eventTime"].startswith("2026-01-02T03:04:05.000001")
    assert {k: v for k, v in sent.items() if k != "eventTime"} == {
        k: v for k, v in event.items() if k != "eventTime"
    }
    assert server.connections == 1
