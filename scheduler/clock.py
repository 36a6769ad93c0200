"""The wall clock, in one neutral place: every package that stamps or compares times imports
it from here (so that no package imports another only for its clock), and tests replace it by
passing their own callable.

`now()` is UTC, whole seconds (the precision of Kubernetes timestamps and of the times kvsched
writes into annotations and NodeInventory status).
"""

from __future__ import annotations

import datetime as dt

__all__ = ["now"]


def now() -> dt.datetime:
    """The current time, UTC, truncated to whole seconds."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)
