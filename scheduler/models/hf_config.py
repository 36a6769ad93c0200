"""Hugging Face ``config.json`` -> :class:`~scheduler.models.spec.ModelSpec`.

Handles the decoder-only families served today: Llama/Mistral/Qwen2/Qwen3/Phi-3/Gemma 2-3
(dense, MHA or GQA), Mixtral/Qwen-MoE/gpt-oss/Llama 4 (mixture of experts), DeepSeek-V2/V3
(multi-head latent attention, MoE with shared experts), multimodal wrappers whose language
model sits under ``text_config``, and the quantized checkpoints that say so in
``quantization_config``.

``config.json`` carries no parameter count, so it is estimated from the architecture (see
:func:`estimate_params`): embeddings, attention projections (incl. GQA/MLA shapes, biases,
q/k norms, sinks), dense MLPs or experts (routed and shared) plus routers, norms, and the LM
head unless tied. It reproduces published counts to well under 1% for the families above.
Multi-token-prediction layers of DeepSeek-V3 (``num_nextn_predict_layers``) are left out: vLLM
loads them only for speculative decoding. Vision towers of multimodal models are left out too.

For quantized checkpoints the weight size is estimated as well (``ModelSpec.weights_bytes``),
because only part of the model is quantized: the quantized linear layers take their dtype's
bytes plus the method's scale overhead, the rest (embeddings, LM head, norms, routers, and
whatever ``modules_to_not_convert``/``ignore`` name) stays in bf16.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from scheduler.models.dtypes import dtype_bytes, normalize_dtype
from scheduler.models.spec import ModelSpec, infer_attention_kind

__all__ = ["ParamEstimate", "QuantizationInfo", "estimate_params", "spec_from_hf_config"]

# Keys transformers fills from the config class when a config.json omits them. Gemma 3's
# published text_config leaves out vocab size, context length and the local/global pattern.
_MODEL_TYPE_DEFAULTS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "gemma3_text": {
            "vocab_size": 262_208,
            "max_position_embeddings": 131_072,
            "sliding_window_pattern": 6,
            "tie_word_embeddings": True,
        },
        "gemma2": {"tie_word_embeddings": True},
        "gemma": {"tie_word_embeddings": True},
    }
)

# Families whose q/k/v projections always carry a bias (no config key says so).
_QKV_BIAS_MODEL_TYPES: Final = frozenset({"qwen2", "qwen2_moe", "qwen2_vl", "qwen2_5_vl_text"})
# Families with per-head RMSNorm on queries and keys.
_QK_NORM_MODEL_TYPES: Final = frozenset({"qwen3", "qwen3_moe", "gemma3_text"})
# Families with four norms per layer (pre/post attention and pre/post MLP) instead of two.
_FOUR_NORM_MODEL_TYPES: Final = frozenset({"gemma2", "gemma3_text"})
# Older families whose MLP is up/down without a gate projection.
_UNGATED_MLP_MODEL_TYPES: Final = frozenset(
    {"gpt2", "gpt_neox", "gpt_bigcode", "gptj", "falcon", "phi", "opt", "bloom", "starcoder2"}
)

_BF16_BYTES: Final = 2.0


@dataclass(frozen=True)
class QuantizationInfo:
    """What ``quantization_config`` says about the weights.

    ``scale_bytes_per_param``: per-parameter overhead of the scales and zero points on top of
    ``dtype``'s bytes (e.g. one fp32 scale per 128x128 block, or fp16 scale + 4-bit zero per
    group of 128). ``attention_quantized``/``dense_quantized`` say which linear layers besides
    the experts are quantized.
    """

    method: str
    dtype: str
    scale_bytes_per_param: float
    attention_quantized: bool
    dense_quantized: bool


@dataclass(frozen=True)
class ParamEstimate:
    """Parameter counts by part of the model (LM head included in ``embedding``)."""

    embedding: int
    attention_linear: int
    dense_mlp: int
    experts: int
    active_experts: int
    other: int  # norms, biases, routers, attention sinks: never quantized

    @property
    def total(self) -> int:
        return self.embedding + self.attention_linear + self.dense_mlp + self.experts + self.other

    @property
    def active(self) -> int:
        """Parameters used per token: everything except the experts a token is not routed to."""
        return self.total - self.experts + self.active_experts


def _flatten(config: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``text_config`` (multimodal wrappers, Gemma 3, Llama 4) over the top level."""
    merged = {k: v for k, v in config.items() if k not in ("text_config", "vision_config")}
    text_config = config.get("text_config")
    if isinstance(text_config, Mapping):
        merged.update(text_config)
    defaults = _MODEL_TYPE_DEFAULTS.get(str(merged.get("model_type", "")), {})
    for key, value in defaults.items():
        if merged.get(key) is None:
            merged[key] = value
    return merged


