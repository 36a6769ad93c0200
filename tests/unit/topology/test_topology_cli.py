"""`kvsched topology`, driven through its own argparse registration."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from scheduler.commands import topology_cmd

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "topo"


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kvsched")
    topology_cmd.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["topology", *argv])
    status: int = args.func(args)
    return status


def test_json_on_a_fixture(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIXTURES / "a100-pcie-8-nvbridge.txt"
    assert run(["--file", str(path), "--free", "0,2-7", "--gpus", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["gpus"]) == 8
    assert out["gpus"][5]["numaNode"] == 1
    assert out["links"][0][:3] == ["X", "NV12", "NODE"]
    assert out["free"] == [0, 2, 3, 4, 5, 6, 7]
    assert out["chosen"]["gpus"] == [2, 3]
    assert out["chosen"]["tier"] == "NVLINK_COMPLETE"
    assert out["chosen"]["weakest"] == "NV12"
    assert 0.8 < out["chosen"]["quality"] < 1.0
    assert out["chosen"]["description"].startswith("GPUs 2,3: NVLink-complete")
    assert 0.0 <= out["fragmentation_after"] <= 1.0
    assert [nic["name"] for nic in out["nics"]] == ["mlx5_0", "mlx5_1"]
    # The device plugin sees the bridged pair's NVLinks too: it is predicted to hand out one.
    assert out["predicted"]["tier"] == "NVLINK_COMPLETE"
    assert out["predicted"]["gpus"] in ([2, 3], [4, 5], [6, 7])


def test_text_output_for_a_preset(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--preset", "hgx-h100-8", "--free", "1-7", "--gpus", "4"]) == 0
    out = capsys.readouterr().out
    assert "8 GPU(s) from preset hgx-h100-8, NVSwitch" in out
    assert "GPU0  X     NV18" in out
    assert "best set for 4 GPU(s): GPUs 4,5,6,7: NVLink-complete (NV18), 1 NUMA node" in out
    assert "fragmentation left after placing it: 0.000" in out


def test_product_and_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--product", "NVIDIA-L40S", "--count", "4", "--gpus", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["gpus"][0]["product"] == "L40S-48GB"
    assert out["chosen"]["gpus"] == [0, 1]


def test_without_gpus_only_shows_the_topology(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--file", str(FIXTURES / "single-gpu.txt"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["chosen"] is None and out["links"] == [["X"]]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--file", "/nonexistent/topo.txt", "--gpus", "1"], "cannot read"),
        (["--file", str(FIXTURES.parent / "topo"), "--gpus", "1"], "cannot read"),
        (["--preset", "nope", "--gpus", "1"], "unknown preset"),
        (["--product", "NVIDIA-Z9000", "--count", "8"], "unknown GPU product"),
        (["--product", "H100", "--gpus", "1"], "needs --count"),
        (["--product", "H100", "--count", "40"], "between 1 and 16"),
        (["--preset", "hgx-h100-8", "--count", "8"], "only goes with --product"),
        (["--preset", "hgx-h100-8", "--free", "0,x", "--gpus", "1"], "not a GPU index"),
        (["--preset", "hgx-h100-8", "--free", "0,9", "--gpus", "1"], "does not exist"),
        (["--preset", "hgx-h100-8", "--free", "3-1", "--gpus", "1"], "empty range"),
        (["--preset", "hgx-h100-8", "--free", "0,1", "--gpus", "4"], "only 2 GPU(s) free"),
        (["--preset", "hgx-h100-8", "--gpus", "0"], "at least 1"),
    ],
)
def test_bad_input_exits_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(argv) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""


def test_parse_error_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    garbage = tmp_path / "topo.txt"
    garbage.write_text("\tGPU0\tGPU1\nGPU0\t X \tWAT\nGPU1\tWAT\t X \n")
    assert run(["--file", str(garbage), "--gpus", "1"]) == 2
    assert "unknown link code 'WAT'" in capsys.readouterr().err
