"""The e2e cluster with real controllers: pods made by kube-controller-manager's ReplicaSet
controller and by the LeaderWorkerSet controller (its webhooks included), bound by the real
kube-scheduler through kvsched, and run by KWOK (Running, Ready, terminated after their grace
period). These prove the rig; gang semantics are tested elsewhere."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.controllers import Component, LwsController, describe, kwok_node
from support.controlplane import ApiError
from support.e2e import NAMESPACE, Cluster, ControllerProcess, Extender, wait_until

pytestmark = pytest.mark.e2e

GPU = "nvidia.com/gpu"
LWS_NAME = "leaderworkerset.sigs.k8s.io/name"
LWS_GROUP_KEY = "leaderworkerset.sigs.k8s.io/group-key"
LWS_WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"
SUBGROUP_INDEX = "leaderworkerset.sigs.k8s.io/subgroup-index"
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
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (status.get("conditions") or [])
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


# -- gangs made by the real LeaderWorkerSet controller ---------------------------------------

ZONE = "topology.kubernetes.io/zone"
PREDICTED = "kvsched.io/predicted-gpus"
FAST_KWOK = {  # KWOK's per-pod stage delays (hack/kwok/stages/README.md): no random jitter
    "pod-create.stage.kwok.x-k8s.io/delay": "200ms",
    "pod-create.stage.kwok.x-k8s.io/jitter-delay": "300ms",
    "pod-ready.stage.kwok.x-k8s.io/delay": "500ms",
    "pod-ready.stage.kwok.x-k8s.io/jitter-delay": "1s",
}


def live(cluster: Cluster, selector: str) -> list[dict[str, Any]]:
    return [p for p in pods(cluster, selector) if not p["metadata"].get("deletionTimestamp")]


def assert_groups_whole(
    cluster: Cluster, items: list[dict[str, Any]], *, size: int, zone_of: dict[str, str]
) -> dict[str, list[str]]:
    """Every LWS group among `items` has `size` live members, all bound, in one zone; returns
    group key -> nodes."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for pod in items:
        groups.setdefault(pod["metadata"]["labels"][LWS_GROUP_KEY], []).append(pod)
    placed: dict[str, list[str]] = {}
    for key, members in groups.items():
        names = sorted(p["metadata"]["name"] for p in members)
        assert len(members) == size, f"group {key}: {names}"
        nodes = [p["spec"].get("nodeName") for p in members]
        assert all(nodes), f"group {key} partly bound: {dict(zip(names, nodes, strict=True))}"
        assert len({zone_of[n] for n in nodes}) == 1, f"group {key} spans zones: {nodes}"
        placed[key] = nodes
    return placed


def assert_no_gpu_twice(cluster: Cluster) -> None:
    """No GPU index of any node is predicted for two live pods."""
    everything = cluster.cp.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods")["items"]
    held: dict[str, list[int]] = {}
    for pod in everything:
        text = (pod["metadata"].get("annotations") or {}).get(PREDICTED)
        phase = (pod.get("status") or {}).get("phase")
        if text is None or not pod["spec"].get("nodeName") or phase in ("Succeeded", "Failed"):
            continue
        held.setdefault(pod["spec"]["nodeName"], []).extend(json.loads(text)["indices"])
    for node, indices in held.items():
        assert len(indices) == len(set(indices)), f"{node}: GPUs held twice: {sorted(indices)}"


def lws_object(
    cluster: Cluster,
    name: str,
    *,
    size: int,
    gpus: int,
    startup: str | None = None,
    replicas: int = 1,
    annotations: dict[str, str] | None = None,
    restart_policy: str | None = None,
    subgroup_size: int | None = None,
) -> dict[str, Any]:
    template = {
        "metadata": {"labels": {"e2e-test": cluster.test_id}, "annotations": dict(FAST_KWOK)},
        "spec": pod_spec(cluster, gpus),
    }
    spec: dict[str, Any] = {
        "replicas": replicas,
        "leaderWorkerTemplate": {"size": size, "workerTemplate": template},
    }
    if startup is not None:
        spec["startupPolicy"] = startup
    if restart_policy is not None:
        spec["leaderWorkerTemplate"]["restartPolicy"] = restart_policy
    if subgroup_size is not None:
        spec["leaderWorkerTemplate"]["subGroupPolicy"] = {"subGroupSize": subgroup_size}
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": name, "namespace": NAMESPACE, "annotations": annotations or {}},
        "spec": spec,
    }


