"""``findings.csv``, ``records.csv``, ``flows.csv``: the report's tables for spreadsheets.

Strategy: :class:`CsvSink` writes the three files as the report's items stream past (one
row per item, :func:`analyzer.report.data.finding_row` and its siblings; stdlib ``csv``: pandas
cost an import of ~0.5 s and a DataFrame of every row, for nothing a writer needs), after
every text cell went through :func:`safe_cell`:

- CSV (formula) injection, following OWASP's "CSV Injection" guidance (and ASVS 1.2.10): a
  cell whose first character (after leading spaces) is ``=``, ``+``, ``-``, ``@``, tab, CR, LF
  or NUL (or their full-width forms, which some spreadsheets fold to ASCII) is prefixed with
  ``'`` so the spreadsheet shows it as text. Every cell is wrapped in double quotes and
  embedded quotes are doubled (RFC 4180), so a separator inside a cell (``a,=cmd``,
  ``a;=cmd``) can never start a new cell, whatever separator the reader assumes.
- Invisible characters: control characters, bidi overrides (U+202E ...) and bytes that were
  not UTF-8 are shown as escapes (``\\x00``, ``\\u202e``), as in the HTML page, so a cell
  cannot hide or reorder its own text. ``report.json`` keeps the exact values.

Numbers and booleans are ours, not the peer's, and are written as they are.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping
from typing import Any

from analyzer.report.data import (FINDING_COLUMNS, FLOW_COLUMNS, RECORD_COLUMNS, Digest, digest, finding_row,
                                  flow_row, record_row, visible)
from analyzer.report.jsonout import BIG_ARRAYS

#: the files this format writes, and the section of report.json each one holds
CSV_FILES = (("findings.csv", "findings"), ("records.csv", "records"), ("flows.csv", "flows"))
#: the header of each file
COLUMNS_OF = {"findings": FINDING_COLUMNS, "records": RECORD_COLUMNS, "flows": FLOW_COLUMNS}

#: first characters that make a spreadsheet evaluate a cell (OWASP CSV Injection; ASVS 1.2.10 adds NUL)
FORMULA_TRIGGERS = frozenset("=+-@\t\r\n\x00\uff1d\uff0b\uff0d\uff20")


def safe_cell(value: str) -> str:
    """A text cell a spreadsheet shows as text: invisible characters escaped, formula triggers neutralized."""
    if value.isprintable() and value.lstrip(" \u00a0")[:1] not in FORMULA_TRIGGERS:
        return value  # the common case: nothing to escape or neutralize
    shown = visible(value)
    for text in (value, shown):  # the escaped form and the original: either may start like a formula
        head = text.lstrip(" \u00a0")
        if head and head[0] in FORMULA_TRIGGERS:
            return "'" + shown
    return shown


def _safe_row(row: tuple[Any, ...]) -> list[Any]:
    """Every text cell through :func:`safe_cell`; None as an empty cell, other values as they are."""
    return [v if type(v) is not str else safe_cell(v) if v[:1] in _CHECK_FIRST or not v.isprintable() else v
            for v in (("" if v is None else v) for v in row)]


#: first characters that need :func:`safe_cell`'s full check (formula triggers, or spaces that may hide one)
_CHECK_FIRST = FORMULA_TRIGGERS | {" ", "\u00a0"}


class CsvSink:
    """Writes the three CSV files as the report's items are fed (header row first, LF line ends, every cell
    quoted)."""

    def __init__(self, doc: Mapping[str, Any], writers: Mapping[str, Callable[[str], object]],
                 dg: Digest | None = None) -> None:
        """``writers``: a write function per file name of :data:`CSV_FILES`."""
        self.doc = doc
        self.digest = dg if dg is not None else digest(doc)
        self.captures = doc["captures"]
        self.out = {section: csv.writer(_Writer(writers[name]), quoting=csv.QUOTE_ALL, lineterminator="\n")
                    for name, section in CSV_FILES}
        for section, w in self.out.items():
            w.writerow(COLUMNS_OF[section])

    def begin(self, section: str) -> None:
        """Nothing to prepare (the header was written at the start)."""

    def item(self, section: str, index: int, item: dict[str, Any]) -> None:
        """One row of ``section``'s file (chains have no CSV file)."""
        if section == "findings":
            self.out[section].writerow(_safe_row(finding_row(index, item)))
        elif section == "records":
            self.out[section].writerow(_safe_row(record_row(index, item)))
        elif section == "flows":
            self.out[section].writerow(_safe_row(flow_row(item, self.digest, self.captures)))

    def end(self, section: str) -> None:
        """Nothing to close."""

    def finish(self) -> None:
        """Nothing to close."""


class _Writer:
    """A file-like ``write`` for :func:`csv.writer`."""

    __slots__ = ("write",)

    def __init__(self, write: Callable[[str], object]) -> None:
        self.write = write


def render_csv(doc: Mapping[str, Any]) -> dict[str, str]:
    """``{file name: CSV text}`` for the three tables of a report document."""
    bufs = {name: io.StringIO() for name, _ in CSV_FILES}
    sink = CsvSink(doc, {name: b.write for name, b in bufs.items()})
    for section in BIG_ARRAYS:
        for i, item in enumerate(doc[section]):
            sink.item(section, i, item)
    return {name: b.getvalue() for name, b in bufs.items()}
