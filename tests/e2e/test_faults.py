"""Faults against the real control plane: the API server restarted mid-run, the extender
killed while pods are being placed. After each: no GPU double-booked, scheduling resumes."""

from __future__ import annotations

import json
import time

import pytest
from support.controlplane import ControlPlane
from support.e2e import Cluster, Extender, SchedulerProcess

from topology.presets import PRESETS

pytestmark = pytest.mark.e2e

LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"
# What the tests allow for scheduling to resume after a fault (docs/operations.md): the
# informers back off up to 30 s and kube-scheduler retries pods with backoff.
RESUME_WITHIN_S = 90


def indices(cluster: Cluster, name: str) -> set[int]:
    pod = cluster.get_pod(name)
    return set(json.loads(pod["metadata"]["annotations"]["kvsched.io/assigned-gpus"])["indices"])


def test_api_server_restart_mid_run(
    cluster: Cluster,
    control_plane: ControlPlane,
    extender: Extender,
    scheduler: SchedulerProcess,
) -> None:
    node = cluster.node("only")
    cluster.inventory(node, PRESETS["hgx-h100-8"])
    cluster.pod("before", gpus=4, annotations={"kvsched.io/model": LLAMA_8B})
    cluster.wait_bound("before")
    control_plane.restart_apiserver(down_for=2.0)
    # kube-scheduler exits when it cannot renew its lease; its Deployment restarts it.
    time.sleep(1)
    scheduler.ensure_running()
    started = time.monotonic()
    cluster.pod("after", gpus=4, annotations={"kvsched.io/model": LLAMA_8B})
    cluster.wait_bound("after", timeout=RESUME_WITHIN_S)
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
        cluster.wait_bound(name, timeout=RESUME_WITHIN_S)
    held = [indices(cluster, n) for n in names]
    assert sum(len(h) for h in held) == len(set().union(*held)) == 8
