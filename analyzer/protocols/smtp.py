"""SMTP / Submission / LMTP parser (sans-IO): commands, replies, XCLIENT, XFORWARD, XRCPTFORWARD.

Strategy: both half-streams of one connection are fed in capture order. Each
direction has a :class:`~analyzer.protocols.lines.LineBuffer`. Client lines
become :class:`Command` events (plus :class:`Xclient`, :class:`Xforward` or
:class:`RcptForward` for the forwarding carriers); server lines are gathered
into whole (multi-line) replies, which are matched in order against a FIFO of
pending commands (RFC 2920 pipelining: several commands may be in flight).

The client side is a small state machine whose transitions are triggered by
server replies, as in h11's ``EVENT_TRIGGERED_TRANSITIONS``:

====================  =====================================  =========================
client mode           entered when                           left when
====================  =====================================  =========================
``LINES``             start; after a body/chunk; DATA        (see the other rows)
                      rejected
``HOLD``              the client sent ``DATA``               the DATA reply arrives:
                                                             354 -> ``BODY``, other ->
                                                             ``LINES``
``BODY``              354 answers DATA                       ``CRLF.CRLF`` seen
``CHUNK``             ``BDAT n`` parsed (client never waits) n bytes counted
``STOPPED``           220 answers STARTTLS; TLS bytes first  never
====================  =====================================  =========================

``HOLD`` exists because RFC 2920 makes the client wait for the 354 before the
body, so bytes sent before the DATA reply cannot be classified yet: they are
kept (at most ``max_line`` bytes) and classified when the reply comes. When
the reply never comes (more than ``max_line`` bytes held, or the client's
stream ends), the bytes are taken as the body, with an anomaly
``data_reply_missing``: a client that sends after DATA without waiting is
sending its message, and taking it as commands would turn an
``XCLIENT ADDR=...`` line inside a message into a forged forwarding event.

Bodies and BDAT chunks are never buffered: a body is scanned with
``bytes.find(b"\\r\\n.\\r\\n")`` keeping only the last four bytes of the
previous feed (so a terminator split across feeds is found), and a chunk is
skipped by counting. Bytes that bypass the line buffer are accounted in a
per-direction ``shift`` so spans keep true stream offsets.

After ``334`` (AUTH continuation) the next client line is SASL data, not a
command. After ``220`` to STARTTLS both directions are only counted.

Gaps (Zeek's "content gap", Suricata's gap + probe): the partial line is
dropped and that direction resynchronizes on the next line that looks like a
command verb (client) or a reply line (server). Inside a body the parser stays
in the body and keeps looking for the terminator; if the server answers while
a body that had a gap is still open, the terminator was lost in the gap and the
client is resynchronized. A server gap ends every pending command (their
replies may be lost), as Zeek ends the transaction; replies arriving with
nothing pending then carry ``answers=None``. A client gap between command
lines holds the start of at least one command that the server will answer, so
it queues one placeholder (its reply gets ``answers=None``); a gap that
swallowed several commands still shifts the matching, so matching after a
client gap is best effort and the ``content_gap`` anomaly marks the flow.

Reply ``final`` is False for 3xx (positive intermediate) replies, 334 and 354,
which do not complete their command; True otherwise.

Cost: a one-line reply (most of them) skips the multi-line assembly; per-direction
state lives in plain attributes, pending commands are tuples, and attribute
tokens go to :func:`~analyzer.protocols.xtext.param_from_wire` as bytes.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import ClassVar

from analyzer.model import Direction, Span
from analyzer.protocols.base import (
    Anomaly,
    Capabilities,
    Command,
    Event,
    Greeting,
    RcptForward,
    Reply,
    TlsStarted,
    Xclient,
    Xforward,
    XParam,
    wire_text,
)
from analyzer.protocols.lines import LineBuffer
from analyzer.protocols.xtext import param_from_wire

C2S = Direction.TO_SERVER
S2C = Direction.TO_CLIENT

VARIANTS = ("smtp", "submission", "lmtp")  #: port hints accepted by :class:`SmtpParser`

MAX_PENDING = 1000  # pipelined commands awaiting a reply; Suricata "TooManyTransactions"-style bound (ours)
MAX_REPLY_LINES = 1000  # lines kept per multi-line reply; EHLO replies have ~20 (RFC 5321 4.1.1.1)
MAX_BDAT_CHUNK = 1 << 40  # BDAT size above which the size is taken as garbage (RFC 3030 sets none; ours)
MAX_EXCERPT = 256  # bytes of offending input kept in an Anomaly (ARCHITECTURE 2.2)
GREETING_CODES = frozenset(("220", "421", "554"))  # RFC 5321 4.3.2: CONNECTION ESTABLISHMENT replies
DATA_END = b"\r\n.\r\n"  # RFC 5321 4.1.1.4: end of mail data indicator
TLS_HANDSHAKE = 0x16  # RFC 8446 5.1: ContentType handshake; first byte of a ClientHello record

#: Verbs a client line must start with to end a resync after a gap (RFC 5321 4.1, 3030, 3207,
#: 4954, 2033, Postfix XCLIENT/XFORWARD_README, RFC 2645 ATRN, RFC 1985 ETRN, BURL RFC 4468).
KNOWN_VERBS = frozenset(
    (
        b"HELO",
        b"EHLO",
        b"LHLO",
        b"MAIL",
        b"RCPT",
        b"DATA",
        b"BDAT",
        b"RSET",
        b"VRFY",
        b"EXPN",
        b"HELP",
        b"NOOP",
        b"QUIT",
        b"STARTTLS",
        b"AUTH",
        b"XCLIENT",
        b"XFORWARD",
        b"ETRN",
        b"ATRN",
        b"BURL",
        b"TURN",
    )
)
#: upper-cased known verbs -> one str each: a command's verb is not a new str per line
_VERB_TEXT = {v: v.decode("ascii") for v in KNOWN_VERBS}

#: Anomaly codes this parser emits (stable names, Zeek-weird style).
ANOMALY_CODES = (
    "content_gap",  # bytes missing from the capture
    "line_too_long",  # line longer than max_line (detail has the length)
    "carrier_truncated",  # XCLIENT/XFORWARD/RCPT event built from the kept prefix of a too-long line
    "empty_token",  # double/trailing space inside XCLIENT/XFORWARD attributes
    "bad_command_line",  # empty verb or verb with characters outside A-Z 0-9 "-" "_"
    "bad_path",  # MAIL/RCPT path missing "FROM:"/"TO:", "<" or ">"
    "bad_bdat_size",  # BDAT size missing, not decimal or above MAX_BDAT_CHUNK: not counted
    "too_many_pending",  # more than MAX_PENDING commands awaiting replies
    "unexpected_reply",  # a reply with no command pending (not after a gap)
    "bad_reply_line",  # server line that is not "ddd", "ddd text" or "ddd-text"
    "reply_code_mismatch",  # lines of one multi-line reply carry different codes
    "reply_too_long",  # multi-line reply beyond MAX_REPLY_LINES lines / max_line bytes kept
    "bad_greeting",  # first reply is not 220/421/554
    "missing_greeting",  # first reply answers a command: the greeting was not captured
    "data_reply_missing",  # bytes after DATA taken as the body without a 354 being seen
    "starttls_injection",  # commands pipelined after STARTTLS, before its 220 (sent in clear)
    "unterminated_line",  # the stream ended inside a line
    "unterminated_reply",  # the stream ended inside a multi-line reply
    "unterminated_data",  # the client stream ended inside a DATA body
    "truncated_chunk",  # the client stream ended inside a BDAT chunk
)


LOST = -1  # _Pending.seq of a command whose line was (partly) lost in a client gap


class _Mode(enum.Enum):
    """What the client's next bytes are."""

    LINES = "lines"  # command lines (or one SASL line after a 334)
    HOLD = "hold"  # bytes after DATA, kept until the DATA reply tells what they are
    BODY = "body"  # DATA body, skipped up to CRLF.CRLF
    CHUNK = "chunk"  # BDAT chunk data, skipped by counting
    STOPPED = "stopped"  # TLS: nothing is dissected any more


