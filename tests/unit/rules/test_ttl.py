"""Tests for analyzer.rules.ttl: one positive and one nearby negative case per rule."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.model import Direction
from analyzer.rules import RuleContext, ttl
from analyzer.rules.base import Finding, Severity
from tests.unit.rules.factory import (
    ID_PARAMS,
    POP3_PARAMS,
    SUBMISSION_PARAMS,
    capabilities,
    carrier_events,
    command,
    ctx_from_wire,
    flow_and_records,
    located,
    make_ctx,
    make_record,
    reply,
)


def run(ctx: RuleContext, rule: str) -> list[Finding]:
    return [f for f in ttl.check(ctx) if f.rule == rule]


def facts(f: Finding) -> dict[str, str]:
    return dict(f.facts)


def id_ttl(value: str | None) -> list[tuple[str, str | None]]:
    return [(k, value) if k == "x-proxy-ttl" else (k, v) for k, v in ID_PARAMS]


def id_without_ttl() -> list[tuple[str, str | None]]:
    return [(k, v) for k, v in ID_PARAMS if k != "x-proxy-ttl"]


# --- A-C4: syntax ---------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "reason"), [
    ("+6", "sign"), ("-1", "sign"), (" 6", "spaces"), ("6 ", "spaces"), ("abc", "not_decimal"), ("", "empty"),
    ("4294967296", "overflow"), ("99999999999", "overflow"), ("٦", "not_decimal"),
])
def test_ttl_not_decimal(raw: str, reason: str) -> None:
    rec = make_record(params=id_ttl(raw))
    [f] = run(make_ctx([rec]), "ttl.not_decimal")
    assert facts(f)["reason"] == reason and facts(f)["ttl_raw"] == raw and f.severity is Severity.MEDIUM


def test_ttl_leading_zero_is_low() -> None:
    rec = make_record(carrier="XCLIENT", protocol="pop3", params=[("ADDR", "198.51.100.7"), ("TTL", "06")])
    [f] = run(make_ctx([rec]), "ttl.not_decimal")
    assert f.severity is Severity.LOW and facts(f)["reason"] == "leading_zeros"


def test_ttl_plain_decimal_is_fine() -> None:
    assert run(make_ctx([make_record(params=id_ttl("4294967295"))]), "ttl.not_decimal") == []


# --- A-C4: zero -----------------------------------------------------------------------------


def test_ttl_zero() -> None:
    [f] = run(make_ctx([make_record(params=id_ttl("0"))]), "ttl.zero")
    assert facts(f)["key"] == "x-proxy-ttl" and "BAD Invalid ID parameters" in f.message
    lm = make_record(carrier="XCLIENT", protocol="lmtp", params=[("ADDR", "2001:db8::25"), ("TTL", "0")])
    [g] = run(make_ctx([lm]), "ttl.zero")
    assert facts(g)["key"] == "TTL" and "554 5.4.6" in g.message


def test_ttl_one_is_not_zero() -> None:
    assert run(make_ctx([make_record(params=id_ttl("1"))]), "ttl.zero") == []


# --- A-C4: missing --------------------------------------------------------------------------


def test_ttl_missing_in_dovecot_form_id() -> None:
    [f] = run(make_ctx([make_record(params=id_without_ttl())]), "ttl.missing")
    assert facts(f)["key"] == "x-proxy-ttl"


def test_ttl_missing_in_dovecot_form_pop3() -> None:
    params = [(k, v) for k, v in POP3_PARAMS if k != "TTL"]
    [f] = run(make_ctx([make_record(carrier="XCLIENT", protocol="pop3", params=params)]), "ttl.missing")
    assert facts(f)["key"] == "TTL"


def test_nil_ttl_is_not_missing() -> None:
    assert run(make_ctx([make_record(params=id_ttl(None))]), "ttl.missing") == []


def test_ttl_not_required_outside_dovecot_form() -> None:
    spoof = make_record(tag="a001", params=[("x-originating-ip", "198.51.100.7")])
    present = make_record()
    assert run(make_ctx([spoof, present]), "ttl.missing") == []


def smtp_ctx(params: Sequence[tuple[str, str | None]], advertised: str,
             second: Sequence[tuple[str, str | None]] | None = None) -> RuleContext:
    evs = [located(capabilities((advertised, "PIPELINING")), (2,)),
           *carrier_events(carrier="XCLIENT", protocol="submission", params=params, seq=1, frames=(4,),
                           reply=None if second else ("220", "backend Dovecot ready."))]
    if second is not None:
        evs += carrier_events(carrier="XCLIENT", protocol="submission", params=second, seq=2, frames=(5,),
                              start=600, reply_frames=(7,))
    flow, recs = flow_and_records(0, evs, "submission")
    return make_ctx(recs, [flow])


def test_ttl_missing_when_advertised() -> None:
    params = [(k, v) for k, v in SUBMISSION_PARAMS if k != "TTL"]
    [f] = run(smtp_ctx(params, "XCLIENT ADDR PORT TTL SESSION FORWARD"), "ttl.missing")
    assert facts(f)["xclient_commands"] == "1"


def test_ttl_in_split_xclient_or_not_advertised() -> None:
    params = [(k, v) for k, v in SUBMISSION_PARAMS if k != "TTL"]
    assert run(smtp_ctx(params, "XCLIENT ADDR PORT SESSION FORWARD"), "ttl.missing") == []
    split = smtp_ctx(params, "XCLIENT ADDR PORT TTL SESSION FORWARD", second=[("TTL", "6")])
    assert run(split, "ttl.missing") == []


# --- A-C4: first-hop start values ----------------------------------------------------------


def test_unusual_first_hop_ttl() -> None:
    [f] = run(make_ctx([make_record(params=id_ttl("9"))]), "ttl.unusual_first_hop")
    assert f.severity is Severity.INFO and facts(f)["ttl"] == "9"
    lm = make_record(carrier="XCLIENT", protocol="lmtp", params=[("TTL", "6")])
    assert [facts(f)["expected"] for f in run(make_ctx([lm]), "ttl.unusual_first_hop")] == ["5"]


def test_start_values_and_later_hops_are_fine() -> None:
    first = make_record(params=id_ttl("6"), flow=0, frames=(4,))
    later = make_record(params=id_ttl("5"), flow=1, frames=(9,), ts_ns=first.ts_ns + 10**6)
    lmtp = make_record(carrier="XCLIENT", protocol="lmtp", flow=2)
    assert run(make_ctx([first, later, lmtp]), "ttl.unusual_first_hop") == []


# --- A-S12 and login loop replies ------------------------------------------------------------


def lmtp_loop_ctx(text: str) -> RuleContext:
    evs = [*carrier_events(carrier="XCLIENT", protocol="lmtp", params=[("ADDR", "2001:db8::25"), ("TTL", "0")],
                           frames=(3,), reply_frames=(4,)),
           located(command(1, "LHLO", b"proxy", start=200), (5,)), located(reply(1, "250", "ok"), (6,)),
           located(command(2, "MAIL", b"FROM:<s@example.org>", start=300), (7,)),
           located(reply(2, "250", "2.1.0 OK"), (8,)),
           located(command(3, "RCPT", b"TO:<u@example.com>", start=400), (9,)),
           located(reply(3, "554", text), (10,))]
    flow, recs = flow_and_records(0, evs, "lmtp")
    return make_ctx(recs, [flow])


def test_lmtp_loop_reply() -> None:
    [f] = run(lmtp_loop_ctx("5.4.6 <u@example.com> Proxying appears to be looping (TTL=0)"), "ttl.lmtp_loop_reply")
    assert f.frames == (9,) and facts(f)["reply_frames"] == "10" and facts(f)["forwarded_ttl"] == "0"


def test_lmtp_other_554_is_not_a_loop() -> None:
    assert run(lmtp_loop_ctx("5.7.1 <u@example.com> Relay access denied"), "ttl.lmtp_loop_reply") == []


def login_refused_ctx(ttl_value: str, forwarding: bool = True) -> RuleContext:
    evs = [*carrier_events(params=id_ttl(ttl_value) if forwarding else [("name", "client")],
                           tag="I" if forwarding else "A1", frames=(3,), reply_frames=(5,)),
           located(command(1, "LOGIN", b"alice secret", tag="L", start=300), (4,)),
           located(reply(1, "NO", "[SERVERBUG] Account is temporarily unavailable.", tag="L"), (6,))]
    flow, recs = flow_and_records(0, evs, "imap")
    return make_ctx(recs, [flow])


def test_proxy_refused_with_spent_ttl() -> None:
    [f] = run(login_refused_ctx("1"), "ttl.proxy_refused_reply")
    assert f.severity is Severity.MEDIUM and f.frames == (4,) and facts(f)["reply_frames"] == "6"


def test_proxy_refused_with_budget_left_is_low() -> None:
    [f] = run(login_refused_ctx("5"), "ttl.proxy_refused_reply")
    assert f.severity is Severity.LOW


def test_unavailable_without_forwarding_is_not_reported() -> None:
    assert run(login_refused_ctx("1", forwarding=False), "ttl.proxy_refused_reply") == []


def test_pop3_refusal_from_real_parser() -> None:
    c, s = Direction.TO_SERVER, Direction.TO_CLIENT
    ctx = ctx_from_wire("pop3", [
        (s, b"+OK [XCLIENT] Dovecot ready.\r\n"),
        (c, b"XCLIENT ADDR=198.51.100.7 PORT=51234 SESSION=QCIgGCQKIsjGM2QH TTL=1\r\nUSER alice\r\n"),
        (s, b"+OK Updated\r\n+OK\r\n"), (c, b"PASS secret\r\n"),
        (s, b"-ERR Account is temporarily unavailable.\r\n"),
    ])
    [f] = run(ctx, "ttl.proxy_refused_reply")
    assert f.severity is Severity.MEDIUM and facts(f)["forwarded_ttl"] == "1"


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["imap", "pop3", "submission", "lmtp"]), st.binary(max_size=400), st.binary(max_size=300))
def test_random_bytes_never_raise(protocol: str, client: bytes, server: bytes) -> None:
    prefix = {"imap": b'I ID ("x-proxy-ttl" ', "pop3": b"XCLIENT TTL=", "submission": b"XCLIENT TTL=",
              "lmtp": b"XCLIENT TTL="}[protocol]
    ctx = ctx_from_wire(protocol, [(Direction.TO_SERVER, prefix + client), (Direction.TO_CLIENT, server)])
    for f in ttl.check(ctx):
        assert f.rule.startswith("ttl.")
