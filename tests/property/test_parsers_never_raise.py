"""Peer bytes never make a parser, a blob decoder or a field parser raise (issue 7 item 2, design habit 6).

Each parser is driven by a random script of ``feed`` / ``gap`` / ``eof`` operations in
both directions, with bytes that are either arbitrary or assembled from protocol tokens
(so the fuzzer reaches literals, ID lists, XCLIENT attributes, SASL, BDAT, STARTTLS and
multi-line replies rather than bouncing off the first line). The invariants: nothing
raises, every event is an :class:`~analyzer.protocols.base.Event` whose span lies inside
what that direction was given (fed bytes plus gap lengths), and the work stays bounded.

Profiles: ``FWDAUDIT_FUZZ=long`` raises ``max_examples`` from a few hundred to thousands
(the fast numbers keep the whole file to a few seconds).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings, strategies as st

from analyzer.forwarding.blobs import (
    decode_forward_base64,
    decode_xrcptforward,
    split_forward_list,
    tab_escape,
    tab_unescape,
)
from analyzer.forwarding.extract import parse_address, parse_port, parse_ttl
from analyzer.forwarding.sessionid import decode_session_id
from analyzer.model import Direction
from analyzer.protocols import detect, is_tls_record, make_parser
from analyzer.protocols.base import Anomaly, Event, wire_text
from analyzer.protocols.lines import LineBuffer
from analyzer.protocols.xtext import decode_lenient, decode_strict, encode, make_param

LONG = os.environ.get("FWDAUDIT_FUZZ", "").strip().lower() == "long"  # tests/hostile: the profile switch


def _n(fast: int, long: int) -> int:
    return long if LONG else fast


PROTOCOLS = ("imap", "pop3", "smtp", "submission", "lmtp")
MAX_LINE = 256  # small limits, so over-long lines and literals are reached quickly
MAX_LITERAL = 64

# Tokens that steer the bytes into the parsers' interesting states.
TOKENS = [
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b"(",
    b")",
    b'"',
    b"\\",
    b"{",
    b"}",
    b"+",
    b"~",
    b"*",
    b"=",
    b"\t",
    b"\x00",
    # IMAP
    b"* OK ",
    b"* PREAUTH ",
    b"* BYE ",
    b"* ID ",
    b"* CAPABILITY IMAP4rev1 ID\r\n",
    b"+ go\r\n",
    b"a1 ",
    b"a1 OK ",
    b"a1 NO ",
    b"a1 BAD ",
    b"ID ",
    b"ID NIL\r\n",
    b"ID (",
    b'"x-originating-ip" ',
    b'"x-proxy-ttl" "5" ',
    b'"x-forward-user" ',
    b"{5}\r\n",
    b"{5+}\r\n",
    b"~{3}\r\n",
    b"{4294967296}\r\n",
    b"{99999999999999999999999}\r\n",
    b"STARTTLS\r\n",
    b"AUTHENTICATE PLAIN\r\n",
    b"IDLE\r\n",
    b"DONE\r\n",
    b"COMPRESS DEFLATE\r\n",
    b"* MULTIPLEX 0\r\n",
    b'"x-multiplex" "0"',
    b"LOGOUT\r\n",
    b"* 1 FETCH (BODY[] {3}\r\n",
    # POP3
    b"+OK ",
    b"+OK [XCLIENT] ready\r\n",
    b"-ERR ",
    b"XCLIENT ",
    b"ADDR=192.0.2.1 ",
    b"PORT=1234 ",
    b"TTL=5 ",
    b"FORWARD=",
    b"SESSION=abc ",
    b"XOIP 1.2.3.4\r\n",
    b"CAPA\r\n",
    b".\r\n",
    b"STLS\r\n",
    b"AUTH PLAIN\r\n",
    b"USER x\r\n",
    b"RETR 1\r\n",
    b"+ \r\n",
    # SMTP / LMTP
    b"220 ",
    b"220-",
    b"250 ",
    b"250-",
    b"334 ",
    b"354 ",
    b"421 ",
    b"501 ",
    b"550 ",
    b"EHLO x\r\n",
    b"LHLO x\r\n",
    b"HELO x\r\n",
    b"MAIL FROM:<a@b> ",
    b"RCPT TO:<c@d> ",
    b"XRCPTFORWARD=",
    b"XFORWARD ",
    b"NAME=",
    b"LOGIN=",
    b"DATA\r\n",
    b"BDAT 5 LAST\r\n",
    b"BDAT 18446744073709551616\r\n",
    b"\r\n.\r\n",
    b"+3D",
    b"+zz",
    b"+00",
    b"STARTTLS\r\n",
    b"\x16\x03\x01\x00\x05",
    b"RSET\r\n",
    b"QUIT\r\n",
    b"XCLIENT ADDR=[IPV6:::1]\r\n",
    b"YWJj",
    b"eD15CXo9dw==",
    b"====",
]

token_bytes = st.lists(st.sampled_from(TOKENS) | st.binary(max_size=24), max_size=40).map(b"".join)
any_bytes = st.binary(max_size=600)
chunk = st.one_of(token_bytes, any_bytes)
direction = st.sampled_from(list(Direction))
op = st.one_of(
    st.tuples(st.just("feed"), direction, chunk),
    st.tuples(st.just("gap"), direction, st.integers(1, 1 << 40)),
    st.tuples(st.just("eof"), direction, st.just(b"")),
)
script = st.lists(op, max_size=30)


def _new(protocol: str) -> object:
    if protocol == "imap":
        return make_parser(protocol, max_line=MAX_LINE, max_literal=MAX_LITERAL)
    return make_parser(protocol, max_line=MAX_LINE)


def _run(protocol: str, ops: list[tuple[str, Direction, object]]) -> list[Event]:
    """Drive one parser with a script; check every event against what each direction was given."""
    parser = _new(protocol)
    given_len = {d: 0 for d in Direction}
    out: list[Event] = []
    ended: set[Direction] = set()
    for kind, d, arg in ops:
        if kind == "feed":
            assert isinstance(arg, bytes)
            if d in ended:
                continue  # nothing arrives after the end of a direction
            events = parser.feed(d, arg)  # type: ignore[attr-defined]
            given_len[d] += len(arg)
        elif kind == "gap":
            assert isinstance(arg, int)
            if d in ended:
                continue
            events = parser.gap(d, arg)  # type: ignore[attr-defined]
            given_len[d] += arg
        else:
            events = parser.eof(d)  # type: ignore[attr-defined]
            ended.add(d)
        assert isinstance(events, list)
        for ev in events:
            assert isinstance(ev, Event), ev
            span = ev.span
            assert 0 <= span.start <= span.end, ev
            assert span.end <= given_len[span.direction], (ev, given_len)
            if isinstance(ev, Anomaly):
                assert ev.code and ev.code == ev.code.lower() and " " not in ev.code, ev.code
                assert len(ev.excerpt) <= 256, len(ev.excerpt)
        out.extend(events)
    for d in Direction:
        if d not in ended:
            for ev in parser.eof(d):  # type: ignore[attr-defined]
                assert isinstance(ev, Event)
    return out


@settings(max_examples=_n(200, 5000), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(PROTOCOLS), script)
def test_parser_never_raises(protocol: str, ops: list[tuple[str, Direction, object]]) -> None:
    """Any script of feeds, gaps and ends in both directions: events, never an exception."""
    _run(protocol, ops)


@settings(max_examples=_n(100, 2000), deadline=None)
@given(st.sampled_from(PROTOCOLS), st.binary(max_size=4000), st.binary(max_size=4000), st.integers(1, 64))
def test_parser_bytewise_never_raises(protocol: str, c2s: bytes, s2c: bytes, step: int) -> None:
    """Both directions fed interleaved in small steps, then ended."""
    ops: list[tuple[str, Direction, object]] = []
    for i in range(0, max(len(c2s), len(s2c)), step):
        ops.append(("feed", Direction.TO_CLIENT, s2c[i : i + step]))
        ops.append(("feed", Direction.TO_SERVER, c2s[i : i + step]))
    _run(protocol, ops)


@settings(max_examples=_n(200, 5000), deadline=None)
@given(st.binary(max_size=2048), direction, st.sampled_from([None, *PROTOCOLS]))
def test_detect_never_raises(data: bytes, d: Direction, hint: str | None) -> None:
    """Content detection returns a protocol name or None."""
    assert detect(data, d, hint) in (None, *PROTOCOLS)
    assert isinstance(is_tls_record(data), bool)


@settings(max_examples=_n(200, 5000), deadline=None)
@given(st.lists(st.one_of(chunk, st.integers(1, 1 << 20)), max_size=30), st.integers(1, 300))
def test_line_buffer_bounded(items: list[bytes | int], max_line: int) -> None:
    """Lines never exceed max_line kept bytes; offsets only grow; buffered bytes stay bounded."""
    lb = LineBuffer(max_line)
    last_end = 0
    for item in items:
        if isinstance(item, int):
            lb.gap(item)
        else:
            lb.feed(item)
        while (line := lb.next_line()) is not None:
            assert len(line.data) <= max_line
            assert line.start >= last_end or line.after_gap
            assert line.end >= line.start
            last_end = line.end
        assert lb.pending() <= max_line + 1 + (len(item) if isinstance(item, bytes) else 0)


text_with_surrogates = st.one_of(st.text(max_size=400), st.binary(max_size=400).map(wire_text))


@settings(max_examples=_n(300, 10000), deadline=None)
@given(text_with_surrogates)
def test_blob_decoders_never_raise(value: str) -> None:
    """FORWARD/XRCPTFORWARD decoding and tab (un)escaping are total."""
    for blob in (decode_forward_base64(value), decode_xrcptforward(value), split_forward_list(value)):
        assert len(blob.entries) <= 1000
        assert all(isinstance(p, str) and p for p in blob.problems)
    text, problems = tab_unescape(value)
    assert isinstance(text, str) and isinstance(problems, tuple)
    assert tab_unescape(tab_escape(value)) == (value, ())


@settings(max_examples=_n(300, 10000), deadline=None)
@given(st.binary(max_size=3000))
def test_forward_base64_of_random_bytes(data: bytes) -> None:
    """A well-formed base64 FORWARD value of arbitrary (non-UTF-8, NUL, TAB-full) content decodes."""
    import base64

    blob = decode_forward_base64(base64.b64encode(data).decode("ascii"))
    assert not any(p.startswith("base64") for p in blob.problems), blob.problems


@settings(max_examples=_n(300, 10000), deadline=None)
@given(text_with_surrogates, st.text(max_size=20))
def test_xtext_and_fields_never_raise(value: str, name: str) -> None:
    """xtext (strict and lenient), session IDs and the TTL/address/port field parsers are total."""
    strict, problems = decode_strict(value)
    assert strict is None or isinstance(strict, str)
    assert isinstance(decode_lenient(value), str)
    assert decode_strict(encode(value))[0] is not None or "\x00" in value
    make_param(name, value, True)
    make_param(name, value, False)
    info = decode_session_id(value)
    assert info.kind in ("login", "lmtp", "unknown")
    for parsed in (parse_ttl(value), parse_port(value), parse_address(value), parse_address(value, True)):
        assert isinstance(parsed, tuple) and len(parsed) == 2
    parse_ttl(None)
    parse_port(None)
    parse_address(None)
