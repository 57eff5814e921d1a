"""Flow results shared by the engine, the record builder, the rules and the reports."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from analyzer.model import Endpoint
from analyzer.protocols.base import LocatedEvent


@dataclass(slots=True)
class FlowSummary:
    """One TCP connection of interest, as reported in ``report.json`` ``flows``."""

    capture: int  #: index of the capture file in the run
    key: tuple[int, int]  #: (capture, first frame): sort key; ids are assigned in this order
    client: Endpoint
    server: Endpoint
    protocol: str | None  #: imap/pop3/smtp/submission/lmtp, None for non-mail TCP (all-tcp mode)
    detected_by: str  #: "port", "content" or "port+content"
    saw_syn: bool  #: the connection start was captured
    first_frame: int
    last_frame: int
    first_ts_ns: int
    last_ts_ns: int
    packets_to_server: int
    packets_to_client: int
    bytes_to_server: int  #: payload bytes delivered in stream order (retransmissions not counted)
    bytes_to_client: int
    gaps_to_server: int
    gaps_to_client: int
    gap_bytes_to_server: int
    gap_bytes_to_client: int
    retransmitted_bytes: int
    overlap_conflicts: int  #: overlapping bytes with different content (first arrival kept)
    ended: str  #: "fin" (both sides), "half-fin", "rst", "reused" (new SYN on the 4-tuple), "idle", "eof"
    tls: str | None  #: "implicit" (TLS from the first byte), "starttls", or None (cleartext)
    #: segments (and FINs) dropped for lying more than MAX_WINDOW from the stream, per direction
    out_of_window_to_server: int = 0
    out_of_window_to_client: int = 0
    #: bytes dropped because they lie before the stream base or inside a gap already declared
    late_bytes_to_server: int = 0
    late_bytes_to_client: int = 0
    #: bytes dropped because they lie at or beyond the direction's FIN
    after_fin_bytes_to_server: int = 0
    after_fin_bytes_to_client: int = 0
    #: dissected events, in capture order: the first flows.table.EVENTS_KEPT_FIRST, then only those the
    #: records and rules need (flows.table._Retention); the others are counted below. The engine makes
    #: it a list at the first event; a flow without events shares the empty tuple (a flood of one-SYN
    #: flows would otherwise pay an empty list each)
    events: Sequence[LocatedEvent] = ()
    streams: dict[str, list[tuple[str, int, Any]]] | None = None  #: raw delivery log (tests only)
    events_elided: int = 0  #: located events not kept in ``events`` (commands_elided + replies_elided)
    commands_elided: int = 0  #: plain client commands not kept (NOOP, FETCH, RCPT without forwarding ...)
    replies_elided: int = 0  #: server replies not kept (answers to those commands, untagged data ...)


@dataclass(slots=True)
class FlowResult:
    """A flow of interest with its run-wide id."""

    id: int  #: 0-based, in order of (capture, first frame): deterministic
    community_id: str  #: Community ID v1 of the 5-tuple
    summary: FlowSummary
