"""Parser events of one flow -> forwarding records (one function per carrier).

Strategy: a flow's located events are walked once in capture order. Carrier
events (``ImapId``, ``Xclient``, ``Xforward``, ``RcptForward``) become records;
``Reply`` events whose ``answers`` names a carrier command fill in that record's
reply. For IMAP the final (tagged) reply wins; an untagged ``* BYE`` answering a
pending ID (Dovecot's ``Input buffer full, aborting``) is used when no tagged reply
follows. The values are interpreted exactly as the receiving Dovecot/Postfix
would (spec sections 1-5); nothing is judged here: rules do that.

Cost: most events of a flow are replies and commands that are not carriers, so the
walk tests the event's exact class (the event classes are final), replies first,
keeps the last :class:`Command` of each number instead of building its excerpt, and
builds the excerpt only for the commands a carrier names. Address parsing
(``ipaddress``, ~10 us) is cached for short texts: proxies forward the same few
addresses again and again. Parameter lookups by name
(``_interpret``) read one index of the lower-cased names built once per command.

Memory: records live to the end of the run and a flood repeats one command 100,000
times, so a record shares every immutable part equal to one an earlier record has
(:class:`analyzer.sharing.Sharing`): the ``(name, value)`` pairs and :class:`ParamDetail` objects and the
tuples of them, forwarded endpoints, raw address tuples, problems, the excerpt, verb,
tag and reply text. The part is built as before, then looked up by value in one bounded
table whose keys are the shared objects themselves, so the table keeps nothing alive
that a record does not (only its slots), and an equal object replaces the new one. A
record of a repeated command then owns only what differs: itself, its numbers, frames
and reply. The values are equal, so the output is the same.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable

from analyzer.forwarding.blobs import decode_forward_base64, decode_xrcptforward
from analyzer.forwarding.model import ForwardingRecord, ForwardVar, ParamDetail, Reply
from analyzer.model import Endpoint
from analyzer.protocols.base import Command, ImapId, LocatedEvent, RcptForward, XParam, Xclient, Xforward
from analyzer.protocols.base import Reply as ReplyEvent
from analyzer.sharing import Sharing

#: IMAP ID keys Dovecot's imap-login treats as internal (spec table 1.3); x-forward-* is a prefix
IMAP_FORWARDING_KEYS = frozenset({
    "x-originating-ip", "x-originating-port", "x-connected-ip", "x-connected-port", "x-connected-name",
    "x-proxy-ttl", "x-session-id", "x-session-ext-id", "x-client-transport", "x-multiplex",
})
IMAP_FORWARD_PREFIX = "x-forward-"  # spec 1.3: one forwarded passdb variable per key

_DECIMAL = re.compile(r"[0-9]{1,10}")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"  # 0-255 without leading zeros
#: dotted-quad IPv4 exactly as ``str(ipaddress.IPv4Address)`` writes it (ASCII digits only)
_IPV4_CANONICAL = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}", re.ASCII)

ADDRESS_CACHE_SIZE = 4096  # ours: parsed forwarded addresses remembered (LRU)
ADDRESS_CACHE_TEXT_MAX = 64  # ours: only texts this short are cached (any IP text fits): <= 256 KiB

#: bytes of the command line kept in a record's excerpt
EXCERPT_LEN = 256

#: POP3 reply text of an untrusted XCLIENT sender (spec 2.3): a +OK that did nothing
POP3_UNTRUSTED = "You are not from trusted IP"

SHARE_TABLE_SIZE = 16384  # ours: objects the sharing table holds (emptied when full): < 1 MiB of slots
#: verbs records name, one object each (parsers make a new str per command)
_VERBS = {v: v for v in ("ID", "XCLIENT", "XOIP", "XFORWARD", "RCPT", "MAIL")}

#: immutable record parts (tuples of str/None, ParamDetail, ForwardVar, Endpoint, str, bytes)
_share = Sharing(SHARE_TABLE_SIZE)


#: a str or bytes shared when short (longer ones are not worth hashing)
_share_text = _share.text


def is_imap_forwarding_key(name: str) -> bool:
    low = name.lower()
    return low in IMAP_FORWARDING_KEYS or low.startswith(IMAP_FORWARD_PREFIX)


def parse_ttl(raw: str | None) -> tuple[int | None, list[str]]:
    """TTL as Dovecot's str_to_uint reads it: plain decimal digits only."""
    if raw is None:
        return None, []
    if _DECIMAL.fullmatch(raw):
        value = int(raw)
        if value > 0xFFFFFFFF:
            return None, ["ttl_overflow"]
        return value, []
    return None, ["ttl_not_decimal"]


