"""Per-GPU memory planning of one serving engine: weights, KV cache and overhead.

The model of memory follows vLLM, the engine the annotations are named after:

* The engine may use ``gpu_memory_utilization`` x the GPU's memory. Out of that come the
  weights (sharded evenly across the ``tp`` tensor-parallel GPUs), a non-KV overhead
  (CUDA context, NCCL/cuBLAS workspaces, CUDA graphs, the activation peak of a forward pass)
  and the KV cache, which gets the rest.
* KV cache size is linear in tokens: ``kv_bytes_per_token(spec, kv_dtype, tp) * tokens``. The
  token budget is ``max_model_len * max_num_seqs`` (room for that many sequences at full
  length) or an explicit ``kv-cache-tokens``. vLLM allocates in blocks of 16 tokens; budgets
  are kept in tokens here, so the numbers are exact for block-aligned budgets (the usual case)
  and at most 15 tokens optimistic otherwise.

Choices the code makes, in one place:

* ``dtype`` ``None``/``"auto"`` is the spec's ``dtype``. ``kv_dtype`` ``None``/``"auto"`` is the
  weight dtype when that is a float type (bf16/fp16/fp32), and **bf16** when the weights are
  quantized (fp8, int8, int4, fp4...): vLLM's ``--kv-cache-dtype auto`` follows the model's
  compute dtype, and quantized checkpoints compute (and cache) in 16 bit; an fp8 KV cache is
  opt-in (``--kv-cache-dtype fp8``).
* Sliding-window layers are counted as full-attention layers: every layer caches every token.
  This over-states hybrid models (gpt-oss: half the layers have a 128-token window; Gemma 3:
  five of six layers have a 1,024-token window) at long context, but it is an upper bound, it
  is what vLLM allocates when its hybrid KV-cache manager is off, and it keeps KV bytes linear
  in tokens so that ``max_kv_tokens`` is a plain division.
* Under tensor parallelism the KV heads are split across GPUs (``ceil(kv_heads / tp)`` per GPU);
  with more GPUs than KV heads each GPU holds one full head (replicated). MLA's compressed
  latent is not sharded by vLLM: every GPU holds all of it.
* Weights per GPU are ``ceil(total / tp)``: the small replicated parts (norms, routers) are
  ignored, the embedding and LM head are vocab-parallel and split like the rest.
* Pipeline parallelism over ``pp`` pods (a group's members, each one stage) splits the layers:
  one stage holds ``ceil(num_layers / pp)`` layers (every stage is planned as the largest), so
  ``stage_layers / num_layers`` of the weights (the embedding and LM head, which sit on the
  first and last stage, are spread like the rest) and the KV cache of its layers only. A model
  known only by its weight size holds ``ceil(total / pp)``. ``pp = 1`` is a whole engine.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Final

from scheduler.models.dtypes import (
    AUTO,
    QUANTIZED_DTYPES,
    dtype_bytes,
    normalize_dtype,
)
from scheduler.models.spec import ModelSpec
from scheduler.models.units import format_bytes

__all__ = [
    "GpuFit",
    "MemoryPlan",
    "estimate_overhead_bytes",
    "fit_on_gpu",
    "format_bytes",
    "kv_bytes_per_token",
    "plan_memory",
    "plan_weights_only",
    "resolve_kv_dtype",
    "resolve_weight_dtype",
    "stage_layers",
    "weights_bytes",
]

GIB: Final = 1024**3
MIB: Final = 1024**2

#: CUDA context, NCCL and cuBLAS workspaces and the CUDA-graph memory pool of one engine
#: process on one GPU: measured vLLM deployments sit between 0.5 and 1.5 GiB here.
OVERHEAD_BASE_BYTES: Final = 1 * GIB
#: Tokens of one profiled forward pass: vLLM's default chunked-prefill batch
#: (``max_num_batched_tokens``) on data-centre GPUs.
OVERHEAD_ACTIVATION_TOKENS: Final = 8192
#: Peak activation bytes per batched token per unit of hidden size. The widest live tensors of
#: a decoder layer are the gate+up MLP output (~2 x 3.5 x hidden in bf16 = 14 bytes per hidden
#: unit) plus the residual; 16 covers that without knowing the intermediate size, and is not
#: divided by ``tp`` (the residual stream is replicated), which errs on the safe side.
OVERHEAD_ACTIVATION_BYTES_PER_HIDDEN: Final = 16
#: Per scheduled sequence: fp32 logits over a 128k-256k vocabulary plus sampler temporaries.
OVERHEAD_PER_SEQUENCE_BYTES: Final = 1 * MIB
#: Hidden size assumed when it is unknown (a model planned from ``weights-bytes`` alone):
#: that of the 70B class, so the estimate errs high for smaller models.
OVERHEAD_UNKNOWN_HIDDEN_SIZE: Final = 8192

#: Compute/KV dtype of models whose weights are stored quantized.
QUANTIZED_MODEL_KV_DTYPE: Final = "bf16"

#: ``MemoryPlan.dtype`` / ``kv_dtype`` of a plan made from a weight size alone.
UNKNOWN_DTYPE: Final = "unknown"

# The fp8 spellings name one storage size; a checkpoint stored as "fp8" matches a request for
# "fp8_e4m3" and the other way round.
_FP8_FAMILY: Final = frozenset({"fp8", "fp8_e4m3", "fp8_e5m2"})


def _require_positive_int(value: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {value!r}")


def _require_non_negative_int(value: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be an integer >= 0, got {value!r}")


def resolve_weight_dtype(spec: ModelSpec, dtype: str | None = None) -> str:
    """Canonical weight dtype: ``None``/``"auto"`` -> the spec's default."""
    if dtype is None:
        return spec.dtype
    canonical = normalize_dtype(dtype)
    return spec.dtype if canonical == AUTO else canonical


