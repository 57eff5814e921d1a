"""Encoding and value rules on single forwarding commands (spec A-C3, A-C6, A-C7, A-C9, A-C10, A-I6,
A-P3, A-S1, A-S2, A-S7, A-S9, A-S10, A-S11, A-S13).

Strategy: everything here is judged from one record (its parameters as decoded
by the extractor, their wire details and the extractor's ``problems``), plus, for
a few SMTP rules, what the flow tells about the server (Postfix or Dovecot, from
its greeting or EHLO line). Each rule looks at one property, so one malformed
command can produce several findings, but a property is reported once per
command: offending parameters are listed together in one message. "Internal"
IMAP keys are the ones Dovecot's imap-login acts on (spec table 1.3); an end
client's own ID keys (name, version ...) are never judged here.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Iterator

from analyzer.forwarding.blobs import DOVECOT_REJECTS
from analyzer.forwarding.extract import IMAP_FORWARD_PREFIX, IMAP_FORWARDING_KEYS, is_imap_forwarding_key
from analyzer.flows.model import FlowResult
from analyzer.forwarding.model import ForwardingRecord, ParamDetail
from analyzer.rules import RuleContext, check_module
from analyzer.rules.base import Finding, RuleInfo, Severity
from analyzer.rules.protocol import by_command, server_software

#: passdb extra fields that change authentication or routing (docs: passdb extra fields; spec 5.3 / A-C6)
SECURITY_FIELDS = frozenset({
    "proxy", "proxy_maybe", "proxy_always", "proxy_noauth", "proxy_not_trusted", "proxy_timeout", "proxy_mech",
    "host", "hostip", "port", "destuser", "user", "login_user", "nologin", "nopassword", "noauthenticate",
    "nodelay", "pass", "password", "master", "allow_nets", "allow_real_nets", "starttls", "ssl", "reason",
    "userdb_home", "userdb_uid", "userdb_gid", "userdb_mail", "k5principals", "forward_fields",
})
POP3_ATTRIBUTES = frozenset({  # pop3-login client.c cmd_xclient() (spec 2.3); anything else is ignored
    "ADDR", "PORT", "DESTADDR", "DESTPORT", "SESSION", "TTL", "CLIENT-TRANSPORT", "DESTNAME", "FORWARD",
})
VALID_PROTO = frozenset({"SMTP", "ESMTP", "LMTP"})  # smtp-server-cmd-xclient.c: other -> 501 Invalid PROTO
POSTFIX_PROTO = frozenset({"SMTP", "ESMTP"})  # postfix smtpd.c xclient_cmd(): LMTP -> 501 Bad PROTO syntax
TRANSPORT_INSECURE = "insecure"  # spec 1.3 / 2.3: Dovecot sends "TLS" or "insecure"; prefix "TLS" = secured
TRANSPORT_TLS_PREFIX = "TLS"
UNAVAILABLE = ("[UNAVAILABLE]", "[TEMPUNAVAIL]")  # Postfix XCLIENT_README special values (skip the attribute)
_NAME_OK = re.compile(r"[A-Za-z0-9_-]+")  # spec A-C6: forward names outside this set are suspicious
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")  # RFC 5321 4.1.2 Domain (a trailing dot tolerated)
_GENERAL_LITERAL = re.compile(r"[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+")  # RFC 5321 General-address-literal
_SUSPECT_CHARS = re.compile(r"[\r\n\x00\t\x01]")  # A-C6: CR, LF, NUL, TAB, 0x01 (fast pre-check)
_CONTROL_NAME = re.compile(r"[\x00-\x20\x7f]")

CONTROL_CHAR = RuleInfo(
    "encoding.control_char_in_value", Severity.HIGH, "CR, LF or NUL inside a forwarded value", "A-C6")
TAB_SOH = RuleInfo(
    "encoding.tab_or_soh_in_value", Severity.HIGH, "Raw TAB or 0x01 inside a forwarded value", "A-C6")
NO_EQUALS = RuleInfo(
    "encoding.forward_entry_without_equals", Severity.HIGH,
    "Forward-list element without '=': imported as an unprefixed passdb field", "A-C6")
EQUALS_IN_NAME = RuleInfo(
    "encoding.equals_in_forward_name", Severity.HIGH, "'=' inside an x-forward- name", "A-C6")
NAME_CHARS = RuleInfo(
    "encoding.forward_name_chars", Severity.HIGH, "Forward variable name outside [A-Za-z0-9_-]", "A-C6")
SECURITY_NAME = RuleInfo(
    "encoding.forward_name_security_field", Severity.LOW,
    "Forward variable named like a security-relevant passdb field", "A-C6")
XTEXT = RuleInfo("encoding.xtext_invalid", Severity.MEDIUM, "XCLIENT/XRCPTFORWARD value is not valid xtext", "A-S2")
BAD_BASE64 = RuleInfo(
    "encoding.forward_bad_base64", Severity.MEDIUM, "FORWARD value is not the standard padded base64 Dovecot needs",
    "A-P3")
LIST_PROBLEMS = RuleInfo(
    "encoding.forward_list_problems", Severity.LOW,
    "Forward list has bad tab-escapes, non-UTF-8 bytes or is empty", None)
POP3_ADDR = RuleInfo(
    "encoding.pop3_addr_syntax", Severity.MEDIUM, "POP3 XCLIENT address with IPV6: prefix or brackets (-ERR)",
    "A-P3")
IMAP_ADDR = RuleInfo(
    "encoding.imap_addr_syntax", Severity.MEDIUM, "IMAP ID address with IPV6: prefix or brackets (BAD in 2.4)",
    "A-C3")
SMTP_ADDR = RuleInfo(
    "encoding.smtp_addr_syntax", Severity.MEDIUM,
    "SMTP XCLIENT address: bare IPv6 to Postfix, IPV6: before IPv4, or brackets", "A-S1")
ADDR_INVALID = RuleInfo("encoding.address_invalid", Severity.MEDIUM, "Forwarded address is not an IP address",
                        "A-C3")
MAPPED = RuleInfo("encoding.ipv4_mapped_address", Severity.MEDIUM,
                  "Forwarded address is an IPv4-mapped IPv6 address", "A-C3")
PORT_INVALID = RuleInfo("encoding.port_invalid", Severity.MEDIUM,
                        "Forwarded port is 0, not decimal or out of range", "A-C3")
CLIENT_IS_HOP = RuleInfo(
    "encoding.forwarded_client_is_hop", Severity.MEDIUM,
    "Forwarded client address equals the TCP sender or receiver of the hop (no real forwarding)", "A-C3")
POP3_UNKNOWN = RuleInfo(
    "encoding.pop3_unknown_attribute", Severity.LOW, "POP3 XCLIENT attribute Dovecot does not know (ignored)",
    "A-P3")
DUPLICATE = RuleInfo(
    "encoding.duplicate_key", Severity.MEDIUM, "The same key or attribute twice in one forwarding command", "A-C7")
REPEATED = RuleInfo(
    "encoding.repeated_forwarding_command", Severity.MEDIUM,
    "More than one XCLIENT on a connection overriding earlier attributes", "A-C7")
TRANSPORT = RuleInfo(
    "encoding.client_transport_value", Severity.MEDIUM, "Client transport value other than TLS… or insecure",
    "A-C9")
CLEARTEXT = RuleInfo(
    "encoding.cleartext_forwarding", Severity.INFO, "Forwarded client fields crossed the network in cleartext",
    "A-C10")
IMAP_NIL = RuleInfo("encoding.imap_nil_internal_key", Severity.LOW, "NIL value for an internal ID key (ignored)",
                    "A-I6")
IMAP_EMPTY_FORWARD = RuleInfo(
    "encoding.imap_empty_forward_suffix", Severity.LOW, "x-forward- key with an empty name (BAD in 2.4)", "A-I6")
TIMEOUT = RuleInfo("encoding.timeout_attribute", Severity.LOW, "XCLIENT TIMEOUT attribute (never stored)", "A-S13")
PROTO_POSTFIX = RuleInfo("encoding.proto_lmtp_to_postfix", Severity.MEDIUM,
                         "PROTO=LMTP sent to Postfix (501 Bad PROTO syntax)", "A-S7")
PROTO_MISMATCH = RuleInfo("encoding.proto_mismatch", Severity.MEDIUM,
                          "PROTO value invalid or not the protocol of this hop", "A-S7")
HELO = RuleInfo("encoding.helo_syntax", Severity.MEDIUM,
                "XCLIENT HELO/NAME is not a domain or address literal", "A-S9")
LOGIN = RuleInfo("encoding.login_attribute", Severity.MEDIUM,
                 "XCLIENT LOGIN= sent (grants the SASL identity without authentication)", "A-S10")
XRCPT_BASE64 = RuleInfo("encoding.xrcptforward_base64", Severity.MEDIUM,
                        "XRCPTFORWARD value is base64 instead of xtext of the forward list", "A-S11")
XRCPT_REJECTED = RuleInfo("encoding.xrcptforward_rejected", Severity.MEDIUM,
                          "RCPT with XRCPTFORWARD answered 501 Invalid XRCPTFORWARD (bad encoding)", "A-S11")
XRCPT_MAIL = RuleInfo("encoding.xrcptforward_in_mail_from", Severity.MEDIUM,
                      "XRCPTFORWARD on MAIL FROM (not defined)", "A-S11")

RULES: tuple[RuleInfo, ...] = (
    CONTROL_CHAR, TAB_SOH, NO_EQUALS, EQUALS_IN_NAME, NAME_CHARS, SECURITY_NAME, XTEXT, BAD_BASE64, LIST_PROBLEMS,
    POP3_ADDR, IMAP_ADDR, SMTP_ADDR, ADDR_INVALID, MAPPED, PORT_INVALID, CLIENT_IS_HOP, POP3_UNKNOWN, DUPLICATE,
    REPEATED, TRANSPORT, CLEARTEXT, IMAP_NIL, IMAP_EMPTY_FORWARD, TIMEOUT, PROTO_POSTFIX, PROTO_MISMATCH, HELO,
    LOGIN, XRCPT_BASE64, XRCPT_REJECTED, XRCPT_MAIL,
)

_BLOB_ATTRS = frozenset({"FORWARD", "XRCPTFORWARD"})  # TAB is their list separator after decoding
_LIST_PROBLEM_CODES = frozenset({"bad_escape", "trailing_escape", "not_utf8", "empty_blob", "too_many_entries"})


def _show(text: str, limit: int = 60) -> str:
    """A bounded repr of a value for messages."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _judged(rec: ForwardingRecord) -> list[ParamDetail]:
    """Parameters whose values a forwarding backend acts on."""
    if rec.carrier == "ID":
        return [d for d in rec.details if is_imap_forwarding_key(d.name)]
    return list(rec.details)


