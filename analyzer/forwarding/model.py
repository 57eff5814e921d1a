"""Forwarding records: one per forwarding carrier command a client sent, as the server would read it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

from analyzer.model import Endpoint


@final
@dataclass(slots=True, unsafe_hash=True)
class ParamDetail:
    """How one parameter looked on the wire (for limit and encoding rules)."""

    name: str  #: name as sent (wire case)
    value: str | None  #: decoded value (IMAP quoting/literal, xtext); None for NIL or undecodable xtext
    raw: str | None  #: the value exactly as on the wire (XCLIENT/XFORWARD/XRCPTFORWARD), None for IMAP
    lenient: str | None  #: Postfix-style lenient xtext decoding (SMTP family), else None
    form: str  #: IMAP value form (quoted, literal, literal+, atom, nil) or "attr" for NAME=value
    name_octets: int  #: decoded key length
    value_octets: int  #: decoded value length
    name_wire: int  #: key octets on the wire (IMAP quotes counted); for attributes the name length
    value_wire: int  #: value octets on the wire (IMAP quotes and escapes counted); raw length for attributes
    literal_waited: bool | None  #: IMAP synchronizing literal: the client waited for "+"
    problems: tuple[str, ...]  #: decoding problems of this parameter


@final
@dataclass(slots=True, unsafe_hash=True)
class ForwardVar:
    """One decoded forward variable (x-forward-<name>, FORWARD= blob entry, XRCPTFORWARD entry)."""

    name: str | None  #: variable name; None for a blob element without "=" (imported unprefixed!)
    value: str  #: value (the whole element when name is None)
    origin: str  #: "x-forward", "FORWARD" or "XRCPTFORWARD"


@final
@dataclass(slots=True, unsafe_hash=True)
class Reply:
    """The server's answer to the command."""

    code: str  #: status word or number: OK/NO/BAD/BYE, +OK/-ERR, 220/250/501/550 ...
    text: str  #: full reply text after the status (multi-line joined with newlines)
    frames: tuple[int, ...]  #: frames carrying the reply
    ts_ns: int


@final
@dataclass(slots=True, unsafe_hash=True)
class ForwardingRecord:
    """One IMAP ID (forwarding or not), XCLIENT/XOIP, XRCPTFORWARD or XFORWARD command."""

    flow: int  #: flow id
    capture: int  #: capture file index
    protocol: str  #: imap, pop3, smtp, submission, lmtp
    carrier: str  #: ID, XCLIENT, XRCPTFORWARD, XFORWARD (XOIP is reported as XCLIENT with verb XOIP)
    verb: str  #: the command verb as parsed (ID, XCLIENT, XOIP, RCPT, MAIL, XFORWARD)
    command_seq: int  #: 0-based command number within the connection
    tag: str | None  #: IMAP tag
    forwarding: bool  #: carries any forwarding key / attribute
    sender: Endpoint  #: TCP client of the connection (the proxy, or a spoofing end user)
    receiver: Endpoint  #: TCP server (the backend)
    frames: tuple[int, ...]  #: frames of the command's bytes
    ts_ns: int  #: capture time of the command's first frame
    stream_start: int  #: byte offset of the command in the client->server stream
    stream_end: int
    line_len: int  #: bytes of the command as sent (CRLF and literals included)
    params: tuple[tuple[str, str | None], ...]  #: [name, value] as sent, values decoded
    details: tuple[ParamDetail, ...]  #: wire details per parameter, same order as params
    forwarded_client: Endpoint | None  #: x-originating-ip/port, ADDR/PORT (ip may be raw text if invalid)
    forwarded_client_raw: tuple[str | None, str | None]  #: the raw address and port strings
    forwarded_server: Endpoint | None  #: x-connected-ip/port, DESTADDR/DESTPORT
    forwarded_server_raw: tuple[str | None, str | None]
    ttl: int | None  #: x-proxy-ttl / TTL as an integer when it is a plain decimal
    ttl_raw: str | None  #: as sent
    session_id: str | None  #: x-session-id / x-session-ext-id / SESSION
    forward: tuple[ForwardVar, ...]  #: decoded forward variables, in order
    problems: tuple[str, ...]  #: decoding problems, "<where>: <code>"
    reply: Reply | None  #: the server's final answer, if captured
    accepted: bool | None  #: the server accepted (and did not say it ignored) the command; None: no reply
    trusted: bool | None  #: what the reply says of the server's trust in the sender (None: the wire does not tell)
    address: str | None  #: XRCPTFORWARD: the recipient path
    excerpt: bytes  #: the command line as sent (bounded, literals not included)
