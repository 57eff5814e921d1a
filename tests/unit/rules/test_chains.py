"""Hop chains: linking forwarding records and the end client's connection across proxies and captures."""

from __future__ import annotations

import base64
import dataclasses
import time
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings, strategies as st

from analyzer.flows.model import FlowResult, FlowSummary
from analyzer.forwarding.model import ForwardingRecord
from analyzer.model import Endpoint
from analyzer.rules.chains import CLOCK_SKEW_NS, MAX_CHAIN_HOPS, Chain, build_chains, session_key
from tests.unit.rules.factory import TS0, make_flow, make_record

SEC = 10**9
CLIENT = Endpoint("198.51.100.7", 51234)
P1_IN = Endpoint("192.0.2.10", 143)  # first proxy, where the end client connects
P1_OUT = Endpoint("192.0.2.10", 40001)  # the same proxy connecting out (own address, any port)
P2_IN = Endpoint("192.0.2.11", 143)
P2_OUT = Endpoint("192.0.2.11", 40002)
BACKEND = Endpoint("192.0.2.30", 143)
SID = "q1w2e3r4t5y6u7i8"


def login_sid(ip: str, port: int, ts_us: int = 1_700_000_000_123_456) -> str:
    """A Dovecot login-service session id embedding this client (spec 4.3)."""
    raw = (ts_us & (2**48 - 1)).to_bytes(6, "little") + port.to_bytes(2, "little")
    raw += bytes(int(x) for x in ip.split("."))
    return base64.b64encode(raw).decode("ascii")


def id_params(client: Endpoint | None = CLIENT, ttl: int | None = 6, sid: str | None = SID,
              connected: Endpoint | None = Endpoint("192.0.2.10", 143),
              transport: str | None = "insecure") -> list[tuple[str, str | None]]:
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


def flow(fid: int, client: Endpoint, server: Endpoint, t0: float, t1: float, *, protocol: str = "imap",
         capture: int = 0, tls: str | None = None) -> FlowResult:
    f = make_flow(fid, (), protocol, client=client, server=server, tls=tls, capture=capture)
    f.summary.first_ts_ns = TS0 + int(t0 * SEC)
    f.summary.last_ts_ns = TS0 + int(t1 * SEC)
    return f


def hop(fid: int, sender: Endpoint, receiver: Endpoint, t: float, *, capture: int = 0, protocol: str = "imap",
        carrier: str = "ID", params: list[tuple[str, str | None]] | None = None, **kw: object) -> ForwardingRecord:
    return make_record(flow=fid, capture=capture, sender=sender, receiver=receiver, carrier=carrier,
                       protocol=protocol, params=id_params(**kw) if params is None else params,  # type: ignore[arg-type]
                       ts_ns=TS0 + int(t * SEC), frames=(fid * 10 + 4,))


def flows_of(*fl: FlowResult) -> list[FlowResult]:
    out = sorted(fl, key=lambda f: f.id)
    assert [f.id for f in out] == list(range(len(out)))
    return out


def chain_flows(chains: list[Chain]) -> list[tuple[int, ...]]:
    return [tuple(h.flow for h in c.hops) for c in chains]


def test_two_hop_chain_end_client_first() -> None:
    fl = flows_of(flow(0, CLIENT, P1_IN, 0, 5), flow(1, P1_OUT, BACKEND, 0.2, 5))
    recs = [hop(1, P1_OUT, BACKEND, 0.3)]
    chains = build_chains(recs, fl)
    assert chain_flows(chains) == [(0, 1)]
    c = chains[0]
    assert c.id == 0 and c.client == CLIENT and c.session_id == SID and c.linked_by == ("address",)
    first, last = c.hops
    assert first.record_index == -1 and first.carrier is None and first.sender == CLIENT and first.receiver == P1_IN
    assert last.record_index == 0 and last.ttl == 6 and last.forwarded_client == CLIENT and last.carrier == "ID"