def _value(d: ParamDetail) -> str | None:
    """The value as the backend reads it (strict decoding, else Postfix's lenient one)."""
    return d.value if d.value is not None else d.lenient


# --- A-C6: injection characters and forward names --------------------------------------------------


def _control(ctx: RuleContext, r: ForwardingRecord, judged: list[ParamDetail]) -> Iterator[Finding]:
    bad: list[str] = []
    chars: set[str] = set()
    for code, what in (("nul_in_quoted", "NUL"), ("cr_or_lf_in_quoted", "CR/LF")):
        if f"ID: {code}" in r.problems and r.forwarding:
            bad.append(f"an ID quoted string ({what})")
            chars.update(what.split("/"))
    tabs: list[str] = []
    for d in judged:
        v = _value(d)
        if v is None or _SUSPECT_CHARS.search(v) is None:
            continue
        found = [n for c, n in (("\r", "CR"), ("\n", "LF"), ("\x00", "NUL")) if c in v]
        if found:
            bad.append(f"{d.name} ({'/'.join(found)})")
            chars.update(found)
        if d.name.upper() not in _BLOB_ATTRS and ("\t" in v or "\x01" in v):
            tabs.append(d.name)
    for fv in r.forward:
        if _SUSPECT_CHARS.search(fv.value) is None:
            continue
        found = [n for c, n in (("\r", "CR"), ("\n", "LF"), ("\x00", "NUL")) if c in fv.value]
        if found and fv.origin != "x-forward":  # x-forward values are covered by their ID parameter
            bad.append(f"{fv.origin} variable {fv.name or fv.value[:20]!r} ({'/'.join(found)})")
            chars.update(found)
    if bad:
        yield ctx.record_finding(
            CONTROL_CHAR, r,
            f"Forwarded values contain {', '.join(sorted(chars))}: {'; '.join(bad[:5])}"
            + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            + ": line breaks and NUL can split commands, log lines or passdb fields.",
            [("where", "; ".join(bad[:20])), ("chars", ",".join(sorted(chars)))],
        )
    if tabs:
        yield ctx.record_finding(
            TAB_SOH, r,
            f"Raw TAB or 0x01 inside {', '.join(tabs[:5])}: these are Dovecot's forward-list separator and "
            "escape byte, so the value can add or alter fields once the list is built.",
            [("params", ",".join(tabs[:20]))],
        )


