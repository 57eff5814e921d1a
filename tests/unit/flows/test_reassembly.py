"""Unit tests of HalfStream: every case runs in order, shuffled (several seeds) and duplicated."""

from __future__ import annotations

import bisect
import random
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from analyzer.flows.reassembly import MAX_CONFLICTS_KEPT, HalfStream, Out, _SortedInts

MASK = (1 << 32) - 1
ISN = 1000
DATA = random.Random(20240601).randbytes(8192)

Ev = tuple[
    Any, ...
]  # ("syn", seq) | ("seg", seq, data, frame) | ("fin", seq) | ("ack", a) | ("flush",) | ("release",)


def seg(off: int, length: int, *, isn: int = ISN, frame: int = 0, data: bytes | None = None) -> Ev:
    """A segment carrying DATA[off:off+length] (or ``data``) at stream offset ``off``."""
    payload = DATA[off : off + length] if data is None else data
    return ("seg", (isn + 1 + off) & MASK, payload, frame)


def fin(off: int, *, isn: int = ISN) -> Ev:
    return ("fin", (isn + 1 + off) & MASK)


def ack(off: int, *, isn: int = ISN) -> Ev:
    return ("ack", (isn + 1 + off) & MASK)


def syn(isn: int = ISN) -> Ev:
    return ("syn", isn)


def altered(off: int, length: int, lo: int, hi: int) -> bytes:
    """DATA[off:off+length] with the bytes at stream offsets [lo, hi) changed."""
    b = bytearray(DATA[off : off + length])
    for i in range(lo - off, hi - off):
        b[i] ^= 0xFF
    return bytes(b)


@dataclass(frozen=True)
class Result:
    data: bytes  # delivered bytes, concatenated
    gaps: tuple[tuple[int, int], ...]
    pieces: tuple[tuple[int, bytes], ...]  # (offset, data) as delivered
    stream: HalfStream


def feed(h: HalfStream, ev: Ev) -> list[Out]:
    kind = ev[0]
    if kind == "syn":
        h.syn(ev[1])
        return []
    if kind == "seg":
        return h.segment(ev[1], ev[2], ev[3], ev[3] * 1000)
    if kind == "fin":
        return h.fin(ev[1])
    if kind == "ack":
        return h.ack(ev[1])
    if kind == "flush":
        return h.flush()
    assert kind == "release"
    return h.release()


def item_len(val: object) -> int:
    """Length covered by an output item's value (bytes for data, int for gap)."""
    if isinstance(val, bytes):
        return len(val)
    assert isinstance(val, int)
    return val


def run(events: Sequence[Ev], kwargs: dict[str, int] | None = None) -> Result:
    """Feed events; check that the items tile the stream from offset 0 without overlap."""
    h = HalfStream(**(kwargs or {}))
    data = bytearray()
    gaps: list[tuple[int, int]] = []
    pieces: list[tuple[int, bytes]] = []
    pos = 0
    for ev in events:
        for kind, off, val in feed(h, ev):
            assert off == pos, (kind, off, pos)
            if kind == "data":
                assert isinstance(val, bytes) and val
                data += val
                pieces.append((off, val))
                pos += len(val)
            else:
                assert kind == "gap" and isinstance(val, int) and val > 0
                gaps.append((off, val))
                pos += val
        assert h.next_offset == pos
        assert h.ooo_bytes >= 0
    assert h.gaps == len(gaps) and h.gap_bytes == sum(n for _, n in gaps)
    return Result(bytes(data), tuple(gaps), tuple(pieces), h)


@dataclass(frozen=True)
class Case:
    id: str
    body: tuple[Ev, ...]  # the events that are shuffled / duplicated
    expected: bytes
    gaps: tuple[tuple[int, int], ...] = ()
    head: tuple[Ev, ...] = (syn(),)
    tail: tuple[Ev, ...] = (("flush",),)
    before: tuple[tuple[int, int], ...] = ()  # body[i] precedes body[j] in every order
    kwargs: dict[str, int] = field(default_factory=dict)
    closed: bool = False
    conflict: tuple[int, int] | None = None  # [lo, hi) of the differing bytes
    order_dependent: bool = False  # forced gaps: shuffled runs check invariants only
    check: Callable[[HalfStream, str], None] | None = None


