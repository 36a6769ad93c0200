"""``ModelSpec``: the few architecture numbers that decide a model's GPU memory.

A spec holds what weight and KV-cache planning needs and nothing else: parameter counts
(or an explicit checkpoint size), the attention geometry that sets the KV cache's size per
token, the default dtype and the default context length. It is immutable and hashable, so
it can key memo tables in the placement core.

Attention kinds and what the KV cache holds per token and layer:

* ``mha``: every query head has its own K and V head (``num_kv_heads == num_attention_heads``).
* ``gqa``: groups of query heads share a K/V head (``1 < num_kv_heads < num_attention_heads``).
* ``mqa``: one shared K/V head (``num_kv_heads == 1``).
* ``mla``: multi-head latent attention (DeepSeek-V2/V3): one compressed latent of
  ``kv_lora_rank`` plus a decoupled RoPE key of ``qk_rope_head_dim`` per token and layer, shared
  by all heads. ``head_dim`` then holds the query/key head width
  (``qk_nope_head_dim + qk_rope_head_dim``), which the cache does not depend on.

Hybrid sliding-window attention (Mistral-7B-v0.1, Gemma 2/3, gpt-oss): ``sliding_window`` is
the window in tokens and ``sliding_window_layers`` how many of the ``num_layers`` layers use it;
the rest (``full_attention_layers``) attend to the whole context. A sliding layer needs at most
``sliding_window`` tokens of cache per sequence; the planner nevertheless counts every layer as
full (see :mod:`scheduler.models.kvplan`), so these fields are informational upper-bound slack.
A ``sliding_window`` with ``sliding_window_layers == 0`` is a configured but disabled window
(Qwen2.5's ``use_sliding_window: false``).

Attention sinks (gpt-oss) are one learned logit per head and layer: parameters, not cache.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from scheduler.models.dtypes import AUTO, normalize_dtype

AttentionKind = Literal["mha", "gqa", "mqa", "mla"]

# Strict ints: a catalog that says `num_layers: "32"` or `80.0` is a typo to report, not to
# coerce (human-friendly forms such as "8.03B" are parsed by the catalog loader beforehand).
PositiveInt = Annotated[int, Field(gt=0, strict=True)]
NonNegativeInt = Annotated[int, Field(ge=0, strict=True)]


class ModelSpec(BaseModel):
    """Architecture facts of one model, as its ``config.json`` states them.

    ``dtype`` is the dtype the weights are served in by default: the checkpoint's
    ``torch_dtype`` for 16-bit models, the storage type (``fp8``, ``int4``, ``mxfp4``...) for
    quantized checkpoints (then ``quantization`` names the method). ``weights_bytes`` is the
    real checkpoint size when it is known and differs from ``params_total`` x dtype bytes, e.g.
    mixed-precision checkpoints where embeddings or attention stay in bf16.
    ``max_model_len`` is the default context length (``max_position_embeddings``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    aliases: tuple[str, ...] = ()
    params_total: PositiveInt
    params_active: PositiveInt | None = None
    num_layers: PositiveInt
    hidden_size: PositiveInt
    num_attention_heads: PositiveInt
    num_kv_heads: PositiveInt
    head_dim: PositiveInt
    attention: AttentionKind
    kv_lora_rank: PositiveInt | None = None
    qk_rope_head_dim: PositiveInt | None = None
    sliding_window: PositiveInt | None = None
    sliding_window_layers: NonNegativeInt = 0
    attention_sinks: bool = False
    dtype: str = "bf16"
    max_model_len: PositiveInt
    weights_bytes: PositiveInt | None = None
    quantization: str | None = None

    @field_validator("name")
    @classmethod
    def _name_has_no_spaces(cls, value: str) -> str:
        if value != value.strip() or any(ch.isspace() for ch in value):
            raise ValueError(f"model name {value!r} must not contain whitespace")
        return value

    @field_validator("aliases")
    @classmethod
    def _clean_aliases(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        cleaned: list[str] = []
        for alias in value:
            stripped = alias.strip()
            if not stripped:
                raise ValueError("aliases must be non-empty strings")
            if stripped not in cleaned:
                cleaned.append(stripped)
        return tuple(cleaned)

    @field_validator("dtype")
    @classmethod
    def _canonical_dtype(cls, value: str) -> str:
        canonical = normalize_dtype(value)
        if canonical == AUTO:
            # A spec is where "auto" gets resolved, so it cannot itself say "auto".
            raise ValueError('a model spec needs a concrete dtype, not "auto"')
        return canonical

    @field_validator("quantization")
    @classmethod
    def _lower_case_quantization(cls, value: str | None) -> str | None:
        if value is None:
            return None
        stripped = value.strip().lower()
        return stripped or None

    @model_validator(mode="after")
    def _consistent_geometry(self) -> Self:
        if self.params_active is not None and self.params_active > self.params_total:
            raise ValueError(
                f"params_active ({self.params_active:,}) exceeds params_total "
                f"({self.params_total:,})"
            )
        self._check_attention_kind()
        if self.sliding_window_layers > self.num_layers:
            raise ValueError(
                f"sliding_window_layers ({self.sliding_window_layers}) exceeds num_layers "
                f"({self.num_layers})"
            )
        if self.sliding_window_layers > 0 and self.sliding_window is None:
            raise ValueError("sliding_window_layers > 0 needs sliding_window (tokens)")
        return self

    def _check_attention_kind(self) -> None:
        heads, kv_heads = self.num_attention_heads, self.num_kv_heads
        mla_fields = (self.kv_lora_rank, self.qk_rope_head_dim)
        if self.attention == "mla":
            if None in mla_fields:
                raise ValueError("attention 'mla' needs kv_lora_rank and qk_rope_head_dim")
            return
        if any(field is not None for field in mla_fields):
            raise ValueError(
                f"kv_lora_rank/qk_rope_head_dim are only for attention 'mla', "
                f"not {self.attention!r}"
            )
        if kv_heads > heads or heads % kv_heads != 0:
            raise ValueError(
                f"num_attention_heads ({heads}) must be a multiple of num_kv_heads ({kv_heads})"
            )
        expected = infer_attention_kind(heads, kv_heads)
        if self.attention != expected:
            raise ValueError(
                f"attention {self.attention!r} contradicts {heads} query heads and "
                f"{kv_heads} KV heads (that is {expected!r})"
            )

    @property
    def full_attention_layers(self) -> int:
        """Layers that attend to (and cache) the whole context."""
        return self.num_layers - self.sliding_window_layers

    @property
    def is_moe(self) -> bool:
        """Whether only part of the parameters are active per token (mixture of experts)."""
        return self.params_active is not None and self.params_active < self.params_total

    @property
    def is_quantized(self) -> bool:
        """Whether the weights are stored in a quantized (non-16/32-bit float) format."""
        return self.quantization is not None

    def replace(self, **changes: Any) -> ModelSpec:
        """A copy with ``changes`` applied and validated again (``model_copy`` skips validation)."""
        return ModelSpec.model_validate({**self.model_dump(), **changes})


def infer_attention_kind(num_attention_heads: int, num_kv_heads: int) -> AttentionKind:
    """The non-latent attention kind implied by the head counts."""
    if num_kv_heads == num_attention_heads:
        return "mha"
    if num_kv_heads == 1:
        return "mqa"
    return "gqa"
