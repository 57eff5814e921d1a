"""The flow table and the packet hot path: packets in, reassembled and dissected flows out.

Strategy (design section 3, measured): a packet of a flow we do not care about
must cost one bytes slice and one dict lookup. The loop below therefore decodes
the overwhelmingly common frame (Ethernet, IPv4 without options or
fragmentation, TCP) inline by offset; the flow key is the contiguous slice
``src ip + dst ip + src port + dst port`` (12 bytes for IPv4, 36 for IPv6),
which is also what :class:`~analyzer.capture.decode.Decoder` returns for every
other frame (VLAN, SLL, IPv6 extension headers, IP fragments ...). Whether a
frame goes to the decoder depends on its bytes only, never on the flow it
belongs to, so decode issues and counters are the same whichever flows are
of interest (and whichever process reads which part of a file).

The table maps each directional key to one of:

* an *ignored marker*: a flow judged uninteresting; the packet is dropped after the
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

Memory is bounded by open flows and buffer limits, not by the file size.
Housekeeping runs before every frame whose number is a multiple of
:data:`HOUSEKEEPING_EVERY`, with the capture time of that frame as "now":

* flows of interest idle for ``Limits.idle_timeout_ns`` are finished ("idle"),
  closed ones leave after ``_CLOSED_LINGER_NS``; past ``Limits.max_flows`` the
  least recently active flows are finished too (limit ``max_flows``);
* pending flows older than the idle timeout are dropped;
* ignored markers live in *generations*: a packet of an ignored flow whose marker
  is of the previous generation refreshes it (one store per key per generation);
  when a generation is older than the idle timeout, or when pending + ignored
  entries exceed ``max_tracked_flows`` (limit ``max_tracked_flows``), the entries
  not seen during the last generation are dropped and a new generation starts;
* out-of-order bytes held by all flows together are capped at
  ``Limits.total_buffer_bytes``: past it the largest holders deliver what they hold,
  holes declared as gaps (limit ``total_buffer_bytes``), checked after every packet.

Every limit hit is counted in :attr:`CaptureStats.limits` and listed per flow in
:attr:`CaptureStats.flow_limits` (``ooo_per_direction`` when one direction's own
out-of-order bound forced a gap). Between two housekeeping passes the table can grow
by at most :data:`HOUSEKEEPING_EVERY` flows, so it never exceeds the caps by more.

Event retention (issue 6): a flow keeps its first :data:`EVENTS_KEPT_FIRST` located
events; past them it keeps only what the record builder and the rules read (see
:class:`_Retention`) and counts the plain commands and replies it drops
(``FlowSummary.events_elided``), so a flow of a million NOOPs costs a constant, not a
million events. No rule result changes: every event a rule looks at, and every
event whose presence or position a rule's answer depends on, is kept. A flow that
never carries data in a direction never creates that direction's
:class:`~analyzer.flows.reassembly.HalfStream` (a one-SYN flow holds neither).

The same per-packet logic serves three entry points: :meth:`Engine.run` (the whole
capture in one process), :meth:`Engine.run_decoded` (already decoded packets of a
subset of the flows, with the housekeeping instants of the whole capture: the flow
stage of :mod:`analyzer.parallel`), and :class:`Scanner` (decode and filter only,
for one range of a capture; see its docstring for why what it forwards is enough).
"""

from __future__ import annotations

import hashlib
import heapq
import ipaddress
import operator
import re
import struct
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from analyzer.capture.decode import Decoder
from analyzer.config import MAIL_PORTS, Settings
from analyzer.flows.model import FlowSummary
from analyzer.flows.reassembly import HalfStream
from analyzer.flows.spool import EventSpool
from analyzer.model import Direction, Endpoint
from analyzer.protocols import detect, is_tls_record, make_parser
from analyzer.protocols.base import (
    Anomaly, Command, Event, ImapId, LocatedEvent, Parser, RcptForward, Reply, TlsStarted, Xclient, Xforward,
)

TH_FIN = 0x01  # TCP flags (RFC 9293)
TH_SYN = 0x02
TH_RST = 0x04
TH_ACK = 0x10
_FIN_RST = TH_FIN | TH_RST

LINKTYPE_ETHERNET = 1  # LINKTYPE_ETHERNET (tcpdump.org/linktypes.html)
_ETH_IPV4 = b"\x08\x00"  # ethertype IPv4
_ETH_IPV6 = b"\x86\xdd"  # ethertype IPv6
_IPPROTO_TCP = 6

_U16 = struct.Struct("!H")
_SEQ_ACK = struct.Struct("!II")

#: housekeeping (idle expiry, caps, progress) runs before every frame whose number is a multiple of this
HOUSEKEEPING_EVERY = 1 << 16
#: keep at most this many frame numbers per located event (first ones, then the last one)
MAX_EVENT_FRAMES = 64
#: pending + ignored flows tracked before the ones not seen during the last generation are dropped
#: (ours; about 250 bytes each with their two table keys, so the default bounds them near 64 MB)
MAX_TRACKED_FLOWS = 1 << 18
#: when out-of-order bytes exceed Limits.total_buffer_bytes, holders are flushed down to this share of it
_BUFFER_RELIEF = 0.75

#: server endpoints and client address texts shared between flows' summaries (ours: the cache is
#: emptied when it reaches this size, so a flood of distinct addresses costs at most ~0.5 MB here)
SHARED_ENDPOINTS_MAX = 1 << 12

#: closed flows stay in the table this long (capture time) to collect stragglers (2 x MSL)
_CLOSED_LINGER_NS = 120 * 10**9

#: (frame, ts_ns, key, seq, ack, flags, payload): a decoded TCP packet with its global frame number
Decoded = tuple[int, int, bytes, int, int, int, bytes]

#: stands for the half-streams of a closed flow (never fed: a closed flow only counts packets)
_RELEASED = HalfStream(max_ooo_bytes=0, max_ooo_segments=0, history_bytes=0)
#: stands for a direction that has carried no payload and no FIN yet (never fed: replaced by a
#: real HalfStream, with the SYN replayed, before the first segment or FIN of that direction)
_UNUSED = HalfStream(max_ooo_bytes=0, max_ooo_segments=0, history_bytes=0)

# ---------------------------------------------------------------------------------------------- event retention

