"""Faults against the real control plane: the API server restarted mid-run, the extender
killed while pods are being placed. After each: no GPU double-booked, scheduling resumes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from support.controlplane import ControlPlane
from support.e2e import Cluster, Extender, SchedulerProcess, wait_until
from support.stallproxy import StallProxy

from topology.presets import PRESETS

pytestmark = pytest.mark.e2e

LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"
# What the tests allow for scheduling to resume after a fault (docs/operations.md): the
# informers back off up to 30 s and kube-scheduler retries pods with backoff.
RESUME_WITHIN_S = 90


def indices(cluster: Cluster, name: str) -> set[int]:
    pod = cluster.get_pod(name)
    return set(json.loads(pod["metadata"]["annotations"]["kvsched.io/predicted-gpus"])["indices"])


def test_api_server_restart_mid_run(
    cluster: Cluster,
    control_plane: ControlPlane,
    extender: Extender,
    scheduler: SchedulerProcess,
) -> None:
    node = cluster.node("only")
    cluster.inventory(node, PRESETS["hgx-h100-8"])
    cluster.pod("before", gpus=4, annotations={"kvsched.io/model": LLAMA_8B})
    cluster.wait_placed("before")
    control_plane.restart_apiserver(down_for=2.0)
    # kube-scheduler exits when it cannot renew its lease; its Deployment restarts it.
    time.sleep(1)
    scheduler.ensure_running()
    started = time.monotonic()
    cluster.pod("after", gpus=4, annotations={"kvsched.io/model": LLAMA_8B})
    cluster.wait_placed("after", timeout=RESUME_WITHIN_S)
    resumed = time.monotonic() - started
    assert indices(cluster, "before").isdisjoint(indices(cluster, "after"))
    assert extender.metric("kvsched_cluster_synced") == 1.0
    assert resumed < RESUME_WITHIN_S
    print(f"scheduling resumed {resumed:.1f}s after the API server came back")


def test_extender_killed_while_placing(cluster: Cluster, extender: Extender) -> None:
    node = cluster.node("only")
    cluster.inventory(node, PRESETS["hgx-h100-8"])
    names = [
        cluster.pod(f"p{i}", gpus=2, annotations={"kvsched.io/model": LLAMA_8B}) for i in range(4)
    ]
    time.sleep(0.3)  # some of them are mid-filter or mid-bind now
    extender.stop(kill=True)
    extender.start()
    for name in names:
        cluster.wait_placed(name, timeout=RESUME_WITHIN_S)
    held = [indices(cluster, n) for n in names]
    assert sum(len(h) for h in held) == len(set().union(*held)) == 8


def test_stalled_watch_connections_are_abandoned_and_the_view_catches_up(
    cluster: Cluster, control_plane: ControlPlane, tmp_path: Path
) -> None:
    """Every connection between the extender and the API server freezes (open, silent): the
    client-side read timeout (watch timeout + 30 s) ends the watches, the informers list
    again over new connections, and objects created meanwhile show up."""
    api = urlparse(control_plane.server_url)
    proxy = StallProxy(api.hostname or "127.0.0.1", api.port or 443)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        control_plane.kubeconfig.read_text().replace(
            control_plane.server_url, f"https://127.0.0.1:{proxy.port}"
        )
    )
    watch_timeout = 5
    extender = Extender(kubeconfig, tmp_path, watch_timeout_s=watch_timeout)
    try:
        extender.start()
        first = cluster.node("first")
        wait_until(lambda: extender.knows(first), timeout=30, what="first node seen")
        proxy.freeze()
        stalled_at = time.monotonic()
        second = cluster.node("second")
        time.sleep(3)
        assert not extender.knows(second)  # frozen: nothing arrives
        proxy.thaw_new()
        wait_until(
            lambda: extender.knows(second),
            timeout=watch_timeout + 30 + 45,
            what="second node seen after the stall",
        )
        caught_up = time.monotonic() - stalled_at
        print(f"view caught up {caught_up:.1f}s after the connections froze")
    finally:
        extender.stop()
        proxy.close()
