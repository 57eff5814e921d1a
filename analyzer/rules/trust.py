"""Trust and spoofing: who sent forwarding, whether the server trusted it, and whether it should have.

Rules (spec section 8):

* A-C1 with a configuration (``Settings.trust``, a :class:`~analyzer.rules.trustconf.TrustConfig`):
  forwarding from a sender the configuration says the receiving server does not
  trust; and the converse, a reply that contradicts the configuration.
* A-C1 / A-P1 without an applicable configuration, from the replies alone: POP3
  ``+OK You are not from trusted IP - ignoring``, ``550 5.7.14`` (Dovecot SMTP/LMTP),
  ``550 5.7.0 Error: insufficient authorization`` (Postfix), ``550 ... XRCPTFORWARD``,
  and IMAP ``ID completed.`` without ``Trusted`` from a server known to be 2.4 (it
  said ``Trusted ID completed.`` elsewhere, its ``* ID`` reply names 2.4, or it
  switched to ``* MULTIPLEX``): the forwarded keys were silently dropped.
* A-C1 / A-S11: a forwarding command sent to a server that did not advertise it
  (POP3 greeting without ``[XCLIENT]``, EHLO/LHLO reply without ``XCLIENT``, LHLO
  without ``XRCPTFORWARD``). Judged only when the greeting/EHLO reply was captured.
  When a refusal above fires for the same command, the missing advertisement is a
  fact of that finding instead of a finding of its own.
* A-S4 / A-C8: XCLIENT attributes missing from the advertised ``XCLIENT`` list
  (Postfix answers ``501 Bad XCLIENT attribute name: X``, which names the attribute
  even when the EHLO reply was not captured), and fields newer than the backend's
  Dovecot version when the capture tells the version.
* A-C2: forwarding keys on what looks like an end-user connection: the sender is
  not trusted by the configuration, never appears as a proxy in a hop chain (its
  own connection was not itself forwarded to it) and its command is not in Dovecot
  proxy form (tag, key order, attribute order of spec 1.2, 2.3 and 3.4). HIGH when
  the server accepted it as trusted.

Strategy: every rule here compares senders, servers or chains across flows, so all
findings come from ``check_global``; what they need from the events is noted flow by
flow in ``check_flow`` (the one pass over the flows, :mod:`analyzer.rules`): for each
forwarding command, what the server had advertised before it; and version hints
(``* ID`` version, ``Trusted ID completed.``, ``* MULTIPLEX``, the Dovecot XCLIENT
capability list, which changed in 2.3.18, 2.4.0 and 2.4.3), collected per server
endpoint and per host. A version is used only when all hints agree.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass

from analyzer.flows.model import FlowResult
from analyzer.forwarding.model import ForwardingRecord
from analyzer.protocols.base import Capabilities, Command, Greeting, Reply
from analyzer.rules import RuleContext, check_module, flow_groups
from analyzer.rules.base import Finding, RuleInfo, Severity
from analyzer.rules.trustconf import TrustConfig, TrustDecision

UNTRUSTED_BY_CONFIG = RuleInfo(
    "trust.untrusted_sender", Severity.HIGH,
    "Forwarding from a sender the server's trust configuration does not trust", "A-C1")
CONFIG_DISAGREES = RuleInfo(
    "trust.config_disagrees", Severity.MEDIUM,
    "The server's reply contradicts the given trust configuration", None)
POP3_IGNORED = RuleInfo(
    "trust.pop3_xclient_ignored", Severity.HIGH,
    "POP3 XCLIENT answered '+OK You are not from trusted IP - ignoring' (forwarding silently lost)", "A-P1")
XCLIENT_REFUSED = RuleInfo(
    "trust.xclient_refused_untrusted", Severity.HIGH,
    "XCLIENT refused because the sender is not trusted (550 5.7.14 / 550 5.7.0)", "A-C1")
XRCPT_REFUSED = RuleInfo(
    "trust.xrcptforward_refused_untrusted", Severity.HIGH,
    "RCPT XRCPTFORWARD refused because the sender is not trusted (550 5.7.14)", "A-C1")
IMAP_DROPPED = RuleInfo(
    "trust.imap_id_untrusted", Severity.HIGH,
    "A Dovecot 2.4 server answered 'ID completed.' without 'Trusted': forwarded keys silently dropped", "A-C1")
NOT_ADVERTISED = RuleInfo(
    "trust.xclient_not_advertised", Severity.HIGH,
    "XCLIENT sent to a server whose greeting or EHLO/LHLO reply did not offer it", "A-C1")
XRCPT_NOT_ADVERTISED = RuleInfo(
    "trust.xrcptforward_not_advertised", Severity.MEDIUM,
    "XRCPTFORWARD sent to an LMTP server whose LHLO reply did not offer it", "A-S11")
ATTR_NOT_ADVERTISED = RuleInfo(
    "trust.xclient_attribute_not_advertised", Severity.MEDIUM,
    "XCLIENT attribute missing from the server's advertised XCLIENT list", "A-S4")
TOO_NEW = RuleInfo(
    "trust.field_too_new", Severity.LOW,
    "Forwarding field newer than the backend's Dovecot version (treated as unknown)", "A-C8")
SPOOFED = RuleInfo(
    "trust.spoofed_forwarding", Severity.HIGH,
    "Forwarding keys on an end-user connection: a client claiming another address", "A-C2")

RULES: tuple[RuleInfo, ...] = (
    UNTRUSTED_BY_CONFIG, CONFIG_DISAGREES, POP3_IGNORED, XCLIENT_REFUSED, XRCPT_REFUSED, IMAP_DROPPED,
    NOT_ADVERTISED, XRCPT_NOT_ADVERTISED, ATTR_NOT_ADVERTISED, TOO_NEW, SPOOFED,
)

POP3_UNTRUSTED_TEXT = "You are not from trusted IP"  # pop3-login client.c: cmd_xclient() "+OK ... - ignoring"
SMTP_UNTRUSTED_CODE = "5.7.14"  # lib-smtp smtp-server-cmd-xclient.c and lmtp-commands.c (spec 3.3, 3.5)
POSTFIX_UNAUTHORIZED = "insufficient authorization"  # postfix smtpd.c: xclient_cmd() "550 5.7.0 Error: ..."
IMAP_TRUSTED_OK = "Trusted ID completed."  # imap-login-cmd-id.c: cmd_id_finish() (2.4.0+)
IMAP_PLAIN_OK = "ID completed."  # the same reply to an untrusted sender (2.4) or to anyone (2.3)
REFERRAL = "[REFERRAL"  # IMAP login referral (RFC 2221); Dovecot proxies follow it with TTL - 1 (spec 4.2)

V2_3_18 = (2, 3, 18)  # SESSION added to the XCLIENT capability (spec 3.2)
V2_4_0 = (2, 4, 0)  # CLIENT-TRANSPORT/DESTNAME, x-multiplex, x-client-transport, "Trusted ID completed." (spec 1.3, 3.2)
V2_4_3 = (2, 4, 3)  # DESTADDR/DESTPORT in XCLIENT (spec 2.3, 3.2)
_V_MIN = (0, 0, 0)
_V_MAX = (99, 99, 99)
RANGE_MEMO_SIZE = 1024  # ours: distinct EHLO/LHLO capability lists whose version range is remembered
_FACTS_KEY = "trust"  # this module's entry in RuleContext.facts

#: Dovecot proxy ID key order (spec 1.2); "x-forward-" stands for every x-forward-<name>
IMAP_PROXY_ORDER = ("x-multiplex", "x-session-id", "x-originating-ip", "x-originating-port", "x-connected-ip",
                    "x-connected-port", "x-proxy-ttl", "x-client-transport", "x-connected-name", "x-forward-")
IMAP_PROXY_ALWAYS = frozenset({"x-session-id", "x-originating-ip", "x-originating-port", "x-connected-ip",
                               "x-connected-port", "x-proxy-ttl"})  # imap-proxy.c: proxy_write_id() always writes them
IMAP_PROXY_TAG = "I"  # imap-proxy.c: fixed tag of the proxy's ID (spec 1.2)
#: POP3 proxy attribute order (spec 2.3) and the attributes every version sends
POP3_PROXY_ORDER = ("ADDR", "PORT", "DESTADDR", "DESTPORT", "SESSION", "TTL", "CLIENT-TRANSPORT", "DESTNAME", "FORWARD")
POP3_PROXY_ALWAYS = frozenset({"ADDR", "PORT", "SESSION", "TTL"})
#: submission-login proxy_send_xclient() order (spec 3.4)
SUBMISSION_PROXY_ORDER = ("HELO", "PROTO", "LOGIN", "TTL", "PORT", "ADDR", "DESTPORT", "DESTADDR", "SESSION",
                          "CLIENT-TRANSPORT", "DESTNAME", "FORWARD")
#: lib-smtp smtp_client_connection_send_xclient() order (LMTP proxy, submission relay; spec 3.4)
LIBSMTP_ORDER = ("HELO", "PROTO", "LOGIN", "SESSION", "CLIENT-TRANSPORT", "DESTNAME", "TTL", "TIMEOUT", "PORT",
                 "ADDR", "DESTPORT", "DESTADDR")
#: XCLIENT attributes only Postfix advertises (spec 3.2)
POSTFIX_ONLY_ATTRS = frozenset({"NAME", "REVERSE_NAME"})
#: fields and the first Dovecot version that knows them (spec 1.3, 2.3)
IMAP_NEW_KEYS = {"x-client-transport": V2_4_0, "x-connected-name": V2_4_0, "x-multiplex": V2_4_0}
POP3_NEW_ATTRS = {"CLIENT-TRANSPORT": V2_4_0, "DESTNAME": V2_4_0, "DESTADDR": V2_4_3, "DESTPORT": V2_4_3}
SMTP_NEW_ATTRS = {"SESSION": V2_3_18, "CLIENT-TRANSPORT": V2_4_0, "DESTNAME": V2_4_0, "DESTADDR": V2_4_3,
                  "DESTPORT": V2_4_3}  # Dovecot lib-smtp XCLIENT (spec 3.2, 3.3)

#: carriers whose trust the configured lists decide (XFORWARD has its own Postfix list)
TRUST_CARRIERS = frozenset({"ID", "XCLIENT", "XRCPTFORWARD"})

_BAD_ATTR_RE = re.compile(r"Bad XCLIENT attribute name: ([A-Za-z0-9_-]+)")  # postfix smtpd.c: xclient_cmd()
_VERSION_RE = re.compile(r'"version"\s+"(\d+)\.(\d+)(?:\.(\d+))?', re.IGNORECASE)

Version = tuple[int, int, int]


def _fmt_version(v: Version) -> str:
    return ".".join(str(x) for x in v)


@dataclass(frozen=True, slots=True)
class _Advert:
    """What the server had advertised when a command was sent."""

    greeting: bool  #: a greeting was captured before the command
    greeting_caps: tuple[str, ...]  #: its capabilities (POP3: ("XCLIENT",) for "+OK [XCLIENT]")
    ehlo: bool  #: an EHLO/LHLO 250 reply was captured before the command
    ehlo_items: tuple[str, ...]  #: the latest one's capability lines


class _Versions:
    """Version ranges of servers, per endpoint and per host, from what they said on the wire."""

    def __init__(self) -> None:
        self.by_endpoint: dict[tuple[str, int], tuple[Version, Version] | None] = {}
        self.by_host: dict[str, tuple[Version, Version] | None] = {}

    @staticmethod
    def _merge(cur: tuple[Version, Version] | None, lo: Version, hi: Version, known: bool) -> \
            tuple[Version, Version] | None:
        """Intersect a range with a new hint; None once the hints contradict each other."""
        if not known:
            return (lo, hi)
        if cur is None:
            return None
        nlo, nhi = max(cur[0], lo), min(cur[1], hi)
        return (nlo, nhi) if nlo <= nhi else None

    def add(self, ip: str, port: int, lo: Version, hi: Version) -> None:
        ep = (ip, port)
        self.by_endpoint[ep] = self._merge(self.by_endpoint.get(ep), lo, hi, ep in self.by_endpoint)
        self.by_host[ip] = self._merge(self.by_host.get(ip), lo, hi, ip in self.by_host)

    def endpoint(self, ip: str, port: int) -> tuple[Version, Version] | None:
        return self.by_endpoint.get((ip, port))

    def host(self, ip: str) -> tuple[Version, Version] | None:
        return self.by_host.get(ip)


def _xclient_words(items: Iterable[str]) -> list[str] | None:
    """The attribute words of an ``XCLIENT ...`` capability line, or None when there is none."""
    for item in items:
        words = item.upper().split()
        if words[:1] == ["XCLIENT"]:
            return words[1:]
    return None


def _dovecot_xclient_range(words: list[str]) -> tuple[Version, Version] | None:
    """Dovecot version range from its XCLIENT capability list (spec 3.2); None for Postfix."""
    attrs = set(words)
    if attrs & POSTFIX_ONLY_ATTRS:
        return None
    if "DESTADDR" in attrs:
        return V2_4_3, _V_MAX
    if "CLIENT-TRANSPORT" in attrs:
        return V2_4_0, (2, 4, 2)
    if "SESSION" in attrs:
        return V2_3_18, (2, 3, 99)
    return (2, 3, 0), (2, 3, 17)


class _Facts:
    """What the trust rules need from the flows' events, noted flow by flow (``check_flow``)."""

    __slots__ = ("versions", "ranges", "adverts")

    def __init__(self) -> None:
        #: version hints of every server that gave any (looked up only for servers that received forwarding:
        #: the hints of one endpoint or host come from its own flows, so the others change nothing)
        self.versions = _Versions()
        #: EHLO/LHLO capability lists repeat from flow to flow (one server, one list): each distinct one read
        #: once (a memo: emptied when full)
        self.ranges: dict[tuple[str, ...], tuple[Version, Version] | None] = {}
        #: (flow id, command seq) -> what the server had advertised before that forwarding command
        self.adverts: dict[tuple[int, int], _Advert] = {}

    def add_flow(self, f: FlowResult, recs: Sequence[ForwardingRecord]) -> None:
        s = f.summary
        if not s.events:
            return
        seqs = {r.command_seq for r in recs if r.forwarding}
        if seqs:
            for seq, adv in _adverts(f, seqs).items():
                self.adverts[(f.id, seq)] = adv
        self._add_versions(f)

    def _add_versions(self, f: FlowResult) -> None:
        s = f.summary
        vers, ranges = self.versions, self.ranges
        ip, port = s.server.ip, s.server.port
        for le in s.events:
            ev = le.event
            if type(ev) is Reply:
                if ev.tag == "*" and ev.status == "ID":
                    m = _VERSION_RE.search(ev.text)
                    if m is not None:
                        v = (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))
                        hi = v if m.group(3) else (v[0], v[1], 99)
                        vers.add(ip, port, v, hi)
                elif ev.tag == "*" and ev.status == "MULTIPLEX":
                    vers.add(ip, port, V2_4_0, _V_MAX)
                elif ev.final and ev.status == "OK" and IMAP_TRUSTED_OK in ev.text:
                    vers.add(ip, port, V2_4_0, _V_MAX)
            elif type(ev) is Capabilities and ev.source in ("ehlo", "lhlo"):
                items = ev.items
                if items in ranges:
                    rng = ranges[items]
                else:
                    if len(ranges) >= RANGE_MEMO_SIZE:
                        ranges.clear()
                    words = _xclient_words(items)
                    rng = ranges[items] = _dovecot_xclient_range(words) if words is not None else None
                if rng is not None:
                    vers.add(ip, port, rng[0], rng[1])


