"""The real-scheduler benchmark (hack/bench_scheduler.py) at a small size, so that its code
cannot rot: every profile (default, the floor extender, kvsched, and both extenders with the
other bind setting) schedules every pod of a feasible workload on a fresh control plane, the
realistic mix runs as a backlog and paced, and the report has every row, the target verdicts
and the CPU table.

It starts its own control plane (the script always does), so it runs wherever the e2e tests
run: binaries cached, or KVSCHED_E2E=1 / CI (see conftest.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "hack" / "bench_scheduler.py"

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def binaries_available() -> None:
    from support.controlplane import BUILD_SH

    mode = "required" if os.environ.get("CI") else os.environ.get("KVSCHED_E2E", "")
    if mode == "0":
        pytest.skip("KVSCHED_E2E=0: e2e tests disabled")
    if mode in ("required", "1"):
        return
    cached = subprocess.run(
        ["bash", str(BUILD_SH)],
        env={**os.environ, "KVSCHED_CP_NO_BUILD": "1"},
        capture_output=True,
        check=False,
    )
    if cached.returncode != 0:
        pytest.skip("control plane binaries not cached: run `make controlplane` or KVSCHED_E2E=1")


def _cells(report: str) -> list[list[str]]:
    """Every table row of the report, as its cells."""
    return [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in report.splitlines()
        if line.startswith("| ")
    ]


def _row(report: str, profile: str) -> list[str]:
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == profile:
            return cells
    raise AssertionError(f"no {profile} row in:\n{report}")


def test_bench_scheduler_small_run(binaries_available: None, tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--nodes",
            "20",
            "--pods",
            "30",
            "--mix-pods",
            "60",
            "--mix-rate",
            "100",
            "--other-bind",
            # No TP-8 pods: with the default profile spreading pods, 20 nodes may have no
            # whole node left for them, and this run is meant to be feasible for every profile.
            "--tp-mix",
            "1=60,2=30,4=10",
            "--settle",
            "10",
            "--timeout",
            "60",
            "--out-md",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=480,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = out.read_text()
    assert report in result.stdout
    header = next(line for line in report.splitlines() if line.startswith("| profile | bound"))
    columns = [c.strip() for c in header.strip().strip("|").split("|")]
    for profile in ("default", "floor", "kvsched", "floor-nobind", "kvsched-nobind"):
        row = dict(zip(columns, _row(report, profile), strict=True))
        assert row["bound / pods"] == "30 / 30", row
        assert row["pending"] == "0", row
        assert float(row["pods/s (drain)"]) > 0, row
        assert row["GPU conflicts"] == "0", row
        assert re.fullmatch(r"[\d.]+", row["mean ready s"]), row
    kvsched = dict(zip(columns, _row(report, "kvsched"), strict=True))
    default = dict(zip(columns, _row(report, "default"), strict=True))
    # kvsched never binds a pod where weights + KV do not fit, with or without its bind verb.
    assert kvsched["placed where it does not fit"] == "0", kvsched
    nobind = dict(zip(columns, _row(report, "kvsched-nobind"), strict=True))
    assert nobind["placed where it does not fit"] == "0", nobind
    # "TP pods on the best set" both ways: by the GPUs the device plugin would hand out on
    # the chosen node (every profile), and by kvsched's prediction (kvsched only). kvsched
    # does not choose GPUs, so no share is asserted.
    share = r"[\d.]+ % \(\d+/\d+\)"
    plugin, predicted = (
        "TP>1 on best set (device plugin's GPUs)",
        "TP>1 on best set (kvsched's prediction)",
    )
    hits = ("prediction = plugin's set (TP>1)", "prediction = plugin's set (all)")
    for column in (plugin, predicted, *hits):
        assert re.fullmatch(share, kvsched[column]), (column, kvsched)
    for profile in ("default", "floor"):
        row = dict(zip(columns, _row(report, profile), strict=True))
        assert re.fullmatch(share, row[plugin]), row
        assert all(row[column] == "-" for column in (predicted, *hits)), row
    assert re.fullmatch(share, default[plugin]), default
    # The summary: every target with a verdict, at the one size.
    summary = _row(report, "20")
    assert sum(bool(re.search(r"\*\*(met|missed)\*\*", cell)) for cell in summary) == 3, summary
    assert re.search(r"floor-nobind [\d.]+ pods/s", report), report
    # The realistic mix: every pod bound under each profile, GPU pods' latency reported.
    mix_header = next(line for line in report.splitlines() if "backlog: bound / pods" in line)
    mix_columns = [c.strip() for c in mix_header.strip().strip("|").split("|")]
    mix_rows = [
        dict(zip(mix_columns, cells, strict=True))
        for cells in _cells(report)
        if len(cells) == len(mix_columns) and cells[0] in ("default", "floor", "kvsched")
    ]
    assert [r["profile"] for r in mix_rows] == ["default", "floor", "kvsched"], mix_rows
    for row in mix_rows:
        assert row["backlog: bound / pods"] == "60 / 60", row
        assert row["paced: bound / pods"] == "60 / 60", row
        latency = row["paced: GPU pods' creation to bind p50 / p95 s"]
        assert re.fullmatch(r"[\d.]+ / [\d.]+", latency), row
    # CPU accounting of every phase.
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| phase | etcd"))
    cpu_rows = lines[start + 2 : lines.index("", start)]
    phases = [row.split(" | ")[0].strip("| ") for row in cpu_rows]
    assert phases == [
        "default",
        "floor",
        "kvsched",
        "floor-nobind",
        "kvsched-nobind",
        "mix-default",
        "mix-floor",
        "mix-kvsched",
        "paced-default",
        "paced-floor",
        "paced-kvsched",
    ], cpu_rows
