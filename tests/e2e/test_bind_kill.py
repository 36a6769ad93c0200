"""Faults against the real control plane: the extender SIGKILLed while its bind call to the API
server is in flight (issue 7).

The extender talks to the API server through a StallProxy that terminates TLS with the API
server's own serving certificate, so it sees the extender's requests in clear. A trap on the
request line of the binding POST (`POST /api/v1/namespaces/e2e/bindings`, the one call
`KubeApi.bind_pod` makes) holds that connection at the moment the extender has written the
request and is waiting for the answer; the test waits for the trap, not for time, and kills the
extender then. Its own kube-scheduler (own profile and lease; manifests/scheduler/
scheduler-config-bind.yaml, the setting where the extender binds, otherwise) calls this extender
only, so the session's scheduler and extender never touch these pods.

After each kill: the pod is bound exactly once, to its node, with its GPU annotation; no GPU is
held by two pods; scheduling resumes after the extender restarts (the seconds are printed).
"""

from __future__ import annotations

import contextlib
import json
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from support.controlplane import ControlPlane
from support.e2e import (
    BIND_SCHEDULER_CONFIG,
    NAMESPACE,
    SCHEDULER_CONFIG,
    Cluster,
    Extender,
    scheduler_config,
    wait_until,
)
from support.stallproxy import Hold, StallProxy, Trap

from topology.presets import PRESETS

pytestmark = pytest.mark.e2e

LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"
SCHEDULER_NAME = "kvsched-bind-kill"
SHIPPED_SCHEDULER_NAME = "kvsched-write-kill"
ASSIGNED = "kvsched.io/predicted-gpus"
BINDING_POST = f"POST /api/v1/namespaces/{NAMESPACE}/bindings ".encode()
# As in test_faults.py: the informers back off up to 30 s and kube-scheduler retries pods
# with backoff (up to 10 s between tries).
RESUME_WITHIN_S = 90
# kube-scheduler gives up on an extender call after httpTimeout (5 s in the shipped config),
# and the extender on an API call after 30 s (KubeApi's request timeout); a kill within the
# first is also within the second.
SCHEDULER_HTTP_TIMEOUT_S = 5.0


@dataclass
class Rig:
    """An extender reaching the API server through `proxy`, and a kube-scheduler of its own
    (profile SCHEDULER_NAME) calling that extender."""

    control_plane: ControlPlane
    proxy: StallProxy
    extender: Extender
    scheduler: subprocess.Popen[bytes]

    def extender_log(self, start: int) -> str:
        path = self.extender.log_dir / f"extender-{start}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def scheduler_log(self, pod: str) -> list[str]:
        path = self.control_plane.scheduler_log(self.scheduler)
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return [line for line in lines if f"{NAMESPACE}/{pod}" in line]


@contextlib.contextmanager
def build_rig(
    control_plane: ControlPlane, tmp_path: Path, source: Path, scheduler_name: str
) -> Iterator[Rig]:
    """An extender behind a StallProxy and a kube-scheduler of its own (profile
    `scheduler_name`, its own lease) running the configuration `source`."""
    api = urlparse(control_plane.server_url)
    certs = control_plane.ca_file.parent  # hack/controlplane/up.sh: ca.crt beside server.*
    serve = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    serve.load_cert_chain(str(certs / "server.crt"), str(certs / "server.key"))
    proxy = StallProxy(
        api.hostname or "127.0.0.1",
        api.port or 443,
        serve_tls=serve,
        upstream_tls=control_plane.ssl_context(),
    )
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        control_plane.kubeconfig.read_text().replace(
            control_plane.server_url, f"https://127.0.0.1:{proxy.port}"
        )
    )
    extender = Extender(kubeconfig, tmp_path)
    scheduler: subprocess.Popen[bytes] | None = None
    try:
        extender.start()
        config_path = scheduler_config(control_plane, extender.url, tmp_path, source=source)
        config = yaml.safe_load(config_path.read_text())
        config["leaderElection"]["resourceName"] = f"kvsched-scheduler-{scheduler_name}"
        config["profiles"][0]["schedulerName"] = scheduler_name
        config_path.write_text(yaml.safe_dump(config))
        scheduler = control_plane.start_scheduler(config_path)
        yield Rig(control_plane, proxy, extender, scheduler)
    finally:
        if scheduler is not None:
            control_plane.stop_scheduler(scheduler)
        extender.stop()
        proxy.close()


