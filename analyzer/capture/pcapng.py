"""pcapng reader: sections in either byte order, interfaces with their own timestamp units.

Strategy: blocks are walked in file order. The hot loop takes Enhanced Packet Blocks
(by far the most common block) straight from the buffer: one ``unpack_from`` of the
28-byte EPB head, one of the trailing length, a lookup of the interface tuple
``(linktype, mul, div, offset_ns, snaplen, global index)`` and one slice. Every other
block, and any EPB the hot loop does not accept as is, goes through
:meth:`PcapngCapture._slow`, which handles exactly one block with every check: Section
Header Blocks (a new section resets the interfaces and may switch byte order),
Interface Description Blocks (``if_tsresol``, ``if_tsoffset``, ``if_name``,
``if_fcslen``), Simple and obsolete Packet Blocks, and blocks that are skipped (counted
per type in ``CaptureInfo.skipped_blocks``, not damage).

Timestamps are exact integers: an interface with ``units`` ticks per second converts a
64-bit tick count ``t`` as ``t * mul // div + offset_ns`` where ``mul/div`` is
``10**9/units`` reduced by their gcd (so 10^-6 gives mul=1000, div=1, and 2^-10 gives
mul=1953125, div=2). Units finer than a nanosecond are floored.

A block whose length is impossible (not a multiple of 4, below the minimum of its type,
above 64 MiB) or whose trailing length differs from the leading one is damage; the
reader then resyncs on the next offset holding a known block type with a valid length
whose trailing copy matches.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable, Generator

from analyzer.capture.reader import (
    MAX_PLAUSIBLE_WIRELEN,
    MAX_SKIPPED_BLOCK_TYPES,
    NS_PER_S,
    OTHER_BLOCK_TYPE,
    Capture,
    CaptureInfo,
    Packet,
    Stream,
    implausible_wirelen,
    resync,
)
from analyzer.errors import CaptureFormatError

# Block types: IETF draft-ietf-opsawg-pcapng, section 10.1 "Block Type Codes"
BT_SHB = 0x0A0D0D0A  # Section Header Block (a palindrome: same bytes in both byte orders)
BT_IDB = 0x00000001  # Interface Description Block
BT_OPB = 0x00000002  # Packet Block (obsolete, appendix A)
BT_SPB = 0x00000003  # Simple Packet Block
BT_NRB = 0x00000004  # Name Resolution Block
BT_ISB = 0x00000005  # Interface Statistics Block
BT_EPB = 0x00000006  # Enhanced Packet Block
BT_IRIG = 0x00000007  # IRIG Timestamp Block (reserved)
BT_AFDX = 0x00000008  # ARINC 429 in AFDX Encapsulation Information Block (reserved)
BT_SJE = 0x00000009  # systemd Journal Export Block
BT_DSB = 0x0000000A  # Decryption Secrets Block
BT_CB_COPY = 0x00000BAD  # Custom Block that rewriters may copy
BT_CB_NOCOPY = 0x40000BAD  # Custom Block that rewriters should not copy
KNOWN_BLOCK_TYPES = frozenset(
    {
        BT_SHB,
        BT_IDB,
        BT_OPB,
        BT_SPB,
        BT_NRB,
        BT_ISB,
        BT_EPB,
        BT_IRIG,
        BT_AFDX,
        BT_SJE,
        BT_DSB,
        BT_CB_COPY,
        BT_CB_NOCOPY,
    }
)
SHB_BYTES = b"\x0a\x0d\x0d\x0a"  # BT_SHB on disk (either byte order)
BYTE_ORDER_MAGIC = 0x1A2B3C4D  # draft-ietf-opsawg-pcapng 4.1: Byte-Order Magic
SHB_MAGIC_LITTLE = b"\x4d\x3c\x2b\x1a"  # the magic written by a little-endian host
SHB_MAGIC_BIG = b"\x1a\x2b\x3c\x4d"  # the magic written by a big-endian host
VERSION_MAJOR = 1  # draft-ietf-opsawg-pcapng 4.1: Major Version; other majors must be skipped
BLOCK_HEADER_LEN = 8  # block type + block total length
EPB_HEAD_LEN = 28  # type, length, interface id, ts high, ts low, captured len, original len
SPB_HEAD_LEN = 12  # type, length, original packet length
MIN_BLOCK_LEN = 12  # type, length, trailing length
MIN_BLOCK_LENS: dict[int, int] = {  # fixed fields + 8-byte header + 4-byte trailer
    BT_SHB: 28,  # magic(4) major(2) minor(2) section length(8)
    BT_IDB: 20,  # linktype(2) reserved(2) snaplen(4)
    BT_EPB: 32,  # interface(4) ts high(4) ts low(4) caplen(4) len(4)
    BT_OPB: 32,  # interface(2) drops(2) ts high(4) ts low(4) caplen(4) len(4)
    BT_SPB: 16,  # len(4)
}
MAX_BLOCK_LEN = 64 * 1024 * 1024  # ours: longer blocks are treated as damage (no writer produces them)
MAX_INTERFACES = 10_000  # ours: interfaces kept over the whole file (bounds memory)
MAX_IF_NAME = 256  # ours: characters of if_name kept
OPT_ENDOFOPT = 0  # draft-ietf-opsawg-pcapng 3.5: opt_endofopt
OPT_IF_NAME = 2  # 4.2: if_name (UTF-8 string)
OPT_IF_TSRESOL = 9  # 4.2: if_tsresol (1 byte: MSB 0 = 10^-n, MSB 1 = 2^-n seconds)
OPT_IF_FCSLEN = 13  # 4.2: if_fcslen (1 byte: length of the frame check sequence in bits)
OPT_IF_TSOFFSET = 14  # 4.2: if_tsoffset (int64 seconds added to every timestamp)
DEFAULT_TSRESOL = 6  # 4.2: without if_tsresol timestamps are in microseconds
TSRESOL_BASE2 = 0x80  # 4.2: if_tsresol MSB set: negative power of two
NO_SNAPLEN = 1 << 62  # stands for "no limit" (IDB snaplen 0)

#: runtime form of one interface: (linktype, mul, div, offset_ns, snaplen, global index)
Iface = tuple[int, int, int, int, int, int]


def _shb_order(data: bytes, pos: int) -> str | None:
    """Byte order of the section header at ``pos`` (12 bytes needed), None if the magic is bad."""
    magic = data[pos + 8 : pos + 12]
    if magic == SHB_MAGIC_LITTLE:
        return "little"
    if magic == SHB_MAGIC_BIG:
        return "big"
    return None


def _resync_pattern(little: bool) -> tuple[re.Pattern[bytes], int]:
    """Regex for a known block type with a sane length, and the block offset where it starts.

    The pattern starts with the one selective byte of the block type (offset 0
    little-endian, 3 big-endian) so that ``re`` skips to candidates at C speed; a section
    header is matched by its byte-order magic in either order.
    """
    mult4 = b"[" + b"".join(b"\\x%02x" % v for v in range(0, 256, 4)) + b"]"
    top = b"[\\x00-\\x%02x]" % (MAX_BLOCK_LEN >> 24)
    first = b"[\\x01-\\x0a\\xad]"  # types 1..10 and 0x(4000)0BAD, and the 0x0a of BT_SHB
    magic = b"(?:\\x4d\\x3c\\x2b\\x1a|\\x1a\\x2b\\x3c\\x4d)"
    if little:
        length = mult4 + b".." + top
        rest = (
            b"(?:\\x00\\x00\\x00"
            + length
            + b"|\\x0b\\x00[\\x00\\x40]"
            + length
            + b"|\\x0d\\x0d\\x0a.{4}"
            + magic
            + b")"
        )
        return re.compile(first + rest, re.DOTALL), 0
    rest = b"(?:" + top + b".." + mult4 + b"|.{4}" + magic + b")"
    return re.compile(first + rest, re.DOTALL), 3


class _Order:
    """Precompiled structs of one byte order."""

    __slots__ = ("e", "head", "epb", "opb", "u32", "u16", "idb", "shb", "i64", "pattern", "lead")

    def __init__(self, order: str) -> None:
        e = "<" if order == "little" else ">"
        self.e = order
        self.head = struct.Struct(e + "II")
        self.epb = struct.Struct(e + "IIIIIII")
        self.opb = struct.Struct(e + "IIHHIIII")
        self.u32 = struct.Struct(e + "I")
        self.u16 = struct.Struct(e + "HH")
        self.idb = struct.Struct(e + "HHI")
        self.shb = struct.Struct(e + "IIIHHq")
        self.i64 = struct.Struct(e + "q")
        self.pattern, self.lead = _resync_pattern(order == "little")


_ORDERS = {"little": _Order("little"), "big": _Order("big")}


class PcapngCapture(Capture):
    """A pcapng file being read."""

    def __init__(
        self,
        stream: Stream,
        path: str,
        compression: str | None,
        file_size: int | None,
        closer: Callable[[], None] | None,
    ) -> None:
        if not stream.fill(12):
            raise CaptureFormatError(f"truncated pcapng section header ({stream.avail} of 28 bytes)")
        order = _shb_order(stream.data, stream.pos)
        if order is None:
            raise CaptureFormatError(
                f"pcapng section header with an invalid byte-order magic "
                f"0x{stream.data[stream.pos + 8 : stream.pos + 12].hex()}"
            )
        info = CaptureInfo(
            path=path,
            format="pcapng",
            compression=compression,
            byte_order=order,
            ts_resolution="per-interface",
            snaplen=None,
            file_size=file_size,
        )
        super().__init__(stream, info, closer)
        self._o = _ORDERS[order]
        self._section = -1
        self._ifaces: list[Iface] = []  # interfaces of the current section, by local id
        self._counts: list[int] = []  # packets per global interface index
        self._iface_lt: list[int] = []  # linktype per global interface index
        self._skip_section = False
        self._done = False
        self._last_ts: int | None = None
        problem = self._section_header(first=True)
        if problem is not None:
            raise CaptureFormatError(problem)

    def has_complete_packet(self) -> bool:
        """Whether the buffered bytes already hold one whole packet block."""
        st = self._stream
        data = st.data
        pos = st.pos
        end = len(data)
        head = self._o.head
        while pos + MIN_BLOCK_LEN <= end:
            if data[pos : pos + 4] == SHB_BYTES:  # a new section may switch byte order
                order = _shb_order(data, pos)
                if order is None:
                    return False
                head = _ORDERS[order].head
            btype, blen = head.unpack_from(data, pos)
            if blen < MIN_BLOCK_LEN or blen & 3 or pos + blen > end:
                return False
            if btype in (BT_EPB, BT_SPB, BT_OPB):
                return True
            pos += blen
        return False

    def _sync(self) -> None:
        Capture._sync(self)
        info = self.info
        info.last_ts_ns = self._last_ts
        linktypes: dict[int, int] = {}
        for lt, count in zip(self._iface_lt, self._counts):
            if count:
                linktypes[lt] = linktypes.get(lt, 0) + count
        info.linktypes = linktypes

    def _generate(self) -> Generator[Packet, None, None]:
        st = self._stream
        info = self.info
        slow = self._slow
        counts = self._counts
        pk = info.packets
        pos = start = ts = 0
        synced_base = -1
        fast = False  # inside the hot loop: st.pos and _last_ts are stale, the locals are right
        try:
            while not self._done:
                if info.first_ts_ns is not None and not self._skip_section:
                    o = self._o
                    epb = o.epb.unpack_from
                    trailer = o.u32.unpack_from
                    ifaces = self._ifaces
                    nif = len(ifaces)
                    buf = st.data
                    pos = st.pos
                    n = len(buf)
                    start = pos
                    fast = True
                    try:
                        while True:
                            btype, blen, ifid, hi, lo, cap, wire = epb(buf, pos)
                            end = pos + blen
                            if (
                                btype != BT_EPB
                                or end > n
                                or cap + 32 > blen
                                or blen & 3
                                or ifid >= nif
                                or trailer(buf, end - 4)[0] != blen
                            ):
                                break
                            lt, mul, div, off, snap, gi = ifaces[ifid]
                            if cap > wire or cap > snap or wire > MAX_PLAUSIBLE_WIRELEN:
                                break
                            ts = ((hi << 32) | lo) * mul // div + off
                            counts[gi] += 1
                            pk += 1
                            info.packets = pk
                            data_end = pos + 28 + cap
                            pos = end
                            yield (ts, lt, wire, buf[data_end - cap : data_end])
                    except struct.error:  # fewer than 28 bytes left in the buffer
                        pass
                    fast = False
                    st.pos = pos
                    if pos != start:
                        self._last_ts = ts
                    if st.base != synced_base:  # once per refill: _sync is O(interfaces)
                        synced_base = st.base
                        self._sync()
                packet = slow(pk + 1)
                if packet is not None:
                    pk += 1
                    info.packets = pk
                    yield packet
        finally:  # also on close() while suspended at a yield
            if fast:
                st.pos = pos
                if pos != start:
                    self._last_ts = ts
            self._sync()

    # ----------------------------------------------------------------- slow path

    def _slow(self, frame: int) -> Packet | None:
        """Handle the one block at the cursor with every check; a packet or None."""
        st = self._stream
        info = self.info
        if not st.fill(BLOCK_HEADER_LEN):
            self._done = True
            if st.avail:
                self._end_of_data(
                    "truncated_block",
                    None,
                    f"the file ends {st.avail} bytes into a block header (after frame {frame - 1})",
                )
            else:
                self._end_of_data(None, None, f"reading stopped after frame {frame - 1}")
            st.pos = len(st.data)
            return None
        if st.data[st.pos : st.pos + 4] == SHB_BYTES:
            problem = self._section_header(first=False)
            if problem is not None:
                self._resync(problem)
            return None
        o = self._o
        btype, blen = o.head.unpack_from(st.data, st.pos)
        offset = st.offset
        if blen < MIN_BLOCK_LENS.get(btype, MIN_BLOCK_LEN) or blen & 3 or blen > MAX_BLOCK_LEN:
            info.add_damage(
                offset,
                None,
                "bad_block_length",
                f"block of type 0x{btype:08x} claims length {blen} (must be a multiple of 4, "
                f"{MIN_BLOCK_LENS.get(btype, MIN_BLOCK_LEN)}..{MAX_BLOCK_LEN})",
            )
            self._resync(None)
            return None
        if not st.fill(blen):
            self._done = True
            self._end_of_data(
                "truncated_block",
                None,
                f"block of type 0x{btype:08x} claims {blen} bytes but the file ends after {st.avail}",
            )
            st.pos = len(st.data)
            return None
        data = st.data
        pos = st.pos
        tail = o.u32.unpack_from(data, pos + blen - 4)[0]
        if tail != blen:
            info.add_damage(
                offset,
                None,
                "bad_block_trailer",
                f"block of type 0x{btype:08x} starts with length {blen} but ends with {tail}",
            )
            self._resync(None)
            return None
        st.pos = pos + blen
        if self._skip_section:
            return None
        if btype == BT_EPB or btype == BT_OPB:
            return self._packet_block(btype, data, pos, blen, frame, offset)
        if btype == BT_SPB:
            return self._simple_packet(data, pos, blen, offset)
        if btype == BT_IDB:
            self._interface(data, pos, blen, offset)
            return None
        skipped = info.skipped_blocks
        key = btype if btype in skipped or len(skipped) < MAX_SKIPPED_BLOCK_TYPES else OTHER_BLOCK_TYPE
        skipped[key] = skipped.get(key, 0) + 1
        return None

    def _section_header(self, first: bool) -> str | None:
        """Start a new section from the SHB at the cursor; the problem as a phrase, or None."""
        st = self._stream
        if not st.fill(12):
            return f"truncated section header ({st.avail} of {MIN_BLOCK_LENS[BT_SHB]} bytes)"
        order = _shb_order(st.data, st.pos)
        if order is None:
            return (
                f"section header with an invalid byte-order magic 0x{st.data[st.pos + 8 : st.pos + 12].hex()}"
            )
        o = _ORDERS[order]
        blen = o.head.unpack_from(st.data, st.pos)[1]
        if blen < MIN_BLOCK_LENS[BT_SHB] or blen & 3 or blen > MAX_BLOCK_LEN:
            return f"section header claims length {blen}"
        if not st.fill(blen):
            return f"truncated section header ({st.avail} of {blen} bytes)"
        tail = o.u32.unpack_from(st.data, st.pos + blen - 4)[0]
        if tail != blen:
            return f"section header starts with length {blen} but ends with {tail}"
        _t, _l, _magic, major, minor, _section_len = o.shb.unpack_from(st.data, st.pos)
        if first and major != VERSION_MAJOR:
            return f"unsupported pcapng version {major}.{minor}"
        offset = st.offset
        st.pos += blen
        self._o = o
        self._section += 1
        self._ifaces = []
        self._skip_section = major != VERSION_MAJOR
        if self._skip_section:
            self.info.add_damage(
                offset,
                None,
                "unsupported_section",
                f"section {self._section} has version {major}.{minor}; its blocks are skipped",
            )
        return None

    def _interface(self, data: bytes, pos: int, blen: int, offset: int) -> None:
        """Define the next interface of the section from an IDB."""
        o = self._o
        info = self.info
        linktype, _reserved, snaplen = o.idb.unpack_from(data, pos + 8)
        tsresol = DEFAULT_TSRESOL
        tsoffset = 0
        name: str | None = None
        fcs_len: int | None = None
        for code, value in self._options(data, pos + 16, pos + blen - 4, offset, "interface description"):
            if code == OPT_IF_TSRESOL:
                if len(value) == 1:
                    tsresol = value[0]
                else:
                    info.add_damage(
                        offset, None, "bad_option", f"if_tsresol has length {len(value)}, expected 1"
                    )
            elif code == OPT_IF_TSOFFSET:
                if len(value) == 8:
                    tsoffset = o.i64.unpack_from(value)[0]
                else:
                    info.add_damage(
                        offset, None, "bad_option", f"if_tsoffset has length {len(value)}, expected 8"
                    )
            elif code == OPT_IF_NAME:
                name = value[: MAX_IF_NAME * 4].decode("utf-8", "replace").rstrip("\x00")[:MAX_IF_NAME]
            elif code == OPT_IF_FCSLEN and len(value) == 1:
                fcs_len = value[0] // 8
        if len(self._iface_lt) >= MAX_INTERFACES:
            info.add_damage(
                offset,
                None,
                "too_many_interfaces",
                f"more than {MAX_INTERFACES} interfaces; this one is ignored",
            )
            return
        units = 2 ** (tsresol & 0x7F) if tsresol & TSRESOL_BASE2 else 10**tsresol
        g = math.gcd(NS_PER_S, units)
        mul = NS_PER_S // g
        div = units // g
        gi = len(self._iface_lt)
        self._iface_lt.append(linktype)
        self._counts.append(0)
        self._ifaces.append((linktype, mul, div, tsoffset * NS_PER_S, snaplen or NO_SNAPLEN, gi))
        info.interfaces.append(
            {
                "id": gi,
                "section": self._section,
                "section_id": len(self._ifaces) - 1,
                "linktype": linktype,
                "snaplen": snaplen,
                "name": name,
                "tsresol": tsresol,
                "units_per_s": units,
                "tsresol_ns_mul": mul,
                "tsresol_ns_div": div,
                "tsoffset_s": tsoffset,
                "fcs_len": fcs_len,
            }
        )

    def _options(self, data: bytes, start: int, end: int, offset: int, what: str) -> list[tuple[int, bytes]]:
        """The (code, value) options of a block body ``data[start:end]``; damage for a bad one."""
        out: list[tuple[int, bytes]] = []
        u16 = self._o.u16
        pos = start
        while pos + 4 <= end:
            code, length = u16.unpack_from(data, pos)
            if code == OPT_ENDOFOPT:
                break
            vstart = pos + 4
            if vstart + length > end:
                self.info.add_damage(
                    offset,
                    None,
                    "bad_option",
                    f"{what} block option {code} claims {length} bytes but only {end - vstart} remain",
                )
                break
            out.append((code, data[vstart : vstart + length]))
            pos = vstart + ((length + 3) & ~3)
        return out

    def _packet_block(
        self, btype: int, data: bytes, pos: int, blen: int, frame: int, offset: int
    ) -> Packet | None:
        """An EPB or obsolete Packet Block, checked."""
        o = self._o
        info = self.info
        if btype == BT_EPB:
            _t, _l, ifid, hi, lo, cap, wire = o.epb.unpack_from(data, pos)
            kind = "enhanced packet block"
        else:
            _t, _l, ifid, _drops, hi, lo, cap, wire = o.opb.unpack_from(data, pos)
            kind = "packet block"
        if ifid >= len(self._ifaces):
            info.add_damage(
                offset,
                None,
                "unknown_interface",
                f"{kind} names interface {ifid} but section {self._section} defines "
                f"{len(self._ifaces)}; skipped",
            )
            return None
        if cap + 32 > blen:
            info.add_damage(
                offset,
                None,
                "caplen_exceeds_block",
                f"{kind} claims caplen {cap} but its {blen}-byte block holds at most {blen - 32}; skipped",
            )
            return None
        lt, mul, div, off, snap, gi = self._ifaces[ifid]
        if cap > wire:
            info.add_damage(
                offset, frame, "bad_caplen", f"caplen {cap} > original length {wire}; wirelen set to {cap}"
            )
            wire = cap
        elif wire > MAX_PLAUSIBLE_WIRELEN:
            info.add_damage(offset, frame, "implausible_wirelen", implausible_wirelen(cap, wire))
            wire = cap
        if cap > snap:
            info.add_damage(
                offset, frame, "caplen_exceeds_snaplen", f"caplen {cap} > interface snaplen {snap}"
            )
        ts = ((hi << 32) | lo) * mul // div + off
        self._counts[gi] += 1
        self._last_ts = ts
        if info.first_ts_ns is None:
            info.first_ts_ns = ts
        return (ts, lt, wire, data[pos + 28 : pos + 28 + cap])

    def _simple_packet(self, data: bytes, pos: int, blen: int, offset: int) -> Packet | None:
        """An SPB (interface 0, no timestamp: it gets the previous packet's, or 0)."""
        if not self._ifaces:
            self.info.add_damage(
                offset,
                None,
                "unknown_interface",
                f"simple packet block but section {self._section} defines no interface; skipped",
            )
            return None
        lt, _mul, _div, _off, snap, gi = self._ifaces[0]
        wire = self._o.u32.unpack_from(data, pos + 8)[0]
        cap = min(wire, blen - 16, snap)
        if wire > MAX_PLAUSIBLE_WIRELEN:
            self.info.add_damage(offset, None, "implausible_wirelen", implausible_wirelen(cap, wire))
            wire = cap
        self._counts[gi] += 1
        ts = self._last_ts if self._last_ts is not None else 0
        return (ts, lt, wire, data[pos + SPB_HEAD_LEN : pos + SPB_HEAD_LEN + cap])

    def _resync(self, problem: str | None) -> None:
        """Skip to the next plausible block after damage at the cursor."""
        st = self._stream
        start = st.offset
        if problem is not None:
            code = "truncated_block" if problem.startswith("truncated") else "bad_section_header"
            if code == "truncated_block":
                self._done = True
                self._end_of_data(code, None, problem)
                st.pos = len(st.data)
                return
            self.info.add_damage(start, None, code, problem)
        head = self._o.head

        def check(data: bytes, q: int, eof: bool) -> int:
            avail = len(data) - q
            if avail < 12:
                return -1 if eof else 12
            if data[q : q + 4] == SHB_BYTES:
                order = _shb_order(data, q)
                if order is None:
                    return -1
                o = _ORDERS[order]
                btype, blen = o.head.unpack_from(data, q)
            else:
                o = self._o
                btype, blen = head.unpack_from(data, q)
            if (
                btype not in KNOWN_BLOCK_TYPES
                or blen < MIN_BLOCK_LENS.get(btype, MIN_BLOCK_LEN)
                or blen & 3
                or blen > MAX_BLOCK_LEN
            ):
                return -1
            if avail < blen:
                return -1 if eof else blen
            return 0 if o.u32.unpack_from(data, q + blen - 4)[0] == blen else -1

        st.pos += 1
        found = resync(st, self._o.pattern, self._o.lead, 12, check)
        skipped = st.offset - start
        if found:
            self.info.add_damage(
                start, None, "resynced", f"skipped {skipped} damaged bytes to the next plausible block"
            )
        else:
            self._done = True
            self.info.add_damage(
                start,
                None,
                "trailing_garbage",
                f"no plausible block in the last {skipped} bytes; they were skipped",
            )
            self._end_of_data(None, None, "reading stopped while skipping damaged bytes")
