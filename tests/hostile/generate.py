"""Deterministic generator of hostile capture files (issue 7).

    python tests/hostile/generate.py OUTDIR [--profile ci|long] [--only NAME ...] [--list]

Every case is a function of the profile only (fixed timestamps, addresses, ISNs, seeds),
so two runs write byte-identical files. Nothing here imports the analyzer, scapy or
dpkt: packets are built from ``struct`` templates, which is what makes the "million"
cases cheap (a tiny flow is two slices and two ``pack`` calls).

Strategy: a :class:`Case` names a builder that yields the file's bytes in chunks
(``write_case`` streams them to disk, so a 100 MB case never sits in memory), and
states what a correct analyzer must do with it:

* ``unusable``: the input cannot be read at all, the CLI must exit 2 with one line;
* ``expect``: evidence the report must hold, as ``kind:code`` strings checked against
  ``report.json`` by :func:`missing_evidence` (``damage:<code>`` in
  ``captures[].damage``, ``decode:<code>`` in ``captures[].decode_issues``, ``gap`` in a
  flow's ``gaps``, ``problem:<code>`` in a record's ``problems``, ``anomaly:<code>`` in a
  finding (its rule id or one of its facts, e.g. ``protocol.parser_anomaly`` with
  ``code=line_too_long``), ``error`` for ``captures[].error``, ``dropped`` for a per-flow
  counter of segments the reassembler threw away, ``flows:<n>`` / ``bytes_to_server:<n>``
  for exact counts). Alternatives are written ``a|b``.

The truncation family is derived from small valid captures: the generator knows
where every header starts and ends and cuts the file at each boundary and one byte
either side, classifying each cut (inside the file header: unusable; on a record
boundary: a valid shorter file; inside a record: ``truncated_*`` damage).
"""

from __future__ import annotations

import argparse
import base64
import gzip
import io
import random
import struct
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

# ----------------------------------------------------------------------------- constants

PCAP_MAGIC_US = 0xA1B2C3D4  # pcap-savefile(5): microsecond timestamps
PCAP_HEADER_LEN = 24  # pcap-savefile(5): file header
PCAP_RECORD_LEN = 16  # pcap-savefile(5): record header
PCAPNG_SHB = 0x0A0D0D0A  # pcapng draft section 4.1: Section Header Block type
PCAPNG_IDB = 0x00000001  # pcapng draft section 4.2: Interface Description Block
PCAPNG_SPB = 0x00000003  # pcapng draft section 4.4: Simple Packet Block
PCAPNG_EPB = 0x00000006  # pcapng draft section 4.3: Enhanced Packet Block
PCAPNG_BOM = 0x1A2B3C4D  # pcapng draft section 4.1: byte-order magic
OPT_IF_TSRESOL = 9  # pcapng draft section 4.2: if_tsresol
OPT_IF_TSOFFSET = 14  # pcapng draft section 4.2: if_tsoffset
OPT_ENDOFOPT = 0  # pcapng draft section 3.5: opt_endofopt
LINKTYPE_ETHERNET = 1  # tcpdump.org/linktypes.html
LINKTYPE_RAW = 101  # tcpdump.org/linktypes.html: raw IPv4/IPv6
LINKTYPE_USER0 = 147  # tcpdump.org/linktypes.html: DLT_USER0, never decoded by the analyzer
ETHERTYPE_IPV4 = 0x0800  # IEEE registry
ETHERTYPE_IPV6 = 0x86DD  # IEEE registry
IPPROTO_TCP = 6  # IANA protocol numbers
IPV6_HOP_BY_HOP = 0  # RFC 8200 section 4.3
IPV6_DEST_OPTS = 60  # RFC 8200 section 4.6
IPV4_DF = 0x4000  # RFC 791: don't fragment
IPV4_MF = 0x2000  # RFC 791: more fragments
TH_FIN = 0x01  # RFC 9293 section 3.1
TH_SYN = 0x02
TH_RST = 0x04
TH_PSH = 0x08
TH_ACK = 0x10
TH_URG = 0x20
SEQ_MOD = 1 << 32  # RFC 9293 section 3.4: sequence numbers are modulo 2**32
SEQ_HALF = 1 << 31  # RFC 1982: a jump of 2**31 is undefined in serial-number arithmetic
MAX_SEGMENT = 65000  # our bulk segment size: fits the 16-bit IPv4 total length (RFC 791)
BASE_SEC = 1_700_000_000  # fixed timestamp base: 2023-11-14 22:13:20 UTC
WRITE_CHUNK = 4 * 1024 * 1024  # bytes buffered before a write

IMAP_PORT = 143  # RFC 3501 / config.MAIL_PORTS
POP3_PORT = 110  # RFC 1939 / config.MAIL_PORTS
SMTP_PORT = 25  # RFC 5321 / config.MAIL_PORTS
NON_MAIL_PORT = 40000  # not in config.MAIL_PORTS

CLIENT_IP = bytes((192, 0, 2, 10))  # RFC 5737 TEST-NET-1
SERVER_IP = bytes((198, 51, 100, 20))  # RFC 5737 TEST-NET-2
CLIENT6 = bytes.fromhex("20010db8000000000000000000000010")  # RFC 3849 documentation prefix
SERVER6 = bytes.fromhex("20010db8000000000000000000000020")
MAC_C = bytes.fromhex("020000000001")  # locally administered
MAC_S = bytes.fromhex("020000000002")
ISN_C = 1_000_000  # fixed initial sequence numbers
ISN_S = 5_000_000

# ----------------------------------------------------------------------------- profiles


@dataclass(frozen=True, slots=True)
class Scale:
    """Sizes of the big cases: ``ci`` keeps the suite fast, ``long`` is the issue's full size."""

    name: str
    flows: int  #: "a million tiny flows"
    ooo_segments: int  #: "one flow with a million out-of-order segments"
    zero_records: int  #: records with caplen 0
    forward_bytes: int  #: size of the base64 FORWARD value ("100 MB")
    endless_bytes: int  #: the line without CRLF
    xclient_repeats: int  #: "XCLIENT repeated 100,000 times"
    id_depth: int  #: "an ID list nested 100,000 deep"
    gzip_zeros: int  #: decompressed size of the gzip bomb
    fragments: int  #: never-completed IPv4 fragments
    port_reuse: int  #: connections on one 4-tuple


PROFILES: dict[str, Scale] = {
    "ci": Scale(
        "ci",
        flows=150_000,
        ooo_segments=150_000,
        zero_records=150_000,
        forward_bytes=100 << 20,
        endless_bytes=64 << 20,
        xclient_repeats=100_000,
        id_depth=100_000,
        gzip_zeros=32 << 20,
        fragments=50_000,
        port_reuse=5_000,
    ),
    "long": Scale(
        "long",
        flows=1_000_000,
        ooo_segments=1_000_000,
        zero_records=1_000_000,
        forward_bytes=100 << 20,
        endless_bytes=256 << 20,
        xclient_repeats=100_000,
        id_depth=100_000,
        gzip_zeros=256 << 20,
        fragments=500_000,
        port_reuse=50_000,
    ),
}

# ----------------------------------------------------------------------------- packet templates


def ipv4(
    src: bytes,
    dst: bytes,
    payload: bytes,
    *,
    proto: int = IPPROTO_TCP,
    ihl: int = 5,
    total: int | None = None,
    ident: int = 0,
    frag: int = IPV4_DF,
    options: bytes = b"",
    ttl: int = 64,
) -> bytes:
    """An IPv4 header (checksum 0: the analyzer does not verify it) followed by ``payload``."""
    if total is None:
        total = 20 + len(options) + len(payload)
    head = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | (ihl & 0x0F), 0, total & 0xFFFF, ident & 0xFFFF, frag, ttl, proto, 0, src, dst
    )
    return head + options + payload


def ipv6(src: bytes, dst: bytes, payload: bytes, *, nh: int = IPPROTO_TCP, plen: int | None = None) -> bytes:
    """An IPv6 header followed by ``payload`` (extension headers included in it)."""
    n = len(payload) if plen is None else plen
    return struct.pack("!IHBB16s16s", 0x60000000, n & 0xFFFF, nh, 64, src, dst) + payload


def tcp(
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    payload: bytes = b"",
    *,
    doff: int = 5,
    options: bytes = b"",
) -> bytes:
    """A TCP header (checksum 0) followed by ``payload``; ``doff`` is written as given."""
    return (
        struct.pack(
            "!HHIIBBHHH",
            sport,
            dport,
            seq % SEQ_MOD,
            ack % SEQ_MOD,
            (doff & 0x0F) << 4,
            flags & 0xFF,
            65535,
            0,
            0,
        )
        + options
        + payload
    )