def _facts(ctx: RuleContext) -> _Facts:
    """The facts ``check_flow`` noted (noted now, from every flow, when it did not run on this context)."""
    facts = ctx.facts.get(_FACTS_KEY)
    if not isinstance(facts, _Facts):
        facts = ctx.facts[_FACTS_KEY] = _Facts()
        for flow, recs in flow_groups(ctx):
            if flow is not None:
                facts.add_flow(flow, recs)
    return facts


def _adverts(flow: FlowResult, seqs: set[int]) -> dict[int, _Advert]:
    """For each wanted command seq, what the server had advertised before it."""
    out: dict[int, _Advert] = {}
    greeting = False
    caps: tuple[str, ...] = ()
    ehlo = False
    items: tuple[str, ...] = ()
    for le in flow.summary.events:
        ev = le.event
        if type(ev) is Greeting:
            if not ev.restart and not greeting:
                greeting, caps = True, ev.capabilities
        elif type(ev) is Capabilities and ev.source in ("ehlo", "lhlo"):
            ehlo, items = True, ev.items
        elif type(ev) is Command and ev.seq in seqs and ev.seq not in out:
            out[ev.seq] = _Advert(greeting, caps, ehlo, items)
            if len(out) == len(seqs):
                break
    return out


def _frames_text(frames: Iterable[int]) -> str:
    return ",".join(str(f) for f in frames)


