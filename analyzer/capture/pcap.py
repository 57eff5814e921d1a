"""Classic pcap (libpcap savefile) reader: both byte orders, us/ns timestamps, Kuznetzov variant.

Strategy: the 24-byte file header fixes the byte order, the timestamp unit, the record
header size and the linktype for the whole file, so the hot loop is specialised once:
per record it does one ``unpack_from`` of the 16-byte record header, three comparisons,
one slice and one tuple. Any record the hot loop cannot take as is (its data not fully
buffered, caplen > wirelen, caplen > snaplen, the end of the buffer) leaves the loop and
goes through :meth:`PcapCapture._slow`, which handles exactly that one record with every
check, records damage and refills the buffer; then the hot loop resumes. The first
packet also goes through the slow path so that ``first_ts_ns`` is set without a
per-packet test.

An absurd caplen (above max(snaplen, 262144), with snaplen capped at 64 MiB: no libpcap
writes that) is not read:
``caplen_too_large`` is recorded and :func:`~analyzer.capture.reader.resync` scans for
the next plausible record header: 0 < caplen <= the limit, caplen <= wirelen < 16 MiB,
sub-second field below one second, timestamp within a year of the last good packet, and
the record header right after it plausible too (or the record ending exactly at the end
of the file).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Generator

from analyzer.capture.reader import (
    MAX_PLAUSIBLE_WIRELEN,
    NS_PER_S,
    Capture,
    CaptureInfo,
    Packet,
    Stream,
    byte_class,
    field_max,
    implausible_wirelen,
    resync,
)
from analyzer.errors import CaptureFormatError

FILE_HEADER_LEN = 24  # pcap-savefile(5): magic, major, minor, thiszone, sigfigs, snaplen, linktype
RECORD_HEADER_LEN = 16  # pcap-savefile(5): ts_sec, ts_usec/ts_nsec, caplen, len
MODIFIED_RECORD_HEADER_LEN = 24  # Kuznetzov patch: + ifindex(4), protocol(2), pkt_type(1), pad(1)
VERSION_MAJOR = 2  # pcap-savefile(5): PCAP_VERSION_MAJOR
VERSION_MINOR = 4  # pcap-savefile(5): PCAP_VERSION_MINOR
MAXIMUM_SNAPLEN = 262144  # libpcap pcap-int.h MAXIMUM_SNAPLEN: largest caplen libpcap writes
SNAPLEN_CAP = 64 * 1024 * 1024  # ours: a header snaplen above this does not raise the caplen limit
RESYNC_WINDOW_S = 366 * 86400  # ours: a resync candidate's timestamp is within a year of the last packet
LT_LINKTYPE_MASK = 0x0000FFFF  # libpcap pcap-common.h LT_LINKTYPE(): link type in the low 16 bits
LT_FCS_LENGTH_PRESENT = 0x04000000  # libpcap pcap/pcap.h LT_FCS_LENGTH_PRESENT(): FCS length given
LT_FCS_LENGTH_SHIFT = 28  # libpcap pcap/pcap.h LT_FCS_LENGTH(): bits 28-31, in 16-bit words

#: on-disk first four bytes -> (byte order, timestamp resolution, record header length)
PCAP_MAGICS: dict[bytes, tuple[str, str, int]] = {
    b"\xd4\xc3\xb2\xa1": ("little", "us", RECORD_HEADER_LEN),  # 0xa1b2c3d4 pcap-savefile(5)
    b"\xa1\xb2\xc3\xd4": ("big", "us", RECORD_HEADER_LEN),
    b"\x4d\x3c\xb2\xa1": ("little", "ns", RECORD_HEADER_LEN),  # 0xa1b23c4d pcap-savefile(5) nanosecond
    b"\xa1\xb2\x3c\x4d": ("big", "ns", RECORD_HEADER_LEN),
    b"\x34\xcd\xb2\xa1": ("little", "us", MODIFIED_RECORD_HEADER_LEN),  # 0xa1b2cd34 Kuznetzov "modified"
    b"\xa1\xb2\xcd\x34": ("big", "us", MODIFIED_RECORD_HEADER_LEN),
}

_FRAC_UNITS = {"us": 1_000_000, "ns": 1_000_000_000}


class PcapCapture(Capture):
    """A classic pcap file being read."""

    def __init__(
        self,
        stream: Stream,
        path: str,
        compression: str | None,
        file_size: int | None,
        closer: Callable[[], None] | None,
    ) -> None:
        if not stream.fill(FILE_HEADER_LEN):
            raise CaptureFormatError(
                f"truncated pcap file header ({stream.avail} of {FILE_HEADER_LEN} bytes)"
            )
        order, resolution, hlen = PCAP_MAGICS[stream.data[stream.pos : stream.pos + 4]]
        e = "<" if order == "little" else ">"
        _magic, major, minor, _zone, _sigfigs, snaplen, raw_linktype = struct.unpack_from(
            e + "IHHiIII", stream.data, stream.pos
        )
        if major != VERSION_MAJOR:
            raise CaptureFormatError(f"unsupported pcap version {major}.{minor} (only 2.x is defined)")
        linktype = raw_linktype & LT_LINKTYPE_MASK
        fcs_len = (raw_linktype >> LT_FCS_LENGTH_SHIFT) * 2 if raw_linktype & LT_FCS_LENGTH_PRESENT else None
        units = _FRAC_UNITS[resolution]
        info = CaptureInfo(
            path=path,
            format="pcap",
            compression=compression,
            byte_order=order,
            ts_resolution=resolution,
            snaplen=snaplen,
            file_size=file_size,
        )
        info.interfaces.append(
            {
                "id": 0,
                "section": 0,
                "section_id": 0,
                "linktype": linktype,
                "snaplen": snaplen,
                "name": None,
                "tsresol": 6 if resolution == "us" else 9,
                "units_per_s": units,
                "tsresol_ns_mul": NS_PER_S // units,
                "tsresol_ns_div": 1,
                "tsoffset_s": 0,
                "fcs_len": fcs_len,
            }
        )
        super().__init__(stream, info, closer)
        if minor != VERSION_MINOR:
            info.add_damage(
                4, None, "unusual_version", f"pcap version {major}.{minor}, expected 2.4; read as 2.4"
            )
        stream.pos += FILE_HEADER_LEN
        self._rec = struct.Struct(e + "IIII")
        self._hlen = hlen
        self._frac_units = units
        self._frac_mul = NS_PER_S // units
        self._linktype = linktype
        self._limit = max(min(snaplen, SNAPLEN_CAP), MAXIMUM_SNAPLEN)  # caplen above: absurd, resync
        self._snap = snaplen if 0 < snaplen < self._limit else self._limit  # above: caplen_exceeds_snaplen
        self._little = order == "little"
        self._resolution = resolution
        self._done = False
        self._last_ts: int | None = None

    def has_complete_packet(self) -> bool:
        """Whether the buffered bytes already hold the first whole record."""
        st = self._stream
        if st.avail < self._hlen:
            return False
        cap: int = self._rec.unpack_from(st.data, st.pos)[2]
        return cap <= self._limit and st.avail >= self._hlen + cap

    def _sync(self) -> None:
        Capture._sync(self)
        info = self.info
        if info.packets:
            info.linktypes[self._linktype] = info.packets
            info.last_ts_ns = self._last_ts

    def _generate(self) -> Generator[Packet, None, None]:
        st = self._stream
        info = self.info
        unpack = self._rec.unpack_from
        hl = self._hlen
        mul = self._frac_mul
        lt = self._linktype
        snap = self._snap
        slow = self._slow
        ns = NS_PER_S
        pk = info.packets
        ts = 0
        pos = 0
        fast = False  # inside the hot loop: st.pos is stale, the local pos is right
        try:
            while not self._done:
                if pk:
                    buf = st.data
                    pos = st.pos
                    n = len(buf)
                    fast = True
                    try:
                        while True:
                            sec, frac, cap, wire = unpack(buf, pos)
                            end = pos + hl + cap
                            if end > n or cap > wire or cap > snap or wire > MAX_PLAUSIBLE_WIRELEN:
                                break
                            ts = sec * ns + frac * mul
                            pk += 1
                            info.packets = pk
                            pos = end
                            yield (ts, lt, wire, buf[end - cap : end])
                    except struct.error:  # fewer than hl bytes left in the buffer
                        pass
                    fast = False
                    st.pos = pos
                    self._last_ts = ts
                    self._sync()
                packet = slow(pk + 1)
                if packet is not None:
                    ts = packet[0]
                    self._last_ts = ts
                    if info.first_ts_ns is None:
                        info.first_ts_ns = ts
                    pk += 1
                    info.packets = pk
                    yield packet
        finally:  # also on close() while suspended at a yield
            if fast:
                st.pos = pos
            if pk:
                self._last_ts = ts
            self._sync()

    def _slow(self, frame: int) -> Packet | None:
        """Read the one record at the cursor with every check; None when nothing is yielded."""
        st = self._stream
        info = self.info
        hl = self._hlen
        if not st.fill(hl):
            left = st.avail
            self._done = True
            if left:
                self._end_of_data(
                    "truncated_header",
                    None,
                    f"the file ends {left} bytes into a {hl}-byte record header (after frame {frame - 1})",
                )
            else:
                self._end_of_data(None, None, f"reading stopped after frame {frame - 1}")
            st.pos = len(st.data)
            return None
        sec, frac, cap, wire = self._rec.unpack_from(st.data, st.pos)
        if cap > self._limit:
            info.add_damage(
                st.offset,
                None,
                "caplen_too_large",
                f"record header claims caplen {cap} (limit {self._limit}) after frame {frame - 1}; not read",
            )
            self._resync()
            return None
        if not st.fill(hl + cap):
            self._done = True
            self._end_of_data(
                "truncated_record",
                None,
                f"the file ends {st.avail - hl} bytes into the {cap} data bytes of the record after frame {frame - 1}",
            )
            st.pos = len(st.data)
            return None
        offset = st.offset
        if cap > wire:
            info.add_damage(
                offset, frame, "bad_caplen", f"caplen {cap} > original length {wire}; wirelen set to {cap}"
            )
            wire = cap
        elif wire > MAX_PLAUSIBLE_WIRELEN:
            info.add_damage(offset, frame, "implausible_wirelen", implausible_wirelen(cap, wire))
            wire = cap
        if cap > self._snap:
            info.add_damage(offset, frame, "caplen_exceeds_snaplen", f"caplen {cap} > snaplen {self._snap}")
        start = st.pos + hl
        st.pos = start + cap
        return (sec * NS_PER_S + frac * self._frac_mul, self._linktype, wire, st.data[start : start + cap])

    def _resync(self) -> None:
        """Skip to the next plausible record header after damage at the cursor."""
        st = self._stream
        start = st.offset
        unpack = self._rec.unpack_from
        hl = self._hlen
        limit = self._limit
        units = self._frac_units
        last_sec = None if self._last_ts is None else self._last_ts // NS_PER_S

        def plausible(sec: int, frac: int, cap: int, wire: int, ref: int | None) -> bool:
            return (
                0 < cap <= limit
                and cap <= wire <= MAX_PLAUSIBLE_WIRELEN
                and frac < units
                and (ref is None or abs(sec - ref) <= RESYNC_WINDOW_S)
            )

        def check(data: bytes, q: int, eof: bool) -> int:
            avail = len(data) - q
            if avail < hl:
                return -1 if eof else hl
            sec: int
            cap: int
            sec, frac, cap, wire = unpack(data, q)
            if not plausible(sec, frac, cap, wire, last_sec):
                return -1
            need = hl + cap + hl
            if avail < need:
                if not eof:
                    return need
                return 0 if avail == hl + cap else -1
            sec2, frac2, cap2, wire2 = unpack(data, q + hl + cap)
            return 0 if plausible(sec2, frac2, cap2, wire2, sec) else -1

        st.pos += 1
        pattern, lead = _resync_pattern(self._little, self._resolution, limit, last_sec)
        found = resync(st, pattern, lead, RECORD_HEADER_LEN, check)
        skipped = st.offset - start
        if found:
            self.info.add_damage(
                start, None, "resynced", f"skipped {skipped} damaged bytes to the next plausible record"
            )
        else:
            self._done = True
            self.info.add_damage(
                start,
                None,
                "trailing_garbage",
                f"no plausible record in the last {skipped} bytes; they were skipped",
            )
            self._end_of_data(None, None, "reading stopped while skipping damaged bytes")


def _resync_pattern(
    little: bool, resolution: str, limit: int, last_sec: int | None
) -> tuple[re.Pattern[bytes], int]:
    """Regex for a plausible 16-byte record header, and the header offset where it starts.

    With a known last timestamp the pattern starts at the most significant byte of
    ts_sec (offset 3 little-endian, 0 big-endian), whose value range is narrow: ``re``
    then skips to candidates at C speed, even through long runs of zero bytes.
    """
    frac_max = _FRAC_UNITS[resolution] - 1
    rest = (
        field_max(frac_max, little)
        + b"(?!\\x00\\x00\\x00\\x00)"
        + field_max(limit, little)
        + field_max(MAX_PLAUSIBLE_WIRELEN, little)
    )
    if last_sec is None:
        return re.compile(b"(?=.{4}" + rest + b")", re.DOTALL), 0
    low = max(last_sec - RESYNC_WINDOW_S, 0) >> 24
    high = min(last_sec + RESYNC_WINDOW_S, 0xFFFFFFFF) >> 24
    sec_msb = byte_class(low, high)
    if little:
        return re.compile(sec_msb + rest, re.DOTALL), 3
    return re.compile(sec_msb + b"..." + rest, re.DOTALL), 0
