"""Golden files: every format of the report of every project capture, byte for byte.

    pytest tests/golden                 # compare; on mismatch the actual output goes to tests/actual/
    pytest tests/golden --update-gold   # rewrite tests/gold/<capture>/ from the current output

Each ``tests/gold/<capture>/`` holds ``report.json``, ``report.html``, ``report.jsonl``,
``findings.csv``, ``records.csv``, ``flows.csv`` and a one-line ``README`` stating what the
capture is about (btest's ``@TEST-DOC``). The tool version is scrubbed (coverage.py's
goldtest); nothing else varies between runs, because reports hold no wall-clock time
unless asked. Every report.json is also validated against the shipped JSON Schema.
"""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path

import pytest

from analyzer import __version__
from analyzer.config import Settings
from analyzer.pipeline import analyze
from analyzer.report import FORMATS, render_reports

ROOT = Path(__file__).resolve().parents[1].parent
GOLD = ROOT / "tests" / "gold"
ACTUAL = ROOT / "tests" / "actual"
CAPTURES = sorted(p.name for p in (ROOT / "captures").iterdir()
                  if p.is_file() and p.suffix in (".pcap", ".pcapng"))

sys.path.insert(0, str(ROOT / "tests" / "unit" / "report"))
from reportkit import validate  # noqa: E402

#: (pattern, replacement): the only parts of a report allowed to differ between runs
SCRUBS = (
    (re.compile(r'("tool": \{\s*"name": "fwdaudit",\s*"version": )"[^"]*"'), r'\1"X.Y.Z"'),
    (re.compile(r"fwdaudit " + re.escape(__version__) + r" &middot;"), "fwdaudit X.Y.Z &middot;"),
)

#: intent of captures that are not in captures/README.md's table
EXTRA_INTENT = {
    "xss": "script, markup, javascript: URLs, bidi overrides, NUL, non-UTF-8 bytes and spreadsheet formulas in "
           "every forwarded value (captures/make_xss.py): every format must show them as inert, visible text",
}


def scrub(text: str) -> str:
    for pattern, repl in SCRUBS:
        text = pattern.sub(repl, text)
    return text


def intent(stem: str) -> str:
    """One line: the scenario of the capture and what it must show (from captures/README.md)."""
    if stem in EXTRA_INTENT:
        return EXTRA_INTENT[stem]
    for line in (ROOT / "captures" / "README.md").read_text("utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].strip("`").rsplit(".", 1)[0] == stem:
            return f"{cells[1]} (must show: {cells[2]})"
    return "capture without a description in captures/README.md"


def outputs(name: str) -> dict[str, str]:
    """Every report file of one capture, scrubbed, plus the gold README."""
    result = analyze([f"captures/{name}"], Settings())
    files = {k: scrub(v) for k, v in render_reports(result, FORMATS).items()}
    files["README"] = f"Report of captures/{name}: {intent(Path(name).stem)}. Do not edit: pytest tests/golden " \
                      "--update-gold rewrites this directory.\n"
    return files


@pytest.mark.parametrize("name", CAPTURES)
def test_gold(name: str, update_gold: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # capture paths are recorded as given: keep them relative and machine-independent
    files = outputs(name)
    validate(files["report.json"])
    stem = Path(name).stem
    gold_dir = GOLD / stem
    if update_gold:
        gold_dir.mkdir(parents=True, exist_ok=True)
        for old in gold_dir.iterdir():
            if old.name not in files:
                old.unlink()
        for fname, text in files.items():
            (gold_dir / fname).write_text(text, encoding="utf-8", newline="")
        return
    problems = []
    for fname, text in sorted(files.items()):
        gold_file = gold_dir / fname
        expected = gold_file.read_bytes().decode("utf-8") if gold_file.exists() else None
        if expected == text:
            continue
        actual_file = ACTUAL / stem / fname
        actual_file.parent.mkdir(parents=True, exist_ok=True)
        actual_file.write_text(text, encoding="utf-8", newline="")
        if expected is None:
            problems.append(f"{gold_file.relative_to(ROOT)} is missing (actual output in {actual_file})")
            continue
        diff = list(difflib.unified_diff(expected.splitlines(), text.splitlines(), f"gold/{stem}/{fname}",
                                         f"actual/{stem}/{fname}", lineterm="", n=2))
        shown = "\n".join(diff[:60]) + (f"\n... {len(diff) - 60} more diff lines" if len(diff) > 60 else "")
        problems.append(f"{fname} differs (actual output in {actual_file}):\n{shown}")
    extra = sorted(p.name for p in gold_dir.iterdir() if p.name not in files) if gold_dir.exists() else []
    if extra:
        problems.append(f"unexpected files in {gold_dir}: {extra}")
    assert not problems, "\n\n".join(problems) + "\n\nIf the change is intended: pytest tests/golden --update-gold"


def test_every_capture_has_gold() -> None:
    stems = {Path(n).stem for n in CAPTURES}
    have = {p.name for p in GOLD.iterdir() if p.is_dir()} if GOLD.exists() else set()
    assert "xss" in stems and "sample" in stems
    assert have == stems, f"gold without capture: {sorted(have - stems)}; capture without gold: {sorted(stems - have)}"


def test_scrub_replaces_only_the_version() -> None:
    text = f'"tool": {{\n  "name": "fwdaudit",\n  "version": "{__version__}"\n }}, "version": "keep"'
    assert scrub(text) == '"tool": {\n  "name": "fwdaudit",\n  "version": "X.Y.Z"\n }, "version": "keep"'
    assert scrub(f"<p>fwdaudit {__version__} &middot; report") == "<p>fwdaudit X.Y.Z &middot; report"
