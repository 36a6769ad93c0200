"""The inventory controller against the real API server: residency learned from pods, LRU
eviction, leader election and failover, agent reports winning, and the real kube-scheduler
sending a following pod to the node the controller found warm."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.controlplane import ControlPlane
from support.e2e import INVENTORY_PATH, Cluster, ControllerProcess, run_agent_once, wait_until

from scheduler.inventory.status import format_time, now

pytestmark = pytest.mark.e2e

LLAMA_8B = "meta-llama/llama-3.1-8b-instruct"
QWEN_7B = "qwen/qwen2.5-7b-instruct"
MISTRAL_7B = "mistralai/mistral-7b-instruct-v0.3"


@pytest.fixture
def controllers(
    control_plane: ControlPlane, manifests_applied: object, tmp_path: Path
) -> Iterator[list[ControllerProcess]]:
    """Controller processes a test starts; all stopped at its end."""
    started: list[ControllerProcess] = []
    yield started
    for process in started:
        process.stop()


def start_controller(
    controllers: list[ControllerProcess], plane: ControlPlane, tmp: Path, identity: str
) -> ControllerProcess:
    process = ControllerProcess(plane.kubeconfig, tmp, identity, host_memory_ttl_seconds="3600")
    process.start()
    controllers.append(process)
    return process


def start_leader(
    controllers: list[ControllerProcess], plane: ControlPlane, tmp: Path
) -> ControllerProcess:
    process = start_controller(controllers, plane, tmp, f"c{len(controllers)}")
    wait_until(process.leading, timeout=40, what=f"{process.identity} leading\n{process.log()}")
    return process


def test_running_pod_puts_its_model_on_the_node(
    cluster: Cluster, controllers: list[ControllerProcess], tmp_path: Path
) -> None:
    node = cluster.node("gpu")
    start_leader(controllers, cluster.cp, tmp_path)
    cluster.run_pod("vllm", node, annotations={"kvsched.io/model": LLAMA_8B})
    cluster.wait_tier(node, LLAMA_8B, "gpu")
    inventory = cluster.get_inventory(node)
    assert inventory is not None and inventory["status"]["source"] == "controller"
    cluster.delete_pod("vllm")
    cluster.wait_tier(node, LLAMA_8B, "host-memory")


def test_least_recently_used_model_is_evicted_first(
    cluster: Cluster, controllers: list[ControllerProcess], tmp_path: Path
) -> None:
    # 40 GiB of cache; three ~15-16 GB models do not fit together.
    node = cluster.node("small", labels={"kvsched.io/model-cache-bytes": "40Gi"})
    start_leader(controllers, cluster.cp, tmp_path)
    for index, model in enumerate((LLAMA_8B, QWEN_7B, MISTRAL_7B)):
        pod = cluster.run_pod(f"m{index}", node, annotations={"kvsched.io/model": model})
        cluster.wait_tier(node, model, "gpu")
        cluster.delete_pod(pod)
        cluster.wait_tier(node, model, "host-memory")
    assert set(cluster.cached_models(node)) == {QWEN_7B, MISTRAL_7B}


def test_one_leader_and_failover(
    cluster: Cluster,
    control_plane: ControlPlane,
    controllers: list[ControllerProcess],
    tmp_path: Path,
) -> None:
    for identity in ("a", "b"):
        start_controller(controllers, control_plane, tmp_path, identity)
    leaders = wait_until(
        lambda: [c for c in controllers if c.leading()] or None, timeout=40, what="a leader"
    )
    assert len(leaders) == 1
    leader = leaders[0]
    follower = next(c for c in controllers if c is not leader)
    lease = control_plane.request(
        "GET", "/apis/coordination.k8s.io/v1/namespaces/kvsched-system/leases/kvsched-controller"
    )
    assert lease["spec"]["holderIdentity"] == leader.identity
    # On a busy machine the follower's metrics endpoint may not be up yet: wait for it.
    wait_until(
        lambda: follower.metric("kvsched_controller_leader") is not None,
        timeout=40,
        what=f"{follower.identity}'s metrics endpoint",
    )
    assert follower.metric("kvsched_controller_leader") == 0.0
    leader.stop(kill=True)
    killed = time.monotonic()
    wait_until(follower.leading, timeout=40, what=f"failover to {follower.identity}")
    print(f"\nfollower led {time.monotonic() - killed:.1f}s after the leader was killed")
    # The new leader does the work.
    node = cluster.node("after-failover")
    cluster.run_pod("vllm", node, annotations={"kvsched.io/model": LLAMA_8B})
    cluster.wait_tier(node, LLAMA_8B, "gpu")


def test_agent_report_overrides_learned_residency(
    cluster: Cluster, controllers: list[ControllerProcess], tmp_path: Path
) -> None:
    node = cluster.node("agent")
    start_leader(controllers, cluster.cp, tmp_path)
    cluster.run_pod("old", node, annotations={"kvsched.io/model": QWEN_7B})
    cluster.wait_tier(node, QWEN_7B, "gpu")
    cluster.delete_pod("old")
    cluster.wait_tier(node, QWEN_7B, "host-memory")
    # The node agent reports what is really on the disk: only Mistral.
    cluster.cp.request(
        "PATCH",
        f"{INVENTORY_PATH}/{node}/status",
        {
            "status": {
                "source": "agent",
                "observedAt": format_time(now()),
                "modelCache": {
                    "capacityBytes": 2**40,
                    "models": [{"name": MISTRAL_7B, "tier": "local-disk"}],
                },
            }
        },
        content_type="application/merge-patch+json",
    )
    wait_until(
        lambda: cluster.cached_models(node) == {MISTRAL_7B: "local-disk"},
        timeout=30,
        what=f"agent facts win: {cluster.cached_models(node)}",
    )
    # Stays so across the controller's resyncs (every 2 s here).
    time.sleep(5)
    assert cluster.cached_models(node) == {MISTRAL_7B: "local-disk"}
    assert cluster.get_inventory(node)["status"]["source"] == "agent"  # type: ignore[index]


def test_following_pod_goes_to_the_node_the_controller_found_warm(
    cluster: Cluster, controllers: list[ControllerProcess], tmp_path: Path
) -> None:
    cold, warm = cluster.node("cold"), cluster.node("warm")
    start_leader(controllers, cluster.cp, tmp_path)
    cluster.run_pod("first", warm, annotations={"kvsched.io/model": LLAMA_8B})
    cluster.wait_tier(warm, LLAMA_8B, "gpu")
    cluster.delete_pod("first")
    cluster.wait_tier(warm, LLAMA_8B, "host-memory")
    assert cluster.get_inventory(cold) is not None
    cluster.pod("second", annotations={"kvsched.io/model": LLAMA_8B})
    assert cluster.wait_bound("second")["spec"]["nodeName"] == warm


def hub_cache(root: Path, repo: str, commit: str) -> Path:
    """A Hugging Face hub cache holding one finished snapshot of `repo`."""
    folder = root / ("models--" + repo.replace("/", "--"))
    (folder / "blobs").mkdir(parents=True)
    (folder / "refs").mkdir()
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    for blob, name, data in (
        ("c0", "config.json", b'{"model_type": "qwen2"}'),
        ("w0", "model.safetensors", b"\0" * 65536),
    ):
        (folder / "blobs" / blob).write_bytes(data)
        (snapshot / name).symlink_to(Path("../../blobs") / blob)
    return root


def test_agent_publishes_disk_truth_that_the_scheduler_uses(
    cluster: Cluster, tmp_path: Path
) -> None:
    plain, holder = cluster.node("plain"), cluster.node("holder")
    cache = hub_cache(tmp_path / "hub", "Qwen/Qwen2.5-7B-Instruct", "0123abcd")
    result = run_agent_once(cluster, holder, cache)
    assert result.returncode == 0, result.stderr
    inventory = cluster.get_inventory(holder)
    assert inventory is not None and inventory["status"]["source"] == "agent"
    (model,) = inventory["status"]["modelCache"]["models"]
    assert (model["name"], model["revision"]) == ("Qwen/Qwen2.5-7B-Instruct", "0123abcd")
    assert cluster.get_inventory(plain) is None
    cluster.pod("qwen", annotations={"kvsched.io/model": QWEN_7B})
    assert cluster.wait_bound("qwen")["spec"]["nodeName"] == holder