@pytest.fixture
def rig(
    control_plane: ControlPlane, manifests_applied: object, cluster: Cluster, tmp_path: Path
) -> Iterator[Rig]:
    """The setting where the extender binds (scheduler-config-bind.yaml)."""
    with build_rig(control_plane, tmp_path, BIND_SCHEDULER_CONFIG, SCHEDULER_NAME) as built:
        yield built


@pytest.fixture
def shipped_rig(
    control_plane: ControlPlane, manifests_applied: object, cluster: Cluster, tmp_path: Path
) -> Iterator[Rig]:
    """The shipped setting: kube-scheduler binds, the extender writes its prediction after."""
    with build_rig(control_plane, tmp_path, SCHEDULER_CONFIG, SHIPPED_SCHEDULER_NAME) as built:
        yield built


def test_extender_killed_while_writing_its_prediction_after_the_binding(
    cluster: Cluster, shipped_rig: Rig
) -> None:
    """The shipped setting's window: kube-scheduler bound the pod, and the extender is killed
    while its PATCH writing `kvsched.io/predicted-gpus` on it is held (never reaches the API
    server). The pod stays bound, once, without the annotation; the restarted extender, which
    cannot know which GPUs the pod got, counts them as held but unindexed, never free: an
    8-GPU pod does not fit the node beside it, a 4-GPU pod does."""
    rig = shipped_rig
    node = known_gpu_node(cluster, rig)
    trap = rig.proxy.trap(
        f"PATCH /api/v1/namespaces/{NAMESPACE}/pods/victim".encode(), hold="request"
    )
    cluster.pod(
        "victim",
        gpus=4,
        scheduler=SHIPPED_SCHEDULER_NAME,
        annotations={"kvsched.io/model": LLAMA_8B},
    )
    assert trap.sprung.wait(RESUME_WITHIN_S), "the extender never wrote its prediction"
    bound = cluster.get_pod("victim")
    assert bound["spec"]["nodeName"] == node  # kube-scheduler's binding came first
    rig.extender.stop(kill=True)
    assert ASSIGNED not in (cluster.get_pod("victim")["metadata"].get("annotations") or {})

    Restart(rig)
    wait_until(lambda: rig.extender.knows(node), timeout=30, what=f"{node} after the restart")
    (row,) = rig.extender.explain(node)
    assert row["unindexedBusyGpus"] == 4 and row["heldGpus"] == [], row
    cluster.pod(
        "whole",
        gpus=8,
        scheduler=SHIPPED_SCHEDULER_NAME,
        annotations={"kvsched.io/model": LLAMA_8B},
    )
    cluster.pod(
        "half", gpus=4, scheduler=SHIPPED_SCHEDULER_NAME, annotations={"kvsched.io/model": LLAMA_8B}
    )
    assert cluster.wait_placed("half", timeout=RESUME_WITHIN_S)["spec"]["nodeName"] == node
    assert not cluster.get_pod("whole")["spec"].get("nodeName")
    victim = cluster.get_pod("victim")
    assert (
        victim["spec"]["nodeName"] == node and victim["metadata"]["uid"] == bound["metadata"]["uid"]
    )
    assert (trap.matches, trap.forwarded) == (1, 0), trap


def test_extender_killed_before_its_binding_reaches_the_api_server(
    cluster: Cluster, rig: Rig
) -> None:
    """Case (a): the bind request never reached the API server.

    Why the kill lands inside the API call: the trap springs when the extender has written the
    binding POST to its connection, and freezes that connection before the proxy passes the
    request on; the extender's bind thread is then blocked reading an answer that cannot come
    (no "bound" line in its log, the pod still unbound), and it is killed within the scheduler's
    5 s extender timeout, i.e. while kube-scheduler still waits on that very /bind.

    Proven: the restarted extender rebuilds the other pod's GPUs from its annotation,
    kube-scheduler retries the pod on its own and it is bound once, to its node, with its GPU
    annotation, on GPUs no other pod holds."""
    node = known_gpu_node(cluster, rig)
    cluster.pod(
        "before", gpus=4, scheduler=SCHEDULER_NAME, annotations={"kvsched.io/model": LLAMA_8B}
    )
    cluster.wait_bound("before")

    trap = victim_with_trapped_binding(cluster, rig, hold="request")
    in_call = kill_in_call(rig, trap)

    assert not cluster.get_pod("victim")["spec"].get("nodeName"), "the held binding got through"
    bind_cut_by_the_kill(rig)
    restart = Restart(rig)
    pod = cluster.wait_bound("victim", timeout=RESUME_WITHIN_S)
    resumed = restart.done()

    assert pod["spec"]["nodeName"] == node
    victim = prediction(pod)
    before = prediction(cluster.get_pod("before"))
    assert victim["node"] == before["node"] == node
    assert len(victim["indices"]) == len(before["indices"]) == 4
    assert set(victim["indices"]).isdisjoint(before["indices"]), (victim, before)
    # Two binding POSTs: the held one, which never reached the API server, and the one the
    # restarted extender made for kube-scheduler's retry.
    assert (trap.matches, trap.forwarded) == (2, 1), trap
    assert finished_bind(rig.extender_log(2)), rig.extender_log(2)[-3000:]
    print(
        f"\n(a) killed {in_call:.2f}s into the held bind call; extender ready "
        f"{restart.ready_after:.1f}s after the restart, pod bound {resumed:.1f}s after the restart "
        f"({resumed - restart.ready_after:.1f}s after ready); binding POSTs seen {trap.matches}, "
        f"forwarded {trap.forwarded}; GPUs victim {victim['indices']} before {before['indices']}"
    )