def test_three_hop_chain_across_two_captures_with_noise() -> None:
    other = Endpoint("203.0.113.50", 40000)
    fl = flows_of(
        flow(0, CLIENT, P1_IN, 0, 10),  # end client -> proxy 1 (capture 0)
        flow(1, P1_OUT, P2_IN, 0.5, 10),  # proxy 1 -> proxy 2 (capture 0)
        flow(2, other, P1_IN, 0.6, 10),  # noise: another user's connection, never forwarded
        flow(3, P2_OUT, BACKEND, 0.9, 10, capture=1),  # proxy 2 -> backend (capture 1)
        flow(4, Endpoint("10.9.9.9", 5000), BACKEND, 1.0, 2, capture=1),  # noise: plain client ID, no forwarding
        flow(5, Endpoint("10.0.0.77", 4000), BACKEND, 1.1, 2, capture=1),  # noise: another session
        flow(6, CLIENT, Endpoint("192.0.2.99", 80), 300, 301, protocol="smtp"),  # same client ip:port, much later
    )
    recs = [
        hop(1, P1_OUT, P2_IN, 0.6, ttl=6),
        hop(4, Endpoint("10.9.9.9", 5000), BACKEND, 1.05, capture=1, params=[("name", "Thunderbird")]),
        hop(5, Endpoint("10.0.0.77", 4000), BACKEND, 1.2, capture=1, client=Endpoint("198.51.100.99", 1000),
            sid="zzzzzzzzzzzzzzzz"),
        hop(3, P2_OUT, BACKEND, 1.0, capture=1, ttl=5),
    ]
    chains = build_chains(recs, fl)
    assert chain_flows(chains) == [(0, 1, 3)]
    c = chains[0]
    assert [h.capture for h in c.hops] == [0, 0, 1]
    assert [h.ttl for h in c.hops] == [None, 6, 5]
    assert [h.record_index for h in c.hops] == [-1, 0, 3]
    assert c.linked_by == ("session_id", "address")
    assert c.client == CLIENT


def test_clock_skew_between_capture_files() -> None:
    # capture 1's clock runs 50 ms behind: the downstream hop P2 -> backend appears before P1 -> P2
    fl = flows_of(flow(0, CLIENT, P1_IN, 0, 10), flow(1, P1_OUT, P2_IN, 0.4, 10),
                  flow(2, P2_OUT, BACKEND, 0.42, 10, capture=1))
    recs = [hop(1, P1_OUT, P2_IN, 0.5, ttl=6), hop(2, P2_OUT, BACKEND, 0.45, capture=1, ttl=5)]
    chains = build_chains(recs, fl)
    assert chain_flows(chains) == [(0, 1, 2)]  # never (0, 2, 1): a hop sent by P2 cannot precede P1 -> P2
    # beyond CLOCK_SKEW_NS the hops are not joined (each still finds the end client's connection)
    recs = [hop(1, P1_OUT, P2_IN, 5.5, ttl=6), hop(2, P2_OUT, BACKEND, 0.45, capture=1, ttl=5)]
    assert chain_flows(build_chains(recs, fl)) == [(0, 1), (0, 2)]


def test_session_id_links_when_proxy_connects_from_another_address() -> None:
    # proxy 2 listens on .11 but connects out from .21: no host adjacency, the session id still links
    p2_elsewhere = Endpoint("192.0.2.21", 40003)
    fl = flows_of(flow(0, P1_OUT, P2_IN, 0, 5), flow(1, p2_elsewhere, BACKEND, 0.5, 5))
    recs = [hop(0, P1_OUT, P2_IN, 0.1, ttl=6), hop(1, p2_elsewhere, BACKEND, 0.6, ttl=5)]
    chains = build_chains(recs, fl)
    assert chain_flows(chains) == [(0, 1)] and chains[0].linked_by == ("session_id",)


def test_lmtp_session_suffixes_link() -> None:
    guid = base64.b64encode(bytes(range(16))).decode().rstrip("=")
    assert session_key(guid + ":P1:P1") == guid and session_key(guid) == guid and session_key("a:b") == "a:b"
    mta = Endpoint("192.0.2.25", 41000)
    lp1_in, lp1_out = Endpoint("192.0.2.40", 24), Endpoint("192.0.2.40", 50001)
    lp2_in, lp2_out = Endpoint("192.0.2.41", 24), Endpoint("192.0.2.41", 50002)

    def lmtp_params(sid: str, ttl: int) -> list[tuple[str, str | None]]:
        return [("HELO", "mta.example"), ("PROTO", "LMTP"), ("SESSION", sid), ("TTL", str(ttl)),
                ("PORT", "41000"), ("ADDR", "192.0.2.25")]

    fl = flows_of(flow(0, mta, lp1_in, 0, 5, protocol="lmtp"), flow(1, lp1_out, lp2_in, 0.2, 5, protocol="lmtp"),
                  flow(2, lp2_out, Endpoint("192.0.2.42", 24), 0.4, 5, protocol="lmtp"))
    recs = [hop(1, lp1_out, lp2_in, 0.3, protocol="lmtp", carrier="XCLIENT", params=lmtp_params(guid + ":P1", 5)),
            hop(2, lp2_out, Endpoint("192.0.2.42", 24), 0.5, protocol="lmtp", carrier="XCLIENT",
                params=lmtp_params(guid + ":P1:P1", 4))]
    chains = build_chains(recs, fl)
    assert chain_flows(chains) == [(0, 1, 2)]
    assert chains[0].session_id == guid + ":P1"


