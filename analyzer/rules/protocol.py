"""Protocol rules: parser anomalies and command sequencing around the forwarding carriers.

Strategy: the parsers already turned every problem in the peer's bytes into a
named :class:`~analyzer.protocols.base.Anomaly` (Zeek "weird"); this module
decides which of them an investigator must see (a gap or an over-long line
where a forwarding command was, STARTTLS command injection, multiplex framing
errors) and folds the rest into one INFO finding per flow and anomaly code. The
sequencing rules (A-I4/5/8, A-P4/5, A-S5/6/8) walk one flow's located events
once, in capture order, or its commands in command-number order when the
question is "in which state did the server process this command" (pipelined
commands are processed in order even when their replies come later).

The helpers at the top (``event_finding``, ``command_index``, ``server_software``
...) are shared by the other rule modules of this package.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from analyzer.flows.model import FlowResult
from analyzer.forwarding.extract import IMAP_FORWARD_PREFIX, IMAP_FORWARDING_KEYS
from analyzer.forwarding.model import ForwardingRecord
from analyzer.protocols.base import (
    Anomaly,
    Capabilities,
    Command,
    Event,
    Greeting,
    ImapId,
    LocatedEvent,
    Reply,
    Xclient,
    wire_bytes,
)
from analyzer.rules import RuleContext, check_module
from analyzer.rules.base import Finding, RuleInfo, Severity

# --- shared helpers ------------------------------------------------------------------------

LOGIN_MAX_INBUF_SIZE = 1026  # login-common/client-common.h: 1218 - 128 - 64; one login input buffer
IMAP_LITERAL_MINUS_MAX = 4096  # RFC 7888 LITERAL-: non-synchronizing literals are limited to 4096 octets
MAX_LISTED = 50  # our bound on commands named in one finding
CARRIER_VERBS = frozenset({"ID", "XCLIENT", "XOIP", "XFORWARD"})  #: commands that are forwarding carriers
#: imap-proxy.c fixed tags: I ID, S STARTTLS, C CAPABILITY, L LOGIN/AUTHENTICATE (a Dovecot proxy fingerprint)
DOVECOT_PROXY_TAGS: dict[str, frozenset[str]] = {
    "I": frozenset({"ID"}), "S": frozenset({"STARTTLS"}), "C": frozenset({"CAPABILITY"}),
    "L": frozenset({"LOGIN", "AUTHENTICATE"}),
}
SMTP_FAMILY = frozenset({"smtp", "submission", "lmtp"})
POSTFIX_ONLY_XCLIENT_ATTRS = frozenset({"NAME", "REVERSE_NAME"})  # postfix smtpd.c EHLO XCLIENT line; Dovecot lacks them


def _command_seq(r: ForwardingRecord) -> int:
    return r.command_seq


def by_command(recs: list[ForwardingRecord]) -> list[ForwardingRecord]:
    """One flow's records in command order (a stable sort: records of one command keep their order)."""
    return sorted(recs, key=_command_seq) if len(recs) > 1 else recs


def event_excerpt(ev: Event, limit: int = 256) -> bytes:
    """Bytes to show for an event: the anomaly excerpt, the reply line, the command line."""
    if type(ev) is Anomaly:
        return ev.excerpt[:limit]
    if type(ev) is Reply:
        head = f"{ev.tag} " if ev.tag else ""
        return wire_bytes(f"{head}{ev.status} {ev.text}")[:limit]
    if type(ev) is Command:
        head = f"{ev.tag} " if ev.tag else ""
        return (wire_bytes(f"{head}{ev.verb}") + (b" " + ev.args if ev.args else b""))[:limit]
    if type(ev) is Greeting:
        return wire_bytes(f"{ev.status} {ev.text}")[:limit]
    return b""


def event_finding(ctx: RuleContext, info: RuleInfo, flow: FlowResult, le: LocatedEvent, message: str,
                  facts: Iterable[tuple[str, object]] = (), *, severity: Severity | None = None,
                  excerpt: bytes | None = None) -> Finding:
    """A finding whose evidence is a located parser event (a reply, an anomaly, a command)."""
    sp = le.event.span
    return Finding(
        rule=info.id, spec=info.spec, severity=severity or info.severity, title=info.title, message=message,
        flow=flow.id, flows=(flow.id,), capture=flow.summary.capture, frames=le.frames, ts_ns=le.ts_ns,
        stream=(sp.direction.value, sp.start, sp.end),
        excerpt=(event_excerpt(le.event, ctx.excerpt_len) if excerpt is None else excerpt)[: ctx.excerpt_len],
        facts=tuple((k, str(v)) for k, v in facts),
    )


