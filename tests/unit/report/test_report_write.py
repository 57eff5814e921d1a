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


def _report_peak(n: int, tmp_path: Path) -> tuple[int, int]:
    """(records, tracemalloc peak bytes of write_reports with the default formats) for n pipelined XCLIENTs."""
    import gc
    import tracemalloc
    from dataclasses import replace

    from analyzer.config import Settings
    from analyzer.pipeline import analyze
    from tests.hostile.generate import CASES, PROFILES, write_case

    path = write_case(CASES["pop3_xclient_100k"], tmp_path / f"case{n}", replace(PROFILES["ci"], xclient_repeats=n))
    res = analyze([str(path)], Settings())
    render_reports(analyzed("sample.pcapng"))  # templates compiled, modules imported: not per-record memory
    gc.collect()
    tracemalloc.start()
    try:
        write_reports(res, str(tmp_path / f"out{n}"), force=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return len(res.records), peak


def test_report_stage_memory_is_bounded_per_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The report stage streams: 4x the records add at most 512 bytes of peak memory per record (the items are
    built one at a time; only the page's rows, capped, and small per-item keys are kept). The page cap is
    lowered so that both sizes are past it."""
    from analyzer.report import data

    monkeypatch.setattr(data, "MAX_RECORD_ROWS", 100)
    small_n, small = _report_peak(500, tmp_path)
    big_n, big = _report_peak(2000, tmp_path)
    assert big_n - small_n >= 1500
    per_record = (big - small) / (big_n - small_n)
    assert per_record <= 512, f"{per_record:.0f} bytes of peak per record ({small} -> {big})"
    assert big <= 64 << 20, f"peak {big / 2**20:.1f} MiB"


def test_html_size_linear_in_id_pairs(tmp_path: Path) -> None:
    """A record's parameters are rendered once (records section), not under each finding: 4x the ID pairs
    give at most 5x the page."""
    from analyzer.config import Settings
    from analyzer.pipeline import analyze
    from tests.hostile.generate import imap_literal_pairs

    sizes = []
    for n in (50, 200):
        path = tmp_path / f"pairs{n}.pcap"
        path.write_bytes(b"".join(imap_literal_pairs(n)))
        sizes.append(len(render_reports(analyze([str(path)], Settings()), ("html",))["report.html"]))
    assert sizes[1] <= 5 * sizes[0], sizes
