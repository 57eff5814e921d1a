"""Bounded CRLF line framing with absolute stream offsets (h11's ReceiveBuffer, bounded).

Strategy: the unconsumed bytes are ``_buf[_pos:]``. A chunk fed while nothing
is pending is kept as it is (the ``bytes`` object itself, no copy) and lines are
cut out of it with one ``find`` and one slice each, moving ``_pos``; that is the
common case (a segment carrying whole lines). Only when a chunk arrives while
bytes are pending (a line split across segments, or bytes the parser has not
asked for yet) are the pending bytes moved into a ``bytearray`` that later chunks
are appended to; its consumed head is cut off lazily, once per feed, so a line
that arrives one byte at a time costs O(n) overall, not O(n^2) (the LF search
also resumes where the previous one stopped, ``_scan``). When everything is
consumed (``next_raw`` finds no further line, or ``take``/``skip_buffered``
reach the end) the chunk is let go, so an idle buffer holds no memory.

A line longer than ``max_line`` is not kept: its first ``max_line`` bytes are
remembered, the rest is counted and dropped until the LF arrives, and the line
is then returned with ``too_long=True`` and its true length. Both CRLF and bare
LF end a line (Dovecot and Postfix accept bare LF). ``take`` reads raw bytes
(IMAP literals, SMTP BDAT chunks) without framing. ``gap`` drops the partial
line and moves the offset.

The parsers read lines with :meth:`LineBuffer.next_raw`, which returns the
fields of a :class:`Line` as a plain tuple: a frozen dataclass costs about
1.8 us to build on the benchmark machine, a tuple almost nothing, and a parser
reads one line per command or reply. :meth:`LineBuffer.next_line` returns the
same fields as a :class:`Line`.
"""

from __future__ import annotations

from dataclasses import dataclass

_CR = 0x0D

#: ``(data, start, end, too_long, length, after_gap)``: the fields of :class:`Line`, in order.
RawLine = tuple[bytes, int, int, bool, int, bool]


@dataclass(frozen=True, slots=True)
class Line:
    """One framed line."""

    data: bytes  #: the line without its CRLF/LF (only the first ``max_line`` bytes when too long)
    start: int  #: stream offset of the first byte
    end: int  #: stream offset just past the LF
    too_long: bool  #: the line was longer than ``max_line`` and ``data`` is a prefix
    length: int  #: full length of the line without the line ending
    after_gap: bool  #: the line's beginning was lost in a gap (its start is unknown)


