"""findings.csv / records.csv / flows.csv: same data as report.json, formula injection neutralized."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reportkit import PAYLOADS, analyzed, hostile_result, record_finding, with_extras

from analyzer.protocols.base import wire_text
from analyzer.report.csvout import FORMULA_TRIGGERS, render_csv, safe_cell
from analyzer.report.data import FINDING_COLUMNS, FLOW_COLUMNS, RECORD_COLUMNS, visible
from analyzer.report.jsonout import report_data


def rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def dangerous(cell: str) -> bool:
    """Would a spreadsheet evaluate this cell (OWASP trigger as its first non-space character)?"""
    head = cell.lstrip(" \u00a0")
    return bool(head) and head[0] in FORMULA_TRIGGERS


@pytest.mark.parametrize("cell, expected", [
    ("=1+1", "'=1+1"),
    ("+1", "'+1"),
    ("-2+3", "'-2+3"),
    ("@SUM(1)", "'@SUM(1)"),
    ("\t=1", "'\\t=1"),
    ("\r=1", "'\\r=1"),
    ("  =1", "'  =1"),
    ("\uff1d1+1", "'\uff1d1+1"),
    ("a,=1", "a,=1"),  # a separator inside a cell cannot start a new cell: every cell is quoted
    ("ok", "ok"),
    ("", ""),
    ("x\u202ey", "x\\u202ey"),
    ("\x00=1", "'\\x00=1"),
])
def test_safe_cell(cell: str, expected: str) -> None:
    assert safe_cell(cell) == expected


def test_columns_and_counts_match_json() -> None:
    res = analyzed("sample.pcapng")
    res = with_extras(res, findings=[record_finding(res.records[0])])
    doc = report_data(res)
    out = render_csv(doc)
    f, r, w = (rows(out[n]) for n in ("findings.csv", "records.csv", "flows.csv"))
    assert f[0] == list(FINDING_COLUMNS) and r[0] == list(RECORD_COLUMNS) and w[0] == list(FLOW_COLUMNS)
    assert len(f) - 1 == len(doc["findings"]) and len(r) - 1 == len(doc["records"])
    assert len(w) - 1 == len(doc["flows"])
    flow_rows = {int(row[0]): dict(zip(w[0], row)) for row in w[1:]}
    first = flow_rows[res.records[0].flow]
    assert first["community_id"] == doc["flows"][res.records[0].flow]["community_id"]
    assert int(first["records"]) == 1 and int(first["findings"]) >= 1 and first["worst_severity"] == "high"
    rec = dict(zip(r[0], r[1]))
    assert rec["session_id"] == res.records[0].session_id and rec["frames"] == " ".join(map(str, res.records[0].frames))
    for text in out.values():
        assert all(line.startswith('"') for line in text.splitlines() if line)  # every cell quoted


def test_xss_capture_csv_is_neutralized() -> None:
    out = render_csv(report_data(analyzed("xss.pcapng")))
    seen = set()
    for name, text in out.items():
        table = rows(text)
        width = len(table[0])
        for row in table:
            assert len(row) == width, (name, row)  # no payload split or added a cell
            for cell in row:
                assert not dangerous(cell), (name, cell)
                assert "\u202e" not in cell and "\x00" not in cell
                seen.add(cell)
    assert any(c.startswith("'@cmd|") for c in seen)  # the POP3 SESSION payload, neutralized
    assert any(c.startswith("'-2+3") for c in seen)


@settings(max_examples=200, deadline=None)
@given(value=st.one_of(st.sampled_from(PAYLOADS), st.binary(max_size=40).map(wire_text), st.text(max_size=40)),
       raw=st.binary(max_size=64))
def test_any_bytes_give_safe_csv(value: str, raw: bytes) -> None:
    out = render_csv(report_data(hostile_result(value, raw, "tcp_in_order.pcapng")))
    for text in out.values():
        text.encode("utf-8")
        table = rows(text)
        assert all(len(row) == len(table[0]) for row in table)
        for row in table:
            for cell in row:
                assert not dangerous(cell)
                assert cell.isprintable()


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_safe_cell_total(value: str) -> None:
    out = safe_cell(value)
    assert not dangerous(out) and out.isprintable()
    assert out in (visible(value), "'" + visible(value))  # only escaped, at most one quote added