def frames_text(frames: Iterable[int]) -> str:
    """Frame numbers as a compact comma-separated text for facts."""
    return ",".join(str(f) for f in frames)


@dataclass(slots=True, unsafe_hash=True)
class CommandInfo:
    """A client command with its final reply, as the flow shows them (never changed once made).

    Not ``frozen``: :func:`command_index` makes one per command of a flow, and a frozen
    ``__init__`` costs about 1 us more each (see :mod:`analyzer.protocols.base`).
    """

    cmd: LocatedEvent  #: the located Command event
    index: int  #: position of the Command in the flow's event list
    reply: LocatedEvent | None  #: the first final Reply answering it


def command_index(flow: FlowResult) -> dict[int, CommandInfo]:
    """Command seq -> the command and its first final reply."""
    cmds: dict[int, tuple[LocatedEvent, int]] = {}
    replies: dict[int, LocatedEvent] = {}
    for i, le in enumerate(flow.summary.events):
        ev = le.event
        if type(ev) is Reply:  # the most frequent event: tested first
            if ev.final:
                answers = ev.answers
                if answers is not None and answers not in replies:
                    replies[answers] = le
        elif type(ev) is Command:
            if ev.seq not in cmds:
                cmds[ev.seq] = (le, i)
    get = replies.get
    return {seq: CommandInfo(le, i, get(seq)) for seq, (le, i) in cmds.items()}


def command_of(le: LocatedEvent) -> Command:
    """The Command inside a located event (for CommandInfo.cmd)."""
    ev = le.event
    assert type(ev) is Command
    return ev


def reply_of(le: LocatedEvent) -> Reply:
    """The Reply inside a located event (for CommandInfo.reply)."""
    ev = le.event
    assert type(ev) is Reply
    return ev


def server_software(flow: FlowResult) -> str | None:
    """"postfix" or "dovecot" when the greeting or an EHLO/LHLO capability line tells, else None."""
    for le in flow.summary.events:
        ev = le.event
        if type(ev) is Greeting and not ev.restart:
            if "Postfix" in ev.text:
                return "postfix"
            if "Dovecot" in ev.text:
                return "dovecot"
        elif type(ev) is Capabilities and ev.source in ("ehlo", "lhlo"):
            for item in ev.items:
                words = item.upper().split()
                if words[:1] == ["XCLIENT"] and POSTFIX_ONLY_XCLIENT_ATTRS.intersection(words[1:]):
                    return "postfix"
    return None


def has_internal_keys(rec: ForwardingRecord) -> bool:
    """IMAP ID carrying any key Dovecot's imap-login treats as internal (spec table 1.3)."""
    return any(n.lower() in IMAP_FORWARDING_KEYS or n.lower().startswith(IMAP_FORWARD_PREFIX)
               for n, _ in rec.params)


# --- the rule table ------------------------------------------------------------------------

GAP_NEAR_FORWARDING = RuleInfo(
    "protocol.gap_near_forwarding", Severity.LOW,
    "Bytes missing from the capture where forwarding commands were sent", None)
LINE_TOO_LONG_CARRIER = RuleInfo(
    "protocol.carrier_line_too_long", Severity.MEDIUM,
    "A forwarding command line was longer than the analyzer's line limit and was cut", None)
STARTTLS_INJECTION = RuleInfo(
    "protocol.starttls_injection", Severity.MEDIUM,
    "Commands pipelined after STARTTLS/STLS in cleartext (command injection)", None)
MULTIPLEX = RuleInfo(
    "protocol.imap_multiplex_unexpected", Severity.LOW,
    "IMAP * MULTIPLEX without a request, repeated or with a version other than 0", "A-I7")
PARSER_ANOMALY = RuleInfo(
    "protocol.parser_anomaly", Severity.INFO,
    "The protocol parser noted something unusual in this flow", None)
ID_REJECTED = RuleInfo(
    "protocol.imap_id_rejected", Severity.MEDIUM,
    "A forwarding IMAP ID was answered BAD or NO", "A-I4")
ID_SYNTAX = RuleInfo(
    "protocol.imap_id_syntax", Severity.MEDIUM,
    "A forwarding IMAP ID is not well-formed (odd list, nested list, non-string item)", "A-I6")