def _reply_facts(r: ForwardingRecord) -> list[tuple[str, object]]:
    if r.reply is None:
        return [("reply", "not captured")]
    return [("reply", f"{r.reply.code} {r.reply.text}"[:200]), ("reply_frames", _frames_text(r.reply.frames))]


def _reply_words(r: ForwardingRecord) -> str:
    if r.reply is None:
        return "no reply was captured"
    text = r.reply.text if len(r.reply.text) <= 80 else r.reply.text[:80] + "..."
    return f"the server replied {r.reply.code} {text!r}"


def _outcome(r: ForwardingRecord) -> str:
    """What the reply says about the server's handling, in words."""
    if r.trusted is True:
        return "the server accepted it as trusted"
    if r.trusted is False:
        return "the server refused or ignored it as untrusted"
    if r.accepted is True:
        return "the server accepted the command (its reply does not tell whether the keys were applied)"
    if r.accepted is False:
        return "the server rejected the command"
    return "no reply was captured"


def _refusal(r: ForwardingRecord) -> RuleInfo | None:
    """The reply-only trust rule this record's reply triggers, if any."""
    if r.reply is None:
        return None
    text = r.reply.text
    if r.protocol == "pop3" and r.carrier == "XCLIENT":
        return POP3_IGNORED if r.reply.code == "+OK" and POP3_UNTRUSTED_TEXT in text else None
    if r.reply.code != "550":
        return None
    if r.carrier == "XCLIENT" and (SMTP_UNTRUSTED_CODE in text or POSTFIX_UNAUTHORIZED in text):
        return XCLIENT_REFUSED
    if r.carrier == "XRCPTFORWARD" and (SMTP_UNTRUSTED_CODE in text or "XRCPTFORWARD" in text.upper()):
        return XRCPT_REFUSED
    return None


