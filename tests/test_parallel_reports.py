"""write_reports(jobs > 1): the report files written by forked processes are the one-process files, byte for byte.

A failing child surfaces as the error the one-process path raises (same type, same message), its
traceback as the cause; no child outlives write_reports, no temporary file is left behind.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import analyzer.report as report_mod
from analyzer.cli import main
from analyzer.config import Settings
from analyzer.errors import ConfigError
from analyzer.pipeline import AnalysisResult, analyze
from analyzer.report import FORMATS, ChildTraceback, can_fork, output_files, write_reports

ROOT = Path(__file__).resolve().parents[1]
CAPTURES = sorted(p for p in (ROOT / "captures").iterdir() if p.suffix in (".pcap", ".pcapng"))
ALL_FILES = output_files(FORMATS)

pytestmark = pytest.mark.skipif(not can_fork(), reason="needs fork and a single-threaded test process")

#: groupings to force: every file in its own process; the model's two groups on a mail capture; two mixed ones
GROUPINGS = {
    "each": [[name] for name in ALL_FILES],
    "json+html|csv+jsonl": [["report.json", "report.html"],
                            ["findings.csv", "records.csv", "flows.csv", "report.jsonl"]],
    "mixed": [["records.csv", "report.jsonl"], ["report.html", "findings.csv"], ["report.json", "flows.csv"]],
}


@pytest.fixture(scope="module")
def results() -> dict[str, AnalysisResult]:
    return {p.name: analyze([str(p)], Settings()) for p in CAPTURES}


def _force(monkeypatch: pytest.MonkeyPatch, groups: list[list[str]]) -> None:
    def tasks(result: AnalysisResult, formats: tuple[str, ...], jobs: int) -> list[frozenset[str]]:
        names = set(output_files(formats))
        chosen = [frozenset(g) & names for g in groups]
        return [g for g in chosen if g]

    monkeypatch.setattr(report_mod, "_parallel_tasks", tasks)


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _no_leftovers(out: Path) -> None:
    assert multiprocessing.active_children() == []
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")] if out.exists() else True


@pytest.mark.parametrize("grouping", sorted(GROUPINGS))
def test_parallel_files_are_the_sequential_files(grouping: str, results: dict[str, AnalysisResult], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for name, res in results.items():
        seq, par = tmp_path / name / "seq", tmp_path / name / "par"
        write_reports(res, str(seq), FORMATS, jobs=1)
        with monkeypatch.context() as m:
            _force(m, GROUPINGS[grouping])
            written = write_reports(res, str(par), FORMATS, jobs=2)
        assert [p.name for p in written] == ALL_FILES
        assert _files(par) == _files(seq), name
        assert sorted(_files(par)) == sorted(ALL_FILES)  # no temporary file left
        assert all(p.stat().st_mode & 0o777 == 0o644 for p in par.iterdir())
    assert multiprocessing.active_children() == []


def test_parallel_subsets_of_formats_and_timestamp(results: dict[str, AnalysisResult], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    res = results["xss.pcapng"]
    stamp = "2024-05-06T07:08:09.000000000Z"
    for formats in (("csv",), ("json", "html"), ("jsonl", "csv"), FORMATS):
        tag = "-".join(formats)
        write_reports(res, str(tmp_path / tag / "seq"), formats, generated_at=stamp)
        with monkeypatch.context() as m:
            _force(m, GROUPINGS["each"])
            write_reports(res, str(tmp_path / tag / "par"), formats, generated_at=stamp, jobs=4)
        assert _files(tmp_path / tag / "par") == _files(tmp_path / tag / "seq"), formats


def test_the_real_chooser_on_a_large_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            results: dict[str, AnalysisResult]) -> None:
    # the sample capture made to look large: the chooser picks processes, the bytes stay the same
    monkeypatch.setattr(report_mod, "PARALLEL_MIN_ITEMS", 0)
    monkeypatch.setattr(report_mod, "FORK_S", 0.0)
    # threads an earlier test left behind (Dask's) would make the chooser stay in one process; the forced-grouping
    # tests above fork with them too
    monkeypatch.setattr(report_mod, "can_fork", lambda: True)
    ran: list[int] = []
    real_run = report_mod._run_tasks
    monkeypatch.setattr(report_mod, "_run_tasks", lambda tasks, out: (ran.append(len(tasks)), real_run(tasks, out)))
    res = results["sample.pcapng"]
    write_reports(res, str(tmp_path / "seq"), FORMATS)
    write_reports(res, str(tmp_path / "par"), FORMATS, jobs=2)
    assert ran == [2]
    assert _files(tmp_path / "par") == _files(tmp_path / "seq")


def test_chooser_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_mod, "can_fork", lambda: True)  # the grouping, not this process's threads
    def sized(flows: int, records: int, findings: int) -> AnalysisResult:
        return SimpleNamespace(flows=[None] * flows, records=[None] * records, findings=[None] * findings,
                               chains=[])  # type: ignore[return-value]

    big, small = sized(20_000, 23_000, 52_000), sized(2_000, 2_300, 5_200)
    assert report_mod._parallel_tasks(big, FORMATS, 1) == []
    assert report_mod._parallel_tasks(small, FORMATS, 2) == []
    assert report_mod._parallel_tasks(big, ("json",), 8) == []  # one file: nothing to share out
    for jobs in (2, 3, 4, 16):
        for formats in (FORMATS, ("html", "json", "csv"), ("json", "csv"), ("csv",)):
            groups = report_mod._parallel_tasks(big, formats, jobs)
            assert 2 <= len(groups) <= jobs
            names = [n for g in groups for n in g]
            assert sorted(names) == sorted(output_files(formats))  # every file exactly once
            assert groups == report_mod._parallel_tasks(big, formats, jobs)  # deterministic


def _in_child() -> bool:
    return multiprocessing.parent_process() is not None


@pytest.mark.parametrize("where", ["child", "parent"])
def test_write_error_is_the_sequential_error(where: str, results: dict[str, AnalysisResult], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from analyzer.report import csvout

    real_item = csvout.CsvSink.item
    fail_in = ["any"]

    def full_disk(self: csvout.CsvSink, section: str, index: int, item: dict[str, object]) -> None:
        if fail_in[0] == "any" or (fail_in[0] == "child") == _in_child():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_item(self, section, index, item)

    monkeypatch.setattr(csvout.CsvSink, "item", full_disk)
    res = results["sample.pcapng"]
    with pytest.raises(ConfigError) as seq_err:
        write_reports(res, str(tmp_path / "seq"), FORMATS)
    fail_in[0] = where
    groups = [["report.json"], ["findings.csv", "records.csv", "flows.csv"]]  # the first group is written here
    _force(monkeypatch, groups if where == "child" else groups[::-1])
    with pytest.raises(ConfigError) as par_err:
        write_reports(res, str(tmp_path / "par"), FORMATS, jobs=2)
    assert str(par_err.value) == str(seq_err.value).replace(str(tmp_path / "seq"), str(tmp_path / "par"))
    assert "No space left on device" in str(par_err.value)
    _no_leftovers(tmp_path / "par")
    assert not (tmp_path / "par" / "report.json").exists()  # nothing renamed: no half report


def test_bug_in_a_child_is_raised_again_with_its_traceback(results: dict[str, AnalysisResult], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from analyzer.report import html

    def broken(self: object) -> None:
        raise ValueError("broken view")

    monkeypatch.setattr(html.HtmlSink, "finish", broken)
    res = results["sample.pcapng"]
    with pytest.raises(ValueError, match="broken view"):
        write_reports(res, str(tmp_path / "seq"), FORMATS)
    _force(monkeypatch, [["report.json"], ["report.html"], ["findings.csv", "records.csv", "flows.csv"]])
    with pytest.raises(ValueError, match="broken view") as err:
        write_reports(res, str(tmp_path / "par"), FORMATS, jobs=3)
    assert isinstance(err.value.__cause__, ChildTraceback) and "broken" in str(err.value.__cause__)
    _no_leftovers(tmp_path / "par")


def test_child_that_dies_is_an_error(results: dict[str, AnalysisResult], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from analyzer.report import jsonl

    def die(doc: object) -> object:
        os.kill(os.getpid(), signal.SIGKILL)
        return iter(())

    monkeypatch.setattr(jsonl, "iter_jsonl", die)
    _force(monkeypatch, [["report.json"], ["report.jsonl"]])
    with pytest.raises(ConfigError, match="ended unexpectedly"):
        write_reports(results["sample.pcapng"], str(tmp_path), ("json", "jsonl"), jobs=2)
    _no_leftovers(tmp_path)


def test_interrupt_ends_the_children(results: dict[str, AnalysisResult], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from analyzer.report import csvout

    def slow_or_interrupted(self: object, *args: object) -> None:
        if _in_child():
            time.sleep(60)
        raise KeyboardInterrupt

    monkeypatch.setattr(csvout.CsvSink, "item", slow_or_interrupted)
    _force(monkeypatch, [["findings.csv"], ["records.csv"], ["flows.csv"]])
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        write_reports(results["sample.pcapng"], str(tmp_path), ("csv",), jobs=3)
    assert time.monotonic() - t0 < 30
    _no_leftovers(tmp_path)


def test_cli_jobs_gives_the_same_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sample = str(ROOT / "captures" / "sample.pcapng")
    assert main(["analyze", sample, "-o", str(tmp_path / "j1"), "--jobs", "1", "--format", "html,json,jsonl,csv",
                 "-q"]) == 0
    seen: list[int] = []
    real = report_mod._parallel_tasks
    monkeypatch.setattr(report_mod, "PARALLEL_MIN_ITEMS", 0)
    monkeypatch.setattr(report_mod, "FORK_S", 0.0)
    # threads an earlier test left behind (Dask's) would make the chooser stay in one process; the forced-grouping
    # tests above fork with them too
    monkeypatch.setattr(report_mod, "can_fork", lambda: True)
    monkeypatch.setattr(report_mod, "_parallel_tasks", lambda r, f, j: (seen.append(j), real(r, f, j))[1])
    assert main(["analyze", sample, "-o", str(tmp_path / "j0"), "--jobs", "0", "--format", "html,json,jsonl,csv",
                 "-q"]) == 0
    from analyzer.parallel import usable_cores

    assert seen == [usable_cores()]
    assert _files(tmp_path / "j0") == _files(tmp_path / "j1")