def _forward_names(ctx: RuleContext, r: ForwardingRecord) -> Iterator[Finding]:
    base64_like = "XRCPTFORWARD: looks_like_base64" in r.problems
    security: list[str] = []
    for fv in r.forward:
        if fv.name is None:
            if base64_like:
                continue  # reported as encoding.xrcptforward_base64
            field = fv.value.split("\t", 1)[0].strip().lower()
            sec = field in SECURITY_FIELDS
            yield ctx.record_finding(
                NO_EQUALS, r,
                f"The {fv.origin} list element {_show(fv.value)} has no '=': Dovecot's auth imports it as the "
                "unprefixed passdb field " + (f"{field!r}, which is security-relevant." if sec else
                                              f"{field!r} instead of a forward_ variable."),
                [("element", fv.value[:200]), ("origin", fv.origin), ("security_field", sec)],
            )
            continue
        name = fv.name
        if fv.origin == "x-forward" and "=" in name:
            yield ctx.record_finding(
                EQUALS_IN_NAME, r,
                f"The x-forward- name {_show(name)} contains '=': the backend stores "
                f"{name.split('=', 1)[0]!r}={name.split('=', 1)[1]}=… so the field name and value shift.",
                [("name", name)],
            )
        odd = {c for c in name if c != "=" and not _NAME_OK.fullmatch(c)}
        if odd or (name == "" and fv.origin != "x-forward"):
            control = bool(_CONTROL_NAME.search(name))
            shown = ", ".join(repr(c) for c in sorted(odd)) or "an empty name"
            yield ctx.record_finding(
                NAME_CHARS, r,
                f"The {fv.origin} variable name {_show(name)} has {shown} outside [A-Za-z0-9_-]"
                + (": control or space characters can inject fields." if control else
                   ": unusual, though not an injection by itself."),
                [("name", name), ("chars", "".join(sorted(odd))), ("origin", fv.origin)],
                severity=None if control else Severity.LOW,
            )
        if name.lower() in SECURITY_FIELDS:
            security.append(name)
    if security:
        yield ctx.record_finding(
            SECURITY_NAME, r,
            f"Forward variables named {', '.join(sorted(set(security)))} become forward_<name> on the backend; "
            "harmless unless a template or passdb query uses them in place of the real field.",
            [("names", ",".join(sorted(set(security))))],
        )