#: located events every flow keeps, whatever they are (ours: a readable head of the conversation)
EVENTS_KEPT_FIRST = 256
#: dropped commands remembered until their final reply, in case that reply needs them (ours: pipelining depth)
DROPPED_COMMANDS_REMEMBERED = 64
#: commands kept after each STARTTLS/STLS (rules/protocol.py MAX_LISTED: injected commands a finding lists)
KEPT_AFTER_STARTTLS = 50
#: verbs whose commands are always kept, with the replies that answer them (rules/protocol.py
#: CARRIER_VERBS, _AUTH_VERBS_IMAP, _AUTH_VERBS_POP3, _TX_RESET; STARTTLS/STLS and the SMTP
#: transaction verbs that _check_smtp's state machine reads)
KEPT_VERBS = frozenset({
    "ID", "XCLIENT", "XOIP", "XFORWARD",
    "STARTTLS", "STLS",
    "LOGIN", "AUTHENTICATE",
    "USER", "PASS", "APOP", "AUTH",
    "MAIL", "RSET", "EHLO", "HELO", "LHLO", "DATA", "BDAT",
})
#: (tag, verb) of Dovecot's fixed IMAP proxy tags (rules/protocol.py DOVECOT_PROXY_TAGS: forwarding_expected)
KEPT_TAGGED = frozenset({("I", "ID"), ("S", "STARTTLS"), ("C", "CAPABILITY"), ("L", "LOGIN"), ("L", "AUTHENTICATE")})
#: untagged IMAP replies always kept (rules/trust.py _collect_versions, rules/protocol.py _check_multiplex)
KEPT_UNTAGGED = frozenset({"ID", "MULTIPLEX"})
#: reply texts always kept, with the command they answer: rules/limits.py OVERFLOW_REPLY_RE (via
#: rules/protocol.py), rules/ttl.py LMTP_LOOP_RE and ACCOUNT_UNAVAILABLE, rules/protocol.py INVALID_FORWARD_TEXT
#: and forwarding_expected's "ID completed" (which also covers rules/trust.py IMAP_TRUSTED_OK)
NOTABLE_REPLY_RE = re.compile(
    r"Input buffer full|Line too long|Literal size too large|command too long|attribute value too long"
    r"|Proxying appears to be looping|Proxying loops to itself|Account is temporarily unavailable"
    r"|ID completed|Invalid FORWARD parameter"
)
#: ... and replies whose upper-cased text holds this (rules/trust.py REFERRAL, counted by rules/chainrules.py)
NOTABLE_REPLY_UPPER = "[REFERRAL"
#: a final reply with this text makes the next final reply needed too (rules/protocol.py INVALID_FORWARD_TEXT)
_INVALID_FORWARD = "Invalid FORWARD parameter"
_CARRIERS = (ImapId, Xclient, Xforward, RcptForward)


class _Retention:
    """Which events a flow past :data:`EVENTS_KEPT_FIRST` keeps (created when it gets there).

    Strategy: the decision is made as each event arrives, from the event and a few flags,
    so that the kept list gives every rule the answer the full list gives:

    * always kept: greetings, capabilities, anomalies, TLS, the carrier events, commands
      with a :data:`KEPT_VERBS` verb or a :data:`KEPT_TAGGED` proxy tag, and replies that
      answer such a command until its first final reply (the record builder's reply, the
      command index's reply), or that are :data:`KEPT_UNTAGGED` or match
      :data:`NOTABLE_REPLY_RE`;
    * kept because of what came before (a flag): the first command that is not an XCLIENT
      after an XCLIENT (A-S6 "next command"), the first :data:`KEPT_AFTER_STARTTLS` commands
      after a STARTTLS/STLS (the injected commands), the first final reply after an
      ``Invalid FORWARD parameter`` reply (A-S8 "next reply"), the first event with frames
      after an anomaly (a gap finding's "first frame after the gap");
    * kept because of what comes after: a notable reply names the command it answers (or,
      failing that, the last command before it), and a carrier event needs its own command
      (an LMTP ``RCPT`` with ``XRCPTFORWARD=``). The last :data:`DROPPED_COMMANDS_REMEMBERED`
      dropped commands still waiting for a final reply, and the last command, are
      remembered and put back in place (by arrival number) when that happens.

    Everything else is dropped and counted in the summary's ``commands_elided`` and
    ``replies_elided``. Only when more than :data:`DROPPED_COMMANDS_REMEMBERED` plain commands
    are pipelined ahead of a notable reply can a rule see less than the full list would show.
    """

    __slots__ = ("base", "seen", "ords", "wanted", "pending", "last_cmd", "after_tls", "xclient_next",
                 "final_next", "frames_next", "notable")

    def __init__(self, kept: list[LocatedEvent]) -> None:
        """Start deciding after ``kept``, the flow's head (every event so far, all kept)."""
        self.base = len(kept)  #: length of the head: kept[base:] are the events decided here
        self.seen = 0  #: events located so far (arrival number of the next one)
        self.ords = array("q")  #: arrival numbers of kept[base:], ascending
        self.wanted: set[int] = set()  #: seqs of always-kept commands still without a final reply
        #: seq -> (arrival, dropped command, seq), oldest first
        self.pending: dict[int, tuple[int, LocatedEvent, int]] = {}
        self.last_cmd: tuple[int, LocatedEvent, int] | None = None  #: the last command, when it was dropped
        self.after_tls = 0  #: commands still to keep after the last STARTTLS/STLS
        self.xclient_next = False  #: keep the next command that is not an XCLIENT
        self.final_next = False  #: keep the next final reply
        self.frames_next = False  #: keep the next event that has frames
        self.notable = False  #: the last event decided was a notable reply (it needs its command)
        for le in kept:  # the head is kept whole: only the flags and the wanted set are wanted from it
            self._decide(le)
        self.last_cmd = None

    def _decide(self, le: LocatedEvent) -> bool:
        """Whether to keep the next event (updating the flags as if it were kept)."""
        self.seen += 1
        ev = le.event
        keep = True
        self.notable = False
        if isinstance(ev, Command):
            verb = ev.verb
            keep = verb in KEPT_VERBS or (ev.tag, verb) in KEPT_TAGGED
            if keep:
                self.wanted.add(ev.seq)
            if self.after_tls:
                self.after_tls -= 1
                keep = True
            if verb == "XCLIENT":
                self.xclient_next = True
            elif self.xclient_next:
                self.xclient_next = False
                keep = True
            if verb == "STARTTLS" or verb == "STLS":
                self.after_tls = KEPT_AFTER_STARTTLS
        elif isinstance(ev, Reply):
            answers = ev.answers
            keep = False
            if answers is not None and answers in self.wanted:
                keep = True
                if ev.final:
                    self.wanted.discard(answers)
            if ev.final:
                if self.final_next:
                    self.final_next = False
                    keep = True
                if _INVALID_FORWARD in ev.text:
                    self.final_next = True
            text = ev.text
            if (ev.tag == "*" and ev.status in KEPT_UNTAGGED) or NOTABLE_REPLY_RE.search(text) is not None or (
                    NOTABLE_REPLY_UPPER in text.upper()):
                keep = self.notable = True
        elif isinstance(ev, _CARRIERS):
            self.wanted.add(ev.seq)
        if self.frames_next and le.frames:
            self.frames_next = False
            keep = True
        if isinstance(ev, Anomaly):
            self.frames_next = True
        return keep

    def add(self, le: LocatedEvent, kept: list[LocatedEvent], s: FlowSummary) -> None:
        """Keep or drop the next located event of the flow."""
        arrival = self.seen
        keep = self._decide(le)
        ev = le.event
        if isinstance(ev, Reply):
            answers = ev.answers
            if self.notable:
                if answers is not None:
                    self._restore_seq(answers, kept, s)
                if self.last_cmd is not None:
                    self._restore(self.last_cmd, kept, s)
            if ev.final and answers is not None:
                self.pending.pop(answers, None)
        elif isinstance(ev, _CARRIERS):
            self._restore_seq(ev.seq, kept, s)
        if keep:
            kept.append(le)
            self.ords.append(arrival)
            if isinstance(ev, Command):
                self.last_cmd = None
            return
        r = s.rare or s.rare_counts()  # the counters themselves: this runs once per dropped event
        r.events_elided += 1
        if isinstance(ev, Command):
            r.commands_elided += 1
            item = (arrival, le, ev.seq)
            self.last_cmd = item
            pending = self.pending
            pending[ev.seq] = item
            if len(pending) > DROPPED_COMMANDS_REMEMBERED:
                del pending[next(iter(pending))]
        else:
            r.replies_elided += 1

    def _restore_seq(self, seq: int, kept: list[LocatedEvent], s: FlowSummary) -> None:
        """Put back the dropped command with this seq, if it is still remembered."""
        item = self.pending.get(seq)
        if item is None and self.last_cmd is not None and self.last_cmd[2] == seq:
            item = self.last_cmd
        if item is not None:
            self._restore(item, kept, s)

    def _restore(self, item: tuple[int, LocatedEvent, int], kept: list[LocatedEvent], s: FlowSummary) -> None:
        """Put a dropped command back at its place among the kept events."""
        arrival, le, seq = item
        if self.pending.get(seq) is item:
            del self.pending[seq]
        if self.last_cmd is item:
            self.last_cmd = None
        i = bisect_left(self.ords, arrival)
        kept.insert(self.base + i, le)
        self.ords.insert(i, arrival)
        s.events_elided -= 1
        s.commands_elided -= 1