def test_redirect_retries_are_siblings_not_hops() -> None:
    b1, b2 = Endpoint("192.0.2.31", 143), Endpoint("192.0.2.32", 143)
    fl = flows_of(flow(0, CLIENT, P1_IN, 0, 9), flow(1, P1_OUT, b1, 0.2, 0.4), flow(2, Endpoint("192.0.2.10", 40005),
                                                                                     b2, 0.5, 9))
    recs = [hop(1, P1_OUT, b1, 0.3, ttl=6), hop(2, Endpoint("192.0.2.10", 40005), b2, 0.6, ttl=5)]
    chains = build_chains(recs, fl)
    assert chain_flows(chains) == [(0, 1), (0, 2)]  # both attempts follow the end client's connection


def test_time_window_and_open_connection() -> None:
    # the hop 120 s later is not linked once the upstream connection has closed ...
    fl = flows_of(flow(0, P1_OUT, P2_IN, 0, 1), flow(1, P2_OUT, BACKEND, 120, 121))
    recs = [hop(0, P1_OUT, P2_IN, 0.1, ttl=6), hop(1, P2_OUT, BACKEND, 120.1, ttl=5)]
    assert build_chains(recs, fl) == []
    # ... but is while it is still open
    fl[0].summary.last_ts_ns = TS0 + 200 * SEC
    assert chain_flows(build_chains(recs, fl)) == [(0, 1)]


def test_end_client_connection_must_be_open_and_of_the_same_family() -> None:
    fl = flows_of(flow(0, CLIENT, Endpoint("192.0.2.99", 25), 0, 5, protocol="smtp"),
                  flow(1, P1_OUT, BACKEND, 0.2, 5))
    recs = [hop(1, P1_OUT, BACKEND, 0.3, connected=None)]
    assert build_chains(recs, fl) == []  # same client ip:port but an SMTP connection to another host
    fl = flows_of(flow(0, CLIENT, Endpoint("192.0.2.99", 143), 0, 5), flow(1, P1_OUT, BACKEND, 0.2, 5))
    assert chain_flows(build_chains(recs, fl)) == [(0, 1)]  # an IMAP connection: same family, accepted
    fl = flows_of(flow(0, CLIENT, P1_IN, 10, 15), flow(1, P1_OUT, BACKEND, 0.2, 5))
    assert build_chains(recs, fl) == []  # the client connected after the hop


def test_time_link_needs_a_single_consistent_candidate() -> None:
    # hops with neither session id nor forwarded address: linked by host adjacency alone
    bare: dict[str, Any] = {"client": None, "sid": None, "connected": None}
    fl = flows_of(flow(0, P1_OUT, P2_IN, 0, 5), flow(1, P2_OUT, BACKEND, 0.5, 5))
    recs = [hop(0, P1_OUT, P2_IN, 0.1, ttl=6, **bare), hop(1, P2_OUT, BACKEND, 0.6, ttl=5, **bare)]
    chains = build_chains(recs, fl)
    assert chain_flows(chains) == [(0, 1)] and chains[0].linked_by == ("time",)
    # two candidates into proxy 2: ambiguous, nothing linked
    fl2 = flows_of(flow(0, P1_OUT, P2_IN, 0, 5), flow(1, Endpoint("192.0.2.12", 9), P2_IN, 0.2, 5),
                   flow(2, P2_OUT, BACKEND, 0.5, 5))
    recs2 = [hop(0, P1_OUT, P2_IN, 0.1, **bare), hop(1, Endpoint("192.0.2.12", 9), P2_IN, 0.3, **bare),
             hop(2, P2_OUT, BACKEND, 0.6, **bare)]
    assert build_chains(recs2, fl2) == []


