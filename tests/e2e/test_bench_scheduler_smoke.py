"""The real-scheduler benchmark (hack/bench_scheduler.py) at a small size, so that its code
cannot rot: both profiles schedule every pod of a feasible workload on a fresh control plane,
and the report has both rows with a throughput and the placement columns.

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
            # No TP-8 pods: with the default profile spreading pods, 20 nodes may have no
            # whole node left for them, and this run is meant to be feasible for both.
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
        timeout=170,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = out.read_text()
    assert report in result.stdout
    header = next(line for line in report.splitlines() if line.startswith("| profile"))
    columns = [c.strip() for c in header.strip().strip("|").split("|")]
    for profile in ("default", "kvsched"):
        row = dict(zip(columns, _row(report, profile), strict=True))
        assert row["bound / pods"] == "30 / 30", row
        assert row["pending"] == "0", row
        assert float(row["pods/s (drain)"]) > 0, row
        assert row["GPU conflicts"] == "0", row
        assert re.fullmatch(r"[\d.]+", row["mean ready s"]), row
    kvsched = dict(zip(columns, _row(report, "kvsched"), strict=True))
    default = dict(zip(columns, _row(report, "default"), strict=True))
    # kvsched never binds a pod where weights + KV do not fit.
    assert kvsched["placed where it does not fit"] == "0", kvsched
    # "TP pods on the best set" both ways: by the GPUs the device plugin would hand out on
    # the chosen node (both profiles), and by kvsched's prediction (kvsched only). kvsched
    # does not choose GPUs, so no share is asserted (this used to require 100 % of kvsched's
    # own annotation).
    share = r"[\d.]+ % \(\d+/\d+\)"
    plugin, predicted = (
        "TP>1 on best set (device plugin's GPUs)",
        "TP>1 on best set (kvsched's prediction)",
    )
    hits = ("prediction = plugin's set (TP>1)", "prediction = plugin's set (all)")
    for column in (plugin, predicted, *hits):
        assert re.fullmatch(share, kvsched[column]), (column, kvsched)
    assert re.fullmatch(share, default[plugin]), default
    assert all(default[column] == "-" for column in (predicted, *hits)), default
    assert "kvsched assigns" not in report and "lowest free" not in report, report
    assert re.search(r"Throughput kvsched / default: [\d.]+x", report), report
    assert re.search(r"Target >= 0\.5x: \*\*(met|missed)\*\*", report), report
    # The third phase (kvsched with --no-events) and the CPU accounting of every phase.
    assert re.search(r"Without kvsched's own pod events .*: 30 / 30 bound", report), report
    cpu_rows = [line for line in report.splitlines() if re.match(r"\| (default|kvsched)", line)]
    phases = [row.split(" | ")[0].strip("| ") for row in cpu_rows if row.count("|") == 9]
    assert phases == ["default", "kvsched", "kvsched-no-events"], cpu_rows
