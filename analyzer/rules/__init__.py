"""Rules: records and flows in, findings out (design habit 10).

Each rule module has a ``RULES`` table (:class:`~analyzer.rules.base.RuleInfo`
rows: stable id, severity, title, spec code) and a ``check(ctx)`` function that
yields findings. ``run_rules`` runs them all, then sorts and de-duplicates the
findings so that the same capture always gives the same list in the same order.
Hop chains are built first (``chains.build_chains``) because chain rules read them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
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


def run_rules(ctx: RuleContext) -> list[Finding]:
    """All findings, sorted by (capture, first frame, rule, offset) and de-duplicated."""
    from analyzer.rules.chains import build_chains

    ctx.chains = build_chains(ctx.records, ctx.flows)
    found: dict[tuple[object, ...], Finding] = {}
    for mod in _modules():
        for f in mod.check(ctx):
            found.setdefault((f.rule, f.capture, f.frames, f.stream, f.message), f)
    return sorted(found.values(), key=lambda f: f.key)


def iter_rule_table() -> Iterator[tuple[str, str, str, str]]:
    """(id, severity, spec, title) rows for documentation."""
    for r in all_rules():
        yield r.id, r.severity.label, r.spec or "-", r.title