def test_leader_ready_group_is_placed_whole_without_deadlock(
    cluster: Cluster, lws_controller: LwsController, kwok: Component
) -> None:
    """startupPolicy LeaderReady: LWS creates the worker only once the leader is Ready.
    kvsched plans the group by its declared size when the leader arrives, holds the worker's
    room, and the worker lands there: both Running, one per node, one zone."""
    zone_a = f"{cluster.test_id}-a"[:63]
    zone_b = f"{cluster.test_id}-b"[:63]
    zone_of = {
        kwok_node(cluster, "lr-a1", gpus=8, labels={ZONE: zone_a}): zone_a,
        kwok_node(cluster, "lr-b1", gpus=8, labels={ZONE: zone_b}): zone_b,
        kwok_node(cluster, "lr-b2", gpus=8, labels={ZONE: zone_b}): zone_b,
    }
    name = "e2e-lws-ready"
    selector = f"{LWS_NAME}={name}"
    started = time.monotonic()
    cluster.cp.request(
        "POST", LWS_PATH, lws_object(cluster, name, size=2, gpus=8, startup="LeaderReady")
    )
    try:
        running = wait_pods(
            cluster, selector, 2, running_and_ready, timeout=120, what="leader and worker Ready"
        )
        elapsed = time.monotonic() - started
        placed = assert_groups_whole(cluster, running, size=2, zone_of=zone_of)
        (nodes,) = placed.values()
        assert sorted(nodes) == sorted(n for n, z in zone_of.items() if z == zone_b), nodes
        assert_no_gpu_twice(cluster)
        # LeaderReady was in force: the worker was created only once the leader was Ready.
        by_index = {p["metadata"]["labels"][LWS_WORKER_INDEX]: p for p in running}
        ready_at = next(
            c["lastTransitionTime"]
            for c in by_index["0"]["status"]["conditions"]
            if c["type"] == "Ready"
        )
        assert by_index["1"]["metadata"]["creationTimestamp"] >= ready_at, (ready_at, by_index)
        print(f"LeaderReady group of 2 x 8 GPUs Running+Ready in {elapsed:.1f}s")
        assert elapsed < 90
    finally:
        delete(cluster, f"{LWS_PATH}/{name}")
        wait_until(lambda: not pods(cluster, selector), timeout=60, what="LWS pods gone")