def random_order(n: int, before: Sequence[tuple[int, int]], rng: random.Random) -> list[int]:
    """A random order of range(n) in which i precedes j for every (i, j) in ``before``."""
    preds: dict[int, set[int]] = {i: set() for i in range(n)}
    for i, j in before:
        preds[j].add(i)
    done: set[int] = set()
    order: list[int] = []
    while len(order) < n:
        ready = [i for i in range(n) if i not in done and preds[i] <= done]
        pick = rng.choice(ready)
        done.add(pick)
        order.append(pick)
    return order


def duplicated(case: Case) -> tuple[list[Ev], list[tuple[int, int]]]:
    """Body with every segment doubled in place; constraints extended to the copies."""
    body: list[Ev] = []
    index: dict[int, list[int]] = {}
    for i, ev in enumerate(case.body):
        index[i] = [len(body)]
        body.append(ev)
        if ev[0] == "seg":
            index[i].append(len(body))
            body.append(ev)
    before = [(a, b) for i, j in case.before for a in index[i] for b in index[j]]
    return body, before


SHUFFLE_SEEDS = (1, 2, 3, 4, 5, 6)
MODES = (
    ["in_order"]
    + [f"shuffled_{s}" for s in SHUFFLE_SEEDS]
    + ["duplicated"]
    + [f"duplicated_shuffled_{s}" for s in SHUFFLE_SEEDS[:3]]
)


def order_for(case: Case, mode: str) -> list[Ev]:
    body = list(case.body)
    before = list(case.before)
    if mode.startswith("duplicated"):
        body, before = duplicated(case)
        if mode == "duplicated":
            return body
    if mode == "in_order":
        return body
    rng = random.Random(int(mode.rsplit("_", 1)[1]))
    return [body[i] for i in random_order(len(body), before, rng)]


def _counts(out_of_window: int = 0, after_fin: int = 0, late: int = 0) -> Callable[[HalfStream, str], None]:
    def check(h: HalfStream, mode: str) -> None:
        k = 2 if mode.startswith("duplicated") else 1
        assert h.out_of_window == out_of_window * k
        assert h.after_fin_bytes == after_fin * k
        if late:
            assert h.late_bytes >= late

    return check


def _tiny_ooo() -> tuple[Ev, ...]:
    return tuple(seg(i * 10, 10) for i in reversed(range(40)))


