"""ModelSpec validation: positive integers, head math, MLA fields, sliding windows."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from scheduler.models.spec import ModelSpec, infer_attention_kind

LLAMA_8B: dict[str, Any] = {
    "name": "meta-llama/Llama-3.1-8B-Instruct",
    "params_total": 8_030_261_248,
    "num_layers": 32,
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_kv_heads": 8,
    "head_dim": 128,
    "attention": "gqa",
    "max_model_len": 131072,
}

DEEPSEEK_V3: dict[str, Any] = {
    "name": "deepseek-ai/DeepSeek-V3",
    "params_total": 671_026_419_200,
    "params_active": 37_552_297_472,
    "num_layers": 61,
    "hidden_size": 7168,
    "num_attention_heads": 128,
    "num_kv_heads": 128,
    "head_dim": 192,
    "attention": "mla",
    "kv_lora_rank": 512,
    "qk_rope_head_dim": 64,
    "dtype": "fp8",
    "quantization": "fp8",
    "max_model_len": 163840,
}


def spec(**changes: Any) -> ModelSpec:
    return ModelSpec(**{**LLAMA_8B, **changes})


def test_valid_specs_and_defaults() -> None:
    llama = spec()
    assert llama.dtype == "bf16"
    assert llama.aliases == ()
    assert llama.full_attention_layers == 32
    assert not llama.is_moe
    assert not llama.is_quantized
    deepseek = ModelSpec(**DEEPSEEK_V3)
    assert deepseek.is_moe and deepseek.is_quantized


def test_spec_is_frozen_and_hashable() -> None:
    llama = spec()
    with pytest.raises(ValidationError):
        llama.num_layers = 3  # type: ignore[misc]
    assert hash(llama) == hash(spec())
    assert {llama: 1}[spec()] == 1


@pytest.mark.parametrize(
    "field", ["params_total", "num_layers", "hidden_size", "num_attention_heads", "head_dim"]
)
@pytest.mark.parametrize("value", [0, -1])
def test_counts_must_be_positive(field: str, value: int) -> None:
    with pytest.raises(ValidationError, match=field):
        spec(**{field: value})


@pytest.mark.parametrize("value", ["32", 32.0, True])
def test_counts_must_be_real_integers(value: object) -> None:
    with pytest.raises(ValidationError):
        spec(num_layers=value)


def test_dtype_is_normalized_and_auto_rejected() -> None:
    assert spec(dtype="bfloat16").dtype == "bf16"
    assert spec(dtype="half").dtype == "fp16"
    with pytest.raises(ValidationError, match="auto"):
        spec(dtype="auto")
    with pytest.raises(ValidationError, match="unknown dtype"):
        spec(dtype="fp12")


def test_head_counts_must_divide() -> None:
    with pytest.raises(ValidationError, match="multiple of num_kv_heads"):
        spec(num_kv_heads=5)
    with pytest.raises(ValidationError, match="multiple of num_kv_heads"):
        spec(num_kv_heads=64)


def test_attention_kind_must_match_head_counts() -> None:
    with pytest.raises(ValidationError, match="contradicts"):
        spec(attention="mha")
    with pytest.raises(ValidationError, match="contradicts"):
        spec(num_kv_heads=32, attention="gqa")
    assert spec(num_kv_heads=32, attention="mha").attention == "mha"
    assert spec(num_kv_heads=1, attention="mqa").attention == "mqa"
    assert infer_attention_kind(32, 32) == "mha"
    assert infer_attention_kind(32, 8) == "gqa"
    assert infer_attention_kind(32, 1) == "mqa"


def test_explicit_head_dim_may_differ_from_hidden_over_heads() -> None:
    qwen3 = spec(hidden_size=5120, num_attention_heads=64, head_dim=128)
    assert qwen3.head_dim == 128  # 5120 / 64 would be 80


def test_mla_fields_present_iff_mla() -> None:
    with pytest.raises(ValidationError, match="kv_lora_rank"):
        ModelSpec(**{**DEEPSEEK_V3, "kv_lora_rank": None})
    with pytest.raises(ValidationError, match="only for attention 'mla'"):
        spec(kv_lora_rank=512, qk_rope_head_dim=64)


def test_params_active_cannot_exceed_total() -> None:
    with pytest.raises(ValidationError, match="params_active"):
        spec(params_active=LLAMA_8B["params_total"] + 1)


def test_sliding_window_layers() -> None:
    gemma = spec(sliding_window=4096, sliding_window_layers=16)
    assert gemma.full_attention_layers == 16
    with pytest.raises(ValidationError, match="needs sliding_window"):
        spec(sliding_window_layers=4)
    with pytest.raises(ValidationError, match="exceeds num_layers"):
        spec(sliding_window=4096, sliding_window_layers=33)
    disabled = spec(sliding_window=131072)
    assert disabled.sliding_window_layers == 0


def test_names_and_aliases_are_cleaned() -> None:
    with pytest.raises(ValidationError, match="whitespace"):
        spec(name="meta llama")
    cleaned = spec(aliases=(" llama-8b ", "llama-8b", "l8"))
    assert cleaned.aliases == ("llama-8b", "l8")
    with pytest.raises(ValidationError, match="non-empty"):
        spec(aliases=("",))


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(ValidationError, match="num_layer"):
        spec(num_layer=3)


def test_replace_validates_again() -> None:
    llama = spec()
    assert llama.replace(max_model_len=8192).max_model_len == 8192
    with pytest.raises(ValidationError):
        llama.replace(num_kv_heads=7)
