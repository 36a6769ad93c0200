"""A caller that announces a body and never finishes sending it gets 408 in bounded time
(and the extender keeps answering everyone else meanwhile)."""

from __future__ import annotations

import http.client
import socket
import time
from pathlib import Path

import httpx
from support.extender import extender_command, one_node_cluster

from scheduler.demo.run import free_port, running_server


def test_stuck_body_gets_408_while_others_are_served(tmp_path: Path) -> None:
    port = free_port()
    command = extender_command(
        one_node_cluster(tmp_path), port, "--request-body-timeout-seconds", "1"
    )
    with running_server(command, port) as url:
        stuck = socket.create_connection(("127.0.0.1", port))
        stuck.sendall(
            b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"Pod":'
        )
        started = time.monotonic()
        # Others are answered while that body is pending.
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        stuck.settimeout(10)
        # The answer may come in several segments (headers, then body): let http.client
        # read one whole response.
        response = http.client.HTTPResponse(stuck)
        response.begin()
        status, message = response.status, response.read().decode()
        elapsed = time.monotonic() - started
        stuck.close()
    assert status == 408, message
    assert "not received within 1 s" in message
    assert elapsed < 5
