"""Kubernetes resource quantities ("2", "64Gi", "1.5e9", "500m") as exact numbers.

The core may not import the Kubernetes client (its package import pulls in the whole API
client), so this is the one small piece of Kubernetes syntax the core understands itself.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

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
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]?)$")


def parse_quantity(text: str | int | float) -> Decimal:
    """Parse a quantity; raise ValueError with the offending text when it is not one."""
    if isinstance(text, bool):
        raise ValueError(f"not a quantity: {text!r}")
    if isinstance(text, int | float):
        return Decimal(str(text))
    match = _QUANTITY.match(text.strip())
    if match is None:
        raise ValueError(f"not a quantity: {text!r}")
    number, suffix = match.groups()
    try:
        value = Decimal(number)
    except InvalidOperation:
        raise ValueError(f"not a quantity: {text!r}") from None
    if suffix in _BINARY:
        return value * _BINARY[suffix]
    return value * _DECIMAL[suffix]


def parse_whole_quantity(text: str | int | float) -> int:
    """A quantity that must be a non-negative whole number (GPU counts, byte sizes)."""
    value = parse_quantity(text)
    if value < 0 or value != value.to_integral_value():
        raise ValueError(f"not a whole non-negative number: {text!r}")
    return int(value)
