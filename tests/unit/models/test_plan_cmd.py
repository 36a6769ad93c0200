"""``kvsched plan``: text and JSON output, and exit status 2 for bad input."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from scheduler.commands import plan_cmd
from topology.hardware import COMMON_GPUS

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hf"


def run_plan(argv: list[str]) -> int:
    # Only the plan command: the other subcommands are not under test here.
    parser = argparse.ArgumentParser(prog="kvsched")
    subparsers = parser.add_subparsers(dest="command", required=True)
    plan_cmd.register(subparsers)
    args = parser.parse_args(["plan", *argv])
    status: int = args.func(args)
    return status


def run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert run_plan([*argv, "--json"]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def test_text_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        run_plan(
            [
                "--model",
                "llama-3.1-70b",
                "--gpus",
                "8",
                "--max-model-len",
                "32768",
                "--max-num-seqs",
                "4",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Memory plan for meta-llama/Llama-3.1-70B-Instruct on 8 GPUs" in out
    assert "40,960 B per token per GPU (bf16)" in out
    assert "131,072 tokens (32,768 × 4 seqs) = 5.0 GiB per GPU" in out
    assert "16.4 GiB per GPU (bf16)" in out  # 141.1 GB / 8
    assert "required" in out and "overhead" in out
    for product in COMMON_GPUS:
        assert (product.aliases[0] if product.aliases else product.name) in out
    assert "max seqs @32,768" in out


def test_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_json(["--model", "meta-llama/Llama-3.1-70B-Instruct", "--gpus", "8"], capsys)
    plan = result["plan"]
    assert result["model"] == "meta-llama/Llama-3.1-70B-Instruct"
    assert result["in_catalog"] is True
    assert plan["kv_bytes_per_token_per_gpu"] == 40_960
    assert plan["kv_tokens"] == 131_072  # default: the model's context, one sequence
    assert plan["weights_bytes_total"] == 141_107_412_992
    assert result["spec"]["num_layers"] == 80
    rows = {row["gpu"]: row for row in result["gpus"]}
    assert len(rows) == len(COMMON_GPUS)
    for row in rows.values():
        assert row["fits"] is True
        assert row["max_num_seqs_at_max_model_len"] == row["max_kv_tokens"] // 131_072
        assert row["headroom_bytes"] == row["usable_bytes_per_gpu"] - plan["required_bytes_per_gpu"]


def test_json_single_gpu_70b_does_not_fit_small_gpus(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_json(
        ["--model", "llama-3.1-70b", "--gpus", "1", "--kv-cache-tokens", "32768"], capsys
    )
    rows = {row["gpu"]: row for row in result["gpus"]}
    assert rows["H100-80"]["fits"] is False
    assert rows["H100-80"]["max_kv_tokens"] == 0
    assert rows["H100-80"]["headroom_bytes"] < 0
    assert rows["B200-180"]["fits"] is True
    assert result["plan"]["kv_tokens"] == 32_768


def test_dtype_options(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_json(
        [
            "--model", "llama-3.1-70b", "--gpus", "2", "--dtype", "fp8",
            "--kv-cache-dtype", "fp8", "--gpu-memory-utilization", "0.95",
            "--max-model-len", "8192", "--max-num-seqs", "64",
        ],
        capsys,
    )  # fmt: skip
    plan = result["plan"]
    assert (plan["dtype"], plan["kv_dtype"]) == ("fp8", "fp8")
    assert plan["kv_bytes_per_token_per_gpu"] == 81_920
    assert plan["kv_tokens"] == 8192 * 64
    assert plan["max_num_seqs"] == 64
    assert result["gpu_memory_utilization"] == 0.95


def test_mla_model(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_json(["--model", "deepseek-v3", "--gpus", "8", "--max-model-len", "32768"], capsys)
    assert result["plan"]["kv_bytes_per_token_per_gpu"] == 70_272
    assert result["plan"]["kv_dtype"] == "bf16"


def test_sliding_window_note(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_plan(["--model", "gpt-oss-120b", "--gpus", "1", "--max-model-len", "32768"]) == 0
    out = capsys.readouterr().out
    assert "note: 18 of 36 layers use a 128-token sliding window" in out


def test_unknown_model_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_plan(["--model", "no-such/model", "--gpus", "2"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert (
        "unknown model no-such/model: add it to the catalog (--catalog) or pass --weights-bytes"
        in captured.err
    )
    assert "Traceback" not in captured.err


def test_unknown_model_with_weights_bytes_plans_weights_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    result = run_json(
        ["--model", "my-org/private-13b", "--gpus", "2", "--weights-bytes", "26GB"], capsys
    )
    assert result["in_catalog"] is False
    assert result["plan"]["kv_known"] is False
    assert result["plan"]["weights_bytes_per_gpu"] == 13_000_000_000
    assert all(row["max_kv_tokens"] is None for row in result["gpus"])
    assert any("KV cache unknown" in note for note in result["notes"])
    assert run_plan(["--model", "my-org/private-13b", "--weights-bytes", "26GB"]) == 0
    assert "KV cache    unknown" in capsys.readouterr().out


def test_weights_bytes_overrides_catalog(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_json(["--model", "llama-3.1-8b", "--weights-bytes", "10GiB"], capsys)
    assert result["plan"]["weights_bytes_total"] == 10 * 1024**3


def test_extra_catalog(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "extra.yaml").write_text(
        "- name: my-org/tiny\n  params_total: 1B\n  num_layers: 16\n  hidden_size: 2048\n"
        "  num_attention_heads: 16\n  num_kv_heads: 4\n  max_model_len: 4096\n"
    )
    result = run_json(["--model", "my-org/tiny", "--catalog", str(tmp_path / "extra.yaml")], capsys)
    assert result["plan"]["kv_bytes_per_token_per_gpu"] == 2 * 16 * 4 * 128 * 2
    hf = run_json(["--model", "Qwen/Qwen3-32B", "--catalog", str(FIXTURES / "Qwen3-32B")], capsys)
    assert hf["spec"]["head_dim"] == 128


@pytest.mark.parametrize(
    "argv",
    [
        ["--model", "llama-3.1-8b", "--gpus", "0"],
        ["--model", "llama-3.1-8b", "--gpus", "two"],
        ["--model", "llama-3.1-8b", "--max-model-len", "-5"],
        ["--model", "llama-3.1-8b", "--kv-cache-tokens", "lots"],
        ["--model", "llama-3.1-8b", "--gpu-memory-utilization", "1.5"],
        ["--model", "llama-3.1-8b", "--gpu-memory-utilization", "nan"],
        ["--model", "llama-3.1-8b", "--dtype", "fp12"],
        ["--model", "llama-3.1-8b", "--weights-bytes", "lots"],
        ["--gpus", "1"],
    ],
)
def test_bad_numbers_exit_2_without_traceback(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as excinfo:
        run_plan(argv)
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--kv-cache-tokens", "1000", "--max-num-seqs", "2"], "not both"),
        (["--kv-cache-tokens", "1000", "--max-model-len", "2048"], "smaller than --max-model-len"),
        (["--max-model-len", "1000000"], "exceeds meta-llama/Llama-3.1-8B-Instruct's context"),
        (["--catalog", "/no/such/catalog.yaml"], "--catalog /no/such/catalog.yaml"),
    ],
)
def test_contradictions_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_plan(["--model", "llama-3.1-8b", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_kv_cache_tokens_with_length_sets_the_seqs_column(
    capsys: pytest.CaptureFixture[str],
) -> None:
    result = run_json(
        ["--model", "llama-3.1-8b", "--kv-cache-tokens", "65536", "--max-model-len", "8192"], capsys
    )
    assert result["plan"]["kv_tokens"] == 65536
    assert result["max_model_len"] == 8192
    row = result["gpus"][0]
    assert row["max_num_seqs_at_max_model_len"] == row["max_kv_tokens"] // 8192
