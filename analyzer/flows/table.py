"""The flow table and the packet hot path: packets in, reassembled and dissected flows out.

Strategy (design section 3, measured): a packet of a flow we do not care about
must cost one bytes slice and one dict lookup. The loop below therefore decodes
the overwhelmingly common frame (Ethernet, IPv4 without options or
fragmentation, TCP) inline by offset; the flow key is the contiguous slice
``src ip + dst ip + src port + dst port`` (12 bytes for IPv4, 36 for IPv6),
which is also what :class:`~analyzer.capture.decode.Decoder` returns for every
other frame (VLAN, SLL, IPv6 extension headers, IP fragments ...).

The table maps each directional key to one of:

* ``_IGNORED``: a flow judged uninteresting; the packet is dropped after the
  lookup (and, on FIN/RST, both keys are forgotten so the table stays bounded);
* a ``_Pending`` record: a flow that has shown a SYN but no payload yet, on a port
  that is not a mail port; its first payload decides (content detection);
* a ``_Flow``: a flow of interest, with one
  :class:`~analyzer.flows.reassembly.HalfStream` per direction and a protocol
  parser fed in capture order.

Client and server roles come from the SYN (sender of SYN without ACK is the
client), else from the mail port, else from the first bytes (a greeting or a
reply is the server talking). A SYN without ACK on the key of a flow that already
carried data or ended, with a different sequence number, closes that flow and
starts a new one (port reuse), as Wireshark's ``tcp.stream`` does.

Parser events are located right after each feed: their stream byte span is
mapped to frame numbers and a timestamp through the half-stream's interval map,
so every event points back into the capture.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from analyzer.capture.decode import Decoder
from analyzer.config import MAIL_PORTS, Limits, Settings
from analyzer.flows.reassembly import HalfStream
from analyzer.model import Direction, Endpoint
from analyzer.protocols import detect, is_tls_record, make_parser
from analyzer.flows.model import FlowSummary
from analyzer.protocols.base import Event, LocatedEvent, Parser, TlsStarted

TH_FIN = 0x01  # TCP flags (RFC 9293)
TH_SYN = 0x02
TH_RST = 0x04
TH_ACK = 0x10

LINKTYPE_ETHERNET = 1  # LINKTYPE_ETHERNET (tcpdump.org/linktypes.html)
_ETH_IPV4 = b"\x08\x00"  # ethertype IPv4
_ETH_IPV6 = b"\x86\xdd"  # ethertype IPv6
_IPPROTO_TCP = 6

_U16 = struct.Struct("!H")
_SEQ_ACK = struct.Struct("!II")

#: check idle flows and progress every this many packets
_HOUSEKEEPING_EVERY = 1 << 16
#: keep at most this many frame numbers per located event (first ones, then the last one)
MAX_EVENT_FRAMES = 64

#: closed flows stay in the table this long (capture time) to collect stragglers (2 x MSL)
_CLOSED_LINGER_NS = 120 * 10**9

_IGNORED = object()


class _Pending:
    """A flow seen with SYN/SYN-ACK but no payload yet, on a non-mail port."""

    __slots__ = ("client_key", "isn", "frame", "ts", "packets")

    def __init__(self, client_key: bytes | None, isn: dict[bytes, int], frame: int, ts: int) -> None:
        self.client_key = client_key
        self.isn = isn
        self.frame = frame
        self.ts = ts
        self.packets = 1


class _Flow:
    """Mutable state of one flow of interest while the capture is read."""

    __slots__ = (
        "ckey", "skey", "summary", "c2s", "s2c", "parser", "protocol", "port_hint", "stopped",
        "fin_c", "fin_s", "isn_c", "isn_s", "last_ts", "streams", "decided", "closed",
    )

    def __init__(self, ckey: bytes, skey: bytes, summary: FlowSummary, limits: Limits,
                 port_hint: str | None, keep_streams: bool) -> None:
        self.ckey = ckey
        self.skey = skey
        self.summary = summary
        self.c2s = HalfStream(max_ooo_bytes=limits.ooo_bytes_per_direction,
                              max_ooo_segments=limits.ooo_segments_per_direction, history_bytes=limits.history_bytes)
        self.s2c = HalfStream(max_ooo_bytes=limits.ooo_bytes_per_direction,
                              max_ooo_segments=limits.ooo_segments_per_direction, history_bytes=limits.history_bytes)
        self.parser: Parser | None = None
        self.protocol = port_hint
        self.port_hint = port_hint
        self.stopped = False  # parser finished (TLS, multiplex ...): count bytes only
        self.decided = False  # protocol confirmed or given up from the first bytes
        self.fin_c = False
        self.fin_s = False
        self.isn_c: int | None = None
        self.isn_s: int | None = None
        self.last_ts = summary.first_ts_ns
        self.streams: dict[str, list[tuple[str, int, Any]]] | None = (
            {"to_server": [], "to_client": []} if keep_streams else None
        )
        self.closed = False  # ended by FIN/RST: later packets only counted (TIME_WAIT stragglers)


def _endpoint(key: bytes, src: bool) -> Endpoint:
    """Endpoint from a 12- or 36-byte flow key."""
    n = 4 if len(key) == 12 else 16
    if src:
        return Endpoint(str(ipaddress.ip_address(key[:n])), _U16.unpack_from(key, 2 * n)[0])
    return Endpoint(str(ipaddress.ip_address(key[n : 2 * n])), _U16.unpack_from(key, 2 * n + 2)[0])


def _reverse(key: bytes) -> bytes:
    n = 4 if len(key) == 12 else 16
    return key[n : 2 * n] + key[:n] + key[2 * n + 2 : 2 * n + 4] + key[2 * n : 2 * n + 2]


def _ports(key: bytes) -> tuple[int, int]:
    n = 8 if len(key) == 12 else 32
    return _U16.unpack_from(key, n)[0], _U16.unpack_from(key, n + 2)[0]


@dataclass(slots=True)
class CaptureStats:
    """Counters of one capture's pass through the engine."""

    packets: int = 0
    tcp_packets: int = 0
    fast_path: int = 0
    slow_path: int = 0
    flows_of_interest: int = 0
    flows_ignored: int = 0
    parser_errors: int = 0  #: parser bugs caught at the engine boundary (never expected)