def test_extender_killed_after_the_api_server_bound_the_pod(cluster: Cluster, rig: Rig) -> None:
    """Case (b): the API server applied the binding, its answer never reached the extender.

    Why the kill lands inside the API call: the trap passes the binding POST on but holds
    everything the API server sends back on that connection; the test sees the pod bound (read
    directly from the API server) while the extender's bind thread still waits for the answer
    (no "bound" line in its log) and kills it then, within the scheduler's 5 s extender
    timeout.

    Proven: the pod keeps the one binding and GPU annotation the killed extender wrote; the
    restarted extender rebuilds that allocation from the bound pod's annotation, so a second
    pod placed afterwards on the same single node gets different GPUs."""
    node = known_gpu_node(cluster, rig)

    trap = victim_with_trapped_binding(cluster, rig, hold="response")
    assert trap.sprung.wait(RESUME_WITHIN_S), "the extender never posted the binding"
    bound = cluster.wait_bound("victim", timeout=SCHEDULER_HTTP_TIMEOUT_S)
    in_call = kill_in_call(rig, trap)
    assert bound["spec"]["nodeName"] == node
    written = bound["metadata"]["annotations"][ASSIGNED]
    bind_cut_by_the_kill(rig)

    restart = Restart(rig)
    cluster.pod(
        "after", gpus=4, scheduler=SCHEDULER_NAME, annotations={"kvsched.io/model": LLAMA_8B}
    )
    cluster.wait_bound("after", timeout=RESUME_WITHIN_S)
    resumed = restart.done()

    victim_pod = cluster.get_pod("victim")
    assert victim_pod["spec"]["nodeName"] == node
    assert victim_pod["metadata"]["annotations"][ASSIGNED] == written  # not bound a second time
    victim = prediction(victim_pod)
    after = prediction(cluster.get_pod("after"))
    assert victim["node"] == after["node"] == node
    assert len(victim["indices"]) == len(after["indices"]) == 4
    assert set(victim["indices"]).isdisjoint(after["indices"]), (victim, after)
    # One binding POST per pod reached the API server: the victim's (its answer held) and the
    # next pod's; nothing bound the victim again after the restart.
    assert (trap.matches, trap.forwarded) == (2, 2), trap
    print(
        f"\n(b) killed {in_call:.2f}s into the bind call whose answer was held; extender ready "
        f"{restart.ready_after:.1f}s after the restart, next pod bound {resumed:.1f}s after the "
        f"restart ({resumed - restart.ready_after:.1f}s after ready); GPUs victim "
        f"{victim['indices']} after {after['indices']}; binding POSTs forwarded {trap.forwarded}"
    )


