"""Hugging Face config.json -> ModelSpec, and the parameter / checkpoint-size estimates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scheduler.models.catalog import Catalog, estimate_params, spec_from_hf_config
from scheduler.models.kvplan import kv_bytes_per_token, weights_bytes

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hf"
GIB = 1024**3


def load(folder: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((FIXTURES / folder / "config.json").read_text())
    return config


def llama3_70b() -> dict[str, Any]:
    """Meta-Llama-3-70B's config.json differs from the 8B one only in these numbers."""
    config = load("meta-llama--Llama-3.1-8B-Instruct")
    config.update(
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        max_position_embeddings=8192,
    )
    del config["rope_scaling"]
    return config


@pytest.mark.parametrize(
    ("config_name", "published"),
    [
        ("llama-3-8b", 8.03e9),
        ("llama-3-70b", 70.6e9),
        ("mixtral-8x7b", 46.7e9),
        ("deepseek-v3", 671e9),
    ],
)
def test_param_estimate_reproduces_published_counts(config_name: str, published: float) -> None:
    configs = {
        "llama-3-8b": load("meta-llama--Llama-3.1-8B-Instruct"),
        "llama-3-70b": llama3_70b(),
        "mixtral-8x7b": load("Mixtral-8x7B-Instruct-v0.1"),
        "deepseek-v3": load("DeepSeek-V3"),
    }
    total = estimate_params(configs[config_name]).total
    assert abs(total - published) / published < 0.01


def test_llama_3_1_8b_fixture() -> None:
    spec = spec_from_hf_config(
        "meta-llama/Llama-3.1-8B-Instruct", load("meta-llama--Llama-3.1-8B-Instruct")
    )
    assert spec.params_total == 8_030_261_248  # exact: the safetensors index count
    assert (spec.num_layers, spec.num_kv_heads, spec.head_dim) == (32, 8, 128)
    assert spec.attention == "gqa"
    assert spec.dtype == "bf16"
    assert spec.max_model_len == 131072
    assert spec.params_active is None and spec.weights_bytes is None
    assert kv_bytes_per_token(spec) == 131_072


def test_qwen2_5_has_qkv_bias_and_disabled_window() -> None:
    spec = spec_from_hf_config("Qwen/Qwen2.5-7B-Instruct", load("Qwen2.5-7B-Instruct"))
    # 7,615,616,512 includes the q/k/v biases Qwen2 always has (no config key says so).
    assert spec.params_total == 7_615_616_512
    assert (spec.num_kv_heads, spec.head_dim) == (4, 128)
    assert spec.sliding_window == 131072 and spec.sliding_window_layers == 0
    assert kv_bytes_per_token(spec) == 2 * 28 * 4 * 128 * 2


def test_qwen3_explicit_head_dim_wins() -> None:
    spec = spec_from_hf_config("Qwen/Qwen3-32B", load("Qwen3-32B"))
    assert spec.head_dim == 128  # hidden 5120 / 64 heads would give 80
    assert spec.params_total == 32_762_123_264
    assert kv_bytes_per_token(spec) == 2 * 64 * 8 * 128 * 2


def test_mixtral_moe_active_params() -> None:
    spec = spec_from_hf_config(
        "mistralai/Mixtral-8x7B-Instruct-v0.1", load("Mixtral-8x7B-Instruct-v0.1")
    )
    assert spec.params_total == 46_702_792_704
    assert spec.params_active is not None
    assert abs(spec.params_active - 12.9e9) / 12.9e9 < 0.01
    assert spec.is_moe
    assert spec.sliding_window is None


def test_deepseek_v3_mla_and_fp8_checkpoint() -> None:
    spec = spec_from_hf_config("deepseek-ai/DeepSeek-V3", load("DeepSeek-V3"))
    assert spec.attention == "mla"
    assert (spec.kv_lora_rank, spec.qk_rope_head_dim) == (512, 64)
    assert spec.head_dim == 128 + 64
    assert spec.quantization == "fp8" and spec.dtype == "fp8"
    assert spec.params_active is not None and abs(spec.params_active - 37e9) / 37e9 < 0.02
    # FP8 linear layers + block scales + bf16 embeddings/head: a bit over 1 byte per param.
    assert spec.weights_bytes is not None
    assert spec.params_total < spec.weights_bytes < 1.01 * spec.params_total
    assert kv_bytes_per_token(spec) == 61 * (512 + 64) * 2
    assert kv_bytes_per_token(spec, kv_dtype="auto") == 70_272  # quantized weights -> bf16 KV


