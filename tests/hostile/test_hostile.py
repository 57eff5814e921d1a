"""Hostile captures through the real command line (issue 7 items 1, 3 and 4).

Every case of :mod:`hostile.generate` runs as ``python3 -m analyzer analyze CASE -o DIR
--force -q`` in its own child process and must: exit 0, 1 or 2 (2, with exactly one
``fwdaudit: ...`` line, for unusable input; never 2 for a damaged but readable file),
print no traceback, finish within 10 s/MB + 15 s (the issue's 10 s/MB + 5 s, with the base
raised for interpreter start-up on a loaded shared machine), stay under the 600 MB cap, and
show every damaged region in ``report.json`` (``Case.expect``).

Then the output-safety checks: report files stay inside ``-o``, nothing is overwritten
without ``--force`` (nor through a planted symlink), and file names that came from the
command line are escaped in every output and in the one-line error messages.

Bugs found here are pinned by minimal ``xfail(strict=True)`` tests at the end of this
module: once a bug is fixed its test passes, the strict mark turns that into a failure,
and the mark (and its ``KNOWN_BUGS`` entry) must be removed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from . import KNOWN_BUGS, MEMORY_CAP_MB, PROFILE, analyze_args, run_cli, time_budget
from .conftest import HostileRunner
from .generate import CASES, PROFILES, Scale, case_bytes, missing_evidence, write_case

SMALL_TIMEOUT_S = 60.0  # ours: a generous limit for the small fixed-size runs below
MIB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "captures" / "sample.pcapng"


def _load_report(out_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out_dir / "report.json").read_text("utf-8"))
    return data


def _case_params() -> list[Any]:
    """Every corpus case (the CI profile leaves out the cuts one byte off a boundary), known bugs marked."""
    params = []
    for name, case in CASES.items():
        if PROFILE == "ci" and "edge" in case.tags:
            continue
        marks: list[Any] = []
        bug = KNOWN_BUGS.get(name)
        if bug is not None and bug.applies():
            if bug.expensive and PROFILE == "ci":
                marks.append(
                    pytest.mark.skip(reason=f"known bug pinned by a minimal xfail test: {bug.reason}")
                )
            else:
                marks.append(pytest.mark.xfail(strict=True, reason=bug.reason))
        params.append(pytest.param(name, id=name, marks=marks))
    return params


@pytest.mark.parametrize("case_name", _case_params())
def test_hostile_case(case_name: str, hostile_runner: HostileRunner, hostile_scale: Scale) -> None:
    """The analyzer survives the case, within time and memory, and reports the damage."""
    cr = hostile_runner.result(case_name)
    case = cr.case
    problems = cr.run.problems(unusable=case.unusable)
    report_path = cr.out_dir / "report.json"
    if not cr.run.timed_out and cr.run.returncode in (0, 1, 2):
        if not report_path.exists():
            problems.append("no report.json was written")
        else:
            try:
                report = _load_report(cr.out_dir)
            except (ValueError, UnicodeDecodeError) as exc:
                problems.append(f"report.json is not valid UTF-8 JSON: {exc}")
            else:
                missing = missing_evidence(case, report, hostile_scale)
                if missing:
                    problems.append(f"report.json does not show {missing} (expected {list(case.expect)})")
    assert not problems, (
        f"{case.name}: {case.doc}\n  file {cr.path} ({cr.size} bytes), {cr.run.elapsed_s:.2f} s "
        f"(budget {time_budget(cr.size):.0f} s), {cr.run.maxrss_mb:.0f} MB, exit {cr.run.returncode}\n  - "
        + "\n  - ".join(problems)
    )


def test_every_issue_item_has_a_case() -> None:
    """The corpus covers each hostile input the issue lists (so a rename cannot drop one)."""
    assert any(n.startswith("trunc_pcap_") for n in CASES) and any(
        n.startswith("trunc_pcapng_") for n in CASES
    )
    required = {
        "caplen larger than snaplen": "pcap_caplen_gt_snaplen",
        "caplen larger than the file": "pcap_caplen_gt_file",
        "zero record length": "pcap_caplen_zero",
        "4 GB record length": "pcap_caplen_4g",
        "bogus pcapng block length": "pcapng_block_len_huge",
        "misaligned pcapng block": "pcapng_block_len_misaligned",
        "unknown link type": "linktype_unknown_only",
        "IPv4 header length lies": "ipv4_length_lies",
        "IPv6 extension header loop": "ipv6_ext_header_loop",
        "TCP data offset past the packet": "tcp_offset_lies",
        "sequence jump 2^31": "seq_jump_2_31",
        "a million tiny flows": "flows_tiny_mail",
        "a million out-of-order segments": "ooo_segments",
        "IMAP literal 4 GB": "imap_literal_4g",
        "ID nested 100,000 deep": "imap_id_nested_line",
        "endless line": "imap_endless_line",
        "base64 FORWARD of 100 MB": "pop3_forward_100mb",
        "XCLIENT repeated 100,000 times": "smtp_xclient_100k",
    }
    for what, name in required.items():
        assert name in CASES, what
    long = PROFILES["long"]
    assert long.flows >= 1_000_000 and long.ooo_segments >= 1_000_000
    assert long.xclient_repeats >= 100_000 and long.id_depth >= 100_000 and long.forward_bytes >= 100 << 20
    ci = PROFILES["ci"]
    assert 100_000 <= ci.flows <= 200_000 and 100_000 <= ci.ooo_segments <= 200_000


def test_generator_is_deterministic(tmp_path: Path) -> None:
    """Two generations of the same cases are byte-identical, in memory and through the CLI."""
    names = [
        sorted(n for n in CASES if n.startswith("trunc_pcapng_"))[20],
        "pcapng_random_blocks",
        "fragment_overlap_rewrite",
        "imap_id_many_pairs",
    ]
    scale = PROFILES["ci"]
    for name in names:
        assert case_bytes(name, scale) == case_bytes(name, scale), name
        assert write_case(CASES[name], tmp_path, scale).read_bytes() == case_bytes(name, scale), name
    from .generate import main

    assert main([str(tmp_path / "cli"), "--only", *names]) == 0
    for name in names:
        assert (tmp_path / "cli" / f"{name}{CASES[name].suffix}").read_bytes() == case_bytes(name, scale)


def test_truncated_capture_on_stdin(tmp_path: Path) -> None:
    """A capture cut inside a record, read from standard input, is read as far as it goes."""
    src = tmp_path / "cut.pcap"
    cut = max(
        n
        for n, c in CASES.items()
        if n.startswith("trunc_pcap_") and c.expect and c.expect[0].startswith("damage")
    )
    src.write_bytes(case_bytes(cut))
    out = tmp_path / "out"
    run = run_cli(["analyze", "-", "-o", str(out), "--force", "-q"], timeout=SMALL_TIMEOUT_S, stdin=src)
    assert not run.problems(unusable=False), run
    report = _load_report(out)
    assert any(d["code"].startswith("truncated") for c in report["captures"] for d in c["damage"]), report[
        "captures"
    ]


def test_garbage_on_stdin_is_one_line(tmp_path: Path) -> None:
    """Random bytes on standard input: exit 2, one line."""
    src = tmp_path / "junk"
    src.write_bytes(bytes(range(256)) * 64)
    run = run_cli(["analyze", "-", "-o", str(tmp_path / "out"), "-q"], timeout=SMALL_TIMEOUT_S, stdin=src)
    assert not run.problems(unusable=True), run


# ----------------------------------------------------------------------------- output safety


def _tree(root: Path) -> set[str]:
    """Every path under ``root`` (relative), directories included."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_capture_path_with_dot_dot_stays_in_output_dir(tmp_path: Path) -> None:
    """``../../x.pcap`` as the capture: nothing is created outside ``-o``."""
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    shutil.copy(SAMPLE, tmp_path / "a" / "x.pcap")
    before = _tree(tmp_path)
    out = work / "out"
    run = run_cli(["analyze", "../../x.pcap", "-o", "out", "-q"], timeout=SMALL_TIMEOUT_S, cwd=work)
    assert not run.problems(unusable=False), run
    created = _tree(tmp_path) - before
    outside = [p for p in created if not (tmp_path / p).resolve().is_relative_to(out.resolve())]
    assert not outside, outside
    assert {"report.json", "report.html"} <= {p.name for p in out.iterdir()}
    assert _load_report(out)["captures"][0]["path"] == "../../x.pcap"


