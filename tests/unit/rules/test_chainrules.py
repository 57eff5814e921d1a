"""Chain rules: A-C3 addresses, A-C4 TTL along the chain, A-C5 session ids, A-C9 client transport."""

from __future__ import annotations

import base64
from typing import Any

from hypothesis import given, settings, strategies as st

from analyzer.flows.model import FlowResult
from analyzer.forwarding.model import ForwardingRecord
from analyzer.model import Direction, Endpoint, Span
from analyzer.protocols.base import Reply
from analyzer.rules import chainrules
from analyzer.rules.base import Finding, Severity
from analyzer.rules.chains import build_chains
from tests.unit.rules.factory import TS0, located, make_ctx, make_flow, make_record

SEC = 10**9
CLIENT = Endpoint("198.51.100.7", 51234)
P1_IN, P1_OUT = Endpoint("192.0.2.10", 143), Endpoint("192.0.2.10", 40001)
P2_IN, P2_OUT = Endpoint("192.0.2.11", 143), Endpoint("192.0.2.11", 40002)
P3_IN, P3_OUT = Endpoint("192.0.2.12", 143), Endpoint("192.0.2.12", 40003)
BACKEND = Endpoint("192.0.2.30", 143)
SID = "q1w2e3r4t5y6u7i8"


def params(client: Endpoint | None = CLIENT, ttl: int | None = 6, sid: str | None = SID,
           connected: Endpoint | None = P1_IN, transport: str | None = "insecure") -> list[tuple[str, str | None]]:
    p: list[tuple[str, str | None]] = []
    if sid is not None:
        p.append(("x-session-id", sid))
    if client is not None:
        p += [("x-originating-ip", client.ip), ("x-originating-port", str(client.port))]
    if connected is not None:
        p += [("x-connected-ip", connected.ip), ("x-connected-port", str(connected.port))]
    if ttl is not None:
        p.append(("x-proxy-ttl", str(ttl)))
    if transport is not None:
        p.append(("x-client-transport", transport))
    return p


def flow(fid: int, client: Endpoint, server: Endpoint, t0: float, t1: float = 60, *, tls: str | None = None,
         protocol: str = "imap", events: list[object] | None = None) -> FlowResult:
    f = make_flow(fid, events or (), protocol, client=client, server=server, tls=tls)  # type: ignore[arg-type]
    f.summary.first_ts_ns = TS0 + int(t0 * SEC)
    f.summary.last_ts_ns = TS0 + int(t1 * SEC)
    return f


def hop(fid: int, sender: Endpoint, receiver: Endpoint, t: float, *, protocol: str = "imap", carrier: str = "ID",
        raw: list[tuple[str, str | None]] | None = None, **kw: object) -> ForwardingRecord:
    return make_record(flow=fid, sender=sender, receiver=receiver, carrier=carrier, protocol=protocol,
                       params=params(**kw) if raw is None else raw, ts_ns=TS0 + int(t * SEC),  # type: ignore[arg-type]
                       frames=(100 + fid,))


def run(recs: list[ForwardingRecord], flows: list[FlowResult]) -> list[Finding]:
    flows = sorted(flows, key=lambda f: f.id)
    ctx = make_ctx(recs, flows)
    ctx.chains = build_chains(recs, flows)
    return list(chainrules.check(ctx))


def rules(found: list[Finding]) -> list[str]:
    return sorted(f.rule for f in found)


def three_hops(h1: dict[str, Any], h2: dict[str, Any], h3: dict[str, Any] | None = None,
               client_tls: str | None = None) -> tuple[list[ForwardingRecord], list[FlowResult]]:
    """end client -> P1 -> P2 (-> P3) -> backend, one flow each, the hops' values as given."""
    fl = [flow(0, CLIENT, P1_IN, 0, tls=client_tls), flow(1, P1_OUT, P2_IN, 0.2), flow(2, P2_OUT, BACKEND, 0.4)]
    recs = [hop(1, P1_OUT, P2_IN, 0.3, **h1), hop(2, P2_OUT, BACKEND if h3 is None else P3_IN, 0.5, **h2)]
    if h3 is not None:
        fl[2] = flow(2, P2_OUT, P3_IN, 0.4)
        fl.append(flow(3, P3_OUT, BACKEND, 0.6))
        recs.append(hop(3, P3_OUT, BACKEND, 0.7, **h3))
    return recs, fl


