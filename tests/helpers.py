"""Shared test helpers: feed a parser a scripted conversation under several chunkings.

Strategy: every parser must produce the same events whatever the segmentation of
its input (h11's ``t_body_reader``), so ``feed_all`` replays one script either
whole, one byte per ``feed``, or in seeded random pieces of 1..7 bytes, then
closes both directions with ``eof``.
"""

from __future__ import annotations

import random

from analyzer.model import Direction
from analyzer.protocols.base import Event, Parser

C, S = Direction.TO_SERVER, Direction.TO_CLIENT

CHUNKINGS = ("whole", "bytewise", "random")


def wire(text: str) -> bytes:
    """str -> bytes with every '\\n' turned into '\\r\\n' (latin-1 encode)."""
    return text.replace("\n", "\r\n").encode("latin-1")


def _pieces(data: bytes, chunking: str, rng: random.Random) -> list[bytes]:
    """Split ``data`` according to ``chunking``."""
    if chunking == "whole":
        return [data]
    if chunking == "bytewise":
        return [data[i : i + 1] for i in range(len(data))]
    if chunking == "random":
        out: list[bytes] = []
        i = 0
        while i < len(data):
            n = rng.randint(1, 7)
            out.append(data[i : i + n])
            i += n
        return out
    raise ValueError(f"unknown chunking {chunking!r}")


def feed_all(
    parser: Parser,
    script: list[tuple[Direction, bytes]],
    chunking: str = "whole",
    seed: int = 0,
) -> list[Event]:
    """Feed each (direction, bytes) item in order; chunking 'whole' (one feed per item),
    'bytewise' (one byte per feed), 'random' (random.Random(seed) splits of 1..7 bytes).
    Then call eof(TO_SERVER) and eof(TO_CLIENT). Return all events concatenated."""
    rng = random.Random(seed)
    events: list[Event] = []
    for direction, data in script:
        for piece in _pieces(data, chunking, rng):
            events.extend(parser.feed(direction, piece))
    events.extend(parser.eof(Direction.TO_SERVER))
    events.extend(parser.eof(Direction.TO_CLIENT))
    return events


def events_of(kind: type[Event], events: list[Event]) -> list[Event]:
    """The events of exactly type ``kind`` (subclasses included), in order."""
    return [e for e in events if isinstance(e, kind)]
