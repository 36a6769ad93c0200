"""``kvsched plan``: per-GPU memory plan of a model, and which common GPUs it fits.

Examples::

    kvsched plan --model meta-llama/Llama-3.1-70B-Instruct --gpus 8
    kvsched plan --model llama-3.1-8b --gpus 1 --max-model-len 32768 --max-num-seqs 16
    kvsched plan --model my-org/private-13b --gpus 2 --weights-bytes 26GB --json

The KV budget is ``--max-model-len x --max-num-seqs`` tokens (the model's context length and
one sequence by default) or ``--kv-cache-tokens``, as in the ``kvsched.io/`` annotations.
Errors (unknown model, bad numbers, unreadable ``--catalog``) print one line on stderr and
exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from scheduler.models.catalog import Catalog
from scheduler.models.dtypes import normalize_dtype
from scheduler.models.kvplan import (
    GpuFit,
    MemoryPlan,
    fit_on_gpu,
    format_bytes,
    plan_memory,
    plan_weights_only,
)
from scheduler.models.spec import ModelSpec
from scheduler.models.units import parse_bytes
from topology.hardware import COMMON_GPUS, GpuProduct

EXIT_USAGE = 2
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9


class PlanError(Exception):
    """A problem with the user's input, reported as one line and exit status 2."""


# ---------------------------------------------------------------------- argument types


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def _utilization(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} must be in (0, 1]")
    return value


