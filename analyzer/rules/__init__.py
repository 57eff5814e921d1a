"""Rules: records and flows in, findings out (design habit 10).

Each rule module has a ``RULES`` table (:class:`~analyzer.rules.base.RuleInfo`
rows: stable id, severity, title, spec code) and a ``check(ctx)`` function that
yields findings. ``run_rules`` runs them all, then sorts and de-duplicates the
findings so that the same capture always gives the same list in the same order.
Hop chains are built first (``chains.build_chains``) because chain rules read them.

Strategy for repetition: an attacker (or a broken proxy) can repeat one bad command
100,000 times on one connection. The first :data:`MAX_FINDINGS_PER_RULE_FLOW` findings of
a rule in a flow are kept as they are; the others are folded, as they are produced, into
one summary finding per (rule, flow) that counts them and names their first and last
frames, so memory and report size stay bounded while nothing found goes unreported.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from importlib import import_module
from types import ModuleType
from typing import Any

from analyzer.config import Settings
from analyzer.flows.model import FlowResult
from analyzer.forwarding.model import ForwardingRecord
from analyzer.rules.base import Finding, RuleInfo, Severity

#: rule modules in the order they run (the order does not change the output: findings are sorted)
RULE_MODULES = ("limits", "ttl", "session", "encoding", "protocol", "trust", "chainrules")


@dataclass(slots=True)
class RuleContext:
    """What every rule may read."""

    records: list[ForwardingRecord]
    flows: list[FlowResult]  #: index == flow id
    settings: Settings
    chains: list[Any] = field(default_factory=list)  #: analyzer.rules.chains.Chain objects
    excerpt_len: int = 256

    def flow(self, flow_id: int) -> FlowResult:
        return self.flows[flow_id]

    def record_finding(self, info: RuleInfo, rec: ForwardingRecord, message: str,
                       facts: Iterable[tuple[str, object]] = (), *, severity: Severity | None = None,
                       frames: tuple[int, ...] | None = None, excerpt: bytes | None = None) -> Finding:
        """A finding whose evidence is a forwarding record's command."""
        return Finding(
            rule=info.id, spec=info.spec, severity=severity or info.severity, title=info.title, message=message,
            flow=rec.flow, flows=(rec.flow,), capture=rec.capture, frames=frames if frames is not None else rec.frames,
            ts_ns=rec.ts_ns, stream=("to_server", rec.stream_start, rec.stream_end),
            excerpt=(rec.excerpt if excerpt is None else excerpt)[: self.excerpt_len],
            facts=tuple((k, str(v)) for k, v in facts),
        )


def _modules() -> list[ModuleType]:
    return [import_module(f"analyzer.rules.{name}") for name in RULE_MODULES]


def all_rules() -> list[RuleInfo]:
    """Every rule of every module, in module order (the README table is rendered from this)."""
    return [info for mod in _modules() for info in mod.RULES]


#: findings of one rule in one flow kept individually; the rest are folded into one (ours)
MAX_FINDINGS_PER_RULE_FLOW = 100
#: frame numbers a folded summary lists (the first ones, then the last one) (ours)
MAX_FOLDED_FRAMES = 16


@dataclass(slots=True)
class _Fold:
    """The findings of one (rule, flow) past the cap."""

    first: Finding  #: the first one folded: its evidence stands for the rest
    count: int = 0
    severity: Severity = Severity.INFO
    frames: list[int] = field(default_factory=list)
    last_frame: int | None = None
    last_ts_ns: int | None = None

    def add(self, f: Finding) -> None:
        self.count += 1
        if f.severity > self.severity:
            self.severity = f.severity
        if f.frames:
            if len(self.frames) < MAX_FOLDED_FRAMES - 1:
                self.frames.extend(f.frames[: MAX_FOLDED_FRAMES - 1 - len(self.frames)])
            self.last_frame = f.frames[-1]
        if f.ts_ns is not None:
            self.last_ts_ns = f.ts_ns

    def finding(self) -> Finding:
        """The summary finding: the first folded one's evidence, the count and the frame range."""
        f = self.first
        frames = list(self.frames)
        if self.last_frame is not None and (not frames or frames[-1] != self.last_frame):
            frames.append(self.last_frame)
        where = f"flow {f.flow}" if f.flow is not None else "the capture"
        span = f" (frames {frames[0]}-{frames[-1]})" if frames else ""
        facts = f.facts + (
            ("folded_findings", str(self.count)),
            ("listed_individually", str(MAX_FINDINGS_PER_RULE_FLOW)),
        )
        if self.last_ts_ns is not None:
            facts += (("last_ts_ns", str(self.last_ts_ns)),)
        return replace(
            f, severity=self.severity, frames=tuple(sorted(set(frames))), facts=facts,
            message=f"{self.count} more findings of this rule in {where}{span}, past the first "
                    f"{MAX_FINDINGS_PER_RULE_FLOW} listed; the first of them: {f.message}",
        )


def run_rules(ctx: RuleContext) -> list[Finding]:
    """All findings, de-duplicated, repeats past the per-(rule, flow) cap folded, sorted by key."""
    from analyzer.rules.chains import build_chains

    ctx.chains = build_chains(ctx.records, ctx.flows)
    found: dict[tuple[object, ...], Finding] = {}
    per_group: dict[tuple[str, int | None], int] = {}
    folds: dict[tuple[str, int | None], _Fold] = {}
    seen_folded: set[int] = set()  # hashes of the dedup keys of folded findings (their objects are gone)
    for mod in _modules():
        for f in mod.check(ctx):
            dkey = (f.rule, f.capture, f.frames, f.stream, f.message)
            if dkey in found:
                continue
            group = (f.rule, f.flow)
            n = per_group.get(group, 0)
            if n < MAX_FINDINGS_PER_RULE_FLOW:
                per_group[group] = n + 1
                found[dkey] = f
                continue
            h = hash(dkey)
            if h in seen_folded:
                continue
            seen_folded.add(h)
            fold = folds.get(group)
            if fold is None:
                fold = folds[group] = _Fold(f)
            fold.add(f)
    out = list(found.values())
    out.extend(fold.finding() for fold in folds.values())
    return sorted(out, key=lambda f: f.key)


def iter_rule_table() -> Iterator[tuple[str, str, str, str]]:
    """(id, severity, spec, title) rows for documentation."""
    for r in all_rules():
        yield r.id, r.severity.label, r.spec or "-", r.title