def resolve_kv_dtype(spec: ModelSpec, kv_dtype: str | None = None, dtype: str | None = None) -> str:
    """Canonical KV-cache dtype; ``None``/``"auto"`` follows the (resolved) weight dtype.

    Float weights (bf16/fp16/fp32) cache KV in their own dtype; quantized weights cache in
    bf16, the dtype such models compute in (see the module docstring).
    """
    if kv_dtype is not None:
        canonical = normalize_dtype(kv_dtype)
        if canonical != AUTO:
            return canonical
    weight_dtype = resolve_weight_dtype(spec, dtype)
    if weight_dtype in QUANTIZED_DTYPES:
        return QUANTIZED_MODEL_KV_DTYPE
    return weight_dtype


def _same_storage(a: str, b: str) -> bool:
    return a == b or (a in _FP8_FAMILY and b in _FP8_FAMILY)


def weights_bytes(spec: ModelSpec, dtype: str | None = None) -> int:
    """Total weight bytes of ``spec`` served in ``dtype`` (all GPUs together).

    The spec's explicit ``weights_bytes`` (a real checkpoint size) is used when ``dtype`` is
    ``None``/``"auto"`` or names the checkpoint's own storage type; any other dtype means the
    weights are converted, so the size is ``params_total`` x bytes per element.
    """
    return _weights_in(spec, resolve_weight_dtype(spec, dtype))


def _weights_in(spec: ModelSpec, weight_dtype: str) -> int:
    # Separate from weights_bytes(): plan_memory has a parameter of that name.
    if spec.weights_bytes is not None and _same_storage(weight_dtype, spec.dtype):
        return spec.weights_bytes
    return math.ceil(spec.params_total * dtype_bytes(weight_dtype))


def kv_heads_per_gpu(spec: ModelSpec, tp: int = 1) -> int:
    """KV heads one GPU holds under tensor parallelism ``tp`` (MHA/GQA/MQA).

    ``ceil(kv_heads / tp)`` while ``tp <= kv_heads``; beyond that every GPU keeps one full
    head, replicated (a KV head cannot be split across GPUs).
    """
    _require_positive_int(tp, "tp")
    if tp > spec.num_kv_heads:
        return 1
    return math.ceil(spec.num_kv_heads / tp)


