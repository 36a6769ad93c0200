"""The watch stream's line splitter (scheduler.state.kube.watch_lines): every event whole, in
order, however the stream is cut into chunks; blank lines (keep-alives) skipped."""

from __future__ import annotations

import random

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.state.kube import watch_lines


def events(count: int) -> list[bytes]:
    return [
        orjson.dumps({"type": "MODIFIED", "object": {"metadata": {"name": f"p{i}"}, "n": "é" * i}})
        for i in range(count)
    ]


def cut(data: bytes, sizes: list[int]) -> list[bytes]:
    chunks, at = [], 0
    for size in sizes:
        if at >= len(data):
            break
        chunks.append(data[at : at + size])
        at += size
    if at < len(data):
        chunks.append(data[at:])
    return chunks


@settings(max_examples=200, deadline=None)
@given(
    count=st.integers(0, 12),
    sizes=st.lists(st.integers(1, 300), max_size=60),
    blank=st.booleans(),
)
def test_every_event_comes_out_whole_however_the_stream_is_cut(
    count: int, sizes: list[int], blank: bool
) -> None:
    lines = events(count)
    separator = b"\n\n" if blank else b"\n"
    stream = separator.join(lines) + b"\n"
    assert list(watch_lines(cut(stream, sizes))) == lines


def test_a_last_line_without_newline_and_whitespace_lines() -> None:
    lines = events(3)
    stream = lines[0] + b"\n  \n" + lines[1] + b"\n\r\n" + lines[2]
    chunks = cut(stream, [random.Random(1).randint(1, 40) for _ in range(100)])
    assert list(watch_lines(chunks)) == lines
    assert list(watch_lines([])) == []
    assert list(watch_lines([b"", b"\n", b"   "])) == []