def test_extender_killed_in_a_bind_call_slower_than_the_scheduler_timeout(
    cluster: Cluster, rig: Rig
) -> None:
    """Case (a) with a slow API server: the binding POST is held (never reaches the API
    server) longer than kube-scheduler's 5 s extender timeout. kube-scheduler gives up on
    /bind, schedules the pod again and calls /bind again while the extender's first call is
    still in flight. The extender must not answer that retry "bound" from its unconfirmed
    record (kube-scheduler would then never schedule the pod again once the first call
    fails): it refuses it. The extender is then killed inside the first call; once it has
    restarted, the pod gets bound. (This test found that bug: ClusterStore.bind now waits
    briefly for an earlier bind of the same pod, and refuses while it is under way.)"""
    node = known_gpu_node(cluster, rig)

    trap = victim_with_trapped_binding(cluster, rig, hold="request")
    assert trap.sprung.wait(RESUME_WITHIN_S), "the extender never posted the binding"
    wait_until(
        lambda: rig.extender.metric("kvsched_binds_total", result="rejected") >= 1,
        timeout=RESUME_WITHIN_S,
        what="kube-scheduler's retried /bind refused while the first is in flight",
    )
    assert rig.extender.metric("kvsched_binds_total", result="already_bound") == 0
    assert not any("Successfully bound" in line for line in rig.scheduler_log("victim"))
    assert not cluster.get_pod("victim")["spec"].get("nodeName")  # the only POST is held
    # The first call is still in flight: no "bound" line, and the only rejection logged is the
    # retry's.
    log = rig.extender_log(1)
    assert f"bound {NAMESPACE}/victim " not in log
    assert log.count(f"bind {NAMESPACE}/victim -> ") == log.count("still waiting on the API")
    rig.extender.stop(kill=True)
    print(f"\n(c) killed {time.monotonic() - trap.sprung_at:.1f}s into the held bind call")

    restart = Restart(rig)
    pod = cluster.wait_bound("victim", timeout=RESUME_WITHIN_S)
    print(f"(c) pod bound {restart.done():.1f}s after the restart")
    assert pod["spec"]["nodeName"] == node
    assert len(prediction(pod)["indices"]) == 4


def kill_in_call(rig: Rig, trap: Trap) -> float:
    """Wait for `trap`, check that the extender is still inside the bind call, SIGKILL it;
    returns the seconds from the proxy catching the binding POST to the kill."""
    assert trap.sprung.wait(RESUME_WITHIN_S), "the extender never posted the binding"
    process = rig.extender.process
    assert process is not None and process.poll() is None
    assert not finished_bind(rig.extender_log(rig.extender.starts))
    rig.extender.stop(kill=True)
    in_call = time.monotonic() - trap.sprung_at
    assert in_call < SCHEDULER_HTTP_TIMEOUT_S, f"the kill came {in_call:.1f}s after the POST"
    # Its bind thread never returned: no "bound" nor "rejected" line for the pod.
    log = rig.extender_log(rig.extender.starts)
    assert not finished_bind(log), log[-3000:]
    return in_call


def bind_cut_by_the_kill(rig: Rig, pod: str = "victim") -> None:
    """kube-scheduler's own /bind call to the extender ended because the extender died under
    it (EOF, connection reset), not by its 5 s timeout: the kill came while both calls, the
    scheduler's to the extender and the extender's to the API server, were under way."""

    def outcome() -> list[str]:
        return [line for line in rig.scheduler_log(pod) if '/bind\\": ' in line]

    lines = wait_until(outcome, timeout=30, what=f"kube-scheduler's /bind of {pod} failed")
    assert all("EOF" in line or "connection reset" in line for line in lines), lines
    assert not any("Timeout" in line for line in lines), lines


def finished_bind(log: str, pod: str = "victim") -> bool:
    """Whether the extender logged the end of a bind of `pod` (scheduler/state/binder.py,
    scheduler/extender/app.py)."""
    return f"bound {NAMESPACE}/{pod} " in log or f"bind {NAMESPACE}/{pod} -> " in log


class Restart:
    """Start the extender again; `done` gives the seconds since the start."""

    def __init__(self, rig: Rig) -> None:
        self.started = time.monotonic()
        rig.extender.start()
        self.ready_after = time.monotonic() - self.started

    def done(self) -> float:
        return time.monotonic() - self.started


def prediction(pod: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(pod["metadata"]["annotations"][ASSIGNED])
    return value


def known_gpu_node(cluster: Cluster, rig: Rig) -> str:
    """One 8-GPU HGX node, once the extender's view has it."""
    node = cluster.node("only")
    cluster.inventory(node, PRESETS["hgx-h100-8"])
    wait_until(lambda: rig.extender.knows(node), timeout=30, what=f"{node} in the extender's view")
    return node


def victim_with_trapped_binding(cluster: Cluster, rig: Rig, hold: Hold) -> Trap:
    """The proxy traps the next binding POST (holding its request or its answer); then the
    4-GPU pod "victim" is created for the test's scheduler."""
    trap = rig.proxy.trap(BINDING_POST, hold=hold)
    cluster.pod(
        "victim", gpus=4, scheduler=SCHEDULER_NAME, annotations={"kvsched.io/model": LLAMA_8B}
    )
    return trap
