"""Tests for analyzer.rules.session: one positive and one nearby negative case per rule."""

from __future__ import annotations

import base64
import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.model import Direction
from analyzer.rules import RuleContext, session
from analyzer.rules.base import Finding, Severity
from tests.unit.rules.factory import (
    ID_PARAMS,
    LMTP_SESSION_ID,
    SESSION_ID,
    TS0,
    ctx_from_wire,
    make_ctx,
    make_record,
)


def run(ctx: RuleContext, rule: str) -> list[Finding]:
    return [f for f in session.check(ctx) if f.rule == rule]


def facts(f: Finding) -> dict[str, str]:
    return dict(f.facts)


def login_id(ts_us: int, port: int, ip: str) -> str:
    raw = (ts_us & (2**48 - 1)).to_bytes(6, "little") + port.to_bytes(2, "little") + ipaddress.ip_address(ip).packed
    return base64.b64encode(raw).decode("ascii")


def id_session(value: str | None, **repl: str) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for k, v in ID_PARAMS:
        if k == "x-session-id":
            v = value
        out.append((k, repl.get(k, v)))
    return out


NOW_US = TS0 // 1000  # the factory's capture time, in microseconds


def test_empty_session_id() -> None:
    [f] = run(make_ctx([make_record(params=id_session(""))]), "session.empty")
    assert facts(f)["key"] == "x-session-id" and "BAD" in f.message


def test_nil_session_id_is_not_empty() -> None:
    assert run(make_ctx([make_record(params=id_session(None))]), "session.empty") == []


def test_too_long() -> None:
    rec = make_record(carrier="XCLIENT", protocol="pop3", params=[("ADDR", "198.51.100.7"), ("SESSION", "a" * 65)])
    [f] = run(make_ctx([rec]), "session.too_long")
    assert facts(f)["length"] == "65" and "silently ignores" in f.message


def test_64_chars_and_lmtp_chains_are_not_too_long() -> None:
    ok = make_record(params=id_session("a" * 64))
    lmtp = make_record(carrier="XCLIENT", protocol="lmtp", params=[("SESSION", LMTP_SESSION_ID + ":P1" * 20)])
    assert run(make_ctx([ok, lmtp]), "session.too_long") == []


def test_bad_login_form() -> None:
    rec = make_record(params=id_session("q1w2e3r4t5y6u7i_"))  # 16 characters, '_' is not standard base64
    [f] = run(make_ctx([rec]), "session.bad_login_form")
    assert facts(f)["problems"] == "bad_base64"
    suffixed = make_record(params=id_session(SESSION_ID + ":P1"))
    [g] = run(make_ctx([suffixed]), "session.bad_login_form")
    assert facts(g)["problems"] == "unexpected_suffix"


def test_good_login_id_and_other_lengths_are_not_bad_form() -> None:
    recs = [make_record(params=id_session(SESSION_ID)), make_record(params=id_session("custom-session-7"[:15]))]
    assert run(make_ctx(recs), "session.bad_login_form") == []


def test_embedded_client_mismatch_with_plausible_time() -> None:
    sid = login_id(NOW_US - 2_000_000, 40000, "203.0.113.9")
    [f] = run(make_ctx([make_record(params=id_session(sid))]), "session.embedded_client_mismatch")
    assert f.severity is Severity.MEDIUM
    assert facts(f)["embedded_ip"] == "203.0.113.9" and facts(f)["forwarded_ip"] == "198.51.100.7"
    assert facts(f)["plausible_dovecot_id"] == "True" and facts(f)["age_s"] == "2"


def test_embedded_client_mismatch_with_odd_time_is_low() -> None:
    sid = login_id(NOW_US - 400 * 86400 * 10**6, 51234, "203.0.113.9")
    [f] = run(make_ctx([make_record(params=id_session(sid))]), "session.embedded_client_mismatch")
    assert f.severity is Severity.LOW and "IP differ" in f.message


