"""Decoder tests: hand-built frames for every link type, truncation, IPv6 extension headers, fuzzing,
and a cross-check against dpkt and scapy on the public captures."""

from __future__ import annotations

import glob
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from analyzer.capture.decode import (
    MAX_IPV6_EXT_HEADERS,
    MAX_VLAN_TAGS,
    Decoder,
    DecodeIssue,
    TcpPacket,
)

SRC4 = bytes([192, 0, 2, 1])
DST4 = bytes([198, 51, 100, 7])
SRC6 = bytes.fromhex("20010db8000000000000000000000001")
DST6 = bytes.fromhex("20010db80000000000000000000000fe")
MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")
PAYLOAD = b'a1 ID ("x-originating-ip" "203.0.113.9")\r\n'
SPORT, DPORT = 51234, 143
SEQ, ACK = 0x01020304, 0xFFFFFFF0


# --------------------------------------------------------------------------- builders (plain struct)


def tcp(
    payload: bytes = PAYLOAD,
    *,
    sport: int = SPORT,
    dport: int = DPORT,
    seq: int = SEQ,
    ack: int = ACK,
    flags: int = 0x18,
    options: bytes = b"",
    doff: int | None = None,
) -> bytes:
    """A TCP header (checksum left 0) followed by ``payload``; ``flags`` bit 8 is NS."""
    assert len(options) % 4 == 0
    words = doff if doff is not None else 5 + len(options) // 4
    b12 = (words << 4) | ((flags >> 8) & 1)
    return (
        struct.pack("!HHIIBBHHH", sport, dport, seq, ack, b12, flags & 0xFF, 65535, 0, 0) + options + payload
    )


def ipv4(
    payload: bytes,
    *,
    src: bytes = SRC4,
    dst: bytes = DST4,
    proto: int = 6,
    options: bytes = b"",
    ident: int = 0x1234,
    mf: bool = False,
    offset: int = 0,
    total: int | None = None,
    ihl: int | None = None,
    version: int = 4,
) -> bytes:
    """An IPv4 header (checksum 0) followed by ``payload``; ``offset`` in bytes."""
    assert len(options) % 4 == 0
    words = ihl if ihl is not None else 5 + len(options) // 4
    tl = total if total is not None else 20 + len(options) + len(payload)
    frag = (0x2000 if mf else 0) | (offset >> 3)
    hdr = struct.pack("!BBHHHBBH4s4s", (version << 4) | words, 0, tl, ident, frag, 64, proto, 0, src, dst)
    return hdr + options + payload


def ipv6(
    payload: bytes, *, nh: int = 6, src: bytes = SRC6, dst: bytes = DST6, plen: int | None = None
) -> bytes:
    """An IPv6 header followed by ``payload`` (extension headers included by the caller)."""
    pl = len(payload) if plen is None else plen
    return struct.pack("!IHBB16s16s", 6 << 28, pl, nh, 64, src, dst) + payload