LITERAL_NOT_WAITED = RuleInfo(
    "protocol.imap_literal_not_waited", Severity.MEDIUM,
    "A synchronizing literal in ID was sent without waiting for the server's continuation", "A-I5")
LITERAL_IN_ID = RuleInfo(
    "protocol.imap_literal_in_id", Severity.MEDIUM,
    "A literal inside an ID that is not in Dovecot proxy form, or a LITERAL- overflow", "A-I5")
ID_AFTER_AUTH = RuleInfo(
    "protocol.imap_id_after_auth", Severity.LOW,
    "An IMAP ID with internal keys was sent after authentication (no effect)", "A-I8")
SECOND_ID = RuleInfo(
    "protocol.imap_second_id", Severity.LOW,
    "A second IMAP ID with internal keys on one connection (its internal keys are ignored)", "A-I8")
XOIP = RuleInfo(
    "protocol.pop3_xoip", Severity.LOW, "The legacy POP3 XOIP command was used", "A-P4")
POP3_ORDER = RuleInfo(
    "protocol.pop3_xclient_order", Severity.MEDIUM,
    "POP3 XCLIENT sent before the greeting or after USER/authentication", "A-P5")
POP3_REJECTED = RuleInfo(
    "protocol.pop3_xclient_rejected", Severity.MEDIUM,
    "POP3 XCLIENT answered with something other than +OK", "A-P5")
SMTP_IN_TRANSACTION = RuleInfo(
    "protocol.smtp_xclient_in_transaction", Severity.MEDIUM,
    "XCLIENT sent inside a mail transaction", "A-S5")
SMTP_NO_RESTART = RuleInfo(
    "protocol.smtp_xclient_no_restart", Severity.MEDIUM,
    "No 220 after XCLIENT, or no new EHLO/LHLO before the next command", "A-S6")
SMTP_FORWARD_INVALID = RuleInfo(
    "protocol.smtp_invalid_forward_reply", Severity.MEDIUM,
    "Submission answered 501 Invalid FORWARD parameter (later replies are suspect)", "A-S8")
SMTP_REJECTED = RuleInfo(
    "protocol.smtp_xclient_rejected", Severity.MEDIUM,
    "An SMTP/LMTP XCLIENT was rejected: the backend sees the proxy's address", None)

RULES: tuple[RuleInfo, ...] = (
    GAP_NEAR_FORWARDING, LINE_TOO_LONG_CARRIER, STARTTLS_INJECTION, MULTIPLEX, PARSER_ANOMALY, ID_REJECTED,
    ID_SYNTAX, LITERAL_NOT_WAITED, LITERAL_IN_ID, ID_AFTER_AUTH, SECOND_ID, XOIP, POP3_ORDER, POP3_REJECTED,
    SMTP_IN_TRANSACTION, SMTP_NO_RESTART, SMTP_FORWARD_INVALID, SMTP_REJECTED,
)

# Replies that other rules own (so the generic "rejected" rules stay quiet about them)
OVERFLOW_REPLY_RE = re.compile(
    r"Input buffer full|Line too long|Literal size too large|command too long|attribute value too long")
TRUST_REPLY_RE = re.compile(r"5\.7\.14|insufficient authorization|not from trusted IP")
INVALID_FORWARD_TEXT = "Invalid FORWARD parameter"  # submission-login client.c: client_connection_cmd_xclient()
BAD_ATTR_NAME_TEXT = "Bad XCLIENT attribute name"  # postfix smtpd.c: an attribute not advertised (trust rules)
SERVERBUG = "[SERVERBUG]"  # imap-proxy.c (2.4.3+): NO [SERVERBUG] to ID aborts the login

#: Anomaly codes that signal forwarding bytes were cut or injected (reported by their own rules)
_GAP_CODES = frozenset({"content_gap"})
_LONG_CODES = frozenset({"line_too_long", "carrier_truncated"})
_INJECTION_CODES = frozenset({"starttls_injection", "command_after_stls"})
ID_SYNTAX_PROBLEMS = frozenset({  # imap.ID_PROBLEMS that make Dovecot answer BAD (CR/LF/NUL: encoding rules)
    "odd_item_count", "nested_list", "key_not_string", "value_is_list", "bad_escape", "unterminated_quoted",
    "missing_paren", "trailing_garbage",
})
_AUTH_VERBS_IMAP = frozenset({"LOGIN", "AUTHENTICATE"})
_AUTH_VERBS_POP3 = frozenset({"USER", "PASS", "APOP", "AUTH"})
_TX_RESET = frozenset({"RSET", "EHLO", "HELO", "LHLO"})  # RFC 5321 4.1.1.1/4.1.1.5: these clear a transaction
_NEEDS_EHLO = frozenset({"MAIL", "RCPT", "DATA", "BDAT", "AUTH", "STARTTLS", "VRFY", "EXPN", "ETRN"})


