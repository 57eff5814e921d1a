from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
)
from analyzer.protocols.pop3 import MAX_PENDING, Pop3Parser
from tests.helpers import CHUNKINGS, C, S, events_of, feed_all, wire

Summary = tuple[object, ...]

GREETING = wire("+OK [XCLIENT] Dovecot ready.\n")
FWD = "dGVuYW50PWFjbWU="  # base64("tenant=acme")


def summary(ev: Event) -> Summary:
    """The fields a test cares about, without spans."""
    if isinstance(ev, Greeting):
        return ("Greeting", ev.status, ev.text, ev.capabilities)
    if isinstance(ev, Command):
        return ("Command", ev.seq, ev.verb, ev.args)
    if isinstance(ev, Xclient):
        return ("Xclient", ev.seq, ev.verb, tuple((p.name, p.raw, p.has_equals) for p in ev.params))
    if isinstance(ev, Reply):
        return ("Reply", ev.answers, ev.status, ev.text, ev.final)
    if isinstance(ev, Capabilities):
        return ("Capabilities", ev.source, ev.items)
    if isinstance(ev, TlsStarted):
        return ("TlsStarted", ev.seq)
    if isinstance(ev, Anomaly):
        return ("Anomaly", ev.code)
    raise AssertionError(f"unexpected event {ev!r}")


def run(script: list[tuple[Direction, bytes]], chunking: str = "whole", **kw: int) -> list[Event]:
    return feed_all(Pop3Parser(**kw), script, chunking)


def summaries(script: list[tuple[Direction, bytes]], chunking: str = "whole", **kw: int) -> list[Summary]:
    return [summary(e) for e in run(script, chunking, **kw)]


# --- scripted conversations: (id, script, expected summaries) -----------------------------------

SPEC_62 = wire(
    "XCLIENT ADDR=198.51.100.7 PORT=51234 DESTADDR=192.0.2.10 DESTPORT=995 SESSION=q1w2e3r4t5y6u7i8 "
    f"TTL=6 CLIENT-TRANSPORT=TLS FORWARD={FWD}\nUSER alice\n"
)
SPEC_62_PARAMS = (
    ("ADDR", "198.51.100.7", True),
    ("PORT", "51234", True),
    ("DESTADDR", "192.0.2.10", True),
    ("DESTPORT", "995", True),
    ("SESSION", "q1w2e3r4t5y6u7i8", True),
    ("TTL", "6", True),
    ("CLIENT-TRANSPORT", "TLS", True),
    ("FORWARD", FWD, True),
)
V2319 = wire(f"XCLIENT ADDR=198.51.100.7 PORT=51234 SESSION=q1w2e3r4t5y6u7i8 TTL=4 FORWARD={FWD}\n")
LONG_XCLIENT = b"XCLIENT ADDR=198.51.100.7 PORT=5123 FORWARD=" + b"QUFB" * 264 + b"\r\n"  # 1100 bytes + CRLF
RETR_BODY = wire(
    "+OK 120 octets\n"
    "Received: from x\n"
    "X-Originating-IP: [203.0.113.9]\n"
    "XCLIENT ADDR=1.2.3.4\n"
    "+OK not a reply\n"
    "..leading dot\n"
    "\n"
    ".\n"
)

