"""Reference loops for ``bench/run.py``: dpkt or scapy decoding + per-flow reassembly + command search.

Strategy: this is the loop a competent engineer writes with an off-the-shelf
packet library, so that the benchmark compares ``fwdaudit`` against a fair
baseline, not a straw man. The packet library reads and decodes every packet
(``dpkt.pcap.Reader`` + ``dpkt.ethernet.Ethernet``, or scapy's ``PcapReader``);
a TCP segment matters only when its destination port is a mail port (the
analyzer's own ``MAIL_PORTS``), i.e. it belongs to a client->server stream.
Each such half-stream keeps the next expected sequence number (from the SYN,
or the first data segment), a dict ``seq -> payload`` of out-of-order segments
(bounded), and the unfinished last line. In-order data is appended and the
dict drained; retransmitted or overlapping bytes are trimmed; 32-bit sequence
wrap is handled with modular arithmetic. Complete lines are searched with one
compiled regular expression for an IMAP ``<tag> ID`` command or an ``XCLIENT``
command at the start of a line, and counted. Server->client bytes are not
reassembled (the job counts client commands only). State is dropped on FIN or
RST, and every buffer is bounded, so memory is O(open mail streams).

Run: ``python3 bench/baselines.py {dpkt,scapy} FILE [FILE ...]``; prints one
JSON object (packets, bytes, ``ID`` and ``XCLIENT`` counts, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from struct import error as struct_error
from typing import Any  # dpkt lets struct.error escape on some truncated headers

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from analyzer.config import MAIL_PORTS  # noqa: E402  (the same port set as the analyzer: a fair comparison)

SEQ_MOD = 1 << 32  # RFC 9293: sequence numbers are 32-bit, compared modulo 2**32
SEQ_MASK = SEQ_MOD - 1
SEQ_HALF = 1 << 31  # RFC 1982 serial-number arithmetic: "ahead" means less than half the space ahead
TH_FIN = 0x01  # RFC 9293 control bits
TH_SYN = 0x02  # RFC 9293
TH_RST = 0x04  # RFC 9293
MAX_OOO_BYTES = 1 << 20  # out-of-order bytes held per half-stream (the rest is dropped)
MAX_OOO_SEGMENTS = 1024  # out-of-order segments held per half-stream
MAX_LINE = 64 * 1024  # longest unfinished line kept (the analyzer's Limits.max_line)
MAX_STREAMS = 4_000_000  # open client half-streams; past it new streams are not tracked
READ_BUFFER = 1 << 20  # file read buffer for the packet readers

#: a command at the start of a line: IMAP "<tag> ID " / "<tag> ID(" or "XCLIENT " (any case)
COMMAND_RE = re.compile(rb"^(?:(?P<ID>[!-~]+ ID[ (])|(?P<XCLIENT>XCLIENT ))", re.MULTILINE | re.IGNORECASE)

PORTS = frozenset(MAIL_PORTS)


class HalfStream:
    """Reassembly state of one client->server direction."""

    __slots__ = ("next_seq", "ooo", "ooo_bytes", "tail", "skipping")

    def __init__(self, next_seq: int) -> None:
        self.next_seq = next_seq  #: sequence number of the next byte expected
        self.ooo: dict[int, bytes] = {}  #: out-of-order segments by sequence number
        self.ooo_bytes = 0  #: bytes held in ``ooo``
        self.tail = b""  #: the unfinished last line
        self.skipping = False  #: dropping an over-long line until its LF


class Finder:
    """Per-flow reassembly of client streams and counting of ID / XCLIENT command lines."""

    def __init__(self) -> None:
        self.streams: dict[object, HalfStream] = {}
        self.counts = {"ID": 0, "XCLIENT": 0}
        self.segments = 0  #: client->server mail segments seen
        self.ooo_dropped = 0  #: out-of-order segments dropped because a bound was reached
        self.max_streams = 0  #: most client half-streams open at once

    def segment(self, key: object, seq: int, flags: int, payload: bytes) -> None:
        """One client->server TCP segment of a mail flow (``key`` identifies the direction)."""
        self.segments += 1
        st = self.streams.get(key)
        if st is None:
            if flags & TH_SYN:
                st = HalfStream((seq + 1) & SEQ_MASK)
            elif payload and not flags & (TH_FIN | TH_RST):
                st = HalfStream(seq & SEQ_MASK)  # picked up mid-stream
            else:
                return
            if len(self.streams) >= MAX_STREAMS:
                return
            self.streams[key] = st
            if len(self.streams) > self.max_streams:
                self.max_streams = len(self.streams)
        if payload:
            self._data(st, seq & SEQ_MASK, payload)
        if flags & (TH_FIN | TH_RST):
            del self.streams[key]

    def reset(self, key: object) -> None:
        """The server reset the connection whose client direction is ``key``."""
        self.streams.pop(key, None)

    def _data(self, st: HalfStream, seq: int, payload: bytes) -> None:
        rel = (seq - st.next_seq) & SEQ_MASK
        if rel == 0:
            data = payload
        elif rel < SEQ_HALF:  # ahead of what we expect: hold it
            full = st.ooo_bytes + len(payload) > MAX_OOO_BYTES or len(st.ooo) >= MAX_OOO_SEGMENTS
            if full or seq in st.ooo:
                self.ooo_dropped += 1
                return
            st.ooo[seq] = payload
            st.ooo_bytes += len(payload)
            return
        else:  # starts before what we expect: retransmission or overlap
            over = (st.next_seq - seq) & SEQ_MASK
            if over >= len(payload):
                return
            data = payload[over:]
        st.next_seq = (st.next_seq + len(data)) & SEQ_MASK
        if st.ooo:
            data = self._drain(st, data)
        self._scan(st, data)

    @staticmethod
    def _drain(st: HalfStream, data: bytes) -> bytes:
        """Append held segments that have become contiguous (exact match first, then overlaps)."""
        parts = [data]
        ooo = st.ooo
        while ooo:
            nxt = ooo.pop(st.next_seq, None)
            if nxt is None:
                for k in list(ooo):  # rare: a held segment that overlaps what we have
                    if (k - st.next_seq) & SEQ_MASK >= SEQ_HALF:
                        old = ooo.pop(k)
                        st.ooo_bytes -= len(old)
                        over = (st.next_seq - k) & SEQ_MASK
                        if over < len(old):
                            nxt = old[over:]
                            break
                if nxt is None:
                    break
            else:
                st.ooo_bytes -= len(nxt)
            parts.append(nxt)
            st.next_seq = (st.next_seq + len(nxt)) & SEQ_MASK
        return b"".join(parts)

    def _scan(self, st: HalfStream, data: bytes) -> None:
        buf = st.tail + data if st.tail else data
        start = 0
        if st.skipping:
            lf = buf.find(b"\n")
            if lf < 0:
                st.tail = b""
                return
            st.skipping = False
            start = lf + 1
        cut = buf.rfind(b"\n") + 1
        if cut > start:
            if start:
                buf = buf[start:]
                cut -= start
            counts = self.counts
            for m in COMMAND_RE.finditer(buf, 0, cut):
                counts[m.lastgroup or "ID"] += 1
            st.tail = buf[cut:]
        else:
            st.tail = buf[start:]
        if len(st.tail) > MAX_LINE:
            st.tail = b""
            st.skipping = True


def run_dpkt(paths: Sequence[str]) -> dict[str, Any]:
    """dpkt reader + Ethernet/IP/TCP decode + per-flow reassembly + search."""
    import dpkt  # type: ignore[import-untyped]

    finder = Finder()
    ports = PORTS
    tcp_type = dpkt.tcp.TCP
    ethernet = dpkt.ethernet.Ethernet
    packets = errors = 0
    for path in paths:
        with open(path, "rb", buffering=READ_BUFFER) as f:
            for _ts, buf in dpkt.pcap.Reader(f):
                packets += 1
                try:
                    ip = ethernet(buf).data
                except (dpkt.UnpackError, struct_error):
                    errors += 1
                    continue
                tcp = getattr(ip, "data", None)
                if type(tcp) is not tcp_type:
                    continue
                if tcp.dport in ports:
                    finder.segment((ip.src, tcp.sport, ip.dst, tcp.dport), tcp.seq, tcp.flags, tcp.data)
                elif tcp.flags & TH_RST and tcp.sport in ports:
                    finder.reset((ip.dst, tcp.dport, ip.src, tcp.sport))
    return _result("dpkt", paths, packets, finder, errors)


def run_scapy(paths: Sequence[str]) -> dict[str, Any]:
    """scapy ``PcapReader`` + the same reassembly and search."""
    from scapy.layers.inet import TCP
    from scapy.utils import PcapReader

    finder = Finder()
    ports = PORTS
    packets = 0
    for path in paths:
        with PcapReader(path) as reader:
            for pkt in reader:
                packets += 1
                tcp = pkt.getlayer(TCP)
                if tcp is None:
                    continue
                ip = tcp.underlayer
                if ip is None:
                    continue
                flags = int(tcp.flags)
                if tcp.dport in ports:
                    finder.segment((ip.src, tcp.sport, ip.dst, tcp.dport), tcp.seq, flags, bytes(tcp.payload))
                elif flags & TH_RST and tcp.sport in ports:
                    finder.reset((ip.dst, tcp.dport, ip.src, tcp.sport))
    return _result("scapy", paths, packets, finder, 0)


def _result(tool: str, paths: Sequence[str], packets: int, finder: Finder, errors: int) -> dict[str, Any]:
    return {
        "tool": tool,
        "files": len(paths),
        "bytes": sum(os.path.getsize(p) for p in paths),
        "packets": packets,
        "decode_errors": errors,
        "mail_segments": finder.segments,
        "max_streams": finder.max_streams,
        "ooo_dropped": finder.ooo_dropped,
        "ID": finder.counts["ID"],
        "XCLIENT": finder.counts["XCLIENT"],
    }


def main(argv: Iterable[str] | None = None) -> int:
    """Command line: run one reference loop and print its JSON result."""
    ap = argparse.ArgumentParser(description="dpkt/scapy reference loops (bench/baselines.py)")
    ap.add_argument("tool", choices=("dpkt", "scapy"))
    ap.add_argument("files", nargs="+")
    args = ap.parse_args(list(argv) if argv is not None else None)
    result = run_dpkt(args.files) if args.tool == "dpkt" else run_scapy(args.files)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