def test_rolling_update_with_slow_termination_and_a_competing_pod(
    cluster: Cluster, lws_controller: LwsController, kwok: Component
) -> None:
    """A LWS group (2 x 8 GPUs) on three 8-GPU nodes of one zone is updated (its template
    changes): the old members stay Terminating for their grace period (KWOK removes them at
    their deletionTimestamp) while the new incarnation's members arrive and an unrelated
    8-GPU pod competes for the same nodes. The group ends whole in one zone, the competitor
    runs, no GPU is held twice, in bounded time."""
    zone = f"{cluster.test_id}-ru"[:63]
    zone_of = {kwok_node(cluster, f"ru-{i}", gpus=8, labels={ZONE: zone}): zone for i in range(3)}
    name = "e2e-lws-roll"
    selector = f"{LWS_NAME}={name}"
    lws = lws_object(cluster, name, size=2, gpus=8)
    template = lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]
    template["spec"]["terminationGracePeriodSeconds"] = 8
    cluster.cp.request("POST", LWS_PATH, lws)
    competitor = f"{cluster.test_id}-rival"[:63]
    try:
        first = wait_pods(cluster, selector, 2, running_and_ready, timeout=120, what="group v1")
        old_uids = {p["metadata"]["uid"] for p in first}
        assert_groups_whole(cluster, first, size=2, zone_of=zone_of)

        started = time.monotonic()
        patch = {
            "spec": {
                "leaderWorkerTemplate": {
                    "workerTemplate": {"metadata": {"labels": {"revision": "two"}}}
                }
            }
        }
        cluster.cp.request(
            "PATCH", f"{LWS_PATH}/{name}", patch, content_type="application/merge-patch+json"
        )
        wait_until(
            lambda: any(p["metadata"].get("deletionTimestamp") for p in pods(cluster, selector)),
            timeout=30,
            what="old members Terminating",
        )
        rival = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": competitor,
                "namespace": NAMESPACE,
                "labels": {"e2e-test": cluster.test_id},
                "annotations": dict(FAST_KWOK),
            },
            "spec": pod_spec(cluster, 8),
        }
        cluster.cp.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", rival)

        def settled() -> bool:
            members = live(cluster, selector)
            fresh = [p for p in members if p["metadata"]["uid"] not in old_uids]
            rival_now = cluster.cp.request(
                "GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{competitor}"
            )
            return (
                len(fresh) == 2
                and len(members) == 2
                and all(running_and_ready(p) for p in fresh)
                and running_and_ready(rival_now)
            )

        try:
            wait_until(settled, timeout=150, interval=0.25, what="group v2 and the rival Ready")
        except TimeoutError as exc:
            raise AssertionError(
                f"{exc}\n{describe(cluster.cp, NAMESPACE, 'e2e-test=' + cluster.test_id)}"
            ) from exc
        elapsed = time.monotonic() - started
        final = live(cluster, selector)
        assert all(p["metadata"]["labels"].get("revision") == "two" for p in final), final
        placed = assert_groups_whole(cluster, final, size=2, zone_of=zone_of)
        (nodes,) = placed.values()
        rival_node = cluster.cp.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{competitor}")[
            "spec"
        ]["nodeName"]
        assert len(set(nodes)) == 2 and rival_node not in nodes, (nodes, rival_node)
        assert_no_gpu_twice(cluster)
        print(f"rolling update with an 8 s grace period and a rival settled in {elapsed:.1f}s")
        assert elapsed < 120
    finally:
        delete(cluster, f"/api/v1/namespaces/{NAMESPACE}/pods/{competitor}")
        delete(cluster, f"{LWS_PATH}/{name}")
        wait_until(lambda: not pods(cluster, selector), timeout=60, what="LWS pods gone")


def test_exclusive_topology_groups_each_take_a_zone_without_deadlock(
    cluster: Cluster, lws_controller: LwsController, kwok: Component
) -> None:
    """`leaderworkerset.sigs.k8s.io/exclusive-topology: zone`, 2 replicas of 2 x 8 GPUs, two
    zones of two 8-GPU nodes: LWS creates workers only once their leader is scheduled, gives
    workers affinity to the leader's zone and groups anti-affinity to each other. kvsched
    plans each group by its size in one zone (the LWS key is its topology key): both groups
    whole, one zone each, different zones."""
    zones = [f"{cluster.test_id}-x{i}"[:63] for i in range(2)]
    zone_of = {
        kwok_node(cluster, f"ex-{i}{j}", gpus=8, labels={ZONE: zone}): zone
        for i, zone in enumerate(zones)
        for j in range(2)
    }
    name = "e2e-lws-excl"
    selector = f"{LWS_NAME}={name}"
    started = time.monotonic()
    lws = lws_object(
        cluster,
        name,
        size=2,
        gpus=8,
        replicas=2,
        annotations={"leaderworkerset.sigs.k8s.io/exclusive-topology": ZONE},
    )
    cluster.cp.request("POST", LWS_PATH, lws)
    try:
        running = wait_pods(
            cluster, selector, 4, running_and_ready, timeout=120, what="2 groups Running+Ready"
        )
        elapsed = time.monotonic() - started
        placed = assert_groups_whole(cluster, running, size=2, zone_of=zone_of)
        assert len(placed) == 2
        used = [{zone_of[n] for n in nodes} for nodes in placed.values()]
        assert used[0] != used[1], placed
        assert_no_gpu_twice(cluster)
        print(f"exclusive-topology: 2 groups of 2 x 8 GPUs Running+Ready in {elapsed:.1f}s")
        assert elapsed < 90
    finally:
        delete(cluster, f"{LWS_PATH}/{name}")
        wait_until(lambda: not pods(cluster, selector), timeout=60, what="LWS pods gone")