# --- anomalies -----------------------------------------------------------------------------


def _near(rec: ForwardingRecord, start: int, end: int, slack: int) -> bool:
    return start <= rec.stream_end + slack and end >= rec.stream_start - slack


def _window_end(flow: FlowResult) -> int | None:
    """Client-stream offset where forwarding is over: the first authentication (or, for SMTP, MAIL)
    command; None when forwarding may come anywhere (LMTP RCPT parameters) or no such command was seen."""
    if flow.summary.protocol == "lmtp":
        return None
    verbs = _AUTH_VERBS_IMAP | _AUTH_VERBS_POP3 | {"MAIL"}
    for le in flow.summary.events:
        ev = le.event
        if type(ev) is Command and ev.verb in verbs:
            return ev.span.start
    return None


def forwarding_expected(flow: FlowResult) -> str | None:
    """Why this flow should carry forwarding even if none was captured, or None: the backend offered
    XCLIENT/XRCPTFORWARD to this client, or the client uses Dovecot's fixed IMAP proxy tags."""
    caps_id = False
    proxy_tags = False
    for le in flow.summary.events:
        ev = le.event
        if type(ev) is Greeting and not ev.restart:
            if "XCLIENT" in ev.capabilities:
                return "the greeting offered [XCLIENT]"
            caps_id = caps_id or "ID" in (c.upper() for c in ev.capabilities)
        elif type(ev) is Capabilities and ev.source in ("ehlo", "lhlo"):
            for item in ev.items:
                word = item.split(" ", 1)[0].upper()
                if word in ("XCLIENT", "XRCPTFORWARD"):
                    return f"the {ev.source.upper()} reply offered {word}"
        elif type(ev) is Command and ev.tag in DOVECOT_PROXY_TAGS and ev.verb in DOVECOT_PROXY_TAGS[ev.tag]:
            proxy_tags = True
        elif (type(ev) is Reply and ev.final and ev.tag == "I" and ev.answers is None
              and "ID completed" in ev.text):
            return f"the server answered an ID not in the capture ({ev.status} {ev.text})"
    if caps_id and proxy_tags:
        return "the client uses Dovecot's proxy tags after a greeting that offered ID"
    return None


def _frames_after(flow: FlowResult, at: LocatedEvent) -> tuple[int, ...]:
    """Frames of the first event after ``at`` that has any (a gap itself has none)."""
    seen = False
    for le in flow.summary.events:
        if le is at:
            seen = True
        elif seen and le.frames:
            return le.frames
    return ()


def _injected_commands(flow: FlowResult, at: LocatedEvent) -> list[LocatedEvent]:
    """Client commands sent after the last STARTTLS/STLS before ``at`` (the anomaly), in order."""
    events = flow.summary.events
    end = next((i for i, le in enumerate(events) if le is at), len(events))
    start = None
    for i in range(end - 1, -1, -1):
        ev = events[i].event
        if type(ev) is Command and ev.verb in ("STARTTLS", "STLS"):
            start = i
            break
    if start is None:
        return []
    return [le for le in events[start + 1 : end] if type(le.event) is Command][:MAX_LISTED]