def test_clean_chain_has_no_findings() -> None:
    recs, fl = three_hops({"ttl": 6}, {"ttl": 5}, {"ttl": 4})
    assert run(recs, fl) == []


# --- A-C3


def test_forwarded_client_changed() -> None:
    recs, fl = three_hops({}, {"ttl": 5, "client": Endpoint("10.0.0.99", 51234)})
    found = run(recs, fl)
    assert rules(found) == ["chains.forwarded_client_changed"]
    f = found[0]
    assert f.spec == "A-C3" and f.severity is Severity.MEDIUM
    assert f.flow == 2 and f.flows == (0, 1, 2) and f.frames == (102,)
    facts = dict(f.facts)
    assert facts["previous_hop_frames"] == f"{fl[0].summary.first_frame},101"
    assert facts["previous_hop_flows"] == "0,1"
    assert facts["previous_client"] == "198.51.100.7:51234" and facts["forwarded_client"] == "10.0.0.99:51234"


def test_forwarded_client_port_changed() -> None:
    recs, fl = three_hops({}, {"ttl": 5, "client": Endpoint(CLIENT.ip, 1)})
    assert rules(run(recs, fl)) == ["chains.forwarded_client_changed"]


def test_forwarded_client_mismatch_with_end_client() -> None:
    # the session id embeds the real client, the proxy forwarded another address
    ts_us = 1_700_000_000_000_000 & (2**48 - 1)  # lowest 48 bits of the microsecond time (spec 4.3)
    raw = ts_us.to_bytes(6, "little") + CLIENT.port.to_bytes(2, "little") + bytes([198, 51, 100, 7])
    sid = base64.b64encode(raw).decode()
    fl = [flow(0, CLIENT, P1_IN, 0), flow(1, P1_OUT, BACKEND, 0.2)]
    recs = [hop(1, P1_OUT, BACKEND, 0.3, sid=sid, client=Endpoint("203.0.113.66", 4444))]
    found = run(recs, fl)
    assert rules(found) == ["chains.forwarded_client_mismatch"]
    assert dict(found[0].facts)["end_client"] == "198.51.100.7:51234"
    # and with the real address forwarded, nothing
    assert run([hop(1, P1_OUT, BACKEND, 0.3, sid=sid)], fl) == []


def test_connected_address_mismatch_reported_once() -> None:
    recs, fl = three_hops({"connected": Endpoint("192.0.2.10", 993)}, {"ttl": 5, "connected": Endpoint("192.0.2.10",
                                                                                                       993)})
    found = run(recs, fl)
    assert rules(found) == ["chains.connected_address_mismatch"]  # the second hop repeats the value: not again
    f = found[0]
    assert f.flow == 1 and "993" in f.message and "port differs" in f.message
    assert dict(f.facts)["end_client_server"] == "192.0.2.10:143"


def test_connected_address_mismatch_needs_the_client_leg() -> None:
    recs = [hop(1, P1_OUT, P2_IN, 0.3, connected=Endpoint("192.0.2.99", 993)),
            hop(2, P2_OUT, BACKEND, 0.5, ttl=5, connected=Endpoint("192.0.2.99", 993))]
    fl = [flow(0, Endpoint("10.9.9.9", 1), Endpoint("10.9.9.8", 1), 0), flow(1, P1_OUT, P2_IN, 0.2),
          flow(2, P2_OUT, BACKEND, 0.4)]
    assert rules(run(recs, fl)) == []


# --- A-C4


def test_ttl_not_decremented() -> None:
    recs, fl = three_hops({"ttl": 6}, {"ttl": 6})
    found = run(recs, fl)
    assert rules(found) == ["chains.ttl_not_decremented"]
    assert dict(found[0].facts)["previous_ttl"] == "6" and found[0].spec == "A-C4"


def test_ttl_dropped_by_two_without_redirect() -> None:
    recs, fl = three_hops({"ttl": 6}, {"ttl": 4})
    assert rules(run(recs, fl)) == ["chains.ttl_not_decremented"]


def test_ttl_increase_is_high() -> None:
    recs, fl = three_hops({"ttl": 5}, {"ttl": 6})
    found = run(recs, fl)
    assert rules(found) == ["chains.ttl_increased"]
    assert found[0].severity is Severity.HIGH