def parse_address(raw: str | None, smtp: bool = False) -> tuple[str | None, list[str]]:
    """Canonical IP text for a forwarded address (``IPV6:`` prefix and brackets removed).

    The ``IPV6:`` prefix is Postfix XCLIENT syntax (``smtp``); POP3 and IMAP want a bare address, so
    there a prefixed or bracketed address is invalid and is returned as sent.
    """
    if raw is None:
        return None, []
    if len(raw) <= ADDRESS_CACHE_TEXT_MAX:
        ip, problems = _parse_address_cached(raw, smtp)
        return ip, list(problems)
    return _parse_address(raw, smtp)


@functools.lru_cache(maxsize=ADDRESS_CACHE_SIZE)
def _parse_address_cached(raw: str, smtp: bool) -> tuple[str | None, tuple[str, ...]]:
    ip, problems = _parse_address(raw, smtp)
    return ip, tuple(problems)


def _parse_address(raw: str, smtp: bool) -> tuple[str | None, list[str]]:
    problems = []
    text = raw
    if text.upper() in ("[UNAVAILABLE]", "[TEMPUNAVAIL]"):
        return None, []
    if text[:5].upper() == "IPV6:":
        text = text[5:]
        if not smtp:
            problems.append("addr_ipv6_prefix")
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
        problems.append("addr_brackets")
    if _IPV4_CANONICAL.fullmatch(text) is not None:
        # the usual case, already in canonical form: what ipaddress would give, ~10x cheaper
        canonical, version, mapped = text, 4, False
    else:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            return raw, problems + ["addr_invalid"]
        canonical, version = str(ip), ip.version
        mapped = isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None
    if problems and not smtp:
        # POP3 and IMAP want a bare address (net_addr2ip): the server rejects this one, so the
        # record keeps it as sent; the problems say what is wrong with it
        return raw, problems + ["addr_invalid"]
    if raw[:5].upper() == "IPV6:" and version == 4:
        problems.append("addr_ipv6_prefix_on_ipv4")
    if mapped:
        problems.append("addr_ipv4_mapped")
    return canonical, problems


def parse_port(raw: str | None) -> tuple[int | None, list[str]]:
    """Port as net_str2port reads it: decimal 1-65535."""
    if raw is None or raw.upper() in ("[UNAVAILABLE]", "[TEMPUNAVAIL]"):
        return None, []
    if _DECIMAL.fullmatch(raw) and 0 < int(raw) <= 65535:
        return int(raw), []
    return None, ["port_invalid"]


def _endpoint(ip: str | None, port: int | None) -> Endpoint | None:
    if ip is None and port is None:
        return None
    return _share(Endpoint(ip or "", port or 0))


def _last_index(params: Iterable[tuple[str, str | None]]) -> dict[str, tuple[int, str]]:
    """Lower-cased name -> (position, value) of the last parameter of that name with a value."""
    index: dict[str, tuple[int, str]] = {}
    for i, (name, value) in enumerate(params):
        if value is not None:
            index[name.lower()] = (i, value)
    return index


def _last_of(index: dict[str, tuple[int, str]], *names: str) -> str | None:
    """Value of the last parameter with one of these names (lower-case): last one wins, as in Dovecot."""
    best: tuple[int, str] | None = None
    for n in names:
        hit = index.get(n)
        if hit is not None and (best is None or hit[0] > best[0]):
            best = hit
    return None if best is None else best[1]