def _check_anomalies(ctx: RuleContext, flow: FlowResult, recs: list[ForwardingRecord]) -> Iterator[Finding]:
    anomalies = [le for le in flow.summary.events if type(le.event) is Anomaly]
    if not anomalies:  # most flows: nothing else to walk
        return
    info_counts: dict[str, list[LocatedEvent]] = {}
    carrier_spans = {(le.event.span.start, le.event.span.end) for le in flow.summary.events
                     if type(le.event) is Command and le.event.verb in CARRIER_VERBS}
    carrier_spans |= {(r.stream_start, r.stream_end) for r in recs}
    forwarding = [r for r in recs if r.forwarding]
    window_end = _window_end(flow)
    expected = None if forwarding else forwarding_expected(flow)
    for le in anomalies:
        ev = le.event
        assert type(ev) is Anomaly
        sp = ev.span
        to_server = sp.direction.value == "to_server"
        if ev.code in _GAP_CODES and to_server and (forwarding or expected):
            near = [r for r in forwarding if _near(r, sp.start, sp.end, LOGIN_MAX_INBUF_SIZE)]
            in_window = window_end is None or sp.start <= window_end
            if near or in_window:
                if near:
                    what = f"next to the {near[0].carrier} command at client offset {near[0].stream_start}"
                elif window_end is not None:
                    what = f"before the client authenticated (offset {window_end}), where forwarding is sent"
                else:
                    what = "in a connection that carries forwarding"
                why = f" ({expected})" if expected else ""
                after = _frames_after(flow, le)
                yield event_finding(
                    ctx, GAP_NEAR_FORWARDING, flow, le if le.frames else LocatedEvent(ev, after[:1], le.ts_ns),
                    f"Client bytes {sp.start}-{sp.end} are missing from the capture {what}{why}: "
                    "forwarding commands may be incomplete or missing entirely.",
                    [("gap_start", sp.start), ("gap_end", sp.end), ("direction", sp.direction.value),
                     ("near_command_frames", frames_text(near[0].frames) if near else ""),
                     ("records_seen", len(forwarding)), ("first_frame_after_gap", frames_text(after[:1]))],
                )
                continue
        if ev.code in _LONG_CODES and to_server and (
                (sp.start, sp.end) in carrier_spans or ev.code == "carrier_truncated"):
            yield event_finding(
                ctx, LINE_TOO_LONG_CARRIER, flow, le,
                f"A forwarding command line at client offset {sp.start} was cut by the parser ({ev.detail}); "
                "its attributes were only partly read.",
                [("code", ev.code), ("line_start", sp.start), ("line_end", sp.end), ("detail", ev.detail)],
            )
            continue
        if ev.code in _INJECTION_CODES:
            injected = _injected_commands(flow, le)
            verbs = [command_of(c).verb for c in injected]
            carriers = [v for v in verbs if v in CARRIER_VERBS]
            yield event_finding(
                ctx, STARTTLS_INJECTION, flow, injected[0] if injected else le,
                f"{len(injected) or 'Some'} command(s) ({', '.join(verbs[:10]) or ev.detail}) were pipelined in "
                "cleartext after STARTTLS/STLS, before the server's go-ahead: a server that buffers them runs them "
                "inside the TLS session" + (f", including the forwarding command(s) {', '.join(carriers)}."
                                            if carriers else "."),
                [("code", ev.code), ("injected", ",".join(verbs)), ("reply_frames", frames_text(le.frames)),
                 ("command_frames", frames_text(f for c in injected for f in c.frames))],
                severity=Severity.HIGH if carriers else None,
            )
            continue
        info_counts.setdefault(ev.code, []).append(le)
    for code, les in sorted(info_counts.items()):
        first = les[0]
        assert type(first.event) is Anomaly
        yield event_finding(
            ctx, PARSER_ANOMALY, flow, first,
            f"Parser anomaly {code} seen {len(les)} time(s) in this flow; first: {first.event.detail}",
            [("code", code), ("count", len(les))],
        )


def _check_multiplex(ctx: RuleContext, flow: FlowResult, recs: list[ForwardingRecord]) -> Iterator[Finding]:
    requested_seqs = {r.command_seq for r in recs if r.carrier == "ID"
                      and any(n.lower() == "x-multiplex" for n, _ in r.params)}
    id_seen_before: set[int] = set()
    seen = 0
    for le in flow.summary.events:
        ev = le.event
        if type(ev) is ImapId:
            id_seen_before.add(ev.seq)
        if not (type(ev) is Reply and ev.tag == "*" and ev.status == "MULTIPLEX"):
            continue
        seen += 1
        version = ev.text.split(" ", 1)[0] if ev.text else ""
        requested = bool(requested_seqs & id_seen_before)
        problems = []
        if not requested:
            problems.append("no ID with x-multiplex was sent before it")
        if seen > 1:
            problems.append(f"it is MULTIPLEX number {seen} on this connection")
        if version != "0":
            problems.append(f"its version is {version!r}, not '0'")
        if problems:
            yield event_finding(
                ctx, MULTIPLEX, flow, le,
                f"The server sent * MULTIPLEX {version} but {'; '.join(problems)}: "
                "Dovecot proxies treat this as a protocol error.",
                [("version", version), ("requested", requested), ("occurrence", seen)],
            )


