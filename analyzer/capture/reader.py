"""Shared machinery of the capture readers: result types, byte sources, buffered stream, resync.

Strategy: the bytes of the capture arrive through a *source* (a plain file, standard
input, or a streaming gzip decoder over either) whose ``read(n)`` never raises: an I/O
or decompression error ends the stream and is kept in ``source.error``. A
:class:`Stream` holds one ``bytes`` buffer (``data``) and a cursor (``pos``); the
format readers (``pcap.py``, ``pcapng.py``) parse records straight out of ``data``
with precompiled ``struct.Struct.unpack_from`` and slice packets out of it, so a packet
costs one slice. :meth:`Stream.fill` reads :data:`CHUNK_SIZE` bytes at a time and uses
each chunk in place; when a record straddles two chunks, only that record's bytes are
joined into a small buffer (a *stitch*) and the next refill switches to the rest of the
new chunk without copying it. Memory stays O(chunk + largest record) and no byte is
copied more than once or twice.

Damage found in the file becomes a :class:`Damage` record, never an exception. When a
record header is absurd (a length no writer produces) the readers *resync*:
:func:`resync` scans forward for the next offset where a plausible record header
starts. A precompiled regular expression (built by the format reader from its
plausibility rules) finds candidate offsets at C speed, and a Python check confirms each
candidate; every rejected candidate advances the scan by one byte and every check costs
O(1) plus at most one buffer refill, so resync is linear in the bytes skipped.

Damage codes (``Damage.code``), the complete list:

==========================  ==============================================================
code                        meaning
==========================  ==============================================================
truncated_header            pcap: the file ends inside a record header; nothing yielded for it
truncated_record            pcap: the file ends inside a record's packet data; nothing yielded
truncated_block             pcapng: the file ends inside a block; nothing yielded for it
caplen_too_large            pcap: a record's caplen is absurd (above max(snaplen, 262144)); resync
bad_caplen                  caplen > original length: packet yielded with wirelen = caplen
implausible_wirelen         original length of 16 MiB or more: packet yielded with wirelen = caplen
caplen_exceeds_snaplen      caplen > the snaplen of the file/interface (packet still yielded)
caplen_exceeds_block        pcapng: an EPB/OPB's caplen does not fit in its block; packet skipped
bad_block_length            pcapng: block length not a multiple of 4, below the minimum of its
                            type or above 64 MiB; resync
bad_block_trailer           pcapng: the trailing block length differs from the leading one; resync
bad_section_header          pcapng: a later section header with a bad magic, length or trailer; resync
unsupported_section         pcapng: a section of an unknown major version; its blocks are skipped
unknown_interface           pcapng: a packet block names an interface not defined in its
                            section; packet skipped
too_many_interfaces         pcapng: more interface blocks than MAX_INTERFACES; extra ones ignored
bad_option                  pcapng: an option runs past its block or has a wrong length; the
                            rest of that block's options are ignored
unusual_version             pcap: version other than 2.4 (the file is still read)
resynced                    reading resumed after skipping N damaged bytes
trailing_garbage            no plausible record after damage: N bytes up to the end skipped
gzip_error                  the gzip stream is corrupt or truncated; reading stopped there
read_error                  the operating system failed a read; reading stopped there
==========================  ==============================================================
"""

from __future__ import annotations

import abc
import io
import re
import zlib
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import BinaryIO, Protocol

#: One packet record: (timestamp in ns since the epoch, linktype, original length, captured bytes).
Packet = tuple[int, int, int, bytes]

#: Value type of the per-interface dictionaries in :attr:`CaptureInfo.interfaces`.
InterfaceValue = int | str | None