def stage_layers(spec: ModelSpec, pp: int = 1) -> int:
    """Layers one of ``pp`` pipeline stages holds: ``ceil(num_layers / pp)`` (the largest
    stage); ``pp`` above the layer count is an error."""
    _require_positive_int(pp, "pp")
    if pp > spec.num_layers:
        raise ValueError(
            f"pipeline-parallel size {pp} exceeds the model's {spec.num_layers} layers"
        )
    return math.ceil(spec.num_layers / pp)


def kv_bytes_per_token(
    spec: ModelSpec, kv_dtype: str | None = None, tp: int = 1, pp: int = 1
) -> int:
    """KV-cache bytes one token takes on ONE GPU of a ``tp``-way tensor-parallel group that
    holds one of ``pp`` pipeline stages (:func:`stage_layers` of the layers).

    MHA/GQA/MQA: ``2 (K and V) x layers x kv_heads_per_gpu x head_dim x bytes``.
    MLA: ``layers x (kv_lora_rank + qk_rope_head_dim) x bytes``, the same on every GPU.
    Every layer is counted, sliding-window layers included (module docstring).
    """
    _require_positive_int(tp, "tp")
    layers = stage_layers(spec, pp)
    element_bytes = dtype_bytes(resolve_kv_dtype(spec, kv_dtype))
    if spec.attention == "mla":
        # The validator guarantees both MLA fields for attention == "mla".
        assert spec.kv_lora_rank is not None and spec.qk_rope_head_dim is not None
        latent_width = spec.kv_lora_rank + spec.qk_rope_head_dim
        return math.ceil(layers * latent_width * element_bytes)
    heads = kv_heads_per_gpu(spec, tp)
    return math.ceil(2 * layers * heads * spec.head_dim * element_bytes)


def estimate_overhead_bytes(hidden_size: int | None, max_num_seqs: int = 1) -> int:
    """Non-weight, non-KV memory of one engine on one GPU (an estimate, documented here).

    ``OVERHEAD_BASE_BYTES`` (1 GiB: CUDA context, NCCL/cuBLAS workspaces, CUDA graphs)
    + ``8192 batched tokens x hidden_size x 16 B`` (activation peak of a profiled forward pass;
    1 GiB for a hidden size of 8192, 0.5 GiB for 4096)
    + ``max_num_seqs x 1 MiB`` (logits and sampler state per scheduled sequence).
    An unknown ``hidden_size`` counts as 8192. The figure does not shrink with ``tp``.
    """
    _require_positive_int(max_num_seqs, "max_num_seqs")
    hidden = OVERHEAD_UNKNOWN_HIDDEN_SIZE if hidden_size is None else hidden_size
    _require_positive_int(hidden, "hidden_size")
    activations = OVERHEAD_ACTIVATION_TOKENS * hidden * OVERHEAD_ACTIVATION_BYTES_PER_HIDDEN
    return OVERHEAD_BASE_BYTES + activations + max_num_seqs * OVERHEAD_PER_SEQUENCE_BYTES


@dataclass(frozen=True)
class MemoryPlan:
    """What one GPU of a ``tp``-GPU engine needs: weights + KV cache + overhead.

    ``pp`` is the number of pipeline stages (pods) the model is split into; this engine holds
    one: ``weights_bytes_stage`` of the ``weights_bytes_total`` (the whole model's), and the KV
    cache of that stage's layers. ``pp = 1``: the whole model.

    ``kv_tokens`` is the KV budget in tokens (shared by all sequences);
    ``kv_bytes_per_gpu = kv_tokens x kv_bytes_per_token_per_gpu``.
    ``overhead_bytes_per_gpu`` is :func:`estimate_overhead_bytes`.
    ``kv_known`` is False for a plan built from a weight size alone (model not in the catalog):
    then the KV figures are 0 and only the weights and overhead are planned.
    """

    model: str
    tp: int
    dtype: str
    kv_dtype: str
    weights_bytes_total: int
    weights_bytes_per_gpu: int
    kv_bytes_per_token_per_gpu: int
    kv_tokens: int
    kv_bytes_per_gpu: int
    overhead_bytes_per_gpu: int
    required_bytes_per_gpu: int
    max_num_seqs: int = 1
    kv_known: bool = True
    pp: int = 1
    weights_bytes_stage: int = 0

    def __post_init__(self) -> None:
        # 0 (the default) means the whole model: a plan made without stages.
        if self.weights_bytes_stage == 0:
            object.__setattr__(self, "weights_bytes_stage", self.weights_bytes_total)

    def to_dict(self) -> dict[str, str | int | bool]:
        """Plain JSON-ready dict of every field (byte counts as exact integers)."""
        return dataclasses.asdict(self)