CASES: list[Case] = [
    Case("in_order", (seg(0, 100), seg(100, 150), seg(250, 150)), DATA[:400]),
    Case(
        "exact_retransmission",
        (seg(0, 100), seg(100, 100), seg(100, 100), seg(200, 100), seg(0, 100)),
        DATA[:300],
    ),
    Case("partial_overlap_tail", (seg(0, 100), seg(50, 130), seg(150, 150)), DATA[:300]),
    Case(
        "conflict_with_delivered",
        (seg(0, 100), seg(50, 100, data=altered(50, 100, 60, 70)), seg(150, 50)),
        DATA[:200],
        before=((0, 1),),
        conflict=(60, 70),
    ),
    Case(
        "conflict_with_held",
        (seg(100, 100), seg(150, 100, data=altered(150, 100, 160, 170)), seg(0, 100)),
        DATA[:250],
        before=((0, 1),),
        conflict=(160, 170),
    ),
    Case(
        "conflict_covering_held",
        (seg(100, 50), seg(80, 100, data=altered(80, 100, 110, 120)), seg(0, 80)),
        DATA[:180],
        before=((0, 1),),
        conflict=(110, 120),
    ),
    Case("segment_inside_held", (seg(200, 200), seg(250, 50), seg(0, 200)), DATA[:400]),
    Case("ooo_by_one", (seg(0, 100), seg(200, 100), seg(100, 100), seg(300, 100)), DATA[:400]),
    Case("ooo_by_many", tuple(seg(i * 50, 50) for i in reversed(range(30))), DATA[:1500]),
    Case(
        "seq_wraparound",
        tuple(seg(i * 30, 30, isn=(1 << 32) - 10) for i in range(10)),
        DATA[:300],
        head=(syn((1 << 32) - 10),),
    ),
    Case(
        "missing_segment_flush",
        (seg(0, 100), seg(100, 100), seg(300, 100), seg(400, 50)),
        DATA[:200] + DATA[300:450],
        gaps=((200, 100),),
    ),
    Case(
        "ack_proves_hole",
        (seg(0, 100), seg(100, 100), seg(300, 100), seg(400, 50)),
        DATA[:200] + DATA[300:450],
        gaps=((200, 100),),
        tail=(ack(450),),
    ),
    Case(
        "fin_then_late_retransmissions",
        (seg(0, 100), seg(100, 100), fin(200), seg(0, 100), seg(50, 100)),
        DATA[:200],
        tail=(),
        before=((2, 3), (2, 4)),
        closed=True,
    ),
    Case("fin_with_data", (seg(0, 100), seg(100, 50), fin(150)), DATA[:150], tail=(), closed=True),
    Case(
        "data_after_fin_dropped",
        (seg(0, 100), fin(100), seg(100, 50), seg(80, 40)),
        DATA[:100],
        tail=(),
        before=((1, 2), (1, 3)),
        closed=True,
        check=_counts(after_fin=70),
    ),
    Case(
        "fin_tail_lost_gap_at_flush",
        (seg(0, 100), fin(150)),
        DATA[:100],
        gaps=((100, 50),),
        closed=True,
    ),
    Case(
        "rst_flush_then_retransmissions",
        (seg(0, 100), seg(200, 100)),
        DATA[:100] + DATA[200:350],
        gaps=((100, 100),),
        tail=(("flush",), seg(100, 100), seg(300, 50), ("flush",)),
        check=_counts(late=100),
    ),
    Case(
        "no_syn_pickup",
        tuple(seg(i * 100, 100, isn=5555) for i in range(5)),
        DATA[:500],
        head=(),
    ),
    Case(
        "no_syn_pickup_release",
        tuple(seg(i * 100, 100, isn=5555) for i in range(6)),
        DATA[:600],
        head=(),
        tail=(("release",),),
    ),
    Case(
        "no_syn_pickup_across_wrap",
        tuple(seg(i * 40, 40, isn=(1 << 32) - 100) for i in range(7)),
        DATA[:280],
        head=(),
    ),
    Case(
        "no_syn_pickup_with_hole",
        (seg(0, 100, isn=77), seg(100, 100, isn=77), seg(300, 100, isn=77)),
        DATA[:200] + DATA[300:400],
        gaps=((200, 100),),
        head=(),
    ),
    Case("one_sided_stream", (seg(0, 200), seg(200, 200), fin(400)), DATA[:400], tail=(), closed=True),
    Case(
        "empty_payload_segments",
        (seg(0, 100), ("seg", ISN + 1 + 100, b"", 0), seg(100, 100), ("seg", 12345, b"", 0)),
        DATA[:200],
    ),
    Case(
        "ooo_segment_bound_forces_gap",
        (seg(0, 100),) + tuple(seg(200 + i * 50, 50) for i in range(6)),
        DATA[:100] + DATA[200:500],
        gaps=((100, 100),),
        kwargs={"max_ooo_segments": 3},
        order_dependent=True,
    ),
    Case(
        "ooo_byte_bound_forces_gap",
        (seg(0, 100),) + tuple(seg(200 + i * 50, 50) for i in range(6)),
        DATA[:100] + DATA[200:500],
        gaps=((100, 100),),
        tail=(),
        kwargs={"max_ooo_bytes": 120},
        order_dependent=True,
    ),
    Case(
        "jump_of_2_31_out_of_window",
        (
            seg(0, 100),
            ("seg", (ISN + 101 + (1 << 31)) & MASK, b"X" * 100, 0),
            seg(100, 100),
            ("seg", (ISN + 1 - (1 << 31) + 50) & MASK, b"Y" * 100, 0),
        ),
        DATA[:200],
        check=_counts(out_of_window=2),
    ),
    Case("tiny_ooo_segments", _tiny_ooo(), DATA[:400]),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case_three_ways(case: Case, mode: str) -> None:
    events = [*case.head, *order_for(case, mode), *case.tail]
    res = run(events, case.kwargs)
    h = res.stream
    if case.order_dependent and mode not in ("in_order", "duplicated"):
        # forced gaps depend on arrival order: every delivered byte is true, every
        # truly missing byte lies in a gap, and the hold never exceeded its bound
        for off, piece in res.pieces:
            assert piece == DATA[off : off + len(piece)]
        for hole_off, hole_len in case.gaps:
            assert any(g <= hole_off and hole_off + hole_len <= g + n for g, n in res.gaps)
        assert h.ooo_bytes <= h.max_ooo_bytes and h.held_segments <= h.max_ooo_segments
        return
    assert res.data == case.expected
    assert res.gaps == case.gaps
    assert h.closed == case.closed
    assert h.ooo_bytes == 0 and h.held_segments == 0
    if case.conflict is None:
        assert h.conflict_count == 0 and h.conflicts == []
    else:
        lo, hi = case.conflict
        assert h.conflict_count >= 1
        assert h.conflicts and all(lo <= off and off + n <= hi for off, n in h.conflicts)
        assert (lo, hi - lo) in h.conflicts  # the whole differing range, narrowed exactly
    if case.check is not None:
        case.check(h, mode)


# --------------------------------------------------------------- specific behaviour


def test_retransmitted_bytes_counted() -> None:
    res = run([syn(), seg(0, 100), seg(0, 100), seg(50, 100), seg(200, 50), seg(200, 50), seg(100, 100)])
    h = res.stream
    assert res.data == DATA[:250]
    # 100 (exact) + 50 (overlap with delivered) + 50 (duplicate held) + 50 (seg(100,100) over held 100..150)
    assert h.retransmitted_bytes == 250
    assert h.late_bytes == 0


def test_ack_without_held_data_does_nothing() -> None:
    h = HalfStream()
    h.syn(ISN)
    assert h.segment(ISN + 1, DATA[:100], 1, 0) == [("data", 0, DATA[:100])]
    assert h.ack(ISN + 1 + 5000) == []
    assert h.next_offset == 100 and h.gaps == 0


def test_ack_below_hole_does_nothing_then_ack_beyond_declares_whole_hole() -> None:
    h = HalfStream()
    h.syn(ISN)
    h.segment(ISN + 1, DATA[:100], 1, 0)
    assert h.segment(ISN + 1 + 300, DATA[300:400], 2, 0) == []
    assert h.ack(ISN + 1 + 100) == []  # acks only what we have: no proof
    assert h.ack(ISN + 1 + 50) == []  # old ack
    # acked into the hole (150 < 300): the receiver got bytes we never saw; the whole hole is one gap
    assert h.ack(ISN + 1 + 150) == [("gap", 100, 200), ("data", 300, DATA[300:400])]
    assert h.gaps == 1


def test_ack_leaves_holes_above_it_open() -> None:
    h = HalfStream()
    h.syn(ISN)
    h.segment(ISN + 1 + 100, DATA[100:200], 1, 0)
    h.segment(ISN + 1 + 300, DATA[300:400], 2, 0)
    assert h.ack(ISN + 1 + 150) == [("gap", 0, 100), ("data", 100, DATA[100:200])]
    assert h.held_segments == 1
    assert h.segment(ISN + 1 + 200, DATA[200:300], 3, 0) == [("data", 200, DATA[200:400])]


def test_ack_before_base_proves_pickup_hole() -> None:
    h = HalfStream()
    h.segment(9000, DATA[:100], 1, 0)
    h.segment(9200, DATA[200:300], 2, 0)
    assert h.ack(9050) == []  # no hole below 9050
    out = h.ack(9250)
    assert out == [("data", 0, DATA[:100]), ("gap", 100, 100), ("data", 200, DATA[200:300])]


def test_late_bytes_inside_declared_gap_are_not_retransmissions() -> None:
    h = HalfStream()
    h.syn(ISN)
    h.segment(ISN + 1, DATA[:100], 1, 0)
    h.segment(ISN + 1 + 200, DATA[200:300], 2, 0)
    h.flush()
    assert h.segment(ISN + 1 + 90, DATA[90:210], 3, 0) == []
    assert h.late_bytes == 100  # 100..200 was declared a gap
    assert h.retransmitted_bytes == 20  # 90..100 and 200..210 were delivered
    assert h.conflict_count == 0


def test_no_syn_base_is_lowest_sequence_and_older_data_dropped_after_release() -> None:
    h = HalfStream()
    assert h.segment(5000, DATA[100:200], 1, 0) == []
    assert h.segment(4900, DATA[:100], 2, 0) == []
    assert h.started and not h.saw_syn
    assert h.release() == [("data", 0, DATA[:200])]
    assert h.segment(4800, b"z" * 100, 3, 0) == []  # before the base: dropped
    assert h.late_bytes == 100
    assert h.segment(5100, DATA[200:250], 4, 0) == [("data", 200, DATA[200:250])]


def test_no_syn_releases_by_itself_after_eight_segments() -> None:
    h = HalfStream()
    outs: list[Out] = []
    for i in range(1, 9):
        outs += h.segment(7000 + i * 10, DATA[i * 10 : i * 10 + 10], i, 0)
    assert outs == [("data", 0, DATA[10:90])]  # base = lowest seen
    outs = h.segment(7000, DATA[:10], 9, 0)
    assert outs == [] and h.late_bytes == 10


def test_no_syn_releases_by_itself_at_64k() -> None:
    h = HalfStream()
    assert h.segment(100, DATA[:1000], 1, 0) == []
    out = h.segment(100 + 2000, bytes(64 * 1024), 2, 0)
    assert out == [("data", 0, DATA[:1000])]
    assert h.ooo_bytes == 64 * 1024


def test_late_syn_rebases_held_pickup_data() -> None:
    h = HalfStream()
    h.segment(ISN + 1 + 100, DATA[100:200], 1, 0)
    h.segment(ISN + 1 - 20, b"q" * 40, 2, 0)  # 20 bytes before the SYN's base
    h.syn(ISN)
    assert h.saw_syn
    out = h.segment(ISN + 1 + 20, DATA[20:100], 3, 0)
    assert out == [("data", 0, b"q" * 20 + DATA[20:200])]
    assert h.late_bytes == 20


def test_syn_after_data_is_ignored() -> None:
    h = HalfStream()
    h.syn(ISN)
    h.segment(ISN + 1, DATA[:10], 1, 0)
    h.syn(ISN + 5000)
    assert h.segment(ISN + 11, DATA[10:20], 2, 0) == [("data", 10, DATA[10:20])]


def test_fin_only_stream_and_fin_below_delivered_data() -> None:
    h = HalfStream()
    assert h.fin(123) == []
    assert h.closed and h.next_offset == 0
    assert h.segment(124, b"late", 1, 0) == []
    assert h.after_fin_bytes == 4
    h2 = HalfStream()
    h2.syn(ISN)
    h2.segment(ISN + 1, DATA[:100], 1, 0)
    assert h2.fin(ISN + 1 + 50) == []  # inconsistent: ignored
    assert not h2.closed
    assert h2.fin(ISN + 1 + 100) == [] and h2.closed


def test_fin_drops_held_data_beyond_it() -> None:
    h = HalfStream()
    h.syn(ISN)
    h.segment(ISN + 1 + 100, DATA[100:200], 1, 0)
    h.segment(ISN + 1 + 300, DATA[300:400], 2, 0)
    assert h.fin(ISN + 1 + 150) == []
    assert h.ooo_bytes == 50 and h.after_fin_bytes == 150
    assert h.segment(ISN + 1, DATA[:100], 3, 0) == [("data", 0, DATA[:150])]
    assert h.closed


def test_conflict_list_is_bounded_but_counted() -> None:
    h = HalfStream()
    h.syn(ISN)
    for i in range(300):
        h.segment(ISN + 1 + i * 2, b"ab", i, 0)
        h.segment(ISN + 1 + i * 2, b"Ab", i, 0)
    assert h.conflict_count == 300
    assert len(h.conflicts) == MAX_CONFLICTS_KEPT
    assert h.conflicts[0] == (0, 1) and h.conflicts[5] == (10, 1)


def test_conflict_beyond_history_is_not_detected_but_counted_as_retransmission() -> None:
    h = HalfStream(history_bytes=100)
    h.syn(ISN)
    for i in range(10):
        h.segment(ISN + 1 + i * 100, DATA[i * 100 : i * 100 + 100], i, 0)
    h.segment(ISN + 1, b"\x00" * 100, 99, 0)
    assert h.conflict_count == 0 and h.retransmitted_bytes == 100
    h.segment(ISN + 1 + 950, b"\x00" * 50, 99, 0)
    assert h.conflict_count == 1


def test_frames_and_timestamps_over_boundaries_and_across_gap() -> None:
    h = HalfStream()
    h.syn(ISN)
    h.segment(ISN + 1, DATA[:100], 10, 1000)  # 0..100 frame 10
    h.segment(ISN + 1 + 150, DATA[150:250], 12, 1200)  # held: 150..250 frame 12
    h.segment(ISN + 1 + 50, DATA[50:130], 11, 1100)  # 100..130 new from frame 11
    h.segment(ISN + 1 + 300, DATA[300:400], 14, 1400)  # held
    h.segment(ISN + 1 + 250, DATA[250:260], 13, 1300)  # 250..260 frame 13
    out = h.flush()
    assert out == [
        ("gap", 130, 20),
        ("data", 150, DATA[150:260]),
        ("gap", 260, 40),
        ("data", 300, DATA[300:400]),
    ]
    assert h.frames_for(0, 100) == (10,)
    assert h.frames_for(99, 101) == (10, 11)
    assert h.frames_for(0, 400) == (10, 11, 12, 13, 14)
    assert h.frames_for(120, 160) == (11, 12)  # across the gap 130..150
    assert h.frames_for(130, 150) == ()  # inside the gap
    assert h.frames_for(255, 1000) == (13, 14)
    assert h.frames_for(400, 500) == () and h.frames_for(50, 50) == ()
    assert [h.ts_for(o) for o in (0, 99, 100, 129, 130, 149, 150, 249, 250, 259, 260, 300, 399, 400, -1)] == [
        1000,
        1000,
        1100,
        1100,
        None,
        None,
        1200,
        1200,
        1300,
        1300,
        None,
        1400,
        1400,
        None,
        None,
    ]


def test_frames_for_first_arrival_wins_and_same_frame_runs_merge() -> None:
    h = HalfStream()
    h.syn(ISN)
    h.segment(ISN + 1, DATA[:10], 1, 1)
    h.segment(ISN + 1, DATA[:20], 2, 2)  # only 10..20 is new
    h.segment(ISN + 1 + 20, DATA[20:30], 2, 2)  # same frame again (e.g. two TCP segments in one frame)
    assert h.frames_for(0, 10) == (1,)
    assert h.frames_for(10, 30) == (2,)
    assert h.ts_for(25) == 2
    h.segment(ISN + 1 + 40, DATA[40:50], 3, 3)  # held
    h.segment(ISN + 1 + 30, DATA[30:40], 3, 3)  # delivered, then the held piece of the same frame
    assert list(h._iv_frame) == [1, 2, 3]  # one run per frame, not per segment


def test_trim_forgets_old_frames_and_compacts() -> None:
    h = HalfStream()
    h.syn(ISN)
    for i in range(5000):
        h.segment(ISN + 1 + i * 10, DATA[:10], i + 1, i)
    h.trim(30000)
    assert h.frames_for(0, 20) == ()  # trimmed
    assert h.ts_for(5) is None
    assert h.frames_for(29995, 30015) == (3001, 3002)  # 29995.. was trimmed
    assert h.ts_for(49999) == 4999
    assert len(h._iv_start) < 5000  # compacted
    h.trim(10**9)
    assert h.frames_for(49990, 50000) == (5000,)


def test_out_of_window_fin_and_huge_timestamps() -> None:
    h = HalfStream()
    h.syn(ISN)
    assert h.fin(ISN + 1 + (1 << 30) + 5) == []
    assert h.out_of_window == 1 and not h.closed
    h.segment(ISN + 1, b"abc", 1, 1 << 70)
    assert h.ts_for(0) == (1 << 63) - 1


def test_many_held_pieces_with_large_bounds_run_in_n_log_n() -> None:
    n = 200_000
    order = list(range(n))
    random.Random(7).shuffle(order)
    h = HalfStream(max_ooo_bytes=1 << 30, max_ooo_segments=1 << 30)
    h.syn(ISN)
    total = 0
    t0 = time.perf_counter()
    for i in order:
        for kind, off, val in h.segment(ISN + 1 + i * 5, b"abcde", i, i):
            assert kind == "data" and off == total and isinstance(val, bytes)
            total += len(val)
    elapsed = time.perf_counter() - t0
    assert total == n * 5 and h.gaps == 0 and h.ooo_bytes == 0
    assert elapsed < 10, elapsed


def test_many_shuffled_pieces_with_default_bounds_stay_bounded() -> None:
    n = 200_000
    order = list(range(n))
    random.Random(8).shuffle(order)
    h = HalfStream()
    h.syn(ISN)
    pos = 0
    t0 = time.perf_counter()
    for i in order:
        for kind, off, val in h.segment(ISN + 1 + i * 5, b"abcde", i, i):
            assert off == pos
            pos += item_len(val)
        assert h.held_segments <= 4096
    for kind, off, val in h.flush():
        assert off == pos
        pos += item_len(val)
    elapsed = time.perf_counter() - t0
    assert pos == n * 5 and h.ooo_bytes == 0 and h.gaps > 0
    # every byte was either delivered or arrived late into a forced gap, none twice
    assert (pos - h.gap_bytes) + h.late_bytes == n * 5 and h.retransmitted_bytes == 0
    assert elapsed < 10, elapsed


def test_blockwise_reversed_tiny_segments_deliver_everything() -> None:
    n = 200_000
    h = HalfStream()
    h.syn(ISN)
    got = 0
    t0 = time.perf_counter()
    for block in range(0, n, 1000):
        for i in reversed(range(block, block + 1000)):
            for _kind, _off, val in h.segment(ISN + 1 + i * 3, b"xyz", i, i):
                assert isinstance(val, bytes)
                got += len(val)
    assert got == n * 3 and h.gaps == 0
    assert time.perf_counter() - t0 < 10


# ----------------------------------------------------------------- random input


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(-3000, 3000)), max_size=3000))
def test_sorted_keys_match_a_plain_sorted_list(ops: list[tuple[bool, int]]) -> None:
    keys = _SortedInts()
    model: list[int] = []
    for add, x in ops:
        if add and x not in model:
            keys.add(x)
            bisect.insort(model, x)
        elif not add and x in model:
            keys.remove(x)
            model.remove(x)
        elif not add and model and x % 3 == 0:
            assert keys.pop_first() == model.pop(0)
        assert list(keys) == model
        i = bisect.bisect_right(model, x)
        assert keys.floor(x) == (model[i - 1] if i else None)
        j = bisect.bisect_left(model, x)
        assert keys.ceil(x) == (model[j] if j < len(model) else None)
        assert keys.around(x) == (model[i - 1] if i else None, model[i] if i < len(model) else None)
        if model:
            assert keys.first() == model[0] and keys.last() == model[-1]