def _imap_plain_ok(r: ForwardingRecord) -> bool:
    return (r.carrier == "ID" and r.reply is not None and r.reply.code.upper() == "OK"
            and IMAP_TRUSTED_OK not in r.reply.text and IMAP_PLAIN_OK in r.reply.text)


def _not_advertised(r: ForwardingRecord, adv: _Advert | None) -> RuleInfo | None:
    if adv is None:
        return None
    if r.carrier == "XCLIENT" and r.protocol == "pop3":
        return NOT_ADVERTISED if adv.greeting and "XCLIENT" not in adv.greeting_caps else None
    if r.carrier == "XCLIENT" and r.protocol in ("smtp", "submission", "lmtp"):
        return NOT_ADVERTISED if adv.ehlo and _xclient_words(adv.ehlo_items) is None else None
    if r.carrier == "XRCPTFORWARD":
        advertised = any(item.upper().split()[:1] == ["XRCPTFORWARD"] for item in adv.ehlo_items)
        return XRCPT_NOT_ADVERTISED if adv.ehlo and not advertised else None
    return None


def _order_problems(names: Sequence[str], order: Sequence[str]) -> list[str]:
    rank = {n: i for i, n in enumerate(order)}
    problems = []
    last = -1
    for n in names:
        i = rank.get(n)
        if i is None:
            problems.append(f"{n} is not an attribute Dovecot's proxy sends")
        elif i < last:
            problems.append(f"{n} comes after {order[last]}")
        else:
            last = i
    return problems


