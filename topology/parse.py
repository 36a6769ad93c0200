"""Parse the matrix ``nvidia-smi topo -m`` prints into a :class:`NodeTopology`.

The output varies across drivers and the ways people capture it, and all of these are read:

* a header line ``GPU0 GPU1 ... [NIC0 ... | mlx5_0 ...] [CPU Affinity] [NUMA Affinity]
  [GPU NUMA ID]`` (older drivers name NIC columns after the device, newer ones ``NIC#`` with a
  ``NIC Legend:`` below the matrix);
* one row per GPU and per NIC; NIC rows have no affinity values;
* tabs or runs of spaces between cells, a double tab where nvidia-smi pads a column, blank
  affinity cells, ANSI underline escapes around the header, Windows line endings, text before
  the header (e.g. a ``collect_env`` dump) and the legend after the matrix.

Cells never contain blanks, so a row is read as whitespace-separated tokens; only the header
has multi-word names, which are matched against the headings nvidia-smi uses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from topology.model import GpuInfo, Link, NicInfo, NodeTopology, TopologyError

__all__ = ["parse_nvidia_smi_topo"]

# CSI sequences (colours, underline) that nvidia-smi writes around the header even when its
# output is not a terminal.
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
_GPU_LABEL = re.compile(r"^GPU(\d+)$", re.IGNORECASE)
_LINK_CODE = re.compile(r"^(?:X|NV\d+|PIX|PXB|PHB|NODE|SYS|SOC)$", re.IGNORECASE)
_NIC_LEGEND_ENTRY = re.compile(r"^\s*(?P<column>\S+)\s*:\s*(?P<device>\S+)\s*$")
_INTEGER = re.compile(r"^\d+$")

_CPU_AFFINITY = "CPU Affinity"
_NUMA_AFFINITY = "NUMA Affinity"
_GPU_NUMA_ID = "GPU NUMA ID"
# Longest first, so "GPU NUMA ID" is tried before any two-word prefix of it.
_KNOWN_HEADINGS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (_GPU_NUMA_ID, ("GPU", "NUMA", "ID")),
    (_CPU_AFFINITY, ("CPU", "AFFINITY")),
    (_NUMA_AFFINITY, ("NUMA", "AFFINITY")),
)
_MISSING_VALUES = frozenset({"", "N/A", "NA", "-"})


@dataclass(frozen=True, slots=True)
class _Header:
    gpu_count: int
    nic_columns: tuple[str, ...]
    # Per-GPU value columns after the link columns (CPU Affinity, NUMA Affinity, ...).
    info_columns: tuple[str, ...]

    @property
    def link_columns(self) -> int:
        return self.gpu_count + len(self.nic_columns)


@dataclass(slots=True)
class _GpuRow:
    links: list[Link]
    nic_links: list[Link]
    info: dict[str, str]


def parse_nvidia_smi_topo(text: str) -> NodeTopology:
    """Read ``nvidia-smi topo -m`` output; raise :class:`TopologyError` if it is not one.

    GPU NUMA nodes come from ``NUMA Affinity``, or from ``GPU NUMA ID`` where the former is
    ``N/A``; ``CPU Affinity`` is kept as text. NICs keep their device name from the NIC legend
    (``NIC0: mlx5_0``), else their column name.
    """
    lines = [_ANSI_ESCAPE.sub("", line).rstrip() for line in text.splitlines()]
    header_at = _find_header(lines)
    header = _parse_header(lines[header_at], header_at + 1)
    gpu_rows, matrix_end = _parse_rows(lines, header_at + 1, header)
    nic_names = _parse_nic_legend(lines[matrix_end:])

    gpus = tuple(
        GpuInfo(
            index=index,
            numa_node=_numa_node(row.info),
            cpu_affinity=_value(row.info.get(_CPU_AFFINITY)),
        )
        for index, row in enumerate(gpu_rows)
    )
    nics = tuple(
        NicInfo(
            name=nic_names.get(column.upper(), column),
            links=tuple(row.nic_links[position] for row in gpu_rows),
        )
        for position, column in enumerate(header.nic_columns)
    )
    links = tuple(tuple(row.links) for row in gpu_rows)
    return NodeTopology(gpus, links, nics)


def _find_header(lines: list[str]) -> int:
    for number, line in enumerate(lines):
        tokens = line.split()
        if not tokens or tokens[0].upper() != "GPU0":
            continue
        # A GPU0 *row* starts at the margin and is followed by a link code ("X"); the header
        # is indented (its first cell is empty) or continues with column names.
        indented = line[:1].isspace()
        if indented or len(tokens) == 1 or not _LINK_CODE.match(tokens[1]):
            return number
    raise TopologyError(
        "no GPU header line found: expected the output of `nvidia-smi topo -m`, whose matrix "
        "starts with a line of column names 'GPU0 GPU1 ... CPU Affinity ...'"
    )


def _parse_header(line: str, line_number: int) -> _Header:
    names = _merge_headings(line.split())
    gpu_count = 0
    while gpu_count < len(names):
        match = _GPU_LABEL.match(names[gpu_count])
        if match is None:
            break
        if int(match[1]) != gpu_count:
            raise TopologyError(
                f"line {line_number}: GPU columns must be GPU0, GPU1, ... in order; "
                f"column {gpu_count + 1} is {names[gpu_count]}"
            )
        gpu_count += 1
    nic_columns: list[str] = []
    info_columns: list[str] = []
    known = {heading for heading, _ in _KNOWN_HEADINGS}
    for name in names[gpu_count:]:
        if _GPU_LABEL.match(name):
            raise TopologyError(f"line {line_number}: GPU column {name} after non-GPU columns")
        # Device columns come before the per-GPU value columns; anything unknown after the
        # first value column is taken as another value column (newer drivers add some).
        if name in known or info_columns:
            info_columns.append(name)
        else:
            nic_columns.append(name)
    if len({column.upper() for column in nic_columns}) != len(nic_columns):
        raise TopologyError(f"line {line_number}: duplicate NIC column names {nic_columns}")
    return _Header(gpu_count, tuple(nic_columns), tuple(info_columns))


def _merge_headings(tokens: list[str]) -> list[str]:
    """Join the words of multi-word headings ("CPU", "Affinity" -> "CPU Affinity")."""
    names: list[str] = []
    position = 0
    while position < len(tokens):
        for heading, words in _KNOWN_HEADINGS:
            candidate = tuple(token.upper() for token in tokens[position : position + len(words)])
            if candidate == words:
                names.append(heading)
                position += len(words)
                break
        else:
            names.append(tokens[position])
            position += 1
    return names


def _parse_rows(lines: list[str], start: int, header: _Header) -> tuple[list[_GpuRow], int]:
    """Read GPU and NIC rows from ``start``; return GPU rows in index order and where they end."""
    gpu_rows: dict[int, _GpuRow] = {}
    nic_labels = {column.upper() for column in header.nic_columns}
    seen_nics: set[str] = set()
    number = start
    while number < len(lines):
        line = lines[number]
        tokens = line.split()
        if not tokens:
            if gpu_rows or seen_nics:
                break  # the blank line between the matrix and the legend
            number += 1
            continue
        if tokens[0].rstrip(":").upper() == "LEGEND":
            break
        label = tokens[0]
        cells = tokens[1:]
        where = f"line {number + 1} ({label})"
        if len(cells) < header.link_columns:
            raise TopologyError(
                f"{where}: {len(cells)} cells but the header has {header.link_columns} device "
                "columns (ragged row)"
            )
        links = [_parse_code(code, where) for code in cells[: header.link_columns]]
        values = cells[header.link_columns :]
        if len(values) > len(header.info_columns):
            raise TopologyError(
                f"{where}: {len(values)} values after the device columns but the header has "
                f"{len(header.info_columns)} ({', '.join(header.info_columns) or 'none'})"
            )
        gpu_label = _GPU_LABEL.match(label)
        if gpu_label is not None:
            index = int(gpu_label[1])
            if index >= header.gpu_count:
                raise TopologyError(f"{where}: the header has only {header.gpu_count} GPU columns")
            if index in gpu_rows:
                raise TopologyError(f"{where}: duplicate row")
            gpu_rows[index] = _GpuRow(
                links=links[: header.gpu_count],
                nic_links=links[header.gpu_count :],
                info=_align_values(header.info_columns, values),
            )
        elif label.upper() in nic_labels:
            if label.upper() in seen_nics:
                raise TopologyError(f"{where}: duplicate row")
            seen_nics.add(label.upper())
        else:
            raise TopologyError(
                f"{where}: unexpected row; rows must be GPU0..GPU{header.gpu_count - 1}"
                + (f" or {', '.join(header.nic_columns)}" if header.nic_columns else "")
            )
        number += 1
    missing = [f"GPU{index}" for index in range(header.gpu_count) if index not in gpu_rows]
    if missing:
        raise TopologyError(f"topology matrix is missing rows for {', '.join(missing)}")
    return [gpu_rows[index] for index in range(header.gpu_count)], number


def _align_values(columns: tuple[str, ...], values: list[str]) -> dict[str, str]:
    """Match a GPU row's trailing values to the value columns.

    Blank cells vanish when splitting on whitespace. nvidia-smi leaves a value blank at the
    front of the group (CPU Affinity, e.g. for a GPU whose NUMA node has no CPUs), never the
    NUMA columns at the end, so short rows are aligned to the right.
    """
    offset = len(columns) - len(values)
    return {columns[offset + position]: value for position, value in enumerate(values)}


def _parse_code(code: str, where: str) -> Link:
    try:
        return Link.parse(code)
    except TopologyError as error:
        raise TopologyError(f"{where}: {error}") from None


def _value(raw: str | None) -> str | None:
    if raw is None or raw.upper() in _MISSING_VALUES:
        return None
    return raw


def _numa_node(info: dict[str, str]) -> int | None:
    for column in (_NUMA_AFFINITY, _GPU_NUMA_ID):
        raw = _value(info.get(column))
        if raw is not None and _INTEGER.match(raw):
            return int(raw)
    return None


def _parse_nic_legend(lines: list[str]) -> dict[str, str]:
    """``NIC0: mlx5_0`` entries after a ``NIC Legend:`` line, keyed by upper-case column name."""
    names: dict[str, str] = {}
    in_legend = False
    for line in lines:
        stripped = line.strip()
        if stripped.upper().startswith("NIC LEGEND"):
            in_legend = True
            continue
        if not in_legend or not stripped:
            continue
        match = _NIC_LEGEND_ENTRY.match(stripped)
        if match is None:
            break
        names[match["column"].upper()] = match["device"]
    return names
