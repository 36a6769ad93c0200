"""Kubernetes resource quantities ("2", "64Gi", "1.5e9", "500m") as exact numbers.

The core may not import the Kubernetes client (its package import pulls in the whole API
client), so this is the one small piece of Kubernetes syntax the core understands itself.

Bounded as the API server bounds them: a quantity whose value does not fit int64 is rejected
(`QuantityRangeError`), and that is decided from the text's length and exponent before any
exact arithmetic, so `1e999999` costs microseconds, not a million-digit integer.
"""

from __future__ import annotations

import math
import re
from decimal import Context, Decimal, InvalidOperation

from scheduler.core.bounds import echo

INT64_MAX = 2**63 - 1
# The longest number (sign, digits, point) kvsched reads: int64 has 19 digits, and a
# fraction or leading zeros leave room; a longer one is out of range, whatever it says.
MAX_MANTISSA_CHARS = 40
# The largest decimal exponent kvsched reads ("1e18" is int64's order; "0.0…01e40" is not
# worth supporting): a larger one is out of range without computing anything.
MAX_EXPONENT = 40

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)(?:[eE]([+-]?[0-9]+))?(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]?)$")
# Exact for every accepted input: a 40-character mantissa times 10**40 times 2**60 or 10**18
# has fewer than 100 significant digits.
_EXACT = Context(prec=120)


class QuantityRangeError(ValueError):
    """A quantity whose value is outside what kvsched (and the API server) accept."""


def parse_quantity(text: object) -> Decimal:
    """Parse a quantity; ValueError (QuantityRangeError when it does not fit int64) with the
    offending text, quoted short, when it is not one."""
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise ValueError(f"not a quantity: {echo(text)}")
    if isinstance(text, int):
        if abs(text) > INT64_MAX:
            raise QuantityRangeError(f"quantity {echo(text)} does not fit int64")
        return Decimal(text)
    if isinstance(text, float):
        if not math.isfinite(text) or abs(text) > INT64_MAX:
            raise QuantityRangeError(f"quantity {echo(text)} does not fit int64")
        return Decimal(str(text))
    match = _QUANTITY.match(text.strip())
    if match is None:
        raise ValueError(f"not a quantity: {echo(text)}")
    number, exponent, suffix = match.groups()
    if len(number) > MAX_MANTISSA_CHARS:
        raise QuantityRangeError(
            f"quantity {echo(text)} has over {MAX_MANTISSA_CHARS} digits: it does not fit int64"
        )
    scale = 0
    if exponent is not None:
        digits = exponent.lstrip("+-").lstrip("0") or "0"
        if len(digits) > len(str(MAX_EXPONENT)) or int(digits) > MAX_EXPONENT:
            raise QuantityRangeError(f"quantity {echo(text)}: exponent outside ±{MAX_EXPONENT}")
        scale = -int(digits) if exponent.startswith("-") else int(digits)
    try:
        value = Decimal(number).scaleb(scale, _EXACT)
    except InvalidOperation:
        raise ValueError(f"not a quantity: {echo(text)}") from None
    multiplier = _BINARY[suffix] if suffix in _BINARY else _DECIMAL[suffix]
    value = _EXACT.multiply(value, multiplier)
    if abs(value) > INT64_MAX:
        raise QuantityRangeError(f"quantity {echo(text)} does not fit int64")
    return value


def parse_whole_quantity(text: object) -> int:
    """A quantity that must be a non-negative whole number (GPU counts, byte sizes)."""
    value = parse_quantity(text)
    if value < 0 or value != value.to_integral_value():
        raise ValueError(f"not a whole non-negative number: {echo(text)}")
    return int(value)  # at most INT64_MAX: cheap