# Bytes asked from the source per refill. Measured on the 2-core machine (hot pcap loop,
# 1400-byte packets, page cache, median of 5): 64 KiB 1.72 GB/s, 256 KiB 1.91, 1 MiB 1.94,
# 4 MiB 1.73. A chunk is used in place (see Stream.fill), so its size only trades syscalls
# and slow-path passes against cache misses on freshly read data; 1 MiB is the sweet spot.
CHUNK_SIZE = 1024 * 1024
MAX_DAMAGE = 1000  # Damage records kept; the rest are only counted (CaptureInfo.damage_dropped)
MAX_SKIPPED_BLOCK_TYPES = 64  # distinct pcapng block types counted separately in skipped_blocks
OTHER_BLOCK_TYPE = -1  # skipped_blocks key that counts every type past MAX_SKIPPED_BLOCK_TYPES
GZIP_MAGIC = b"\x1f\x8b"  # RFC 1952 section 2.3.1: ID1 = 31, ID2 = 139
GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib manual: windowBits 16+8..15 = gzip wrapper only, CRC checked
GZIP_INPUT_CHUNK = 64 * 1024  # ours: compressed bytes fed to zlib per call
GZIP_SALVAGE_STEP = 256  # ours: compressed bytes per call when re-decoding up to a gzip error
NS_PER_S = 1_000_000_000  # nanoseconds per second


#: Every Damage code with its one-line meaning (the table in the module docstring, as data).
#: an original (wire) length at or above this is a lie (ours: 16 MiB, far above any link's MTU or TSO frame)
MAX_PLAUSIBLE_WIRELEN = (1 << 24) - 1


def implausible_wirelen(cap: int, wire: int) -> str:
    """The damage detail for a record whose original length ``wire`` is implausible."""
    return f"original length {wire} is implausible (limit {MAX_PLAUSIBLE_WIRELEN}); wirelen set to caplen {cap}"


DAMAGE_CODES: dict[str, str] = {
    "truncated_header": "pcap: the file ends inside a record header; nothing yielded for it",
    "truncated_record": "pcap: the file ends inside a record's packet data; nothing yielded",
    "truncated_block": "pcapng: the file ends inside a block; nothing yielded for it",
    "caplen_too_large": "pcap: a record's caplen is absurd (above max(snaplen, 262144)); resync",
    "bad_caplen": "caplen > original length: packet yielded with wirelen = caplen",
    "implausible_wirelen": (
        "original length of 16 MiB or more (no link carries such a frame): packet yielded with wirelen = caplen"
    ),
    "caplen_exceeds_snaplen": "caplen > the snaplen of the file/interface (packet still yielded)",
    "caplen_exceeds_block": "pcapng: an EPB/OPB's caplen does not fit in its block; packet skipped",
    "bad_block_length": (
        "pcapng: block length not a multiple of 4, below the minimum of its type or above 64 MiB; resync"
    ),
    "bad_block_trailer": "pcapng: the trailing block length differs from the leading one; resync",
    "bad_section_header": "pcapng: a later section header block with a bad magic, length or trailer; resync",
    "unsupported_section": "pcapng: a section of an unknown major version; its blocks are skipped",
    "unknown_interface": (
        "pcapng: a packet block names an interface not defined in its section; packet skipped"
    ),
    "too_many_interfaces": "pcapng: more interface blocks than MAX_INTERFACES; extra ones ignored",
    "bad_option": (
        "pcapng: an option runs past its block or has a wrong length; the rest of that block's options "
        "are ignored"
    ),
    "unusual_version": "pcap: version other than 2.4 (the file is still read)",
    "resynced": "reading resumed after skipping N damaged bytes",
    "trailing_garbage": "no plausible record after damage: N bytes up to the end skipped",
    "gzip_error": "the gzip stream is corrupt or truncated; reading stopped there",
    "read_error": "the operating system failed a read; reading stopped there",
}


@dataclass(slots=True)
class Damage:
    """A problem found in the capture file itself (mutable: filled in while reading)."""

    offset: int  #: byte offset in the (uncompressed) capture stream where it was found
    frame: int | None  #: 1-based frame number it concerns, or None when no packet was yielded for it
    code: str  #: stable snake_case name, see the table in this module's docstring
    detail: str  #: one sentence with the numbers