class _Config:
    """Typed access to a flattened config with errors that name the missing key."""

    def __init__(self, name: str, values: Mapping[str, Any]) -> None:
        self.name = name
        self.values = values
        self.model_type = str(values.get("model_type", ""))

    def optional_int(self, *keys: str) -> int | None:
        for key in keys:
            value = self.values.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(
                    f"config.json of {self.name}: {key} must be an integer, got {value!r}"
                )
            return value
        return None

    def required_int(self, *keys: str, positive: bool = True) -> int:
        value = self.optional_int(*keys)
        if value is None:
            alternatives = f" (or {', '.join(keys[1:])})" if len(keys) > 1 else ""
            raise ValueError(
                f"config.json of {self.name} has no usable {keys[0]}{alternatives}: "
                "cannot size the model"
            )
        if positive and value <= 0:
            raise ValueError(f"config.json of {self.name}: {keys[0]} must be > 0, got {value}")
        return value

    def flag(self, key: str, default: bool = False) -> bool:
        value = self.values.get(key)
        return default if value is None else bool(value)


@dataclass(frozen=True)
class _Mla:
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int


def _mla_of(cfg: _Config) -> _Mla | None:
    kv_lora_rank = cfg.optional_int("kv_lora_rank")
    if kv_lora_rank is None:
        return None
    return _Mla(
        q_lora_rank=cfg.optional_int("q_lora_rank"),
        kv_lora_rank=kv_lora_rank,
        qk_nope_head_dim=cfg.required_int("qk_nope_head_dim"),
        qk_rope_head_dim=cfg.required_int("qk_rope_head_dim"),
        v_head_dim=cfg.required_int("v_head_dim"),
    )


def _head_dim(cfg: _Config, hidden: int, heads: int) -> int:
    explicit = cfg.optional_int("head_dim")
    if explicit is not None:
        return explicit
    if hidden % heads != 0:
        raise ValueError(
            f"config.json of {cfg.name} has no head_dim and hidden_size {hidden} is not "
            f"divisible by num_attention_heads {heads}"
        )
    return hidden // heads


def _num_experts(cfg: _Config) -> int:
    return cfg.optional_int("num_local_experts", "num_experts", "n_routed_experts") or 0


def _moe_layer_indices(cfg: _Config, num_layers: int) -> list[int]:
    """Indices of the layers whose MLP is a mixture of experts."""
    if _num_experts(cfg) == 0:
        return []
    layers = range(num_layers)
    if cfg.model_type.startswith("deepseek"):
        first_dense = cfg.optional_int("first_k_dense_replace") or 0
        frequency = cfg.optional_int("moe_layer_freq") or 1
        return [i for i in layers if i >= first_dense and i % frequency == 0]
    step = cfg.optional_int("interleave_moe_layer_step", "decoder_sparse_step") or 1
    raw_dense_only = cfg.values.get("mlp_only_layers") or []
    dense_only = {i for i in raw_dense_only if isinstance(i, int)}
    return [i for i in layers if (i + 1) % step == 0 and i not in dense_only]