HOSTILE_NAME = (
    'evil\n<img src=x onerror="alert(1)">&amp;.pcap'  # newline, tag, quote and entity in a file name
)


def test_hostile_capture_name_is_escaped(tmp_path: Path) -> None:
    """A capture named with a newline and HTML: outputs stay in ``-o``, the name renders escaped."""
    src = tmp_path / HOSTILE_NAME
    shutil.copy(SAMPLE, src)
    out = tmp_path / "out"
    before = _tree(tmp_path)
    run = run_cli(analyze_args(src, out), timeout=SMALL_TIMEOUT_S)
    assert not run.problems(unusable=False), run
    assert {p for p in _tree(tmp_path) - before if not p.startswith("out")} == set()
    assert _load_report(out)["captures"][0]["path"] == str(src)
    html = (out / "report.html").read_text("utf-8")
    assert "<img" not in html
    assert "&lt;img src=x" in html
    assert "&amp;amp;" in html  # the entity in the name is shown, not interpreted


def test_unusable_hostile_name_is_one_line(tmp_path: Path) -> None:
    """An empty capture whose name holds a newline: still exactly one stderr line."""
    src = tmp_path / HOSTILE_NAME
    src.write_bytes(b"")
    run = run_cli(analyze_args(src, tmp_path / "out"), timeout=SMALL_TIMEOUT_S)
    assert not run.problems(unusable=True), run


