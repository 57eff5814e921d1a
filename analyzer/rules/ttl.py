"""TTL rules on single records and the loop replies that a spent TTL produces (spec 4.2, A-C4, A-S12).

Strategy: every check here looks at one record or one flow; comparisons of the
TTL along a chain of hops belong to the chain rules. The only cross-record step
is choosing which record is a *first* hop for the informational start-value
rule: records that share a session ID (its part before any ``:`` suffix) are
hops of one chain, and only the earliest of them is compared with Dovecot's
start values. Loop replies are found by their fixed texts on any reply of a
flow that carried forwarding, and tied to the command they answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from analyzer.flows.model import FlowResult
from analyzer.forwarding.model import ForwardingRecord
from analyzer.protocols.base import Capabilities, Reply
from analyzer.rules import RuleContext, check_module
from analyzer.rules.base import Finding, RuleInfo, Severity
from analyzer.rules.protocol import CommandInfo, by_command, command_index, event_finding, frames_text

UINT_MAX = 0xFFFFFFFF  # lib/strnum.c str_to_uint(): unsigned int; larger values overflow and are rejected
LOGIN_FIRST_HOP_TTLS = frozenset({4, 6})  # login-proxy.h LOGIN_PROXY_TTL 5 (<=2.3) / 7 (2.4) minus one on the wire
LMTP_FIRST_HOP_TTL = 5  # lmtp-proxy.c LMTP_PROXY_DEFAULT_TTL: a first LMTP proxy sends TTL=5
LOGIN_PROXY_MIN_TTL = 1  # login-proxy.c login_proxy_connect(): a proxy whose TTL is <= 1 refuses to proxy
LOGIN_PROTOCOLS = frozenset({"imap", "pop3", "submission"})

#: lmtp-proxy.c lmtp_proxy_rcpt_get_connection() / lmtp_proxy_rcpt_redirect_finish()
LMTP_LOOP_RE = re.compile(r"Proxying appears to be looping|Proxying loops to itself")
#: login-proxy: what the end client sees when a proxy refuses (IMAP NO [SERVERBUG], POP3 -ERR, submission 454 4.7.0)
ACCOUNT_UNAVAILABLE = "Account is temporarily unavailable"
_UNAVAILABLE = ("[UNAVAILABLE]", "[TEMPUNAVAIL]")

NOT_DECIMAL = RuleInfo(
    "ttl.not_decimal", Severity.MEDIUM, "TTL is not a plain unsigned decimal (sign, spaces, letters, overflow)",
    "A-C4")
ZERO = RuleInfo("ttl.zero", Severity.MEDIUM, "TTL 0 on the wire (Dovecot never sends it: forged or broken)", "A-C4")
MISSING = RuleInfo(
    "ttl.missing", Severity.MEDIUM, "A Dovecot-form forwarding command without a TTL", "A-C4")
UNUSUAL_START = RuleInfo(
    "ttl.unusual_first_hop", Severity.INFO,
    "First-hop TTL other than Dovecot's start values (4/6 login, 5 LMTP)", "A-C4")
LMTP_LOOP = RuleInfo(
    "ttl.lmtp_loop_reply", Severity.MEDIUM, "LMTP answered 554 5.4.6 Proxying appears to be looping", "A-S12")
PROXY_REFUSED = RuleInfo(
    "ttl.proxy_refused_reply", Severity.MEDIUM,
    "After forwarding, the proxy answered Account is temporarily unavailable (TTL spent: proxy loop?)", "A-C4")

RULES: tuple[RuleInfo, ...] = (NOT_DECIMAL, ZERO, MISSING, UNUSUAL_START, LMTP_LOOP, PROXY_REFUSED)


def _ttl_key(rec: ForwardingRecord) -> str:
    return "x-proxy-ttl" if rec.carrier == "ID" else "TTL"


def _why_not_decimal(raw: str) -> str:
    if raw == "":
        return "empty"
    if raw[0] in "+-":
        return "sign"
    if raw != raw.strip() or " " in raw or "\t" in raw:
        return "spaces"
    if raw.isascii() and raw.isdigit():
        return "overflow"  # parse_ttl() refuses more than 10 digits or a value over UINT_MAX
    return "not_decimal"


def _zero_effect(rec: ForwardingRecord) -> str:
    if rec.protocol == "imap":
        return "Dovecot 2.4 answers BAD Invalid ID parameters; 2.3 accepts it and the next proxy refuses"
    if rec.protocol == "lmtp":
        return "every proxied RCPT fails with 554 5.4.6 Proxying appears to be looping (TTL=0)"
    return "the backend accepts it and any further proxying from it fails"


def _dovecot_form(rec: ForwardingRecord) -> bool:
    """The command looks like Dovecot's proxy wrote it (its TTL would be there)."""
    names = {n.upper() for n, _ in rec.params}
    if rec.carrier == "ID":
        return rec.tag == "I" and {"X-SESSION-ID", "X-ORIGINATING-IP"} <= names
    if rec.carrier == "XCLIENT" and rec.verb == "XCLIENT":
        if rec.protocol == "pop3":
            return {"ADDR", "PORT", "SESSION"} <= names
        return bool({"SESSION", "CLIENT-TRANSPORT", "FORWARD"} & names)
    return False