# --- xtext, base64, forward list -----------------------------------------------------------


def _xtext(ctx: RuleContext, r: ForwardingRecord, software: str | None) -> Iterator[Finding]:
    if r.protocol not in ("smtp", "submission", "lmtp") or r.carrier not in ("XCLIENT", "XRCPTFORWARD"):
        return
    for d in r.details:
        xp = [p for p in d.problems if p.startswith("xtext_")]
        if not xp:
            continue
        lower_only = xp == ["xtext_lowercase_hex"]
        effect = ("Postfix tolerates lower-case hex, Dovecot answers 501" if lower_only else
                  "Dovecot answers 501 5.5.4 Invalid parameter; Postfix falls back to the raw value")
        yield ctx.record_finding(
            XTEXT, r,
            f"The {d.name} value {_show(d.raw or '')} is not valid xtext ({', '.join(p[6:] for p in xp)}): "
            f"{effect}.",
            [("attribute", d.name), ("problems", ",".join(xp)), ("server", software or "unknown")],
        )


def _blob(ctx: RuleContext, r: ForwardingRecord) -> Iterator[Finding]:
    codes = [p.split(": ", 1)[1] for p in r.problems if p.startswith("FORWARD: ")]
    rejects = [c for c in codes if c in DOVECOT_REJECTS]
    if rejects:
        effect = ("POP3 answers -ERR Invalid parameters" if r.protocol == "pop3" else
                  "submission answers 501 5.5.4 Invalid FORWARD parameter")
        yield ctx.record_finding(
            BAD_BASE64, r,
            f"The FORWARD value is not standard padded base64 ({', '.join(rejects)}): Dovecot cannot decode it and "
            f"{effect}; no forwarded variable arrives.",
            [("problems", ",".join(rejects))],
        )
    listed = [p for p in r.problems if p.startswith(("FORWARD: ", "XRCPTFORWARD: "))
              and p.split(": ", 1)[1] in _LIST_PROBLEM_CODES]
    if listed:
        yield ctx.record_finding(
            LIST_PROBLEMS, r,
            f"The forward list has problems ({', '.join(listed)}): Dovecot decodes it differently from what "
            "the sender probably meant.",
            [("problems", ",".join(listed))],
        )


