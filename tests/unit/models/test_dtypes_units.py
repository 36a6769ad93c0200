"""Dtype names and sizes; human-friendly byte and count parsing."""

from __future__ import annotations

import pytest

from scheduler.models.dtypes import DTYPE_BYTES, dtype_bytes, normalize_dtype
from scheduler.models.units import format_bytes, parse_bytes, parse_count


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("bfloat16", "bf16"),
        ("BF16", "bf16"),
        ("torch.bfloat16", "bf16"),
        ("float16", "fp16"),
        ("half", "fp16"),
        ("float32", "fp32"),
        ("fp8", "fp8"),
        ("fp8_e4m3", "fp8_e4m3"),
        ("float8_e4m3fn", "fp8_e4m3"),
        ("fp8_e5m2", "fp8_e5m2"),
        ("int8", "int8"),
        ("int4", "int4"),
        ("mxfp4", "mxfp4"),
        ("nvfp4", "nvfp4"),
        (" auto ", "auto"),
        ("AUTO", "auto"),
    ],
)
def test_normalize_dtype_accepts_common_spellings(spelling: str, canonical: str) -> None:
    assert normalize_dtype(spelling) == canonical


def test_normalize_dtype_rejects_unknown_names_listing_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown dtype 'fp12'") as excinfo:
        normalize_dtype("fp12")
    for valid in ("bf16", "fp16", "fp8", "int4", "auto"):
        assert valid in str(excinfo.value)


def test_bytes_per_element() -> None:
    assert dtype_bytes("bfloat16") == 2
    assert dtype_bytes("fp32") == 4
    assert dtype_bytes("fp8_e5m2") == 1
    assert dtype_bytes("int4") == 0.5
    assert dtype_bytes("fp4") == 0.5
    # Micro-scaling formats include their block scale: MX = 8-bit scale per 32 values,
    # NVFP4 = 8-bit scale per 16 values.
    assert dtype_bytes("mxfp4") == 0.5 + 1 / 32
    assert dtype_bytes("nvfp4") == 0.5 + 1 / 16
    assert set(DTYPE_BYTES) >= {"bf16", "fp16", "fp32", "fp8", "int8", "int4", "fp4", "mxfp4"}


def test_auto_has_no_size() -> None:
    with pytest.raises(ValueError, match="auto"):
        dtype_bytes("auto")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("141000000000", 141_000_000_000),
        (141_000_000_000, 141_000_000_000),
        ("141GB", 141_000_000_000),
        ("141 GB", 141_000_000_000),
        ("80Gi", 80 * 1024**3),
        ("80GiB", 80 * 1024**3),
        ("60.8GiB", round(60.8 * 1024**3)),
        ("1.5TB", 1_500_000_000_000),
        ("512MiB", 512 * 1024**2),
        ("1_000", 1000),
    ],
)
def test_parse_bytes(text: str | int, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("bad", ["", "GB", "-5GB", "0", "12 parsecs", "1e400", True])
def test_parse_bytes_rejects_nonsense(bad: str | bool) -> None:
    with pytest.raises(ValueError):
        parse_bytes(bad)


def test_parse_count() -> None:
    assert parse_count("8.03B") == 8_030_000_000
    assert parse_count("70.6b") == 70_600_000_000
    assert parse_count("671B") == 671_000_000_000
    assert parse_count("500M") == 500_000_000
    assert parse_count(8_030_261_248) == 8_030_261_248
    with pytest.raises(ValueError, match="suffix"):
        parse_count("8.03GiB")


def test_format_bytes() -> None:
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(80 * 1024**3) == "80.0 GiB"
    assert format_bytes(int(65.7 * 1024**3)) == "65.7 GiB"
    assert format_bytes(-3 * 1024**3) == "-3.0 GiB"
    assert format_bytes(2 * 1024**4) == "2.0 TiB"