def test_exclusive_subgroups_each_take_a_zone_of_their_own(
    cluster: Cluster, lws_controller: LwsController, kwok: Component
) -> None:
    """size 4, `subGroupSize: 2`, `subgroup-exclusive-topology: zone`, 8 GPUs per pod, three
    zones of two 8-GPU nodes: LWS's webhook gives each subgroup affinity to its own zone and
    anti-affinity to every other subgroup's. kvsched plans the group whole with each subgroup
    in one zone and the two in different zones: all four bound, no GPU twice."""
    zones = [f"{cluster.test_id}-s{i}"[:63] for i in range(3)]
    zone_of = {
        kwok_node(cluster, f"sg-{i}{j}", gpus=8, labels={ZONE: zone}): zone
        for i, zone in enumerate(zones)
        for j in range(2)
    }
    name = "e2e-lws-subgroup"
    selector = f"{LWS_NAME}={name}"
    started = time.monotonic()
    lws = lws_object(
        cluster,
        name,
        size=4,
        gpus=8,
        subgroup_size=2,
        annotations={"leaderworkerset.sigs.k8s.io/subgroup-exclusive-topology": ZONE},
    )
    cluster.cp.request("POST", LWS_PATH, lws)
    try:
        running = wait_pods(
            cluster, selector, 4, running_and_ready, timeout=120, what="group Running+Ready"
        )
        elapsed = time.monotonic() - started
        subgroups: dict[str, list[str]] = {}
        for pod in running:
            labels = pod["metadata"]["labels"]
            node = pod["spec"]["nodeName"]
            assert node in zone_of, f"{pod['metadata']['name']} on {node}"
            subgroups.setdefault(labels[SUBGROUP_INDEX], []).append(node)
        assert sorted(subgroups) == ["0", "1"], subgroups
        used = {index: {zone_of[n] for n in nodes} for index, nodes in subgroups.items()}
        assert all(len(z) == 1 for z in used.values()), used
        assert used["0"] != used["1"], used
        assert len({n for nodes in subgroups.values() for n in nodes}) == 4, subgroups
        assert_no_gpu_twice(cluster)
        print(f"subgroups: 2 x 2 x 8 GPUs Running+Ready in {elapsed:.1f}s, zones {used}")
        assert elapsed < 90
    finally:
        delete(cluster, f"{LWS_PATH}/{name}")
        wait_until(lambda: not pods(cluster, selector), timeout=60, what="LWS pods gone")


def scale(cluster: Cluster, name: str, replicas: int) -> None:
    cluster.cp.request(
        "PATCH",
        f"{LWS_PATH}/{name}",
        {"spec": {"replicas": replicas}},
        content_type="application/merge-patch+json",
    )


