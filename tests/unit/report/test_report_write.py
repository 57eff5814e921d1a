"""write_reports: formats, file names, overwrite protection, atomic writes, reproducible bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
from reportkit import analyzed, validate

from analyzer.errors import ConfigError
from analyzer.report import DEFAULT_FORMATS, FORMATS, output_files, parse_formats, render_reports, write_reports


def test_formats_and_file_names() -> None:
    assert FORMATS == ("html", "json", "jsonl", "csv") and DEFAULT_FORMATS == ("html", "json", "csv")
    assert output_files(DEFAULT_FORMATS) == ["report.html", "report.json", "findings.csv", "records.csv", "flows.csv"]
    assert output_files(("jsonl",)) == ["report.jsonl"]
    assert parse_formats(" HTML, json,html ,jsonl") == ("html", "json", "jsonl")
    for bad in ("pdf", "", " , ", "html,xml"):
        with pytest.raises(ConfigError):
            parse_formats(bad)


def test_write_all_formats(tmp_path: Path) -> None:
    res = analyzed("xss.pcapng")
    written = write_reports(res, str(tmp_path / "out"), FORMATS)
    names = sorted(p.name for p in written)
    assert names == sorted(output_files(FORMATS))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == names  # no temporary file left behind
    validate((tmp_path / "out" / "report.json").read_text("utf-8"))
    assert (tmp_path / "out" / "report.html").read_text("utf-8").startswith("<!DOCTYPE html>")


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    res = analyzed("sample.pcapng")
    write_reports(res, str(tmp_path), ("csv",))
    with pytest.raises(ConfigError, match="--force"):
        write_reports(res, str(tmp_path), ("json", "csv"))
    assert not (tmp_path / "report.json").exists()  # checked before anything was written
    write_reports(res, str(tmp_path), ("json", "csv"), force=True)


def test_reproducible_and_timestamp_only_when_given(tmp_path: Path) -> None:
    res = analyzed("sample.pcapng")
    a = render_reports(res, FORMATS)
    b = render_reports(res, FORMATS)
    assert a == b
    assert "generated_at" not in a["report.json"] and "generated" not in a["report.html"].split("</header>")[0]
    c = render_reports(res, ("json", "html"), generated_at="2024-05-06T07:08:09.000000000Z")
    assert '"generated_at": "2024-05-06T07:08:09.000000000Z"' in c["report.json"]
    assert "generated 2024-05-06T07:08:09.000000000Z" in c["report.html"]
    validate(c["report.json"])


def test_unwritable_directory_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot create output directory"):
        write_reports(analyzed("sample.pcapng"), str(blocker / "sub"), ("json",))