def _attention_params(
    cfg: _Config, hidden: int, heads: int, kv_heads: int, head_dim: int
) -> tuple[int, int]:
    """(linear weights, other params) of one attention block."""
    mla = _mla_of(cfg)
    if mla is not None:
        qk_head = mla.qk_nope_head_dim + mla.qk_rope_head_dim
        if mla.q_lora_rank is None:
            query = hidden * heads * qk_head
            query_norm = 0
        else:
            query = hidden * mla.q_lora_rank + mla.q_lora_rank * heads * qk_head
            query_norm = mla.q_lora_rank
        latent_down = hidden * (mla.kv_lora_rank + mla.qk_rope_head_dim)
        latent_up = mla.kv_lora_rank * heads * (mla.qk_nope_head_dim + mla.v_head_dim)
        output = heads * mla.v_head_dim * hidden
        return query + latent_down + latent_up + output, query_norm + mla.kv_lora_rank
    q_width, kv_width = heads * head_dim, kv_heads * head_dim
    linear = hidden * q_width + 2 * hidden * kv_width + q_width * hidden
    other = 0
    if cfg.flag("attention_bias"):
        other += q_width + 2 * kv_width + hidden
    elif cfg.model_type in _QKV_BIAS_MODEL_TYPES or cfg.flag("qkv_bias"):
        other += q_width + 2 * kv_width
    if cfg.model_type in _QK_NORM_MODEL_TYPES:
        other += 2 * head_dim
    if cfg.model_type == "gpt_oss":
        other += heads  # attention sinks: one learned logit per head
    return linear, other


def _mlp_matrices(cfg: _Config) -> int:
    return 2 if cfg.model_type in _UNGATED_MLP_MODEL_TYPES else 3


def estimate_params(config: Mapping[str, Any], name: str = "model") -> ParamEstimate:
    """Estimate the parameter count of the language model described by ``config``.

    Raises ``ValueError`` naming the first missing key the estimate needs.
    """
    cfg = _Config(name, _flatten(config))
    return _estimate(cfg)


def _estimate(cfg: _Config) -> ParamEstimate:
    num_layers = cfg.required_int("num_hidden_layers", "n_layer", "num_layers")
    hidden = cfg.required_int("hidden_size", "n_embd", "d_model")
    heads = cfg.required_int("num_attention_heads", "n_head")
    kv_heads = cfg.optional_int("num_key_value_heads", "num_kv_heads", "n_head_kv") or heads
    head_dim = _head_dim(cfg, hidden, heads)
    vocab = cfg.required_int("vocab_size")
    tied = cfg.flag("tie_word_embeddings")

    embedding = vocab * hidden * (1 if tied else 2)
    attention_linear, attention_other = _attention_params(cfg, hidden, heads, kv_heads, head_dim)
    norms_per_layer = (4 if cfg.model_type in _FOUR_NORM_MODEL_TYPES else 2) * hidden
    matrices = _mlp_matrices(cfg)

    moe_layers = _moe_layer_indices(cfg, num_layers)
    dense_layers = num_layers - len(moe_layers)
    dense_mlp = 0
    if dense_layers:
        if cfg.model_type == "llama4_text":
            # Llama 4's dense layers are wider than its experts (intermediate_size).
            dense_width = cfg.required_int("intermediate_size_mlp")
        else:
            dense_width = cfg.required_int("intermediate_size", "ffn_dim", "n_inner")
        dense_mlp = dense_layers * matrices * hidden * dense_width
        if cfg.flag("mlp_bias"):
            dense_mlp += dense_layers * (2 * dense_width + hidden)

    experts_total = experts_active = moe_other = shared = 0
    if moe_layers:
        experts = _num_experts(cfg)
        routed_per_token = cfg.required_int(
            "num_experts_per_tok", "experts_per_token", "num_experts_per_token"
        )
        expert_width = cfg.required_int("moe_intermediate_size", "intermediate_size")
        per_expert = matrices * hidden * expert_width
        router = hidden * experts
        if cfg.model_type == "gpt_oss":
            # gpt-oss experts and router carry biases (gate_up: 2 x width, down: hidden).
            moe_other += len(moe_layers) * experts * (2 * expert_width + hidden)
            router += experts
        elif cfg.model_type.startswith("deepseek") and cfg.values.get("topk_method") == "noaux_tc":
            router += experts  # e_score_correction_bias
        shared = _shared_expert_params(cfg, hidden, expert_width, matrices)
        experts_total = len(moe_layers) * experts * per_expert
        experts_active = len(moe_layers) * routed_per_token * per_expert
        moe_other += len(moe_layers) * router
    shared_total = len(moe_layers) * shared
    # Shared experts run for every token, so they count with the dense MLPs (and are
    # quantized like them); the final norm adds one hidden-size vector.
    other = num_layers * (attention_other + norms_per_layer) + hidden + moe_other
    return ParamEstimate(
        embedding=embedding,
        attention_linear=num_layers * attention_linear,
        dense_mlp=dense_mlp + shared_total,
        experts=experts_total,
        active_experts=experts_active,
        other=other,
    )


