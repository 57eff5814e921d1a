"""The rules in one pass over the flows (issue 6 item 4): the same findings as module after module.

``pipeline.finish`` takes the flows one at a time (records, every module's ``check_flow``,
then the flow's events are dropped) and runs the ``check_global`` parts at the end;
``run_rules`` does the same on a prebuilt context. Both must give exactly the findings of
the former order, each module's ``check(ctx)`` over the whole context one after the other,
de-duplicated and folded the same way; and no global part may read a flow's events.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from importlib import import_module
from pathlib import Path
from typing import Any, NoReturn

import pytest

from analyzer.config import Settings
from analyzer.model import Direction
from analyzer.pipeline import AnalysisResult, analyze, analyze_capture, finish
from analyzer.rules import (
    MAX_FINDINGS_PER_RULE_FLOW,
    RULE_MODULES,
    RuleContext,
    RuleRun,
    _Fold,
    flow_groups,
    run_rules,
)
from analyzer.rules.base import Finding
from analyzer.rules.chains import build_chains
from analyzer.rules.trustconf import load_trust
from tests.unit.rules.factory import ctx_from_wire

ROOT = Path(__file__).resolve().parents[3]
CAPTURES = sorted(str(p) for p in (ROOT / "captures").rglob("*.pcap*"))
C, S = Direction.TO_SERVER, Direction.TO_CLIENT


def module_after_module(ctx: RuleContext) -> list[Finding]:
    """The former run_rules: chains, then each module's whole check(ctx) in turn, de-duplicated and folded."""
    ctx.chains = build_chains(ctx.records, ctx.flows)
    found: dict[tuple[object, ...], Finding] = {}
    per_group: dict[tuple[str, int | None], int] = {}
    folds: dict[tuple[str, int | None], _Fold] = {}
    seen_folded: set[int] = set()
    for name in RULE_MODULES:
        for f in import_module(f"analyzer.rules.{name}").check(ctx):
            dkey = (f.rule, f.capture, f.frames, f.stream, f.message)
            if dkey in found:
                continue
            group = (f.rule, f.flow)
            n = per_group.get(group, 0)
            if n < MAX_FINDINGS_PER_RULE_FLOW:
                per_group[group] = n + 1
                found[dkey] = f
                continue
            if hash(dkey) in seen_folded:
                continue
            seen_folded.add(hash(dkey))
            fold = folds.get(group)
            if fold is None:
                fold = folds[group] = _Fold(f)
            fold.add(f)
    out = list(found.values()) + [fold.finding() for fold in folds.values()]
    return sorted(out, key=lambda f: f.key)


class _Gone(Sequence[Any]):
    """Stands for a flow's dropped events: any read fails the test."""

    def _fail(self, *_: object) -> NoReturn:
        raise AssertionError("a global rule part read a flow's events")

    __len__ = __iter__ = __getitem__ = __bool__ = __contains__ = __reversed__ = _fail  # type: ignore[assignment]


def _context(result: AnalysisResult) -> RuleContext:
    return RuleContext(list(result.records), result.flows, result.settings, excerpt_len=result.settings.excerpt_len)


SETTINGS = {
    "default": Settings(),
    "trusted": Settings(trust=load_trust([], [], ["10.0.0.0/8,192.0.2.0/24"])),
}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_run_rules_and_one_pass_finish_agree_on_the_project_captures(name: str) -> None:
    settings = SETTINGS[name]
    kept = analyze(CAPTURES, settings, keep_events=True)
    assert kept.findings and kept.chains  # the captures exercise chains, trust and events
    assert any(f.summary.events for f in kept.flows)
    assert run_rules(_context(kept)) == kept.findings
    ctx = _context(kept)
    assert module_after_module(ctx) == kept.findings
    assert ctx.chains == kept.chains
    dropped = analyze(CAPTURES, settings)
    assert all(f.summary.events == () for f in dropped.flows)
    assert dropped.findings == kept.findings
    assert dropped.records == kept.records
    assert dropped.chains == kept.chains


