"""Weights / KV-cache math, memory plans and GPU fit."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.models.catalog import Catalog
from scheduler.models.kvplan import (
    GpuFit,
    MemoryPlan,
    estimate_overhead_bytes,
    fit_on_gpu,
    kv_bytes_per_token,
    plan_memory,
    plan_weights_only,
    resolve_kv_dtype,
    weights_bytes,
)
from scheduler.models.spec import ModelSpec

GIB = 1024**3
H100_80 = 80 * GIB
H100_REPORTED = 81559 * 1024**2  # what nvidia-smi reports for an H100 SXM 80GB
CATALOG = Catalog.builtin()
LLAMA_8B = CATALOG["meta-llama/Llama-3.1-8B-Instruct"]
LLAMA_70B = CATALOG["meta-llama/Llama-3.1-70B-Instruct"]
LLAMA_405B = CATALOG["meta-llama/Llama-3.1-405B-Instruct"]
DEEPSEEK_V3 = CATALOG["deepseek-ai/DeepSeek-V3"]
GPT_OSS_120B = CATALOG["openai/gpt-oss-120b"]


# ---------------------------------------------------------------------- KV bytes per token


def test_kv_bytes_per_token_known_values() -> None:
    assert kv_bytes_per_token(LLAMA_8B) == 32 * 8 * 128 * 2 * 2 == 131_072
    assert kv_bytes_per_token(LLAMA_70B) == 327_680
    assert kv_bytes_per_token(LLAMA_405B) == 516_096


@pytest.mark.parametrize(
    ("spec", "tp", "expected"),
    [
        (LLAMA_70B, 1, 327_680),
        (LLAMA_70B, 2, 163_840),
        (LLAMA_70B, 4, 81_920),
        (LLAMA_70B, 8, 40_960),
        (LLAMA_70B, 16, 40_960),  # more GPUs than KV heads: one full head per GPU, replicated
        (LLAMA_8B, 2, 65_536),
        (LLAMA_8B, 3, 2 * 32 * 3 * 128 * 2),  # ceil(8 / 3) = 3 heads on the busiest GPU
        (LLAMA_405B, 8, 516_096 // 8),
        (LLAMA_405B, 16, 516_096 // 8),
    ],
)
def test_kv_bytes_per_token_under_tensor_parallelism(
    spec: ModelSpec, tp: int, expected: int
) -> None:
    assert kv_bytes_per_token(spec, tp=tp) == expected


@pytest.mark.parametrize("tp", [1, 2, 8, 16, 32])
def test_mla_latent_is_replicated_across_tp(tp: int) -> None:
    assert kv_bytes_per_token(DEEPSEEK_V3, tp=tp) == 61 * (512 + 64) * 2 == 70_272


def test_kv_dtype_choices() -> None:
    assert kv_bytes_per_token(LLAMA_70B, kv_dtype="fp8") == 163_840
    assert kv_bytes_per_token(LLAMA_70B, kv_dtype="fp8_e5m2", tp=8) == 20_480
    assert kv_bytes_per_token(LLAMA_70B, kv_dtype="auto") == 327_680
    assert kv_bytes_per_token(DEEPSEEK_V3, kv_dtype="fp8") == 35_136
    with pytest.raises(ValueError, match="unknown dtype"):
        kv_bytes_per_token(LLAMA_70B, kv_dtype="fp9")


def test_auto_kv_dtype_follows_weights_except_quantized() -> None:
    assert resolve_kv_dtype(LLAMA_70B) == "bf16"
    assert resolve_kv_dtype(LLAMA_70B.replace(dtype="float16")) == "fp16"
    assert resolve_kv_dtype(LLAMA_70B, "auto", dtype="fp32") == "fp32"
    # fp8 / mxfp4 / int4 checkpoints compute and cache in bf16.
    assert resolve_kv_dtype(DEEPSEEK_V3) == "bf16"
    assert resolve_kv_dtype(GPT_OSS_120B) == "bf16"
    assert resolve_kv_dtype(LLAMA_70B, None, dtype="int4") == "bf16"
    assert resolve_kv_dtype(LLAMA_70B, "fp8_e4m3") == "fp8_e4m3"


def test_sliding_window_layers_are_counted_in_full() -> None:
    # gpt-oss-120b: 36 layers x 8 KV heads x 64 x 2 (K,V) x 2 bytes, half of them sliding.
    assert kv_bytes_per_token(GPT_OSS_120B) == 2 * 36 * 8 * 64 * 2


@pytest.mark.parametrize("tp", [0, -1])
def test_tp_must_be_positive(tp: int) -> None:
    with pytest.raises(ValueError, match="tp"):
        kv_bytes_per_token(LLAMA_8B, tp=tp)
    with pytest.raises(ValueError, match="tp"):
        plan_memory(LLAMA_8B, tp=tp, kv_tokens=1)


# ---------------------------------------------------------------------- weights


def test_weights_bytes_bf16() -> None:
    assert weights_bytes(LLAMA_70B) == 70_553_706_496 * 2
    assert abs(weights_bytes(LLAMA_70B) - 141e9) / 141e9 < 0.005  # "70B bf16 ≈ 141 GB"
    assert weights_bytes(LLAMA_70B, "fp8") == 70_553_706_496
    assert weights_bytes(LLAMA_70B, "int4") == 70_553_706_496 // 2
    assert weights_bytes(LLAMA_70B, "auto") == weights_bytes(LLAMA_70B)


def test_explicit_checkpoint_size_when_dtype_matches() -> None:
    assert GPT_OSS_120B.weights_bytes is not None
    assert weights_bytes(GPT_OSS_120B) == GPT_OSS_120B.weights_bytes
    assert weights_bytes(GPT_OSS_120B, "mxfp4") == GPT_OSS_120B.weights_bytes
    assert weights_bytes(DEEPSEEK_V3, "fp8_e4m3") == DEEPSEEK_V3.weights_bytes
    # Converting the checkpoint: parameters x the new dtype.
    assert weights_bytes(GPT_OSS_120B, "bf16") == GPT_OSS_120B.params_total * 2
    assert weights_bytes(DEEPSEEK_V3, "bf16") == DEEPSEEK_V3.params_total * 2


# ---------------------------------------------------------------------- plans


def test_plan_memory_fields() -> None:
    plan = plan_memory(LLAMA_70B, tp=8, kv_tokens=131_072)
    assert plan.model == "meta-llama/Llama-3.1-70B-Instruct"
    assert (plan.tp, plan.dtype, plan.kv_dtype) == (8, "bf16", "bf16")
    assert plan.weights_bytes_total == 141_107_412_992
    assert plan.weights_bytes_per_gpu == math.ceil(141_107_412_992 / 8)
    assert plan.kv_bytes_per_token_per_gpu == 40_960
    assert plan.kv_bytes_per_gpu == 131_072 * 40_960 == 5 * GIB
    assert plan.overhead_bytes_per_gpu == estimate_overhead_bytes(8192, 1)
    assert plan.required_bytes_per_gpu == (
        plan.weights_bytes_per_gpu + plan.kv_bytes_per_gpu + plan.overhead_bytes_per_gpu
    )
    assert plan.kv_known
    assert json.loads(json.dumps(plan.to_dict()))["kv_bytes_per_gpu"] == 5 * GIB


def test_plan_memory_options() -> None:
    fp8 = plan_memory(LLAMA_70B, tp=2, kv_tokens=1000, dtype="fp8", kv_dtype="fp8")
    assert fp8.weights_bytes_total == 70_553_706_496
    assert fp8.kv_bytes_per_token_per_gpu == 81_920
    override = plan_memory(LLAMA_70B, tp=4, kv_tokens=0, weights_bytes=100 * GIB)
    assert override.weights_bytes_per_gpu == 25 * GIB
    assert override.kv_bytes_per_gpu == 0
    quantized = plan_memory(DEEPSEEK_V3, tp=8, kv_tokens=163_840)
    assert (quantized.dtype, quantized.kv_dtype) == ("fp8", "bf16")
    assert quantized.kv_bytes_per_token_per_gpu == 70_272


def test_overhead_grows_with_sequences_and_hidden_size() -> None:
    one = plan_memory(LLAMA_8B, tp=1, kv_tokens=8192, max_num_seqs=1)
    many = plan_memory(LLAMA_8B, tp=1, kv_tokens=8192, max_num_seqs=256)
    assert many.overhead_bytes_per_gpu - one.overhead_bytes_per_gpu == 255 * 1024**2
    assert many.max_num_seqs == 256
    assert estimate_overhead_bytes(8192) > estimate_overhead_bytes(4096) > GIB
    assert estimate_overhead_bytes(None) == estimate_overhead_bytes(8192)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tp": 1, "kv_tokens": -1},
        {"tp": 1, "kv_tokens": 10, "max_num_seqs": 0},
        {"tp": 1, "kv_tokens": 10, "weights_bytes": 0},
        {"tp": 1, "kv_tokens": 10, "dtype": "fp12"},
    ],
)
def test_plan_memory_rejects_bad_input(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        plan_memory(LLAMA_8B, **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- fit


def test_70b_bf16_fits_8_h100_with_a_big_kv_cache() -> None:
    plan = plan_memory(LLAMA_70B, tp=8, kv_tokens=131_072)
    fit = fit_on_gpu(plan, H100_REPORTED, 0.9)
    assert isinstance(fit, GpuFit)
    assert fit.fits
    assert fit.usable_bytes_per_gpu == math.floor(H100_REPORTED * 0.9)
    assert fit.headroom_bytes == fit.usable_bytes_per_gpu - plan.required_bytes_per_gpu
    assert fit.headroom_bytes > 40 * GIB
    assert fit.max_kv_tokens > 1_000_000  # room for ten 128k-token sequences
    assert fit.reason.startswith("needs ")
    assert "<=" in fit.reason


def test_70b_bf16_does_not_fit_one_h100() -> None:
    plan = plan_memory(LLAMA_70B, tp=1, kv_tokens=32_768)
    fit = fit_on_gpu(plan, H100_80, 0.9)
    assert not fit.fits
    assert fit.headroom_bytes < 0
    assert fit.max_kv_tokens == 0
    assert "131.4 GiB" in fit.reason  # the weights
    assert "KV 10.0 GiB for 32,768 tokens" in fit.reason
    assert "> 72.0 GiB usable (0.90 × 80.0 GiB)" in fit.reason
    assert "weights and overhead alone do not fit" in fit.reason


def test_max_kv_tokens_is_the_boundary() -> None:
    base = plan_memory(LLAMA_70B, tp=8, kv_tokens=0)
    limit = fit_on_gpu(base, H100_REPORTED, 0.9).max_kv_tokens
    at_limit = plan_memory(LLAMA_70B, tp=8, kv_tokens=limit)
    assert fit_on_gpu(at_limit, H100_REPORTED, 0.9).fits
    one_more_block = plan_memory(LLAMA_70B, tp=8, kv_tokens=limit + 16)
    assert not fit_on_gpu(one_more_block, H100_REPORTED, 0.9).fits
    one_more_token = plan_memory(LLAMA_70B, tp=8, kv_tokens=limit + 1)
    assert not fit_on_gpu(one_more_token, H100_REPORTED, 0.9).fits


@pytest.mark.parametrize("utilization", [0.0, -0.1, 1.01, float("nan")])
def test_utilization_must_be_a_fraction(utilization: float) -> None:
    plan = plan_memory(LLAMA_8B, tp=1, kv_tokens=1)
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        fit_on_gpu(plan, H100_80, utilization)


def test_full_utilization_and_bad_memory() -> None:
    plan = plan_memory(LLAMA_8B, tp=1, kv_tokens=1)
    assert fit_on_gpu(plan, H100_80, 1.0).usable_bytes_per_gpu == H100_80
    with pytest.raises(ValueError, match="gpu_memory_bytes"):
        fit_on_gpu(plan, 0)


def test_weights_only_plan() -> None:
    plan = plan_weights_only("my-org/private-13b", tp=2, weights_bytes=26 * GIB, max_num_seqs=4)
    assert isinstance(plan, MemoryPlan)
    assert not plan.kv_known
    assert plan.weights_bytes_per_gpu == 13 * GIB
    assert plan.kv_bytes_per_gpu == plan.kv_bytes_per_token_per_gpu == 0
    fit = fit_on_gpu(plan, H100_80)
    assert fit.fits and fit.max_kv_tokens == 0
    assert "KV unknown" in fit.reason
    with pytest.raises(ValueError):
        plan_weights_only("x/y", tp=1, weights_bytes=0)


# ---------------------------------------------------------------------- properties

SPECS = st.sampled_from(CATALOG.specs())


@settings(max_examples=150, deadline=None)
@given(
    spec=SPECS,
    tp=st.integers(min_value=1, max_value=64),
    tokens=st.integers(min_value=0, max_value=4_000_000),
    extra=st.integers(min_value=0, max_value=4_000_000),
)
def test_required_bytes_monotone_in_kv_tokens(
    spec: ModelSpec, tp: int, tokens: int, extra: int
) -> None:
    smaller = plan_memory(spec, tp=tp, kv_tokens=tokens)
    larger = plan_memory(spec, tp=tp, kv_tokens=tokens + extra)
    assert smaller.required_bytes_per_gpu <= larger.required_bytes_per_gpu
    assert (
        larger.kv_bytes_per_gpu - smaller.kv_bytes_per_gpu
        == extra * smaller.kv_bytes_per_token_per_gpu
    )


@settings(max_examples=150, deadline=None)
@given(
    spec=SPECS,
    tp=st.integers(min_value=1, max_value=63),
    step=st.integers(min_value=1, max_value=64),
)
def test_more_gpus_never_need_more_per_gpu(spec: ModelSpec, tp: int, step: int) -> None:
    fewer = plan_memory(spec, tp=tp, kv_tokens=8192)
    more = plan_memory(spec, tp=tp + step, kv_tokens=8192)
    assert more.weights_bytes_per_gpu <= fewer.weights_bytes_per_gpu
    assert more.kv_bytes_per_token_per_gpu <= fewer.kv_bytes_per_token_per_gpu
    assert more.required_bytes_per_gpu <= fewer.required_bytes_per_gpu


@settings(max_examples=150, deadline=None)
@given(
    spec=SPECS,
    tp=st.sampled_from([1, 2, 4, 8, 16]),
    memory_gib=st.integers(min_value=16, max_value=192),
    utilization=st.floats(min_value=0.05, max_value=1.0),
)
def test_max_kv_tokens_agrees_with_fits(
    spec: ModelSpec, tp: int, memory_gib: int, utilization: float
) -> None:
    memory = memory_gib * GIB
    limit = fit_on_gpu(plan_memory(spec, tp=tp, kv_tokens=0), memory, utilization).max_kv_tokens
    if limit > 0:
        assert fit_on_gpu(plan_memory(spec, tp=tp, kv_tokens=limit), memory, utilization).fits
    beyond = fit_on_gpu(plan_memory(spec, tp=tp, kv_tokens=limit + 1), memory, utilization)
    assert not beyond.fits
    assert beyond.headroom_bytes < 0


# -- pipeline stages ------------------------------------------------------------------------


def test_a_pipeline_stage_holds_its_layers_weights_and_kv() -> None:
    whole = plan_memory(LLAMA_70B, tp=8, kv_tokens=8192)
    half = plan_memory(LLAMA_70B, tp=8, kv_tokens=8192, pp=2)
    assert (whole.pp, half.pp) == (1, 2)
    assert half.weights_bytes_total == whole.weights_bytes_total
    assert whole.weights_bytes_stage == whole.weights_bytes_total
    assert half.weights_bytes_stage == whole.weights_bytes_total // 2  # 80 layers, 40 each
    assert half.kv_bytes_per_token_per_gpu * 2 == whole.kv_bytes_per_token_per_gpu
    assert half.overhead_bytes_per_gpu == whole.overhead_bytes_per_gpu
    # Uneven splits plan every stage as the largest: 80 layers over 3 stages -> 27.
    third = plan_memory(LLAMA_70B, tp=8, kv_tokens=8192, pp=3)
    assert third.weights_bytes_stage == math.ceil(whole.weights_bytes_total * 27 / 80)
    assert "1/3 of the model" in fit_on_gpu(third, 80 * GIB).reason


def test_pipeline_stages_beyond_the_layer_count_are_rejected() -> None:
    with pytest.raises(ValueError, match="exceeds the model's 80 layers"):
        plan_memory(LLAMA_70B, tp=8, kv_tokens=0, pp=81)
    with pytest.raises(ValueError, match="pp must be"):
        plan_memory(LLAMA_70B, tp=8, kv_tokens=0, pp=0)


def test_weights_only_plan_splits_over_stages() -> None:
    plan = plan_weights_only("x/unknown", tp=4, weights_bytes=10 * GIB + 1, pp=2)
    assert plan.weights_bytes_stage == 5 * GIB + 1
    assert plan.weights_bytes_per_gpu == math.ceil((5 * GIB + 1) / 4)
