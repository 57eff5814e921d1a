"""Any reordering and duplication of a segment list gives the same stream bytes and the same gaps."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings, strategies as st

from analyzer.flows.reassembly import HalfStream, Out

MASK = (1 << 32) - 1


@dataclass(frozen=True)
class Scenario:
    isn: int
    stream: bytes  # the true bytes of the direction
    segs: tuple[tuple[int, int], ...]  # (offset, length) captured, possibly overlapping
    order: tuple[int, ...]  # arrival order: indexes into segs, with repeats (duplicates)
    fin_at: int | None  # index in ``order`` before which the FIN (at len(stream)) arrives


def covered(segs: tuple[tuple[int, int], ...]) -> list[tuple[int, int]]:
    """Union of the segments as sorted, disjoint [start, end) ranges."""
    out: list[tuple[int, int]] = []
    for s, n in sorted(segs):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], s + n))
        else:
            out.append((s, s + n))
    return out


def expected(sc: Scenario, base: int = 0) -> tuple[bytes, list[tuple[int, int]]]:
    """Bytes and gaps a correct reassembler delivers after flush, offsets relative to ``base``."""
    data = bytearray()
    gaps: list[tuple[int, int]] = []
    pos = base
    for s, e in covered(sc.segs):
        if s > pos:
            gaps.append((pos - base, s - pos))
        data += sc.stream[s:e]
        pos = e
    if sc.fin_at is not None and pos < len(sc.stream):
        gaps.append((pos - base, len(sc.stream) - pos))
    return bytes(data), gaps


def replay(
    sc: Scenario, order: tuple[int, ...], *, with_syn: bool = True
) -> tuple[bytes, list[tuple[int, int]], HalfStream]:
    h = HalfStream()
    items: list[Out] = []
    if with_syn:
        h.syn(sc.isn)
    for i, idx in enumerate(order):
        if sc.fin_at == i:
            items += h.fin((sc.isn + 1 + len(sc.stream)) & MASK)
        off, n = sc.segs[idx]
        items += h.segment((sc.isn + 1 + off) & MASK, sc.stream[off : off + n], idx + 1, idx)
    if sc.fin_at is not None and sc.fin_at >= len(order):
        items += h.fin((sc.isn + 1 + len(sc.stream)) & MASK)
    items += h.flush()
    data = bytearray()
    gaps: list[tuple[int, int]] = []
    pos = 0
    for kind, off, val in items:
        assert off == pos
        if kind == "data":
            assert isinstance(val, bytes) and val
            data += val
            pos += len(val)
        else:
            assert kind == "gap" and isinstance(val, int) and val > 0
            gaps.append((off, val))
            pos += val
    assert h.ooo_bytes == 0 and h.conflict_count == 0
    return bytes(data), gaps, h


@st.composite
def scenarios(draw: st.DrawFn, *, max_segs: int = 25, disjoint: bool = False) -> Scenario:
    length = draw(st.integers(1, 3000))
    isn = draw(st.one_of(st.integers(0, MASK), st.integers(MASK - 3000, MASK)))
    stream = draw(st.binary(min_size=length, max_size=length))
    if disjoint:
        cuts = sorted(
            set(draw(st.lists(st.integers(1, length - 1), max_size=max_segs - 1)) if length > 1 else [])
        )
        bounds = [0, *cuts, length]
        pieces = [(a, b - a) for a, b in zip(bounds, bounds[1:])]
        keep = draw(st.lists(st.booleans(), min_size=len(pieces), max_size=len(pieces)))
        segs = tuple(p for p, k in zip(pieces, keep) if k) or (pieces[0],)
    else:
        raw = draw(
            st.lists(
                st.tuples(st.integers(0, length - 1), st.integers(1, 400)), min_size=1, max_size=max_segs
            )
        )
        segs = tuple((off, min(n, length - off)) for off, n in raw)
    copies = draw(st.lists(st.integers(1, 3), min_size=len(segs), max_size=len(segs)))
    arrivals = [i for i, c in enumerate(copies) for _ in range(c)]
    order = tuple(draw(st.permutations(arrivals)))
    fin_at = draw(st.one_of(st.none(), st.integers(0, len(order))))
    return Scenario(isn, stream, segs, order, fin_at)


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_any_permutation_with_duplicates_equals_in_order(sc: Scenario) -> None:
    want_data, want_gaps = expected(sc)
    in_order = tuple(sorted(range(len(sc.segs)), key=lambda i: sc.segs[i]))
    ref = Scenario(sc.isn, sc.stream, sc.segs, in_order, None if sc.fin_at is None else len(in_order))
    data, gaps, h = replay(ref, in_order)
    assert (data, gaps) == (want_data, want_gaps)
    data, gaps, h = replay(sc, sc.order)
    assert (data, gaps) == (want_data, want_gaps)
    assert h.closed == (sc.fin_at is not None)
    # every byte received beyond the first copy was counted as a retransmission
    assert h.retransmitted_bytes == sum(sc.segs[i][1] for i in sc.order) - len(want_data)
    # frame map: each delivered byte maps to exactly one frame that carried it
    for s, e in covered(sc.segs)[:5]:
        for frame in h.frames_for(s, e):
            off, n = sc.segs[frame - 1]
            assert off < e and s < off + n


@settings(max_examples=200, deadline=None)
@given(scenarios(max_segs=7, disjoint=True))
def test_mid_stream_pickup_base_is_lowest_sequence(sc: Scenario) -> None:
    if sc.fin_at is not None:  # a FIN fixes the base: let it come last
        sc = Scenario(sc.isn, sc.stream, sc.segs, sc.order, len(sc.order))
    base = min(off for off, _ in sc.segs)
    want_data, want_gaps = expected(sc, base)
    data, gaps, h = replay(sc, sc.order, with_syn=False)
    assert (data, gaps) == (want_data, want_gaps)
    assert not h.saw_syn and h.late_bytes == 0