class LineBuffer:
    """Frames one direction of a stream into lines; bounded by ``max_line`` (a negative limit counts as 0)."""

    __slots__ = (
        "_buf", "_pos", "_base", "_scan", "_max", "_drop_prefix", "_drop_len", "_drop_start", "_after_gap",
        "_pending_long", "_drop_cr",
    )

    def __init__(self, max_line: int) -> None:
        self._buf: bytes | bytearray = b""  # pending bytes are _buf[_pos:]
        self._pos = 0
        self._base = 0  # stream offset of _buf[_pos]
        self._scan = 0  # index in _buf from which to look for LF (>= _pos)
        self._max = max(0, max_line)
        self._drop_prefix: bytes | None = None  # set while discarding an over-long line
        self._drop_len = 0
        self._drop_start = 0
        self._after_gap = False
        self._pending_long: RawLine | None = None  # an over-long line completed by feed(), not yet returned
        self._drop_cr = False  # last byte dropped so far was CR

    @property
    def offset(self) -> int:
        """Stream offset of the next unconsumed byte."""
        return self._base

    @property
    def fed_offset(self) -> int:
        """Stream offset just past the last byte fed."""
        return (
            self._base + len(self._buf) - self._pos + (self._drop_len if self._drop_prefix is not None else 0)
        )

    def pending(self) -> int:
        """Bytes buffered and not yet consumed."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        """Append the next bytes of the stream."""
        if data.__class__ is not bytes:
            data = bytes(data)  # the chunk is kept by reference: it must not change under us
        if self._drop_prefix is not None:
            self._feed_dropping(data)
            return
        buf = self._buf
        pos = self._pos
        if pos >= len(buf):  # nothing pending: keep the chunk itself
            self._buf = data
            self._pos = self._scan = 0
        elif buf.__class__ is bytes:  # a tail of the previous chunk is pending: start accumulating
            acc = bytearray(buf[pos:])
            acc += data
            self._buf = acc
            self._scan -= pos
            self._pos = 0
        else:
            assert isinstance(buf, bytearray)
            if pos:
                del buf[:pos]  # cut the consumed head (at most once per feed)
                self._scan -= pos
                self._pos = 0
            buf += data

    def _feed_dropping(self, data: bytes) -> None:
        """``feed`` while an over-long line is being discarded (the buffer is empty)."""
        i = data.find(b"\n")
        if i < 0:
            self._drop_len += len(data)
            if data:
                self._drop_cr = data[-1] == _CR
            return
        cr = data[i - 1] == _CR if i > 0 else self._drop_cr
        self._drop_len += i + 1
        self._buf = data
        self._pos = self._scan = i + 1
        # the finished over-long line is reported by next_raw via _pending_long
        prefix = self._drop_prefix
        assert prefix is not None
        end = self._drop_start + self._drop_len
        length = self._drop_len - (2 if cr else 1)
        self._pending_long = (prefix, self._drop_start, end, True, length, self._after_gap)
        self._after_gap = False
        self._base = end
        self._drop_prefix = None
        self._drop_len = 0

    def next_raw(self) -> RawLine | None:
        """The next complete line as ``(data, start, end, too_long, length, after_gap)``, or None."""
        pl = self._pending_long
        if pl is not None:
            self._pending_long = None
            return pl
        if self._drop_prefix is not None:
            return None
        buf = self._buf
        pos = self._pos
        i = buf.find(b"\n", self._scan)
        if i < 0:
            n = len(buf) - pos
            if not n:
                if buf:
                    self._buf = b""  # everything consumed: let the chunk go
                    self._pos = self._scan = 0
                return None
            # a trailing CR may be the first half of the CRLF that ends a line of exactly max bytes
            if n - (1 if buf[-1] == _CR else 0) > self._max:
                # start discarding: remember the prefix, count the rest
                self._drop_prefix = bytes(buf[pos : pos + self._max])
                self._drop_start = self._base
                self._drop_len = n
                self._drop_cr = buf[-1] == _CR
                self._buf = b""
                self._pos = self._scan = 0
            else:
                self._scan = len(buf)
            return None
        end = i - 1 if i > pos and buf[i - 1] == _CR else i
        start = self._base
        length = end - pos
        nxt = i + 1
        self._pos = self._scan = nxt
        self._base = start + nxt - pos
        ag = self._after_gap
        if ag:
            self._after_gap = False
        if length > self._max:
            return bytes(buf[pos : pos + self._max]), start, self._base, True, length, ag
        if buf.__class__ is bytes:
            return buf[pos:end], start, self._base, False, length, ag
        return bytes(buf[pos:end]), start, self._base, False, length, ag

    def skip_until(self, target: bytes) -> RawLine | None:
        """Consume lines up to the first one equal to ``target`` and return that one, or None.

        The same as calling :meth:`next_raw` until it returns a line whose data is
        ``target`` and that is not too long (or until it returns None), without making
        the lines in between: two ``find`` calls over the buffer instead of one call per
        line. ``target`` holds no CR or LF. Used for message bodies nobody reads (POP3
        ``RETR``), whose only line of interest is the terminating ``.``.
        """
        if len(target) > self._max:  # the target line would be too long: nothing can match
            while self.next_raw() is not None:
                pass
            return None
        if self._pending_long is not None:  # an over-long line: never the target
            self._pending_long = None
        if self._drop_prefix is not None:
            return None
        buf = self._buf
        pos = self._pos
        crlf = target + b"\r\n"
        lf = target + b"\n"
        if buf.startswith(crlf, pos):
            i = pos + len(crlf) - 1
        elif buf.startswith(lf, pos):
            i = pos + len(lf) - 1
        else:
            a = buf.find(b"\n" + crlf, pos)
            b = buf.find(b"\n" + lf, pos)
            if a < 0 and b < 0:
                last = buf.rfind(b"\n", self._scan)
                if last >= 0:  # every complete line is consumed, as next_raw would
                    self._base += last + 1 - pos
                    self._pos = self._scan = last + 1
                    self._after_gap = False
                return self.next_raw()  # None, after next_raw's test of the partial line
            i = b + len(lf) if b >= 0 and (a < 0 or b < a) else a + len(crlf)
        # i: index of the LF that ends the target line
        start = self._base + i + 1 - len(lf) - (1 if buf[i - 1] == _CR else 0) - pos
        ag = self._after_gap and start == self._base
        self._after_gap = False
        self._base += i + 1 - pos
        self._pos = self._scan = i + 1
        return target, start, self._base, False, len(target), ag

    def next_line(self) -> Line | None:
        """The next complete line, or None until more bytes arrive."""
        raw = self.next_raw()
        return None if raw is None else Line(*raw)

    def take(self, n: int) -> bytes:
        """Up to ``n`` raw bytes (fewer if not buffered yet), consumed without framing."""
        if self._drop_prefix is not None or self._pending_long is not None or n <= 0:
            return b""
        buf = self._buf
        pos = self._pos
        end = min(pos + n, len(buf))
        chunk = bytes(buf[pos:end])
        self._base += end - pos
        self._consumed_to(end)
        return chunk

    def skip_buffered(self, n: int) -> int:
        """Drop up to ``n`` buffered bytes without copying them; return how many were dropped."""
        if self._drop_prefix is not None or self._pending_long is not None or n <= 0:
            return 0
        pos = self._pos
        k = min(n, len(self._buf) - pos)
        self._base += k
        self._consumed_to(pos + k)
        return k

    def _consumed_to(self, end: int) -> None:
        """Raw bytes were consumed up to index ``end``; an emptied buffer lets its chunk go."""
        if end >= len(self._buf):
            self._buf = b""
            self._pos = self._scan = 0
        else:
            self._pos = end
            if self._scan < end:
                self._scan = end

    def gap(self, length: int) -> int:
        """``length`` bytes were lost after what was fed: drop the partial line; return bytes dropped."""
        dropped = len(self._buf) - self._pos
        if self._drop_prefix is not None:
            dropped += self._drop_len
            self._base = self._drop_start
            self._drop_prefix = None
            self._drop_len = 0
        self._base += dropped + length
        self._buf = b""
        self._pos = self._scan = 0
        self._after_gap = True
        return dropped
