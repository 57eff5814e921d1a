"""Reports: one document (``jsonout.report_doc``), rendered per format in one pass over its items.

Formats and the files they write (into the output directory):

========  =============================================
``html``  ``report.html`` (one self-contained page)
``json``  ``report.json`` (``format_version``; schema in ``schema.json``)
``jsonl`` ``report.jsonl`` (one finding/record per line, EVE style)
``csv``   ``findings.csv``, ``records.csv``, ``flows.csv``
========  =============================================

Each file is written to a temporary name first and then renamed, so a reader never sees
half a report.

Strategy: the document is lazy (:func:`analyzer.report.jsonout.report_doc`); its items are
built once, in one pass (:func:`analyzer.report.jsonout.feed`), and handed to every format's
sink at the same time: report.json and the CSV files are written item by item, the HTML page
keeps only the rows it lists. All files are open together; ``report.jsonl`` (capture-time
order) reads the items once more, in its own order. pandas is not imported.

With ``jobs`` > 1 (:func:`write_reports`; the CLI passes its resolved ``--jobs``) and a report large
enough (:data:`PARALLEL_MIN_ITEMS`), the files are written by up to ``jobs`` processes once the analysis
is complete. The files are split into groups by a cost model measured on this code (:data:`ITEM_US`,
:data:`WRITE_US`; a group builds the items its files read once, as one process does); the document and
the digest are built once, the temporary files are created, then one child per group but the first is
forked (``gc.freeze`` first: the children's collectors never walk the shared result) and this process
writes the first group. Each process writes only its own files, with the sinks above; the parent
renames them all as in one process, so the bytes are the same. A child's exception is raised again in
the parent (same type, same message; the child's traceback as its cause); on the first failure, or an
interrupt, the other children are killed. Without ``fork`` (not POSIX), in a daemonic process or when
other threads run (a Dask client), one process writes every file.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import signal
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from analyzer.errors import ConfigError
from analyzer.pipeline import AnalysisResult

FORMATS = ("html", "json", "jsonl", "csv")  #: formats this version writes
DEFAULT_FORMATS = ("html", "json", "csv")

#: output files of each format (fixed names: nothing derived from captures, so nothing can escape the directory)
FILES_OF: dict[str, tuple[str, ...]] = {
    "html": ("report.html",),
    "json": ("report.json",),
    "jsonl": ("report.jsonl",),
    "csv": ("findings.csv", "records.csv", "flows.csv"),
}

__all__ = ["DEFAULT_FORMATS", "FILES_OF", "FORMATS", "ChildTraceback", "can_fork", "output_files", "parse_formats",
           "render_reports", "write_reports"]


def parse_formats(text: str) -> tuple[str, ...]:
    """``"html, json"`` -> ``("html", "json")``: comma list, case-insensitive, duplicates dropped.

    Raises :class:`ConfigError` naming the first unknown format, or when the list is empty.
    """
    formats = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ConfigError(f"--format: unknown format {bad[0] if bad else ''!r} (choose from {', '.join(FORMATS)})")
    return formats


def output_files(formats: tuple[str, ...] | list[str]) -> list[str]:
    """File names the given formats write, in format order (for the CLI's overwrite check)."""
    names: list[str] = []
    for fmt in formats:
        for name in FILES_OF[fmt]:
            if name not in names:
                names.append(name)
    return names


def _check_formats(formats: tuple[str, ...]) -> None:
    unknown = [f for f in formats if f not in FILES_OF]
    if unknown:
        raise ConfigError(f"unknown report format {unknown[0]!r} (choose from {', '.join(FORMATS)})")


#: report items (flows + records + findings) below which one process writes every file (ours, measured with 2
#: cores, default formats: 95,800 items 5.2 s -> 3.4 s; 9,500 items 0.77 s -> 0.62 s; 2,400 items 0.27 s -> 0.22 s,
#: and slower than one process when another program keeps the second core busy)
PARALLEL_MIN_ITEMS = 10_000
#: sections of the report each file reads (its items are built in every process that writes one of those files)
SECTIONS_OF: dict[str, tuple[str, ...]] = {
    "report.json": ("flows", "records", "findings", "chains"),
    "report.html": ("flows", "records", "findings", "chains"),
    "report.jsonl": ("records", "findings"),
    "findings.csv": ("findings",),
    "records.csv": ("records",),
    "flows.csv": ("flows",),
}
#: microseconds to build one item of a section (ours: measured on a 20,000-flow mail capture, like the rest)
ITEM_US = {"flows": 4.4, "records": 17.4, "findings": 6.8, "chains": 10.0}
#: microseconds a file's writer spends on one item of each section it reads, the items' building not counted
WRITE_US: dict[str, dict[str, float]] = {
    "report.json": {"flows": 11.3, "records": 11.3, "findings": 11.3, "chains": 11.3},
    "report.html": {"flows": 4.8, "records": 4.8, "findings": 4.8, "chains": 4.8},
    "report.jsonl": {"records": 34.5, "findings": 34.5},
    "findings.csv": {"findings": 20.0},
    "records.csv": {"records": 20.0},
    "flows.csv": {"flows": 10.5},
}
#: microseconds per item read for a process other than the only one: copy-on-write page faults (refcounts)
SHARED_US = 2.0
#: seconds to start a child process
FORK_S = 0.02


def _discard(text: str) -> None:
    """The write function of a file another process writes."""


def _prepare(result: AnalysisResult, formats: tuple[str, ...],
             generated_at: str | None) -> tuple[dict[str, Any], Any]:
    """The report document and, when a format needs it, its digest (built once, for every format)."""
    from analyzer.report.jsonout import report_doc

    doc = report_doc(result, generated_at=generated_at)
    dg = None
    if "csv" in formats or "html" in formats:
        from analyzer.report.data import digest

        dg = digest(doc)
    return doc, dg


def _emit(doc: dict[str, Any], dg: Any, formats: tuple[str, ...], opener: Callable[[str], Callable[[str], object]],
          only: frozenset[str] | None = None) -> None:
    """Render the formats; ``opener(file name)`` gives the write function of each output file.

    With ``only`` (a parallel task), just those files: a format's sink is made only when it writes one of them,
    its other files go nowhere, and a sink that only writes CSV files is fed only those files' sections.
    """
    from analyzer.report.csvout import CSV_FILES
    from analyzer.report.jsonout import BIG_ARRAYS, JsonSink, Sink, feed

    def wanted(name: str) -> bool:
        return only is None or name in only

    sinks: list[Sink] = []
    reads: list[frozenset[str]] = []  # the sections each sink is fed (a parallel task's)
    for fmt in formats:
        if fmt == "json" and wanted("report.json"):
            sinks.append(JsonSink(doc, opener("report.json")))
            reads.append(frozenset(BIG_ARRAYS))
        elif fmt == "csv" and any(wanted(name) for name, _ in CSV_FILES):
            from analyzer.report.csvout import CsvSink

            sinks.append(CsvSink(doc, {name: opener(name) if wanted(name) else _discard for name, _ in CSV_FILES}, dg))
            reads.append(frozenset(section for name, section in CSV_FILES if wanted(name)))
        elif fmt == "html" and wanted("report.html"):
            from analyzer.report.html import HtmlSink

            sinks.append(HtmlSink(doc, opener("report.html"), dg=dg))
            reads.append(frozenset(BIG_ARRAYS))
    if sinks:  # a parallel task's sinks are given the items of the sections their files hold only
        feed(doc, sinks, None if only is None else reads)
    if "jsonl" in formats and wanted("report.jsonl"):
        from analyzer.report.jsonl import iter_jsonl

        write = opener("report.jsonl")
        for line in iter_jsonl(doc):
            write(line)


def _render(result: AnalysisResult, formats: tuple[str, ...], generated_at: str | None,
            opener: Callable[[str], Callable[[str], object]]) -> None:
    """Render the formats in this process; ``opener(file name)`` gives the write function of each output file."""
    doc, dg = _prepare(result, formats, generated_at)
    _emit(doc, dg, formats, opener)


def render_reports(result: AnalysisResult, formats: tuple[str, ...] = DEFAULT_FORMATS, *,
                   generated_at: str | None = None) -> dict[str, str]:
    """``{file name: text}`` for the requested formats, all built from one report document."""
    _check_formats(formats)
    parts: dict[str, list[str]] = {}

    def opener(name: str) -> Callable[[str], object]:
        return parts.setdefault(name, []).append

    _render(result, formats, generated_at, opener)
    return {name: "".join(parts[name]) for name in output_files(formats)}


def write_reports(result: AnalysisResult, out_dir: str, formats: tuple[str, ...] = DEFAULT_FORMATS,
                  *, force: bool = False, generated_at: str | None = None, jobs: int = 1) -> list[Path]:
    """Write the requested formats into ``out_dir``; refuse to overwrite unless ``force``.

    ``generated_at`` (an RFC 3339 time, given only with ``--timestamp``) is recorded in the
    reports; without it the output is byte-for-byte reproducible. Files are streamed to disk
    as they are rendered (report.json of a large capture is never held as one string).
    ``jobs`` > 1 may write the files in that many processes at a time (same bytes; see the module).
    """
    _check_formats(formats)
    out = Path(out_dir)
    names = output_files(formats)
    if not force:
        existing = [str(out / n) for n in names if (out / n).exists()]
        if existing:
            raise ConfigError(f"{existing[0]} exists; use --force to overwrite or -o to choose another directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create output directory {out}: {exc.strerror}") from exc
    temps: dict[str, tuple[str, TextIO]] = {}  # file name -> (temporary path, open file)

    def opener(name: str) -> Callable[[str], object]:
        # a fresh temporary file of our own (O_EXCL: never a file or symlink planted in -o), renamed over
        # the target once every file is complete: readers never see half a report, links are never followed
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out)
        except OSError as exc:
            raise ConfigError(f"cannot write {out / name}: {exc.strerror}") from exc
        fh = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
        temps[name] = (tmp_name, fh)
        return fh.write

    try:
        try:
            tasks = _parallel_tasks(result, formats, jobs)
            if tasks:
                doc, dg = _prepare(result, formats, generated_at)
                for name in names:  # every temporary file is made here, before the fork; the children write them
                    opener(name)
                _run_tasks([_Task(doc, dg, formats, temps, task) for task in tasks], out)
            else:
                _render(result, formats, generated_at, opener)
            for name, (tmp_name, fh) in temps.items():
                fh.close()
                os.chmod(tmp_name, 0o644)
            written = []
            for name in names:
                tmp_name, _fh = temps.pop(name)
                os.replace(tmp_name, out / name)
                written.append(out / name)
        except OSError as exc:
            raise ConfigError(f"cannot write the reports in {out}: {exc.strerror}") from exc
    finally:
        for tmp_name, fh in temps.values():
            with contextlib.suppress(OSError):
                fh.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
    return written


