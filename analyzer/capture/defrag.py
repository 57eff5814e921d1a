"""IPv4/IPv6 fragment reassembly for the decoder (bounded, first arrival wins).

Strategy: fragments are grouped by a key ``(address family, source, destination,
IP identification, protocol)`` that the decoder packs into one ``bytes`` value
(the IPv4 id is 16-bit, the IPv6 id 32-bit). Each pending datagram keeps its
payload as a sorted list of non-overlapping pieces ``(start, bytes)`` plus the
count of bytes covered, so a hole is simply a range between two pieces and the
datagram is complete when the end is known (a fragment with MF=0 arrived) and
the covered count equals it. Nothing is zero-filled.

Overlaps follow one policy, **first arrival wins** (the "First" policy of
Novak's target-based reassembly taxonomy, as Windows does). Receivers differ
(Linux drops a datagram with overlapping fragments, as RFC 5722 requires for
IPv6; BSD favours some later fragments), so the analyzer cannot know what the
receiver saw: it keeps one deterministic answer that never rewrites bytes
already stored, and reports every conflict. Only the part of a new fragment
that falls in a hole is stored; the overlapped part is compared with what is
held, and different bytes are reported as ``fragment_overlap_conflict``. The
classic TCP header evasions are reported separately: a first fragment too
short to hold the 20-byte TCP header (``fragment_tiny``, RFC 1858 section 3.1)
and an overlap that changes any of those 20 bytes
(``fragment_tcp_header_rewrite``, RFC 1858 section 3.2 / RFC 3128), in either
arrival order. Identical overlaps (duplicated fragments) are only counted.

Bounds: every stored piece is charged its length plus ``PIECE_OVERHEAD`` and
every pending datagram ``SET_OVERHEAD`` against ``max_bytes``; past it the
oldest datagrams are evicted (``fragment_evicted``). A fragment that would make
the datagram end beyond ``max_end`` (65535 minus the headers, RFC 791 / RFC
8200) is dropped (``fragment_too_large``, the "ping of death"). Datagrams
older than ``timeout_ns`` in capture time (counted from their first fragment,
like the RFC 791 reassembly timer) are dropped with ``fragment_timeout``: the
check runs when a fragment of the same datagram arrives, and over all pending
datagrams every ``TIMEOUT_SCAN_EVERY`` fragments, walking from the oldest and
stopping at the first that is not expired (an ``OrderedDict`` in creation
order), so the work is linear overall. The keys of recently completed
datagrams are remembered (``DONE_MEMO`` of them) so that a late duplicate
fragment that can never complete is reported as ``fragment_duplicate`` rather
than as a lost fragment.

Issue codes raised here (reported through the decoder's callback):

====================================  ==============================================================
code                                  meaning
====================================  ==============================================================
``fragment_overlap_conflict``         an overlapping fragment carries different bytes (first kept)
``fragment_tiny``                     the offset-0 fragment is shorter than the 20-byte TCP header
``fragment_tcp_header_rewrite``       an overlap changes bytes of the TCP header (with the above)
``fragment_misaligned``               a fragment with MF set has a length not a multiple of 8
``fragment_end_conflict``             fragments disagree on where the datagram ends (later dropped)
``fragment_too_large``                offset + length exceeds the largest possible datagram
``fragment_evicted``                  a pending datagram was dropped to stay under ``max_bytes``
``fragment_timeout``                  a pending datagram was older than ``timeout_ns``
``fragment_incomplete``               a datagram still had holes at the end of the capture
``fragment_duplicate``                a datagram that never completed repeats a reassembled one
====================================  ==============================================================
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable

#: ``report(frame, code, detail)``: how issues reach the decoder.
Report = Callable[[int, str, str], None]

FRAGMENT_UNIT = 8  # RFC 791 / RFC 8200: fragment offsets count 8-octet units
TCP_MIN_HEADER = 20  # RFC 9293 section 3.1: data offset >= 5 words
PIECE_OVERHEAD = 64  # bytes charged per stored piece (list slots, int, bytes object header)
SET_OVERHEAD = 512  # bytes charged per pending datagram (object, lists, dict entry)
TIMEOUT_SCAN_EVERY = 1000  # fragments between two scans for expired datagrams
DONE_MEMO = 4096  # keys of completed datagrams remembered to recognize late duplicates


class _FragSet:
    """One datagram being reassembled."""

    __slots__ = (
        "starts",
        "chunks",
        "covered",
        "end",
        "first_ts",
        "first_frame",
        "fragments",
        "charged",
        "after_done",
    )

    def __init__(self, ts_ns: int, frame: int, after_done: bool) -> None:
        self.starts: list[int] = []  # sorted start offsets of the stored pieces
        self.chunks: list[bytes] = []  # the pieces' bytes, parallel to ``starts``
        self.covered = 0  # bytes covered by the pieces (they never overlap)
        self.end: int | None = None  # datagram payload length, known once a MF=0 fragment arrived
        self.first_ts = ts_ns  # capture time of the first fragment
        self.first_frame = frame  # frame number of the first fragment
        self.fragments = 0  # fragments received for this datagram
        self.charged = SET_OVERHEAD  # bytes charged against the defragmenter's budget
        self.after_done = after_done  # the key was reassembled shortly before this set began

    def holes(self) -> list[tuple[int, int | None]]:
        """Missing ranges ``[start, end)``; ``end`` None when the datagram's end is unknown."""
        out: list[tuple[int, int | None]] = []
        pos = 0
        for s, c in zip(self.starts, self.chunks):
            if s > pos:
                out.append((pos, s))
            pos = s + len(c)
        if self.end is None:
            out.append((pos, None))
        elif pos < self.end:
            out.append((pos, self.end))
        return out


