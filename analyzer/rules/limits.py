"""Size limits of the forwarding carriers, and the servers' overflow replies tied to their cause.

Strategy: the size rules read the per-parameter wire details of each record
(``ParamDetail.name_wire``/``value_wire``, which count IMAP quotes and escapes
the way Dovecot's login input buffer does) and the command's ``line_len``. The
overflow-reply rule walks each flow's replies, and for every ``Input buffer
full`` / ``Line too long`` / ``Literal size too large`` / Postfix ``command too
long`` reply finds the command the server was reading (``Reply.answers``, else
the last client command before the reply), so the finding names both the
command's frames (its evidence) and the reply's frames (in its facts). Such a
reply to an ordinary command is reported as INFO; to a forwarding command it
means the whole forwarding was lost.
"""

from __future__ import annotations

from collections.abc import Iterator

from analyzer.flows.model import FlowResult
from analyzer.forwarding.extract import IMAP_FORWARD_PREFIX
from analyzer.forwarding.model import ForwardingRecord
from analyzer.protocols.base import Command, LocatedEvent, Reply
from analyzer.rules import RuleContext, check_module
from analyzer.rules.base import Finding, RuleInfo, Severity
from analyzer.rules.protocol import (
    LOGIN_MAX_INBUF_SIZE,
    OVERFLOW_REPLY_RE,
    by_command,
    event_finding,
    frames_text,
    server_software,
)

IMAP_ID_KEY_MAX = 30  # RFC 2971 3.3; lib-imap/imap-id.h IMAP_ID_KEY_MAX_LEN: longer -> "BAD Invalid ID parameters"
IMAP_ID_VALUE_MAX = 1024  # RFC 2971 3.3: a value is at most 1024 octets
IMAP_ID_MAX_PAIRS = 30  # RFC 2971 3.3: no more than 30 field-value pairs (Dovecot has no limit)
X_FORWARD_NAME_MAX = IMAP_ID_KEY_MAX - len(IMAP_FORWARD_PREFIX)  # spec 1.3: "<name> <= 20" inside x-forward-<name>
# spec A-P2 says 1024 content bytes; real Dovecot 2.3.19 accepts a 1032-octet line and answers 1033 with
# "-ERR Input buffer full" (captures/real/pop3_raw_overlimit): the 8-byte "XCLIENT " is read before the
# 1024 argument bytes that must fit the login buffer
POP3_XCLIENT_MAX_CONTENT = 8 + LOGIN_MAX_INBUF_SIZE - 2
SMTP_LINE_RECOMMENDED = 512  # Postfix XCLIENT_README; Dovecot splits at 510/512 (counted without CRLF here, so
# a line Dovecot's submission-login flushes at 512 characters is never reported)
SUBMISSION_MAX_PARAMETERS = LOGIN_MAX_INBUF_SIZE  # submission-login max_parameters_size -> "500 5.5.2 Line too long"
LMTP_MAX_PARAMETERS = 4096  # lib-smtp SMTP_COMMAND_DEFAULT_MAX_PARAMETERS_SIZE -> "500 5.5.2 Line too long"
POSTFIX_LINE_LENGTH_LIMIT = 2048  # postfix line_length_limit default -> "500 5.5.2 Error: command too long"
POSTFIX_MAX_VALUE = 255  # postfix smtpd.c xclient_cmd(): "501 5.5.4 Error: attribute value too long"
CRLF_LEN = 2  # line terminator counted in line_len

#: hard server limit on an SMTP-family command's parameters, by protocol (spec 3.3, 4.4)
SMTP_HARD_LIMITS: dict[str, tuple[int, str]] = {
    "submission": (SUBMISSION_MAX_PARAMETERS, "Dovecot submission-login: 500 5.5.2 Line too long"),
    "lmtp": (LMTP_MAX_PARAMETERS, "Dovecot LMTP: 500 5.5.2 Line too long"),
    "smtp": (POSTFIX_LINE_LENGTH_LIMIT, "Postfix line_length_limit: 500 5.5.2 Error: command too long"),
}