# ---------------------------------------------------------------------------------------------- parallel writers


def can_fork() -> bool:
    """Whether child processes may be forked here: POSIX ``fork``, and no other thread that a fork would copy
    in the middle of what it holds (a Dask client's threads, for instance)."""
    import multiprocessing

    return ("fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1
            and not multiprocessing.current_process().daemon)  # a daemonic process may not have children


def _set_partitions(items: list[str], most: int) -> Iterator[list[list[str]]]:
    """Every way to split ``items`` into at most ``most`` non-empty groups (each once, in a fixed order)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _set_partitions(rest, most):
        for k in range(len(part)):
            yield part[:k] + [[first, *part[k]]] + part[k + 1:]
        if len(part) < most:
            yield [[first], *part]


def _group_seconds(files: list[str] | tuple[str, ...], sizes: dict[str, int], shared: bool) -> float:
    """Estimated seconds for one process to write ``files`` (items read once for all of them)."""
    sections = {sec for name in files for sec in SECTIONS_OF[name]}
    us = sum(sizes[sec] * (ITEM_US[sec] + (SHARED_US if shared else 0.0)) for sec in sections)
    us += sum(sizes[sec] * per for name in files for sec, per in WRITE_US[name].items())
    return us / 1e6


def _parallel_tasks(result: AnalysisResult, formats: tuple[str, ...], jobs: int) -> list[frozenset[str]]:
    """The files each process writes (the first group: this one), or nothing when this process writes them all.

    Of every way to split the files into at most ``jobs`` groups, the one that ends first by the cost model
    above (:data:`ITEM_US` ...: a group builds the items its files read once; each extra process adds its
    start and its page copies), fewer groups on a tie; none when one process is estimated as fast.
    """
    sizes = {"flows": len(result.flows), "records": len(result.records), "findings": len(result.findings),
             "chains": len(result.chains)}
    names = output_files(formats)
    if jobs <= 1 or len(names) < 2 or sizes["flows"] + sizes["records"] + sizes["findings"] < PARALLEL_MIN_ITEMS:
        return []
    best, best_s = [names], _group_seconds(names, sizes, False)
    for groups in _set_partitions(names, jobs):
        if len(groups) > 1:
            seconds = max(_group_seconds(g, sizes, True) for g in groups) + FORK_S * (len(groups) - 1)
            if seconds < best_s - 1e-9 or (abs(seconds - best_s) <= 1e-9 and len(groups) < len(best)):
                best, best_s = groups, seconds
    if len(best) < 2 or not can_fork():
        return []
    best.sort(key=lambda g: -_group_seconds(g, sizes, True))  # the longest here, in the process that started first
    return [frozenset(g) for g in best]


class _Task:
    """One child's work: render the given files into the temporary files the parent opened."""

    def __init__(self, doc: dict[str, Any], dg: Any, formats: tuple[str, ...], temps: dict[str, tuple[str, TextIO]],
                 files: frozenset[str]) -> None:
        self.doc, self.dg, self.formats, self.temps, self.files = doc, dg, formats, temps, files

    def __call__(self) -> None:
        _emit(self.doc, self.dg, self.formats, lambda name: self.temps[name][1].write, self.files)
        for name in self.files:
            self.temps[name][1].flush()

    def __str__(self) -> str:
        return ", ".join(sorted(self.files))