def test_scale_three_to_one_to_three_groups(
    cluster: Cluster, lws_controller: LwsController, kwok: Component
) -> None:
    """3 groups of 2 x 8 GPUs on three zones of two 8-GPU nodes (each group must take a zone
    of its own). Scaled to 1: groups 1 and 2 are deleted and stay Terminating for their grace
    period; scaled back to 3 at once, the new incarnations of groups 1 and 2 reuse their group
    keys while the old members still hold their GPUs. Group 0 is never touched; all three end
    whole, a zone each, no GPU twice, in bounded time."""
    zones = [f"{cluster.test_id}-s{i}"[:63] for i in range(3)]
    zone_of = {
        kwok_node(cluster, f"sc-{i}{j}", gpus=8, labels={ZONE: zone}): zone
        for i, zone in enumerate(zones)
        for j in range(2)
    }
    name = "e2e-lws-scale"
    selector = f"{LWS_NAME}={name}"
    cluster.cp.request("POST", LWS_PATH, lws_object(cluster, name, size=2, gpus=8, replicas=3))
    try:
        first = wait_pods(cluster, selector, 6, running_and_ready, timeout=120, what="3 groups")
        placed = assert_groups_whole(cluster, first, size=2, zone_of=zone_of)
        assert len(placed) == 3
        assert len({zone_of[nodes[0]] for nodes in placed.values()}) == 3, placed
        group0 = {
            p["metadata"]["uid"]
            for p in first
            if p["metadata"]["labels"].get("leaderworkerset.sigs.k8s.io/group-index") == "0"
        }
        assert len(group0) == 2, first

        started = time.monotonic()
        scale(cluster, name, 1)
        wait_until(
            lambda: len(live(cluster, selector)) == 2,
            timeout=30,
            interval=0.1,
            what="groups 1 and 2 deleted",
        )
        terminating = [p for p in pods(cluster, selector) if p["metadata"].get("deletionTimestamp")]
        scale(cluster, name, 3)
        final = wait_pods(
            cluster, selector, 6, running_and_ready, timeout=150, what="3 groups again"
        )
        elapsed = time.monotonic() - started
        placed = assert_groups_whole(cluster, final, size=2, zone_of=zone_of)
        assert len(placed) == 3
        assert len({zone_of[nodes[0]] for nodes in placed.values()}) == 3, placed
        assert {p["metadata"]["uid"] for p in final} >= group0, "group 0 was disturbed"
        assert_no_gpu_twice(cluster)
        print(
            f"scale 3->1->3 ({len(terminating)} old members Terminating at scale-up) "
            f"settled in {elapsed:.1f}s"
        )
        assert elapsed < 120
    finally:
        delete(cluster, f"{LWS_PATH}/{name}")
        wait_until(lambda: not pods(cluster, selector), timeout=60, what="LWS pods gone")


def test_deleted_member_is_recreated_into_its_group(
    cluster: Cluster, lws_controller: LwsController, kwok: Component
) -> None:
    """A group of 2 x 8 GPUs with `restartPolicy: None` (LWS leaves the rest of the group
    alone) fits only in zone A (two 8-GPU nodes; zone B has one). Its worker pod is deleted:
    the worker StatefulSet recreates it under the same name and group key, alone, while the
    leader stays bound; kvsched sends it back to the leader's zone (the freed node), not to
    the free node of zone B. The group ends whole again, no GPU twice, in bounded time."""
    zone_a = f"{cluster.test_id}-a"[:63]
    zone_b = f"{cluster.test_id}-b"[:63]
    zone_of = {
        kwok_node(cluster, "md-a1", gpus=8, labels={ZONE: zone_a}): zone_a,
        kwok_node(cluster, "md-a2", gpus=8, labels={ZONE: zone_a}): zone_a,
        kwok_node(cluster, "md-b1", gpus=8, labels={ZONE: zone_b}): zone_b,
    }
    name = "e2e-lws-member"
    selector = f"{LWS_NAME}={name}"
    lws = lws_object(cluster, name, size=2, gpus=8, restart_policy="None")
    cluster.cp.request("POST", LWS_PATH, lws)
    try:
        first = wait_pods(cluster, selector, 2, running_and_ready, timeout=120, what="the group")
        placed = assert_groups_whole(cluster, first, size=2, zone_of=zone_of)
        ((key, nodes),) = placed.items()
        assert {zone_of[n] for n in nodes} == {zone_a}, nodes
        by_index = {p["metadata"]["labels"][LWS_WORKER_INDEX]: p for p in first}
        leader, worker = by_index["0"], by_index["1"]

        started = time.monotonic()
        worker_name = worker["metadata"]["name"]
        delete(cluster, f"/api/v1/namespaces/{NAMESPACE}/pods/{worker_name}")

        old_uid = worker["metadata"]["uid"]
        final = wait_pods(
            cluster,
            selector,
            2,
            lambda p: running_and_ready(p) and p["metadata"]["uid"] != old_uid,
            timeout=120,
            what="the worker recreated and Ready",
        )
        elapsed = time.monotonic() - started
        placed = assert_groups_whole(cluster, final, size=2, zone_of=zone_of)
        assert list(placed) == [key], placed
        assert {zone_of[n] for n in placed[key]} == {zone_a}, placed
        assert leader["metadata"]["uid"] in {p["metadata"]["uid"] for p in final}
        assert_no_gpu_twice(cluster)
        print(f"deleted worker recreated into its group in {elapsed:.1f}s")
        assert elapsed < 90
    finally:
        delete(cluster, f"{LWS_PATH}/{name}")
        wait_until(lambda: not pods(cluster, selector), timeout=60, what="LWS pods gone")