def ext8(nh: int, body_len: int = 6) -> bytes:
    """A hop-by-hop / routing / destination / mobility header: ``(len+1)*8`` bytes, ``body_len`` = 6 + 8k."""
    assert (body_len + 2) % 8 == 0
    return bytes([nh, (body_len + 2) // 8 - 1, 1, body_len - 2]) + bytes(body_len - 2)  # one PadN option


def ah(nh: int, words: int = 4) -> bytes:
    """An authentication header of ``(words+2)*4`` bytes (RFC 4302)."""
    return bytes([nh, words, 0, 0]) + bytes((words + 2) * 4 - 4)


def frag6(nh: int, offset: int, more: bool, ident: int = 0xCAFEBABE) -> bytes:
    """An IPv6 fragment header; ``offset`` in bytes."""
    return struct.pack("!BBHI", nh, 0, offset | int(more), ident)


def eth(payload: bytes, etype: int = 0x0800, tags: tuple[tuple[int, int], ...] = ()) -> bytes:
    """Ethernet II with optional stacked tags ``(tpid, vid)``."""
    out = MAC_B + MAC_A
    for tpid, vid in tags:
        out += struct.pack("!HH", tpid, vid)
    return out + struct.pack("!H", etype) + payload


def eth_snap(payload: bytes, etype: int) -> bytes:
    """IEEE 802.3 frame with LLC/SNAP carrying ``etype``."""
    body = b"\xaa\xaa\x03\x00\x00\x00" + struct.pack("!H", etype) + payload
    return MAC_B + MAC_A + struct.pack("!H", len(body)) + body


def sll(payload: bytes, proto: int = 0x0800) -> bytes:
    """Linux cooked v1 header."""
    return struct.pack("!HHH8sH", 0, 1, 6, MAC_A + b"\0\0", proto) + payload


def sll2(payload: bytes, proto: int = 0x0800) -> bytes:
    """Linux cooked v2 header."""
    return struct.pack("!HHIHBB8s", proto, 0, 3, 1, 0, 6, MAC_A + b"\0\0") + payload


def null_le(payload: bytes, af: int) -> bytes:
    return struct.pack("<I", af) + payload


def null_be(payload: bytes, af: int) -> bytes:
    return struct.pack(">I", af) + payload


V4_PACKET: TcpPacket = (SRC4 + DST4 + struct.pack("!HH", SPORT, DPORT), SEQ, ACK, 0x18, PAYLOAD)
V6_PACKET: TcpPacket = (SRC6 + DST6 + struct.pack("!HH", SPORT, DPORT), SEQ, ACK, 0x18, PAYLOAD)


def dec(
    linktype: int, data: bytes, wirelen: int | None = None, decoder: Decoder | None = None
) -> TcpPacket | None:
    d = decoder if decoder is not None else Decoder()
    return d.decode(1, 0, linktype, data, len(data) if wirelen is None else wirelen)


def codes(d: Decoder) -> list[str]:
    return [i.code for i in d.issues]


# --------------------------------------------------------------------------- link types

V4 = ipv4(tcp())
V6 = ipv6(tcp())

LINK_CASES: list[tuple[str, int, bytes, TcpPacket]] = [
    ("ethernet-v4", 1, eth(V4), V4_PACKET),
    ("ethernet-v6", 1, eth(V6, 0x86DD), V6_PACKET),
    ("vlan", 1, eth(V4, tags=((0x8100, 10),)), V4_PACKET),
    ("qinq-88a8", 1, eth(V6, 0x86DD, tags=((0x88A8, 100), (0x8100, 10))), V6_PACKET),
    ("qinq-9100", 1, eth(V4, tags=((0x9100, 100), (0x8100, 10))), V4_PACKET),
    ("snap-v4", 1, eth_snap(V4, 0x0800), V4_PACKET),
    ("snap-v6", 1, eth_snap(V6, 0x86DD), V6_PACKET),
    ("sll-v4", 113, sll(V4), V4_PACKET),
    ("sll-v6", 113, sll(V6, 0x86DD), V6_PACKET),
    ("sll-vlan", 113, sll(struct.pack("!HH", 5, 0x0800) + V4, 0x8100), V4_PACKET),
    ("sll-llc-snap", 113, sll(b"\xaa\xaa\x03\x00\x00\x00\x08\x00" + V4, 0x0004), V4_PACKET),
    ("sll2-v4", 276, sll2(V4), V4_PACKET),
    ("sll2-v6", 276, sll2(V6, 0x86DD), V6_PACKET),
    ("raw101-v4", 101, V4, V4_PACKET),
    ("raw101-v6", 101, V6, V6_PACKET),
    ("raw12-v4", 12, V4, V4_PACKET),
    ("raw14-v6", 14, V6, V6_PACKET),
    ("ipv4-228", 228, V4, V4_PACKET),
    ("ipv6-229", 229, V6, V6_PACKET),
    ("null-le-v4", 0, null_le(V4, 2), V4_PACKET),
    ("null-be-v4", 0, null_be(V4, 2), V4_PACKET),
    ("null-le-v6-24", 0, null_le(V6, 24), V6_PACKET),
    ("null-be-v6-28", 0, null_be(V6, 28), V6_PACKET),
    ("null-le-v6-30", 0, null_le(V6, 30), V6_PACKET),
    ("loop-v4", 108, null_be(V4, 2), V4_PACKET),
    ("loop-v6", 108, null_be(V6, 24), V6_PACKET),
]


@pytest.mark.parametrize(
    "linktype,data,expected", [c[1:] for c in LINK_CASES], ids=[c[0] for c in LINK_CASES]
)
def test_link_types(linktype: int, data: bytes, expected: TcpPacket) -> None:
    d = Decoder()
    assert d.decode(1, 0, linktype, data, len(data)) == expected
    assert d.issues == []
    assert d.counts["tcp"] == 1


def test_vlan_counted_once_per_frame() -> None:
    d = Decoder()
    dec(1, eth(V4, tags=((0x88A8, 1), (0x8100, 2))), decoder=d)
    assert d.counts["vlan"] == 1


def test_vlan_depth_bound() -> None:
    d = Decoder()
    ok = eth(V4, tags=tuple((0x8100, i) for i in range(MAX_VLAN_TAGS)))
    assert dec(1, ok, decoder=d) == V4_PACKET
    deep = eth(V4, tags=tuple((0x8100, i) for i in range(MAX_VLAN_TAGS + 1)))
    assert dec(1, deep, decoder=d) is None
    assert codes(d) == ["vlan_too_deep"]


def test_loop_linktype_is_network_order_only() -> None:
    d = Decoder()
    assert dec(108, null_le(V4, 2), decoder=d) is None  # 0x02000000 is not a family
    assert d.counts["non_ip"] == 1


@pytest.mark.parametrize(
    "data",
    [
        eth(b"\x00" * 40, 0x0806),  # ARP
        eth_snap(V4, 0x0806),  # SNAP but not IP
        MAC_B + MAC_A + struct.pack("!H", len(V4) + 3) + b"\x42\x42\x03" + V4,  # LLC, STP SAPs
        MAC_B + MAC_A + b"\x05\xf0" + V4,  # 1520: neither a length nor an ethertype
    ],
    ids=["arp", "snap-arp", "llc-stp", "type-1520"],
)
def test_non_ip_ethernet(data: bytes) -> None:
    d = Decoder()
    assert dec(1, data, decoder=d) is None
    assert d.counts["non_ip"] == 1 and d.issues == []


def test_null_unknown_family_is_non_ip() -> None:
    d = Decoder()
    assert dec(0, null_le(V4, 7), decoder=d) is None
    assert d.counts == {"non_ip": 1} and d.issues == []


def test_unsupported_linktype_listed_once_counted_always() -> None:
    d = Decoder()
    for i in range(5):
        assert d.decode(i + 1, 0, 147, V4, len(V4)) is None
    assert d.decode(6, 0, 9, V4, len(V4)) is None
    assert [(i.frame, i.code) for i in d.issues] == [(1, "unsupported_linktype"), (6, "unsupported_linktype")]
    assert d.issue_counts["unsupported_linktype"] == 6


def test_raw_bad_version() -> None:
    d = Decoder()
    assert dec(101, b"\x50" + V4[1:], decoder=d) is None
    assert dec(228, ipv4(tcp(), version=6), decoder=d) is None
    assert dec(1, eth(V6), decoder=d) is None  # IPv6 bytes under ethertype 0x0800
    assert dec(229, V4, decoder=d) is None
    assert codes(d) == ["bad_ip_version"] * 4


def test_max_issues_bound_keeps_counting() -> None:
    d = Decoder(max_issues=3)
    for i in range(10):
        d.decode(i + 1, 0, 1, b"\x00" * 5, 5)
    assert len(d.issues) == 3
    assert d.issue_counts == {"truncated_link": 10}


# --------------------------------------------------------------------------- IPv4 / TCP details


def test_ipv4_options_skipped() -> None:
    opts = b"\x07\x07\x04" + bytes(4) + b"\x00" + b"\x01\x01\x01\x00"  # record route, EOL, NOPs
    assert dec(1, eth(ipv4(tcp(), options=opts))) == V4_PACKET


def test_ethernet_padding_trimmed() -> None:
    small = tcp(b"ok")
    frame = eth(ipv4(small)) + b"\x00" * 6 + b"\xde\xad\xbe\xef"  # padding + FCS
    pkt = dec(1, frame)
    assert pkt is not None and pkt[4] == b"ok"
    frame = eth(ipv6(tcp(b"")), 0x86DD) + b"\xff" * 12
    pkt = dec(1, frame)
    assert pkt is not None and pkt[4] == b""


def test_tcp_options_and_ns_flag() -> None:
    opts = b"\x02\x04\x05\xb4\x01\x03\x03\x07"  # MSS, NOP, WS
    pkt = dec(1, eth(ipv4(tcp(b"x", flags=0x1C2, options=opts))))
    assert pkt is not None
    assert pkt[3] == 0x1C2 and pkt[4] == b"x"


def test_bad_ihl() -> None:
    d = Decoder()
    assert dec(1, eth(ipv4(tcp(), ihl=4)), decoder=d) is None
    assert codes(d) == ["bad_ihl"]


def test_ihl_beyond_data() -> None:
    d = Decoder()
    frame = eth(ipv4(b"", ihl=15, total=60))
    assert dec(1, frame, decoder=d) is None
    assert codes(d) == ["ip_options_truncated"]


def test_total_length_longer_than_data_not_snaplen() -> None:
    d = Decoder()
    seg = tcp()
    frame = eth(ipv4(seg, total=20 + len(seg) + 100))
    pkt = dec(1, frame, decoder=d)
    assert pkt == V4_PACKET  # what is there is used
    assert codes(d) == ["truncated_ip"]


def test_total_length_longer_than_data_snaplen() -> None:
    d = Decoder()
    full = eth(ipv4(tcp()))
    cut = full[:-10]
    pkt = dec(1, cut, wirelen=len(full), decoder=d)
    assert pkt is not None and pkt[4] == PAYLOAD[:-10]
    assert codes(d) == ["snaplen_cut_payload"]


def test_total_length_beyond_wire_length_even_if_snaplen() -> None:
    d = Decoder()
    seg = tcp()
    full = eth(ipv4(seg, total=20 + len(seg) + 500))
    dec(1, full[:-10], wirelen=len(full), decoder=d)
    assert codes(d) == ["truncated_ip"]


def test_total_length_shorter_than_data_trims() -> None:
    seg = tcp()
    pkt = dec(1, eth(ipv4(seg, total=20 + 20 + 5)))
    assert pkt is not None and pkt[4] == PAYLOAD[:5]


def test_total_length_shorter_than_header() -> None:
    d = Decoder()
    assert dec(1, eth(ipv4(tcp(), total=19)), decoder=d) is None
    assert codes(d) == ["bad_ip_total_length"]


def test_total_length_zero_is_tso() -> None:
    d = Decoder()
    assert dec(1, eth(ipv4(tcp(), total=0)), decoder=d) == V4_PACKET
    assert codes(d) == ["ip_total_length_zero"]


def test_total_length_shorter_than_tcp_header() -> None:
    d = Decoder()
    assert dec(1, eth(ipv4(tcp(), total=30)), decoder=d) is None
    assert codes(d) == ["truncated_tcp"]


@pytest.mark.parametrize("doff", [0, 4, 15])
def test_bad_tcp_offset(doff: int) -> None:
    d = Decoder()
    assert dec(1, eth(ipv4(tcp(b"", doff=doff))), decoder=d) is None
    assert codes(d) == ["bad_tcp_offset"]


def test_tcp_options_cut_by_snaplen() -> None:
    d = Decoder()
    full = eth(ipv4(tcp(b"", options=bytes(8))))
    assert dec(1, full[:-4], wirelen=len(full), decoder=d) is None
    assert codes(d) == ["truncated_tcp"]


@pytest.mark.parametrize("proto", [17, 1, 4, 41, 47])
def test_non_tcp_counted_per_protocol(proto: int) -> None:
    d = Decoder()
    assert dec(1, eth(ipv4(b"\x00" * 30, proto=proto)), decoder=d) is None
    assert d.counts["non_tcp"] == 1 and d.counts[f"ip_proto_{proto}"] == 1
    assert d.issues == []


# --------------------------------------------------------------------------- IPv6 extension headers

EXT_CASES: list[tuple[str, bytes]] = [
    ("hop-by-hop", ipv6(ext8(6) + tcp(), nh=0)),
    ("routing", ipv6(ext8(6, 22) + tcp(), nh=43)),
    ("dest-opts", ipv6(ext8(6) + tcp(), nh=60)),
    ("mobility", ipv6(ext8(6) + tcp(), nh=135)),
    ("ah", ipv6(ah(6) + tcp(), nh=51)),
    ("atomic-fragment", ipv6(frag6(6, 0, False) + tcp(), nh=44)),
    ("chain", ipv6(ext8(43) + ext8(44) + frag6(51, 0, False) + ah(60) + ext8(135) + ext8(6) + tcp(), nh=0)),
]


@pytest.mark.parametrize("data", [c[1] for c in EXT_CASES], ids=[c[0] for c in EXT_CASES])
def test_ipv6_extension_headers(data: bytes) -> None:
    d = Decoder()
    assert dec(229, data, decoder=d) == V6_PACKET
    assert d.issues == []


def test_ipv6_ext_chain_bound() -> None:
    d = Decoder()
    n = MAX_IPV6_EXT_HEADERS
    ok = b"".join(ext8(60) for _ in range(n - 1)) + ext8(6)
    assert dec(229, ipv6(ok + tcp(), nh=60), decoder=d) == V6_PACKET
    long = b"".join(ext8(60) for _ in range(n)) + ext8(6)
    assert dec(229, ipv6(long + tcp(), nh=60), decoder=d) is None
    assert codes(d) == ["ipv6_ext_loop"]


def test_ipv6_ext_truncated_by_payload_length() -> None:
    d = Decoder()
    hdr = bytes([6, 10]) + bytes(6)  # claims 88 bytes
    assert dec(229, ipv6(hdr + tcp(), nh=60), decoder=d) is None
    assert codes(d) == ["ipv6_ext_truncated"]


def test_ipv6_ext_beyond_payload_length_but_within_frame() -> None:
    d = Decoder()
    data = ipv6(ext8(6, 14), nh=60, plen=8) + bytes(40)  # header is 16 bytes, payload length says 8
    assert dec(229, data, decoder=d) is None
    assert codes(d) == ["ipv6_ext_truncated"] and "payload ends at 48" in d.issues[0].detail


def test_ipv6_ext_truncated_by_capture() -> None:
    d = Decoder()
    full = ipv6(ext8(6, 22) + tcp(), nh=43)
    assert dec(229, full[:50], wirelen=len(full), decoder=d) is None
    assert codes(d) == ["ipv6_ext_truncated"]


@pytest.mark.parametrize("nh", [59, 17, 58, 4, 41, 47, 253])
def test_ipv6_non_tcp(nh: int) -> None:
    d = Decoder()
    assert dec(229, ipv6(ext8(nh) + bytes(40), nh=0), decoder=d) is None
    assert d.counts["non_tcp"] == 1 and d.counts[f"ip_proto_{nh}"] == 1
    assert d.issues == []


def test_ipv6_jumbo_uses_data_length() -> None:
    d = Decoder()
    assert dec(229, ipv6(tcp(), plen=0), decoder=d) == V6_PACKET
    assert d.counts["ipv6_jumbo"] == 1


def test_ipv6_payload_length_trims_and_lies() -> None:
    d = Decoder()
    seg = tcp()
    pkt = dec(229, ipv6(seg, plen=len(seg) - 3) + b"\0\0\0", decoder=d)
    assert pkt is not None and pkt[4] == PAYLOAD[:-3]
    pkt = dec(229, ipv6(seg, plen=len(seg) + 3), decoder=d)
    assert pkt == V6_PACKET
    assert codes(d) == ["truncated_ip"]


def _split6(seg: bytes, sizes: list[int], ident: int = 7, nh: int = 6) -> list[bytes]:
    out, pos = [], 0
    for i, n in enumerate(sizes):
        last = i == len(sizes) - 1
        piece = seg[pos:] if last else seg[pos : pos + n]
        out.append(ipv6(frag6(nh, pos, not last, ident) + piece, nh=44))
        pos += len(piece)
    return out


@pytest.mark.parametrize("order", ["in-order", "reversed"])
def test_ipv6_fragments(order: str) -> None:
    seg = tcp(b"P" * 300)
    frags = _split6(seg, [96, 104, 200])
    if order == "reversed":
        frags.reverse()
    d = Decoder()
    results = [d.decode(i + 1, i, 229, f, len(f)) for i, f in enumerate(frags)]
    assert results[:-1] == [None, None]
    assert results[-1] == (V6_PACKET[0], SEQ, ACK, 0x18, b"P" * 300)
    assert d.counts["fragments"] == 3 and d.counts["reassembled"] == 1
    assert d.issues == []


def test_ipv6_fragments_with_dest_opts_in_fragmentable_part() -> None:
    seg = ext8(6) + tcp(b"Q" * 100)
    frags = _split6(seg, [64, 100], nh=60)
    frags = [ipv6(ext8(44) + f[40:], nh=0) for f in frags]  # hop-by-hop before the fragment header
    d = Decoder()
    assert d.decode(1, 0, 229, frags[1], len(frags[1])) is None
    pkt = d.decode(2, 0, 229, frags[0], len(frags[0]))
    assert pkt == (V6_PACKET[0], SEQ, ACK, 0x18, b"Q" * 100)
    assert d.issues == []


def test_ipv6_udp_fragments_not_held() -> None:
    d = Decoder()
    f = ipv6(frag6(17, 0, True) + bytes(64), nh=44)
    assert d.decode(1, 0, 229, f, len(f)) is None
    assert d.counts["non_tcp"] == 1 and d.defrag.pending == 0


# --------------------------------------------------------------------------- truncation at every offset


def _regions_v4() -> tuple[bytes, list[tuple[int, str]]]:
    opts = b"\x01\x01\x01\x00"
    seg = tcp(options=b"\x01\x01\x01\x01")
    frame = eth(ipv4(seg, options=opts), tags=((0x8100, 3),))
    # (first cut length of the region, expected issue)
    ip0 = 18
    return frame, [
        (0, "truncated_link"),
        (ip0, "truncated_ip"),
        (ip0 + 20, "ip_options_truncated"),
        (ip0 + 24, "truncated_tcp"),
        (ip0 + 24 + 24, "snaplen_cut_payload"),
    ]


def _regions_v6() -> tuple[bytes, list[tuple[int, str]]]:
    frame = sll2(ipv6(ext8(6, 14) + tcp(), nh=60), 0x86DD)
    ip0 = 20
    return frame, [
        (0, "truncated_link"),
        (ip0, "truncated_ip"),
        (ip0 + 40, "ipv6_ext_truncated"),
        (ip0 + 56, "truncated_tcp"),
        (ip0 + 56 + 20, "snaplen_cut_payload"),
    ]


def _regions_null() -> tuple[bytes, list[tuple[int, str]]]:
    frame = null_le(ipv4(tcp()), 2)
    return frame, [
        (0, "truncated_link"),
        (4, "truncated_ip"),
        (24, "truncated_tcp"),
        (44, "snaplen_cut_payload"),
    ]


@pytest.mark.parametrize(
    "build", [_regions_v4, _regions_v6, _regions_null], ids=["eth-vlan-v4", "sll2-v6", "null-v4"]
)
@pytest.mark.parametrize("snaplen", [True, False], ids=["snaplen", "wire-short"])
def test_truncated_at_every_offset(
    build: Callable[[], tuple[bytes, list[tuple[int, str]]]], snaplen: bool
) -> None:
    frame, regions = build()
    linktype = 276 if frame[:2] == b"\x86\xdd" else (1 if frame[:6] == MAC_B else 0)
    full = Decoder().decode(1, 0, linktype, frame, len(frame))
    assert full is not None and full[4] == PAYLOAD
    for n in range(len(frame)):
        d = Decoder()
        wirelen = len(frame) if snaplen else n
        pkt = d.decode(1, 0, linktype, frame[:n], wirelen)
        expected = [code for start, code in regions if start <= n][-1]
        if expected == "snaplen_cut_payload" and not snaplen:
            expected = "truncated_ip"  # the packet claims more than was on the wire
        assert codes(d) == [expected], (n, codes(d))
        if pkt is not None:
            assert expected in ("snaplen_cut_payload", "truncated_ip")
            assert pkt[:4] == full[:4]
            assert full[4].startswith(pkt[4]) and len(pkt[4]) < len(full[4])
        else:
            assert expected not in ("snaplen_cut_payload",)


# --------------------------------------------------------------------------- fuzzing

ALL_LINKTYPES = [0, 1, 12, 14, 101, 108, 113, 228, 229, 276, 147]
SEEDS = [
    eth(V4),
    eth(V6, 0x86DD),
    eth(V4, tags=((0x8100, 1),)),
    sll(V4),
    sll2(V6, 0x86DD),
    null_le(V4, 2),
    V4,
    V6,
]


def _check_packet(pkt: TcpPacket | None, data: bytes) -> None:
    if pkt is None:
        return
    key, seq, ack, flags, payload = pkt
    assert len(key) in (12, 36)
    assert 0 <= seq < 2**32 and 0 <= ack < 2**32 and 0 <= flags < 512
    assert isinstance(payload, bytes)


@settings(max_examples=200, deadline=None)
@given(
    linktype=st.sampled_from(ALL_LINKTYPES),
    data=st.binary(max_size=200),
    extra=st.integers(min_value=-5, max_value=100),
)
def test_random_bytes_never_raise(linktype: int, data: bytes, extra: int) -> None:
    d = Decoder(max_issues=5)
    pkt = d.decode(1, 0, linktype, data, len(data) + extra)
    _check_packet(pkt, data)
    d.flush()
    assert len(d.issues) <= 5


@settings(max_examples=200, deadline=None)
@given(
    seed=st.sampled_from(SEEDS),
    flips=st.lists(st.tuples(st.integers(min_value=0, max_value=200), st.integers(0, 255)), max_size=6),
    cut=st.integers(min_value=0, max_value=200),
    linktype=st.sampled_from(ALL_LINKTYPES),
)
def test_mutated_frames_never_raise(
    seed: bytes, flips: list[tuple[int, int]], cut: int, linktype: int
) -> None:
    buf = bytearray(seed)
    for pos, val in flips:
        if pos < len(buf):
            buf[pos] = val
    data = bytes(buf[: max(cut, 0)]) if cut < len(buf) else bytes(buf)
    d = Decoder()
    for frame in range(1, 4):  # repeated: fragments of the same datagram may come together
        _check_packet(d.decode(frame, frame, linktype, data, len(seed)), data)
    d.flush()


# --------------------------------------------------------------------------- cross-check on public captures

PUBLIC_CAPTURES = os.environ.get("FWDAUDIT_PUBLIC_CAPTURES", "/work/shared/captures-public")
CAPTURES = sorted(
    p for p in glob.glob(f"{PUBLIC_CAPTURES}/**/*.pcap*", recursive=True) if not p.endswith(".out")
)


def _reference_dpkt(linktype: int, data: bytes) -> TcpPacket | None:
    """What dpkt decodes for this frame (None when dpkt finds no TCP)."""
    import dpkt

    try:
        if linktype == 1:
            l2: dpkt.Packet = dpkt.ethernet.Ethernet(data)
        elif linktype == 0:
            l2 = dpkt.loopback.Loopback(data)
        elif linktype == 113:
            l2 = dpkt.sll.SLL(data)
        else:
            return None
    except (dpkt.UnpackError, struct.error):
        return None
    ip = l2.data
    if isinstance(ip, dpkt.ip.IP):
        src, dst = ip.src, ip.dst
    elif isinstance(ip, dpkt.ip6.IP6):
        src, dst = ip.src, ip.dst
    else:
        return None
    t = ip.data
    if not isinstance(t, dpkt.tcp.TCP):
        return None
    return (
        src + dst + struct.pack("!HH", t.sport, t.dport),
        t.seq,
        t.ack,
        t._off_flags & 0x1FF,
        bytes(t.data),
    )


def _reference_scapy(linktype: int, data: bytes) -> TcpPacket | None:
    """What scapy decodes for this frame (None when scapy finds no TCP)."""
    from scapy.config import conf
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6

    cls: Any = conf.l2types.get(linktype)
    pkt = cls(data)
    if TCP not in pkt:
        return None
    t = pkt[TCP]
    under = t.underlayer
    while under is not None and not isinstance(under, (IP, IPv6)):
        under = under.underlayer
    assert under is not None
    fam = 4 if isinstance(under, IP) else 6
    import socket

    af = socket.AF_INET if fam == 4 else socket.AF_INET6
    src, dst = socket.inet_pton(af, under.src), socket.inet_pton(af, under.dst)
    payload = bytes(t.payload)
    pad = t.getlayer(conf.padding_layer)
    if pad is not None:  # scapy keeps link padding after the TCP payload
        payload = payload[: len(payload) - len(bytes(pad))]
    return (src + dst + struct.pack("!HH", t.sport, t.dport), t.seq, t.ack, int(t.flags), payload)


def _fast_path(data: bytes) -> TcpPacket | None:
    """The engine's inlined fast path as the brief describes it (Ethernet, IPv4, IHL 5, no fragment, TCP)."""
    if len(data) < 34 or data[12:14] != b"\x08\x00" or data[14] != 0x45 or data[23] != 6:
        return None
    if struct.unpack_from("!H", data, 20)[0] & 0x3FFF:
        return None
    total = struct.unpack_from("!H", data, 16)[0]
    t = 34
    hl = (data[t + 12] >> 4) * 4
    seq, ack = struct.unpack_from("!II", data, t + 4)
    return (
        data[26:34] + data[t : t + 4],
        seq,
        ack,
        data[t + 13] | ((data[t + 12] & 1) << 8),
        data[t + hl : 14 + total],
    )


@pytest.mark.slow
@pytest.mark.parametrize("path", CAPTURES, ids=[Path(p).name for p in CAPTURES])
def test_public_captures_match_dpkt_and_scapy(path: str) -> None:
    from scapy.utils import RawPcapReader

    d = Decoder()
    compared = 0
    with RawPcapReader(path) as reader:
        for number, (data, meta) in enumerate(reader, 1):
            linktype = getattr(meta, "linktype", None)
            if linktype is None:
                linktype = reader.linktype
            ours = d.decode(number, 0, linktype, data, meta.wirelen)
            ref = _reference_dpkt(linktype, data)
            if len(data) == meta.wirelen:  # dpkt does not know about snaplen cuts
                assert ours == ref, (number, ours, ref)
            assert ours == _reference_scapy(linktype, data) or len(data) < meta.wirelen, number
            fast = _fast_path(data) if linktype == 1 else None
            if fast is not None and len(data) == meta.wirelen:
                assert ours == fast, number
            compared += ours is not None
    d.flush()
    assert compared > 0
    assert set(d.issue_counts) <= {"snaplen_cut_payload", "truncated_tcp", "truncated_ip"}, d.issues


def test_decode_issue_is_frozen() -> None:
    issue = DecodeIssue(1, "truncated_link", "x")
    with pytest.raises(AttributeError):
        issue.code = "other"  # type: ignore[misc]