def _assemble_plan(
    *,
    model: str,
    tp: int,
    dtype: str,
    kv_dtype: str,
    weights_total: int,
    kv_per_token: int,
    kv_tokens: int,
    overhead: int,
    max_num_seqs: int,
    kv_known: bool,
    pp: int = 1,
    weights_stage: int | None = None,
) -> MemoryPlan:
    stage = weights_total if weights_stage is None else weights_stage
    weights_per_gpu = math.ceil(stage / tp)
    kv_per_gpu = kv_per_token * kv_tokens
    return MemoryPlan(
        model=model,
        tp=tp,
        dtype=dtype,
        kv_dtype=kv_dtype,
        weights_bytes_total=weights_total,
        weights_bytes_per_gpu=weights_per_gpu,
        kv_bytes_per_token_per_gpu=kv_per_token,
        kv_tokens=kv_tokens,
        kv_bytes_per_gpu=kv_per_gpu,
        overhead_bytes_per_gpu=overhead,
        required_bytes_per_gpu=weights_per_gpu + kv_per_gpu + overhead,
        max_num_seqs=max_num_seqs,
        kv_known=kv_known,
        pp=pp,
        weights_bytes_stage=stage,
    )


def plan_memory(
    spec: ModelSpec,
    *,
    tp: int,
    kv_tokens: int,
    dtype: str | None = None,
    kv_dtype: str | None = None,
    weights_bytes: int | None = None,
    max_num_seqs: int = 1,
    pp: int = 1,
) -> MemoryPlan:
    """Per-GPU memory plan for ``spec`` on ``tp`` GPUs with a KV budget of ``kv_tokens``,
    for one of ``pp`` pipeline stages (module docstring).

    ``dtype``/``kv_dtype`` ``None`` or ``"auto"`` take the model's defaults (module
    docstring). ``weights_bytes`` overrides the total weight size (the ``weights-bytes``
    annotation). Raises ``ValueError`` for a non-positive ``tp``/``max_num_seqs``/``pp``, a
    ``pp`` above the layer count, a negative ``kv_tokens``, a non-positive ``weights_bytes``
    or an unknown dtype name.
    """
    _require_positive_int(tp, "tp")
    layers = stage_layers(spec, pp)
    _require_non_negative_int(kv_tokens, "kv_tokens")
    _require_positive_int(max_num_seqs, "max_num_seqs")
    weight_dtype = resolve_weight_dtype(spec, dtype)
    cache_dtype = resolve_kv_dtype(spec, kv_dtype, dtype)
    if weights_bytes is None:
        weights_total = _weights_in(spec, weight_dtype)
    else:
        _require_positive_int(weights_bytes, "weights_bytes")
        weights_total = weights_bytes
    stage = weights_total if pp == 1 else math.ceil(weights_total * layers / spec.num_layers)
    return _assemble_plan(
        model=spec.name,
        tp=tp,
        dtype=weight_dtype,
        kv_dtype=cache_dtype,
        weights_total=weights_total,
        kv_per_token=kv_bytes_per_token(spec, cache_dtype, tp, pp),
        kv_tokens=kv_tokens,
        overhead=estimate_overhead_bytes(spec.hidden_size, max_num_seqs),
        max_num_seqs=max_num_seqs,
        kv_known=True,
        pp=pp,
        weights_stage=stage,
    )


