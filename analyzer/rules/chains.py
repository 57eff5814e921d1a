"""Hop chains: the connections of one end-user session across proxies (client -> proxy ... -> backend).

A *hop* is one TCP connection of the chain. A connection that carries
forwarding (IMAP ``ID`` with internal keys, ``XCLIENT``) becomes a hop with the
values it forwarded; the end client's own connection, which carries none, can be
the first hop (``record_index == -1``). Capture files given together are linked
the same way: records carry their capture index and timestamps are comparable.

Strategy: one pass over the forwarding hops in time order (``ts_ns``, then flow
id). Each hop looks for its *predecessor* among earlier hops, through three
dictionaries filled as the pass goes, so the work is bounded by
``MAX_CANDIDATES`` look-ups per hop and never O(n^2):

1. same session key (``x-session-id``/``SESSION``; LMTP ``:P<n>``/``:T<n>``/``:R<n>``
   suffixes removed), preferring a hop whose TCP server is this hop's TCP client
   host (the proxy connects out from its own address, any port), else a hop that
   forwarded the same end-client address (``linked_by`` "session_id");
2. same forwarded client address and port (``linked_by`` "address"); when the
   session ids disagree, only a host-adjacent hop qualifies (so A-C5 can report a
   session id that changed along the chain);
3. host adjacency alone, when neither session id nor address contradicts and only
   one candidate fits (``linked_by`` "time").

A candidate is earlier, is not a sibling (a hop from the same sender host: the
proxy's own retries after a redirect), is not downstream (sent by the host this
hop connects to), and is within ``CHAIN_WINDOW_NS`` of this hop or its connection
is still open then. Capture hosts' clocks may differ, so a second bounded pass
gives a hop still without predecessor a host-adjacent hop with the same session
key or address captured up to ``CLOCK_SKEW_NS`` *later* (never closing a cycle:
chain order is link order, upstream first). A hop with no predecessor then looks for
the end client's own connection: a flow whose TCP client equals the forwarded
client address and port (or the address embedded in a Dovecot login session id),
open at the hop's time, preferring one whose server is the proxy's host or the
forwarded ``x-connected-ip``/``DESTADDR``; failing that one of the same protocol
family. Each hop has at most one predecessor, so the links form a forest; every
leaf gives one chain (its path back to the root, at most ``MAX_CHAIN_HOPS``).
Chains with fewer than two hops are not returned. Order and ids are deterministic:
by first hop time, then flow ids.
"""

from __future__ import annotations

import binascii
import bisect
import ipaddress
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from analyzer.flows.model import FlowResult
from analyzer.forwarding.model import ForwardingRecord
from analyzer.forwarding.sessionid import LOGIN_ID_LEN_IPV4, LOGIN_ID_LEN_IPV6, LOGIN_PORT_BYTES, LOGIN_TS_BYTES
from analyzer.model import Endpoint

CHAIN_WINDOW_NS = 60 * 10**9  # our choice: hops of one login follow each other within seconds; 60 s of capture time
OPEN_SLACK_NS = 10**9  # our choice: a connection counts as open up to 1 s after its last packet (capture jitter)
CLOCK_SKEW_NS = 2 * 10**9  # our choice: clocks of capture hosts may differ this much (an upstream hop seen "later")
MAX_CANDIDATES = 32  # our bound on earlier hops examined per index key (keeps linking O(n))
MAX_CHAIN_HOPS = 64  # our bound on hops per chain (Dovecot TTLs start at 5-7, spec 4.2)
HOP_CARRIERS = frozenset({"ID", "XCLIENT"})  # carriers that describe a connection's end client (spec 0)
LINK_KINDS = ("session_id", "address", "time")  # the order of Chain.linked_by

_SUFFIXES_RE = re.compile(r"(?::[TPR][0-9]+)+")  # lib-smtp/LMTP session id suffixes (spec 4.3)
_FAMILY = {"imap": "imap", "pop3": "pop3", "smtp": "smtp", "submission": "smtp", "lmtp": "smtp"}


@dataclass(frozen=True, slots=True)
class Hop:
    """One connection of a chain."""

    flow: int  #: flow id
    capture: int  #: capture file index
    record_index: int  #: index into the records (first forwarding record of the flow); -1 for the end client's own
    #: connection, which carries no forwarding
    sender: Endpoint  #: TCP client of the connection
    receiver: Endpoint  #: TCP server of the connection
    forwarded_client: Endpoint | None  #: x-originating-ip/port, ADDR/PORT
    forwarded_server: Endpoint | None  #: x-connected-ip/port, DESTADDR/DESTPORT
    ttl: int | None  #: x-proxy-ttl / TTL
    session_id: str | None  #: x-session-id / SESSION as sent
    ts_ns: int  #: time of the forwarding command (first packet of the connection for the end client's hop)
    protocol: str  #: imap, pop3, smtp, submission, lmtp ("unknown" when not told)
    carrier: str | None  #: ID or XCLIENT; None for the end client's connection