def _shared_expert_params(cfg: _Config, hidden: int, expert_width: int, matrices: int) -> int:
    """Always-active expert parameters per MoE layer (counted with the dense MLPs)."""
    if cfg.model_type.startswith("deepseek"):
        shared_experts = cfg.optional_int("n_shared_experts") or 0
        return shared_experts * matrices * hidden * expert_width
    shared_width = cfg.optional_int("shared_expert_intermediate_size")
    if shared_width:
        return matrices * hidden * shared_width + hidden  # + the shared expert's gate
    if cfg.model_type == "llama4_text":
        return matrices * hidden * cfg.required_int("intermediate_size")
    return 0


# ---------------------------------------------------------------------------- quantization

_KNOWN_QUANT_METHODS = (
    "fp8",
    "fbgemm_fp8",
    "awq",
    "gptq",
    "compressed-tensors",
    "mxfp4",
    "modelopt",
    "bitsandbytes",
)


def _integer_dtype(bits: int, method: str) -> str:
    if bits == 4:
        return "int4"
    if bits == 8:
        return "int8"
    raise ValueError(f"quantization_config: {method} with {bits} bits is not supported (4 or 8)")


def _group_scale_overhead(group_size: int | None, zero_point_bytes: float) -> float:
    # One fp16 scale (and zero point) per group; per-channel (-1/None) scales are negligible.
    if group_size is None or group_size <= 0:
        return 0.0
    return (2.0 + zero_point_bytes) / group_size


def _not_converted(quant: Mapping[str, Any]) -> Sequence[str]:
    names = quant.get("modules_to_not_convert") or quant.get("ignore") or []
    return [str(n) for n in names] if isinstance(names, list) else []


def quantization_of(config: Mapping[str, Any], name: str = "model") -> QuantizationInfo | None:
    """Read ``quantization_config`` (top level or under ``text_config``); None if absent."""
    flat = _flatten(config)
    quant = flat.get("quantization_config")
    if quant is None:
        return None
    if not isinstance(quant, Mapping):
        raise ValueError(f"config.json of {name}: quantization_config must be a mapping")
    method = str(quant.get("quant_method", "")).lower()
    if not method:
        raise ValueError(f"config.json of {name}: quantization_config has no quant_method")
    skipped = " ".join(_not_converted(quant))
    attention_quantized = "attn" not in skipped
    dtype, overhead = _quantized_dtype(method, quant, name)
    return QuantizationInfo(
        method=method,
        dtype=dtype,
        scale_bytes_per_param=overhead,
        # MXFP4 checkpoints (gpt-oss) quantize the experts only.
        attention_quantized=attention_quantized and method != "mxfp4",
        dense_quantized=method != "mxfp4",
    )


