"""Event retention (flows/table.py ``_Retention``): what a long flow keeps, and that no rule notices.

The property test runs the real parsers over random conversations built from lines that
exercise every rule reading events (carriers, authentication, STARTTLS, SMTP transactions,
overflow/loop/referral/Invalid FORWARD replies, untagged ID/MULTIPLEX, junk for anomalies),
then runs every rule on the full event list and on what retention keeps (head of 0, 1 and 5
events): the findings, records and chains must be identical.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import pytest
from hypothesis import given, settings, strategies as st

from analyzer.config import Settings
from analyzer.flows import table
from analyzer.flows.model import FlowResult, FlowSummary
from analyzer.flows.table import (
    DROPPED_COMMANDS_REMEMBERED,
    KEPT_AFTER_STARTTLS,
    KEPT_TAGGED,
    KEPT_UNTAGGED,
    KEPT_VERBS,
    NOTABLE_REPLY_RE,
    NOTABLE_REPLY_UPPER,
    _Retention,
)
from analyzer.forwarding.extract import build_records
from analyzer.model import Direction
from analyzer.protocols import make_parser
from analyzer.protocols.base import Command, Event, LocatedEvent, Reply
from analyzer.rules import protocol as rprotocol, run_rules, trust as rtrust, ttl as rttl
from tests.unit.rules.factory import (
    anomaly,
    carrier_events,
    command,
    greeting,
    located,
    make_ctx,
    make_flow,
    reply,
)

C, S = Direction.TO_SERVER, Direction.TO_CLIENT


def retain(events: Sequence[LocatedEvent], head: int, protocol: str = "imap") -> FlowResult:
    """A flow holding what the engine keeps of ``events`` when retention starts after ``head`` of them."""
    flow = make_flow(0, (), protocol)
    s = flow.summary
    kept = list(events[:head])
    ret = _Retention(kept)
    for le in events[head:]:
        ret.add(le, kept, s)
    s.events = kept
    return flow


def _kept_events(flow: FlowResult) -> list[Event]:
    return [le.event for le in flow.summary.events]


def _numbered(events: Sequence[Event]) -> list[LocatedEvent]:
    return [located(e, (i + 1,)) for i, e in enumerate(events)]


# --------------------------------------------------------------------------- what is kept


def test_plain_commands_and_their_replies_are_dropped_and_counted() -> None:
    evs = _numbered([greeting()] + [e for i in range(10) for e in (command(i, "NOOP", tag=f"a{i}"),
                                                                     reply(i, "OK", "done", tag=f"a{i}"))])
    flow = retain(evs, 3)
    s = flow.summary
    assert [type(e).__name__ for e in _kept_events(flow)] == ["Greeting", "Command", "Reply"]
    assert (s.events_elided, s.commands_elided, s.replies_elided) == (18, 9, 9)
    assert len(s.events) + s.events_elided == len(evs)


def test_carriers_auth_and_their_first_final_replies_are_kept() -> None:
    evs = _numbered([
        command(0, "NOOP", tag="a"), reply(0, "OK", "x", tag="a"),
        *[le.event for le in carrier_events(carrier="ID", seq=1, start=100)],
        command(2, "LOGIN", b"u p", tag="L"), reply(2, "OK", "untagged", tag="*", final=False),
        reply(2, "OK", "Logged in", tag="L"), reply(2, "OK", "again", tag="L"),
        command(3, "FETCH", b"1 BODY[]", tag="f"), reply(3, "OK", "fetched", tag="f"),
    ])
    kept = _kept_events(retain(evs, 0))
    verbs = [e.verb for e in kept if isinstance(e, Command)]
    texts = [e.text for e in kept if isinstance(e, Reply)]
    assert verbs == ["ID", "LOGIN"]
    assert texts == ["Trusted ID completed.", "untagged", "Logged in"]  # not "again": after the first final


def test_notable_reply_puts_its_dropped_command_back_in_place() -> None:
    evs = _numbered([
        command(0, "NOOP", tag="a"), command(1, "APPEND", b"x", tag="b"), command(2, "NOOP", tag="c"),
        reply(0, "OK", "done", tag="a"),
        reply(1, "NO", "Literal size too large", tag="b"),
    ])
    flow = retain(evs, 0)
    kept = flow.summary.events
    assert [le.frames[0] for le in kept] == [2, 3, 5]  # APPEND and, as "last command", the NOOP c; in order
    assert flow.summary.commands_elided == 1 and flow.summary.replies_elided == 1


def test_rcpt_with_xrcptforward_keeps_its_command_and_reply() -> None:
    evs = _numbered([command(0, "RCPT", b"TO:<a@b>"), reply(0, "250", "ok")]
                    + [le.event for le in carrier_events(carrier="XRCPTFORWARD", seq=1, start=50)]
                    + [command(2, "RCPT", b"TO:<c@d>"), reply(2, "250", "ok")])
    flow = retain(evs, 0, "lmtp")
    kept = _kept_events(flow)
    assert [(type(e).__name__, getattr(e, "seq", getattr(e, "answers", None))) for e in kept] == [
        ("Command", 1), ("RcptForward", 1), ("Reply", 1)]
    s = flow.summary
    recs = build_records(0, 0, "lmtp", s.client, s.server, s.events)
    assert len(recs) == 1 and recs[0].reply is not None and recs[0].excerpt.startswith(b"RCPT TO:")


def test_flags_keep_what_follows_xclient_starttls_invalid_forward_and_anomalies() -> None:
    cmds = [command(0, "XCLIENT", b"ADDR=1.2.3.4"), command(1, "NOOP"), command(2, "NOOP")]
    assert [e.seq for e in _kept_events(retain(_numbered(cmds), 0)) if isinstance(e, Command)] == [0, 1]
    tls = [command(0, "STARTTLS")] + [command(i, "NOOP") for i in range(1, KEPT_AFTER_STARTTLS + 5)]
    kept = [e for e in _kept_events(retain(_numbered(tls), 0)) if isinstance(e, Command)]
    assert len(kept) == 1 + KEPT_AFTER_STARTTLS
    inv = [reply(0, "501", "5.5.4 Invalid FORWARD parameter"), reply(None, "250", "x", final=False),
           reply(1, "250", "next"), reply(2, "250", "after")]
    assert [e.text for e in _kept_events(retain(_numbered(inv), 0)) if isinstance(e, Reply)] == [
        "5.5.4 Invalid FORWARD parameter", "next"]
    gap = [anomaly("content_gap"), reply(None, "OK", "framed", final=False), reply(None, "OK", "later", final=False)]
    evs = [located(gap[0], ())] + [located(e, (i + 2,)) for i, e in enumerate(gap[1:])]
    assert [getattr(e, "text", "") for e in _kept_events(retain(evs, 0))] == ["", "framed"]


def test_head_sets_the_flags_for_what_follows() -> None:
    evs = _numbered([command(0, "XCLIENT", b"ADDR=1.2.3.4"), command(1, "NOOP"), command(2, "NOOP")])
    assert [e.seq for e in _kept_events(retain(evs, 1)) if isinstance(e, Command)] == [0, 1]
    evs = _numbered([command(0, "LOGIN", b"u p", tag="L"), command(1, "NOOP", tag="n"),
                     reply(0, "OK", "in", tag="L")])
    assert len(retain(evs, 2).summary.events) == 3  # the LOGIN of the head still wants its reply


def test_dropped_commands_remembered_are_bounded() -> None:
    n = 5 * DROPPED_COMMANDS_REMEMBERED
    evs = _numbered([command(i, "NOOP", tag=f"t{i}") for i in range(n)])
    kept: list[LocatedEvent] = []
    ret = _Retention(kept)
    s = make_flow(0, ()).summary
    for le in evs:
        ret.add(le, kept, s)
    assert kept == [] and s.commands_elided == n
    assert len(ret.pending) == DROPPED_COMMANDS_REMEMBERED


# --------------------------------------------------------------------------- the rules do not notice


def test_constants_cover_what_the_rules_read() -> None:
    """The retention tables name every verb, tag and reply text the rules look for (drift check)."""
    assert rprotocol.CARRIER_VERBS <= KEPT_VERBS
    assert rprotocol._AUTH_VERBS_IMAP | rprotocol._AUTH_VERBS_POP3 | rprotocol._TX_RESET <= KEPT_VERBS
    assert {"MAIL", "DATA", "BDAT", "STARTTLS", "STLS"} <= KEPT_VERBS
    assert {(t, v) for t, vs in rprotocol.DOVECOT_PROXY_TAGS.items() for v in vs} <= KEPT_TAGGED
    assert rprotocol.MAX_LISTED <= KEPT_AFTER_STARTTLS
    assert {"ID", "MULTIPLEX"} <= KEPT_UNTAGGED
    texts = re.sub(r"\\(.)", r"\1", rprotocol.OVERFLOW_REPLY_RE.pattern).split("|")
    texts += rttl.LMTP_LOOP_RE.pattern.split("|")
    texts += [rttl.ACCOUNT_UNAVAILABLE, rprotocol.INVALID_FORWARD_TEXT, rtrust.IMAP_TRUSTED_OK, "ID completed"]
    for t in texts:
        assert NOTABLE_REPLY_RE.search(t), t
    assert NOTABLE_REPLY_UPPER == rtrust.REFERRAL


_LINES: dict[str, tuple[list[bytes], list[bytes]]] = {
    "imap": ([
        b"a NOOP", b"b FETCH 1 BODY[]", b"C CAPABILITY", b"L LOGIN u p", b"S STARTTLS", b"x BOGUS x",
        b'I ID ("x-originating-ip" "1.2.3.4" "x-originating-port" "5" "x-session-id" "s1" "x-proxy-ttl" "4")',
        b'J ID ("x-originating-ip" "1.2.3.5" "x-proxy-ttl" "0" "x-multiplex" "0")', b"L AUTHENTICATE PLAIN",
        b"\x00\xff\x80 junk", b"a",
    ], [
        b"a OK done", b"b NO [REFERRAL imap://x/] go", b"I OK Trusted ID completed.", b"I OK ID completed.",
        b"I NO Input buffer full", b"J BAD Invalid ID parameters", b"L OK Logged in",
        b"L NO [UNAVAILABLE] Account is temporarily unavailable.", b'* ID ("name" "Dovecot" "version" "2.4.1")',
        b"* MULTIPLEX 0", b"* MULTIPLEX 1", b"* 1 EXISTS", b"* BYE Input buffer full, aborting", b"+ go ahead",
        b"C OK done", b"x BAD Line too long", b"* PREAUTH ready", b"\xff\xfe junk",
    ]),
    "pop3": ([
        b"NOOP", b"STAT", b"USER u", b"PASS p", b"CAPA", b"STLS", b"XOIP 1.2.3.4",
        b"XCLIENT ADDR=1.2.3.4 PORT=5 SESSION=s TTL=4", b"XCLIENT ADDR=1.2.3.4 TTL=0", b"\x00\x01 junk",
    ], [
        b"+OK", b"+OK Updated", b"+OK You are not from trusted IP", b"-ERR Input buffer full",
        b"-ERR [REFERRAL pop://x/] go", b"-ERR [UNAVAILABLE] Account is temporarily unavailable.", b"-ERR no",
        b"+OK [XCLIENT] Dovecot ready.", b"\xff junk",
    ]),
    "smtp": ([
        b"EHLO x", b"HELO x", b"MAIL FROM:<a@b>", b"RCPT TO:<c@d>", b"DATA", b"RSET", b"NOOP", b"VRFY x",
        b"STARTTLS", b"XCLIENT ADDR=1.2.3.4 PORT=5 TTL=4 SESSION=s", b"XCLIENT NAME=x ADDR=1.2.3.5",
        b"XFORWARD ADDR=1.2.3.4", b"BDAT 10 LAST", b"\x00 junk",
    ], [
        b"220 mx ESMTP Postfix", b"250-mx\r\n250-XCLIENT ADDR PORT TTL NAME\r\n250 XRCPTFORWARD", b"250 2.0.0 Ok",
        b"501 5.5.4 Invalid FORWARD parameter", b"503 5.5.1 Error: MAIL first",
        b"554 5.4.6 Proxying appears to be looping (TTL=0)", b"550 5.7.14 insufficient authorization",
        b"451 4.3.0 Account is temporarily unavailable", b"500 5.5.2 Line too long", b"354 go", b"junk",
    ]),
    "lmtp": ([
        b"LHLO x", b"MAIL FROM:<a@b>", b"RCPT TO:<c@d>", b"RCPT TO:<c@d> XRCPTFORWARD=dGVuYW50PWFjbWU=",
        b"RCPT TO:<e@f> XRCPTFORWARD=%%%", b"DATA", b"RSET", b"NOOP", b"XCLIENT ADDR=1.2.3.4 TTL=5", b"\x00",
    ], [
        b"220 backend Dovecot ready.", b"250-backend\r\n250-XCLIENT ADDR PORT TTL\r\n250 XRCPTFORWARD", b"250 2.1.5 OK",
        b"554 5.4.6 Proxying loops to itself", b"451 4.3.0 Account is temporarily unavailable", b"550 5.7.14 no",
        b"500 5.5.2 Line too long", b"250 ok",
    ]),
}


def _conversation(protocol: str, script: Sequence[tuple[bool, int]]) -> list[LocatedEvent]:
    client, server = _LINES["smtp" if protocol == "submission" else protocol]
    parser = make_parser(protocol)
    events: list[Event] = []
    events.extend(parser.feed(S, server[0] + b"\r\n" if protocol != "imap" else b"* OK [CAPABILITY IMAP4rev1 ID] "
                              b"Dovecot ready.\r\n"))
    for to_server, i in script:
        lines = client if to_server else server
        events.extend(parser.feed(C if to_server else S, lines[i % len(lines)] + b"\r\n"))
    events.extend(parser.eof(C))
    events.extend(parser.eof(S))
    return [located(e, (i + 1,) if i % 7 else ()) for i, e in enumerate(events)]  # some events without frames


def _outcome(flow: FlowResult) -> tuple[object, ...]:
    s = flow.summary
    recs = build_records(flow.id, s.capture, s.protocol, s.client, s.server, s.events)
    ctx = make_ctx(recs, [flow])
    found = run_rules(ctx)
    return found, recs, ctx.chains


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["imap", "pop3", "smtp", "submission", "lmtp"]),
       st.lists(st.tuples(st.booleans(), st.one_of(st.integers(0, 1), st.integers(0, 30))), max_size=60))
def test_rules_see_the_same_on_what_is_kept(protocol: str, script: list[tuple[bool, int]]) -> None:
    """Findings, records and chains are the same on the kept events as on all of them."""
    events = _conversation(protocol, script)
    full = make_flow(0, events, protocol)
    want = _outcome(full)
    for head in (0, 1, 5):
        flow = retain(events, min(head, len(events)), protocol)
        s = flow.summary
        assert len(s.events) + s.events_elided == len(events)
        assert s.events_elided == s.commands_elided + s.replies_elided
        assert _outcome(flow) == want, head


@pytest.mark.parametrize("n", [0, 1, 300, 1000])
def test_engine_keeps_the_head_then_retains(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Engine._locate: the first EVENTS_KEPT_FIRST events are kept whole, retention decides the rest."""
    monkeypatch.setattr(table, "EVENTS_KEPT_FIRST", n)
    events = _conversation("imap", [(True, 0), (False, 0)] * 200)
    summary: FlowSummary = make_flow(0, (), "imap").summary
    fl = table._Flow(b"c", summary, False)
    eng = table.Engine(Settings())
    eng._locate(fl, [le.event for le in events])
    kept = len(summary.events)
    assert kept + summary.events_elided == len(events)
    assert kept == min(len(events), max(n, 1))
