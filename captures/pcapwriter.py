"""Deterministic pcap / pcapng writers for the capture generators (no host data, fixed options)."""

from __future__ import annotations

import struct
from collections.abc import Iterable

PCAP_MAGIC_US = 0xA1B2C3D4  # libpcap, microsecond timestamps
PCAP_MAGIC_NS = 0xA1B23C4D  # libpcap, nanosecond timestamps
BLOCK_SHB = 0x0A0D0D0A  # pcapng Section Header Block
BLOCK_IDB = 0x00000001  # Interface Description Block
BLOCK_EPB = 0x00000006  # Enhanced Packet Block
BYTE_ORDER_MAGIC = 0x1A2B3C4D


def _pad4(b: bytes) -> bytes:
    return b + b"\x00" * (-len(b) % 4)


def pcapng_bytes(packets: Iterable[tuple[int, bytes]], linktype: int = 1, endian: str = "<",
                 tsresol_exp: int = 9) -> bytes:
    """A pcapng file: one section, one interface (if_tsresol 10^-tsresol_exp), EPB per (ts_ns, frame)."""
    out = bytearray()
    shb_body = struct.pack(endian + "IHHq", BYTE_ORDER_MAGIC, 1, 0, -1)
    out += struct.pack(endian + "II", BLOCK_SHB, 12 + len(shb_body)) + shb_body + struct.pack(endian + "I", 12 + len(shb_body))
    opt = struct.pack(endian + "HH", 9, 1) + bytes([tsresol_exp]) + b"\x00\x00\x00" + struct.pack(endian + "HH", 0, 0)
    idb_body = struct.pack(endian + "HHI", linktype, 0, 262144) + opt
    out += struct.pack(endian + "II", BLOCK_IDB, 12 + len(idb_body)) + idb_body + struct.pack(endian + "I", 12 + len(idb_body))
    div = 10 ** (9 - tsresol_exp)
    for ts_ns, frame in packets:
        ts = ts_ns // div
        body = struct.pack(endian + "IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(frame), len(frame)) + _pad4(frame)
        out += struct.pack(endian + "II", BLOCK_EPB, 12 + len(body)) + body + struct.pack(endian + "I", 12 + len(body))
    return bytes(out)


def pcap_bytes(packets: Iterable[tuple[int, bytes]], linktype: int = 1, endian: str = "<", nanos: bool = False,
               snaplen: int = 262144) -> bytes:
    """A classic pcap file."""
    magic = PCAP_MAGIC_NS if nanos else PCAP_MAGIC_US
    out = bytearray(struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype))
    for ts_ns, frame in packets:
        sec, frac = divmod(ts_ns, 10**9)
        if not nanos:
            frac //= 1000
        cap = frame[:snaplen]
        out += struct.pack(endian + "IIII", sec, frac, len(cap), len(frame)) + cap
    return bytes(out)