# --- IMAP ------------------------------------------------------------------------------------


def _check_imap(ctx: RuleContext, flow: FlowResult, recs: list[ForwardingRecord]) -> Iterator[Finding]:
    by_seq = {r.command_seq: r for r in recs if r.carrier == "ID"}
    for r in by_seq.values():
        if r.forwarding and r.reply is not None and r.reply.code.upper() in ("BAD", "NO"):
            fatal = SERVERBUG in r.reply.text
            yield ctx.record_finding(
                ID_REJECTED, r,
                f"The backend answered the forwarding ID with {r.reply.code} {r.reply.text!r}: "
                + ("from Dovecot 2.4.3 the proxy aborts the login (NO [SERVERBUG])." if fatal else
                   "the proxy logs in anyway and the backend records the proxy's address as the client."),
                [("reply_code", r.reply.code), ("reply_text", r.reply.text),
                 ("reply_frames", frames_text(r.reply.frames)), ("fatal", fatal)],
            )
        bad = [p.split(": ", 1)[1] for p in r.problems
               if p.startswith("ID: ") and p.split(": ", 1)[1] in ID_SYNTAX_PROBLEMS]
        if bad:
            yield ctx.record_finding(
                ID_SYNTAX, r,
                f"The ID list has syntax problems ({', '.join(bad)}): Dovecot answers BAD and applies none of "
                "the forwarded fields.",
                [("problems", ",".join(bad))],
                severity=None if r.forwarding else Severity.INFO,
            )
        for d in r.details:
            if d.form == "literal" and d.literal_waited is False:
                yield ctx.record_finding(
                    LITERAL_NOT_WAITED, r,
                    f"The value of {d.name} ({d.value_octets} octets) is a synchronizing literal sent without "
                    "waiting for '+': a server that rejects the literal reads its octets as commands.",
                    [("key", d.name), ("value_octets", d.value_octets)],
                )
            elif d.form in ("literal", "literal+") and r.tag != "I" and r.forwarding:
                yield ctx.record_finding(
                    LITERAL_IN_ID, r,
                    f"The value of {d.name} is a {d.form} in an ID with tag {r.tag!r}, not Dovecot's proxy tag 'I': "
                    "literals in a forwarding ID from another sender can smuggle bytes past line-based checks.",
                    [("key", d.name), ("form", d.form), ("tag", r.tag), ("value_octets", d.value_octets)],
                )
            if d.form == "literal+" and d.value_octets > IMAP_LITERAL_MINUS_MAX:
                yield ctx.record_finding(
                    LITERAL_IN_ID, r,
                    f"The value of {d.name} is a non-synchronizing literal of {d.value_octets} octets, over the "
                    f"{IMAP_LITERAL_MINUS_MAX}-octet LITERAL- limit.",
                    [("key", d.name), ("value_octets", d.value_octets), ("limit", IMAP_LITERAL_MINUS_MAX)],
                )
    authed: LocatedEvent | None = None
    first_id: int | None = None
    cmds = command_index(flow)
    for le in flow.summary.events:
        ev = le.event
        if type(ev) is Greeting and ev.status == "PREAUTH":
            authed = le
        elif (type(ev) is Reply and ev.final and ev.status == "OK" and ev.answers is not None
              and ev.answers in cmds and command_of(cmds[ev.answers].cmd).verb in _AUTH_VERBS_IMAP):
            authed = authed or le
        elif type(ev) is ImapId:
            rid = by_seq.get(ev.seq)
            if rid is None:
                continue
            r = rid
            if first_id is None:
                first_id = ev.seq
                if authed is None:
                    continue
            internal = has_internal_keys(r)
            if internal and authed is not None:
                yield ctx.record_finding(
                    ID_AFTER_AUTH, r,
                    "This ID with internal keys was sent after the session was authenticated: the imap process "
                    "never applies x-* keys, so the forwarded fields have no effect.",
                    [("auth_frames", frames_text(authed.frames))],
                )
            elif internal and first_id != ev.seq:
                first = by_seq.get(first_id)
                yield ctx.record_finding(
                    SECOND_ID, r,
                    "A second ID on this connection carries internal keys: Dovecot uses only the first ID "
                    "(client->id_logged) and ignores them.",
                    [("first_id_frames", frames_text(first.frames) if first else "")],
                )


# --- POP3 ------------------------------------------------------------------------------------