def eth(payload: bytes, ethertype: int = ETHERTYPE_IPV4, *, to_server: bool = True) -> bytes:
    """An Ethernet II frame."""
    dst, src = (MAC_S, MAC_C) if to_server else (MAC_C, MAC_S)
    return dst + src + struct.pack("!H", ethertype) + payload


def tcp4_frame(
    c2s: bool,
    seq: int,
    ack: int,
    flags: int,
    payload: bytes = b"",
    *,
    cport: int = 50000,
    sport: int = IMAP_PORT,
    client: bytes = CLIENT_IP,
    server: bytes = SERVER_IP,
) -> bytes:
    """Ethernet/IPv4/TCP frame of a client (``c2s``) or server segment."""
    if c2s:
        return eth(ipv4(client, server, tcp(cport, sport, seq, ack, flags, payload)))
    return eth(ipv4(server, client, tcp(sport, cport, seq, ack, flags, payload)), to_server=False)


# ----------------------------------------------------------------------------- file writers

#: One packet for a writer: (timestamp in ns, frame bytes).
Pkt = tuple[int, bytes]


def pcap_header(
    linktype: int = LINKTYPE_ETHERNET, snaplen: int = 262144, major: int = 2, minor: int = 4
) -> bytes:
    """Little-endian microsecond pcap file header."""
    return struct.pack("<IHHiIII", PCAP_MAGIC_US, major, minor, 0, 0, snaplen, linktype)