def test_embedded_session_address_finds_the_end_client() -> None:
    real = Endpoint("198.51.100.20", 40404)
    sid = login_sid(real.ip, real.port)
    fl = flows_of(flow(0, real, P1_IN, 0, 5), flow(1, P1_OUT, BACKEND, 0.2, 5))
    recs = [hop(1, P1_OUT, BACKEND, 0.3, sid=sid, client=Endpoint("10.66.66.66", 1))]
    chains = build_chains(recs, fl)
    assert chain_flows(chains) == [(0, 1)] and chains[0].linked_by == ("session_id",)
    assert chains[0].client == real


def test_split_xclient_commands_make_one_hop() -> None:
    fl = flows_of(flow(0, CLIENT, Endpoint("192.0.2.10", 587), 0, 5, protocol="submission"),
                  flow(1, Endpoint("192.0.2.10", 40010), Endpoint("192.0.2.32", 587), 0.2, 5,
                       protocol="submission"))
    sender, receiver = Endpoint("192.0.2.10", 40010), Endpoint("192.0.2.32", 587)
    first = hop(1, sender, receiver, 0.3, protocol="submission", carrier="XCLIENT",
                params=[("HELO", "c.example"), ("PROTO", "ESMTP"), ("TTL", "6")])
    second = dataclasses.replace(
        hop(1, sender, receiver, 0.31, protocol="submission", carrier="XCLIENT",
            params=[("PORT", "51234"), ("ADDR", "198.51.100.7"), ("SESSION", SID)]), command_seq=1)
    chains = build_chains([first, second], fl)
    assert chain_flows(chains) == [(0, 1)]
    h = chains[0].hops[1]
    assert (h.ttl, h.session_id, h.forwarded_client, h.record_index) == (6, SID, CLIENT, 0)


def test_deterministic_order_and_ids() -> None:
    fl = []
    recs = []
    for n in range(4):
        c = Endpoint(f"198.51.100.{n + 1}", 50000 + n)
        fl.append(flow(2 * n, c, P1_IN, 10 - n, 20))
        fl.append(flow(2 * n + 1, Endpoint("192.0.2.10", 41000 + n), BACKEND, 10.5 - n, 20))
        recs.append(hop(2 * n + 1, Endpoint("192.0.2.10", 41000 + n), BACKEND, 10.6 - n, client=c,
                        sid=f"session{n:09d}xx"))
    chains = build_chains(recs, flows_of(*fl))
    assert [c.id for c in chains] == [0, 1, 2, 3]
    assert chain_flows(chains) == [(6, 7), (4, 5), (2, 3), (0, 1)]  # by first hop time
    again = build_chains(list(reversed(recs)), flows_of(*fl))  # record order does not matter (but indexes do)
    assert [dataclasses.replace(c, hops=tuple(dataclasses.replace(h, record_index=0) for h in c.hops))
            for c in again] == [dataclasses.replace(c, hops=tuple(dataclasses.replace(h, record_index=0)
                                                                  for h in c.hops)) for c in chains]


def test_non_forwarding_records_make_no_hops() -> None:
    fl = flows_of(flow(0, CLIENT, P1_IN, 0, 5), flow(1, P1_OUT, BACKEND, 0.2, 5))
    recs = [hop(1, P1_OUT, BACKEND, 0.3, params=[("name", "Dovecot"), ("x-originating-ip-typo", "1.2.3.4")])]
    assert not recs[0].forwarding
    assert build_chains(recs, fl) == []
    assert build_chains([], []) == []


def _bulk(base_rec: ForwardingRecord, base_flow: FlowResult, n: int,
          vary: Callable[[int], tuple[dict[str, object], dict[str, object]]]) -> tuple[list[ForwardingRecord],
                                                                                    list[FlowResult]]:
    """n records and flows copied from templates with some fields changed (positional construction: fast)."""
    rnames = [f.name for f in dataclasses.fields(ForwardingRecord)]
    fnames = [f.name for f in dataclasses.fields(FlowSummary)]
    rvals = [getattr(base_rec, x) for x in rnames]
    fvals = [getattr(base_flow.summary, x) for x in fnames]
    ri = {x: i for i, x in enumerate(rnames)}
    fi = {x: i for i, x in enumerate(fnames)}
    recs, flows = [], []
    for i in range(n):
        rchg, fchg = vary(i)
        for k, v in rchg.items():
            rvals[ri[k]] = v
        for k, v in fchg.items():
            fvals[fi[k]] = v
        fvals[fi["events"]] = []
        recs.append(ForwardingRecord(*rvals))
        flows.append(FlowResult(i, "", FlowSummary(*fvals)))
    return recs, flows