KEY_TOO_LONG = RuleInfo(
    "limits.imap_id_key_too_long", Severity.MEDIUM,
    "IMAP ID key longer than 30 octets (Dovecot: BAD Invalid ID parameters, every field dropped)", "A-I1")
VALUE_TOO_LONG = RuleInfo(
    "limits.imap_id_value_too_long", Severity.MEDIUM,
    "IMAP ID value longer than 1024 octets (Dovecot: BYE Input buffer full)", "A-I2")
TOO_MANY_PAIRS = RuleInfo(
    "limits.imap_id_too_many_pairs", Severity.LOW, "IMAP ID with more than 30 pairs (RFC 2971)", "A-I3")
FORWARD_NAME_TOO_LONG = RuleInfo(
    "limits.forward_name_too_long_for_imap", Severity.LOW,
    "Forward variable name over 20 characters: x-forward-<name> would exceed the 30-octet ID key limit", "A-I1")
POP3_LINE_TOO_LONG = RuleInfo(
    "limits.pop3_xclient_line_too_long", Severity.MEDIUM,
    "POP3 XCLIENT line over 1032 bytes, i.e. 1024 argument bytes (Dovecot: -ERR Input buffer full)", "A-P2")
SMTP_LINE_TOO_LONG = RuleInfo(
    "limits.smtp_xclient_line_too_long", Severity.MEDIUM, "SMTP/LMTP XCLIENT line longer than 512 characters", "A-S3")
SMTP_OVER_HARD_LIMIT = RuleInfo(
    "limits.smtp_command_over_server_limit", Severity.MEDIUM,
    "SMTP/LMTP forwarding command over the server's hard line limit (500 Line too long)", "A-S3")
POSTFIX_VALUE_TOO_LONG = RuleInfo(
    "limits.postfix_value_too_long", Severity.MEDIUM,
    "XCLIENT attribute value over 255 characters to Postfix (501 attribute value too long)", "A-S9")
OVERFLOW_REPLY = RuleInfo(
    "limits.overflow_reply", Severity.MEDIUM,
    "The server answered Input buffer full / Line too long / Literal size too large", None)

RULES: tuple[RuleInfo, ...] = (
    KEY_TOO_LONG, VALUE_TOO_LONG, TOO_MANY_PAIRS, FORWARD_NAME_TOO_LONG, POP3_LINE_TOO_LONG, SMTP_LINE_TOO_LONG,
    SMTP_OVER_HARD_LIMIT, POSTFIX_VALUE_TOO_LONG, OVERFLOW_REPLY,
)

_UNAVAILABLE = ("[UNAVAILABLE]", "[TEMPUNAVAIL]")  # Postfix XCLIENT special values


def _imap(ctx: RuleContext, r: ForwardingRecord) -> Iterator[Finding]:
    sev = None if r.forwarding else Severity.INFO  # an end client's own ID: context only
    for d in r.details:
        if d.name_octets > IMAP_ID_KEY_MAX:
            yield ctx.record_finding(
                KEY_TOO_LONG, r,
                f"ID key {d.name!r} is {d.name_octets} octets, over the {IMAP_ID_KEY_MAX}-octet limit: Dovecot "
                "answers BAD Invalid ID parameters and drops every forwarded field"
                + (f" (the x-forward- name is {d.name_octets - len(IMAP_FORWARD_PREFIX)} characters, over "
                   f"{X_FORWARD_NAME_MAX})." if d.name.lower().startswith(IMAP_FORWARD_PREFIX) else "."),
                [("key", d.name), ("key_octets", d.name_octets), ("limit", IMAP_ID_KEY_MAX)], severity=sev,
            )
        if d.value_octets > IMAP_ID_VALUE_MAX or d.value_wire > LOGIN_MAX_INBUF_SIZE:
            over_buffer = d.value_wire > LOGIN_MAX_INBUF_SIZE
            yield ctx.record_finding(
                VALUE_TOO_LONG, r,
                f"The value of {d.name!r} is {d.value_octets} octets ({d.value_wire} on the wire as {d.form}): "
                + (f"over Dovecot's {LOGIN_MAX_INBUF_SIZE}-byte login buffer, so it answers "
                   "* BYE Input buffer full and disconnects." if over_buffer else
                   f"over the RFC 2971 limit of {IMAP_ID_VALUE_MAX} octets."),
                [("key", d.name), ("value_octets", d.value_octets), ("value_wire", d.value_wire),
                 ("limit", IMAP_ID_VALUE_MAX), ("buffer", LOGIN_MAX_INBUF_SIZE), ("over_buffer", over_buffer)],
                severity=sev,
            )
    counted = len(r.params)
    if counted > IMAP_ID_MAX_PAIRS or "ID: too_many_pairs_kept" in r.problems:
        yield ctx.record_finding(
            TOO_MANY_PAIRS, r,
            f"The ID list has {counted}{' or more' if 'ID: too_many_pairs_kept' in r.problems else ''} pairs, "
            f"more than the {IMAP_ID_MAX_PAIRS} RFC 2971 allows (Dovecot accepts them).",
            [("pairs", counted), ("limit", IMAP_ID_MAX_PAIRS)], severity=sev,
        )


