"""The real `kvsched extender` process, offline mode, over real HTTP."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import httpx
from support.extender import wait_ready
from support.k8s import pod

from scheduler.demo.run import extender_command, free_port

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = ROOT / "tests" / "fixtures" / "cluster" / "snapshot"


def command(port: int, *flags: str) -> list[str]:
    """`kvsched extender` on the snapshot cluster as the demo runs it, but with text logs at
    info (a later flag wins), then `flags`."""
    return [
        *extender_command(SNAPSHOT, port),
        "--log-level",
        "info",
        "--log-format",
        "text",
        *flags,
    ]


def start(port: int, *flags: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command(port, *flags), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def stop(proc: subprocess.Popen[bytes]) -> str:
    """SIGTERM, then the process's stderr (killed and raised if it does not stop in 15 s)."""
    proc.send_signal(signal.SIGTERM)
    try:
        _, stderr = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return stderr.decode(errors="replace")


def test_extender_process_serves_filter_and_stops_cleanly() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(port)
    try:
        wait_ready(base, proc)
        assert httpx.get(f"{base}/readyz").json() == {"status": "ok", "nodes": 3}
        body = {
            "Pod": pod(
                "vllm-70b-1",
                gpus=4,
                realistic=True,
                annotations={"kvsched.io/model": "meta-llama/Llama-3.1-70B-Instruct"},
            ),
            "Nodes": None,
            "NodeNames": ["gpu-1", "gpu-2", "cpu-1", "unknown-9"],
        }
        response = httpx.post(f"{base}/filter", json=body, timeout=10.0)
        assert response.status_code == 200
        result = response.json()
        assert result["Error"] == ""
        assert result["NodeNames"] == ["gpu-1", "gpu-2"]
        assert set(result["FailedNodes"]) == {"unknown-9"}
        assert set(result["FailedAndUnresolvableNodes"]) == {"cpu-1"}
        scores = httpx.post(f"{base}/prioritize", json=body, timeout=10.0).json()
        by_host = {s["Host"]: s["Score"] for s in scores}
        # gpu-1 holds the weights in host memory: it must win.
        assert by_host["gpu-1"] == 10 and by_host["gpu-2"] < 10
        bind = {
            "PodName": "vllm-70b-1",
            "PodNamespace": "llm",
            "PodUID": "uid-llm-vllm-70b-1",
            "Node": "gpu-1",
        }
        assert httpx.post(f"{base}/bind", json=bind, timeout=10.0).json() == {"Error": ""}
    finally:
        log = stop(proc)
    # uvicorn shuts down gracefully, then re-raises the signal it caught (exit by SIGTERM).
    assert proc.returncode in (0, -signal.SIGTERM), log
    assert "Application shutdown complete" in log
    assert "Traceback" not in log
    assert "bound llm/vllm-70b-1 to gpu-1" in log


def test_metrics_port_serves_probes_and_metrics_but_no_verbs() -> None:
    """The shipped Deployment keeps the verbs on loopback and points the kubelet's probes and
    Prometheus at --metrics-port (a probe with host 127.0.0.1 would dial the node, not the
    pod). That listener answers the probes and /metrics, never a verb, and SIGTERM still
    stops the whole process."""
    port, metrics_port = free_port(), free_port()
    proc = start(port, "--metrics-port", str(metrics_port), "--metrics-host", "127.0.0.1")
    probes = f"http://127.0.0.1:{metrics_port}"
    try:
        wait_ready(probes, proc)
        assert httpx.get(f"{probes}/healthz").json() == {"status": "ok"}
        assert httpx.get(f"{probes}/readyz").json() == {"status": "ok", "nodes": 3}
        text = httpx.get(f"{probes}/metrics").text
        assert "kvsched_nodes 3.0" in text and "kvsched_cluster_synced 1.0" in text
        body = {"Pod": pod("p", gpus=1), "Nodes": None, "NodeNames": ["gpu-1"]}
        assert httpx.post(f"{probes}/filter", json=body).status_code == 404
        assert httpx.get(f"{probes}/openapi.json").status_code == 404
        verbs = httpx.post(f"http://127.0.0.1:{port}/filter", json=body, timeout=10.0)
        assert verbs.status_code == 200 and verbs.json()["NodeNames"] == ["gpu-1"]
    finally:
        log = stop(proc)
    assert proc.returncode in (0, -signal.SIGTERM), log


def test_metrics_port_must_differ_from_the_verbs_port() -> None:
    done = subprocess.run(
        command(8888, "--metrics-port", "8888"),
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert b"--metrics-port 8888 is the verbs' --port" in done.stderr