def test_200000_unrelated_records_build_quickly() -> None:
    n = 200_000

    def vary(i: int) -> tuple[dict[str, object], dict[str, object]]:
        a, b = divmod(i, 250)
        ts = TS0 + i * 1000
        proxy = Endpoint("192.0.2.10", 1024 + i % 60000)
        return ({"flow": i, "ts_ns": ts, "sender": proxy, "session_id": f"s{i:015d}",
                 "forwarded_client": Endpoint(f"10.{a % 250}.{a // 250}.{b}", 1024 + i % 60000)},
                {"client": proxy, "first_ts_ns": ts, "last_ts_ns": ts + 10**6})

    recs, flows = _bulk(hop(0, P1_OUT, BACKEND, 0), flow(0, CLIENT, BACKEND, 0, 1), n, vary)
    t0 = time.perf_counter()
    chains = build_chains(recs, flows)
    elapsed = time.perf_counter() - t0
    assert chains == []
    assert elapsed < 8.0, f"build_chains took {elapsed:.2f} s for {n} records"  # about 1.5 s on an idle 2-core VM


def test_one_session_id_reused_everywhere_stays_bounded() -> None:
    # an attacker reusing one session id for 20,000 connections from 20,000 hosts: each hop looks at a
    # bounded number of candidates and each chain is at most MAX_CHAIN_HOPS long
    n = 20_000

    def vary(i: int) -> tuple[dict[str, object], dict[str, object]]:
        sender = Endpoint(f"10.1.{i // 250}.{i % 250}", 2000)
        receiver = Endpoint(f"10.1.{(i + 1) // 250}.{(i + 1) % 250}", 143)  # each hop feeds the next host
        return ({"flow": i, "ts_ns": TS0 + i * 1000, "sender": sender, "receiver": receiver},
                {"client": sender, "server": receiver, "first_ts_ns": TS0, "last_ts_ns": TS0 + 10**12})

    recs, flows = _bulk(hop(0, P1_OUT, BACKEND, 0), flow(0, CLIENT, BACKEND, 0, 1), n, vary)
    t0 = time.perf_counter()
    chains = build_chains(recs, flows)
    assert time.perf_counter() - t0 < 8.0
    assert chains and all(2 <= len(c.hops) <= MAX_CHAIN_HOPS for c in chains)


_IPS = st.sampled_from(["192.0.2.10", "192.0.2.11", "192.0.2.30", "198.51.100.7", "2001:db8::1"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_IPS, _IPS, st.binary(max_size=24), st.integers(0, 70), st.one_of(st.none(), _IPS),
                          st.integers(0, 65535), st.one_of(st.none(), st.integers(0, 9))), max_size=12))
def test_random_hops_never_raise(items: list[tuple[str, str, bytes, int, str | None, int, int | None]]) -> None:
    """Random session ids (bytes), addresses, ports, TTLs and times: chains stay well-formed."""
    recs, fl = [], []
    for i, (sip, rip, sid, t, cip, port, ttl) in enumerate(items):
        sender, receiver = Endpoint(sip, 40000 + i), Endpoint(rip, 143)
        fl.append(flow(i, sender, receiver, t, t + 30))
        recs.append(hop(i, sender, receiver, t + 0.1, sid=sid.decode("utf-8", "surrogateescape") or None,
                        client=Endpoint(cip, port) if cip else None, ttl=ttl))
    fl.append(flow(len(items), CLIENT, P1_IN, 0, 100))
    chains = build_chains(recs, fl)
    assert [c.id for c in chains] == list(range(len(chains)))
    seen = set()
    for c in chains:
        assert 2 <= len(c.hops) <= MAX_CHAIN_HOPS
        assert all(h.record_index >= 0 for h in c.hops[1:])
        # upstream first: a hop may only appear before its predecessor by the allowed clock skew
        assert all(b.ts_ns >= a.ts_ns - CLOCK_SKEW_NS for a, b in zip(c.hops[1:], c.hops[2:]))
        key = tuple(h.flow for h in c.hops)
        assert key not in seen
        seen.add(key)
