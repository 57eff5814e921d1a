from __future__ import annotations

import random
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.protocols.lines import Line, LineBuffer


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


class RefLineBuffer:
    """The first LineBuffer (one bytearray, a copy and a delete per line), kept as the reference
    the zero-copy LineBuffer must match call for call."""

    def __init__(self, max_line: int) -> None:
        self.buf = bytearray()
        self.base = 0
        self.max = max_line
        self.drop: bytes | None = None
        self.drop_len = 0
        self.drop_start = 0
        self.after_gap = False
        self.pending_long: tuple[bytes, int, int, bool, int, bool] | None = None
        self.drop_cr = False

    def fed_offset(self) -> int:
        return self.base + len(self.buf) + (self.drop_len if self.drop is not None else 0)

    def feed(self, data: bytes) -> None:
        if self.drop is not None:
            i = data.find(b"\n")
            if i < 0:
                self.drop_len += len(data)
                if data:
                    self.drop_cr = data[-1] == 0x0D
                return
            cr = data[i - 1] == 0x0D if i > 0 else self.drop_cr
            self.drop_len += i + 1
            self.buf += data[i + 1 :]
            end = self.drop_start + self.drop_len
            length = self.drop_len - (2 if cr else 1)
            self.pending_long = (self.drop, self.drop_start, end, True, length, self.after_gap)
            self.after_gap = False
            self.base = end
            self.drop = None
            self.drop_len = 0
            return
        self.buf += data

    def next_raw(self) -> tuple[bytes, int, int, bool, int, bool] | None:
        pl = self.pending_long
        if pl is not None:
            self.pending_long = None
            return pl
        if self.drop is not None:
            return None
        buf = self.buf
        i = buf.find(b"\n")
        if i < 0:
            if len(buf) - (1 if buf.endswith(b"\r") else 0) > self.max:
                self.drop = bytes(buf[: self.max])
                self.drop_start = self.base
                self.drop_len = len(buf)
                self.drop_cr = buf[-1] == 0x0D
                del buf[:]
            return None
        end = i - 1 if i > 0 and buf[i - 1] == 0x0D else i
        start = self.base
        too_long = end > self.max
        data = bytes(buf[: self.max] if too_long else buf[:end])
        del buf[: i + 1]
        self.base = start + i + 1
        ag = self.after_gap
        self.after_gap = False
        return data, start, self.base, too_long, end, ag

    def take(self, n: int) -> bytes:
        if self.drop is not None or self.pending_long is not None or n <= 0:
            return b""
        chunk = bytes(self.buf[:n])
        del self.buf[: len(chunk)]
        self.base += len(chunk)
        return chunk

    def skip_buffered(self, n: int) -> int:
        return len(self.take(n))

    def gap(self, length: int) -> int:
        dropped = len(self.buf)
        if self.drop is not None:
            dropped += self.drop_len
            self.base = self.drop_start
            self.drop = None
            self.drop_len = 0
        self.base += dropped + length
        del self.buf[:]
        self.after_gap = True
        return dropped


_CALLS = ["next", "skip_until", "take", "skip_buffered", "gap"]
_PIECES = st.sampled_from([b"a", b"\r", b"\n", b".", b"xy\r\n"])
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("feed"), st.binary(max_size=24) | st.lists(_PIECES, max_size=8).map(b"".join)),
        st.tuples(st.sampled_from(_CALLS), st.integers(0, 12)),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ops=_OPS, max_line=st.integers(0, 12))
