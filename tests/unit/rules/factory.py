"""Builders for rule tests: forwarding records, flows and rule contexts with sane defaults.

Strategy: records are not assembled field by field. ``make_record`` builds the
parser events a real connection would give (``Command``, then ``ImapId`` /
``Xclient`` / ``Xforward`` / ``RcptForward``, then the server's ``Reply``) and
runs them through :func:`analyzer.forwarding.extract.build_records`, so the
record's ``params``, ``details``, forwarded endpoints, TTL, session id, forward
variables, problems and verdict are exactly what the pipeline would produce for
those parameters. Only then are explicit ``overrides`` applied with
``dataclasses.replace`` (for the odd field a test wants to force).

Defaults follow the spec's transcripts (section 6): a Dovecot 2.4 proxy at
``10.0.0.2`` talking to a backend at ``10.0.0.3`` on behalf of the end client
``198.51.100.7:51234`` that connected to ``192.0.2.10``.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Iterable, Sequence

from analyzer.config import Settings
from analyzer.flows.model import FlowResult, FlowSummary
from analyzer.forwarding.extract import build_records
from analyzer.forwarding.model import ForwardingRecord
from analyzer.model import Direction, Endpoint, Span
from analyzer.protocols import xtext
from analyzer.protocols import make_parser
from analyzer.protocols.base import (
    Anomaly,
    Capabilities,
    Command,
    Event,
    Greeting,
    IdParam,
    ImapId,
    LocatedEvent,
    RcptForward,
    Reply,
    XParam,
    Xclient,
    Xforward,
)
from analyzer.rules import RuleContext

PROXY = Endpoint("10.0.0.2", 40000)  #: default TCP client of a hop (the proxy)
BACKEND_PORTS = {"imap": 143, "pop3": 110, "submission": 587, "lmtp": 24, "smtp": 25}
END_CLIENT_IP = "198.51.100.7"
END_CLIENT_PORT = "51234"
CONNECTED_IP = "192.0.2.10"
#: a login-service session id of END_CLIENT_IP:END_CLIENT_PORT (spec 4.3), 16 characters
SESSION_ID = base64.b64encode(
    (1_700_000_000_123_456 & (2**48 - 1)).to_bytes(6, "little") + (51234).to_bytes(2, "little") + bytes([198, 51, 100, 7])
).decode("ascii")
#: an LMTP session id (22-char GUID + one proxy hop)
LMTP_SESSION_ID = base64.b64encode(bytes(range(16))).decode("ascii").rstrip("=") + ":P1"
TS0 = 1_700_000_000_000_000_000  #: ts_ns of the first event of a default flow

#: IMAP ID of a 2.4 proxy (spec 6.1)
ID_PARAMS: tuple[tuple[str, str | None], ...] = (
    ("x-multiplex", "0"),
    ("x-session-id", SESSION_ID),
    ("x-originating-ip", END_CLIENT_IP),
    ("x-originating-port", END_CLIENT_PORT),
    ("x-connected-ip", CONNECTED_IP),
    ("x-connected-port", "993"),
    ("x-proxy-ttl", "6"),
    ("x-client-transport", "TLS"),
    ("x-forward-tenant", "acme"),
)
#: POP3 XCLIENT of a 2.4.3 proxy (spec 6.2): raw values
POP3_PARAMS: tuple[tuple[str, str], ...] = (
    ("ADDR", END_CLIENT_IP), ("PORT", END_CLIENT_PORT), ("DESTADDR", CONNECTED_IP), ("DESTPORT", "995"),
    ("SESSION", SESSION_ID), ("TTL", "6"), ("CLIENT-TRANSPORT", "TLS"), ("FORWARD", "dGVuYW50PWFjbWU="),
)
#: submission XCLIENT of a 2.4.3 proxy (spec 6.3): xtext values
SUBMISSION_PARAMS: tuple[tuple[str, str], ...] = (
    ("HELO", "client.example"), ("PROTO", "ESMTP"), ("TTL", "6"), ("PORT", END_CLIENT_PORT),
    ("ADDR", END_CLIENT_IP), ("DESTPORT", "587"), ("DESTADDR", CONNECTED_IP),
    ("SESSION", xtext.encode(SESSION_ID)), ("CLIENT-TRANSPORT", "TLS"), ("FORWARD", "dGVuYW50PWFjbWU+3D"),
)
#: LMTP XCLIENT of the lib-smtp client (spec 6.4)
LMTP_PARAMS: tuple[tuple[str, str], ...] = (
    ("HELO", "mta.example"), ("PROTO", "LMTP"), ("SESSION", xtext.encode(LMTP_SESSION_ID)),
    ("CLIENT-TRANSPORT", "insecure"), ("TTL", "5"), ("PORT", "41000"), ("ADDR", "2001:db8::25"),
    ("DESTPORT", "24"), ("DESTADDR", CONNECTED_IP),
)
#: Postfix-bound XCLIENT (spec 4.4): only Postfix attributes, ADDR last
SMTP_PARAMS: tuple[tuple[str, str], ...] = (
    ("NAME", "client.example"), ("HELO", "client.example"), ("PROTO", "ESMTP"), ("PORT", END_CLIENT_PORT),
    ("ADDR", END_CLIENT_IP),
)
#: Postfix XFORWARD
XFORWARD_PARAMS: tuple[tuple[str, str], ...] = (
    ("NAME", "client.example"), ("ADDR", END_CLIENT_IP), ("PORT", END_CLIENT_PORT), ("PROTO", "ESMTP"),
)

_DEFAULT_PROTOCOL = {"ID": "imap", "XCLIENT": "submission", "XRCPTFORWARD": "lmtp", "XFORWARD": "smtp"}
_DEFAULT_REPLY: dict[tuple[str, str], tuple[str, str]] = {
    ("ID", "imap"): ("OK", "Trusted ID completed."),
    ("XCLIENT", "pop3"): ("+OK", "Updated"),
    ("XCLIENT", "submission"): ("220", "backend.example Dovecot ready."),
    ("XCLIENT", "lmtp"): ("220", "backend.example Dovecot ready."),
    ("XCLIENT", "smtp"): ("220", "backend.example ESMTP Postfix"),
    ("XFORWARD", "smtp"): ("250", "2.0.0 Ok"),
    ("XRCPTFORWARD", "lmtp"): ("250", "2.1.5 OK"),
}
_DEFAULT_XPARAMS = {"pop3": POP3_PARAMS, "submission": SUBMISSION_PARAMS, "lmtp": LMTP_PARAMS,
                    "smtp": SMTP_PARAMS}

_UNSET = object()
_LITERAL_BYTES = frozenset(b"\r\n")


def span(start: int = 0, end: int = 10, direction: Direction = Direction.TO_SERVER) -> Span:
    """A stream span."""
    return Span(direction, start, end)


def located(event: Event, frames: Sequence[int] = (4,), ts_ns: int | None = None) -> LocatedEvent:
    """Wrap a parser event with frames (and a ts derived from the first frame unless given)."""
    fr = tuple(frames)
    return LocatedEvent(event, fr, ts_ns if ts_ns is not None else TS0 + (fr[0] if fr else 0) * 1000)


def _wire_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


def id_param(name: str, value: str | None, *, value_form: str | None = None,
             literal_waited: bool | None = None) -> IdParam:
    """One ID pair as the IMAP parser reports it: quoted unless the value needs a literal
    (CR, LF, 8-bit or more than 4 quote/backslash characters, as imap_append_nstring())."""
    name_b = name.encode("utf-8", "surrogateescape")
    if value is None:
        form = value_form or "nil"
        v_octets, v_wire = 0, 3
    else:
        vb = value.encode("utf-8", "surrogateescape")
        needs_literal = (any(b in _LITERAL_BYTES or b >= 0x80 for b in vb)
                         or sum(vb.count(c) for c in b'"\\') > 4)
        form = value_form or ("literal" if needs_literal else "quoted")
        v_octets = len(vb)
        if form == "quoted":
            v_wire = len(vb) + 2 + vb.count(b'"') + vb.count(b"\\")
        elif form == "atom":
            v_wire = len(vb)
        else:
            v_wire = len(vb)
        if form == "literal" and literal_waited is None:
            literal_waited = False  # Dovecot's proxy does not wait (spec 1.2)
    return IdParam(
        name=name, value=value, name_form="quoted", value_form=form, name_octets=len(name_b),
        value_octets=v_octets, name_wire=len(name_b) + 2 + name_b.count(b'"') + name_b.count(b"\\"),
        value_wire=v_wire, literal_waited=literal_waited if form == "literal" else None,
    )


def x_param(name: str, raw: str | None, protocol: str) -> XParam:
    """One attribute as the POP3 (raw) or SMTP (xtext) parser reports it; ``raw=None``: no ``=``."""
    if protocol == "pop3":
        if raw is None:
            return XParam(name, "", "", "", False, ())
        return XParam(name, raw, raw, raw, True, ())
    return xtext.make_param(name, raw or "", raw is not None)


def carrier_events(
    *,
    carrier: str = "ID",
    protocol: str | None = None,
    params: Iterable[tuple[str, str | None]] | None = None,
    id_params: Sequence[IdParam] | None = None,
    id_nil: bool = False,
    id_problems: tuple[str, ...] = (),
    reply: tuple[str, str] | None | object = _UNSET,
    seq: int = 0,
    tag: str = "I",
    verb: str | None = None,
    address: str = "u@example.com",
    start: int = 0,
    frames: Sequence[int] = (4,),
    reply_frames: Sequence[int] = (6,),
) -> list[LocatedEvent]:
    """The located events of one carrier command and its reply (Command, carrier event, Reply)."""
    proto = protocol or _DEFAULT_PROTOCOL[carrier]
    events: list[LocatedEvent] = []
    if carrier == "ID":
        if id_params is not None:
            idp: tuple[IdParam, ...] | None = tuple(id_params)
        elif id_nil:
            idp = None
        else:
            idp = tuple(id_param(n, v) for n, v in (ID_PARAMS if params is None else params))
        body = "NIL" if idp is None else "(" + " ".join(
            f'"{p.name}" ' + ("NIL" if p.value is None else f'"{p.value}"') for p in idp) + ")"
        line_len = _wire_len(f"{tag} ID {body}\r\n")
        sp = span(start, start + line_len)
        events.append(located(Command(sp, seq, tag, "ID", body.encode("utf-8", "surrogateescape"), line_len),
                              frames))
        events.append(located(ImapId(sp, seq, tag, idp, id_problems, line_len), frames))
    else:
        if params is None:
            raw_params: list[tuple[str, str | None]] = list(
                XFORWARD_PARAMS if carrier == "XFORWARD" else
                (("XRCPTFORWARD", "tenant+3Dacme"),) if carrier == "XRCPTFORWARD" else _DEFAULT_XPARAMS[proto])
        else:
            raw_params = list(params)
        xps = tuple(x_param(n, v, proto) for n, v in raw_params)
        tokens = " ".join(n if v is None else f"{n}={v}" for n, v in raw_params)
        if carrier == "XRCPTFORWARD":
            vb = verb or "RCPT"
            args = (f"TO:<{address}> " if vb == "RCPT" else f"FROM:<{address}> ") + tokens
        elif carrier == "XCLIENT" and (verb or "XCLIENT") == "XOIP":
            vb = "XOIP"
            args = raw_params[0][1] or ""
            xps = (XParam("ADDR", args, args, args, True, ()),)
        else:
            vb = verb or carrier
            args = tokens
        line_len = _wire_len(f"{vb} {args}\r\n")
        sp = span(start, start + line_len)
        events.append(located(Command(sp, seq, None, vb, args.encode("utf-8", "surrogateescape"), line_len),
                              frames))
        ev: Event
        if carrier == "XRCPTFORWARD":
            ev = RcptForward(sp, seq, vb, address, xps[0], line_len)
        elif carrier == "XFORWARD":
            ev = Xforward(sp, seq, xps, line_len)
        else:
            ev = Xclient(sp, seq, vb, xps, line_len)
        events.append(located(ev, frames))
    if reply is _UNSET:
        reply = _DEFAULT_REPLY.get((carrier, proto), ("250", "OK"))
    if reply is not None:
        assert isinstance(reply, tuple)
        status, text = reply
        rtag = tag if carrier == "ID" else None
        rsp = Span(Direction.TO_CLIENT, start, start + len(status) + len(text) + 3)
        events.append(located(Reply(rsp, seq, rtag, status, text, True), reply_frames))
    return events


def make_record(**overrides: object) -> ForwardingRecord:
    """A ForwardingRecord exactly as extract.build_records would make it for the given carrier
    command; keyword arguments of :func:`carrier_events` shape the command, ``flow``, ``capture``,
    ``sender`` and ``receiver`` the connection, and any other ForwardingRecord field is forced
    afterwards with dataclasses.replace."""
    ev_keys = {"carrier", "protocol", "params", "id_params", "id_nil", "id_problems", "reply", "seq", "tag",
               "verb", "address", "start", "frames", "reply_frames"}
    ev_args = {k: overrides.pop(k) for k in list(overrides) if k in ev_keys}
    carrier = str(ev_args.get("carrier", "ID"))
    proto = str(ev_args.get("protocol") or _DEFAULT_PROTOCOL[carrier])
    flow = int(overrides.pop("flow", 0))  # type: ignore[call-overload]
    capture = int(overrides.pop("capture", 0))  # type: ignore[call-overload]
    sender = overrides.pop("sender", PROXY)
    receiver = overrides.pop("receiver", Endpoint("10.0.0.3", BACKEND_PORTS.get(proto, 143)))
    assert isinstance(sender, Endpoint) and isinstance(receiver, Endpoint)
    events = carrier_events(**ev_args)  # type: ignore[arg-type]
    recs = build_records(flow, capture, proto, sender, receiver, events)
    assert len(recs) == 1, recs
    return dataclasses.replace(recs[0], **overrides) if overrides else recs[0]  # type: ignore[arg-type]


def make_flow(
    id: int = 0,
    events: Sequence[LocatedEvent | Event] = (),
    protocol: str | None = "imap",
    *,
    client: Endpoint = PROXY,
    server: Endpoint | None = None,
    tls: str | None = None,
    capture: int = 0,
    gaps_to_server: int = 0,
    gaps_to_client: int = 0,
) -> FlowResult:
    """A FlowResult; bare events are located at consecutive frames starting at 1."""
    located_events: list[LocatedEvent] = []
    for i, e in enumerate(events):
        located_events.append(e if isinstance(e, LocatedEvent) else located(e, (i + 1,)))
    frames = [f for le in located_events for f in le.frames] or [1]
    srv = server or Endpoint("10.0.0.3", BACKEND_PORTS.get(protocol or "", 143))
    summary = FlowSummary(
        capture=capture, key=(capture, min(frames)), client=client, server=srv, protocol=protocol,
        detected_by="port", saw_syn=True, first_frame=min(frames), last_frame=max(frames),
        first_ts_ns=TS0 + min(frames) * 1000, last_ts_ns=TS0 + max(frames) * 1000,
        packets_to_server=len(located_events), packets_to_client=0, bytes_to_server=0, bytes_to_client=0,
        gaps_to_server=gaps_to_server, gaps_to_client=gaps_to_client, gap_bytes_to_server=0,
        gap_bytes_to_client=0, retransmitted_bytes=0, overlap_conflicts=0, ended="fin", tls=tls,
        events=located_events,
    )
    return FlowResult(id=id, community_id=f"1:test{id}", summary=summary)


def flow_and_records(
    id: int = 0,
    events: Sequence[LocatedEvent] = (),
    protocol: str = "imap",
    *,
    client: Endpoint = PROXY,
    server: Endpoint | None = None,
    tls: str | None = None,
) -> tuple[FlowResult, list[ForwardingRecord]]:
    """A flow from located events, and the records the pipeline would build from them."""
    flow = make_flow(id, events, protocol, client=client, server=server, tls=tls)
    s = flow.summary
    return flow, build_records(id, s.capture, protocol, s.client, s.server, s.events)


def make_ctx(records: Iterable[ForwardingRecord] = (), flows: Iterable[FlowResult] | None = None,
             settings: Settings | None = None) -> RuleContext:
    """A RuleContext; with ``flows=None`` one empty flow is made per flow id the records use."""
    recs = list(records)
    if flows is None:
        n = max((r.flow for r in recs), default=-1) + 1
        protos = {r.flow: r.protocol for r in recs}
        flow_list = [make_flow(i, (), protos.get(i, "imap")) for i in range(n)]
    else:
        flow_list = list(flows)
    return RuleContext(records=recs, flows=flow_list, settings=settings or Settings())


# --- single events (bare; make_flow locates them at consecutive frames) ---------------------------


def greeting(status: str = "OK", text: str = "[CAPABILITY IMAP4rev1 ID] Dovecot ready.",
             capabilities: tuple[str, ...] = (), *, restart: bool = False, start: int = 0) -> Greeting:
    """A server greeting (IMAP ``* OK``, POP3 ``+OK``, SMTP ``220``)."""
    return Greeting(Span(Direction.TO_CLIENT, start, start + len(text) + 8), status, text, capabilities, restart)


def command(seq: int, verb: str, args: bytes = b"", *, tag: str | None = None, start: int | None = None) -> Command:
    """A client command line."""
    line = len(verb) + (len(args) + 1 if args else 0) + (len(tag) + 1 if tag else 0) + 2
    st = seq * 100 if start is None else start
    return Command(Span(Direction.TO_SERVER, st, st + line), seq, tag, verb, args, line)


def reply(answers: int | None, status: str, text: str = "", *, tag: str | None = None, final: bool = True,
          start: int = 0) -> Reply:
    """A server reply answering command ``answers``."""
    return Reply(Span(Direction.TO_CLIENT, start, start + len(status) + len(text) + 3), answers, tag, status,
                 text, final)


def anomaly(code: str, start: int = 0, end: int = 10, direction: Direction = Direction.TO_SERVER,
            detail: str = "test anomaly", excerpt: bytes = b"") -> Anomaly:
    """A parser anomaly."""
    return Anomaly(Span(direction, start, end), code, detail, excerpt)


def capabilities(items: tuple[str, ...], source: str = "ehlo") -> Capabilities:
    """Capabilities announced outside the greeting (EHLO/LHLO lines, IMAP CAPABILITY)."""
    return Capabilities(Span(Direction.TO_CLIENT, 0, 10), source, items)


# --- real parsers ---------------------------------------------------------------------------


def ctx_from_wire(protocol: str, script: Sequence[tuple[Direction, bytes]], *, flow_id: int = 0,
                  client: Endpoint = PROXY, server: Endpoint | None = None,
                  tls: str | None = None) -> RuleContext:
    """Run the real parser over a scripted conversation; the context holds its flow and records
    (each event is located at its own frame number, in event order)."""
    parser = make_parser(protocol)
    events: list[Event] = []
    for direction, data in script:
        events.extend(parser.feed(direction, data))
    events.extend(parser.eof(Direction.TO_SERVER))
    events.extend(parser.eof(Direction.TO_CLIENT))
    flow, recs = flow_and_records(flow_id, [located(e, (i + 1,)) for i, e in enumerate(events)], protocol,
                                  client=client, server=server, tls=tls)
    return make_ctx(recs, [flow])
