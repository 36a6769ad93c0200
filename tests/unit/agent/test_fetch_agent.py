"""The fetcher inside the agent: spec.warming read from the object the agent publishes to,
progress merged into its status (keeping what others own), the --warm-* flags."""

from __future__ import annotations

import argparse
import datetime as dt
import time
from collections.abc import Mapping
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from support.hub_cache import CONFIG, MIB, hub_model, weights

from scheduler.agent.fetch import Fetcher, FetchSettings
from scheduler.agent.run import AgentLoop, AgentSettings
from scheduler.agent.sources import FilesystemSource
from scheduler.commands import agent_cmd
from scheduler.inventory.merge import merge_agent_report
from scheduler.inventory.status import format_time
from scheduler.state.kube import ConflictError

NODE = "gpu-1"


class FakeInventoryApi:
    """The node's NodeInventory in memory, with resourceVersions as the API server keeps them."""

    def __init__(self, objects: dict[str, dict[str, Any]]) -> None:
        self.objects = objects
        self.version = 1

    def get_inventory(self, name: str) -> dict[str, Any] | None:
        obj = self.objects.get(name)
        return None if obj is None else {**obj, "metadata": dict(obj["metadata"])}

    def create_inventory(self, name: str, labels: Mapping[str, str]) -> dict[str, Any]:
        self.version += 1
        obj = {"metadata": {"name": name, "resourceVersion": str(self.version)}, "spec": {}}
        self.objects[name] = obj
        return obj

    def replace_inventory_status(
        self, name: str, status: Mapping[str, Any], resource_version: str
    ) -> dict[str, Any]:
        obj = self.objects[name]
        if obj["metadata"]["resourceVersion"] != resource_version:
            raise ConflictError("stale resourceVersion", 409)
        self.version += 1
        obj["status"] = dict(status)
        obj["metadata"]["resourceVersion"] = str(self.version)
        return obj

    def delete_inventory(self, name: str) -> None:
        self.objects.pop(name, None)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kvsched")
    agent_cmd.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["agent", *argv])