def _redirect_chain(second_ttl: int, referral: bool) -> tuple[list[ForwardingRecord], list[FlowResult]]:
    """client -> P1 -> P2 ; P2 -> B1 answers LOGIN with a referral ; P2 retries to B2 with a lower TTL."""
    b1, b2 = Endpoint("192.0.2.31", 143), Endpoint("192.0.2.32", 143)
    text = "[REFERRAL imap://alice@192.0.2.32/] Try another server" if referral else "Authentication failed."
    rep = located(Reply(Span(Direction.TO_CLIENT, 0, 10), 1, "L", "NO", text, True), (150,))
    fl = [flow(0, CLIENT, P1_IN, 0), flow(1, P1_OUT, P2_IN, 0.2), flow(2, P2_OUT, b1, 0.4, 0.45, events=[rep]),
          flow(3, Endpoint("192.0.2.11", 40009), b2, 0.5)]
    recs = [hop(1, P1_OUT, P2_IN, 0.3, ttl=6), hop(2, P2_OUT, b1, 0.41, ttl=5),
            hop(3, Endpoint("192.0.2.11", 40009), b2, 0.51, ttl=second_ttl)]
    return recs, fl


def test_ttl_redirect_allows_one_more() -> None:
    recs, fl = _redirect_chain(4, referral=True)
    assert run(recs, fl) == []
    recs, fl = _redirect_chain(4, referral=False)
    assert rules(run(recs, fl)) == ["chains.ttl_not_decremented"]
    recs, fl = _redirect_chain(3, referral=True)
    found = run(recs, fl)
    assert rules(found) == ["chains.ttl_not_decremented"] and dict(found[0].facts)["redirects"] == "1"


def test_chain_longer_than_first_ttl() -> None:
    recs, fl = three_hops({"ttl": 2}, {"ttl": 1}, {"ttl": 0})
    found = run(recs, fl)
    assert rules(found) == ["chains.longer_than_ttl"]
    assert found[0].flow == 3 and dict(found[0].facts)["proxy_hops"] == "3"


# --- A-C5


def test_session_id_changed_along_chain() -> None:
    recs, fl = three_hops({}, {"ttl": 5, "sid": "another-session-id"})
    found = run(recs, fl)
    assert rules(found) == ["chains.session_id_changed"]
    assert dict(found[0].facts)["previous_session_id"] == SID


def test_login_session_id_must_not_grow_but_lmtp_may() -> None:
    recs, fl = three_hops({}, {"ttl": 5, "sid": SID + ":P1"})
    assert rules(run(recs, fl)) == ["chains.session_id_changed"]
    guid = base64.b64encode(bytes(range(16))).decode().rstrip("=")

    def lmtp(sid: str, ttl: int) -> list[tuple[str, str | None]]:
        return [("SESSION", sid), ("TTL", str(ttl)), ("PORT", "41000"), ("ADDR", "192.0.2.25")]

    mta = Endpoint("192.0.2.25", 41000)
    fl = [flow(0, mta, Endpoint("192.0.2.40", 24), 0, protocol="lmtp"),
          flow(1, Endpoint("192.0.2.40", 5000), Endpoint("192.0.2.41", 24), 0.2, protocol="lmtp"),
          flow(2, Endpoint("192.0.2.41", 5001), Endpoint("192.0.2.42", 24), 0.4, protocol="lmtp")]
    good = [hop(1, Endpoint("192.0.2.40", 5000), Endpoint("192.0.2.41", 24), 0.3, protocol="lmtp",
                carrier="XCLIENT", raw=lmtp(guid + ":P1", 5)),
            hop(2, Endpoint("192.0.2.41", 5001), Endpoint("192.0.2.42", 24), 0.5, protocol="lmtp",
                carrier="XCLIENT", raw=lmtp(guid + ":P1:T1:P1", 4))]
    assert run(good, fl) == []
    bad = [good[0], hop(2, Endpoint("192.0.2.41", 5001), Endpoint("192.0.2.42", 24), 0.5, protocol="lmtp",
                        carrier="XCLIENT", raw=lmtp(guid + ":X9", 4))]
    assert rules(run(bad, fl)) == ["chains.session_id_changed"]