@dataclass(frozen=True, slots=True)
class Chain:
    """The hops of one end-user session, end client's connection first (when captured), backend last."""

    id: int  #: 0-based, in order of (first hop time, flow ids)
    hops: tuple[Hop, ...]  #: in order
    client: Endpoint | None  #: the end client as far as the chain tells
    session_id: str | None  #: the first session id seen along the chain
    linked_by: tuple[str, ...]  #: how hops were linked: "session_id", "address", "time" (in that order)


def session_key(session_id: str | None) -> str | None:
    """The part of a session id that stays the same along a chain (LMTP suffixes removed)."""
    if not session_id:
        return None
    if ":" not in session_id:
        return session_id
    base, sep, rest = session_id.partition(":")
    if sep and base and _SUFFIXES_RE.fullmatch(":" + rest):
        return base
    return session_id


class _H(NamedTuple):
    """A forwarding hop while linking: a plain tuple, cheap to build; it becomes a Hop only inside a chain."""

    ts: int  #: time of the forwarding command
    flow: int  #: flow id (one hop per flow)
    rec: int  #: index of the flow's first forwarding record
    sender_ip: str
    receiver_ip: str
    fc: Endpoint | None  #: forwarded client
    fs: Endpoint | None  #: forwarded server
    ttl: int | None
    sid: str | None  #: session id as sent
    skey: str | None  #: session_key(sid)
    akey: tuple[str, int] | None  #: forwarded client (ip, port) when both are known


def _make_hops(records: Sequence[ForwardingRecord]) -> list[_H]:
    """One hop per flow that carries ID/XCLIENT forwarding (split XCLIENT commands merged), in time order."""
    per_flow: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        if r.forwarding and r.carrier in HOP_CARRIERS:
            lst = per_flow.get(r.flow)
            if lst is None:
                per_flow[r.flow] = [i]
            else:
                lst.append(i)
    hops: list[_H] = []
    for flow, idx in per_flow.items():
        first = records[idx[0]]
        fc, fs, ttl, sid = first.forwarded_client, first.forwarded_server, first.ttl, first.session_id
        # IMAP applies only the first ID (spec 1.3); XCLIENT may be split over several commands (spec 3.4)
        if len(idx) > 1 and first.carrier != "ID":
            for i in idx[1:]:
                r = records[i]
                fc = fc if fc is not None else r.forwarded_client
                fs = fs if fs is not None else r.forwarded_server
                ttl = ttl if ttl is not None else r.ttl
                sid = sid if sid is not None else r.session_id
        hops.append(_H(first.ts_ns, flow, idx[0], first.sender.ip, first.receiver.ip, fc, fs, ttl, sid,
                       session_key(sid), _client_key(fc)))
    hops.sort()  # (ts, flow) first: flows are unique, so later fields never decide
    return hops


def _hop(h: _H, records: Sequence[ForwardingRecord]) -> Hop:
    r = records[h.rec]
    return Hop(h.flow, r.capture, h.rec, r.sender, r.receiver, h.fc, h.fs, h.ttl, h.sid, h.ts, r.protocol, r.carrier)


def _client_key(ep: Endpoint | None) -> tuple[str, int] | None:
    if ep is None or not ep.ip or not ep.port:
        return None
    return (ep.ip, ep.port)


def _embedded_client(sid: str | None) -> tuple[str, int] | None:
    """The client address and port inside a Dovecot login session id (spec 4.3; see forwarding.sessionid).

    A C-speed decode, because it runs once for every hop that found no predecessor.
    """
    if sid is None or len(sid) not in (LOGIN_ID_LEN_IPV4, LOGIN_ID_LEN_IPV6) or not sid.isascii():
        return None
    try:
        raw = binascii.a2b_base64(sid, strict_mode=True)
    except ValueError:  # binascii.Error: not the base64 alphabet
        return None
    if len(raw) not in (12, 24):
        return None
    port = int.from_bytes(raw[LOGIN_TS_BYTES:LOGIN_TS_BYTES + LOGIN_PORT_BYTES], "little")
    addr = raw[LOGIN_TS_BYTES + LOGIN_PORT_BYTES:]
    if not port:
        return None
    ip = socket.inet_ntop(socket.AF_INET, addr) if len(addr) == 4 else str(ipaddress.IPv6Address(addr))
    return (ip, port)


