"""Capture file readers: classic pcap and pcapng, plain or gzip-compressed, from a file or stdin.

``open_capture(path)`` sniffs the first bytes (gzip ``1f 8b``, then a pcap magic or a
pcapng Section Header Block), reads the file header and returns a :class:`Capture`
whose ``packets()`` yields ``(ts_ns, linktype, wirelen, data)`` per packet record while
``info`` (:class:`CaptureInfo`) fills in. Damage inside the file becomes
:class:`Damage` records in ``info.damage`` (codes are listed in
:mod:`analyzer.capture.reader`); only an unusable input raises
:class:`~analyzer.errors.CaptureFormatError`, with one sentence.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable
from typing import BinaryIO

from analyzer.capture.pcap import PCAP_MAGICS, PcapCapture
from analyzer.capture.pcapng import SHB_BYTES, PcapngCapture
from analyzer.capture.reader import (
    GZIP_MAGIC,
    Capture,
    CaptureInfo,
    Damage,
    GunzipSource,
    Packet,
    RawSource,
    Stream,
    describe_start,
    escape_bytes,
    os_reason,
)
from analyzer.errors import CaptureFormatError

__all__ = ["Capture", "CaptureInfo", "Damage", "Packet", "open_capture"]

STDIN_PATH = "-"  # conventional name of standard input on the command line
MAGIC_LEN = 4  # pcap magic and pcapng block type are both 4 bytes


def open_capture(path: str) -> Capture:
    """Open a pcap/pcapng file (gzip allowed; "-" = standard input) and read its header."""
    closer: Callable[[], None] | None
    if path == STDIN_PATH:
        f: BinaryIO = sys.stdin.buffer
        closer = None
        label = "standard input"
    else:
        label = path if path.isprintable() else repr(path)
        try:
            f = open(path, "rb", buffering=0)  # closed by Capture.close()
        except OSError as exc:
            raise CaptureFormatError(f"cannot open {label}: {os_reason(exc)}") from None
        closer = f.close
    ok = False
    try:
        cap = _open_file(f, path, label, closer)
        ok = True
        return cap
    finally:
        if not ok and closer is not None:
            closer()


def _file_size(f: BinaryIO) -> int | None:
    """On-disk size of a regular file, None for pipes and in-memory streams."""
    try:
        st = os.fstat(f.fileno())
    except (OSError, ValueError):  # io.UnsupportedOperation (BytesIO) is both
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _open_file(f: BinaryIO, path: str, label: str, closer: Callable[[], None] | None) -> Capture:
    """Sniff the format of an opened file and build the matching reader."""
    raw = RawSource(f)
    stream = Stream(raw)
    stream.fill(MAGIC_LEN)
    if not stream.avail:
        if raw.error is not None:
            raise CaptureFormatError(f"cannot read {label}: {raw.error}")
        raise CaptureFormatError(f"{label}: empty file" if path != STDIN_PATH else "standard input is empty")
    compression: str | None = None
    gz: GunzipSource | None = None
    if stream.data.startswith(GZIP_MAGIC):
        gz = GunzipSource(raw, stream.data)
        stream = Stream(gz)
        compression = "gzip"
        stream.fill(MAGIC_LEN)
        if stream.avail < MAGIC_LEN and gz.error is not None:
            raise CaptureFormatError(f"{label}: gzip stream broken before any packet ({gz.error})")
        if not stream.avail:
            raise CaptureFormatError(f"{label}: empty file (after gzip decompression)")
    head = stream.data[: stream.avail]
    magic = head[:MAGIC_LEN]
    cls: type[PcapCapture] | type[PcapngCapture]
    if magic in PCAP_MAGICS:
        cls = PcapCapture
    elif magic == SHB_BYTES:
        cls = PcapngCapture
    elif len(head) < MAGIC_LEN and any(m.startswith(head) for m in (*PCAP_MAGICS, SHB_BYTES)):
        raise CaptureFormatError(f"{label}: truncated capture file header ({len(head)} bytes)")
    else:
        inside = " (gzip-compressed)" if compression else ""
        start = escape_bytes(head[:8])
        raise CaptureFormatError(
            f"{label}: not a capture file{inside} (starts with '{start}', {describe_start(head)})"
        )
    size = _file_size(f)
    try:
        cap = cls(stream, path, compression, size, closer)
    except CaptureFormatError as exc:
        if gz is not None and gz.error is not None:
            raise CaptureFormatError(f"{label}: gzip stream broken before any packet ({gz.error})") from None
        raise CaptureFormatError(f"{label}: {exc}") from None
    if gz is not None and gz.error is not None and not cap.has_complete_packet():
        raise CaptureFormatError(f"{label}: gzip stream broken before any packet ({gz.error})")
    return cap