# --- A-C3 / A-P3 / A-S1: addresses and ports ---------------------------------------------------


def _addresses(ctx: RuleContext, r: ForwardingRecord, software: str | None) -> Iterator[Finding]:
    smtp = r.protocol in ("smtp", "submission", "lmtp")
    raw_ips = {"client": r.forwarded_client_raw[0], "server": r.forwarded_server_raw[0]}
    names = ("x-originating-ip", "x-connected-ip") if r.carrier == "ID" else ("ADDR", "DESTADDR")
    ports = ("x-originating-port", "x-connected-port") if r.carrier == "ID" else ("PORT", "DESTPORT")
    syntax: list[str] = []
    for key, raw in zip(names, raw_ips.values(), strict=True):
        if raw is None:
            continue
        probs = {p.rsplit(": ", 1)[1] for p in r.problems if p.startswith(key + ": ")}
        if "addr_invalid" in probs and not probs & {"addr_brackets", "addr_ipv6_prefix"}:
            # (a prefixed or bracketed address is invalid for POP3/IMAP too: reported below as syntax)
            yield ctx.record_finding(
                ADDR_INVALID, r,
                f"{key} is {_show(raw)}, not an IP address: "
                + ("Dovecot 2.4 answers BAD, 2.3 ignores it." if r.carrier == "ID" else
                   "the backend rejects the command (-ERR / 501) and logs the proxy's address."),
                [("key", key), ("value", raw)],
            )
            continue
        if "addr_ipv4_mapped" in probs:
            yield ctx.record_finding(
                MAPPED, r,
                f"{key} is the IPv4-mapped address {raw}: logs and trust checks see an IPv6 address where the "
                "client used IPv4.",
                [("key", key), ("value", raw)],
            )
        if "addr_brackets" in probs:
            syntax.append(f"{key}={raw} has brackets")
        if "addr_ipv6_prefix" in probs:
            syntax.append(f"{key}={raw} has the IPV6: prefix")
        if "addr_ipv6_prefix_on_ipv4" in probs:
            syntax.append(f"{key}={raw} puts IPV6: before an IPv4 address")
        if smtp and software == "postfix" and raw[:5].upper() != "IPV6:" and not raw.startswith("["):
            try:
                bare6 = ipaddress.ip_address(raw).version == 6
            except ValueError:
                bare6 = False
            if bare6:
                syntax.append(f"{key}={raw} is IPv6 without the IPV6: prefix Postfix needs")
    if syntax:
        if r.protocol == "pop3":
            info, effect = POP3_ADDR, "POP3 XCLIENT wants a bare IP: -ERR Invalid parameters"
        elif smtp:
            info, effect = SMTP_ADDR, ("Postfix answers 501 5.5.4 Bad ADDR syntax" if software == "postfix"
                                       else "Dovecot answers 501 Invalid ADDR parameter")
        else:
            info, effect = IMAP_ADDR, "Dovecot 2.4 answers BAD Invalid ID parameters, 2.3 ignores the address"
        yield ctx.record_finding(info, r, f"{'; '.join(syntax)}: {effect}.", [("problems", "; ".join(syntax))])
    for key, raw in zip(ports, (r.forwarded_client_raw[1], r.forwarded_server_raw[1]), strict=True):
        if raw is None or f"{key}: port_invalid" not in r.problems:
            continue
        why = ("zero" if raw.strip("0") == "" and raw else "not_decimal" if not (raw.isascii() and raw.isdigit())
               else "out_of_range")
        yield ctx.record_finding(
            PORT_INVALID, r,
            f"{key} is {_show(raw)} ({why.replace('_', ' ')}): Dovecot's net_str2port rejects it.",
            [("key", key), ("value", raw), ("reason", why)],
        )
    fc = r.forwarded_client
    if fc is not None and fc.ip and r.carrier != "XRCPTFORWARD":
        same = [who for who, ep in (("sender", r.sender), ("receiver", r.receiver)) if _same_addr(fc.ip, ep.ip)]
        if same:
            loop = _is_loopback(fc.ip)
            yield ctx.record_finding(
                CLIENT_IS_HOP, r,
                f"The forwarded client address {fc.ip} is the TCP {' and '.join(same)} of this hop: no end-client "
                "address was forwarded" + (" (loopback: a lab setup)." if loop else "."),
                [("forwarded_ip", fc.ip), ("matches", ",".join(same))],
                severity=Severity.INFO if loop else None,
            )