def _quantized_dtype(method: str, quant: Mapping[str, Any], name: str) -> tuple[str, float]:
    """(weight dtype, scale bytes per parameter) of one quantization method."""
    if method in ("fp8", "fbgemm_fp8"):
        block = quant.get("weight_block_size")
        if isinstance(block, list) and len(block) == 2 and all(isinstance(b, int) for b in block):
            return "fp8", 4.0 / (block[0] * block[1])  # one fp32 scale per block
        return "fp8", 0.0
    if method in ("awq", "gptq"):
        bits = quant.get("bits", quant.get("w_bit", 4))
        if not isinstance(bits, int):
            raise ValueError(f"config.json of {name}: {method} bits must be an integer")
        group = quant.get("group_size", quant.get("q_group_size", 128))
        group_size = group if isinstance(group, int) else None
        return _integer_dtype(bits, method), _group_scale_overhead(group_size, bits / 8)
    if method == "mxfp4":
        return "mxfp4", 0.0  # the E8M0 block scale is part of the dtype's bytes
    if method == "compressed-tensors":
        return _compressed_tensors_dtype(quant, name)
    if method == "modelopt":
        algo = str(quant.get("quant_algo", "")).upper()
        if "NVFP4" in algo:
            return "nvfp4", 0.0
        if "FP8" in algo:
            return "fp8", 0.0
        if "INT4" in algo or "W4A" in algo:
            return "int4", _group_scale_overhead(128, 0.0)
        raise ValueError(f"config.json of {name}: modelopt quant_algo {algo!r} is not supported")
    if method == "bitsandbytes":
        if quant.get("load_in_4bit"):
            return "int4", 4.0 / 64  # NF4/FP4 with an fp32 absmax per block of 64
        return "int8", 0.0
    known = ", ".join(_KNOWN_QUANT_METHODS)
    raise ValueError(
        f"config.json of {name}: quant_method {method!r} is not supported (known: {known})"
    )


def _compressed_tensors_dtype(quant: Mapping[str, Any], name: str) -> tuple[str, float]:
    groups = quant.get("config_groups")
    weights: Mapping[str, Any] | None = None
    if isinstance(groups, Mapping):
        for group in groups.values():
            if isinstance(group, Mapping) and isinstance(group.get("weights"), Mapping):
                weights = group["weights"]
                break
    if weights is None:
        raise ValueError(
            f"config.json of {name}: compressed-tensors config has no config_groups.*.weights"
        )
    bits = weights.get("num_bits")
    kind = str(weights.get("type", "int")).lower()
    group = weights.get("group_size")
    group_size = group if isinstance(group, int) else None
    if bits == 8 and kind == "float":
        return "fp8", 0.0
    if bits == 4 and kind == "float":
        fmt = str(quant.get("format", "")).lower()
        return ("nvfp4" if "nvfp4" in fmt or group_size == 16 else "fp4"), 0.0
    if isinstance(bits, int) and kind == "int":
        # Symmetric int schemes store one bf16 scale per group, no zero point.
        return _integer_dtype(bits, "compressed-tensors"), _group_scale_overhead(group_size, 0.0)
    raise ValueError(
        f"config.json of {name}: compressed-tensors weights of {bits} bits type {kind!r} "
        "are not supported"
    )


def _quantized_weights_bytes(params: ParamEstimate, quant: QuantizationInfo) -> int:
    quantized = params.experts
    if quant.dense_quantized:
        quantized += params.dense_mlp
    if quant.attention_quantized:
        quantized += params.attention_linear
    kept = params.total - quantized
    per_param = dtype_bytes(quant.dtype) + quant.scale_bytes_per_param
    return math.ceil(quantized * per_param + kept * _BF16_BYTES)


