"""Deterministic benchmark captures for ``bench/run.py`` (classic pcap, Ethernet, plain ``struct``).

Strategy: every capture is a pure function of its parameters (fixed seeds, fixed
timestamps, fixed MAC/IP plans), so the bytes are identical on every machine and
a capture is cached under ``bench/cache/`` by a key made of
:data:`GENERATOR_VERSION` and the parameters. Speed comes from never building a
packet object: each TCP flow owns two 54/74-byte header templates (one per
direction, addresses and ports already filled in, IPv4 header checksum pre-summed)
and a packet is ``template[:]`` plus three ``struct.pack_into`` calls (IP length/id
and checksum, TCP seq/ack/flags) plus the payload, appended to a list that is
flushed to disk every few megabytes. Conversations are lists (or generators) of
*steps* ``(direction, tcp_flags, payload, commands)``; a step whose payload
completes forwarding commands names them, so the writer can count them and note
the file offset at which each command became complete (the manifest's ground
truth, and what lets ``run.py`` count the commands inside a file prefix).

Captures:

* ``noise``: bulk HTTP-like TCP (IPv4 and some IPv6), DNS over UDP and about 5 %
  of bytes of mail proxy->backend sessions (IMAP ``I ID (...)``, POP3
  ``XCLIENT ... FORWARD=<b64>``, submission/SMTP ``XCLIENT`` and LMTP
  ``XCLIENT`` + ``RCPT TO ... XRCPTFORWARD=``). Some command lines are split
  across two segments, and some of those have the two halves reordered.
* ``mail200k``: ``mail_flows`` short mail sessions emitted in phases (packet k of
  every flow, then packet k+1 ...) so that all of them are open at once.
* ``manyfiles``: the ``noise`` capture split into N files, by flow (a hash of the
  unordered address/port pair, as a multi-queue capture would) or by time
  (contiguous record ranges, as ``tcpdump -C`` rotation would).

The manifest (``<capture>.json``) records packets, bytes, the exact number of
``ID``/``XCLIENT``/``XRCPTFORWARD`` commands written, how many carrier lines were
split or reordered, and the generator parameters.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import struct
import sys
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

GENERATOR_VERSION = 1  # bump when the same parameters would give different bytes (invalidates the cache)

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_CACHE = BENCH_DIR / "cache"

PCAP_MAGIC_US = 0xA1B2C3D4  # pcap-savefile(5): microsecond magic, written little-endian
PCAP_VERSION_MAJOR = 2  # pcap-savefile(5): current format version 2.4
PCAP_VERSION_MINOR = 4  # pcap-savefile(5)
PCAP_SNAPLEN = 65535  # pcap-savefile(5) SnapLen; larger than every frame we write
LINKTYPE_ETHERNET = 1  # tcpdump.org link-layer header types: LINKTYPE_ETHERNET (DLT_EN10MB)
PCAP_HEADER = struct.Struct("<IHHiIII")  # pcap-savefile(5): magic, major, minor, zone, sigfigs, snaplen, link
PCAP_RECORD = struct.Struct("<IIII")  # pcap-savefile(5): ts_sec, ts_usec, incl_len, orig_len
PCAP_HEADER_LEN = 24  # pcap-savefile(5): size of the file header
PCAP_RECORD_LEN = 16  # pcap-savefile(5): size of a record header

ETHERTYPE_IPV4 = 0x0800  # IEEE 802 EtherType for IPv4 (RFC 894)
ETHERTYPE_IPV6 = 0x86DD  # IEEE 802 EtherType for IPv6 (RFC 2464)
ETH_HLEN = 14  # IEEE 802.3: dst MAC, src MAC, EtherType
IPV4_HLEN = 20  # RFC 791: header without options (IHL = 5)
IPV6_HLEN = 40  # RFC 8200: fixed header
TCP_HLEN = 20  # RFC 9293: header without options (data offset = 5)
UDP_HLEN = 8  # RFC 768
IPPROTO_TCP = 6  # IANA protocol numbers (RFC 790)
IPPROTO_UDP = 17  # IANA protocol numbers (RFC 790)
IP_DF = 0x4000  # RFC 791: Don't Fragment flag in the flags/fragment-offset word
IP_TTL = 64  # RFC 1700 recommended default TTL
TH_FIN = 0x01  # RFC 9293 control bits: no more data from sender
TH_SYN = 0x02  # RFC 9293: synchronize sequence numbers
TH_RST = 0x04  # RFC 9293: reset the connection
TH_PSH = 0x08  # RFC 9293: push function
TH_ACK = 0x10  # RFC 9293: acknowledgment field significant
TH_PA = TH_PSH | TH_ACK
TCP_WINDOW = 64240  # a typical Linux initial window; value is irrelevant to the analyzers
MSS = 1400  # payload bytes per bulk segment (the brief's "HTTP-like 1400-byte segments")
DNS_PORT = 53  # RFC 1035

TS_BASE_S = 1_700_000_000  # fixed capture start (2023-11-14T22:13:20Z); no wall-clock time anywhere
TS_STEP_US = 20  # capture-time distance between consecutive packets
FLUSH_BYTES = 8 << 20  # write to disk every 8 MiB of pending records

# Mail service ports used by the generated sessions (all in analyzer.config.MAIL_PORTS; all but
# LMTP/24 are in Wireshark's default port table, run.py gives tshark "-d tcp.port==24,smtp").
PORT_IMAP = 143  # RFC 3501
PORT_POP3 = 110  # RFC 1939
PORT_SUBMISSION = 587  # RFC 6409
PORT_SMTP = 25  # RFC 5321
PORT_LMTP = 24  # Dovecot's default inet_listener lmtp port
COMMAND_KINDS = ("ID", "XCLIENT", "XRCPTFORWARD")
#: what the benchmark's "known" count is made of (XRCPTFORWARD is counted separately)
KNOWN_KINDS = ("ID", "XCLIENT")

MB = 1_000_000  # the benchmark's MB: decimal megabytes everywhere (sizes and MB/s)

# A step: (direction, tcp flags, payload, commands completed by this step).
# direction: C (proxy -> backend), S (backend -> proxy), R (C, as two halves written in reverse
# order; payload is then a (first_half, second_half) tuple and flags apply to both).
C = 0
S = 1
R = 2
Step = tuple[int, int, Any, tuple[str, ...]]
NO_CMDS: tuple[str, ...] = ()

_MAC_CLIENT = bytes.fromhex("020000000001")  # locally administered unicast MACs
_MAC_SERVER = bytes.fromhex("020000000002")


def _fold(s: int) -> int:
    """One's-complement fold of a 32-bit sum to 16 bits (RFC 1071)."""
    s = (s & 0xFFFF) + (s >> 16)
    return (s & 0xFFFF) + (s >> 16)