class _Linker:
    """The single pass that finds each hop's predecessor."""

    def __init__(self, hops: list[_H], flows: Sequence[FlowResult]) -> None:
        self.hops = hops
        self.flows = flows
        self.by_session: dict[str, list[int]] = {}
        self.by_address: dict[tuple[str, int], list[int]] = {}
        self.by_receiver: dict[str, list[int]] = {}
        self.pred: list[int | None] = [None] * len(hops)
        self.link: list[str | None] = [None] * len(hops)

    def _open_at(self, flow: int, ts: int) -> bool:
        if 0 <= flow < len(self.flows):
            s = self.flows[flow].summary
            return s.first_ts_ns <= ts <= s.last_ts_ns + OPEN_SLACK_NS
        return False

    def _candidates(self, lst: list[int], h: _H) -> list[int]:
        """Earlier hops of one index key (newest first) that can precede h: near in time or still open, not a
        sibling (same sender host) and not downstream of h (sent by the host h connects to)."""
        out = []
        for j in reversed(lst[-MAX_CANDIDATES:]):
            c = self.hops[j]
            if c.sender_ip != h.sender_ip and c.sender_ip != h.receiver_ip and (
                    h.ts - c.ts <= CHAIN_WINDOW_NS or self._open_at(c.flow, h.ts)):
                out.append(j)
        return out

    @staticmethod
    def _clients_agree(a: _H, b: _H) -> bool:
        return a.fc is None or b.fc is None or a.fc.ip == b.fc.ip

    def find(self, h: _H) -> tuple[int | None, str | None]:
        skey = h.skey
        lst = self.by_session.get(skey) if skey is not None else None
        if lst:
            cands = self._candidates(lst, h)
            for j in cands:
                if self.hops[j].receiver_ip == h.sender_ip:
                    return j, "session_id"
            for j in cands:
                if self._clients_agree(self.hops[j], h):
                    return j, "session_id"
        lst = self.by_address.get(h.akey) if h.akey is not None else None
        if lst:
            cands = self._candidates(lst, h)
            for j in cands:
                if self.hops[j].receiver_ip == h.sender_ip:
                    return j, "address"
            for j in cands:
                other = self.hops[j].skey
                if skey is None or other is None or other == skey:
                    return j, "address"
        lst = self.by_receiver.get(h.sender_ip)
        if not lst:
            return None, None
        fits = []
        for j in self._candidates(lst, h):
            c = self.hops[j]
            if (skey is None or c.skey is None or c.skey == skey) and self._clients_agree(c, h) \
                    and self._open_at(c.flow, h.ts):
                fits.append(j)
        if len(fits) == 1:
            return fits[0], "time"
        return None, None

    def run(self) -> None:
        for k, h in enumerate(self.hops):
            self.pred[k], self.link[k] = self.find(h)
            if h.skey is not None:
                self.by_session.setdefault(h.skey, []).append(k)
            if h.akey is not None:
                self.by_address.setdefault(h.akey, []).append(k)
            self.by_receiver.setdefault(h.receiver_ip, []).append(k)
        self._skewed()

    def is_ancestor(self, a: int, b: int) -> bool:
        """True when hop a is on b's predecessor path (bounded walk)."""
        cur: int | None = b
        for _ in range(4 * MAX_CHAIN_HOPS):
            if cur is None:
                return False
            if cur == a:
                return True
            cur = self.pred[cur]
        return True  # too deep to tell: treat as related, so no link is made

    def _skewed(self) -> None:
        """Hops left without a predecessor may have one captured up to CLOCK_SKEW_NS later on another host's
        clock: a hop into this hop's sender host with the same session key or forwarded address."""
        for k, h in enumerate(self.hops):
            if self.pred[k] is not None:
                continue
            lst = self.by_receiver.get(h.sender_ip)
            if not lst:
                continue
            for j in lst[bisect.bisect_right(lst, k):][:MAX_CANDIDATES]:
                c = self.hops[j]
                if c.ts - h.ts > CLOCK_SKEW_NS:
                    break
                if c.sender_ip in (h.sender_ip, h.receiver_ip):
                    continue
                how = ("session_id" if h.skey is not None and c.skey == h.skey else
                       "address" if h.akey is not None and c.akey == h.akey else None)
                if how is not None and not self.is_ancestor(k, j):
                    self.pred[k], self.link[k] = j, how
                    break


def _root_keys(h: _H) -> list[tuple[tuple[str, int], str]]:
    """Client endpoints a root hop's end-client connection may have: forwarded, then session-embedded."""
    keys: list[tuple[tuple[str, int], str]] = []
    if h.akey is not None:
        keys.append((h.akey, "address"))
    ek = _embedded_client(h.sid)
    if ek is not None and ek != h.akey:
        keys.append((ek, "session_id"))
    return keys