def _check_pop3(ctx: RuleContext, flow: FlowResult, recs: list[ForwardingRecord]) -> Iterator[Finding]:
    by_seq = {r.command_seq: r for r in recs if r.carrier == "XCLIENT"}
    for r in by_seq.values():
        if r.verb == "XOIP":
            yield ctx.record_finding(
                XOIP, r,
                f"The legacy XOIP command forwarded the address {r.forwarded_client_raw[0]!r} "
                "(Zimbra nginx compatibility; Dovecot reads it as XCLIENT ADDR=).",
                [("addr", r.forwarded_client_raw[0])],
            )
        rep = r.reply
        if rep is not None and rep.code.upper() != "+OK" and not OVERFLOW_REPLY_RE.search(rep.text):
            partial = "Invalid parameters" in rep.text
            yield ctx.record_finding(
                POP3_REJECTED, r,
                f"The backend answered {r.verb} with {rep.code} {rep.text!r}"
                + (": the attributes before the invalid one were already applied (partial update)."
                   if partial else ": the proxy treats this as a configuration failure."),
                [("reply_code", rep.code), ("reply_text", rep.text), ("reply_frames", frames_text(rep.frames))],
            )
    cmds = command_index(flow)
    greeted = False
    greeting_later = any(type(le.event) is Greeting for le in flow.summary.events)
    after: str | None = None
    for le in flow.summary.events:
        ev = le.event
        if type(ev) is Greeting:
            greeted = True
        elif (type(ev) is Reply and ev.final and ev.status == "+OK" and ev.answers in cmds
              and ev.answers is not None):
            verb = command_of(cmds[ev.answers].cmd).verb
            if verb in _AUTH_VERBS_POP3 and after is None:
                after = verb
        elif type(ev) is Xclient:
            rx = by_seq.get(ev.seq)
            if rx is None:
                continue
            r = rx
            if not greeted and greeting_later:
                yield ctx.record_finding(
                    POP3_ORDER, r,
                    f"{r.verb} was sent before the server's greeting: the proxy did not wait for "
                    "+OK [XCLIENT] and cannot know the backend accepts it.",
                    [("position", "before_greeting")],
                )
            elif after is not None:
                yield ctx.record_finding(
                    POP3_ORDER, r,
                    f"{r.verb} was sent after {after} had already succeeded: the login stage is over and the "
                    "forwarded fields are not applied.",
                    [("position", f"after_{after.lower()}")],
                )


# --- SMTP / LMTP -------------------------------------------------------------------------------


def _check_smtp(ctx: RuleContext, flow: FlowResult, recs: list[ForwardingRecord]) -> Iterator[Finding]:
    cmds = command_index(flow)
    by_seq = {r.command_seq: r for r in recs if r.carrier == "XCLIENT"}
    in_tx = False
    tx_from: int | None = None
    for seq in sorted(cmds):
        ci = cmds[seq]
        cmd = command_of(ci.cmd)
        rep = reply_of(ci.reply) if ci.reply is not None else None
        code = rep.status if rep is not None else ""
        if cmd.verb == "XCLIENT":
            r = by_seq.get(seq)
            if r is not None and (in_tx or code == "503"):
                yield ctx.record_finding(
                    SMTP_IN_TRANSACTION, r,
                    "XCLIENT was sent inside a mail transaction"
                    + (f" opened by the MAIL command #{tx_from}" if tx_from is not None else "")
                    + (f"; the server answered {code} {rep.text!r}" if rep is not None else "")
                    + ": the forwarded attributes are not applied.",
                    [("reply_code", code), ("mail_command_seq", tx_from if tx_from is not None else "")],
                )
            if code == "220":
                in_tx = False
            continue
        ok = code[:1] == "2"
        if cmd.verb == "MAIL" and ok:
            in_tx, tx_from = True, seq
        elif cmd.verb in _TX_RESET and ok:
            in_tx = False
        elif cmd.verb == "DATA" and ok:
            in_tx = False
        elif cmd.verb == "BDAT" and ok and b"LAST" in cmd.args.upper():
            in_tx = False
    yield from _check_restart(ctx, flow, cmds, by_seq)
    events = flow.summary.events
    for i, le in enumerate(events):
        ev = le.event
        if type(ev) is not Reply or not ev.final:
            continue
        if INVALID_FORWARD_TEXT in ev.text:
            nxt = next((e for e in events[i + 1:] if type(e.event) is Reply and e.event.final), None)
            nrep = reply_of(nxt) if nxt is not None else None
            r = by_seq.get(ev.answers) if ev.answers is not None else None
            facts: list[tuple[str, object]] = [
                ("reply_frames", frames_text(le.frames)),
                ("next_reply", f"{nrep.status} {nrep.text}" if nrep is not None else ""),
                ("next_reply_frames", frames_text(nxt.frames) if nxt is not None else "")]
            msg = (f"The backend answered {ev.status} {ev.text!r}; XCLIENT handling is not aborted by this reply, "
                   "so the next reply" + (f" ({nrep.status} {nrep.text!r})" if nrep is not None else "")
                   + " may belong to the same command and is suspect.")
            if r is not None:
                yield ctx.record_finding(SMTP_FORWARD_INVALID, r, msg, facts)
            else:
                yield event_finding(ctx, SMTP_FORWARD_INVALID, flow, le, msg, facts)
    for r in by_seq.values():
        rr = r.reply
        if rr is None or rr.code[:1] not in ("4", "5"):
            continue
        if (rr.code == "503" or OVERFLOW_REPLY_RE.search(rr.text) or TRUST_REPLY_RE.search(rr.text)
                or INVALID_FORWARD_TEXT in rr.text or BAD_ATTR_NAME_TEXT in rr.text):
            continue  # owned by the transaction, limits, trust and A-S8 rules
        yield ctx.record_finding(
            SMTP_REJECTED, r,
            f"The backend rejected XCLIENT with {rr.code} {rr.text!r}: none of its attributes were applied "
            "and the backend sees the proxy as the client.",
            [("reply_code", rr.code), ("reply_text", rr.text), ("reply_frames", frames_text(rr.frames))],
        )


