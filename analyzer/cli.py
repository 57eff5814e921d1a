"""Command line: ``fwdaudit analyze CAPTURE... [-o DIR]``.

Exit codes: 0 success; 1 a finding reached ``--fail-on``; 2 unusable input or bad
usage (one line on stderr saying why).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from analyzer import __version__
from analyzer.config import MAIL_PORTS, Settings
from analyzer.errors import AnalyzerError, ConfigError

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_INPUT = 2

_CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".pcap.gz", ".pcapng.gz", ".cap.gz", ".dmp")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"fwdaudit: {message}\n")
        raise SystemExit(EXIT_INPUT)


def one_line(text: str) -> str:
    """A message for stderr on exactly one line: control characters (from file names too) escaped."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def parse_ports(text: str) -> frozenset[int]:
    """``143,110,1000-1010`` or ``+8143`` (added to the defaults) to a port set."""
    ports: set[int] = set()
    extend = text.startswith("+")
    for part in text.lstrip("+").split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if hi else a
        except ValueError:
            raise ConfigError(f"--ports: {part!r} is not a port or a range") from None
        if not (0 < a <= b <= 65535):
            raise ConfigError(f"--ports: {part!r} is outside 1-65535")
        ports.update(range(a, b + 1))
    if extend:
        ports.update(MAIL_PORTS)
    if not ports:
        raise ConfigError("--ports: no port given")
    return frozenset(ports)


def expand_inputs(items: list[str]) -> list[str]:
    """Capture paths; a directory stands for the capture files in it (sorted by name)."""
    out: list[str] = []
    for item in items:
        if item != "-" and os.path.isdir(item):
            found = sorted(
                str(p) for p in Path(item).iterdir() if p.is_file() and p.name.lower().endswith(_CAPTURE_SUFFIXES)
            )
            if not found:
                raise ConfigError(f"{item}: directory holds no capture file (*.pcap, *.pcapng, *.gz)")
            out.extend(found)
        else:
            out.append(item)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fwdaudit", description="Audit client-identity forwarding by mail proxies in packet captures.")
    p.add_argument("--version", action="version", version=f"fwdaudit {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("rules", help="list every rule (id, severity, spec code, title)")
    r.add_argument("--markdown", action="store_true", help="as a Markdown table (the README's)")
    a = sub.add_parser("analyze", help="analyze capture files and write reports")
    a.add_argument("captures", nargs="+", metavar="CAPTURE",
                   help="pcap or pcapng file (optionally gzip-compressed), a directory of them, or - for stdin")
    a.add_argument("-o", "--output", default="reports", metavar="DIR", help="output directory (default: reports)")
    a.add_argument("--format", default="html,json,csv",
                   help="comma list of: html, json, jsonl, csv (default: html,json,csv)")
    a.add_argument("--timestamp", action="store_true",
                   help="record the time of the run in the reports (off by default: same capture, same bytes)")
    a.add_argument("--ports", default=None,
                   help="server ports to dissect, e.g. 143,110,24-25; '+PORTS' adds to the defaults "
                        f"({','.join(str(x) for x in sorted(MAIL_PORTS))})")
    a.add_argument("--all-tcp", action="store_true", help="reassemble every TCP flow, not only mail flows")
    a.add_argument("--jobs", type=int, default=0, metavar="N",
                   help="processes to use: files, and ranges of large pcap files, are split across them, with "
                        "the same report as --jobs 1; 0 = one per usable core (default: 0; inputs under 64 MB "
                        "always run in one process)")
    a.add_argument("--engine", default="local", choices=("local", "dask"),
                   help="run the per-file work locally or as tasks on a Dask cluster (--scheduler)")
    a.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="Dask scheduler address for --engine dask, e.g. tcp://10.0.0.1:8786")
    a.add_argument("--no-content-detection", action="store_true",
                   help="pick flows by port only (no look at the first bytes of other flows)")
    a.add_argument("--force", action="store_true", help="overwrite existing report files")
    a.add_argument("--fail-on", default=None, metavar="SEVERITY", choices=("info", "low", "medium", "high"),
                   help="exit with status 1 when a finding of this severity or higher is reported")
    a.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    from analyzer.rules.trustconf import add_cli_arguments

    add_cli_arguments(a)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fwdaudit`` console script."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "rules":
            sys.stdout.write(rule_table(markdown=args.markdown))
            return EXIT_OK
        return _analyze(args)
    except AnalyzerError as exc:
        sys.stderr.write(f"fwdaudit: {one_line(str(exc))}\n")
        return EXIT_INPUT
    except KeyboardInterrupt:
        sys.stderr.write("fwdaudit: interrupted\n")
        return 130


