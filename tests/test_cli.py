"""The command line: exit codes, one-line errors, outputs, overwrite protection."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from analyzer.cli import main, parse_ports
from analyzer.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "captures" / "sample.pcapng"


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "analyzer", *args], input=stdin, capture_output=True, cwd=ROOT,
                          timeout=120)


def test_analyze_sample_writes_reports(tmp_path: Path) -> None:
    r = run("analyze", str(SAMPLE), "-o", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stderr == b""  # no progress line when stderr is not a terminal
    data = json.loads((tmp_path / "report.json").read_text("utf-8"))
    assert data["format_version"] == 2
    assert [f["protocol"] for f in data["flows"]] == ["imap", "imap", "pop3", "submission", "lmtp"]
    assert (tmp_path / "report.html").read_text("utf-8").startswith("<!DOCTYPE html>")


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    assert run("analyze", str(SAMPLE), "-o", str(tmp_path)).returncode == 0
    r = run("analyze", str(SAMPLE), "-o", str(tmp_path))
    assert r.returncode == 2
    assert b"--force" in r.stderr and r.stderr.count(b"\n") == 1
    assert run("analyze", str(SAMPLE), "-o", str(tmp_path), "--force").returncode == 0


def test_output_is_deterministic(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert run("analyze", str(SAMPLE), "-o", str(a)).returncode == 0
    assert run("analyze", str(SAMPLE), "-o", str(b)).returncode == 0
    for name in ("report.json", "report.html", "findings.csv", "records.csv", "flows.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


@pytest.mark.parametrize("content, word", [
    (b"", b"empty"),
    (b"hello world, this is text\n", b"not a capture"),
    (b"PK\x03\x04" + b"\x00" * 40, b"not a capture"),
])
def test_unusable_input_exit_2_one_line(tmp_path: Path, content: bytes, word: bytes) -> None:
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(content)
    r = run("analyze", str(bad), "-o", str(tmp_path / "out"))
    assert r.returncode == 2
    assert r.stderr.count(b"\n") == 1 and word in r.stderr.lower(), r.stderr
    assert b"Traceback" not in r.stderr


def test_missing_file_exit_2(tmp_path: Path) -> None:
    r = run("analyze", str(tmp_path / "nope.pcap"), "-o", str(tmp_path / "out"))
    assert r.returncode == 2 and r.stderr.count(b"\n") == 1 and b"nope.pcap" in r.stderr


def test_stdin_and_gzip(tmp_path: Path) -> None:
    gz = gzip.compress(SAMPLE.read_bytes(), mtime=0)
    r = run("analyze", "-", "-o", str(tmp_path), stdin=gz)
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "report.json").read_text("utf-8"))
    assert data["captures"][0]["compression"] == "gzip" and len(data["flows"]) == 5


def test_directory_input(tmp_path: Path) -> None:
    r = run("analyze", str(ROOT / "captures"), "-o", str(tmp_path))
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "report.json").read_text("utf-8"))
    assert len(data["captures"]) >= 10


def test_bad_usage_exit_2(tmp_path: Path) -> None:
    assert run("analyze").returncode == 2
    assert run("analyze", str(SAMPLE), "--format", "pdf", "-o", str(tmp_path)).returncode == 2
    assert main(["analyze", str(SAMPLE), "--ports", "x", "-o", str(tmp_path)]) == 2


def test_parse_ports() -> None:
    assert parse_ports("143,24-25") == frozenset({143, 24, 25})
    assert 8143 in parse_ports("+8143") and 143 in parse_ports("+8143")
    with pytest.raises(ConfigError):
        parse_ports("0")


def test_ports_option_limits_flows(tmp_path: Path) -> None:
    r = run("analyze", str(SAMPLE), "-o", str(tmp_path), "--ports", "110", "--no-content-detection")
    assert r.returncode == 0
    data = json.loads((tmp_path / "report.json").read_text("utf-8"))
    assert [f["protocol"] for f in data["flows"]] == ["pop3"]


def test_content_detection_on_unusual_port(tmp_path: Path) -> None:
    r = run("analyze", str(SAMPLE), "-o", str(tmp_path), "--ports", "110")
    data = json.loads((tmp_path / "report.json").read_text("utf-8"))
    assert sorted(f["protocol"] for f in data["flows"]) == ["imap", "imap", "lmtp", "pop3", "smtp"]
    assert {f["detected_by"] for f in data["flows"] if f["server"]["port"] != 110} == {"content"}