def test_matches_the_reference_buffer_call_for_call(ops: list[tuple[str, object]], max_line: int) -> None:
    """Random bytes and calls: same lines, offsets and counts as the simple bytearray buffer."""
    lb = LineBuffer(max_line)
    ref = RefLineBuffer(max_line)
    for op, arg in ops:
        if op == "feed":
            assert isinstance(arg, bytes)
            lb.feed(arg)
            ref.feed(arg)
        elif op == "next":
            raw = lb.next_raw()
            assert raw == ref.next_raw()
            line = Line(*raw) if raw is not None else None
            assert line is None or (line.data, line.start, line.end, line.too_long, line.length) == raw[:5]
        elif op == "skip_until":
            got = lb.skip_until(b".")
            while True:  # skip_until(b".") == next_raw() until a "." line that is not too long
                want = ref.next_raw()
                if want is None or (want[0] == b"." and not want[3]):
                    break
            assert got == want
        elif op == "take":
            assert isinstance(arg, int)
            assert lb.take(arg) == ref.take(arg)
        elif op == "skip_buffered":
            assert isinstance(arg, int)
            assert lb.skip_buffered(arg) == ref.skip_buffered(arg)
        else:
            assert isinstance(arg, int)
            assert lb.gap(arg) == ref.gap(arg)
        assert (lb.offset, lb.fed_offset, lb.pending()) == (ref.base, ref.fed_offset(), len(ref.buf))


def test_next_line_and_next_raw_agree() -> None:
    lb, raw_lb = LineBuffer(8), LineBuffer(8)
    data = b"one\r\ntwo\nmuch too long line\r\n\r\nlast"
    lb.feed(data)
    raw_lb.feed(data)
    while (line := lb.next_line()) is not None:
        raw = raw_lb.next_raw()
        assert raw is not None
        assert (line.data, line.start, line.end, line.too_long, line.length, line.after_gap) == raw
    assert raw_lb.next_raw() is None


def test_chunk_is_not_copied_and_consumed_chunk_is_released() -> None:
    """A chunk of whole lines is cut in place; once consumed the buffer lets it go."""
    lb = LineBuffer(100)
    chunk = b"".join([b"a1 OK done\r\n"] * 50)  # built at run time: no reference held by the code object
    lb.feed(chunk)
    lines = []
    while (raw := lb.next_raw()) is not None:
        lines.append(raw)
    assert len(lines) == 50 and lines[-1][2] == len(chunk)
    assert lb.pending() == 0 and sys.getrefcount(chunk) == 2  # only ours (and getrefcount's argument)


def test_chunk_consumed_raw_is_released() -> None:
    """Literal octets skipped or taken to the end of a chunk do not keep the chunk alive."""
    lb = LineBuffer(100)
    chunk = b"".join([b"\x00"] * 1000)
    lb.feed(chunk)
    assert lb.skip_buffered(990) == 990 and sys.getrefcount(chunk) == 3  # still buffered: 10 bytes left
    assert lb.take(50) == b"\x00" * 10 and lb.offset == 1000
    assert sys.getrefcount(chunk) == 2


def test_line_split_across_chunks_one_byte_at_a_time_is_linear() -> None:
    lb = LineBuffer(1 << 20)
    n = 200_000
    for _ in range(n):
        lb.feed(b"x")
        assert lb.next_raw() is None
    lb.feed(b"\r\nnext\r\n")
    raw = lb.next_raw()
    assert raw is not None and raw[4] == n and raw[2] == n + 2 and not raw[3]
    raw = lb.next_raw()
    assert raw is not None and raw[0] == b"next" and raw[1] == n + 2


@pytest.mark.parametrize(
    ("chunks", "found"),
    [
        ([b"body\r\n.\r\nnext\r\n"], (b".", 6, 9)),
        ([b".\r\nrest"], (b".", 0, 3)),
        ([b".\n"], (b".", 0, 2)),
        ([b"a\n.", b"\r", b"\n"], (b".", 2, 5)),
        ([b"..\r\n. \r\n.\r\r\n", b".\n"], (b".", 12, 14)),  # dot-stuffed, ". ", ".\r" are not the end
        ([b"x" * 40 + b"\r\n.\r\n"], (b".", 42, 45)),  # an over-long line before the end is skipped
    ],
)
def test_skip_until_finds_the_terminator_whatever_the_chunking(
    chunks: list[bytes], found: tuple[bytes, int, int]
) -> None:
    data = b"".join(chunks)
    for pieces in (chunks, [data[i : i + 1] for i in range(len(data))], [data]):
        lb = LineBuffer(16)
        got = None
        for p in pieces:
            lb.feed(p)
            got = got or lb.skip_until(b".")
        assert got is not None and got[:3] == found and not got[3] and got[4] == 1
