"""Table-driven tests of the IMAP parser; every case runs whole, byte at a time and in random splits."""

from __future__ import annotations

import random
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field

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
    IdParam,
    ImapId,
    Reply,
    TlsStarted,
)
from analyzer.protocols.imap import ID_FAST_PATH_MAX, ID_MAX_PAIRS_KEPT, ImapParser, _id_params, _IdList
from tests.helpers import CHUNKINGS, C, S, events_of, feed_all, wire

Item = tuple[Direction, bytes | int]  # bytes are fed, an int is a gap of that many bytes


def run(
    script: list[Item], chunking: str = "whole", seed: int = 0, parser: ImapParser | None = None
) -> list[Event]:
    """Like helpers.feed_all, but an ``int`` item is a gap; same chunkings."""
    p = parser if parser is not None else ImapParser()
    if all(isinstance(d, bytes) for _, d in script):
        return feed_all(p, [(dr, d) for dr, d in script if isinstance(d, bytes)], chunking, seed)
    rng = random.Random(seed)
    out: list[Event] = []
    for direction, data in script:
        if isinstance(data, int):
            out.extend(p.gap(direction, data))
            continue
        if chunking == "whole":
            pieces = [data]
        elif chunking == "bytewise":
            pieces = [data[i : i + 1] for i in range(len(data))]
        else:
            pieces = []
            i = 0
            while i < len(data):
                n = rng.randint(1, 7)
                pieces.append(data[i : i + n])
                i += n
        for piece in pieces:
            out.extend(p.feed(direction, piece))
    out.extend(p.eof(Direction.TO_SERVER))
    out.extend(p.eof(Direction.TO_CLIENT))
    return out


def all_chunkings(script: list[Item], make: Callable[[], ImapParser] = ImapParser) -> list[Event]:
    """Run the script under every chunking (3 random seeds); assert identical events; return them."""
    ref = run(script, "whole", parser=make())
    for chunking in CHUNKINGS:
        for seed in (0, 1, 2) if chunking == "random" else (0,):
            got = run(script, chunking, seed, parser=make())
            assert got == ref, f"events differ under chunking {chunking} (seed {seed})"
    return ref


def summary(e: Event) -> tuple[object, ...]:
    """A compact, span-free view of an event for the tables."""
    if isinstance(e, Greeting):
        return ("G", e.status, e.text, e.capabilities)
    if isinstance(e, ImapId):
        pairs = None if e.params is None else tuple((p.name, p.value) for p in e.params)
        return ("ID", e.seq, e.tag, pairs, e.problems)
    if isinstance(e, Command):
        return ("C", e.seq, e.tag, e.verb, e.args)
    if isinstance(e, Reply):
        return ("R", e.answers, e.tag, e.status, e.text, e.final)
    if isinstance(e, Capabilities):
        return ("CAP", e.source, e.items)
    if isinstance(e, Anomaly):
        return ("A", e.code)
    if isinstance(e, TlsStarted):
        return ("TLS", e.seq)
    raise AssertionError(f"unexpected event {e!r}")


def check_invariants(events: list[Event]) -> None:
    """Properties every event list must have."""
    for e in events:
        assert e.span.start <= e.span.end
        if isinstance(e, Anomaly):
            assert len(e.excerpt) <= 256
        if isinstance(e, (Command, ImapId)):
            assert e.line_len == e.span.end - e.span.start


GREETING = wire("* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN] Dovecot ready.\n")
G_EVENT = (
    "G",
    "OK",
    "[CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN] Dovecot ready.",
    ("IMAP4rev1", "SASL-IR", "LOGIN-REFERRALS", "ID", "ENABLE", "IDLE", "LITERAL+", "AUTH=PLAIN"),
)
ID24 = (
    'I ID ("x-multiplex" "0" "x-session-id" "q1w2e3r4t5y6u7i8" "x-originating-ip" "198.51.100.7" '
    '"x-originating-port" "51234" "x-connected-ip" "192.0.2.10" "x-connected-port" "993" "x-proxy-ttl" "6" '
    '"x-client-transport" "TLS" "x-forward-tenant" "acme")\n'
)
PAIRS24 = (
    ("x-multiplex", "0"),
    ("x-session-id", "q1w2e3r4t5y6u7i8"),
    ("x-originating-ip", "198.51.100.7"),
    ("x-originating-port", "51234"),
    ("x-connected-ip", "192.0.2.10"),
    ("x-connected-port", "993"),
    ("x-proxy-ttl", "6"),
    ("x-client-transport", "TLS"),
    ("x-forward-tenant", "acme"),
)
ID23 = (
    'I ID ("x-session-id" "q1w2e3r4t5y6u7i8" "x-originating-ip" "198.51.100.7" "x-originating-port" "51234" '
    '"x-connected-ip" "192.0.2.10" "x-connected-port" "993" "x-proxy-ttl" "4" "x-forward-tenant" "acme")\n'
)
PAIRS23 = tuple(p for p in PAIRS24 if p[0] not in ("x-multiplex", "x-client-transport", "x-proxy-ttl"))
PAIRS23 = PAIRS23[:5] + (("x-proxy-ttl", "4"),) + PAIRS23[5:]
TABLE13_KEYS = (
    ("x-originating-ip", "2001:db8::7"),
    ("x-originating-port", "51234"),
    ("x-connected-ip", "192.0.2.10"),
    ("x-connected-port", "993"),
    ("x-connected-name", "imap.example.org"),
    ("x-proxy-ttl", "6"),
    ("x-session-id", "q1w2e3r4t5y6u7i8"),
    ("x-session-ext-id", "ext-123"),
    ("x-client-transport", "insecure"),
    ("x-forward-tenant", "acme"),
    ("x-multiplex", "0"),
)


def id_line(pairs: tuple[tuple[str, str], ...], tag: str = "I") -> str:
    """An ID command with every key and value quoted."""
    return f"{tag} ID (" + " ".join(f'"{k}" "{v}"' for k, v in pairs) + ")\n"


@dataclass
class Case:
    id: str
    script: list[Item]
    expected: list[tuple[object, ...]]
    make: Callable[[], ImapParser] = field(default=ImapParser)
    greet: bool = True  #: prepend the Dovecot greeting when the script does not start with server bytes


