"""The e2e cluster with real controllers: pods made by kube-controller-manager's ReplicaSet
controller and by the LeaderWorkerSet controller (its webhooks included), bound by the real
kube-scheduler through kvsched, and run by KWOK (Running, Ready, terminated after their grace
period). These prove the rig; gang semantics are tested elsewhere."""

from __future__ import annotations

import time
import urllib.parse
from typing import Any

import pytest
from support.controllers import Component, LwsController, describe, kwok_node
from support.controlplane import ApiError
from support.e2e import NAMESPACE, Cluster, wait_until

pytestmark = pytest.mark.e2e

GPU = "nvidia.com/gpu"
LWS_NAME = "leaderworkerset.sigs.k8s.io/name"
LWS_GROUP_KEY = "leaderworkerset.sigs.k8s.io/group-key"
LWS_WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"
DEPLOYMENTS = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments"
LWS_PATH = f"/apis/leaderworkerset.x-k8s.io/v1/namespaces/{NAMESPACE}/leaderworkersets"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
GRACE_S = 4


def pods(cluster: Cluster, selector: str) -> list[dict[str, Any]]:
    query = urllib.parse.quote(selector, safe="")
    answer = cluster.cp.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector={query}")
    items: list[dict[str, Any]] = answer.get("items", [])
    return items


def running_and_ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", [])
    )
    return bool(pod["spec"].get("nodeName")) and status.get("phase") == "Running" and ready


def pod_spec(cluster: Cluster, gpus: int) -> dict[str, Any]:
    return {
        "schedulerName": "kvsched",
        "nodeSelector": {"e2e-test": cluster.test_id},
        "terminationGracePeriodSeconds": GRACE_S,
        "containers": [
            {
                "name": "main",
                "image": "vllm/vllm-openai:v0.11.0",
                "resources": {"limits": {GPU: str(gpus)}},
            }
        ],
    }


def wait_pods(
    cluster: Cluster,
    selector: str,
    count: int,
    condition: Any,
    *,
    timeout: float,
    what: str,
) -> list[dict[str, Any]]:
    """Until exactly `count` live pods match and all satisfy `condition`; the failure message
    shows every pod with its phase, node, conditions and events."""
    try:
        found: list[dict[str, Any]] = wait_until(
            lambda: (
                (
                    live := [
                        p
                        for p in pods(cluster, selector)
                        if not p["metadata"].get("deletionTimestamp")
                    ]
                )
                and len(live) == count
                and all(condition(p) for p in live)
                and live
            ),
            timeout=timeout,
            interval=0.25,
            what=what,
        )
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{describe(cluster.cp, NAMESPACE, selector)}") from exc
    return found


def watch_termination(cluster: Cluster, selector: str, *, timeout: float) -> dict[str, float]:
    """Poll until no pod matches; for each pod seen Terminating, how long it was seen so."""
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while items := pods(cluster, selector):
        now = time.monotonic()
        for pod in items:
            if pod["metadata"].get("deletionTimestamp"):
                first.setdefault(pod["metadata"]["name"], now)
                last[pod["metadata"]["name"]] = now
        if now > deadline:
            raise AssertionError(
                f"pods not gone after {timeout}s\n{describe(cluster.cp, NAMESPACE, selector)}"
            )
        time.sleep(0.1)
    return {name: last[name] - first[name] for name in first}


def delete(cluster: Cluster, path: str) -> None:
    try:
        cluster.cp.request("DELETE", path)
    except ApiError as exc:
        if exc.status != 404:
            raise