def _same_addr(a: str, b: str) -> bool:
    """Both are ``ipaddress`` canonical text (extract.parse_address, model.Endpoint): compare as text."""
    return a == b


def _is_loopback(a: str) -> bool:
    try:
        return ipaddress.ip_address(a).is_loopback
    except ValueError:
        return False


# --- attributes -------------------------------------------------------------------------


def _attributes(ctx: RuleContext, r: ForwardingRecord, software: str | None, judged: list[ParamDetail]
                ) -> Iterator[Finding]:
    if r.carrier == "XCLIENT" and r.protocol == "pop3" and r.verb == "XCLIENT":
        unknown = [d.name for d in r.details if d.name.upper() not in POP3_ATTRIBUTES]
        if unknown:
            yield ctx.record_finding(
                POP3_UNKNOWN, r,
                f"POP3 XCLIENT attributes {', '.join(unknown[:10])} are unknown to Dovecot and silently ignored.",
                [("attributes", ",".join(unknown[:50]))],
            )
    for d in judged:
        up = d.name.upper()
        v = _value(d)
        if up in ("X-CLIENT-TRANSPORT", "CLIENT-TRANSPORT") and v is not None:
            if not (v.startswith(TRANSPORT_TLS_PREFIX) or v == TRANSPORT_INSECURE):
                yield ctx.record_finding(
                    TRANSPORT, r,
                    f"{d.name} is {_show(v)}: Dovecot sends only TLS or insecure, and reads anything not starting "
                    "with TLS as insecure.",
                    [("key", d.name), ("value", v)],
                )
        if r.carrier != "XCLIENT" or r.protocol == "pop3":
            continue
        if up == "TIMEOUT":
            yield ctx.record_finding(
                TIMEOUT, r, f"TIMEOUT={_show(d.raw or '')} was sent: Dovecot accepts it but never stores it.",
                [("value", d.raw or "")])
        elif up == "PROTO" and v is not None and v.upper() not in UNAVAILABLE:
            yield from _proto(ctx, r, v, software)
        elif up in ("HELO", "NAME") and v is not None and v.upper() not in UNAVAILABLE and not _helo_ok(v):
            yield ctx.record_finding(
                HELO, r,
                f"{d.name}={_show(v)} is not a domain or address literal: Dovecot 2.4 answers 501 Invalid HELO "
                "parameter, 2.3 ignores it; Postfix masks it.",
                [("attribute", d.name), ("value", v[:200])],
            )
        elif up == "LOGIN" and v is not None and v.upper() not in UNAVAILABLE:
            yield ctx.record_finding(
                LOGIN, r,
                f"LOGIN={_show(v)} was sent: the backend takes it as the authenticated user without a password "
                "(legitimate only with proxy_noauth; Postfix grants it as the SASL identity).",
                [("login", v)],
            )


def _proto(ctx: RuleContext, r: ForwardingRecord, v: str, software: str | None) -> Iterator[Finding]:
    up = v.upper()
    if up == "LMTP" and software == "postfix":
        yield ctx.record_finding(
            PROTO_POSTFIX, r, "PROTO=LMTP was sent to Postfix, which accepts only SMTP/ESMTP: 501 Bad PROTO syntax.",
            [("value", v)])
        return
    if up not in VALID_PROTO:
        msg = f"PROTO={_show(v)} is not SMTP, ESMTP or LMTP: Dovecot answers 501 Invalid PROTO parameter."
    elif r.protocol == "lmtp" and up != "LMTP":
        msg = f"PROTO={v} on an LMTP hop: Dovecot's LMTP proxy sends PROTO=LMTP for what it relays."
    elif r.protocol in ("submission", "smtp") and up == "LMTP":
        msg = f"PROTO=LMTP on a {r.protocol} hop, whose end client spoke SMTP/ESMTP."
    else:
        return
    yield ctx.record_finding(PROTO_MISMATCH, r, msg, [("value", v), ("hop_protocol", r.protocol)])


