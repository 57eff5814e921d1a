"""The sans-IO parser contract and the events parsers emit.

Strategy: a parser is fed the reassembled bytes of one TCP connection, both
directions interleaved in capture order, and returns events. It never does I/O,
never raises on peer bytes (problems become :class:`Anomaly` events) and keeps
only bounded state. Stream offsets are counted by the parser itself: ``feed``
advances the direction's offset by ``len(data)`` and ``gap`` by ``length``, so
offsets equal the reassembler's (sequence-number based) stream offsets. The
pipeline maps :class:`~analyzer.model.Span` offsets back to frame numbers.

Events are slotted dataclasses that are never changed after they are made, but
they are not declared ``frozen``: a frozen dataclass sets every field through
``object.__setattr__`` in ``__init__``, which costs about 1.1 us per event (and as
much again for its :class:`~analyzer.model.Span`) on the benchmark machine, 5x a
plain slotted ``__init__``. ``unsafe_hash=True`` keeps the field-based ``__hash__``
and equality of the frozen version, so events still work as dict keys and in sets.
Nothing may assign to an event's field. The concrete event classes are ``@final``:
code that walks many events may test ``type(ev) is Reply`` (one pointer
comparison, and mypy narrows it) instead of ``isinstance``, with the same result.

Text taken from the wire is kept as ``str`` decoded with
``wire_text(b) == b.decode("utf-8", "surrogateescape")``: nothing is lost (the
report layer escapes lone surrogates reversibly as ``\\xNN``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, final

from analyzer.model import Direction, Span


def wire_text(data: bytes) -> str:
    """Decode wire bytes losslessly (UTF-8 with surrogateescape for the rest)."""
    return data.decode("utf-8", "surrogateescape")


def wire_bytes(text: str) -> bytes:
    """Inverse of :func:`wire_text`."""
    return text.encode("utf-8", "surrogateescape")


@dataclass(slots=True, unsafe_hash=True)
class Event:
    """Base of every parser event: where in the stream it was seen."""

    span: Span  #: bytes of the stream this event was read from (a whole line, or several for literals)


@final
@dataclass(slots=True, unsafe_hash=True)
class Anomaly(Event):
    """A problem in the peer's bytes (Zeek "weird"). ``code`` is a stable snake_case name."""

    code: str  #: e.g. ``line_too_long``, ``content_gap``, ``bad_literal``, ``unexpected_reply``
    detail: str  #: one human sentence with the numbers involved
    excerpt: bytes  #: at most 256 bytes of the offending input


@final
@dataclass(slots=True, unsafe_hash=True)
class Greeting(Event):
    """The server's greeting (IMAP ``* OK``/``* PREAUTH``/``* BYE``, POP3 ``+OK``/``-ERR``, SMTP first reply)."""

    status: str  #: ``OK``/``PREAUTH``/``BYE``, ``+OK``/``-ERR``, or the SMTP code such as ``220``
    text: str  #: the full greeting text (multi-line SMTP greetings joined with ``\n``)
    capabilities: tuple[str, ...]  #: IMAP ``[CAPABILITY ...]`` items, POP3 ``[XCLIENT]`` as ``("XCLIENT",)``
    restart: bool  #: True for an SMTP/LMTP 220 that restarts the session after XCLIENT


@final
@dataclass(slots=True, unsafe_hash=True)
class Capabilities(Event):
    """Capabilities the server announced, outside the greeting."""

    source: str  #: ``imap-capability`` (``* CAPABILITY`` or ``[CAPABILITY]`` code), ``ehlo``, ``lhlo``, ``capa``
    items: tuple[str, ...]  #: every capability line/word as sent, e.g. ``"XCLIENT ADDR PORT TTL"``, ``"XRCPTFORWARD"``


@final
@dataclass(slots=True, unsafe_hash=True)
class Command(Event):
    """Any client command line (also the carrier commands below, which follow their own Command)."""

    seq: int  #: 0-based number of this command within the connection
    tag: str | None  #: IMAP tag; None for POP3/SMTP
    verb: str  #: the command name, upper-cased (``ID``, ``XCLIENT``, ``RCPT``, ``STARTTLS`` ...)
    args: bytes  #: the rest of the line, raw (at most ``max_line`` bytes), literals not included
    line_len: int  #: length of the command as sent, CRLF included, literals included


@final
@dataclass(slots=True, unsafe_hash=True)
class Reply(Event):
    """A server reply matched to the command it answers."""

    answers: int | None  #: ``Command.seq`` of the command answered; None when it cannot be told
    tag: str | None  #: IMAP tag (``*`` for untagged, ``+`` for continuations), else None
    status: str  #: ``OK``/``NO``/``BAD``/``BYE``/``PREAUTH``/``+``, ``+OK``/``-ERR``/``+``, or the 3-digit SMTP code
    text: str  #: the full reply text after the status (multi-line: lines joined with ``\n``, codes removed)
    final: bool  #: False for IMAP untagged/continuation lines that do not complete the command