LLAMA_8B = "meta-llama/llama-3.1-8b-instruct"


@pytest.fixture
def inventory_controller(cluster: Cluster, tmp_path: Path) -> Iterator[ControllerProcess]:
    """`kvsched controller` as a process (as in test_inventory.py), leading."""
    process = ControllerProcess(
        cluster.cp.kubeconfig, tmp_path, "kwok-c", host_memory_ttl_seconds="3600"
    )
    process.start()
    try:
        wait_until(process.leading, timeout=40, what=f"controller leading\n{process.log()}")
        yield process
    finally:
        process.stop()


def test_inventory_controller_learns_residency_from_a_pod_kwok_runs(
    cluster: Cluster,
    controller_manager: Component,
    kwok: Component,
    inventory_controller: ControllerProcess,
) -> None:
    """A Deployment's pod with `kvsched.io/model` is bound to one of two KWOK nodes and KWOK
    takes it to Running (no status is written by the test): the inventory controller lists the
    model at tier gpu on that node, and a second pod of the model is bound to the same node.
    When the pods are gone (KWOK removes them after their grace period) the model drops to
    host-memory."""
    nodes = {kwok_node(cluster, "inv-a", gpus=8), kwok_node(cluster, "inv-b", gpus=8)}
    name = f"{cluster.test_id}-inv"[:50].strip("-")
    started = time.monotonic()
    annotations = {**FAST_KWOK, "kvsched.io/model": LLAMA_8B}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {
                    "labels": {"app": name, "e2e-test": cluster.test_id},
                    "annotations": annotations,
                },
                "spec": pod_spec(cluster, gpus=1),
            },
        },
    }
    second = f"{cluster.test_id}-second"[:63].strip("-")
    cluster.cp.request("POST", DEPLOYMENTS, deployment)
    try:
        (running,) = wait_pods(
            cluster, f"app={name}", 1, running_and_ready, timeout=90, what="the replica Ready"
        )
        node = running["spec"]["nodeName"]
        assert node in nodes
        cluster.wait_tier(node, LLAMA_8B, "gpu", timeout=30)
        inventory = cluster.get_inventory(node)
        assert inventory is not None and inventory["status"]["source"] == "controller"
        other = next(n for n in nodes if n != node)
        assert LLAMA_8B not in cluster.cached_models(other)
        elapsed = time.monotonic() - started
        print(f"model at tier gpu {elapsed:.1f}s after the Deployment was created")
        assert elapsed < 60

        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": second,
                "namespace": NAMESPACE,
                "labels": {"e2e-test": cluster.test_id},
                "annotations": annotations,
            },
            "spec": pod_spec(cluster, 1),
        }
        cluster.cp.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", pod)
        assert cluster.wait_bound(second)["spec"]["nodeName"] == node
        assert_no_gpu_twice(cluster)

        delete(cluster, f"/api/v1/namespaces/{NAMESPACE}/pods/{second}")
        delete(cluster, f"{DEPLOYMENTS}/{name}")
        watch_termination(cluster, f"e2e-test={cluster.test_id}", timeout=60)
        cluster.wait_tier(node, LLAMA_8B, "host-memory", timeout=30)
    finally:
        delete(cluster, f"/api/v1/namespaces/{NAMESPACE}/pods/{second}")
        delete(cluster, f"{DEPLOYMENTS}/{name}")


