"""``findings.csv``, ``records.csv``, ``flows.csv``: the report's tables for spreadsheets.

Strategy: the three files are the DataFrames of :func:`analyzer.report.data.build_frames`
written with pandas, after every text cell went through :func:`safe_cell`:

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
from typing import TYPE_CHECKING

from analyzer.report.data import ReportFrames, visible

if TYPE_CHECKING:
    import pandas as pd  # type: ignore[import-untyped, unused-ignore]

#: the files this format writes, and the table of :class:`ReportFrames` each one holds
CSV_FILES = (("findings.csv", "findings"), ("records.csv", "records"), ("flows.csv", "flows"))

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


def _safe_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Every text cell through :func:`safe_cell` (a list comprehension per column: far faster than ``df.map``)."""
    return df.assign(**{
        col: [safe_cell(v) if type(v) is str else v for v in df[col].tolist()] for col in df.columns
    })


def render_csv(frames: ReportFrames) -> dict[str, str]:
    """``{file name: CSV text}`` for the three tables (header row first, LF line ends, every cell quoted)."""
    out: dict[str, str] = {}
    for name, attr in CSV_FILES:
        df: pd.DataFrame = getattr(frames, attr)
        out[name] = _safe_frame(df).to_csv(index=False, quoting=csv.QUOTE_ALL, lineterminator="\n")
    return out