def _octets(text: str) -> int:
    """Length of wire text in octets (``str`` of ASCII: its length)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogateescape"))


def _attr_detail(p: XParam) -> ParamDetail:
    name_octets = _octets(p.name)
    return _share(ParamDetail(
        name=p.name, value=p.value, raw=p.raw, lenient=p.lenient, form="attr",
        name_octets=name_octets,
        value_octets=_octets(p.value) if p.value else 0,
        name_wire=name_octets,
        value_wire=_octets(p.raw),
        literal_waited=None, problems=p.problems,
    ))


class _Draft:
    """A record being built: everything but the reply."""

    __slots__ = ("fields", "reply", "bye")

    def __init__(self, fields: dict[str, object]) -> None:
        self.fields = fields
        self.reply: Reply | None = None
        self.bye: Reply | None = None


def _common(le: LocatedEvent, flow: int, capture: int, protocol: str, sender: Endpoint,
            receiver: Endpoint) -> dict[str, object]:
    ev = le.event
    return {
        "flow": flow, "capture": capture, "protocol": protocol, "sender": sender, "receiver": receiver,
        "frames": le.frames, "ts_ns": le.ts_ns, "stream_start": ev.span.start, "stream_end": ev.span.end,
    }


def _interpret(fields: dict[str, object], params: list[tuple[str, str | None]], problems: list[str],
               addr_names: tuple[str, str, str, str], ttl_name: str, session_names: tuple[str, ...],
               smtp: bool = False) -> None:
    """Fill forwarded_client/server, ttl and session_id from the parameters."""
    index = _last_index(params)
    cip_raw = _last_of(index, addr_names[0].lower())
    cport_raw = _last_of(index, addr_names[1].lower())
    sip_raw = _last_of(index, addr_names[2].lower())
    sport_raw = _last_of(index, addr_names[3].lower())
    cip, p1 = parse_address(cip_raw, smtp)
    cport, p2 = parse_port(cport_raw)
    sip, p3 = parse_address(sip_raw, smtp)
    sport, p4 = parse_port(sport_raw)
    problems += [f"{addr_names[0]}: {p}" for p in p1] + [f"{addr_names[1]}: {p}" for p in p2]
    problems += [f"{addr_names[2]}: {p}" for p in p3] + [f"{addr_names[3]}: {p}" for p in p4]
    ttl_raw = _last_of(index, ttl_name.lower())
    ttl, pt = parse_ttl(ttl_raw)
    problems += [f"{ttl_name}: {p}" for p in pt]
    fields.update(
        forwarded_client=_endpoint(cip, cport), forwarded_client_raw=_share((cip_raw, cport_raw)),
        forwarded_server=_endpoint(sip, sport), forwarded_server_raw=_share((sip_raw, sport_raw)),
        ttl=ttl, ttl_raw=ttl_raw, session_id=_last_of(index, *(n.lower() for n in session_names)),
    )


def _imap_id(le: LocatedEvent, ev: ImapId, base: dict[str, object]) -> dict[str, object]:
    params: list[tuple[str, str | None]] = []
    details: list[ParamDetail] = []
    forward: list[ForwardVar] = []
    problems = [f"ID: {p}" for p in ev.problems]
    for p in ev.params or ():
        params.append(_share((p.name, p.value)))
        details.append(_share(ParamDetail(
            name=p.name, value=p.value, raw=None, lenient=None, form=p.value_form, name_octets=p.name_octets,
            value_octets=p.value_octets, name_wire=p.name_wire, value_wire=p.value_wire,
            literal_waited=p.literal_waited, problems=(),
        )))
        low = p.name.lower()
        if low.startswith(IMAP_FORWARD_PREFIX) and p.value is not None:
            forward.append(ForwardVar(p.name[len(IMAP_FORWARD_PREFIX):], p.value, "x-forward"))
    fields = dict(base)
    fields.update(
        carrier="ID", verb="ID", command_seq=ev.seq, tag=_share_text(ev.tag), line_len=ev.line_len,
        forwarding=any(is_imap_forwarding_key(n) for n, _ in params),
        params=_share(tuple(params)), details=_share(tuple(details)),
        forward=_share(tuple(forward)) if forward else (), address=None,
    )
    _interpret(fields, params, problems, ("x-originating-ip", "x-originating-port", "x-connected-ip",
                                          "x-connected-port"), "x-proxy-ttl", ("x-session-id", "x-session-ext-id"))
    fields["problems"] = _share(tuple(problems)) if problems else ()
    return fields


def _forward_blob(value: str | None, origin: str, problems: list[str]) -> list[ForwardVar]:
    if value is None:
        return []
    blob = decode_forward_base64(value) if origin == "FORWARD" else decode_xrcptforward(value)
    problems += [f"{origin}: {p}" for p in blob.problems]
    return [ForwardVar(e.name, e.value, origin) for e in blob.entries]


def _xclient(le: LocatedEvent, ev: Xclient | Xforward, base: dict[str, object], protocol: str) -> dict[str, object]:
    params = [_share((p.name, p.value)) for p in ev.params]
    problems: list[str] = []
    for p in ev.params:
        problems += [f"{p.name}: {x}" for x in p.problems]
        if not p.has_equals:
            problems.append(f"{p.name}: attribute_without_value")
    forward: list[ForwardVar] = []
    for p in ev.params:
        if p.name.upper() == "FORWARD":
            forward = _forward_blob(p.value, "FORWARD", problems)  # a repeated FORWARD replaces the list
    fields = dict(base)
    carrier = "XFORWARD" if isinstance(ev, Xforward) else "XCLIENT"
    fields.update(
        carrier=carrier, verb=_VERBS.get(ev.verb, ev.verb) if isinstance(ev, Xclient) else "XFORWARD",
        command_seq=ev.seq, tag=None, line_len=ev.line_len, forwarding=bool(ev.params),
        params=_share(tuple(params)), details=_share(tuple(_attr_detail(p) for p in ev.params)),
        forward=_share(tuple(forward)) if forward else (), address=None,
    )
    _interpret(fields, params, problems, ("ADDR", "PORT", "DESTADDR", "DESTPORT"), "TTL", ("SESSION",),
               smtp=protocol in ("smtp", "submission", "lmtp"))
    fields["problems"] = _share(tuple(problems)) if problems else ()
    return fields


def _rcpt_forward(le: LocatedEvent, ev: RcptForward, base: dict[str, object]) -> dict[str, object]:
    p = ev.param
    problems = [f"XRCPTFORWARD: {x}" for x in p.problems]
    forward = _forward_blob(p.value, "XRCPTFORWARD", problems)
    fields = dict(base)
    fields.update(
        carrier="XRCPTFORWARD", verb=_VERBS.get(ev.verb, ev.verb), command_seq=ev.seq, tag=None,
        line_len=ev.line_len, forwarding=True, params=_share((_share((p.name, p.value)),)),
        details=_share((_attr_detail(p),)), forward=_share(tuple(forward)) if forward else (),
        forwarded_client=None, forwarded_client_raw=(None, None), forwarded_server=None,
        forwarded_server_raw=(None, None), ttl=None, ttl_raw=None, session_id=None,
        problems=_share(tuple(problems)) if problems else (), address=_share_text(ev.address),
    )
    return fields


def verdict(protocol: str, carrier: str, reply: Reply | None) -> tuple[bool | None, bool | None]:
    """(accepted, trusted) as the reply shows them (spec 1.3, 2.3, 3.3, 3.5, 4.1, 4.4)."""
    if reply is None:
        return None, None
    code, text = reply.code.upper(), reply.text
    if protocol == "imap":
        if code == "OK":
            if "Trusted ID completed" in text:
                return True, True
            return True, None  # 2.3 always says "ID completed."; 2.4 says so only to untrusted senders
        return False, None
    if protocol == "pop3":
        if code == "+OK":
            if POP3_UNTRUSTED in text:
                return False, False
            return True, True if carrier == "XCLIENT" else None
        return False, None
    # SMTP family: 220 restarts the session (XCLIENT), 2xx accepts
    ok = code[:1] == "2"
    if "5.7.14" in text or "insufficient authorization" in text:
        return False, False
    return ok, (True if ok and carrier == "XCLIENT" else None)


def _command_excerpt(ev: Command) -> bytes:
    """The command line as sent, bounded to ``EXCERPT_LEN`` bytes (literals not included)."""
    head = (ev.tag.encode("utf-8", "surrogateescape") + b" " if ev.tag else b"") + ev.verb.encode("ascii", "replace")
    return (head + (b" " + ev.args if ev.args else b""))[:EXCERPT_LEN]


def build_records(flow: int, capture: int, protocol: str | None, client: Endpoint, server: Endpoint,
                  events: Iterable[LocatedEvent]) -> list[ForwardingRecord]:
    """Every carrier record of one flow, in command order, with the server's reply attached."""
    drafts: dict[int, _Draft] = {}
    order: list[_Draft] = []
    proto = protocol or "unknown"
    commands: dict[int, Command] = {}  # seq -> the last Command of that number (excerpt made on use)
    for le in events:
        ev = le.event
        # the event classes are final (analyzer.protocols.base): ``type(ev) is`` is isinstance, cheaper
        if type(ev) is ReplyEvent:  # the most frequent event: tested first
            if ev.answers is None:
                continue
            d0 = drafts.get(ev.answers)
            if d0 is None:
                continue
            rep = Reply(_share_text(ev.status), _share_text(ev.text), le.frames, le.ts_ns)
            if ev.final and d0.reply is None:
                d0.reply = rep
            elif not ev.final and ev.status.upper() == "BYE" and d0.bye is None:
                d0.bye = rep
            continue
        if type(ev) is Command:
            commands[ev.seq] = ev
            continue
        if type(ev) is ImapId:
            fields = _imap_id(le, ev, _common(le, flow, capture, proto, client, server))
        elif type(ev) is RcptForward:
            fields = _rcpt_forward(le, ev, _common(le, flow, capture, proto, client, server))
        elif type(ev) is Xclient or type(ev) is Xforward:
            fields = _xclient(le, ev, _common(le, flow, capture, proto, client, server), proto)
        else:
            continue
        cmd = commands.pop(ev.seq, None)
        fields["excerpt"] = _share_text(_command_excerpt(cmd)) if cmd is not None else b""
        d = _Draft(fields)
        drafts[ev.seq] = d
        order.append(d)
    out = []
    for d in order:
        reply = d.reply or d.bye
        accepted, trusted = verdict(proto, str(d.fields["carrier"]), reply)
        out.append(ForwardingRecord(reply=reply, accepted=accepted, trusted=trusted, **d.fields))  # type: ignore[arg-type]
    return out