@dataclass(slots=True)
class CaptureInfo:
    """What is known about the capture; updated while packets are read.

    ``packets`` is exact at every yield (it is the frame number of the packet just
    yielded). ``bytes``, ``raw_bytes``, ``last_ts_ns`` and ``linktypes`` are refreshed
    whenever the reader refills its buffer (every :data:`CHUNK_SIZE` bytes) and when
    iteration ends or the capture is closed.
    """

    path: str  #: as given ("-" for standard input)
    format: str  #: "pcap" | "pcapng"
    compression: str | None  #: "gzip" or None
    byte_order: str  #: "little" | "big" (pcapng: of the first section)
    ts_resolution: str  #: pcap: "us" | "ns"; pcapng: "per-interface"
    snaplen: int | None  #: pcap only
    packets: int = 0  #: packet records yielded so far (== last frame number)
    bytes: int = 0  #: uncompressed bytes consumed so far (progress, MB/s)
    file_size: int | None = None  #: on-disk size when known (compressed size for gzip)
    first_ts_ns: int | None = None  #: timestamp of the first timestamped packet
    last_ts_ns: int | None = None  #: timestamp of the last timestamped packet yielded
    linktypes: dict[int, int] = field(default_factory=dict)  #: linktype -> packets
    #: one dict per interface: id (global index), section, section_id, linktype, snaplen, name,
    #: tsresol (raw if_tsresol byte), units_per_s, tsresol_ns_mul, tsresol_ns_div (ts_ns =
    #: units * mul // div + tsoffset_s * 1e9), tsoffset_s, fcs_len (bytes, None = unknown)
    interfaces: list[dict[str, InterfaceValue]] = field(default_factory=list)
    damage: list[Damage] = field(default_factory=list)  #: the first MAX_DAMAGE problems found
    damage_dropped: int = 0  #: problems found after MAX_DAMAGE (not kept)
    skipped_blocks: dict[int, int] = field(default_factory=dict)  #: pcapng non-packet block type -> count
    raw_bytes: int = 0  #: bytes read from the file or pipe so far (compressed bytes for gzip; progress)

    def add_damage(self, offset: int, frame: int | None, code: str, detail: str) -> None:
        """Record one problem, keeping at most MAX_DAMAGE of them."""
        if len(self.damage) < MAX_DAMAGE:
            self.damage.append(Damage(offset, frame, code, detail))
        else:
            self.damage_dropped += 1


class ByteSource(Protocol):
    """Where a :class:`Stream` gets its bytes; ``read`` never raises."""

    error: str | None  #: why the source ended early, None while healthy or at a clean end
    error_code: str  #: Damage code for ``error`` ("read_error" or "gzip_error")

    @property
    def raw_bytes(self) -> int:
        """Bytes read from the underlying file so far."""
        ...

    def read(self, n: int) -> bytes:
        """Return up to ``n`` bytes (possibly fewer); b"" means the end of the stream."""
        ...


class RawSource:
    """A binary file object read with OS errors turned into ``error``."""

    __slots__ = ("_f", "error", "error_code", "raw_bytes", "_ended")

    def __init__(self, f: BinaryIO | io.RawIOBase) -> None:
        self._f = f
        self.error: str | None = None
        self.error_code = "read_error"
        self.raw_bytes = 0
        self._ended = False

    def read(self, n: int) -> bytes:
        """Read up to ``n`` bytes; b"" at the end or after an error."""
        if self._ended:
            return b""
        try:
            data = self._f.read(n)
        except (OSError, ValueError) as exc:  # EIO, EISDIR, closed file
            self.error = os_reason(exc)
            self._ended = True
            return b""
        if not data:
            self._ended = True
            return b""
        self.raw_bytes += len(data)
        return bytes(data)