_OPS = st.one_of(
    st.tuples(st.just("syn"), st.integers(0, MASK)),
    st.tuples(st.just("seg"), st.integers(-(1 << 33), 1 << 33), st.binary(max_size=64), st.integers(0, 50)),
    st.tuples(st.just("fin"), st.integers(0, MASK)),
    st.tuples(st.just("ack"), st.integers(0, MASK)),
    st.tuples(st.just("flush")),
    st.tuples(st.just("release")),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_OPS, max_size=40), st.integers(0, 6), st.integers(0, 300))
def test_random_operations_never_raise_and_stay_consistent(
    ops: list[Ev], max_segs: int, max_bytes: int
) -> None:
    h = HalfStream(max_ooo_segments=max_segs, max_ooo_bytes=max_bytes, history_bytes=32)
    pos = 0
    for op in ops:
        dropped = h.out_of_window
        for kind, off, val in feed(h, op):
            assert off == pos and kind in ("data", "gap")
            assert item_len(val) > 0
            pos += item_len(val)
        if op[0] == "seg" and op[2] and h.out_of_window == dropped:
            if h.saw_syn or h.next_offset:  # base fixed: the configured bounds hold
                assert h.held_segments <= max_segs and h.ooo_bytes <= max_bytes
            else:  # mid-stream pickup: at most the pickup bounds
                assert h.held_segments < 8
        assert h.next_offset == pos
        assert h.ooo_bytes == sum(len(v[0]) for v in h._held.values())
        h.frames_for(0, pos + 10)
        h.ts_for(pos // 2)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.integers(0, MASK))
def test_random_bytes_as_segments(blob: bytes, isn: int) -> None:
    """Random bytes cut into segments at random sequence numbers derived from the bytes."""
    h = HalfStream(max_ooo_segments=5)
    h.syn(isn)
    i = 0
    while i + 5 <= len(blob):
        seq = int.from_bytes(blob[i : i + 4], "big")
        n = blob[i + 4] % 32
        h.segment(seq, blob[i + 5 : i + 5 + n], i, i)
        h.ack(seq ^ 0x5A5A)
        i += 5 + n
    h.flush()
    assert h.ooo_bytes == 0


# ------------------------------------------------------------- tshark cross-check


@pytest.mark.tshark
@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_same_bytes_as_wireshark_follow_stream(tmp_path: Path) -> None:
    scapy_all = pytest.importorskip("scapy.all")
    IP, TCP, Raw, wrpcap = scapy_all.IP, scapy_all.TCP, scapy_all.Raw, scapy_all.wrpcap
    isn_c, isn_s = (1 << 32) - 300, 5000
    plan = [(0, 200), (400, 200), (200, 200), (200, 200), (100, 150), (600, 100), (0, 50), (700, 300)]

    def pkt(flags: str, seq: int, ack_: int, payload: bytes = b"") -> Any:
        p = IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=143, flags=flags, seq=seq, ack=ack_)
        return p / Raw(payload) if payload else p

    pkts = [pkt("S", isn_c, 0), pkt("SA", isn_s, isn_c + 1), pkt("A", (isn_c + 1) & MASK, isn_s + 1)]
    pkts[1][IP].src, pkts[1][IP].dst = "10.0.0.2", "10.0.0.1"
    pkts[1][TCP].sport, pkts[1][TCP].dport = 143, 40000
    for off, n in plan:
        pkts.append(pkt("PA", (isn_c + 1 + off) & MASK, isn_s + 1, DATA[off : off + n]))
    pcap = tmp_path / "ooo.pcap"
    wrpcap(str(pcap), pkts)
    proc = subprocess.run(
        ["tshark", "-r", str(pcap), "-q", "-z", "follow,tcp,raw,0"],
        capture_output=True,
        text=True,
        check=True,
    )
    hexes = [
        ln.strip()
        for ln in proc.stdout.splitlines()
        if ln.strip() and set(ln.strip()) <= set("0123456789abcdef")
    ]
    wireshark = bytes.fromhex("".join(hexes))
    h = HalfStream()
    h.syn(isn_c)
    ours = b"".join(
        v
        for off, n in plan
        for _k, _o, v in h.segment((isn_c + 1 + off) & MASK, DATA[off : off + n], 0, 0)
        if isinstance(v, bytes)
    )
    assert ours == DATA[:1000]
    assert wireshark == ours


