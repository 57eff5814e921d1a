"""POP3 parser (sans-IO): greeting, commands, replies, Dovecot's private XCLIENT and legacy XOIP.

Strategy: each direction has its own :class:`LineBuffer`. Every client command
is appended to a FIFO of pending commands (RFC 2449 PIPELINING) and each final
server reply (``+OK``/``-ERR``) pops the oldest one. ``AUTH <mechanism>`` opens
a SASL exchange: each server ``+`` continuation (reported as a non-final
:class:`Reply` to that AUTH) makes the next client line a SASL response
(credentials, or ``*`` to cancel) that produces no event, until the final reply
to the AUTH. Counting continuations, rather than taking every client line as
SASL until that final reply, keeps a misaligned queue (a capture that starts
mid-session) from swallowing all later commands; captures keep causal order,
so a ``+`` is always seen before the response it asks for. A ``+OK`` to a
command whose success response is multi-line (CAPA; LIST, UIDL, AUTH, LANG
without argument; RETR; TOP) switches the server side to body mode, which
consumes dot-stuffed lines until a lone ``.`` without looking at them (so
``XCLIENT`` or ``X-Originating-IP`` inside a message is never an event); CAPA
bodies are kept (bounded) and reported as one :class:`Capabilities` event.
``STLS`` answered ``+OK`` ends the dissection of both directions
(:class:`TlsStarted`); commands pipelined after STLS are reported as
``command_after_stls`` (STARTTLS command injection).

XCLIENT is parsed the way ``src/pop3-login/client.c: cmd_xclient()`` does: the
arguments are split on single spaces, empty tokens are skipped (reported once
per line as ``empty_token``), and values are raw (not xtext). ``XOIP <args>`` is
parsed as ``XCLIENT ADDR=<args>``, exactly as Dovecot rewrites it, so
``XOIP 1.2.3.4 PORT=5`` yields ADDR and PORT.

Gaps: the partial line before a client-side gap is still reported when it
starts with a known verb and a space (so a cut XCLIENT keeps its attributes,
with ``line_len`` counting only the bytes seen), then lines are dropped until
one starts with a known POP3 verb. After a server-side gap, lines are dropped
until a ``+OK``/``-ERR`` line (matched to the oldest pending command; replies
lost inside the gap can shift this matching) or a lone ``.`` (end of a body the
gap cut into). Over-long lines are reported as ``line_too_long`` and their first
``max_line`` bytes are still parsed, so an over-long XCLIENT still gives an
:class:`Xclient`. Every buffer and count is bounded; peer bytes never raise.

Cost: the lines of a body nobody reads (anything but CAPA) are not framed one
by one: :meth:`LineBuffer.skip_until` finds the lone ``.`` with two ``find``
calls per feed and leaves the buffer exactly as line-by-line reading would.
A repeated XCLIENT line (a flood, a proxy's pipelined commands) gives events that
share one arguments bytes object and one tuple of :class:`XParam` (events are never
changed; a small bounded memo, :data:`_XCLIENT_MEMO`), and a known verb is one str
for every command, so the events a flow keeps do not grow by copies.
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
    Reply,
    TlsStarted,
    Xclient,
    XParam,
    wire_text,
)
from analyzer.protocols.lines import LineBuffer, RawLine

C2S = Direction.TO_SERVER  # module constants: an Enum member lookup costs a descriptor call
S2C = Direction.TO_CLIENT

DEFAULT_MAX_LINE = 65536  # config.Limits.max_line; above POP3's 512 (RFC 2449) and Dovecot's 1026
MAX_PENDING = 1024  # our bound on pipelined commands awaiting a reply (RFC 2449 PIPELINING sets none)
MAX_CAPA_ITEMS = 256  # our bound on CAPA response lines kept (RFC 2449 defines about 10 capabilities)
EXCERPT_LEN = 256  # base.Anomaly.excerpt: "at most 256 bytes of the offending input"

OK = b"+OK"  # RFC 1939 section 3: positive status indicator (upper case)
ERR = b"-ERR"  # RFC 1939 section 3: negative status indicator
XCLIENT_GREETING = b"+OK [XCLIENT]"  # pop3-proxy.c banner check: case-sensitive, right after "+OK "

#: Verbs a POP3 client may send: RFC 1939 (USER ... UIDL, APOP), RFC 2449 (CAPA), RFC 2595 (STLS),
#: RFC 5034 (AUTH), RFC 6856 (UTF8, LANG), RFC 1460 (LAST), Dovecot pop3-login (XCLIENT, XOIP).
KNOWN_VERBS = frozenset(
    {
        "USER",
        "PASS",
        "APOP",
        "AUTH",
        "STLS",
        "CAPA",
        "QUIT",
        "STAT",
        "LIST",
        "RETR",
        "DELE",
        "NOOP",
        "RSET",
        "TOP",
        "UIDL",
        "LAST",
        "UTF8",
        "LANG",
        "XCLIENT",
        "XOIP",
    }
)
#: RFC 1939/2449: a +OK to these is always followed by a dot-terminated body.
MULTILINE_ALWAYS = frozenset({"CAPA", "RETR", "TOP"})
#: Multi-line only without an argument (bare AUTH lists mechanisms, as Dovecot's pop3-login
#: cmd_auth() does; LANG per RFC 6856).
MULTILINE_WITHOUT_ARGS = frozenset({"LIST", "UIDL", "AUTH", "LANG"})


class _ServerState(enum.Enum):
    GREETING = "greeting"  # the next line is the server greeting
    REPLIES = "replies"  # each line is a status reply or a SASL continuation
    BODY = "body"  # inside a multi-line response, until a lone "."
    DESYNC = "desync"  # after a gap: wait for a status line or a lone "."


# module constants: an Enum member lookup (_ServerState.BODY) costs a descriptor call, once per line
_GREETING = _ServerState.GREETING
_REPLIES = _ServerState.REPLIES
_BODY = _ServerState.BODY
_DESYNC = _ServerState.DESYNC


#: A command awaiting its reply: ``(seq, upper-cased verb, multiline)``, multiline when a +OK to it is
#: followed by a dot-terminated body (a tuple: one is made per command).
_Pending = tuple[int, str, bool]


def _excerpt(data: bytes) -> bytes:
    return data[:EXCERPT_LEN]


def _split_verb(data: bytes) -> tuple[bytes, bytes]:
    """Command name and arguments; the name ends at SP or CR (client_read_cmd_name())."""
    cut = data.find(b" ")
    if cut < 0:
        cut = len(data)
    cr = data.find(b"\r", 0, cut)
    if cr >= 0:
        cut = cr
    return data[:cut], data[cut + 1 :]


def _plausible_command(data: bytes, *, need_args: bool) -> bool:
    verb, _ = _split_verb(data)
    if wire_text(verb.upper()) not in KNOWN_VERBS:
        return False
    return len(data) > len(verb) if need_args else True


def _status_text(data: bytes, status: bytes) -> str:
    n = len(status)
    return (data[n + 1 :] if data[n : n + 1] == b" " else data[n:]).decode("utf-8", "surrogateescape")


#: upper-cased known verbs -> one str each: a command's verb is not a new str per line
_VERB_TEXT = {v.encode("ascii"): v for v in KNOWN_VERBS}
XCLIENT_MEMO_SIZE = 256  # ours: XCLIENT/XOIP arguments remembered with their attributes (emptied when full)
XCLIENT_MEMO_ARGS_MAX = 512  # ours: only arguments this short are remembered (a few hundred KiB at most)
#: (verb, arguments) -> (the arguments, their attributes, empty tokens): a repeated XCLIENT shares the objects
_XCLIENT_MEMO: dict[tuple[str, bytes], tuple[bytes, tuple[XParam, ...], int]] = {}


def _xclient_args(verb: str, args: bytes) -> tuple[bytes, tuple[XParam, ...], int]:
    """The arguments and :func:`_xparams` of an XCLIENT or XOIP, shared by equal ones (never changed)."""
    if len(args) > XCLIENT_MEMO_ARGS_MAX:
        params, empty = _xparams(args if verb == "XCLIENT" else b"ADDR=" + args)
        return args, params, empty
    key = (verb, args)
    hit = _XCLIENT_MEMO.get(key)
    if hit is None:
        params, empty = _xparams(args if verb == "XCLIENT" else b"ADDR=" + args)
        hit = (args, params, empty)
        if len(_XCLIENT_MEMO) >= XCLIENT_MEMO_SIZE:
            _XCLIENT_MEMO.clear()
        _XCLIENT_MEMO[key] = hit
    return hit


def _xparams(args: bytes) -> tuple[tuple[XParam, ...], int]:
    """Parse ``k=v k=v`` like cmd_xclient(): single-space split, empty tokens skipped, raw values."""
    params: list[XParam] = []
    empty = 0
    if args == b"":
        return (), 0
    for token in args.split(b" "):
        if token == b"":
            empty += 1
            continue
        name, eq, raw = token.partition(b"=")
        value = wire_text(raw)
        params.append(XParam(wire_text(name), value, value, value, eq == b"=", ()))
    return tuple(params), empty


class Pop3Parser:
    """Sans-IO POP3 parser for one TCP connection (both directions)."""

    name: ClassVar[str] = "pop3"

    def __init__(self, *, max_line: int = DEFAULT_MAX_LINE, midstream: bool = False) -> None:
        self._max_line = max_line
        self._midstream = midstream  # the connection start was not captured (no SYN)
        # one line buffer per direction, in plain attributes (a dict keyed by Direction would hash the
        # enum, a Python-level __hash__, on every feed)
        self._clb = LineBuffer(max_line)
        self._slb = LineBuffer(max_line)
        self._seq = 0  # next Command.seq
        self._pending: deque[_Pending] = deque()
        self._pending_overflow = False  # too_many_pending already reported
        self._server = _GREETING
        self._client_desync = False  # after a client-side gap: drop lines until a known verb
        self._sasl_seq: int | None = None  # seq of the AUTH whose SASL exchange is open
        self._sasl_due = 0  # "+" continuations the client has not answered yet
        self._tls = False  # STLS succeeded: nothing more is dissected
        self._body_start = 0  # stream offset of the +OK line that opened the current body
        self._capa: list[str] | None = None  # CAPA items being collected (None: not a CAPA body)
        self._capa_dropped = 0  # CAPA lines beyond MAX_CAPA_ITEMS

    # -- Parser protocol ------------------------------------------------------------------

    def feed(self, direction: Direction, data: bytes) -> list[Event]:
        """Consume the next bytes of one direction; return every event completed by them."""
        if self._tls:
            return []
        lb = self._clb if direction is C2S else self._slb
        lb.feed(data)
        events: list[Event] = []
        next_raw = lb.next_raw
        if direction is C2S:
            while not self._tls:
                raw = next_raw()
                if raw is None:
                    break
                self._client_line(raw, events)
            return events
        while not self._tls:
            if self._server is _BODY and self._capa is None:
                # a message body nobody reads: only its terminating "." line matters
                if lb.skip_until(b".") is None:
                    break
                self._server = _REPLIES  # what _body_line does for the "." line
                continue
            raw = next_raw()
            if raw is None:
                break
            self._server_line(raw, events)
        return events

    def gap(self, direction: Direction, length: int) -> list[Event]:
        """``length`` bytes of this direction were not captured; report and resynchronize."""
        if self._tls:
            return []
        lb = self._clb if direction is C2S else self._slb
        lost_at = lb.fed_offset  # the missing bytes start here
        start = lb.offset  # start of the interrupted line (or of the over-long line being skipped)
        partial = lb.take(lb.pending())
        events: list[Event] = []
        if direction is C2S:
            if self._sasl_due:
                self._sasl_due = 0  # the lost bytes held (part of) the SASL response
            elif partial and _plausible_command(partial, need_args=True):
                self._command(
                    Span(direction, start, start + len(partial)), partial, False, len(partial), events
                )
            self._client_desync = True
        else:
            if self._server is _BODY:
                self._capa = None
            self._server = _DESYNC
        lb.gap(length)
        detail = f"{length} bytes missing from the {direction.value} stream at offset {lost_at}"
        if lost_at > start:
            detail += f" ({lost_at - start} bytes of the interrupted line before it)"
        events.append(
            Anomaly(Span(direction, start, lost_at + length), "content_gap", detail, _excerpt(partial))
        )
        return events

    def eof(self, direction: Direction) -> list[Event]:
        """This direction ended; report an unterminated line or body."""
        if self._tls:
            return []
        lb = self._clb if direction is C2S else self._slb
        start = lb.offset
        unterminated = lb.fed_offset - start  # also counts an over-long line still being skipped
        partial = lb.take(lb.pending())
        events: list[Event] = []
        if unterminated > 0:
            events.append(
                Anomaly(
                    Span(direction, start, start + unterminated),
                    "incomplete_line",
                    f"{unterminated} bytes without a line end at the end of the {direction.value} stream",
                    _excerpt(partial),
                )
            )
        if direction is S2C and self._server is _BODY:
            events.append(
                Anomaly(
                    Span(direction, self._body_start, start + len(partial)),
                    "unterminated_multiline",
                    "the stream ended inside a multi-line response (no final '.')",
                    b"",
                )
            )
            self._server = _REPLIES
            self._capa = None
        return events

    # -- client side ----------------------------------------------------------------------

    def _client_line(self, raw: RawLine, events: list[Event]) -> None:
        data, start, end, too_long, length, after_gap = raw
        if after_gap:
            return  # the rest of a line whose beginning was lost
        if self._sasl_due:
            self._sasl_due -= 1
            return  # SASL response (or "*" cancel) to a "+" continuation: credentials, not a command
        if self._client_desync:
            if not _plausible_command(data, need_args=False):
                return
            self._client_desync = False
        self._command(Span(C2S, start, end), data, too_long, length, events)

    def _command(self, span: Span, data: bytes, too_long: bool, length: int, events: list[Event]) -> None:
        verb_raw, args = _split_verb(data)
        verb_up = verb_raw.upper()
        verb = _VERB_TEXT.get(verb_up) or verb_up.decode("utf-8", "surrogateescape")
        seq = self._seq
        self._seq += 1
        line_len = span.end - span.start
        xclient = verb == "XCLIENT" or verb == "XOIP"
        if xclient:
            args, params, empty = _xclient_args(verb, args)
        events.append(Command(span, seq, None, verb, args, line_len))
        if xclient:
            events.append(Xclient(span, seq, verb, params, line_len))
            if empty:
                events.append(
                    Anomaly(
                        span,
                        "empty_token",
                        f"{verb} has {empty} empty attribute token(s) (double or trailing space)",
                        _excerpt(data),
                    )
                )
        if too_long:
            events.append(
                Anomaly(
                    span,
                    "line_too_long",
                    f"{verb} line of {length} bytes exceeds the {self._max_line}-byte limit; "
                    f"only the first {self._max_line} bytes were parsed",
                    _excerpt(data),
                )
            )
        has_args = bool(args.strip(b" "))
        multiline = verb in MULTILINE_ALWAYS or (verb in MULTILINE_WITHOUT_ARGS and not has_args)
        if len(self._pending) >= MAX_PENDING:
            self._pending.popleft()
            if not self._pending_overflow:
                self._pending_overflow = True
                events.append(
                    Anomaly(
                        span,
                        "too_many_pending",
                        f"more than {MAX_PENDING} commands without a reply; oldest dropped",
                        _excerpt(data),
                    )
                )
        self._pending.append((seq, verb, multiline))
        if verb == "AUTH" and has_args:
            self._sasl_seq = seq
            self._sasl_due = 0

    # -- server side ----------------------------------------------------------------------

    def _server_line(self, raw: RawLine, events: list[Event]) -> None:
        data, start, end, too_long, length, after_gap = raw
        state = self._server
        if state is _BODY:
            self._body_line(data, end, too_long, events)
            return
        if after_gap:
            return
        if state is _DESYNC:
            if data == b".":
                self._server = _REPLIES
                return
            if not (data.startswith((OK, ERR))):
                return
            self._server = _REPLIES
        span = Span(S2C, start, end)
        if too_long:
            events.append(
                Anomaly(
                    span,
                    "line_too_long",
                    f"server line of {length} bytes exceeds the {self._max_line}-byte limit",
                    _excerpt(data),
                )
            )
        if state is _GREETING:
            self._server = _REPLIES
            if not (self._midstream and self._pending):
                self._greeting(span, data, events)
                return
            # the connection start was not captured and a command is already waiting: this
            # line answers it; taking it for the greeting would shift every later reply onto
            # the wrong command
            events.append(Anomaly(span, "missing_greeting", "first server line answers a command: no greeting "
                                  "captured", _excerpt(data)))
            self._reply(span, data, events)
        else:
            self._reply(span, data, events)

    def _greeting(self, span: Span, data: bytes, events: list[Event]) -> None:
        for status in (OK, ERR):
            if data.startswith(status):
                caps = ("XCLIENT",) if data.startswith(XCLIENT_GREETING) else ()
                events.append(Greeting(span, status.decode("ascii"), _status_text(data, status), caps, False))
                return
        events.append(Anomaly(span, "bad_greeting", "the first server line is not +OK/-ERR", _excerpt(data)))

    def _reply(self, span: Span, data: bytes, events: list[Event]) -> None:
        if data == b"+" or data.startswith(b"+ "):
            if self._sasl_seq is not None:
                self._sasl_due += 1
                events.append(Reply(span, self._sasl_seq, None, "+", _status_text(data, b"+"), False))
            else:
                events.append(Reply(span, None, None, "+", _status_text(data, b"+"), False))
                events.append(
                    Anomaly(
                        span,
                        "unexpected_reply",
                        "SASL continuation without an AUTH in progress",
                        _excerpt(data),
                    )
                )
            return
        if data.startswith(OK):
            status = OK
            status_s = "+OK"
        elif data.startswith(ERR):
            status = ERR
            status_s = "-ERR"
        else:
            events.append(
                Anomaly(
                    span, "unexpected_reply", "server line is not +OK, -ERR or a continuation", _excerpt(data)
                )
            )
            return
        pending = self._pending.popleft() if self._pending else None
        events.append(
            Reply(
                span,
                None if pending is None else pending[0],
                None,
                status_s,
                _status_text(data, status),
                True,
            )
        )
        if pending is None:
            events.append(
                Anomaly(span, "unexpected_reply", f"{status_s} reply with no command pending", _excerpt(data))
            )
            return
        seq, verb, multiline = pending
        if seq == self._sasl_seq:
            self._sasl_seq = None
            self._sasl_due = 0
        if status is not OK:
            return
        if multiline:
            self._server = _BODY
            self._body_start = span.start
            self._capa = [] if verb == "CAPA" else None
            self._capa_dropped = 0
        elif verb == "STLS":
            if self._pending:
                # commands written after STLS in cleartext, read by the server after the handshake
                # (STARTTLS command injection, CVE-2011-0411 class)
                events.append(
                    Anomaly(
                        span,
                        "command_after_stls",
                        f"{len(self._pending)} command(s) were pipelined after STLS before TLS started",
                        b"",
                    )
                )
            events.append(TlsStarted(span, seq))
            self._tls = True

    def _body_line(self, data: bytes, end: int, too_long: bool, events: list[Event]) -> None:
        if data == b"." and not too_long:
            self._server = _REPLIES
            capa = self._capa
            self._capa = None
            if capa is not None:
                span = Span(S2C, self._body_start, end)
                events.append(Capabilities(span, "capa", tuple(capa)))
                if self._capa_dropped:
                    events.append(
                        Anomaly(
                            span,
                            "too_many_capabilities",
                            f"CAPA listed {MAX_CAPA_ITEMS + self._capa_dropped} lines; "
                            f"the first {MAX_CAPA_ITEMS} were kept",
                            b"",
                        )
                    )
            return
        if self._capa is not None:
            if len(self._capa) < MAX_CAPA_ITEMS:
                self._capa.append(wire_text(data[1:] if data.startswith(b".") else data))
            else:
                self._capa_dropped += 1