def pcap_record(ts_ns: int, data: bytes, *, caplen: int | None = None, wirelen: int | None = None) -> bytes:
    """One pcap record; ``caplen``/``wirelen`` default to ``len(data)`` and may lie."""
    sec, ns = divmod(ts_ns, 10**9)
    cap = len(data) if caplen is None else caplen
    wire = len(data) if wirelen is None else wirelen
    return struct.pack("<IIII", sec & 0xFFFFFFFF, ns // 1000, cap & 0xFFFFFFFF, wire & 0xFFFFFFFF) + data


def pcap_stream(packets: Iterable[Pkt], linktype: int = LINKTYPE_ETHERNET) -> Iterator[bytes]:
    """A classic pcap file as chunks."""
    yield pcap_header(linktype)
    rec = struct.Struct("<IIII").pack
    buf: list[bytes] = []
    size = 0
    for ts, data in packets:
        sec, ns = divmod(ts, 10**9)
        n = len(data)
        buf.append(rec(sec, ns // 1000, n, n))
        buf.append(data)
        size += n + 16
        if size >= WRITE_CHUNK:
            yield b"".join(buf)
            buf.clear()
            size = 0
    if buf:
        yield b"".join(buf)


def pad4(data: bytes) -> bytes:
    """Zero-pad to a multiple of 4 bytes."""
    return data + b"\x00" * (-len(data) % 4)


def pcapng_block(btype: int, body: bytes, *, length: int | None = None, trailer: int | None = None) -> bytes:
    """A little-endian pcapng block; ``length``/``trailer`` override the computed total length."""
    body = pad4(body)
    total = 12 + len(body)
    return (
        struct.pack("<II", btype, total if length is None else length & 0xFFFFFFFF)
        + body
        + struct.pack("<I", total if trailer is None else trailer & 0xFFFFFFFF)
    )


def pcapng_shb(major: int = 1, bom: int = PCAPNG_BOM) -> bytes:
    """A Section Header Block (section length unknown)."""
    return pcapng_block(PCAPNG_SHB, struct.pack("<IHHq", bom, major, 0, -1))


def pcapng_option(code: int, value: bytes, *, length: int | None = None) -> bytes:
    """One option TLV (``length`` may lie)."""
    return struct.pack("<HH", code, len(value) if length is None else length) + pad4(value)


def pcapng_idb(linktype: int = LINKTYPE_ETHERNET, snaplen: int = 262144, options: bytes = b"") -> bytes:
    """An Interface Description Block with nanosecond timestamps unless ``options`` say otherwise."""
    if not options:
        options = pcapng_option(OPT_IF_TSRESOL, b"\x09") + pcapng_option(OPT_ENDOFOPT, b"")
    return pcapng_block(PCAPNG_IDB, struct.pack("<HHI", linktype, 0, snaplen) + options)


def pcapng_epb(
    ts: int, data: bytes, *, iface: int = 0, caplen: int | None = None, wirelen: int | None = None
) -> bytes:
    """An Enhanced Packet Block (timestamp in interface units)."""
    cap = len(data) if caplen is None else caplen
    wire = len(data) if wirelen is None else wirelen
    return pcapng_block(
        PCAPNG_EPB,
        struct.pack(
            "<IIIII", iface, (ts >> 32) & 0xFFFFFFFF, ts & 0xFFFFFFFF, cap & 0xFFFFFFFF, wire & 0xFFFFFFFF
        )
        + data,
    )


def pcapng_stream(packets: Iterable[Pkt], linktype: int = LINKTYPE_ETHERNET) -> Iterator[bytes]:
    """A one-section, one-interface pcapng file as chunks."""
    yield pcapng_shb() + pcapng_idb(linktype)
    buf: list[bytes] = []
    size = 0
    for ts, data in packets:
        blk = pcapng_epb(ts, data)
        buf.append(blk)
        size += len(blk)
        if size >= WRITE_CHUNK:
            yield b"".join(buf)
            buf.clear()
            size = 0
    if buf:
        yield b"".join(buf)


# ----------------------------------------------------------------------------- conversations


class Conv:
    """One IPv4 TCP connection; methods return timestamped frames and advance the sequence numbers."""

    def __init__(self, sport: int = IMAP_PORT, cport: int = 50000, ts_ns: int = BASE_SEC * 10**9) -> None:
        self.sport = sport
        self.cport = cport
        self.cseq = ISN_C
        self.sseq = ISN_S
        self.ts = ts_ns

    def _tick(self) -> int:
        self.ts += 1_000_000  # 1 ms between packets
        return self.ts

    def handshake(self) -> list[Pkt]:
        """SYN, SYN-ACK, ACK."""
        out = [
            (self._tick(), tcp4_frame(True, self.cseq, 0, TH_SYN, cport=self.cport, sport=self.sport)),
            (
                self._tick(),
                tcp4_frame(
                    False, self.sseq, self.cseq + 1, TH_SYN | TH_ACK, cport=self.cport, sport=self.sport
                ),
            ),
        ]
        self.cseq += 1
        self.sseq += 1
        out.append(
            (self._tick(), tcp4_frame(True, self.cseq, self.sseq, TH_ACK, cport=self.cport, sport=self.sport))
        )
        return out

    def client(self, data: bytes, seg: int = 1400) -> list[Pkt]:
        """Client data in segments of ``seg`` bytes."""
        out = []
        for i in range(0, len(data), seg):
            piece = data[i : i + seg]
            out.append(
                (
                    self._tick(),
                    tcp4_frame(
                        True, self.cseq, self.sseq, TH_ACK | TH_PSH, piece, cport=self.cport, sport=self.sport
                    ),
                )
            )
            self.cseq += len(piece)
        return out

    def server(self, data: bytes, seg: int = 1400) -> list[Pkt]:
        """Server data in segments of ``seg`` bytes."""
        out = []
        for i in range(0, len(data), seg):
            piece = data[i : i + seg]
            out.append(
                (
                    self._tick(),
                    tcp4_frame(
                        False,
                        self.sseq,
                        self.cseq,
                        TH_ACK | TH_PSH,
                        piece,
                        cport=self.cport,
                        sport=self.sport,
                    ),
                )
            )
            self.sseq += len(piece)
        return out

    def client_stream(self, chunks: Iterable[bytes]) -> Iterator[Pkt]:
        """Client data from an iterable of segment payloads (lazy: for the big cases)."""
        for piece in chunks:
            yield (
                self._tick(),
                tcp4_frame(
                    True, self.cseq, self.sseq, TH_ACK | TH_PSH, piece, cport=self.cport, sport=self.sport
                ),
            )
            self.cseq += len(piece)

    def close(self) -> list[Pkt]:
        """FIN from both sides."""
        out = [
            (
                self._tick(),
                tcp4_frame(True, self.cseq, self.sseq, TH_FIN | TH_ACK, cport=self.cport, sport=self.sport),
            ),
            (
                self._tick(),
                tcp4_frame(
                    False, self.sseq, self.cseq + 1, TH_FIN | TH_ACK, cport=self.cport, sport=self.sport
                ),
            ),
        ]
        self.cseq += 1
        self.sseq += 1
        return out


IMAP_GREETING = b"* OK [CAPABILITY IMAP4rev1 ID LITERAL+] ready\r\n"
IMAP_ID = (
    b'a1 ID ("x-originating-ip" "203.0.113.7" "x-originating-port" "51234" '
    b'"x-connected-ip" "198.51.100.20" "x-connected-port" "143" "x-proxy-ttl" "5" '
    b'"x-session-id" "AAAAAAAAAAAAAAAAAAAAAA")\r\n'
)
IMAP_ID_OK = b"* ID NIL\r\na1 OK ID completed\r\n"


def imap_session() -> list[Pkt]:
    """A small valid IMAP proxy session: handshake, greeting, ID, reply, logout, close."""
    c = Conv()
    pk = c.handshake()
    pk += c.server(IMAP_GREETING)
    pk += c.client(IMAP_ID)
    pk += c.server(IMAP_ID_OK)
    pk += c.client(b"a2 LOGOUT\r\n")
    pk += c.server(b"* BYE bye\r\na2 OK done\r\n")
    pk += c.close()
    return pk


def chunked(data: bytes) -> Iterator[bytes]:
    """One chunk (for builders whose file is small)."""
    yield data


# ----------------------------------------------------------------------------- cases


@dataclass(frozen=True, slots=True)
class Case:
    """One hostile capture and what a correct analyzer must make of it."""

    name: str  #: file stem; also the pytest id
    doc: str  #: one line: what is hostile about it
    build: Callable[[Scale], Iterable[bytes]]  #: the file's bytes, in chunks
    suffix: str = ".pcap"  #: file name suffix (the CLI does not look at it for files)
    unusable: bool = False  #: exit 2 with one line on stderr expected
    expect: tuple[str, ...] = ()  #: report.json evidence, see the module docstring
    size_basis: str = "file"  #: "file" or "gunzip": which size the time bound is per MB of
    big: bool = False  #: heavy (many MB or many packets): scheduled first
    tags: tuple[str, ...] = field(default=())  #: family names (truncation, pcapng, ip, tcp, imap, ...)


CASES: dict[str, Case] = {}


def case(
    name: str, doc: str, **kw: Any
) -> Callable[[Callable[[Scale], Iterable[bytes]]], Callable[[Scale], Iterable[bytes]]]:
    """Register a builder as a case."""

    def deco(fn: Callable[[Scale], Iterable[bytes]]) -> Callable[[Scale], Iterable[bytes]]:
        if name in CASES:
            raise ValueError(f"duplicate case {name}")
        CASES[name] = Case(name, doc, fn, **kw)
        return fn

    return deco


# -- truncations at every header boundary ---------------------------------------------------


def _pcap_base() -> tuple[bytes, list[tuple[int, str]]]:
    """The small valid pcap and its header boundaries (offset, what starts there)."""
    pk = imap_session()[:4]  # handshake and greeting: every header kind, short
    out = [pcap_header()]
    marks: list[tuple[int, str]] = [(0, "file"), (4, "file.version"), (PCAP_HEADER_LEN, "record")]
    pos = PCAP_HEADER_LEN
    for ts, data in pk:
        out.append(pcap_record(ts, data))
        marks += [
            (pos + PCAP_RECORD_LEN, "data"),
            (pos + PCAP_RECORD_LEN + 14, "data.ip"),
            (pos + PCAP_RECORD_LEN + 34, "data.tcp"),
            (pos + PCAP_RECORD_LEN + 54, "data.payload"),
        ]
        pos += PCAP_RECORD_LEN + len(data)
        marks.append((pos, "record"))
    return b"".join(out), marks


def _pcapng_base() -> tuple[bytes, list[tuple[int, str]]]:
    """The small valid pcapng and its block boundaries."""
    pk = imap_session()[:4]
    shb = pcapng_shb()
    idb = pcapng_idb()
    out = [shb, idb]
    marks: list[tuple[int, str]] = [(0, "file"), (8, "file.bom"), (len(shb), "block.idb")]
    pos = len(shb) + len(idb)
    marks.append((pos, "block"))
    for ts, data in pk:
        blk = pcapng_epb(ts, data)
        out.append(blk)
        marks += [(pos + 8, "block.body"), (pos + 28, "block.data"), (pos + len(blk) - 4, "block.trailer")]
        pos += len(blk)
        marks.append((pos, "block"))
    return b"".join(out), marks


def _register_truncations() -> None:
    """One case per cut: at every header boundary of the base files and one byte either side.

    The cuts one byte either side of a boundary are tagged ``edge``; the CI profile runs
    only the cuts on the boundaries themselves.
    """
    clean_kinds = {"record", "block", "block.idb"}  # a cut here leaves a valid, shorter file
    for fmt, base_fn, header_len in (("pcap", _pcap_base, PCAP_HEADER_LEN), ("pcapng", _pcapng_base, 28)):
        data, marks = base_fn()
        boundaries = {m for m, _ in marks}
        clean = {m for m, k in marks if k in clean_kinds}
        cuts = sorted({c for m in boundaries for c in (m - 1, m, m + 1) if 0 <= c < len(data)})
        for cut in cuts:
            kw: dict[str, Any]
            if cut < header_len:  # inside the file header / first section header
                kw = {"unusable": True, "expect": ("error",)}
            elif cut in clean:
                kw = {"expect": ()}
            elif fmt == "pcap":
                kw = {"expect": ("damage:truncated_header|truncated_record",)}
            else:
                kw = {"expect": ("damage:truncated_block",)}
            blob = data[:cut]

            def build(scale: Scale, blob: bytes = blob) -> Iterable[bytes]:
                return chunked(blob)

            name = f"trunc_{fmt}_{cut:04d}"
            tags = ("truncation",) if cut in boundaries else ("truncation", "edge")
            CASES[name] = Case(
                name, f"{fmt} file cut at byte {cut} of {len(data)}", build, suffix=f".{fmt}", tags=tags, **kw
            )


_register_truncations()


# -- record and block length lies ------------------------------------------------------------


@case(
    "pcap_caplen_gt_snaplen",
    "records longer than the file header's snaplen (96)",
    expect=("damage:caplen_exceeds_snaplen",),
    tags=("pcap",),
)
def _caplen_gt_snaplen(scale: Scale) -> Iterable[bytes]:
    out = [pcap_header(snaplen=96)]
    out += [pcap_record(ts, d) for ts, d in imap_session()]
    return chunked(b"".join(out))


@case(
    "pcap_caplen_gt_file",
    "the last record claims 60000 bytes, the file ends after 40",
    expect=("damage:truncated_record",),
    tags=("pcap",),
)
def _caplen_gt_file(scale: Scale) -> Iterable[bytes]:
    pk = imap_session()
    out = [pcap_header()] + [pcap_record(ts, d) for ts, d in pk]
    out.append(pcap_record(pk[-1][0] + 1000, pk[-1][1][:40], caplen=60000, wirelen=60000))
    return chunked(b"".join(out))


@case(
    "pcap_caplen_zero",
    "records with caplen 0 (and wirelen 60) between real ones",
    expect=("decode:truncated_link",),
    tags=("pcap",),
)
def _caplen_zero(scale: Scale) -> Iterable[bytes]:
    out = [pcap_header()]
    for ts, d in imap_session():
        out.append(pcap_record(ts, d))
        out.append(pcap_record(ts + 1, b"", caplen=0, wirelen=60))
    return chunked(b"".join(out))


@case(
    "pcap_caplen_4g",
    "a record header claiming caplen 0xFFFFFFFF in the middle of the file",
    expect=("damage:caplen_too_large", "damage:resynced"),
    tags=("pcap",),
)
def _caplen_4g(scale: Scale) -> Iterable[bytes]:
    pk = imap_session()
    out = [pcap_header()] + [pcap_record(ts, d) for ts, d in pk[:4]]
    out.append(struct.pack("<IIII", BASE_SEC, 0, 0xFFFFFFFF, 0xFFFFFFFF) + b"\xee" * 100)
    out += [pcap_record(ts, d) for ts, d in pk[4:]]
    return chunked(b"".join(out))


@case(
    "pcap_wirelen_4g",
    "a record whose original length is 0xFFFFFFFF (no link carries 4 GB frames)",
    expect=("damage:implausible_wirelen",),
    tags=("pcap",),
)
def _wirelen_4g(scale: Scale) -> Iterable[bytes]:
    pk = imap_session()
    out = [pcap_header()] + [pcap_record(ts, d) for ts, d in pk[:4]]
    out.append(pcap_record(pk[4][0], pk[4][1], wirelen=0xFFFFFFFF))
    out += [pcap_record(ts, d) for ts, d in pk[5:]]
    return chunked(b"".join(out))


@case(
    "pcap_caplen_gt_wirelen", "caplen 90 > original length 60", expect=("damage:bad_caplen",), tags=("pcap",)
)
def _caplen_gt_wirelen(scale: Scale) -> Iterable[bytes]:
    pk = imap_session()
    out = [pcap_header()] + [pcap_record(ts, d) for ts, d in pk[:3]]
    out.append(pcap_record(pk[3][0], pk[3][1], wirelen=60))
    out += [pcap_record(ts, d) for ts, d in pk[4:]]
    return chunked(b"".join(out))


@case(
    "pcap_snaplen_4g_header",
    "file header snaplen 0xFFFFFFFF and a record claiming 60 MB (file ends first)",
    expect=("damage:truncated_record",),
    tags=("pcap",),
)
def _snaplen_4g(scale: Scale) -> Iterable[bytes]:
    pk = imap_session()
    out = [pcap_header(snaplen=0xFFFFFFFF)] + [pcap_record(ts, d) for ts, d in pk]
    out.append(struct.pack("<IIII", BASE_SEC + 1, 0, 60 << 20, 60 << 20) + b"\x00" * 1000)
    return chunked(b"".join(out))


@case("pcap_version_1", "pcap major version 1 (undefined)", unusable=True, expect=("error",), tags=("pcap",))
def _pcap_v1(scale: Scale) -> Iterable[bytes]:
    return chunked(pcap_header(major=1) + b"".join(pcap_record(ts, d) for ts, d in imap_session()))


@case(
    "pcap_garbage_between_records",
    "64 KiB of random bytes between two records (resync)",
    expect=("damage:resynced|trailing_garbage",),
    tags=("pcap",),
)
def _garbage_between(scale: Scale) -> Iterable[bytes]:
    rnd = random.Random(7)
    pk = imap_session()
    out = [pcap_header()] + [pcap_record(ts, d) for ts, d in pk[:4]]
    out.append(struct.pack("<IIII", BASE_SEC, 0, 0x7FFFFFFF, 10))
    out.append(rnd.randbytes(64 * 1024))
    out += [pcap_record(ts, d) for ts, d in pk[4:]]
    return chunked(b"".join(out))


@case(
    "pcap_zero_records",
    "a flood of records with caplen 0 and wirelen 0 (per-record cost)",
    expect=("decode:truncated_link",),
    tags=("pcap", "flood"),
)
def _zero_records(scale: Scale) -> Iterator[bytes]:
    yield pcap_header()
    rec = struct.pack("<IIII", BASE_SEC, 0, 0, 0)
    left = scale.zero_records
    per = WRITE_CHUNK // 16
    while left > 0:
        n = min(per, left)
        yield rec * n
        left -= n


@case(
    "gzip_bomb",
    "a small gzip file that inflates to tens of MB of zero-length records",
    suffix=".pcap.gz",
    expect=("decode:truncated_link",),
    size_basis="gunzip",
    tags=("pcap", "flood"),
)
def _gzip_bomb(scale: Scale) -> Iterator[bytes]:
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    yield comp.compress(pcap_header())
    zeros = b"\x00" * (1 << 20)
    for _ in range(scale.gzip_zeros >> 20):
        piece = comp.compress(zeros)
        if piece:
            yield piece
    yield comp.flush()


@case(
    "gzip_truncated",
    "a gzip capture cut in the middle of the deflate stream",
    suffix=".pcap.gz",
    expect=("damage:gzip_error",),
    tags=("pcap",),
)
def _gzip_truncated(scale: Scale) -> Iterable[bytes]:
    raw = pcap_header() + b"".join(pcap_record(ts, d) for ts, d in imap_session() * 20)
    gz = gzip.compress(raw, mtime=0)
    return chunked(gz[: len(gz) * 2 // 3])


# -- pcapng block lies -----------------------------------------------------------------------


def _ng_packets() -> list[bytes]:
    return [pcapng_epb(ts, d) for ts, d in imap_session()]


def _ng(mid: bytes, *, at: int = 4) -> bytes:
    blocks = _ng_packets()
    return pcapng_shb() + pcapng_idb() + b"".join(blocks[:at]) + mid + b"".join(blocks[at:])


@case(
    "pcapng_block_len_huge",
    "a block claiming length 0xFFFFFFF0",
    suffix=".pcapng",
    expect=("damage:bad_block_length",),
    tags=("pcapng",),
)
def _ng_huge(scale: Scale) -> Iterable[bytes]:
    return chunked(_ng(struct.pack("<II", PCAPNG_EPB, 0xFFFFFFF0) + b"\x00" * 64))


@case(
    "pcapng_block_len_misaligned",
    "a block length not a multiple of 4 (0x5D)",
    suffix=".pcapng",
    expect=("damage:bad_block_length",),
    tags=("pcapng",),
)
def _ng_misaligned(scale: Scale) -> Iterable[bytes]:
    return chunked(_ng(pcapng_block(PCAPNG_EPB, b"\x00" * 80, length=0x5D, trailer=0x5D)))


@case(
    "pcapng_block_len_zero",
    "a block claiming length 0 (a reader that trusts it never advances)",
    suffix=".pcapng",
    expect=("damage:bad_block_length",),
    tags=("pcapng",),
)
def _ng_zero(scale: Scale) -> Iterable[bytes]:
    return chunked(_ng(struct.pack("<II", PCAPNG_EPB, 0) + b"\x00" * 24))


@case(
    "pcapng_block_len_small",
    "an EPB claiming length 12 (below its 32-byte minimum)",
    suffix=".pcapng",
    expect=("damage:bad_block_length",),
    tags=("pcapng",),
)
def _ng_small(scale: Scale) -> Iterable[bytes]:
    return chunked(_ng(struct.pack("<III", PCAPNG_EPB, 12, 12)))


@case(
    "pcapng_trailer_mismatch",
    "a block whose trailing length differs from its leading one",
    suffix=".pcapng",
    expect=("damage:bad_block_trailer",),
    tags=("pcapng",),
)
def _ng_trailer(scale: Scale) -> Iterable[bytes]:
    ts, d = imap_session()[3]
    blk = bytearray(pcapng_epb(ts, d))
    struct.pack_into("<I", blk, len(blk) - 4, 0x1234)
    return chunked(_ng(bytes(blk)))


@case(
    "pcapng_epb_caplen_past_block",
    "an EPB whose caplen runs 1000 bytes past its own block",
    suffix=".pcapng",
    expect=("damage:caplen_exceeds_block",),
    tags=("pcapng",),
)
def _ng_caplen(scale: Scale) -> Iterable[bytes]:
    ts, d = imap_session()[3]
    return chunked(_ng(pcapng_epb(ts, d, caplen=len(d) + 1000)))


@case(
    "pcapng_unknown_interface",
    "EPBs naming interface 7 of a section that defines one",
    suffix=".pcapng",
    expect=("damage:unknown_interface",),
    tags=("pcapng",),
)
def _ng_iface(scale: Scale) -> Iterable[bytes]:
    ts, d = imap_session()[3]
    return chunked(_ng(pcapng_epb(ts, d, iface=7)))


@case(
    "pcapng_spb_without_idb",
    "a section with a Simple Packet Block and no interface",
    suffix=".pcapng",
    expect=("damage:unknown_interface",),
    tags=("pcapng",),
)
def _ng_spb(scale: Scale) -> Iterable[bytes]:
    d = imap_session()[3][1]
    spb = pcapng_block(PCAPNG_SPB, struct.pack("<I", len(d)) + d)
    return chunked(pcapng_shb() + spb + pcapng_shb() + pcapng_idb() + b"".join(_ng_packets()))


@case(
    "pcapng_option_overrun",
    "an IDB option claiming 0xFFFF bytes",
    suffix=".pcapng",
    expect=("damage:bad_option",),
    tags=("pcapng",),
)
def _ng_option(scale: Scale) -> Iterable[bytes]:
    opts = pcapng_option(OPT_IF_TSRESOL, b"\x09") + struct.pack("<HH", 2, 0xFFFF) + b"eth0"
    return chunked(pcapng_shb() + pcapng_idb(options=opts) + b"".join(_ng_packets()))


@case(
    "pcapng_bad_bom_midfile",
    "a second section header with a garbage byte-order magic",
    suffix=".pcapng",
    expect=("damage:bad_section_header",),
    tags=("pcapng",),
)
def _ng_bom(scale: Scale) -> Iterable[bytes]:
    return chunked(_ng(pcapng_shb(bom=0xDEADBEEF)))


@case(
    "pcapng_section_v2",
    "a second section of major version 2 (its blocks must be skipped)",
    suffix=".pcapng",
    expect=("damage:unsupported_section",),
    tags=("pcapng",),
)
def _ng_v2(scale: Scale) -> Iterable[bytes]:
    return chunked(_ng(pcapng_shb(major=2) + pcapng_idb() + b"".join(_ng_packets())))


@case(
    "pcapng_first_section_v2",
    "the only section is major version 2",
    suffix=".pcapng",
    unusable=True,
    expect=("error",),
    tags=("pcapng",),
)
def _ng_first_v2(scale: Scale) -> Iterable[bytes]:
    return chunked(pcapng_shb(major=2) + pcapng_idb() + b"".join(_ng_packets()))


@case(
    "pcapng_many_interfaces",
    "70,000 interface blocks in one section",
    suffix=".pcapng",
    expect=("damage:too_many_interfaces",),
    tags=("pcapng",),
)
def _ng_many(scale: Scale) -> Iterator[bytes]:
    yield pcapng_shb()
    idb = pcapng_idb()
    yield idb * 70_000
    yield b"".join(_ng_packets())


@case(
    "pcapng_extreme_timestamps",
    "if_tsresol 2^-127 and 10^-255, if_tsoffset -2^63, timestamps 2^64-1",
    suffix=".pcapng",
    tags=("pcapng",),
)
def _ng_ts(scale: Scale) -> Iterable[bytes]:
    out = [pcapng_shb()]
    out.append(pcapng_idb(options=pcapng_option(OPT_IF_TSRESOL, b"\xff") + pcapng_option(OPT_ENDOFOPT, b"")))
    out.append(
        pcapng_idb(
            options=pcapng_option(OPT_IF_TSRESOL, b"\x7f")
            + pcapng_option(OPT_IF_TSOFFSET, struct.pack("<q", -(1 << 63)))
            + pcapng_option(OPT_ENDOFOPT, b"")
        )
    )
    out.append(
        pcapng_idb(
            options=pcapng_option(OPT_IF_TSRESOL, b"\x00")
            + pcapng_option(OPT_IF_TSOFFSET, struct.pack("<q", (1 << 63) - 1))
            + pcapng_option(OPT_ENDOFOPT, b"")
        )
    )
    for i, (_ts, d) in enumerate(imap_session()):
        t = (1 << 64) - 1 if i % 2 else i
        out.append(pcapng_epb(t, d, iface=i % 3))
    return chunked(b"".join(out))


@case(
    "pcapng_random_blocks",
    "valid framing around blocks of unknown types and random bodies",
    suffix=".pcapng",
    tags=("pcapng",),
)
def _ng_random(scale: Scale) -> Iterable[bytes]:
    rnd = random.Random(11)
    mid = b"".join(
        pcapng_block(rnd.randrange(7, 0x7FFFFFFF), rnd.randbytes(rnd.randrange(0, 400))) for _ in range(200)
    )
    return chunked(_ng(mid))


# -- link types ------------------------------------------------------------------------------


@case(
    "linktype_unknown_only",
    "every packet on link type 147 (USER0)",
    unusable=True,
    expect=("error",),
    tags=("link",),
)
def _lt_unknown(scale: Scale) -> Iterable[bytes]:
    return pcap_stream(imap_session(), linktype=LINKTYPE_USER0)


@case(
    "linktype_mixed",
    "one pcapng interface Ethernet, one of link type 65000",
    suffix=".pcapng",
    expect=("decode:unsupported_linktype",),
    tags=("link",),
)
def _lt_mixed(scale: Scale) -> Iterable[bytes]:
    out = [pcapng_shb(), pcapng_idb(), pcapng_idb(linktype=65000)]
    for i, (ts, d) in enumerate(imap_session()):
        out.append(pcapng_epb(ts, d, iface=i % 2))
    return chunked(b"".join(out))


@case("ethernet_runts", "Ethernet frames of 0..13 bytes", expect=("decode:truncated_link",), tags=("link",))
def _runts(scale: Scale) -> Iterable[bytes]:
    pk = imap_session()
    runts = [(pk[0][0] + i, pk[3][1][:i]) for i in range(14)]
    return pcap_stream(pk[:3] + runts + pk[3:])


@case(
    "vlan_stack_deep",
    "a frame with 200 stacked 802.1Q tags",
    expect=("decode:vlan_too_deep",),
    tags=("link",),
)
def _vlan_deep(scale: Scale) -> Iterable[bytes]:
    pk = imap_session()
    inner = pk[3][1]
    frame = inner[:12] + b"\x81\x00\x00\x01" * 200 + inner[12:]
    return pcap_stream(pk[:3] + [(pk[3][0], frame)] + pk[4:])


# -- IP and TCP header lies --------------------------------------------------------------------


def _with_bad(bad: list[bytes]) -> Iterable[bytes]:
    """A valid IMAP session with the ``bad`` frames inserted after the handshake."""
    pk = imap_session()
    ts = pk[2][0]
    return pcap_stream(pk[:3] + [(ts + i + 1, f) for i, f in enumerate(bad)] + pk[3:])


_IMAP_DATA = tcp(50000, IMAP_PORT, ISN_C + 1, ISN_S + 1, TH_ACK, b"a9 NOOP\r\n")


@case(
    "ipv4_length_lies",
    "IHL 15 on a short packet, IHL 3, total length < IHL, > the frame, and 0 (TSO)",
    expect=(
        "decode:ip_options_truncated",
        "decode:bad_ihl",
        "decode:bad_ip_total_length",
        "decode:truncated_ip",
        "decode:ip_total_length_zero",
    ),
    tags=("ip",),
)
def _ipv4_lies(scale: Scale) -> Iterable[bytes]:
    body = _IMAP_DATA
    return _with_bad(
        [
            eth(ipv4(CLIENT_IP, SERVER_IP, body[:10], ihl=15)),
            eth(ipv4(CLIENT_IP, SERVER_IP, body, ihl=3)),
            eth(ipv4(CLIENT_IP, SERVER_IP, body, total=12)),
            eth(ipv4(CLIENT_IP, SERVER_IP, body, total=1500)),
            eth(ipv4(CLIENT_IP, SERVER_IP, tcp(50001, IMAP_PORT, 1, 0, TH_SYN), total=0)),
            eth(ipv4(CLIENT_IP, SERVER_IP, body, ihl=15, options=b"\x01" * 40)),
        ]
    )


@case(
    "ip_version_lies",
    "version 6 in an IPv4 ethertype, version 0 and 15 on raw IP",
    expect=("decode:bad_ip_version",),
    tags=("ip",),
)
def _version_lies(scale: Scale) -> Iterable[bytes]:
    v6_in_v4 = bytearray(ipv4(CLIENT_IP, SERVER_IP, _IMAP_DATA))
    v6_in_v4[0] = 0x65
    return _with_bad(
        [eth(bytes(v6_in_v4)), eth(b"\x05" + bytes(v6_in_v4[1:])), eth(b"\xf5" + bytes(v6_in_v4[1:]))]
    )


@case(
    "ipv6_ext_header_loop",
    "IPv6 with 1000 chained hop-by-hop/destination-options headers",
    expect=("decode:ipv6_ext_loop", "decode:ipv6_ext_truncated"),
    tags=("ip",),
)
def _ipv6_loop(scale: Scale) -> Iterable[bytes]:
    chain = b""
    n = 1000
    for i in range(n):
        nxt = IPPROTO_TCP if i == n - 1 else IPV6_DEST_OPTS
        chain += bytes((nxt, 0)) + b"\x01\x04\x00\x00\x00\x00"  # PadN option fills the 8 bytes
    t = tcp(50002, IMAP_PORT, 1, 0, TH_ACK, b"a1 NOOP\r\n")
    frame = eth(ipv6(CLIENT6, SERVER6, chain + t, nh=IPV6_HOP_BY_HOP), ETHERTYPE_IPV6)
    truncated = eth(
        ipv6(CLIENT6, SERVER6, bytes((IPV6_DEST_OPTS, 200)) + b"\x00" * 6, nh=IPV6_DEST_OPTS), ETHERTYPE_IPV6
    )
    return _with_bad([frame, truncated])


@case(
    "tcp_offset_lies",
    "TCP data offset 15 on a 20-byte header, data offset 2, TCP header cut",
    expect=("decode:bad_tcp_offset", "decode:truncated_tcp"),
    tags=("tcp",),
)
def _tcp_lies(scale: Scale) -> Iterable[bytes]:
    return _with_bad(
        [
            eth(
                ipv4(
                    CLIENT_IP,
                    SERVER_IP,
                    tcp(50000, IMAP_PORT, ISN_C + 1, ISN_S + 1, TH_ACK, b"a9 NOOP\r\n", doff=15),
                )
            ),
            eth(
                ipv4(
                    CLIENT_IP,
                    SERVER_IP,
                    tcp(50000, IMAP_PORT, ISN_C + 1, ISN_S + 1, TH_ACK, b"a9 NOOP\r\n", doff=2),
                )
            ),
            eth(ipv4(CLIENT_IP, SERVER_IP, tcp(50000, IMAP_PORT, ISN_C + 1, ISN_S + 1, TH_ACK)[:11])),
            eth(
                ipv4(
                    CLIENT_IP,
                    SERVER_IP,
                    tcp(50000, IMAP_PORT, ISN_C + 1, ISN_S + 1, TH_ACK, doff=15)[:20] + b"\x01" * 12,
                )
            ),
        ]
    )


@case(
    "tcp_flag_chaos",
    "segments with SYN+FIN+RST+URG and every flag combination, on the live flow",
    tags=("tcp",),
)
def _flag_chaos(scale: Scale) -> Iterable[bytes]:
    pk = imap_session()
    ts = pk[4][0]
    bad = [
        (ts + f, tcp4_frame(f % 2 == 0, ISN_C + 1 + f, ISN_S + 1, f, b"x" if f & 8 else b""))
        for f in range(256)
    ]
    return pcap_stream(pk[:5] + bad + pk[5:])


@case(
    "seq_jump_2_31",
    "client segments whose sequence numbers jump by 2^31 inside the ID command",
    expect=("dropped",),
    tags=("tcp",),
)
def _seq_jump(scale: Scale) -> Iterable[bytes]:
    c = Conv()
    pk = c.handshake() + c.server(IMAP_GREETING)
    base = c.cseq
    cmd = IMAP_ID
    half = len(cmd) // 2
    pk.append((c._tick(), tcp4_frame(True, base, c.sseq, TH_ACK, cmd[:half])))
    pk.append(
        (c._tick(), tcp4_frame(True, base + half + SEQ_HALF, c.sseq, TH_ACK, b"a7 LOGIN evil evil\r\n"))
    )
    pk.append((c._tick(), tcp4_frame(True, base + SEQ_HALF, c.sseq, TH_ACK, cmd[:half])))
    pk.append((c._tick(), tcp4_frame(True, base + half, c.sseq, TH_ACK, cmd[half:])))
    c.cseq = base + len(cmd)
    pk += c.server(IMAP_ID_OK) + c.close()
    return pcap_stream(pk)


@case(
    "seq_wrap_every_segment",
    "one-byte segments whose sequence numbers step by 2^31 - 1 (wrapping every time)",
    expect=("dropped",),
    tags=("tcp",),
)
def _seq_wrap(scale: Scale) -> Iterable[bytes]:
    c = Conv()
    pk = c.handshake() + c.server(IMAP_GREETING)
    seq = c.cseq
    for i, b in enumerate(IMAP_ID):
        pk.append((c._tick(), tcp4_frame(True, seq, c.sseq, TH_ACK, bytes((b,)))))
        seq = (seq + SEQ_HALF - 1) % SEQ_MOD
    return pcap_stream(pk)


@case(
    "fragment_flood",
    "never-completed IPv4 first fragments, each of a different datagram",
    expect=("decode:fragment_incomplete|fragment_evicted|fragment_timeout",),
    tags=("ip", "flood"),
)
def _frag_flood(scale: Scale) -> Iterator[bytes]:
    pk = imap_session()

    def gen() -> Iterator[Pkt]:
        yield from pk[:3]
        payload = tcp(50000, IMAP_PORT, ISN_C + 1, ISN_S + 1, TH_ACK, b"z" * 84)  # 104 bytes: a multiple of 8
        ts = pk[2][0]
        for i in range(scale.fragments):
            src = bytes((10, (i >> 16) & 0xFF, (i >> 8) & 0xFF, i & 0xFF))
            yield ts + i, eth(ipv4(src, SERVER_IP, payload, ident=i, frag=IPV4_MF))
        yield from pk[3:]

    return pcap_stream(gen())


@case(
    "fragment_overlap_rewrite",
    "overlapping IPv4 fragments that rewrite the TCP ports and payload",
    expect=("decode:fragment_overlap_conflict",),
    tags=("ip",),
)
def _frag_overlap(scale: Scale) -> Iterable[bytes]:
    pk = imap_session()
    seg = tcp(50000, IMAP_PORT, ISN_C + 1, ISN_S + 1, TH_ACK, b"a5 NOOP\r\n" * 4)
    evil = tcp(50000, IMAP_PORT, ISN_C + 1, ISN_S + 1, TH_ACK, b"a5 LOGIN x y\r\n" * 3)
    frags = [
        eth(ipv4(CLIENT_IP, SERVER_IP, seg[:24], ident=77, frag=IPV4_MF)),
        eth(ipv4(CLIENT_IP, SERVER_IP, evil[:32], ident=77, frag=IPV4_MF)),
        eth(ipv4(CLIENT_IP, SERVER_IP, seg[24:], ident=77, frag=3)),
        eth(ipv4(CLIENT_IP, SERVER_IP, evil[8:], ident=77, frag=1)),
    ]
    ts = pk[3][0]
    return pcap_stream(pk[:3] + [(ts + i, f) for i, f in enumerate(frags)] + pk[5:])


# -- flow table and reassembly floods --------------------------------------------------------


def _tiny_flows(n: int, dport: int) -> Iterator[bytes]:
    """``n`` flows of one SYN each, from distinct source addresses and ports (never closed)."""
    yield pcap_header()
    head = MAC_S + MAC_C + b"\x08\x00" + struct.pack("!BBHHHBBH", 0x45, 0, 40, 0, IPV4_DF, 64, IPPROTO_TCP, 0)
    dst = SERVER_IP
    tail = struct.pack("!IIBBHHH", ISN_C, 0, 5 << 4, TH_SYN, 65535, 0, 0)
    rec = struct.Struct("<IIII").pack
    hdr_port = struct.Struct("!HH").pack
    buf: list[bytes] = []
    for i in range(n):
        src = bytes((10, (i >> 16) & 0xFF, (i >> 8) & 0xFF, i & 0xFF))
        buf.append(rec(BASE_SEC, i % 1_000_000, 54, 54))
        buf.append(head + src + dst + hdr_port(1024 + (i % 60000), dport) + tail)
        if len(buf) >= 65536:
            yield b"".join(buf)
            buf.clear()
    if buf:
        yield b"".join(buf)


@case(
    "flows_tiny_mail",
    "a huge number of one-SYN flows to the IMAP port, none ever closed",
    expect=("flows:=scale.flows",),
    big=True,
    tags=("flood",),
)
def _flows_mail(scale: Scale) -> Iterator[bytes]:
    return _tiny_flows(scale.flows, IMAP_PORT)


@case(
    "flows_tiny_other",
    "a huge number of one-SYN flows to a non-mail port (pending table)",
    expect=("flows:0",),
    big=True,
    tags=("flood",),
)
def _flows_other(scale: Scale) -> Iterator[bytes]:
    return _tiny_flows(scale.flows, NON_MAIL_PORT)


def _ooo_order(n: int, window: int) -> Iterator[int]:
    """Segment indices: each window of ``window`` segments sent in reverse order."""
    for start in range(0, n, window):
        yield from range(min(start + window, n) - 1, start - 1, -1)


OOO_COMMAND = b"a NOOP\r\n"  # 8 bytes: one command per one-segment piece
OOO_WINDOW = 1024  # below the reassembler's 4096 held segments: no gap is forced


@case(
    "ooo_segments",
    "one flow whose 8-byte segments arrive in reverse order within windows of 1024",
    expect=("bytes_to_server:=8*scale.ooo_segments", "nogap"),
    big=True,
    tags=("flood", "tcp"),
)
def _ooo(scale: Scale) -> Iterator[bytes]:
    return imap_command_segments(scale.ooo_segments, OOO_WINDOW)


def imap_command_segments(n: int, window: int) -> Iterator[bytes]:
    """One IMAP flow of ``n`` 8-byte NOOP segments, each ``window`` of them in reverse order (1: in order)."""
    c = Conv()
    pk = c.handshake() + c.server(IMAP_GREETING)
    yield from pcap_stream(pk)
    base = c.cseq
    ack = c.sseq
    head = (
        MAC_S
        + MAC_C
        + b"\x08\x00"
        + struct.pack("!BBHHHBBH4s4s", 0x45, 0, 48, 0, IPV4_DF, 64, IPPROTO_TCP, 0, CLIENT_IP, SERVER_IP)
    )
    ports = struct.pack("!HH", 50000, IMAP_PORT)
    tail = struct.pack("!IBBHHH", ack, 5 << 4, TH_ACK, 65535, 0, 0) + OOO_COMMAND
    rec = struct.Struct("<IIII").pack
    u32 = struct.Struct("!I").pack
    buf: list[bytes] = []
    for k, i in enumerate(_ooo_order(n, window)):
        buf.append(rec(BASE_SEC + 1 + k // 1_000_000, k % 1_000_000, 62, 62))
        buf.append(head + ports + u32((base + 8 * i) % SEQ_MOD) + tail)
        if len(buf) >= 65536:
            yield b"".join(buf)
            buf.clear()
    if buf:
        yield b"".join(buf)


@case(
    "ooo_reverse_all",
    "20,000 segments of one flow in fully reverse order (the hold overflows)",
    expect=("gap",),
    tags=("flood", "tcp"),
)
def _ooo_reverse(scale: Scale) -> Iterable[bytes]:
    c = Conv()
    pk = c.handshake() + c.server(IMAP_GREETING)
    base = c.cseq
    n = 20_000
    for k, i in enumerate(range(n - 1, -1, -1)):
        pk.append((c.ts + k, tcp4_frame(True, base + 8 * i, c.sseq, TH_ACK, OOO_COMMAND)))
    return pcap_stream(pk)


@case(
    "port_reuse_storm",
    "thousands of SYNs with new ISNs on one 4-tuple, each with a little data",
    tags=("flood", "tcp"),
)
def _port_reuse(scale: Scale) -> Iterable[bytes]:
    def gen() -> Iterator[Pkt]:
        ts = BASE_SEC * 10**9
        for i in range(scale.port_reuse):
            isn = (i * 7_919_001) % SEQ_MOD
            ts += 1000
            yield ts, tcp4_frame(True, isn, 0, TH_SYN)
            ts += 1000
            yield ts, tcp4_frame(True, isn + 1, 0, TH_ACK | TH_PSH, b"a1 NOOP\r\n")

    return pcap_stream(gen())


# -- protocol-level hostility ------------------------------------------------------------------


def _imap_client(payload_chunks: Iterable[bytes], server_after: bytes = b"") -> Iterator[bytes]:
    c = Conv()
    pk = c.handshake() + c.server(IMAP_GREETING)

    def gen() -> Iterator[Pkt]:
        yield from pk
        yield from c.client_stream(payload_chunks)
        if server_after:
            yield from c.server(server_after)
        yield from c.close()

    return pcap_stream(gen())


def _segments(data: bytes, size: int = 1400) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@case(
    "imap_literal_4g",
    "IMAP ID with a literal announcing 4 GB (and one of 10^30), then the connection ends",
    expect=("anomaly:huge_literal",),
    tags=("imap",),
)
def _lit4g(scale: Scale) -> Iterable[bytes]:
    data = b'a1 ID ("x-originating-ip" {4294967296}\r\n' + b"1" * 300 + b"\r\n"
    return _imap_client(_segments(data), b"+ go ahead\r\n")


@case(
    "imap_literal_digits",
    "IMAP literal with a 5000-digit size",
    expect=("anomaly:huge_literal",),
    tags=("imap",),
)
def _litdigits(scale: Scale) -> Iterable[bytes]:
    data = b'a1 ID ("k" {' + b"9" * 5000 + b"+}\r\nvalue)\r\na2 NOOP\r\n"
    return _imap_client(_segments(data))


@case(
    "imap_id_nested_line",
    "an ID list nested 100,000 deep on one line (over the line limit)",
    expect=("anomaly:line_too_long",),
    tags=("imap",),
)
def _nested_line(scale: Scale) -> Iterable[bytes]:
    d = scale.id_depth
    data = b"a1 ID " + b"(" * d + b")" * d + b"\r\na2 NOOP\r\n"
    return _imap_client(_segments(data, MAX_SEGMENT), b"a1 BAD Too many '('\r\n")


@case(
    "imap_id_nested_fits",
    "an ID list nested 30,000 deep within the 64 KiB line limit",
    expect=("problem:nested_list",),
    tags=("imap",),
)
def _nested_fits(scale: Scale) -> Iterable[bytes]:
    d = 30_000
    data = b'a1 ID ("x-originating-ip" "203.0.113.9" ' + b"(" * d + b")" * d + b")\r\n"
    return _imap_client(_segments(data, MAX_SEGMENT), b"a1 BAD Too many '('\r\n")


@case(
    "imap_id_nested_literals",
    "an ID list nested 100,000 deep through literals (every line is short)",
    expect=("problem:nested_list",),
    tags=("imap",),
)
def _nested_literals(scale: Scale) -> Iterator[bytes]:
    d = scale.id_depth
    parts = [b'a1 ID ("x-originating-ip" "203.0.113.9" ']
    parts += [b'"k" {1+}\r\nv ('] * d  # every physical line is a few bytes long ...
    parts += [b') "k" {1+}\r\nv '] * d  # ... on the way down and on the way up
    parts.append(b")\r\n")
    data = b"".join(parts)
    return _imap_client(_segments(data, MAX_SEGMENT), b"a1 OK\r\n")


@case(
    "imap_endless_line",
    "an IMAP client line that never ends (no CRLF, tens of MB)",
    expect=("anomaly:line_too_long|eof_in_line",),
    big=True,
    tags=("imap", "flood"),
)
def _endless(scale: Scale) -> Iterator[bytes]:
    block = b'a1 ID ("x-originating-ip" "' + b"A" * (MAX_SEGMENT - 27)

    def chunks() -> Iterator[bytes]:
        yield block
        filler = b"A" * MAX_SEGMENT
        for _ in range(scale.endless_bytes // MAX_SEGMENT):
            yield filler

    return _imap_client(chunks())


@case(
    "imap_id_many_pairs",
    "an ID with 5,000 pairs in literals (more than are kept)",
    expect=("problem:too_many_pairs_kept",),
    tags=("imap",),
)
def _many_pairs(scale: Scale) -> Iterable[bytes]:
    return imap_literal_pairs(5000)


def imap_literal_pairs(n: int) -> Iterator[bytes]:
    """An IMAP session whose ID carries ``n`` pairs, each value a one-octet LITERAL+."""
    parts = [b"a1 ID ("]
    parts += [b'"x-forward-k%d" {1+}\r\nv ' % i for i in range(n)]
    parts.append(b")\r\n")
    return _imap_client(_segments(b"".join(parts)), b"* ID NIL\r\na1 OK\r\n")


@case(
    "imap_pending_flood",
    "100,000 pipelined commands that are never answered",
    expect=("anomaly:too_many_pending",),
    tags=("imap", "flood"),
)
def _pending_flood(scale: Scale) -> Iterable[bytes]:
    data = b"".join(b"t%d NOOP\r\n" % i for i in range(100_000))
    return _imap_client(_segments(data, MAX_SEGMENT))


def _pop3_xclient(value_chunks: Iterable[bytes]) -> Iterator[bytes]:
    c = Conv(sport=POP3_PORT)
    pk = c.handshake() + c.server(b"+OK [XCLIENT] Dovecot ready.\r\n")

    def gen() -> Iterator[Pkt]:
        yield from pk
        yield from c.client_stream(value_chunks)
        yield from c.server(b"-ERR Input line too long\r\n")
        yield from c.close()

    return pcap_stream(gen())


@case(
    "pop3_forward_100mb",
    "POP3 XCLIENT whose base64 FORWARD value is 100 MB",
    expect=("anomaly:line_too_long",),
    big=True,
    tags=("pop3", "flood"),
)
def _forward_huge(scale: Scale) -> Iterator[bytes]:
    entry = base64.b64encode(b"k=" + b"v" * 47 + b"\tx=yy")  # 54 bytes -> 72 base64 chars, no padding
    per = MAX_SEGMENT // len(entry)
    block = entry * per

    def chunks() -> Iterator[bytes]:
        yield b"XCLIENT ADDR=203.0.113.5 PORT=4242 TTL=5 FORWARD="
        for _ in range(scale.forward_bytes // len(block)):
            yield block
        yield b"\r\nQUIT\r\n"

    return _pop3_xclient(chunks())


@case(
    "pop3_forward_many_entries",
    "POP3 XCLIENT with a FORWARD blob of 12,000 entries within the line limit",
    expect=("problem:too_many_entries",),
    tags=("pop3",),
)
def _forward_entries(scale: Scale) -> Iterable[bytes]:
    blob = base64.b64encode(b"\t".join(b"k=v" for _ in range(12_000)))
    line = b"XCLIENT ADDR=203.0.113.5 PORT=4242 FORWARD=" + blob + b"\r\n"
    return _pop3_xclient(_segments(line))


@case(
    "pop3_forward_bad_base64",
    "POP3 XCLIENT FORWARD values with bad base64 in every way",
    expect=("problem:base64",),
    tags=("pop3",),
)
def _forward_bad(scale: Scale) -> Iterable[bytes]:
    lines = [
        b"XCLIENT ADDR=203.0.113.5 FORWARD=" + v + b"\r\n"
        for v in (
            b"a",
            b"ab=c",
            b"====",
            b"a-_b",
            b"\xff\xfe\x00\x01",
            b"YQ",
            b"YWJj=====",
            b"Y W J j",
            b"=" * 1000,
        )
    ]
    return _pop3_xclient(_segments(b"".join(lines)))


@case(
    "smtp_xclient_100k",
    "SMTP XCLIENT repeated 100,000 times on one connection, never answered",
    expect=("anomaly:too_many_pending",),
    tags=("smtp", "flood"),
)
def _xclient_flood(scale: Scale) -> Iterator[bytes]:
    c = Conv(sport=SMTP_PORT)
    pk = c.handshake() + c.server(b"220 mx.example ESMTP Postfix\r\n") + c.client(b"EHLO proxy\r\n")
    pk += c.server(b"250-mx.example\r\n250 XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT\r\n")
    line = b"XCLIENT ADDR=203.0.113.5 PORT=4242 NAME=[UNAVAILABLE] LOGIN=u+3Dx\r\n"
    data = line * scale.xclient_repeats

    def gen() -> Iterator[Pkt]:
        yield from pk
        yield from c.client_stream(_segments(data, MAX_SEGMENT))
        yield from c.close()

    return pcap_stream(gen())


@case("pop3_xclient_100k", "POP3 XCLIENT repeated 100,000 times, each answered", tags=("pop3", "flood"))
def _pop3_flood(scale: Scale) -> Iterator[bytes]:
    c = Conv(sport=POP3_PORT)
    pk = c.handshake() + c.server(b"+OK [XCLIENT] Dovecot ready.\r\n")
    line = b"XCLIENT ADDR=203.0.113.5 PORT=4242 TTL=4 SESSION=abcdefghijklmnop\r\n"
    per = 500

    def gen() -> Iterator[Pkt]:
        yield from pk
        for _ in range(scale.xclient_repeats // per):
            yield from c.client(line * per, MAX_SEGMENT)
            yield from c.server(b"+OK\r\n" * per, MAX_SEGMENT)
        yield from c.close()

    return pcap_stream(gen())


@case("smtp_bdat_huge", "SMTP BDAT announcing 2^64 bytes, then commands", tags=("smtp",))
def _bdat(scale: Scale) -> Iterable[bytes]:
    c = Conv(sport=SMTP_PORT)
    pk = (
        c.handshake()
        + c.server(b"220 mx ESMTP\r\n")
        + c.client(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
    )
    pk += c.server(b"250 ok\r\n250 ok\r\n250 ok\r\n")
    pk += c.client(b"BDAT 18446744073709551616 LAST\r\n" + b"x" * 3000 + b"\r\nXCLIENT ADDR=1.2.3.4\r\n")
    pk += c.close()
    return pcap_stream(pk)


@case(
    "lmtp_xrcptforward_junk",
    "LMTP RCPT TO with XRCPTFORWARD values of junk xtext, NULs and 60 KiB",
    expect=("problem:",),
    tags=("smtp",),
)
def _xrcpt(scale: Scale) -> Iterable[bytes]:
    c = Conv(sport=24)
    pk = c.handshake() + c.server(b"220 backend LMTP ready\r\n") + c.client(b"LHLO proxy\r\n")
    pk += (
        c.server(b"250-backend\r\n250 XRCPTFORWARD\r\n")
        + c.client(b"MAIL FROM:<a@b>\r\n")
        + c.server(b"250 ok\r\n")
    )
    for v in (b"+00+0", b"+zz+", b"a\tb", b"+3d" * 20000, base64.b64encode(b"x=y\tz=w")):
        pk += c.client(b"RCPT TO:<u@d> XRCPTFORWARD=" + v + b"\r\n", 1400)
        pk += c.server(b"250 ok\r\n")
    pk += c.close()
    return pcap_stream(pk)


@case(
    "binary_on_mail_ports",
    "64 KiB of random bytes on the IMAP, POP3 and SMTP ports, both directions",
    tags=("imap", "pop3", "smtp"),
)
def _binary(scale: Scale) -> Iterable[bytes]:
    rnd = random.Random(3)
    pk: list[Pkt] = []
    for port in (IMAP_PORT, POP3_PORT, SMTP_PORT, 24):
        c = Conv(sport=port, cport=51000 + port)
        pk += c.handshake()
        for _ in range(8):
            pk += c.server(rnd.randbytes(4096))
            pk += c.client(rnd.randbytes(4096))
        pk += c.close()
    return pcap_stream(pk)


# ----------------------------------------------------------------------------- writing


def write_case(c: Case, out_dir: Path, scale: Scale) -> Path:
    """Write one case's file into ``out_dir``; return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{c.name}{c.suffix}"
    with open(path, "wb") as fh:
        _write_all(fh, c.build(scale))
    return path


def _write_all(fh: BinaryIO, chunks: Iterable[bytes]) -> None:
    for chunk in chunks:
        fh.write(chunk)


def case_bytes(name: str, scale: Scale | None = None) -> bytes:
    """The whole file of one case, in memory (for small cases and unit tests)."""
    buf = io.BytesIO()
    _write_all(buf, CASES[name].build(scale or PROFILES["ci"]))
    return buf.getvalue()


def expected_number(spec: str, scale: Scale) -> int:
    """Evaluate ``=8*scale.ooo_segments``-style expectations (a product of ints and scale fields)."""
    total = 1
    for factor in spec.lstrip("=").split("*"):
        factor = factor.strip()
        total *= getattr(scale, factor[6:]) if factor.startswith("scale.") else int(factor)
    return total


def _counters(obj: object, path: str) -> Iterator[tuple[str, int]]:
    """(dotted key path, value) of every integer in a JSON value."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _counters(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for v in obj:
            yield from _counters(v, path)
    elif isinstance(obj, int) and not isinstance(obj, bool):
        yield path, obj


def missing_evidence(c: Case, report: dict[str, Any], scale: Scale) -> list[str]:
    """The ``expect`` items of ``c`` that ``report`` (parsed report.json) does not show."""
    caps = report.get("captures", [])
    flows = report.get("flows", [])
    records = report.get("records", [])
    damage = {d["code"] for cap in caps for d in cap.get("damage", [])}
    decode = {code for cap in caps for code in cap.get("decode_issues", {})}
    problems = [p for r in records for p in r.get("problems", [])]
    problems += [p for r in records for d in r.get("param_details", []) for p in d.get("problems", [])]
    gaps = sum(f["gaps"][d]["count"] for f in flows for d in ("to_server", "to_client"))
    finding_words = [str(f.get("rule", "")) for f in report.get("findings", [])]
    finding_words += [str(v) for f in report.get("findings", []) for v in (f.get("facts") or {}).values()]
    missing = []
    for item in c.expect:
        kind, _, arg = item.partition(":")
        alts = arg.split("|")
        if kind == "damage":
            ok = bool(damage) if arg == "*" else any(a in damage for a in alts)
        elif kind == "decode":
            ok = any(a in decode for a in alts)
        elif kind == "problem":
            ok = any(a in p for p in problems for a in alts)
        elif kind == "anomaly":
            ok = any(a in w for w in finding_words for a in alts)
        elif kind == "gap":
            ok = gaps > 0
        elif kind == "nogap":
            ok = gaps == 0
        elif kind == "error":
            ok = any(cap.get("error") for cap in caps)
        elif kind == "flows":
            ok = len(flows) == expected_number(arg, scale)
        elif kind == "bytes_to_server":
            ok = sum(f["bytes"]["to_server"] for f in flows) == expected_number(arg, scale)
        elif kind == "dropped":
            # bytes or segments the reassembler threw away (out of window, late, after FIN) must be
            # counted in the flow's entry, under a key (at any depth) that names them
            ok = any(
                v > 0 and any(w in path for w in ("window", "dropped", "late"))
                for f in flows
                for path, v in _counters(f, "")
            )
        else:
            raise ValueError(f"unknown evidence kind {item!r} in case {c.name}")
        if not ok:
            missing.append(item)
    return missing


def main(argv: list[str] | None = None) -> int:
    """Command line: write the cases into a directory."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", nargs="?", type=Path)
    p.add_argument("--profile", choices=sorted(PROFILES), default="ci")
    p.add_argument("--only", nargs="*", default=None, help="case names (default: all)")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    args = p.parse_args(argv)
    if args.list:
        for c in CASES.values():
            sys.stdout.write(f"{c.name:32} {c.doc}\n")
        return 0
    if args.out_dir is None:
        p.error("out_dir is required")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    scale = PROFILES[args.profile]
    for name in args.only or list(CASES):
        path = write_case(CASES[name], args.out_dir, scale)
        sys.stdout.write(f"{path} {path.stat().st_size}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