def test_non_utf8_capture_name(tmp_path: Path) -> None:
    """A capture whose name is not UTF-8 (bytes 0xff 0xfe): the reports are still valid UTF-8."""
    raw = os.fsencode(tmp_path) + b"/cap\xff\xfe.pcap"
    shutil.copy(os.fsencode(SAMPLE), raw)
    out = tmp_path / "out"
    run = run_cli(analyze_args(os.fsdecode(raw), out), timeout=SMALL_TIMEOUT_S)
    assert not run.problems(unusable=False), run
    path = _load_report(out)["captures"][0]["path"]
    assert path.endswith("cap\\xff\\xfe.pcap"), path
    (out / "report.html").read_text("utf-8")


def test_existing_report_is_not_overwritten_without_force(tmp_path: Path) -> None:
    """Without ``--force`` an existing report stays byte for byte; with it, it is replaced."""
    out = tmp_path / "out"
    out.mkdir()
    old = b'{"mine": "do not touch"}\n'
    (out / "report.json").write_bytes(old)
    run = run_cli(["analyze", str(SAMPLE), "-o", str(out), "-q"], timeout=SMALL_TIMEOUT_S)
    assert not run.problems(unusable=True), run
    assert "--force" in run.stderr
    assert (out / "report.json").read_bytes() == old
    assert not (out / "report.html").exists()
    run = run_cli(["analyze", str(SAMPLE), "-o", str(out), "--force", "-q"], timeout=SMALL_TIMEOUT_S)
    assert not run.problems(unusable=False), run
    assert _load_report(out)["format_version"] >= 1