CASES: list[tuple[str, list[tuple[Direction, bytes]], list[Summary]]] = [
    (
        "spec_6_2_pop3_2_4_3",
        [
            (S, GREETING),
            (C, SPEC_62),
            (S, wire("+OK Updated\n+OK\n")),
            (C, wire("PASS secret\n")),
            (S, wire("+OK Logged in.\n")),
        ],
        [
            ("Greeting", "+OK", "[XCLIENT] Dovecot ready.", ("XCLIENT",)),
            ("Command", 0, "XCLIENT", SPEC_62.split(b"\r\n")[0][8:]),
            ("Xclient", 0, "XCLIENT", SPEC_62_PARAMS),
            ("Command", 1, "USER", b"alice"),
            ("Reply", 0, "+OK", "Updated", True),
            ("Reply", 1, "+OK", "", True),
            ("Command", 2, "PASS", b"secret"),
            ("Reply", 2, "+OK", "Logged in.", True),
        ],
    ),
    (
        "v2_3_19_form",
        [(S, GREETING), (C, V2319), (S, wire("+OK Updated\n"))],
        [
            ("Greeting", "+OK", "[XCLIENT] Dovecot ready.", ("XCLIENT",)),
            ("Command", 0, "XCLIENT", V2319[8:-2]),
            (
                "Xclient",
                0,
                "XCLIENT",
                (
                    ("ADDR", "198.51.100.7", True),
                    ("PORT", "51234", True),
                    ("SESSION", "q1w2e3r4t5y6u7i8", True),
                    ("TTL", "4", True),
                    ("FORWARD", FWD, True),
                ),
            ),
            ("Reply", 0, "+OK", "Updated", True),
        ],
    ),
    (
        "xoip_legacy",
        [(S, GREETING), (C, wire("XOIP 203.0.113.9\n")), (S, wire("+OK Updated\n"))],
        [
            ("Greeting", "+OK", "[XCLIENT] Dovecot ready.", ("XCLIENT",)),
            ("Command", 0, "XOIP", b"203.0.113.9"),
            ("Xclient", 0, "XOIP", (("ADDR", "203.0.113.9", True),)),
            ("Reply", 0, "+OK", "Updated", True),
        ],
    ),
    (
        "untrusted_sender",
        [
            (S, wire("+OK Dovecot ready.\n")),
            (C, wire("XCLIENT ADDR=10.0.0.1 TTL=6\nUSER bob\n")),
            (S, wire("+OK You are not from trusted IP - ignoring\n+OK\n")),
        ],
        [
            ("Greeting", "+OK", "Dovecot ready.", ()),
            ("Command", 0, "XCLIENT", b"ADDR=10.0.0.1 TTL=6"),
            ("Xclient", 0, "XCLIENT", (("ADDR", "10.0.0.1", True), ("TTL", "6", True))),
            ("Command", 1, "USER", b"bob"),
            ("Reply", 0, "+OK", "You are not from trusted IP - ignoring", True),
            ("Reply", 1, "+OK", "", True),
        ],
    ),
    (
        "invalid_parameters",
        [
            (S, GREETING),
            (C, wire("XCLIENT ADDR=[2001:db8::1] PORT=0\n")),
            (S, wire("-ERR Invalid parameters\n")),
        ],
        [
            ("Greeting", "+OK", "[XCLIENT] Dovecot ready.", ("XCLIENT",)),
            ("Command", 0, "XCLIENT", b"ADDR=[2001:db8::1] PORT=0"),
            ("Xclient", 0, "XCLIENT", (("ADDR", "[2001:db8::1]", True), ("PORT", "0", True))),
            ("Reply", 0, "-ERR", "Invalid parameters", True),
        ],
    ),
    (
        "input_buffer_full_after_1100_bytes",
        [
            (S, GREETING),
            (C, LONG_XCLIENT + wire("USER alice\n")),
            (S, wire("-ERR Input buffer full, aborting\n")),
        ],
        [
            ("Greeting", "+OK", "[XCLIENT] Dovecot ready.", ("XCLIENT",)),
            ("Command", 0, "XCLIENT", LONG_XCLIENT[8:-2]),
            (
                "Xclient",
                0,
                "XCLIENT",
                (("ADDR", "198.51.100.7", True), ("PORT", "5123", True), ("FORWARD", "QUFB" * 264, True)),
            ),
            ("Command", 1, "USER", b"alice"),
            ("Reply", 0, "-ERR", "Input buffer full, aborting", True),
        ],
    ),
    (
        "stls_then_tls_bytes",
        [
            (S, wire("+OK Dovecot ready.\n")),
            (C, wire("STLS\n")),
            (S, wire("+OK Begin TLS negotiation now.\n")),
            (
                C,
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
                + bytes(range(256))
                + b"\r\nXCLIENT ADDR=1.2.3.4\r\n",
            ),
            (S, b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\r\n+OK Updated\r\n"),
        ],
        [
            ("Greeting", "+OK", "Dovecot ready.", ()),
            ("Command", 0, "STLS", b""),
            ("Reply", 0, "+OK", "Begin TLS negotiation now.", True),
            ("TlsStarted", 0),
        ],
    ),
    (
        "stls_refused_keeps_parsing",
        [
            (S, wire("+OK Dovecot ready.\n")),
            (C, wire("STLS\n")),
            (S, wire("-ERR TLS support isn't enabled.\n")),
            (C, wire("QUIT\n")),
            (S, wire("+OK Logging out\n")),
        ],
        [
            ("Greeting", "+OK", "Dovecot ready.", ()),
            ("Command", 0, "STLS", b""),
            ("Reply", 0, "-ERR", "TLS support isn't enabled.", True),
            ("Command", 1, "QUIT", b""),
            ("Reply", 1, "+OK", "Logging out", True),
        ],
    ),
    (
        "auth_plain_with_continuation",
        [
            (S, GREETING),
            (C, wire(f"XCLIENT ADDR=198.51.100.7 TTL=6 FORWARD={FWD}\nAUTH PLAIN\n")),
            (S, wire("+OK Updated\n+ \n")),
            (C, wire("AGFsaWNlAHNlY3JldA==\n")),
            (S, wire("+OK Logged in.\n")),
            (C, wire("STAT\n")),
            (S, wire("+OK 2 320\n")),
        ],
        [
            ("Greeting", "+OK", "[XCLIENT] Dovecot ready.", ("XCLIENT",)),
            ("Command", 0, "XCLIENT", f"ADDR=198.51.100.7 TTL=6 FORWARD={FWD}".encode()),
            (
                "Xclient",
                0,
                "XCLIENT",
                (("ADDR", "198.51.100.7", True), ("TTL", "6", True), ("FORWARD", FWD, True)),
            ),
            ("Command", 1, "AUTH", b"PLAIN"),
            ("Reply", 0, "+OK", "Updated", True),
            ("Reply", 1, "+", "", False),
            ("Reply", 1, "+OK", "Logged in.", True),
            ("Command", 2, "STAT", b""),
            ("Reply", 2, "+OK", "2 320", True),
        ],
    ),
    (
        "auth_with_initial_response_pipelined",
        [
            (S, GREETING),
            (C, wire("XCLIENT ADDR=198.51.100.7\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\n")),
            (S, wire("+OK Updated\n+OK Logged in.\n")),
        ],
        [
            ("Greeting", "+OK", "[XCLIENT] Dovecot ready.", ("XCLIENT",)),
            ("Command", 0, "XCLIENT", b"ADDR=198.51.100.7"),
            ("Xclient", 0, "XCLIENT", (("ADDR", "198.51.100.7", True),)),
            ("Command", 1, "AUTH", b"PLAIN AGFsaWNlAHNlY3JldA=="),
            ("Reply", 0, "+OK", "Updated", True),
            ("Reply", 1, "+OK", "Logged in.", True),
        ],
    ),
    (
        "auth_login_cancelled",
        [
            (S, wire("+OK ready\n")),
            (C, wire("AUTH LOGIN\n")),
            (S, wire("+ VXNlcm5hbWU6\n")),
            (C, wire("*\n")),
            (S, wire("-ERR [AUTH] Authentication aborted\n")),
            (C, wire("QUIT\n")),
        ],
        [
            ("Greeting", "+OK", "ready", ()),
            ("Command", 0, "AUTH", b"LOGIN"),
            ("Reply", 0, "+", "VXNlcm5hbWU6", False),
            ("Reply", 0, "-ERR", "[AUTH] Authentication aborted", True),
            ("Command", 1, "QUIT", b""),
        ],
    ),
    (
        "bare_auth_lists_mechanisms",
        [
            (S, wire("+OK ready\n")),
            (C, wire("AUTH\n")),
            (S, wire("+OK\nPLAIN\nLOGIN\n.\n")),
            (C, wire("NOOP\n")),
            (S, wire("-ERR Unknown command.\n")),
        ],
        [
            ("Greeting", "+OK", "ready", ()),
            ("Command", 0, "AUTH", b""),
            ("Reply", 0, "+OK", "", True),
            ("Command", 1, "NOOP", b""),
            ("Reply", 1, "-ERR", "Unknown command.", True),
        ],
    ),
    (
        "retr_body_is_not_parsed",
        [(S, wire("+OK ready\n")), (C, wire("RETR 1\nLIST 1\n")), (S, RETR_BODY + wire("+OK 1 120\n"))],
        [
            ("Greeting", "+OK", "ready", ()),
            ("Command", 0, "RETR", b"1"),
            ("Command", 1, "LIST", b"1"),
            ("Reply", 0, "+OK", "120 octets", True),
            ("Reply", 1, "+OK", "1 120", True),
        ],
    ),
    (
        "err_reply_has_no_body",
        [
            (S, wire("+OK ready\n")),
            (C, wire("RETR 9\nUIDL\n")),
            (S, wire("-ERR no such message\n+OK\n1 abc\n.\n")),
        ],
        [
            ("Greeting", "+OK", "ready", ()),
            ("Command", 0, "RETR", b"9"),
            ("Command", 1, "UIDL", b""),
            ("Reply", 0, "-ERR", "no such message", True),
            ("Reply", 1, "+OK", "", True),
        ],
    ),
    (
        "capa_multiline",
        [
            (S, wire("+OK ready\n")),
            (C, wire("CAPA\n")),
            (
                S,
                wire(
                    "+OK\nCAPA\nTOP\nUIDL\nRESP-CODES\nPIPELINING\nAUTH-RESP-CODE\nSTLS\nUSER\nSASL PLAIN LOGIN\n"
                    "..X-DOTTED\n.\n"
                ),
            ),
        ],
        [
            ("Greeting", "+OK", "ready", ()),
            ("Command", 0, "CAPA", b""),
            ("Reply", 0, "+OK", "", True),
            (
                "Capabilities",
                "capa",
                (
                    "CAPA",
                    "TOP",
                    "UIDL",
                    "RESP-CODES",
                    "PIPELINING",
                    "AUTH-RESP-CODE",
                    "STLS",
                    "USER",
                    "SASL PLAIN LOGIN",
                    ".X-DOTTED",
                ),
            ),
        ],
    ),
    (
        "err_greeting",
        [(S, wire("-ERR [SYS/TEMP] Too many connections\n"))],
        [("Greeting", "-ERR", "[SYS/TEMP] Too many connections", ())],
    ),
    (
        "xclient_code_is_case_sensitive",
        [(S, wire("+OK [xclient] Dovecot ready.\n"))],
        [("Greeting", "+OK", "[xclient] Dovecot ready.", ())],
    ),
    (
        "lowercase_verb_and_empty_tokens",
        [(S, GREETING), (C, wire("xclient ADDR=1.2.3.4  TTL=5 NOVALUE \n")), (S, wire("+OK Updated\n"))],
        [
            ("Greeting", "+OK", "[XCLIENT] Dovecot ready.", ("XCLIENT",)),
            ("Command", 0, "XCLIENT", b"ADDR=1.2.3.4  TTL=5 NOVALUE "),
            (
                "Xclient",
                0,
                "XCLIENT",
                (("ADDR", "1.2.3.4", True), ("TTL", "5", True), ("NOVALUE", "", False)),
            ),
            ("Anomaly", "empty_token"),
            ("Reply", 0, "+OK", "Updated", True),
        ],
    ),
    (
        "too_many_bad_commands",
        [
            (S, wire("+OK ready\n")),
            (C, wire("FOO\nBAR\n\n")),
            (S, wire("-ERR Unknown command.\n-ERR Unknown command.\n-ERR Too many invalid bad commands.\n")),
        ],
        [
            ("Greeting", "+OK", "ready", ()),
            ("Command", 0, "FOO", b""),
            ("Command", 1, "BAR", b""),
            ("Command", 2, "", b""),
            ("Reply", 0, "-ERR", "Unknown command.", True),
            ("Reply", 1, "-ERR", "Unknown command.", True),
            ("Reply", 2, "-ERR", "Too many invalid bad commands.", True),
        ],
    ),
    (
        "xclient_before_greeting",
        [(C, wire("XCLIENT ADDR=1.2.3.4\n")), (S, GREETING), (S, wire("+OK Updated\n"))],
        [
            ("Command", 0, "XCLIENT", b"ADDR=1.2.3.4"),
            ("Xclient", 0, "XCLIENT", (("ADDR", "1.2.3.4", True),)),
            ("Greeting", "+OK", "[XCLIENT] Dovecot ready.", ("XCLIENT",)),
            ("Reply", 0, "+OK", "Updated", True),
        ],
    ),
    (
        "unsolicited_reply_and_garbage",
        [(S, wire("+OK ready\n+OK extra\nhello\n+ more\n"))],
        [
            ("Greeting", "+OK", "ready", ()),
            ("Reply", None, "+OK", "extra", True),
            ("Anomaly", "unexpected_reply"),
            ("Anomaly", "unexpected_reply"),
            ("Reply", None, "+", "more", False),
            ("Anomaly", "unexpected_reply"),
        ],
    ),
    (
        "eof_inside_body_and_partial_line",
        [(S, wire("+OK ready\n")), (C, wire("RETR 1\n") + b"QUI"), (S, wire("+OK\nline\n"))],
        [
            ("Greeting", "+OK", "ready", ()),
            ("Command", 0, "RETR", b"1"),
            ("Reply", 0, "+OK", "", True),
            ("Anomaly", "incomplete_line"),
            ("Anomaly", "unterminated_multiline"),
        ],
    ),
]

# every attribute of spec table 2.3, one at a time
for _name, _value in [
    ("ADDR", "2001:db8::7"),
    ("PORT", "51234"),
    ("DESTADDR", "192.0.2.10"),
    ("DESTPORT", "995"),
    ("SESSION", "q1w2e3r4t5y6u7i8"),
    ("TTL", "0"),
    ("CLIENT-TRANSPORT", "insecure"),
    ("DESTNAME", "mail.example.org"),
    ("FORWARD", FWD),
    ("UNKNOWN", "x=y"),
]:
    CASES.append(
        (
            f"attribute_{_name}",
            [(S, GREETING), (C, wire(f"XCLIENT {_name}={_value}\n")), (S, wire("+OK Updated\n"))],
            [
                ("Greeting", "+OK", "[XCLIENT] Dovecot ready.", ("XCLIENT",)),
                ("Command", 0, "XCLIENT", f"{_name}={_value}".encode()),
                ("Xclient", 0, "XCLIENT", ((_name, _value, True),)),
                ("Reply", 0, "+OK", "Updated", True),
            ],
        )
    )


@pytest.mark.parametrize("chunking", CHUNKINGS)
@pytest.mark.parametrize(("script", "expected"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_conversations(script: list[tuple[Direction, bytes]], expected: list[Summary], chunking: str) -> None:
    assert summaries(script, chunking) == expected


@pytest.mark.parametrize(("script", "expected"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_chunkings_give_identical_events(
    script: list[tuple[Direction, bytes]], expected: list[Summary]
) -> None:
    whole = run(script, "whole")
    for chunking in CHUNKINGS:
        for seed in range(3):
            assert feed_all(Pop3Parser(), script, chunking, seed) == whole


# --- details: spans, XParam shape, line lengths ---------------------------------------------------


def test_xclient_event_shape_and_spans() -> None:
    events = run([(S, GREETING), (C, SPEC_62)])
    (xc,) = events_of(Xclient, events)
    assert isinstance(xc, Xclient)
    first_line_len = SPEC_62.index(b"\r\n") + 2
    assert xc.span == Span(C, 0, first_line_len)
    assert xc.line_len == first_line_len
    assert xc.params[-1] == XParam("FORWARD", FWD, FWD, FWD, True, ())
    (greeting,) = events_of(Greeting, events)
    assert greeting.span == Span(S, 0, len(GREETING))
    user = next(e for e in events_of(Command, events) if isinstance(e, Command) and e.verb == "USER")
    assert user.span == Span(C, first_line_len, len(SPEC_62))


def test_long_xclient_line_len_counts_crlf() -> None:
    (xc,) = events_of(Xclient, run([(S, GREETING), (C, LONG_XCLIENT)]))
    assert isinstance(xc, Xclient)
    assert xc.line_len == len(LONG_XCLIENT) == 1102


def test_capabilities_span_covers_the_response() -> None:
    body = wire("+OK\nTOP\nUSER\n.\n")
    (caps,) = events_of(Capabilities, run([(S, wire("+OK r\n")), (C, wire("CAPA\n")), (S, body)]))
    assert caps.span == Span(S, 7, 7 + len(body))  # after "+OK r\r\n"


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_over_long_xclient_is_still_reported(chunking: str) -> None:
    line = b"XCLIENT ADDR=198.51.100.7 TTL=6 FORWARD=" + b"A" * 200 + b"\r\n"
    out = summaries(
        [(S, GREETING), (C, line + wire("USER a\n")), (S, wire("-ERR Input buffer full, aborting\n"))],
        chunking,
        max_line=64,
    )
    assert out[1] == ("Command", 0, "XCLIENT", line[8:64])
    assert out[2] == (
        "Xclient",
        0,
        "XCLIENT",
        (("ADDR", "198.51.100.7", True), ("TTL", "6", True), ("FORWARD", "A" * 24, True)),
    )
    assert out[3] == ("Anomaly", "line_too_long")
    assert out[4] == ("Command", 1, "USER", b"a")
    assert out[5] == ("Reply", 0, "-ERR", "Input buffer full, aborting", True)


def test_line_too_long_reports_true_length() -> None:
    line = b"XCLIENT " + b"B" * 100 + b"\r\n"
    events = run([(C, line)], max_line=32)
    (xc,) = events_of(Xclient, events)
    assert isinstance(xc, Xclient) and xc.line_len == len(line)
    (an,) = [e for e in events if isinstance(e, Anomaly)]
    assert an.code == "line_too_long" and "108 bytes" in an.detail


def test_pipelined_queue_and_answers() -> None:
    script = [
        (S, wire("+OK r\n")),
        (C, wire("STAT\nLIST\nUIDL 1\nNOOP\n")),
        (S, wire("+OK 1 5\n+OK\n1 5\n.\n+OK 1 x\n+OK\n")),
    ]
    replies = [e for e in run(script) if isinstance(e, Reply)]
    assert [(r.answers, r.text) for r in replies] == [(0, "1 5"), (1, ""), (2, "1 x"), (3, "")]


def test_too_many_pending_is_bounded() -> None:
    script = [(S, wire("+OK r\n")), (C, wire("NOOP\n" * (MAX_PENDING + 10))), (S, wire("+OK\n"))]
    events = run(script)
    assert [e.code for e in events if isinstance(e, Anomaly)] == ["too_many_pending"]
    (reply,) = [e for e in events if isinstance(e, Reply)]
    assert reply.answers == 10  # the 10 oldest were dropped


# --- gaps -----------------------------------------------------------------------------------------

Step = tuple[Direction, bytes] | tuple[Direction, int]


def run_with_gaps(steps: list[Step], chunking: str, seed: int = 0) -> list[Event]:
    p = Pop3Parser()
    rng = random.Random(seed)
    events: list[Event] = []
    for direction, item in steps:
        if isinstance(item, int):
            events.extend(p.gap(direction, item))
            continue
        if chunking == "whole":
            pieces = [item]
        elif chunking == "bytewise":
            pieces = [item[i : i + 1] for i in range(len(item))]
        else:
            pieces, i = [], 0
            while i < len(item):
                n = rng.randint(1, 7)
                pieces.append(item[i : i + n])
                i += n
        for piece in pieces:
            events.extend(p.feed(direction, piece))
    events.extend(p.eof(C))
    events.extend(p.eof(S))
    return events


GAP_IN_XCLIENT: list[Step] = [
    (S, GREETING),
    (C, b"XCLIENT ADDR=198.51.100.7 PORT=51234 SESS"),
    (C, 40),
    (C, wire("Y6 TTL=6 FORWARD=abc\nUSER alice\n")),
    (S, wire("+OK Updated\n+OK\n")),
]


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_gap_inside_xclient(chunking: str) -> None:
    events = run_with_gaps(GAP_IN_XCLIENT, chunking)
    assert [summary(e) for e in events] == [
        ("Greeting", "+OK", "[XCLIENT] Dovecot ready.", ("XCLIENT",)),
        ("Command", 0, "XCLIENT", b"ADDR=198.51.100.7 PORT=51234 SESS"),
        (
            "Xclient",
            0,
            "XCLIENT",
            (("ADDR", "198.51.100.7", True), ("PORT", "51234", True), ("SESS", "", False)),
        ),
        ("Anomaly", "content_gap"),
        ("Command", 1, "USER", b"alice"),
        ("Reply", 0, "+OK", "Updated", True),
        ("Reply", 1, "+OK", "", True),
    ]
    gap = next(e for e in events if isinstance(e, Anomaly))
    assert gap.span == Span(C, 0, 41 + 40)
    assert gap.excerpt == b"XCLIENT ADDR=198.51.100.7 PORT=51234 SESS"
    user = next(e for e in events if isinstance(e, Command) and e.verb == "USER")
    assert user.span.start == 41 + 40 + len(wire("Y6 TTL=6 FORWARD=abc\n"))
    assert events == run_with_gaps(GAP_IN_XCLIENT, "whole")


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_client_gap_resyncs_on_known_verb_only(chunking: str) -> None:
    steps: list[Step] = [
        (S, wire("+OK r\n")),
        (C, b"zzz"),
        (C, 7),
        (C, wire("tail\nnot a command\nSTAT\n")),
        (S, wire("+OK 0 0\n")),
    ]
    assert [summary(e) for e in run_with_gaps(steps, chunking)] == [
        ("Greeting", "+OK", "r", ()),
        ("Anomaly", "content_gap"),
        ("Command", 0, "STAT", b""),
        ("Reply", 0, "+OK", "0 0", True),
    ]


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_server_gap_inside_body_resyncs(chunking: str) -> None:
    steps: list[Step] = [
        (S, wire("+OK r\n")),
        (C, wire("RETR 1\nSTAT\n")),
        (S, wire("+OK\nbody line\nXCLI")),
        (S, 500),
        (S, wire("ENT ADDR=1.2.3.4\nmore body\n.\n+OK 1 9\n")),
        (C, wire("QUIT\n")),
        (S, wire("+OK Logging out\n")),
    ]
    assert [summary(e) for e in run_with_gaps(steps, chunking)] == [
        ("Greeting", "+OK", "r", ()),
        ("Command", 0, "RETR", b"1"),
        ("Command", 1, "STAT", b""),
        ("Reply", 0, "+OK", "", True),
        ("Anomaly", "content_gap"),
        ("Reply", 1, "+OK", "1 9", True),
        ("Command", 2, "QUIT", b""),
        ("Reply", 2, "+OK", "Logging out", True),
    ]


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_gap_during_sasl_keeps_credentials_out(chunking: str) -> None:
    steps: list[Step] = [
        (S, wire("+OK r\n")),
        (C, wire("AUTH PLAIN\n")),
        (S, wire("+ \n")),
        (C, b"AGFsaWNl"),
        (C, 3),
        (C, wire("NlY3JldA==\n")),
        (S, wire("+OK Logged in.\n")),
        (C, wire("STAT\n")),
    ]
    assert [summary(e) for e in run_with_gaps(steps, chunking)] == [
        ("Greeting", "+OK", "r", ()),
        ("Command", 0, "AUTH", b"PLAIN"),
        ("Reply", 0, "+", "", False),
        ("Anomaly", "content_gap"),
        ("Reply", 0, "+OK", "Logged in.", True),
        ("Command", 1, "STAT", b""),
    ]


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_capture_without_greeting_does_not_swallow_commands(chunking: str) -> None:
    # suricata-verify pop3-auth-01 shape: the capture starts with the client's CAPA, no greeting
    script = [
        (C, wire("CAPA\n")),
        (S, wire("+OK Capability list follows\nUSER\nSASL PLAIN XOAUTH2\n.\n")),
        (C, wire("AUTH XOAUTH2\n")),
        (S, wire("+ \n")),
        (C, wire("dXNlcj1qb2UBAQ==\n")),
        (S, wire("+OK Welcome.\n")),
        (C, wire("STAT\n")),
        (S, wire("+OK 1 308661\n")),
    ]
    out = summaries(script, chunking)
    assert [s for s in out if s[0] == "Command"] == [
        ("Command", 0, "CAPA", b""),
        ("Command", 1, "AUTH", b"XOAUTH2"),
        ("Command", 2, "STAT", b""),
    ]
    assert ("Reply", 1, "+", "", False) in out


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_commands_pipelined_after_stls_are_flagged(chunking: str) -> None:
    script = [(S, wire("+OK r\n")), (C, wire("STLS\nXCLIENT ADDR=6.6.6.6\n")), (S, wire("+OK Begin TLS\n"))]
    assert summaries(script, chunking)[-4:] == [
        ("Xclient", 1, "XCLIENT", (("ADDR", "6.6.6.6", True),)),
        ("Reply", 0, "+OK", "Begin TLS", True),
        ("Anomaly", "command_after_stls"),
        ("TlsStarted", 0),
    ]


def test_eof_reports_an_unterminated_over_long_line() -> None:
    p = Pop3Parser(max_line=16)
    p.feed(C, b"XCLIENT " + b"A" * 100)
    (an,) = p.eof(C)
    assert isinstance(an, Anomaly) and an.code == "incomplete_line" and an.span == Span(C, 0, 108)


def test_after_tls_gap_and_eof_are_silent() -> None:
    p = Pop3Parser()
    p.feed(S, wire("+OK r\n"))
    p.feed(C, wire("STLS\n"))
    assert [summary(e) for e in p.feed(S, wire("+OK go\n"))][-1] == ("TlsStarted", 0)
    assert p.feed(C, b"\x16\x03\x01" * 1000) == []
    assert p.gap(C, 10) == []
    assert p.eof(C) == [] and p.eof(S) == []


# --- robustness -----------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([C, S]),
            st.one_of(
                st.binary(max_size=60),
                st.sampled_from(
                    [
                        b"+OK [XCLIENT] x\r\n",
                        b"XCLIENT ADDR=1 TTL=2\r\n",
                        b"AUTH PLAIN\r\n",
                        b"+ \r\n",
                        b"+OK\r\n",
                        b".\r\n",
                        b"CAPA\r\n",
                        b"RETR 1\r\n",
                        b"STLS\r\n",
                        b"-ERR x\r\n",
                        b"XOIP  1\r\n",
                        b"\r\n",
                    ]
                ),
                st.integers(1, 50),
            ),
        ),
        max_size=25,
    ),
    st.integers(4, 64),
)
def test_random_input_never_raises(steps: list[tuple[Direction, bytes | int]], max_line: int) -> None:
    p = Pop3Parser(max_line=max_line)
    offsets = {C: 0, S: 0}
    for direction, item in steps:
        if isinstance(item, int):
            events = p.gap(direction, item)
            offsets[direction] += item
        else:
            events = p.feed(direction, item)
            offsets[direction] += len(item)
        for e in events:
            assert e.span.start <= e.span.end <= offsets[e.span.direction]
    p.eof(C)
    p.eof(S)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([C, S]), st.binary(max_size=80)), max_size=12), st.integers(0, 5))
