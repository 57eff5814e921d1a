"""Records (and parser events) of repeated commands share their immutable parts, with the same values.

A flood repeats one carrier command 100,000 times (hostile case ``pop3_xclient_100k``): the records
must not hold 100,000 copies of equal parameter details (issue 7, ``test_memory_per_xclient``). The
sharing must never change a value: records built with it equal records built without it.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from analyzer.forwarding import extract
from analyzer.forwarding.extract import build_records
from analyzer.forwarding.model import ForwardingRecord
from analyzer.model import Direction, Endpoint
from analyzer.protocols import make_parser
from analyzer.protocols.base import Event, LocatedEvent, Xclient, Xforward

C2S, S2C = Direction.TO_SERVER, Direction.TO_CLIENT
CLIENT = Endpoint("10.0.0.2", 40000)
SERVER = Endpoint("10.0.0.3", 110)

POP3 = [
    (S2C, b"+OK [XCLIENT] Dovecot ready.\r\n"),
    (C2S, b"XCLIENT ADDR=203.0.113.5 PORT=4242 TTL=4 SESSION=abcdefghijklmnop\r\n" * 3
     + b"XCLIENT ADDR=203.0.113.6 PORT=4242 TTL=4 SESSION=abcdefghijklmnoq\r\n"
     + b"XOIP 203.0.113.5\r\n" * 2 + b"XCLIENT ADDR=[1.2.3.4] PORT=x  TTL=09\r\n" * 2),
    (S2C, b"+OK\r\n" * 4 + b"+OK You are not from trusted IP\r\n" * 2 + b"-ERR no\r\n" * 2),
]
SMTP = [
    (S2C, b"220 mx ESMTP\r\n"),
    (C2S, b"EHLO proxy\r\n"),
    (S2C, b"250-mx\r\n250 XCLIENT ADDR PORT PROTO HELO LOGIN TTL SESSION\r\n"),
    (C2S, b"XCLIENT ADDR=IPV6:2001:db8::1 PORT=25 PROTO=ESMTP HELO=a+2Bb LOGIN=x+zz\r\n" * 2
     + b"XFORWARD NAME=spike.porcupine.org ADDR=168.100.189.2 PROTO=ESMTP\r\n" * 2
     + b"XCLIENT FORWARD=dGVuYW50PWFjbWU= TTL=5\r\n" * 2),
    (S2C, b"220 mx ESMTP\r\n220 mx ESMTP\r\n250 ok\r\n250 ok\r\n550 5.7.14 no\r\n550 5.7.14 no\r\n"),
]
LMTP = [
    (S2C, b"220 lmtp ready\r\n"),
    (C2S, b"LHLO proxy\r\nMAIL FROM:<a@b>\r\n"
     + b"RCPT TO:<u@example.com> XRCPTFORWARD=dGVuYW50PWFjbWU=\r\n" * 2),
    (S2C, b"250 lmtp\r\n250 ok\r\n250 ok\r\n250 ok\r\n"),
]
IMAP = [
    (S2C, b"* OK [CAPABILITY IMAP4rev1 ID] ready\r\n"),
    (C2S, b'I ID ("x-originating-ip" "198.51.100.7" "x-originating-port" "51234" "x-proxy-ttl" "6" '
          b'"x-forward-tenant" "acme" "x-session-id" NIL)\r\n' * 2),
    (S2C, b"I OK Trusted ID completed.\r\nI OK ID completed.\r\n"),
]
CASES = {"pop3": POP3, "smtp": SMTP, "lmtp": LMTP, "imap": IMAP}


def _events(protocol: str, chunks: Sequence[tuple[Direction, bytes]]) -> list[LocatedEvent]:
    parser = make_parser(protocol)
    evs: list[Event] = []
    for direction, data in chunks:
        evs += parser.feed(direction, data)
    for direction in (C2S, S2C):
        evs += parser.eof(direction)
    return [LocatedEvent(ev, (i + 1,), 1_000 * (i + 1)) for i, ev in enumerate(evs)]


def _records(protocol: str) -> list[ForwardingRecord]:
    return build_records(0, 0, protocol, CLIENT, SERVER, _events(protocol, CASES[protocol]))


@pytest.mark.parametrize("protocol", sorted(CASES))
def test_sharing_changes_no_value(protocol: str, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = _records(protocol)
    assert len(shared) >= 2
    extract._share.table.clear()
    monkeypatch.setattr(extract, "_share", lambda obj: obj)
    monkeypatch.setattr(extract, "_share_text", lambda obj: obj)
    plain = _records(protocol)
    assert shared == plain
    for a, b in zip(shared, plain, strict=True):
        for name in ForwardingRecord.__slots__:
            assert getattr(a, name) == getattr(b, name), name


def test_repeated_pop3_xclient_shares_parts() -> None:
    recs = _records("pop3")
    a, b, c, d = recs[:4]
    for r in (b, c):
        assert r.params is a.params and r.details is a.details and r.excerpt is a.excerpt
        assert r.forwarded_client is a.forwarded_client and r.forwarded_client_raw is a.forwarded_client_raw
        assert r.session_id is a.session_id and r.verb is a.verb
        assert r.command_seq != a.command_seq and r.frames != a.frames
    assert d.params is not a.params and d.details[1] is a.details[1] and d.details[0] != a.details[0]
    assert d.params[2] is a.params[2]  # TTL=4 is one pair in every record
    xoip = recs[4:6]
    assert xoip[0].verb == xoip[1].verb == "XOIP" and xoip[0].details is xoip[1].details


def test_repeated_pop3_xclient_events_share_attributes() -> None:
    events = [le.event for le in _events("pop3", POP3)]
    xclients = [ev for ev in events if type(ev) is Xclient]
    assert len(xclients) == 8
    assert xclients[1].params is xclients[0].params and xclients[2].params is xclients[0].params
    assert xclients[3].params is not xclients[0].params
    assert xclients[0].verb is xclients[1].verb


def test_repeated_smtp_attributes_share_xparams() -> None:
    events = [le.event for le in _events("smtp", SMTP)]
    carriers = [ev for ev in events if type(ev) is Xclient or type(ev) is Xforward]
    assert len(carriers) == 6
    assert all(p is q for p, q in zip(carriers[0].params, carriers[1].params, strict=True))
    proto = [p for ev in carriers[:4] for p in ev.params if p.name == "PROTO"]
    assert len(proto) == 4 and all(p is proto[0] for p in proto)


def test_sharing_table_stays_bounded() -> None:
    extract._share.table.clear()
    for i in range(extract.SHARE_TABLE_SIZE + 10):
        assert extract._share(("name", str(i))) == ("name", str(i))
    assert len(extract._share.table) <= extract.SHARE_TABLE_SIZE
    long = "x" * (extract._share.text_max + 1)
    assert extract._share_text(long) is long and long not in extract._share.table
