"""`kvsched agent`: argument handling, the dry run, and the loop with fakes."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket as socketlib
import threading
import time
import urllib.request
from collections.abc import Sequence
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, start_http_server

from scheduler import cli
from scheduler.agent.cache_scan import ScanResult
from scheduler.agent.podresources import DEFAULT_SOCKET
from scheduler.agent.run import AgentLoop, AgentSettings, default_capacity
from scheduler.commands import agent_cmd
from scheduler.inventory.merge import merge_agent_report
from scheduler.inventory.status import InventoryStatus, ModelEntry
from scheduler.state.kube import InventoryApi, KubeError
from topology.model import NodeTopology
from topology.presets import PRESETS


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kvsched")
    agent_cmd.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["agent", *argv])


def make_model(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"_name_or_path": "org/tiny"}))
    (folder / "model.safetensors").write_bytes(b"w" * 64)


def test_agent_is_a_kvsched_subcommand() -> None:
    assert "agent_cmd" in cli.COMMAND_MODULES
    args = cli.build_parser().parse_args(["agent", "--node-name", "n1", "--once"])
    assert args.node_name == "n1" and args.once


def test_dry_run_once_prints_the_scanned_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_model(tmp_path / "cache" / "tiny")
    status = cli.main(
        [
            "agent",
            "--node-name",
            "n1",
            "--model-cache",
            str(tmp_path / "cache"),
            "--model-cache",
            str(tmp_path / "missing"),
            "--bandwidth-local-disk",
            "3e9",
            "--cache-capacity-bytes",
            "1000",
            "--dry-run",
            "--once",
            "--log-format",
            "text",
        ]
    )
    assert status == 0
    out = json.loads(capsys.readouterr().out)
    assert out["source"] == "agent"
    assert [m["name"] for m in out["modelCache"]["models"]] == ["org/tiny"]
    assert out["modelCache"]["models"][0]["tier"] in ("local-disk", "host-memory")
    assert out["modelCache"]["capacityBytes"] == 1000
    assert out["bandwidth"] == {"localDisk": 3e9}


def test_settings_from_args(tmp_path: Path) -> None:
    settings = agent_cmd.settings_from_args(
        parse(["--node-name", "n", "--model-cache", str(tmp_path), "--interval", "5"])
    )
    assert settings.node == "n" and settings.caches == (tmp_path,)
    assert settings.interval_s == 5 and settings.capacity_bytes == default_capacity([tmp_path])
    assert settings.capacity_bytes is not None and settings.capacity_bytes > 0
    for bad in (
        ["--interval", "0"],
        ["--bandwidth-network", "-1"],
        ["--cache-capacity-bytes", "-5"],
    ):
        with pytest.raises(ValueError):
            agent_cmd.settings_from_args(parse(bad))
    assert agent_cmd.run(parse(["--interval", "-1", "--log-format", "text"])) == 2


def test_warming_budget_is_the_reported_capacity(tmp_path: Path) -> None:
    """The warming planner budgets a node by its reported capacity, so an agent with a warming
    budget reports that budget (not its whole filesystem) unless told a capacity outright."""
    source, cache = tmp_path / "source", tmp_path / "cache"
    source.mkdir()
    cache.mkdir()
    base = ["--node-name", "n", "--warm-source", str(source), "--warm-cache-dir", str(cache)]
    budgeted = agent_cmd.settings_from_args(parse([*base, "--warm-budget-bytes", "1Gi"]))
    assert budgeted.capacity_bytes == 2**30
    unbudgeted = agent_cmd.settings_from_args(parse(base))
    assert unbudgeted.capacity_bytes == default_capacity([cache])
    explicit = agent_cmd.settings_from_args(
        parse([*base, "--warm-budget-bytes", "1Gi", "--cache-capacity-bytes", "5000"])
    )
    assert explicit.capacity_bytes == 5000


def test_node_name_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "from-env")
    assert parse([]).node_name == "from-env"


def test_default_capacity_of_nothing_is_none(tmp_path: Path) -> None:
    assert default_capacity([tmp_path / "missing"]) is None


# -- the loop ------------------------------------------------------------------------------------


class RecordingApi:
    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.objects: dict[str, dict[str, Any]] = {}
        self.writes = 0

    def get_inventory(self, name: str) -> dict[str, Any] | None:
        if self.fail:
            self.fail -= 1
            raise KubeError("connection refused")
        return self.objects.get(name)

    def create_inventory(self, name: str, labels: Any) -> dict[str, Any]:
        self.objects[name] = {"metadata": {"name": name, "resourceVersion": "1"}}
        return self.objects[name]

    def replace_inventory_status(
        self, name: str, status: Any, resource_version: str
    ) -> dict[str, Any]:
        self.writes += 1
        self.objects[name]["status"] = dict(status)
        self.objects[name]["metadata"]["resourceVersion"] = str(int(resource_version) + 1)
        return self.objects[name]

    def delete_inventory(self, name: str) -> None:
        self.objects.pop(name, None)


MODEL = ModelEntry("org/m", "local-disk", None, 10)


def fixed_scan(paths: Sequence[Path]) -> ScanResult:
    return ScanResult((MODEL,))


def test_loop_publishes_and_discovers_gpus_until_it_works() -> None:
    api = RecordingApi()
    answers: list[NodeTopology | None] = [None, PRESETS["hgx-h100-8"]]
    asked: list[int] = []

    def discover() -> NodeTopology | None:
        asked.append(1)
        return answers[min(len(asked) - 1, 1)]

    def connect() -> InventoryApi:
        return api

    loop = AgentLoop(
        AgentSettings(node="n1"),
        merge_agent_report,
        api=connect,
        discover=discover,
        scan=fixed_scan,
    )
    assert loop.run_once() and loop.run_once() and loop.run_once()
    assert len(asked) == 2  # failed once, found once, then kept
    status = InventoryStatus.from_status(api.objects["n1"]["status"])
    assert status is not None and len(status.gpus) == 8 and status.models == (MODEL,)


def test_loop_survives_publish_and_scan_failures() -> None:
    api = RecordingApi(fail=1)
    connects: list[int] = []

    def connect() -> InventoryApi:
        connects.append(1)
        return api

    def broken_scan(paths: Sequence[Path]) -> ScanResult:
        raise OSError("disk on fire")

    loop = AgentLoop(
        AgentSettings(node="n1"),
        merge_agent_report,
        api=connect,
        discover=lambda: None,
        scan=broken_scan,
    )
    assert not loop.run_once()  # API error: logged, reconnect next time
    assert loop.run_once()
    assert len(connects) == 2
    assert api.objects["n1"]["status"]["modelCache"]["models"] == []
    assert loop.run(once=True) == 0


def test_once_reports_failure_in_its_exit_status() -> None:
    def connect() -> InventoryApi:
        raise KubeError("no kubeconfig")

    loop = AgentLoop(
        AgentSettings(node="n1"),
        merge_agent_report,
        api=connect,
        discover=lambda: None,
        scan=fixed_scan,
    )
    assert loop.run(once=True) == 1


def test_stop_ends_the_wait_between_cycles() -> None:
    out = StringIO()
    loop = AgentLoop(
        AgentSettings(node="n1", interval_s=60, dry_run=True),
        merge_agent_report,
        discover=lambda: None,
        scan=fixed_scan,
        out=out,
    )
    timer = threading.Timer(0.2, loop.stop)
    timer.start()
    started = time.monotonic()
    assert loop.run() == 0
    assert time.monotonic() - started < 10
    assert json.loads(out.getvalue())["modelCache"]["models"][0]["name"] == "org/m"


def test_sigterm_exits_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = signal.getsignal(signal.SIGTERM)

    def send_sigterm() -> None:
        # Only once the agent's handler is in place; the default one would end the test run.
        deadline = time.monotonic() + 20
        while signal.getsignal(signal.SIGTERM) is before and time.monotonic() < deadline:
            time.sleep(0.01)
        if signal.getsignal(signal.SIGTERM) is not before:
            time.sleep(0.1)
            os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=send_sigterm)
    sender.start()
    started = time.monotonic()
    args = parse(
        ["--node-name", "n1", "--model-cache", str(tmp_path), "--dry-run", "--interval", "60"]
    )
    assert agent_cmd.run(args) == 0
    sender.join()
    assert time.monotonic() - started < 30
    assert signal.getsignal(signal.SIGTERM) is before  # handler restored
    assert json.loads(capsys.readouterr().out)["source"] == "agent"


# -- PodResources and metrics flags --------------------------------------------------------------


def test_the_kubelet_socket_is_read_by_default_and_can_be_turned_off(tmp_path: Path) -> None:
    settings = agent_cmd.settings_from_args(parse(["--node-name", "n"]))
    assert settings.pod_resources_socket == DEFAULT_SOCKET
    assert settings.pod_resources_socket == Path("/var/lib/kubelet/pod-resources/kubelet.sock")
    assert settings.pod_resources_timeout_s == 5.0
    other = agent_cmd.settings_from_args(
        parse(["--pod-resources-socket", str(tmp_path / "k.sock"), "--pod-resources-timeout", "2"])
    )
    assert other.pod_resources_socket == tmp_path / "k.sock"
    assert other.pod_resources_timeout_s == 2.0
    assert agent_cmd.settings_from_args(parse(["--no-pod-resources"])).pod_resources_socket is None
    for bad in (["--pod-resources-timeout", "0"], ["--metrics-port", "70000"]):
        with pytest.raises(ValueError):
            agent_cmd.settings_from_args(parse(bad))


def test_metrics_are_served_with_the_podresources_series(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served: list[tuple[int, str, bytes]] = []

    def start(port: int, addr: str, registry: CollectorRegistry) -> Any:
        server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            served.append((port, addr, reply.read()))
        return server, thread

    monkeypatch.setattr(agent_cmd, "start_http_server", start)
    args = parse(
        [
            "--node-name",
            "n1",
            "--once",
            "--pod-resources-socket",
            str(tmp_path / "missing.sock"),
            "--metrics-port",
            "9311",
            "--kubeconfig",
            str(tmp_path / "no-kubeconfig"),
            "--log-format",
            "text",
        ]
    )
    assert agent_cmd.run(args) == 1  # no API server to publish to: the cycle failed
    assert len(served) == 1
    port, addr, body = served[0]
    assert (port, addr) == (9311, "0.0.0.0")
    assert b"kvsched_agent_podresources_up 0.0" in body
    assert b'kvsched_agent_podresources_errors_total{reason="no_socket"} 0.0' in body


def test_no_metrics_server_in_a_dry_run_or_with_port_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def start(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("no metrics server expected")

    monkeypatch.setattr(agent_cmd, "start_http_server", start)
    base = ["--node-name", "n1", "--once", "--no-pod-resources", "--log-format", "text"]
    assert agent_cmd.run(parse([*base, "--dry-run"])) == 0
    assert json.loads(capsys.readouterr().out)["source"] == "agent"
    assert agent_cmd.run(parse([*base, "--metrics-port", "0", "--kubeconfig", "/nope"])) == 1


def test_a_metrics_port_in_use_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socketlib.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = parse(
            [
                *("--once", "--metrics-port", str(port), "--metrics-host", "127.0.0.1"),
                *("--log-format", "text", "--no-pod-resources"),
            ]
        )
        assert agent_cmd.run(args) == 2
    assert f"cannot serve metrics on 127.0.0.1:{port}" in capsys.readouterr().err
