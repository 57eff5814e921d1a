"""Rules that compare the hops of a proxy chain (``ctx.chains``, built by :mod:`analyzer.rules.chains`).

* A-C3: the forwarded client changes from one hop to the next; the first
  forwarding hop's client is not the end client's TCP address; the forwarded
  ``x-connected-ip/port`` / ``DESTADDR/DESTPORT`` is not where the end client
  connected (only when the end client's own connection is in the chain).
* A-C4: the TTL does not drop by exactly 1 per hop (a redirect allows one more per
  redirect: an IMAP ``[REFERRAL`` reply on the earlier hop or on an earlier
  attempt of the same proxy); a TTL that increases (HIGH); more proxy hops than
  the first hop's TTL allows.
* A-C5: one session id used for different end clients (in different chains); a
  session id that changes along a chain (login services keep it, LMTP only
  appends ``:P<n>``-style suffixes).
* A-C9: ``x-client-transport`` / ``CLIENT-TRANSPORT`` says TLS while the end
  client's connection was cleartext (no implicit TLS, no STARTTLS), or the other
  way round.

Strategy: every rule looks at consecutive hops of each chain (``check_global``); the only
thing read from events, the referral replies of a hop's flow, is counted flow by flow in
``check_flow`` (the one pass over the flows, :mod:`analyzer.rules`). Chains that share
their first hops (one leaf per chain) would repeat a finding, so each finding is
made once per (rule, later hop, detail). A finding's ``flow`` is the later hop's
flow, ``flows`` every hop of the chain in order, ``frames`` the later hop's
command frames; the earlier hops' frames are the ``previous_hop_frames`` fact.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator

from analyzer.flows.model import FlowResult
from analyzer.forwarding.model import ForwardingRecord
from analyzer.model import Endpoint
from analyzer.protocols.base import Reply
from analyzer.rules import RuleContext, check_module, flow_groups
from analyzer.rules.base import Finding, RuleInfo, Severity
from analyzer.rules.chains import Chain, Hop, session_key

CLIENT_CHANGED = RuleInfo(
    "chains.forwarded_client_changed", Severity.MEDIUM,
    "The forwarded client address changes from one proxy hop to the next", "A-C3")
CLIENT_MISMATCH = RuleInfo(
    "chains.forwarded_client_mismatch", Severity.MEDIUM,
    "The forwarded client is not the end client's own TCP address", "A-C3")
CONNECTED_MISMATCH = RuleInfo(
    "chains.connected_address_mismatch", Severity.MEDIUM,
    "x-connected-ip/port or DESTADDR/DESTPORT is not where the end client connected", "A-C3")
TTL_NOT_DECREMENTED = RuleInfo(
    "chains.ttl_not_decremented", Severity.MEDIUM,
    "The TTL does not drop by exactly 1 (plus redirects) from one hop to the next", "A-C4")
TTL_INCREASED = RuleInfo(
    "chains.ttl_increased", Severity.HIGH, "The TTL increases from one hop to the next", "A-C4")
LONGER_THAN_TTL = RuleInfo(
    "chains.longer_than_ttl", Severity.MEDIUM, "The chain has more proxy hops than its first TTL allows", "A-C4")
SESSION_SHARED = RuleInfo(
    "chains.session_id_shared", Severity.MEDIUM, "One session id is used for different end clients", "A-C5")
SESSION_CHANGED = RuleInfo(
    "chains.session_id_changed", Severity.MEDIUM, "The session id changes along a proxy chain", "A-C5")
TRANSPORT_MISMATCH = RuleInfo(
    "chains.client_transport_mismatch", Severity.MEDIUM,
    "The forwarded client transport (TLS/insecure) contradicts the end client's connection", "A-C9")

RULES: tuple[RuleInfo, ...] = (
    CLIENT_CHANGED, CLIENT_MISMATCH, CONNECTED_MISMATCH, TTL_NOT_DECREMENTED, TTL_INCREASED, LONGER_THAN_TTL,
    SESSION_SHARED, SESSION_CHANGED, TRANSPORT_MISMATCH,
)

REFERRAL = "[REFERRAL"  # RFC 2221 login referral; each redirect costs a Dovecot proxy one more TTL (spec 4.2)
TRANSPORT_KEYS = frozenset({"x-client-transport", "client-transport"})  # spec 1.3, 2.3, 3.3
TLS_PREFIX = "TLS"  # "prefix TLS means secured" (cmd_id_x_client_transport(), spec 1.3)
LMTP_SUFFIXES_RE = re.compile(r"(?::[TPR][0-9]+)+")  # spec 4.3: :T<n>, :P<n>, :R<n> appended by lib-smtp/LMTP
MAX_SHARED_PER_SESSION = 16  # our bound on A-C5 "shared" findings per session id
_FACTS_KEY = "chainrules"  # this module's entry in RuleContext.facts: flow id -> referral replies


def _ep(e: Endpoint) -> str:
    return f"{e.ip}:{e.port}" if e.port else e.ip


def _count_referrals(flow: FlowResult) -> int:
    """Referral replies of one flow."""
    n = 0
    for le in flow.summary.events:
        ev = le.event
        if type(ev) is Reply and "[" in ev.text and REFERRAL in ev.text.upper():
            n += 1
    return n


def _note_referrals(notes: dict[int, int], flow: FlowResult, recs: list[ForwardingRecord]) -> None:
    # only a flow with records can be a hop whose referrals count (redirects() reads forwarding hops)
    if recs:
        n = _count_referrals(flow)
        if n:
            notes[flow.id] = n


def _referrals(ctx: RuleContext) -> dict[int, int]:
    """Flow id -> referral replies, as check_flow noted them (noted now when it did not run on this context)."""
    notes = ctx.facts.get(_FACTS_KEY)
    if not isinstance(notes, dict):
        notes = ctx.facts[_FACTS_KEY] = {}
        for flow, recs in flow_groups(ctx):
            if flow is not None:
                _note_referrals(notes, flow, recs)
    return notes


class _Context:
    """Shared look-ups for the chain rules."""

    def __init__(self, ctx: RuleContext) -> None:
        self.ctx = ctx
        self.seen: set[tuple[str, int, str]] = set()
        self.referrals = _referrals(ctx)
        # hop (flow, record_index) -> later hops that follow it in some chain (for redirect siblings)
        self.children: dict[tuple[int, int], dict[tuple[int, int], Hop]] = {}
        self.chains_of_record: dict[int, set[int]] = {}
        for chain in ctx.chains:
            for i, hop in enumerate(chain.hops):
                if hop.record_index >= 0:
                    self.chains_of_record.setdefault(hop.record_index, set()).add(chain.id)
                if i:
                    prev = chain.hops[i - 1]
                    kids = self.children.setdefault((prev.flow, prev.record_index), {})
                    kids.setdefault((hop.flow, hop.record_index), hop)

    def record(self, hop: Hop) -> ForwardingRecord | None:
        if 0 <= hop.record_index < len(self.ctx.records):
            return self.ctx.records[hop.record_index]
        return None

    def hop_frames(self, hop: Hop) -> tuple[int, ...]:
        rec = self.record(hop)
        if rec is not None:
            return rec.frames
        if 0 <= hop.flow < len(self.ctx.flows):
            return (self.ctx.flows[hop.flow].summary.first_frame,)
        return ()

    def referral_count(self, flow: int) -> int:
        return self.referrals.get(flow, 0)

    def redirects(self, prev: Hop, cur: Hop) -> int:
        """Redirects between two hops: referrals on the earlier hop and on the same proxy's earlier attempts."""
        n = self.referral_count(prev.flow)
        for sib in self.children.get((prev.flow, prev.record_index), {}).values():
            if sib.flow != cur.flow and sib.sender.ip == cur.sender.ip and (sib.ts_ns, sib.flow) < (cur.ts_ns, cur.flow):
                n += self.referral_count(sib.flow)
        return n

    def finding(self, info: RuleInfo, chain: Chain, idx: int, detail: str, message: str,
                facts: list[tuple[str, object]], severity: Severity | None = None) -> Finding | None:
        """A finding on hop ``idx`` of the chain (None when already made for this hop and detail)."""
        cur = chain.hops[idx]
        rec = self.record(cur)
        if rec is None:
            return None
        key = (info.id, cur.record_index, detail)
        if key in self.seen:
            return None
        self.seen.add(key)
        prev = chain.hops[:idx]
        more: list[tuple[str, object]] = [
            ("chain", chain.id),
            ("previous_hop_frames", ",".join(str(f) for h in prev for f in self.hop_frames(h))),
            ("previous_hop_flows", ",".join(str(h.flow) for h in prev)),
        ]
        if any(h.capture != cur.capture for h in chain.hops):
            more.append(("hop_captures", ",".join(str(h.capture) for h in chain.hops)))
        more.append(("linked_by", ",".join(chain.linked_by)))
        f = self.ctx.record_finding(info, rec, message, facts + more, severity=severity)
        return dataclasses.replace(f, flows=tuple(h.flow for h in chain.hops))


