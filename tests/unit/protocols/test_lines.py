from __future__ import annotations

import random

import pytest

from analyzer.protocols.lines import LineBuffer


def frame_all(chunks: list[bytes], max_line: int = 16) -> list[tuple[bytes, int, int, bool, int]]:
    lb = LineBuffer(max_line)
    out = []
    for c in chunks:
        lb.feed(c)
        while (line := lb.next_line()) is not None:
            out.append((line.data, line.start, line.end, line.too_long, line.length))
    return out


DATA = b"a1 OK\r\nshort\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\nlast\r\npartial"
EXPECTED = [
    (b"a1 OK", 0, 7, False, 5),
    (b"short", 7, 13, False, 5),
    (b"x" * 16, 13, 44, True, 29),
    (b"last", 44, 50, False, 4),
]


@pytest.mark.parametrize("mode", ["whole", "bytewise", "random"])
def test_framing_is_chunking_invariant(mode: str) -> None:
    if mode == "whole":
        chunks = [DATA]
    elif mode == "bytewise":
        chunks = [DATA[i : i + 1] for i in range(len(DATA))]
    else:
        rnd = random.Random(7)
        chunks, i = [], 0
        while i < len(DATA):
            n = rnd.randint(1, 9)
            chunks.append(DATA[i : i + n])
            i += n
    assert frame_all(chunks) == EXPECTED


def test_take_and_gap_offsets() -> None:
    lb = LineBuffer(100)
    lb.feed(b"{5}\r\nhelloX\r\nabc")
    line = lb.next_line()
    assert line is not None and line.data == b"{5}"
    assert lb.take(5) == b"hello"
    assert lb.offset == 10
    line = lb.next_line()
    assert line is not None and (line.data, line.start, line.end) == (b"X", 10, 13)
    assert lb.gap(7) == 3  # "abc" dropped
    assert lb.offset == 23
    lb.feed(b"tail\r\nok\r\n")
    line = lb.next_line()
    assert line is not None and line.after_gap and (line.start, line.data) == (23, b"tail")
    line = lb.next_line()
    assert line is not None and not line.after_gap and line.start == 29


def test_long_line_memory_is_bounded() -> None:
    lb = LineBuffer(10)
    for _ in range(1000):
        lb.feed(b"y" * 1000)
        assert lb.next_line() is None
        assert lb.pending() == 0
    lb.feed(b"\r\nnext\r\n")
    line = lb.next_line()
    assert line is not None and line.too_long and line.length == 1_000_000 and line.end == 1_000_002
    line = lb.next_line()
    assert line is not None and line.data == b"next" and line.start == 1_000_002