class _Marker:
    """Table value of an ignored flow; a new instance per generation (compared by identity)."""

    __slots__ = ()


class _Pending:
    """A flow seen with SYN/SYN-ACK but no payload yet, on a non-mail port."""

    __slots__ = ("client_key", "isn", "frame", "ts", "packets", "gen")

    def __init__(self, client_key: bytes | None, isn: dict[bytes, int], frame: int, ts: int, gen: int) -> None:
        self.client_key = client_key
        self.isn = isn
        self.frame = frame
        self.ts = ts
        self.packets = 1
        self.gen = gen  #: generation of the last SYN seen (dropped when a crowded table rotates past it)


#: bits of _Flow.flags
_CLOSED = 1  # ended by FIN/RST: later packets only counted (TIME_WAIT stragglers)
_FIN_C = 2  # the client sent FIN
_FIN_S = 4  # the server sent FIN
_STOPPED = 8  # parser finished (TLS, multiplex ...): count bytes only
_DECIDED = 16  # protocol confirmed or given up from the first bytes
_FINS = _FIN_C | _FIN_S
_BITS = 31  # all of the above
#: the bits above these hold the out-of-order bytes both half-streams held after the flow's last packet
_HELD_SHIFT = 5


class _Flow:
    """Mutable state of one flow of interest while the capture is read."""

    # a flood of one-SYN flows pays every slot of every open flow (issue 7): the server key (_reverse(ckey))
    # and the server port's protocol (Engine._port_hint()) are derived, not stored; the yes/no states are
    # bits of ``flags`` (_CLOSED, _FIN_C, _FIN_S, _STOPPED, _DECIDED), and so is the number of out-of-order
    # bytes the flow holds (flags >> _HELD_SHIFT): one slot instead of six
    __slots__ = ("ckey", "summary", "c2s", "s2c", "parser", "flags", "isn_c", "isn_s", "ret")

    def __init__(self, ckey: bytes, summary: FlowSummary, keep_streams: bool) -> None:
        self.ckey = ckey
        self.summary = summary
        # _UNUSED until the direction's first payload or FIN (Engine._open_stream): most flows of a
        # flood never carry any, and a HalfStream with its frame map costs about 600 bytes
        self.c2s = _UNUSED
        self.s2c = _UNUSED
        self.parser: Parser | None = None
        self.flags = 0
        self.isn_c: int | None = None
        self.isn_s: int | None = None
        if keep_streams:  # the raw delivery log goes straight to the summary
            summary.streams = {"to_server": [], "to_client": []}
        self.ret: _Retention | None = None  # event retention, from the EVENTS_KEPT_FIRST-th event on


_FIRST_FRAME = operator.attrgetter("first_frame")


def _ip_text(raw: bytes) -> str:
    """Canonical text of a 4- or 16-byte address (``ipaddress`` form; IPv4 formatted directly)."""
    if len(raw) == 4:
        return f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"
    return str(ipaddress.ip_address(raw))


def _endpoint(key: bytes, src: bool) -> Endpoint:
    """Endpoint from a 12- or 36-byte flow key."""
    n = 4 if len(key) == 12 else 16
    if src:
        return Endpoint(_ip_text(key[:n]), _U16.unpack_from(key, 2 * n)[0])
    return Endpoint(_ip_text(key[n : 2 * n]), _U16.unpack_from(key, 2 * n + 2)[0])


def _reverse(key: bytes) -> bytes:
    n = 4 if len(key) == 12 else 16
    return key[n : 2 * n] + key[:n] + key[2 * n + 2 : 2 * n + 4] + key[2 * n : 2 * n + 2]


def _ports(key: bytes) -> tuple[int, int]:
    n = 8 if len(key) == 12 else 32
    return _U16.unpack_from(key, n)[0], _U16.unpack_from(key, n + 2)[0]


def canonical_key(key: bytes) -> bytes:
    """The direction-independent name of a flow key: the smaller of the key and its reverse."""
    rev = _reverse(key)
    return key if key <= rev else rev


def key_hash(canonical: bytes) -> int:
    """A 64-bit hash of a canonical key, equal in every process (``hash()`` of bytes is salted)."""
    return int.from_bytes(hashlib.blake2b(canonical, digest_size=8).digest(), "little")


_M32 = (1 << 32) - 1
_M128 = (1 << 128) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # 2**64 / golden ratio: Fibonacci hashing multiplier (Knuth, TAOCP 6.4)


def partition_of(key: bytes, parts: int) -> int:
    """The flow-stage partition of a directional key (both directions give the same answer)."""
    x = int.from_bytes(key, "big")
    if len(key) == 12:
        a = (x >> 64) << 16 | (x >> 16) & 0xFFFF
        b = ((x >> 32) & _M32) << 16 | x & 0xFFFF
    else:
        a = (x >> 160) << 16 | (x >> 16) & 0xFFFF
        b = ((x >> 32) & _M128) << 16 | x & 0xFFFF
    return (((a ^ b) * _GOLDEN) >> 61) % parts


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
    #: limit name -> times it was hit: ``max_flows`` (flows finished early), ``max_tracked_flows`` (pending or
    #: ignored entries dropped), ``total_buffer_bytes`` (half-streams flushed), ``ooo_per_direction`` (gaps forced)
    limits: dict[str, int] = field(default_factory=dict)
    #: flow key (capture, first frame) -> names of the limits that flow hit, in order
    flow_limits: dict[tuple[int, int], list[str]] = field(default_factory=dict)
    #: (frame, open flows of interest, pending + ignored table keys) before each housekeeping decision
    housekeeping: list[tuple[int, int, int]] = field(default_factory=list)
    #: most out-of-order bytes held by all flows together (merged over flow partitions: the sum of
    #: their peaks, an upper bound of the one-process value)
    peak_buffer_bytes: int = 0

    def merge(self, other: CaptureStats) -> None:
        """Add the counters of a disjoint part of the same capture (flow partitions, ranges)."""
        self.packets += other.packets
        self.tcp_packets += other.tcp_packets
        self.fast_path += other.fast_path
        self.slow_path += other.slow_path
        self.flows_of_interest += other.flows_of_interest
        self.flows_ignored += other.flows_ignored
        self.parser_errors += other.parser_errors
        for name, n in other.limits.items():
            self.limits[name] = self.limits.get(name, 0) + n
        for k, names in other.flow_limits.items():
            self.flow_limits.setdefault(k, []).extend(names)
        self.peak_buffer_bytes += other.peak_buffer_bytes