# ---------------------------------------------------------------------------- the spec


def _serving_dtype(cfg: _Config) -> str:
    raw = cfg.values.get("torch_dtype") or cfg.values.get("dtype")
    if raw is None:
        return "bf16"  # modern checkpoints are bf16; fp32-era configs are served in 16 bit
    try:
        canonical = normalize_dtype(str(raw))
    except ValueError as exc:
        raise ValueError(f"config.json of {cfg.name}: torch_dtype: {exc}") from None
    # vLLM's --dtype auto serves fp32 checkpoints in 16 bit (bf16 where the GPU has it).
    return "bf16" if canonical in ("fp32", "auto") else canonical


def _sliding_window_layers(cfg: _Config, num_layers: int) -> tuple[int | None, int]:
    """(window in tokens, number of layers that use it)."""
    window = cfg.optional_int("sliding_window")
    if window is None or window <= 0:
        return None, 0
    layer_types = cfg.values.get("layer_types")
    if isinstance(layer_types, list) and layer_types:
        return window, sum(1 for kind in layer_types if kind == "sliding_attention")
    if cfg.values.get("use_sliding_window") is False:
        return window, 0  # Qwen2: configured but switched off
    if cfg.model_type in ("gemma2", "gpt_oss"):
        return window, math.ceil(num_layers / 2)  # even layers slide, odd ones are global
    if cfg.model_type == "gemma3_text":
        pattern = cfg.optional_int("sliding_window_pattern") or 6
        return window, num_layers - num_layers // pattern  # every pattern-th layer is global
    if cfg.values.get("use_sliding_window") is True:
        first_sliding = cfg.optional_int("max_window_layers") or 0
        return window, max(0, num_layers - first_sliding)
    return window, num_layers  # Mistral-7B-v0.1, Phi-3: every layer slides


def spec_from_hf_config(name: str, config: Mapping[str, Any]) -> ModelSpec:
    """Build a :class:`ModelSpec` named ``name`` from a Hugging Face ``config.json`` mapping.

    Raises ``ValueError`` naming the missing or malformed key when the config cannot size
    the model.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"config.json of {name} must be a JSON object")
    cfg = _Config(name, _flatten(config))
    params = _estimate(cfg)
    num_layers = cfg.required_int("num_hidden_layers", "n_layer", "num_layers")
    hidden = cfg.required_int("hidden_size", "n_embd", "d_model")
    heads = cfg.required_int("num_attention_heads", "n_head")
    kv_heads = cfg.optional_int("num_key_value_heads", "num_kv_heads", "n_head_kv") or heads
    max_len = cfg.required_int(
        "max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"
    )
    window, sliding_layers = _sliding_window_layers(cfg, num_layers)
    quant = quantization_of(config, name)
    mla = _mla_of(cfg)
    if mla is not None:
        head_dim = mla.qk_nope_head_dim + mla.qk_rope_head_dim
        attention = "mla"
    else:
        head_dim = _head_dim(cfg, hidden, heads)
        attention = infer_attention_kind(heads, kv_heads)
    try:
        return ModelSpec(
            name=name,
            params_total=params.total,
            params_active=params.active if params.experts else None,
            num_layers=num_layers,
            hidden_size=hidden,
            num_attention_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            attention=attention,
            kv_lora_rank=mla.kv_lora_rank if mla else None,
            qk_rope_head_dim=mla.qk_rope_head_dim if mla else None,
            sliding_window=window,
            sliding_window_layers=sliding_layers,
            attention_sinks=cfg.model_type == "gpt_oss",
            dtype=quant.dtype if quant else _serving_dtype(cfg),
            max_model_len=max_len,
            weights_bytes=_quantized_weights_bytes(params, quant) if quant else None,
            quantization=quant.method if quant else None,
        )
    except ValueError as exc:
        raise ValueError(f"config.json of {name} is inconsistent: {exc}") from None