def test_random_bytes_chunking_invariant(script: list[tuple[Direction, bytes]], seed: int) -> None:
    whole = feed_all(Pop3Parser(max_line=48), script, "whole")
    assert feed_all(Pop3Parser(max_line=48), script, "bytewise") == whole
    assert feed_all(Pop3Parser(max_line=48), script, "random", seed) == whole


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_midstream_first_reply_is_not_taken_for_the_greeting(chunking: str) -> None:
    """Capture starts after the greeting: the first +OK answers USER, the next one PASS."""
    events = feed_all(Pop3Parser(midstream=True), [(C, wire("USER alice\n")), (S, wire("+OK\n")), (C, wire("PASS x\n")),
                                     (S, wire("-ERR Authentication failed.\n"))], chunking)
    replies = [e for e in events if isinstance(e, Reply)]
    assert [(r.answers, r.status) for r in replies] == [(0, "+OK"), (1, "-ERR")]
    assert [e.code for e in events if isinstance(e, Anomaly)] == ["missing_greeting"]
    assert not [e for e in events if isinstance(e, Greeting)]


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_body_lines_are_skipped_up_to_the_lone_dot(chunking: str) -> None:
    """A RETR body is skipped without framing its lines; only the lone "." ends it."""
    body = (
        b"XCLIENT ADDR=6.6.6.6\r\n"  # never a command: it is message text
        + b"y" * 100 + b"\r\n"  # over max_line: skipped like any other body line
        + b"..\r\n. \r\n.\r\r\n"  # dot-stuffed, ". " and ".\r" are not the end
        + b".\n"  # bare-LF terminator
    )
    script = [
        (S, GREETING),
        (C, wire("RETR 1\nUSER bob\n")),
        (S, wire("+OK 9 octets\n") + body + wire("+OK user\n")),
        (C, wire("QUIT\n")),
        (S, wire("+OK bye\n")),
    ]
    events = run(script, chunking, max_line=32)
    assert [summary(e) for e in events] == [
        ("Greeting", "+OK", "[XCLIENT] Dovecot ready.", ("XCLIENT",)),
        ("Command", 0, "RETR", b"1"),
        ("Command", 1, "USER", b"bob"),
        ("Reply", 0, "+OK", "9 octets", True),
        ("Reply", 1, "+OK", "user", True),
        ("Command", 2, "QUIT", b""),
        ("Reply", 2, "+OK", "bye", True),
    ]
    user_reply = events[4]
    assert isinstance(user_reply, Reply)
    start = len(GREETING) + len(wire("+OK 9 octets\n")) + len(body)
    assert user_reply.span == Span(S, start, start + len(wire("+OK user\n")))


def test_unterminated_body_at_eof_after_skipping() -> None:
    p = Pop3Parser(max_line=16)
    events = p.feed(S, GREETING) + p.feed(C, wire("RETR 1\n"))
    events += p.feed(S, wire("+OK\nline one\nline two\npart"))
    assert [summary(e) for e in events][-1] == ("Reply", 0, "+OK", "", True)
    tail = p.eof(S)
    assert [summary(e) for e in tail] == [
        ("Anomaly", "incomplete_line"),
        ("Anomaly", "unterminated_multiline"),
    ]
    end = len(GREETING) + len(wire("+OK\nline one\nline two\npart"))
    assert isinstance(tail[0], Anomaly) and tail[0].excerpt == b"part"
    assert tail[0].span == Span(S, end - 4, end)