def inventory(spec: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": NODE, "resourceVersion": "1"}, "spec": spec}
    if status is not None:
        obj["status"] = status
    return obj


def loop_for(api: FakeInventoryApi, source: Path, cache: Path, **fetch: Any) -> AgentLoop:
    fetcher = Fetcher(FilesystemSource(source), FetchSettings(cache_dir=cache, **fetch))
    return AgentLoop(
        AgentSettings(node=NODE, caches=(cache,), interval_s=0.05),
        merge_agent_report,
        api=lambda: api,
        discover=lambda: None,
        fetcher=fetcher,
        out=StringIO(),
    )


def test_the_agent_fetches_what_spec_warming_asks_and_publishes_it_as_cached(
    tmp_path: Path,
) -> None:
    source, cache = tmp_path / "source", tmp_path / "cache"
    cache.mkdir()
    hub_model(source, "org/m", {"config.json": CONFIG, "w.safetensors": weights(MIB)})
    now = dt.datetime.now(dt.UTC)
    # The controller's side of the status: a model running on the node (gpu tier) and its
    # allocation predictions, which the agent's write must keep.
    controller_status = {
        "source": "controller",
        "allocated": [{"index": 0, "pod": "ns/p"}],
        "allocatedSource": "prediction",
        "modelCache": {"models": [{"name": "org/other", "tier": "gpu"}]},
        "observedAt": format_time(now),
    }
    api = FakeInventoryApi(
        {
            NODE: inventory(
                {"warming": {"models": [{"name": "org/m", "requestedAt": format_time(now)}]}},
                controller_status,
            )
        }
    )
    loop = loop_for(api, source, cache)
    assert loop.run(once=True) == 0  # once: the cycle, its copies, and a second publish
    status = api.objects[NODE]["status"]
    (warming,) = status["warming"]["models"]
    assert warming["name"] == "org/m" and warming["state"] == "done"
    assert warming["bytesDone"] == warming["bytesTotal"] == MIB + len(CONFIG)
    models = {m["name"]: m for m in status["modelCache"]["models"]}
    assert models["org/m"]["revision"] == "a" * 40
    assert models["org/other"]["tier"] == "gpu"  # the controller's word is kept
    assert status["allocated"] == [{"index": 0, "pod": "ns/p"}]
    assert status["allocatedSource"] == "prediction"
    assert api.objects[NODE]["spec"]["warming"]["models"][0]["name"] == "org/m"


def test_a_copy_in_progress_is_published_but_not_as_cached(tmp_path: Path) -> None:
    source, cache = tmp_path / "source", tmp_path / "cache"
    cache.mkdir()
    hub_model(source, "org/slow", {"config.json": CONFIG, "w.safetensors": weights(4 * MIB)})
    api = FakeInventoryApi({NODE: inventory({"warming": {"models": [{"name": "org/slow"}]}})})
    loop = loop_for(api, source, cache, bandwidth=float(MIB))
    assert loop.run_once()
    assert loop.fetcher is not None and loop.fetcher.busy()
    time.sleep(1.0)
    assert loop.run_once()
    status = api.objects[NODE]["status"]
    (warming,) = status["warming"]["models"]
    assert warming["state"] == "copying" and 0 < warming["bytesDone"] < warming["bytesTotal"]
    assert status["modelCache"]["models"] == []
    loop.fetcher.stop()


def test_warm_flags_need_a_source_and_are_parsed_as_quantities(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--warm-budget-bytes given without --warm-source"):
        agent_cmd.settings_from_args(parse(["--warm-budget-bytes", "10Gi"]))
    with pytest.raises(ValueError, match="needs --warm-cache-dir or a --model-cache"):
        agent_cmd.settings_from_args(parse(["--warm-source", str(tmp_path)]))
    with pytest.raises(ValueError, match="--warm-bandwidth 'fast'"):
        agent_cmd.settings_from_args(
            parse(
                ["--warm-source", str(tmp_path), "--model-cache", "/m", "--warm-bandwidth", "fast"]
            )
        )
    with pytest.raises(ValueError, match="--warm-max-concurrent must be >= 1"):
        agent_cmd.settings_from_args(
            parse(
                [
                    "--warm-source",
                    str(tmp_path),
                    "--model-cache",
                    "/m",
                    "--warm-max-concurrent",
                    "0",
                ]
            )
        )
    args = parse(
        [
            "--model-cache",
            "/models",
            "--warm-source",
            str(tmp_path),
            "--warm-cache-dir",
            str(tmp_path / "warm"),
            "--warm-budget-bytes",
            "2Gi",
            "--warm-bandwidth",
            "100Mi",
        ]
    )
    warm = agent_cmd.warm_settings_from_args(args)
    assert warm is not None
    assert (warm.budget_bytes, warm.bandwidth, warm.max_concurrent) == (2 * 2**30, 100 * 2**20, 1)
    # The warm cache is scanned like a --model-cache, so its copies are reported.
    settings = agent_cmd.settings_from_args(args)
    assert settings.caches == (Path("/models"), tmp_path / "warm")
    # Default: copies go into the first --model-cache (already scanned).
    default = parse(["--model-cache", str(tmp_path / "m"), "--warm-source", str(tmp_path)])
    assert agent_cmd.warm_settings_from_args(default).cache_dir == tmp_path / "m"  # type: ignore[union-attr]
    assert agent_cmd.settings_from_args(default).caches == (tmp_path / "m",)
    fetcher = agent_cmd.build_fetcher(default)
    assert fetcher is not None and (tmp_path / "m").is_dir()


def test_a_spec_entry_the_agent_cannot_read_is_skipped_and_the_rest_fetched(
    tmp_path: Path,
) -> None:
    source, cache = tmp_path / "source", tmp_path / "cache"
    cache.mkdir()
    hub_model(source, "org/m", {"config.json": CONFIG, "w.safetensors": weights(64 * 1024)})
    api = FakeInventoryApi(
        {
            NODE: inventory(
                {
                    "warming": {
                        "models": [
                            {"name": 7},
                            {"name": "org/m", "sizeBytes": "big"},
                            {"name": "org/m"},
                        ]
                    }
                }
            )
        }
    )
    assert loop_for(api, source, cache).run(once=True) == 0
    (warming,) = api.objects[NODE]["status"]["warming"]["models"]
    assert (warming["name"], warming["state"]) == ("org/m", "done")
