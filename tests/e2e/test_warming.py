"""Cache warming end to end, all real processes against the real API server: the controller
(`kvsched controller --warming-holders 1`) sees a pending pod of a model and asks one node for
it in spec.warming; that node's agent (`kvsched agent --warm-source ...`) copies the model
folder the test wrote into its cache and publishes it; the pod, let go, lands on that node
through the real kube-scheduler and the kvsched extender. Then: the request is withdrawn once
demand is gone (after the hold-down) while the copy stays; and the RBAC that
manifests/overlays/warming adds is what the controller needs to write spec.warming."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.controlplane import ApiError, ControlPlane
from support.e2e import INVENTORY_PATH, Cluster, ControllerProcess, kubectl, wait_until
from support.warm_agent import WarmAgent, warming_states, write_model

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
# A catalog model: the planner and the extender take its size from the catalog (~15 GB, what
# an engine would load: enough for residency to decide the placement), while the folder the
# test writes and the agent copies holds a few MB of stand-in weights.
MODEL = "Qwen/Qwen2.5-7B-Instruct"
ROOT = Path(__file__).resolve().parents[2]
WARMING_RBAC = ROOT / "manifests" / "overlays" / "warming" / "controller-warming-rbac.yaml"


@pytest.fixture
def processes() -> Iterator[list[WarmAgent | ControllerProcess]]:
    started: list[WarmAgent | ControllerProcess] = []
    yield started
    for process in started:
        process.stop()


def spec_models(cluster: Cluster, node: str) -> list[dict[str, Any]]:
    inventory = cluster.get_inventory(node) or {}
    models: list[dict[str, Any]] = ((inventory.get("spec") or {}).get("warming") or {}).get(
        "models"
    ) or []
    return models


def asked(cluster: Cluster, nodes: list[str]) -> list[str]:
    return [n for n in nodes if any(m["name"] == MODEL for m in spec_models(cluster, n))]


def holds(cluster: Cluster, node: str) -> bool:
    # A fresh copy is often still in the page cache: host-memory, else local-disk.
    return cluster.cached_models(node).get(MODEL.lower()) in ("local-disk", "host-memory")


def setup(
    cluster: Cluster,
    processes: list[WarmAgent | ControllerProcess],
    tmp_path: Path,
    hold_down: str = "600",
) -> tuple[list[str], dict[str, Path], ControllerProcess, int]:
    """Two empty 8-GPU nodes, each with a fetching agent and its own cache; the model in the
    shared source folder; the controller leading with warming on (one holder)."""
    source = tmp_path / "source"
    total = write_model(
        source / "Qwen" / "Qwen2.5-7B-Instruct",
        {"model-00001-of-00002.safetensors": 2 * MIB, "model-00002-of-00002.safetensors": 2 * MIB},
    )
    nodes = [cluster.node("a"), cluster.node("b")]
    caches: dict[str, Path] = {}
    for node in nodes:
        cache = tmp_path / f"cache-{node}"
        cache.mkdir()
        caches[node] = cache
        agent = WarmAgent(cluster.cp, node, source, cache, tmp_path)
        agent.start()
        processes.append(agent)
    # The agents' first reports: the controller asks only nodes whose agent reports.
    for node in nodes:
        wait_until(
            lambda n=node: (
                (cluster.get_inventory(n) or {}).get("status", {}).get("source") == "agent"
            ),
            timeout=60,
            what=f"{node}'s agent reporting",
        )
    controller = ControllerProcess(
        cluster.cp.kubeconfig,
        tmp_path,
        "warming",
        warming_holders="1",
        warming_interval_seconds="1",
        warming_hold_down_seconds=hold_down,
    )
    controller.start()
    processes.append(controller)
    wait_until(controller.leading, timeout=40, what=f"controller leading\n{controller.log()}")
    return nodes, caches, controller, total


def test_the_controller_asks_the_agent_copies_and_the_next_pod_lands_there(
    cluster: Cluster, processes: list[WarmAgent | ControllerProcess], tmp_path: Path
) -> None:
    nodes, caches, controller, total = setup(cluster, processes, tmp_path)
    annotations = {"kvsched.io/model": MODEL, "kvsched.io/max-model-len": "8192"}
    # The next replica, held back by a scheduling gate: demand (a pending pod) the controller
    # sees, not yet a placement.
    cluster.pod("next", annotations=annotations, gated=True)

    (target,) = wait_until(
        lambda: asked(cluster, nodes),
        timeout=60,
        what=f"spec.warming written\n{controller.log()}",
    )
    (entry,) = spec_models(cluster, target)
    assert entry["sizeBytes"] > 15 * 10**9  # the catalog's checkpoint size
    assert "keep 1 ready holders of Qwen/Qwen2.5-7B-Instruct" in entry["reason"]
    assert "pending 1" in entry["reason"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", entry["requestedAt"])

    wait_until(
        lambda: holds(cluster, target),
        timeout=60,
        what=f"{MODEL} copied and published on {target}\n"
        + "\n".join(p.log() for p in processes if isinstance(p, WarmAgent)),
    )
    progress = warming_states(cluster.cp, target)[MODEL.lower()]
    assert progress["state"] == "done" and progress["bytesDone"] == total
    snapshots = list((caches[target] / "models--Qwen--Qwen2.5-7B-Instruct" / "snapshots").iterdir())
    assert len(snapshots) == 1 and (snapshots[0] / "config.json").is_file()
    other = next(n for n in nodes if n != target)
    assert not holds(cluster, other) and asked(cluster, nodes) == [target]
    # Held by one ready node now: the controller asks no other.
    wait_until(
        lambda: controller.metric("kvsched_warming_in_progress") == 0.0,
        timeout=30,
        what=f"no copy in progress\n{controller.log()}",
    )
    assert controller.metric("kvsched_warming_desired") == 1.0
    assert controller.metric("kvsched_warming_requested_bytes_total") == entry["sizeBytes"]
    assert asked(cluster, nodes) == [target]

    cluster.ungate("next")
    bound = cluster.wait_placed("next")
    assert bound["spec"]["nodeName"] == target
    # Chosen for the copy: the extender's breakdown says the weights were on the node.
    placement = bound["metadata"]["annotations"]["kvsched.io/placement"]
    assert re.search(r"weights=(host-memory|local-disk)", placement), placement


def test_withdrawn_after_the_hold_down_and_the_copy_stays(
    cluster: Cluster, processes: list[WarmAgent | ControllerProcess], tmp_path: Path
) -> None:
    nodes, _, controller, _ = setup(cluster, processes, tmp_path, hold_down="3")
    annotations = {"kvsched.io/model": MODEL, "kvsched.io/max-model-len": "8192"}
    cluster.pod("wanted", annotations=annotations, gated=True)
    (target,) = wait_until(
        lambda: asked(cluster, nodes), timeout=60, what=f"spec.warming\n{controller.log()}"
    )
    wait_until(lambda: holds(cluster, target), timeout=60, what=f"{MODEL} copied to {target}")
    cluster.delete_pod("wanted")
    wait_until(
        lambda: not asked(cluster, nodes),
        timeout=60,
        what=f"spec.warming withdrawn\n{controller.log()}",
    )
    assert spec_models(cluster, target) == []
    # The agent never deletes a model because it left the list: it stays, and is reported.
    assert holds(cluster, target)
    assert f"warming: withdraw {MODEL} on {target}" in controller.log()
    assert controller.metric("kvsched_warming_desired") == 0.0


def test_the_warming_overlay_grants_the_controller_its_spec_writes(
    control_plane: ControlPlane, manifests_applied: object
) -> None:
    account = {"Impersonate-User": "system:serviceaccount:kvsched-system:kvsched-controller"}
    body = {"spec": {"warming": {"models": []}}}
    path = f"{INVENTORY_PATH}/rbac-check?dryRun=All"

    def patch_status() -> int:
        try:
            control_plane.request(
                "PATCH", path, body, headers=account, content_type="application/merge-patch+json"
            )
        except ApiError as exc:
            return exc.status
        return 200

    assert patch_status() == 403  # the base manifests: no spec writes
    applied = kubectl(control_plane, "apply", "--server-side", "-f", str(WARMING_RBAC))
    assert applied.returncode == 0, applied.stderr
    try:
        # Authorised now: the object does not exist, so 404 (past authorisation).
        wait_until(lambda: patch_status() == 404, timeout=30, what="patch allowed")
    finally:
        deleted = kubectl(control_plane, "delete", "-f", str(WARMING_RBAC), "--wait")
        assert deleted.returncode == 0, deleted.stderr
