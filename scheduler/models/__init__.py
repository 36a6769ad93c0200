"""Model catalog and KV-cache memory planning (stdlib + pydantic + PyYAML only).

* :mod:`.dtypes`: dtype names -> bytes per element.
* :mod:`.spec`: :class:`ModelSpec`, the architecture numbers that decide GPU memory.
* :mod:`.hf_config`: Hugging Face ``config.json`` -> :class:`ModelSpec` (parameter estimate).
* :mod:`.catalog`: :class:`Catalog` (built-in ``data/catalog.yaml``, YAML, ConfigMap, paths).
* :mod:`.kvplan`: weights / KV bytes, :func:`plan_memory`, :func:`fit_on_gpu`.
"""

from scheduler.models.catalog import Catalog, spec_from_hf_config
from scheduler.models.dtypes import DTYPE_BYTES, dtype_bytes, normalize_dtype
from scheduler.models.kvplan import (
    GpuFit,
    MemoryPlan,
    fit_on_gpu,
    format_bytes,
    kv_bytes_per_token,
    plan_memory,
    plan_weights_only,
    weights_bytes,
)
from scheduler.models.spec import ModelSpec

__all__ = [
    "DTYPE_BYTES",
    "Catalog",
    "GpuFit",
    "MemoryPlan",
    "ModelSpec",
    "dtype_bytes",
    "fit_on_gpu",
    "format_bytes",
    "kv_bytes_per_token",
    "normalize_dtype",
    "plan_memory",
    "plan_weights_only",
    "spec_from_hf_config",
    "weights_bytes",
]