def test_session_id_shared_by_different_end_clients() -> None:
    other_client = Endpoint("203.0.113.5", 60000)
    fl = [flow(0, CLIENT, P1_IN, 0), flow(1, P1_OUT, BACKEND, 0.2),
          flow(2, other_client, P2_IN, 1), flow(3, P2_OUT, BACKEND, 1.2)]
    recs = [hop(1, P1_OUT, BACKEND, 0.3), hop(3, P2_OUT, BACKEND, 1.3, client=other_client, connected=P2_IN)]
    found = run(recs, fl)
    assert rules(found) == ["chains.session_id_shared"]
    f = found[0]
    assert f.flow == 3 and f.flows == (1, 3) and dict(f.facts)["other_client"] == CLIENT.ip
    # the same end client twice (a reconnect reusing the id) is not reported
    recs2 = [hop(1, P1_OUT, BACKEND, 0.3), hop(3, P2_OUT, BACKEND, 1.3, client=Endpoint(CLIENT.ip, 1),
                                               connected=P2_IN)]
    assert "chains.session_id_shared" not in rules(run(recs2, fl))


# --- A-C9


def test_transport_says_tls_but_client_was_cleartext() -> None:
    recs, fl = three_hops({"transport": "TLS"}, {"ttl": 5, "transport": "TLS"})
    found = run(recs, fl)
    assert rules(found) == ["chains.client_transport_mismatch"]  # once: the second hop repeats the value
    assert found[0].spec == "A-C9" and dict(found[0].facts)["end_client_transport"] == "cleartext"


def test_transport_says_insecure_but_client_used_starttls() -> None:
    recs, fl = three_hops({"transport": "insecure"}, {"ttl": 5, "transport": "insecure"}, client_tls="starttls")
    assert rules(run(recs, fl)) == ["chains.client_transport_mismatch"]


def test_transport_matches() -> None:
    recs, fl = three_hops({"transport": "TLS"}, {"ttl": 5, "transport": "TLSv1.3"}, client_tls="implicit")
    assert run(recs, fl) == []


# --- structure


def test_shared_prefix_chains_report_once() -> None:
    # P1 -> P2 forwards a wrong TTL; P2 then has two attempts: two chains share the first two hops
    b1, b2 = Endpoint("192.0.2.31", 143), Endpoint("192.0.2.32", 143)
    fl = [flow(0, CLIENT, P1_IN, 0), flow(1, P1_OUT, P2_IN, 0.2), flow(2, P2_OUT, b1, 0.4),
          flow(3, Endpoint("192.0.2.11", 40009), b2, 0.5)]
    recs = [hop(1, P1_OUT, P2_IN, 0.3, ttl=6, connected=Endpoint("192.0.2.10", 993)),
            hop(2, P2_OUT, b1, 0.41, ttl=5, connected=Endpoint("192.0.2.10", 993)),
            hop(3, Endpoint("192.0.2.11", 40009), b2, 0.51, ttl=5, connected=Endpoint("192.0.2.10", 993))]
    flows = sorted(fl, key=lambda f: f.id)
    chains = build_chains(recs, flows)
    assert len(chains) == 2
    found = run(recs, fl)
    assert rules(found) == ["chains.connected_address_mismatch"]


_TTL = st.one_of(st.none(), st.integers(0, 12))
_TEXT = st.binary(max_size=20).map(lambda b: b.decode("utf-8", "surrogateescape"))


@settings(max_examples=200, deadline=None)
@given(ttls=st.tuples(_TTL, _TTL, _TTL), sids=st.tuples(_TEXT, _TEXT, _TEXT), transports=st.tuples(_TEXT, _TEXT),
       ports=st.tuples(st.integers(1, 65535), st.integers(1, 65535)), tls=st.sampled_from([None, "implicit"]))
def test_random_hop_values_never_raise(ttls: tuple[int | None, ...], sids: tuple[str, ...],
                                       transports: tuple[str, ...], ports: tuple[int, int],
                                       tls: str | None) -> None:
    """Random TTLs, session ids (raw bytes), transports and ports: findings, never an exception."""
    recs, fl = three_hops(
        {"ttl": ttls[0], "sid": sids[0] or None, "transport": transports[0]},
        {"ttl": ttls[1], "sid": sids[1] or None, "transport": transports[1],
         "client": Endpoint(CLIENT.ip, ports[0]), "connected": Endpoint("192.0.2.10", ports[1])},
        {"ttl": ttls[2], "sid": sids[2] or None}, client_tls=tls)
    for f in run(recs, fl):
        assert f.rule.startswith("chains.") and f.flows and f.frames
