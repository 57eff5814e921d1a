"""The only module that knows the order of the stages.

captures -> packets -> (decode, flow table, reassembly, parsers) -> flows with
located events -> records -> findings -> ``AnalysisResult``. Reports are written
by :mod:`analyzer.report` from the result.

The per-capture stages (:func:`analyze_capture`) may run in other processes or on
other machines (:mod:`analyzer.parallel`, :mod:`analyzer.dask_engine`); the
cross-flow stages (:func:`finish`: flow ids, records, rules and hop chains) always
run once, here, over the flows of every capture.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from analyzer.capture import CaptureInfo, open_capture
from analyzer.capture.decode import Decoder
from analyzer.config import Settings
from analyzer.errors import CaptureFormatError, ConfigError
from analyzer.flows.model import FlowResult, FlowSummary
from analyzer.flows.spool import EventSpool
from analyzer.flows.table import CaptureStats, Engine
from analyzer.forwarding.extract import build_records
from analyzer.forwarding.model import ForwardingRecord
from analyzer.rules import RuleContext, RuleRun
from analyzer.rules.base import Finding


#: values of ``analyze(engine=...)``
ENGINES = ("local", "dask")
#: cyclic-GC generation-0 threshold while analyzing (ours: the default 700 makes the collector walk
#: the growing graph of events again and again; measured 15-25% of the run time, see docs/dask.md)
GC_THRESHOLD0 = 100_000


@contextlib.contextmanager
def gc_tuned() -> Iterator[None]:
    """Collect cyclic garbage less often while the analysis builds its (acyclic, long-lived) results."""
    old = gc.get_threshold()
    gc.set_threshold(max(old[0], GC_THRESHOLD0), old[1], old[2])
    try:
        yield
    finally:
        gc.set_threshold(*old)


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


def unusable_reason(path: str, info: CaptureInfo, issue_counts: dict[str, int]) -> str | None:
    """Why a readable capture is still unusable (no packet of a supported link type), or None."""
    unsupported = issue_counts.get("unsupported_linktype", 0)
    if info.packets > 0 and unsupported == info.packets:
        kinds = ", ".join(str(k) for k in sorted(info.linktypes))
        return f"{path}: no packet has a supported link type (link types {kinds})"
    return None


def run_spool(settings: Settings) -> EventSpool:
    """The event spool the captures read in one process share (one budget for the whole run)."""
    return EventSpool(settings.limits.events_in_memory)


def analyze_capture(path: str, index: int, settings: Settings, *, progress: bool = False,
                    keep_streams: bool = False, spool: EventSpool | None = None,
                    ) -> tuple[CaptureResult, list[FlowSummary]]:
    """Read one capture file in this process: its capture result and its flows in first-frame order.

    ``spool``: where ended flows' events go past the budget; give the captures of one run the same
    one (:func:`run_spool`), so the budget holds for the run, not for each file.
    """
    t0 = time.monotonic()
    try:
        cap = open_capture(path)
    except CaptureFormatError as exc:
        return CaptureResult(path, None, str(exc), None), []
    with cap:
        decoder = Decoder()
        show = _progress_line(lambda: cap.info, path) if progress else None
        engine = Engine(settings, keep_streams=keep_streams, progress=show, spool=spool)
        flows, stats = engine.run(cap.packets(), index, decoder)
        if show is not None:
            show(stats.packets)
            sys.stderr.write("\n")
        info = cap.info
    error = unusable_reason(path, info, decoder.issue_counts)
    result = CaptureResult(
        path, info, error, stats, dict(decoder.issue_counts), list(decoder.issues), dict(decoder.counts),
        time.monotonic() - t0,
    )
    return result, flows


def analyze(paths: list[str], settings: Settings, *, progress: bool = False,
            keep_streams: bool = False, jobs: int = 1, engine: str = "local",
            scheduler: str | None = None, keep_events: bool = False) -> AnalysisResult:
    """Run every stage over the given capture files, in order.

    ``jobs`` > 1 reads files, and ranges of large pcap files, in that many processes
    (:mod:`analyzer.parallel`; below 1: one per usable core); ``engine="dask"`` runs the same
    work on the Dask cluster at ``scheduler`` (:mod:`analyzer.dask_engine`). Both give the
    same result as ``jobs=1``. The flows' dissected events are dropped once their rules ran
    (``summary.events == ()``: the reports never read them) unless ``keep_events`` or
    ``keep_streams`` is given.
    """
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r} (choose from {', '.join(ENGINES)})")
    with gc_tuned():
        return _analyze(paths, settings, progress, keep_streams, jobs, engine, scheduler,
                        keep_events or keep_streams)


def _analyze(paths: list[str], settings: Settings, progress: bool, keep_streams: bool, jobs: int, engine: str,
             scheduler: str | None, keep_events: bool) -> AnalysisResult:
    if engine == "dask":
        from analyzer.dask_engine import analyze_dask

        parts = analyze_dask(paths, settings, scheduler=scheduler, jobs=jobs, progress=progress,
                             keep_streams=keep_streams)
    elif scheduler is not None:
        raise ConfigError("a scheduler address is only used with the dask engine")
    else:
        from analyzer.parallel import analyze_files, usable_cores

        n = jobs if jobs >= 1 else usable_cores()
        if n == 1:
            spool = run_spool(settings)
            parts = [analyze_capture(p, i, settings, progress=progress, keep_streams=keep_streams, spool=spool)
                     for i, p in enumerate(paths)]
        else:
            parts = analyze_files(paths, settings, jobs=n, progress=progress, keep_streams=keep_streams)
    return finish(parts, settings, keep_events=keep_events)


def finish(parts: list[tuple[CaptureResult, list[FlowSummary]]], settings: Settings, *,
           keep_events: bool = False) -> AnalysisResult:
    """The cross-flow stages, once over every capture's flows: ids, records, rules (hop chains).

    One pass over the flows in id order, :data:`~analyzer.rules.RULE_BATCH_FLOWS` at a time:
    their records, their per-flow rules, then (unless ``keep_events``) their events are
    dropped; then the hop chains and the rules across flows (:class:`analyzer.rules.RuleRun`).
    So each flow's events are read once, and only a batch of flows holds them at a time.
    """
    gc.freeze()  # the flows live on: the collector need not walk them again and again
    try:
        return _finish(parts, settings, keep_events)
    finally:
        gc.unfreeze()


def _finish(parts: list[tuple[CaptureResult, list[FlowSummary]]], settings: Settings,
            keep_events: bool) -> AnalysisResult:
    captures = [c for c, _ in parts]
    summaries = [f for _, flows in parts for f in flows]
    summaries.sort(key=lambda f: f.key)
    flows_out = [
        FlowResult(i, None, f)  # the community id is computed when read (no ~80-byte string per flow)
        for i, f in enumerate(summaries)
    ]
    records: list[ForwardingRecord] = []
    ctx = RuleContext(records, flows_out, settings, excerpt_len=settings.excerpt_len)
    originals: dict[int, Any] = {}  # flow id -> the events it came with, until its batch's rules ran

    def groups() -> Iterator[tuple[FlowResult | None, list[ForwardingRecord]]]:
        for f in flows_out:
            s = f.summary
            events = s.events
            recs: list[ForwardingRecord] = []
            if events:
                originals[f.id] = events
                if type(events) is not list and type(events) is not tuple:
                    s.events = list(events)  # read once (events on disk load here) for the records and every rule
                recs = build_records(f.id, s.capture, s.protocol, s.client, s.server, s.events)
                records.extend(recs)
            yield f, recs

    def release(batch: list[tuple[FlowResult | None, list[ForwardingRecord]]]) -> None:
        for f, _recs in batch:
            if f is not None:
                kept = originals.pop(f.id, ())
                f.summary.events = kept if keep_events else ()

    findings = RuleRun(ctx).over(groups(), release)
    return AnalysisResult(captures, flows_out, records, findings, list(ctx.chains), settings)
