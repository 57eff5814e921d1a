"""Byte builders for capture-file test fixtures: classic pcap, pcapng, gzip.

Every builder returns ``bytes`` and takes the field values literally, so tests can also
build broken files (wrong lengths, bad trailers, caplen > wirelen, ...). Nothing here
imports the analyzer: the fixtures are an independent description of the formats
(pcap-savefile(5); draft-ietf-opsawg-pcapng).
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterable, Sequence

PCAP_MAGIC_US = 0xA1B2C3D4  # pcap-savefile(5)
PCAP_MAGIC_NS = 0xA1B23C4D  # pcap-savefile(5), nanosecond timestamps
PCAP_MAGIC_MODIFIED = 0xA1B2CD34  # Kuznetzov's patched libpcap, 24-byte record headers
LINKTYPE_ETHERNET = 1  # https://www.tcpdump.org/linktypes.html
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113

BT_SHB = 0x0A0D0D0A
BT_IDB = 1
BT_OPB = 2
BT_SPB = 3
BT_NRB = 4
BT_ISB = 5
BT_EPB = 6
BT_CUSTOM = 0x00000BAD
OPT_IF_NAME = 2
OPT_IF_TSRESOL = 9
OPT_IF_FCSLEN = 13
OPT_IF_TSOFFSET = 14

#: a fixed timestamp base: 2023-11-14 22:13:20 UTC
BASE_SEC = 1_700_000_000


def _e(little: bool) -> str:
    return "<" if little else ">"


def payload(i: int, size: int = 60) -> bytes:
    """A recognisable packet payload: frame index repeated, then a counter."""
    body = bytes((i + k) & 0xFF for k in range(size))
    return i.to_bytes(2, "big") + body[2:]


# ----------------------------------------------------------------- classic pcap


def pcap_header(
    *,
    little: bool = True,
    nano: bool = False,
    modified: bool = False,
    snaplen: int = 65535,
    linktype: int = LINKTYPE_ETHERNET,
    version: tuple[int, int] = (2, 4),
) -> bytes:
    """The 24-byte pcap file header."""
    magic = PCAP_MAGIC_MODIFIED if modified else PCAP_MAGIC_NS if nano else PCAP_MAGIC_US
    return struct.pack(_e(little) + "IHHiIII", magic, version[0], version[1], 0, 0, snaplen, linktype)


def pcap_record(
    sec: int,
    frac: int,
    data: bytes,
    *,
    wirelen: int | None = None,
    caplen: int | None = None,
    little: bool = True,
    modified: bool = False,
) -> bytes:
    """One record: header (16 or 24 bytes) + data; caplen/wirelen default to len(data)."""
    e = _e(little)
    cap = len(data) if caplen is None else caplen
    wire = len(data) if wirelen is None else wirelen
    head = struct.pack(e + "IIII", sec, frac, cap, wire)
    if modified:
        head += struct.pack(e + "IHBx", 2, 0x0800, 0)
    return head + data


def pcap_file(
    records: Iterable[tuple[int, int, bytes]],
    *,
    little: bool = True,
    nano: bool = False,
    modified: bool = False,
    snaplen: int = 65535,
    linktype: int = LINKTYPE_ETHERNET,
) -> bytes:
    """A whole pcap file from (sec, frac, data) records."""
    out = [pcap_header(little=little, nano=nano, modified=modified, snaplen=snaplen, linktype=linktype)]
    out.extend(pcap_record(s, f, d, little=little, modified=modified) for s, f, d in records)
    return b"".join(out)


def three_packet_pcap(*, little: bool = True, nano: bool = False, modified: bool = False) -> bytes:
    """The small reference file: three packets of different sizes, one second apart."""
    return pcap_file(
        [
            (BASE_SEC, 123_456_789 if nano else 123_456, payload(1, 60)),
            (BASE_SEC + 1, 999_999 if not nano else 999_999_999, payload(2, 70)),
            (BASE_SEC + 2, 0, payload(3, 41)),
        ],
        little=little,
        nano=nano,
        modified=modified,
    )


# ----------------------------------------------------------------- pcapng


def pad4(data: bytes) -> bytes:
    """Zero-pad to a multiple of 4 bytes."""
    return data + b"\x00" * (-len(data) % 4)


def pcapng_option(code: int, value: bytes, *, little: bool = True) -> bytes:
    """One option TLV, value padded to 32 bits."""
    return struct.pack(_e(little) + "HH", code, len(value)) + pad4(value)


def pcapng_options(options: Sequence[tuple[int, bytes]], *, little: bool = True) -> bytes:
    """An option list terminated by opt_endofopt (empty when there is no option)."""
    if not options:
        return b""
    return b"".join(pcapng_option(c, v, little=little) for c, v in options) + struct.pack(
        _e(little) + "HH", 0, 0
    )


def pcapng_block(
    btype: int,
    body: bytes,
    *,
    little: bool = True,
    length: int | None = None,
    trailer: int | None = None,
) -> bytes:
    """A generic block; ``length``/``trailer`` override the computed total length."""
    body = pad4(body)
    total = 12 + len(body)
    e = _e(little)
    return (
        struct.pack(e + "II", btype, total if length is None else length)
        + body
        + struct.pack(e + "I", total if trailer is None else trailer)
    )


def pcapng_shb(*, little: bool = True, major: int = 1, minor: int = 0, options: bytes = b"") -> bytes:
    """A Section Header Block (section length -1 = unknown)."""
    body = struct.pack(_e(little) + "IHHq", 0x1A2B3C4D, major, minor, -1) + options
    return pcapng_block(BT_SHB, body, little=little)


def pcapng_idb(
    linktype: int = LINKTYPE_ETHERNET,
    snaplen: int = 0,
    *,
    little: bool = True,
    tsresol: int | None = None,
    tsoffset: int | None = None,
    name: str | None = None,
    fcslen: int | None = None,
) -> bytes:
    """An Interface Description Block with the common options."""
    opts: list[tuple[int, bytes]] = []
    if name is not None:
        opts.append((OPT_IF_NAME, name.encode()))
    if tsresol is not None:
        opts.append((OPT_IF_TSRESOL, bytes([tsresol])))
    if tsoffset is not None:
        opts.append((OPT_IF_TSOFFSET, struct.pack(_e(little) + "q", tsoffset)))
    if fcslen is not None:
        opts.append((OPT_IF_FCSLEN, bytes([fcslen])))
    body = struct.pack(_e(little) + "HHI", linktype, 0, snaplen) + pcapng_options(opts, little=little)
    return pcapng_block(BT_IDB, body, little=little)


def pcapng_epb(
    ifid: int,
    ts_units: int,
    data: bytes,
    *,
    wirelen: int | None = None,
    caplen: int | None = None,
    little: bool = True,
    options: bytes = b"",
) -> bytes:
    """An Enhanced Packet Block; ``ts_units`` is the 64-bit timestamp in the interface's units."""
    e = _e(little)
    cap = len(data) if caplen is None else caplen
    wire = len(data) if wirelen is None else wirelen
    body = (
        struct.pack(e + "IIIII", ifid, ts_units >> 32, ts_units & 0xFFFFFFFF, cap, wire)
        + pad4(data)
        + options
    )
    return pcapng_block(BT_EPB, body, little=little)