# ------------------------------------------------------------- lookups and lazily made state

_NEAR_OPS = st.one_of(  # sequence numbers near the ISN: in order, out of order, overlapping, gaps
    st.tuples(st.just("seg"), st.integers(0, 300), st.integers(0, 40), st.integers(1, 30)),
    st.tuples(st.just("fin"), st.integers(0, 320)),
    st.tuples(st.just("ack"), st.integers(0, 320)),
    st.tuples(st.just("trim"), st.integers(0, 320)),
    st.tuples(st.just("release")),
    st.tuples(st.just("flush")),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(_NEAR_OPS, max_size=40),
    st.booleans(),
    st.lists(st.tuples(st.integers(-5, 330), st.integers(-3, 80)), min_size=4, max_size=4),
)
def test_frames_and_ts_is_frames_for_plus_ts_for(
    ops: list[tuple[Any, ...]], with_syn: bool, probes: list[tuple[int, int]]
) -> None:
    h = HalfStream(max_ooo_segments=4, history_bytes=16)
    if with_syn:
        h.syn(ISN)
    for op in ops:
        kind = op[0]
        if kind == "seg":
            feed(h, seg(op[1], op[2], frame=op[3]))
        elif kind == "fin":
            feed(h, fin(op[1]))
        elif kind == "ack":
            feed(h, ack(op[1]))
        elif kind == "trim":
            h.trim(op[1])
        else:
            feed(h, (kind,))
        for start, n in probes:
            assert h.frames_and_ts(start, start + n) == (h.frames_for(start, start + n), h.ts_for(start))