def test_existing_html_alone_also_blocks(tmp_path: Path) -> None:
    """An existing report.html (no report.json) also needs ``--force``."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").write_text("mine\n")
    run = run_cli(["analyze", str(SAMPLE), "-o", str(out), "-q"], timeout=SMALL_TIMEOUT_S)
    assert not run.problems(unusable=True), run
    assert (out / "report.html").read_text() == "mine\n"
    assert not (out / "report.json").exists()


def test_output_dir_is_a_file(tmp_path: Path) -> None:
    """``-o`` naming an existing regular file: exit 2, one line, the file untouched."""
    target = tmp_path / "not-a-dir"
    target.write_bytes(b"keep")
    run = run_cli(analyze_args(SAMPLE, target), timeout=SMALL_TIMEOUT_S)
    assert not run.problems(unusable=True), run
    assert target.read_bytes() == b"keep"


def test_report_symlink_is_replaced_not_followed(tmp_path: Path) -> None:
    """With ``--force``, a report.json that is a symlink is replaced; its target is untouched."""
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    (out / "report.json").symlink_to(victim)
    run = run_cli(analyze_args(SAMPLE, out), timeout=SMALL_TIMEOUT_S)
    assert not run.problems(unusable=False), run
    assert victim.read_bytes() == b"precious"
    assert not (out / "report.json").is_symlink()


# ----------------------------------------------------------------------------- bugs found

# Regression tests of bugs found here and already fixed (their xfail marks were removed when
# the fixes landed), then the minimal xfail(strict=True) tests of the bugs still open.


def test_planted_tmp_symlink_is_not_followed(tmp_path: Path) -> None:
    """A symlink planted at ``report.json.tmp`` does not redirect the write outside ``-o`` (found by H12)."""
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    (out / "report.json.tmp").symlink_to(victim)
    run = run_cli(["analyze", str(SAMPLE), "-o", str(out), "-q", "--format", "json"], timeout=SMALL_TIMEOUT_S)
    assert not run.problems(unusable=False), run
    assert victim.read_bytes() == b"precious"


def test_directory_name_with_newline_is_one_line(tmp_path: Path) -> None:
    """An input directory with no capture and a newline in its name: one line on stderr."""
    d = tmp_path / "dir\nname"
    d.mkdir()
    run = run_cli(["analyze", str(d), "-o", str(tmp_path / "out"), "-q"], timeout=SMALL_TIMEOUT_S)
    assert not run.problems(unusable=True), run


def test_output_dir_with_newline_is_one_line(tmp_path: Path) -> None:
    """An existing report in an output directory whose name holds a newline: one line on stderr."""
    out = tmp_path / "o\nut"
    out.mkdir()
    (out / "report.json").write_text("{}")
    run = run_cli(analyze_args(SAMPLE, out)[:-2] + ["-q"], timeout=SMALL_TIMEOUT_S)
    assert not run.problems(unusable=True), run


def _rule_calls(n: int, tmp_path: Path) -> int:
    """Python calls made by run_rules() on one SMTP flow carrying ``n`` unanswered XCLIENT commands."""
    from dataclasses import replace

    from analyzer.config import Settings
    from analyzer.pipeline import analyze
    from analyzer.rules import RuleContext, run_rules

    path = write_case(CASES["smtp_xclient_100k"], tmp_path, replace(PROFILES["ci"], xclient_repeats=n))
    result = analyze([str(path)], Settings(), keep_events=True)  # the rules that walk events must see them
    ctx = RuleContext(result.records, result.flows, result.settings)
    count = 0

    def profiler(frame: Any, event: str, arg: Any) -> None:
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    sys.setprofile(profiler)
    try:
        run_rules(ctx)
    finally:
        sys.setprofile(None)
    return count


def test_smtp_rules_linear_in_xclient_count(tmp_path: Path) -> None:
    """Rule work grows linearly with the number of XCLIENT commands (counted calls: deterministic).

    Found by H12: rules/protocol.py _check_restart() was O(n^2) (smtp_xclient_100k ran > 13 min).
    """
    small = _rule_calls(200, tmp_path / "s")
    big = _rule_calls(1600, tmp_path / "b")
    assert big <= 2 * 8 * small, f"8x the commands took {big / small:.1f}x the calls ({small} -> {big})"


def _rss_per_unit(small: Path, n_small: int, big: Path, n_big: int, out: Path) -> float:
    """Extra peak RSS of the CLI per unit (flow, command) between two sizes: fixed costs cancel out."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        runs = list(
            pool.map(
                lambda p: run_cli(analyze_args(p, out / p.stem), timeout=SMALL_TIMEOUT_S * 4), (small, big)
            )
        )
    for r in runs:
        assert r.returncode in (0, 1) and not r.timed_out, r
    return (runs[1].maxrss_mb - runs[0].maxrss_mb) * MIB / (n_big - n_small)