def _forwarding(chain: Chain) -> list[int]:
    return [i for i, h in enumerate(chain.hops) if h.record_index >= 0]


def _addresses(c: _Context, chain: Chain) -> Iterator[Finding | None]:
    fwd = _forwarding(chain)
    first = chain.hops[0]
    client_leg = first.record_index < 0
    for n, i in enumerate(fwd):
        cur = chain.hops[i]
        if n:
            prev = chain.hops[fwd[n - 1]]
            a, b = prev.forwarded_client, cur.forwarded_client
            if a is not None and b is not None and (a.ip != b.ip or (a.port and b.port and a.port != b.port)):
                yield c.finding(
                    CLIENT_CHANGED, chain, i, f"{_ep(a)}>{_ep(b)}",
                    f"Hop {i} ({cur.sender.ip} -> {_ep(cur.receiver)}) forwards client {_ep(b)} but the hop before "
                    f"it ({prev.sender.ip} -> {_ep(prev.receiver)}) forwarded {_ep(a)}: a proxy rewrote the client "
                    "address (or hops of different sessions were joined).",
                    [("previous_client", _ep(a)), ("forwarded_client", _ep(b))])
        elif client_leg and cur.forwarded_client is not None:
            a, b = first.sender, cur.forwarded_client
            if a.ip != b.ip or (b.port and a.port != b.port):
                yield c.finding(
                    CLIENT_MISMATCH, chain, i, _ep(b),
                    f"The end client connected from {_ep(a)} but the proxy forwarded client {_ep(b)}: the backend "
                    "logs and authorizes the wrong address.",
                    [("end_client", _ep(a)), ("forwarded_client", _ep(b))])
        if client_leg and cur.forwarded_server is not None:
            prev_fs = chain.hops[fwd[n - 1]].forwarded_server if n else None
            fs, real = cur.forwarded_server, first.receiver
            bad = []
            if fs.ip and fs.ip != real.ip:
                bad.append("address")
            if fs.port and fs.port != real.port:
                bad.append("port")
            if bad and (n == 0 or prev_fs != fs):
                key = "x-connected-ip/port" if cur.carrier == "ID" else "DESTADDR/DESTPORT"
                yield c.finding(
                    CONNECTED_MISMATCH, chain, i, _ep(fs),
                    f"{key} says the end client connected to {_ep(fs)}, but its captured connection went to "
                    f"{_ep(real)} ({' and '.join(bad)} {'differ' if len(bad) > 1 else 'differs'}): the backend "
                    "sees the wrong local address/port (a NAT or load balancer in between, or a forged value).",
                    [("forwarded_server", _ep(fs)), ("end_client_server", _ep(real))])


