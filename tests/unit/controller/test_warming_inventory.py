"""spec.warming and status.warming of a NodeInventory: typed values, their JSON form, bounded
and named errors, the CRD's schema, and who keeps the status's warming through a merge."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml

from scheduler.inventory.merge import merge_agent_report, merge_controller_view
from scheduler.inventory.settings import ResidencySettings
from scheduler.inventory.spec import WarmingRequest, WarmingSpec
from scheduler.inventory.status import (
    WARMING_STATES,
    InventoryStatus,
    ModelEntry,
    WarmingProgress,
)

ROOT = Path(__file__).resolve().parents[3]
CRD = ROOT / "manifests" / "crd" / "nodeinventories.kvsched.io.yaml"
NOW = dt.datetime(2026, 11, 28, 9, 0, tzinfo=dt.UTC)
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


def schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = crd["spec"]["versions"]
    props: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]
    return props


def test_spec_round_trip_sorted_and_bounded() -> None:
    spec = WarmingSpec(
        (
            WarmingRequest("Qwen/Qwen2.5-7B-Instruct", size_bytes=15, reason="r", requested_at=NOW),
            WarmingRequest(LLAMA, revision="0e9e39f", size_bytes=16),
        )
    )
    text = spec.to_spec()
    assert [m["name"] for m in text["models"]] == [LLAMA, "Qwen/Qwen2.5-7B-Instruct"]
    assert text["models"][1] == {
        "name": "Qwen/Qwen2.5-7B-Instruct",
        "sizeBytes": 15,
        "reason": "r",
        "requestedAt": "2026-11-28T09:00:00Z",
    }
    back = WarmingSpec.from_spec({"warming": text})
    assert set(back.models) == set(spec.models) and back.problems == ()
    assert back.to_spec() == text
    with pytest.raises(ValueError, match="reason is 257 chars"):
        WarmingRequest(LLAMA, reason="x" * 257)
    with pytest.raises(ValueError, match="twice"):
        WarmingSpec((WarmingRequest(LLAMA), WarmingRequest(LLAMA.upper())))
    with pytest.raises(ValueError, match="allows 64"):
        WarmingSpec(tuple(WarmingRequest(f"m/{i}") for i in range(65)))


def test_spec_reader_drops_bad_entries_with_the_field_named() -> None:
    spec = WarmingSpec.from_spec(
        {
            "warming": {
                "models": [
                    {"name": LLAMA},
                    {"name": 7},
                    {"name": "a/b", "sizeBytes": "big"},
                    {"name": "c/d", "requestedAt": "yesterday"},
                    {"name": LLAMA},
                    "text",
                ]
            }
        }
    )
    assert [m.name for m in spec.models] == [LLAMA]
    assert spec.problems == (
        "spec.warming entry: name '7' is not a string",
        "spec.warming a/b: sizeBytes 'big' not an integer",
        "spec.warming c/d: requestedAt 'yesterday' not a date-time",
        f"spec.warming lists {LLAMA} twice; kept the first",
        "spec.warming entry 'text' is not an object",
    )
    assert WarmingSpec.from_spec(None) == WarmingSpec()
    assert WarmingSpec.from_spec({}) == WarmingSpec()
    assert WarmingSpec.from_spec({"warming": []}).problems == (
        "spec.warming '[]' is not an object",
    )


def test_status_warming_round_trip_and_limits() -> None:
    progress = WarmingProgress(
        LLAMA,
        "copying",
        NOW,
        revision="main",
        bytes_done=10,
        bytes_total=20,
        message="x" * 300,
        started_at=NOW,
    )
    status = InventoryStatus(source="agent", warming=(progress,))
    text = status.to_status()
    (entry,) = text["warming"]["models"]
    assert len(entry["message"]) == 256 and entry["updatedAt"] == "2026-11-28T09:00:00Z"
    back = InventoryStatus.from_status(text)
    assert back is not None and back.problems == ()
    assert back.warming[0].bytes_done == 10 and back.warming[0].message == entry["message"]
    assert "warming" not in InventoryStatus(source="agent").to_status()
    bad = InventoryStatus.from_status(
        {
            "source": "agent",
            "warming": {
                "models": [
                    {"name": LLAMA, "state": "half", "updatedAt": "2026-11-28T09:00:00Z"},
                    {"name": LLAMA, "state": "done", "updatedAt": "noon"},
                    {
                        "name": LLAMA,
                        "state": "done",
                        "updatedAt": "2026-11-28T09:00:00Z",
                        "bytesDone": -1,
                    },
                ]
            },
        }
    )
    assert bad is not None and bad.warming == ()
    assert len(bad.problems) == 3
    assert "state 'half'" in bad.problems[0]
    assert "updatedAt 'noon' is not a date-time" in bad.problems[1]
    assert "bytesDone -1" in bad.problems[2]
    with pytest.raises(ValueError, match="allows 64"):
        InventoryStatus(
            source="agent",
            warming=tuple(WarmingProgress(f"m/{i}", "queued", NOW) for i in range(65)),
        )


def test_the_crd_schema_matches_the_types() -> None:
    props = schema()
    spec_item = props["spec"]["properties"]["warming"]["properties"]["models"]
    assert spec_item["maxItems"] == 64
    fields = spec_item["items"]["properties"]
    assert set(fields) == {"name", "revision", "sizeBytes", "reason", "requestedAt"}
    assert fields["reason"]["maxLength"] == 256 and fields["name"]["maxLength"] == 256
    status_item = props["status"]["properties"]["warming"]["properties"]["models"]
    assert status_item["maxItems"] == 64
    fields = status_item["items"]["properties"]
    assert tuple(fields["state"]["enum"]) == WARMING_STATES
    written = WarmingProgress(LLAMA, "done", NOW, "r", 1, 2, "m", NOW).to_dict()
    assert set(written) <= set(fields)
    request = WarmingRequest(LLAMA, "r", 1, "why", NOW).to_dict()
    assert set(request) == set(spec_item["items"]["properties"])


def test_status_warming_is_the_agents_and_the_controller_keeps_it() -> None:
    settings = ResidencySettings()
    copying = WarmingProgress(LLAMA, "copying", NOW, bytes_done=5)
    report = InventoryStatus(source="agent", observed_at=NOW, warming=(copying,))
    merged = merge_agent_report(None, report)
    assert merged.warming == (copying,)
    # The agent's next report is the word: a finished copy replaces the copying one.
    done = WarmingProgress(LLAMA, "done", NOW, bytes_done=9, bytes_total=9)
    assert merge_agent_report(
        merged, InventoryStatus("agent", observed_at=NOW, warming=(done,))
    ).warming == (done,)
    # The controller's writes carry it over, fresh agent or not.
    learned = (ModelEntry(LLAMA.lower(), "gpu"),)
    fresh = merge_controller_view(merged, learned, (), 2**40, NOW, settings)
    stale = merge_controller_view(merged, learned, (), 2**40, NOW + dt.timedelta(days=1), settings)
    assert fresh.warming == stale.warming == (copying,)
    assert stale.source == "controller"