def test_embedded_client_matches() -> None:
    good = make_record(params=id_session(login_id(NOW_US - 5_000_000, 51234, "198.51.100.7")))
    # early 2.x builds kept only the port's low byte: 51234 & 0xff == 34
    old = make_record(params=id_session(login_id(NOW_US, 51234 & 0xFF, "198.51.100.7")))
    mapped = make_record(params=id_session(login_id(NOW_US, 51234, "198.51.100.7"),
                                           **{"x-originating-ip": "::ffff:198.51.100.7"}))
    v6 = make_record(params=id_session(login_id(NOW_US, 51234, "2001:db8::7"), **{"x-originating-ip": "2001:db8::7"}))
    assert run(make_ctx([good, old, mapped, v6]), "session.embedded_client_mismatch") == []


def test_lmtp_many_hops() -> None:
    rec = make_record(carrier="XCLIENT", protocol="lmtp", params=[("SESSION", LMTP_SESSION_ID + ":P1" * 5)])
    [f] = run(make_ctx([rec]), "session.lmtp_many_hops")
    assert facts(f)["proxy_hops"] == "6"


def test_lmtp_five_hops_are_fine() -> None:
    rec = make_record(carrier="XCLIENT", protocol="lmtp", params=[("SESSION", LMTP_SESSION_ID + ":P1" * 4)])
    assert run(make_ctx([rec]), "session.lmtp_many_hops") == []


def test_bad_suffix() -> None:
    rec = make_record(carrier="XCLIENT", protocol="lmtp", params=[("SESSION", LMTP_SESSION_ID + ":X9:p")])
    [f] = run(make_ctx([rec]), "session.bad_suffix")
    assert set(facts(f)["problems"].split(",")) == {"bad_suffix", "unknown_suffix"}


def test_known_suffixes_are_fine() -> None:
    rec = make_record(carrier="XCLIENT", protocol="lmtp", params=[("SESSION", LMTP_SESSION_ID + ":T2:R1")])
    assert run(make_ctx([rec]), "session.bad_suffix") == []


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["imap", "pop3", "lmtp"]), st.binary(max_size=200), st.binary(max_size=20))
def test_random_bytes_never_raise(protocol: str, sid: bytes, port: bytes) -> None:
    if protocol == "imap":
        line = b'I ID ("x-session-id" "' + sid + b'" "x-originating-ip" "1.2.3.4" "x-originating-port" "' + port
    else:
        line = b"XCLIENT ADDR=1.2.3.4 PORT=" + port + b" SESSION=" + sid
    ctx = ctx_from_wire(protocol, [(Direction.TO_SERVER, line + b"\r\n")])
    for f in session.check(ctx):
        assert f.rule.startswith("session.")


def _reference_same_ip(embedded: str, forwarded: str) -> bool:
    """session._same_ip before the equal-text shortcut and the cache (HEAD 7890d9f)."""
    try:
        a = ipaddress.ip_address(embedded)
        b = ipaddress.ip_address(forwarded)
    except ValueError:
        return True
    if isinstance(b, ipaddress.IPv6Address) and b.ipv4_mapped is not None:
        b = b.ipv4_mapped
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    return a == b


_IP_TEXTS = st.one_of(
    st.ip_addresses().map(str),
    st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
    st.sampled_from(["192.0.2.1", "::ffff:192.0.2.1", "::ffff:c000:201", "192.0.2.01", "", "x"]),
    st.text(max_size=80),
)


@settings(max_examples=200, deadline=None)
@given(a=_IP_TEXTS, b=_IP_TEXTS)
def test_same_ip_matches_ipaddress(a: str, b: str) -> None:
    _same_ip = session._same_ip
    assert _same_ip(a, b) == _reference_same_ip(a, b)
    assert _same_ip(a, a) == _reference_same_ip(a, a)
    assert _same_ip(a, b) == _reference_same_ip(a, b)  # from the cache