def dovecot_form_problems(r: ForwardingRecord) -> list[str]:
    """Why the command is not in Dovecot proxy form (empty list: it is)."""
    if r.carrier == "ID":
        problems = []
        if r.tag != IMAP_PROXY_TAG:
            problems.append(f"tag {r.tag!r} instead of Dovecot's fixed {IMAP_PROXY_TAG!r}")
        keys = [n.lower() for n, _ in r.params]
        internal_seen = False
        order_names: list[str] = []
        for k in keys:
            internal = k.startswith("x-forward-") or k in IMAP_PROXY_ORDER or k == "x-session-ext-id"
            if not internal:
                if internal_seen:
                    problems.append(f"client key {k!r} after the proxy's keys")
                continue
            internal_seen = True
            order_names.append("x-forward-" if k.startswith("x-forward-") else k)
        problems += _order_problems(order_names, IMAP_PROXY_ORDER)
        dup = sorted({k for k in order_names if k != "x-forward-" and order_names.count(k) > 1})
        problems += [f"{k} repeated" for k in dup]
        missing = sorted(IMAP_PROXY_ALWAYS - set(order_names))
        if missing:
            problems.append("missing " + ", ".join(missing))
        return problems
    if r.carrier != "XCLIENT":
        return []
    if r.verb != "XCLIENT":
        return [f"legacy {r.verb} command instead of XCLIENT"]
    names = [n.upper() for n, _ in r.params]
    if r.protocol == "pop3":
        problems = _order_problems(names, POP3_PROXY_ORDER)
        missing = sorted(POP3_PROXY_ALWAYS - set(names))
        return problems + (["missing " + ", ".join(missing)] if missing else [])
    if r.protocol == "lmtp":
        return _order_problems(names, LIBSMTP_ORDER)
    a = _order_problems(names, SUBMISSION_PROXY_ORDER)
    b = _order_problems(names, LIBSMTP_ORDER)
    if not a or not b:
        return []  # in the order of one of Dovecot's two XCLIENT writers
    return a if len(a) <= len(b) else b