def _ttls(c: _Context, chain: Chain) -> Iterator[Finding | None]:
    fwd = _forwarding(chain)
    for n in range(1, len(fwd)):
        prev, cur = chain.hops[fwd[n - 1]], chain.hops[fwd[n]]
        if prev.ttl is None or cur.ttl is None:
            continue
        drop = prev.ttl - cur.ttl
        redirects = c.redirects(prev, cur)
        facts: list[tuple[str, object]] = [("previous_ttl", prev.ttl), ("ttl", cur.ttl), ("redirects", redirects)]
        if drop < 0:
            yield c.finding(
                TTL_INCREASED, chain, fwd[n], f"{prev.ttl}>{cur.ttl}",
                f"The TTL grows from {prev.ttl} to {cur.ttl} between hop {fwd[n - 1]} and hop {fwd[n]}: a proxy reset "
                "or forged it, which defeats Dovecot's loop protection.", facts)
        elif drop == 0 or drop > 1 + redirects:
            allowed = "1" if not redirects else f"1 to {1 + redirects} ({redirects} redirect(s) seen)"
            yield c.finding(
                TTL_NOT_DECREMENTED, chain, fwd[n], f"{prev.ttl}>{cur.ttl}",
                f"The TTL goes from {prev.ttl} to {cur.ttl} between hop {fwd[n - 1]} and hop {fwd[n]}; a Dovecot "
                f"proxy lowers it by {allowed}: a hop that is not a stock Dovecot proxy, or hops not captured.", facts)
    if fwd:
        first_ttl = chain.hops[fwd[0]].ttl
        if first_ttl is not None and len(fwd) > first_ttl:
            yield c.finding(
                LONGER_THAN_TTL, chain, fwd[-1], str(len(fwd)),
                f"The chain has {len(fwd)} proxy hops but its first hop's TTL of {first_ttl} allows at most "
                f"{first_ttl}: the TTLs were reset along the way (a loop could go on for ever).",
                [("proxy_hops", len(fwd)), ("first_ttl", first_ttl)])


def _lmtp_extends(prev: str, cur: str) -> bool:
    return cur.startswith(prev) and LMTP_SUFFIXES_RE.fullmatch(cur[len(prev):]) is not None


