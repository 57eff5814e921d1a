"""TCP stream reassembly for one direction of a connection (bounded, gap-aware).

Strategy:
  Positions. Sequence numbers are 32-bit and wrap (RFC 9293 §3.4). Internally every
  byte has an unbounded integer *position*; once the base is fixed, position ==
  stream offset (offset 0 = ISN + 1 with a SYN). A segment's position is its
  sequence number read as a signed 32-bit delta from the sequence number of
  ``next_offset``: ``pos = next + ((seq - next_seq + 2**31) % 2**32 - 2**31)``
  (RFC 1982 serial arithmetic). A delta of 2**31 is ambiguous, so anything more
  than ``MAX_WINDOW`` (2**30, the largest scaled window) ahead of or behind the
  stream is dropped and counted in ``out_of_window``: we never buffer holes, never
  allocate by sequence distance.

  First arrival wins. Bytes already delivered are never changed, and held
  out-of-order bytes keep their content when a later overlapping segment
  arrives; only the new, non-overlapping parts of a segment are added. Overlapping
  bytes are compared with what was kept (held bytes, or the last
  ``history_bytes`` delivered bytes): differing content is a *conflict* (an
  IDS-evasion signal, Zeek's ``rexmit_inconsistency``), recorded as the
  (offset, length) from the first to the last differing byte. For ordinary
  retransmissions (same bytes again, whole or partial) this gives exactly
  Wireshark's "Follow TCP Stream" output; the unit tests cross-check that with
  tshark when it is installed.

  Holding. Out-of-order pieces live in a dict ``position -> (bytes, frame, ts)``
  plus a bucketed sorted list of positions (sortedcontainers' idea: bisect on the
  bucket maxima, then in a bucket), so insert, predecessor and successor cost
  O(log n) plus a small memmove even with a million pieces held. Held pieces
  never overlap each other and always start after ``next_offset``. When the hold
  exceeds ``max_ooo_bytes`` or ``max_ooo_segments``, the lowest hole is declared a
  gap and the data up to the next hole is delivered, repeatedly, until under the
  bound: memory stays bounded and progress is guaranteed.

  Gaps. A gap item is emitted exactly once per hole, and only when data after it
  proves the hole: held data when the hold overflows or at ``flush()``; an ACK
  from the other side beyond ``next_offset`` while data is held (Zeek's rule: the
  receiver got bytes we never captured; the whole hole, up to the first held
  byte, is declared); or a FIN whose position is beyond the delivered data at
  ``flush()``. A loss of unknown length at the end (RST/EOF with nothing after
  it) emits nothing. Bytes are never zero-filled: data after a gap starts at its
  true offset (gap offset + gap length). Bytes that arrive later for a range
  already declared a gap, or before the base, are dropped and counted in
  ``late_bytes``.

  Mid-stream pickup (no SYN). Until the first delivery, segments are held with
  positions relative to the first sequence number seen, and the base is the
  lowest held position. Delivery starts (the base is fixed and the held pieces
  are re-keyed to offsets) on ``release()`` (the flow table calls it before the
  other direction delivers), when ``PICKUP_MAX_SEGMENTS`` pieces or
  ``PICKUP_MAX_BYTES`` bytes are held, or on FIN, on an ACK proving a hole, or on
  ``flush()``. With a SYN, in-order data is delivered at once. A SYN that arrives
  before anything was delivered (capture reordering) re-keys what is held; once a
  SYN was seen, a SYN with another ISN only replaces it while nothing is held, and
  any SYN after the first delivery is ignored (port reuse is the flow table's job).
  Caveat: before the base is fixed, positions are relative to the first sequence
  number seen, so segments more than MAX_WINDOW from that first one are dropped.

  FIN. ``fin()`` records the end position; data beyond it is dropped (counted in
  ``after_fin_bytes``), data before it may still arrive out of order. ``closed``
  becomes true once everything up to the FIN is delivered (or, at ``flush()``,
  declared a gap).

  Frame map. Every delivered run appends (start offset, frame, ts) to three
  ``array('q')`` columns; runs are contiguous (a gap is a run with frame -1), so
  a run ends where the next starts. Adjacent bytes from the same frame share one
  run. ``frames_for`` and ``ts_for`` are a bisect; ``trim()`` drops runs the parser
  no longer needs (amortized compaction). Gap ranges are also kept in two sorted
  columns, so a late byte can be told apart from a retransmitted one by bisect.

  Cost. In-order delivery with nothing held is a fast path: one comparison,
  three array appends, a bytearray append for the history, and no copy of the
  payload (the same ``bytes`` object is returned). ``release()`` of a stream with
  nothing held returns at once. A new stream allocates little (a flow table makes
  two per connection, and keeps hundreds of thousands): the held-key set and
  dict, the gap columns, the run list and the conflict list are shared empty
  objects until first needed (the flow table, for its part, makes no stream at
  all for a direction that carries nothing). ``frames_and_ts`` gives an event's
  frames and timestamp with one bisect.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterator
from typing import Final

SEQ_MASK: Final = (1 << 32) - 1  # RFC 9293 §3.4: sequence numbers are 32-bit, arithmetic modulo 2**32
SEQ_HALF: Final = 1 << 31  # RFC 1982 §3.2: a distance of 2**31 is undefined in serial-number arithmetic
MAX_WINDOW: Final = 1 << 30  # RFC 7323 §2.3: window scale shift <= 14, so no window exceeds 2**30 bytes
PICKUP_MAX_SEGMENTS: Final = 8  # brief H3: mid-stream pickup picks its base after this many held pieces
PICKUP_MAX_BYTES: Final = (
    64 * 1024
)  # brief H3: ... or this many held bytes (one unscaled window, RFC 9293 §3.1)
DEFAULT_HISTORY_BYTES: Final = 64 * 1024  # RFC 9293 §3.1: 16-bit window, what an unscaled sender can resend
MAX_CONFLICTS_KEPT: Final = 100  # brief H3: the first 100 conflicting ranges are kept, the rest only counted
GAP_FRAME: Final = -1  # frame number stored for a run that is a gap (real frame numbers are >= 0)
_SORTED_LOAD: Final = 512  # bucket size of the sorted key list (sortedcontainers uses 1000)
_TS_MIN: Final = -(1 << 63)  # array('q') range: timestamps outside it are clamped (year 1677 .. 2262 in ns)
_TS_MAX: Final = (1 << 63) - 1
_COMPACT_MIN: Final = 1024  # trimmed runs are compacted away once at least this many are dead

# Output items, in stream order:
#   ("data", offset: int, data: bytes)    -- contiguous new bytes starting at stream offset
#   ("gap", offset: int, length: int)     -- bytes that will never be seen (length > 0)
Out = tuple[str, int, object]


class _SortedInts:
    """A sorted set of ints stored as buckets of sorted lists (bisect on bucket maxima)."""

    __slots__ = ("_lists", "_maxes")

    def __init__(self) -> None:
        self._lists: list[list[int]] = []
        self._maxes: list[int] = []

    def __iter__(self) -> Iterator[int]:
        for lst in self._lists:
            yield from lst

    def clear(self) -> None:
        """Remove every key."""
        self._lists.clear()
        self._maxes.clear()

    def add(self, x: int) -> None:
        """Insert ``x`` (which must not be present)."""
        maxes = self._maxes
        if not maxes:
            self._lists.append([x])
            maxes.append(x)
            return
        i = bisect_left(maxes, x)
        if i == len(maxes):
            i -= 1
            lst = self._lists[i]
            lst.append(x)
            maxes[i] = x
        else:
            lst = self._lists[i]
            insort(lst, x)
        if len(lst) > 2 * _SORTED_LOAD:
            upper = lst[_SORTED_LOAD:]
            del lst[_SORTED_LOAD:]
            maxes[i] = lst[-1]
            self._lists.insert(i + 1, upper)
            maxes.insert(i + 1, upper[-1])

    def remove(self, x: int) -> None:
        """Remove ``x`` (which must be present)."""
        i = bisect_left(self._maxes, x)
        lst = self._lists[i]
        del lst[bisect_left(lst, x)]
        if not lst:
            del self._lists[i]
            del self._maxes[i]
        else:
            self._maxes[i] = lst[-1]

    def first(self) -> int:
        """Smallest key (the set must not be empty)."""
        return self._lists[0][0]

    def last(self) -> int:
        """Largest key (the set must not be empty)."""
        return self._maxes[-1]

    def pop_first(self) -> int:
        """Remove and return the smallest key (the set must not be empty)."""
        lst = self._lists[0]
        x = lst.pop(0)
        if not lst:
            del self._lists[0]
            del self._maxes[0]
        return x

    def floor(self, x: int) -> int | None:
        """Largest key <= x, or None."""
        maxes = self._maxes
        i = bisect_left(maxes, x)
        if i < len(maxes):
            lst = self._lists[i]
            j = bisect_right(lst, x)
            if j:
                return lst[j - 1]
        return maxes[i - 1] if i else None

    def around(self, x: int) -> tuple[int | None, int | None]:
        """(largest key <= x, smallest key > x), either None, with one bucket lookup."""
        maxes = self._maxes
        i = bisect_left(maxes, x)
        if i == len(maxes):
            return (maxes[-1] if maxes else None), None
        lst = self._lists[i]
        j = bisect_right(lst, x)
        below = lst[j - 1] if j else (maxes[i - 1] if i else None)
        if j < len(lst):
            return below, lst[j]
        return below, (self._lists[i + 1][0] if i + 1 < len(self._lists) else None)

    def ceil(self, x: int) -> int | None:
        """Smallest key >= x, or None."""
        maxes = self._maxes
        i = bisect_left(maxes, x)
        if i == len(maxes):
            return None
        lst = self._lists[i]
        return lst[bisect_left(lst, x)]


def _first_diff(a: bytes | bytearray, b: bytes | bytearray) -> int:
    """Index of the first differing byte of two equal-length, different sequences."""
    lo, hi = 0, len(a)  # a[:lo] == b[:lo]; a difference lies in [lo, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _last_diff(a: bytes | bytearray, b: bytes | bytearray, lo: int) -> int:
    """Index of the last differing byte, given that ``lo`` differs."""
    hi = len(a)  # a[hi:] == b[hi:]; a difference lies in [lo, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[mid:hi] == b[mid:hi]:
            hi = mid
        else:
            lo = mid
    return lo


_EMPTY_Q: Final = array("q")  # copied (a slice is three times cheaper than array("q")) for new columns
#: Shared, never mutated: the key set and gap columns of every stream that has not needed its own yet
#: (most never do). The only writers, _hold and _gap, replace them with fresh objects first.
_NO_KEYS: Final = _SortedInts()
_NO_GAPS: Final = array("q")
#: Shared empty containers in the same way: the held pieces (replaced by _hold), the pieces of the
#: current run (replaced by _deliver) and the conflict list (replaced by _compare).
_NO_HELD: Final[dict[int, tuple[bytes, int, int]]] = {}
_NO_RUN: Final[list[bytes]] = []
_NO_CONFLICTS: Final[list[tuple[int, int]]] = []


class HalfStream:
    """Reassembles one direction of a TCP connection into ordered data and gap items."""

    __slots__ = (
        "max_ooo_bytes",
        "max_ooo_segments",
        "next_offset",
        "started",
        "saw_syn",
        "closed",
        "gaps",
        "gap_bytes",
        "retransmitted_bytes",
        "conflicts",
        "conflict_count",
        "ooo_bytes",
        "out_of_window",
        "late_bytes",
        "after_fin_bytes",
        "_based",
        "_ref",
        "_next_seq",
        "_fin",
        "_keys",
        "_held",
        "_hist",
        "_hist_start",
        "_hist_max",
        "_iv_start",
        "_iv_frame",
        "_iv_ts",
        "_iv_head",
        "_gap_start",
        "_gap_end",
        "_gap_head",
        "_run",
        "_run_start",
    )

    def __init__(
        self,
        *,
        max_ooo_bytes: int = 4 * 1024 * 1024,
        max_ooo_segments: int = 4096,
        history_bytes: int = DEFAULT_HISTORY_BYTES,
    ) -> None:
        # (conditional expressions, not max(): a flow table makes two of these per connection)
        #: out-of-order bytes held before a gap is forced
        self.max_ooo_bytes = max_ooo_bytes if max_ooo_bytes > 0 else 0
        #: out-of-order pieces held before a gap is forced
        self.max_ooo_segments = max_ooo_segments if max_ooo_segments > 0 else 0
        self.next_offset = 0  #: stream offset of the next byte expected (== bytes delivered + gaps)
        self.started = False  #: a reference sequence number is known (SYN, first segment or FIN seen)
        self.saw_syn = False  #: the base comes from a SYN (offset 0 = ISN + 1)
        self.closed = False  #: everything up to the FIN was delivered (or declared a gap by flush)
        self.gaps = 0  #: number of gap items emitted
        self.gap_bytes = 0  #: total length of the gap items emitted
        self.retransmitted_bytes = 0  #: bytes received again that were already delivered or held
        self.conflicts: list[tuple[int, int]] = _NO_CONFLICTS  #: (offset, length) of differing overlaps, first 100
        self.conflict_count = 0  #: number of overlaps whose content differed from the kept bytes
        self.ooo_bytes = 0  #: bytes currently held out of order
        self.out_of_window = 0  #: segments and FINs dropped for being more than MAX_WINDOW away
        self.late_bytes = 0  #: bytes dropped because they lie before the base or inside a declared gap
        self.after_fin_bytes = 0  #: bytes dropped because they lie at or beyond the FIN
        self._based = False  # positions are stream offsets (base fixed)
        self._ref = 0  # sequence number of position 0
        self._next_seq = 0  # sequence number of next_offset (valid once based)
        self._fin: int | None = None  # position of the FIN
        self._keys = _NO_KEYS  # positions of held pieces (the shared empty set until the first hold)
        self._held: dict[int, tuple[bytes, int, int]] = _NO_HELD  # position -> (bytes, frame, ts_ns)
        self._hist = bytearray()  # the last delivered bytes, covering [_hist_start, next_offset)
        self._hist_start = 0
        self._hist_max = history_bytes if history_bytes > 0 else 0
        self._iv_start: array[int] = _EMPTY_Q[:]  # run start offsets (a run ends where the next starts)
        self._iv_frame: array[int] = _EMPTY_Q[:]  # frame that delivered the run (GAP_FRAME for a gap)
        self._iv_ts: array[int] = _EMPTY_Q[:]  # capture timestamp of that frame
        self._iv_head = 0  # runs before this index were trimmed
        self._gap_start: array[int] = _NO_GAPS  # declared gaps, sorted (shared empty array until the first)
        self._gap_end: array[int] = _NO_GAPS
        self._gap_head = 0
        self._run: list[bytes] = _NO_RUN  # pieces delivered by the current call, not yet emitted
        self._run_start = 0

    # ------------------------------------------------------------------ input

    def syn(self, seq: int) -> None:
        """A SYN (or SYN-ACK) with this sequence number was seen: stream offset 0 = seq + 1."""
        if self.next_offset or self._fin is not None:
            return  # data already started: port reuse is the flow table's business
        base = (seq + 1) & SEQ_MASK
        if not self.started:
            self.started = self.saw_syn = self._based = True
            self._ref = self._next_seq = base
            return
        shift = ((base - self._ref + SEQ_HALF) & SEQ_MASK) - SEQ_HALF
        if self._held:
            if not shift:
                pass  # a retransmitted SYN
            elif self.saw_syn:
                return  # another ISN while data is held: keep the first (re-keying costs O(held) per SYN)
            elif shift > MAX_WINDOW or shift < -MAX_WINDOW:
                self.out_of_window += 1
                return
            else:
                self._rebase(shift)  # pickup data arrived before the SYN: at most PICKUP_MAX_SEGMENTS pieces
        else:
            self._ref = base
        self.saw_syn = self._based = True
        self._next_seq = self._ref

    def segment(self, seq: int, payload: bytes, frame: int, ts_ns: int) -> list[Out]:
        """A TCP segment of this direction carrying payload (may be empty: then returns [])."""
        n = len(payload)
        if not n:
            return []
        if ts_ns < _TS_MIN or ts_ns > _TS_MAX:
            ts_ns = _TS_MIN if ts_ns < _TS_MIN else _TS_MAX
        if self._based:
            nxt = self.next_offset
            if (seq & SEQ_MASK) == self._next_seq and not self._held and self._fin is None:
                # fast path: in order, nothing held
                fr = self._iv_frame
                if not fr or fr[-1] != frame:
                    self._iv_start.append(nxt)
                    fr.append(frame)
                    self._iv_ts.append(ts_ns)
                hmax = self._hist_max
                if hmax:
                    h = self._hist
                    h += payload
                    if len(h) > 2 * hmax:
                        cut = len(h) - hmax
                        del h[:cut]
                        self._hist_start += cut
                self.next_offset = nxt + n
                self._next_seq = (self._next_seq + n) & SEQ_MASK
                return [("data", nxt, payload)]
            d = ((seq - self._next_seq + SEQ_HALF) & SEQ_MASK) - SEQ_HALF
            if d > MAX_WINDOW or d + n < -MAX_WINDOW:
                self.out_of_window += 1
                return []
            return self._segment_based(nxt + d, payload, frame, ts_ns)
        out: list[Out] = []
        if not self.started:
            self.started = True
            self._ref = seq & SEQ_MASK
            pos = 0
        else:
            pos = ((seq - self._ref + SEQ_HALF) & SEQ_MASK) - SEQ_HALF
            if pos > MAX_WINDOW or pos + n < -MAX_WINDOW:
                self.out_of_window += 1
                return out
        self._insert(pos, payload, frame, ts_ns)
        if len(self._held) >= PICKUP_MAX_SEGMENTS or self.ooo_bytes >= PICKUP_MAX_BYTES:
            self._release(out)
        return self._finish(out)

    def fin(self, seq_after_data: int) -> list[Out]:
        """FIN seen at ``seq_after_data`` (the FIN's own seq); data beyond it is dropped from now on."""
        out: list[Out] = []
        if self._fin is not None:
            return out  # a retransmitted (or contradicting) FIN: the first one wins
        s = seq_after_data & SEQ_MASK
        if not self.started:
            # nothing seen before this FIN: an empty stream that starts and ends here
            self.started = self._based = self.closed = True
            self._ref = self._next_seq = s
            self._fin = 0
            return out
        if self._based:
            d = ((s - self._next_seq + SEQ_HALF) & SEQ_MASK) - SEQ_HALF
            if d < 0:
                return out  # a FIN below delivered data is inconsistent: ignored
            if d > MAX_WINDOW:
                self.out_of_window += 1
                return out
            self._fin = self.next_offset + d
        else:
            d = ((s - self._ref + SEQ_HALF) & SEQ_MASK) - SEQ_HALF
            if d > MAX_WINDOW or d < -MAX_WINDOW:
                self.out_of_window += 1
                return out
            self._fin = d
        self._drop_beyond_fin(self._fin)
        if not self._based:
            if self._held:
                self._release(out)
            else:
                # everything held lay beyond the FIN: the stream base is the FIN itself
                self._ref = self._next_seq = (self._ref + d) & SEQ_MASK
                self._fin = 0
                self._based = True
        self._drain()
        return self._finish(out)

    def ack(self, ack: int) -> list[Out]:
        """The other direction acknowledged up to ``ack``: a hole below it with held data after it is a gap."""
        if not self._held:
            return []
        out: list[Out] = []
        a = ack & SEQ_MASK
        if not self._based:
            apos = ((a - self._ref + SEQ_HALF) & SEQ_MASK) - SEQ_HALF
            if not self._pickup_hole_below(apos):
                return out
            self._release(out)
        else:
            self._drain()  # pieces re-keyed by a late SYN may already be in order
        d = ((a - self._next_seq + SEQ_HALF) & SEQ_MASK) - SEQ_HALF
        if 0 < d <= MAX_WINDOW:
            apos = self.next_offset + d
            while self._held and self.next_offset < apos:
                self._skip_to_held(out)
        return self._finish(out)

    def release(self) -> list[Out]:
        """Fix the base of a mid-stream pickup now (the other direction is about to deliver)."""
        if self._based and not self._held:
            return []  # the usual case (nothing changes, and _finish already noticed any FIN)
        out: list[Out] = []
        if not self._based:
            self._release(out)
        else:
            self._drain()
        return self._finish(out)

    def flush(self) -> list[Out]:
        """RST, end of capture or idle timeout: deliver everything held, with gap items for the holes."""
        out: list[Out] = []
        if not self._based:
            if not self._held:
                return out
            self._release(out)
        while self._held:
            self._skip_to_held(out)
        fin = self._fin
        if fin is not None and self.next_offset < fin:
            self._gap(fin - self.next_offset, out)
        return self._finish(out)

    # ------------------------------------------------------------ frame map

    @property
    def held_segments(self) -> int:
        """Number of out-of-order pieces currently held."""
        return len(self._held)

    def frames_for(self, start: int, end: int) -> tuple[int, ...]:
        """Frame numbers (ascending, unique) whose delivered bytes cover [start, end)."""
        nxt = self.next_offset
        if end > nxt:
            end = nxt
        starts = self._iv_start
        n = len(starts)
        head = self._iv_head
        if start >= end or head >= n:
            return ()
        i = bisect_right(starts, start, head, n) - 1
        if i < head:
            i = head
        return self._frames_from(i, end)

    def _frames_from(self, i: int, end: int) -> tuple[int, ...]:
        """Frames of the runs from index ``i`` that start before ``end``."""
        frames = self._iv_frame
        starts = self._iv_start
        n = len(starts)
        if starts[i] >= end:  # (i was moved up to the first run kept by trim)
            return ()
        if i + 1 >= n or starts[i + 1] >= end:  # one run (the usual case: a line inside one segment)
            f = frames[i]
            return () if f == GAP_FRAME else (f,)
        found: set[int] = set()
        while i < n and starts[i] < end:
            f = frames[i]
            if f != GAP_FRAME:
                found.add(f)
            i += 1
        return tuple(sorted(found))

    def ts_for(self, offset: int) -> int | None:
        """Capture timestamp (ns) of the frame that delivered the byte at offset."""
        if offset < 0 or offset >= self.next_offset:
            return None
        i = bisect_right(self._iv_start, offset, self._iv_head, len(self._iv_start)) - 1
        if i < self._iv_head or self._iv_frame[i] == GAP_FRAME:
            return None
        return self._iv_ts[i]

    def frames_and_ts(self, start: int, end: int) -> tuple[tuple[int, ...], int | None]:
        """``(frames_for(start, end), ts_for(start))`` with one bisect instead of two."""
        nxt = self.next_offset
        starts = self._iv_start
        n = len(starts)
        head = self._iv_head
        if start < 0 or start >= nxt or head >= n:
            return self.frames_for(start, end), None
        i = bisect_right(starts, start, head, n) - 1
        if i < head:  # start lies in a trimmed run
            return self.frames_for(start, end), None
        if end > nxt:
            end = nxt
        f = self._iv_frame[i]
        ts = None if f == GAP_FRAME else self._iv_ts[i]
        return (self._frames_from(i, end) if start < end else ()), ts

    def trim(self, before_offset: int) -> None:
        """Forget the frame map (and gap list) for bytes before ``before_offset``.

        Afterwards bytes arriving late for a trimmed gap are counted as retransmitted, not late.
        """
        starts = self._iv_start
        i = bisect_right(starts, before_offset, self._iv_head, len(starts)) - 1
        if i > self._iv_head:
            self._iv_head = i
            if i >= _COMPACT_MIN and 2 * i >= len(starts):
                del starts[:i]
                del self._iv_frame[:i]
                del self._iv_ts[:i]
                self._iv_head = 0
        ge = self._gap_end
        g = bisect_right(ge, before_offset, self._gap_head, len(ge))
        if g > self._gap_head:
            self._gap_head = g
            if g >= _COMPACT_MIN and 2 * g >= len(ge):
                del ge[:g]
                del self._gap_start[:g]
                self._gap_head = 0

    # ------------------------------------------------------------ internals

    def _segment_based(self, pos: int, payload: bytes, frame: int, ts_ns: int) -> list[Out]:
        """Slow path of segment() once the base is fixed: trim old/after-FIN bytes, hold or deliver."""
        out: list[Out] = []
        end = pos + len(payload)
        fin = self._fin
        if fin is not None and end > fin:
            cut = end - max(pos, fin)
            self.after_fin_bytes += cut
            end -= cut
            if end <= pos:
                return out
            payload = payload[: end - pos]
        nxt = self.next_offset
        if pos < nxt:
            self._account_old(pos, payload[: min(end, nxt) - pos])
            if end <= nxt:
                return out
            payload = payload[nxt - pos :]
            pos = nxt
        if pos == nxt and (not self._held or end <= self._keys.first()):
            self._deliver(pos, payload, frame, ts_ns)
        else:
            self._insert(pos, payload, frame, ts_ns)
        self._drain()
        self._enforce_bounds(out)
        return self._finish(out)

    def _insert(self, pos: int, data: bytes, frame: int, ts_ns: int) -> None:
        """Hold the parts of [pos, pos+len) not already held; compare the overlapping parts."""
        keys = self._keys
        held = self._held
        end = pos + len(data)
        k, above = keys.around(pos)
        if k is None or k + len(held[k][0]) <= pos:
            k = above
        cur = pos
        while cur < end:
            if k is None or k >= end:
                self._hold(cur, data[cur - pos :], frame, ts_ns)
                return
            if k > cur:
                self._hold(cur, data[cur - pos : k - pos], frame, ts_ns)
                cur = k
            kept = held[k][0]
            kend = k + len(kept)
            ov_end = min(end, kend)
            self._compare(cur, data[cur - pos : ov_end - pos], kept[cur - k : ov_end - k])
            cur = ov_end
            if cur < end:
                k = keys.ceil(kend)

    def _hold(self, pos: int, data: bytes, frame: int, ts_ns: int) -> None:
        if self._keys is _NO_KEYS:
            self._keys = _SortedInts()
        if self._held is _NO_HELD:
            self._held = {}
        self._keys.add(pos)
        self._held[pos] = (data, frame, ts_ns)
        self.ooo_bytes += len(data)

    def _compare(self, pos: int, new: bytes, kept: bytes | bytearray) -> None:
        """Count ``new`` as retransmitted over ``kept`` (same length); record a conflict if they differ."""
        self.retransmitted_bytes += len(new)
        if new != kept:
            lo = _first_diff(new, kept)
            hi = _last_diff(new, kept, lo) + 1
            self.conflict_count += 1
            if len(self.conflicts) < MAX_CONFLICTS_KEPT:
                if self.conflicts is _NO_CONFLICTS:
                    self.conflicts = []
                self.conflicts.append((pos + lo, hi - lo))

    def _account_old(self, pos: int, data: bytes) -> None:
        """Bytes wholly before next_offset: late (before base / in a gap) or retransmitted."""
        s = pos
        e = pos + len(data)
        if s < 0:
            self.late_bytes += min(e, 0) - s
            if e <= 0:
                return
            data = data[-s:]
            s = 0
        hs = self._hist_start
        if e > hs and self._hist:
            cs = max(s, hs)
            self._compare(cs, data[cs - s :], self._hist[cs - hs : e - hs])
            e = cs
        if s < e:
            late = self._gap_overlap(s, e)
            self.late_bytes += late
            self.retransmitted_bytes += e - s - late

    def _gap_overlap(self, s: int, e: int) -> int:
        """Number of bytes of [s, e) inside declared gaps."""
        gs = self._gap_start
        ge = self._gap_end
        n = len(ge)
        i = bisect_right(ge, s, self._gap_head, n)
        total = 0
        while i < n and gs[i] < e:
            total += min(e, ge[i]) - max(s, gs[i])
            i += 1
        return total

    def _deliver(self, pos: int, data: bytes, frame: int, ts_ns: int) -> None:
        """Deliver ``data`` at ``pos == next_offset`` into the current run."""
        fr = self._iv_frame
        if not fr or fr[-1] != frame:
            self._iv_start.append(pos)
            fr.append(frame)
            self._iv_ts.append(ts_ns)
        n = len(data)
        if self._hist_max:
            h = self._hist
            h += data
            if len(h) > 2 * self._hist_max:
                cut = len(h) - self._hist_max
                del h[:cut]
                self._hist_start += cut
        run = self._run
        if not run:
            self._run_start = pos
            if run is _NO_RUN:
                run = self._run = []
        run.append(data)
        self.next_offset = pos + n
        self._next_seq = (self._next_seq + n) & SEQ_MASK

    def _drain(self) -> None:
        """Deliver held pieces while the first one starts at (never before) next_offset."""
        held = self._held
        keys = self._keys
        while held and keys.first() <= self.next_offset:
            k = keys.pop_first()
            data, frame, ts_ns = held.pop(k)
            self.ooo_bytes -= len(data)
            nxt = self.next_offset
            if k < nxt:  # cannot happen while held pieces stay disjoint; kept so no loop can stall
                self._account_old(k, data[: nxt - k])
                data = data[nxt - k :]
                if not data:
                    continue
            self._deliver(nxt, data, frame, ts_ns)

    def _flush_run(self, out: list[Out]) -> None:
        run = self._run
        if run:
            out.append(("data", self._run_start, run[0] if len(run) == 1 else b"".join(run)))
            run.clear()

    def _finish(self, out: list[Out]) -> list[Out]:
        """Emit the pending run and notice a completed FIN."""
        self._flush_run(out)
        if self._fin is not None and self.next_offset >= self._fin:
            self.closed = True
        return out

    def _gap(self, length: int, out: list[Out]) -> None:
        """Declare [next_offset, next_offset + length) lost."""
        self._flush_run(out)
        start = self.next_offset
        out.append(("gap", start, length))
        self.gaps += 1
        self.gap_bytes += length
        self._iv_start.append(start)
        self._iv_frame.append(GAP_FRAME)
        self._iv_ts.append(0)
        if self._gap_end is _NO_GAPS:
            self._gap_start = _EMPTY_Q[:]
            self._gap_end = _EMPTY_Q[:]
        self._gap_start.append(start)
        self._gap_end.append(start + length)
        self.next_offset = start + length
        self._next_seq = (self._next_seq + length) & SEQ_MASK
        self._hist.clear()
        self._hist_start = self.next_offset

    def _skip_to_held(self, out: list[Out]) -> None:
        """Declare the hole before the first held piece a gap and deliver up to the next hole."""
        first = self._keys.first()
        if first > self.next_offset:
            self._gap(first - self.next_offset, out)
        self._drain()

    def _enforce_bounds(self, out: list[Out]) -> None:
        while self._held and (self.ooo_bytes > self.max_ooo_bytes or len(self._held) > self.max_ooo_segments):
            self._skip_to_held(out)

    def _drop_beyond_fin(self, fin: int) -> None:
        """Drop held bytes at or beyond the FIN position."""
        keys = self._keys
        held = self._held
        while held:
            k = keys.last()
            data, frame, ts_ns = held[k]
            if k >= fin:
                keys.remove(k)
                del held[k]
                self.ooo_bytes -= len(data)
                self.after_fin_bytes += len(data)
                continue
            cut = k + len(data) - fin
            if cut > 0:
                held[k] = (data[:-cut], frame, ts_ns)
                self.ooo_bytes -= cut
                self.after_fin_bytes += cut
            break

    def _rebase(self, shift: int) -> None:
        """Move position 0 to old position ``shift``; held bytes that fall before it are late."""
        items = [(k - shift, self._held[k]) for k in self._keys]
        self._keys.clear()
        self._held.clear()
        self.ooo_bytes = 0
        self._ref = (self._ref + shift) & SEQ_MASK
        if self._fin is not None:
            self._fin -= shift
        for k, (data, frame, ts_ns) in items:
            if k < 0:
                self.late_bytes += min(-k, len(data))
                if k + len(data) <= 0:
                    continue
                data = data[-k:]
                k = 0
            self._hold(k, data, frame, ts_ns)

    def _release(self, out: list[Out]) -> None:
        """Mid-stream pickup: fix the base at the lowest held position and start delivering."""
        if not self._held:
            return
        self._rebase(self._keys.first())
        self._based = True
        self._next_seq = self._ref
        self._drain()
        self._enforce_bounds(out)

    def _pickup_hole_below(self, apos: int) -> bool:
        """Before the base is fixed: is there a hole between held pieces that starts below ``apos``?"""
        if apos > MAX_WINDOW or apos < -MAX_WINDOW:
            return False
        prev_end: int | None = None
        for k in self._keys:
            if prev_end is not None:
                if prev_end >= apos:
                    return False
                if k > prev_end:
                    return True
            prev_end = k + len(self._held[k][0])
        return False