# module constants: an Enum member lookup (_Mode.LINES) costs a descriptor call, and the modes are
# tested once per line
_LINES = _Mode.LINES
_HOLD = _Mode.HOLD
_BODY = _Mode.BODY
_CHUNK = _Mode.CHUNK
_STOPPED = _Mode.STOPPED


#: A command awaiting its reply (or replies): ``(seq, verb, end_of_data, per_recipient)`` (a tuple: one is
#: made per command). seq: ``Command.seq``, LOST for a command lost in a client gap; verb: upper-cased
#: (``DATA``/``BDAT`` also for the end-of-data entry), ``""`` when lost; end_of_data: the entry stands for
#: the reply to the end of a body / BDAT LAST; per_recipient: LMTP end of data, one reply per accepted
#: recipient (RFC 2033 4.2).
_Pending = tuple[int, str, bool, bool]


def _excerpt(data: bytes) -> bytes:
    return bytes(data[:MAX_EXCERPT])


def _looks_like_command(data: bytes) -> bool:
    """First word is a known SMTP/LMTP verb (any case), followed by SP or the end of the line."""
    sp = data.find(b" ")
    verb = data if sp < 0 else data[:sp]
    return len(verb) <= 8 and verb.upper() in KNOWN_VERBS


def _valid_verb(verb: bytes) -> bool:
    return bool(verb) and verb.replace(b"-", b"").replace(b"_", b"").isalnum() and verb.isascii()