def pcapng_opb(
    ifid: int, ts_units: int, data: bytes, *, wirelen: int | None = None, little: bool = True
) -> bytes:
    """An obsolete Packet Block (type 2)."""
    e = _e(little)
    wire = len(data) if wirelen is None else wirelen
    body = struct.pack(e + "HHIIII", ifid, 0, ts_units >> 32, ts_units & 0xFFFFFFFF, len(data), wire) + pad4(
        data
    )
    return pcapng_block(BT_OPB, body, little=little)


def pcapng_spb(data: bytes, *, wirelen: int | None = None, little: bool = True) -> bytes:
    """A Simple Packet Block (original length defaults to len(data))."""
    wire = len(data) if wirelen is None else wirelen
    return pcapng_block(BT_SPB, struct.pack(_e(little) + "I", wire) + pad4(data), little=little)


def three_packet_pcapng(*, little: bool = True) -> bytes:
    """The small reference pcapng: SHB, one Ethernet IDB (microseconds), three EPBs."""
    base = BASE_SEC * 1_000_000
    return (
        pcapng_shb(little=little)
        + pcapng_idb(little=little, snaplen=65535, name="eth0")
        + pcapng_epb(0, base + 123_456, payload(1, 60), little=little)
        + pcapng_epb(0, base + 1_999_999, payload(2, 70), little=little)
        + pcapng_epb(0, base + 2_000_000, payload(3, 41), little=little)
    )


def gz(data: bytes) -> bytes:
    """Deterministic gzip (mtime 0)."""
    return gzip.compress(data, mtime=0)
