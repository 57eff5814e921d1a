"""The event spool (analyzer/flows/spool.py): closed flows' events on disk past a budget.

The contract: a spooled flow's events read back equal, in order, however they are read;
pickling gives a plain list; a disk that refuses writes leaves the events in memory; and
a whole analysis spooling from the first flow gives byte-identical reports.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from analyzer.config import Limits, Settings
from analyzer.flows.spool import CACHE_FLOWS, EventSpool, SpooledEvents
from analyzer.model import Direction, Span
from analyzer.pipeline import analyze
from analyzer.protocols.base import Command, LocatedEvent, Reply
from analyzer.report import FORMATS, render_reports

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class _Summary:
    events: Any = field(default_factory=list)


def _events(n: int, base: int = 0) -> list[LocatedEvent]:
    out = []
    for i in range(n):
        span = Span(Direction.TO_SERVER, base + i * 10, base + i * 10 + 10)
        ev = Command(span, i, "A1", "XCLIENT", b"ADDR=192.0.2.%d" % i, 10) if i % 2 == 0 else \
            Reply(span, i - 1, None, "250", "ok \udcff", True)
        out.append(LocatedEvent(ev, (base + i + 1,), 1_700_000_000_000_000_000 + i))
    return out


def test_within_budget_stays_in_memory() -> None:
    spool = EventSpool(budget=10)
    s = _Summary(_events(10))
    spool.admit(s)
    assert type(s.events) is list and spool.held == 10 and spool.spooled_flows == 0


def test_past_budget_goes_to_disk_and_reads_back_equal() -> None:
    spool = EventSpool(budget=5)
    first, second = _Summary(_events(5)), _Summary(_events(7, base=100))
    want = list(second.events)
    spool.admit(first)
    spool.admit(second)
    assert type(first.events) is list
    ev = second.events
    assert isinstance(ev, SpooledEvents)
    assert spool.spooled_flows == 1 and spool.spooled_events == 7 and spool.bytes > 0
    assert len(ev) == 7 and bool(ev)
    assert list(ev) == want and ev == want and ev[3] == want[3] and ev[-1] == want[-1] and ev[2:5] == want[2:5]
    assert list(reversed(ev)) == want[::-1]
    assert [type(le.event) for le in ev] == [type(le.event) for le in want]  # the exact classes come back
    assert pickle.loads(pickle.dumps(ev)) == want and type(pickle.loads(pickle.dumps(ev))) is list


def test_empty_and_already_spooled_flows_are_left_alone() -> None:
    spool = EventSpool(budget=0)
    empty = _Summary(())
    spool.admit(empty)
    assert empty.events == () and spool.spooled_flows == 0
    s = _Summary(_events(3))
    spool.admit(s)
    spooled = s.events
    spool.admit(s)  # a second admit of the same flow writes nothing more
    assert s.events is spooled and spool.spooled_flows == 1


def test_many_flows_read_in_any_order_with_a_bounded_cache() -> None:
    spool = EventSpool(budget=0)
    flows = [_Summary(_events(1 + i % 5, base=i * 1000)) for i in range(50)]
    wants = [list(f.events) for f in flows]
    for f in flows:
        spool.admit(f)
    order = list(range(50))[::-1] + list(range(0, 50, 3))
    for i in order:
        assert list(flows[i].events) == wants[i]
        assert len(spool._cache) <= CACHE_FLOWS


def test_a_disk_that_refuses_writes_keeps_events_in_memory(tmp_path: Path) -> None:
    spool = EventSpool(budget=0, directory=str(tmp_path / "does-not-exist"))
    s = _Summary(_events(4))
    spool.admit(s)
    assert type(s.events) is list and spool.spooled_flows == 0 and spool.held == 4
    t = _Summary(_events(2))
    spool.admit(t)  # broken: no further attempt
    assert type(t.events) is list and spool.held == 6


def _reports(paths: list[str], limits: Limits) -> dict[str, str]:
    result = analyze(paths, replace(Settings(), limits=limits))
    return render_reports(result, FORMATS)


@pytest.mark.parametrize("budget", [0, 7])
def test_reports_identical_when_spooling(budget: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every project capture at once (the real-server ones included), spooling from the first flow or soon after."""
    paths = sorted(str(p) for p in (ROOT / "captures").rglob("*.pcap*"))
    assert len(paths) > 20
    plain = _reports(paths, Limits())
    put = EventSpool._put
    written: list[int] = []

    def counting_put(self: EventSpool, events: Any) -> SpooledEvents | None:
        out = put(self, events)
        written.append(len(events) if out is not None else 0)
        return out

    monkeypatch.setattr(EventSpool, "_put", counting_put)
    spooled = _reports(paths, Limits(events_in_memory=budget))
    assert sum(written) > 500 and all(written), written  # most flows really went through the file
    assert plain.keys() == spooled.keys()
    for name in plain:
        assert plain[name] == spooled[name], name


def test_the_captures_of_a_run_share_one_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two captures read in one process: the second's ended flows spool once the first filled the budget."""
    from analyzer.pipeline import analyze_capture, run_spool

    path = str(ROOT / "captures" / "sample.pcapng")
    alone = EventSpool(budget=10**9)
    analyze_capture(path, 0, Settings(), spool=alone)
    assert alone.held > 0  # flows that end during the capture
    written: list[int] = []
    put = EventSpool._put

    def counting_put(self: EventSpool, events: Any) -> SpooledEvents | None:
        out = put(self, events)
        written.append(len(events))
        return out

    monkeypatch.setattr(EventSpool, "_put", counting_put)
    settings = replace(Settings(), limits=Limits(events_in_memory=alone.held))
    spool = run_spool(settings)
    analyze_capture(path, 0, settings, spool=spool)
    assert written == [] and spool.held == alone.held  # the first capture fills the budget exactly
    analyze_capture(path, 1, settings, spool=spool)
    assert sum(written) == alone.held and spool.held == alone.held  # the second one's go to the file
    assert _reports([path, path], Limits(events_in_memory=alone.held)) == _reports([path, path], Limits())