def _diff_span(a: bytes, b: bytes) -> tuple[int, int]:
    """``(first, last + 1)`` indexes of the bytes that differ between two equal-length strings."""
    x = int.from_bytes(a, "big") ^ int.from_bytes(b, "big")
    n = len(a)
    first = n - 1 - (x.bit_length() - 1) // 8
    last = n - 1 - ((x & -x).bit_length() - 1) // 8
    return first, last + 1


def _describe_holes(fs: _FragSet) -> str:
    """Short text for the holes of a set (at most 4 listed)."""
    holes = fs.holes()
    parts = [f"{s}-{'?' if e is None else e}" for s, e in holes[:4]]
    more = f" and {len(holes) - 4} more" if len(holes) > 4 else ""
    return ", ".join(parts) + more


class Defragmenter:
    """Reassembles fragmented IP datagrams; returns the payload of each completed one."""

    __slots__ = ("_sets", "_done", "_held", "_max_bytes", "_timeout", "_since_scan", "_report", "counts")

    def __init__(self, *, max_bytes: int, timeout_ns: int, report: Report, counts: dict[str, int]) -> None:
        self._sets: OrderedDict[bytes, _FragSet] = OrderedDict()  # pending datagrams, oldest first
        self._done: OrderedDict[bytes, int] = OrderedDict()  # key -> ts of recent completions
        self._held = 0  # bytes charged by all pending datagrams
        self._max_bytes = max_bytes
        self._timeout = timeout_ns
        self._since_scan = 0
        self._report = report
        self.counts = counts  # shared with the decoder: "reassembled", "fragment_overlaps", ...

    @property
    def held_bytes(self) -> int:
        """Bytes currently charged by pending datagrams (stored data plus overheads)."""
        return self._held

    @property
    def pending(self) -> int:
        """Number of datagrams waiting for fragments."""
        return len(self._sets)

    def add(
        self, frame: int, ts_ns: int, key: bytes, offset: int, more: bool, data: bytes, max_end: int
    ) -> bytes | None:
        """Add one fragment; return the reassembled payload when this fragment completes it."""
        self._since_scan += 1
        if self._since_scan >= TIMEOUT_SCAN_EVERY:
            self._since_scan = 0
            self.expire(ts_ns)
        end = offset + len(data)
        if end > max_end:
            self._report(
                frame,
                "fragment_too_large",
                f"fragment at offset {offset} with {len(data)} bytes ends at {end},"
                f" beyond the {max_end}-byte maximum;"
                " fragment dropped.",
            )
            return None
        if more and len(data) % FRAGMENT_UNIT:
            self._report(
                frame,
                "fragment_misaligned",
                f"fragment at offset {offset} has MF set but {len(data)} bytes,"
                f" not a multiple of {FRAGMENT_UNIT}.",
            )
        if offset == 0 and more and len(data) < TCP_MIN_HEADER:
            self._report(
                frame,
                "fragment_tiny",
                f"first fragment holds only {len(data)} bytes, less than the {TCP_MIN_HEADER}-byte TCP header"
                " (RFC 1858 tiny fragment).",
            )

        fs = self._sets.get(key)
        if fs is not None and ts_ns - fs.first_ts > self._timeout:
            self._drop(key, fs, "fragment_timeout", frame)
            fs = None
        if fs is None:
            done_ts = self._done.get(key)
            fs = _FragSet(ts_ns, frame, done_ts is not None and ts_ns - done_ts <= self._timeout)
            self._sets[key] = fs
            self._held += fs.charged
        fs.fragments += 1

        # where the datagram ends
        if not more:
            if fs.end is not None and fs.end != end:
                self._report(
                    frame,
                    "fragment_end_conflict",
                    f"last fragment ends the datagram at {end} but an earlier one ended it at {fs.end};"
                    " fragment dropped.",
                )
                self._enforce_budget()
                return None
            top = fs.starts[-1] + len(fs.chunks[-1]) if fs.starts else 0
            if top > end:
                self._report(
                    frame,
                    "fragment_end_conflict",
                    f"last fragment ends the datagram at {end} but fragments already hold bytes up to {top};"
                    " fragment dropped.",
                )
                self._enforce_budget()
                return None
            fs.end = end
        elif fs.end is not None and end > fs.end:
            self._report(
                frame,
                "fragment_end_conflict",
                f"fragment reaches byte {end}, beyond the datagram end {fs.end} set by the last fragment;"
                " fragment dropped.",
            )
            self._enforce_budget()
            return None

        if data:
            self._insert(frame, fs, offset, data)
        if fs.end is not None and fs.covered == fs.end:
            del self._sets[key]
            self._held -= fs.charged
            self._done[key] = ts_ns
            self._done.move_to_end(key)
            if len(self._done) > DONE_MEMO:
                self._done.popitem(last=False)
            self.counts["reassembled"] = self.counts.get("reassembled", 0) + 1
            return b"".join(fs.chunks)
        self._enforce_budget()
        return None

    def _enforce_budget(self) -> None:
        """Evict the oldest pending datagrams while more than ``max_bytes`` are held."""
        while self._held > self._max_bytes and self._sets:
            old_key, old = next(iter(self._sets.items()))
            self._drop(old_key, old, "fragment_evicted", old.first_frame)

    def _insert(self, frame: int, fs: _FragSet, offset: int, data: bytes) -> None:
        """Store the parts of ``data`` that fall in holes; compare the overlapped parts."""
        starts, chunks = fs.starts, fs.chunks
        end = offset + len(data)
        i = bisect_right(starts, offset) - 1
        if i < 0 or starts[i] + len(chunks[i]) <= offset:
            i += 1
        cursor = offset
        new_pieces: list[tuple[int, int, int]] = []  # (insert index, start, end)
        conflict: tuple[int, int] | None = None
        overlapped = False
        j = i
        n = len(starts)
        while j < n and starts[j] < end:
            ps = starts[j]
            chunk = chunks[j]
            pe = ps + len(chunk)
            if ps > cursor:
                new_pieces.append((j, cursor, ps))
            lo = max(offset, ps)
            hi = min(end, pe)
            overlapped = True
            if conflict is None:
                mine = data[lo - offset : hi - offset]
                held = chunk[lo - ps : hi - ps]
                if mine != held:
                    first, last = _diff_span(mine, held)
                    conflict = (lo + first, lo + last)
            cursor = pe
            j += 1
        if cursor < end:
            new_pieces.append((j, cursor, end))
        if overlapped:
            self.counts["fragment_overlaps"] = self.counts.get("fragment_overlaps", 0) + 1
        if conflict is not None:
            lo, hi = conflict
            self._report(
                frame,
                "fragment_overlap_conflict",
                f"fragment at offset {offset} with {len(data)} bytes overlaps held data with different bytes"
                f" in {lo}-{hi}; the first arrival is kept.",
            )
            if lo < TCP_MIN_HEADER:
                self._report(
                    frame,
                    "fragment_tcp_header_rewrite",
                    f"overlapping fragment at offset {offset} carries different bytes in"
                    f" {lo}-{min(hi, TCP_MIN_HEADER)} of the {TCP_MIN_HEADER}-byte TCP header"
                    " (RFC 1858/3128 overlap); the first arrival is kept.",
                )
        # insert from the last so earlier indexes stay valid
        for idx, s, e in reversed(new_pieces):
            piece = data[s - offset : e - offset]
            starts.insert(idx, s)
            chunks.insert(idx, piece)
            fs.covered += e - s
            cost = (e - s) + PIECE_OVERHEAD
            fs.charged += cost
            self._held += cost

    def _drop(self, key: bytes, fs: _FragSet, code: str, frame: int) -> None:
        """Forget a pending datagram and report why."""
        del self._sets[key]
        self._held -= fs.charged
        if fs.after_done and code != "fragment_evicted":
            code, why = "fragment_duplicate", "it repeats a datagram already reassembled"
        else:
            why = {
                "fragment_evicted": "the reassembly memory budget was exceeded",
                "fragment_timeout": f"it was older than {self._timeout} ns",
                "fragment_incomplete": "the capture ended",
            }.get(code, code)
        self._report(
            frame,
            code,
            f"datagram first seen in frame {fs.first_frame} dropped after {fs.fragments} fragment(s)"
            f" because {why}; missing {_describe_holes(fs)}.",
        )

    def expire(self, now_ns: int) -> None:
        """Drop pending datagrams whose first fragment is older than the timeout."""
        while self._sets:
            key, fs = next(iter(self._sets.items()))
            if now_ns - fs.first_ts <= self._timeout:
                break
            self._drop(key, fs, "fragment_timeout", fs.first_frame)

    def flush(self) -> None:
        """End of capture: report every pending datagram as incomplete and forget it."""
        while self._sets:
            key, fs = next(iter(self._sets.items()))
            self._drop(key, fs, "fragment_incomplete", fs.first_frame)
        self._done.clear()
