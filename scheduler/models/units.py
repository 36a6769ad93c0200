"""Human-friendly quantities: byte sizes and parameter counts, both ways.

Catalog entries, ConfigMaps and command-line flags are written by people, who write
``65.3GB``, ``60.8GiB`` or ``8.03B`` rather than long integers; the planner works in exact
integers. Decimal suffixes (``KB``, ``MB``, ``GB``, ``TB``) are powers of 1000 and binary
ones (``KiB``...``TiB``, and Kubernetes-style ``Ki``...``Ti``) powers of 1024, so a value
copied from a model card or from a ``resources`` stanza means what it says.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from types import MappingProxyType

_BYTE_UNITS: Mapping[str, int] = MappingProxyType(
    {
        "": 1,
        "b": 1,
        "k": 1000,
        "kb": 1000,
        "m": 1000**2,
        "mb": 1000**2,
        "g": 1000**3,
        "gb": 1000**3,
        "t": 1000**4,
        "tb": 1000**4,
        "ki": 1024,
        "kib": 1024,
        "mi": 1024**2,
        "mib": 1024**2,
        "gi": 1024**3,
        "gib": 1024**3,
        "ti": 1024**4,
        "tib": 1024**4,
    }
)

_COUNT_UNITS: Mapping[str, int] = MappingProxyType(
    {"": 1, "k": 1000, "m": 1000**2, "b": 1000**3, "g": 1000**3, "t": 1000**4}
)

_NUMBER_WITH_UNIT = re.compile(
    r"^\s*([0-9][0-9_,]*(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$"
)


def _split_number(text: str, what: str) -> tuple[float, str]:
    match = _NUMBER_WITH_UNIT.match(text)
    if match is None:
        raise ValueError(f"{what} {text!r} is not a number (with an optional unit)")
    digits = match.group(1).replace("_", "").replace(",", "")
    return float(digits), match.group(2).lower()


def _to_positive_int(value: float, text: str, what: str) -> int:
    # Round to the nearest integer: "60.8GiB" is not an exact byte count, and a float
    # like 8.03e9 should not lose a byte to binary floating point.
    if not math.isfinite(value):
        raise ValueError(f"{what} {text!r} is not a finite number")
    result = round(value)
    if result <= 0:
        raise ValueError(f"{what} {text!r} must be positive")
    return result


def parse_bytes(value: int | float | str, what: str = "size") -> int:
    """Parse a positive byte size: ``141000000000``, ``"141GB"``, ``"60.8GiB"``, ``"80Gi"``."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number of bytes, not {value!r}")
    if isinstance(value, int) and value > 0:
        return value  # exact already; a float round trip would lose bytes above 2**53
    if isinstance(value, int | float):
        return _to_positive_int(float(value), str(value), what)
    number, unit = _split_number(value, what)
    multiplier = _BYTE_UNITS.get(unit)
    if multiplier is None:
        valid = ", ".join(u for u in _BYTE_UNITS if u)
        raise ValueError(f"{what} {value!r}: unknown unit {unit!r} (use one of {valid})")
    return _to_positive_int(number * multiplier, value, what)


def parse_count(value: int | float | str, what: str = "count") -> int:
    """Parse a positive count such as a parameter count: ``8030261248``, ``"8.03B"``, ``"70.6B"``.

    ``B`` (and ``G``) mean 10^9 here, as in model names; this is not a byte parser.
    """
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number, not {value!r}")
    if isinstance(value, int) and value > 0:
        return value
    if isinstance(value, int | float):
        return _to_positive_int(float(value), str(value), what)
    number, unit = _split_number(value, what)
    multiplier = _COUNT_UNITS.get(unit)
    if multiplier is None:
        raise ValueError(f"{what} {value!r}: unknown suffix {unit!r} (use K, M, B or T)")
    return _to_positive_int(number * multiplier, value, what)


def format_bytes(n: int | float) -> str:
    """Render a byte count for people: binary units with one decimal (``"65.7 GiB"``).

    Below 1 KiB the exact count is printed (``"512 B"``); negative values keep their sign,
    which is how a shortfall (negative headroom) reads in messages.
    """
    sign = "-" if n < 0 else ""
    magnitude = abs(float(n))
    if magnitude < 1024:
        return f"{sign}{magnitude:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        magnitude /= 1024
        if magnitude < 1024 or unit == "TiB":
            return f"{sign}{magnitude:.1f} {unit}"
    raise AssertionError("unreachable: the loop returns at TiB")