def _helo_ok(v: str) -> bool:
    if v.startswith("[") and v.endswith("]"):
        inner = v[1:-1]
        if inner[:5].upper() == "IPV6:":
            try:
                return ipaddress.ip_address(inner[5:]).version == 6
            except ValueError:
                return False
        try:
            return ipaddress.ip_address(inner).version == 4
        except ValueError:
            return _GENERAL_LITERAL.fullmatch(inner) is not None
    return len(v) <= 255 and _DOMAIN.fullmatch(v) is not None


# --- A-C7: duplicates --------------------------------------------------------------------


def _duplicates(ctx: RuleContext, r: ForwardingRecord) -> Iterator[Finding]:
    if r.carrier == "ID":
        names = [n.lower() for n, _ in r.params if is_imap_forwarding_key(n)]
    elif r.carrier in ("XCLIENT", "XFORWARD"):
        names = [n.upper() for n, _ in r.params]
    else:
        names = []
    dup = sorted(n for n, c in Counter(names).items() if c > 1)
    blob_names = [fv.name for fv in r.forward if fv.name is not None and fv.origin != "x-forward"]
    dup_blob = sorted(n for n, c in Counter(blob_names).items() if c > 1)
    if not dup and not dup_blob:
        return
    parts = []
    if dup:
        parts.append(f"{'keys' if r.carrier == 'ID' else 'attributes'} {', '.join(dup)}")
    if dup_blob:
        parts.append(f"forward variables {', '.join(dup_blob)}")
    yield ctx.record_finding(
        DUPLICATE, r,
        f"Repeated {' and '.join(parts)} in one command: the backend keeps the last scalar value (x-forward-* are "
        "all appended), so what the proxy meant and what the backend used can differ.",
        [("duplicates", ",".join(dup + dup_blob))],
    )


def _repeated(ctx: RuleContext, ordered: list[ForwardingRecord], software: str | None) -> Iterator[Finding]:
    """``ordered``: one flow's records in command order."""
    xcl = [r for r in ordered if r.carrier == "XCLIENT"]
    if len(xcl) < 2:
        return
    seen: dict[str, ForwardingRecord] = {}
    addr_sent: ForwardingRecord | None = None
    for r in xcl:
        names = {n.upper() for n, _ in r.params}
        again = sorted(n for n in names if n in seen)
        if r.protocol == "pop3":
            prev = xcl[0] if r is not xcl[0] else None
            if prev is not None:
                yield ctx.record_finding(
                    REPEATED, r,
                    f"A further POP3 {r.verb} on this connection (the first was command #{prev.command_seq}): "
                    "it re-applies attributes and a new FORWARD replaces the earlier list.",
                    [("first_command_frames", ",".join(map(str, prev.frames))), ("repeated", ",".join(again))],
                )
        elif again:
            first = seen[again[0]]
            yield ctx.record_finding(
                REPEATED, r,
                f"XCLIENT repeats {', '.join(again)} already sent in command #{first.command_seq} on this "
                "connection: the later value overrides the earlier one.",
                [("attributes", ",".join(again)), ("first_command_frames", ",".join(map(str, first.frames)))],
            )
        elif software == "postfix" and addr_sent is not None:
            yield ctx.record_finding(
                REPEATED, r,
                f"This XCLIENT follows command #{addr_sent.command_seq}, which already changed ADDR/NAME on "
                "Postfix: Postfix re-checks authorization against the new address and may refuse it (550).",
                [("addr_command_frames", ",".join(map(str, addr_sent.frames)))],
            )
        for n in names:
            seen.setdefault(n, r)
        if addr_sent is None and names & {"ADDR", "NAME"}:
            addr_sent = r


# --- IMAP-specific, XRCPTFORWARD, cleartext ----------------------------------------------------