class GunzipSource:
    """Streaming multi-member gzip decoder over a :class:`RawSource` that never raises.

    Zero padding between or after members is skipped (as gzip(1) and Python's ``gzip``
    do). A member cut short, a CRC mismatch, corrupt deflate data or non-gzip bytes after
    a member end the stream with ``error`` set. Everything decoded before the bad bytes
    stays usable: the decoder state is copied before each call to zlib, and when a call
    fails its input is decoded again from that copy in small steps up to the failure.
    """

    __slots__ = ("_raw", "_z", "_in", "_in_member", "_done", "error", "error_code")

    def __init__(self, raw: RawSource, initial: bytes) -> None:
        self._raw = raw
        self._z = zlib.decompressobj(GZIP_WBITS)
        self._in = initial  # compressed bytes not yet handed to zlib
        self._in_member = False
        self._done = False
        self.error: str | None = None
        self.error_code = "gzip_error"

    @property
    def raw_bytes(self) -> int:
        """Compressed bytes read from the file so far."""
        return self._raw.raw_bytes

    def read(self, n: int) -> bytes:
        """Decompress up to ``n`` bytes; b"" at the end of the last member or after an error."""
        out: list[bytes] = []
        got = 0
        while got < n and not self._done:
            if not self._in:
                self._in = self._raw.read(GZIP_INPUT_CHUNK)
                if not self._in:
                    if self._raw.error is not None:
                        self.error = f"cannot read the compressed file: {self._raw.error}"
                    elif self._in_member:
                        self.error = "the gzip stream ends in the middle of a member (file truncated)"
                    self._done = True
                    break
            if not self._in_member:
                stripped = self._in.lstrip(b"\x00")
                if not stripped:
                    self._in = b""
                    continue
                self._in = stripped
                self._z = zlib.decompressobj(GZIP_WBITS)
                self._in_member = True
            if len(self._in) > GZIP_INPUT_CHUNK:
                feed = self._in[:GZIP_INPUT_CHUNK]
                rest = self._in[GZIP_INPUT_CHUNK:]
            else:
                feed = self._in
                rest = b""
            saved = self._z.copy()
            try:
                piece = self._z.decompress(feed, n - got)
            except zlib.error as exc:
                out.append(_salvage(saved, feed, n - got))
                self.error = f"corrupt gzip data ({exc})"
                self._done = True
                break
            if self._z.eof:
                self._in = self._z.unused_data + rest
                self._in_member = False
            else:
                tail = self._z.unconsumed_tail
                self._in = tail + rest if tail else rest
                if not piece and len(tail) == len(feed):  # zlib made no progress: cannot happen
                    self.error = "the gzip decoder made no progress"
                    self._done = True
                    break
            if piece:
                out.append(piece)
                got += len(piece)
        return b"".join(out)


def _salvage(z: zlib._Decompress, feed: bytes, room: int) -> bytes:
    """Decode ``feed`` again from state ``z`` in small steps; return what came before the error.

    Steps are GZIP_SALVAGE_STEP bytes; the step that fails is redone one byte at a time.
    """
    out: list[bytes] = []
    i = 0
    step = GZIP_SALVAGE_STEP
    while i < len(feed) and room > 0:
        chunk = feed[i : i + step]
        before = z.copy()
        try:
            piece = z.decompress(chunk, room)
        except zlib.error:
            if step == 1:
                break
            z = before
            step = 1
            continue
        out.append(piece)
        room -= len(piece)
        i += len(chunk)
        if z.unconsumed_tail or z.eof:
            break
    return b"".join(out)


