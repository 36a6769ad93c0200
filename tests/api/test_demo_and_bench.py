"""The main job (`kvsched demo`) and the latency benchmark, run for real end to end.

Both start `kvsched extender` as a separate process and talk HTTP to it, so they also cover
the console script, uvicorn start-up and the offline loader on generated files.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scheduler.demo.run import run_demo

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    dump = tmp_path_factory.mktemp("demo")
    return run_demo(dump), dump


def row(output: str, pod: str) -> list[str]:
    for line in output.splitlines():
        if line.startswith(pod + " "):
            return line.split()
    raise AssertionError(f"no row for {pod} in:\n{output}")


def test_demo_places_pods_where_weights_and_gpus_are_best(demo_output: tuple[str, Path]) -> None:
    output, _ = demo_output
    # 70B TP=4: h100-02 holds the weights in host memory and has GPUs 0-3 free.
    assert row(output, "llama-70b-tp4")[3:5] == ["h100-02", "0,1,2,3"]
    # Qwen 32B TP=2 on the bridge-pair box that caches it: an intact NVLink pair (0 and 2 busy).
    assert row(output, "qwen-32b-tp2")[3:6] == ["a100p-02", "4,5", "nvlink-complete"]
    # DeepSeek-V3 (FP8, ~627 GiB) fits only H200/B200 GPUs; h200-02 caches it.
    assert row(output, "deepseek-v3")[3] == "h200-02"


def test_demo_leaves_impossible_and_broken_pods_pending_with_reasons(
    demo_output: tuple[str, Path],
) -> None:
    output, _ = demo_output
    for pod in ("llama-405b-tp4-too-big", "typo-annotation", "unknown-model"):
        assert row(output, pod)[3] == "PENDING"
    assert "kvsched.io/max-num-seqs='lots'" in output
    assert "unknown model 'acme/secret-model-13b'" in output
    assert "weights alone do not fit" in output


def test_demo_dump_is_a_valid_cluster_file(demo_output: tuple[str, Path]) -> None:
    _, dump = demo_output
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scheduler.cli",
            "explain",
            "--cluster-file",
            str(dump / "cluster.yaml"),
            "--pod",
            str(dump / "pods.yaml"),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert '"node": "l40s-04"' in result.stdout


def test_latency_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    subprocess.run(
        [
            sys.executable,
            "hack/bench_extender.py",
            "--nodes",
            "60",
            "--iterations",
            "5",
            "--warmup",
            "1",
            "--load-clients",
            "2",
            "--load-pods",
            "8",
            "--out",
            str(out),
        ],
        check=True,
        cwd=ROOT,
        capture_output=True,
        timeout=300,
    )
    report = out.read_text()
    assert "| 60 | floor |" in report and "| 60 | kvsched |" in report
    assert "p99 ratio" in report
    # Under load: two schedulers placed 8 pods each on each server (60 nodes have room).
    rows = [line for line in report.splitlines() if line.startswith("| 60 | 2 |")]
    assert [row.split(" | ")[2] for row in rows] == ["floor", "kvsched"]
    for row in rows:
        assert row.split(" | ")[3] == "16"
    assert "| 16 / 0 / 0 |" in rows[0]