def plan_weights_only(
    model: str, *, tp: int, weights_bytes: int, max_num_seqs: int = 1, pp: int = 1
) -> MemoryPlan:
    """Plan for a model known only by its weight size (not in the catalog).

    Weights (``ceil(total / pp)`` for one of ``pp`` stages) and overhead (with an assumed
    hidden size, see :func:`estimate_overhead_bytes`) are planned; the KV cache is unknown, so
    ``kv_known`` is False and the KV figures are 0.
    """
    _require_positive_int(tp, "tp")
    _require_positive_int(weights_bytes, "weights_bytes")
    _require_positive_int(pp, "pp")
    return _assemble_plan(
        model=model,
        tp=tp,
        dtype=UNKNOWN_DTYPE,
        kv_dtype=UNKNOWN_DTYPE,
        weights_total=weights_bytes,
        kv_per_token=0,
        kv_tokens=0,
        overhead=estimate_overhead_bytes(None, max_num_seqs),
        max_num_seqs=max_num_seqs,
        kv_known=False,
        pp=pp,
        weights_stage=math.ceil(weights_bytes / pp),
    )


@dataclass(frozen=True)
class GpuFit:
    """Whether a :class:`MemoryPlan` fits one GPU, and by how much.

    ``usable_bytes_per_gpu = floor(gpu_memory_bytes x utilization)``;
    ``headroom_bytes = usable - required`` (negative when it does not fit);
    ``max_kv_tokens``: the largest KV budget that fits next to the weights and overhead
    (0 when those alone do not fit, or when the plan's KV size is unknown).
    """

    fits: bool
    usable_bytes_per_gpu: int
    headroom_bytes: int
    max_kv_tokens: int
    reason: str


def fit_on_gpu(
    plan: MemoryPlan, gpu_memory_bytes: int, gpu_memory_utilization: float = 0.9
) -> GpuFit:
    """Check ``plan`` against a GPU of ``gpu_memory_bytes`` of which the engine may use
    ``gpu_memory_utilization`` (0 < utilization <= 1, vLLM's default 0.9)."""
    _require_positive_int(gpu_memory_bytes, "gpu_memory_bytes")
    utilization = float(gpu_memory_utilization)
    if not (0.0 < utilization <= 1.0):
        raise ValueError(
            f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization!r}"
        )
    usable = math.floor(gpu_memory_bytes * utilization)
    headroom = usable - plan.required_bytes_per_gpu
    room_for_kv = usable - plan.weights_bytes_per_gpu - plan.overhead_bytes_per_gpu
    if room_for_kv < 0 or plan.kv_bytes_per_token_per_gpu == 0:
        max_kv_tokens = 0
    else:
        max_kv_tokens = room_for_kv // plan.kv_bytes_per_token_per_gpu
    fits = headroom >= 0
    return GpuFit(
        fits=fits,
        usable_bytes_per_gpu=usable,
        headroom_bytes=headroom,
        max_kv_tokens=max_kv_tokens,
        reason=_fit_reason(plan, fits, usable, room_for_kv, gpu_memory_bytes, utilization),
    )


def _fit_reason(
    plan: MemoryPlan,
    fits: bool,
    usable: int,
    room_for_kv: int,
    gpu_memory_bytes: int,
    utilization: float,
) -> str:
    if plan.kv_known:
        kv_part = f"KV {format_bytes(plan.kv_bytes_per_gpu)} for {plan.kv_tokens:,} tokens"
    else:
        kv_part = "KV unknown"
    stage = f" of 1/{plan.pp} of the model" if plan.pp > 1 else ""
    needs = (
        f"needs {format_bytes(plan.required_bytes_per_gpu)}/GPU "
        f"(weights {format_bytes(plan.weights_bytes_per_gpu)}{stage} + {kv_part} "
        f"+ overhead {format_bytes(plan.overhead_bytes_per_gpu)})"
    )
    budget = f"{format_bytes(usable)} usable ({utilization:.2f} × {format_bytes(gpu_memory_bytes)})"
    if fits:
        return f"{needs} <= {budget}"
    reason = f"{needs} > {budget}"
    if room_for_kv < 0:
        reason += "; weights and overhead alone do not fit"
    return reason
