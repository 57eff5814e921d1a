from __future__ import annotations

import random
import time
import tracemalloc
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.model import Direction
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
)
from analyzer.protocols.smtp import ANOMALY_CODES, MAX_PENDING, SmtpParser
from tests.helpers import CHUNKINGS, C, S, feed_all, wire

Item = tuple[Direction, "bytes | int"]  # an int is a gap of that many bytes


# ---------------------------------------------------------------------------- harness


def _pieces(data: bytes, chunking: str, rng: random.Random) -> list[bytes]:
    if chunking == "whole":
        return [data]
    if chunking == "bytewise":
        return [data[i : i + 1] for i in range(len(data))]
    out, i = [], 0
    while i < len(data):
        n = rng.randint(1, 7)
        out.append(data[i : i + n])
        i += n
    return out


def play(parser: SmtpParser, script: list[tuple[Direction, bytes | int]], chunking: str) -> list[Event]:
    """tests.helpers.feed_all, extended with gaps (int items)."""
    if all(isinstance(d, bytes) for _, d in script):
        return feed_all(parser, [(d, b) for d, b in script if isinstance(b, bytes)], chunking)
    rng = random.Random(0)
    events: list[Event] = []
    for direction, data in script:
        if isinstance(data, int):
            events.extend(parser.gap(direction, data))
            continue
        for piece in _pieces(data, chunking, rng):
            events.extend(parser.feed(direction, piece))
    events.extend(parser.eof(C))
    events.extend(parser.eof(S))
    return events


def check_spans(events: list[Event], script: list[tuple[Direction, bytes | int]]) -> None:
    """Every span lies inside what was fed; command and reply spans cover their lines exactly."""
    total = {C: 0, S: 0}
    gaps = False
    for d, b in script:
        total[d] += b if isinstance(b, int) else len(b)
        gaps = gaps or isinstance(b, int)
    stream = {d: b"".join(b for dd, b in script if dd is d and isinstance(b, bytes)) for d in (C, S)}
    for e in events:
        assert 0 <= e.span.start <= e.span.end <= total[e.span.direction], e
        if gaps:
            continue
        raw = stream[e.span.direction][e.span.start : e.span.end]
        if isinstance(e, Command) and e.span.end - e.span.start <= 65536:
            assert e.line_len == len(raw) and raw.endswith(b"\n"), e
            verb = e.verb.encode("utf-8", "surrogateescape")
            assert raw[: len(verb)].upper() == verb, e
        if isinstance(e, (Reply, Greeting)):
            assert raw.startswith(e.status.encode()) and raw.endswith(b"\n"), e


def run(
    script: list[tuple[Direction, bytes | int]], *, variant: str = "smtp", max_line: int = 65536
) -> list[Event]:
    """Run the script under every chunking; the events must be identical. Return them."""
    results = [play(SmtpParser(variant=variant, max_line=max_line), script, ch) for ch in CHUNKINGS]
    for other in results[1:]:
        assert other == results[0]
    check_spans(results[0], script)
    for e in results[0]:
        if isinstance(e, Anomaly):
            assert e.code in ANOMALY_CODES and len(e.excerpt) <= 256
    return results[0]


def P(name: str, raw: str, value: str | None = "", problems: tuple[str, ...] = ()) -> tuple[Any, ...]:
    """Brief form of an XParam (value defaults to raw)."""
    return (name, raw, raw if value == "" else value, problems)


def brief(e: Event) -> tuple[Any, ...]:
    """A compact, exact projection of an event (spans are checked separately)."""
    if isinstance(e, Greeting):
        return ("Greeting", e.status, e.text, e.restart)
    if isinstance(e, Command):
        return ("Command", e.seq, e.verb, e.args)
    if isinstance(e, Reply):
        return ("Reply", e.answers, e.status, e.text, e.final)
    if isinstance(e, Capabilities):
        return ("Capabilities", e.source, e.items)
    if isinstance(e, Xclient):
        return ("Xclient", e.seq, tuple(_p(p) for p in e.params))
    if isinstance(e, Xforward):
        return ("Xforward", e.seq, tuple(_p(p) for p in e.params))
    if isinstance(e, RcptForward):
        return ("RcptForward", e.seq, e.verb, e.address, _p(e.param))
    if isinstance(e, TlsStarted):
        return ("TlsStarted", e.seq)
    if isinstance(e, Anomaly):
        return ("Anomaly", e.code)
    raise AssertionError(e)


def _p(p: XParam) -> tuple[Any, ...]:
    return (p.name, p.raw, p.value, p.problems)


def Cmd(seq: int, verb: str, args: bytes = b"") -> tuple[Any, ...]:
    return ("Command", seq, verb, args)


def Rep(answers: int | None, status: str, text: str, final: bool = True) -> tuple[Any, ...]:
    return ("Reply", answers, status, text, final)


def Greet(
    text: str = "backend.example Dovecot ready.", status: str = "220", restart: bool = False
) -> tuple[Any, ...]:
    return ("Greeting", status, text, restart)


def An(code: str) -> tuple[Any, ...]:
    return ("Anomaly", code)


GREETING = (S, wire("220 backend.example Dovecot ready.\n"))

DOVECOT_XCLIENT_SUB = (
    "XCLIENT ADDR PORT PROTO HELO LOGIN SESSION CLIENT-TRANSPORT TTL TIMEOUT "
    "DESTNAME DESTADDR DESTPORT FORWARD"
)
DOVECOT_XCLIENT_LMTP = (
    "XCLIENT ADDR PORT PROTO HELO LOGIN SESSION CLIENT-TRANSPORT TTL TIMEOUT DESTNAME DESTADDR DESTPORT"
)
POSTFIX_XCLIENT = "XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT"

SUB_XCLIENT = (
    "XCLIENT HELO=client.example PROTO=ESMTP TTL=6 PORT=51234 ADDR=IPV6:2001:db8::7 DESTPORT=587 "
    "DESTADDR=192.0.2.10 SESSION=AbCd+2Bef CLIENT-TRANSPORT=TLS FORWARD=dGVuYW50PWFjbWU+3D"
)
SUB_XCLIENT_PARAMS = (
    P("HELO", "client.example"),
    P("PROTO", "ESMTP"),
    P("TTL", "6"),
    P("PORT", "51234"),
    P("ADDR", "IPV6:2001:db8::7"),
    P("DESTPORT", "587"),
    P("DESTADDR", "192.0.2.10"),
    P("SESSION", "AbCd+2Bef", "AbCd+ef"),
    P("CLIENT-TRANSPORT", "TLS"),
    P("FORWARD", "dGVuYW50PWFjbWU+3D", "dGVuYW50PWFjbWU="),
)


