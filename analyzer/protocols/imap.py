"""IMAP parser (sans-IO): commands, replies, literals, and the RFC 2971 ``ID`` command in full.

Strategy: each direction is framed by its own :class:`LineBuffer`. A client
command is a first line ``tag SP verb [SP args]`` plus, when a line ends with a
literal header (``{n}``, ``{n+}``, ``~{n}``, outside any quoted string), ``n``
raw octets and a continuation line, repeated. Literal octets are consumed from
the line buffer by counting (``skip_buffered``); only literals of an ``ID``
command are kept, and only their first ``max_literal`` octets, so a literal
announcing 4 GB costs no memory. Server responses are framed the same way
(``* n FETCH (BODY[] {n}``), their literals are always counted, never kept.

The ``ID`` list is tokenized by :class:`_IdList`, one complete line segment or
one complete literal at a time, so the result does not depend on how the bytes
were chunked. Nesting is a depth counter (no recursion): only items at depth 1
form pairs, a nested list counts as one (bad) item. Kept pairs are capped
(``ID_MAX_PAIRS_KEPT`` pairs, ``ID_MAX_KEPT_BYTES`` octets); the rest are
counted in the problem ``too_many_pairs_kept``.

Whether a synchronizing literal waited for the server's ``+`` is decided when
the first octet after the literal header is processed: the two directions are
fed in capture order, so it is the question "was a ``+`` line completed on the
server side since the ``{n}`` line?" (the count of ``+`` lines cannot change
while one client ``feed`` runs, so the answer does not depend on chunking).

Commands are numbered when their first line is read (a ``+`` continuation can
answer a command that is still being sent); a command lost to a gap or to the
end of the capture is never emitted and its number is skipped. Tagged replies
answer the most recent pending command with their tag, untagged ones the
oldest pending command, continuations the newest one.

``IdParam.literal_waited`` is per pair: None when neither the key nor the value
is a synchronizing literal, else True only if every synchronizing literal of
the pair waited. An ``ID`` whose line was over ``max_line`` gets its
``Command`` (args truncated) and a ``line_too_long`` anomaly, but no ``ImapId``.

After a tagged ``OK`` to ``STARTTLS`` (or ``COMPRESS``) both directions stop
being dissected; after ``* MULTIPLEX 0`` answering an ``ID`` that asked for
``x-multiplex`` the server direction stops (Dovecot multiplex framing). A gap
drops the partial line (a gap wholly inside a literal that is only counted
keeps the direction in sync) and then skips lines until one that looks like a
command (client) or a reply (server).

Cost: lines come from :meth:`LineBuffer.next_raw` as plain tuples. A command
without a literal (nearly all of them) is emitted at once, with no ``_Cmd``
record; an ``ID`` in the form Dovecot writes (quoted pairs, one space apart) is
read by one regular expression (:func:`_id_params`), any other by
:class:`_IdList`, which gives the same result for it. A response without a
literal goes straight to ``_reply``; pending commands are ``(seq, tag, verb)``
tuples.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from analyzer.model import Direction, Span
from analyzer.protocols.base import (
    Anomaly,
    Capabilities,
    Command,
    Event,
    Greeting,
    IdParam,
    ImapId,
    Reply,
    TlsStarted,
    wire_text,
)
from analyzer.protocols.lines import LineBuffer

C2S = Direction.TO_SERVER  # module constants: an Enum member lookup costs a descriptor call
S2C = Direction.TO_CLIENT

EXCERPT_MAX = 256  # ARCHITECTURE.md / base.Anomaly: excerpts are at most 256 bytes
IMAP_MAX_NUMBER = 4_294_967_295  # RFC 3501 section 9 / RFC 9051: "number" is an unsigned 32-bit integer
LITERAL_DIGITS_MAX = 20  # our bound: longer literal sizes are clamped (no int() on attacker-sized digit strings)
LITERAL_SIZE_CLAMP = 10**LITERAL_DIGITS_MAX  # "rest of the stream" for absurd literal sizes
ID_MAX_PAIRS_KEPT = 1000  # our bound (design habit 8); RFC 2971 section 3.3 allows 30, Dovecot has no limit
ID_MAX_KEPT_BYTES = 1 << 20  # our bound on name+value octets kept per ID command
MAX_PENDING = 1024  # our bound on commands awaiting their tagged reply
ID_FAST_PATH_MAX = 8192  # our bound: longer ID lists skip the one-regex fast path (its backtracking grows)

#: Stable ``ImapId.problems`` strings.
ID_PROBLEMS = (
    "odd_item_count",  # a key without a value
    "nested_list",  # a "(" inside the list (Dovecot 2.4.3+: BAD Too many '(')
    "key_not_string",  # a list or NIL where a key belongs (the pair is dropped)
    "value_is_list",  # a list where a value belongs (the pair is dropped)
    "nul_in_quoted",  # NUL inside a quoted string (Dovecot: BAD NULs not allowed in strings)
    "cr_or_lf_in_quoted",  # CR inside a quoted string (Dovecot: BAD Missing '"')
    "bad_escape",  # backslash before anything but DQUOTE or backslash
    "unterminated_quoted",  # the line ended inside a quoted string (value kept as far as it went)
    "missing_paren",  # no "(" after ID, or the list never closed
    "trailing_garbage",  # anything after NIL or after the closing ")"
    "too_many_pairs_kept",  # pairs past ID_MAX_PAIRS_KEPT / ID_MAX_KEPT_BYTES were counted, not kept
    "empty_list",  # "ID ()": allowed by RFC 2971, noted
    "literal8",  # a ~{n} literal (RFC 3516), tolerated
    "atom",  # a key or value sent as an atom (RFC 2971 wants strings; Dovecot accepts atoms)
    "literal_truncated",  # a literal longer than max_literal: only its first max_literal octets are kept
)

#: Stable ``Anomaly.code`` values this parser emits.
ANOMALY_CODES = (
    "content_gap",  # bytes missing from the capture; the direction resynchronizes
    "line_too_long",  # a line over max_line (detail has the length)
    "bad_command_line",  # a client line that is not "tag SP command"
    "bad_reply_line",  # a server line that is not "* ...", "+ ..." or "tag OK|NO|BAD ..."
    "bad_greeting",  # the first server line is not * OK / * PREAUTH / * BYE
    "huge_literal",  # a literal size over the IMAP maximum (skipped by counting)
    "eof_in_line",  # the stream ended inside a line (the partial line is then parsed)
    "eof_in_literal",  # the stream ended inside a literal (the command/response is dropped)
    "too_many_pending",  # more than MAX_PENDING commands without a tagged reply
    "multiplex_framing",  # * MULTIPLEX 0 after an x-multiplex request: the server side is not dissected further
    "compressed",  # COMPRESS accepted: nothing is dissected further
)

_SP = 0x20
_LPAREN = 0x28
_RPAREN = 0x29
_DQUOTE = 0x22

#: RFC 3501 section 9: tag = 1*<any ASTRING-CHAR except "+">; ASTRING-CHAR = ATOM-CHAR / "]".
_TAG_CHARS = bytes(c for c in range(0x21, 0x7F) if c not in b'(){%*"\\+')
#: RFC 3501 section 9: ATOM-CHAR = any CHAR except atom-specials ( "(" ")" "{" SP CTL "%" "*" DQUOTE "\" "]" ).
_ATOM_CHARS = bytes(c for c in range(0x21, 0x7F) if c not in b'(){%*"\\]')

#: Commands of RFC 3501/9051 and the common extensions (IDLE, ID, COMPRESS, MOVE, QUOTA, ACL, METADATA ...).
KNOWN_VERBS = frozenset(
    {
        "APPEND", "AUTHENTICATE", "CAPABILITY", "CHECK", "CLOSE", "COMPRESS", "COPY", "CREATE", "DELETE",
        "DELETEACL", "ENABLE", "EXAMINE", "EXPUNGE", "FETCH", "GETACL", "GETMETADATA", "GETQUOTA",
        "GETQUOTAROOT", "ID", "IDLE", "LIST", "LISTRIGHTS", "LOGIN", "LOGOUT", "LSUB", "MOVE", "MYRIGHTS",
        "NAMESPACE", "NOOP", "NOTIFY", "RENAME", "REPLACE", "SEARCH", "SELECT", "SETACL", "SETMETADATA",
        "SETQUOTA", "SORT", "STARTTLS", "STATUS", "STORE", "SUBSCRIBE", "THREAD", "UID", "UNAUTHENTICATE",
        "UNSELECT", "UNSUBSCRIBE", "XLIST",
    }
)

#: A quoted string: DQUOTE *(any octet but DQUOTE/backslash, or backslash + any octet) DQUOTE (RFC 3501 section 9).
_QUOTED = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_ESCAPE = re.compile(rb"\\(.)", re.DOTALL)
_QUOTED_SPECIAL = re.compile(rb"[\x00\r\n\\]")  # octets that need a closer look inside a quoted string
#: One ID token: a paren, a quoted string (group 1), an unterminated quoted string (rest of the segment), an atom.
_ID_TOKEN = re.compile(rb'[()]|("[^"\\]*(?:\\.[^"\\]*)*")|".*|[^ ()]+', re.DOTALL)
#: The usual ID list: quoted strings without backslash, NUL, CR or LF, in pairs, one space apart (fast path).
_SIMPLE_ID = re.compile(rb'\("[^"\\\x00\r\n]*" "[^"\\\x00\r\n]*"(?: "[^"\\\x00\r\n]*" "[^"\\\x00\r\n]*")*\)')
_SIMPLE_STRING = re.compile(rb'"([^"]*)"')


def _excerpt(data: bytes) -> bytes:
    """At most ``EXCERPT_MAX`` bytes of ``data``."""
    return bytes(data[:EXCERPT_MAX])


def _split_word(data: bytes) -> tuple[bytes, bytes]:
    """First space-separated word and the rest after one space."""
    sp = data.find(b" ")
    if sp < 0:
        return data, b""
    return data[:sp], data[sp + 1 :]


def _split_command(data: bytes) -> tuple[bytes, bytes, bytes, int] | None:
    """``(tag, verb, args, args_offset)`` of a command line, or None when it is not ``tag SP verb``."""
    sp = data.find(b" ")
    if sp <= 0:
        return None
    tag = data[:sp]
    if tag.translate(None, _TAG_CHARS):
        return None
    sp2 = data.find(b" ", sp + 1)
    if sp2 < 0:
        verb, args, off = data[sp + 1 :], b"", len(data)
    else:
        verb, args, off = data[sp + 1 : sp2], data[sp2 + 1 :], sp2 + 1
    if not verb or verb.translate(None, _ATOM_CHARS):
        return None
    return tag, verb, args, off


def _looks_like_command(data: bytes) -> bool:
    """True for ``tag SP known-verb ...`` (the resynchronization test of the client side)."""
    parsed = _split_command(data)
    return parsed is not None and parsed[1].upper().decode("ascii") in KNOWN_VERBS


_TAGGED_STATUS = {b"OK": "OK", b"NO": "NO", b"BAD": "BAD"}  # RFC 3501 section 7.1: tagged status responses


def _split_tagged(data: bytes) -> tuple[bytes, str, bytes] | None:
    """``(tag, status, text)`` of ``tag OK|NO|BAD text``, or None."""
    sp = data.find(b" ")
    if sp <= 0:  # no tag, or no status after it
        return None
    tag = data[:sp]
    if tag.translate(None, _TAG_CHARS):
        return None
    sp2 = data.find(b" ", sp + 1)
    status = _TAGGED_STATUS.get((data[sp + 1 :] if sp2 < 0 else data[sp + 1 : sp2]).upper())
    if status is None:
        return None
    return tag, status, b"" if sp2 < 0 else data[sp2 + 1 :]


def _looks_like_reply(data: bytes) -> bool:
    """True for ``* ...``, ``+ ...`` or ``tag OK|NO|BAD`` (the resynchronization test of the server side)."""
    return data[:2] in (b"* ", b"+ ") or data == b"+" or _split_tagged(data) is not None


def _capability_code(text: bytes) -> tuple[str, ...] | None:
    """Items of a leading ``[CAPABILITY ...]`` response code, or None when there is none."""
    if text[:1] != b"[":
        return None
    end = text.find(b"]")
    if end < 0:
        return None
    inner = text[1:end]
    sp = inner.find(b" ")
    if (inner if sp < 0 else inner[:sp]).upper() != b"CAPABILITY":
        return None
    # decoding, then splitting on " ", gives the words wire_text would give one by one (0x20 is
    # never part of a UTF-8 sequence, and surrogateescape maps every other byte on its own)
    return _words(inner.decode("utf-8", "surrogateescape"))[1:]


def _words(text: str) -> tuple[str, ...]:
    """The space-separated words of ``text`` (empty ones dropped)."""
    return tuple(filter(None, text.split(" ")))


@dataclass(frozen=True, slots=True)
class _LiteralHeader:
    """A literal header found at the end of a line."""

    start: int  #: index in the line of ``{`` (or of ``~`` for literal8)
    size: int  #: announced octet count (clamped to ``LITERAL_SIZE_CLAMP``)
    nonsync: bool  #: ``{n+}`` (LITERAL+)
    literal8: bool  #: ``~{n}`` (RFC 3516 BINARY)


def _literal_header(line: bytes) -> _LiteralHeader | None:
    """The literal header ending ``line`` (outside any quoted string), or None."""
    if not line.endswith(b"}"):
        return None
    brace = line.rfind(b"{")
    if brace < 0:
        return None
    body = line[brace + 1 : -1]
    nonsync = body.endswith(b"+")
    if nonsync:
        body = body[:-1]
    if not body or not body.isdigit():
        return None
    digits = body.lstrip(b"0")
    size = LITERAL_SIZE_CLAMP if len(digits) > LITERAL_DIGITS_MAX else int(digits or b"0")
    literal8 = brace > 0 and line[brace - 1] == 0x7E
    start = brace - 1 if literal8 else brace
    pos = 0
    while True:  # is the header inside a quoted string?  Each step moves past one quoted string.
        q = line.find(b'"', pos, start)
        if q < 0:
            break
        m = _QUOTED.match(line, q)
        if m is None or m.end() > start:
            return None
        pos = m.end()
    return _LiteralHeader(start, size, nonsync, literal8)


class _Tok:
    """One string-ish item of an ID list (mutable scratch, never leaves this module)."""

    __slots__ = ("data", "form", "octets", "wire", "waited")

    def __init__(self, data: bytes, form: str, octets: int, wire: int, waited: bool | None) -> None:
        self.data = data  # decoded octets (a prefix for a truncated literal)
        self.form = form  # quoted | literal | literal+ | atom | nil
        self.octets = octets  # decoded length
        self.wire = wire  # octets on the wire as Dovecot's input buffer counts them
        self.waited = waited  # synchronizing literal: waited for "+"; else None


_LIST = None  # marker passed to _IdList._item for a nested list


class _IdList:
    """Incremental, non-recursive parser of ``ID`` arguments (``NIL`` or a parenthesized list)."""

    __slots__ = ("_state", "_depth", "_key", "_key_bad", "_items", "_pairs", "_kept", "_problems")

    def __init__(self) -> None:
        self._state = "start"  # start | list | nil | done | bad
        self._depth = 0  # parenthesis depth inside the top list (1 = top level)
        self._key: _Tok | None = None
        self._key_bad = False  # the key slot holds a non-string; the next item is its (dropped) value
        self._items = 0  # items at depth 1
        self._pairs: list[IdParam] = []
        self._kept = 0  # name+value octets kept
        self._problems: list[str] = []

    def _problem(self, code: str) -> None:
        if code not in self._problems:
            self._problems.append(code)

    def line(self, seg: bytes) -> None:
        """Tokenize one line segment (literal header already removed)."""
        for m in _ID_TOKEN.finditer(seg):
            tok = m.group()
            c = tok[0]
            if c == _LPAREN:
                self._open()
            elif c == _RPAREN:
                self._close()
            elif c == _DQUOTE:
                if m.lastindex == 1:
                    self._token_quoted(tok[1:-1], len(tok))
                else:
                    self._problem("unterminated_quoted")
                    self._token_quoted(tok[1:], len(tok))
            elif tok.upper() == b"NIL":
                self._token(_Tok(b"", "nil", 0, len(tok), None))
            else:
                if self._state == "list" and self._depth == 1:
                    self._problem("atom")
                self._token(_Tok(tok, "atom", len(tok), len(tok), None))

    def literal(self, data: bytes, size: int, header: _LiteralHeader, waited: bool | None) -> None:
        """One complete literal (``data`` may be a prefix of ``size`` octets)."""
        if self._state == "list" and self._depth == 1:
            if header.literal8:
                self._problem("literal8")
            if len(data) < size:
                self._problem("literal_truncated")
        form = "literal+" if header.nonsync else "literal"
        self._token(_Tok(data, form, size, size, None if header.nonsync else waited))

    def _token_quoted(self, raw: bytes, wire: int) -> None:
        if self._state != "list" or self._depth != 1:
            self._token(_Tok(b"", "quoted", 0, wire, None))
            return
        data = raw
        if _QUOTED_SPECIAL.search(raw) is not None:
            if b"\x00" in raw:
                self._problem("nul_in_quoted")
            if b"\r" in raw or b"\n" in raw:
                self._problem("cr_or_lf_in_quoted")
            if b"\\" in raw:
                if (len(raw) - len(raw.rstrip(b"\\"))) % 2 == 1:
                    self._problem("bad_escape")  # a lone trailing backslash (unterminated string)
                if any(m.group(1) not in (b'"', b"\\") for m in _ESCAPE.finditer(raw)):
                    self._problem("bad_escape")
                data = _ESCAPE.sub(rb"\1", raw)
        self._item(_Tok(data, "quoted", len(data), wire, None))  # state is "list" at depth 1

    def _open(self) -> None:
        if self._state == "start":
            self._state, self._depth = "list", 1
        elif self._state == "list":
            self._depth += 1
            self._problem("nested_list")
        elif self._state in ("nil", "done"):
            self._problem("trailing_garbage")

    def _close(self) -> None:
        if self._state == "list":
            self._depth -= 1
            if self._depth == 1:
                self._item(_LIST)
            elif self._depth == 0:
                if self._key is not None or self._key_bad:
                    self._problem("odd_item_count")
                if self._items == 0:
                    self._problem("empty_list")
                self._key, self._key_bad = None, False
                self._state = "done"
        elif self._state == "start":
            self._problem("missing_paren")
            self._state = "bad"
        elif self._state in ("nil", "done"):
            self._problem("trailing_garbage")

    def _token(self, tok: _Tok) -> None:
        if self._state == "start":
            if tok.form == "nil":
                self._state = "nil"
            else:
                self._problem("missing_paren")
                self._state = "bad"
        elif self._state == "list":
            if self._depth == 1:
                self._item(tok)
        elif self._state in ("nil", "done"):
            self._problem("trailing_garbage")

    def _item(self, tok: _Tok | None) -> None:
        self._items += 1
        if self._key is None and not self._key_bad:
            if tok is None or tok.form == "nil":
                self._problem("key_not_string")
                self._key_bad = True
            else:
                self._key = tok
            return
        key = self._key
        self._key, self._key_bad = None, False
        if key is None:
            return  # value of a non-string key: dropped
        if tok is None:
            self._problem("value_is_list")
            return
        self._add_pair(key, tok)

    def _add_pair(self, key: _Tok, val: _Tok) -> None:
        size = len(key.data) + len(val.data)
        if len(self._pairs) >= ID_MAX_PAIRS_KEPT or self._kept + size > ID_MAX_KEPT_BYTES:
            self._problem("too_many_pairs_kept")
            return
        self._kept += size
        waits = [t.waited for t in (key, val) if t.waited is not None]
        self._pairs.append(
            IdParam(
                name=wire_text(key.data),
                value=None if val.form == "nil" else wire_text(val.data),
                name_form=key.form,
                value_form=val.form,
                name_octets=key.octets,
                value_octets=val.octets,
                name_wire=key.wire,
                value_wire=val.wire,
                literal_waited=all(waits) if waits else None,
            )
        )

    def result(self) -> tuple[tuple[IdParam, ...] | None, tuple[str, ...]]:
        """``(params, problems)`` once the command is complete."""
        if self._state == "list":
            if self._key is not None or self._key_bad:
                self._problem("odd_item_count")
            self._problem("missing_paren")
        elif self._state == "start":
            self._problem("missing_paren")
        params = tuple(self._pairs) if self._state in ("list", "done") else None
        return params, tuple(self._problems)


def _id_params(args: bytes) -> tuple[tuple[IdParam, ...] | None, tuple[str, ...]]:
    """``(params, problems)`` of the arguments of a one-line ``ID`` command.

    The usual list (quoted keys and values without escapes, one space apart, as
    Dovecot's proxy writes it) is read with one regular expression; anything
    else goes through :class:`_IdList`, which gives the same result for it.
    """
    if len(args) <= ID_FAST_PATH_MAX and _SIMPLE_ID.fullmatch(args) is not None:
        strings = _SIMPLE_STRING.findall(args)
        # (fewer octets than ID_FAST_PATH_MAX < ID_MAX_KEPT_BYTES: only the pair count can overflow)
        if len(strings) <= 2 * ID_MAX_PAIRS_KEPT:
            params = []
            for i in range(0, len(strings), 2):
                key = strings[i]
                value = strings[i + 1]
                params.append(
                    IdParam(
                        key.decode("utf-8", "surrogateescape"),
                        value.decode("utf-8", "surrogateescape"),
                        "quoted",
                        "quoted",
                        len(key),
                        len(value),
                        len(key) + 2,
                        len(value) + 2,
                        None,
                    )
                )
            return tuple(params), ()
    idl = _IdList()
    idl.line(args)
    return idl.result()


class _Cmd:
    """A client command being read (first line seen, literals or continuation lines pending)."""

    __slots__ = (
        "seq", "tag", "verb", "start", "args", "idl", "lit", "lit_left", "keep", "decided", "waited", "plus_mark",
    )

    def __init__(self, seq: int, tag: str, verb: str, start: int) -> None:
        self.seq = seq
        self.tag = tag
        self.verb = verb
        self.start = start  # stream offset of the first byte of the command
        self.args = bytearray()  # raw rest of the lines, literals excluded, at most max_line bytes
        self.idl: _IdList | None = None  # set for ID commands
        self.lit: _LiteralHeader | None = None  # literal being read
        self.lit_left = 0  # octets of that literal still to come
        self.keep: bytearray | None = None  # kept literal octets (ID only)
        self.decided = False  # literal_waited decided for the current literal
        self.waited = False
        self.plus_mark = 0  # server "+" count when the literal header was read


class _Resp:
    """A server response being read across literals."""

    __slots__ = ("tag", "status", "text", "start", "final", "lit_left")

    def __init__(self, tag: str, status: str, text: bytes, start: int, final: bool) -> None:
        self.tag = tag
        self.status = status
        self.text = bytearray(text)
        self.start = start
        self.final = final
        self.lit_left: int | None = None


#: A command that has not had its tagged reply: ``(seq, tag, verb)`` (a tuple: one is made per command).
_Pending = tuple[int, str, str]


class ImapParser:
    """Sans-IO IMAP dissector of one connection (both directions, capture order)."""

    name: ClassVar[str] = "imap"

    def __init__(self, *, max_line: int = 65536, max_literal: int = 65536, midstream: bool = False) -> None:
        self._midstream = midstream  # connection start not captured: a first line that is no greeting is normal
        self._max_line = max(1, max_line)
        self._max_literal = max(0, max_literal)
        self._clb = self._new_lb()
        self._slb = self._new_lb()
        self._stopped = False  # STARTTLS/COMPRESS accepted: nothing is dissected any more
        self._mux = False  # server side switched to multiplex framing
        self._ceof = False
        self._seof = False
        self._cdesync = False
        self._sdesync = False
        self._greeted = False
        self._cmd: _Cmd | None = None
        self._resp: _Resp | None = None
        self._pending: list[_Pending] = []
        self._pending_overflow = False
        self._next_seq = 0
        self._plus = 0  # "+" continuation lines seen on the server side
        self._auth: str | None = None  # tag of an AUTHENTICATE in progress
        self._idle: str | None = None  # tag of an IDLE in progress
        self._mux_requested = False  # an ID asked for x-multiplex
        self.skipped_bytes = 0  #: bytes fed after dissection stopped (TLS, compression, multiplex)

    # ------------------------------------------------------------------ public API

    def feed(self, direction: Direction, data: bytes) -> list[Event]:
        """Consume the next bytes of one direction; return every event completed by them."""
        out: list[Event] = []
        if direction is C2S:
            if self._stopped or self._ceof:
                self.skipped_bytes += len(data)
                return out
            self._clb.feed(data)
            self._client_loop(out)
        else:
            if self._stopped or self._mux or self._seof:
                self.skipped_bytes += len(data)
                return out
            self._slb.feed(data)
            self._server_loop(out)
        return out

    def gap(self, direction: Direction, length: int) -> list[Event]:
        """``length`` bytes of this direction were not captured; report and resynchronize."""
        out: list[Event] = []
        if length <= 0:
            return out
        if direction is C2S:
            if self._stopped or self._ceof:
                return out
            lb = self._clb
            start = lb.fed_offset
            out.append(self._gap_anomaly(direction, start, length))
            cmd = self._cmd
            if (
                cmd is not None
                and cmd.lit is not None
                and cmd.idl is None
                and lb.pending() == 0
                and length <= cmd.lit_left
            ):
                cmd.lit_left -= length  # the gap is inside a counted literal: still in sync
                cmd.decided = True
                lb.gap(length)
                return out
            if cmd is not None:
                self._abort_cmd(cmd)
            lb.gap(length)
            self._cdesync = True
        else:
            if self._stopped or self._mux or self._seof:
                return out
            lb = self._slb
            start = lb.fed_offset
            out.append(self._gap_anomaly(direction, start, length))
            self._greeted = True
            resp = self._resp
            if resp is not None and resp.lit_left is not None and lb.pending() == 0 and length <= resp.lit_left:
                resp.lit_left -= length
                lb.gap(length)
                return out
            self._resp = None
            lb.gap(length)
            self._sdesync = True
        return out

    def eof(self, direction: Direction) -> list[Event]:
        """This direction ended: a partial last line is reported and then parsed as a line."""
        out: list[Event] = []
        if direction is C2S:
            if self._stopped or self._ceof:
                self._ceof = True
                return out
            self._ceof = True
            self._client_eof(out)
        else:
            if self._stopped or self._mux or self._seof:
                self._seof = True
                return out
            self._seof = True
            self._server_eof(out)
        return out

    # ------------------------------------------------------------------ helpers

    def _new_lb(self) -> LineBuffer:
        """A line buffer one byte longer than ``max_line``.

        ``LineBuffer`` decides "too long" early, on a buffer that may end with the CR of the
        CRLF, so a line of exactly its limit is too long only when CR and LF arrive in
        different feeds. With one byte of slack and the length test done by the loops
        (``too_long or length > max_line``, the data then cut to ``max_line``), the result
        does not depend on chunking.
        """
        return LineBuffer(self._max_line + 1)

    def _anomaly(self, code: str, span: Span, detail: str, excerpt: bytes) -> Anomaly:
        return Anomaly(span, code, detail, _excerpt(excerpt))

    def _gap_anomaly(self, direction: Direction, start: int, length: int) -> Anomaly:
        return self._anomaly(
            "content_gap",
            Span(direction, start, start + length),
            f"{length} bytes of the {direction.value} stream were not captured at offset {start}",
            b"",
        )

    def _pending_add(self, seq: int, tag: str, verb: str, out: list[Event], span: Span) -> None:
        if len(self._pending) >= MAX_PENDING:
            del self._pending[0]
            if not self._pending_overflow:
                self._pending_overflow = True
                out.append(
                    self._anomaly(
                        "too_many_pending",
                        span,
                        f"more than {MAX_PENDING} commands without a tagged reply; the oldest are forgotten",
                        b"",
                    )
                )
        self._pending.append((seq, tag, verb))

    def _pending_remove(self, seq: int) -> None:
        pending = self._pending
        for i in range(len(pending) - 1, -1, -1):
            if pending[i][0] == seq:
                del pending[i]
                return

    def _pop_tag(self, tag: str) -> _Pending | None:
        pending = self._pending
        for i in range(len(pending) - 1, -1, -1):
            p = pending[i]
            if p[1] == tag:
                del pending[i]
                return p
        return None

    def _stop(self) -> None:
        """Stop dissecting both directions (TLS or compression from here on)."""
        self._stopped = True
        self._cmd = None
        self._resp = None
        self.skipped_bytes += self._clb.pending() + self._slb.pending()
        self._clb = self._new_lb()
        self._slb = self._new_lb()

    # ------------------------------------------------------------------ client side

    def _client_loop(self, out: list[Event]) -> None:
        lb = self._clb
        next_raw = lb.next_raw
        max_line = self._max_line
        while not self._stopped:
            cmd = self._cmd
            if cmd is not None and cmd.lit is not None:
                if lb.pending() == 0:
                    break
                if not cmd.decided:
                    cmd.decided = True
                    cmd.waited = self._plus > cmd.plus_mark
                if cmd.lit_left > 0:
                    keep = cmd.keep
                    room = self._max_literal - len(keep) if keep is not None else 0
                    if keep is not None and room > 0:
                        chunk = lb.take(min(cmd.lit_left, room))
                        keep += chunk
                        cmd.lit_left -= len(chunk)
                    else:
                        cmd.lit_left -= lb.skip_buffered(cmd.lit_left)
                if cmd.lit_left == 0:
                    self._literal_done(cmd)
                continue
            raw = next_raw()
            if raw is None:
                break
            data, start, end, too_long, length, _after_gap = raw
            if too_long or length > max_line:
                self._client_line(data[:max_line], start, end, True, length, out)
            else:
                self._client_line(data, start, end, False, length, out)

    def _literal_done(self, cmd: _Cmd) -> None:
        lit = cmd.lit
        if lit is not None and cmd.idl is not None:
            data = bytes(cmd.keep) if cmd.keep is not None else b""
            cmd.idl.literal(data, lit.size, lit, cmd.waited)
        cmd.lit = None
        cmd.keep = None

    def _append_args(self, cmd: _Cmd, data: bytes) -> None:
        room = self._max_line - len(cmd.args)
        if room > 0:
            cmd.args += data[:room]

    def _client_line(
        self, data: bytes, start: int, end: int, too_long: bool, length: int, out: list[Event]
    ) -> None:
        """One client line (``data`` at most ``max_line`` bytes, ``length`` its true length)."""
        cmd = self._cmd
        if cmd is not None:  # continuation line after a literal
            span = Span(C2S, start, end)
            if too_long:
                out.append(self._line_too_long(span, data, length))
                self._append_args(cmd, data)
                self._finish_cmd(cmd, end, out, with_id=False)
                return
            self._append_args(cmd, data)
            hdr = _literal_header(data)
            if cmd.idl is not None:
                cmd.idl.line(data if hdr is None else data[: hdr.start])
            if hdr is None:
                self._finish_cmd(cmd, end, out, with_id=True)
            else:
                self._start_literal(cmd, hdr, span, data, out)
            return
        if self._cdesync:
            if too_long or not _looks_like_command(data):
                return
            self._cdesync = False
        if too_long:
            span = Span(C2S, start, end)
            out.append(self._line_too_long(span, data, length))
            parsed = _split_command(data)
            if parsed is not None:
                tag, verb, args, _off = parsed
                cmd = self._new_cmd(tag, verb, start, span, out)
                self._append_args(cmd, args)
                self._finish_cmd(cmd, end, out, with_id=False)
            return
        if self._auth is not None:
            if data == b"*":
                self._auth = None  # AUTHENTICATE cancelled (RFC 3501 section 6.2.2)
                return
            if b" " not in data or not _looks_like_command(data):
                return  # a SASL response, not a command
            self._auth = None
        if self._idle is not None and data.upper() == b"DONE":
            self._idle = None  # RFC 2177: DONE ends IDLE
            return
        span = Span(C2S, start, end)
        parsed = _split_command(data)
        if parsed is None:
            out.append(
                self._anomaly(
                    "bad_command_line", span, f"a {length}-byte client line is not 'tag SP command'", data
                )
            )
            return
        tag, verb, args, off = parsed
        hdr = _literal_header(data) if data[-1:] == b"}" else None
        if hdr is None:
            # the common case, a one-line command: no _Cmd needed (args fit: the line is not too long)
            seq = self._next_seq
            self._next_seq = seq + 1
            tag_s = tag.decode("ascii")  # tag and verb are printable ASCII (checked by _split_command)
            verb_s = verb.upper().decode("ascii")
            self._pending_add(seq, tag_s, verb_s, out, span)
            line_len = end - start
            out.append(Command(span, seq, tag_s, verb_s, args, line_len))
            if verb_s == "ID":
                params, problems = _id_params(args)
                out.append(ImapId(span, seq, tag_s, params, problems, line_len))
                if params is not None and any(p.name.lower() == "x-multiplex" for p in params):
                    self._mux_requested = True
            elif verb_s == "AUTHENTICATE":
                self._auth = tag_s
            elif verb_s == "IDLE":
                self._idle = tag_s
            return
        cmd = self._new_cmd(tag, verb, start, span, out)
        self._append_args(cmd, args)
        if cmd.verb == "ID":
            cmd.idl = _IdList()
            cmd.idl.line(args[: max(0, hdr.start - off)])
        self._start_literal(cmd, hdr, span, data, out)

    def _line_too_long(self, span: Span, data: bytes, length: int) -> Anomaly:
        return self._anomaly(
            "line_too_long",
            span,
            f"a {span.direction.value} line of {length} bytes exceeds the {self._max_line}-byte limit",
            data,
        )

    def _new_cmd(self, tag: bytes, verb: bytes, start: int, span: Span, out: list[Event]) -> _Cmd:
        cmd = _Cmd(self._next_seq, tag.decode("ascii"), verb.upper().decode("ascii"), start)
        self._next_seq += 1
        self._pending_add(cmd.seq, cmd.tag, cmd.verb, out, span)
        self._cmd = cmd
        return cmd

    def _start_literal(self, cmd: _Cmd, hdr: _LiteralHeader, span: Span, data: bytes, out: list[Event]) -> None:
        if hdr.size > IMAP_MAX_NUMBER:
            out.append(self._huge_literal(span, hdr, data))
        cmd.lit = hdr
        cmd.lit_left = hdr.size
        cmd.keep = bytearray() if cmd.idl is not None else None
        cmd.decided = False
        cmd.waited = False
        cmd.plus_mark = self._plus

    def _huge_literal(self, span: Span, hdr: _LiteralHeader, data: bytes) -> Anomaly:
        size = f"{hdr.size}" if hdr.size < LITERAL_SIZE_CLAMP else f"more than 10**{LITERAL_DIGITS_MAX}"
        return self._anomaly(
            "huge_literal",
            span,
            f"a literal of {size} octets exceeds the IMAP maximum of {IMAP_MAX_NUMBER}; skipped by counting",
            data[-EXCERPT_MAX:],
        )

    def _finish_cmd(self, cmd: _Cmd, end: int, out: list[Event], *, with_id: bool) -> None:
        self._cmd = None
        span = Span(C2S, cmd.start, end)
        out.append(Command(span, cmd.seq, cmd.tag, cmd.verb, bytes(cmd.args), end - cmd.start))
        if cmd.idl is not None and with_id:
            params, problems = cmd.idl.result()
            out.append(ImapId(span, cmd.seq, cmd.tag, params, problems, end - cmd.start))
            if params is not None and any(p.name.lower() == "x-multiplex" for p in params):
                self._mux_requested = True
        if cmd.verb == "AUTHENTICATE":
            self._auth = cmd.tag
        elif cmd.verb == "IDLE":
            self._idle = cmd.tag

    def _abort_cmd(self, cmd: _Cmd) -> None:
        self._pending_remove(cmd.seq)
        self._cmd = None

    def _client_eof(self, out: list[Event]) -> None:
        lb = self._clb
        cmd = self._cmd
        start = lb.offset
        end = lb.fed_offset
        span = Span(C2S, start, end)
        if cmd is not None and cmd.lit is not None:
            out.append(
                self._anomaly(
                    "eof_in_literal",
                    Span(C2S, cmd.start, end),
                    f"the client stream ended with {cmd.lit_left} octets of a literal still announced",
                    b"",
                )
            )
            self._abort_cmd(cmd)
            return
        if end == start and cmd is None:
            return
        if self._cdesync:
            return
        partial = lb.take(lb.pending())
        body = partial[:-1] if partial.endswith(b"\r") else partial
        if start + len(partial) < end or len(body) > self._max_line:
            out.append(
                self._anomaly(
                    "eof_in_line",
                    span,
                    f"the client stream ended inside a line of {end - start} bytes (over the line limit)",
                    partial,
                )
            )
            if cmd is not None:
                self._abort_cmd(cmd)
            return
        out.append(
            self._anomaly(
                "eof_in_line", span, f"the client stream ended inside a line of {end - start} bytes", partial
            )
        )
        self._client_line(body, start, end, False, len(body), out)
        cmd = self._cmd
        if cmd is not None:  # the last line announced a literal that never came
            self._abort_cmd(cmd)

    # ------------------------------------------------------------------ server side

    def _server_loop(self, out: list[Event]) -> None:
        lb = self._slb
        next_raw = lb.next_raw
        max_line = self._max_line
        while not self._stopped and not self._mux:
            resp = self._resp
            if resp is not None and resp.lit_left is not None:
                if resp.lit_left > 0:
                    resp.lit_left -= lb.skip_buffered(resp.lit_left)
                    if resp.lit_left > 0:
                        break
                resp.lit_left = None
                continue
            raw = next_raw()
            if raw is None:
                break
            data, start, end, too_long, length, _after_gap = raw
            if too_long or length > max_line:
                self._server_line(data[:max_line], start, end, True, length, out)
            else:
                self._server_line(data, start, end, False, length, out)

    def _server_line(
        self, data: bytes, start: int, end: int, too_long: bool, length: int, out: list[Event]
    ) -> None:
        """One server line (``data`` at most ``max_line`` bytes, ``length`` its true length)."""
        resp = self._resp
        if resp is not None:  # continuation of a response after a literal
            self._append_text(resp, data)
            if too_long:
                out.append(self._line_too_long(Span(S2C, start, end), data, length))
                self._reply_done(resp, end, out)
                return
            hdr = _literal_header(data)
            if hdr is None:
                self._reply_done(resp, end, out)
            else:
                self._server_literal(resp, hdr, Span(S2C, start, end), data, out)
            return
        if self._sdesync:
            if too_long or not _looks_like_reply(data):
                return
            self._sdesync = False
        span = Span(S2C, start, end)
        if too_long:
            self._greeted = True
            out.append(self._line_too_long(span, data, length))
            return
        if not self._greeted:
            self._greeted = True
            if data[:2] == b"* ":
                word, rest = _split_word(data[2:])
                status = word.upper()
                if status in (b"OK", b"PREAUTH", b"BYE"):
                    caps = _capability_code(rest)
                    out.append(Greeting(span, status.decode("ascii"), wire_text(rest), caps or (), False))
                    return
            if not self._midstream:
                out.append(
                    self._anomaly("bad_greeting", span, "the first server line is not * OK, * PREAUTH or * BYE", data)
                )
        head = data[:2]
        if head == b"* ":
            sp = data.find(b" ", 2)
            if sp < 0:
                word, rest = data[2:], b""
            else:
                word, rest = data[2:sp], data[sp + 1 :]
            if word.isdigit():
                keyword, rest2 = _split_word(rest)
                status = keyword.upper()
                text = word + b" " + rest2 if rest2 else word
            else:
                status, text = word.upper(), rest
            if not status:
                out.append(self._anomaly("bad_reply_line", span, "an untagged server line has no keyword", data))
                return
            tag = "*"
            status_s = status.decode("utf-8", "surrogateescape")
            final = False
        elif head[:1] == b"+":
            text = data[2:] if data[1:2] == b" " else data[1:]
            self._plus += 1
            answers = self._pending[-1][0] if self._pending else None
            out.append(Reply(span, answers, "+", "+", text.decode("utf-8", "surrogateescape"), False))
            return
        else:
            tagged = _split_tagged(data)
            if tagged is None:
                out.append(
                    self._anomaly(
                        "bad_reply_line",
                        span,
                        f"a {length}-byte server line is not '* ...', '+ ...' or 'tag OK|NO|BAD'",
                        data,
                    )
                )
                return
            tag_b, status_s, text = tagged
            tag = tag_b.decode("ascii")  # printable ASCII (checked by _split_tagged)
            final = True
        if len(text) > self._max_line:
            text = text[: self._max_line]
        if data[-1:] == b"}":
            hdr = _literal_header(data)
            if hdr is not None:
                resp = _Resp(tag, status_s, text, start, final)
                self._resp = resp
                self._server_literal(resp, hdr, span, data, out)
                return
        self._reply(tag, status_s, text, final, span, end, out)

    def _append_text(self, resp: _Resp, data: bytes) -> None:
        room = self._max_line - len(resp.text)
        if room > 0:
            resp.text += data[:room]

    def _server_literal(self, resp: _Resp, hdr: _LiteralHeader, span: Span, data: bytes, out: list[Event]) -> None:
        if hdr.size > IMAP_MAX_NUMBER:
            out.append(self._huge_literal(span, hdr, data))
        resp.lit_left = hdr.size

    def _reply_done(self, resp: _Resp, end: int, out: list[Event]) -> None:
        """A response read across literals is complete."""
        self._resp = None
        span = Span(S2C, resp.start, end)
        self._reply(resp.tag, resp.status, bytes(resp.text), resp.final, span, end, out)

    def _reply(
        self, tag: str, status: str, text: bytes, final: bool, span: Span, end: int, out: list[Event]
    ) -> None:
        """Emit a complete response and apply what it changes."""
        matched: _Pending | None = None
        if final:
            matched = self._pop_tag(tag)
            answers = matched[0] if matched is not None else None
        else:
            answers = self._pending[0][0] if self._pending else None
        text_s = text.decode("utf-8", "surrogateescape")
        out.append(Reply(span, answers, tag, status, text_s, final))
        if status == "CAPABILITY" and not final:
            out.append(Capabilities(span, "imap-capability", _words(text_s)))
        elif status == "OK" and text[:1] == b"[":
            caps = _capability_code(text)
            if caps is not None:
                out.append(Capabilities(span, "imap-capability", caps))
        if not final:
            if status == "MULTIPLEX" and _split_word(text)[0] == b"0" and self._mux_requested:
                out.append(
                    self._anomaly(
                        "multiplex_framing",
                        span,
                        f"the server switched to Dovecot multiplex framing at offset {end}; "
                        "the rest of the server stream is not dissected",
                        text,
                    )
                )
                self._mux = True
                self._resp = None
                self.skipped_bytes += self._slb.pending()
                self._slb = self._new_lb()
            return
        if matched is None:
            return
        mseq, mtag, mverb = matched
        if mverb == "AUTHENTICATE" and self._auth == mtag:
            self._auth = None
        elif mverb == "IDLE" and self._idle == mtag:
            self._idle = None
        elif status == "OK" and mverb == "STARTTLS":
            out.append(TlsStarted(span, mseq))
            self._stop()
        elif status == "OK" and mverb == "COMPRESS":
            out.append(
                self._anomaly(
                    "compressed",
                    span,
                    f"COMPRESS accepted at server offset {end}; the rest of the connection is not dissected",
                    text,
                )
            )
            self._stop()

    def _server_eof(self, out: list[Event]) -> None:
        lb = self._slb
        resp = self._resp
        start = lb.offset
        end = lb.fed_offset
        span = Span(S2C, start, end)
        if resp is not None and resp.lit_left is not None:
            out.append(
                self._anomaly(
                    "eof_in_literal",
                    Span(S2C, resp.start, end),
                    f"the server stream ended with {resp.lit_left} octets of a literal still announced",
                    b"",
                )
            )
            self._resp = None
            return
        if end == start and resp is None:
            return
        if self._sdesync:
            return
        partial = lb.take(lb.pending())
        body = partial[:-1] if partial.endswith(b"\r") else partial
        if start + len(partial) < end or len(body) > self._max_line:
            out.append(
                self._anomaly(
                    "eof_in_line",
                    span,
                    f"the server stream ended inside a line of {end - start} bytes (over the line limit)",
                    partial,
                )
            )
            self._resp = None
            return
        out.append(
            self._anomaly("eof_in_line", span, f"the server stream ended inside a line of {end - start} bytes", partial)
        )
        self._server_line(body, start, end, False, len(body), out)
        self._resp = None
