"""Tests for analyzer.rules.encoding: one positive and one nearby negative case per rule."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.forwarding.model import ForwardingRecord
from analyzer.model import Direction, Endpoint
from analyzer.rules import RuleContext, encoding
from analyzer.rules.base import Finding, Severity
from tests.unit.rules.factory import (
    ID_PARAMS,
    LMTP_PARAMS,
    POP3_PARAMS,
    SUBMISSION_PARAMS,
    carrier_events,
    ctx_from_wire,
    flow_and_records,
    greeting,
    id_param,
    located,
    make_ctx,
    make_record,
)


def run(ctx: RuleContext, rule: str) -> list[Finding]:
    return [f for f in encoding.check(ctx) if f.rule == rule]


def one(rec: ForwardingRecord, rule: str) -> list[Finding]:
    return run(make_ctx([rec]), rule)


def facts(f: Finding) -> dict[str, str]:
    return dict(f.facts)


def idr(*extra: tuple[str, str | None], drop: tuple[str, ...] = ()) -> ForwardingRecord:
    return make_record(params=[*((k, v) for k, v in ID_PARAMS if k not in drop), *extra])


def pop3(*params: tuple[str, str | None], **kw: object) -> ForwardingRecord:
    return make_record(carrier="XCLIENT", protocol="pop3", params=list(params), **kw)


def subm(*params: tuple[str, str | None], **kw: object) -> ForwardingRecord:
    return make_record(carrier="XCLIENT", protocol="submission", params=list(params), **kw)


def b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8", "surrogateescape")).decode("ascii")


def server_ctx(text: str, protocol: str, *params: tuple[str, str | None]) -> RuleContext:
    """One XCLIENT on a flow whose greeting is ``text`` (Postfix or Dovecot)."""
    evs = [located(greeting("220", text), (1,)),
           *carrier_events(carrier="XCLIENT", protocol=protocol, params=list(params), frames=(3,),
                           reply_frames=(5,))]
    flow, recs = flow_and_records(0, evs, protocol)
    return make_ctx(recs, [flow])


POSTFIX = "mx.example ESMTP Postfix (Debian/GNU)"
A = ("ADDR", "198.51.100.7")


# --- A-C6 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("rec", [
    pytest.param(make_record(id_params=[id_param("x-originating-ip", "1.2.3.4"), id_param("x-forward-a", "x\r\ny")]),
                 id="imap-literal-crlf"),
    pytest.param(make_record(params=ID_PARAMS, id_problems=("nul_in_quoted",)), id="imap-quoted-nul"),
    pytest.param(pop3(A, ("SESSION", "ab\rcd")), id="pop3-raw-cr"),
    pytest.param(subm(A, ("HELO", "evil+0D+0AMAIL")), id="xtext-crlf"),
    pytest.param(pop3(A, ("FORWARD", b64("note=a\x01nb"))), id="blob-escaped-lf"),
])
def test_control_char_in_value(rec: ForwardingRecord) -> None:
    [f] = one(rec, "encoding.control_char_in_value")
    assert f.severity is Severity.HIGH and f.spec == "A-C6" and f.frames == rec.frames


def test_no_control_char_in_normal_or_end_client_values() -> None:
    end_client = make_record(tag="A1", id_params=[id_param("name", "x\r\ny")])
    assert one(idr(), "encoding.control_char_in_value") == []
    assert one(end_client, "encoding.control_char_in_value") == []


def test_tab_in_value() -> None:
    [f] = one(idr(("x-forward-a", "x\ty")), "encoding.tab_or_soh_in_value")
    assert facts(f)["params"] == "x-forward-a"
    [g] = one(pop3(A, ("SESSION", "ab\x01cd")), "encoding.tab_or_soh_in_value")
    assert facts(g)["params"] == "SESSION"


def test_tab_as_list_separator_is_fine() -> None:
    rec = make_record(carrier="XRCPTFORWARD", params=[("XRCPTFORWARD", "a+3D1+09b+3D2")])
    assert [v.name for v in rec.forward] == ["a", "b"]
    assert one(rec, "encoding.tab_or_soh_in_value") == []


def test_forward_entry_without_equals() -> None:
    [f] = one(pop3(A, ("FORWARD", b64("tenant=acme\tnopassword"))), "encoding.forward_entry_without_equals")
    assert facts(f)["element"] == "nopassword" and facts(f)["security_field"] == "True"
    assert f.severity is Severity.HIGH


def test_entries_with_equals_are_fine() -> None:
    assert one(pop3(A, ("FORWARD", b64("tenant=acme\tplan=gold"))), "encoding.forward_entry_without_equals") == []


def test_equals_in_forward_name() -> None:
    [f] = one(idr(("x-forward-a=b", "c")), "encoding.equals_in_forward_name")
    assert facts(f)["name"] == "a=b"
    assert one(idr(("x-forward-a_b", "c")), "encoding.equals_in_forward_name") == []


def test_forward_name_chars() -> None:
    [low] = one(idr(("x-forward-a.b", "c")), "encoding.forward_name_chars")
    assert low.severity is Severity.LOW and facts(low)["chars"] == "."
    [high] = one(idr(("x-forward-a b", "c")), "encoding.forward_name_chars")
    assert high.severity is Severity.HIGH
    assert one(idr(("x-forward-a-b_C9", "c")), "encoding.forward_name_chars") == []


def test_forward_name_security_field() -> None:
    [f] = one(idr(("x-forward-proxy", "y"), ("x-forward-HOST", "h")), "encoding.forward_name_security_field")
    assert facts(f)["names"] == "HOST,proxy" and f.severity is Severity.LOW
    assert one(idr(), "encoding.forward_name_security_field") == []


# --- A-S2, A-P3 blobs ------------------------------------------------------------------------


def test_xtext_invalid() -> None:
    [f] = one(subm(A, ("HELO", "client+2eexample")), "encoding.xtext_invalid")
    assert facts(f)["problems"] == "xtext_lowercase_hex" and "Postfix tolerates" in f.message
    [g] = one(subm(A, ("FORWARD", "dGVuYW50PWFjbWU=")), "encoding.xtext_invalid")
    assert facts(g)["problems"] == "xtext_raw_char"


def test_valid_xtext_is_fine() -> None:
    assert one(subm(*SUBMISSION_PARAMS), "encoding.xtext_invalid") == []


def test_forward_bad_base64() -> None:
    [f] = one(pop3(A, ("FORWARD", "dGVuYW50PWFjbWU")), "encoding.forward_bad_base64")
    assert facts(f)["problems"] == "base64_bad_padding" and "-ERR Invalid parameters" in f.message
    [g] = one(subm(A, ("FORWARD", "dGVuYW50PWFjbWU-")), "encoding.forward_bad_base64")
    assert "base64_urlsafe_alphabet" in facts(g)["problems"] and "501" in g.message


def test_good_base64_is_fine() -> None:
    assert one(pop3(*POP3_PARAMS), "encoding.forward_bad_base64") == []


def test_forward_list_problems() -> None:
    [f] = one(pop3(A, ("FORWARD", b64("a=b\x01"))), "encoding.forward_list_problems")
    assert facts(f)["problems"] == "FORWARD: trailing_escape"
    assert one(pop3(A, ("FORWARD", b64("a=b\x01t"))), "encoding.forward_list_problems") == []


# --- addresses and ports -------------------------------------------------------------------


@pytest.mark.parametrize("addr", ["IPV6:2001:db8::7", "[198.51.100.7]"])
def test_pop3_addr_syntax(addr: str) -> None:
    [f] = one(pop3(("ADDR", addr)), "encoding.pop3_addr_syntax")
    assert "-ERR" in f.message


def test_pop3_bare_ipv6_is_fine() -> None:
    assert one(pop3(("ADDR", "2001:db8::7")), "encoding.pop3_addr_syntax") == []


def test_imap_addr_syntax() -> None:
    [f] = one(idr(("x-originating-ip", "[198.51.100.7]"), drop=("x-originating-ip",)), "encoding.imap_addr_syntax")
    assert "brackets" in f.message
    assert one(idr(), "encoding.imap_addr_syntax") == []


def test_smtp_addr_syntax() -> None:
    [f] = one(subm(("ADDR", "IPV6:198.51.100.7")), "encoding.smtp_addr_syntax")
    assert "IPV6: before an IPv4" in f.message
    [g] = run(server_ctx(POSTFIX, "smtp", ("ADDR", "2001:db8::7")), "encoding.smtp_addr_syntax")
    assert "Bad ADDR syntax" in g.message


def test_smtp_addr_forms_that_are_fine() -> None:
    assert run(server_ctx(POSTFIX, "smtp", ("ADDR", "IPV6:2001:db8::7")), "encoding.smtp_addr_syntax") == []
    assert run(server_ctx("b Dovecot ready.", "lmtp", ("ADDR", "2001:db8::7")), "encoding.smtp_addr_syntax") == []


def test_address_invalid() -> None:
    [f] = one(pop3(("ADDR", "not-an-ip")), "encoding.address_invalid")
    assert facts(f)["value"] == "not-an-ip"
    assert one(pop3(A), "encoding.address_invalid") == []


def test_ipv4_mapped_address() -> None:
    [f] = one(subm(("ADDR", "IPV6:::ffff:198.51.100.7")), "encoding.ipv4_mapped_address")
    assert facts(f)["key"] == "ADDR"
    assert one(subm(("ADDR", "IPV6:2001:db8::7")), "encoding.ipv4_mapped_address") == []


@pytest.mark.parametrize(("port", "reason"), [("0", "zero"), ("8o", "not_decimal"), ("65536", "out_of_range"),
                                              ("-1", "not_decimal")])
def test_port_invalid(port: str, reason: str) -> None:
    [f] = one(pop3(A, ("PORT", port)), "encoding.port_invalid")
    assert facts(f)["reason"] == reason


def test_port_65535_is_fine() -> None:
    assert one(pop3(A, ("PORT", "65535")), "encoding.port_invalid") == []


def test_forwarded_client_is_hop() -> None:
    [f] = one(pop3(("ADDR", "10.0.0.2")), "encoding.forwarded_client_is_hop")
    assert facts(f)["matches"] == "sender" and f.severity is Severity.MEDIUM
    lab = pop3(("ADDR", "127.0.0.1"), sender=Endpoint("127.0.0.1", 40000), receiver=Endpoint("127.0.0.1", 110))
    [g] = one(lab, "encoding.forwarded_client_is_hop")
    assert g.severity is Severity.INFO and facts(g)["matches"] == "sender,receiver"


def test_real_end_client_address_is_fine() -> None:
    assert one(pop3(A), "encoding.forwarded_client_is_hop") == []


# --- attributes ------------------------------------------------------------------------------


def test_pop3_unknown_attribute() -> None:
    [f] = one(pop3(A, ("FOO", "bar"), ("HELO", "x")), "encoding.pop3_unknown_attribute")
    assert facts(f)["attributes"] == "FOO,HELO"
    assert one(pop3(*POP3_PARAMS), "encoding.pop3_unknown_attribute") == []


def test_duplicate_key() -> None:
    [f] = one(pop3(A, ("ADDR", "203.0.113.9")), "encoding.duplicate_key")
    assert facts(f)["duplicates"] == "ADDR"
    [g] = one(idr(("x-forward-tenant", "evil")), "encoding.duplicate_key")
    assert facts(g)["duplicates"] == "x-forward-tenant"
    [h] = one(pop3(A, ("FORWARD", b64("a=1\ta=2"))), "encoding.duplicate_key")
    assert facts(h)["duplicates"] == "a"


def test_no_duplicates_in_dovecot_commands() -> None:
    assert one(idr(), "encoding.duplicate_key") == []
    assert one(pop3(*POP3_PARAMS), "encoding.duplicate_key") == []


def two_xclients(protocol: str, first: list[tuple[str, str | None]], second: list[tuple[str, str | None]],
                 greeting_text: str = "b Dovecot ready.") -> RuleContext:
    evs = [located(greeting("220" if protocol != "pop3" else "+OK", greeting_text), (1,)),
           *carrier_events(carrier="XCLIENT", protocol=protocol, params=first, seq=0, frames=(3,), reply=None),
           *carrier_events(carrier="XCLIENT", protocol=protocol, params=second, seq=1, frames=(4,), start=500,
                           reply_frames=(6,))]
    flow, recs = flow_and_records(0, evs, protocol)
    return make_ctx(recs, [flow])


def test_repeated_forwarding_command() -> None:
    [f] = run(two_xclients("pop3", [A], [("ADDR", "203.0.113.9")]), "encoding.repeated_forwarding_command")
    assert f.frames == (4,) and facts(f)["first_command_frames"] == "3"
    [g] = run(two_xclients("submission", [A, ("TTL", "6")], [("TTL", "5")]), "encoding.repeated_forwarding_command")
    assert facts(g)["attributes"] == "TTL"
    [h] = run(two_xclients("smtp", [("NAME", "c.example"), A], [("HELO", "c.example")], POSTFIX),
              "encoding.repeated_forwarding_command")
    assert facts(h)["addr_command_frames"] == "3"


def test_split_xclient_is_fine() -> None:
    ctx = two_xclients("submission", [("HELO", "c.example"), ("TTL", "6")], [A, ("PORT", "51234")])
    assert run(ctx, "encoding.repeated_forwarding_command") == []


@pytest.mark.parametrize("value", ["tls", "secure", "xTLS", ""])
def test_client_transport_value(value: str) -> None:
    [f] = one(idr(("x-client-transport", value), drop=("x-client-transport",)), "encoding.client_transport_value")
    assert facts(f)["value"] == value


@pytest.mark.parametrize("value", ["TLS", "TLSv1.3", "insecure"])
def test_client_transport_good_values(value: str) -> None:
    assert one(subm(A, ("CLIENT-TRANSPORT", value)), "encoding.client_transport_value") == []


def test_cleartext_forwarding_once_per_flow() -> None:
    recs = [idr(), make_record(params=ID_PARAMS, seq=1, frames=(8,), start=300)]
    [f] = run(make_ctx(recs), "encoding.cleartext_forwarding")
    assert f.severity is Severity.INFO and facts(f)["commands"] == "2" and f.frames == recs[0].frames


def test_no_cleartext_finding_without_forwarding() -> None:
    end_client = make_record(tag="A1", params=[("name", "Thunderbird")])
    assert run(make_ctx([end_client]), "encoding.cleartext_forwarding") == []


def test_imap_nil_internal_key() -> None:
    [f] = one(idr(("x-connected-ip", None), drop=("x-connected-ip",)), "encoding.imap_nil_internal_key")
    assert facts(f)["keys"] == "x-connected-ip"
    assert one(idr(("name", None)), "encoding.imap_nil_internal_key") == []


def test_imap_empty_forward_suffix() -> None:
    [f] = one(idr(("x-forward-", "v")), "encoding.imap_empty_forward_suffix")
    assert facts(f)["key"] == "x-forward-"
    assert one(idr(("x-forward-a", "v")), "encoding.imap_empty_forward_suffix") == []


def test_timeout_attribute() -> None:
    [f] = one(subm(A, ("TIMEOUT", "300")), "encoding.timeout_attribute")
    assert facts(f)["value"] == "300" and f.severity is Severity.LOW
    assert one(subm(*SUBMISSION_PARAMS), "encoding.timeout_attribute") == []


def test_proto_lmtp_to_postfix() -> None:
    [f] = run(server_ctx(POSTFIX, "smtp", A, ("PROTO", "LMTP")), "encoding.proto_lmtp_to_postfix")
    assert facts(f)["value"] == "LMTP"
    assert run(server_ctx(POSTFIX, "smtp", A, ("PROTO", "ESMTP")), "encoding.proto_lmtp_to_postfix") == []


@pytest.mark.parametrize(("protocol", "value"), [("lmtp", "ESMTP"), ("submission", "LMTP"), ("submission", "HTTP")])
def test_proto_mismatch(protocol: str, value: str) -> None:
    rec = make_record(carrier="XCLIENT", protocol=protocol, params=[A, ("PROTO", value)])
    [f] = one(rec, "encoding.proto_mismatch")
    assert facts(f)["hop_protocol"] == protocol


def test_proto_matching_hop_is_fine() -> None:
    recs = [make_record(carrier="XCLIENT", protocol="lmtp", params=LMTP_PARAMS, flow=0),
            make_record(carrier="XCLIENT", protocol="submission", flow=1),
            make_record(carrier="XCLIENT", protocol="submission", params=[("PROTO", "[UNAVAILABLE]")], flow=2)]
    assert run(make_ctx(recs), "encoding.proto_mismatch") == []


@pytest.mark.parametrize("helo", ["bad_host!", "[300.1.1.1]", "-lead.example", "a" * 256, "[IPv6:1.2.3.4]"])
def test_helo_syntax(helo: str) -> None:
    [f] = one(subm(A, ("HELO", helo.replace("!", "+21"))), "encoding.helo_syntax")
    assert facts(f)["attribute"] == "HELO"


@pytest.mark.parametrize("helo", ["client.example", "mx1", "[192.0.2.1]", "[IPv6:2001:db8::1]", "[UNAVAILABLE]",
                                  "host.example."])
def test_helo_good_values(helo: str) -> None:
    assert one(subm(A, ("HELO", helo)), "encoding.helo_syntax") == []


def test_login_attribute() -> None:
    [f] = one(subm(A, ("LOGIN", "alice")), "encoding.login_attribute")
    assert facts(f)["login"] == "alice"
    assert one(subm(A, ("LOGIN", "[UNAVAILABLE]")), "encoding.login_attribute") == []


# --- A-S11 -----------------------------------------------------------------------------------


def test_xrcptforward_base64() -> None:
    rec = make_record(carrier="XRCPTFORWARD", params=[("XRCPTFORWARD", "dGVuYW50PWFjbWU+3D")])
    [f] = one(rec, "encoding.xrcptforward_base64")
    assert facts(f)["value"] == "dGVuYW50PWFjbWU+3D"
    assert one(rec, "encoding.forward_entry_without_equals") == []
    assert one(make_record(carrier="XRCPTFORWARD"), "encoding.xrcptforward_base64") == []


def test_xrcptforward_rejected() -> None:
    rec = make_record(carrier="XRCPTFORWARD",
                      reply=("501", "5.5.4 Invalid XRCPTFORWARD= parameter: Invalid hexchar after '+' in xtext"))
    [f] = one(rec, "encoding.xrcptforward_rejected")
    assert facts(f)["reply_code"] == "501" and facts(f)["reply_frames"] == "6"
    assert one(make_record(carrier="XRCPTFORWARD"), "encoding.xrcptforward_rejected") == []
    # the untrusted-sender refusal is the trust rule's (A-C1), not an encoding problem
    untrusted = make_record(carrier="XRCPTFORWARD",
                            reply=("550", "5.7.14 Unacceptable XRCPTFORWARD= parameter: You are not from trusted IP"))
    assert one(untrusted, "encoding.xrcptforward_rejected") == []


def test_xrcptforward_in_mail_from() -> None:
    [f] = one(make_record(carrier="XRCPTFORWARD", verb="MAIL"), "encoding.xrcptforward_in_mail_from")
    assert facts(f)["verb"] == "MAIL"
    assert one(make_record(carrier="XRCPTFORWARD"), "encoding.xrcptforward_in_mail_from") == []


# --- never raises ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["imap", "pop3", "submission", "lmtp", "smtp"]), st.binary(max_size=400),
       st.binary(max_size=120))
def test_random_bytes_never_raise(protocol: str, client: bytes, server: bytes) -> None:
    prefix = {"imap": b'I ID ("x-forward-', "pop3": b"XCLIENT FORWARD=", "submission": b"XCLIENT HELO=",
              "lmtp": b"RCPT TO:<a@b> XRCPTFORWARD=", "smtp": b"XCLIENT ADDR="}[protocol]
    ctx = ctx_from_wire(protocol, [(Direction.TO_CLIENT, b"220 x ESMTP Postfix\r\n" + server),
                                   (Direction.TO_SERVER, prefix + client + b"\r\n")])
    for f in encoding.check(ctx):
        assert f.rule.startswith("encoding.")