def _imap(ctx: RuleContext, r: ForwardingRecord) -> Iterator[Finding]:
    nil = [n for n, v in r.params if v is None and n.lower() in IMAP_FORWARDING_KEYS]
    if nil:
        yield ctx.record_finding(
            IMAP_NIL, r, f"Internal ID keys {', '.join(nil)} have the value NIL: Dovecot ignores them.",
            [("keys", ",".join(nil))])
    empty = [n for n, _ in r.params if n.lower() == IMAP_FORWARD_PREFIX]
    if empty:
        yield ctx.record_finding(
            IMAP_EMPTY_FORWARD, r,
            f"The key {empty[0]!r} has an empty variable name: Dovecot 2.4 answers BAD Invalid ID parameters and "
            "drops every forwarded field.", [("key", empty[0])])


def _xrcptforward(ctx: RuleContext, r: ForwardingRecord) -> Iterator[Finding]:
    if r.carrier != "XRCPTFORWARD":
        return
    raw = r.details[0].raw if r.details else ""
    if "XRCPTFORWARD: looks_like_base64" in r.problems:
        yield ctx.record_finding(
            XRCPT_BASE64, r,
            f"XRCPTFORWARD={_show(raw or '')} is base64, but Dovecot sends and expects xtext of the tab-separated "
            "list: the backend gets one meaningless field.",
            [("value", (raw or "")[:200])])
    if r.verb == "MAIL":
        yield ctx.record_finding(
            XRCPT_MAIL, r, "XRCPTFORWARD was sent on MAIL FROM, where Dovecot does not define it.",
            [("verb", r.verb)])
    rep = r.reply
    # (550 5.7.14, the untrusted-sender refusal, is trust.xrcptforward_refused_untrusted)
    if rep is not None and "Invalid XRCPTFORWARD" in rep.text:
        yield ctx.record_finding(
            XRCPT_REJECTED, r,
            f"The backend answered {rep.code} {rep.text!r} to RCPT TO:<{r.address}> with XRCPTFORWARD: the "
            "recipient's forwarded fields were refused.",
            [("reply_code", rep.code), ("reply_text", rep.text), ("reply_frames", ",".join(map(str, rep.frames)))])


def _cleartext(ctx: RuleContext, flow: FlowResult | None, ordered: list[ForwardingRecord]) -> Iterator[Finding]:
    """``ordered``: one flow's records in command order."""
    fwd = [r for r in ordered if r.forwarding]
    if not fwd:
        return
    tls = flow.summary.tls if flow is not None else None
    first = fwd[0]
    carriers = sorted({r.carrier for r in fwd})
    yield ctx.record_finding(
        CLEARTEXT, first,
        f"{len(fwd)} forwarding command(s) ({', '.join(carriers)}) crossed the network in cleartext"
        + (" before STARTTLS" if tls == "starttls" else "") + ": anyone on the path can read the end client's "
        "address and forwarded variables.",
        [("commands", len(fwd)), ("carriers", ",".join(carriers)), ("tls", tls or "none")],
    )


def check_flow(ctx: RuleContext, flow: FlowResult | None, recs: list[ForwardingRecord]) -> Iterator[Finding]:
    """The encoding findings of one flow: each record's, then repeated XCLIENTs, then cleartext."""
    if not recs:
        return
    sw = server_software(flow) if flow is not None else None
    for r in recs:
        if r.carrier == "ID" and not r.forwarding:
            continue  # an end client's own ID: nothing forwarded
        judged = _judged(r)
        yield from _control(ctx, r, judged)
        yield from _forward_names(ctx, r)
        yield from _xtext(ctx, r, sw)
        yield from _blob(ctx, r)
        yield from _addresses(ctx, r, sw)
        yield from _attributes(ctx, r, sw, judged)
        yield from _duplicates(ctx, r)
        if r.carrier == "ID":
            yield from _imap(ctx, r)
        yield from _xrcptforward(ctx, r)
    ordered = by_command(recs)
    yield from _repeated(ctx, ordered, sw)
    yield from _cleartext(ctx, flow, ordered)


def check_global(ctx: RuleContext) -> Iterator[Finding]:
    """None: every encoding rule reads one command or one flow."""
    return iter(())


def check(ctx: RuleContext) -> Iterator[Finding]:
    """Every encoding finding."""
    return check_module(ctx, check_flow, check_global)