class Engine:
    """Reads one capture's packets and produces flow summaries with located events."""

    def __init__(self, settings: Settings, *, keep_streams: bool = False,
                 progress: Callable[[int], None] | None = None, max_tracked_flows: int = MAX_TRACKED_FLOWS,
                 spool: EventSpool | None = None) -> None:
        self.settings = settings
        #: where ended flows' events go past Limits.events_in_memory (analyzer.pipeline.run_spool shares one
        #: between the captures of a run; else this engine's own)
        self.spool = spool if spool is not None else EventSpool(settings.limits.events_in_memory)
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
        self._max_flows = lim.max_flows
        self._max_tracked_keys = 2 * max_tracked_flows
        self._buffer_cap = lim.total_buffer_bytes
        self._servers: dict[bytes, Endpoint] = {}  # server address + port -> shared Endpoint
        self._ips: dict[bytes, str] = {}  # client address -> shared text
        # port number -> a shared int (a port above 256 is an object of its own: a flood of a million flows
        # from at most 65,536 client ports would pay 32 bytes a flow)
        self._port_ints: list[int | None] = [None] * 65536
        self._reset(0)

    def _reset(self, capture_index: int) -> None:
        """Fresh per-capture state."""
        self._table: dict[bytes, Any] = {}
        self._done: list[FlowSummary] = []
        self._stats = CaptureStats()
        self._capture = capture_index
        # live flows whose server key has no table entry yet (see _new_packet): len(table) - 2 * flows + this
        # is the number of pending and ignored entries
        self._lazy = 0
        self._held = 0  # out-of-order bytes held by all live flows
        self._ign = _Marker()  # ignored marker of the current generation
        self._ign_old = _Marker()  # ... and of the previous one
        self._gen = 0
        self._gen_start: int | None = None

    # ------------------------------------------------------------------ main loop
    def run(self, packets: Iterable[tuple[int, int, int, bytes]], capture_index: int,
            decoder: Decoder) -> tuple[list[FlowSummary], CaptureStats]:
        """Consume ``(ts_ns, linktype, wirelen, data)`` packets; return finished flows in first-frame order."""
        self._reset(capture_index)
        table = self._table
        stats = self._stats
        ports = self.ports
        all_tcp = self.all_tcp
        handle = self._handle
        new_flow = self._new_packet
        slow = decoder.decode
        ignored = self._ign
        ignored_old = self._ign_old
        pending_cls = _Pending
        u16 = _U16.unpack_from
        seqack = _SEQ_ACK.unpack_from
        frame = 0
        slow_n = 0
        fast_n = 0
        next_housekeeping = HOUSEKEEPING_EVERY
        for ts, linktype, wirelen, data in packets:
            frame += 1
            if frame >= next_housekeeping:
                next_housekeeping = frame + HOUSEKEEPING_EVERY
                self._housekeep(frame, ts)
                ignored = self._ign
                ignored_old = self._ign_old
                if self.progress is not None:
                    self.progress(frame)
            if linktype == LINKTYPE_ETHERNET and data[12:14] == _ETH_IPV4 and len(data) >= 54 and data[14] == 0x45 \
                    and not (data[20] & 0x3F or data[21]):
                if data[23] != _IPPROTO_TCP:
                    continue
                fast_n += 1
                doff = (data[46] >> 4) * 4
                end = 14 + u16(data, 16)[0]
                if doff < 20 or 34 + doff > end or end > len(data):
                    # bad data offset, TSO (total length 0) or snaplen cut: the decoder records why
                    pkt = slow(frame, ts, linktype, data, wirelen)
                    if pkt is None:
                        continue
                    key, seq, ack, flags, payload = pkt
                    st = table.get(key)
                else:
                    key = data[26:38]
                    st = table.get(key)
                    if st is ignored:
                        if data[47] & _FIN_RST:  # FIN or RST: forget the ignored flow
                            table.pop(key, None)
                            table.pop(_reverse(key), None)
                        continue
                    payload = data[34 + doff : end]
                    seq, ack = seqack(data, 38)
                    flags = data[47] | ((data[46] & 1) << 8)
            elif linktype == LINKTYPE_ETHERNET and data[12:14] == _ETH_IPV6 and len(data) >= 74 and \
                    data[20] == _IPPROTO_TCP:
                fast_n += 1
                doff = (data[66] >> 4) * 4
                end = 54 + u16(data, 18)[0]
                if doff < 20 or 54 + doff > end or end > len(data):
                    pkt = slow(frame, ts, linktype, data, wirelen)
                    if pkt is None:
                        continue
                    key, seq, ack, flags, payload = pkt
                    st = table.get(key)
                else:
                    # IPv6 without extension headers: src+dst (32 bytes) then the ports are one key
                    key = data[22:58]
                    st = table.get(key)
                    if st is ignored:
                        if data[67] & _FIN_RST:
                            table.pop(key, None)
                            table.pop(_reverse(key), None)
                        continue
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
            if st is ignored or st is ignored_old:
                if st is ignored_old:
                    table[key] = ignored  # seen in this generation
                if flags & _FIN_RST:
                    table.pop(key, None)
                    table.pop(_reverse(key), None)
                continue
            if st is None or st.__class__ is pending_cls:
                st = new_flow(st, key, seq, flags, payload, frame, ts, ports, all_tcp)
                if st is None:
                    continue
            handle(st, key, seq, ack, flags, payload, frame, ts)
        stats.packets = frame
        stats.fast_path = fast_n
        stats.slow_path = slow_n
        decoder.flush()
        return self._end()

    def run_decoded(self, packets: Iterable[Decoded], capture_index: int,
                    housekeeping: Sequence[tuple[int, int]], frames: int) -> tuple[list[FlowSummary], CaptureStats]:
        """The flow stage alone: decoded packets of some flows, in frame order, with global frame numbers.

        ``housekeeping`` lists ``(frame, ts_ns)`` of every housekeeping frame of the whole capture
        (as :meth:`run` would meet them) and ``frames`` is the capture's frame count. Packets left out
        must be ones :meth:`run` would have dropped without effect (see :class:`Scanner`).
        """
        self._reset(capture_index)
        table = self._table
        ports = self.ports
        all_tcp = self.all_tcp
        hk = iter(housekeeping)
        nxt = next(hk, None)
        for frame, ts, key, seq, ack, flags, payload in packets:
            while nxt is not None and nxt[0] <= frame:
                self._housekeep(nxt[0], nxt[1])
                nxt = next(hk, None)
            st = table.get(key)
            if st is self._ign or st is self._ign_old:
                if st is self._ign_old:
                    table[key] = self._ign
                if flags & _FIN_RST:
                    table.pop(key, None)
                    table.pop(_reverse(key), None)
                continue
            if st is None or st.__class__ is _Pending:
                st = self._new_packet(st, key, seq, flags, payload, frame, ts, ports, all_tcp)
                if st is None:
                    continue
            self._handle(st, key, seq, ack, flags, payload, frame, ts)
        while nxt is not None and nxt[0] <= frames:
            self._housekeep(nxt[0], nxt[1])
            nxt = next(hk, None)
        self._stats.packets = frames
        return self._end()

    def _end(self) -> tuple[list[FlowSummary], CaptureStats]:
        """End of capture: flush every flow still open; return the flows in first-frame order."""
        flows = self._flows()
        # the peak of a flood of open flows is here: let the table go first (its entries and server keys;
        # _forget() below then finds nothing to remove), and each flow's state once its summary is out
        self._table.clear()
        self._lazy = 0
        for i, fl in enumerate(flows):
            flows[i] = None  # type: ignore[call-overload]
            if not fl.flags & _CLOSED:
                self._finish(fl, "eof")
        done = self._done
        # every summary has this capture: first frames order them as their keys would, without a tuple each
        done.sort(key=_FIRST_FRAME)
        stats = self._stats
        self._table = {}
        self._lazy = 0
        self._done = []
        return done, stats

    def _flows(self) -> list[_Flow]:
        """Every flow of interest in the table (live, or closed and lingering), in creation order.

        Read from the table (a separate index of live flows cost ~50 bytes a flow): a flow's client
        key entry is made when the flow is (:meth:`_new_packet` removes an older entry of that key
        first), and its key object is the flow's ``ckey``.
        """
        return [v for k, v in self._table.items() if v.__class__ is _Flow and k is v.ckey]

    # ------------------------------------------------------------------ flow creation
    def _new_packet(self, st: Any, key: bytes, seq: int, flags: int, payload: bytes,
                    frame: int, ts: int, ports: frozenset[int], all_tcp: bool) -> _Flow | None:
        """Decide what a packet of an unknown (or pending) flow starts; return the flow of interest or None.

        A packet of the server key of a live flow whose server has not sent before finds no entry
        either: it gets the flow (and the entry, made now, see the end of this method).
        """
        table = self._table
        if st is None:
            fl = table.get(_reverse(key))
            if fl.__class__ is _Flow:  # key is its server key (its client key has an entry)
                table[key] = fl
                self._lazy -= 1
                return cast(_Flow, fl)
        stats = self._stats
        capture_index = self._capture
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
                        p = _Pending(client_key, {key: seq}, frame, ts, self._gen)
                        table[key] = p
                        table[_reverse(key)] = p
                    else:
                        st.isn[key] = seq
                        st.packets += 1
                        st.gen = self._gen
                        if st.client_key is None:
                            st.client_key = client_key
                # bare ACKs of unknown flows are not remembered (bounded table)
                return None
            if not self.content:
                self._ignore(key)
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
                self._ignore(key)
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
        client, server = self._endpoints(client_key)
        summary = FlowSummary(
            capture=capture_index, client=client, server=server,
            protocol=hint, detected_by=detected_by, saw_syn=False, first_frame=first_frame, last_frame=frame,
            first_ts_ns=first_ts, last_ts_ns=ts, packets_to_server=0, packets_to_client=0, bytes_to_server=0,
            bytes_to_client=0, ended="eof", tls=None,
        )
        fl = _Flow(client_key, summary, self.keep_streams)
        if st is not None:
            # the pending SYN / SYN-ACK sequence numbers (given to each half-stream when it opens)
            for k, isn in st.isn.items():
                if k == client_key:
                    fl.isn_c = isn
                else:
                    fl.isn_s = isn
                summary.saw_syn = True
        table.pop(client_key, None)  # a new entry: the table's order is the flows' creation order (_flows)
        table[client_key] = fl
        # the server key's entry only when the server sends (the start of this method), or when the key
        # has one to replace: a flood of one-SYN flows saves a key and an entry (~100 bytes) a flow
        if skey == key or skey in table:
            table[skey] = fl
        else:
            self._lazy += 1
        stats.flows_of_interest += 1
        return fl

    def _endpoints(self, client_key: bytes) -> tuple[Endpoint, Endpoint]:
        """(client, server) of a new flow; server endpoints and client address texts are shared between flows."""
        n = 4 if len(client_key) == 12 else 16
        servers = self._servers
        skey = client_key[n : 2 * n] + client_key[2 * n + 2 :]  # server address and port
        server = servers.get(skey)
        if server is None:
            if len(servers) >= SHARED_ENDPOINTS_MAX:
                servers.clear()
            server = servers[skey] = _endpoint(client_key, False)
        ips = self._ips
        raw = client_key[:n]
        ip = ips.get(raw)
        if ip is None:
            if len(ips) >= SHARED_ENDPOINTS_MAX:
                ips.clear()
            ip = ips[raw] = _ip_text(raw)
        port = _U16.unpack_from(client_key, 2 * n)[0]
        shared = self._port_ints[port]
        if shared is None:
            self._port_ints[port] = port
        else:
            port = shared
        return Endpoint(ip, port), server

    def _ignore(self, key: bytes) -> None:
        table = self._table
        table[key] = self._ign
        table[_reverse(key)] = self._ign

    # ------------------------------------------------------------------ per packet of a flow of interest
    def _handle(self, fl: _Flow, key: bytes, seq: int, ack: int, flags: int,
                payload: bytes, frame: int, ts: int) -> None:
        self._stats.tcp_packets += 1
        to_server = key == fl.ckey
        if fl.flags & _CLOSED:
            if to_server and flags & (TH_SYN | TH_ACK) == TH_SYN and seq != fl.isn_c:
                # port reuse after a clean close: a new connection on the same 4-tuple
                self._forget(fl)
                nfl = self._new_packet(None, key, seq, flags, payload, frame, ts, self.ports, True)
                if nfl is None:
                    return
                fl = nfl
            else:
                s = fl.summary
                s.last_frame = frame
                s.last_ts_ns = ts
                if to_server:
                    s.packets_to_server += 1
                else:
                    s.packets_to_client += 1
                return
        if flags & TH_SYN:
            isn = fl.isn_c if to_server else fl.isn_s
            hs0 = fl.c2s if to_server else fl.s2c
            if to_server and not flags & TH_ACK and isn is not None and seq != isn and (
                hs0.next_offset > 0 or fl.flags & _FINS or fl.summary.ended == "rst"
            ):
                # port reuse: a new connection on the same 4-tuple
                self._finish(fl, "reused")
                nfl = self._new_packet(None, key, seq, flags, payload, frame, ts, self.ports, True)
                if nfl is None:
                    return
                fl = nfl
                fl.summary.protocol = fl.summary.protocol or self._port_hint(fl)
            if to_server:
                if fl.isn_c is None:
                    fl.isn_c = seq
                    if fl.c2s is not _UNUSED:
                        fl.c2s.syn(seq)
            elif fl.isn_s is None:
                fl.isn_s = seq
                if fl.s2c is not _UNUSED:
                    fl.s2c.syn(seq)
            fl.summary.saw_syn = True
        s = fl.summary
        s.last_frame = frame
        s.last_ts_ns = ts
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
            if hs is _UNUSED:
                hs = self._open_stream(fl, to_server)
            gaps = hs.gaps
            out = hs.segment(seq, payload, frame, ts)
            if out:
                if hs.gaps != gaps:  # only the direction's own out-of-order bound forces a gap here
                    self._limit(fl, "ooo_per_direction")
                self._deliver(fl, d, hs, out)
        if flags & TH_FIN:
            if hs is _UNUSED:
                hs = self._open_stream(fl, to_server)
            out = hs.fin(seq + len(payload))
            if out:
                self._deliver(fl, d, hs, out)
            fl.flags |= _FIN_C if to_server else _FIN_S
            if (fl.flags & _FINS) == _FINS:
                self._finish(fl, "fin")
                return
        if flags & TH_RST:
            self._finish(fl, "rst")
            return
        held = fl.c2s.ooo_bytes + fl.s2c.ooo_bytes
        was = fl.flags >> _HELD_SHIFT
        if held != was:
            self._held += held - was
            fl.flags = (fl.flags & _BITS) | held << _HELD_SHIFT
            if self._held > self._stats.peak_buffer_bytes:
                self._stats.peak_buffer_bytes = self._held
            if self._held > self._buffer_cap:
                self._relieve_buffers()

    def _open_stream(self, fl: _Flow, to_server: bool) -> HalfStream:
        """The real half-stream of a direction about to carry its first payload or FIN (SYN replayed)."""
        lim = self.settings.limits
        hs = HalfStream(max_ooo_bytes=lim.ooo_bytes_per_direction, max_ooo_segments=lim.ooo_segments_per_direction,
                        history_bytes=lim.history_bytes)
        isn = fl.isn_c if to_server else fl.isn_s
        if isn is not None:
            hs.syn(isn)
        if to_server:
            fl.c2s = hs
        else:
            fl.s2c = hs
        return hs

    # ------------------------------------------------------------------ delivery to the parser
    def _deliver(self, fl: _Flow, d: Direction, hs: HalfStream, out: list[tuple[str, int, Any]]) -> None:
        s = fl.summary
        r = s.rare
        if r is not None and r.streams is not None:
            r.streams[d.value].extend(out)
        for kind, offset, item in out:
            if kind == "data":
                if d is Direction.TO_SERVER:
                    s.bytes_to_server += len(item)
                else:
                    s.bytes_to_client += len(item)
                if fl.flags & _STOPPED:
                    continue
                if not fl.flags & _DECIDED:
                    self._decide(fl, d, item)
                    if fl.flags & _STOPPED:
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
                if fl.flags & _STOPPED or parser is None:
                    continue
                events = parser.gap(d, item)
            if events:
                self._locate(fl, events)

    def _port_hint(self, fl: _Flow) -> str | None:
        """The mail protocol of the flow's server port, None when that port is not a mail port."""
        port = _ports(fl.ckey)[1]
        return MAIL_PORTS.get(port) if port in self.ports else None

    def _decide(self, fl: _Flow, d: Direction, first: bytes) -> None:
        """Confirm the flow's protocol from its first bytes and create the parser."""
        fl.flags |= _DECIDED
        s = fl.summary
        hint = self._port_hint(fl)
        if is_tls_record(first):
            s.tls = "implicit"
            fl.flags |= _STOPPED
            if s.protocol is None:
                s.protocol = hint
            return
        proto = detect(first, d, hint)
        if proto is not None and hint is not None and proto != hint:
            s.detected_by = "content"
        elif proto is not None and s.detected_by == "port":
            s.detected_by = "port+content"
        proto = proto or hint
        s.protocol = proto
        if proto is None:
            fl.flags |= _STOPPED
            return
        midstream = not s.saw_syn
        if proto == "imap":
            fl.parser = make_parser(proto, max_line=self._max_line, max_literal=self._max_literal, midstream=midstream)
        else:
            fl.parser = make_parser(proto, max_line=self._max_line, midstream=midstream)

    def _locate(self, fl: _Flow, events: list[Event]) -> None:
        s = fl.summary
        kept = s.events
        if isinstance(kept, list):
            out = kept
        else:
            out = []
            s.events = out
        for ev in events:
            span = ev.span
            hs = fl.c2s if span.direction is Direction.TO_SERVER else fl.s2c
            frames = hs.frames_for(span.start, max(span.end, span.start + 1))
            if len(frames) > MAX_EVENT_FRAMES:
                frames = frames[: MAX_EVENT_FRAMES - 1] + frames[-1:]
            ts = hs.ts_for(span.start)
            le = LocatedEvent(ev, frames, ts if ts is not None else s.last_ts_ns)
            ret = fl.ret
            if ret is not None:
                ret.add(le, out, s)
            elif len(out) < EVENTS_KEPT_FIRST:
                out.append(le)
            else:
                fl.ret = ret = _Retention(out)
                ret.add(le, out, s)
            if isinstance(ev, TlsStarted):
                fl.flags |= _STOPPED
                fl.summary.tls = "starttls"

    # ------------------------------------------------------------------ limits
    def _limit(self, fl: _Flow, name: str) -> None:
        """Record that a flow hit a limit (per-capture counter and per-flow list)."""
        stats = self._stats
        stats.limits[name] = stats.limits.get(name, 0) + 1
        names = stats.flow_limits.setdefault(fl.summary.key, [])
        if name not in names:
            names.append(name)

    def _relieve_buffers(self) -> None:
        """Out-of-order bytes of all flows exceed the total cap: the largest holders deliver what they hold."""
        target = int(self._buffer_cap * _BUFFER_RELIEF)
        # stable sort: equal holders stay in creation order, client to server first
        holders = sorted(
            ((hs.ooo_bytes, i, fl, hs) for fl in self._flows() if fl.flags >> _HELD_SHIFT
             for i, hs in enumerate((fl.c2s, fl.s2c)) if hs.ooo_bytes),
            key=lambda h: -h[0],
        )
        for _n, i, fl, hs in holders:
            if self._held <= target:
                break
            out = hs.flush()
            self._limit(fl, "total_buffer_bytes")
            if out:
                self._deliver(fl, Direction.TO_SERVER if i == 0 else Direction.TO_CLIENT, hs, out)
            held = fl.c2s.ooo_bytes + fl.s2c.ooo_bytes
            self._held += held - (fl.flags >> _HELD_SHIFT)
            fl.flags = (fl.flags & _BITS) | held << _HELD_SHIFT

    # ------------------------------------------------------------------ ending flows
    def _forget(self, fl: _Flow) -> None:
        table = self._table
        ckey = fl.ckey
        if table.get(ckey) is fl:  # else forgotten already
            del table[ckey]
            skey = _reverse(ckey)
            if skey != ckey:
                if table.get(skey) is fl:
                    del table[skey]
                else:
                    self._lazy -= 1

    def _finish(self, fl: _Flow, how: str) -> None:
        """End a flow: flush reassembly and parser, publish its summary.

        After FIN or RST the flow stays in the table, closed, so that the last ACKs and
        retransmissions count to it (as in Wireshark) instead of starting a new flow;
        closed flows leave the table after ``_CLOSED_LINGER_NS`` of capture time.
        """
        if how in ("fin", "rst"):
            fl.flags |= _CLOSED
        else:
            self._forget(fl)
        for d, hs in ((Direction.TO_SERVER, fl.c2s), (Direction.TO_CLIENT, fl.s2c)):
            out = hs.flush()
            if out:
                self._deliver(fl, d, hs, out)
        self._held -= fl.flags >> _HELD_SHIFT
        fl.flags &= _BITS
        if fl.parser is not None and not fl.flags & _STOPPED:
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
        elif how == "eof" and fl.flags & _FINS:
            s.ended = "half-fin"
        else:
            s.ended = how
        c2s, s2c = fl.c2s, fl.s2c
        if c2s is not _UNUSED or s2c is not _UNUSED:  # else all these are 0
            s.retransmitted_bytes = c2s.retransmitted_bytes + s2c.retransmitted_bytes
            s.overlap_conflicts = c2s.conflict_count + s2c.conflict_count
            s.out_of_window_to_server, s.out_of_window_to_client = c2s.out_of_window, s2c.out_of_window
            s.late_bytes_to_server, s.late_bytes_to_client = c2s.late_bytes, s2c.late_bytes
            s.after_fin_bytes_to_server = c2s.after_fin_bytes
            s.after_fin_bytes_to_client = s2c.after_fin_bytes
        self._done.append(s)
        if how != "eof":  # its events are final: in memory within the budget, else on disk (at the end of the
            self.spool.admit(s)  # capture they are read next: writing them out would only cost time)
        if fl.flags & _CLOSED:
            # lingering after FIN/RST only counts stragglers: let the buffers and the parser go
            fl.c2s = fl.s2c = _RELEASED
            fl.parser = None
            fl.ret = None

    def _housekeep(self, frame: int, now: int) -> None:
        """Idle expiry and the caps, before frame ``frame`` (capture time ``now``)."""
        table = self._table
        live = self._flows()
        limit = now - self._idle_ns
        linger = now - _CLOSED_LINGER_NS
        expired = [v for v in live if (t := v.summary.last_ts_ns) < limit or v.flags & _CLOSED and t < linger]
        for fl in expired:
            if fl.flags & _CLOSED:
                self._forget(fl)
            else:
                self._finish(fl, "idle")
        n_live = len(live) - len(expired)  # each left the table
        others = len(table) - 2 * n_live + self._lazy
        self._stats.housekeeping.append((frame, n_live, others))
        if n_live > self._max_flows:
            # stable sort: flows equally idle go in creation order
            victims = sorted(self._flows(), key=lambda v: v.summary.last_ts_ns)[: n_live - self._max_flows]
            for fl in victims:
                self._limit(fl, "max_flows")
                if fl.flags & _CLOSED:
                    self._forget(fl)
                else:
                    self._finish(fl, "idle")
        if self._gen_start is None:
            self._gen_start = now
        crowded = others > self._max_tracked_keys
        rotate = crowded or now - self._gen_start >= self._idle_ns
        old = self._ign_old
        gen = self._gen
        dead = [k for k, v in table.items() if (v is old and rotate) or (
            v.__class__ is _Pending and (v.ts < limit or (rotate and v.gen < gen)))]
        for k in dead:
            del table[k]
        if rotate:
            if crowded and dead:
                stats = self._stats
                stats.limits["max_tracked_flows"] = stats.limits.get("max_tracked_flows", 0) + len(dead)
            self._ign_old = self._ign
            self._ign = _Marker()
            self._gen = gen + 1
            self._gen_start = now