class Stream:
    """A cursor over the capture bytes: ``data[pos:]`` is buffered and not consumed yet.

    Refills never copy a whole chunk: when a record straddles two chunks, only the bytes
    that record needs are joined into a small ``data`` (a *stitch*), and the rest of the
    new chunk waits in ``_next``; the following refill then switches to it without a copy.
    """

    __slots__ = ("data", "pos", "base", "eof", "source", "_next", "_next_pos")

    def __init__(self, source: ByteSource) -> None:
        self.data = b""  #: buffered bytes; data[pos:] not consumed yet
        self.pos = 0  #: cursor into data
        self.base = 0  #: stream offset of data[0]
        self.eof = False  #: the source is exhausted (or failed) and nothing waits in _next
        self.source = source
        self._next = b""  # a chunk read but not yet moved into data, from _next_pos on
        self._next_pos = 0

    @property
    def offset(self) -> int:
        """Stream offset of the cursor."""
        return self.base + self.pos

    @property
    def avail(self) -> int:
        """Bytes in ``data`` not consumed yet (more may wait to be moved in by :meth:`fill`)."""
        return len(self.data) - self.pos

    def fill(self, n: int) -> bool:
        """Make at least ``n`` bytes available from ``pos``; False when the stream ends first."""
        data = self.data
        pos = self.pos
        have = len(data) - pos
        if have >= n:
            return True
        cursor = self.base + pos  # fill never moves the cursor
        parts: list[bytes] | None = None  # set when the tail of data must be joined with new bytes
        target = n
        while have < target:
            if self._next:
                src = self._next
                start = self._next_pos
                self._next = b""
            elif self.eof:
                break
            else:
                src = self.source.read(max(target - have, CHUNK_SIZE))
                start = 0
                if not src:
                    self.eof = True
                    break
            if not have:  # nothing left to join: use the chunk in place
                data = src
                pos = start
                have = len(src) - start
                continue
            if parts is None:
                parts = [data[pos:]]
                if have >= CHUNK_SIZE:
                    # grow a long buffer geometrically, so that refilling it again and again
                    # (resync candidates that each need a whole large block) stays linear; a
                    # short tail is stitched exactly, so the stitch ends where a record ends
                    target = max(n, 2 * have)
            take = target - have
            if len(src) - start > take:  # stitch only what is needed; the rest waits in _next
                parts.append(src[start : start + take])
                self._next = src
                self._next_pos = start + take
                have = target
            else:
                parts.append(src[start:] if start else src)
                have += len(src) - start
        if parts is not None:
            data = b"".join(parts)
            pos = 0
        self.data = data
        self.pos = pos
        self.base = cursor - pos
        return have >= n

    def more(self) -> bool:
        """Buffer more bytes (up to one more chunk); False at the end of the stream."""
        before = self.avail
        self.fill(before + CHUNK_SIZE)
        return self.avail > before


#: check(data, q, eof) -> 0 accept the candidate at q, -1 reject it, n > 0 need n bytes from q.
CandidateCheck = Callable[[bytes, int, bool], int]


def resync(stream: Stream, pattern: re.Pattern[bytes], lead: int, window: int, check: CandidateCheck) -> bool:
    """Move ``stream.pos`` to the next offset accepted by ``pattern`` and ``check``; False at the end.

    ``pattern`` matches the bytes of a candidate header from offset ``lead`` on (patterns
    start with a selective byte class so that ``re`` can skip to it at C speed) and looks
    at most ``window`` bytes from the candidate's start. On False every byte has been
    skipped (``stream.pos`` is at the end of the data).
    """
    while True:
        m = pattern.search(stream.data, stream.pos + lead)
        if m is None:
            keep = len(stream.data) - window + 1  # a candidate may straddle the buffer end
            if keep > stream.pos:
                stream.pos = keep
            if not stream.more():
                stream.pos = len(stream.data)
                return False
            continue
        stream.pos = m.start() - lead
        if stream.avail < window and not stream.eof:  # a longer candidate may start here: see it whole
            stream.more()
            continue
        while True:
            verdict = check(stream.data, stream.pos, stream.eof)
            if verdict <= 0 or verdict <= stream.avail:
                break
            stream.fill(verdict)
        if verdict == 0:
            return True
        stream.pos += 1


def byte_class(low: int, high: int) -> bytes:
    """Regex character class for one byte with a value from ``low`` to ``high``."""
    return b"[\\x%02x-\\x%02x]" % (max(low, 0), min(high, 0xFF))


def msb_class(top: int) -> bytes:
    """Regex character class for one byte with a value from 0 to ``top``."""
    return byte_class(0, top)


def field_max(max_value: int, little: bool) -> bytes:
    """Regex for a 4-byte unsigned field whose value is at most ``max_value``."""
    msb = msb_class(max_value >> 24)
    return b"..." + msb if little else msb + b"..."


