"""The agent's fetcher end to end: the real agent process reads spec.warming from the real API
server, copies a real model folder from a source folder into its cache folder, and publishes it
(status.warming, then modelCache); killed mid-copy it reports nothing cached and finishes after
a restart; with a full budget it evicts the least recently used model, never one a running pod
uses (the real controller marks that one gpu-resident)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.controlplane import ControlPlane
from support.e2e import Cluster, ControllerProcess, wait_until
from support.warm_agent import WarmAgent, set_warming, warming_states, write_model

from scheduler.agent.cache_scan import no_residency, scan_model_caches
from scheduler.agent.fetch import STAGING_DIR
from scheduler.inventory.status import format_time, now

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024


@pytest.fixture
def agents() -> Iterator[list[WarmAgent]]:
    started: list[WarmAgent] = []
    yield started
    for agent in started:
        agent.stop()


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    source, cache = tmp_path / "source", tmp_path / "cache"
    source.mkdir()
    cache.mkdir()
    return source, cache


def start(agents: list[WarmAgent], agent: WarmAgent) -> WarmAgent:
    agent.start()
    agents.append(agent)
    return agent


def want(*names: str) -> list[dict[str, Any]]:
    return [{"name": n, "reason": "e2e", "requestedAt": format_time(now())} for n in names]


def cached(cluster: Cluster, node: str) -> dict[str, str]:
    return cluster.cached_models(node)


def on_node(cluster: Cluster, node: str, model: str) -> bool:
    # A fresh copy is often still in the page cache: host-memory, else local-disk.
    return cached(cluster, node).get(model) in ("local-disk", "host-memory")


def in_use(cluster: Cluster, node: str, model: str) -> bool:
    """Whether the inventory lists ``model`` at gpu tier (the controller's entry has no
    revision; the agent's entry of the files on disk stands beside it)."""
    inventory = cluster.get_inventory(node) or {}
    models = ((inventory.get("status") or {}).get("modelCache") or {}).get("models") or []
    return any(m["name"] == model and m["tier"] == "gpu" for m in models)


def on_disk(cache: Path) -> set[str]:
    return {m.name.lower() for m in scan_model_caches([cache], residency=no_residency).models}


def test_the_agent_copies_a_wanted_model_and_publishes_it(
    cluster: Cluster, agents: list[WarmAgent], folders: tuple[Path, Path], tmp_path: Path
) -> None:
    source, cache = folders
    node = cluster.node("warm")
    total = write_model(
        source / "acme" / "tiny-llm",
        {"model-00001-of-00002.safetensors": 2 * MIB, "model-00002-of-00002.safetensors": 2 * MIB},
    )
    set_warming(cluster.cp, node, want("acme/tiny-llm"))
    agent = start(agents, WarmAgent(cluster.cp, node, source, cache, tmp_path))
    wait_until(
        lambda: on_node(cluster, node, "acme/tiny-llm"),
        timeout=60,
        what=f"acme/tiny-llm in modelCache\n{agent.log()}",
    )
    progress = warming_states(cluster.cp, node)["acme/tiny-llm"]
    assert progress["state"] == "done", progress
    assert progress["bytesDone"] == progress["bytesTotal"] == total
    snapshots = list((cache / "models--acme--tiny-llm" / "snapshots").iterdir())
    assert len(snapshots) == 1
    ref = (cache / "models--acme--tiny-llm" / "refs" / "main").read_text()
    assert snapshots[0].name == ref
    copied = snapshots[0] / "model-00002-of-00002.safetensors"
    original = source / "acme" / "tiny-llm" / "model-00002-of-00002.safetensors"
    assert copied.is_symlink() and copied.read_bytes() == original.read_bytes()
    # modelCache names the same revision as the cache folder (the source's fingerprint).
    inventory = cluster.get_inventory(node)
    assert inventory is not None
    (entry,) = [
        m for m in inventory["status"]["modelCache"]["models"] if m["name"] == "acme/tiny-llm"
    ]
    assert entry["revision"] == ref and entry["sizeBytes"] == total


def test_an_agent_killed_mid_copy_reports_nothing_cached_and_finishes_after_restart(
    cluster: Cluster, agents: list[WarmAgent], folders: tuple[Path, Path], tmp_path: Path
) -> None:
    source, cache = folders
    node = cluster.node("killed")
    total = write_model(source / "acme" / "big", {"model.safetensors": 8 * MIB}, seed=3)
    set_warming(cluster.cp, node, want("acme/big"))
    # 1 MiB/s: the copy takes about 8 s, and the agent publishes its progress every second.
    slow = start(
        agents, WarmAgent(cluster.cp, node, source, cache, tmp_path, ["--warm-bandwidth", "1Mi"])
    )
    wait_until(
        lambda: warming_states(cluster.cp, node).get("acme/big", {}).get("bytesDone", 0) >= 2 * MIB,
        timeout=60,
        what=f"copy under way\n{slow.log()}",
    )
    assert warming_states(cluster.cp, node)["acme/big"]["state"] == "copying"
    slow.kill()
    staged = [p for p in (cache / STAGING_DIR).rglob("*") if p.is_file()]
    assert any(p.name.endswith(".part") for p in staged), staged
    assert "acme/big" not in cached(cluster, node)
    assert "acme/big" not in on_disk(cache)  # what the next scan would report: nothing

    restarted = start(agents, WarmAgent(cluster.cp, node, source, cache, tmp_path))
    wait_until(
        lambda: on_node(cluster, node, "acme/big"),
        timeout=60,
        what=f"acme/big in modelCache after the restart\n{restarted.log()}",
    )
    progress = warming_states(cluster.cp, node)["acme/big"]
    assert progress["state"] == "done" and progress["bytesDone"] == total
    assert not any((cache / STAGING_DIR).iterdir())
    copied = next((cache / "models--acme--big" / "snapshots").iterdir()) / "model.safetensors"
    assert copied.read_bytes() == (source / "acme" / "big" / "model.safetensors").read_bytes()


def hub_copy(cache: Path, name: str, size: int, age_days: float, seed: int) -> int:
    """A finished hub-layout copy in the cache, its files last touched ``age_days`` ago."""
    plain = cache.parent / "hub-build" / name
    total = write_model(plain, {"model.safetensors": size}, seed=seed)
    repo = cache / ("models--" + name.replace("/", "--"))
    commit = f"{seed:x}" * 40
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    when = time.time() - age_days * 86400
    for file in plain.iterdir():
        blob = repo / "blobs" / f"{seed:02x}{file.name}"
        os.replace(file, blob)
        os.utime(blob, (when, when))
        (snapshot / file.name).symlink_to(f"../../blobs/{blob.name}")
    return total


def test_a_full_budget_evicts_the_least_recently_used_model_never_one_in_use(
    cluster: Cluster,
    control_plane: ControlPlane,
    manifests_applied: object,
    agents: list[WarmAgent],
    folders: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    source, cache = folders
    node = cluster.node("budget")
    one = hub_copy(cache, "acme/oldest", MIB, 30, 1)  # least recently used, but in use
    hub_copy(cache, "acme/older", MIB, 20, 2)
    hub_copy(cache, "acme/recent", MIB, 1, 3)
    assert write_model(source / "acme" / "new", {"model.safetensors": MIB}, seed=4) == one

    controller = ControllerProcess(control_plane.kubeconfig, tmp_path, "warm-c")
    controller.start()
    try:
        wait_until(controller.leading, timeout=40, what=f"controller leading\n{controller.log()}")
        agent = start(
            agents,
            WarmAgent(
                cluster.cp,
                node,
                source,
                cache,
                tmp_path,
                ["--warm-budget-bytes", str(3 * one + one // 2)],
            ),
        )
        wait_until(
            lambda: {"acme/oldest", "acme/older", "acme/recent"} <= set(cached(cluster, node)),
            timeout=60,
            what=f"the three cached models published\n{agent.log()}",
        )
        # A pod of acme/oldest runs on the node: the controller marks that model gpu-resident.
        cluster.run_pod("vllm-oldest", node, annotations={"kvsched.io/model": "acme/oldest"})
        wait_until(
            lambda: in_use(cluster, node, "acme/oldest"),
            timeout=60,
            what=f"acme/oldest at gpu tier\n{controller.log()}",
        )
        set_warming(cluster.cp, node, want("acme/new"))
        wait_until(
            lambda: (
                "acme/new" in cached(cluster, node) and "acme/older" not in cached(cluster, node)
            ),
            timeout=60,
            what=f"acme/new copied, acme/older evicted\n{agent.log()}",
        )
    finally:
        controller.stop()
    assert on_disk(cache) == {"acme/oldest", "acme/recent", "acme/new"}
    progress = warming_states(cluster.cp, node)
    assert progress["acme/new"]["state"] == "done"
    assert progress["acme/older"]["state"] == "evicted"
    assert "least recently used" in progress["acme/older"]["message"]
    assert "acme/oldest" not in progress  # in use: never touched
    assert in_use(cluster, node, "acme/oldest")