def _sessions(c: _Context, chain: Chain) -> Iterator[Finding | None]:
    fwd = _forwarding(chain)
    for n in range(1, len(fwd)):
        prev, cur = chain.hops[fwd[n - 1]], chain.hops[fwd[n]]
        a, b = prev.session_id, cur.session_id
        if not a or not b or a == b:
            continue
        if cur.protocol == "lmtp" and _lmtp_extends(a, b):
            continue
        rule_text = ("an LMTP proxy only appends :P<n>-style suffixes" if cur.protocol == "lmtp"
                     else "login proxies pass it on unchanged")
        yield c.finding(
            SESSION_CHANGED, chain, fwd[n], b,
            f"The session id changes from {a!r} to {b!r} between hop {fwd[n - 1]} and hop {fwd[n]}; {rule_text}: "
            "logs of the hops can no longer be correlated, or a hop is not a Dovecot proxy.",
            [("previous_session_id", a), ("session_id", b)])


def _transport(c: _Context, chain: Chain) -> Iterator[Finding | None]:
    first = chain.hops[0]
    if first.record_index >= 0 or not 0 <= first.flow < len(c.ctx.flows):
        return
    tls = c.ctx.flows[first.flow].summary.tls
    real = "TLS" if tls is not None else "cleartext"
    prev_value: str | None = None
    for i in _forwarding(chain):
        rec = c.record(chain.hops[i])
        if rec is None:
            continue
        value = None
        for name, v in rec.params:
            if name.lower() in TRANSPORT_KEYS and v is not None:
                value = v
        if value is None:
            continue
        says_tls = value.startswith(TLS_PREFIX)
        if says_tls != (tls is not None) and value != prev_value:
            yield c.finding(
                TRANSPORT_MISMATCH, chain, i, value,
                f"The forwarded client transport is {value!r} but the end client's connection "
                f"({_ep(first.sender)} -> {_ep(first.receiver)}) was {real}"
                + (f" ({tls})" if tls else " (no TLS, no STARTTLS)")
                + ": the backend applies the wrong transport policy (e.g. disable_plaintext_auth).",
                [("forwarded_transport", value), ("end_client_transport", tls or "cleartext")])
        prev_value = value


def _shared_sessions(c: _Context) -> Iterator[Finding | None]:
    """The same session key forwarded for different end-client IPs in different chains (or none)."""
    first_of: dict[str, tuple[ForwardingRecord, int]] = {}
    reported: dict[str, set[str]] = {}
    recs = sorted(
        (i for i, r in enumerate(c.ctx.records) if r.forwarding and r.session_id and r.forwarded_client is not None
         and r.forwarded_client.ip),
        key=lambda i: (c.ctx.records[i].ts_ns, c.ctx.records[i].flow, i))
    for i in recs:
        r = c.ctx.records[i]
        key = session_key(r.session_id)
        assert key is not None and r.forwarded_client is not None
        got = first_of.get(key)
        if got is None:
            first_of[key] = (r, i)
            continue
        ref, ref_i = got
        assert ref.forwarded_client is not None
        ip = r.forwarded_client.ip
        if ip == ref.forwarded_client.ip:
            continue
        if c.chains_of_record.get(i, set()) & c.chains_of_record.get(ref_i, set()):
            continue  # the same chain: chains.forwarded_client_changed reports it
        done = reported.setdefault(key, set())
        if ip in done or len(done) >= MAX_SHARED_PER_SESSION:
            continue
        done.add(ip)
        f = c.ctx.record_finding(
            SESSION_SHARED, r,
            f"Session id {r.session_id!r} is forwarded for end client {ip} here but for {ref.forwarded_client.ip} "
            f"by {ref.sender.ip} (flow {ref.flow}): session ids are unique per login, so one was copied or forged "
            "and the backend's logs mix two users.",
            [("session_id", r.session_id or ""), ("forwarded_client", ip), ("other_client", ref.forwarded_client.ip),
             ("other_flow", ref.flow), ("other_frames", ",".join(str(x) for x in ref.frames))])
        yield dataclasses.replace(f, flows=(ref.flow, r.flow) if ref.flow != r.flow else (r.flow,))


def check_flow(ctx: RuleContext, flow: FlowResult | None, recs: list[ForwardingRecord]) -> Iterator[Finding]:
    """No finding (the chain rules compare hops of several flows): notes the flow's referral replies."""
    notes = ctx.facts.get(_FACTS_KEY)
    if not isinstance(notes, dict):
        notes = ctx.facts[_FACTS_KEY] = {}
    if flow is not None:
        _note_referrals(notes, flow, recs)
    return iter(())


def check_global(ctx: RuleContext) -> Iterator[Finding]:
    """Every chain finding (``ctx.chains`` must be built)."""
    c = _Context(ctx)
    for chain in ctx.chains:
        if not isinstance(chain, Chain):
            continue
        for gen in (_addresses, _ttls, _sessions, _transport):
            for f in gen(c, chain):
                if f is not None:
                    yield f
    for f in _shared_sessions(c):
        if f is not None:
            yield f


def check(ctx: RuleContext) -> Iterator[Finding]:
    """Every chain finding."""
    return check_module(ctx, check_flow, check_global)