def _analyze(args: argparse.Namespace) -> int:
    from analyzer.pipeline import analyze
    from analyzer.report import output_files, parse_formats, write_reports
    from analyzer.report.jsonout import iso_ns

    formats = parse_formats(args.format)
    from analyzer.rules.trustconf import trust_from_args

    trust = trust_from_args(args)
    if trust is not None:
        for warning in trust.warnings:
            sys.stderr.write(f"fwdaudit: warning: {one_line(warning)}\n")
    settings = Settings(
        ports=parse_ports(args.ports) if args.ports else Settings().ports,
        all_tcp=args.all_tcp,
        content_detection=not args.no_content_detection,
        trust=trust,
    )
    paths = expand_inputs(args.captures)
    if paths.count("-") > 1:
        raise ConfigError("standard input (-) can be given only once")
    out_dir = Path(args.output)
    if not args.force:
        # fail before the (possibly long) analysis, not after it
        for name in output_files(formats):
            if (out_dir / name).exists():
                raise ConfigError(f"{out_dir / name} exists; use --force to overwrite or -o to choose another directory")
    progress = not args.quiet and sys.stderr.isatty()
    if args.jobs < 0:
        raise ConfigError("--jobs: give 0 (one per core) or a positive number of processes")
    if args.engine == "dask" and not args.scheduler:
        raise ConfigError("--engine dask needs --scheduler ADDRESS (the address of a running Dask scheduler)")
    result = analyze(paths, settings, progress=progress, jobs=args.jobs, engine=args.engine,
                     scheduler=args.scheduler)
    # the reports read flows, records and findings, never the dissected events: let them go
    # first, so the report stage reuses their memory instead of adding to the peak
    for flow in result.flows:
        flow.summary.events = ()
    generated_at = iso_ns(time.time_ns()) if args.timestamp else None
    from analyzer.parallel import usable_cores

    jobs = args.jobs if args.jobs >= 1 else usable_cores()  # the report files, like the captures, on all of them
    write_reports(result, str(out_dir), formats, force=True, generated_at=generated_at, jobs=jobs)
    for c in result.unusable:
        sys.stderr.write(f"fwdaudit: {one_line(c.error or '')}\n")
    if result.unusable:
        return EXIT_INPUT
    if args.fail_on is not None:
        from analyzer.rules.base import Severity

        threshold = Severity.parse(args.fail_on)
        if any(f.severity >= threshold for f in result.findings):
            return EXIT_FINDINGS
    return EXIT_OK


def rule_table(markdown: bool = False) -> str:
    """Every rule, rendered from the rule modules' tables (README.md embeds the Markdown form)."""
    from analyzer.rules import iter_rule_table

    rows = list(iter_rule_table())
    if not markdown:
        return "".join(f"{rid:48} {sev:7} {spec:6} {title}\n" for rid, sev, spec, title in rows)
    out = ["| rule | severity | spec | what it finds |", "|---|---|---|---|"]
    bar = "\\|"
    out += [f"| `{rid}` | {sev} | {spec} | {title.replace('|', bar)} |" for rid, sev, spec, title in rows]
    return "\n".join(out) + "\n"
