from __future__ import annotations

import json
from pathlib import Path

import pytest

from scheduler.cli import main


def test_simulate_table_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plots = tmp_path / "img"
    args = [
        "simulate",
        "--nodes",
        "8",
        "--duration",
        "3600",
        "--policies",
        "kvsched",
        "stock-hinted",
    ]
    assert main([*args, "--plots", str(plots)]) == 0
    out = capsys.readouterr().out
    assert "POLICY" in out and "kvsched" in out and "stock-hinted" in out
    written = sorted(p.name for p in plots.glob("*.png"))
    assert written == [
        "best_gpu_set.png",
        "fragmentation.png",
        "time_to_ready.png",
        "time_to_ready_cdf.png",
    ]
    assert all((plots / name).stat().st_size > 1000 for name in written)


def test_simulate_json(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["simulate", "--nodes", "6", "--duration", "1800", "--policies", "kvsched", "--json"]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["trace"]["nodes"] == 6
    assert [p["policy"] for p in data["policies"]] == ["kvsched"]
    assert {
        "mean_ready_s",
        "p95_ready_s",
        "best_set_share",
        "predicted_best_set_share",
        "prediction_hit_rate",
        "tp_prediction_hit_rate",
        "plugin_fallbacks",
        "partial_gangs",
    } <= set(data["policies"][0])


def test_simulate_with_warming_reports_the_bytes_copied(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["simulate", "--nodes", "12", "--duration", "3600", "--policies", "kvsched"]
    assert main([*args, "--warming", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    kv = data["policies"][0]
    assert kv["warming"] is True and kv["copies"] > 0
    # One simulated hour: TB/day is 24 x the TB copied.
    assert kv["copied_tb_per_day"] == pytest.approx(kv["bytes_copied"] / 1e12 * 24)
    assert kv["failed_starts"] == 0
    assert main([*args, "--json"]) == 0
    cold = json.loads(capsys.readouterr().out)["policies"][0]
    assert cold["warming"] is False and cold["copies"] == 0


def test_simulate_rejects_an_unknown_untuned_trace() -> None:
    with pytest.raises(SystemExit):
        main(["simulate", "--trace", "99"])
