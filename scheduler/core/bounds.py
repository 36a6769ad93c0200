"""Bounds on what users send: how much of a value a message quotes, how long a reason may be,
how deep JSON may nest.

Any user who can create a pod can put anything in its annotations and resource requests
(DESIGN.md, "Hostile input"). Messages quote user values through `echo`, so a 256 KiB
annotation costs a reason 64 characters, not 256 KiB on every node; `clip` caps whole
reasons; JSON is checked for depth before Python code recurses into it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# How much of a user's value a message quotes (then an ellipsis).
ECHO_CHARS = 64
# The longest reason kvsched sends for one node (then an ellipsis). The longest reasons that
# valid input produces (a gang's shortfall with its members and best node) are about half that.
MAX_REASON_CHARS = 512
ELLIPSIS = "…"

_DIGITS_PER_BIT = 0.30103  # log10(2)


def echo(value: object, limit: int = ECHO_CHARS) -> str:
    """A user's value quoted for a message: `repr` of a string or number, at most about `limit`
    characters (a longer one is cut and ends in an ellipsis); null, booleans, lists and objects
    are named, never printed (a nested value's repr can be huge, or too deep to build)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        head = value[:limit]
        text = repr(head)
        if len(head) < len(value) or len(text) > limit + 2:
            return text[: limit + 1] + ELLIPSIS
        return text
    if isinstance(value, int):
        if value.bit_length() > limit * 3:  # more than ~limit digits: do not even format it
            return f"an integer of about {int(value.bit_length() * _DIGITS_PER_BIT) + 1} digits"
        return clip(repr(value), limit)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def clip(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """`text`, or its first `limit` characters and an ellipsis."""
    if len(text) <= limit:
        return text
    return text[:limit] + ELLIPSIS


# JSON depth, measured on the text without building anything: drop escapes, keep only
# brackets and quotes, drop strings, then peel innermost bracket pairs one level per pass.
_NOT_MARKS = bytes(sorted(set(range(256)) - set(b'[]{}"\\')))
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_STRING = re.compile(rb'"[^"]*"')


def json_depth_exceeds(text: bytes | str, limit: int) -> bool:
    """Whether JSON `text` nests lists and objects more than `limit` deep.

    Exact for valid JSON; text that is not JSON may be called too deep (its brackets do not
    pair up), never too shallow where a parser would recurse. Linear in the text's size: about
    3 ms a megabyte, and a count of brackets first skips small documents.
    """
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    if b"\\" in data:
        data = _ESCAPE.sub(b"", data)
    # `""` is an empty string or two adjacent strings: removing it keeps the brackets outside
    # strings as they were, and leaves few strings for the regular expression.
    marks = data.translate(_BRACKETS, _NOT_MARKS).replace(b'""', b"")
    if b'"' in marks:
        marks = _STRING.sub(b"", marks)
    for _ in range(limit):
        if not marks:
            return False
        marks = marks.replace(b"[]", b"")
    return bool(marks)
