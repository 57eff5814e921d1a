"""Reports: build the data once (``jsonout.report_data``), render it per format.

Formats and the files they write (into the output directory):

========  =============================================
``html``  ``report.html`` (one self-contained page)
``json``  ``report.json`` (``format_version``; schema in ``schema.json``)
``jsonl`` ``report.jsonl`` (one finding/record per line, EVE style)
``csv``   ``findings.csv``, ``records.csv``, ``flows.csv``
========  =============================================

Each file is written to a temporary name first and then renamed, so a reader never sees
half a report.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

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


def _pieces(result: AnalysisResult, formats: tuple[str, ...], generated_at: str | None) -> Iterator[tuple[str, Iterable[str]]]:
    """(file name, text pieces) per output file, rendered one format at a time from one report document."""
    from analyzer.report.jsonout import iter_json, report_data

    doc = report_data(result, generated_at=generated_at)
    frames: Any = None
    if "csv" in formats or "html" in formats:
        from analyzer.report.data import build_frames

        frames = build_frames(doc)
    for fmt in formats:
        if fmt == "json":
            yield "report.json", iter_json(doc)
        elif fmt == "jsonl":
            from analyzer.report.jsonl import iter_jsonl

            yield "report.jsonl", iter_jsonl(doc)
        elif fmt == "csv":
            from analyzer.report.csvout import render_csv

            for name, text in render_csv(frames).items():
                yield name, (text,)
        else:
            from analyzer.report.html import render_html

            yield "report.html", (render_html(doc, frames=frames),)


def render_reports(result: AnalysisResult, formats: tuple[str, ...] = DEFAULT_FORMATS, *,
                   generated_at: str | None = None) -> dict[str, str]:
    """``{file name: text}`` for the requested formats, all built from one report document."""
    _check_formats(formats)
    return {name: "".join(pieces) for name, pieces in _pieces(result, formats, generated_at)}


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
    written = []
    for name, pieces in _pieces(result, formats, generated_at):
        target = out / name
        try:
            # a fresh temporary file of our own (O_EXCL: never a file or symlink planted in -o), then
            # renamed over the target: readers never see half a report, links are never followed
            fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out)
            try:
                with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
                    for piece in pieces:
                        fh.write(piece)
                os.chmod(tmp_name, 0o644)
                os.replace(tmp_name, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp_name)
                raise
        except OSError as exc:
            raise ConfigError(f"cannot write {target}: {exc.strerror}") from exc
        written.append(target)
    return written
