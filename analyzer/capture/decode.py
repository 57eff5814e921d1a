"""Link layer, IPv4/IPv6 and TCP decoding of one captured frame (the general path).

Strategy: ``Decoder.decode`` takes the bytes of one frame and its link type and
walks the headers by offset in the original ``bytes`` (``struct.unpack_from``,
no intermediate copies) down to TCP. It returns the tuple the engine needs,
``(key, seq, ack, flags, payload)``, where ``key`` is the source address,
destination address, source port and destination port bytes concatenated
(12 bytes for IPv4, 36 for IPv6), exactly the bytes the engine's inlined fast
path slices out of an untagged Ethernet/IPv4 frame. Every problem becomes a
:class:`DecodeIssue` (bounded list, unbounded per-code counter) and the frame
yields ``None``; nothing in here raises on any input bytes. Fragments are
handed to :class:`~analyzer.capture.defrag.Defragmenter` and the TCP packet
comes out of the fragment that completes the datagram.

Lengths: the IP-declared length decides where the TCP payload ends, so link
padding and trailers (Ethernet minimum-frame padding, FCS) are removed. When
the declared length goes past the captured bytes the payload is what was
captured (always a prefix of the true payload, never padded): the problem is
``snaplen_cut_payload`` when the frame was cut by the capture (``caplen <
wirelen`` and the declared length fits the wire length), else
``truncated_ip`` (the packet claims more than was on the wire). An IPv4 total
length of 0 on a non-fragment is taken, as Wireshark does, to be a TCP
segmentation offload super-packet: the captured length is used and
``ip_total_length_zero`` is recorded. Header checksums are not verified
(offloading makes them unreliable in captures taken on the sending host).

Issue codes (stable; ``DecodeIssue.code``):

============================  ==================================================================
code                          meaning
============================  ==================================================================
``unsupported_linktype``      link type not decoded (listed once per link type, every frame counted)
``truncated_link``            frame shorter than its link-layer header (or a VLAN tag / LLC / SNAP)
``vlan_too_deep``             more than ``MAX_VLAN_TAGS`` stacked 802.1Q/802.1ad tags
``truncated_ip``              IP header cut, or IP length larger than what was on the wire
``bad_ip_version``            version nibble does not match the link layer's protocol (or not 4/6)
``bad_ihl``                   IPv4 header length below 5 words
``ip_options_truncated``      IPv4 header length (options) runs past the captured bytes
``bad_ip_total_length``       IPv4 total length smaller than the header length
``ip_total_length_zero``      IPv4 total length 0 (TSO super-packet); captured length used
``ipv6_ext_loop``             more than ``MAX_IPV6_EXT_HEADERS`` IPv6 extension headers
``ipv6_ext_truncated``        an IPv6 extension header runs past the payload or the capture
``truncated_tcp``             fewer than 20 bytes (or than the data offset) of TCP header present
``bad_tcp_offset``            TCP data offset below 5 words or beyond the IP-declared segment
``snaplen_cut_payload``       the capture's snapshot length cut the payload (payload is a prefix)
``fragment_*``                see :mod:`analyzer.capture.defrag`
============================  ==================================================================

Statistics (``Decoder.counts``, not problems): ``ipv4``, ``ipv6``, ``tcp``, ``non_ip``, ``non_tcp``,
``ip_proto_<n>`` (one per non-TCP protocol number, tunnels 4/41/47 included), ``vlan`` (frames with
at least one tag), ``snap``, ``fragments``, ``reassembled``, ``fragment_overlaps``, ``ipv6_jumbo``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from analyzer.capture.defrag import Defragmenter

#: ``(key, seq, ack, flags, payload)``; see the module docstring for ``key``.
TcpPacket = tuple[bytes, int, int, int, bytes]

# Link types (https://www.tcpdump.org/linktypes.html)
LINKTYPE_NULL = 0  # BSD loopback: 4-byte address family in the capturing host's byte order
LINKTYPE_ETHERNET = 1  # IEEE 802.3 Ethernet
LINKTYPE_RAW_DLT12 = 12  # DLT_RAW value on most BSDs, found in old files
LINKTYPE_RAW_DLT14 = 14  # DLT_RAW value on OpenBSD, found in old files
LINKTYPE_RAW = 101  # raw IP, version nibble tells IPv4 from IPv6
LINKTYPE_LOOP = 108  # OpenBSD loopback: 4-byte address family in network byte order
LINKTYPE_LINUX_SLL = 113  # Linux "cooked" capture v1, 16-byte header
LINKTYPE_IPV4 = 228  # raw IPv4
LINKTYPE_IPV6 = 229  # raw IPv6
LINKTYPE_LINUX_SLL2 = 276  # Linux "cooked" capture v2, 20-byte header

ETH_HEADER = 14  # IEEE 802.3: dst(6) src(6) type/length(2)
ETHERTYPE_IPV4 = 0x0800  # IEEE registry
ETHERTYPE_IPV6 = 0x86DD  # IEEE registry
ETHERTYPE_VLAN = 0x8100  # IEEE 802.1Q C-tag
ETHERTYPE_QINQ = 0x88A8  # IEEE 802.1ad S-tag
ETHERTYPE_QINQ_OLD = 0x9100  # pre-802.1ad vendor QinQ tag
VLAN_TAG = 4  # IEEE 802.1Q: TCI(2) + inner type(2)
MAX_VLAN_TAGS = 8  # our bound; real networks stack at most 2-3
ETH_MAX_LENGTH = 1500  # IEEE 802.3: type/length <= 1500 is a length (LLC follows)
ETH_MIN_ETHERTYPE = 0x0600  # IEEE 802.3: values >= 1536 are ethertypes
LLC_SNAP_SAP = 0xAA  # IEEE 802.2 SNAP DSAP/SSAP
LLC_UI = 0x03  # IEEE 802.2 unnumbered information control field
LLC_SNAP_HEADER = 8  # LLC(3) + OUI(3) + ethertype(2)
SLL_HEADER = 16  # Linux SLL: pkttype(2) hatype(2) halen(2) addr(8) protocol(2)
SLL2_HEADER = 20  # Linux SLL2: protocol(2) reserved(2) ifindex(4) hatype(2) pkttype(1) halen(1) addr(8)
SLL_PROTO_LLC = 0x0004  # Linux ETH_P_802_2: an 802.2 LLC header follows
NULL_HEADER = 4  # BSD loopback address family word
AF_INET = 2  # every BSD and Linux
AF_INET6_VALUES = frozenset({24, 28, 30})  # NetBSD/OpenBSD, FreeBSD/DragonFly, Darwin (LINKTYPE_NULL doc)

IPV4_MIN_HEADER = 20  # RFC 791: IHL >= 5
IPV4_MF = 0x2000  # RFC 791: more fragments flag
IPV4_OFFSET_MASK = 0x1FFF  # RFC 791: fragment offset in 8-octet units
IP_MAX_DATAGRAM = 65535  # RFC 791 total length / RFC 8200 payload length are 16-bit
IPV6_HEADER = 40  # RFC 8200 section 3
IPPROTO_TCP = 6  # IANA protocol numbers
IPV6_HOP_BY_HOP = 0  # RFC 8200 section 4.3
IPV6_ROUTING = 43  # RFC 8200 section 4.4
IPV6_FRAGMENT = 44  # RFC 8200 section 4.5
IPV6_AH = 51  # RFC 4302: length in 4-octet units minus 2
IPV6_NO_NEXT = 59  # RFC 8200 section 4.7
IPV6_DEST_OPTS = 60  # RFC 8200 section 4.6
IPV6_MOBILITY = 135  # RFC 6275 section 6.1
IPV6_EXT_8OCTET = frozenset({IPV6_HOP_BY_HOP, IPV6_ROUTING, IPV6_DEST_OPTS, IPV6_MOBILITY})  # (len+1)*8
IPV6_FRAGMENT_HEADER = 8  # RFC 8200 section 4.5
IPV6_FRAG_OFFSET_MASK = 0xFFF8  # RFC 8200: offset in 8-octet units, left-aligned
MAX_IPV6_EXT_HEADERS = 16  # our bound on the extension header walk
TCP_MIN_HEADER = 20  # RFC 9293 section 3.1: data offset >= 5 words
TCP_NS = 0x01  # RFC 3540: NS bit, low bit of byte 12, reported as flags bit 8

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_SEQ_ACK = struct.Struct("!II")


@dataclass(frozen=True, slots=True)
class DecodeIssue:
    """A problem found while decoding one frame (Zeek "weird")."""

    frame: int  #: 1-based frame number the problem was found in
    code: str  #: stable snake_case name from the table in the module docstring
    detail: str  #: one sentence with the numbers


class Decoder:
    """Decodes frames of any supported link type down to TCP; records problems as issues."""

    __slots__ = ("issues", "issue_counts", "counts", "max_issues", "defrag", "_linktypes_reported")

    def __init__(
        self,
        *,
        max_issues: int = 1000,
        defrag_max_bytes: int = 64 * 1024 * 1024,
        defrag_timeout_ns: int = 60 * 10**9,
    ) -> None:
        self.issues: list[DecodeIssue] = []  # the first ``max_issues`` issues
        self.issue_counts: dict[str, int] = {}  # every issue, counted by code
        self.counts: dict[str, int] = {}  # non-issue statistics (see module docstring)
        self.max_issues = max_issues
        self.defrag = Defragmenter(
            max_bytes=defrag_max_bytes, timeout_ns=defrag_timeout_ns, report=self._issue, counts=self.counts
        )
        self._linktypes_reported: set[int] = set()

    def _issue(self, frame: int, code: str, detail: str) -> None:
        """Count an issue; keep it while fewer than ``max_issues`` are kept."""
        self.issue_counts[code] = self.issue_counts.get(code, 0) + 1
        if len(self.issues) < self.max_issues:
            self.issues.append(DecodeIssue(frame, code, detail))

    def _count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    def flush(self) -> None:
        """End of capture: pending incomplete fragment sets become fragment_incomplete issues."""
        self.defrag.flush()

    def decode(self, frame: int, ts_ns: int, linktype: int, data: bytes, wirelen: int) -> TcpPacket | None:
        """TCP packet, or None (not TCP, not decodable, or a fragment still incomplete).

        Never raises on any bytes.
        """
        if linktype == LINKTYPE_ETHERNET:
            if len(data) < ETH_HEADER:
                self._issue(
                    frame,
                    "truncated_link",
                    f"Ethernet frame has {len(data)} bytes, header needs {ETH_HEADER}.",
                )
                return None
            etype = (data[12] << 8) | data[13]
            if etype == ETHERTYPE_IPV4:
                return self._ipv4(frame, ts_ns, data, ETH_HEADER, wirelen)
            return self._ethertype(frame, ts_ns, data, ETH_HEADER, etype, wirelen, True)
        if linktype in (LINKTYPE_RAW, LINKTYPE_RAW_DLT12, LINKTYPE_RAW_DLT14):
            if not data:
                self._issue(frame, "truncated_ip", "raw IP frame is empty.")
                return None
            version = data[0] >> 4
            if version == 4:
                return self._ipv4(frame, ts_ns, data, 0, wirelen)
            if version == 6:
                return self._ipv6(frame, ts_ns, data, 0, wirelen)
            self._issue(frame, "bad_ip_version", f"raw IP frame has version {version}, expected 4 or 6.")
            return None
        if linktype == LINKTYPE_LINUX_SLL:
            if len(data) < SLL_HEADER:
                self._issue(
                    frame, "truncated_link", f"SLL frame has {len(data)} bytes, header needs {SLL_HEADER}."
                )
                return None
            return self._ethertype(frame, ts_ns, data, SLL_HEADER, (data[14] << 8) | data[15], wirelen, False)
        if linktype == LINKTYPE_LINUX_SLL2:
            if len(data) < SLL2_HEADER:
                self._issue(
                    frame, "truncated_link", f"SLL2 frame has {len(data)} bytes, header needs {SLL2_HEADER}."
                )
                return None
            return self._ethertype(frame, ts_ns, data, SLL2_HEADER, (data[0] << 8) | data[1], wirelen, False)
        if linktype == LINKTYPE_NULL or linktype == LINKTYPE_LOOP:
            if len(data) < NULL_HEADER:
                self._issue(
                    frame,
                    "truncated_link",
                    f"loopback frame has {len(data)} bytes, header needs {NULL_HEADER}.",
                )
                return None
            family = _U32.unpack_from(data, 0)[0]
            if linktype == LINKTYPE_NULL and family & 0xFFFF0000:
                family = int.from_bytes(data[:4], "little")  # written in the other byte order
            if family == AF_INET:
                return self._ipv4(frame, ts_ns, data, NULL_HEADER, wirelen)
            if family in AF_INET6_VALUES:
                return self._ipv6(frame, ts_ns, data, NULL_HEADER, wirelen)
            self._count("non_ip")
            return None
        if linktype == LINKTYPE_IPV4:
            return self._ipv4(frame, ts_ns, data, 0, wirelen)
        if linktype == LINKTYPE_IPV6:
            return self._ipv6(frame, ts_ns, data, 0, wirelen)
        self.issue_counts["unsupported_linktype"] = self.issue_counts.get("unsupported_linktype", 0) + 1
        if linktype not in self._linktypes_reported and len(self._linktypes_reported) < 64:
            self._linktypes_reported.add(linktype)
            if len(self.issues) < self.max_issues:
                self.issues.append(
                    DecodeIssue(
                        frame, "unsupported_linktype", f"link type {linktype} is not decoded (first frame)."
                    )
                )
        return None

    def _ethertype(
        self, frame: int, ts_ns: int, data: bytes, off: int, etype: int, wirelen: int, ethernet: bool
    ) -> TcpPacket | None:
        """Dispatch on an ethertype at ``off``-2: VLAN tags, LLC/SNAP, IPv4, IPv6."""
        tags = 0
        while etype in (ETHERTYPE_VLAN, ETHERTYPE_QINQ, ETHERTYPE_QINQ_OLD):
            tags += 1
            if tags > MAX_VLAN_TAGS:
                self._issue(frame, "vlan_too_deep", f"more than {MAX_VLAN_TAGS} stacked VLAN tags.")
                return None
            if len(data) < off + VLAN_TAG:
                self._issue(
                    frame,
                    "truncated_link",
                    f"VLAN tag {tags} at offset {off} cut: frame has {len(data)} bytes.",
                )
                return None
            etype = (data[off + 2] << 8) | data[off + 3]
            off += VLAN_TAG
        if tags:
            self._count("vlan")
        if ((ethernet or tags) and etype <= ETH_MAX_LENGTH) or (
            not ethernet and not tags and etype == SLL_PROTO_LLC
        ):
            # IEEE 802.3 length field (or SLL's 802.2 marker): LLC, maybe SNAP
            if len(data) < off + 3:
                self._issue(
                    frame, "truncated_link", f"LLC header at offset {off} cut: frame has {len(data)} bytes."
                )
                return None
            if data[off] != LLC_SNAP_SAP or data[off + 1] != LLC_SNAP_SAP or data[off + 2] != LLC_UI:
                self._count("non_ip")
                return None
            if len(data) < off + LLC_SNAP_HEADER:
                self._issue(
                    frame, "truncated_link", f"SNAP header at offset {off} cut: frame has {len(data)} bytes."
                )
                return None
            self._count("snap")
            etype = (data[off + 6] << 8) | data[off + 7]
            off += LLC_SNAP_HEADER
        if etype == ETHERTYPE_IPV4:
            return self._ipv4(frame, ts_ns, data, off, wirelen)
        if etype == ETHERTYPE_IPV6:
            return self._ipv6(frame, ts_ns, data, off, wirelen)
        self._count("non_ip")
        return None

    def _cut(self, frame: int, what: str, declared_end: int, caplen: int, wirelen: int) -> None:
        """Record why bytes up to ``declared_end`` are missing from a ``caplen``-byte frame."""
        if caplen < wirelen and declared_end <= wirelen:
            self._issue(
                frame,
                "snaplen_cut_payload",
                f"{what} needs {declared_end} bytes of the frame; the capture kept {caplen} of {wirelen}.",
            )
        else:
            self._issue(
                frame,
                "truncated_ip",
                f"{what} needs {declared_end} bytes of the frame but only {max(caplen, wirelen)}"
                " were on the wire.",
            )

    def _ipv4(self, frame: int, ts_ns: int, data: bytes, off: int, wirelen: int) -> TcpPacket | None:
        """Decode IPv4 at ``off``."""
        caplen = len(data)
        if caplen - off < IPV4_MIN_HEADER:
            self._issue(
                frame,
                "truncated_ip",
                f"IPv4 header at offset {off} cut: {max(caplen - off, 0)} of {IPV4_MIN_HEADER} bytes"
                f" (frame {caplen} of {wirelen} bytes captured).",
            )
            return None
        vihl = data[off]
        if vihl >> 4 != 4:
            self._issue(frame, "bad_ip_version", f"IPv4 header has version {vihl >> 4}.")
            return None
        ihl = (vihl & 0x0F) << 2
        if ihl < IPV4_MIN_HEADER:
            self._issue(frame, "bad_ihl", f"IPv4 header length {ihl} bytes, below {IPV4_MIN_HEADER}.")
            return None
        if off + ihl > caplen:
            self._issue(
                frame,
                "ip_options_truncated",
                f"IPv4 header length {ihl} runs past the {caplen - off} captured bytes.",
            )
            return None
        total = _U16.unpack_from(data, off + 2)[0]
        frag = _U16.unpack_from(data, off + 6)[0]
        is_fragment = frag & (IPV4_MF | IPV4_OFFSET_MASK)
        if total < ihl:
            if total == 0 and not is_fragment:
                self._issue(
                    frame,
                    "ip_total_length_zero",
                    f"IPv4 total length 0 (TSO); using the {max(caplen, wirelen) - off} bytes of the frame.",
                )
                total = max(caplen, wirelen) - off
            else:
                self._issue(
                    frame, "bad_ip_total_length", f"IPv4 total length {total} below header length {ihl}."
                )
                return None
        counts = self.counts
        counts["ipv4"] = counts.get("ipv4", 0) + 1
        proto = data[off + 9]
        if proto != IPPROTO_TCP:
            self._count("non_tcp")
            self._count(f"ip_proto_{proto}")
            return None
        declared_end = off + total
        addrs = data[off + 12 : off + 20]
        if is_fragment:
            self._count("fragments")
            if declared_end > caplen:
                self._cut(
                    frame,
                    f"IPv4 fragment (not reassembled) of total length {total}",
                    declared_end,
                    caplen,
                    wirelen,
                )
                return None
            key = b"\x04\x06" + addrs + data[off + 4 : off + 6]
            seg = self.defrag.add(
                frame,
                ts_ns,
                key,
                (frag & IPV4_OFFSET_MASK) << 3,
                bool(frag & IPV4_MF),
                data[off + ihl : declared_end],
                IP_MAX_DATAGRAM - ihl,
            )
            if seg is None:
                return None
            return self._tcp(frame, addrs, seg, 0, len(seg), len(seg), "reassembled IPv4 datagram")
        return self._tcp(frame, addrs, data, off + ihl, declared_end, wirelen, "IPv4 total length")

    def _ipv6(self, frame: int, ts_ns: int, data: bytes, off: int, wirelen: int) -> TcpPacket | None:
        """Decode IPv6 at ``off``, walking extension headers."""
        caplen = len(data)
        if caplen - off < IPV6_HEADER:
            self._issue(
                frame,
                "truncated_ip",
                f"IPv6 header at offset {off} cut: {max(caplen - off, 0)} of {IPV6_HEADER} bytes"
                f" (frame {caplen} of {wirelen} bytes captured).",
            )
            return None
        if data[off] >> 4 != 6:
            self._issue(frame, "bad_ip_version", f"IPv6 header has version {data[off] >> 4}.")
            return None
        counts = self.counts
        counts["ipv6"] = counts.get("ipv6", 0) + 1
        plen = _U16.unpack_from(data, off + 4)[0]
        if plen == 0:
            # RFC 2675 jumbogram (or TSO): the payload is what the frame holds
            self._count("ipv6_jumbo")
            plen = max(caplen, wirelen) - off - IPV6_HEADER
        declared_end = off + IPV6_HEADER + plen
        addrs = data[off + 8 : off + 40]
        if data[off + 6] == IPPROTO_TCP:  # no extension headers: the common case
            return self._tcp(
                frame, addrs, data, off + IPV6_HEADER, declared_end, wirelen, "IPv6 payload length"
            )
        return self._ipv6_chain(
            frame,
            ts_ns,
            addrs,
            data,
            off + IPV6_HEADER,
            off + IPV6_HEADER,
            data[off + 6],
            declared_end,
            wirelen,
            0,
        )

    def _ipv6_chain(
        self,
        frame: int,
        ts_ns: int,
        addrs: bytes,
        data: bytes,
        payload_start: int,
        pos: int,
        nh: int,
        declared_end: int,
        wirelen: int,
        walked: int,
    ) -> TcpPacket | None:
        """Walk IPv6 extension headers from ``pos`` (next header ``nh``) to TCP, fragments or the end."""
        caplen = len(data)
        end = min(declared_end, caplen)
        while nh != IPPROTO_TCP:
            if nh in IPV6_EXT_8OCTET or nh == IPV6_AH:
                hlen_min = 2
            elif nh == IPV6_FRAGMENT:
                hlen_min = IPV6_FRAGMENT_HEADER
            else:
                self._count("non_tcp")
                self._count(f"ip_proto_{nh}")
                return None
            walked += 1
            if walked > MAX_IPV6_EXT_HEADERS:
                self._issue(
                    frame, "ipv6_ext_loop", f"more than {MAX_IPV6_EXT_HEADERS} IPv6 extension headers."
                )
                return None
            if pos + hlen_min > end:
                self._ext_truncated(frame, nh, pos, pos + hlen_min, declared_end, caplen, wirelen)
                return None
            if nh == IPV6_FRAGMENT:
                inner = data[pos]
                fo = _U16.unpack_from(data, pos + 2)[0]
                offset = fo & IPV6_FRAG_OFFSET_MASK
                more = bool(fo & 1)
                pos += IPV6_FRAGMENT_HEADER
                if not offset and not more:
                    nh = inner  # RFC 6946 atomic fragment: not fragmented at all
                    continue
                self._count("fragments")
                if inner != IPPROTO_TCP and inner not in IPV6_EXT_8OCTET and inner != IPV6_AH:
                    self._count("non_tcp")
                    self._count(f"ip_proto_{inner}")
                    return None
                if declared_end > caplen:
                    self._cut(frame, "IPv6 fragment (not reassembled)", declared_end, caplen, wirelen)
                    return None
                key = b"\x06" + bytes((inner,)) + addrs + data[pos - 4 : pos]
                # RFC 8200 4.5: unfragmentable part (without the fragment header) + fragmentable part <= 65535
                unfragmentable = pos - IPV6_FRAGMENT_HEADER - payload_start
                seg = self.defrag.add(
                    frame, ts_ns, key, offset, more, data[pos:declared_end], IP_MAX_DATAGRAM - unfragmentable
                )
                if seg is None:
                    return None
                return self._ipv6_chain(frame, ts_ns, addrs, seg, 0, 0, inner, len(seg), len(seg), walked)
            if nh == IPV6_AH:
                hlen = (data[pos + 1] + 2) << 2
            else:
                hlen = (data[pos + 1] + 1) << 3
            if pos + hlen > end:
                self._ext_truncated(frame, nh, pos, pos + hlen, declared_end, caplen, wirelen)
                return None
            nh = data[pos]
            pos += hlen
        return self._tcp(frame, addrs, data, pos, declared_end, wirelen, "IPv6 payload length")

    def _ext_truncated(
        self, frame: int, nh: int, pos: int, need: int, declared_end: int, caplen: int, wirelen: int
    ) -> None:
        """Record an IPv6 extension header that does not fit."""
        if need > declared_end:
            where = f"the IPv6 payload ends at {declared_end}"
        else:
            where = f"the capture kept {caplen} of {wirelen} bytes"
        self._issue(
            frame,
            "ipv6_ext_truncated",
            f"IPv6 extension header {nh} at offset {pos} needs bytes up to {need} but {where}.",
        )

    def _tcp(
        self, frame: int, addrs: bytes, data: bytes, t: int, declared_end: int, wirelen: int, what: str
    ) -> TcpPacket | None:
        """Decode TCP at ``t``; the IP layer declares the segment to end at ``declared_end``."""
        caplen = len(data)
        if declared_end - t < TCP_MIN_HEADER:
            self._issue(
                frame,
                "truncated_tcp",
                f"{what} leaves {declared_end - t} bytes for TCP, below the {TCP_MIN_HEADER}-byte header.",
            )
            return None
        if caplen - t < TCP_MIN_HEADER:
            self._issue(
                frame,
                "truncated_tcp",
                f"TCP header at offset {t} cut: {max(caplen - t, 0)} of {TCP_MIN_HEADER} bytes captured"
                f" (frame {caplen} of {wirelen} bytes).",
            )
            return None
        b12 = data[t + 12]
        hlen = (b12 >> 4) << 2
        if hlen < TCP_MIN_HEADER or t + hlen > declared_end:
            self._issue(
                frame,
                "bad_tcp_offset",
                f"TCP data offset {hlen} bytes, outside {TCP_MIN_HEADER}..{declared_end - t}"
                f" allowed by the {what}.",
            )
            return None
        if t + hlen > caplen:
            self._issue(
                frame,
                "truncated_tcp",
                f"TCP header of {hlen} bytes at offset {t} cut: {caplen - t} captured"
                f" (frame {caplen} of {wirelen}).",
            )
            return None
        end = declared_end
        if end > caplen:
            self._cut(frame, f"TCP segment per the {what}", declared_end, caplen, wirelen)
            end = caplen
        seq, ack = _SEQ_ACK.unpack_from(data, t + 4)
        counts = self.counts
        counts["tcp"] = counts.get("tcp", 0) + 1
        return (
            addrs + data[t : t + 4],
            seq,
            ack,
            data[t + 13] | ((b12 & TCP_NS) << 8),
            data[t + hlen : end],
        )
