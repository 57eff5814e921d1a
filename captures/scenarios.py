"""Declarative conversations and segmentation plans for the generated test captures.

Each scenario is a list of TCP conversations (messages each way) plus a plan for
how the messages become segments on the wire: split mid-line, one byte per
segment, reordered, retransmitted, dropped (a gap), sequence numbers wrapping,
picked up mid-stream. Everything is fixed (addresses, MACs, ISNs, timestamps) so
the generated files are byte-for-byte reproducible.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

TS_BASE_NS = 1_700_000_000 * 10**9  # 2023-11-14T22:13:20Z, fixed
MSS = 1400

C, S = "c", "s"


@dataclass
class Conv:
    """One TCP connection's conversation and how to put it on the wire."""

    client: tuple[str, int]
    server: tuple[str, int]
    messages: list[tuple[str, bytes]]
    isn_c: int = 1_000_000
    isn_s: int = 5_000_000
    handshake: bool = True  #: False: picked up mid-stream (no SYN)
    close: str = "fin"  #: "fin", "rst" or "none"
    split: str = "whole"  #: "whole", "mid_line" (each message in two segments), "bytes" (1 byte per segment)
    reorder: tuple[int, ...] = ()  #: data segment indexes swapped with the next one
    retransmit: tuple[int, ...] = ()  #: data segment indexes sent twice
    drop: tuple[int, ...] = ()  #: data segment indexes never sent (gaps)
    overlap_conflict: tuple[int, ...] = ()  #: data segment indexes re-sent with different bytes
    vlan: tuple[int, ...] = ()  #: 802.1Q tags
    mac_c: str = "02:00:00:00:00:01"
    mac_s: str = "02:00:00:00:00:02"


@dataclass
class Scenario:
    name: str
    description: str
    convs: list[Conv]
    fmt: str = "pcapng"  #: "pcapng" or "pcap"
    interleave: bool = True
    extra_noise: bool = False  #: add an HTTP flow and DNS packets
    must_show: dict[str, object] = field(default_factory=dict)