def test_gemma3_text_config_and_defaults() -> None:
    spec = spec_from_hf_config("google/gemma-3-27b-it", load("gemma-3-27b-it"))
    assert (spec.num_layers, spec.hidden_size, spec.num_kv_heads, spec.head_dim) == (
        62,
        5376,
        16,
        128,
    )
    # vocab/context omitted by the published config: transformers' defaults apply.
    assert spec.max_model_len == 131072
    # five sliding layers per global one: 62 - 62 // 6 = 52 sliding.
    assert (spec.sliding_window, spec.sliding_window_layers) == (1024, 52)
    assert abs(spec.params_total - 27.0e9) / 27.0e9 < 0.01  # language model only
    assert spec.dtype == "bf16"


def test_gpt_oss_mxfp4_checkpoint_size() -> None:
    spec = spec_from_hf_config("openai/gpt-oss-20b", load("gpt-oss-20b"))
    assert abs(spec.params_total - 20.91e9) / 20.91e9 < 0.005
    assert spec.quantization == "mxfp4" and spec.dtype == "mxfp4"
    assert spec.weights_bytes is not None
    # Model card: checkpoint size 12.8 GiB (MXFP4 experts, everything else bf16).
    assert abs(spec.weights_bytes / GIB - 12.8) < 0.1
    assert (spec.sliding_window, spec.sliding_window_layers) == (128, 12)
    assert spec.attention_sinks
    assert kv_bytes_per_token(spec) == 2 * 24 * 8 * 64 * 2


def test_broken_config_names_the_missing_key() -> None:
    with pytest.raises(ValueError, match="num_attention_heads"):
        spec_from_hf_config("example/broken", load("broken-no-heads"))


def test_missing_kv_heads_means_mha() -> None:
    config = load("meta-llama--Llama-3.1-8B-Instruct")
    del config["num_key_value_heads"]
    spec = spec_from_hf_config("example/mha", config)
    assert spec.attention == "mha" and spec.num_kv_heads == 32


def test_head_dim_must_be_derivable() -> None:
    config = load("meta-llama--Llama-3.1-8B-Instruct")
    config["num_attention_heads"] = 24  # 4096 / 24 is not an integer
    config["num_key_value_heads"] = 8
    with pytest.raises(ValueError, match="head_dim"):
        spec_from_hf_config("example/odd", config)


def test_non_integer_values_are_reported() -> None:
    config = load("meta-llama--Llama-3.1-8B-Instruct")
    config["num_hidden_layers"] = "32"
    with pytest.raises(ValueError, match="num_hidden_layers must be an integer"):
        spec_from_hf_config("example/str", config)


def test_torch_dtype_variants() -> None:
    config = load("meta-llama--Llama-3.1-8B-Instruct")
    config["torch_dtype"] = "float16"
    assert spec_from_hf_config("x/fp16", config).dtype == "fp16"
    # fp32 checkpoints are served in 16 bit by vLLM's --dtype auto.
    config["torch_dtype"] = "float32"
    assert spec_from_hf_config("x/fp32", config).dtype == "bf16"
    # Newer transformers write "dtype" instead of "torch_dtype".
    del config["torch_dtype"]
    config["dtype"] = "float16"
    assert spec_from_hf_config("x/dtype-key", config).dtype == "fp16"
    config["dtype"] = "float13"
    with pytest.raises(ValueError, match="torch_dtype"):
        spec_from_hf_config("x/bad", config)