@final
@dataclass(slots=True, unsafe_hash=True)
class IdParam:
    """One ``key value`` pair of an IMAP ``ID`` list."""

    name: str  #: key as sent (wire case), decoded from quoted string or literal
    value: str | None  #: value decoded from quoting or literal; None for ``NIL``
    name_form: str  #: ``quoted`` | ``literal`` | ``literal+`` | ``atom``
    value_form: str  #: ``quoted`` | ``literal`` | ``literal+`` | ``atom`` | ``nil``
    name_octets: int  #: decoded length of the key in octets
    value_octets: int  #: decoded length of the value in octets (0 for NIL)
    name_wire: int  #: octets the key took on the wire (quotes and escapes counted, literal header not)
    value_wire: int  #: octets the value took on the wire (quotes and escapes counted; literal data only)
    literal_waited: bool | None  #: for a synchronizing literal: did the client wait for ``+``? None otherwise


@final
@dataclass(slots=True, unsafe_hash=True)
class ImapId(Event):
    """An IMAP ``ID`` command (RFC 2971)."""

    seq: int  #: the matching ``Command.seq``
    tag: str  #: the command tag (Dovecot's proxy uses ``I``)
    params: tuple[IdParam, ...] | None  #: the pairs in wire order; None for ``ID NIL``
    problems: tuple[str, ...]  #: syntax problems (odd number of items, nested list, bad string ...)
    line_len: int  #: bytes of the whole command, literals and CRLFs included


@final
@dataclass(slots=True, unsafe_hash=True)
class XParam:
    """One ``NAME=value`` attribute of XCLIENT/XFORWARD, or an ESMTP RCPT parameter."""

    name: str  #: attribute name as sent (wire case)
    raw: str  #: the value exactly as on the wire (before xtext decoding); ``""`` when no ``=``
    value: str | None  #: decoded value: POP3 raw value; SMTP strict xtext (Dovecot) or None if invalid
    lenient: str  #: Postfix-style decoding (lower-case hex accepted, raw fallback on bad xtext)
    has_equals: bool  #: False for a token without ``=``
    problems: tuple[str, ...]  #: decoding problems: ``xtext_lowercase_hex``, ``xtext_bad_hexchar``, ``xtext_nul``,
    #: ``xtext_raw_char`` (unencoded byte outside 0x21-0x7E or raw ``=``/``+``)


@final
@dataclass(slots=True, unsafe_hash=True)
class Xclient(Event):
    """A ``XCLIENT`` (POP3 Dovecot form or SMTP/LMTP Postfix form) or legacy POP3 ``XOIP``."""

    seq: int  #: the matching ``Command.seq``
    verb: str  #: ``XCLIENT`` or ``XOIP``
    params: tuple[XParam, ...]  #: attributes in wire order (XOIP gives one ``ADDR``)
    line_len: int  #: bytes of the command line, CRLF included


@final
@dataclass(slots=True, unsafe_hash=True)
class Xforward(Event):
    """A Postfix ``XFORWARD`` command."""

    seq: int  #: the matching ``Command.seq``
    params: tuple[XParam, ...]  #: attributes in wire order
    line_len: int  #: bytes of the command line, CRLF included


@final
@dataclass(slots=True, unsafe_hash=True)
class RcptForward(Event):
    """An ``XRCPTFORWARD=`` ESMTP parameter (LMTP ``RCPT TO``; also reported when seen on ``MAIL FROM``)."""

    seq: int  #: the matching ``Command.seq``
    verb: str  #: ``RCPT`` (``MAIL`` is not defined by Dovecot and is an anomaly)
    address: str  #: the path inside ``<...>``
    param: XParam  #: the XRCPTFORWARD parameter itself (raw and xtext-decoded)
    line_len: int  #: bytes of the command line, CRLF included


@final
@dataclass(slots=True, unsafe_hash=True)
class TlsStarted(Event):
    """STARTTLS/STLS accepted: the rest of the connection is encrypted and not dissected."""

    seq: int | None  #: the STARTTLS command's seq


@final
@dataclass(slots=True, unsafe_hash=True)
class LocatedEvent:
    """A parser event with where it is in the capture."""

    event: Event  #: what the parser saw
    frames: tuple[int, ...]  #: frame numbers carrying the event's bytes (ascending, bounded)
    ts_ns: int  #: capture time of the first of those frames


class Parser(Protocol):
    """What the pipeline needs from a protocol parser."""

    name: ClassVar[str]  #: ``imap``, ``pop3``, ``smtp`` (SMTP parser instances serve smtp/submission/lmtp)

    def feed(self, direction: Direction, data: bytes) -> list[Event]:
        """Consume the next bytes of one direction; return every event completed by them."""
        ...

    def gap(self, direction: Direction, length: int) -> list[Event]:
        """``length`` bytes of this direction were not captured; resynchronize."""
        ...

    def eof(self, direction: Direction) -> list[Event]:
        """This direction ended (FIN/RST/end of capture); flush what can be flushed."""
        ...
