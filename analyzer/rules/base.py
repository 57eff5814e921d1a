"""Findings, severities and the rule table type shared by every rule module."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import final


class Severity(enum.IntEnum):
    """How much a finding matters (spec section 8: H/M/L; info for context)."""

    INFO = 10
    LOW = 20
    MEDIUM = 30
    HIGH = 40

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Severity:
        return cls[text.strip().upper()]


@dataclass(frozen=True, slots=True)
class RuleInfo:
    """One row of a rule module's table (rendered into the README)."""

    id: str  #: stable dotted id, e.g. ``limits.imap_id_value_too_long``; never renamed
    severity: Severity  #: default severity
    title: str  #: one line
    spec: str | None  #: spec code it implements (``A-I2``), or None for a rule of our own


@final
@dataclass(slots=True, unsafe_hash=True)
class Finding:
    """One thing an investigator should look at, pointing back into the capture."""

    rule: str  #: RuleInfo.id
    spec: str | None  #: spec code or None
    severity: Severity
    title: str  #: RuleInfo.title
    message: str  #: this occurrence, with its numbers and addresses
    flow: int | None  #: flow id of the evidence (the later hop for chain findings)
    flows: tuple[int, ...]  #: every flow involved (chain findings list all hops); at least ``flow``
    capture: int | None  #: capture index of ``frames``
    frames: tuple[int, ...]  #: frame numbers of the evidence (Wireshark frame.number)
    ts_ns: int | None  #: capture time of the evidence
    stream: tuple[str, int, int] | None  #: (direction, start, end) byte range in the flow's stream
    excerpt: bytes  #: bounded bytes of the evidence (the command line, the reply)
    facts: tuple[tuple[str, str], ...]  #: ("value_len", "1025"), ("limit", "1024") ...

    @property
    def key(self) -> tuple[object, ...]:
        """Deterministic order: capture, first frame, rule, stream offset, message."""
        return (
            self.capture if self.capture is not None else -1,
            self.frames[0] if self.frames else 0,
            self.rule,
            self.stream[1] if self.stream else 0,
            self.message,
        )