def _dtype(text: str) -> str:
    try:
        return normalize_dtype(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _byte_size(text: str) -> int:
    try:
        return parse_bytes(text, "weights size")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``plan`` subcommand."""
    parser = subparsers.add_parser(
        "plan",
        help="per-GPU memory plan (weights + KV cache) of a model and where it fits",
        description=(
            "Plan the per-GPU memory of serving a model with tensor parallelism: weights, "
            "KV cache for a token budget, engine overhead; then check it against common GPUs."
        ),
    )
    parser.add_argument("--model", required=True, help="model id or alias (case-insensitive)")
    parser.add_argument(
        "--gpus", type=_positive_int, default=1, help="GPUs per engine = tensor parallel size"
    )
    parser.add_argument(
        "--max-model-len", type=_positive_int, help="context length (default: the model's)"
    )
    parser.add_argument(
        "--max-num-seqs", type=_positive_int, help="sequences at full length (default 1)"
    )
    parser.add_argument(
        "--kv-cache-tokens",
        type=_non_negative_int,
        help="KV budget in tokens, instead of --max-model-len x --max-num-seqs "
        "(--max-model-len then only sets the length of the 'max seqs' column)",
    )
    parser.add_argument("--dtype", type=_dtype, help="weight dtype (default: the model's)")
    parser.add_argument(
        "--kv-cache-dtype", type=_dtype, help="KV cache dtype (default: auto, from the model)"
    )
    parser.add_argument(
        "--gpu-memory-utilization",
        type=_utilization,
        default=DEFAULT_GPU_MEMORY_UTILIZATION,
        help="fraction of each GPU the engine may use (default 0.9)",
    )
    parser.add_argument(
        "--weights-bytes",
        type=_byte_size,
        help="total weight size, e.g. 141GB or 60.8GiB (overrides the catalog)",
    )
    parser.add_argument(
        "--catalog",
        action="append",
        default=[],
        metavar="PATH",
        help="extra catalog: YAML file, config.json or folder (repeatable; later wins)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


# ---------------------------------------------------------------------- planning


def _load_catalog(paths: Sequence[str]) -> Catalog:
    catalog = Catalog.builtin()
    for path in paths:
        try:
            catalog = catalog.merged(Catalog.from_path(Path(path)))
        except ValueError as exc:
            raise PlanError(f"--catalog {path}: {exc}") from None
    return catalog


def _gpu_label(product: GpuProduct) -> str:
    return product.aliases[0] if product.aliases else product.name


def _plan(args: argparse.Namespace, spec: ModelSpec | None, notes: list[str]) -> dict[str, Any]:
    """Everything the command reports, as one JSON-ready dict."""
    # The same rules as the kvsched.io/ annotations (scheduler.core.demand), so that a plan
    # made here is the one the scheduler makes for the pod.
    if args.kv_cache_tokens is not None and args.max_num_seqs is not None:
        raise PlanError(
            "give the KV budget either as --kv-cache-tokens or as "
            "--max-model-len x --max-num-seqs, not both"
        )
    if (
        args.kv_cache_tokens is not None
        and args.max_model_len is not None
        and args.kv_cache_tokens < args.max_model_len
    ):
        raise PlanError(
            f"--kv-cache-tokens {args.kv_cache_tokens:,} is smaller than --max-model-len "
            f"{args.max_model_len:,}: the engine could not hold one sequence at full length"
        )
    max_num_seqs = args.max_num_seqs or 1
    length: int | None = None
    plan: MemoryPlan
    try:
        if spec is None:
            notes.append(
                f"{args.model} is not in the catalog: weights planned from --weights-bytes, "
                "KV cache unknown (add the model to a --catalog to plan it)"
            )
            plan = plan_weights_only(
                args.model,
                tp=args.gpus,
                weights_bytes=args.weights_bytes,
                max_num_seqs=max_num_seqs,
            )
        else:
            length = args.max_model_len or spec.max_model_len
            if length > spec.max_model_len:
                raise PlanError(
                    f"--max-model-len {length:,} exceeds {spec.name}'s context length "
                    f"{spec.max_model_len:,}"
                )
            if args.kv_cache_tokens is not None:
                kv_tokens = args.kv_cache_tokens
            else:
                kv_tokens = length * max_num_seqs
            plan = plan_memory(
                spec,
                tp=args.gpus,
                kv_tokens=kv_tokens,
                dtype=args.dtype,
                kv_dtype=args.kv_cache_dtype,
                weights_bytes=args.weights_bytes,
                max_num_seqs=max_num_seqs,
            )
    except ValueError as exc:
        raise PlanError(str(exc)) from None
    if spec is not None and spec.sliding_window_layers:
        notes.append(
            f"{spec.sliding_window_layers} of {spec.num_layers} layers use a "
            f"{spec.sliding_window:,}-token sliding window; KV is counted as if all layers "
            "were full attention (an upper bound)"
        )
    gpus = [_gpu_row(plan, product, args.gpu_memory_utilization, length) for product in COMMON_GPUS]
    return {
        "model": plan.model,
        "in_catalog": spec is not None,
        "tp": plan.tp,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "max_model_len": length,
        "max_num_seqs": max_num_seqs,
        "plan": plan.to_dict(),
        "spec": spec.model_dump(mode="json") if spec is not None else None,
        "gpus": gpus,
        "notes": notes,
    }


def _gpu_row(
    plan: MemoryPlan, product: GpuProduct, utilization: float, length: int | None
) -> dict[str, Any]:
    fit: GpuFit = fit_on_gpu(plan, product.memory_bytes, utilization)
    return {
        "gpu": _gpu_label(product),
        "product": product.name,
        "memory_bytes": product.memory_bytes,
        "fits": fit.fits,
        "usable_bytes_per_gpu": fit.usable_bytes_per_gpu,
        "headroom_bytes": fit.headroom_bytes,
        "max_kv_tokens": fit.max_kv_tokens if plan.kv_known else None,
        "max_num_seqs_at_max_model_len": (
            fit.max_kv_tokens // length if plan.kv_known and length else None
        ),
        "reason": fit.reason,
    }


# ---------------------------------------------------------------------- output


def _render_text(result: dict[str, Any], spec: ModelSpec | None) -> str:
    plan = result["plan"]
    tp = result["tp"]
    lines = [
        f"Memory plan for {result['model']} on {tp} GPU{'s' if tp > 1 else ''} (tensor parallel)"
    ]
    if spec is not None:
        if spec.attention == "mla":
            geometry = f"MLA latent {spec.kv_lora_rank}+{spec.qk_rope_head_dim}"
        else:
            geometry = f"{spec.num_kv_heads} KV heads × {spec.head_dim}"
        lines.append(
            f"  model       {spec.attention}, {spec.num_layers} layers, {geometry}, "
            f"{spec.params_total / 1e9:.2f}B params, context {spec.max_model_len:,}"
        )
    weights_dtype = plan["dtype"] if plan["kv_known"] else "from --weights-bytes"
    lines.append(
        f"  weights     {format_bytes(plan['weights_bytes_total'])} total, "
        f"{format_bytes(plan['weights_bytes_per_gpu'])} per GPU ({weights_dtype})"
    )
    if plan["kv_known"]:
        budget = f"{plan['kv_tokens']:,} tokens"
        if result["max_model_len"] is not None and plan["kv_tokens"] == (
            result["max_model_len"] * result["max_num_seqs"]
        ):
            budget += f" ({result['max_model_len']:,} × {result['max_num_seqs']} seqs)"
        lines += [
            f"  KV cache    {plan['kv_bytes_per_token_per_gpu']:,} B per token per GPU "
            f"({plan['kv_dtype']})",
            f"  KV budget   {budget} = {format_bytes(plan['kv_bytes_per_gpu'])} per GPU",
        ]
    else:
        lines.append("  KV cache    unknown (model not in the catalog)")
    lines += [
        f"  overhead    {format_bytes(plan['overhead_bytes_per_gpu'])} per GPU "
        "(estimate: CUDA context, graphs, activations)",
        f"  required    {format_bytes(plan['required_bytes_per_gpu'])} per GPU",
        "",
    ]
    lines += _render_table(result)
    lines += [f"note: {note}" for note in result["notes"]]
    return "\n".join(lines)


def _render_table(result: dict[str, Any]) -> list[str]:
    length = result["max_model_len"]
    utilization = result["gpu_memory_utilization"]
    header = [
        "GPU",
        "memory",
        f"usable@{utilization:.2f}",
        "fits",
        "headroom",
        "max KV tokens",
        f"max seqs @{length:,}" if length else "max seqs",
    ]
    rows = [header]
    for gpu in result["gpus"]:
        max_tokens = gpu["max_kv_tokens"]
        max_seqs = gpu["max_num_seqs_at_max_model_len"]
        rows.append(
            [
                gpu["gpu"],
                format_bytes(gpu["memory_bytes"]),
                format_bytes(gpu["usable_bytes_per_gpu"]),
                "yes" if gpu["fits"] else "no",
                format_bytes(gpu["headroom_bytes"]),
                "-" if max_tokens is None else f"{max_tokens:,}",
                "-" if max_seqs is None else f"{max_seqs:,}",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    aligners: list[Callable[[str, int], str]] = [str.ljust, *([str.rjust] * (len(header) - 1))]
    return [
        "  ".join(
            align(cell, width) for align, cell, width in zip(aligners, row, widths, strict=True)
        ).rstrip()
        for row in rows
    ]


def run(args: argparse.Namespace) -> int:
    """Run ``kvsched plan``; returns the exit status (0, or 2 for bad input)."""
    try:
        catalog = _load_catalog(args.catalog)
        spec = catalog.get(args.model)
        if spec is None and args.weights_bytes is None:
            raise PlanError(
                f"unknown model {args.model}: add it to the catalog (--catalog) or pass "
                "--weights-bytes to plan its weights"
            )
        result = _plan(args, spec, notes=[])
    except PlanError as exc:
        print(f"kvsched plan: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(_render_text(result, spec))
    return 0