class Capture(abc.ABC):
    """An open capture file; iterate :meth:`packets` once. Context manager."""

    def __init__(self, stream: Stream, info: CaptureInfo, closer: Callable[[], None] | None) -> None:
        self.info = info
        self._stream = stream
        self._closer = closer
        self._gen: Generator[Packet, None, None] | None = None

    def packets(self) -> Iterator[Packet]:
        """Yield (ts_ns, linktype, wirelen, data) for every packet record, in file order.

        Frame number = position (1-based). ``data`` is a bytes object of caplen bytes.
        The capture is read once: a second call continues where the first stopped.
        """
        if self._gen is None:
            self._gen = self._generate()
        return self._gen

    @abc.abstractmethod
    def _generate(self) -> Generator[Packet, None, None]:
        """The format-specific packet generator."""

    @abc.abstractmethod
    def has_complete_packet(self) -> bool:
        """Whether the buffered bytes already hold one whole packet record (gzip open check)."""

    def _sync(self) -> None:
        """Refresh the progress fields of ``info``."""
        info = self.info
        info.bytes = self._stream.offset
        info.raw_bytes = self._stream.source.raw_bytes

    def _end_of_data(self, code: str | None, frame: int | None, detail: str) -> None:
        """Record why the data ended early: the source's error if it failed, else ``code``."""
        st = self._stream
        src = st.source
        if src.error is not None:
            end = st.base + len(st.data)
            self.info.add_damage(end, frame, src.error_code, f"{src.error} (at byte {end}); {detail}")
        elif code is not None:
            self.info.add_damage(st.offset, frame, code, detail)

    def close(self) -> None:
        """Stop reading and release the file (standard input is left open); packets() then ends."""
        if self._gen is None:
            self._gen = self._generate()  # never started: closing it runs none of its code
        self._gen.close()
        self._sync()
        if self._closer is not None:
            closer, self._closer = self._closer, None
            closer()

    def __enter__(self) -> Capture:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def os_reason(exc: BaseException) -> str:
    """The operating system's reason for an I/O failure, as one short phrase."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def escape_bytes(data: bytes) -> str:
    """Show bytes like Wireshark/Python do: printable ASCII kept, the rest as \\xNN."""
    return "".join(chr(b) if 0x20 <= b < 0x7F and b not in (0x27, 0x5C) else f"\\x{b:02x}" for b in data)


_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a zip archive?"),  # APPNOTE.TXT local file header signature
    (b"PK\x05\x06", "an empty zip archive?"),  # APPNOTE.TXT end of central directory
    (b"BZh", "a bzip2 file? decompress it first"),  # bzip2 stream header
    (b"\xfd7zXZ\x00", "an xz file? decompress it first"),  # xz file format 2.2.1
    (b"\x28\xb5\x2f\xfd", "a zstd file? decompress it first"),  # RFC 8878 magic 0xFD2FB528
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive?"),  # 7z signature header
    (b"\x04\x22\x4d\x18", "an lz4 file? decompress it first"),  # lz4 frame magic 0x184D2204
    (b"%PDF", "a PDF document?"),  # ISO 32000 header
    (b"\x7fELF", "an ELF executable?"),  # ELF e_ident
    (b"snoop\x00\x00\x00", "a Solaris snoop capture (not supported)"),  # RFC 1761
    (b"GMBU", "a Microsoft Network Monitor capture (not supported)"),  # NetMon 2.x magic
)


def describe_start(data: bytes) -> str:
    """A guess at what a non-capture file is, from its first bytes."""
    for magic, guess in _SIGNATURES:
        if data.startswith(magic):
            return guess
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "an HTML page?"
    if head.startswith(b"<"):
        return "an XML or HTML document?"
    if head.startswith((b"{", b"[")):
        return "a JSON document?"
    sample = data[:512]
    if sample and all(0x20 <= b < 0x7F or b in (0x09, 0x0A, 0x0D) or b >= 0x80 for b in sample):
        try:
            sample.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.start < len(sample) - 3:  # a cut multi-byte character at the end is fine
                return "binary data of an unknown kind"
        return "a text file?"
    return "binary data of an unknown kind"