# -- PodGroup (scheduling.x-k8s.io) -----------------------------------------------------------

CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
PODGROUP_CRD = "podgroups.scheduling.x-k8s.io"
PODGROUPS = f"/apis/scheduling.x-k8s.io/v1alpha1/namespaces/{NAMESPACE}/podgroups"


def podgroup_crd() -> dict[str, Any]:
    """The coscheduling plugin's PodGroup CRD, as much of it as kvsched reads."""
    schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": PODGROUP_CRD},
        "spec": {
            "group": "scheduling.x-k8s.io",
            "scope": "Namespaced",
            "names": {
                "plural": "podgroups",
                "singular": "podgroup",
                "kind": "PodGroup",
                "listKind": "PodGroupList",
                "shortNames": ["pg", "pgs"],
            },
            "versions": [
                {
                    "name": "v1alpha1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {"status": {}},
                }
            ],
        },
    }


def test_pod_group_min_member_sizes_the_group(cluster: Cluster, extender: Extender) -> None:
    """The PodGroup CRD appears after the extender started (it was not served: not fatal); the
    extender lists it within its backoff, then sees a PodGroup `minMember: 2` through its
    watch. A lone member labelled `scheduling.x-k8s.io/pod-group` without kvsched.io/gang-size
    is planned by that size (a slot for the absent member) in the only zone that holds both;
    the second member, created later, is bound into the slot."""
    zone_a = f"{cluster.test_id}-a"[:63]
    zone_b = f"{cluster.test_id}-b"[:63]
    zone_of = {
        cluster.node("pg-a1", labels={ZONE: zone_a}): zone_a,
        cluster.node("pg-b1", labels={ZONE: zone_b}): zone_b,
        cluster.node("pg-b2", labels={ZONE: zone_b}): zone_b,
    }
    created = False
    try:
        cluster.cp.request("POST", CRDS, podgroup_crd())
        created = True
    except ApiError as exc:
        if exc.status != 409:
            raise
    group = f"{cluster.test_id}-pg"[:63].strip("-")
    try:
        cluster.cp.wait_for(
            f"{CRDS}/{PODGROUP_CRD}",
            lambda crd: any(
                c.get("type") == "Established" and c.get("status") == "True"
                for c in ((crd.get("status") or {}).get("conditions") or [])
            ),
            timeout=30,
        )

        def podgroups_listed() -> bool:
            url = extender.url + "/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                return 'kvsched_listed_objects{kind="PodGroup"}' in response.read().decode()

        # The informer retries a missing CRD with backoff (at most 30 s between tries).
        wait_until(podgroups_listed, timeout=60, interval=0.5, what="the extender lists PodGroups")
        cluster.cp.request(
            "POST",
            PODGROUPS,
            {
                "apiVersion": "scheduling.x-k8s.io/v1alpha1",
                "kind": "PodGroup",
                "metadata": {"name": group, "namespace": NAMESPACE},
                "spec": {"minMember": 2},
            },
        )
        time.sleep(1.0)  # the watch event on its way
        labels = {"scheduling.x-k8s.io/pod-group": group}
        started = time.monotonic()
        cluster.pod("m0", gpus=8, labels=labels)
        first = cluster.wait_bound("m0", timeout=60)["spec"]["nodeName"]
        assert zone_of[first] == zone_b, first
        cluster.pod("m1", gpus=8, labels=labels)
        second = cluster.wait_bound("m1", timeout=60)["spec"]["nodeName"]
        elapsed = time.monotonic() - started
        assert zone_of[second] == zone_b and second != first, (first, second)
        assert_no_gpu_twice(cluster)
        print(f"PodGroup of 2 placed by minMember in {elapsed:.1f}s")
        assert elapsed < 60
    finally:
        delete(cluster, f"{PODGROUPS}/{group}")
        if created:
            delete(cluster, f"{CRDS}/{PODGROUP_CRD}")