def test_memory_per_open_flow(tmp_path: Path) -> None:
    """A million one-SYN mail flows must fit the 600 MB cap: at most ~630 bytes per flow, reports included.

    Both sizes are past report.html's row caps (report/data.py MAX_FLOW_ROWS): below them each flow
    also pays an HTML row, which a million flows do not.
    """
    from analyzer.report.data import MAX_FLOW_ROWS

    from .generate import IMAP_PORT, _tiny_flows

    sizes = (MAX_FLOW_ROWS + 1_000, MAX_FLOW_ROWS + 21_000)
    paths = []
    for n in sizes:
        paths.append(tmp_path / f"flows{n}.pcap")
        paths[-1].write_bytes(b"".join(_tiny_flows(n, IMAP_PORT)))
    per_flow = _rss_per_unit(paths[0], sizes[0], paths[1], sizes[1], tmp_path / "out")
    assert per_flow <= MEMORY_CAP_MB * MIB / 1_000_000, f"{per_flow:.0f} bytes per flow"


def test_memory_per_xclient(tmp_path: Path) -> None:
    """100,000 XCLIENT commands must fit the 600 MB cap: at most ~6 KB per command, reports included."""
    from dataclasses import replace

    from analyzer.report.data import MAX_RECORD_ROWS

    # multiples of the case's 500 pipelined commands, both past report.html's record row cap: below it
    # each command also pays an HTML row, which 100,000 commands do not
    sizes = (MAX_RECORD_ROWS + 500, MAX_RECORD_ROWS + 5_500)
    paths = [
        write_case(CASES["pop3_xclient_100k"], tmp_path / str(n), replace(PROFILES["ci"], xclient_repeats=n))
        for n in sizes
    ]
    per_cmd = _rss_per_unit(paths[0], sizes[0], paths[1], sizes[1], tmp_path / "out")
    assert per_cmd <= MEMORY_CAP_MB * MIB / 100_000, f"{per_cmd:.0f} bytes per XCLIENT"


def _html_size(n: int, tmp_path: Path) -> int:
    from analyzer.config import Settings
    from analyzer.pipeline import analyze
    from analyzer.report import write_reports

    from .generate import imap_literal_pairs

    path = tmp_path / f"pairs{n}.pcap"
    path.write_bytes(b"".join(imap_literal_pairs(n)))
    out = tmp_path / f"out{n}"
    write_reports(analyze([str(path)], Settings()), str(out), ("html",), force=True)
    return (out / "report.html").stat().st_size


def test_html_linear_in_id_pairs(tmp_path: Path) -> None:
    """report.html grows linearly with the number of ID pairs (4x the pairs: at most 8x the bytes).

    Found by H12: each finding repeated its record's whole parameter table (5,000 pairs: 130 MB).
    """
    small = _html_size(50, tmp_path)
    big = _html_size(200, tmp_path)
    assert big <= 8 * small, f"4x the pairs gave {big / small:.1f}x the HTML ({small} -> {big} bytes)"


def test_memory_per_command(tmp_path: Path) -> None:
    """Plain commands on one flow leave no per-command memory behind (at most 64 bytes each: bounded state).

    Found by H12: FlowSummary.events kept every event (1M NOOPs: 750 MB); fixed by event retention.
    """
    from .generate import imap_command_segments

    sizes = (20_000, 220_000)  # large enough that per-command memory dominates the fixed peaks
    paths = []
    for n in sizes:
        paths.append(tmp_path / f"noop{n}.pcap")
        paths[-1].write_bytes(b"".join(imap_command_segments(n, 1)))
    per_cmd = _rss_per_unit(paths[0], sizes[0], paths[1], sizes[1], tmp_path / "out")
    assert per_cmd <= 64, f"{per_cmd:.0f} bytes per command"
