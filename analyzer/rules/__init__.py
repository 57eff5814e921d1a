"""Rules: records and flows in, findings out (design habit 10).

Each rule module has a ``RULES`` table (:class:`~analyzer.rules.base.RuleInfo`
rows: stable id, severity, title, spec code) and three functions that yield findings:
``check_flow(ctx, flow, recs)`` for what one flow shows (its summary, its events, its
records), ``check_global(ctx)`` for what needs several flows or every record (hop chains,
trust across senders, first hops), and ``check(ctx)``, the two over a whole context.
``run_rules`` runs them all, then sorts and de-duplicates the findings so that the same
capture always gives the same list in the same order.

One pass (issue 6: memory bounded by open flows): a :class:`RuleRun` takes the flows in
id order, a batch of :data:`RULE_BATCH_FLOWS` at a time (``RuleRun.flows``: every module's
``check_flow``), so the pipeline can build a batch's records, run its rules and drop its
events before the next batch (:func:`analyzer.pipeline.finish`). What a global part needs from events (trust: what a
server advertised and which version it named; chain rules: referral replies) is noted
in ``ctx.facts`` during that pass, so no global part reads ``summary.events``. Then
``RuleRun.finish`` builds the hop chains (``chains.build_chains``: records and flow
summaries only) and runs every ``check_global``. The findings are the same as one
module after the other over the whole context: rule ids are per module, so only the
order of one rule's findings matters to de-duplication and folding, and every rule
yields its findings in flow order, then record (command) order, as before.

Strategy for repetition: an attacker (or a broken proxy) can repeat one bad command
100,000 times on one connection. The first :data:`MAX_FINDINGS_PER_RULE_FLOW` findings of
a rule in a flow are kept as they are; the others are folded, as they are produced, into
one summary finding per (rule, flow) that counts them and names their first and last
frames, so memory and report size stay bounded while nothing found goes unreported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
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
    #: what the modules' check_flow noted for their check_global, by module name (never events)
    facts: dict[str, Any] = field(default_factory=dict)

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


#: flows whose per-flow rules run module by module (ours: 8-128 measured alike on mail20000, 1 and all slower)
RULE_BATCH_FLOWS = 64
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


def check_module(ctx: RuleContext, check_flow: Callable[[RuleContext, FlowResult | None, list[ForwardingRecord]],
                                                     Iterable[Finding]],
                 check_global: Callable[[RuleContext], Iterable[Finding]]) -> Iterator[Finding]:
    """A module's whole ``check(ctx)``: its per-flow part over every flow (:func:`flow_groups`), then its global part."""
    for flow, recs in flow_groups(ctx):
        yield from check_flow(ctx, flow, recs)
    yield from check_global(ctx)


def flow_groups(ctx: RuleContext) -> Iterator[tuple[FlowResult | None, list[ForwardingRecord]]]:
    """Each flow of the context, in list order, with its records (in ``ctx.records`` order); then, per flow
    id in order of first appearance, the records of flows the context does not hold, with None as flow."""
    by_flow: dict[int, list[ForwardingRecord]] = {}
    for r in ctx.records:
        lst = by_flow.get(r.flow)
        if lst is None:
            by_flow[r.flow] = [r]
        else:
            lst.append(r)
    for flow in ctx.flows:
        yield flow, by_flow.pop(flow.id, [])
    for recs in by_flow.values():
        yield None, recs


class RuleRun:
    """Findings of one context, taken flow by flow (:meth:`flow`), then globally (:meth:`finish`).

    De-duplicates and folds as the findings are produced (see the module docstring); the
    flows must be given in ``ctx.flows`` order, each once, with their records in ``ctx.records``
    order (those records already in ``ctx.records`` or added to it before :meth:`finish`).
    """

    __slots__ = ("ctx", "modules", "flow_checks", "found", "per_group", "folds", "seen_folded")

    def __init__(self, ctx: RuleContext) -> None:
        self.ctx = ctx
        ctx.facts = {}
        self.modules = _modules()
        self.flow_checks = [mod.check_flow for mod in self.modules]
        self.found: dict[tuple[object, ...], Finding] = {}
        self.per_group: dict[tuple[str, int | None], int] = {}
        self.folds: dict[tuple[str, int | None], _Fold] = {}
        self.seen_folded: set[int] = set()  # hashes of the dedup keys of folded findings (their objects are gone)

    def _add(self, parts: Iterable[Iterable[Finding]]) -> None:
        """Keep, drop (a duplicate) or fold each finding, in production order: parts one after the other."""
        found, per_group, folds, seen_folded = self.found, self.per_group, self.folds, self.seen_folded
        for part in parts:
            for f in part:
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

    def flows(self, batch: Sequence[tuple[FlowResult | None, list[ForwardingRecord]]]) -> None:
        """Every module's per-flow rules on a batch of consecutive flows, each with its records (None as
        flow: records of a flow the context does not hold).

        Module by module over the batch: each rule still sees the flows in order, and the interpreter
        keeps one module's code and data hot (measured on mail20000: 1.7 s instead of 2.1 s flow by flow).
        """
        ctx = self.ctx
        # each part is consumed before the next one starts (trust and chainrules do their work, noting
        # facts, in the call itself: independent of the other modules)
        self._add([check(ctx, flow, recs) for check in self.flow_checks for flow, recs in batch])

    def over(self, groups: Iterable[tuple[FlowResult | None, list[ForwardingRecord]]],
             after: Callable[[list[tuple[FlowResult | None, list[ForwardingRecord]]]], None] | None = None,
             ) -> list[Finding]:
        """:meth:`flows` over ``groups`` (flows in order with their records), :data:`RULE_BATCH_FLOWS` at a
        time, ``after(batch)`` once each batch's rules ran; then :meth:`finish`."""
        batch: list[tuple[FlowResult | None, list[ForwardingRecord]]] = []
        for group in groups:
            batch.append(group)
            if len(batch) >= RULE_BATCH_FLOWS:
                self.flows(batch)
                if after is not None:
                    after(batch)
                batch = []
        self.flows(batch)
        if after is not None:
            after(batch)
        return self.finish()

    def finish(self) -> list[Finding]:
        """Hop chains, every module's global rules, and all findings sorted by key."""
        from analyzer.rules.chains import build_chains

        ctx = self.ctx
        ctx.chains = build_chains(ctx.records, ctx.flows)
        self._add([mod.check_global(ctx) for mod in self.modules])
        out = list(self.found.values())
        out.extend(fold.finding() for fold in self.folds.values())
        return sorted(out, key=lambda f: f.key)


def run_rules(ctx: RuleContext) -> list[Finding]:
    """All findings, de-duplicated, repeats past the per-(rule, flow) cap folded, sorted by key."""
    return RuleRun(ctx).over(flow_groups(ctx))


def iter_rule_table() -> Iterator[tuple[str, str, str, str]]:
    """(id, severity, spec, title) rows for documentation."""
    for r in all_rules():
        yield r.id, r.severity.label, r.spec or "-", r.title