def _split_path(args: bytes, keyword: bytes) -> tuple[bytes, bytes, str | None]:
    """Split ``FROM:<path> params`` / ``TO:<path> params``: (path, params, problem).

    Quoted local parts may hold spaces and ``>`` (RFC 5321 4.1.2 Quoted-string);
    ``<>`` is the null path. A path without brackets (Postfix tolerates it) ends
    at the first space.
    """
    problem: str | None = None
    if args[: len(keyword)].upper() == keyword:
        rest = args[len(keyword) :].lstrip(b" ")
    else:
        problem = f"no {keyword.decode()} before the path"
        colon = args.find(b":")
        rest = args[colon + 1 :].lstrip(b" ") if colon >= 0 else args
    if rest[:1] == b"<":
        close = rest.find(b">")
        quote = rest.find(b'"')
        if close >= 0 and (quote < 0 or close < quote):
            return rest[1:close], rest[close + 1 :], problem
        i, n, quoted = 1, len(rest), False
        while i < n:
            c = rest[i]
            if quoted:
                if c == 0x5C:  # backslash escapes the next byte inside a quoted string
                    i += 2
                    continue
                if c == 0x22:
                    quoted = False
            elif c == 0x22:
                quoted = True
            elif c == 0x3E:
                return rest[1:i], rest[i + 1 :], problem
            i += 1
        sp = rest.find(b" ")
        return (rest[1:] if sp < 0 else rest[1:sp]), (b"" if sp < 0 else rest[sp:]), "unterminated path"
    sp = rest.find(b" ")
    path = rest if sp < 0 else rest[:sp]
    return path, (b"" if sp < 0 else rest[sp:]), problem or "path without <>"


