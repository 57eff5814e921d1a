"""Fragment reassembly tests, through the decoder (IPv4 frames) and on the Defragmenter directly."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings, strategies as st

from analyzer.capture.decode import Decoder, TcpPacket
from analyzer.capture.defrag import DONE_MEMO, PIECE_OVERHEAD, SET_OVERHEAD, TIMEOUT_SCAN_EVERY, Defragmenter

SRC = bytes([10, 0, 0, 1])
DST = bytes([10, 0, 0, 2])
MAC = bytes.fromhex("020000000001020000000002")
PAYLOAD = bytes(range(256)) * 3  # 768 bytes, every position distinguishable
KEY = SRC + DST + struct.pack("!HH", 40000, 110)


def tcp(payload: bytes = PAYLOAD, flags: int = 0x18) -> bytes:
    """A 20-byte TCP header (ports 40000 -> 110) followed by ``payload``."""
    return struct.pack("!HHIIBBHHH", 40000, 110, 1000, 2000, 5 << 4, flags, 1024, 0, 0) + payload


def ip_frag(
    data: bytes, offset: int, mf: bool, *, ident: int = 77, options: bytes = b"", proto: int = 6
) -> bytes:
    """An Ethernet frame carrying one IPv4 fragment of ``data`` (``offset`` in bytes)."""
    ihl = 5 + len(options) // 4
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        (4 << 4) | ihl,
        0,
        ihl * 4 + len(data),
        ident,
        (0x2000 if mf else 0) | (offset >> 3),
        64,
        proto,
        0,
        SRC,
        DST,
    )
    return MAC + b"\x08\x00" + hdr + options + data


def fragments(seg: bytes, size: int, *, ident: int = 77, first_options: bytes = b"") -> list[bytes]:
    """Split ``seg`` into fragments of ``size`` bytes (a multiple of 8); the first may carry options."""
    out = []
    for pos in range(0, len(seg), size):
        piece = seg[pos : pos + size]
        out.append(
            ip_frag(
                piece, pos, pos + size < len(seg), ident=ident, options=first_options if pos == 0 else b""
            )
        )
    return out


EXPECTED: TcpPacket = (KEY, 1000, 2000, 0x18, PAYLOAD)


def run(
    frames: list[bytes], decoder: Decoder | None = None, ts_step: int = 1000
) -> tuple[Decoder, list[tuple[int, TcpPacket]]]:
    d = decoder if decoder is not None else Decoder()
    out = []
    for i, f in enumerate(frames, 1):
        pkt = d.decode(i, i * ts_step, 1, f, len(f))
        if pkt is not None:
            out.append((i, pkt))
    return d, out


def codes(d: Decoder) -> list[str]:
    return [i.code for i in d.issues]


# --------------------------------------------------------------------------- orders


def test_in_order_emitted_by_last_fragment() -> None:
    frames = fragments(tcp(), 200)
    d, out = run(frames)
    assert out == [(len(frames), EXPECTED)]
    assert d.counts["fragments"] == len(frames) and d.counts["reassembled"] == 1
    d.flush()
    assert d.issues == [] and d.defrag.held_bytes == 0


def test_reversed() -> None:
    frames = fragments(tcp(), 96)[::-1]
    d, out = run(frames)
    assert out == [(len(frames), EXPECTED)]
    d.flush()
    assert d.issues == []


@pytest.mark.parametrize("seed", range(10))
def test_shuffled(seed: int) -> None:
    frames = fragments(tcp(), 64)
    random.Random(seed).shuffle(frames)
    d, out = run(frames)
    assert out == [(len(frames), EXPECTED)]
    d.flush()
    assert d.issues == []


def test_duplicated_fragments() -> None:
    frames = fragments(tcp(), 200)
    doubled = [f for f in frames[:-1] for _ in (0, 1)] + [frames[-1], frames[-1]]
    d, out = run(doubled)
    assert out == [(len(doubled) - 1, EXPECTED)]
    assert d.issues == []  # identical overlaps are not conflicts
    assert d.counts["fragment_overlaps"] == len(frames) - 1
    d.flush()
    # the late copy of the last fragment starts a datagram that cannot complete: a duplicate, not a loss
    assert codes(d) == ["fragment_duplicate"]


def test_overlap_with_conflict_first_arrival_wins() -> None:
    seg = tcp()
    frames = fragments(seg, 200)
    evil = bytearray(seg[200:400])
    evil[50:60] = b"X" * 10
    rogue = ip_frag(bytes(evil[40:120]), 240, True)  # overlaps fragment 2 with different bytes
    d, out = run([frames[0], frames[1], rogue, *frames[2:]])
    assert [p for _, p in out] == [EXPECTED]
    assert codes(d) == ["fragment_overlap_conflict"]
    assert "in 250-260;" in d.issues[0].detail

    # the rogue fragment first: its bytes are kept
    d, out = run([rogue, *frames])
    assert len(out) == 1
    want = bytearray(PAYLOAD)
    want[180 + 50 : 180 + 60] = b"X" * 10  # offset 250 in the segment = 230 in the payload
    assert out[0][1][4] == bytes(want)
    assert codes(d) == ["fragment_overlap_conflict"]


def test_missing_fragment_never_emitted_reported_at_flush() -> None:
    frames = fragments(tcp(), 96)
    del frames[3]
    d, out = run(frames)
    assert out == []
    assert d.issues == []
    d.flush()
    assert codes(d) == ["fragment_incomplete"]
    assert "288-384" in d.issues[0].detail and "frame 1" in d.issues[0].detail
    assert d.defrag.pending == 0 and d.defrag.held_bytes == 0


def test_options_and_fragments() -> None:
    opts = b"\x44\x0c\x05\x00" + bytes(8)  # timestamp option, 12 bytes
    frames = fragments(tcp(), 128, first_options=opts)
    d, out = run(frames[::-1])
    assert out == [(len(frames), EXPECTED)]
    assert d.issues == []


def test_two_datagrams_interleaved_by_ident() -> None:
    a = fragments(tcp(), 256, ident=1)
    b = fragments(tcp(b"other" * 20), 24, ident=2)
    frames = [f for pair in zip(a, b) for f in pair] + b[len(a) :]
    d, out = run(frames)
    assert sorted(p[4] for _, p in out) == sorted([PAYLOAD, b"other" * 20])
    assert d.issues == []


# --------------------------------------------------------------------------- evasions and bounds


def test_tiny_first_fragment() -> None:
    seg = tcp()
    frames = [ip_frag(seg[:8], 0, True), ip_frag(seg[8:], 8, False)]
    d, out = run(frames)
    assert out == [(2, EXPECTED)]
    assert codes(d) == ["fragment_tiny"]


def test_overlap_rewriting_tcp_header() -> None:
    seg = tcp()
    rst = tcp(flags=0x04)
    frames = fragments(seg, 200)
    rewrite = ip_frag(rst[8:24], 8, True)  # offset 1 (RFC 3128): rewrites seq/ack/flags
    d, out = run([frames[0], rewrite, *frames[1:]])
    assert [p for _, p in out] == [EXPECTED]  # the first header is kept
    assert codes(d) == ["fragment_overlap_conflict", "fragment_tcp_header_rewrite"]
    assert "in 13-14 of the 20-byte TCP header" in d.issues[1].detail

    d, out = run([rewrite, *frames])  # rewrite arrives first: its flags win, and it is reported
    assert [p[3] for _, p in out] == [0x04]
    assert codes(d) == ["fragment_overlap_conflict", "fragment_tcp_header_rewrite"]


def test_identical_overlap_of_tcp_header_is_not_reported() -> None:
    seg = tcp()
    frames = fragments(seg, 200)
    d, out = run([frames[0], ip_frag(seg[8:24], 8, True), *frames[1:]])
    assert [p for _, p in out] == [EXPECTED]
    assert d.issues == [] and d.counts["fragment_overlaps"] == 1


def test_too_large_fragment() -> None:
    d, out = run([ip_frag(b"A" * 64, 65528, False), ip_frag(tcp(b"")[:16], 0, True)])
    assert out == []
    assert codes(d)[0] == "fragment_too_large"


def test_end_conflicts() -> None:
    seg = tcp()
    frames = fragments(seg, 200)
    short_last = ip_frag(seg[200:208], 200, False)  # would end the datagram at 208

    d, out = run([frames[0], frames[1], short_last, *frames[2:]])  # bytes up to 400 already held
    assert [p for _, p in out] == [EXPECTED]
    assert codes(d) == ["fragment_end_conflict"] and "up to 400" in d.issues[0].detail

    d, out = run([frames[-1], short_last, *frames[:-1]])  # the end 788 was already known
    assert [p for _, p in out] == [EXPECTED]
    assert codes(d) == ["fragment_end_conflict"] and "ended it at 788" in d.issues[0].detail

    d, out = run([short_last, frames[1], frames[0]])  # end 208 first: the later, longer fragment is dropped
    assert [p[4] for _, p in out] == [PAYLOAD[:188]]
    assert codes(d) == ["fragment_end_conflict"] and "beyond the datagram end 208" in d.issues[0].detail


def test_misaligned_fragment() -> None:
    seg = tcp()
    frames = [ip_frag(seg[:100], 0, True), ip_frag(seg[96:], 96, False)]
    d, out = run(frames)
    assert [p for _, p in out] == [EXPECTED]
    assert codes(d) == ["fragment_misaligned"]


def test_timeout_on_same_key() -> None:
    frames = fragments(tcp(), 256)
    d = Decoder(defrag_timeout_ns=10)
    assert d.decode(1, 0, 1, frames[0], len(frames[0])) is None
    assert d.decode(2, 100, 1, frames[1], len(frames[1])) is None
    assert codes(d) == ["fragment_timeout"]
    assert "frame 1" in d.issues[0].detail


def test_timeout_scan_is_periodic() -> None:
    d = Decoder(defrag_timeout_ns=1000)
    first = fragments(tcp(), 256, ident=1)[0]
    d.decode(1, 0, 1, first, len(first))
    for i in range(TIMEOUT_SCAN_EVERY - 1):
        f = ip_frag(b"z" * 8, 8, True, ident=1000 + i)
        d.decode(i + 2, 10**6 + i, 1, f, len(f))
    assert d.issue_counts.get("fragment_timeout") == 1  # the scan dropped only the old datagram
    assert d.defrag.pending == TIMEOUT_SCAN_EVERY - 1


def test_eviction_keeps_memory_bounded() -> None:
    budget = 4 * (SET_OVERHEAD + PIECE_OVERHEAD + 200)
    d = Decoder(defrag_max_bytes=budget)
    for ident in range(50):
        f = fragments(tcp(), 200, ident=ident)[0]
        d.decode(ident + 1, ident, 1, f, len(f))
        assert d.defrag.held_bytes <= budget
    assert d.issue_counts["fragment_evicted"] == 46
    assert d.issues[0].frame == 1  # oldest first
    # a complete datagram still goes through
    _, out = run(fragments(tcp(), 200, ident=999), d)
    assert [p for _, p in out] == [EXPECTED]


def test_non_tcp_fragments_are_not_held() -> None:
    d, out = run([ip_frag(b"u" * 64, 0, True, proto=17)])
    assert out == [] and d.defrag.pending == 0 and d.counts["non_tcp"] == 1


def test_cut_fragment_not_reassembled() -> None:
    frames = fragments(tcp(), 400)
    d = Decoder()
    d.decode(1, 0, 1, frames[0][:-10], len(frames[0]))
    assert codes(d) == ["snaplen_cut_payload"]
    assert d.defrag.pending == 0


def test_ident_reuse_after_completion_is_reassembled_again() -> None:
    frames = fragments(tcp(), 256)
    d, out = run(frames + frames)
    assert [i for i, _ in out] == [len(frames), 2 * len(frames)]
    d.flush()
    assert d.issues == []


def test_done_memo_is_bounded() -> None:
    dfr = Defragmenter(max_bytes=10**9, timeout_ns=10**18, report=lambda f, c, t: None, counts={})
    for ident in range(DONE_MEMO + 10):
        key = ident.to_bytes(4, "big")
        dfr.add(1, 0, key, 8, False, b"b" * 8, 65535)
        assert dfr.add(1, 0, key, 0, True, b"a" * 8, 65535) == b"a" * 8 + b"b" * 8
    assert len(dfr._done) == DONE_MEMO
    assert dfr.held_bytes == 0


# --------------------------------------------------------------------------- cross-check with scapy


@pytest.mark.parametrize("fragsize", [8, 24, 200, 1000])
def test_scapy_fragments_reassemble_to_unfragmented(fragsize: int) -> None:
    from scapy.layers.inet import IP, TCP, fragment
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    pkt = (
        IP(src="192.0.2.1", dst="192.0.2.2", id=4242)
        / TCP(sport=1234, dport=143, seq=5, ack=6, flags="PA")
        / Raw(PAYLOAD)
    )
    ether = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")  # explicit: no ARP/route lookups
    whole = bytes(ether / pkt)
    expected = Decoder().decode(1, 0, 1, whole, len(whole))
    assert expected is not None
    frags = [bytes(ether / f) for f in fragment(pkt, fragsize=fragsize)]  # type: ignore[no-untyped-call]
    random.Random(fragsize).shuffle(frags)
    d, out = run(frags)
    assert [p for _, p in out] == [expected]
    assert set(codes(d)) <= {"fragment_tiny"}


# --------------------------------------------------------------------------- properties


@settings(max_examples=200, deadline=None)
@given(
    frags=st.lists(
        st.tuples(
            st.integers(0, 3),  # which datagram
            st.integers(0, 70000),  # offset
            st.booleans(),  # more
            st.binary(max_size=120),
            st.integers(0, 10**6),  # ts
        ),
        max_size=60,
    ),
    budget=st.integers(0, 4000),
)
def test_random_fragments_never_raise_and_stay_bounded(
    frags: list[tuple[int, int, bool, bytes, int]], budget: int
) -> None:
    issues: list[str] = []
    dfr = Defragmenter(max_bytes=budget, timeout_ns=10**5, report=lambda f, c, t: issues.append(c), counts={})
    for i, (which, offset, more, data, ts) in enumerate(frags):
        out = dfr.add(i, ts, bytes([which]), offset, more, data, 65535)
        assert out is None or len(out) <= 65535
        assert dfr.held_bytes <= budget
    dfr.flush()
    assert dfr.held_bytes == 0 and dfr.pending == 0


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(1, 40).map(lambda n: n * 8),
    order=st.randoms(use_true_random=False),
    dups=st.lists(st.integers(0, 200), max_size=5),
)
def test_any_order_with_duplicates_gives_the_datagram(
    size: int, order: random.Random, dups: list[int]
) -> None:
    frames = fragments(tcp(), size)
    frames += [frames[i % len(frames)] for i in dups]
    order.shuffle(frames)
    d, out = run(frames)
    assert out and out[0][1] == EXPECTED
    assert all(p == EXPECTED for _, p in out)
    assert set(codes(d)) <= {"fragment_tiny"}


@settings(max_examples=200, deadline=None)
@given(
    total=st.integers(1, 200),
    pieces=st.lists(st.tuples(st.integers(0, 199), st.integers(1, 80), st.booleans()), max_size=40),
)
def test_first_arrival_wins_model(total: int, pieces: list[tuple[int, int, bool]]) -> None:
    """Random overlapping slices of two different datagrams, then one covering everything: the result is,
    byte by byte, the first arrival, and every conflicting fragment is reported."""
    base = bytes(random.Random(total).randrange(256) for _ in range(total))
    alt = bytes(b ^ 0xFF for b in base)
    issues: list[str] = []
    dfr = Defragmenter(max_bytes=10**9, timeout_ns=10**18, report=lambda f, c, t: issues.append(c), counts={})
    model: list[int | None] = [None] * total  # first-arrival byte per position
    conflicts = 0
    completed = None
    for i, (start, length, use_alt) in enumerate([*pieces, (0, total, False)]):
        start %= total
        end = min(start + length, total)
        src = alt if use_alt else base
        conflicts += any(model[p] is not None and model[p] != src[p] for p in range(start, end))
        for p in range(start, end):
            if model[p] is None:
                model[p] = src[p]
        out = dfr.add(i, 0, b"k", start, end != total, src[start:end], 65535)
        if all(b is not None for b in model):
            completed = out
            break
        assert out is None
    assert completed == bytes(b for b in model if b is not None)
    assert dfr.held_bytes == 0 and dfr.pending == 0
    assert issues.count("fragment_overlap_conflict") == conflicts
