"""Fixtures of the agent's tests: the kubelet's PodResources test server (support.podresources)
on a socket in the test's tmp_path, and the root logger put back after `kvsched agent` runs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.podresources import KubeletServer, podresources_binary, short_dir


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    """`kvsched agent` (cli.main) installs its own root handler on the captured stderr; put
    the root logger back so later tests do not log into a closed stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def podresources_server_binary() -> Path:
    return podresources_binary()


@pytest.fixture
def socket_dir(tmp_path: Path) -> Iterator[Path]:
    yield from short_dir(tmp_path)


@pytest.fixture
def kubelet_server(
    podresources_server_binary: Path, socket_dir: Path, tmp_path: Path
) -> Iterator[KubeletServer]:
    """A running server with an empty state (no pods, nothing allocatable)."""
    server = KubeletServer(
        socket=socket_dir / "kubelet.sock",
        state=tmp_path / "state.json",
        log=tmp_path / "podresources-server.log",
    )
    with server.serving(podresources_server_binary):
        yield server