class ChildTraceback(Exception):
    """The traceback of an exception raised in a writer process (the cause of the one raised again here)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


def _child_main(task: Callable[[], None], conn: Any) -> None:
    """In the child: run the task; send back nothing, or its exception (pickled) and traceback."""
    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C (the whole process group): just end, unless ignored
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, signal.SIG_DFL)
    message = b""
    try:
        task()
    except BaseException as exc:  # noqa: BLE001 - every failure goes to the parent, which raises it
        tb = "".join(traceback.format_exception(exc))
        try:
            message = pickle.dumps((exc, tb))
            pickle.loads(message)  # an exception whose __init__ takes other arguments would fail in the parent
        except Exception:  # noqa: BLE001 - an exception that does not pickle: its type and text
            message = pickle.dumps((RuntimeError(f"{type(exc).__name__}: {exc}"), tb))
    conn.send_bytes(message)
    conn.close()


def _run_tasks(tasks: list[_Task], out: Path) -> None:
    """The first task here, every other one in a forked child, all at the same time; raise the first failure."""
    import multiprocessing
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("fork")
    running: dict[Any, tuple[Any, _Task]] = {}  # reading end of its pipe -> (process, task)
    gc.freeze()  # the result lives on in every child: their collectors never walk it (nor copy its pages)
    try:
        for task in tasks[1:]:
            reader, writer = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child_main, args=(task, writer), name=f"fwdaudit-report-{task}", daemon=True)
            proc.start()
            writer.close()
            running[reader] = (proc, task)
        tasks[0]()
        while running:
            for reader in wait(list(running)):  # ready: a message, or EOF when a child died without one
                proc, task = running.pop(reader)
                try:
                    message: bytes | None = reader.recv_bytes()
                except EOFError:
                    message = None
                reader.close()
                proc.join()
                if message:
                    exc, tb = pickle.loads(message)
                    raise exc from ChildTraceback(tb)
                if message is None or proc.exitcode != 0:
                    if proc.exitcode == -signal.SIGINT:
                        raise KeyboardInterrupt
                    raise ConfigError(f"cannot write the reports in {out}: the process writing {task} ended "
                                      f"unexpectedly (exit status {proc.exitcode})")
    finally:
        for reader, (proc, _task) in running.items():
            proc.kill()
            proc.join()
            reader.close()
        gc.unfreeze()
