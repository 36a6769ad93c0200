"""`kvsched topology`: show a node's GPU graph, its best GPU set and the set the device plugin is
predicted to hand out.

The topology comes from a saved ``nvidia-smi topo -m`` output (``--file``), a built-in preset
(``--preset``), or the assumed board for a GFD product label (``--product`` with ``--count``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from topology.deviceplugin import predict_allocation
from topology.model import NodeTopology, TopologyError
from topology.parse import parse_nvidia_smi_topo
from topology.presets import MAX_PRESET_GPUS, PRESETS, preset_for_product
from topology.select import GpuSetScore, best_gpu_set, fragmentation

EXIT_USAGE = 2


class _UsageError(Exception):
    """Bad input from the command line: reported on stderr with exit status 2."""


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "topology",
        help="show a node's GPU topology and the best GPU set for a pod",
        description="Parse `nvidia-smi topo -m` output (or use a preset), print the GPUs, "
        "their NUMA nodes and the link matrix, the best set for a pod of --gpus GPUs among "
        "the free ones, and the set the NVIDIA device plugin is predicted to hand out (it "
        "picks the GPUs; kvsched scores nodes by that set).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--file", metavar="PATH", help="saved `nvidia-smi topo -m` output ('-' for stdin)"
    )
    source.add_argument(
        "--preset", metavar="NAME", help=f"built-in topology: {', '.join(sorted(PRESETS))}"
    )
    source.add_argument(
        "--product",
        metavar="LABEL",
        help="GPU product (GFD nvidia.com/gpu.product label or short name such as H100-80); "
        "needs --count",
    )
    parser.add_argument("--count", type=int, metavar="N", help="GPUs on the node (--product)")
    parser.add_argument(
        "--free",
        metavar="LIST",
        help="free GPU indices, e.g. 0,1,4-7 (default: all); an empty string means none",
    )
    parser.add_argument("--gpus", type=int, metavar="K", help="GPUs the pod needs")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        topo, source = _load(args)
        free = _parse_free(args.free, topo.gpu_count)
        chosen = _choose(topo, free, args.gpus)
    except _UsageError as error:
        print(f"kvsched topology: {error}", file=sys.stderr)
        return EXIT_USAGE
    before = fragmentation(topo, free)
    after = (
        fragmentation(topo, [gpu for gpu in free if gpu not in chosen.gpus])
        if chosen is not None
        else None
    )
    if args.json:
        print(json.dumps(_as_json(topo, source, free, args.gpus, chosen, before, after), indent=2))
    else:
        print(_as_text(topo, source, free, args.gpus, chosen, before, after))
    return 0


def _load(args: argparse.Namespace) -> tuple[NodeTopology, str]:
    if args.count is not None and args.product is None:
        raise _UsageError("--count only goes with --product")
    if args.file is not None:
        try:
            if args.file == "-":
                text = sys.stdin.read()
            else:
                with open(args.file, encoding="utf-8", errors="replace") as handle:
                    text = handle.read()
        except OSError as error:
            raise _UsageError(f"cannot read {args.file}: {error.strerror or error}") from None
        try:
            return parse_nvidia_smi_topo(text), f"file {args.file}"
        except TopologyError as error:
            raise _UsageError(f"{args.file}: {error}") from None
    if args.preset is not None:
        preset = PRESETS.get(args.preset)
        if preset is None:
            raise _UsageError(
                f"unknown preset {args.preset!r}; known: {', '.join(sorted(PRESETS))}"
            )
        return preset, f"preset {args.preset}"
    if args.count is None:
        raise _UsageError("--product needs --count N")
    if not 1 <= args.count <= MAX_PRESET_GPUS:
        raise _UsageError(f"--count must be between 1 and {MAX_PRESET_GPUS}, got {args.count}")
    topo = preset_for_product(args.product, args.count)
    if topo is None:
        raise _UsageError(f"unknown GPU product {args.product!r}")
    return topo, f"product {args.product} x{args.count} (assumed board)"


def _parse_free(text: str | None, gpu_count: int) -> list[int]:
    if text is None:
        return list(range(gpu_count))
    free: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        low, dash, high = part.partition("-")
        try:
            first = int(low)
            last = int(high) if dash else first
        except ValueError:
            raise _UsageError(
                f"--free: {part!r} is not a GPU index or range (use e.g. 0,1,4-7)"
            ) from None
        if first > last:
            raise _UsageError(f"--free: empty range {part!r}")
        for gpu in range(first, last + 1):
            if not 0 <= gpu < gpu_count:
                raise _UsageError(f"--free: GPU {gpu} does not exist (node has {gpu_count})")
            free.add(gpu)
    return sorted(free)


def _choose(topo: NodeTopology, free: list[int], k: int | None) -> GpuSetScore | None:
    if k is None:
        return None
    if k < 1:
        raise _UsageError(f"--gpus must be at least 1, got {k}")
    chosen = best_gpu_set(topo, free, k)
    if chosen is None:
        raise _UsageError(f"--gpus {k}: only {len(free)} GPU(s) free, cannot place {k}")
    return chosen


def _as_json(
    topo: NodeTopology,
    source: str,
    free: list[int],
    k: int | None,
    chosen: GpuSetScore | None,
    before: float,
    after: float | None,
) -> dict[str, Any]:
    return {
        "source": source,
        "gpus": [
            {
                "index": gpu.index,
                "numaNode": gpu.numa_node,
                "uuid": gpu.uuid,
                "product": gpu.product,
                "memoryBytes": gpu.memory_bytes,
                "cpuAffinity": gpu.cpu_affinity,
            }
            for gpu in topo.gpus
        ],
        "links": topo.codes(),
        "nics": [
            {"name": nic.name, "links": [link.code for link in nic.links]} for nic in topo.nics
        ],
        "nvswitch": topo.is_nvswitch,
        "free": free,
        "k": k,
        "chosen": _set_json(chosen),
        # What the node's NVIDIA device plugin is predicted to hand out (it, not kvsched,
        # picks the GPUs): the set kvsched scores a node by.
        "predicted": None
        if chosen is None or k is None
        else _set_json(predict_allocation(topo, frozenset(free), k)),
        "fragmentation_before": before,
        "fragmentation_after": after,
    }


def _set_json(chosen: GpuSetScore | None) -> dict[str, Any] | None:
    if chosen is None:
        return None
    return {
        "gpus": list(chosen.gpus),
        "tier": chosen.tier.name,
        "weakest": chosen.weakest.code if chosen.weakest is not None else None,
        "quality": chosen.quality,
        "numaNodes": chosen.numa_nodes,
        "description": chosen.description,
    }


def _as_text(
    topo: NodeTopology,
    source: str,
    free: list[int],
    k: int | None,
    chosen: GpuSetScore | None,
    before: float,
    after: float | None,
) -> str:
    lines = [
        f"{topo.gpu_count} GPU(s) from {source}"
        + (", NVSwitch (all pairs equal NVLink)" if topo.is_nvswitch else "")
    ]
    lines.append("")
    lines.append(f"{'GPU':<5}{'NUMA':<6}{'product':<18}{'CPU affinity':<20}uuid")
    for gpu in topo.gpus:
        lines.append(
            f"{gpu.index:<5}{_dash(gpu.numa_node):<6}{_dash(gpu.product):<18}"
            f"{_dash(gpu.cpu_affinity):<20}{_dash(gpu.uuid)}"
        )
    lines.append("")
    labels = [f"GPU{gpu.index}" for gpu in topo.gpus]
    width = max([6, *(len(label) + 2 for label in labels)])
    margin = max([width, *(len(nic.name) + 2 for nic in topo.nics)])
    lines.append(" " * margin + "".join(f"{label:<{width}}" for label in labels).rstrip())
    for label, row in zip(labels, topo.codes(), strict=True):
        lines.append(f"{label:<{margin}}" + "".join(f"{code:<{width}}" for code in row).rstrip())
    for nic in topo.nics:
        codes = "".join(f"{link.code:<{width}}" for link in nic.links).rstrip()
        lines.append(f"{nic.name:<{margin}}{codes}")
    lines.append("")
    lines.append(f"free GPUs: {','.join(map(str, free)) or 'none'}")
    lines.append(f"fragmentation of free GPUs: {before:.3f}")
    if chosen is not None:
        lines.append(f"best set for {k} GPU(s): {chosen.description}")
        weakest = chosen.weakest.code if chosen.weakest is not None else "-"
        lines.append(
            f"  tier {chosen.tier.name}, weakest link {weakest}, quality {chosen.quality:.4f}"
        )
        lines.append(f"  fragmentation left after placing it: {after:.3f}")
        predicted = predict_allocation(topo, frozenset(free), len(chosen.gpus))
        if predicted is not None:
            lines.append(
                f"the device plugin is predicted to hand out: {predicted.description} "
                "(it picks the GPUs, not kvsched; kvsched scores nodes by this set)"
            )
    return "\n".join(lines)


def _dash(value: object) -> str:
    return "-" if value is None else str(value)
