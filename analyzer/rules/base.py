"""Findings, severities and the rule table type shared by every rule module.

Memory: many findings repeat the same facts, messages and byte ranges (several rules on one
command, one rule on a repeated command), and the kept ones live to the end of the run. A
:class:`Finding` therefore swaps each of these immutable parts for an equal one made before
(:class:`analyzer.sharing.Sharing`, a bounded table); the values
are equal, so the reports are the same.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import final

from analyzer.sharing import Sharing

SHARE_TABLE_SIZE = 8192  # ours: parts the sharing table holds (emptied when full): < 0.5 MiB of slots

#: fact pairs and tuples, messages, stream and flow tuples: str, or tuples of str and int (never bool)
_share = Sharing(SHARE_TABLE_SIZE)


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

    def __post_init__(self) -> None:
        # equal parts shared (see the module docstring); only types whose equality means the same output
        get = _share.get
        facts = self.facts
        if facts:
            shared = get(facts) or _share(tuple([get(kv) or _share(kv) for kv in facts]))
            self.facts = shared  # type: ignore[assignment]
        self.message = _share.text(self.message)
        stream = self.stream
        if stream is not None:
            self.stream = get(stream) or _share(stream)  # type: ignore[assignment]
        flows = self.flows
        if len(flows) == 1:
            self.flows = get(flows) or _share(flows)  # type: ignore[assignment]

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