def _client_hop(h: _H, keys: list[tuple[tuple[str, int], str]], protocol: str, flows: Sequence[FlowResult],
                by_client: dict[tuple[str, int], list[int]], hop_of_flow: dict[int, int], k: int,
                linker: _Linker) -> tuple[Hop | int | None, str | None]:
    """The end client's own connection for a root hop: a Hop, the index of a hop that has it, or None."""
    best: tuple[tuple[int, int], int, str] | None = None
    servers = {h.sender_ip} if h.fs is None else {h.sender_ip, h.fs.ip}
    for key, how in keys:
        for fid in by_client.get(key, ()):
            if fid == h.flow or not 0 <= fid < len(flows):
                continue
            s = flows[fid].summary
            if not (s.first_ts_ns <= h.ts and (h.ts <= s.last_ts_ns + OPEN_SLACK_NS
                                               or h.ts - s.first_ts_ns <= CHAIN_WINDOW_NS)):
                continue
            if s.server.ip in servers:
                score = 2
            elif _FAMILY.get(s.protocol or "") == _FAMILY.get(protocol, "?"):
                score = 1
            else:
                continue
            rank = (score, s.first_ts_ns)
            if best is None or rank > best[0]:
                best = (rank, fid, how)
    if best is None:
        return None, None
    _, fid, how = best
    j = hop_of_flow.get(fid)
    if j is not None:
        return (None, None) if j == k or linker.is_ancestor(k, j) else (j, how)  # never a cycle
    s = flows[fid].summary
    return Hop(
        flow=fid, capture=s.capture, record_index=-1, sender=s.client, receiver=s.server, forwarded_client=None,
        forwarded_server=None, ttl=None, session_id=None, ts_ns=s.first_ts_ns, protocol=s.protocol or "unknown",
        carrier=None,
    ), how


def build_chains(records: Sequence[ForwardingRecord], flows: Sequence[FlowResult]) -> list[Chain]:
    """Link the hops of each end-user session across proxies and capture files; chains of 2+ hops."""
    hops = _make_hops(records)
    if not hops:
        return []
    linker = _Linker(hops, flows)
    linker.run()
    pred, link = linker.pred, linker.link
    # end client connections, for roots only; index just the client endpoints wanted
    roots = [k for k in range(len(hops)) if pred[k] is None]
    wanted: dict[int, list[tuple[tuple[str, int], str]]] = {}
    for k in roots:
        keys = _root_keys(hops[k])
        if keys:
            wanted[k] = keys
    want_set = {key for keys in wanted.values() for key, _ in keys}
    by_client: dict[tuple[str, int], list[int]] = {}
    if want_set:
        for f in flows:
            ck = (f.summary.client.ip, f.summary.client.port)
            if ck in want_set:
                by_client.setdefault(ck, []).append(f.id)
    first_hop: dict[int, Hop] = {}
    if by_client:
        hop_of_flow = {h.flow: k for k, h in enumerate(hops)}
        for k, keys in wanted.items():
            if not any(key in by_client for key, _ in keys):
                continue
            got, how = _client_hop(hops[k], keys, records[hops[k].rec].protocol, flows, by_client, hop_of_flow, k,
                                   linker)
            if isinstance(got, Hop):
                first_hop[k] = got
                link[k] = how
            elif isinstance(got, int):
                pred[k], link[k] = got, how
    has_child = [False] * len(hops)
    for p in pred:
        if p is not None:
            has_child[p] = True
    built: list[tuple[tuple[int, tuple[int, ...]], tuple[Hop, ...], tuple[str, ...]]] = []
    for leaf in range(len(hops)):
        if has_child[leaf] or (pred[leaf] is None and leaf not in first_hop):
            continue  # an inner hop, or a hop alone
        path = [leaf]
        kinds: set[str] = set()
        cur = leaf
        while pred[cur] is not None and len(path) < MAX_CHAIN_HOPS:
            kinds.add(link[cur] or "")
            nxt = pred[cur]
            assert nxt is not None
            path.append(nxt)
            cur = nxt
        path.reverse()
        chain_hops = [_hop(hops[i], records) for i in path]
        root = path[0]
        if pred[root] is None and root in first_hop and len(path) < MAX_CHAIN_HOPS:
            chain_hops.insert(0, first_hop[root])
            kinds.add(link[root] or "")
        if len(chain_hops) < 2:
            continue
        sort_key = (chain_hops[0].ts_ns, tuple(h.flow for h in chain_hops))
        built.append((sort_key, tuple(chain_hops), tuple(x for x in LINK_KINDS if x in kinds)))
    built.sort(key=lambda b: b[0])
    chains = []
    for i, (_, ch, kinds_t) in enumerate(built):
        first = ch[0]
        client = first.sender if first.record_index < 0 else first.forwarded_client
        sid = next((h.session_id for h in ch if h.session_id is not None), None)
        chains.append(Chain(id=i, hops=ch, client=client, session_id=sid, linked_by=kinds_t))
    return chains
