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
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

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

__all__ = ["DEFAULT_FORMATS", "FILES_OF", "FORMATS", "output_files", "parse_formats", "render_reports",
           "write_reports"]


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


def _render(result: AnalysisResult, formats: tuple[str, ...], generated_at: str | None,
            opener: Callable[[str], Callable[[str], object]]) -> None:
    """Render the formats; ``opener(file name)`` gives the write function of each output file."""
    from analyzer.report.jsonout import JsonSink, Sink, feed, report_doc

    doc = report_doc(result, generated_at=generated_at)
    sinks: list[Sink] = []
    dg = None
    if "csv" in formats or "html" in formats:
        from analyzer.report.data import digest

        dg = digest(doc)
    for fmt in formats:
        if fmt == "json":
            sinks.append(JsonSink(doc, opener("report.json")))
        elif fmt == "csv":
            from analyzer.report.csvout import CSV_FILES, CsvSink

            sinks.append(CsvSink(doc, {name: opener(name) for name, _ in CSV_FILES}, dg))
        elif fmt == "html":
            from analyzer.report.html import HtmlSink

            sinks.append(HtmlSink(doc, opener("report.html"), dg=dg))
    if sinks:
        feed(doc, sinks)
    if "jsonl" in formats:
        from analyzer.report.jsonl import iter_jsonl

        write = opener("report.jsonl")
        for line in iter_jsonl(doc):
            write(line)


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
                  *, force: bool = False, generated_at: str | None = None) -> list[Path]:
    """Write the requested formats into ``out_dir``; refuse to overwrite unless ``force``.

    ``generated_at`` (an RFC 3339 time, given only with ``--timestamp``) is recorded in the
    reports; without it the output is byte-for-byte reproducible. Files are streamed to disk
    as they are rendered (report.json of a large capture is never held as one string).
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