class Engine:
    """Reads one capture's packets and produces flow summaries with located events."""

    def __init__(self, settings: Settings, *, keep_streams: bool = False,
                 progress: Callable[[int], None] | None = None) -> None:
        self.settings = settings
        self.keep_streams = keep_streams
        self.progress = progress
        self.ports = settings.ports
        self.all_tcp = settings.all_tcp
        self.content = settings.content_detection
        lim = settings.limits
        # frames of bytes this far behind the newest byte are forgotten: no parser event reaches back further
        self._keep_frames = 2 * lim.max_line + lim.max_literal
        self._idle_ns = lim.idle_timeout_ns
        self._max_line = lim.max_line
        self._max_literal = lim.max_literal

    # ------------------------------------------------------------------ main loop
    def run(self, packets: Iterable[tuple[int, int, int, bytes]], capture_index: int,
            decoder: Decoder) -> tuple[list[FlowSummary], CaptureStats]:
        """Consume ``(ts_ns, linktype, wirelen, data)`` packets; return finished flows in first-frame order."""
        table: dict[bytes, Any] = {}
        done: list[FlowSummary] = []
        stats = CaptureStats()
        ports = self.ports
        all_tcp = self.all_tcp
        handle = self._handle
        new_flow = self._new_packet
        slow = decoder.decode
        ignored = _IGNORED
        u16 = _U16.unpack_from
        seqack = _SEQ_ACK.unpack_from
        frame = 0
        slow_n = 0
        fast_n = 0
        next_housekeeping = _HOUSEKEEPING_EVERY
        ctx = (table, done, stats, capture_index)
        last_ts = 0
        for ts, linktype, wirelen, data in packets:
            frame += 1
            if frame >= next_housekeeping:
                next_housekeeping = frame + _HOUSEKEEPING_EVERY
                self._expire(ctx, last_ts)
                if self.progress is not None:
                    self.progress(frame)
            if linktype == LINKTYPE_ETHERNET and data[12:14] == _ETH_IPV4 and len(data) >= 54 and data[14] == 0x45 \
                    and not (data[20] & 0x3F or data[21]):
                if data[23] != _IPPROTO_TCP:
                    continue
                key = data[26:38]
                st = table.get(key)
                fast_n += 1
                if st is ignored:
                    if data[47] & 0x05:  # FIN or RST: forget the ignored flow
                        table.pop(key, None)
                        table.pop(_reverse(key), None)
                    continue
                doff = (data[46] >> 4) * 4
                end = 14 + u16(data, 16)[0]
                if doff < 20 or 34 + doff > end or end > len(data):
                    # bad data offset, TSO (total length 0) or snaplen cut: the decoder records why
                    pkt = slow(frame, ts, linktype, data, wirelen)
                    if pkt is None:
                        continue
                    key, seq, ack, flags, payload = pkt
                else:
                    payload = data[34 + doff : end]
                    seq, ack = seqack(data, 38)
                    flags = data[47] | ((data[46] & 1) << 8)
            elif linktype == LINKTYPE_ETHERNET and data[12:14] == _ETH_IPV6 and len(data) >= 74 and \
                    data[20] == _IPPROTO_TCP:
                # IPv6 without extension headers: src+dst (32 bytes) then the ports are one key
                key = data[22:54] + data[54:58]
                st = table.get(key)
                fast_n += 1
                if st is ignored:
                    if data[67] & 0x05:
                        table.pop(key, None)
                        table.pop(_reverse(key), None)
                    continue
                doff = (data[66] >> 4) * 4
                end = 54 + u16(data, 18)[0]
                if doff < 20 or 54 + doff > end or end > len(data):
                    pkt = slow(frame, ts, linktype, data, wirelen)
                    if pkt is None:
                        continue
                    key, seq, ack, flags, payload = pkt
                else:
                    payload = data[54 + doff : end]
                    seq, ack = seqack(data, 58)
                    flags = data[67] | ((data[66] & 1) << 8)
            else:
                if linktype == LINKTYPE_ETHERNET and data[12:14] == _ETH_IPV4 and len(data) >= 34 and \
                        data[14] == 0x45 and data[23] != _IPPROTO_TCP and not (data[20] & 0x3F or data[21]):
                    continue  # short non-TCP IPv4 (DNS, ICMP): nothing to decode
                pkt = slow(frame, ts, linktype, data, wirelen)
                slow_n += 1
                if pkt is None:
                    continue
                key, seq, ack, flags, payload = pkt
                st = table.get(key)
                if st is ignored:
                    if flags & 0x05:
                        table.pop(key, None)
                        table.pop(_reverse(key), None)
                    continue
            last_ts = ts
            if st is None or st.__class__ is _Pending:
                st = new_flow(ctx, st, key, seq, flags, payload, frame, ts, ports, all_tcp)
                if st is None:
                    continue
            handle(ctx, st, key, seq, ack, flags, payload, frame, ts)
        stats.packets = frame
        stats.fast_path = fast_n
        stats.slow_path = slow_n
        # end of capture: flush everything still open
        seen: set[int] = set()
        for st in list(table.values()):
            if st.__class__ is _Flow and id(st) not in seen:
                seen.add(id(st))
                if not st.closed:
                    self._finish(ctx, st, "eof")
        decoder.flush()
        done.sort(key=lambda f: f.key)
        return done, stats

    # ------------------------------------------------------------------ flow creation
    def _new_packet(self, ctx: tuple[Any, ...], st: Any, key: bytes, seq: int, flags: int, payload: bytes,
                    frame: int, ts: int, ports: frozenset[int], all_tcp: bool) -> _Flow | None:
        """Decide what a packet of an unknown (or pending) flow starts; return the flow of interest or None."""
        table, done, stats, capture_index = ctx
        sport, dport = _ports(key)
        syn_only = flags & (TH_SYN | TH_ACK) == TH_SYN
        synack = flags & (TH_SYN | TH_ACK) == TH_SYN | TH_ACK
        # who is the client?
        client_key: bytes | None = None
        if st is not None:
            client_key = st.client_key
        if client_key is None:
            if syn_only:
                client_key = key
            elif synack:
                client_key = _reverse(key)
        by_port = dport in ports or sport in ports
        if client_key is None and by_port:
            if dport in ports and sport in ports:
                client_key = key if dport <= sport else _reverse(key)
            else:
                client_key = key if dport in ports else _reverse(key)
        detected_by = "port"
        server_port = None
        if client_key is not None:
            server_port = _ports(client_key)[1]
            by_port = server_port in ports
        if not (by_port or all_tcp):
            if not payload:
                if flags & TH_SYN:
                    if st is None:
                        p = _Pending(client_key, {key: seq}, frame, ts)
                        table[key] = p
                        table[_reverse(key)] = p
                    else:
                        st.isn[key] = seq
                        st.packets += 1
                        if st.client_key is None:
                            st.client_key = client_key
                # bare ACKs of unknown flows are not remembered (bounded table)
                return None
            if not self.content:
                self._ignore(table, key)
                stats.flows_ignored += 1
                return None
            d = Direction.TO_SERVER if client_key in (None, key) else Direction.TO_CLIENT
            proto = detect(payload, d, None)
            if proto is None and client_key is None:
                proto = detect(payload, Direction.TO_SERVER, None)
                if proto is not None:
                    client_key = key
                else:
                    proto = detect(payload, Direction.TO_CLIENT, None)
                    if proto is not None:
                        client_key = _reverse(key)
            if proto is None:
                self._ignore(table, key)
                stats.flows_ignored += 1
                return None
            detected_by = "content"
        if client_key is None:
            # all-tcp mode, no SYN, no mail port: lower port is the server's, else the receiver
            client_key = key if dport <= sport else _reverse(key)
        skey = _reverse(client_key)
        server_port = _ports(client_key)[1]
        hint = MAIL_PORTS.get(server_port) if server_port in ports else None
        first_frame = st.frame if st is not None else frame
        first_ts = st.ts if st is not None else ts
        summary = FlowSummary(
            capture=capture_index, key=(capture_index, first_frame),
            client=_endpoint(client_key, True), server=_endpoint(client_key, False),
            protocol=hint, detected_by=detected_by, saw_syn=False, first_frame=first_frame, last_frame=frame,
            first_ts_ns=first_ts, last_ts_ns=ts, packets_to_server=0, packets_to_client=0, bytes_to_server=0,
            bytes_to_client=0, gaps_to_server=0, gaps_to_client=0, gap_bytes_to_server=0, gap_bytes_to_client=0,
            retransmitted_bytes=0, overlap_conflicts=0, ended="eof", tls=None,
        )
        fl = _Flow(client_key, skey, summary, self.settings.limits, hint, self.keep_streams)
        if st is not None:
            # replay the pending SYN / SYN-ACK sequence numbers
            for k, isn in st.isn.items():
                if k == client_key:
                    fl.c2s.syn(isn)
                    fl.isn_c = isn
                else:
                    fl.s2c.syn(isn)
                    fl.isn_s = isn
                summary.saw_syn = True
        table[client_key] = fl
        table[skey] = fl
        stats.flows_of_interest += 1
        return fl

    @staticmethod
    def _ignore(table: dict[bytes, Any], key: bytes) -> None:
        table[key] = _IGNORED
        table[_reverse(key)] = _IGNORED

    # ------------------------------------------------------------------ per packet of a flow of interest
    def _handle(self, ctx: tuple[Any, ...], fl: _Flow, key: bytes, seq: int, ack: int, flags: int,
                payload: bytes, frame: int, ts: int) -> None:
        table, done, stats, capture_index = ctx
        stats.tcp_packets += 1
        to_server = key == fl.ckey
        if fl.closed:
            if to_server and flags & (TH_SYN | TH_ACK) == TH_SYN and seq != fl.isn_c:
                # port reuse after a clean close: a new connection on the same 4-tuple
                self._forget(table, fl)
                nfl = self._new_packet(ctx, None, key, seq, flags, payload, frame, ts, self.ports, True)
                if nfl is None:
                    return
                fl = nfl
            else:
                s = fl.summary
                s.last_frame = frame
                s.last_ts_ns = ts
                fl.last_ts = ts
                if to_server:
                    s.packets_to_server += 1
                else:
                    s.packets_to_client += 1
                return
        if flags & TH_SYN:
            isn = fl.isn_c if to_server else fl.isn_s
            hs0 = fl.c2s if to_server else fl.s2c
            if to_server and not flags & TH_ACK and isn is not None and seq != isn and (
                hs0.next_offset > 0 or fl.fin_c or fl.fin_s or fl.summary.ended == "rst"
            ):
                # port reuse: a new connection on the same 4-tuple
                self._finish(ctx, fl, "reused")
                nfl = self._new_packet(ctx, None, key, seq, flags, payload, frame, ts, self.ports, True)
                if nfl is None:
                    return
                fl = nfl
                fl.summary.protocol = fl.summary.protocol or fl.port_hint
            if to_server:
                if fl.isn_c is None:
                    fl.isn_c = seq
                    fl.c2s.syn(seq)
            elif fl.isn_s is None:
                fl.isn_s = seq
                fl.s2c.syn(seq)
            fl.summary.saw_syn = True
        s = fl.summary
        s.last_frame = frame
        s.last_ts_ns = ts
        fl.last_ts = ts
        if to_server:
            s.packets_to_server += 1
            hs, other, d = fl.c2s, fl.s2c, Direction.TO_SERVER
        else:
            s.packets_to_client += 1
            hs, other, d = fl.s2c, fl.c2s, Direction.TO_CLIENT
        if flags & TH_ACK and other.started:
            out = other.ack(ack)
            if out:
                self._deliver(fl, d.other, other, out)
        if payload:
            # a mid-stream peer may still hold data back to find its start: let it go
            # first, so that commands and replies reach the parser in capture order
            rel = other.release()
            if rel:
                self._deliver(fl, d.other, other, rel)
            out = hs.segment(seq, payload, frame, ts)
            if out:
                self._deliver(fl, d, hs, out)
        if flags & TH_FIN:
            out = hs.fin(seq + len(payload))
            if out:
                self._deliver(fl, d, hs, out)
            if to_server:
                fl.fin_c = True
            else:
                fl.fin_s = True
            if fl.fin_c and fl.fin_s:
                self._finish(ctx, fl, "fin")
                return
        if flags & TH_RST:
            self._finish(ctx, fl, "rst")

    # ------------------------------------------------------------------ delivery to the parser
    def _deliver(self, fl: _Flow, d: Direction, hs: HalfStream, out: list[tuple[str, int, Any]]) -> None:
        if fl.streams is not None:
            fl.streams[d.value].extend(out)
        s = fl.summary
        for kind, offset, item in out:
            if kind == "data":
                if d is Direction.TO_SERVER:
                    s.bytes_to_server += len(item)
                else:
                    s.bytes_to_client += len(item)
                if fl.stopped:
                    continue
                if not fl.decided:
                    self._decide(fl, d, item)
                    if fl.stopped:
                        continue
                parser = fl.parser
                if parser is None:
                    continue
                events = parser.feed(d, item)
                if offset > self._keep_frames:
                    hs.trim(offset - self._keep_frames)
            else:
                if d is Direction.TO_SERVER:
                    s.gaps_to_server += 1
                    s.gap_bytes_to_server += item
                else:
                    s.gaps_to_client += 1
                    s.gap_bytes_to_client += item
                parser = fl.parser
                if fl.stopped or parser is None:
                    continue
                events = parser.gap(d, item)
            if events:
                self._locate(fl, events)

    def _decide(self, fl: _Flow, d: Direction, first: bytes) -> None:
        """Confirm the flow's protocol from its first bytes and create the parser."""
        fl.decided = True
        s = fl.summary
        if is_tls_record(first):
            s.tls = "implicit"
            fl.stopped = True
            if s.protocol is None:
                s.protocol = fl.port_hint
            return
        proto = detect(first, d, fl.port_hint)
        if proto is not None and fl.port_hint is not None and proto != fl.port_hint:
            s.detected_by = "content"
        elif proto is not None and s.detected_by == "port":
            s.detected_by = "port+content"
        proto = proto or fl.port_hint
        s.protocol = proto
        if proto is None:
            fl.stopped = True
            return
        midstream = not s.saw_syn
        if proto == "imap":
            fl.parser = make_parser(proto, max_line=self._max_line, max_literal=self._max_literal, midstream=midstream)
        else:
            fl.parser = make_parser(proto, max_line=self._max_line, midstream=midstream)

    def _locate(self, fl: _Flow, events: list[Event]) -> None:
        out = fl.summary.events
        for ev in events:
            span = ev.span
            hs = fl.c2s if span.direction is Direction.TO_SERVER else fl.s2c
            frames = hs.frames_for(span.start, max(span.end, span.start + 1))
            if len(frames) > MAX_EVENT_FRAMES:
                frames = frames[: MAX_EVENT_FRAMES - 1] + frames[-1:]
            ts = hs.ts_for(span.start)
            out.append(LocatedEvent(ev, frames, ts if ts is not None else fl.last_ts))
            if isinstance(ev, TlsStarted):
                fl.stopped = True
                fl.summary.tls = "starttls"

    # ------------------------------------------------------------------ ending flows
    @staticmethod
    def _forget(table: dict[bytes, Any], fl: _Flow) -> None:
        if table.get(fl.ckey) is fl:
            del table[fl.ckey]
        if table.get(fl.skey) is fl:
            del table[fl.skey]

    def _finish(self, ctx: tuple[Any, ...], fl: _Flow, how: str) -> None:
        """End a flow: flush reassembly and parser, publish its summary.

        After FIN or RST the flow stays in the table, closed, so that the last ACKs and
        retransmissions count to it (as in Wireshark) instead of starting a new flow;
        closed flows leave the table after ``_CLOSED_LINGER_NS`` of capture time.
        """
        table, done, stats, capture_index = ctx
        if how in ("fin", "rst"):
            fl.closed = True
        else:
            self._forget(table, fl)
        for d, hs in ((Direction.TO_SERVER, fl.c2s), (Direction.TO_CLIENT, fl.s2c)):
            out = hs.flush()
            if out:
                self._deliver(fl, d, hs, out)
        if fl.parser is not None and not fl.stopped:
            for d in (Direction.TO_SERVER, Direction.TO_CLIENT):
                ev = fl.parser.eof(d)
                if ev:
                    self._locate(fl, ev)
        s = fl.summary
        variant = getattr(fl.parser, "variant", None)
        if variant == "lmtp" and s.protocol != "lmtp":
            s.protocol = "lmtp"  # the SMTP parser saw LHLO: an LMTP session on a non-LMTP port
        if how == "fin":
            s.ended = "fin"
        elif how == "eof" and (fl.fin_c or fl.fin_s):
            s.ended = "half-fin"
        else:
            s.ended = how
        s.retransmitted_bytes = fl.c2s.retransmitted_bytes + fl.s2c.retransmitted_bytes
        s.overlap_conflicts = fl.c2s.conflict_count + fl.s2c.conflict_count
        s.streams = fl.streams
        done.append(s)

    def _expire(self, ctx: tuple[Any, ...], now: int) -> None:
        """Flush flows idle for longer than the idle timeout (capture time)."""
        table = ctx[0]
        limit = now - self._idle_ns
        linger = now - _CLOSED_LINGER_NS
        stale = {id(v): v for v in table.values() if v.__class__ is _Flow and (
            v.last_ts < limit or (v.closed and v.last_ts < linger))}
        for fl in stale.values():
            if fl.closed:
                self._forget(table, fl)
            else:
                self._finish(ctx, fl, "idle")
        pend = [k for k, v in table.items() if v.__class__ is _Pending and v.ts < limit]
        for k in pend:
            del table[k]
