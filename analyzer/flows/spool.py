"""Closed flows' events on disk once too many are held in memory (issue 6 item 4).

Strategy: a flow's dissected events (``FlowSummary.events``) are final when the flow
ends, but the records and rules read them only after the whole capture is read, so
without a bound the memory of a long capture grows with every connection it saw
(about 8 KB per mail session). The engine hands every ended flow to
:meth:`EventSpool.admit`: while the events held in memory stay within
``Limits.events_in_memory`` they stay where they are (small captures never touch the
disk); past it, the flow's events are pickled to one anonymous temporary file (unlinked
at creation, so nothing is left behind even if the process is killed) and
``summary.events`` becomes a :class:`SpooledEvents`, a read-only sequence that loads
them again on access. The post-engine stage reads each flow's events once, in flow
order; a small cache (:data:`CACHE_FLOWS` flows) serves the repeated reads of the same
flow. Pickling a :class:`SpooledEvents` gives a plain list (``--jobs`` workers and Dask
tasks send their flows to another process, which cannot read this file).

If the disk refuses a write (full, read-only temp directory), spooling stops for the
rest of the run and the events stay in memory: slower to fail than to crash.
The content is unchanged by the round trip (events are plain slotted dataclasses), so
reports are byte-identical with and without spooling (tests/unit/flows/test_spool.py,
and the golden tests run with spooling from the first flow).
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import IO, Any, overload

from analyzer.protocols.base import LocatedEvent

#: flows whose loaded events the spool keeps for repeated reads (ours: the rules read one flow at a time)
CACHE_FLOWS = 8


class EventSpool:
    """One run's spool file, and the count of events still held in memory."""

    __slots__ = ("budget", "held", "spooled_flows", "spooled_events", "bytes", "_file", "_fd", "_end",
                 "_cache", "_broken", "_dir", "_reducers")

    def __init__(self, budget: int, directory: str | None = None) -> None:
        self.budget = budget  #: events of ended flows kept in memory before the rest go to disk
        self.held = 0  #: events of ended flows held in memory so far
        self.spooled_flows = 0  #: flows whose events went to disk
        self.spooled_events = 0
        self.bytes = 0  #: bytes written to the spool file
        self._dir = directory
        self._file: IO[bytes] | None = None
        self._fd = -1
        self._end = 0
        self._cache: OrderedDict[int, list[LocatedEvent]] = OrderedDict()
        self._broken = False  #: a write failed: keep everything in memory from now on
        self._reducers: Any = None  #: analyzer.parallel's pickling table, made at the first write

    def admit(self, summary: Any) -> None:
        """A flow ended: keep its events in memory within the budget, else move them to disk."""
        events = summary.events
        n = len(events)
        if not n or type(events) is SpooledEvents:
            return
        if self._broken or self.held + n <= self.budget:
            self.held += n
            return
        spooled = self._put(events)
        if spooled is None:
            self.held += n
            return
        summary.events = spooled

    def _put(self, events: Sequence[LocatedEvent]) -> SpooledEvents | None:
        if self._reducers is None:
            from analyzer.parallel import _Reducers  # here: analyzer.parallel imports the engine

            self._reducers = _Reducers()
        buf = io.BytesIO()
        pk = pickle.Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
        pk.dispatch_table = self._reducers  # slotted dataclasses as field tuples: ~40% faster than plain pickle
        pk.dump(list(events))
        data = buf.getvalue()
        try:
            if self._file is None:
                self._file = tempfile.TemporaryFile(prefix="fwdaudit-spool-", dir=self._dir)
                self._fd = self._file.fileno()
            offset = self._end
            written = 0
            view = memoryview(data)
            while written < len(data):
                written += os.pwrite(self._fd, view[written:], offset + written)
        except OSError:
            self._broken = True
            return None
        self._end += len(data)
        self.bytes += len(data)
        self.spooled_flows += 1
        self.spooled_events += len(events)
        return SpooledEvents(self, offset, len(data), len(events))

    def load(self, offset: int, length: int) -> list[LocatedEvent]:
        """The events stored at ``offset`` (cached for the next few reads)."""
        cache = self._cache
        hit = cache.get(offset)
        if hit is not None:
            cache.move_to_end(offset)
            return hit
        chunks = []
        got = 0
        while got < length:
            chunk = os.pread(self._fd, length - got, offset + got)
            if not chunk:
                raise OSError(f"event spool truncated at {offset + got} (wanted {length} bytes at {offset})")
            chunks.append(chunk)
            got += len(chunk)
        events: list[LocatedEvent] = pickle.loads(b"".join(chunks))
        cache[offset] = events
        if len(cache) > CACHE_FLOWS:
            cache.popitem(last=False)
        return events


class SpooledEvents(Sequence[LocatedEvent]):
    """A flow's events in the spool file: a read-only sequence that loads them on access."""

    __slots__ = ("_spool", "_offset", "_length", "_count")

    def __init__(self, spool: EventSpool, offset: int, length: int, count: int) -> None:
        self._spool = spool
        self._offset = offset
        self._length = length
        self._count = count

    def _events(self) -> list[LocatedEvent]:
        return self._spool.load(self._offset, self._length)

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    @overload
    def __getitem__(self, i: int) -> LocatedEvent: ...

    @overload
    def __getitem__(self, i: slice) -> list[LocatedEvent]: ...

    def __getitem__(self, i: int | slice) -> LocatedEvent | list[LocatedEvent]:
        return self._events()[i]

    def __iter__(self) -> Iterator[LocatedEvent]:
        return iter(self._events())

    def __reversed__(self) -> Iterator[LocatedEvent]:
        return reversed(self._events())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SpooledEvents):
            other = other._events()
        if isinstance(other, (list, tuple)):
            return self._events() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (self._events(),))

    def __repr__(self) -> str:
        return f"SpooledEvents({self._count} events at {self._offset})"
