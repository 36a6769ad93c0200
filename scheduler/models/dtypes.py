"""Element types of weights and KV caches, and how many bytes one element takes.

Canonical names are the short ones vLLM and most model cards use (``bf16``, ``fp8``,
``int4``...). :func:`normalize_dtype` maps the spellings found in ``config.json``
(``torch_dtype: bfloat16``), in torch (``torch.float8_e4m3fn``) and on the vLLM command line
(``--kv-cache-dtype fp8_e4m3``) onto them.

Bytes per element are floats because sub-byte formats exist. The two micro-scaling formats
carry their block scale inside the format, so their figure includes it:

* ``mxfp4`` (OCP MX): 4-bit E2M1 values plus one 8-bit E8M0 scale per 32 values
  -> 0.5 + 1/32 = 0.53125 bytes per element.
* ``nvfp4``: 4-bit E2M1 values plus one 8-bit FP8 scale per 16 values
  -> 0.5 + 1/16 = 0.5625 bytes per element (the one FP32 tensor scale is negligible).

``fp4`` and ``int4`` are the bare 4-bit payload (0.5); group-wise scales of AWQ/GPTQ
checkpoints depend on the group size and are added by the parameter estimator in
:mod:`scheduler.models.catalog`, not here.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

#: The dtype name that means "whatever the model defaults to". It is not a dtype: callers
#: resolve it against a :class:`~scheduler.models.spec.ModelSpec` (see ``kvplan``).
AUTO: Final = "auto"

DTYPE_BYTES: Mapping[str, float] = MappingProxyType(
    {
        "fp32": 4.0,
        "bf16": 2.0,
        "fp16": 2.0,
        "fp8": 1.0,
        "fp8_e4m3": 1.0,
        "fp8_e5m2": 1.0,
        "int8": 1.0,
        "int4": 0.5,
        "fp4": 0.5,
        "mxfp4": 0.5 + 1 / 32,
        "nvfp4": 0.5 + 1 / 16,
    }
)

# Other spellings -> canonical name. Keys are lower case; torch's "torch." prefix and
# surrounding whitespace are removed before the lookup.
_SYNONYMS: Mapping[str, str] = MappingProxyType(
    {
        "float32": "fp32",
        "float": "fp32",
        "f32": "fp32",
        "bfloat16": "bf16",
        "bf16": "bf16",
        "float16": "fp16",
        "half": "fp16",
        "f16": "fp16",
        "float8": "fp8",
        "fp8_e4m3fn": "fp8_e4m3",
        "float8_e4m3": "fp8_e4m3",
        "float8_e4m3fn": "fp8_e4m3",
        "e4m3": "fp8_e4m3",
        "float8_e5m2": "fp8_e5m2",
        "e5m2": "fp8_e5m2",
        "uint8": "int8",
        "uint4": "int4",
        "float4": "fp4",
        "fp4_e2m1": "fp4",
        "e2m1": "fp4",
        "mx_fp4": "mxfp4",
        "nv_fp4": "nvfp4",
    }
)

#: 16-bit floating types: the dtypes a model computes (and by default caches KV) in.
HALF_PRECISION_DTYPES: Final = frozenset({"bf16", "fp16"})

#: Storage-only types: weights in these are dequantized on the fly, so activations and
#: the KV cache of such a model stay in 16 bit unless asked otherwise.
QUANTIZED_DTYPES: Final = frozenset(
    {"fp8", "fp8_e4m3", "fp8_e5m2", "int8", "int4", "fp4", "mxfp4", "nvfp4"}
)


def normalize_dtype(name: str) -> str:
    """Return the canonical name of ``name``, or ``"auto"`` for ``"auto"``.

    ``"auto"`` means "the model's default" (vLLM's ``--dtype auto`` /
    ``--kv-cache-dtype auto``); this function cannot resolve it because it does not know
    the model, so it returns ``"auto"`` and the caller resolves it.

    Raises ``ValueError`` listing the valid names for anything unknown.
    """
    key = name.strip().lower()
    key = key.removeprefix("torch.")
    if key == AUTO:
        return AUTO
    if key in DTYPE_BYTES:
        return key
    canonical = _SYNONYMS.get(key)
    if canonical is not None:
        return canonical
    valid = ", ".join([*DTYPE_BYTES, AUTO])
    raise ValueError(f"unknown dtype {name!r}: valid names are {valid} (and e.g. bfloat16, half)")


def dtype_bytes(name: str) -> float:
    """Bytes per element of dtype ``name`` (any spelling :func:`normalize_dtype` accepts).

    ``"auto"`` has no size of its own and raises ``ValueError``: resolve it first.
    """
    canonical = normalize_dtype(name)
    if canonical == AUTO:
        raise ValueError('dtype "auto" has no size: resolve it against the model first')
    return DTYPE_BYTES[canonical]