TLS_BYTES = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(256)) + b"\r\nI ID (\"a\" \"b\")\r\n"
MUX_BYTES = b"\xff\xff\xff\xff\xff\x00\x02\x03\xfeI OK Trusted ID completed.\r\n\x03\xfe\x00\x01\x03\xfe\x01* BYE\r\n"
BODY = (b"From: a@b\r\n\r\nI ID (\"x-originating-ip\" \"6.6.6.6\")\r\n* BYE fake\r\nI OK fake\r\n" * 3000)[:100000]
THIRTY_ONE = tuple((f"x-forward-k{i}", f"v{i}") for i in range(31))

CASES = [
    Case(
        "dovecot24_proxy_id_pipelined_login",
        [
            (S, GREETING),
            (C, wire(ID24 + 'L LOGIN "alice" "secret"\n')),
            (S, wire('* ID ("name" "Dovecot")\nI OK Trusted ID completed.\nL OK [CAPABILITY IMAP4rev1 IDLE] Logged in\n')),
        ],
        [
            G_EVENT,
            ("C", 0, "I", "ID", ID24[5:-1].encode()),
            ("ID", 0, "I", PAIRS24, ()),
            ("C", 1, "L", "LOGIN", b'"alice" "secret"'),
            ("R", 0, "*", "ID", '("name" "Dovecot")', False),
            ("R", 0, "I", "OK", "Trusted ID completed.", True),
            ("R", 1, "L", "OK", "[CAPABILITY IMAP4rev1 IDLE] Logged in", True),
            ("CAP", "imap-capability", ("IMAP4rev1", "IDLE")),
        ],
    ),
    Case(
        "dovecot2319_proxy_id",
        [
            (S, GREETING),
            (C, wire(ID23 + 'L LOGIN "alice" "secret"\n')),
            (S, wire('* ID ("name" "Dovecot")\nI OK ID completed.\n')),
        ],
        [
            G_EVENT,
            ("C", 0, "I", "ID", ID23[5:-1].encode()),
            ("ID", 0, "I", PAIRS23, ()),
            ("C", 1, "L", "LOGIN", b'"alice" "secret"'),
            ("R", 0, "*", "ID", '("name" "Dovecot")', False),
            ("R", 0, "I", "OK", "ID completed.", True),
        ],
    ),
    Case(
        "every_key_of_table_1_3",
        [(C, wire(id_line(TABLE13_KEYS)))],
        [("C", 0, "I", "ID", id_line(TABLE13_KEYS)[5:-1].encode()), ("ID", 0, "I", TABLE13_KEYS, ())],
    ),
    Case(
        "id_nil",
        [(C, wire("a ID NIL\n")), (S, wire('* ID ("name" "Dovecot")\na OK ID completed.\n'))],
        [
            ("C", 0, "a", "ID", b"NIL"),
            ("ID", 0, "a", None, ()),
            ("R", 0, "*", "ID", '("name" "Dovecot")', False),
            ("R", 0, "a", "OK", "ID completed.", True),
        ],
    ),
    Case("id_empty_list", [(C, wire("a id ()\n"))], [("C", 0, "a", "ID", b"()"), ("ID", 0, "a", (), ("empty_list",))]),
    Case("id_no_args", [(C, wire("a ID\n"))], [("C", 0, "a", "ID", b""), ("ID", 0, "a", None, ("missing_paren",))]),
    Case(
        "id_not_a_list",
        [(C, wire('a ID "k" "v"\n'))],
        [("C", 0, "a", "ID", b'"k" "v"'), ("ID", 0, "a", None, ("missing_paren",))],
    ),
    Case(
        "nil_values",
        [(C, wire('a ID ("x-forward-a" NIL "x-originating-ip" nil)\n'))],
        [
            ("C", 0, "a", "ID", b'("x-forward-a" NIL "x-originating-ip" nil)'),
            ("ID", 0, "a", (("x-forward-a", None), ("x-originating-ip", None)), ()),
        ],
    ),
    Case(
        "escapes",
        [(C, wire('a ID ("x-forward-q" "say \\"hi\\" \\\\o/")\n'))],
        [
            ("C", 0, "a", "ID", b'("x-forward-q" "say \\"hi\\" \\\\o/")'),
            ("ID", 0, "a", (("x-forward-q", 'say "hi" \\o/'),), ()),
        ],
    ),
    Case(
        "bad_escape",
        [(C, wire('a ID ("k" "a\\qb")\n'))],
        [("C", 0, "a", "ID", b'("k" "a\\qb")'), ("ID", 0, "a", (("k", "aqb"),), ("bad_escape",))],
    ),
    Case(
        "sync_literal_not_waited_dovecot_style",
        [
            (S, GREETING),
            (C, b'I ID ("x-forward-note" {7}\r\nline1\r\n)\r\nL LOGIN a b\r\n'),
            (S, wire("+ OK\n* ID NIL\nI OK Trusted ID completed.\nL OK Logged in\n")),
        ],
        [
            G_EVENT,
            ("C", 0, "I", "ID", b'("x-forward-note" {7})'),
            ("ID", 0, "I", (("x-forward-note", "line1\r\n"),), ()),
            ("C", 1, "L", "LOGIN", b"a b"),
            ("R", 1, "+", "+", "OK", False),
            ("R", 0, "*", "ID", "NIL", False),
            ("R", 0, "I", "OK", "Trusted ID completed.", True),
            ("R", 1, "L", "OK", "Logged in", True),
        ],
    ),
    Case(
        "sync_literal_waited",
        [
            (C, b'I ID ("x-forward-note" {3}\r\n'),
            (S, wire("+ OK\n")),
            (C, b'\xe9t\xe9)\r\n'),
            (S, wire("I OK ID completed.\n")),
        ],
        [
            ("R", 0, "+", "+", "OK", False),
            ("C", 0, "I", "ID", b'("x-forward-note" {3})'),
            ("ID", 0, "I", (("x-forward-note", "\udce9t\udce9"),), ()),
            ("R", 0, "I", "OK", "ID completed.", True),
        ],
    ),
    Case(
        "nonsync_literal",
        [(C, b'I ID ({9+}\r\nx-forward {2+}\r\nab {0+}\r\n {1+}\r\nv)\r\n')],
        [
            ("C", 0, "I", "ID", b"({9+} {2+} {0+} {1+})"),
            ("ID", 0, "I", (("x-forward", "ab"), ("", "v")), ()),
        ],
    ),
    Case(
        "literal8_tolerated",
        [(C, b'I ID ("k" ~{3}\r\nabc)\r\n')],
        [("C", 0, "I", "ID", b'("k" ~{3})'), ("ID", 0, "I", (("k", "abc"),), ("literal8",))],
    ),
    Case(
        "value_1024_quoted_fits",
        [(C, wire(id_line((("x-forward-big", "v" * 1024),)))), (S, wire("I OK ID completed.\n"))],
        [
            ("C", 0, "I", "ID", id_line((("x-forward-big", "v" * 1024),))[5:-1].encode()),
            ("ID", 0, "I", (("x-forward-big", "v" * 1024),), ()),
            ("R", 0, "I", "OK", "ID completed.", True),
        ],
    ),
    Case(
        "value_1025_quoted_bye",
        [(C, wire(id_line((("x-forward-big", "v" * 1025),)))), (S, wire("* BYE Input buffer full, aborting\n"))],
        [
            ("C", 0, "I", "ID", id_line((("x-forward-big", "v" * 1025),))[5:-1].encode()),
            ("ID", 0, "I", (("x-forward-big", "v" * 1025),), ()),
            ("R", 0, "*", "BYE", "Input buffer full, aborting", False),
        ],
    ),
    Case(
        "key_31_octets_bad",
        [(C, wire('I ID ("x-forward-abcdefghijklmnopqrstu" "v")\n')), (S, wire("I BAD Invalid ID parameters\n"))],
        [
            ("C", 0, "I", "ID", b'("x-forward-abcdefghijklmnopqrstu" "v")'),
            ("ID", 0, "I", (("x-forward-abcdefghijklmnopqrstu", "v"),), ()),
            ("R", 0, "I", "BAD", "Invalid ID parameters", True),
        ],
    ),
    Case(
        "thirty_one_pairs",
        [(C, wire(id_line(THIRTY_ONE)))],
        [("C", 0, "I", "ID", id_line(THIRTY_ONE)[5:-1].encode()), ("ID", 0, "I", THIRTY_ONE, ())],
    ),
    Case(
        "duplicate_keys",
        [(C, wire('I ID ("x-proxy-ttl" "6" "X-Proxy-TTL" "9" "x-forward-a" "1" "x-forward-a" "2")\n'))],
        [
            ("C", 0, "I", "ID", b'("x-proxy-ttl" "6" "X-Proxy-TTL" "9" "x-forward-a" "1" "x-forward-a" "2")'),
            ("ID", 0, "I", (("x-proxy-ttl", "6"), ("X-Proxy-TTL", "9"), ("x-forward-a", "1"), ("x-forward-a", "2")), ()),
        ],
    ),
    Case(
        "nested_list_value",
        [(C, wire('I ID ("a" ("b" ("c") {1}\nx) "d" "e")\n')), (S, wire("I BAD Too many '('\n"))],
        [
            ("C", 0, "I", "ID", b'("a" ("b" ("c") {1}) "d" "e")'),
            ("ID", 0, "I", (("d", "e"),), ("nested_list", "value_is_list")),
            ("R", 0, "I", "BAD", "Too many '('", True),
        ],
    ),
    Case(
        "nested_list_key_and_nil_key",
        [(C, wire('I ID (("b") "c" NIL "x" "d" "e")\n'))],
        [("C", 0, "I", "ID", b'(("b") "c" NIL "x" "d" "e")'), ("ID", 0, "I", (("d", "e"),), ("nested_list", "key_not_string"))],
    ),
    Case(
        "odd_item_count",
        [(C, wire('I ID ("a" "b" "c")\n'))],
        [("C", 0, "I", "ID", b'("a" "b" "c")'), ("ID", 0, "I", (("a", "b"),), ("odd_item_count",))],
    ),
    Case(
        "atoms",
        [(C, wire("I ID (x-originating-ip 192.0.2.1)\n"))],
        [("C", 0, "I", "ID", b"(x-originating-ip 192.0.2.1)"), ("ID", 0, "I", (("x-originating-ip", "192.0.2.1"),), ("atom",))],
    ),
    Case(
        "nul_in_quoted",
        [(C, b'I ID ("x-forward-a" "b\x00c")\r\n'), (S, wire("I BAD NULs not allowed in strings\n"))],
        [
            ("C", 0, "I", "ID", b'("x-forward-a" "b\x00c")'),
            ("ID", 0, "I", (("x-forward-a", "b\x00c"),), ("nul_in_quoted",)),
            ("R", 0, "I", "BAD", "NULs not allowed in strings", True),
        ],
    ),
    Case(
        "cr_in_quoted",
        [(C, b'I ID ("x-forward-a" "b\rc")\r\n')],
        [("C", 0, "I", "ID", b'("x-forward-a" "b\rc")'), ("ID", 0, "I", (("x-forward-a", "b\rc"),), ("cr_or_lf_in_quoted",))],
    ),
    Case(
        "unterminated_quoted_at_end_of_line",
        [(C, wire('I ID ("a" "b\n')), (S, wire("I BAD Missing '\"'\n"))],
        [
            ("C", 0, "I", "ID", b'("a" "b'),
            ("ID", 0, "I", (("a", "b"),), ("unterminated_quoted", "missing_paren")),
            ("R", 0, "I", "BAD", "Missing '\"'", True),
        ],
    ),
    Case(
        "unterminated_quoted_at_eof",
        [(C, b'I ID ("a" "b\\')],
        [
            ("A", "eof_in_line"),
            ("C", 0, "I", "ID", b'("a" "b\\'),
            ("ID", 0, "I", (("a", "b\\"),), ("unterminated_quoted", "bad_escape", "missing_paren")),
        ],
    ),
    Case(
        "missing_paren_and_trailing_garbage",
        [(C, wire('I ID ("a" "b"\nJ ID ("a" "b") x\nK ID NIL ()\n'))],
        [
            ("C", 0, "I", "ID", b'("a" "b"'),
            ("ID", 0, "I", (("a", "b"),), ("missing_paren",)),
            ("C", 1, "J", "ID", b'("a" "b") x'),
            ("ID", 1, "J", (("a", "b"),), ("trailing_garbage",)),
            ("C", 2, "K", "ID", b"NIL ()"),
            ("ID", 2, "K", None, ("trailing_garbage",)),
        ],
    ),
    Case(
        "id_after_login_and_second_id",
        [
            (C, wire('L LOGIN a b\nI ID ("x-originating-ip" "1.2.3.4")\nJ ID ("x-originating-ip" "5.6.7.8")\n')),
            (S, wire("L OK Logged in\n* ID NIL\nI OK ID completed.\n* ID NIL\nJ OK ID completed.\n")),
        ],
        [
            ("C", 0, "L", "LOGIN", b"a b"),
            ("C", 1, "I", "ID", b'("x-originating-ip" "1.2.3.4")'),
            ("ID", 1, "I", (("x-originating-ip", "1.2.3.4"),), ()),
            ("C", 2, "J", "ID", b'("x-originating-ip" "5.6.7.8")'),
            ("ID", 2, "J", (("x-originating-ip", "5.6.7.8"),), ()),
            ("R", 0, "L", "OK", "Logged in", True),
            ("R", 1, "*", "ID", "NIL", False),
            ("R", 1, "I", "OK", "ID completed.", True),
            ("R", 2, "*", "ID", "NIL", False),
            ("R", 2, "J", "OK", "ID completed.", True),
        ],
    ),
    Case(
        "serverbug_reload_failure",
        [(C, wire('I ID ("x-originating-ip" "1.2.3.4")\n')), (S, wire("I NO [SERVERBUG] Failed to reload configuration\n"))],
        [
            ("C", 0, "I", "ID", b'("x-originating-ip" "1.2.3.4")'),
            ("ID", 0, "I", (("x-originating-ip", "1.2.3.4"),), ()),
            ("R", 0, "I", "NO", "[SERVERBUG] Failed to reload configuration", True),
        ],
    ),
    Case(
        "multiplex_then_binary_framing",
        [
            (S, GREETING),
            (C, wire(ID24 + "L LOGIN a b\n")),
            (S, wire('* ID ("name" "Dovecot")\n* MULTIPLEX 0\n') + MUX_BYTES),
            (C, wire("M NOOP\n")),
            (S, MUX_BYTES),
        ],
        [
            G_EVENT,
            ("C", 0, "I", "ID", ID24[5:-1].encode()),
            ("ID", 0, "I", PAIRS24, ()),
            ("C", 1, "L", "LOGIN", b"a b"),
            ("R", 0, "*", "ID", '("name" "Dovecot")', False),
            ("R", 0, "*", "MULTIPLEX", "0", False),
            ("A", "multiplex_framing"),
            ("C", 2, "M", "NOOP", b""),
        ],
    ),
    Case(
        "multiplex_not_requested_keeps_parsing",
        [(C, wire(id_line(PAIRS23))), (S, wire("* MULTIPLEX 0\nI OK ID completed.\n"))],
        [
            ("C", 0, "I", "ID", id_line(PAIRS23)[5:-1].encode()),
            ("ID", 0, "I", PAIRS23, ()),
            ("R", 0, "*", "MULTIPLEX", "0", False),
            ("R", 0, "I", "OK", "ID completed.", True),
        ],
    ),
    Case(
        "starttls_then_tls_bytes",
        [
            (S, GREETING),
            (C, wire(id_line(PAIRS23) + "S STARTTLS\n")),
            (S, wire("* ID NIL\nI OK ID completed.\nS OK Begin TLS negotiation now.\n") + TLS_BYTES),
            (C, TLS_BYTES),
            (C, 5),
            (S, TLS_BYTES),
        ],
        [
            G_EVENT,
            ("C", 0, "I", "ID", id_line(PAIRS23)[5:-1].encode()),
            ("ID", 0, "I", PAIRS23, ()),
            ("C", 1, "S", "STARTTLS", b""),
            ("R", 0, "*", "ID", "NIL", False),
            ("R", 0, "I", "OK", "ID completed.", True),
            ("R", 1, "S", "OK", "Begin TLS negotiation now.", True),
            ("TLS", 1),
        ],
    ),
    Case(
        "starttls_refused_keeps_parsing",
        [(C, wire("S STARTTLS\n")), (S, wire("S BAD TLS support isn't enabled.\n")), (C, wire("L LOGIN a b\n"))],
        [
            ("C", 0, "S", "STARTTLS", b""),
            ("R", 0, "S", "BAD", "TLS support isn't enabled.", True),
            ("C", 1, "L", "LOGIN", b"a b"),
        ],
    ),
    Case(
        "authenticate_plain_with_continuation",
        [
            (C, wire("L AUTHENTICATE PLAIN\n")),
            (S, wire("+ \n")),
            (C, wire("AGFsaWNlAHNlY3JldA==\n")),
            (S, wire("L OK [CAPABILITY IMAP4rev1 IDLE] Logged in\n")),
            (C, wire("A NOOP\n")),
        ],
        [
            ("C", 0, "L", "AUTHENTICATE", b"PLAIN"),
            ("R", 0, "+", "+", "", False),
            ("R", 0, "L", "OK", "[CAPABILITY IMAP4rev1 IDLE] Logged in", True),
            ("CAP", "imap-capability", ("IMAP4rev1", "IDLE")),
            ("C", 1, "A", "NOOP", b""),
        ],
    ),
    Case(
        "authenticate_cancelled",
        [
            (C, wire("L AUTHENTICATE PLAIN\n")),
            (S, wire("+ \n")),
            (C, wire("*\n")),
            (S, wire("L BAD Authentication aborted by client.\n")),
            (C, wire("A NOOP\n")),
        ],
        [
            ("C", 0, "L", "AUTHENTICATE", b"PLAIN"),
            ("R", 0, "+", "+", "", False),
            ("R", 0, "L", "BAD", "Authentication aborted by client.", True),
            ("C", 1, "A", "NOOP", b""),
        ],
    ),
    Case(
        "capability_command",
        [
            (C, wire("C CAPABILITY\n")),
            (S, wire("* CAPABILITY IMAP4rev1 ID LITERAL+\nC OK Pre-login capabilities listed.\n")),
        ],
        [
            ("C", 0, "C", "CAPABILITY", b""),
            ("R", 0, "*", "CAPABILITY", "IMAP4rev1 ID LITERAL+", False),
            ("CAP", "imap-capability", ("IMAP4rev1", "ID", "LITERAL+")),
            ("R", 0, "C", "OK", "Pre-login capabilities listed.", True),
        ],
    ),
    Case(
        "fetch_big_literal_with_id_text",
        [
            (C, wire("a FETCH 1 BODY[]\n")),
            (S, b"* 1 FETCH (BODY[] {100000}\r\n" + BODY + b")\r\n* 3 EXISTS\r\na OK Fetch completed.\r\n"),
        ],
        [
            ("C", 0, "a", "FETCH", b"1 BODY[]"),
            ("R", 0, "*", "FETCH", "1 (BODY[] {100000})", False),
            ("R", 0, "*", "EXISTS", "3", False),
            ("R", 0, "a", "OK", "Fetch completed.", True),
        ],
    ),
    Case(
        "append_big_literal_with_id_text",
        [(C, b"A APPEND INBOX {100000}\r\n" + BODY + b"\r\nB NOOP\r\n"), (S, wire("A OK Append completed.\n"))],
        [
            ("C", 0, "A", "APPEND", b"INBOX {100000}"),
            ("C", 1, "B", "NOOP", b""),
            ("R", 0, "A", "OK", "Append completed.", True),
        ],
    ),
    Case(
        "idle_done",
        [
            (C, wire("A IDLE\n")),
            (S, wire("+ idling\n* 4 EXISTS\n")),
            (C, wire("DONE\n")),
            (S, wire("A OK Idle completed.\n")),
            (C, wire("B NOOP\n")),
        ],
        [
            ("C", 0, "A", "IDLE", b""),
            ("R", 0, "+", "+", "idling", False),
            ("R", 0, "*", "EXISTS", "4", False),
            ("R", 0, "A", "OK", "Idle completed.", True),
            ("C", 1, "B", "NOOP", b""),
        ],
    ),
    Case(
        "compress_deflate",
        [
            (C, wire("A COMPRESS DEFLATE\n")),
            (S, wire("A OK DEFLATE active\n") + b"\x78\x9c\x01\x02\r\n* OK\r\n"),
            (C, b"\x78\x9c\r\nB NOOP\r\n"),
        ],
        [
            ("C", 0, "A", "COMPRESS", b"DEFLATE"),
            ("R", 0, "A", "OK", "DEFLATE active", True),
            ("A", "compressed"),
        ],
    ),
    Case(
        "gap_in_middle_of_id",
        [
            (S, GREETING),
            (C, b'I ID ("x-originating-ip" "198.'),
            (C, 10),
            (C, wire('" "x-proxy-ttl" "6")\nL LOGIN a b\n')),
            (S, wire("I OK ID completed.\nL OK Logged in\n")),
        ],
        [
            G_EVENT,
            ("A", "content_gap"),
            ("C", 0, "L", "LOGIN", b"a b"),
            ("R", None, "I", "OK", "ID completed.", True),
            ("R", 0, "L", "OK", "Logged in", True),
        ],
    ),
    Case(
        "gap_after_literal_in_started_id",
        [
            (C, b'I ID ("k" {3}\r\nabc "x-'),
            (C, 5),
            (C, wire('b")\nL LOGIN a b\n')),
            (S, wire("I OK ID completed.\nL OK Logged in\n")),
        ],
        [
            ("A", "content_gap"),
            ("C", 1, "L", "LOGIN", b"a b"),
            ("R", None, "I", "OK", "ID completed.", True),
            ("R", 1, "L", "OK", "Logged in", True),
        ],
    ),
    Case(
        "gap_on_server_resyncs_at_reply",
        [
            (C, wire("a NOOP\n")),
            (S, b'* ID ("name" "Dov'),
            (S, 7),
            (S, wire('ecot")\nbogus line\na OK done\n')),
        ],
        [("C", 0, "a", "NOOP", b""), ("A", "content_gap"), ("R", 0, "a", "OK", "done", True)],
    ),
    Case(
        "gap_inside_counted_literals_stays_in_sync",
        [
            (C, b"A APPEND INBOX {1000}\r\n" + b"x" * 100),
            (C, 800),
            (C, b"y" * 100 + b"\r\nB NOOP\r\n"),
            (S, b"* 1 FETCH (BODY[] {500}\r\n" + b"z" * 10),
            (S, 400),
            (S, b"z" * 90 + b")\r\nA OK done\r\n"),
        ],
        [
            ("A", "content_gap"),
            ("C", 0, "A", "APPEND", b"INBOX {1000}"),
            ("C", 1, "B", "NOOP", b""),
            ("A", "content_gap"),
            ("R", 0, "*", "FETCH", "1 (BODY[] {500})", False),
            ("R", 0, "A", "OK", "done", True),
        ],
    ),
    Case(
        "literal_4gb_announced",
        [(C, b"A APPEND INBOX {4294967296}\r\n" + b"\x00" * 3000)],
        [("A", "huge_literal"), ("A", "eof_in_literal")],
    ),
    Case(
        "absurd_literal_digits",
        [(C, b"A APPEND INBOX {" + b"9" * 5000 + b"}\r\n" + b"x" * 100)],
        [("A", "huge_literal"), ("A", "eof_in_literal")],
    ),
    Case(
        "greetings_preauth_and_bad",
        [(S, wire("* PREAUTH [CAPABILITY IMAP4rev1] Logged in as alice\n"))],
        [("G", "PREAUTH", "[CAPABILITY IMAP4rev1] Logged in as alice", ("IMAP4rev1",))],
    ),
    Case(
        "greeting_bye",
        [(S, wire("* BYE Too many connections\n"))],
        [("G", "BYE", "Too many connections", ())],
    ),
    Case(
        "bad_greeting_and_bad_lines",
        [(S, wire("+OK POP3 ready\n\x00\x01garbage\n* \n")), (C, wire("\n(x) NOOP\nnoverb\nA+ NOOP\n"))],
        [
            ("A", "bad_greeting"),
            ("R", None, "+", "+", "OK POP3 ready", False),
            ("A", "bad_reply_line"),
            ("A", "bad_reply_line"),
            ("A", "bad_command_line"),
            ("A", "bad_command_line"),
            ("A", "bad_command_line"),
            ("A", "bad_command_line"),
        ],
    ),
    Case(
        "lines_too_long",
        [(C, wire("A LOGIN " + "x" * 100 + "\nB NOOP\n")), (S, wire("* OK " + "y" * 100 + "\nA OK\n"))],
        [
            ("A", "line_too_long"),
            ("C", 0, "A", "LOGIN", b"x" * 56),
            ("C", 1, "B", "NOOP", b""),
            ("A", "line_too_long"),
            ("R", 0, "A", "OK", "", True),
        ],
        lambda: ImapParser(max_line=64),
        greet=False,
    ),
    Case(
        "lines_of_max_line_and_one_more",
        [(C, b"A NOOP 123456789\r\nB NOOP 1234567890\r\n"), (S, b"* OK 3456789abcd\r\n* OK 3456789abcde\r\n")],
        [
            ("C", 0, "A", "NOOP", b"123456789"),
            ("A", "line_too_long"),
            ("C", 1, "B", "NOOP", b"123456789"),
            ("G", "OK", "3456789abcd", ()),
            ("A", "line_too_long"),
        ],
        lambda: ImapParser(max_line=16),
        greet=False,
    ),
    Case(
        "literal_header_inside_quoted_is_not_a_literal",
        [(C, wire('I ID ("a" "b {3}\nJ NOOP\n'))],
        [
            ("C", 0, "I", "ID", b'("a" "b {3}'),
            ("ID", 0, "I", (("a", "b {3}"),), ("unterminated_quoted", "missing_paren")),
            ("C", 1, "J", "NOOP", b""),
        ],
    ),
    Case(
        "id_literal_over_max_literal_is_truncated",
        [(C, b'I ID ("k" {40}\r\n' + b"v" * 40 + b")\r\n")],
        [("C", 0, "I", "ID", b'("k" {40})'), ("ID", 0, "I", (("k", "v" * 16),), ("literal_truncated",))],
        lambda: ImapParser(max_literal=16),
    ),
    Case(
        "eof_waiting_for_line_after_literal",
        [(C, b'I ID ("k" {2}\r\nab')],
        [("A", "eof_in_line"), ("C", 0, "I", "ID", b'("k" {2}'), ("ID", 0, "I", (("k", "ab"),), ("missing_paren",))],
    ),
    Case(
        "server_eof_inside_line_and_literal",
        [(C, wire("a FETCH 1 BODY[]\n")), (S, wire("* 1 EXISTS\n") + b"* 1 FETCH (BODY[] {10}\r\nabc")],
        [
            ("C", 0, "a", "FETCH", b"1 BODY[]"),
            ("R", 0, "*", "EXISTS", "1", False),
            ("A", "eof_in_literal"),
        ],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_table(case: Case) -> None:
    script, expected = case.script, case.expected
    if case.greet and script[0][0] is C:
        script, expected = [(S, GREETING), *script], [G_EVENT, *expected]
    events = all_chunkings(script, case.make)
    check_invariants(events)
    assert [summary(e) for e in events] == expected


# ----------------------------------------------------------------------------- exact fields


def test_dovecot_example_spans_and_id_params_exact() -> None:
    script: list[Item] = [(S, GREETING), (C, wire(ID24 + 'L LOGIN "alice" "secret"\n'))]
    events = all_chunkings(script)
    id_len = len(wire(ID24))
    cmd = events_of(Command, events)
    assert cmd[0].span == Span(C, 0, id_len) and cmd[0].line_len == id_len
    assert cmd[1].span == Span(C, id_len, id_len + 26)
    (imap_id,) = events_of(ImapId, events)
    assert isinstance(imap_id, ImapId)
    assert imap_id.span == cmd[0].span and imap_id.line_len == id_len
    assert imap_id.params is not None
    assert imap_id.params[1] == IdParam(
        name="x-session-id",
        value="q1w2e3r4t5y6u7i8",
        name_form="quoted",
        value_form="quoted",
        name_octets=12,
        value_octets=16,
        name_wire=14,
        value_wire=18,
        literal_waited=None,
    )
    (greeting,) = events_of(Greeting, events)
    assert greeting.span == Span(S, 0, len(GREETING))


@pytest.mark.parametrize(
    ("wire_value", "form", "octets", "wire_octets"),
    [
        ('"' + "v" * 1024 + '"', "quoted", 1024, 1026),
        ('"' + "v" * 1025 + '"', "quoted", 1025, 1027),
        ('"a\\"b\\\\c"', "quoted", 5, 9),
        ("NIL", "nil", 0, 3),
        ("1.2.3.4", "atom", 7, 7),
    ],
)
def test_value_octet_counts(wire_value: str, form: str, octets: int, wire_octets: int) -> None:
    events = all_chunkings([(C, wire(f'I ID ("x-forward-v" {wire_value})\n'))])
    (imap_id,) = events_of(ImapId, events)
    assert isinstance(imap_id, ImapId) and imap_id.params is not None
    (p,) = imap_id.params
    assert (p.value_form, p.value_octets, p.value_wire) == (form, octets, wire_octets)
    assert (p.name_octets, p.name_wire) == (11, 13)


def test_literal_forms_and_waited_flags() -> None:
    script: list[Item] = [
        (C, b'I ID ({1}\r\n'),
        (S, wire("+ OK\n")),
        (C, b'k {3}\r\nabc {2+}\r\nk2 {4}\r\nv\r\n\x01 "x" {0}\r\n'),
        (S, wire("+ OK\n")),
        (C, b")\r\n"),
    ]
    events = all_chunkings(script)
    (imap_id,) = events_of(ImapId, events)
    assert isinstance(imap_id, ImapId) and imap_id.params is not None
    assert imap_id.problems == ()
    k, k2, x = imap_id.params
    # key waited, value did not: the pair did not wait
    assert (k.name_form, k.value_form, k.literal_waited, k.value_wire) == ("literal", "literal", False, 3)
    assert (k2.name_form, k2.value_form, k2.literal_waited, k2.name_wire) == ("literal+", "literal", False, 2)
    assert k2.value == "v\r\n\x01" and k2.value_octets == 4
    assert (x.name, x.value, x.value_form, x.literal_waited, x.value_wire) == ("x", "", "literal", True, 0)


def test_waited_literal_flag_is_true_only_after_plus() -> None:
    def waited(script: list[Item]) -> bool | None:
        (imap_id,) = events_of(ImapId, all_chunkings(script))
        assert isinstance(imap_id, ImapId) and imap_id.params is not None
        return imap_id.params[0].literal_waited

    head = b'I ID ("x-forward-a" {2}\r\n'
    assert waited([(C, head + b"ab)\r\n")]) is False
    assert waited([(C, head), (S, wire("+ OK\n")), (C, b"ab)\r\n")]) is True
    # a "+" seen before the header does not count
    assert waited([(S, wire("+ OK\n")), (C, head + b"ab)\r\n")]) is False
    # a non-synchronizing literal never waits
    (imap_id,) = events_of(ImapId, all_chunkings([(C, b'I ID ("k" {2+}\r\nab)\r\n')]))
    assert isinstance(imap_id, ImapId) and imap_id.params is not None
    assert imap_id.params[0].literal_waited is None


def test_huge_literal_in_id_is_counted_and_prefix_kept() -> None:
    p = ImapParser(max_literal=8)
    events = run([(C, b'I ID ("k" {4294967296}\r\n' + b"v" * 100)], parser=p)
    assert [summary(e) for e in events] == [("A", "huge_literal"), ("A", "eof_in_literal")]


def test_too_many_pairs_kept() -> None:
    pairs = tuple((f"k{i}", "v") for i in range(ID_MAX_PAIRS_KEPT + 5))
    events = run([(C, wire(id_line(pairs)))], parser=ImapParser(max_line=1 << 20))
    (imap_id,) = events_of(ImapId, events)
    assert isinstance(imap_id, ImapId) and imap_id.params is not None
    assert len(imap_id.params) == ID_MAX_PAIRS_KEPT
    assert imap_id.problems == ("too_many_pairs_kept",)


def test_no_events_after_tls_started_even_for_gaps_and_eof() -> None:
    p = ImapParser()
    out = p.feed(C, wire("S STARTTLS\nX PARTIAL"))
    out += p.feed(S, wire("S OK Begin TLS negotiation now.\n* OK after\n"))
    assert [summary(e) for e in out][-1] == ("TLS", 0)
    assert p.feed(C, wire("\nL LOGIN a b\n")) == []
    assert p.gap(C, 10) == [] and p.gap(S, 10) == []
    assert p.feed(S, wire("L OK\n")) == []
    assert p.eof(C) == [] and p.eof(S) == []


def test_anomaly_excerpts_are_bounded_and_gap_span() -> None:
    p = ImapParser(max_line=1000)
    events = p.feed(C, b"\x00" * 900 + b"\r\n")
    events += p.gap(C, 42)
    (bad, gap) = events
    assert isinstance(bad, Anomaly) and bad.code == "bad_command_line" and len(bad.excerpt) == 256
    assert isinstance(gap, Anomaly) and gap.span == Span(C, 902, 944) and "42" in gap.detail


# ----------------------------------------------------------------------------- bounds


def test_4gb_literal_bounded_memory_and_time() -> None:
    p = ImapParser()
    chunk = b"\x00" * (1 << 20)
    tracemalloc.start()
    t0 = time.perf_counter()
    events = p.feed(C, b"A APPEND INBOX {4294967296}\r\n")
    base = tracemalloc.get_traced_memory()[0]
    for _ in range(200):  # 200 MiB of literal data
        events += p.feed(C, chunk)
    elapsed = time.perf_counter() - t0
    _cur, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert [summary(e) for e in events] == [("A", "huge_literal")]
    assert peak - base < 4 * len(chunk)  # a chunk in flight, never the literal
    assert elapsed < 10


def test_deep_nesting_is_iterative() -> None:
    depth = 100_000
    p = ImapParser(max_line=1 << 20)
    t0 = time.perf_counter()
    events = p.feed(C, b"I ID (" + b"(" * depth + b'"a" {1}\r\nx' + b")" * depth + b' "k" "v")\r\n')
    (imap_id,) = events_of(ImapId, events)
    assert isinstance(imap_id, ImapId)
    assert imap_id.params == () and imap_id.problems == ("nested_list", "key_not_string", "odd_item_count")
    assert time.perf_counter() - t0 < 10


def test_pairs_memory_does_not_grow_with_pair_count() -> None:
    pairs = b'"k" "v" ' * 100_000
    p = ImapParser(max_line=1 << 24)
    tracemalloc.start()
    events = p.feed(C, b"J ID (" + pairs + b")\r\n")
    _cur, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    (imap_id,) = events_of(ImapId, events)
    assert isinstance(imap_id, ImapId) and imap_id.params is not None
    assert len(imap_id.params) == ID_MAX_PAIRS_KEPT and imap_id.problems == ("too_many_pairs_kept",)
    assert peak < 8 * len(pairs)  # a few copies of the line (buffer, line, args), not 100,000 pair objects


@pytest.mark.slow
def test_million_pairs_bounded_time() -> None:
    p = ImapParser(max_line=1 << 24)
    t0 = time.perf_counter()
    events = p.feed(C, b"J ID (" + b'"k" "v" ' * 1_000_000 + b")\r\n")
    (imap_id,) = events_of(ImapId, events)
    assert isinstance(imap_id, ImapId) and imap_id.params is not None and len(imap_id.params) == ID_MAX_PAIRS_KEPT
    assert time.perf_counter() - t0 < 60


def test_many_literal_pairs_across_lines_bounded() -> None:
    p = ImapParser()
    events = p.feed(C, b"I ID ({1}\r\n")
    for _ in range(10):
        events += p.feed(C, b"k {1}\r\n" * 20_000)  # 200,000 one-octet literals: 100,000 pairs
    events += p.feed(C, b"k {1}\r\nk)\r\n")
    (imap_id,) = events_of(ImapId, events)
    assert isinstance(imap_id, ImapId) and imap_id.params is not None
    assert len(imap_id.params) == ID_MAX_PAIRS_KEPT
    assert imap_id.params[0] == IdParam("k", "k", "literal", "literal", 1, 1, 1, 1, False)
    assert imap_id.problems == ("too_many_pairs_kept",)
    (cmd,) = events_of(Command, events)
    assert isinstance(cmd, Command) and len(cmd.args) == 65536 and cmd.line_len == 11 + 200_001 * 7 + 4


def test_pending_commands_are_bounded() -> None:
    p = ImapParser()
    events = p.feed(C, b"".join(b"a%d NOOP\r\n" % i for i in range(1100)))
    assert [summary(e) for e in events if isinstance(e, Anomaly)] == [("A", "too_many_pending")]
    events = p.feed(S, b"* OK hi\r\n* 1 EXISTS\r\na1099 OK\r\na0 OK\r\n")
    replies = [e for e in events if isinstance(e, Reply)]
    assert [r.answers for r in replies] == [1100 - 1024, 1099, None]


# ----------------------------------------------------------------------------- property tests

_DIR = st.sampled_from([C, S])
_FRAGMENTS = st.sampled_from(
    [
        b"I ID (", b'"x-originating-ip" "1.2.3.4" ', b"{3}\r\n", b"{2+}\r\n", b"~{1}\r\n", b"{4294967296}\r\n",
        b")\r\n", b"(", b"NIL ", b'"a\\"b" ', b'"\x00\r"', b"\r\n", b"\n", b"* OK [CAPABILITY ID] hi\r\n",
        b"+ OK\r\n", b"I OK done\r\n", b"* MULTIPLEX 0\r\n", b"S STARTTLS\r\n", b"S OK go\r\n",
        b"L AUTHENTICATE PLAIN\r\n", b"*\r\n", b"A IDLE\r\n", b"DONE\r\n", b"* 1 FETCH (BODY[] {5}\r\n",
        b"abcde", b"\xff\xfe\x03", b"x-multiplex", b" ", b"A COMPRESS DEFLATE\r\n", b"A OK\r\n",
    ]
)
_ITEM = st.one_of(
    st.tuples(_DIR, st.binary(max_size=64)),
    st.tuples(_DIR, st.lists(_FRAGMENTS, max_size=8).map(b"".join)),
    st.tuples(_DIR, st.integers(min_value=1, max_value=50)),
)


@settings(max_examples=200, deadline=None)
@given(script=st.lists(_ITEM, max_size=12), seed=st.integers(0, 2**16), max_line=st.sampled_from([16, 64, 65536]))
def test_random_input_never_raises_and_is_chunking_invariant(script: list[Item], seed: int, max_line: int) -> None:
    def make() -> ImapParser:
        return ImapParser(max_line=max_line, max_literal=8)

    ref = run(script, "whole", parser=make())
    check_invariants(ref)
    assert run(script, "bytewise", parser=make()) == ref
    assert run(script, "random", seed, parser=make()) == ref


def _general_id(args: bytes) -> tuple[tuple[IdParam, ...] | None, tuple[str, ...]]:
    """The ID list read by the general tokenizer only (no fast path)."""
    idl = _IdList()
    idl.line(args)
    return idl.result()


_ID_STRING = st.lists(
    st.sampled_from(
        [b"k", b"x-forward-a", b"", b"(", b")", b" ", b"\\", b'\\"', b"\x00", b"\r", b"\xc3\xa9", b"NIL"]
    ),
    max_size=4,
).map(lambda parts: b'"' + b"".join(parts) + b'"')
_ID_ITEM = st.one_of(_ID_STRING, _ID_STRING, st.sampled_from([b"NIL", b"atom", b"{3}", b"(", b")"]))


_PLAIN_STRING = st.binary(max_size=6).map(
    # no DQUOTE, backslash, NUL, CR or LF inside
    lambda b: b'"' + bytes(c for c in b if c not in b'"\\\x00\r\n') + b'"'
)
_ANY_LIST = st.builds(
    lambda items, seps, tail: b"(" + b"".join(sep + item for sep, item in zip(seps, items)) + tail,
    st.lists(_ID_ITEM, max_size=8),
    st.lists(st.sampled_from([b" ", b"", b"  "]), min_size=9, max_size=9),
    st.sampled_from([b")", b" )", b"", b") x", b")("]),
)
#: Dovecot's form, the fast path's case: quoted strings without escapes, in pairs, one space apart
_PLAIN_LIST = st.lists(_PLAIN_STRING, min_size=1, max_size=10).map(lambda s: b"(" + b" ".join(s) + b")")


@settings(max_examples=300, deadline=None)
@given(args=st.one_of(_PLAIN_LIST, _ANY_LIST))
def test_one_line_id_fast_path_equals_the_tokenizer(args: bytes) -> None:
    """Quoted pairs take one regular expression; anything else the tokenizer: the result is the same."""
    assert _id_params(args) == _general_id(args)


def test_id_fast_path_limits() -> None:
    """Past ID_FAST_PATH_MAX octets or ID_MAX_PAIRS_KEPT pairs the tokenizer decides (same result)."""
    many = b"(" + b" ".join([b'"k" "v"'] * (ID_MAX_PAIRS_KEPT + 1)) + b")"
    assert len(many) < ID_FAST_PATH_MAX
    params, problems = _id_params(many)
    assert params is not None and len(params) == ID_MAX_PAIRS_KEPT and problems == ("too_many_pairs_kept",)
    assert (params, problems) == _general_id(many)
    long = b'("k" "' + b"v" * ID_FAST_PATH_MAX + b'")'
    assert _id_params(long) == _general_id(long)
    params, problems = _id_params(b'("x-session-id" "abc" "x-originating-ip" "\xc3\xa9")')
    assert problems == () and params == (
        IdParam("x-session-id", "abc", "quoted", "quoted", 12, 3, 14, 5, None),
        IdParam("x-originating-ip", "\u00e9", "quoted", "quoted", 16, 2, 18, 4, None),
    )