def _advertised_ttl(flow: FlowResult | None) -> bool:
    if flow is None:
        return False
    for le in flow.summary.events:
        ev = le.event
        if type(ev) is Capabilities:
            for item in ev.items:
                words = item.upper().split()
                if words[:1] == ["XCLIENT"] and "TTL" in words[1:]:
                    return True
    return False


def _per_record(ctx: RuleContext, flow: FlowResult | None, records: list[ForwardingRecord]) -> Iterator[Finding]:
    ordered: list[ForwardingRecord] | None = None  # in command order, made when a record needs it
    for r in records:
        key = _ttl_key(r)
        raw = r.ttl_raw
        if raw is not None and r.ttl is None and raw.upper() not in _UNAVAILABLE:
            why = _why_not_decimal(raw)
            yield ctx.record_finding(
                NOT_DECIMAL, r,
                f"{key} is {raw!r} ({why.replace('_', ' ')}): Dovecot's str_to_uint rejects it "
                + ("(IMAP: BAD Invalid ID parameters)." if r.carrier == "ID" else "(-ERR / 501 Invalid TTL parameter)."),
                [("key", key), ("ttl_raw", raw), ("reason", why)],
            )
        elif r.ttl is not None and raw is not None and len(raw) > 1 and raw[0] == "0":
            yield ctx.record_finding(
                NOT_DECIMAL, r, f"{key} is {raw!r} (leading zeros): Dovecot never writes TTLs this way.",
                [("key", key), ("ttl_raw", raw), ("reason", "leading_zeros")], severity=Severity.LOW,
            )
        if r.ttl == 0:
            yield ctx.record_finding(
                ZERO, r, f"{key} is 0: {_zero_effect(r)}.", [("key", key), ("ttl", 0)])
        sent = any(n.lower() == key.lower() for n, _ in r.params)  # present, maybe NIL (encoding rules)
        if not sent and r.forwarding and _dovecot_form(r):
            if r.carrier == "ID" or r.protocol == "pop3":
                yield ctx.record_finding(
                    MISSING, r,
                    f"This {r.verb} is in Dovecot proxy form but has no {key}: Dovecot proxies always send it, "
                    "so the sender is not a stock Dovecot proxy or the key was stripped; loops cannot be stopped.",
                    [("key", key)],
                )
            elif r.protocol in ("submission", "lmtp", "smtp"):
                if ordered is None:
                    ordered = by_command(records)
                siblings = [x for x in ordered if x.carrier == "XCLIENT"]
                if (_advertised_ttl(flow) and not any(n.upper() == "TTL" for x in siblings for n, _ in x.params)
                        and next(x for x in siblings if _dovecot_form(x)) is r):
                    yield ctx.record_finding(
                        MISSING, r,
                        "The backend advertised TTL in its XCLIENT capability but no XCLIENT on this connection "
                        "carried one: a Dovecot proxy would have sent it.",
                        [("key", key), ("xclient_commands", len(siblings))],
                    )


def _first_hops(records: list[ForwardingRecord]) -> list[ForwardingRecord]:
    """Records that are not a later hop of a chain sharing their session ID."""
    chains: dict[str, ForwardingRecord] = {}
    alone: list[ForwardingRecord] = []
    for r in records:
        if r.ttl is None:
            continue
        if not r.session_id:
            alone.append(r)
            continue
        base = r.session_id.split(":", 1)[0]
        cur = chains.get(base)
        if cur is None or (r.ts_ns, r.capture, r.frames) < (cur.ts_ns, cur.capture, cur.frames):
            chains[base] = r
    return alone + list(chains.values())