class SmtpParser:
    """Sans-IO parser of one SMTP, Submission or LMTP connection (both directions)."""

    name: ClassVar[str] = "smtp"

    __slots__ = (
        "_auth_active",
        "_body_gap",
        "_body_start",
        "_cdesync",
        "_ceof",
        "_cfed",
        "_chunk_left",
        "_clb",
        "_cshift",
        "_data_seq",
        "_gap_seen",
        "_greeted",
        "_head_answers",
        "_hold_gap",
        "_max_line",
        "_mode",
        "_overflow",
        "_queue",
        "_r_bytes",
        "_r_clipped",
        "_r_code",
        "_r_lines",
        "_r_mismatch",
        "_r_start",
        "_rcpt_ok",
        "_sasl_next",
        "_sdesync",
        "_seof",
        "_seq",
        "_sfed",
        "_slb",
        "_tail",
        "_variant",
    )

    def __init__(self, *, variant: str = "smtp", max_line: int = 65536, midstream: bool = False) -> None:
        # midstream (connection start not captured) needs nothing more here: a first reply that
        # answers a queued command is already told apart from the greeting ("missing_greeting")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")
        if max_line < 16:
            raise ValueError("max_line must be at least 16")
        self._variant = variant
        self._max_line = max_line
        # per-direction state in plain attributes (c: client->server, s: server->client): a dict keyed
        # by Direction would hash the enum (a Python-level __hash__) on every access
        self._clb = LineBuffer(max_line)
        self._slb = LineBuffer(max_line)
        self._cshift = 0  # client stream offset = LineBuffer offset + shift (bytes that bypassed it)
        self._cfed = 0  # stream offset just past the last byte fed or lost
        self._sfed = 0
        self._gap_seen = False  # any gap so far: reply matching is best effort
        self._cdesync = False  # skipping lines until one that looks right
        self._sdesync = False
        self._ceof = False
        self._seof = False
        self._mode = _LINES
        self._tail = b""  # last <= 4 body bytes, to find a CRLF.CRLF split across feeds
        self._body_gap = False  # the current body had a gap
        self._hold_gap = False  # a gap hit the bytes held after DATA
        self._body_start = 0  # stream offset where the current body began
        self._chunk_left = 0  # BDAT bytes still to skip
        self._data_seq = 0  # seq of the last DATA command
        self._sasl_next = False  # a 334 was seen: the next client line is SASL data
        self._auth_active = False  # an AUTH exchange is under way
        self._queue: deque[_Pending] = deque()
        self._overflow = 0  # commands not queued because the queue was full
        self._head_answers = 0  # replies already matched to the head entry (per-recipient entries)
        self._rcpt_ok = 0  # RCPTs accepted (2xx) in the current transaction
        self._seq = 0
        self._greeted = False
        self._r_code: str | None = None  # reply being assembled: its code
        self._r_lines: list[str] = []
        self._r_start = 0
        self._r_bytes = 0
        self._r_clipped = False
        self._r_mismatch = False

    @property
    def variant(self) -> str:
        """``smtp``, ``submission`` or ``lmtp`` (switched to ``lmtp`` by an ``LHLO``)."""
        return self._variant

    # ------------------------------------------------------------------ public API

    def feed(self, direction: Direction, data: bytes) -> list[Event]:
        """Consume the next bytes of one direction; return every event completed by them."""
        events: list[Event] = []
        if not data:
            return events
        if direction is C2S:
            start = self._cfed
            self._cfed = start + len(data)
            if self._mode is _STOPPED:
                return events
            if start == 0 and not self._gap_seen and data[0] == TLS_HANDSHAKE:
                # implicit TLS (port 465 style): a ClientHello, not a command
                self._mode = _STOPPED
                events.append(TlsStarted(Span(C2S, 0, 1), None))
                return events
            self._feed_client(data, events)
        else:
            self._sfed += len(data)
            if self._mode is _STOPPED:
                return events
            self._slb.feed(data)
            self._drain_server(events)
        return events

    def gap(self, direction: Direction, length: int) -> list[Event]:
        """``length`` bytes of this direction were not captured; resynchronize."""
        length = max(0, length)
        if direction is C2S:
            start = self._cfed
            self._cfed = start + length
        else:
            start = self._sfed
            self._sfed = start + length
        if self._mode is _STOPPED:
            return []
        events: list[Event] = [
            Anomaly(Span(direction, start, start + length), "content_gap", f"{length} bytes missing", b"")
        ]
        self._gap_seen = True
        if direction is C2S:
            self._client_gap(length)
        else:
            self._server_gap(length)
        return events

    def eof(self, direction: Direction) -> list[Event]:
        """This direction ended (FIN/RST/end of capture); flush what can be flushed."""
        events: list[Event] = []
        client = direction is C2S
        if (self._ceof if client else self._seof) or self._mode is _STOPPED:
            if client:
                self._ceof = True
            else:
                self._seof = True
            return events
        if client:
            self._ceof = True
            end = self._cfed
        else:
            self._seof = True
            end = self._sfed
        if client:
            if self._mode is _HOLD and self._clb.pending():
                self._assume_body(events)
                self._drain_client(events)
            if self._mode is _BODY:
                events.append(
                    Anomaly(
                        Span(C2S, self._body_start, end),
                        "unterminated_data",
                        "the client stream ended inside a DATA body",
                        b"",
                    )
                )
            elif self._mode is _CHUNK:
                events.append(
                    Anomaly(
                        Span(C2S, end, end),
                        "truncated_chunk",
                        f"the client stream ended {self._chunk_left} bytes before the end of a BDAT chunk",
                        b"",
                    )
                )
        else:
            if self._r_code is not None:
                events.append(
                    Anomaly(
                        Span(S2C, self._r_start, end),
                        "unterminated_reply",
                        f"the server stream ended inside a {self._r_code} reply",
                        b"",
                    )
                )
                self._r_code = None
        lb = self._clb if client else self._slb
        if lb.fed_offset > lb.offset:
            pos = lb.offset + (self._cshift if client else 0)
            events.append(
                Anomaly(
                    Span(direction, pos, end),
                    "unterminated_line",
                    f"the stream ended inside a line of {end - pos} bytes",
                    lb.take(MAX_EXCERPT),
                )
            )
        return events

    # Too long means longer than max_line, whatever the segmentation: LineBuffer flags a CRLF
    # line of exactly ``max_line`` bytes as too long when its CR arrives in a feed before its LF
    # (it starts discarding at ``max_line + 1`` buffered bytes); its kept prefix is then the
    # whole line, so the line handlers test ``too_long and length > max_line``.

    # ------------------------------------------------------------------ client side

    def _feed_client(self, data: bytes, events: list[Event]) -> None:
        mode = self._mode
        if mode is _BODY:
            end = self._scan_body(data)
            if end < 0:
                self._cshift += len(data)
                return
            self._cshift += end
            self._end_body()
            data = data[end:]
        elif mode is _CHUNK:
            k = min(self._chunk_left, len(data))
            self._chunk_left -= k
            self._cshift += k
            if self._chunk_left:
                return
            self._mode = _LINES
            data = data[k:]
        if data:
            self._clb.feed(data)
        self._drain_client(events)

    def _drain_client(self, events: list[Event]) -> None:
        """Process what the client line buffer holds, as far as the current mode allows."""
        lb = self._clb
        next_raw = lb.next_raw
        while True:
            mode = self._mode
            if mode is _LINES:
                raw = next_raw()
                if raw is None:
                    return
                self._client_line(raw[0], raw[1], raw[2], raw[3] and raw[4] > self._max_line, raw[4], events)
            elif mode is _HOLD:
                if lb.pending() <= self._max_line:
                    return
                self._assume_body(events)
            elif mode is _BODY:
                n = lb.pending()
                if not n:
                    return
                held = lb.take(n)
                if not held:
                    return
                end = self._scan_body(held)
                if end < 0:
                    return
                rest = held[end:]
                if rest:
                    self._cshift -= len(rest)
                    lb.feed(rest)
                self._end_body()
            elif mode is _CHUNK:
                k = lb.skip_buffered(self._chunk_left)
                self._chunk_left -= k
                if self._chunk_left:
                    return
                self._mode = _LINES
            else:
                return

    def _assume_body(self, events: list[Event]) -> None:
        """The DATA reply did not come but bytes followed: take them as the body."""
        lb = self._clb
        pos = lb.offset + self._cshift
        held = min(lb.pending(), self._max_line + 1)  # the same whatever the segmentation
        why = (
            "the client stream ended"
            if held <= self._max_line
            else f"more than {self._max_line} bytes were sent"
        )
        events.append(
            Anomaly(
                Span(C2S, pos, pos + held),
                "data_reply_missing",
                f"no reply to DATA seen and {why}; the bytes are taken as the message body",
                b"",
            )
        )
        self._start_body()

    def _start_body(self) -> None:
        self._mode = _BODY
        self._body_start = self._clb.offset + self._cshift
        self._tail = b"" if self._hold_gap else b"\r\n"  # the DATA line's CRLF starts the first line
        self._body_gap = self._hold_gap
        self._hold_gap = False

    def _scan_body(self, data: bytes) -> int:
        """Index just past CRLF.CRLF in ``data`` (seen with the previous tail), or -1."""
        tail = self._tail
        if tail:
            probe = tail + data[:4]
            i = probe.find(DATA_END)
            if i >= 0:
                return i + 5 - len(tail)
        i = data.find(DATA_END)
        if i >= 0:
            return i + 5
        self._tail = data[-4:] if len(data) >= 4 else (tail + data)[-4:]
        return -1

    def _end_body(self) -> None:
        """CRLF.CRLF seen: the server now owes the end-of-data reply (one per recipient in LMTP)."""
        self._mode = _LINES
        self._tail = b""
        self._body_gap = False
        self._enqueue((self._data_seq, "DATA", True, self._variant == "lmtp"), None)

    def _client_gap(self, length: int) -> None:
        mode = self._mode
        if mode is _BODY:  # the line buffer is empty in BODY and CHUNK: the gap bypasses it
            self._cshift += length
            self._tail = b""
            self._body_gap = True
        elif mode is _CHUNK:
            self._cshift += length
            if length < self._chunk_left:
                self._chunk_left -= length
            else:
                lost_lines = length > self._chunk_left
                self._chunk_left = 0
                self._mode = _LINES
                self._cdesync = lost_lines
                if lost_lines:
                    self._enqueue((LOST, "", False, False), None)
        else:
            self._clb.gap(length)
            if mode is _HOLD:
                self._hold_gap = True
            else:
                self._cdesync = True
                if length and not self._sasl_next:
                    # the gap holds the start of at least one command line, which the server
                    # will answer: a placeholder keeps the later replies matched (one lost
                    # command is the best guess; more are possible)
                    self._enqueue((LOST, "", False, False), None)
            self._sasl_next = False

    def _client_line(
        self, data: bytes, start: int, end: int, too_long: bool, length: int, events: list[Event]
    ) -> None:
        """One client line; ``start``/``end`` are line buffer offsets, ``too_long`` already tested."""
        if self._cdesync:
            if not _looks_like_command(data):
                return
            self._cdesync = False
        shift = self._cshift
        span = Span(C2S, start + shift, end + shift)
        if too_long:
            events.append(
                Anomaly(
                    span,
                    "line_too_long",
                    f"client line of {length} bytes (limit {self._max_line})",
                    _excerpt(data),
                )
            )
        if self._sasl_next:
            self._sasl_next = False  # SASL response (RFC 4954 4): not a command
            return
        sp = data.find(b" ")
        verb_b = data if sp < 0 else data[:sp]
        args = b"" if sp < 0 else data[sp + 1 :]
        verb_up = verb_b.upper()
        verb = _VERB_TEXT.get(verb_up) or verb_up.decode("utf-8", "surrogateescape")
        seq = self._seq
        self._seq += 1
        line_len = end - start
        events.append(Command(span, seq, None, verb, args, line_len))
        if not _valid_verb(verb_b):
            events.append(
                Anomaly(
                    span, "bad_command_line", f"command verb {verb[:40]!r} is not a keyword", _excerpt(data)
                )
            )
        if seq == 0 and verb == "PROXY" and not self._greeted:
            return  # HAProxy PROXY v1 header: the server does not answer it
        carrier = False
        if verb == "XCLIENT" or verb == "XFORWARD":
            carrier = True
            params, empties = self._attributes(args)
            if verb == "XCLIENT":
                events.append(Xclient(span, seq, "XCLIENT", params, line_len))
            else:
                events.append(Xforward(span, seq, params, line_len))
            if empties:
                events.append(
                    Anomaly(
                        span,
                        "empty_token",
                        f"{empties} empty attribute(s) (double or trailing space)",
                        _excerpt(data),
                    )
                )
        elif verb == "RCPT" or verb == "MAIL":
            carrier = self._mail_rcpt(verb, args, span, seq, line_len, data, events)
        if carrier and too_long:
            events.append(
                Anomaly(
                    span,
                    "carrier_truncated",
                    f"{verb} built from the first {len(data)} of {length} bytes",
                    b"",
                )
            )
        if verb == "BDAT":
            self._bdat(args, seq, span, data, events)
            return
        self._enqueue((seq, verb, False, False), events, span)
        if verb == "DATA":
            self._data_seq = seq
            self._mode = _HOLD
        elif verb == "AUTH":
            self._auth_active = True
        elif verb == "LHLO":
            self._variant = "lmtp"

    def _attributes(self, args: bytes) -> tuple[tuple[XParam, ...], int]:
        params: list[XParam] = []
        empties = 0
        for token in args.split(b" ") if args else ():
            if not token:
                empties += 1
                continue
            params.append(param_from_wire(token))
        return tuple(params), empties

    def _mail_rcpt(
        self, verb: str, args: bytes, span: Span, seq: int, line_len: int, data: bytes, events: list[Event]
    ) -> bool:
        path, rest, problem = _split_path(args, b"TO:" if verb == "RCPT" else b"FROM:")
        if problem is not None:
            events.append(Anomaly(span, "bad_path", f"{verb}: {problem}", _excerpt(data)))
        found = False
        for token in rest.split(b" "):
            if token[:13].upper() == b"XRCPTFORWARD=" or token.upper() == b"XRCPTFORWARD":
                events.append(RcptForward(span, seq, verb, wire_text(path), param_from_wire(token), line_len))
                found = True
        return found

    def _bdat(self, args: bytes, seq: int, span: Span, data: bytes, events: list[Event]) -> None:
        """``BDAT n [LAST]`` (RFC 3030 2): the next n bytes are chunk data, sent without waiting."""
        words = args.split(b" ")
        size = words[0]
        last = len(words) > 1 and words[1].upper() == b"LAST"
        if not size.isdigit() or len(size) > 20 or int(size) > MAX_BDAT_CHUNK:
            events.append(
                Anomaly(
                    span, "bad_bdat_size", f"BDAT size {wire_text(size[:40])!r} not counted", _excerpt(data)
                )
            )
            self._enqueue((seq, "BDAT", False, False), events, span)
            return
        if len(words) > 2 or (len(words) == 2 and not last):
            events.append(
                Anomaly(span, "bad_command_line", "BDAT takes a size and an optional LAST", _excerpt(data))
            )
        # BDAT LAST ends the message: in LMTP it gets one reply per accepted recipient (RFC 2033 4.3)
        self._enqueue((seq, "BDAT", last, last and self._variant == "lmtp"), events, span)
        n = int(size)
        if n:
            self._chunk_left = n
            self._mode = _CHUNK

    def _enqueue(self, entry: _Pending, events: list[Event] | None, span: Span | None = None) -> None:
        if len(self._queue) >= MAX_PENDING:
            if self._overflow == 0 and events is not None and span is not None:
                events.append(
                    Anomaly(
                        span,
                        "too_many_pending",
                        f"more than {MAX_PENDING} commands await a reply; replies are no longer matched",
                        b"",
                    )
                )
            self._overflow += 1
            return
        self._queue.append(entry)

    # ------------------------------------------------------------------ server side

    def _server_gap(self, length: int) -> None:
        self._slb.gap(length)
        self._r_code = None
        self._r_lines = []
        self._queue.clear()  # the replies of pending commands may have been lost: end them
        self._head_answers = 0
        self._overflow = 0
        self._greeted = True
        self._sdesync = True

    def _drain_server(self, events: list[Event]) -> None:
        next_raw = self._slb.next_raw
        max_line = self._max_line
        while self._mode is not _STOPPED:
            raw = next_raw()
            if raw is None:
                return
            self._server_line(raw[0], raw[1], raw[2], raw[3] and raw[4] > max_line, raw[4], events)

    def _server_line(
        self, data: bytes, start: int, end: int, too_long: bool, length: int, events: list[Event]
    ) -> None:
        """One server line (``too_long`` already tested against max_line)."""
        # ``ddd``, ``ddd text`` or ``ddd-text`` (RFC 5321 4.2)
        reply_line = len(data) >= 3 and data[:3].isdigit() and (len(data) == 3 or data[3] in b" -")
        if self._sdesync:
            if not reply_line:
                return
            self._sdesync = False
        if too_long:
            events.append(
                Anomaly(
                    Span(S2C, start, end),
                    "line_too_long",
                    f"server line of {length} bytes (limit {self._max_line})",
                    _excerpt(data),
                )
            )
        if not reply_line:
            events.append(
                Anomaly(
                    Span(S2C, start, end),
                    "bad_reply_line",
                    "server line is not an SMTP reply line",
                    _excerpt(data),
                )
            )
            return
        code = data[:3].decode("ascii")
        more = len(data) > 3 and data[3] == 0x2D  # "-": more lines follow
        if self._r_code is None:
            if not more:
                # a one-line reply (the usual case): its text always fits (data <= max_line bytes)
                one = data[4:].decode("utf-8", "surrogateescape")
                self._on_reply(code, [one], Span(S2C, start, end), events)
                return
            self._r_code = code
            self._r_lines = []
            self._r_start = start
            self._r_bytes = 0
            self._r_clipped = False
            self._r_mismatch = False
        elif code != self._r_code and not self._r_mismatch:
            self._r_mismatch = True
            events.append(
                Anomaly(
                    Span(S2C, start, end),
                    "reply_code_mismatch",
                    f"line with code {code} inside a {self._r_code} reply",
                    _excerpt(data),
                )
            )
        text = data[4:]
        if len(self._r_lines) < MAX_REPLY_LINES and self._r_bytes + len(text) <= self._max_line:
            self._r_lines.append(text.decode("utf-8", "surrogateescape"))
            self._r_bytes += len(text) + 1
        elif not self._r_clipped:
            self._r_clipped = True
            events.append(
                Anomaly(
                    Span(S2C, start, end),
                    "reply_too_long",
                    f"reply longer than {MAX_REPLY_LINES} lines or {self._max_line} bytes; rest not kept",
                    b"",
                )
            )
        if more:
            return
        reply_code = self._r_code
        lines = self._r_lines
        self._r_code = None
        self._r_lines = []
        self._on_reply(reply_code, lines, Span(S2C, self._r_start, end), events)

    def _on_reply(self, code: str, lines: list[str], span: Span, events: list[Event]) -> None:
        text = "\n".join(lines)
        if not self._greeted:
            self._greeted = True
            if code in GREETING_CODES or not self._queue:
                events.append(Greeting(span, code, text, (), False))
                if code not in GREETING_CODES:
                    events.append(Anomaly(span, "bad_greeting", f"greeting with code {code}", b""))
                return
            events.append(
                Anomaly(
                    span,
                    "missing_greeting",
                    f"first reply ({code}) answers a command: no greeting captured",
                    b"",
                )
            )
        final = code[0] != "3"
        queue = self._queue
        entry = queue[0] if queue else None
        if entry is None:
            events.append(Reply(span, None, None, code, text, final))
            if self._overflow:
                self._overflow -= 1
            elif not self._gap_seen and code != "421":
                events.append(Anomaly(span, "unexpected_reply", f"{code} reply with no command pending", b""))
            if self._mode is _HOLD and code == "354":
                self._data_reply(code, events)  # only a 354 can be told to answer the DATA
            elif self._mode is _BODY and self._body_gap and code != "354":
                self._lost_terminator()
            elif code == "334" and self._auth_active:
                self._sasl_next = True
            return
        entry_seq, verb, end_of_data, per_recipient = entry
        if verb == "AUTH" and code == "334":
            self._sasl_next = True
        elif per_recipient:
            self._head_answers += 1
            if self._head_answers >= max(1, self._rcpt_ok):
                queue.popleft()
                self._head_answers = 0
        else:
            queue.popleft()
        events.append(Reply(span, None if entry_seq == LOST else entry_seq, None, code, text, final))
        ok = code[0] == "2"
        if self._mode is _BODY and self._body_gap and code != "354":
            self._lost_terminator()
        if end_of_data:
            return  # the reply to a whole message changes no state
        if verb == "XCLIENT":
            if code == "220":
                events.append(Greeting(span, code, text, (), True))
                self._rcpt_ok = 0
        elif verb == "EHLO" or verb == "LHLO":
            if ok:
                self._rcpt_ok = 0
                if code == "250":
                    events.append(Capabilities(span, verb.lower(), tuple(lines[1:])))
        elif verb == "MAIL" or verb == "RSET" or verb == "HELO":
            if ok:
                self._rcpt_ok = 0
        elif verb == "RCPT":
            if ok:
                self._rcpt_ok += 1
        elif verb == "DATA":
            if self._mode is _HOLD:
                self._data_reply(code, events)
        elif verb == "AUTH":
            if code != "334":
                self._auth_active = False
                self._sasl_next = False
        elif verb == "STARTTLS" and code == "220":
            self._start_tls(entry_seq, span, events)

    def _data_reply(self, code: str, events: list[Event]) -> None:
        """The reply to DATA decides what the held client bytes are."""
        if code == "354":
            self._start_body()
        else:
            self._mode = _LINES
            if self._hold_gap:
                self._cdesync = True
                self._hold_gap = False
        self._drain_client(events)

    def _lost_terminator(self) -> None:
        """The server answered while a body with a gap is open: the end was in the gap."""
        self._mode = _LINES
        self._tail = b""
        self._body_gap = False
        self._cdesync = True

    def _start_tls(self, seq: int, span: Span, events: list[Event]) -> None:
        injected = [e for e in self._queue if e[0] > seq]
        if injected:
            events.append(
                Anomaly(
                    span,
                    "starttls_injection",
                    f"{len(injected)} command(s) were pipelined in clear after STARTTLS, before its 220",
                    b"",
                )
            )
        events.append(TlsStarted(span, seq))
        self._mode = _STOPPED
        self._queue.clear()
