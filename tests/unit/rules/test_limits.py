"""Tests for analyzer.rules.limits: one positive and one nearby negative case per rule."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.model import Direction
from analyzer.rules import RuleContext, limits
from analyzer.rules.base import Finding, Severity
from tests.unit.rules.factory import (
    ID_PARAMS,
    SUBMISSION_PARAMS,
    carrier_events,
    command,
    ctx_from_wire,
    flow_and_records,
    greeting,
    located,
    make_ctx,
    make_record,
    reply,
)


def run(ctx: RuleContext, rule: str) -> list[Finding]:
    return [f for f in limits.check(ctx) if f.rule == rule]


def facts(f: Finding) -> dict[str, str]:
    return dict(f.facts)


def id_with(*extra: tuple[str, str | None]) -> list[tuple[str, str | None]]:
    return [*ID_PARAMS, *extra]


# --- A-I1 -----------------------------------------------------------------------------------


def test_key_too_long() -> None:
    rec = make_record(params=id_with(("x-forward-" + "a" * 21, "v")))
    [f] = run(make_ctx([rec]), "limits.imap_id_key_too_long")
    assert facts(f)["key_octets"] == "31" and facts(f)["limit"] == "30"
    assert f.severity is Severity.MEDIUM and f.spec == "A-I1" and f.frames == rec.frames
    assert "x-forward- name is 21 characters" in f.message


def test_key_of_30_octets_is_fine() -> None:
    rec = make_record(params=id_with(("x-forward-" + "a" * 20, "v")))
    assert run(make_ctx([rec]), "limits.imap_id_key_too_long") == []


# --- A-I2 -----------------------------------------------------------------------------------


def test_value_too_long() -> None:
    rec = make_record(params=id_with(("x-forward-big", "a" * 1025)))
    [f] = run(make_ctx([rec]), "limits.imap_id_value_too_long")
    assert facts(f)["value_octets"] == "1025" and facts(f)["value_wire"] == "1027"
    assert facts(f)["over_buffer"] == "True" and "Input buffer full" in f.message


def test_value_escapes_overflow_the_buffer() -> None:
    # 1023 octets are within RFC 2971, but 3 escaped quotes make 1028 wire bytes > Dovecot's 1026
    rec = make_record(params=id_with(("x-forward-q", "a" * 1020 + '"' * 3)))
    [f] = run(make_ctx([rec]), "limits.imap_id_value_too_long")
    assert facts(f)["value_octets"] == "1023" and facts(f)["value_wire"] == "1028"


def test_value_of_1024_fits() -> None:
    rec = make_record(params=id_with(("x-forward-big", "a" * 1024)))
    assert run(make_ctx([rec]), "limits.imap_id_value_too_long") == []


def test_end_client_id_is_info_only() -> None:
    rec = make_record(params=[("name", "a" * 2000)], tag="A1")
    [f] = run(make_ctx([rec]), "limits.imap_id_value_too_long")
    assert f.severity is Severity.INFO


# --- A-I3 -----------------------------------------------------------------------------------


def test_too_many_pairs() -> None:
    rec = make_record(params=[(f"x-forward-k{i}", "v") for i in range(31)])
    [f] = run(make_ctx([rec]), "limits.imap_id_too_many_pairs")
    assert facts(f)["pairs"] == "31" and f.severity is Severity.LOW


def test_thirty_pairs_are_fine() -> None:
    rec = make_record(params=[(f"x-forward-k{i}", "v") for i in range(30)])
    assert run(make_ctx([rec]), "limits.imap_id_too_many_pairs") == []


# --- forward names vs the IMAP key limit ---------------------------------------------------


def pop3_forward(entries: str) -> str:
    return base64.b64encode(entries.encode()).decode()


def test_blob_name_too_long_for_imap() -> None:
    rec = make_record(carrier="XCLIENT", protocol="pop3",
                      params=[("ADDR", "198.51.100.7"), ("FORWARD", pop3_forward("n" * 21 + "=x"))])
    [f] = run(make_ctx([rec]), "limits.forward_name_too_long_for_imap")
    assert facts(f)["name_len"] == "21"


def test_blob_name_of_20_is_fine() -> None:
    rec = make_record(carrier="XCLIENT", protocol="pop3",
                      params=[("ADDR", "198.51.100.7"), ("FORWARD", pop3_forward("n" * 20 + "=x"))])
    assert run(make_ctx([rec]), "limits.forward_name_too_long_for_imap") == []


# --- A-P2 -----------------------------------------------------------------------------------


def test_pop3_line_too_long() -> None:
    params = [("ADDR", "198.51.100.7"), ("FORWARD", "A" * 1020)]
    rec = make_record(carrier="XCLIENT", protocol="pop3", params=params)
    assert rec.line_len - 2 > 1024
    [f] = run(make_ctx([rec]), "limits.pop3_xclient_line_too_long")
    assert facts(f)["content_bytes"] == str(rec.line_len - 2)


def test_pop3_line_of_1024_fits() -> None:
    head = "XCLIENT ADDR=198.51.100.7 FORWARD="
    rec = make_record(carrier="XCLIENT", protocol="pop3",
                      params=[("ADDR", "198.51.100.7"), ("FORWARD", "A" * (1024 - len(head)))])
    assert rec.line_len == 1026
    assert run(make_ctx([rec]), "limits.pop3_xclient_line_too_long") == []


# --- A-S3 -----------------------------------------------------------------------------------


def test_smtp_line_over_512() -> None:
    rec = make_record(carrier="XCLIENT", protocol="submission",
                      params=[*SUBMISSION_PARAMS[:-1], ("FORWARD", "QUFB" * 110)])
    [f] = run(make_ctx([rec]), "limits.smtp_xclient_line_too_long")
    assert int(facts(f)["line_chars"]) == rec.line_len - 2 > 512
    assert run(make_ctx([rec]), "limits.smtp_command_over_server_limit") == []


def test_smtp_line_of_512_characters_fits() -> None:
    head = "XCLIENT HELO=client.example FORWARD="
    rec = make_record(carrier="XCLIENT", protocol="submission",
                      params=[("HELO", "client.example"), ("FORWARD", "A" * (512 - len(head)))])
    assert rec.line_len == 514
    assert run(make_ctx([rec]), "limits.smtp_xclient_line_too_long") == []


def test_submission_over_hard_limit() -> None:
    rec = make_record(carrier="XCLIENT", protocol="submission", params=[("FORWARD", "QUFB" * 300)])
    [f] = run(make_ctx([rec]), "limits.smtp_command_over_server_limit")
    assert facts(f)["limit"] == "1026" and int(facts(f)["size"]) > 1026


def test_lmtp_allows_up_to_4096() -> None:
    rec = make_record(carrier="XCLIENT", protocol="lmtp", params=[("HELO", "a" * 2000)])
    assert run(make_ctx([rec]), "limits.smtp_command_over_server_limit") == []
    big = make_record(carrier="XCLIENT", protocol="lmtp", params=[("HELO", "a" * 4100)])
    [f] = run(make_ctx([big]), "limits.smtp_command_over_server_limit")
    assert facts(f)["limit"] == "4096"


# --- A-S9 (Postfix 255) ------------------------------------------------------------------------


def postfix_ctx(helo: str, greeting_text: str = "mx.example ESMTP Postfix") -> RuleContext:
    evs = [located(greeting("220", greeting_text), (1,)),
           *carrier_events(carrier="XCLIENT", protocol="smtp", params=[("HELO", helo), ("ADDR", "198.51.100.7")],
                           frames=(3,), reply_frames=(5,))]
    flow, recs = flow_and_records(0, evs, "smtp")
    return make_ctx(recs, [flow])


def test_postfix_value_too_long() -> None:
    [f] = run(postfix_ctx("h" * 256), "limits.postfix_value_too_long")
    assert facts(f)["attribute"] == "HELO" and facts(f)["value_len"] == "256"


def test_postfix_value_of_255_fits_and_dovecot_has_no_such_limit() -> None:
    assert run(postfix_ctx("h" * 255), "limits.postfix_value_too_long") == []
    assert run(postfix_ctx("h" * 300, "backend Dovecot ready."), "limits.postfix_value_too_long") == []


# --- overflow replies tied to their command ------------------------------------------------


def test_bye_input_buffer_full_names_command_and_reply() -> None:
    evs = carrier_events(params=id_with(("x-forward-big", "a" * 1100)), reply=None, frames=(4, 5))
    bye = located(reply(0, "BYE", "Input buffer full, aborting", tag="*", final=False), (9,))
    flow, recs = flow_and_records(0, [*evs, bye], "imap")
    found = run(make_ctx(recs, [flow]), "limits.overflow_reply")
    [f] = found
    assert f.frames == (4, 5) and f.severity is Severity.MEDIUM
    assert facts(f)["reply_frames"] == "9" and facts(f)["command_frames"] == "4,5"
    assert facts(f)["command"] == "ID"


def test_overflow_reply_to_ordinary_command_is_info() -> None:
    evs = [located(command(0, "LOGIN", b"x" * 2000, tag="L"), (3,)),
           located(reply(0, "BYE", "Input buffer full, aborting", tag="*", final=False), (4,))]
    flow, recs = flow_and_records(0, evs, "imap")
    [f] = run(make_ctx(recs, [flow]), "limits.overflow_reply")
    assert f.severity is Severity.INFO and facts(f)["command"] == "LOGIN" and f.frames == (3,)


def test_other_bye_is_not_an_overflow() -> None:
    evs = [*carrier_events(reply=None), located(reply(0, "BYE", "Logging out", tag="*", final=False), (9,))]
    flow, recs = flow_and_records(0, evs, "imap")
    assert run(make_ctx(recs, [flow]), "limits.overflow_reply") == []


def test_pop3_input_buffer_full_from_real_parser() -> None:
    c, s = Direction.TO_SERVER, Direction.TO_CLIENT
    ctx = ctx_from_wire("pop3", [
        (s, b"+OK [XCLIENT] Dovecot ready.\r\n"),
        (c, b"XCLIENT ADDR=198.51.100.7 FORWARD=" + b"A" * 1100 + b"\r\nUSER alice\r\n"),
        (s, b"-ERR Input buffer full, aborting\r\n"),
    ])
    [f] = run(ctx, "limits.overflow_reply")
    assert f.severity is Severity.MEDIUM and facts(f)["command"] == "XCLIENT"
    assert [x.rule for x in limits.check(ctx)].count("limits.pop3_xclient_line_too_long") == 1


# --- never raises ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["imap", "pop3", "submission", "lmtp", "smtp"]), st.binary(max_size=600),
       st.binary(max_size=200))
def test_random_bytes_never_raise(protocol: str, client: bytes, server: bytes) -> None:
    prefix = {"imap": b"I ID (", "pop3": b"XCLIENT ", "submission": b"XCLIENT ", "lmtp": b"RCPT TO:<a> ",
              "smtp": b"XCLIENT "}[protocol]
    ctx = ctx_from_wire(protocol, [(Direction.TO_CLIENT, server[:50]), (Direction.TO_SERVER, prefix + client),
                                   (Direction.TO_CLIENT, server[50:])])
    for f in limits.check(ctx):
        assert f.rule.startswith("limits.")