def lines(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("latin-1")


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def login_session(ip: str, port: int, offset_us: int = 0) -> str:
    """A Dovecot login-service session id (spec 4.3): base64 of 48-bit LE microseconds, LE port, IP."""
    import ipaddress

    ts = (TS_BASE_NS // 1000 + offset_us) & (2**48 - 1)
    raw = ts.to_bytes(6, "little") + port.to_bytes(2, "little") + ipaddress.ip_address(ip).packed
    return base64.b64encode(raw).decode()


# ---------------------------------------------------------------------------- conversations

def imap_proxy_backend(proxy: str = "192.0.2.20", backend: str = "192.0.2.30", port: int = 51000,
                       orig: str = "198.51.100.7", ttl: str = "6", session: str | None = None,
                       trusted: bool = True) -> Conv:
    """Dovecot 2.4 imap-login proxy -> backend (spec 6.1), pipelined ID + LOGIN."""
    reply = "I OK Trusted ID completed." if trusted else "I OK ID completed."
    session = session or login_session(orig, 51234)
    return Conv((proxy, port), (backend, 143), [
        (S, lines("* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN] Dovecot ready.\n")),
        (C, lines(f'I ID ("x-session-id" "{session}" "x-originating-ip" "{orig}" "x-originating-port" "51234" '
                  f'"x-connected-ip" "192.0.2.10" "x-connected-port" "143" "x-proxy-ttl" "{ttl}" '
                  f'"x-client-transport" "insecure" "x-forward-tenant" "acme")\nL LOGIN "alice" "secret"\n')),
        (S, lines(f'* ID ("name" "Dovecot")\n{reply}\nL OK [CAPABILITY IMAP4rev1 IDLE] Logged in\n')),
        (C, lines("A1 SELECT INBOX\n")),
        (S, lines("* 0 EXISTS\nA1 OK [READ-WRITE] Select completed.\n")),
        (C, lines("A2 LOGOUT\n")),
        (S, lines("* BYE Logging out\nA2 OK Logout completed.\n")),
    ])


def imap_client_proxy(client: str = "198.51.100.7", proxy: str = "192.0.2.10") -> Conv:
    """The end client's own connection to the proxy (cleartext LOGIN on 143)."""
    return Conv((client, 51234), (proxy, 143), [
        (S, lines("* OK [CAPABILITY IMAP4rev1 ID LITERAL+ AUTH=PLAIN] Proxy ready.\n")),
        (C, lines('a LOGIN "alice" "secret"\n')),
        (S, lines("a OK Logged in\n")),
        (C, lines("b LOGOUT\n")),
        (S, lines("* BYE Logging out\nb OK Logout completed.\n")),
    ], isn_c=2_000_000, isn_s=3_000_000)


def pop3_proxy_backend(proxy: str = "192.0.2.20", backend: str = "192.0.2.31") -> Conv:
    fwd = b64("tenant=acme")
    return Conv((proxy, 52000), (backend, 110), [
        (S, lines("+OK [XCLIENT] Dovecot ready.\n")),
        (C, lines(f"XCLIENT ADDR=198.51.100.8 PORT=51235 DESTADDR=192.0.2.10 DESTPORT=995 "
                  f"SESSION={login_session('198.51.100.8', 51235, 1000)} TTL=6 CLIENT-TRANSPORT=TLS FORWARD={fwd}\nUSER alice\n")),
        (S, lines("+OK Updated\n+OK\n")),
        (C, lines("PASS secret\n")),
        (S, lines("+OK Logged in.\n")),
        (C, lines("QUIT\n")),
        (S, lines("+OK Logging out.\n")),
    ], isn_c=7_000_000, isn_s=8_000_000)


def submission_proxy_backend(proxy: str = "192.0.2.20", backend: str = "192.0.2.32") -> Conv:
    fwd = b64("tenant=acme").replace("=", "+3D")
    return Conv((proxy, 53000), (backend, 587), [
        (S, lines("220 backend.example Dovecot ready.\n")),
        (C, lines("EHLO proxy.example\n")),
        (S, lines("250-backend.example\n250-8BITMIME\n250-AUTH PLAIN\n250-ENHANCEDSTATUSCODES\n"
                  "250-XCLIENT ADDR PORT PROTO HELO LOGIN SESSION CLIENT-TRANSPORT TTL TIMEOUT DESTNAME DESTADDR "
                  "DESTPORT FORWARD\n250 PIPELINING\n")),
        (C, lines(f"XCLIENT HELO=client.example PROTO=ESMTP TTL=6 PORT=51236 ADDR=IPV6:2001:db8::7 DESTPORT=587 "
                  f"DESTADDR=192.0.2.10 SESSION={login_session('2001:db8::7', 51236, 2000).replace('+', '+2B')} CLIENT-TRANSPORT=TLS FORWARD={fwd}\nEHLO proxy.example\n")),
        (S, lines("220 backend.example Dovecot ready.\n250-backend.example\n250 PIPELINING\n")),
        (C, lines("AUTH PLAIN AGFsaWNlAHNlY3JldA==\n")),
        (S, lines("235 2.7.0 Logged in.\n")),
        (C, lines("QUIT\n")),
        (S, lines("221 2.0.0 Bye\n")),
    ], isn_c=9_000_000, isn_s=9_500_000)


def lmtp_proxy_backend(proxy: str = "192.0.2.21", backend: str = "192.0.2.33") -> Conv:
    return Conv((proxy, 54000), (backend, 24), [
        (S, lines("220 backend.example Dovecot ready.\n")),
        (C, lines("LHLO proxy.example\n")),
        (S, lines("250-backend.example\n250-8BITMIME\n250-XCLIENT ADDR PORT PROTO HELO LOGIN SESSION "
                  "CLIENT-TRANSPORT TTL TIMEOUT DESTNAME DESTADDR DESTPORT\n250-XRCPTFORWARD\n250 PIPELINING\n")),
        (C, lines("XCLIENT HELO=mta.example PROTO=LMTP SESSION=Zx9AbCdEfGhIjKlMnOpQrS:P1 CLIENT-TRANSPORT=insecure "
                  "TTL=5 PORT=41000 ADDR=2001:db8::25 DESTPORT=24 DESTADDR=192.0.2.10\n")),
        (S, lines("220 backend.example Dovecot ready.\n")),
        (C, lines("LHLO proxy.example\n")),
        (S, lines("250-backend.example\n250-XRCPTFORWARD\n250 PIPELINING\n")),
        (C, lines("MAIL FROM:<s@example.org>\nRCPT TO:<u@example.com> XRCPTFORWARD=tenant+3Dacme+09plan+3Dgold\n"
                  "DATA\n")),
        (S, lines("250 2.1.0 OK\n250 2.1.5 OK\n354 OK\n")),
        (C, lines("Subject: hi\nX-Originating-IP: 203.0.113.66\n\nXCLIENT ADDR=6.6.6.6\n.\n")),
        (S, lines("250 2.0.0 <u@example.com> Saved\n")),
        (C, lines("QUIT\n")),
        (S, lines("221 2.0.0 Bye\n")),
    ], isn_c=11_000_000, isn_s=12_000_000)


def small_imap(**kw: object) -> Conv:
    """A short IMAP exchange for reassembly scenarios (ID split across segments)."""
    conv = Conv(("192.0.2.20", 50100), ("192.0.2.30", 143), [
        (S, lines("* OK [CAPABILITY IMAP4rev1 ID] ready\n")),
        (C, lines('I ID ("x-originating-ip" "198.51.100.9" "x-originating-port" "40000" "x-proxy-ttl" "6")\n')),
        (S, lines('* ID NIL\nI OK Trusted ID completed.\n')),
        (C, lines("L LOGOUT\n")),
        (S, lines("* BYE bye\nL OK done\n")),
    ])
    for k, v in kw.items():
        setattr(conv, k, v)
    return conv


# ---------------------------------------------------------------------------- the scenario list

SCENARIOS: list[Scenario] = [
    Scenario(
        "sample",
        "Dovecot 2.4 proxies: IMAP client->proxy and proxy->backend (ID), POP3 XCLIENT with FORWARD, "
        "submission XCLIENT with IPV6: and FORWARD, LMTP XCLIENT + RCPT XRCPTFORWARD, plus HTTP and DNS noise",
        [imap_client_proxy(), imap_proxy_backend(), pop3_proxy_backend(), submission_proxy_backend(),
         lmtp_proxy_backend()],
        extra_noise=True,
        must_show={"flows": 5, "id_commands": 1, "xclient_commands": 3, "xrcptforward": 1},
    ),
    Scenario("tcp_in_order", "one IMAP proxy session, one segment per message", [small_imap()],
             must_show={"flows": 1, "gaps": 0}),
    Scenario("tcp_split_mid_line", "every message split in the middle of a line", [small_imap(split="mid_line")],
             must_show={"flows": 1, "gaps": 0}),
    Scenario("tcp_one_byte_segments", "one byte per segment", [small_imap(split="bytes")],
             must_show={"flows": 1, "gaps": 0}),
    Scenario("tcp_reordered", "data segments 1 and 3 swapped with their successors",
             [small_imap(split="mid_line", reorder=(1, 3))], must_show={"flows": 1, "gaps": 0}),
    Scenario("tcp_retransmitted", "segments 1, 2 and 4 sent twice", [small_imap(split="mid_line", retransmit=(1, 2, 4))],
             must_show={"flows": 1, "gaps": 0}),
    Scenario("tcp_gap", "data segment 2 never captured (a gap in the client stream)",
             [small_imap(split="mid_line", drop=(2,))], must_show={"flows": 1, "gaps": 1}),
    Scenario("tcp_seq_wrap", "sequence numbers wrap past 2^32 inside the ID command",
             [small_imap(split="mid_line", isn_c=2**32 - 40, isn_s=2**32 - 5)], must_show={"flows": 1, "gaps": 0}),
    Scenario("tcp_midstream", "capture starts after the handshake (no SYN)", [small_imap(handshake=False)],
             must_show={"flows": 1, "gaps": 0}),
    Scenario("tcp_rst", "connection reset after the ID reply", [small_imap(close="rst")],
             must_show={"flows": 1, "ended": "rst"}),
    Scenario("tcp_overlap_conflict", "a retransmission with different bytes (first arrival kept)",
             [small_imap(split="mid_line", overlap_conflict=(1,))], must_show={"flows": 1, "overlap_conflicts": 1}),
    Scenario("tcp_port_reuse", "two connections on the same 4-tuple, the second with a new SYN",
             [small_imap(), small_imap(isn_c=70_000_000, isn_s=80_000_000)], interleave=False,
             must_show={"flows": 2}),
    Scenario("tcp_vlan_pcap", "classic pcap, 802.1Q-tagged frames", [small_imap(vlan=(100,))], fmt="pcap",
             must_show={"flows": 1}),
    Scenario("tcp_ipv6", "IPv6 proxy -> backend", [
        small_imap(client=("2001:db8::20", 50200), server=("2001:db8::30", 143))], must_show={"flows": 1}),
]