def test_each_capture_alone() -> None:
    for path in CAPTURES:
        kept = analyze([path], Settings(), keep_events=True)
        assert module_after_module(_context(kept)) == kept.findings, path
        assert analyze([path], Settings()).findings == kept.findings, path


def test_global_parts_never_read_events() -> None:
    """The flows' events gone right after their check_flow: check_global (trust, chains, ttl) still works."""
    for settings in SETTINGS.values():
        kept = analyze(CAPTURES, settings, keep_events=True)
        ctx = _context(kept)
        run = RuleRun(ctx)
        for flow, recs in flow_groups(ctx):
            run.flows([(flow, recs)])
            if flow is not None:
                flow.summary.events = _Gone()
        assert run.finish() == kept.findings


class _Counted(Sequence[Any]):
    """A flow's events behind a read-only sequence (like the spool's) that counts full reads."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self.reads = 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: Any) -> Any:
        self.reads += 1
        return self.items[i]

    def __iter__(self) -> Iterator[Any]:
        self.reads += 1
        return iter(self.items)


@pytest.mark.parametrize("keep", [False, True])
def test_finish_reads_each_flows_events_once(keep: bool) -> None:
    """Events that are not a list (spooled ones load on every read) are read once per flow, and the run's
    findings are the same; kept, the flow holds the same sequence object afterwards."""
    want = analyze(CAPTURES, Settings()).findings
    parts = [analyze_capture(p, i, Settings()) for i, p in enumerate(CAPTURES)]
    wrapped = []
    for _, flows in parts:
        for s in flows:
            if s.events:
                s.events = _Counted(list(s.events))
                wrapped.append(s.events)
    assert wrapped
    result = finish(parts, Settings(), keep_events=keep)
    assert result.findings == want
    assert all(w.reads == 1 for w in wrapped)
    held = [f.summary.events for f in result.flows if f.summary.events]
    assert (sorted(map(id, held)) == sorted(map(id, wrapped))) if keep else held == []


def test_module_check_is_check_flow_then_check_global() -> None:
    kept = analyze(CAPTURES, Settings(), keep_events=True)
    for name in RULE_MODULES:
        mod = import_module(f"analyzer.rules.{name}")
        whole = _context(kept)
        whole.chains = kept.chains
        parts = _context(kept)
        parts.chains = kept.chains
        split: list[Finding] = []
        for flow, recs in flow_groups(parts):
            split += mod.check_flow(parts, flow, recs)
        split += mod.check_global(parts)
        assert list(mod.check(whole)) == split, name


def _xclient_flood(n: int) -> Iterator[tuple[Direction, bytes]]:
    yield S, b"220 backend ESMTP Postfix\r\n"
    yield C, b"EHLO proxy\r\n"
    yield S, b"250-backend\r\n250 XCLIENT NAME ADDR PORT PROTO HELO LOGIN\r\n"
    for i in range(n):
        yield C, b"XCLIENT ADDR=10.1.%d.%d TTL=0%d NAME=" % (i // 250, i % 250, i) + b"x" * 300 + b"\r\n"
        yield S, b"220 ok\r\n"


def test_folding_past_the_cap_is_unchanged() -> None:
    """Past 100 findings of a rule in a flow they fold: the same ones, in the same order, as before."""
    ctx = ctx_from_wire("smtp", list(_xclient_flood(MAX_FINDINGS_PER_RULE_FLOW + 40)))
    ref = module_after_module(dataclasses.replace(ctx, facts={}))
    got = run_rules(ctx)
    assert got == ref
    assert any(k == "folded_findings" for f in got for k, _ in f.facts)


def test_records_of_flows_the_context_lacks_are_still_judged() -> None:
    """A prebuilt context whose records name a flow it does not hold: their record rules run as before."""
    ctx = ctx_from_wire("smtp", list(_xclient_flood(3)))
    lonely = RuleContext([dataclasses.replace(r, flow=7) for r in ctx.records], [], ctx.settings)
    got = run_rules(lonely)
    assert got == module_after_module(dataclasses.replace(lonely, facts={}))
    assert {f.flow for f in got} == {7}