def test_streams_do_not_share_held_pieces_or_gaps() -> None:
    """Key sets and gap columns are made per stream on first use (fresh streams share empty ones)."""
    a, b, c = HalfStream(), HalfStream(), HalfStream()
    for h in (a, b, c):
        h.syn(ISN)
    feed(a, seg(100, 10, frame=1))  # held: a hole before it
    feed(b, seg(200, 5, frame=2))
    assert (a.held_segments, b.held_segments, c.held_segments) == (1, 1, 0)
    assert a.flush() == [("gap", 0, 100), ("data", 100, DATA[100:110])]
    assert b.held_segments == 1 and c.held_segments == 0 and (b.gaps, c.gaps) == (0, 0)
    feed(c, seg(0, 50, frame=3))
    assert c.frames_for(0, 50) == (3,) and a.frames_for(0, 110) == (1,) and b.frames_for(0, 300) == ()
    assert b.flush() == [("gap", 0, 200), ("data", 200, DATA[200:205])]
    feed(a, seg(50, 10, frame=4))  # inside a's declared gap: late, not a retransmission
    assert a.late_bytes == 10 and b.late_bytes == 0 and c.late_bytes == 0
    d = HalfStream()
    d.syn(ISN)
    assert d.held_segments == 0 and d.gaps == 0 and d.frames_for(0, 10) == ()


def test_release_of_an_idle_stream_changes_nothing() -> None:
    h = HalfStream()
    h.syn(ISN)
    assert h.segment(ISN + 1, b"abc", 1, 10) == [("data", 0, b"abc")]
    h.fin(ISN + 4)
    assert h.closed
    before = (h.next_offset, h.closed, h.gaps, h.held_segments)
    assert h.release() == [] and (h.next_offset, h.closed, h.gaps, h.held_segments) == before
