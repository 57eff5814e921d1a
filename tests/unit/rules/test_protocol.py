"""Tests for analyzer.rules.protocol: one positive and one nearby negative case per rule."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.model import Direction
from analyzer.protocols.base import LocatedEvent
from analyzer.rules import RuleContext, protocol
from analyzer.rules.base import Finding, Severity
from tests.unit.rules.factory import (
    ID_PARAMS,
    anomaly,
    carrier_events,
    command,
    ctx_from_wire,
    flow_and_records,
    greeting,
    id_param,
    located,
    make_ctx,
    make_record,
    reply,
)

C, S = Direction.TO_SERVER, Direction.TO_CLIENT


def run(ctx: RuleContext, rule: str) -> list[Finding]:
    return [f for f in protocol.check(ctx) if f.rule == rule]


def facts(f: Finding) -> dict[str, str]:
    return dict(f.facts)


def ctx_of(events: list[LocatedEvent], proto: str = "imap") -> RuleContext:
    flow, recs = flow_and_records(0, events, proto)
    return make_ctx(recs, [flow])


def wire(*items: tuple[Direction, str]) -> list[tuple[Direction, bytes]]:
    return [(d, t.replace("\n", "\r\n").encode("latin-1")) for d, t in items]


ID_LINE = 'I ID ("x-session-id" "QCIgGCQKIsjGM2QH" "x-originating-ip" "198.51.100.7" "x-proxy-ttl" "6")\n'


# --- anomalies ------------------------------------------------------------------------------


def test_gap_near_forwarding() -> None:
    evs = [*carrier_events(frames=(3,), reply_frames=(6,)), located(anomaly("content_gap", 250, 400), (4,))]
    [f] = run(ctx_of(evs), "protocol.gap_near_forwarding")
    assert facts(f)["gap_start"] == "250" and facts(f)["near_command_frames"] == "3" and f.frames == (4,)


def test_gap_far_from_forwarding_is_info() -> None:
    evs = [*carrier_events(frames=(3,), reply_frames=(6,)),
           located(command(1, "LOGIN", b"a b", tag="L", start=300), (7,)),
           located(anomaly("content_gap", 50_000, 50_100), (8,))]
    ctx = ctx_of(evs)
    assert run(ctx, "protocol.gap_near_forwarding") == []
    [f] = run(ctx, "protocol.parser_anomaly")
    assert facts(f)["code"] == "content_gap" and f.severity is Severity.INFO


def test_gap_where_forwarding_was_expected_but_not_seen() -> None:
    evs = [located(greeting("+OK", "[XCLIENT] Dovecot ready.", ("XCLIENT",)), (1,)),
           located(anomaly("content_gap", 0, 120), (2,)),
           located(command(0, "USER", b"alice", start=120), (3,))]
    [f] = run(ctx_of(evs, "pop3"), "protocol.gap_near_forwarding")
    assert facts(f)["records_seen"] == "0" and "[XCLIENT]" in f.message


def test_gap_that_swallowed_the_id() -> None:
    evs = [located(greeting("OK", "[CAPABILITY IMAP4rev1 ID] ready", ("IMAP4rev1", "ID")), (1,)),
           located(anomaly("content_gap", 0, 44), ()),
           located(reply(None, "OK", "Trusted ID completed.", tag="I"), (7,))]
    [f] = run(ctx_of(evs), "protocol.gap_near_forwarding")
    assert f.frames == (7,) and facts(f)["first_frame_after_gap"] == "7" and "Trusted ID" in f.message


def test_gap_in_ordinary_login_is_info() -> None:
    evs = [located(greeting("+OK", "Dovecot ready."), (1,)), located(anomaly("content_gap", 0, 120), (2,)),
           located(command(0, "USER", b"alice", start=120), (3,))]
    ctx = ctx_of(evs, "pop3")
    assert run(ctx, "protocol.gap_near_forwarding") == []
    assert [facts(f)["code"] for f in run(ctx, "protocol.parser_anomaly")] == ["content_gap"]


def test_carrier_line_too_long() -> None:
    evs = carrier_events(frames=(3,), reply=None)
    sp = evs[0].event.span
    evs.append(located(anomaly("line_too_long", sp.start, sp.end, detail="client line of 70000 bytes"), (3,)))
    [f] = run(ctx_of(evs), "protocol.carrier_line_too_long")
    assert facts(f)["code"] == "line_too_long" and f.severity is Severity.MEDIUM


def test_long_ordinary_line_is_info() -> None:
    evs = [located(command(0, "APPEND", b"x", tag="a"), (3,)), located(anomaly("line_too_long", 0, 9), (3,))]
    ctx = ctx_of(evs)
    assert run(ctx, "protocol.carrier_line_too_long") == []
    assert [facts(f)["code"] for f in run(ctx, "protocol.parser_anomaly")] == ["line_too_long"]


def test_starttls_injection_of_xclient_is_high() -> None:
    ctx = ctx_from_wire("submission", wire(
        (S, "220 b ESMTP\n"), (C, "EHLO a\n"), (S, "250-b\n250 STARTTLS\n"),
        (C, "STARTTLS\nXCLIENT ADDR=1.2.3.4\n"), (S, "220 go\n")))
    [f] = run(ctx, "protocol.starttls_injection")
    assert f.severity is Severity.HIGH and facts(f)["injected"] == "XCLIENT" and f.frames == (6,)


def test_pop3_stls_injection_and_clean_stls() -> None:
    ctx = ctx_from_wire("pop3", wire((S, "+OK hi\n"), (C, "STLS\nUSER a\n"), (S, "+OK go\n")))
    [f] = run(ctx, "protocol.starttls_injection")
    assert f.severity is Severity.MEDIUM and facts(f)["code"] == "command_after_stls"
    clean = ctx_from_wire("pop3", wire((S, "+OK hi\n"), (C, "STLS\n"), (S, "+OK go\n")))
    assert run(clean, "protocol.starttls_injection") == []


def test_parser_anomalies_are_aggregated_per_code() -> None:
    evs = [located(anomaly("bad_command_line", 0, 5), (2,)), located(anomaly("bad_command_line", 5, 9), (3,))]
    [f] = run(ctx_of(evs), "protocol.parser_anomaly")
    assert facts(f)["count"] == "2" and f.frames == (2,)
    assert run(ctx_of([]), "protocol.parser_anomaly") == []


# --- A-I7 -----------------------------------------------------------------------------------


def test_multiplex_without_request() -> None:
    ctx = ctx_from_wire("imap", wire((S, "* OK [CAPABILITY IMAP4rev1 ID] hi\n"), (C, ID_LINE),
                                     (S, "* MULTIPLEX 0\nI OK Trusted ID completed.\n")))
    [f] = run(ctx, "protocol.imap_multiplex_unexpected")
    assert facts(f)["requested"] == "False"
    v1 = ctx_from_wire("imap", wire((S, "* OK hi\n"), (C, "a LOGIN u p\n"), (S, "* MULTIPLEX 1\na OK\n")))
    [g] = run(v1, "protocol.imap_multiplex_unexpected")
    assert facts(g)["version"] == "1"


def test_requested_multiplex_is_fine() -> None:
    line = 'I ID ("x-multiplex" "0" "x-originating-ip" "198.51.100.7")\n'
    ctx = ctx_from_wire("imap", wire((S, "* OK [CAPABILITY IMAP4rev1 ID] hi\n"), (C, line),
                                     (S, "* MULTIPLEX 0\nI OK Trusted ID completed.\n")))
    assert run(ctx, "protocol.imap_multiplex_unexpected") == []


# --- A-I4, A-I5, A-I6 syntax, A-I8 -----------------------------------------------------------


def test_imap_id_rejected() -> None:
    [f] = run(make_ctx([make_record(reply=("BAD", "Invalid ID parameters"))]), "protocol.imap_id_rejected")
    assert facts(f)["fatal"] == "False" and facts(f)["reply_frames"] == "6"
    [g] = run(make_ctx([make_record(reply=("NO", "[SERVERBUG] Failed to reload configuration"))]),
              "protocol.imap_id_rejected")
    assert facts(g)["fatal"] == "True" and "aborts the login" in g.message


def test_imap_id_ok_or_end_client_rejected() -> None:
    end_client = make_record(tag="a", params=[("name", "x")], reply=("BAD", "x"))
    assert run(make_ctx([make_record(), end_client]), "protocol.imap_id_rejected") == []


def test_imap_id_syntax() -> None:
    [f] = run(make_ctx([make_record(params=ID_PARAMS, id_problems=("odd_item_count",))]), "protocol.imap_id_syntax")
    assert facts(f)["problems"] == "odd_item_count" and f.severity is Severity.MEDIUM
    end_client = make_record(tag="a", params=[("name", "x")], id_problems=("nested_list",))
    [g] = run(make_ctx([end_client]), "protocol.imap_id_syntax")
    assert g.severity is Severity.INFO


def test_imap_id_tolerated_forms_are_not_syntax_errors() -> None:
    rec = make_record(params=ID_PARAMS, id_problems=("atom", "empty_list", "literal8"))
    assert run(make_ctx([rec]), "protocol.imap_id_syntax") == []


def test_literal_not_waited() -> None:
    rec = make_record(id_params=[id_param("x-originating-ip", "198.51.100.7"), id_param("x-forward-a", "x\ny")])
    [f] = run(make_ctx([rec]), "protocol.imap_literal_not_waited")
    assert facts(f)["key"] == "x-forward-a" and facts(f)["value_octets"] == "3"


def test_literal_that_waited_is_fine() -> None:
    rec = make_record(id_params=[id_param("x-originating-ip", "198.51.100.7"),
                                 id_param("x-forward-a", "x\ny", literal_waited=True)])
    assert run(make_ctx([rec]), "protocol.imap_literal_not_waited") == []
    assert run(make_ctx([rec]), "protocol.imap_literal_in_id") == []


def test_literal_in_id_from_other_sender() -> None:
    rec = make_record(tag="a01", id_params=[id_param("x-originating-ip", "6.6.6.6", value_form="literal",
                                                     literal_waited=True)])
    [f] = run(make_ctx([rec]), "protocol.imap_literal_in_id")
    assert facts(f)["tag"] == "a01"
    big = make_record(id_params=[id_param("x-forward-a", "v" * 5000, value_form="literal+")])
    [g] = run(make_ctx([big]), "protocol.imap_literal_in_id")
    assert facts(g)["limit"] == "4096"


def test_imap_id_after_auth() -> None:
    ctx = ctx_from_wire("imap", wire((S, "* OK [CAPABILITY IMAP4rev1 ID] hi\n"), (C, "L LOGIN u p\n"),
                                     (S, "L OK Logged in\n"), (C, ID_LINE), (S, "I OK ID completed.\n")))
    [f] = run(ctx, "protocol.imap_id_after_auth")
    assert facts(f)["auth_frames"]


def test_imap_id_before_auth_is_fine() -> None:
    ctx = ctx_from_wire("imap", wire((S, "* OK [CAPABILITY IMAP4rev1 ID] hi\n"), (C, ID_LINE + "L LOGIN u p\n"),
                                     (S, "I OK Trusted ID completed.\nL OK Logged in\n")))
    assert run(ctx, "protocol.imap_id_after_auth") == []
    assert run(ctx, "protocol.imap_second_id") == []


def test_imap_second_id() -> None:
    ctx = ctx_from_wire("imap", wire((S, "* OK [CAPABILITY IMAP4rev1 ID] hi\n"), (C, 'a ID ("name" "x")\n'),
                                     (S, "a OK ID completed.\n"), (C, ID_LINE), (S, "I OK ID completed.\n")))
    [f] = run(ctx, "protocol.imap_second_id")
    assert facts(f)["first_id_frames"]
    assert run(ctx, "protocol.imap_id_after_auth") == []


# --- POP3 -----------------------------------------------------------------------------------


def test_pop3_xoip() -> None:
    ctx = ctx_from_wire("pop3", wire((S, "+OK hi\n"), (C, "XOIP 198.51.100.7\n"), (S, "+OK\n")))
    [f] = run(ctx, "protocol.pop3_xoip")
    assert facts(f)["addr"] == "198.51.100.7"
    assert run(make_ctx([make_record(carrier="XCLIENT", protocol="pop3")]), "protocol.pop3_xoip") == []


def test_pop3_xclient_after_login_and_before_greeting() -> None:
    late = ctx_from_wire("pop3", wire((S, "+OK hi\n"), (C, "USER a\n"), (S, "+OK\n"), (C, "PASS b\n"),
                                      (S, "+OK Logged in.\n"), (C, "XCLIENT ADDR=198.51.100.7\n"), (S, "+OK\n")))
    [f] = run(late, "protocol.pop3_xclient_order")
    assert facts(f)["position"] == "after_user"
    early = ctx_from_wire("pop3", wire((C, "XCLIENT ADDR=198.51.100.7\n"), (S, "+OK [XCLIENT] hi\n+OK Updated\n")))
    [g] = run(early, "protocol.pop3_xclient_order")
    assert facts(g)["position"] == "before_greeting"


def test_pop3_dovecot_order_is_fine() -> None:
    ctx = ctx_from_wire("pop3", wire((S, "+OK [XCLIENT] hi\n"), (C, "XCLIENT ADDR=198.51.100.7 PORT=1\nUSER a\n"),
                                     (S, "+OK Updated\n+OK\n")))
    assert run(ctx, "protocol.pop3_xclient_order") == []


def test_pop3_xclient_rejected() -> None:
    rec = make_record(carrier="XCLIENT", protocol="pop3", reply=("-ERR", "Invalid parameters"))
    [f] = run(make_ctx([rec]), "protocol.pop3_xclient_rejected")
    assert "partial update" in f.message and facts(f)["reply_code"] == "-ERR"


def test_pop3_xclient_ok_or_overflow_not_rejected_here() -> None:
    ok = make_record(carrier="XCLIENT", protocol="pop3")
    full = make_record(carrier="XCLIENT", protocol="pop3", reply=("-ERR", "Input buffer full, aborting"), flow=1)
    assert run(make_ctx([ok, full]), "protocol.pop3_xclient_rejected") == []


# --- SMTP -----------------------------------------------------------------------------------


def test_smtp_xclient_in_transaction() -> None:
    ctx = ctx_from_wire("smtp", wire((S, "220 mx ESMTP Postfix\n"), (C, "EHLO a\n"), (S, "250 mx\n"),
                                     (C, "MAIL FROM:<a@b>\n"), (S, "250 2.1.0 Ok\n"),
                                     (C, "XCLIENT ADDR=198.51.100.7\n"),
                                     (S, "503 5.5.1 Error: MAIL transaction in progress\n")))
    [f] = run(ctx, "protocol.smtp_xclient_in_transaction")
    assert facts(f)["reply_code"] == "503" and facts(f)["mail_command_seq"] == "1"


def test_smtp_xclient_after_rset_is_fine() -> None:
    ctx = ctx_from_wire("smtp", wire((S, "220 mx ESMTP Postfix\n"), (C, "EHLO a\n"), (S, "250 mx\n"),
                                     (C, "MAIL FROM:<a@b>\n"), (S, "250 2.1.0 Ok\n"), (C, "RSET\n"), (S, "250 Ok\n"),
                                     (C, "XCLIENT ADDR=198.51.100.7\n"), (S, "220 mx ESMTP Postfix\n"),
                                     (C, "EHLO a\n"), (S, "250 mx\n")))
    assert run(ctx, "protocol.smtp_xclient_in_transaction") == []
    assert run(ctx, "protocol.smtp_xclient_no_restart") == []


def test_smtp_no_restart() -> None:
    no_ehlo = ctx_from_wire("smtp", wire((S, "220 mx ESMTP Postfix\n"), (C, "EHLO a\n"), (S, "250 mx\n"),
                                         (C, "XCLIENT ADDR=198.51.100.7\nMAIL FROM:<a@b>\n"),
                                         (S, "220 mx ESMTP Postfix\n503 5.5.1 Error: send HELO/EHLO first\n")))
    [f] = run(no_ehlo, "protocol.smtp_xclient_no_restart")
    assert facts(f)["next_command"] == "MAIL"
    rec = make_record(carrier="XCLIENT", protocol="submission", reply=("250", "2.0.0 Ok"))
    [g] = run(make_ctx([rec]), "protocol.smtp_xclient_no_restart")
    assert facts(g)["reply_code"] == "250"


def test_smtp_dovecot_restart_is_fine() -> None:
    ctx = ctx_from_wire("submission", wire((S, "220 b Dovecot ready.\n"), (C, "EHLO p\n"), (S, "250 b\n"),
                                           (C, "XCLIENT ADDR=198.51.100.7\nXCLIENT TTL=6\nEHLO p\n"),
                                           (S, "220 b Dovecot ready.\n220 b Dovecot ready.\n250 b\n")))
    assert run(ctx, "protocol.smtp_xclient_no_restart") == []


def test_smtp_invalid_forward_reply_names_next_reply() -> None:
    ctx = ctx_from_wire("submission", wire((S, "220 b Dovecot ready.\n"), (C, "XCLIENT FORWARD=abc\nEHLO p\n"),
                                           (S, "501 5.5.4 Invalid FORWARD parameter\n220 b Dovecot ready.\n")))
    [f] = run(ctx, "protocol.smtp_invalid_forward_reply")
    assert facts(f)["next_reply"] == "220 b Dovecot ready."
    assert run(ctx, "protocol.smtp_xclient_rejected") == []


def test_smtp_accepted_forward_is_fine() -> None:
    assert run(make_ctx([make_record(carrier="XCLIENT")]), "protocol.smtp_invalid_forward_reply") == []


def test_smtp_xclient_rejected() -> None:
    rec = make_record(carrier="XCLIENT", reply=("501", "5.5.4 Invalid ADDR parameter"))
    [f] = run(make_ctx([rec]), "protocol.smtp_xclient_rejected")
    assert facts(f)["reply_code"] == "501"


def test_smtp_trust_rejection_is_left_to_trust_rules() -> None:
    rec = make_record(carrier="XCLIENT", reply=("550", "5.7.14 You are not from trusted IP"))
    assert run(make_ctx([rec]), "protocol.smtp_xclient_rejected") == []


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["imap", "pop3", "submission", "lmtp", "smtp"]),
       st.lists(st.tuples(st.booleans(), st.binary(max_size=120)), max_size=8))
def test_random_bytes_never_raise(proto: str, chunks: list[tuple[bool, bytes]]) -> None:
    ctx = ctx_from_wire(proto, [(C if to_server else S, data) for to_server, data in chunks])
    for f in protocol.check(ctx):
        assert f.rule.startswith("protocol.")