def _start_values(ctx: RuleContext) -> Iterator[Finding]:
    for r in _first_hops(ctx.records):
        if r.ttl is None or r.ttl == 0:
            continue
        if r.protocol in LOGIN_PROTOCOLS and r.carrier != "XRCPTFORWARD":
            expected = "4 (Dovecot 2.3) or 6 (2.4)"
            ok = r.ttl in LOGIN_FIRST_HOP_TTLS
        elif r.protocol == "lmtp":
            expected = str(LMTP_FIRST_HOP_TTL)
            ok = r.ttl == LMTP_FIRST_HOP_TTL
        else:
            continue
        if not ok:
            yield ctx.record_finding(
                UNUSUAL_START, r,
                f"{_ttl_key(r)} is {r.ttl} on what looks like the first hop; a Dovecot {r.protocol} proxy starts "
                f"with {expected}: a later hop whose upstream was not captured, custom settings or another sender.",
                [("ttl", r.ttl), ("expected", expected)],
            )


def _loop_replies(ctx: RuleContext, flow: FlowResult, records: list[ForwardingRecord]) -> Iterator[Finding]:
    recs = [r for r in by_command(records) if r.forwarding]
    if not recs:
        return
    cmds: dict[int, CommandInfo] | None = None  # made when a reply needs it (most flows: never)
    first_fwd = min(r.stream_start for r in recs)
    ttls = [r.ttl for r in recs if r.ttl is not None]
    ttl_text = ",".join(str(t) for t in ttls)
    for le in flow.summary.events:
        rep = le.event
        if type(rep) is not Reply or not rep.final:
            continue
        loop = LMTP_LOOP_RE.search(rep.text) is not None
        if not loop and ACCOUNT_UNAVAILABLE not in rep.text:
            continue  # the common case: a reply that says nothing of loops (tested first: cheap)
        if cmds is None:
            cmds = command_index(flow)
        ci = cmds.get(rep.answers) if rep.answers is not None else None
        cause = ci.cmd if ci is not None else None
        if cause is not None and cause.event.span.start < first_fwd:
            continue  # answers a command sent before any forwarding
        facts: list[tuple[str, object]] = [
            ("reply", f"{rep.status} {rep.text}"), ("reply_frames", frames_text(le.frames)),
            ("forwarded_ttl", ttl_text)]
        if cause is not None:
            facts.append(("command_frames", frames_text(cause.frames)))
        evidence = cause or le
        if loop:
            yield event_finding(
                ctx, LMTP_LOOP, flow, evidence,
                f"The LMTP backend answered {rep.status} {rep.text!r}: the proxies loop "
                f"(forwarded TTL {ttl_text or 'not seen'}).", facts)
        else:  # ACCOUNT_UNAVAILABLE in rep.text
            spent = any(t <= LOGIN_PROXY_MIN_TTL for t in ttls)
            yield event_finding(
                ctx, PROXY_REFUSED, flow, evidence,
                f"After forwarding with TTL {ttl_text or 'not seen'} the server answered {rep.status} "
                f"{rep.text!r}: "
                + ("the TTL was spent, so the proxy refused to go on (a proxy loop)." if spent else
                   "a proxy further down may have refused (loop) or the backend failed."),
                facts, severity=None if spent else Severity.LOW)


def check_flow(ctx: RuleContext, flow: FlowResult | None, recs: list[ForwardingRecord]) -> Iterator[Finding]:
    """The TTL findings of one flow: its records' TTLs, then its loop replies."""
    if not recs:
        return  # both parts judge records (loop replies only on a flow that forwarded)
    yield from _per_record(ctx, flow, recs)
    if flow is not None:
        yield from _loop_replies(ctx, flow, recs)


def check_global(ctx: RuleContext) -> Iterator[Finding]:
    """The first-hop start values (which record is a first hop depends on every record)."""
    yield from _start_values(ctx)


def check(ctx: RuleContext) -> Iterator[Finding]:
    """Every TTL finding."""
    return check_module(ctx, check_flow, check_global)