def test_deployment_pods_run_on_kwok_gpu_nodes(
    cluster: Cluster, controller_manager: Component, kwok: Component
) -> None:
    """A Deployment of 2 single-GPU replicas: the real Deployment and ReplicaSet controllers
    make the pods, kube-scheduler binds them through kvsched to KWOK's GPU nodes, KWOK takes
    them to Running and Ready (the Deployment counts them ready), and on deletion they stay
    Terminating for their grace period before KWOK removes them."""
    nodes = {kwok_node(cluster, "gpu-a", gpus=8), kwok_node(cluster, "gpu-b", gpus=8)}
    name = f"{cluster.test_id}-deploy"[:50].strip("-")
    selector = f"app={name}"
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, "e2e-test": cluster.test_id}},
                "spec": pod_spec(cluster, gpus=1),
            },
        },
    }
    cluster.cp.request("POST", DEPLOYMENTS, deployment)
    try:
        running = wait_pods(
            cluster, selector, 2, running_and_ready, timeout=90, what="2 replicas Running+Ready"
        )
        for pod in running:
            owners = pod["metadata"].get("ownerReferences") or []
            assert [o["kind"] for o in owners] == ["ReplicaSet"], owners
            assert pod["spec"]["nodeName"] in nodes
            assert pod["metadata"]["annotations"].get("kvsched.io/placement"), pod["metadata"]
        cluster.cp.wait_for(
            f"{DEPLOYMENTS}/{name}",
            lambda d: (d.get("status") or {}).get("readyReplicas") == 2,
            timeout=30,
        )
        # The KWOK nodes keep the status the test gave them, and KWOK holds their leases.
        for node in nodes:
            cluster.cp.wait_for(f"{LEASES}/{node}", lambda lease: bool(lease), timeout=30)
            status = cluster.cp.request("GET", f"/api/v1/nodes/{node}")["status"]
            assert status["allocatable"][GPU] == "8" and status["capacity"][GPU] == "8"

        # Deleting the Deployment: the garbage collector deletes the ReplicaSet and its pods;
        # each pod stays Terminating for its grace period, then KWOK removes it.
        delete(cluster, f"{DEPLOYMENTS}/{name}")
        terminating = watch_termination(cluster, selector, timeout=60)
        assert set(terminating) == {p["metadata"]["name"] for p in running}, terminating
        for pod_name, seconds in terminating.items():
            # deletionTimestamp = delete time + grace, in whole seconds: at least grace - 1.
            assert seconds >= GRACE_S - 1.5, f"{pod_name} removed after {seconds:.1f}s Terminating"
    finally:
        delete(cluster, f"{DEPLOYMENTS}/{name}")


def test_leaderworkerset_group_runs_on_two_kwok_nodes(
    cluster: Cluster, lws_controller: LwsController, kwok: Component
) -> None:
    """A LeaderWorkerSet of size 2, 8 GPUs per pod, on two 8-GPU KWOK nodes in one zone: the
    LWS controller makes the leader StatefulSet (run by kube-controller-manager) and the worker
    StatefulSet, its pod webhook labels both pods with the group key, and both are bound one
    per node and go Running."""
    zone = {"topology.kubernetes.io/zone": f"{cluster.test_id}-zone"[:63]}
    nodes = {
        kwok_node(cluster, "gpu-a", gpus=8, labels=zone),
        kwok_node(cluster, "gpu-b", gpus=8, labels=zone),
    }
    name = "e2e-lws"
    template = {"metadata": {"labels": {"e2e-test": cluster.test_id}}, "spec": pod_spec(cluster, 8)}
    lws = {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"replicas": 1, "leaderWorkerTemplate": {"size": 2, "workerTemplate": template}},
    }
    cluster.cp.request("POST", LWS_PATH, lws)
    try:
        selector = f"{LWS_NAME}={name}"
        running = wait_pods(
            cluster,
            selector,
            2,
            lambda p: p.get("status", {}).get("phase") == "Running" and p["spec"].get("nodeName"),
            timeout=120,
            what="leader and worker Running",
        )
        labels = [p["metadata"]["labels"] for p in running]
        assert {lab.get(LWS_WORKER_INDEX) for lab in labels} == {"0", "1"}
        group_keys = {lab.get(LWS_GROUP_KEY) for lab in labels}
        assert len(group_keys) == 1 and None not in group_keys, labels  # set by the webhook
        assert {p["spec"]["nodeName"] for p in running} == nodes  # one per node
        owners = {o["kind"] for p in running for o in p["metadata"].get("ownerReferences") or []}
        assert owners == {"StatefulSet"}, owners
    finally:
        delete(cluster, f"{LWS_PATH}/{name}")
        wait_until(
            lambda: not pods(cluster, f"{LWS_NAME}={name}"), timeout=60, what="LWS pods gone"
        )