def _check_restart(ctx: RuleContext, flow: FlowResult, cmds: dict[int, CommandInfo],
                   by_seq: dict[int, ForwardingRecord]) -> Iterator[Finding]:
    """A-S6: a successful XCLIENT restarts the session: 220, then EHLO/LHLO again."""
    seqs = sorted(cmds)
    # next_other[i]: the first command after seqs[i] that is not an XCLIENT (one backward pass, so
    # 100,000 pipelined XCLIENTs stay linear)
    next_other: dict[int, int | None] = {}
    following: int | None = None
    for s in reversed(seqs):
        next_other[s] = following
        if command_of(cmds[s].cmd).verb != "XCLIENT":
            following = s
    for seq, r in sorted(by_seq.items()):
        rep = r.reply
        if rep is not None and rep.code[:1] == "2" and rep.code != "220":
            yield ctx.record_finding(
                SMTP_NO_RESTART, r,
                f"XCLIENT was answered {rep.code} {rep.text!r} instead of 220: the session was not restarted "
                "at the greeting stage.",
                [("reply_code", rep.code), ("reply_frames", frames_text(rep.frames))],
            )
            continue
        if rep is not None and rep.code != "220":
            continue  # rejected: no restart expected
        nxt = next_other.get(seq)
        if nxt is None:
            continue
        ncmd = command_of(cmds[nxt].cmd)
        if ncmd.verb in _NEEDS_EHLO:
            yield ctx.record_finding(
                SMTP_NO_RESTART, r,
                f"After XCLIENT the client sent {ncmd.verb} without a new EHLO/LHLO: the session was reset to the "
                "greeting stage, so this is a protocol error (Postfix rejects it).",
                [("next_command", ncmd.verb), ("next_command_frames", frames_text(cmds[nxt].cmd.frames))],
            )


# --- entry point ---------------------------------------------------------------------------


def check_flow(ctx: RuleContext, flow: FlowResult | None, recs: list[ForwardingRecord]) -> Iterator[Finding]:
    """The protocol findings of one flow (its anomalies, then its sequencing)."""
    if flow is None:
        return
    recs = by_command(recs)
    yield from _check_anomalies(ctx, flow, recs)
    proto = flow.summary.protocol
    if proto == "imap":
        yield from _check_multiplex(ctx, flow, recs)
        yield from _check_imap(ctx, flow, recs)
    elif proto == "pop3":
        yield from _check_pop3(ctx, flow, recs)
    elif proto in SMTP_FAMILY:
        yield from _check_smtp(ctx, flow, recs)


def check_global(ctx: RuleContext) -> Iterator[Finding]:
    """None: every protocol rule reads one flow."""
    return iter(())


def check(ctx: RuleContext) -> Iterator[Finding]:
    """Every protocol finding of every flow."""
    return check_module(ctx, check_flow, check_global)