def _ipv4_base_sum(src: bytes, dst: bytes, proto: int) -> int:
    """Sum of the IPv4 header's 16-bit words except total length, id and checksum (RFC 1071)."""
    return 0x4500 + IP_DF + (IP_TTL << 8 | proto) + sum(int(w) for w in struct.unpack("!HHHH", src + dst))


class PcapWriter:
    """Streams classic pcap records to a file; tracks offset, packets and capture time."""

    __slots__ = ("_f", "_parts", "_pending", "offset", "packets", "_ts_us")

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._parts: list[bytes | bytearray] = []
        self._pending = 0
        self.offset = PCAP_HEADER_LEN  #: file offset just past the last record written
        self.packets = 0  #: records written
        self._ts_us = 0
        f.write(
            PCAP_HEADER.pack(
                PCAP_MAGIC_US, PCAP_VERSION_MAJOR, PCAP_VERSION_MINOR, 0, 0, PCAP_SNAPLEN, LINKTYPE_ETHERNET
            )
        )

    def add(self, head: bytes | bytearray, payload: bytes) -> None:
        """Append one Ethernet frame made of ``head`` + ``payload``."""
        n = len(head) + len(payload)
        ts = self._ts_us
        self._ts_us = ts + TS_STEP_US
        parts = self._parts
        parts.append(PCAP_RECORD.pack(TS_BASE_S + ts // 1_000_000, ts % 1_000_000, n, n))
        parts.append(head)
        parts.append(payload)
        self.offset += PCAP_RECORD_LEN + n
        self.packets += 1
        self._pending += PCAP_RECORD_LEN + n
        if self._pending >= FLUSH_BYTES:
            self.flush()

    def add_record(self, record: bytes) -> None:
        """Append an already framed record (header + data), keeping its timestamp."""
        self._parts.append(record)
        self.offset += len(record)
        self.packets += 1
        self._pending += len(record)
        if self._pending >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write pending records."""
        if self._parts:
            self._f.write(b"".join(self._parts))
            self._parts.clear()
            self._pending = 0


class TcpFlow:
    """One TCP connection: header templates per direction, next sequence numbers, IP ids."""

    __slots__ = ("_tmpl", "_base", "_v6", "seq", "_ipid")

    def __init__(self, client: tuple[bytes, int], server: tuple[bytes, int], isn: tuple[int, int]) -> None:
        (cip, cport), (sip, sport) = client, server
        self._v6 = len(cip) == 16
        tmpls: list[bytearray] = []
        bases: list[int] = []
        for src, sp, dst, dp, smac, dmac in (
            (cip, cport, sip, sport, _MAC_CLIENT, _MAC_SERVER),
            (sip, sport, cip, cport, _MAC_SERVER, _MAC_CLIENT),
        ):
            tcp = struct.pack("!HHIIBBHHH", sp, dp, 0, 0, TCP_HLEN << 2, 0, TCP_WINDOW, 0, 0)
            if self._v6:
                ip = struct.pack("!IHBB", 6 << 28, 0, IPPROTO_TCP, IP_TTL) + src + dst
                eth = dmac + smac + struct.pack("!H", ETHERTYPE_IPV6)
                bases.append(0)
            else:
                ip = struct.pack("!BBHHHBBH", 0x45, 0, 0, 0, IP_DF, IP_TTL, IPPROTO_TCP, 0) + src + dst
                eth = dmac + smac + struct.pack("!H", ETHERTYPE_IPV4)
                bases.append(_ipv4_base_sum(src, dst, IPPROTO_TCP))
            tmpls.append(bytearray(eth + ip + tcp))
        self._tmpl = (tmpls[0], tmpls[1])
        self._base = (bases[0], bases[1])
        self.seq = [isn[0], isn[1]]  #: next sequence number per direction (C, S)
        self._ipid = [isn[0] & 0xFFFF, isn[1] & 0xFFFF]

    def packet(self, d: int, flags: int, payload: bytes, seq: int) -> bytearray:
        """Header bytes for one segment of direction ``d`` (payload not included)."""
        h = self._tmpl[d][:]
        n = len(payload)
        if self._v6:
            struct.pack_into("!H", h, 18, TCP_HLEN + n)
            off = ETH_HLEN + IPV6_HLEN
        else:
            total = IPV4_HLEN + TCP_HLEN + n
            ipid = self._ipid[d]
            self._ipid[d] = (ipid + 1) & 0xFFFF
            struct.pack_into("!HH", h, 16, total, ipid)
            struct.pack_into("!H", h, 24, ~_fold(self._base[d] + total + ipid) & 0xFFFF)
            off = ETH_HLEN + IPV4_HLEN
        ack = self.seq[1 - d] & 0xFFFFFFFF if flags & TH_ACK else 0
        struct.pack_into("!IIBB", h, off + 4, seq & 0xFFFFFFFF, ack, TCP_HLEN << 2, flags)
        return h

    def emit(self, w: PcapWriter, d: int, flags: int, payload: Any) -> None:
        """Write one step; for ``R`` write the two halves in reverse order."""
        if d == R:
            first, second = payload
            seq0 = self.seq[C]
            w.add(self.packet(C, flags, second, seq0 + len(first)), second)
            w.add(self.packet(C, flags, first, seq0), first)
            self.seq[C] = (seq0 + len(first) + len(second)) & 0xFFFFFFFF
            return
        seq = self.seq[d]
        w.add(self.packet(d, flags, payload, seq), payload)
        self.seq[d] = (seq + len(payload) + (1 if flags & (TH_SYN | TH_FIN) else 0)) & 0xFFFFFFFF


def _ip4(a: int) -> bytes:
    return struct.pack("!I", a)


# --------------------------------------------------------------------------------------------
# Conversation content


_WORDS = (
    b"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et "
    b"dolore magna aliqua enim ad minim veniam quis nostrud exercitation ullamco laboris nisi aliquip ex ea "
    b"commodo consequat duis aute irure in reprehenderit voluptate velit esse cillum fugiat nulla pariatur "
    b"excepteur sint occaecat cupidatat non proident sunt culpa qui officia deserunt mollit anim est laborum"
).split()  # no word is "id" or "xclient": body lines can never look like a carrier command


class Content:
    """Shared, seeded text and payload pools (built once per capture)."""

    def __init__(self, rng: random.Random) -> None:
        lines = []
        for _ in range(4096):
            n = rng.randrange(6, 14)
            lines.append(b" ".join(rng.choice(_WORDS) for _ in range(n)).capitalize() + b"\r\n")
        self.lines = lines
        self.bulk = rng.randbytes(1 << 16)  # opaque HTTP response body bytes

    def body(self, rng: random.Random, size: int) -> bytes:
        """A mail body of at least ``size`` bytes made of whole CRLF lines (never starting with '.')."""
        out: list[bytes] = []
        total = 0
        i = rng.randrange(len(self.lines))
        while total < size:
            line = self.lines[i]
            out.append(line)
            total += len(line)
            i = (i + 1) % len(self.lines)
        return b"".join(out)


def _sid(rng: random.Random) -> str:
    """A Dovecot-style session id (base64 of 12 random bytes, 16 characters)."""
    return base64.b64encode(rng.randbytes(12)).decode()


def _fwd_client(rng: random.Random) -> tuple[str, int, bool]:
    """End-client address, port, IPv6? (documentation ranges, RFC 5737/3849)."""
    if rng.random() < 0.15:
        ip6 = f"2001:db8::{rng.randrange(1, 0xFFFF):x}:{rng.randrange(1, 0xFFFF):x}"
        return ip6, rng.randrange(1024, 65536), True
    net = rng.choice(("203.0.113", "198.51.100", "192.0.2"))
    return f"{net}.{rng.randrange(1, 255)}", rng.randrange(1024, 65536), False


def _forward_list(rng: random.Random) -> bytes:
    """A Dovecot forward list (tab-separated key=value, already tab-escaped)."""
    pairs = [b"tenant=" + rng.choice((b"acme", b"globex", b"initech", b"umbrella"))]
    if rng.random() < 0.5:
        pairs.append(b"plan=" + rng.choice((b"gold", b"silver", b"free")))
    if rng.random() < 0.3:
        pairs.append(b"region=eu-" + str(rng.randrange(1, 4)).encode())
    return b"\t".join(pairs)


def xtext(data: bytes) -> bytes:
    """RFC 3461 xtext: bytes outside 0x21-0x7E and '+', '=' become +XX (upper-case hex)."""
    out = bytearray()
    for b in data:
        if 0x21 <= b <= 0x7E and b not in (0x2B, 0x3D):
            out.append(b)
        else:
            out += b"+%02X" % b
    return bytes(out)


@dataclass(frozen=True, slots=True)
class SplitPlan:
    """How carrier command lines are segmented."""

    split: float  #: probability that a carrier line is split across two segments
    reorder: float  #: probability that a split line's two halves are written in reverse order


def _carrier(rng: random.Random, plan: SplitPlan, before: bytes, line: bytes, after: bytes,
             cmds: tuple[str, ...], stats: dict[str, int]) -> list[Step]:
    """Client step(s) writing ``before + line + after`` in one write, maybe split inside ``line``."""
    payload = before + line + after
    if rng.random() >= plan.split:
        return [(C, TH_PA, payload, cmds)]
    cut = len(before) + rng.randrange(1, len(line) - 1)
    first, second = payload[:cut], payload[cut:]
    if rng.random() < plan.reorder:
        stats["reordered_lines"] += 1
        return [(R, TH_PA, (first, second), cmds)]
    stats["split_lines"] += 1
    return [(C, TH_PA, first, NO_CMDS), (C, TH_PA, second, cmds)]


def _server_data(data: bytes, acks: bool) -> list[Step]:
    """Backend data cut into MSS segments; the proxy ACKs every second one when ``acks``."""
    steps: list[Step] = []
    for i in range(0, len(data), MSS):
        steps.append((S, TH_PA if i + MSS >= len(data) else TH_ACK, data[i : i + MSS], NO_CMDS))
        if acks and (i // MSS) % 2 == 1:
            steps.append((C, TH_ACK, b"", NO_CMDS))
    return steps


def _client_data(data: bytes) -> list[Step]:
    steps: list[Step] = []
    for i in range(0, len(data), MSS):
        steps.append((C, TH_PA if i + MSS >= len(data) else TH_ACK, data[i : i + MSS], NO_CMDS))
    return steps


_HANDSHAKE: tuple[Step, ...] = (
    (C, TH_SYN, b"", NO_CMDS),
    (S, TH_SYN | TH_ACK, b"", NO_CMDS),
    (C, TH_ACK, b"", NO_CMDS),
)
_CLOSE: tuple[Step, ...] = (
    (C, TH_FIN | TH_ACK, b"", NO_CMDS),
    (S, TH_FIN | TH_ACK, b"", NO_CMDS),
    (C, TH_ACK, b"", NO_CMDS),
)

_IMAP_GREETING = (
    b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN] "
    b"Dovecot ready.\r\n"
)
_IMAP_CAPS = (
    b"IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT THREAD=REFERENCES MULTIAPPEND UNSELECT CHILDREN "
    b"NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH SEARCHRES WITHIN CONTEXT=SEARCH "
    b"LIST-STATUS BINARY MOVE"
)
_IMAP_SELECT_REPLY = (
    b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
    b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted.\r\n"
    b"* 12 EXISTS\r\n* 0 RECENT\r\n* OK [UIDVALIDITY 1700000000] UIDs valid\r\n"
    b"* OK [UIDNEXT 13] Predicted next UID\r\n"
    b"A1 OK [READ-WRITE] Select completed (0.001 + 0.000 secs).\r\n"
)
_USERS = (b"alice", b"bob", b"carol", b"dave", b"erin", b"frank")


def imap_session(rng: random.Random, content: Content, plan: SplitPlan, stats: dict[str, int],
                 rich: bool) -> list[Step]:
    """Dovecot imap-login proxy -> backend: banner, pipelined ``I ID (...)`` + ``L LOGIN``, then mail."""
    ip, port, _ = _fwd_client(rng)
    pairs = [
        ("x-session-id", _sid(rng)),
        ("x-originating-ip", ip),
        ("x-originating-port", str(port)),
        ("x-connected-ip", f"10.1.0.{rng.randrange(1, 250)}"),
        ("x-connected-port", "143"),
        ("x-proxy-ttl", rng.choice(("4", "6"))),
    ]
    if pairs[-1][1] == "6":  # a 2.4 proxy also sends x-client-transport
        pairs.append(("x-client-transport", rng.choice(("TLS", "insecure"))))
    for item in _forward_list(rng).split(b"\t"):
        k, v = item.split(b"=", 1)
        pairs.append(("x-forward-" + k.decode(), v.decode()))
    items = b" ".join(b'"%s" "%s"' % (k.encode(), v.encode()) for k, v in pairs)
    literal = rng.random() < 0.05
    if literal:  # an 8-bit forward value goes out as a synchronizing literal (imap_append_nstring)
        value = "Zürich".encode()
        items += b' "x-forward-city" {%d}\r\n%s' % (len(value), value)
    user = rng.choice(_USERS)
    id_line = b"I ID (" + items + b")\r\n"
    login = b'L LOGIN "%s@example.com" "secret"\r\n' % user
    steps: list[Step] = [*_HANDSHAKE, (S, TH_PA, _IMAP_GREETING, NO_CMDS)]
    steps += _carrier(rng, plan, b"", id_line, login, ("ID",), stats)
    cont = b"+ OK\r\n" if literal else b""  # the backend answers a synchronizing literal even if nobody waits
    steps.append((S, TH_PA, cont + b"* ID NIL\r\nI OK Trusted ID completed.\r\nL OK [CAPABILITY " + _IMAP_CAPS
                  + b"] Logged in\r\n", NO_CMDS))
    if rich:
        steps.append((C, TH_PA, b"A1 SELECT INBOX\r\n", NO_CMDS))
        steps.append((S, TH_PA, _IMAP_SELECT_REPLY, NO_CMDS))
        for n in range(rng.randrange(1, 4)):
            uid = rng.randrange(1, 13)
            steps.append((C, TH_PA, b"A%d UID FETCH %d (BODY.PEEK[])\r\n" % (n + 2, uid), NO_CMDS))
            body = content.body(rng, rng.randrange(500, 6000))
            reply = (b"* %d FETCH (UID %d BODY[] {%d}\r\n%s)\r\n" % (uid, uid, len(body), body)
                     + b"A%d OK Fetch completed (0.001 + 0.000 secs).\r\n" % (n + 2))
            steps += _server_data(reply, acks=True)
    steps.append((C, TH_PA, b"A9 LOGOUT\r\n", NO_CMDS))
    steps.append((S, TH_PA, b"* BYE Logging out\r\nA9 OK Logout completed (0.001 + 0.000 secs).\r\n",
                  NO_CMDS))
    steps += _CLOSE
    return steps


def pop3_session(rng: random.Random, content: Content, plan: SplitPlan, stats: dict[str, int],
                 rich: bool) -> list[Step]:
    """Dovecot pop3-login proxy -> backend: ``+OK [XCLIENT]`` banner, pipelined XCLIENT + USER."""
    ip, port, _ = _fwd_client(rng)
    attrs = [f"ADDR={ip}", f"PORT={port}"]
    v24 = rng.random() < 0.5
    if v24:
        attrs += [f"DESTADDR=10.1.0.{rng.randrange(1, 250)}", "DESTPORT=110"]
    attrs += [f"SESSION={_sid(rng)}", f"TTL={'6' if v24 else '4'}"]
    if v24:
        attrs.append("CLIENT-TRANSPORT=" + rng.choice(("TLS", "insecure")))
    attrs.append("FORWARD=" + base64.b64encode(_forward_list(rng)).decode())
    line = ("XCLIENT " + " ".join(attrs) + "\r\n").encode()
    user = rng.choice(_USERS)
    steps: list[Step] = [*_HANDSHAKE, (S, TH_PA, b"+OK [XCLIENT] Dovecot ready.\r\n", NO_CMDS)]
    steps += _carrier(rng, plan, b"", line, b"USER %s@example.com\r\n" % user, ("XCLIENT",), stats)
    steps.append((S, TH_PA, b"+OK Updated\r\n+OK\r\n", NO_CMDS))
    steps.append((C, TH_PA, b"PASS secret\r\n", NO_CMDS))
    steps.append((S, TH_PA, b"+OK Logged in.\r\n", NO_CMDS))
    if rich:
        body = content.body(rng, rng.randrange(500, 12000))
        steps.append((C, TH_PA, b"STAT\r\n", NO_CMDS))
        steps.append((S, TH_PA, b"+OK 1 %d\r\n" % len(body), NO_CMDS))
        steps.append((C, TH_PA, b"RETR 1\r\n", NO_CMDS))
        steps += _server_data(b"+OK %d octets\r\n%s.\r\n" % (len(body), body), acks=True)
    steps.append((C, TH_PA, b"QUIT\r\n", NO_CMDS))
    steps.append((S, TH_PA, b"+OK Logging out.\r\n", NO_CMDS))
    steps += _CLOSE
    return steps


def _smtp_message(content: Content, rng: random.Random, rich: bool) -> bytes:
    body = content.body(rng, rng.randrange(500, 12000)) if rich else b"Short test message.\r\n"
    return (b"From: <alice@example.com>\r\nTo: <bob@example.net>\r\nSubject: bench\r\n"
            b"Message-ID: <%d@example.com>\r\n\r\n%s.\r\n" % (rng.randrange(1 << 40), body))


def smtp_session(rng: random.Random, content: Content, plan: SplitPlan, stats: dict[str, int], rich: bool,
                 postfix: bool) -> list[Step]:
    """Dovecot submission-login -> submission backend (587), or a relay -> Postfix (25), with XCLIENT."""
    ip, port, v6 = _fwd_client(rng)
    helo = b"client%d.example.org" % rng.randrange(1000)
    if postfix:
        greeting = b"220 mx.example.com ESMTP Postfix\r\n"
        ehlo = (b"250-mx.example.com\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-ETRN\r\n"
                b"250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n"
                b"250-XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT\r\n"
                b"250 SMTPUTF8\r\n")
        addr = ("IPV6:" + ip) if v6 else ip
        lines = [b"XCLIENT NAME=%s ADDR=%s PORT=%d PROTO=ESMTP HELO=%s\r\n"
                 % (helo, addr.encode(), port, helo)]
    else:
        greeting = b"220 backend.example.com Dovecot ready.\r\n"
        ehlo = (b"250-backend.example.com\r\n250-8BITMIME\r\n250-AUTH PLAIN\r\n250-BURL imap\r\n"
                b"250-CHUNKING\r\n250-ENHANCEDSTATUSCODES\r\n250-SIZE\r\n250-PIPELINING\r\n"
                b"250-XCLIENT ADDR PORT PROTO HELO LOGIN SESSION CLIENT-TRANSPORT TTL TIMEOUT DESTNAME "
                b"FORWARD\r\n"
                b"250 SMTPUTF8\r\n")
        addr = ("IPV6:" + ip) if v6 else ip
        head = (b"XCLIENT HELO=%s PROTO=ESMTP LOGIN=%s@example.com TTL=6 PORT=%d ADDR=%s SESSION=%s "
                b"CLIENT-TRANSPORT=insecure" % (helo, rng.choice(_USERS), port, xtext(addr.encode()),
                                                 _sid(rng).encode()))
        forward = b"FORWARD=" + xtext(base64.b64encode(_forward_list(rng)))
        if rng.random() < 0.1:  # a long FORWARD: the proxy flushes the line before it (split at 512, 2.3.17+)
            forward = b"FORWARD=" + xtext(base64.b64encode(_forward_list(rng) + b"\tnote=" + b"x" * 420))
            lines = [head + b"\r\n", b"XCLIENT " + forward + b"\r\n"]
        else:
            lines = [head + b" " + forward + b"\r\n"]
    after = b"".join(lines[1:]) + b"EHLO proxy.example.com\r\n"
    cmds = ("XCLIENT",) * len(lines)
    steps: list[Step] = [*_HANDSHAKE, (S, TH_PA, greeting, NO_CMDS)]
    steps.append((C, TH_PA, b"EHLO proxy.example.com\r\n", NO_CMDS))
    steps.append((S, TH_PA, ehlo, NO_CMDS))
    steps += _carrier(rng, plan, b"", lines[0], after, cmds, stats)
    steps.append((S, TH_PA, greeting + ehlo, NO_CMDS))
    steps.append((C, TH_PA, b"MAIL FROM:<alice@example.com>\r\n", NO_CMDS))
    steps.append((S, TH_PA, b"250 2.1.0 Ok\r\n", NO_CMDS))
    steps.append((C, TH_PA, b"RCPT TO:<bob@example.net>\r\n", NO_CMDS))
    steps.append((S, TH_PA, b"250 2.1.5 Ok\r\n", NO_CMDS))
    steps.append((C, TH_PA, b"DATA\r\n", NO_CMDS))
    steps.append((S, TH_PA, b"354 End data with <CR><LF>.<CR><LF>\r\n", NO_CMDS))
    steps += _client_data(_smtp_message(content, rng, rich))
    steps.append((S, TH_PA, b"250 2.0.0 Ok: queued as %X\r\n" % rng.randrange(1 << 40), NO_CMDS))
    steps.append((C, TH_PA, b"QUIT\r\n", NO_CMDS))
    steps.append((S, TH_PA, b"221 2.0.0 Bye\r\n", NO_CMDS))
    steps += _CLOSE
    return steps


_LMTP_GREETING = b"220 backend.example.com Dovecot ready.\r\n"
_LMTP_LHLO = (b"250-backend.example.com\r\n250-8BITMIME\r\n250-CHUNKING\r\n250-ENHANCEDSTATUSCODES\r\n"
              b"250-PIPELINING\r\n"
              b"250-XCLIENT ADDR PORT PROTO HELO LOGIN SESSION CLIENT-TRANSPORT TTL TIMEOUT DESTNAME\r\n"
              b"250 XRCPTFORWARD\r\n")


def lmtp_session(rng: random.Random, content: Content, plan: SplitPlan, stats: dict[str, int],
                 rich: bool) -> list[Step]:
    """Dovecot LMTP proxy -> backend: LHLO, XCLIENT, LHLO again, RCPT TO ... XRCPTFORWARD=."""
    ip, port, _ = _fwd_client(rng)  # LMTP peers get bare IPv6, no IPV6: prefix (lib-smtp client)
    line = (b"XCLIENT HELO=mx%d.example.net PROTO=ESMTP SESSION=%s TTL=4 PORT=%d ADDR=%s\r\n"
            % (rng.randrange(10), _sid(rng).encode(), port, xtext(ip.encode())))
    steps: list[Step] = [*_HANDSHAKE, (S, TH_PA, _LMTP_GREETING, NO_CMDS)]
    steps.append((C, TH_PA, b"LHLO proxy.example.com\r\n", NO_CMDS))
    steps.append((S, TH_PA, _LMTP_LHLO, NO_CMDS))
    steps += _carrier(rng, plan, b"", line, b"", ("XCLIENT",), stats)
    steps.append((S, TH_PA, _LMTP_GREETING, NO_CMDS))
    steps.append((C, TH_PA, b"LHLO proxy.example.com\r\n", NO_CMDS))
    steps.append((S, TH_PA, _LMTP_LHLO, NO_CMDS))
    rcpt = b"RCPT TO:<%s@example.com> XRCPTFORWARD=%s\r\n" % (rng.choice(_USERS), xtext(_forward_list(rng)))
    steps.append((C, TH_PA, b"MAIL FROM:<sender@example.org>\r\n" + rcpt + b"DATA\r\n", ("XRCPTFORWARD",)))
    steps.append((S, TH_PA, b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n354 OK\r\n", NO_CMDS))
    steps += _client_data(_smtp_message(content, rng, rich))
    steps.append((S, TH_PA, b"250 2.0.0 <bob@example.com> Saved\r\n", NO_CMDS))
    steps.append((C, TH_PA, b"QUIT\r\n", NO_CMDS))
    steps.append((S, TH_PA, b"221 2.0.0 Bye\r\n", NO_CMDS))
    steps += _CLOSE
    return steps


_MAIL_KINDS = (  # (name, server port, weight)
    ("imap", PORT_IMAP, 40),
    ("pop3", PORT_POP3, 25),
    ("submission", PORT_SUBMISSION, 15),
    ("smtp", PORT_SMTP, 5),
    ("lmtp", PORT_LMTP, 15),
)


def mail_session(rng: random.Random, content: Content, plan: SplitPlan, stats: dict[str, int],
                 rich: bool) -> tuple[int, list[Step]]:
    """A random mail session: (server port, steps)."""
    kind, port, _ = rng.choices(_MAIL_KINDS, weights=[k[2] for k in _MAIL_KINDS])[0]
    stats["sessions_" + kind] += 1
    if kind == "imap":
        return port, imap_session(rng, content, plan, stats, rich)
    if kind == "pop3":
        return port, pop3_session(rng, content, plan, stats, rich)
    if kind == "lmtp":
        return port, lmtp_session(rng, content, plan, stats, rich)
    return port, smtp_session(rng, content, plan, stats, rich, postfix=kind == "smtp")


def bulk_steps(rng: random.Random, content: Content, nseg: int) -> Iterator[Step]:
    """An HTTP-like download: request, then ``nseg`` MSS segments, client ACK every second one."""
    yield from _HANDSHAKE
    yield (C, TH_PA, b"GET /files/%d.bin HTTP/1.1\r\nHost: cdn%d.example.net\r\nUser-Agent: bench/1\r\n"
           b"Accept: */*\r\n\r\n" % (rng.randrange(1 << 30), rng.randrange(100)), NO_CMDS)
    pool = content.bulk
    off = rng.randrange(len(pool) - MSS)
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n"
            % (nseg * MSS))
    yield (S, TH_ACK, head + pool[off : off + MSS - len(head)], NO_CMDS)
    for i in range(1, nseg):
        off = (off + 997) % (len(pool) - MSS)
        yield (S, TH_PA if i == nseg - 1 else TH_ACK, pool[off : off + MSS], NO_CMDS)
        if i % 2 == 1:
            yield (C, TH_ACK, b"", NO_CMDS)
    yield from _CLOSE


class UdpTemplates:
    """DNS query/response frames for one client/resolver pair (IPv4, no UDP checksum: RFC 768 allows 0)."""

    def __init__(self, client: bytes, server: bytes) -> None:
        self._c, self._s = client, server
        self._base = (_ipv4_base_sum(client, server, IPPROTO_UDP),
                      _ipv4_base_sum(server, client, IPPROTO_UDP))

    def frame(self, to_server: bool, sport: int, dport: int, payload: bytes, ipid: int) -> bytes:
        src, dst = (self._c, self._s) if to_server else (self._s, self._c)
        smac, dmac = (_MAC_CLIENT, _MAC_SERVER) if to_server else (_MAC_SERVER, _MAC_CLIENT)
        total = IPV4_HLEN + UDP_HLEN + len(payload)
        csum = ~_fold(self._base[0 if to_server else 1] + total + ipid) & 0xFFFF
        ip = struct.pack("!BBHHHBBH", 0x45, 0, total, ipid, IP_DF, IP_TTL, IPPROTO_UDP, csum) + src + dst
        udp = struct.pack("!HHHH", sport, dport, UDP_HLEN + len(payload), 0)
        return dmac + smac + struct.pack("!H", ETHERTYPE_IPV4) + ip + udp + payload


def dns_pair(rng: random.Random, n: int) -> tuple[bytes, bytes]:
    """A DNS A query and its answer (RFC 1035 wire format)."""
    qname = b"".join(bytes([len(p)]) + p for p in (b"host%d" % (n % 5000), b"example", b"net")) + b"\x00"
    qid = rng.randrange(1 << 16)
    query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)
    answer = (struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + qname + struct.pack("!HH", 1, 1)
              + struct.pack("!HHHIH", 0xC00C, 1, 1, 300, 4) + _ip4(0x5DB8D800 + rng.randrange(256)))
    return query, answer


# --------------------------------------------------------------------------------------------
# Capture builders


@dataclass(frozen=True, slots=True)
class NoiseParams:
    """Parameters of the ``noise`` capture (all of them go into the cache key)."""

    size_mb: int = 1024  #: target file size in MB (10**6 bytes); generation stops at the first packet past it
    seed: int = 1  #: master seed
    mail_share: float = 0.05  #: share of bytes in mail sessions
    dns_share: float = 0.01  #: share of bytes in DNS over UDP
    ipv6_share: float = 0.1  #: share of bulk (and mail) flows over IPv6
    bulk_concurrency: int = 64  #: bulk flows open at once
    mail_concurrency: int = 16  #: mail sessions open at once
    split: float = 0.25  #: probability that a carrier line is split across two segments
    reorder: float = 0.5  #: probability that a split line's halves are written in reverse order


@dataclass(frozen=True, slots=True)
class Mail200kParams:
    """Parameters of the ``mail200k`` capture."""

    mail_flows: int = 200_000  #: mail sessions, all open at once
    seed: int = 2  #: master seed
    split: float = 0.1  #: probability that a carrier line is split across two segments
    reorder: float = 0.5  #: probability that a split line's halves are written in reverse order
    dns_every: int = 100  #: one DNS query/answer pair per this many mail packets


@dataclass(frozen=True, slots=True)
class Generated:
    """A generated capture: its files and its manifest."""

    name: str  #: ``noise``, ``mail200k``, ``manyfiles``, or ``<name>-prefix``
    files: tuple[Path, ...]  #: pcap file(s), in order
    manifest_path: Path  #: the manifest JSON
    manifest: dict[str, Any]  #: its content


def cache_key(kind: str, params: object) -> str:
    """Short stable hash of generator version + kind + parameters."""
    blob = json.dumps({"v": GENERATOR_VERSION, "kind": kind, "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _new_stats() -> dict[str, int]:
    keys = ["split_lines", "reordered_lines", "mail_bytes", "dns_bytes", "bulk_bytes", "bulk_flows",
            "bulk_flows_ipv6", "mail_flows_ipv6", "dns_pairs"] + ["sessions_" + k[0] for k in _MAIL_KINDS]
    return dict.fromkeys(keys, 0)


class _Counter:
    """Counts forwarding commands as steps complete them, with the file offset of completion."""

    def __init__(self) -> None:
        self.known = dict.fromkeys(COMMAND_KINDS, 0)
        self.offsets: list[int] = []  # file offset at which each KNOWN_KINDS command became complete

    def note(self, cmds: tuple[str, ...], offset: int) -> None:
        for c in cmds:
            self.known[c] += 1
            if c in KNOWN_KINDS:
                self.offsets.append(offset)


def _finish(tmp: Path, final: Path, manifest: dict[str, Any], offsets: list[int]) -> Generated:
    """Rename the finished capture into place and write its manifest (written last: it marks completion)."""
    os.replace(tmp, final)
    offsets_path = final.with_name(final.name + ".offsets.json")
    offsets_path.write_text(json.dumps(offsets))
    manifest["offsets_file"] = offsets_path.name
    mpath = final.with_name(final.name + ".json")
    mtmp = mpath.with_name(mpath.name + ".tmp")
    mtmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(mtmp, mpath)
    return Generated(manifest["name"], (final,), mpath, manifest)


def _load(name: str, files: Sequence[Path], mpath: Path) -> Generated | None:
    if not mpath.exists() or not all(f.exists() for f in files):
        return None
    manifest = json.loads(mpath.read_text())
    if manifest.get("generator_version") != GENERATOR_VERSION:
        return None
    return Generated(name, tuple(files), mpath, manifest)


def build_noise(params: NoiseParams, cache: Path = DEFAULT_CACHE, log: bool = True) -> Generated:
    """Generate (or reuse) the ``noise`` capture."""
    key = cache_key("noise", asdict(params))
    final = cache / f"noise-{params.size_mb}mb-{key}.pcap"
    mpath = final.with_name(final.name + ".json")
    got = _load("noise", [final], mpath)
    if got is not None:
        return got
    cache.mkdir(parents=True, exist_ok=True)
    if log:
        print(f"[gen] noise {params.size_mb} MB -> {final}", file=sys.stderr, flush=True)
    rng = random.Random(params.seed)
    content = Content(random.Random(params.seed + 1000))
    plan = SplitPlan(params.split, params.reorder)
    stats = _new_stats()
    counter = _Counter()
    target = params.size_mb * MB
    tmp = final.with_name(final.name + ".tmp")
    flow_no = 0

    def new_bulk() -> tuple[TcpFlow, Iterator[Step]]:
        nonlocal flow_no
        flow_no += 1
        nseg = rng.randrange(5, 60) if rng.random() < 0.85 else rng.randrange(200, 3000)
        sport = 32768 + flow_no % 28000
        if rng.random() < params.ipv6_share:
            stats["bulk_flows_ipv6"] += 1
            cl = (b"\xfd\x00" + bytes(6) + flow_no.to_bytes(8, "big"), sport)
            sv = (b"\x20\x01\x0d\xb8\x00\x80" + bytes(9) + bytes([1 + flow_no % 200]),
                  rng.choice((80, 443, 8080)))
        else:
            cl = (_ip4(0xC0A80000 + 1 + flow_no % 65000), sport)
            sv = (_ip4(0x5DB80000 + flow_no % 4000), rng.choice((80, 443, 8080)))
        stats["bulk_flows"] += 1
        return TcpFlow(cl, sv, (rng.getrandbits(32), rng.getrandbits(32))), bulk_steps(rng, content, nseg)

    def new_mail() -> tuple[TcpFlow, list[Step], list[int]]:
        nonlocal flow_no
        flow_no += 1
        port, steps = mail_session(rng, content, plan, stats, rich=True)
        sport = 32768 + flow_no % 28000
        if rng.random() < params.ipv6_share:
            stats["mail_flows_ipv6"] += 1
            cl = (b"\xfd\x00\x00\x00\x00\x00\x00\x10" + flow_no.to_bytes(8, "big"), sport)
            sv = (b"\xfd\x00\x00\x00\x00\x00\x00\x20" + (1 + flow_no % 50).to_bytes(8, "big"), port)
        else:
            cl = (_ip4(0x0A000000 + 1 + flow_no % 60000), sport)
            sv = (_ip4(0x0A010000 + 1 + flow_no % 50), port)
        return TcpFlow(cl, sv, (rng.getrandbits(32), rng.getrandbits(32))), steps, [0]

    dns = UdpTemplates(_ip4(0xC0A80035), _ip4(0x08080808))
    with open(tmp, "wb") as f:
        w = PcapWriter(f)
        bulk = [new_bulk() for _ in range(params.bulk_concurrency)]
        mail = [new_mail() for _ in range(params.mail_concurrency)]
        dns_no = 0
        while w.offset < target:
            total = w.offset
            if stats["mail_bytes"] < params.mail_share * total:
                i = rng.randrange(len(mail))
                mflow, msteps, pos = mail[i]
                d, flags, payload, cmds = msteps[pos[0]]
                before = w.offset
                mflow.emit(w, d, flags, payload)
                stats["mail_bytes"] += w.offset - before
                if cmds:
                    counter.note(cmds, w.offset)
                pos[0] += 1
                if pos[0] == len(msteps):
                    mail[i] = new_mail()
            elif stats["dns_bytes"] < params.dns_share * total:
                dns_no += 1
                q, a = dns_pair(rng, dns_no)
                sport = 1024 + dns_no % 60000
                before = w.offset
                w.add(dns.frame(True, sport, DNS_PORT, q, dns_no & 0xFFFF), b"")
                w.add(dns.frame(False, DNS_PORT, sport, a, (dns_no * 7) & 0xFFFF), b"")
                stats["dns_bytes"] += w.offset - before
                stats["dns_pairs"] += 1
            else:
                i = rng.randrange(len(bulk))
                bflow, it = bulk[i]
                step = next(it, None)
                if step is None:
                    bulk[i] = new_bulk()
                    continue
                before = w.offset
                bflow.emit(w, step[0], step[1], step[2])
                stats["bulk_bytes"] += w.offset - before
        w.flush()
    manifest: dict[str, Any] = {
        "name": "noise",
        "generator_version": GENERATOR_VERSION,
        "params": asdict(params),
        "key": key,
        "bytes": w.offset,
        "packets": w.packets,
        "known": counter.known,
        "known_total": sum(counter.known[k] for k in KNOWN_KINDS),
        "stats": stats,
        "mail_share_actual": round(stats["mail_bytes"] / w.offset, 4),
    }
    return _finish(tmp, final, manifest, counter.offsets)


def build_mail200k(params: Mail200kParams, cache: Path = DEFAULT_CACHE, log: bool = True) -> Generated:
    """Generate (or reuse) the ``mail200k`` capture: all flows open at once, written in phases."""
    key = cache_key("mail200k", asdict(params))
    final = cache / f"mail{params.mail_flows}-{key}.pcap"
    mpath = final.with_name(final.name + ".json")
    got = _load("mail200k", [final], mpath)
    if got is not None:
        return got
    cache.mkdir(parents=True, exist_ok=True)
    if log:
        print(f"[gen] mail200k {params.mail_flows} flows -> {final}", file=sys.stderr, flush=True)
    rng = random.Random(params.seed)
    content = Content(random.Random(params.seed + 1000))
    plan = SplitPlan(params.split, params.reorder)
    stats = _new_stats()
    counter = _Counter()
    flows: list[TcpFlow] = []
    scripts: list[list[Step]] = []
    for n in range(params.mail_flows):
        port, steps = mail_session(rng, content, plan, stats, rich=False)
        cl = (_ip4(0x0A400000 + 1 + n // 40), 33000 + n % 40 * 700 + n // 40 % 700)
        sv = (_ip4(0x0A010000 + 1 + n % 32), port)
        flows.append(TcpFlow(cl, sv, (rng.getrandbits(32), rng.getrandbits(32))))
        scripts.append(steps)
    longest = max(len(s) for s in scripts)
    dns = UdpTemplates(_ip4(0x0A400000), _ip4(0x0A0100FE))
    tmp = final.with_name(final.name + ".tmp")
    dns_no = 0
    mail_steps = 0
    with open(tmp, "wb") as f:
        w = PcapWriter(f)
        for phase in range(longest):
            for flow, steps in zip(flows, scripts):
                if phase >= len(steps):
                    continue
                d, flags, payload, cmds = steps[phase]
                flow.emit(w, d, flags, payload)
                if cmds:
                    counter.note(cmds, w.offset)
                mail_steps += 1
                if mail_steps % params.dns_every == 0:
                    dns_no += 1
                    q, a = dns_pair(rng, dns_no)
                    sport = 1024 + dns_no % 60000
                    before = w.offset
                    w.add(dns.frame(True, sport, DNS_PORT, q, dns_no & 0xFFFF), b"")
                    w.add(dns.frame(False, DNS_PORT, sport, a, (dns_no * 7) & 0xFFFF), b"")
                    stats["dns_bytes"] += w.offset - before
                    stats["dns_pairs"] += 1
        w.flush()
    stats["mail_bytes"] = w.offset - PCAP_HEADER_LEN - stats["dns_bytes"]
    manifest: dict[str, Any] = {
        "name": "mail200k",
        "generator_version": GENERATOR_VERSION,
        "params": asdict(params),
        "key": key,
        "bytes": w.offset,
        "packets": w.packets,
        "known": counter.known,
        "known_total": sum(counter.known[k] for k in KNOWN_KINDS),
        "stats": stats,
        "max_concurrent_flows": params.mail_flows,
    }
    return _finish(tmp, final, manifest, counter.offsets)


def iter_records(path: Path, chunk: int = 8 << 20) -> Iterator[tuple[int, bytes]]:
    """Yield ``(end_offset, record_bytes)`` for every record of a little-endian classic pcap we wrote."""
    with open(path, "rb") as f:
        head = f.read(PCAP_HEADER_LEN)
        if len(head) < PCAP_HEADER_LEN or PCAP_HEADER.unpack(head)[0] != PCAP_MAGIC_US:
            raise ValueError(f"{path}: not a little-endian microsecond pcap written by bench/gen.py")
        buf = b""
        pos = 0
        base = PCAP_HEADER_LEN  # file offset of buf[0]
        unpack = PCAP_RECORD.unpack_from
        while True:
            data = f.read(chunk)
            if not data:
                break
            buf = buf[pos:] + data
            base += pos
            pos = 0
            end = len(buf)
            while pos + PCAP_RECORD_LEN <= end:
                incl = unpack(buf, pos)[2]
                nxt = pos + PCAP_RECORD_LEN + incl
                if nxt > end:
                    break
                yield base + nxt, buf[pos:nxt]
                pos = nxt


def _flow_bucket(rec: bytes, n: int) -> int:
    """File index of a record for the by-flow split: crc32 of the unordered endpoint pair."""
    frame = rec[PCAP_RECORD_LEN:]
    etype = frame[12:14]
    if etype == b"\x08\x00":
        l4 = ETH_HLEN + (frame[ETH_HLEN] & 0x0F) * 4  # IHL counts 32-bit words (RFC 791)
        a = frame[26:30] + frame[l4 : l4 + 2]
        b = frame[30:34] + frame[l4 + 2 : l4 + 4]
    elif etype == b"\x86\xdd":
        a = frame[22:38] + frame[54:56]
        b = frame[38:54] + frame[56:58]
    else:
        return 0
    return zlib.crc32(min(a, b) + max(a, b)) % n


def build_manyfiles(noise: Generated, files: int, split: str, cache: Path = DEFAULT_CACHE,
                    log: bool = True) -> Generated:
    """Split the ``noise`` capture into ``files`` pcaps, by ``flow`` hash or by ``time`` (contiguous)."""
    if split not in ("flow", "time"):
        raise ValueError(f"unknown split mode {split!r} (flow or time)")
    key = cache_key("manyfiles", {"noise": noise.manifest["key"], "files": files, "split": split})
    folder = cache / f"manyfiles-{files}x-{split}-{key}"
    paths = [folder / f"part-{i:03d}.pcap" for i in range(files)]
    mpath = folder.with_name(folder.name + ".json")
    got = _load("manyfiles", paths, mpath)
    if got is not None:
        return got
    if log:
        print(f"[gen] manyfiles {files} x ({split}) -> {folder}", file=sys.stderr, flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    handles = [open(p, "wb") for p in paths]
    try:
        writers = [PcapWriter(h) for h in handles]
        src_bytes = noise.manifest["bytes"]
        per_file = max(1, (src_bytes - PCAP_HEADER_LEN) // files + 1)
        for end, rec in iter_records(noise.files[0]):
            if split == "flow":
                writers[_flow_bucket(rec, files)].add_record(rec)
            else:
                writers[min(files - 1, (end - PCAP_HEADER_LEN - 1) // per_file)].add_record(rec)
        for wr in writers:
            wr.flush()
    finally:
        for h in handles:
            h.close()
    manifest: dict[str, Any] = {
        "name": "manyfiles",
        "generator_version": GENERATOR_VERSION,
        "params": {"files": files, "split": split, "noise": noise.manifest["params"]},
        "key": key,
        "source": noise.files[0].name,
        "bytes": sum(wr.offset for wr in writers),
        "packets": sum(wr.packets for wr in writers),
        "file_bytes": [wr.offset for wr in writers],
        "known": noise.manifest["known"],
        "known_total": noise.manifest["known_total"],
        "stats": noise.manifest["stats"],
    }
    tmp = mpath.with_name(mpath.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, mpath)
    return Generated("manyfiles", tuple(paths), mpath, manifest)


def build_prefix(src: Generated, prefix_mb: int, cache: Path = DEFAULT_CACHE) -> Generated:
    """The first ``prefix_mb`` MB of a single-file capture (whole records), with its known-command count."""
    size = prefix_mb * MB
    final = cache / f"{src.files[0].stem}-prefix{prefix_mb}mb.pcap"
    mpath = final.with_name(final.name + ".json")
    got = _load(src.name + "-prefix", [final], mpath)
    if got is not None:
        return got
    if src.manifest["bytes"] <= size:
        return src
    tmp = final.with_name(final.name + ".tmp")
    with open(tmp, "wb") as f:
        w = PcapWriter(f)
        for end, rec in iter_records(src.files[0]):
            if end > size:
                break
            w.add_record(rec)
        w.flush()
    offsets = json.loads((src.manifest_path.parent / src.manifest["offsets_file"]).read_text())
    manifest: dict[str, Any] = {
        "name": src.name + "-prefix",
        "generator_version": GENERATOR_VERSION,
        "params": {"source_key": src.manifest["key"], "prefix_mb": prefix_mb},
        "key": cache_key("prefix", {"src": src.manifest["key"], "mb": prefix_mb}),
        "source": src.files[0].name,
        "bytes": w.offset,
        "packets": w.packets,
        "known_total": sum(1 for o in offsets if o <= w.offset),
    }
    os.replace(tmp, final)
    mtmp = mpath.with_name(mpath.name + ".tmp")
    mtmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(mtmp, mpath)
    return Generated(manifest["name"], (final,), mpath, manifest)


def main(argv: Iterable[str] | None = None) -> int:
    """``python3 bench/gen.py {noise,mail200k,manyfiles} [options]``: generate and print the path(s)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("capture", choices=("noise", "mail200k", "manyfiles"))
    ap.add_argument("--size-mb", type=int, default=NoiseParams().size_mb)
    ap.add_argument("--mail-flows", type=int, default=Mail200kParams().mail_flows)
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--split", choices=("flow", "time"), default="flow")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = ap.parse_args(list(argv) if argv is not None else None)
    if args.capture == "mail200k":
        g = build_mail200k(Mail200kParams(mail_flows=args.mail_flows), args.cache)
    else:
        g = build_noise(NoiseParams(size_mb=args.size_mb), args.cache)
        if args.capture == "manyfiles":
            g = build_manyfiles(g, args.files, args.split, args.cache)
    for p in g.files:
        print(p)
    summary = {k: g.manifest[k] for k in ("bytes", "packets", "known", "known_total")}
    print(json.dumps(summary), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
