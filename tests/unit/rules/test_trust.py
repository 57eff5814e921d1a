"""Trust rules: configured trust (A-C1), reply-only trust (A-C1/A-P1), advertisement (A-C1/A-S11/A-S4),
versions (A-C8) and spoofing (A-C2)."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

import pytest
from hypothesis import given, settings, strategies as st

from analyzer.config import Settings
from analyzer.flows.model import FlowResult
from analyzer.forwarding.model import ForwardingRecord
from analyzer.model import Direction, Endpoint, Span
from analyzer.protocols.base import Capabilities, Greeting, LocatedEvent, Reply
from analyzer.rules import RuleContext, trust
from analyzer.rules.base import Finding, Severity
from analyzer.rules.chains import build_chains
from analyzer.rules.trustconf import TrustConfig, load_trust
from tests.unit.rules.factory import (
    LMTP_PARAMS,
    POP3_PARAMS,
    PROXY,
    SMTP_PARAMS,
    SUBMISSION_PARAMS,
    carrier_events,
    flow_and_records,
    located,
    make_ctx,
    make_record,
)

BACKEND = "10.0.0.3"
DOVECOT_24_EHLO = "XCLIENT ADDR PORT PROTO HELO LOGIN SESSION CLIENT-TRANSPORT TTL TIMEOUT DESTNAME DESTADDR DESTPORT"
DOVECOT_2319_EHLO = "XCLIENT ADDR PORT PROTO HELO LOGIN SESSION TTL TIMEOUT"
POSTFIX_EHLO = "XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT"
PUBLIC = "/work/shared/captures-public"


def sc(start: int = 0) -> Span:
    return Span(Direction.TO_CLIENT, start, start + 10)


def greeting(status: str, text: str, caps: tuple[str, ...] = ()) -> LocatedEvent:
    return located(Greeting(sc(), status, text, caps, False), (1,))


def ehlo(*items: str, source: str = "ehlo") -> LocatedEvent:
    return located(Capabilities(sc(1), source, tuple(items)), (2,))


def untagged_id(version: str) -> LocatedEvent:
    return located(Reply(sc(2), 0, "*", "ID", f'("name" "Dovecot" "version" "{version}")', False), (5,))


class Conn:
    """One connection for a test context."""

    def __init__(self, events: Sequence[LocatedEvent], protocol: str, client: Endpoint = PROXY,
                 server: Endpoint | None = None) -> None:
        self.events, self.protocol, self.client = list(events), protocol, client
        self.server = server or Endpoint(BACKEND, {"imap": 143, "pop3": 110, "submission": 587, "lmtp": 24,
                                                   "smtp": 25}[protocol])


def ctx_of(*conns: Conn, cfg: TrustConfig | None = None) -> RuleContext:
    flows: list[FlowResult] = []
    recs: list[ForwardingRecord] = []
    for fid, c in enumerate(conns):
        f, r = flow_and_records(fid, c.events, c.protocol, client=c.client, server=c.server)
        flows.append(f)
        recs.extend(r)
    ctx = make_ctx(recs, flows, Settings(trust=cfg))
    ctx.chains = build_chains(recs, flows)
    return ctx


def found(*conns: Conn, cfg: TrustConfig | None = None) -> list[Finding]:
    return list(trust.check(ctx_of(*conns, cfg=cfg)))


def rules(fs: list[Finding]) -> list[str]:
    return sorted(f.rule for f in fs)


def imap(**kw: object) -> Conn:
    return Conn(carrier_events(carrier="ID", **kw), "imap")  # type: ignore[arg-type]


def pop3(reply: tuple[str, str] | None = ("+OK", "Updated"), caps: tuple[str, ...] | None = ("XCLIENT",),
         **kw: object) -> Conn:
    ev = [] if caps is None else [greeting("+OK", "Dovecot ready.", caps)]
    return Conn(ev + carrier_events(carrier="XCLIENT", protocol="pop3", reply=reply, **kw), "pop3")  # type: ignore


def smtp(protocol: str = "submission", caps: tuple[str, ...] | None = (DOVECOT_24_EHLO + " FORWARD",),
         **kw: object) -> Conn:
    ev = [greeting("220", "backend.example ESMTP")]
    if caps is not None:
        ev.append(ehlo(*caps, source="lhlo" if protocol == "lmtp" else "ehlo"))
    kw.setdefault("seq", 1)
    return Conn(ev + carrier_events(carrier=kw.pop("carrier", "XCLIENT"), protocol=protocol, **kw),  # type: ignore
                protocol)


def cli(spec: str) -> TrustConfig:
    return load_trust([], [], [spec])


# --- A-C1 with a configuration


def test_untrusted_by_config() -> None:
    fs = found(imap(), cfg=cli(f"{BACKEND}=192.0.2.0/24"))
    assert rules(fs) == ["trust.untrusted_sender"]
    f = fs[0]
    assert f.severity is Severity.HIGH and f.spec == "A-C1"
    assert "accepted it as trusted" in f.message and "different configuration" in f.message
    assert dict(f.facts)["trust_config"].startswith("--trusted #1")


def test_trusted_by_config() -> None:
    assert found(imap(), cfg=cli(f"{BACKEND}=10.0.0.0/24")) == []


def test_config_for_another_server_falls_back_to_replies() -> None:
    conn = pop3(reply=("+OK", "You are not from trusted IP - ignoring"))
    assert rules(found(conn, cfg=cli("10.9.9.9=10.0.0.0/24"))) == ["trust.pop3_xclient_ignored"]


def test_config_decides_instead_of_the_reply() -> None:
    conn = pop3(reply=("+OK", "You are not from trusted IP - ignoring"))
    fs = found(conn, cfg=cli("192.0.2.0/24"))
    assert rules(fs) == ["trust.untrusted_sender"]
    assert "refused or ignored" in fs[0].message


def test_reply_contradicts_configuration() -> None:
    conn = pop3(reply=("+OK", "You are not from trusted IP - ignoring"))
    fs = found(conn, cfg=cli("10.0.0.0/24"))
    assert rules(fs) == ["trust.config_disagrees"]
    assert found(pop3(), cfg=cli("10.0.0.0/24")) == []


def test_imap_24_plain_ok_contradicts_configuration() -> None:
    events = carrier_events(carrier="ID", reply=None) + [
        untagged_id("2.4.1"), located(Reply(sc(3), 0, "I", "OK", "ID completed.", True), (6,))]
    fs = found(Conn(events, "imap"), cfg=cli("10.0.0.0/24"))
    assert rules(fs) == ["trust.config_disagrees"]


# --- A-C1 / A-P1 from the replies


def test_pop3_ignored() -> None:
    fs = found(pop3(reply=("+OK", "You are not from trusted IP - ignoring")))
    assert rules(fs) == ["trust.pop3_xclient_ignored"]
    assert fs[0].spec == "A-P1" and fs[0].severity is Severity.HIGH
    assert found(pop3()) == []


def test_pop3_ignored_and_not_advertised_is_one_finding() -> None:
    fs = found(pop3(reply=("+OK", "You are not from trusted IP - ignoring"), caps=()))
    assert rules(fs) == ["trust.pop3_xclient_ignored"]
    assert dict(fs[0].facts)["advertised"] == "no"


def test_xclient_refused_by_dovecot() -> None:
    fs = found(smtp(reply=("550", "5.7.14 You are not from trusted IP")))
    assert rules(fs) == ["trust.xclient_refused_untrusted"]
    assert dict(fs[0].facts)["server_software"] == "dovecot"


#: what Dovecot's lib-smtp client (submission relay) sends to a Postfix that advertised POSTFIX_EHLO (spec 3.4)
RELAY_PARAMS = [("HELO", "client.example"), ("PROTO", "ESMTP"), ("PORT", "51234"), ("ADDR", "198.51.100.7")]


def test_xclient_refused_by_postfix() -> None:
    conn = smtp("smtp", caps=(POSTFIX_EHLO,), params=RELAY_PARAMS,
                reply=("550", "5.7.0 Error: insufficient authorization"))
    fs = found(conn)
    assert rules(fs) == ["trust.xclient_refused_untrusted"]
    assert dict(fs[0].facts)["server_software"] == "postfix"
    assert found(smtp("smtp", caps=(POSTFIX_EHLO,), params=RELAY_PARAMS)) == []


def test_non_dovecot_xclient_sender_counts_as_spoofing() -> None:
    # SMTP_PARAMS carries NAME, which no Dovecot writer sends: refused, yet reported as a possible spoof (MEDIUM)
    fs = found(smtp("smtp", caps=(POSTFIX_EHLO,), params=SMTP_PARAMS,
                    reply=("550", "5.7.0 Error: insufficient authorization")))
    assert rules(fs) == ["trust.spoofed_forwarding", "trust.xclient_refused_untrusted"]
    assert [f.severity for f in fs if f.rule == "trust.spoofed_forwarding"] == [Severity.MEDIUM]


def test_xrcptforward_refused() -> None:
    conn = smtp("lmtp", caps=(DOVECOT_24_EHLO, "XRCPTFORWARD"), carrier="XRCPTFORWARD",
                reply=("550", "5.7.14 Unacceptable XRCPTFORWARD= parameter: You are not from trusted IP"))
    fs = found(conn)
    assert rules(fs) == ["trust.xrcptforward_refused_untrusted"]
    assert found(smtp("lmtp", caps=(DOVECOT_24_EHLO, "XRCPTFORWARD"), carrier="XRCPTFORWARD")) == []


def test_imap_id_dropped_when_the_server_trusted_someone_else() -> None:
    other = Conn(carrier_events(carrier="ID"), "imap", client=Endpoint("10.0.0.9", 40000))  # "Trusted ID completed."
    plain = imap(reply=("OK", "ID completed."))
    fs = found(other, plain)
    assert rules(fs) == ["trust.imap_id_untrusted"]
    assert fs[0].flow == 1 and "Trusted ID completed" in dict(fs[0].facts)["evidence"]
    assert found(plain) == []  # could be 2.3, which always says "ID completed."


def test_imap_id_dropped_by_version() -> None:
    events = carrier_events(carrier="ID", reply=None) + [
        untagged_id("2.4.0"), located(Reply(sc(3), 0, "I", "OK", "ID completed.", True), (6,))]
    assert rules(found(Conn(events, "imap"))) == ["trust.imap_id_untrusted"]
    events[-2] = untagged_id("2.3.19")
    assert "trust.imap_id_untrusted" not in rules(found(Conn(events, "imap")))


# --- advertisement


def test_pop3_xclient_not_advertised() -> None:
    fs = found(pop3(reply=None, caps=()))
    assert rules(fs) == ["trust.xclient_not_advertised"]
    assert fs[0].severity is Severity.HIGH
    assert found(pop3(reply=None)) == []  # "+OK [XCLIENT]"
    assert found(pop3(reply=None, caps=None)) == []  # no greeting captured: nothing to judge


def test_smtp_xclient_not_advertised() -> None:
    fs = found(smtp(caps=("PIPELINING", "8BITMIME"), reply=None))
    assert rules(fs) == ["trust.xclient_not_advertised"]
    assert found(smtp(reply=None)) == []
    assert found(smtp(caps=None, reply=None)) == []  # no EHLO reply captured


def test_xrcptforward_not_advertised() -> None:
    fs = found(smtp("lmtp", caps=(DOVECOT_24_EHLO,), carrier="XRCPTFORWARD"))
    assert rules(fs) == ["trust.xrcptforward_not_advertised"]
    assert fs[0].severity is Severity.MEDIUM and fs[0].spec == "A-S11"


def test_attributes_not_advertised_by_postfix() -> None:
    fs = found(smtp("smtp", caps=(POSTFIX_EHLO,), params=SUBMISSION_PARAMS))
    assert rules(fs) == ["trust.xclient_attribute_not_advertised"]
    facts = dict(fs[0].facts)
    assert facts["attributes"] == "TTL SESSION CLIENT-TRANSPORT FORWARD" and "501" in fs[0].message


def test_attribute_named_by_postfix_reply_without_ehlo() -> None:
    fs = found(smtp("smtp", caps=None, params=RELAY_PARAMS[:2] + [("TTL", "5")] + RELAY_PARAMS[2:],
                    reply=("501", "5.5.4 Bad XCLIENT attribute name: TTL")))
    assert rules(fs) == ["trust.xclient_attribute_not_advertised"]
    assert dict(fs[0].facts)["attributes"] == "TTL" and dict(fs[0].facts)["advertised"] == "unknown"


def test_attributes_not_advertised_by_dovecot_23() -> None:
    fs = found(smtp(caps=(DOVECOT_2319_EHLO,), params=SUBMISSION_PARAMS))
    assert rules(fs) == ["trust.xclient_attribute_not_advertised"]
    assert dict(fs[0].facts)["attributes"] == "DESTPORT DESTADDR CLIENT-TRANSPORT FORWARD"
    assert found(smtp("lmtp", caps=(DOVECOT_24_EHLO,), params=LMTP_PARAMS)) == []


# --- A-C8 versions


def test_imap_fields_too_new_for_23() -> None:
    events = carrier_events(carrier="ID", reply=None) + [
        untagged_id("2.3.19"), located(Reply(sc(3), 0, "I", "OK", "ID completed.", True), (6,))]
    fs = found(Conn(events, "imap"))
    assert rules(fs) == ["trust.field_too_new"]
    assert dict(fs[0].facts)["fields"] == "x-multiplex x-client-transport"
    assert fs[0].severity is Severity.LOW


def test_pop3_destaddr_too_new_by_the_hosts_imap_version() -> None:
    events = carrier_events(carrier="ID", reply=None) + [
        untagged_id("2.4.1"), located(Reply(sc(3), 0, "I", "OK", "Trusted ID completed.", True), (6,))]
    fs = found(Conn(events, "imap"), pop3(params=POP3_PARAMS))
    assert rules(fs) == ["trust.field_too_new"]
    assert fs[0].flow == 1 and dict(fs[0].facts)["fields"] == "DESTADDR DESTPORT"
    events[-2] = untagged_id("2.4.3")
    assert found(Conn(events, "imap"), pop3(params=POP3_PARAMS)) == []


def test_submission_fields_too_new_when_no_ehlo_list_was_captured() -> None:
    events = carrier_events(carrier="ID", reply=None) + [
        untagged_id("2.4.1"), located(Reply(sc(3), 0, "I", "OK", "Trusted ID completed.", True), (6,))]
    fs = [f for f in found(Conn(events, "imap"), smtp(caps=None, params=SUBMISSION_PARAMS)) if f.flow == 1]
    assert rules(fs) == ["trust.field_too_new"] and dict(fs[0].facts)["fields"] == "DESTPORT DESTADDR"
    # with the EHLO list captured, the list decides (A-S4), not the version
    fs = [f for f in found(Conn(events, "imap"), smtp(params=SUBMISSION_PARAMS)) if f.flow == 1]
    assert rules(fs) == []


def test_contradicting_version_hints_tell_nothing() -> None:
    events = carrier_events(carrier="ID", reply=None) + [
        untagged_id("2.3.19"), located(Reply(sc(3), 0, "I", "OK", "ID completed.", True), (6,))]
    pop = pop3(params=POP3_PARAMS)
    sub = smtp(params=SUBMISSION_PARAMS)  # its EHLO list says >= 2.4.3 for the same host
    assert "trust.field_too_new" not in rules(found(pop, sub))
    assert rules([f for f in found(Conn(events, "imap"), pop, sub) if f.flow == 1]) == []


# --- A-C2 spoofing


SPOOF_PARAMS: list[tuple[str, str | None]] = [("name", "Thunderbird"), ("x-originating-ip", "10.1.2.3"),
                                             ("x-originating-port", "4444")]
END_USER = Endpoint("198.51.100.9", 55555)


def test_spoofed_id_accepted_is_high() -> None:
    conn = Conn(carrier_events(carrier="ID", tag="a1", params=SPOOF_PARAMS), "imap", client=END_USER,
                server=Endpoint("192.0.2.10", 143))
    fs = found(conn)
    assert rules(fs) == ["trust.spoofed_forwarding"]
    f = fs[0]
    assert f.severity is Severity.HIGH and f.spec == "A-C2"
    assert "tag 'a1'" in f.message and "missing" in dict(f.facts)["form_problems"]
    assert dict(f.facts)["claimed_client"] == "10.1.2.3:4444"


def test_spoofed_id_not_trusted_is_medium() -> None:
    conn = Conn(carrier_events(carrier="ID", tag="a1", params=SPOOF_PARAMS, reply=("OK", "ID completed.")), "imap",
                client=END_USER)
    fs = found(conn)
    assert rules(fs) == ["trust.spoofed_forwarding"] and fs[0].severity is Severity.MEDIUM


def test_dovecot_proxy_form_is_not_spoofing() -> None:
    assert found(imap()) == []
    assert found(pop3(params=POP3_PARAMS)) == []
    assert found(smtp(params=SUBMISSION_PARAMS)) == []


def test_spoofing_sender_trusted_by_config_or_known_proxy() -> None:
    conn = Conn(carrier_events(carrier="ID", tag="a1", params=SPOOF_PARAMS), "imap", client=END_USER)
    assert found(conn, cfg=cli("198.51.100.0/24")) == []
    # the same non-Dovecot ID from a host that forwards a captured end-client connection: a (third-party) proxy
    proxy_params = SPOOF_PARAMS[:1] + [("x-originating-ip", "203.0.113.4"), ("x-originating-port", "6000")]
    client_leg = Conn([], "imap", client=Endpoint("203.0.113.4", 6000), server=Endpoint("192.0.2.10", 143))
    proxied = Conn(carrier_events(carrier="ID", tag="a1", params=proxy_params), "imap",
                   client=Endpoint("192.0.2.10", 40000))
    assert found(client_leg, proxied) == []


def test_spoofed_xclient_nginx_style_and_xoip() -> None:
    conn = smtp("smtp", caps=(POSTFIX_EHLO,), params=[("ADDR", "10.1.2.3"), ("LOGIN", "alice"), ("NAME", "x.example")],
                reply=("220", "mx ESMTP Postfix"))
    fs = [f for f in found(Conn(conn.events, "smtp", client=END_USER)) if f.rule == "trust.spoofed_forwarding"]
    assert len(fs) == 1 and fs[0].severity is Severity.HIGH
    xoip = Conn([greeting("+OK", "ready", ("XCLIENT",))] + carrier_events(
        carrier="XCLIENT", protocol="pop3", verb="XOIP", params=[("ADDR", "10.1.2.3")]), "pop3", client=END_USER)
    fs = found(xoip)
    assert rules(fs) == ["trust.spoofed_forwarding"] and "legacy XOIP" in fs[0].message


@pytest.mark.parametrize(("carrier", "protocol", "params", "tag", "ok"), [
    ("ID", "imap", None, "I", True),  # factory default: the 2.4 proxy's ID (spec 6.1)
    ("ID", "imap", [("name", "Mail"), ("x-session-id", "s"), ("x-originating-ip", "1.2.3.4"),
                    ("x-originating-port", "1"), ("x-connected-ip", "1.2.3.5"), ("x-connected-port", "2"),
                    ("x-proxy-ttl", "4"), ("x-forward-a", "b"), ("x-forward-c", "d")], "I", True),  # 2.3, retained ID
    ("ID", "imap", [("x-session-id", "s"), ("x-originating-ip", "1.2.3.4"), ("x-originating-port", "1"),
                    ("x-connected-ip", "1.2.3.5"), ("x-connected-port", "2"), ("x-proxy-ttl", "4"),
                    ("name", "late")], "I", False),
    ("ID", "imap", [("x-originating-ip", "1.2.3.4"), ("x-session-id", "s"), ("x-originating-port", "1"),
                    ("x-connected-ip", "1.2.3.5"), ("x-connected-port", "2"), ("x-proxy-ttl", "4")], "I", False),
    ("XCLIENT", "pop3", POP3_PARAMS, None, True),
    ("XCLIENT", "pop3", [("ADDR", "1.2.3.4"), ("PORT", "1"), ("SESSION", "s"), ("TTL", "4"),
                         ("FORWARD", "eD15")], None, True),  # 2.3.19
    ("XCLIENT", "pop3", [("PORT", "1"), ("ADDR", "1.2.3.4"), ("SESSION", "s"), ("TTL", "4")], None, False),
    ("XCLIENT", "submission", SUBMISSION_PARAMS, None, True),
    ("XCLIENT", "smtp", [("HELO", "h"), ("PROTO", "ESMTP"), ("SESSION", "s"), ("TTL", "5"), ("PORT", "1"),
                         ("ADDR", "1.2.3.4")], None, True),  # lib-smtp relay order
    ("XCLIENT", "lmtp", LMTP_PARAMS, None, True),
    ("XCLIENT", "lmtp", [("ADDR", "1.2.3.4"), ("HELO", "h")], None, False),
])
def test_dovecot_form(carrier: str, protocol: str, params: list[tuple[str, str | None]] | None,
                      tag: str | None, ok: bool) -> None:
    kw: dict[str, object] = {"carrier": carrier, "protocol": protocol}
    if params is not None:
        kw["params"] = params
    if tag is not None:
        kw["tag"] = tag
    rec = make_record(**kw)
    assert (trust.dovecot_form_problems(rec) == []) is ok, trust.dovecot_form_problems(rec)


_TXT = st.binary(max_size=30).map(lambda b: b.decode("utf-8", "surrogateescape"))
_NAMES = st.one_of(_TXT, st.sampled_from(["x-originating-ip", "x-session-id", "x-proxy-ttl", "x-client-transport",
                                          "ADDR", "PORT", "TTL", "SESSION", "DESTADDR", "FORWARD", "x-forward-a"]))


@settings(max_examples=200, deadline=None)
@given(params=st.lists(st.tuples(_NAMES, _TXT), min_size=1, max_size=8), reply=st.tuples(_TXT, _TXT),
       caps=st.lists(_TXT, max_size=3), version=_TXT,
       kind=st.sampled_from(["imap", "pop3", "submission", "smtp", "lmtp", "xrcpt"]), configured=st.booleans())
def test_random_wire_values_never_raise(params: list[tuple[str, str]], reply: tuple[str, str], caps: list[str],
                                        version: str, kind: str, configured: bool) -> None:
    """Random names, values, replies, capability lines and ID versions (raw bytes): findings, never a crash."""
    if kind == "imap":
        events = carrier_events(carrier="ID", params=params, reply=None) + [
            untagged_id(version), located(Reply(sc(3), 0, "I", reply[0], reply[1], True), (6,))]
        conn = Conn([greeting("OK", "ready", tuple(caps))] + events, "imap")
    elif kind == "pop3":
        conn = pop3(reply=reply, caps=tuple(caps), params=params)
    elif kind == "xrcpt":
        conn = smtp("lmtp", caps=tuple(caps), carrier="XRCPTFORWARD", params=params[:1], reply=reply)
    else:
        conn = smtp(kind, caps=tuple(caps), params=params, reply=reply)
    for f in found(conn, cfg=cli("10.0.0.0/30") if configured else None):
        assert f.rule.startswith("trust.") and f.frames


@pytest.mark.skipif(not os.path.isdir(PUBLIC), reason="public captures not present")
def test_nothing_above_info_on_public_captures() -> None:
    """Ordinary mail with no forwarding: the trust and chain rules stay quiet."""
    from analyzer.pipeline import analyze
    paths = sorted(p for p in glob.glob(f"{PUBLIC}/**/*", recursive=True)
                   if p.endswith((".pcap", ".pcapng", ".gz", ".cap")))
    assert paths
    loud = []
    for p in paths:
        result = analyze([p], Settings())
        loud += [(p, f.rule) for f in result.findings
                 if f.rule.startswith(("trust.", "chains.")) and f.severity > Severity.INFO]
    assert loud == []