@dataclass(frozen=True)
class Case:
    id: str
    script: list[tuple[Direction, bytes | int]]
    expected: list[tuple[Any, ...]]
    variant: str = "smtp"
    max_line: int = 65536


CASES: list[Case] = [
    Case(
        "spec_6_3_submission_2_4_3",
        [
            GREETING,
            (C, wire("EHLO proxy.example\n")),
            (
                S,
                wire(
                    "250-backend.example\n250-8BITMIME\n250-AUTH PLAIN\n250-ENHANCEDSTATUSCODES\n"
                    f"250-{DOVECOT_XCLIENT_SUB}\n250 PIPELINING\n"
                ),
            ),
            (C, wire(f"{SUB_XCLIENT}\nEHLO proxy.example\n")),
            (S, wire("220 backend.example Dovecot ready.\n250-backend.example\n250 PIPELINING\n")),
            (C, wire("AUTH PLAIN AGFsaWNlAHNlY3JldA==\n")),
            (S, wire("235 2.7.0 Logged in.\n")),
        ],
        [
            Greet(),
            Cmd(0, "EHLO", b"proxy.example"),
            Rep(
                0,
                "250",
                f"backend.example\n8BITMIME\nAUTH PLAIN\nENHANCEDSTATUSCODES\n"
                f"{DOVECOT_XCLIENT_SUB}\nPIPELINING",
            ),
            (
                "Capabilities",
                "ehlo",
                ("8BITMIME", "AUTH PLAIN", "ENHANCEDSTATUSCODES", DOVECOT_XCLIENT_SUB, "PIPELINING"),
            ),
            Cmd(1, "XCLIENT", SUB_XCLIENT[8:].encode()),
            ("Xclient", 1, SUB_XCLIENT_PARAMS),
            Cmd(2, "EHLO", b"proxy.example"),
            Rep(1, "220", "backend.example Dovecot ready."),
            Greet(restart=True),
            Rep(2, "250", "backend.example\nPIPELINING"),
            ("Capabilities", "ehlo", ("PIPELINING",)),
            Cmd(3, "AUTH", b"PLAIN AGFsaWNlAHNlY3JldA=="),
            Rep(3, "235", "2.7.0 Logged in."),
        ],
        variant="submission",
    ),
    Case(
        "spec_6_4_lmtp_xclient_xrcptforward",
        [
            GREETING,
            (C, wire("LHLO proxy.example\n")),
            (
                S,
                wire(
                    f"250-backend.example\n250-8BITMIME\n250-{DOVECOT_XCLIENT_LMTP}\n"
                    "250-XRCPTFORWARD\n250 PIPELINING\n"
                ),
            ),
            (
                C,
                wire(
                    "XCLIENT HELO=mta.example PROTO=LMTP SESSION=Zx9AbCdEfGhIjKlMnOpQrS:P1 "
                    "CLIENT-TRANSPORT=insecure "
                    "TTL=5 PORT=41000 ADDR=2001:db8::25 DESTPORT=24 DESTADDR=192.0.2.10\n"
                ),
            ),
            GREETING,
            (C, wire("LHLO proxy.example\n")),
            (S, wire("250-backend.example\n250-XRCPTFORWARD\n250 PIPELINING\n")),
            (
                C,
                wire(
                    "MAIL FROM:<s@example.org>\n"
                    "RCPT TO:<u@example.com> XRCPTFORWARD=tenant+3Dacme+09plan+3Dgold\n"
                    "RCPT TO:<v@example.com>\nDATA\n"
                ),
            ),
            (S, wire("250 2.1.0 OK\n250 2.1.5 OK\n250 2.1.5 OK\n354 OK\n")),
            (C, wire("Subject: hi\n\nXCLIENT ADDR=6.6.6.6\n.\n")),
            (S, wire("250 2.0.0 <u@example.com> Saved\n250 2.0.0 <v@example.com> Saved\n")),
            (C, wire("QUIT\n")),
            (S, wire("221 2.0.0 Bye\n")),
        ],
        [
            Greet(),
            Cmd(0, "LHLO", b"proxy.example"),
            Rep(0, "250", f"backend.example\n8BITMIME\n{DOVECOT_XCLIENT_LMTP}\nXRCPTFORWARD\nPIPELINING"),
            ("Capabilities", "lhlo", ("8BITMIME", DOVECOT_XCLIENT_LMTP, "XRCPTFORWARD", "PIPELINING")),
            Cmd(
                1,
                "XCLIENT",
                b"HELO=mta.example PROTO=LMTP SESSION=Zx9AbCdEfGhIjKlMnOpQrS:P1 CLIENT-TRANSPORT=insecure "
                b"TTL=5 PORT=41000 ADDR=2001:db8::25 DESTPORT=24 DESTADDR=192.0.2.10",
            ),
            (
                "Xclient",
                1,
                (
                    P("HELO", "mta.example"),
                    P("PROTO", "LMTP"),
                    P("SESSION", "Zx9AbCdEfGhIjKlMnOpQrS:P1"),
                    P("CLIENT-TRANSPORT", "insecure"),
                    P("TTL", "5"),
                    P("PORT", "41000"),
                    P("ADDR", "2001:db8::25"),
                    P("DESTPORT", "24"),
                    P("DESTADDR", "192.0.2.10"),
                ),
            ),
            Rep(1, "220", "backend.example Dovecot ready."),
            Greet(restart=True),
            Cmd(2, "LHLO", b"proxy.example"),
            Rep(2, "250", "backend.example\nXRCPTFORWARD\nPIPELINING"),
            ("Capabilities", "lhlo", ("XRCPTFORWARD", "PIPELINING")),
            Cmd(3, "MAIL", b"FROM:<s@example.org>"),
            Cmd(4, "RCPT", b"TO:<u@example.com> XRCPTFORWARD=tenant+3Dacme+09plan+3Dgold"),
            (
                "RcptForward",
                4,
                "RCPT",
                "u@example.com",
                P("XRCPTFORWARD", "tenant+3Dacme+09plan+3Dgold", "tenant=acme\tplan=gold"),
            ),
            Cmd(5, "RCPT", b"TO:<v@example.com>"),
            Cmd(6, "DATA"),
            Rep(3, "250", "2.1.0 OK"),
            Rep(4, "250", "2.1.5 OK"),
            Rep(5, "250", "2.1.5 OK"),
            Rep(6, "354", "OK", final=False),
            Rep(6, "250", "2.0.0 <u@example.com> Saved"),  # LMTP: one reply per accepted recipient
            Rep(6, "250", "2.0.0 <v@example.com> Saved"),
            Cmd(7, "QUIT"),
            Rep(7, "221", "2.0.0 Bye"),
        ],
    ),
    Case(
        "xclient_split_in_two_commands",
        [
            GREETING,
            (
                C,
                wire(
                    "XCLIENT HELO=client.example PROTO=ESMTP TTL=6 PORT=51234 ADDR=192.0.2.7\n"
                    f"XCLIENT FORWARD={'QUFB' * 120}\nEHLO proxy.example\n"
                ),
            ),
            (
                S,
                wire(
                    "220 backend.example Dovecot ready.\n220 backend.example Dovecot ready.\n"
                    "250 backend.example\n"
                ),
            ),
        ],
        [
            Greet(),
            Cmd(0, "XCLIENT", b"HELO=client.example PROTO=ESMTP TTL=6 PORT=51234 ADDR=192.0.2.7"),
            (
                "Xclient",
                0,
                (
                    P("HELO", "client.example"),
                    P("PROTO", "ESMTP"),
                    P("TTL", "6"),
                    P("PORT", "51234"),
                    P("ADDR", "192.0.2.7"),
                ),
            ),
            Cmd(1, "XCLIENT", b"FORWARD=" + b"QUFB" * 120),
            ("Xclient", 1, (P("FORWARD", "QUFB" * 120),)),
            Cmd(2, "EHLO", b"proxy.example"),
            Rep(0, "220", "backend.example Dovecot ready."),
            Greet(restart=True),
            Rep(1, "220", "backend.example Dovecot ready."),
            Greet(restart=True),
            Rep(2, "250", "backend.example"),
            ("Capabilities", "ehlo", ()),
        ],
    ),
    Case(
        "unavailable_and_tempunavail_any_case",
        [
            GREETING,
            (
                C,
                wire(
                    "XCLIENT NAME=[TEMPUNAVAIL] HELO=[unavailable] REVERSE_NAME=[TempUnavail] "
                    "LOGIN=[UNAVAILABLE]\n"
                ),
            ),
        ],
        [
            Greet(),
            Cmd(
                0,
                "XCLIENT",
                b"NAME=[TEMPUNAVAIL] HELO=[unavailable] REVERSE_NAME=[TempUnavail] LOGIN=[UNAVAILABLE]",
            ),
            (
                "Xclient",
                0,
                (
                    P("NAME", "[TEMPUNAVAIL]"),
                    P("HELO", "[unavailable]"),
                    P("REVERSE_NAME", "[TempUnavail]"),
                    P("LOGIN", "[UNAVAILABLE]"),
                ),
            ),
        ],
    ),
    Case(
        "xtext_problems_lowercase_badhex_nul_rawequals",
        [
            GREETING,
            (
                C,
                wire(
                    "XCLIENT FORWARD=dGVuYW50PWFjbWU+3d ADDR=1.2.3.4+G1 SESSION=ab+00cd "
                    "FORWARD=dGVuYW50PWFjbWU=\n"
                ),
            ),
            (S, wire("501 5.5.4 Invalid FORWARD parameter: Invalid hexchar after '+' in xtext\n")),
        ],
        [
            Greet(),
            Cmd(
                0,
                "XCLIENT",
                b"FORWARD=dGVuYW50PWFjbWU+3d ADDR=1.2.3.4+G1 SESSION=ab+00cd FORWARD=dGVuYW50PWFjbWU=",
            ),
            (
                "Xclient",
                0,
                (
                    P("FORWARD", "dGVuYW50PWFjbWU+3d", None, ("xtext_lowercase_hex",)),
                    P("ADDR", "1.2.3.4+G1", None, ("xtext_bad_hexchar",)),
                    P("SESSION", "ab+00cd", None, ("xtext_nul",)),
                    P("FORWARD", "dGVuYW50PWFjbWU=", None, ("xtext_raw_char",)),
                ),
            ),
            Rep(0, "501", "5.5.4 Invalid FORWARD parameter: Invalid hexchar after '+' in xtext"),
        ],
    ),
    Case(
        "lowercase_verb_and_names_empty_tokens_no_equals",
        [GREETING, (C, wire("xclient addr=192.0.2.1  port=25 NOVALUE \n"))],
        [
            Greet(),
            Cmd(0, "XCLIENT", b"addr=192.0.2.1  port=25 NOVALUE "),
            ("Xclient", 0, (P("addr", "192.0.2.1"), P("port", "25"), ("NOVALUE", "", None, ()))),
            An("empty_token"),
        ],
    ),
    Case(
        "postfix_ehlo_xclient_and_xforward",
        [
            (S, wire("220 mx.example ESMTP Postfix\n")),
            (C, wire("EHLO relay.example\n")),
            (
                S,
                wire(
                    f"250-mx.example\n250-PIPELINING\n250-SIZE 10240000\n250-{POSTFIX_XCLIENT}\n"
                    "250-XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT\n250 8BITMIME\n"
                ),
            ),
            (
                C,
                wire(
                    "XFORWARD NAME=spike.porcupine.org ADDR=168.100.189.2 PROTO=ESMTP\n"
                    "XFORWARD HELO=spike.porcupine.org\n"
                ),
            ),
            (S, wire("250 2.0.0 Ok\n250 2.0.0 Ok\n")),
            (C, wire("XCLIENT NAME=[UNAVAILABLE] ADDR=IPV6:2001:db8::7 PORT=4711\n")),
            (S, wire("220 mx.example ESMTP Postfix\n")),
        ],
        [
            Greet("mx.example ESMTP Postfix"),
            Cmd(0, "EHLO", b"relay.example"),
            Rep(
                0,
                "250",
                f"mx.example\nPIPELINING\nSIZE 10240000\n{POSTFIX_XCLIENT}\n"
                "XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT\n8BITMIME",
            ),
            (
                "Capabilities",
                "ehlo",
                (
                    "PIPELINING",
                    "SIZE 10240000",
                    POSTFIX_XCLIENT,
                    "XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT",
                    "8BITMIME",
                ),
            ),
            Cmd(1, "XFORWARD", b"NAME=spike.porcupine.org ADDR=168.100.189.2 PROTO=ESMTP"),
            (
                "Xforward",
                1,
                (P("NAME", "spike.porcupine.org"), P("ADDR", "168.100.189.2"), P("PROTO", "ESMTP")),
            ),
            Cmd(2, "XFORWARD", b"HELO=spike.porcupine.org"),
            ("Xforward", 2, (P("HELO", "spike.porcupine.org"),)),
            Rep(1, "250", "2.0.0 Ok"),
            Rep(2, "250", "2.0.0 Ok"),
            Cmd(3, "XCLIENT", b"NAME=[UNAVAILABLE] ADDR=IPV6:2001:db8::7 PORT=4711"),
            ("Xclient", 3, (P("NAME", "[UNAVAILABLE]"), P("ADDR", "IPV6:2001:db8::7"), P("PORT", "4711"))),
            Rep(3, "220", "mx.example ESMTP Postfix"),
            Greet("mx.example ESMTP Postfix", restart=True),
        ],
    ),
    Case(
        "pipelined_transaction_body_with_forwarding_text",
        [
            GREETING,
            (C, wire("MAIL FROM:<a@example.org>\nRCPT TO:<b@example.com>\nRCPT TO:<c@example.com>\nDATA\n")),
            (S, wire("250 2.1.0 Ok\n250 2.1.5 Ok\n250 2.1.5 Ok\n354 End data with <CR><LF>.<CR><LF>\n")),
            (
                C,
                wire(
                    "X-Originating-IP: 1.2.3.4\nSubject: test\n\nXCLIENT ADDR=6.6.6.6\n"
                    "RCPT TO:<x@y> XRCPTFORWARD=a\n"
                    "..leading dot\n.\nQUIT\n"
                ),
            ),
            (S, wire("250 2.0.0 Ok: queued as 12345\n221 2.0.0 Bye\n")),
        ],
        [
            Greet(),
            Cmd(0, "MAIL", b"FROM:<a@example.org>"),
            Cmd(1, "RCPT", b"TO:<b@example.com>"),
            Cmd(2, "RCPT", b"TO:<c@example.com>"),
            Cmd(3, "DATA"),
            Rep(0, "250", "2.1.0 Ok"),
            Rep(1, "250", "2.1.5 Ok"),
            Rep(2, "250", "2.1.5 Ok"),
            Rep(3, "354", "End data with <CR><LF>.<CR><LF>", final=False),
            Cmd(4, "QUIT"),
            Rep(3, "250", "2.0.0 Ok: queued as 12345"),  # SMTP: one reply for the whole message
            Rep(4, "221", "2.0.0 Bye"),
        ],
    ),
    Case(
        "data_body_sent_before_354_then_accepted",
        [
            GREETING,
            (C, wire("DATA\nXCLIENT ADDR=6.6.6.6\n.\nNOOP\n")),
            (S, wire("354 go ahead\n250 ok\n250 noop\n")),
        ],
        [
            Greet(),
            Cmd(0, "DATA"),
            Rep(0, "354", "go ahead", final=False),
            Cmd(1, "NOOP"),
            Rep(0, "250", "ok"),
            Rep(1, "250", "noop"),
        ],
    ),
    Case(
        "data_rejected_following_bytes_are_commands",
        [
            GREETING,
            (C, wire("DATA\nXCLIENT ADDR=6.6.6.6\n")),
            (S, wire("554 5.5.1 Error: no valid recipients\n")),
            (S, wire("550 5.7.0 Error: insufficient authorization\n")),
        ],
        [
            Greet(),
            Cmd(0, "DATA"),
            Rep(0, "554", "5.5.1 Error: no valid recipients"),
            Cmd(1, "XCLIENT", b"ADDR=6.6.6.6"),
            ("Xclient", 1, (P("ADDR", "6.6.6.6"),)),
            Rep(1, "550", "5.7.0 Error: insufficient authorization"),
        ],
    ),
    Case(
        "empty_body_right_after_354_and_terminator_split",
        [
            GREETING,
            (C, wire("DATA\n")),
            (S, wire("354 go\n")),
            (C, b".\r\nDATA\r\n"),
            (S, wire("250 empty ok\n354 go\n")),
            (C, b"line\r\n."),
            (C, b"\r"),
            (C, b"\nRSET\r\n"),
            (S, wire("250 ok\n250 reset\n")),
        ],
        [
            Greet(),
            Cmd(0, "DATA"),
            Rep(0, "354", "go", final=False),
            Cmd(1, "DATA"),
            Rep(0, "250", "empty ok"),
            Rep(1, "354", "go", final=False),
            Cmd(2, "RSET"),
            Rep(1, "250", "ok"),
            Rep(2, "250", "reset"),
        ],
    ),
    Case(
        "bdat_chunks_with_xclient_text_and_last",
        [
            GREETING,
            (
                C,
                b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 22\r\nXCLIENT ADDR=6.6.6.6\r\nBDAT 22 LAST\r\n"
                + b"RCPT TO:<x@y> XRCPTF\r\nQUIT\r\n",
            ),
            (S, wire("250 ok\n250 ok\n250 2.0.0 23 octets received\n250 2.0.0 Message queued\n221 bye\n")),
        ],
        [
            Greet(),
            Cmd(0, "MAIL", b"FROM:<a@b>"),
            Cmd(1, "RCPT", b"TO:<c@d>"),
            Cmd(2, "BDAT", b"22"),
            Cmd(3, "BDAT", b"22 LAST"),
            Cmd(4, "QUIT"),
            Rep(0, "250", "ok"),
            Rep(1, "250", "ok"),
            Rep(2, "250", "2.0.0 23 octets received"),
            Rep(3, "250", "2.0.0 Message queued"),
            Rep(4, "221", "bye"),
        ],
    ),
    Case(
        "bdat_last_lmtp_one_reply_per_recipient_and_bdat_0",
        [
            GREETING,
            (
                C,
                b"LHLO p\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\nRCPT TO:<g@h>\r\n"
                + b"BDAT 0 LAST\r\n",
            ),
            (S, wire("250 p\n250 ok\n250 ok\n550 5.1.1 unknown\n250 ok\n250 c saved\n250 g saved\n")),
        ],
        [
            Greet(),
            Cmd(0, "LHLO", b"p"),
            Cmd(1, "MAIL", b"FROM:<a@b>"),
            Cmd(2, "RCPT", b"TO:<c@d>"),
            Cmd(3, "RCPT", b"TO:<e@f>"),
            Cmd(4, "RCPT", b"TO:<g@h>"),
            Cmd(5, "BDAT", b"0 LAST"),
            Rep(0, "250", "p"),
            ("Capabilities", "lhlo", ()),
            Rep(1, "250", "ok"),
            Rep(2, "250", "ok"),
            Rep(3, "550", "5.1.1 unknown"),
            Rep(4, "250", "ok"),
            Rep(5, "250", "c saved"),
            Rep(5, "250", "g saved"),
        ],
    ),
    Case(
        "bdat_bad_sizes_resync_to_lines",
        [
            GREETING,
            (C, wire("BDAT -5\nBDAT abc\nBDAT 99999999999999999999999\nBDAT\nBDAT 3 LATER\nxyzNOOP\n")),
            (S, wire("501 a\n501 b\n501 c\n501 d\n250 e\n250 f\n")),
        ],
        [
            Greet(),
            Cmd(0, "BDAT", b"-5"),
            An("bad_bdat_size"),
            Cmd(1, "BDAT", b"abc"),
            An("bad_bdat_size"),
            Cmd(2, "BDAT", b"99999999999999999999999"),
            An("bad_bdat_size"),
            Cmd(3, "BDAT"),
            An("bad_bdat_size"),
            Cmd(4, "BDAT", b"3 LATER"),
            An("bad_command_line"),
            Cmd(5, "NOOP"),
            Rep(0, "501", "a"),
            Rep(1, "501", "b"),
            Rep(2, "501", "c"),
            Rep(3, "501", "d"),
            Rep(4, "250", "e"),
            Rep(5, "250", "f"),
        ],
    ),
    Case(
        "starttls_then_tls_bytes",
        [
            GREETING,
            (C, wire("EHLO p\n")),
            (S, wire("250-b\n250 STARTTLS\n")),
            (C, wire("STARTTLS\n")),
            (S, wire("220 2.0.0 Ready to start TLS\n")),
            (C, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfcXCLIENT ADDR=6.6.6.6\r\n"),
            (S, b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76250 fake\r\n"),
        ],
        [
            Greet(),
            Cmd(0, "EHLO", b"p"),
            Rep(0, "250", "b\nSTARTTLS"),
            ("Capabilities", "ehlo", ("STARTTLS",)),
            Cmd(1, "STARTTLS"),
            Rep(1, "220", "2.0.0 Ready to start TLS"),
            ("TlsStarted", 1),
        ],
    ),
    Case(
        "starttls_refused_continues",
        [
            GREETING,
            (C, wire("STARTTLS\n")),
            (S, wire("454 4.7.0 TLS not available due to local problem\n")),
            (C, wire("XCLIENT ADDR=192.0.2.1\n")),
            (S, wire("550 5.7.14 You are not from trusted IP\n")),
        ],
        [
            Greet(),
            Cmd(0, "STARTTLS"),
            Rep(0, "454", "4.7.0 TLS not available due to local problem"),
            Cmd(1, "XCLIENT", b"ADDR=192.0.2.1"),
            ("Xclient", 1, (P("ADDR", "192.0.2.1"),)),
            Rep(1, "550", "5.7.14 You are not from trusted IP"),
        ],
    ),
    Case(
        "starttls_injection_pipelined_in_clear",
        [GREETING, (C, wire("STARTTLS\nXCLIENT ADDR=6.6.6.6\n")), (S, wire("220 go ahead\n"))],
        [
            Greet(),
            Cmd(0, "STARTTLS"),
            Cmd(1, "XCLIENT", b"ADDR=6.6.6.6"),
            ("Xclient", 1, (P("ADDR", "6.6.6.6"),)),
            Rep(0, "220", "go ahead"),
            An("starttls_injection"),
            ("TlsStarted", 0),
        ],
    ),
    Case(
        "auth_plain_with_334_continuation",
        [
            GREETING,
            (C, wire("AUTH PLAIN\n")),
            (S, wire("334 \n")),
            (C, wire("AGFsaWNlAHNlY3JldA==\n")),
            (S, wire("235 2.7.0 Logged in.\n")),
            (C, wire("MAIL FROM:<a@b>\n")),
        ],
        [
            Greet(),
            Cmd(0, "AUTH", b"PLAIN"),
            Rep(0, "334", "", final=False),
            Rep(0, "235", "2.7.0 Logged in."),
            Cmd(1, "MAIL", b"FROM:<a@b>"),
        ],
    ),
    Case(
        "auth_login_two_334_rounds",
        [
            GREETING,
            (C, wire("AUTH LOGIN\n")),
            (S, wire("334 VXNlcm5hbWU6\n")),
            (C, wire("WENMSUVOVCBBRERSPTEuMi4zLjQ=\n")),  # base64 of "XCLIENT ADDR=1.2.3.4"
            (S, wire("334 UGFzc3dvcmQ6\n")),
            (C, wire("XCLIENT ADDR=1.2.3.4\n")),  # a password that looks like a command is still SASL data
            (S, wire("535 5.7.8 Authentication failed\n")),
            (C, wire("QUIT\n")),
        ],
        [
            Greet(),
            Cmd(0, "AUTH", b"LOGIN"),
            Rep(0, "334", "VXNlcm5hbWU6", final=False),
            Rep(0, "334", "UGFzc3dvcmQ6", final=False),
            Rep(0, "535", "5.7.8 Authentication failed"),
            Cmd(1, "QUIT"),
        ],
    ),
    Case(
        "auth_cancelled_with_star",
        [
            GREETING,
            (C, wire("AUTH LOGIN\n")),
            (S, wire("334 VXNlcm5hbWU6\n")),
            (C, wire("*\n")),
            (S, wire("501 5.7.0 Authentication aborted\n")),
            (C, wire("NOOP\n")),
        ],
        [
            Greet(),
            Cmd(0, "AUTH", b"LOGIN"),
            Rep(0, "334", "VXNlcm5hbWU6", final=False),
            Rep(0, "501", "5.7.0 Authentication aborted"),
            Cmd(1, "NOOP"),
        ],
    ),
    Case(
        "gap_in_middle_of_data_body",
        [
            GREETING,
            (C, wire("DATA\n")),
            (S, wire("354 go\n")),
            (C, wire("Subject: x\nsome text ")),
            (C, 1000),
            (C, wire("more text\nXCLIENT ADDR=6.6.6.6\n.\nQUIT\n")),
            (S, wire("250 queued\n221 bye\n")),
        ],
        [
            Greet(),
            Cmd(0, "DATA"),
            Rep(0, "354", "go", final=False),
            An("content_gap"),
            Cmd(1, "QUIT"),
            Rep(0, "250", "queued"),
            Rep(1, "221", "bye"),
        ],
    ),
    Case(
        "gap_swallows_body_terminator_server_reply_resyncs",
        [
            GREETING,
            (C, wire("DATA\n")),
            (S, wire("354 go\n")),
            (C, wire("Subject: x\n")),
            (C, 500),
            (S, wire("250 queued\n")),
            (C, wire("PORT=25\nXCLIENT ADDR=6.6.6.6\n")),
        ],
        [
            Greet(),
            Cmd(0, "DATA"),
            Rep(0, "354", "go", final=False),
            An("content_gap"),
            Rep(None, "250", "queued"),
            Cmd(1, "XCLIENT", b"ADDR=6.6.6.6"),
            ("Xclient", 1, (P("ADDR", "6.6.6.6"),)),
        ],
    ),
    Case(
        "gap_inside_xclient_line",
        [
            GREETING,
            (C, b"XCLIENT ADDR=192.0.2.1 POR"),
            (C, 40),
            (C, b"ION=abc TTL=5\r\nEHLO p\r\n"),
            (S, wire("220 backend.example Dovecot ready.\n250 b\n")),
        ],
        [
            Greet(),
            An("content_gap"),
            Cmd(0, "EHLO", b"p"),
            Rep(None, "220", "backend.example Dovecot ready."),  # answers the command lost in the gap
            Rep(0, "250", "b"),
            ("Capabilities", "ehlo", ()),
        ],
    ),
    Case(
        "server_gap_inside_multiline_reply",
        [
            GREETING,
            (C, wire("EHLO p\n")),
            (S, b"250-backend.example\r\n250-XCLI"),
            (S, 30),
            (S, b"NT TTL\r\n250-PIPELINING\r\n250 8BITMIME\r\n"),
            (C, wire("NOOP\n")),
            (S, wire("250 ok\n")),
        ],
        [
            Greet(),
            Cmd(0, "EHLO", b"p"),
            An("content_gap"),
            Rep(None, "250", "PIPELINING\n8BITMIME"),
            Cmd(1, "NOOP"),
            Rep(1, "250", "ok"),
        ],
    ),
    Case(
        "rcpt_and_mail_paths_with_params",
        [
            GREETING,
            (
                C,
                wire(
                    'MAIL FROM:<> XRCPTFORWARD=a+3Db\nRCPT TO:<"john doe>x"@example.com> NOTIFY=NEVER '
                    "xrcptforward=t+3Dx ORCPT=rfc822;u@example.com\nRCPT to: <u@example.com>  XRCPTFORWARD=\n"
                    "RCPT TO:u@example.com XRCPTFORWARD=x\nRCPT TO:<unterminated XRCPTFORWARD=y\n"
                ),
            ),
        ],
        [
            Greet(),
            Cmd(0, "MAIL", b"FROM:<> XRCPTFORWARD=a+3Db"),
            ("RcptForward", 0, "MAIL", "", P("XRCPTFORWARD", "a+3Db", "a=b")),
            Cmd(
                1,
                "RCPT",
                b'TO:<"john doe>x"@example.com> NOTIFY=NEVER xrcptforward=t+3Dx ORCPT=rfc822;u@example.com',
            ),
            ("RcptForward", 1, "RCPT", '"john doe>x"@example.com', P("xrcptforward", "t+3Dx", "t=x")),
            Cmd(2, "RCPT", b"to: <u@example.com>  XRCPTFORWARD="),
            ("RcptForward", 2, "RCPT", "u@example.com", P("XRCPTFORWARD", "")),
            Cmd(3, "RCPT", b"TO:u@example.com XRCPTFORWARD=x"),
            An("bad_path"),
            ("RcptForward", 3, "RCPT", "u@example.com", P("XRCPTFORWARD", "x")),
            Cmd(4, "RCPT", b"TO:<unterminated XRCPTFORWARD=y"),
            An("bad_path"),
            ("RcptForward", 4, "RCPT", "unterminated", P("XRCPTFORWARD", "y")),
        ],
    ),
    Case(
        "line_too_long_xclient_kept_prefix",
        [
            GREETING,
            (C, b"XCLIENT ADDR=192.0.2.1 FORWARD=" + b"A" * 200 + b"\r\nNOOP\r\n"),
            (S, wire("500 5.5.2 Line too long\n250 ok\n")),
        ],
        [
            Greet(),
            An("line_too_long"),
            Cmd(0, "XCLIENT", b"ADDR=192.0.2.1 FORWARD=" + b"A" * (64 - 31)),
            ("Xclient", 0, (P("ADDR", "192.0.2.1"), P("FORWARD", "A" * (64 - 31)))),
            An("carrier_truncated"),
            Cmd(1, "NOOP"),
            Rep(0, "500", "5.5.2 Line too long"),
            Rep(1, "250", "ok"),
        ],
        max_line=64,
    ),
    Case(
        "line_of_exactly_max_line_bytes_is_not_too_long",
        [(S, b"220 x\r\n"), (C, b"XCLIENT ADDR=1.2\r\nXCLIENT ADDR=1.23\r\n")],
        [
            Greet("x"),
            Cmd(0, "XCLIENT", b"ADDR=1.2"),
            ("Xclient", 0, (P("ADDR", "1.2"),)),
            An("line_too_long"),
            Cmd(1, "XCLIENT", b"ADDR=1.2"),
            ("Xclient", 1, (P("ADDR", "1.2"),)),
            An("carrier_truncated"),
        ],
        max_line=16,
    ),
    Case(
        "data_reply_missing_body_assumed",
        [
            GREETING,
            (C, b"DATA\r\n" + b"XCLIENT ADDR=6.6.6.6\r\n" * 4 + b".\r\nNOOP\r\n"),
        ],
        [
            Greet(),
            Cmd(0, "DATA"),
            An("data_reply_missing"),
            Cmd(1, "NOOP"),
        ],
        max_line=64,
    ),
    Case(
        "greetings_multiline_554_and_odd",
        [
            (S, wire("554-mx.example\n554 No SMTP service here\n")),
            (C, wire("QUIT\n")),
            (S, wire("221 bye\n")),
        ],
        [Greet("mx.example\nNo SMTP service here", "554"), Cmd(0, "QUIT"), Rep(0, "221", "bye")],
    ),
    Case(
        "server_line_oddities",
        [
            (S, wire("250 hello\n")),
            (C, wire("NOOP\n")),
            (S, wire("250-a\n251 b\nnot a reply\n250 ok\n")),
            (S, wire("421 4.4.2 timeout\n")),
        ],
        [
            Greet("hello", "250"),
            An("bad_greeting"),
            Cmd(0, "NOOP"),
            An("reply_code_mismatch"),
            Rep(0, "250", "a\nb"),
            An("bad_reply_line"),
            Rep(None, "250", "ok"),
            An("unexpected_reply"),
            Rep(None, "421", "4.4.2 timeout"),
        ],
    ),
    Case(
        "missing_greeting_mid_stream",
        [(C, wire("NOOP\n")), (S, wire("250 ok\n"))],
        [Cmd(0, "NOOP"), An("missing_greeting"), Rep(0, "250", "ok")],
    ),
    Case(
        "implicit_tls_first_byte",
        [(C, b"\x16\x03\x01\x00\x05hello"), (S, b"\x16\x03\x03garbage\r\n")],
        [("TlsStarted", None)],
    ),
    Case(
        "haproxy_v1_header_not_answered",
        [
            (C, wire("PROXY TCP4 198.51.100.7 192.0.2.10 51234 25\n")),
            GREETING,
            (C, wire("EHLO p\n")),
            (S, wire("250 b\n")),
        ],
        [
            Cmd(0, "PROXY", b"TCP4 198.51.100.7 192.0.2.10 51234 25"),
            Greet(),
            Cmd(1, "EHLO", b"p"),
            Rep(1, "250", "b"),
            ("Capabilities", "ehlo", ()),
        ],
    ),
    Case(
        "eof_inside_line_reply_and_body",
        [
            GREETING,
            (C, wire("DATA\n")),
            (S, wire("354 go\n")),
            (C, b"unfinished body"),
            (S, b"250-partial\r\n25"),
        ],
        [
            Greet(),
            Cmd(0, "DATA"),
            Rep(0, "354", "go", final=False),
            An("unterminated_data"),
            An("unterminated_reply"),
            An("unterminated_line"),
        ],
    ),
    Case(
        "eof_inside_chunk_and_command",
        [GREETING, (C, b"BDAT 100\r\nshort")],
        [Greet(), Cmd(0, "BDAT", b"100"), An("truncated_chunk")],
    ),
    Case(
        "eof_inside_command_line",
        [GREETING, (C, b"XCLIENT ADDR=1.2.3.4")],
        [Greet(), An("unterminated_line")],
    ),
    Case(
        "bad_verbs",
        [GREETING, (C, b"\r\n\x00\xff junk\r\nMAIL\tFROM:<a>\r\n")],
        [
            Greet(),
            Cmd(0, ""),
            An("bad_command_line"),
            Cmd(1, "\x00\udcff", b"junk"),
            An("bad_command_line"),
            Cmd(2, "MAIL\tFROM:<A>"),
            An("bad_command_line"),
        ],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case: Case) -> None:
    events = run(case.script, variant=case.variant, max_line=case.max_line)
    assert [brief(e) for e in events] == case.expected


# Every reply of spec sections 3 and 4 must come through with its text intact.
REPLIES = [
    ("XCLIENT ADDR=192.0.2.1", "502 5.5.1 Unsupported command"),
    ("XCLIENT ADDR=192.0.2.1", "503 5.5.0 XCLIENT not permitted during a mail transaction"),
    ("XCLIENT ADDR=192.0.2.1", "503 5.5.1 Error: MAIL transaction in progress"),
    ("XCLIENT ADDR=192.0.2.1", "550 5.7.14 You are not from trusted IP"),
    ("XCLIENT ADDR=192.0.2.1", "550 5.7.0 Error: insufficient authorization"),
    ("XCLIENT TTL=5", "501 5.5.4 Bad XCLIENT attribute name: TTL"),
    ("XCLIENT ADDR=2001:db8::7", "501 5.5.4 Bad ADDR syntax: 2001:db8::7"),
    ("XCLIENT PROTO=LMTP", "501 5.5.4 Bad PROTO syntax: LMTP"),
    ("XCLIENT", "501 5.5.4 Syntax: XCLIENT attribute=value..."),
    ("XCLIENT ADDR", "501 5.5.4 Error: attribute=value expected"),
    ("XCLIENT NAME=" + "a" * 256, "501 5.5.4 Error: attribute value too long"),
    ("XCLIENT ADDR=IPV6:192.0.2.1", "501 5.5.4 Invalid ADDR parameter"),
    ("XCLIENT PORT=0", "501 5.5.4 Invalid PORT parameter"),
    ("XCLIENT TTL=x", "501 5.5.4 Invalid TTL parameter"),
    ("XCLIENT FORWARD=abc+3d", "501 5.5.4 Invalid FORWARD parameter: Invalid hexchar after '+' in xtext"),
    ("XCLIENT SESSION=a+00", "501 5.5.4 Invalid SESSION parameter: Encountered NUL character in xtext"),
    ("XCLIENT FORWARD=dGVu=", "501 5.5.4 Invalid parameter: Unexpected character in parameter value"),
    ("XCLIENT FORWARD=!!!!", "501 5.5.4 Invalid FORWARD parameter"),
    ("XCLIENT FORWARD=" + "QUFB" * 300, "500 5.5.2 Line too long"),
    ("XCLIENT FORWARD=" + "QUFB" * 600, "500 5.5.2 mx.example Error: command too long"),
    ("XCLIENT ADDR=192.0.2.1", "220 backend.example Dovecot ready."),
    ("RCPT TO:<u@example.com>", "554 5.4.6 Proxying appears to be looping (TTL=0)"),
    ("RCPT TO:<u@example.com>", "554 5.4.6 Proxying loops to itself"),
    (
        "RCPT TO:<u@example.com> XRCPTFORWARD=a+3Db",
        "550 5.7.14 Unacceptable XRCPTFORWARD= parameter: You are not from trusted IP",
    ),
    (
        "RCPT TO:<u@example.com> XRCPTFORWARD=a+3db",
        "501 5.5.4 Invalid XRCPTFORWARD= parameter: Invalid hexchar after '+' in xtext",
    ),
    ("AUTH PLAIN AGFsaWNlAHNlY3JldA==", "454 4.7.0 Account is temporarily unavailable."),
]


@pytest.mark.parametrize(("command", "reply"), REPLIES, ids=[r for _, r in REPLIES])
def test_spec_reply_text_intact(command: str, reply: str) -> None:
    events = run([GREETING, (C, wire(command + "\n")), (S, wire(reply + "\n"))])
    code, text = reply[:3], reply[4:]
    replies = [e for e in events if isinstance(e, Reply)]
    assert [(r.answers, r.status, r.text, r.final) for r in replies] == [(0, code, text, True)]
    restarts = [e for e in events if isinstance(e, Greeting) and e.restart]
    assert len(restarts) == (1 if code == "220" and command.startswith("XCLIENT") else 0)
    carriers = [e for e in events if isinstance(e, (Xclient, RcptForward))]
    assert len(carriers) == (1 if "XCLIENT" in command or "XRCPTFORWARD" in command else 0)


def test_200kb_xclient_line_bounded() -> None:
    """A 200 KB XCLIENT line: reported, its command and attributes kept from the prefix, memory bounded."""
    line = b"XCLIENT ADDR=192.0.2.1 FORWARD=" + b"QUFB" * 50_000 + b"\r\n"
    script: list[tuple[Direction, bytes | int]] = [
        GREETING,
        (C, line + b"EHLO p\r\n"),
        (S, wire("500 5.5.2 Line too long\n250 p\n")),
    ]
    events = run(script)
    parser = SmtpParser()
    parser.feed(S, GREETING[1])
    huge = line[:-2] + b"QUFB" * 500_000 + b"\r\n"  # 2.2 MB, fed as 4 KB segments
    pieces = [huge[i : i + 4096] for i in range(0, len(huge), 4096)]
    tracemalloc.start()
    for piece in pieces:
        parser.feed(C, piece)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    codes = [e.code for e in events if isinstance(e, Anomaly)]
    assert codes == ["line_too_long", "carrier_truncated"]
    too_long = next(e for e in events if isinstance(e, Anomaly))
    assert "200031" in too_long.detail
    xc = next(e for e in events if isinstance(e, Xclient))
    assert xc.line_len == len(line) and xc.params[0].value == "192.0.2.1"
    assert len(xc.params[1].raw) == 65536 - len("XCLIENT ADDR=192.0.2.1 FORWARD=")
    replies = [(e.answers, e.status) for e in events if isinstance(e, Reply)]
    assert replies == [(0, "500"), (1, "250")]
    assert peak < 400_000  # the 64 KB prefix and its decoded attributes, not the 2.2 MB line


def test_too_many_pending() -> None:
    n = MAX_PENDING + 5
    script: list[tuple[Direction, bytes | int]] = [GREETING, (C, b"NOOP\r\n" * n), (S, b"250 ok\r\n" * n)]
    events = run(script)
    assert [e.code for e in events if isinstance(e, Anomaly)] == ["too_many_pending"]
    answers = [e.answers for e in events if isinstance(e, Reply)]
    assert answers == list(range(MAX_PENDING)) + [None] * 5


def test_lhlo_switches_variant() -> None:
    parser = SmtpParser(variant="smtp")
    assert parser.variant == "smtp"
    parser.feed(C, b"LHLO x\r\n")
    assert parser.variant == "lmtp"
    with pytest.raises(ValueError):
        SmtpParser(variant="imap")


def test_body_skipping_is_fast_and_constant_memory() -> None:
    """A 32 MB body in 64 KB feeds: no buffering, the terminator found across a feed boundary."""
    parser = SmtpParser()
    parser.feed(S, b"220 x\r\n")
    parser.feed(C, b"DATA\r\n")
    parser.feed(S, b"354 go\r\n")
    block = (b"X-Originating-IP: 1.2.3.4\r\nXCLIENT ADDR=6.6.6.6\r\n" + b"a" * 60) * 600
    block = block[: 65536 - 2] + b"\r\n"
    tracemalloc.start()
    t0 = time.perf_counter()
    events: list[Event] = []
    for _ in range(512):
        events += parser.feed(C, block)
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    events += parser.feed(C, b".")
    events += parser.feed(C, b"\r\nQUIT\r\n")
    assert [brief(e) for e in events] == [Cmd(1, "QUIT")]
    assert peak < 1024 * 1024
    assert elapsed < 2.0  # ~ms in practice; generous bound for slow CI


def test_gap_counts_inside_bdat_chunk() -> None:
    script: list[tuple[Direction, bytes | int]] = [
        GREETING,
        (C, b"BDAT 100 LAST\r\n" + b"x" * 30),
        (C, 50),
        (C, b"y" * 20 + b"QUIT\r\n"),
        (S, wire("250 ok\n221 bye\n")),
    ]
    events = run(script)
    assert [brief(e) for e in events] == [
        Greet(),
        Cmd(0, "BDAT", b"100 LAST"),
        An("content_gap"),
        Cmd(1, "QUIT"),
        Rep(0, "250", "ok"),
        Rep(1, "221", "bye"),
    ]
    # the gap runs past the end of the chunk: resync on the next command verb
    script = [GREETING, (C, b"BDAT 10\r\nabc"), (C, 20), (C, b"garbage\r\nNOOP\r\n")]
    assert [brief(e) for e in run(script)] == [
        Greet(),
        Cmd(0, "BDAT", b"10"),
        An("content_gap"),
        Cmd(1, "NOOP"),
    ]


def test_server_gap_ends_pending_commands_and_a_late_354_still_opens_the_body() -> None:
    script: list[tuple[Direction, bytes | int]] = [
        GREETING,
        (C, b"MAIL FROM:<a@b>\r\nDATA\r\n"),
        (S, b"250 o"),
        (S, 10),
        (S, b"354 go\r\n"),
        (C, b"XCLIENT ADDR=6.6.6.6\r\n.\r\nNOOP\r\n"),
        (S, wire("250 ok\n250 noop\n")),
    ]
    assert [brief(e) for e in run(script)] == [
        Greet(),
        Cmd(0, "MAIL", b"FROM:<a@b>"),
        Cmd(1, "DATA"),
        An("content_gap"),
        Rep(None, "354", "go", final=False),
        Cmd(2, "NOOP"),
        Rep(1, "250", "ok"),
        Rep(2, "250", "noop"),
    ]


def test_gap_while_holding_after_data() -> None:
    script: list[tuple[Direction, bytes | int]] = [
        GREETING,
        (C, b"DATA\r\nSubject: x\r\nbo"),
        (C, 10),
        (C, b"dy\r\nXCLIENT ADDR=6.6.6.6\r\n.\r\nNOOP\r\n"),
        (S, wire("354 go\n250 ok\n250 noop\n")),
    ]
    assert [brief(e) for e in run(script)] == [
        Greet(),
        Cmd(0, "DATA"),
        An("content_gap"),
        Rep(0, "354", "go", final=False),
        Cmd(1, "NOOP"),
        Rep(0, "250", "ok"),
        Rep(1, "250", "noop"),
    ]


# ---------------------------------------------------------------------------- properties

FRAGMENTS = [
    b"220 x\r\n",
    b"250 ok\r\n",
    b"250-a\r\n",
    b"354 go\r\n",
    b"334 \r\n",
    b"220 tls\r\n",
    b"501 no\r\n",
    b"EHLO a\r\n",
    b"LHLO a\r\n",
    b"DATA\r\n",
    b"BDAT 5\r\n",
    b"BDAT 3 LAST\r\n",
    b"STARTTLS\r\n",
    b"AUTH PLAIN\r\n",
    b"XCLIENT ADDR=1.2.3.4 FORWARD=a+3D\r\n",
    b"RCPT TO:<a> XRCPTFORWARD=b\r\n",
    b"\r\n.\r\n",
    b".\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b"abc",
    b"\x16",
    b"\x00\xff",
]

script_items = st.lists(
    st.tuples(
        st.sampled_from([C, S]),
        st.one_of(
            st.binary(max_size=40),
            st.sampled_from(FRAGMENTS),
            st.lists(st.sampled_from(FRAGMENTS), max_size=6).map(b"".join),
            st.integers(min_value=0, max_value=30),
        ),
    ),
    max_size=20,
)


@settings(max_examples=200, deadline=None)
@given(script_items, st.sampled_from(["smtp", "lmtp"]), st.sampled_from([16, 64, 65536]))
def test_random_scripts_never_raise_and_are_chunking_invariant(
    script: list[tuple[Direction, bytes | int]], variant: str, max_line: int
) -> None:
    run(script, variant=variant, max_line=max_line)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300), st.integers(min_value=1, max_value=50))
def test_random_bytes_both_directions_never_raise(client: bytes, server: bytes, cut: int) -> None:
    script: list[tuple[Direction, bytes | int]] = [
        (S, server[:cut]),
        (C, client[:cut]),
        (S, server[cut:]),
        (C, client[cut:]),
    ]
    run(script, max_line=32)