# ---------------------------------------------------------------------------------------------- range scanner


@dataclass(slots=True)
class ScanResult:
    """What :meth:`Scanner.run` learned about its range, besides the packets it forwarded."""

    frames: int = 0  #: frames read in the range
    fast_path: int = 0
    slow_path: int = 0
    forwarded: int = 0  #: packets handed to the flow stage
    housekeeping: list[tuple[int, int]] = field(default_factory=list)  #: (frame, ts_ns) of housekeeping frames
    #: canonical keys this range picked by content (sticky for the rest of the range)
    interest: set[bytes] = field(default_factory=set)
    #: :func:`key_hash` of every canonical key this range decided to ignore
    ignored: set[int] = field(default_factory=set)


class Scanner:
    """Decode and flow-of-interest filter for one range of a capture (the cheap part, parallel).

    Strategy: the scanner cannot know the state a flow was in when its range began, so
    it forwards every packet that could matter to :meth:`Engine.run_decoded` under any
    state, and drops only packets that the engine would drop without effect. For each
    directional key it keeps a state that says what the engine's entry for that key can
    be (the engine's entry: absent, pending, ignored in the current generation, ignored
    in the previous generation, or a flow of interest); no entry means "anything":

    * packets with a mail port on either side (or every packet with ``all_tcp``) are
      always forwarded (their partition is cached in the table until the next
      housekeeping frame); so is every packet of a flow picked by content (below) or
      ``forced``;
    * a packet of a key without entry is forwarded. If it carries payload, the payload is
      tested with :func:`~analyzer.protocols.detect` in both directions (the engine tests
      one direction, or both: a subset): a match makes the flow *interesting* (forwarded
      until the range ends); else (and always when content detection is off) the key is
      *ignored*: the engine's entry is now "ignored, current generation" whatever it was
      (a decision, or a refresh), so later packets of that key are dropped (FIN/RST
      excepted: the engine forgets both keys there, and so does the scanner);
    * the reverse key of a key just ignored becomes *half-known* (absent, or ignored in
      either generation: the engine's decision marks both keys, a refresh marks one). A
      half-known key forwards its payloads and SYNs (the engine may decide, or create a
      pending entry that also replaces the other key's: both keys lose their entry in
      the scanner), and its first bare packet after each housekeeping frame (it may
      refresh an ignored entry of the previous generation); its other bare packets are
      dropped (on an absent or current entry they change nothing);
    * at each housekeeping frame (a superset of the engine's generation changes) the
      ignored and half-known entries age one generation; entries of the previous
      generation not seen since are forgotten (back to "anything"), as are cached port
      entries.

    The one case this cannot cover: a flow of interest picked by content in an earlier
    range, still in the engine's table here, whose first payload in this range does not
    look like mail. The scanner reports the keys it ignored (hashed) and the keys it picked
    by content; the caller intersects, and scans the range again with the conflicting keys
    ``forced`` to be interesting from the start.
    """

    def __init__(self, settings: Settings, parts: int, forced: Iterable[bytes] = ()) -> None:
        self.settings = settings
        self.parts = max(1, parts)
        self.forced = frozenset(forced)

    def run(self, packets: Iterable[tuple[int, int, int, bytes]], first_frame: int, decoder: Decoder,
            emit: Callable[[int, Decoded], None]) -> ScanResult:
        """Scan packets numbered from ``first_frame`` + 1; hand each packet that may matter to ``emit(part, p)``."""
        res = ScanResult()
        parts = self.parts
        # table values: an int (forward to that partition: a mail-port key, cached until the next
        # housekeeping frame, or a key picked by content, kept: in ``sticky``), an ignored marker
        # (current or previous generation) or a half-known marker (current or previous generation)
        table: dict[bytes, Any] = {}
        sticky: set[bytes] = set()
        for ck in self.forced:
            p = partition_of(ck, parts)
            for k in (ck, _reverse(ck)):
                table[k] = p
                sticky.add(k)
        ignored = _Marker()
        ignored_old = _Marker()
        half = _Marker()
        half_old = _Marker()
        ports = self.settings.ports
        all_tcp = self.settings.all_tcp
        content = self.settings.content_detection
        slow = decoder.decode
        u16 = _U16.unpack_from
        seqack = _SEQ_ACK.unpack_from
        to_server = Direction.TO_SERVER
        to_client = Direction.TO_CLIENT
        int_cls = int
        hk = res.housekeeping
        picked = res.interest
        dropped = res.ignored
        frame = first_frame
        fast_n = slow_n = fwd = 0
        st: Any = None
        part = 0
        next_housekeeping = (first_frame // HOUSEKEEPING_EVERY + 1) * HOUSEKEEPING_EVERY
        for ts, linktype, wirelen, data in packets:
            frame += 1
            if frame >= next_housekeeping:
                next_housekeeping = frame + HOUSEKEEPING_EVERY
                hk.append((frame, ts))
                for k in [k for k, v in table.items() if v is ignored_old or v is half_old or (
                        v.__class__ is int_cls and k not in sticky)]:
                    del table[k]
                ignored_old = ignored
                ignored = _Marker()
                half_old = half
                half = _Marker()
            if linktype == LINKTYPE_ETHERNET and data[12:14] == _ETH_IPV4 and len(data) >= 54 and data[14] == 0x45 \
                    and not (data[20] & 0x3F or data[21]):
                if data[23] != _IPPROTO_TCP:
                    continue
                fast_n += 1
                doff = (data[46] >> 4) * 4
                end = 14 + u16(data, 16)[0]
                if doff < 20 or 34 + doff > end or end > len(data):
                    pkt = slow(frame, ts, linktype, data, wirelen)
                    if pkt is None:
                        continue
                    key, seq, ack, flags, payload = pkt
                    st = table.get(key)
                else:
                    key = data[26:38]
                    st = table.get(key)
                    if st is ignored and not data[47] & _FIN_RST:
                        continue
                    payload = data[34 + doff : end]
                    seq, ack = seqack(data, 38)
                    flags = data[47] | ((data[46] & 1) << 8)
            elif linktype == LINKTYPE_ETHERNET and data[12:14] == _ETH_IPV6 and len(data) >= 74 and \
                    data[20] == _IPPROTO_TCP:
                fast_n += 1
                doff = (data[66] >> 4) * 4
                end = 54 + u16(data, 18)[0]
                if doff < 20 or 54 + doff > end or end > len(data):
                    pkt = slow(frame, ts, linktype, data, wirelen)
                    if pkt is None:
                        continue
                    key, seq, ack, flags, payload = pkt
                    st = table.get(key)
                else:
                    key = data[22:58]
                    st = table.get(key)
                    if st is ignored and not data[67] & _FIN_RST:
                        continue
                    payload = data[54 + doff : end]
                    seq, ack = seqack(data, 58)
                    flags = data[67] | ((data[66] & 1) << 8)
            else:
                if linktype == LINKTYPE_ETHERNET and data[12:14] == _ETH_IPV4 and len(data) >= 34 and \
                        data[14] == 0x45 and data[23] != _IPPROTO_TCP and not (data[20] & 0x3F or data[21]):
                    continue
                pkt = slow(frame, ts, linktype, data, wirelen)
                slow_n += 1
                if pkt is None:
                    continue
                key, seq, ack, flags, payload = pkt
                st = table.get(key)
            if st.__class__ is int_cls:
                part = st
            elif st is ignored or st is ignored_old:
                # the engine's entry is ignored (either generation): FIN/RST forgets both keys, anything
                # else refreshes this one
                if flags & _FIN_RST:
                    table.pop(key, None)
                    rev = _reverse(key)
                    if table.get(rev).__class__ is not int_cls:
                        table.pop(rev, None)
                elif st is ignored:
                    continue
                else:
                    table[key] = ignored
                part = partition_of(key, parts)
            else:  # no entry (anything) or half-known (absent or ignored)
                part = partition_of(key, parts)
                if st is None and (all_tcp or _ports_hit(key, ports)):
                    table[key] = part
                elif payload:
                    rev = _reverse(key)
                    if content and (detect(payload, to_server, None) is not None or
                                    detect(payload, to_client, None) is not None):
                        table[key] = table[rev] = part
                        sticky.add(key)
                        sticky.add(rev)
                        picked.add(canonical_key(key))
                    else:
                        dropped.add(key_hash(canonical_key(key)))
                        rv = table.get(rev)
                        if flags & _FIN_RST:
                            # a decision ignores both keys (the FIN is not looked at), a refresh
                            # forgets both: each key is absent or ignored (current generation)
                            table[key] = half
                            if rv.__class__ is not int_cls:
                                table[rev] = half
                        else:
                            table[key] = ignored
                            if rv is None:
                                table[rev] = half_old
                elif flags & TH_SYN:
                    # an absent key becomes pending, replacing the reverse key's entry too
                    if st is not None:
                        del table[key]
                    rev = _reverse(key)
                    rv = table.get(rev)
                    if rv is not None and rv.__class__ is not int_cls:
                        del table[rev]
                elif flags & _FIN_RST:
                    # an ignored key forgets both keys; an absent or pending one changes nothing
                    if st is not None:
                        table[key] = half
                    rev = _reverse(key)
                    rv = table.get(rev)
                    if rv is ignored:
                        table[rev] = half
                    elif rv is ignored_old:
                        table[rev] = half_old
                elif st is half:
                    continue  # absent or ignored in the current generation: a bare packet changes nothing
                elif st is half_old:
                    table[key] = half
            fwd += 1
            emit(part, (frame, ts, key, seq, ack, flags, payload))
        res.frames = frame - first_frame
        res.fast_path = fast_n
        res.slow_path = slow_n
        res.forwarded = fwd
        return res


def _ports_hit(key: bytes, ports: frozenset[int]) -> bool:
    """Whether either port of a directional key is one of ``ports``."""
    sport, dport = _ports(key)
    return sport in ports or dport in ports


def merge_decoded(streams: Sequence[Iterable[Decoded]]) -> Iterable[Decoded]:
    """Merge several frame-ordered packet streams into one, in frame order."""
    if len(streams) == 1:
        return streams[0]
    return heapq.merge(*streams, key=lambda p: p[0])