def _forward_names(ctx: RuleContext, r: ForwardingRecord) -> Iterator[Finding]:
    for v in r.forward:
        if v.origin == "x-forward" or v.name is None or len(v.name) <= X_FORWARD_NAME_MAX:
            continue
        yield ctx.record_finding(
            FORWARD_NAME_TOO_LONG, r,
            f"The {v.origin} variable name {v.name!r} has {len(v.name)} characters: forwarded on to an IMAP hop as "
            f"x-forward-{v.name} it exceeds the {IMAP_ID_KEY_MAX}-octet ID key limit and the whole ID is rejected.",
            [("name", v.name), ("name_len", len(v.name)), ("limit", X_FORWARD_NAME_MAX)],
        )


def _content_len(r: ForwardingRecord) -> int:
    return max(0, r.line_len - CRLF_LEN)


def _smtp(ctx: RuleContext, r: ForwardingRecord, software: str | None) -> Iterator[Finding]:
    content = _content_len(r)
    if r.carrier == "XCLIENT" and content > SMTP_LINE_RECOMMENDED:
        yield ctx.record_finding(
            SMTP_LINE_TOO_LONG, r,
            f"The XCLIENT line has {content} characters before CRLF, over the {SMTP_LINE_RECOMMENDED} Postfix "
            "recommends (Dovecot splits its own XCLIENT at 510/512, so this sender is not a stock Dovecot proxy).",
            [("line_chars", content), ("line_len", r.line_len), ("limit", SMTP_LINE_RECOMMENDED)],
        )
    proto = "smtp" if software == "postfix" else r.protocol
    hard = SMTP_HARD_LIMITS.get(proto)
    if hard is not None:
        verb_len = len(r.verb) + 1
        params = max(0, content - verb_len)
        size, reply = (content, hard[1]) if proto == "smtp" else (params, hard[1])
        if size > hard[0]:
            yield ctx.record_finding(
                SMTP_OVER_HARD_LIMIT, r,
                f"The {r.verb} command carries {size} bytes, over the {hard[0]}-byte limit ({reply}): "
                "none of its forwarding attributes are applied.",
                [("size", size), ("limit", hard[0]), ("line_len", r.line_len)],
            )
    if r.carrier == "XCLIENT" and (software == "postfix" or (software is None and r.protocol == "smtp")):
        for d in r.details:
            raw = d.raw or ""
            if len(raw) > POSTFIX_MAX_VALUE and raw.upper() not in _UNAVAILABLE:
                yield ctx.record_finding(
                    POSTFIX_VALUE_TOO_LONG, r,
                    f"The {d.name} value is {len(raw)} characters: Postfix rejects values over {POSTFIX_MAX_VALUE} "
                    "with 501 5.5.4 Error: attribute value too long.",
                    [("attribute", d.name), ("value_len", len(raw)), ("limit", POSTFIX_MAX_VALUE)],
                )


