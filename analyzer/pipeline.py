"""The only module that knows the order of the stages.

captures -> packets -> (decode, flow table, reassembly, parsers) -> flows with
located events -> records -> findings -> ``AnalysisResult``. Reports are written
by :mod:`analyzer.report` from the result.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from analyzer.capture import CaptureInfo, open_capture
from analyzer.capture.decode import Decoder
from analyzer.community_id import community_id
from analyzer.config import Settings
from analyzer.errors import CaptureFormatError
from analyzer.flows.model import FlowResult, FlowSummary
from analyzer.flows.table import CaptureStats, Engine
from analyzer.forwarding.extract import build_records
from analyzer.forwarding.model import ForwardingRecord
from analyzer.rules import RuleContext, run_rules
from analyzer.rules.base import Finding


@dataclass(slots=True)
class CaptureResult:
    """What one input file gave."""

    path: str
    info: CaptureInfo | None  #: None when the file could not be read at all
    error: str | None  #: one sentence when the input is unusable
    stats: CaptureStats | None
    decode_issue_counts: dict[str, int] = field(default_factory=dict)
    decode_issues: list[Any] = field(default_factory=list)  #: first examples (DecodeIssue)
    decode_counts: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0


@dataclass(slots=True)
class AnalysisResult:
    """Everything the reports are made from."""

    captures: list[CaptureResult]
    flows: list[FlowResult]
    records: list[ForwardingRecord]
    findings: list[Finding]  #: sorted by (capture, first frame, rule, offset)
    chains: list[Any]  #: analyzer.rules.chains.Chain, in order of first hop
    settings: Settings

    @property
    def unusable(self) -> list[CaptureResult]:
        return [c for c in self.captures if c.error is not None]


def _progress_line(info_getter: Callable[[], CaptureInfo | None], path: str) -> Callable[[int], None]:
    start = time.monotonic()

    def show(frames: int) -> None:
        info = info_getter()
        done = info.bytes if info is not None else 0
        total = info.file_size if info is not None else None
        el = max(time.monotonic() - start, 1e-6)
        pct = f" {100 * done / total:5.1f}%" if total and info is not None and info.compression is None else ""
        sys.stderr.write(
            f"\r{path[-40:]}: {done / 1e6:9.1f} MB{pct} {done / 1e6 / el:7.1f} MB/s {frames:>11,} frames "
        )
        sys.stderr.flush()

    return show


def analyze(paths: list[str], settings: Settings, *, progress: bool = False,
            keep_streams: bool = False) -> AnalysisResult:
    """Run every stage over the given capture files, in order."""
    captures: list[CaptureResult] = []
    summaries: list[FlowSummary] = []
    for index, path in enumerate(paths):
        t0 = time.monotonic()
        try:
            cap = open_capture(path)
        except CaptureFormatError as exc:
            captures.append(CaptureResult(path, None, str(exc), None))
            continue
        with cap:
            decoder = Decoder()
            show = _progress_line(lambda: cap.info, path) if progress else None
            engine = Engine(settings, keep_streams=keep_streams, progress=show)
            flows, stats = engine.run(cap.packets(), index, decoder)
            if show is not None:
                show(stats.packets)
                sys.stderr.write("\n")
            info = cap.info
        error = None
        unsupported = decoder.issue_counts.get("unsupported_linktype", 0)
        if info.packets > 0 and unsupported == info.packets:
            kinds = ", ".join(str(k) for k in sorted(info.linktypes))
            error = f"{path}: no packet has a supported link type (link types {kinds})"
        captures.append(CaptureResult(
            path, info, error, stats, dict(decoder.issue_counts), list(decoder.issues), dict(decoder.counts),
            time.monotonic() - t0,
        ))
        summaries.extend(flows)
    summaries.sort(key=lambda f: f.key)
    flows_out = [
        FlowResult(i, community_id(f.client.ip, f.client.port, f.server.ip, f.server.port), f)
        for i, f in enumerate(summaries)
    ]
    records: list[ForwardingRecord] = []
    for f in flows_out:
        s = f.summary
        if s.events:
            records.extend(build_records(f.id, s.capture, s.protocol, s.client, s.server, s.events))
    ctx = RuleContext(records, flows_out, settings, excerpt_len=settings.excerpt_len)
    findings = run_rules(ctx)
    return AnalysisResult(captures, flows_out, records, findings, list(ctx.chains), settings)
