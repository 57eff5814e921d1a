"""Bounded CRLF line framing with absolute stream offsets (h11's ReceiveBuffer, bounded).

Strategy: bytes are appended to one ``bytearray``; ``next_line`` searches for LF
from where the previous search stopped, so a line that arrives one byte at a
time costs O(n) overall, not O(n^2). A line longer than ``max_line`` is not
kept: its first ``max_line`` bytes are remembered, the rest is counted and
dropped until the LF arrives, and the line is then returned with
``too_long=True`` and its true length. Both CRLF and bare LF end a line (Dovecot
and Postfix accept bare LF). ``take`` reads raw bytes (IMAP literals, SMTP BDAT
chunks) without framing. ``gap`` drops the partial line and moves the offset.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    """Frames one direction of a stream into lines; bounded by ``max_line``."""

    __slots__ = (
        "_buf", "_base", "_scan", "_max", "_drop_prefix", "_drop_len", "_drop_start", "_after_gap", "_pending_long", "_drop_cr",
    )

    def __init__(self, max_line: int) -> None:
        self._buf = bytearray()
        self._base = 0  # stream offset of _buf[0]
        self._scan = 0  # index in _buf from which to look for LF
        self._max = max_line
        self._drop_prefix: bytes | None = None  # set while discarding an over-long line
        self._drop_len = 0
        self._drop_start = 0
        self._after_gap = False
        self._pending_long: Line | None = None  # an over-long line completed by feed(), not yet returned
        self._drop_cr = False  # last byte dropped so far was CR

    @property
    def offset(self) -> int:
        """Stream offset of the next unconsumed byte."""
        return self._base

    @property
    def fed_offset(self) -> int:
        """Stream offset just past the last byte fed."""
        return self._base + len(self._buf) + (self._drop_len if self._drop_prefix is not None else 0)

    def pending(self) -> int:
        """Bytes buffered and not yet consumed."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        if self._drop_prefix is not None:
            i = data.find(b"\n")
            if i < 0:
                self._drop_len += len(data)
                if data:
                    self._drop_cr = data[-1] == 0x0D
                return
            cr = data[i - 1] == 0x0D if i > 0 else self._drop_cr
            self._drop_len += i + 1
            self._buf += data[i + 1 :]
            # the finished over-long line is reported by next_line via _pending_long
            self._pending_long = Line(
                self._drop_prefix,
                self._drop_start,
                self._drop_start + self._drop_len,
                True,
                self._drop_len - (2 if cr else 1),
                self._after_gap,
            )
            self._after_gap = False
            self._base = self._drop_start + self._drop_len
            self._drop_prefix = None
            self._drop_len = 0
            self._scan = 0
            return
        self._buf += data

    def next_line(self) -> Line | None:
        """The next complete line, or None until more bytes arrive."""
        pl = self._pending_long
        if pl is not None:
            self._pending_long = None
            return pl
        if self._drop_prefix is not None:
            return None
        buf = self._buf
        i = buf.find(b"\n", self._scan)
        if i < 0:
            # a trailing CR may be the first half of the CRLF that ends a line of exactly max bytes
            if len(buf) - (1 if buf.endswith(b"\r") else 0) > self._max:
                # start discarding: remember the prefix, count the rest
                self._drop_prefix = bytes(buf[: self._max])
                self._drop_start = self._base
                self._drop_len = len(buf)
                self._drop_cr = buf[-1] == 0x0D
                del buf[:]
                self._scan = 0
            else:
                self._scan = len(buf)
            return None
        end = i
        if end > 0 and buf[end - 1] == 0x0D:
            end -= 1
        start = self._base
        length = end
        if length > self._max:
            data = bytes(buf[: self._max])
            too_long = True
        else:
            data = bytes(buf[:end])
            too_long = False
        del buf[: i + 1]
        self._base = start + i + 1
        self._scan = 0
        ag = self._after_gap
        self._after_gap = False
        return Line(data, start, self._base, too_long, length, ag)

    def take(self, n: int) -> bytes:
        """Up to ``n`` raw bytes (fewer if not buffered yet), consumed without framing."""
        if self._drop_prefix is not None or self._pending_long is not None:
            return b""
        buf = self._buf
        chunk = bytes(buf[:n])
        del buf[: len(chunk)]
        self._base += len(chunk)
        self._scan = 0
        return chunk

    def skip_buffered(self, n: int) -> int:
        """Drop up to ``n`` buffered bytes without copying them; return how many were dropped."""
        if self._drop_prefix is not None or self._pending_long is not None:
            return 0
        k = min(n, len(self._buf))
        del self._buf[:k]
        self._base += k
        self._scan = 0
        return k

    def gap(self, length: int) -> int:
        """``length`` bytes were lost after what was fed: drop the partial line; return bytes dropped."""
        dropped = len(self._buf)
        if self._drop_prefix is not None:
            dropped += self._drop_len
            self._base = self._drop_start
            self._drop_prefix = None
            self._drop_len = 0
        self._base += dropped + length
        del self._buf[:]
        self._scan = 0
        self._after_gap = True
        return dropped