def _record_rules(ctx: RuleContext, flow: FlowResult | None, recs: list[ForwardingRecord]) -> Iterator[Finding]:
    software: str | None = None
    software_known = False
    for r in recs:
        if r.carrier == "ID":
            yield from _imap(ctx, r)
        elif r.protocol == "pop3" and r.carrier == "XCLIENT":
            if _content_len(r) > POP3_XCLIENT_MAX_CONTENT:
                yield ctx.record_finding(
                    POP3_LINE_TOO_LONG, r,
                    f"The POP3 {r.verb} line has {_content_len(r)} bytes, over the {POP3_XCLIENT_MAX_CONTENT} "
                    f"that fit Dovecot's {LOGIN_MAX_INBUF_SIZE}-byte login buffer after the command name: it "
                    "answers -ERR Input buffer full and disconnects.",
                    [("content_bytes", _content_len(r)), ("limit", POP3_XCLIENT_MAX_CONTENT)],
                )
        elif r.carrier in ("XCLIENT", "XRCPTFORWARD"):
            if not software_known:
                software = server_software(flow) if flow is not None else None
                software_known = True
            yield from _smtp(ctx, r, software)
        yield from _forward_names(ctx, r)


def _cause(flow: FlowResult, idx: int, rep: Reply) -> LocatedEvent | None:
    """The command a reply answers, else the last client command before it."""
    events = flow.summary.events
    if rep.answers is not None:
        for le in events:
            if type(le.event) is Command and le.event.seq == rep.answers:
                return le
    for le in reversed(events[:idx]):
        if type(le.event) is Command:
            return le
    return None


def _overflow_replies(ctx: RuleContext, flow: FlowResult, records: list[ForwardingRecord]) -> Iterator[Finding]:
    recs: dict[int, ForwardingRecord] | None = None  # made when a reply needs it (most flows: never)
    for idx, le in enumerate(flow.summary.events):
        rep = le.event
        if type(rep) is not Reply:
            continue
        m = OVERFLOW_REPLY_RE.search(rep.text)
        if m is None:
            continue
        cause = _cause(flow, idx, rep)
        cmd = cause.event if cause is not None else None
        reply_text = f"{rep.status} {rep.text}"
        if cause is None or type(cmd) is not Command:
            yield event_finding(
                ctx, OVERFLOW_REPLY, flow, le,
                f"The server answered {reply_text!r} but the command it was reading is not in the capture.",
                [("reply", reply_text), ("reply_frames", frames_text(le.frames))], severity=Severity.INFO)
            continue
        if recs is None:
            recs = {r.command_seq: r for r in by_command(records)}
        rec = recs.get(cmd.seq)
        facts: list[tuple[str, object]] = [
            ("reply", reply_text), ("reply_frames", frames_text(le.frames)), ("command", cmd.verb),
            ("command_frames", frames_text(cause.frames)), ("command_line_len", cmd.line_len)]
        if rec is not None and rec.forwarding:
            yield ctx.record_finding(
                OVERFLOW_REPLY, rec,
                f"The server answered {reply_text!r} to this {rec.verb} of {rec.line_len} bytes: every "
                "forwarded field in it was lost.",
                facts, frames=cause.frames)
        else:
            yield event_finding(
                ctx, OVERFLOW_REPLY, flow, cause,
                f"The server answered {reply_text!r} to the {cmd.verb} command of {cmd.line_len} bytes.",
                facts, severity=Severity.INFO)


def check_flow(ctx: RuleContext, flow: FlowResult | None, recs: list[ForwardingRecord]) -> Iterator[Finding]:
    """The size-limit findings of one flow: its records' sizes, then its overflow replies."""
    if recs:
        yield from _record_rules(ctx, flow, recs)
    if flow is not None:
        yield from _overflow_replies(ctx, flow, recs)


def check_global(ctx: RuleContext) -> Iterator[Finding]:
    """None: every size-limit rule reads one flow."""
    return iter(())


def check(ctx: RuleContext) -> Iterator[Finding]:
    """Every size-limit finding."""
    return check_module(ctx, check_flow, check_global)