def _known_proxies(ctx: RuleContext) -> set[str]:
    """Hosts seen forwarding a connection they received (the sender of a hop that has a predecessor)."""
    out: set[str] = set()
    for chain in ctx.chains:
        for hop in chain.hops[1:]:
            out.add(hop.sender.ip)
    return out


class _Checker:
    """All trust rules over one context."""

    def __init__(self, ctx: RuleContext) -> None:
        self.ctx = ctx
        trust = ctx.settings.trust
        self.trust: TrustConfig | None = trust if isinstance(trust, TrustConfig) else None
        fwd = [r for r in ctx.records if r.forwarding]
        self.records = fwd
        facts = _facts(ctx)
        self.adverts = facts.adverts
        self.versions = facts.versions
        self.decisions: dict[int, TrustDecision | None] = {}
        for i, r in enumerate(fwd):
            d = (self.trust.decide(r.sender.ip, r.receiver.ip, r.protocol)
                 if self.trust is not None and r.carrier in TRUST_CARRIERS else None)
            self.decisions[i] = d
        # IMAP endpoints that said "Trusted ID completed." to some sender
        self.trusted_ok_endpoints = {
            (r.receiver.ip, r.receiver.port) for r in ctx.records
            if r.carrier == "ID" and r.reply is not None and IMAP_TRUSTED_OK in r.reply.text
        }
        self.proxies = _known_proxies(ctx)

    def finding(self, info: RuleInfo, r: ForwardingRecord, message: str, facts: list[tuple[str, object]],
                severity: Severity | None = None) -> Finding:
        base: list[tuple[str, object]] = [("sender", r.sender.ip), ("server", f"{r.receiver.ip}:{r.receiver.port}")]
        return self.ctx.record_finding(info, r, message, base + facts, severity=severity)

    def run(self) -> Iterator[Finding]:
        for i, r in enumerate(self.records):
            d = self.decisions[i]
            adv = self.adverts.get((r.flow, r.command_seq))
            missing = _not_advertised(r, adv)
            fired = False
            if d is not None:
                fired = yield from self._by_config(r, d, missing)
            else:
                fired = yield from self._by_reply(r, missing)
            if missing is not None and not fired:
                yield self._missing(missing, r)
            if r.carrier == "XCLIENT" and r.verb == "XCLIENT":
                yield from self._attributes(r, adv)
            yield from self._too_new(r, adv)
            yield from self._spoof(r, d)

    def _by_config(self, r: ForwardingRecord, d: TrustDecision,
                   missing: RuleInfo | None) -> Generator[Finding, None, bool]:
        """A-C1 from the configuration; returns whether a finding was made."""
        cfg = "; ".join(s.describe() for s in d.sources)
        facts: list[tuple[str, object]] = [("trust_config", cfg[:400])] + _reply_facts(r)
        if missing is not None:
            facts.append(("advertised", "no"))
        if not d.trusted:
            yield self.finding(
                UNTRUSTED_BY_CONFIG, r,
                f"{r.sender.ip} sent {r.verb} forwarding to {r.receiver.ip}:{r.receiver.port} ({r.protocol}), but "
                f"the configuration ({cfg[:200]}) does not trust it: {_outcome(r)}"
                + (" although the configuration says it should not, so the server runs a different configuration."
                   if r.trusted is True else
                   "; the backend logs and authorizes the proxy's own address instead of the end client's."),
                facts)
            return True
        said_untrusted = r.trusted is False
        if not said_untrusted and _imap_plain_ok(r):
            rng = self.versions.endpoint(r.receiver.ip, r.receiver.port)
            said_untrusted = rng is not None and rng[0] >= V2_4_0
        if said_untrusted:
            yield self.finding(
                CONFIG_DISAGREES, r,
                f"The configuration ({cfg[:200]}) trusts {r.sender.ip}, but {_reply_words(r)}: the server runs a "
                "different configuration than the one given (or sees another source address, e.g. behind NAT).",
                facts)
            return True
        return False

    def _by_reply(self, r: ForwardingRecord, missing: RuleInfo | None) -> Generator[Finding, None, bool]:
        """A-C1/A-P1 from the reply alone; returns whether a finding was made."""
        facts = _reply_facts(r) + ([("advertised", "no")] if missing is not None else [])
        info = _refusal(r)
        if info is POP3_IGNORED:
            yield self.finding(
                info, r,
                f"The POP3 backend answered XCLIENT from {r.sender.ip} with '+OK {POP3_UNTRUSTED_TEXT} - ignoring': "
                "a success code, so the proxy carries on believing the fields were applied, but the backend sees "
                "the proxy as the client." + (" Its greeting had not offered [XCLIENT] either." if missing else ""),
                facts)
            return True
        if info is XCLIENT_REFUSED:
            who = "Postfix" if POSTFIX_UNAUTHORIZED in (r.reply.text if r.reply else "") else "Dovecot"
            yield self.finding(
                info, r,
                f"{who} refused XCLIENT from {r.sender.ip}: {_reply_words(r)}; the sender is not in its trusted "
                "networks, so the backend sees the proxy as the client."
                + (" The server had not advertised XCLIENT." if missing else ""),
                facts + [("server_software", who.lower())])
            return True
        if info is XRCPT_REFUSED:
            yield self.finding(
                info, r,
                f"The LMTP backend refused XRCPTFORWARD for <{r.address}> from {r.sender.ip}: {_reply_words(r)}; "
                "the recipient's forwarded fields are lost." + (" LHLO had not offered XRCPTFORWARD." if missing
                                                                else ""),
                facts)
            return True
        if r.protocol == "imap" and _imap_plain_ok(r):
            ep = (r.receiver.ip, r.receiver.port)
            rng = self.versions.endpoint(*ep)
            why = None
            if ep in self.trusted_ok_endpoints:
                why = "the same server answered 'Trusted ID completed.' to another sender in this capture"
            elif rng is not None and rng[0] >= V2_4_0:
                why = f"the server identifies itself as Dovecot {_fmt_version(rng[0])} or later"
            if why is not None:
                yield self.finding(
                    IMAP_DROPPED, r,
                    f"The IMAP backend answered {r.sender.ip}'s ID with 'ID completed.' without 'Trusted' and {why}: "
                    "Dovecot 2.4 does not trust this sender and silently dropped every forwarded key.",
                    facts + [("evidence", why)])
                return True
        return False

    def _missing(self, info: RuleInfo, r: ForwardingRecord) -> Finding:
        if info is XRCPT_NOT_ADVERTISED:
            msg = (f"RCPT TO:<{r.address}> carries XRCPTFORWARD but the LMTP server's LHLO reply did not offer "
                   "XRCPTFORWARD (Dovecot offers it only to trusted peers); " + _reply_words(r) + ".")
        elif r.protocol == "pop3":
            msg = (f"{r.verb} was sent although the POP3 greeting did not start '+OK [XCLIENT]' (Dovecot offers it only "
                   "to trusted peers, and its proxy sends XCLIENT only when offered): the sender is not a stock "
                   f"Dovecot proxy or the backend does not trust it; {_reply_words(r)}.")
        else:
            msg = ("XCLIENT was sent although the server's EHLO/LHLO reply had no XCLIENT line (offered only to "
                   "trusted peers; Dovecot's proxy sends only what is offered): the sender is not a stock Dovecot "
                   f"proxy or the server does not trust it; {_reply_words(r)}.")
        return self.finding(info, r, msg, _reply_facts(r) + [("advertised", "no")])

    def _attributes(self, r: ForwardingRecord, adv: _Advert | None) -> Iterator[Finding]:
        if r.protocol == "pop3":
            return
        words = _xclient_words(adv.ehlo_items) if adv is not None and adv.ehlo else None
        offered = set(words or ())
        extra = [] if words is None else list(dict.fromkeys(
            n.upper() for n, _ in r.params if n.upper() not in offered))
        m = _BAD_ATTR_RE.search(r.reply.text) if r.reply is not None and r.reply.code == "501" else None
        if m is not None and m.group(1).upper() not in extra:
            extra.append(m.group(1).upper())  # Postfix named it, whether or not its EHLO reply was captured
        if not extra:
            return
        postfix = bool(offered & POSTFIX_ONLY_ATTRS) or m is not None
        effect = ("Postfix answers 501 5.5.4 Bad XCLIENT attribute name and applies nothing" if postfix else
                  "Dovecot silently ignores them, and a Dovecot proxy would not have sent them")
        offer = f"the server advertised only 'XCLIENT {' '.join(words)}'" if words is not None else \
            "the server's XCLIENT capability line was not captured"
        yield self.finding(
            ATTR_NOT_ADVERTISED, r,
            f"XCLIENT sends {', '.join(extra)} but {offer}: {effect}; " + _reply_words(r) + ".",
            [("attributes", " ".join(extra)), ("advertised", " ".join(words) if words is not None else "unknown")]
            + _reply_facts(r))

    def _too_new(self, r: ForwardingRecord, adv: _Advert | None) -> Iterator[Finding]:
        if r.carrier == "ID" and r.protocol == "imap":
            rng = self.versions.endpoint(r.receiver.ip, r.receiver.port) or self.versions.host(r.receiver.ip)
            table = IMAP_NEW_KEYS
            names = [n.lower() for n, _ in r.params]
        elif r.carrier == "XCLIENT" and r.protocol == "pop3":
            rng = self.versions.endpoint(r.receiver.ip, r.receiver.port) or self.versions.host(r.receiver.ip)
            table = POP3_NEW_ATTRS
            names = [n.upper() for n, _ in r.params]
        elif (r.carrier == "XCLIENT" and r.protocol in ("submission", "lmtp")
              and (adv is None or _xclient_words(adv.ehlo_items) is None)):
            # no captured XCLIENT list to compare with (A-S4 does that): judge by the host's version
            rng = self.versions.host(r.receiver.ip)
            table = SMTP_NEW_ATTRS
            names = [n.upper() for n, _ in r.params]
        else:
            return
        if rng is None:
            return
        hi = rng[1]
        late = [(n, table[n]) for n in dict.fromkeys(names) if n in table and hi < table[n]]
        if not late:
            return
        yield self.finding(
            TOO_NEW, r,
            f"{', '.join(n for n, _ in late)} sent to a backend the capture shows as Dovecot "
            f"{_fmt_version(rng[0])}..{_fmt_version(hi) if hi != _V_MAX else 'newer'}, older than "
            f"{', '.join(sorted({_fmt_version(v) for _, v in late}))}: "
            + ("treated as ordinary ID keys and logged." if r.carrier == "ID" else "silently ignored."),
            [("fields", " ".join(n for n, _ in late)), ("backend_version_max", _fmt_version(hi))])

    def _spoof(self, r: ForwardingRecord, d: TrustDecision | None) -> Iterator[Finding]:
        if r.carrier not in ("ID", "XCLIENT"):
            return
        if d is not None and d.trusted:
            return
        if r.sender.ip in self.proxies:
            return
        problems = dovecot_form_problems(r)
        if not problems:
            return
        sev = Severity.HIGH if r.trusted is True else Severity.MEDIUM
        claimed = (f"{r.forwarded_client.ip}:{r.forwarded_client.port}" if r.forwarded_client is not None
                   else "no address")
        yield self.finding(
            SPOOFED, r,
            f"{r.sender.ip} sent {r.verb} claiming client {claimed} but is not a known proxy: "
            + ("no trust source covers it, " if d is None else "the configuration does not trust it, ")
            + "it never forwarded a captured connection, and its command is not in Dovecot proxy form ("
            + "; ".join(problems[:4]) + "); " + _outcome(r) + ".",
            [("claimed_client", claimed), ("form_problems", "; ".join(problems)[:300])] + _reply_facts(r),
            severity=sev)


def check_flow(ctx: RuleContext, flow: FlowResult | None, recs: list[ForwardingRecord]) -> Iterator[Finding]:
    """No finding: notes what the flow's server advertised and which version it named (every trust rule
    compares senders, servers and chains across flows: ``check_global``)."""
    facts = ctx.facts.get(_FACTS_KEY)
    if not isinstance(facts, _Facts):
        facts = ctx.facts[_FACTS_KEY] = _Facts()
    if flow is not None:
        facts.add_flow(flow, recs)
    return iter(())


def check_global(ctx: RuleContext) -> Iterator[Finding]:
    """Every trust and spoofing finding."""
    yield from _Checker(ctx).run()


def check(ctx: RuleContext) -> Iterator[Finding]:
    """Every trust and spoofing finding."""
    return check_module(ctx, check_flow, check_global)
