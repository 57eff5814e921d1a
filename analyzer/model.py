"""Small shared value types used by every stage."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Direction(enum.Enum):
    """Which way bytes travel inside a TCP connection (Suricata naming)."""

    TO_SERVER = "to_server"
    TO_CLIENT = "to_client"

    @property
    def other(self) -> Direction:
        return Direction.TO_CLIENT if self is Direction.TO_SERVER else Direction.TO_SERVER


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    """One side of a TCP connection."""

    ip: str  #: textual address, IPv6 compressed (``ipaddress`` canonical form)
    port: int  #: TCP port

    def as_dict(self) -> dict[str, object]:
        return {"ip": self.ip, "port": self.port}


@dataclass(slots=True, unsafe_hash=True)
class Span:
    """A byte range of one direction of a reassembled stream (offsets from the stream start).

    Never changed once made; not ``frozen`` only because a frozen ``__init__`` costs about
    1 us more per object (one Span per parser event), see :mod:`analyzer.protocols.base`.
    """

    direction: Direction  #: which half-stream
    start: int  #: first byte offset (inclusive)
    end: int  #: last byte offset (exclusive)