@pytest.mark.parametrize(
    ("quantization_config", "dtype", "method"),
    [
        ({"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True}, "int4", "awq"),
        ({"quant_method": "gptq", "bits": 8, "group_size": 128}, "int8", "gptq"),
        ({"quant_method": "fp8", "activation_scheme": "dynamic"}, "fp8", "fp8"),
        (
            {
                "quant_method": "compressed-tensors",
                "format": "float-quantized",
                "config_groups": {
                    "group_0": {"weights": {"num_bits": 8, "type": "float", "strategy": "channel"}}
                },
            },
            "fp8",
            "compressed-tensors",
        ),
        (
            {
                "quant_method": "compressed-tensors",
                "format": "pack-quantized",
                "config_groups": {
                    "group_0": {"weights": {"num_bits": 4, "type": "int", "group_size": 128}}
                },
            },
            "int4",
            "compressed-tensors",
        ),
        ({"quant_method": "modelopt", "quant_algo": "NVFP4"}, "nvfp4", "modelopt"),
        ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "int4", "bitsandbytes"),
    ],
)
def test_quantization_methods(quantization_config: dict[str, Any], dtype: str, method: str) -> None:
    config = load("meta-llama--Llama-3.1-8B-Instruct")
    config["quantization_config"] = quantization_config
    spec = spec_from_hf_config("x/quantized", config)
    assert (spec.dtype, spec.quantization) == (dtype, method)
    assert spec.weights_bytes is not None
    # Embeddings and LM head (1.05B params) stay bf16, the rest shrinks.
    assert spec.weights_bytes < spec.params_total * 2
    # And the KV cache of a quantized model defaults to bf16.
    assert kv_bytes_per_token(spec) == 131_072


def test_awq_int4_size_is_plausible() -> None:
    config = load("meta-llama--Llama-3.1-8B-Instruct")
    config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 128}
    spec = spec_from_hf_config("x/awq", config)
    assert spec.weights_bytes is not None
    # Published AWQ 8B checkpoints are ~5.7 GB (int4 layers + fp16 embeddings and head).
    assert 5.3e9 < spec.weights_bytes < 6.0e9


def test_unknown_quantization_method() -> None:
    config = load("meta-llama--Llama-3.1-8B-Instruct")
    config["quantization_config"] = {"quant_method": "quip-sharp"}
    with pytest.raises(ValueError, match="quip-sharp"):
        spec_from_hf_config("x/quip", config)


def test_llama4_style_interleaved_moe_under_text_config() -> None:
    config = {
        "architectures": ["Llama4ForConditionalGeneration"],
        "model_type": "llama4",
        "text_config": {
            "model_type": "llama4_text",
            "hidden_size": 5120,
            "intermediate_size": 8192,
            "intermediate_size_mlp": 16384,
            "num_hidden_layers": 48,
            "num_attention_heads": 40,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "vocab_size": 202048,
            "num_local_experts": 16,
            "num_experts_per_tok": 1,
            "interleave_moe_layer_step": 1,
            "max_position_embeddings": 10485760,
            "torch_dtype": "bfloat16",
        },
    }
    spec = spec_from_hf_config("meta-llama/Llama-4-Scout-17B-16E-Instruct", config)
    # Scout: 109B with its vision encoder, ~108B language model, 17B active.
    assert abs(spec.params_total - 108e9) / 108e9 < 0.02
    assert spec.params_active is not None and abs(spec.params_active - 17e9) / 17e9 < 0.02


def test_builtin_entries_agree_with_their_config_json() -> None:
    """The hand-written catalog rows are what the configs imply, to the byte."""
    catalog = Catalog.builtin()
    for folder, name in [
        ("meta-llama--Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B-Instruct"),
        ("Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct"),
        ("Qwen3-32B", "Qwen/Qwen3-32B"),
        ("Mixtral-8x7B-Instruct-v0.1", "mistralai/Mixtral-8x7B-Instruct-v0.1"),
        ("DeepSeek-V3", "deepseek-ai/DeepSeek-V3"),
        ("gpt-oss-20b", "openai/gpt-oss-20b"),
    ]:
        derived = spec_from_hf_config(name, load(folder))
        listed = catalog[name]
        assert listed.params_total == derived.params_total, name
        assert listed.params_active == derived.params_active, name
        assert kv_bytes_per_token(listed) == kv_bytes_per_token(derived), name
        assert listed.max_model_len == derived.max_model_len, name
        assert listed.dtype == derived.dtype, name
        assert abs(weights_bytes(listed) - weights_bytes(derived)) / weights_bytes(listed) < 0.005
