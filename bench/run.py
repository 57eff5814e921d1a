"""The reproducible benchmark: one command generates the captures, times every row and prints the table.

Usage (from anywhere; commands run from the repository root)::

    python3 bench/run.py [--size-mb 1024] [--reps 3] [--markdown FILE] [--only ROW,...]

Strategy: captures come from ``bench/gen.py`` (deterministic, cached under
``bench/cache/`` by generator version + parameters). Every measured command is
a child process started with ``subprocess.Popen`` and reaped with
``os.wait4``, so wall time, CPU time and peak RSS (``ru_maxrss`` of that child
and its descendants) belong to that row alone; a sampler thread also sums the
RSS of the whole process tree every 100 ms, which is what matters for
multi-process rows. Before the rows of a capture run, its files are read once
so that they sit in the page cache; each row then runs ``--reps`` times and the
median wall time is reported. A row whose command fails is reported as
``failed`` with the last line of its stderr and the run goes on; a row whose
prerequisite is missing (``--jobs`` not in ``analyze --help``, a single core)
is reported as ``skipped`` with the reason.

Rows (``<capture>:<tool>``; captures ``noise``, ``mail200k``, ``manyfiles``):

* ``fwdaudit-j1`` / ``fwdaudit-jN``: ``python3 -m analyzer analyze FILES -o TMPDIR --jobs 1|N``;
  found = ``records`` with carrier ``ID``/``XCLIENT`` in the JSON written to TMPDIR.
* ``dpkt`` / ``scapy``: ``bench/baselines.py`` (reader + per-flow reassembly + line search);
  scapy reads only a sample: the first ``--scapy-mb`` MB of noise, and a ``--scapy-mail-flows``
  instance of mail200k (its MB/s, packets/s and found/known refer to that sample).
* ``tshark``: display filter on the dissected fields (single pass, default preferences).
* ``tcpdump``: ``tcpdump -r FILE -w /dev/null 'tcp port 25 or ...'`` (C + BPF: the floor).
* ``cat``: ``cat FILES > /dev/null`` (reading from the page cache: the ceiling).
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import gen  # noqa: E402  (bench/gen.py)

from analyzer.config import MAIL_PORTS  # noqa: E402

PY = sys.executable
MIN_PUBLISHED_MB = 500  # the brief: published figures need a noise capture of at least 500 MB
RSS_SAMPLE_S = 0.1  # period of the process-tree RSS sampler
WARM_CHUNK = 8 << 20  # read size of the page-cache warm-up
ERROR_TAIL = 4096  # bytes of a failed command's stderr read back for its last line
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
#: the brief's display filter; tshark 4.0's SMTP dissector cuts verbs to 4 characters, so "XCLI" too
TSHARK_FILTER = ('imap.request.command == "ID" || pop.request.command == "XCLIENT" || '
                 'smtp.req.command == "XCLIENT" || smtp.req.command == "XCLI"')
TSHARK_FIELDS = ("frame.number", "imap.request.command", "pop.request.command", "smtp.req.command")
TSHARK_DECODE_AS = ("-d", f"tcp.port=={gen.PORT_LMTP},smtp")  # Wireshark has no LMTP dissector
TCPDUMP_FILTER = " or ".join(f"tcp port {p}" for p in sorted(MAIL_PORTS))
TOOLS = ("fwdaudit-j1", "fwdaudit-jN", "dpkt", "scapy", "tshark", "tcpdump", "cat")
OURS = ("fwdaudit-j1", "fwdaudit-jN")
CAPTURES = ("noise", "mail200k", "manyfiles")
SINGLE_FILE_TOOLS = ("scapy", "tshark")  # not run on manyfiles: tshark reads one file; scapy a sample


# --------------------------------------------------------------------------------------------
# Measuring one child process


@dataclass(frozen=True, slots=True)
class ChildRun:
    """What one run of a child process cost."""

    rc: int  #: exit code (negative: killed by that signal)
    wall: float  #: seconds from start to reap
    cpu: float  #: user + system seconds of the child and its reaped descendants
    maxrss_kb: int  #: peak RSS of the command (GNU time %M; else wait4 ru_maxrss, which includes the fork)
    tree_rss_kb: int  #: largest sampled sum of RSS over the process tree
    timed_out: bool  #: killed because it exceeded --timeout


def _tree_rss_kb(root: int) -> int:
    """Sum of resident set sizes of ``root`` and its descendants (Linux /proc)."""
    total = 0
    todo = [root]
    seen: set[int] = set()
    while todo and len(seen) < 4096:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * PAGE_KB
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError, IndexError):
            continue  # the process ended between listing and reading
    return total


class _Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(RSS_SAMPLE_S):
            self.peak = max(self.peak, _tree_rss_kb(self.pid))


def _gnu_time() -> str | None:
    """Path of GNU time if installed: it reports the measured command's own peak RSS (``%M``)."""
    path = "/usr/bin/time"
    if not os.access(path, os.X_OK):
        return None
    proc = subprocess.run([path, "--version"], capture_output=True)
    return path if b"GNU" in proc.stdout + proc.stderr else None


GNU_TIME = _gnu_time()


def run_child(argv: Sequence[str], stdout: Path | None, stderr: Path, timeout: float | None) -> ChildRun:
    """Run ``argv`` from the repository root; ``stdout=None`` sends it to /dev/null.

    A child forked from this (large) Python process inherits its resident pages until it
    execs, and Linux keeps that high-water mark in the child's ``ru_maxrss``. So the command
    is started through GNU time when available (a small C parent), and its ``%M`` is used.
    """
    out = open(stdout, "wb") if stdout is not None else open(os.devnull, "wb")
    err = open(stderr, "wb")
    rss_file = stderr.with_suffix(".rss")
    rss_file.unlink(missing_ok=True)
    full = [GNU_TIME, "-o", str(rss_file), "-f", "%M", *argv] if GNU_TIME else list(argv)
    timed_out = threading.Event()
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(full, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True)
        sampler = _Sampler(proc.pid)
        sampler.start()

        def kill() -> None:
            timed_out.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # our own child's process group only
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill) if timeout else None
        if timer is not None:
            timer.start()
        reaped = False
        try:
            _, status, ru = os.wait4(proc.pid, 0)
            reaped = True
        finally:
            if timer is not None:
                timer.cancel()
            sampler.stop.set()
            if not reaped:  # interrupted (Ctrl-C, SIGTERM): do not leave the measured command running
                kill()
                os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        out.close()
        err.close()
    maxrss = ru.ru_maxrss
    if GNU_TIME:
        try:
            lines = rss_file.read_text().split()
            maxrss = int(lines[-1]) if lines and lines[-1].isdigit() else maxrss
        except OSError:
            pass
    cpu = ru.ru_utime + ru.ru_stime
    return ChildRun(proc.returncode, wall, cpu, maxrss, sampler.peak, timed_out.is_set())


def last_line(path: Path) -> str:
    """The last non-empty line of a (stderr) file, shortened."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - ERROR_TAIL))
            tail = f.read().decode("utf-8", "replace")
    except OSError as e:
        return f"(cannot read stderr: {e})"
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip() and "Running as user" not in ln]
    return (lines[-1] if lines else "(no stderr)")[:300]


# --------------------------------------------------------------------------------------------
# Rows


Counts = dict[str, int]


@dataclass(frozen=True, slots=True)
class Capture:
    """A generated capture the rows run on."""

    name: str  #: noise | mail200k | manyfiles
    generated: gen.Generated  #: files + manifest
    scapy: gen.Generated | None  #: what the scapy row reads (None: no scapy row)
    scapy_note: str = ""  #: how that sample relates to the capture

    @property
    def bytes(self) -> int:
        """Bytes of all its files."""
        return int(self.generated.manifest["bytes"])

    @property
    def packets(self) -> int:
        """Packets in all its files."""
        return int(self.generated.manifest["packets"])

    @property
    def known(self) -> int:
        """ID + XCLIENT commands the generator wrote."""
        return int(self.generated.manifest["known_total"])


@dataclass(frozen=True, slots=True)
class RowSpec:
    """One row of the table: a command and how to read what it found."""

    row_id: str  #: ``capture:tool``
    capture: str  #: capture name
    tool: str  #: one of TOOLS
    argv: tuple[str, ...] | None  #: the command; None when skipped
    skip: str | None  #: why the row is skipped
    bytes: int  #: bytes of capture the command reads (the sample for scapy)
    packets: int  #: packets it reads
    known: int | None  #: known commands in what it reads (None: not a finder)
    counter: Callable[[Path, Path], Counts | None] | None  #: (stdout file, out dir) -> found counts
    stdout: bool  #: keep stdout (else /dev/null)
    outdir: bool  #: give the command a fresh output directory (fwdaudit)
    note: str  #: shown in the table


@dataclass(slots=True)
class RowResult:
    """Measurements of one row."""

    spec: RowSpec
    status: str = "ok"  #: ok | failed | skipped
    error: str | None = None
    runs: list[ChildRun] = field(default_factory=list)
    found: Counts | None = None

    @property
    def wall(self) -> float | None:
        """Median wall seconds (None unless ok)."""
        return statistics.median(r.wall for r in self.runs) if self.status == "ok" and self.runs else None

    @property
    def mbps(self) -> float | None:
        """MB read per median wall second."""
        w = self.wall
        return self.spec.bytes / gen.MB / w if w else None

    @property
    def pps(self) -> float | None:
        """Packets read per median wall second."""
        w = self.wall
        return self.spec.packets / w if w else None

    @property
    def cpu(self) -> float | None:
        """Median CPU seconds (user + system, whole process tree)."""
        return statistics.median(r.cpu for r in self.runs) if self.status == "ok" and self.runs else None

    @property
    def rss_mb(self) -> float | None:
        """Largest peak RSS over the runs, in MB (10**6 bytes, like every MB here)."""
        if not self.runs:
            return None
        return max(max(r.maxrss_kb, r.tree_rss_kb) for r in self.runs) * 1024 / gen.MB

    @property
    def found_total(self) -> int | None:
        """ID + XCLIENT commands found (None: the tool did not report them)."""
        return None if self.found is None else self.found.get("ID", 0) + self.found.get("XCLIENT", 0)


def count_baseline(stdout: Path, _outdir: Path) -> Counts | None:
    """Counts printed by bench/baselines.py."""
    try:
        data = json.loads(stdout.read_text())
    except (OSError, ValueError):
        return None
    return {"ID": int(data["ID"]), "XCLIENT": int(data["XCLIENT"])}


def count_tshark(stdout: Path, _outdir: Path) -> Counts | None:
    """Commands in tshark's field output (one line per matching frame; several commands per field)."""
    counts = {"ID": 0, "XCLIENT": 0}
    with open(stdout, "rb") as f:
        for raw in f:
            cols = raw.rstrip(b"\r\n").split(b"\t")
            cols += [b""] * (4 - len(cols))
            counts["ID"] += sum(1 for c in cols[1].split(b",") if c.upper() == b"ID")
            counts["XCLIENT"] += sum(1 for c in cols[2].split(b",") if c.upper() == b"XCLIENT")
            counts["XCLIENT"] += sum(1 for c in cols[3].split(b",") if c.upper() in (b"XCLIENT", b"XCLI"))
    return counts


_CARRIER_KEYS = ("carrier", "command", "verb", "kind")


def _record_lists(data: object) -> list[list[Any]]:
    """The ``records`` lists of a report: top-level, else one per flow."""
    if not isinstance(data, dict):
        return []
    if isinstance(data.get("records"), list):
        return [data["records"]]
    flows = data.get("flows")
    if isinstance(flows, list):
        return [f["records"] for f in flows if isinstance(f, dict) and isinstance(f.get("records"), list)]
    return []


def count_fwdaudit(_stdout: Path, outdir: Path) -> Counts | None:
    """ID/XCLIENT records in the JSON report(s) ``fwdaudit analyze -o`` wrote.

    Contract: a top-level ``records`` list (else ``flows[*].records``) of objects with a
    ``carrier`` field (``ID``/``XCLIENT``/``XRCPTFORWARD``); None when no such list exists.
    """
    counts = {"ID": 0, "XCLIENT": 0}
    seen = False
    for path in sorted(outdir.rglob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        lists = _record_lists(data)
        if not lists:
            continue
        seen = True
        for rec in (r for lst in lists for r in lst):
            if not isinstance(rec, dict):
                continue
            for key in _CARRIER_KEYS:
                value = rec.get(key)
                if isinstance(value, str):
                    if value.upper() in counts:
                        counts[value.upper()] += 1
                    break
    return counts if seen else None


def analyze_help() -> tuple[bool, str | None]:
    """(``--jobs`` supported?, error) from ``python3 -m analyzer analyze --help``."""
    try:
        proc = subprocess.run([PY, "-m", "analyzer", "analyze", "--help"], cwd=REPO, capture_output=True,
                              timeout=120)
    except subprocess.TimeoutExpired:
        return False, "analyze --help timed out"
    text = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    if proc.returncode != 0:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return False, lines[-1].strip()[:300] if lines else f"exit {proc.returncode}"
    return "--jobs" in text, None


def build_rows(caps: dict[str, Capture], ncpu: int, jobs_ok: bool, help_error: str | None) -> list[RowSpec]:
    """Every row for the captures given, in table order."""
    rows: list[RowSpec] = []
    for name, cap in caps.items():
        files = [str(p) for p in cap.generated.files]

        def row(tool: str, argv: Sequence[str] | None, *, skip: str | None = None, nbytes: int = cap.bytes,
                packets: int = cap.packets, known: int | None = cap.known,
                counter: Callable[[Path, Path], Counts | None] | None = None, stdout: bool = True,
                outdir: bool = False, note: str = "") -> None:
            rows.append(RowSpec(f"{name}:{tool}", name, tool, tuple(argv) if argv is not None else None, skip,
                                nbytes, packets, known, counter, stdout, outdir, note))

        ours = [PY, "-m", "analyzer", "analyze", *files, "-o", "{OUT}"]
        if jobs_ok:
            row("fwdaudit-j1", [*ours, "--jobs", "1"], counter=count_fwdaudit, outdir=True, note="--jobs 1")
        else:
            why = (f"analyze --help failed: {help_error}" if help_error
                   else "no --jobs option in analyze --help")
            row("fwdaudit-j1", ours, counter=count_fwdaudit, outdir=True, note=f"without --jobs ({why})")
        if not jobs_ok:
            row("fwdaudit-jN", None, skip="no --jobs option in analyze --help", counter=count_fwdaudit)
        elif ncpu < 2:
            row("fwdaudit-jN", None, skip="a single core", counter=count_fwdaudit)
        else:
            row("fwdaudit-jN", [*ours, "--jobs", str(ncpu)], counter=count_fwdaudit, outdir=True,
                note=f"--jobs {ncpu}")
        row("dpkt", [PY, str(BENCH / "baselines.py"), "dpkt", *files], counter=count_baseline,
            note="dpkt reader + per-flow reassembly")
        if cap.scapy is not None:
            p = cap.scapy
            row("scapy", [PY, str(BENCH / "baselines.py"), "scapy", str(p.files[0])], counter=count_baseline,
                nbytes=int(p.manifest["bytes"]), packets=int(p.manifest["packets"]),
                known=int(p.manifest["known_total"]), note=cap.scapy_note)
        if len(files) == 1:
            row("tshark", ["tshark", "-r", files[0], "-n", *TSHARK_DECODE_AS, "-Y", TSHARK_FILTER,
                           "-T", "fields", *[a for f in TSHARK_FIELDS for a in ("-e", f)]],
                counter=count_tshark, note="display filter, LMTP port decoded as SMTP")
            row("tcpdump", ["tcpdump", "-r", files[0], "-w", os.devnull, TCPDUMP_FILTER], known=None,
                stdout=False, note="C + BPF port filter, output discarded")
        else:
            listing = cap.generated.files[0].parent / "files.txt"
            listing.write_text("".join(f + "\n" for f in files))
            row("tcpdump", ["tcpdump", "-V", str(listing), "-w", os.devnull, TCPDUMP_FILTER], known=None,
                stdout=False, note="C + BPF port filter, -V file list")
        row("cat", ["cat", *files], known=None, stdout=False, note="page-cache read")
    return rows


def row_catalog() -> list[RowSpec]:
    """Every row that can exist (no commands), to select rows before any capture is generated."""
    return [RowSpec(f"{n}:{t}", n, t, None, None, 0, 0, None, None, False, False, "")
            for n in CAPTURES for t in TOOLS if not (n == "manyfiles" and t in SINGLE_FILE_TOOLS)]


def select(rows: list[RowSpec], only: str | None) -> list[RowSpec]:
    """Rows whose id, capture or tool matches one of the comma-separated glob patterns."""
    if not only:
        return rows
    pats = [p.strip() for p in only.split(",") if p.strip()]
    return [r for r in rows if any(fnmatch.fnmatch(r.row_id, p) or fnmatch.fnmatch(r.capture, p)
                                   or fnmatch.fnmatch(r.tool, p) for p in pats)]


def warm(paths: Iterable[Path]) -> float:
    """Read files once so that they are in the page cache; returns seconds."""
    t0 = time.perf_counter()
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.read(WARM_CHUNK):
                pass
    return time.perf_counter() - t0


def measure(spec: RowSpec, reps: int, timeout: float | None, workdir: Path) -> RowResult:
    """Run one row ``reps`` times (stops at the first failure)."""
    res = RowResult(spec)
    if spec.argv is None:
        res.status, res.error = "skipped", spec.skip
        return res
    tag = spec.row_id.replace(":", "_")
    stdout = workdir / f"{tag}.out"
    stderr = workdir / f"{tag}.err"
    for rep in range(reps):
        outdir = workdir / f"{tag}.report{rep}"
        argv = [a.replace("{OUT}", str(outdir)) for a in spec.argv]
        if spec.outdir:
            shutil.rmtree(outdir, ignore_errors=True)
        run = run_child(argv, stdout if spec.stdout else None, stderr, timeout)
        res.runs.append(run)
        if run.rc != 0 or run.timed_out:  # no --fail-on is passed, so fwdaudit's exit 1 is a crash too
            res.status = "failed"
            res.error = (f"timed out after {timeout:.0f} s" if run.timed_out
                         else f"exit {run.rc}: {last_line(stderr)}")
            return res
        if rep == reps - 1 and spec.counter is not None:
            res.found = spec.counter(stdout, outdir)
        if spec.outdir and rep < reps - 1:
            shutil.rmtree(outdir, ignore_errors=True)
    return res


# --------------------------------------------------------------------------------------------
# Machine and report


def _first_line(argv: Sequence[str]) -> str:
    try:
        proc = subprocess.run(list(argv), capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    lines = [ln for ln in (proc.stdout + proc.stderr).decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[0].strip() if lines else "unknown"


def machine() -> dict[str, str]:
    """CPU, cores, memory, OS, tool versions and the analyzer's commit."""
    cpu = "unknown"
    mem = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    versions = {}
    for pkg in ("dpkt", "scapy"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    commit = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "--no-optional-locks", "-C", str(REPO), "status", "--porcelain", "--", "analyzer"],
        capture_output=True,
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": f"{os.cpu_count()} (usable: {len(os.sched_getaffinity(0))})",
        "memory": mem,
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "tshark": _first_line(["tshark", "--version"]),
        "tcpdump": _first_line(["tcpdump", "--version"]),
        "dpkt": versions["dpkt"],
        "scapy": versions["scapy"],
        "analyzer": commit + (" (analyzer/ has uncommitted changes)" if dirty else ""),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def capture_line(cap: Capture) -> str:
    """One sentence describing a capture."""
    m = cap.generated.manifest
    k = m["known"]
    st = m.get("stats", {})
    text = (f"{cap.name}: {cap.bytes / gen.MB:,.1f} MB in {len(cap.generated.files)} file(s), "
            f"{cap.packets:,} packets, {cap.known:,} known commands "
            f"(ID {k['ID']:,}, XCLIENT {k['XCLIENT']:,}; "
            f"XRCPTFORWARD {k['XRCPTFORWARD']:,} not counted)")
    if st:
        text += (f"; {st.get('split_lines', 0):,} carrier lines split in two segments, "
                 f"{st.get('reordered_lines', 0):,} split and reordered")
    if cap.name == "noise" and "mail_share_actual" in m:
        text += f"; mail {100 * m['mail_share_actual']:.1f}% of bytes"
    if cap.name == "mail200k":
        text += f"; {m['params']['mail_flows']:,} mail flows open at once"
    if cap.name == "manyfiles":
        text += f"; split by {m['params']['split']}"
    return text


HEADERS = ("row", "wall s", "MB/s", "kpkt/s", "CPU s", "MB/CPU-s", "peak RSS MB", "found/known", "j1 ÷ row",
           "jN ÷ row", "note")


def table_rows(results: list[RowResult]) -> list[list[str]]:
    """The table cells, one list per row (ratios are our MB/s divided by the row's)."""
    ours = {(r.spec.capture, r.spec.tool): r.mbps for r in results if r.spec.tool in OURS}
    out = []
    for r in results:
        ratios = []
        for tool in OURS:
            mine = ours.get((r.spec.capture, tool))
            theirs = r.mbps
            ratios.append(f"{mine / theirs:.2f}x" if mine and theirs and r.spec.tool != tool else "-")
        if r.status == "ok":
            found = "-"
            if r.spec.known is not None:
                if r.found_total is None:
                    found = "not reported"
                else:
                    share = f" ({100 * r.found_total / r.spec.known:.1f}%)" if r.spec.known else ""
                    found = f"{r.found_total:,}/{r.spec.known:,}{share}"
            note = r.spec.note
        else:
            found = "-"
            note = f"{r.status.upper()}: {r.error}"
        cpu = r.cpu
        per_cpu = r.spec.bytes / gen.MB / cpu if cpu else None
        kpps = r.pps / 1000 if r.pps else None
        out.append([r.spec.row_id, _fmt(r.wall, ".2f"), _fmt(r.mbps, ".1f"), _fmt(kpps, ".1f"),
                    _fmt(cpu, ".2f"), _fmt(per_cpu, ".1f"), _fmt(r.rss_mb, ".0f"), found, *ratios, note])
    return out


def render_text(mach: dict[str, str], caps: dict[str, Capture], results: list[RowResult], reps: int,
                warning: str | None) -> str:
    """Plain aligned table for the terminal."""
    lines = ["Machine:"] + [f"  {k}: {v}" for k, v in mach.items()]
    lines.append(f"Median of {reps} run(s) after a page-cache warm-up; MB = 10^6 bytes; "
                 f"ratios = fwdaudit MB/s / row MB/s.")
    if warning:
        lines.append("WARNING: " + warning)
    for name, cap in caps.items():
        rows = [r for r in results if r.spec.capture == name]
        if not rows:
            continue
        cells = table_rows(rows)
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(HEADERS[:-1])]
        lines.append("")
        lines.append(capture_line(cap))
        for c in [list(HEADERS), *cells]:
            padded = (v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths)))
            lines.append("  ".join(padded) + "  " + c[-1])
    return "\n".join(lines) + "\n"


def render_markdown(mach: dict[str, str], caps: dict[str, Capture], results: list[RowResult], reps: int,
                    warning: str | None, command: str) -> str:
    """The same tables as Markdown."""
    out = ["# fwdaudit benchmark", "", f"Command: `{command}`", ""]
    out += [f"- **{k}**: {v}" for k, v in mach.items()]
    out += ["", f"Median wall time of {reps} run(s), after one warm-up read of the files (page cache). "
            "MB = 10^6 bytes. `j1 ÷ row` / `jN ÷ row`: fwdaudit's MB/s (`--jobs 1` / all cores) divided by "
            "the row's MB/s. MB/CPU-s: bytes per second of CPU time (user + system, all processes of "
            "the row; "
            "steadier than wall time on a busy machine). Peak RSS: the larger of the command's own peak "
            "(GNU time `%M`) and the sampled sum over its process tree. found/known: ID + XCLIENT "
            "commands found / written by the generator."]
    if warning:
        out += ["", f"**Warning:** {warning}"]
    for name, cap in caps.items():
        rows = [r for r in results if r.spec.capture == name]
        if not rows:
            continue
        out += ["", f"## {name}", "", capture_line(cap), ""]
        out.append("| " + " | ".join(HEADERS) + " |")
        out.append("|" + "|".join("---" if i in (0, len(HEADERS) - 1) else "---:"
                                  for i in range(len(HEADERS))) + "|")
        for c in table_rows(rows):
            out.append("| " + " | ".join(v.replace("|", "\\|") for v in c) + " |")
    return "\n".join(out) + "\n"


def to_json(mach: dict[str, str], caps: dict[str, Capture], results: list[RowResult]) -> dict[str, Any]:
    """Machine-readable results."""
    return {
        "machine": mach,
        "captures": {n: {"files": [str(p) for p in c.generated.files], "bytes": c.bytes,
                         "packets": c.packets, "known": c.generated.manifest["known"], "known_total": c.known}
                     for n, c in caps.items()},
        "rows": [{
            "row": r.spec.row_id, "status": r.status, "error": r.error, "argv": r.spec.argv,
            "bytes": r.spec.bytes, "packets": r.spec.packets, "known": r.spec.known, "found": r.found,
            "wall_median": r.wall, "mb_per_s": r.mbps, "packets_per_s": r.pps, "cpu_median": r.cpu,
            "peak_rss_mb": r.rss_mb,
            "runs": [{"wall": x.wall, "cpu": x.cpu, "maxrss_kb": x.maxrss_kb, "tree_rss_kb": x.tree_rss_kb,
                      "rc": x.rc} for x in r.runs],
        } for r in results],
    }


# --------------------------------------------------------------------------------------------


def prepare(names: set[str], args: argparse.Namespace) -> dict[str, Capture]:
    """Generate (or load from the cache) the captures in ``names``, in table order."""
    caps: dict[str, Capture] = {}
    noise: gen.Generated | None = None
    if names & {"noise", "manyfiles"}:
        noise = gen.build_noise(gen.NoiseParams(size_mb=args.size_mb), args.cache)
    if "noise" in names and noise is not None:
        pre = gen.build_prefix(noise, args.scapy_mb, args.cache)
        note = (f"first {pre.manifest['bytes'] / gen.MB:.0f} MB only "
                f"({pre.manifest['known_total']} known there)"
                if pre is not noise else "PcapReader + per-flow reassembly")
        caps["noise"] = Capture("noise", noise, pre, note)
    if "mail200k" in names:
        m = gen.build_mail200k(gen.Mail200kParams(mail_flows=args.mail_flows), args.cache)
        if args.scapy_mail_flows < args.mail_flows:
            small = gen.build_mail200k(gen.Mail200kParams(mail_flows=args.scapy_mail_flows), args.cache)
            note = (f"a {args.scapy_mail_flows:,}-flow mail capture "
                    f"({small.manifest['bytes'] / gen.MB:.0f} MB, same generator, all flows open at once)")
        else:
            small, note = m, "PcapReader + per-flow reassembly"
        caps["mail200k"] = Capture("mail200k", m, small, note)
    if "manyfiles" in names and noise is not None:
        many = gen.build_manyfiles(noise, args.files, args.split, args.cache)
        caps["manyfiles"] = Capture("manyfiles", many, None)
    return caps


def _terminate(signum: int, _frame: object) -> None:
    """SIGTERM: unwind (run_child kills the running command's process group), exit 128 + signal."""
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Generate, measure, print (and optionally write Markdown/JSON)."""
    ap = argparse.ArgumentParser(description="fwdaudit benchmark (see bench/README.md)")
    ap.add_argument("--size-mb", type=int, default=1024, help="noise capture size in MB (default 1024)")
    ap.add_argument("--reps", type=int, default=3, help="runs per row; the median is reported (default 3)")
    ap.add_argument("--markdown", type=Path, help="also write the table as Markdown to this file")
    ap.add_argument("--json", type=Path, help="also write all measurements as JSON to this file")
    ap.add_argument("--only", help="comma-separated glob patterns on row id, capture or tool "
                                   "(e.g. 'noise', 'dpkt', 'noise:fwdaudit-*')")
    ap.add_argument("--scapy-mb", type=int, default=30,
                    help="scapy reads the first N MB of noise (default 30)")
    ap.add_argument("--scapy-mail-flows", type=int, default=5000,
                    help="scapy reads a mail capture of N flows instead of mail200k (default 5000)")
    ap.add_argument("--mail-flows", type=int, default=200_000, help="flows in mail200k (default 200000)")
    ap.add_argument("--files", type=int, default=16, help="files in manyfiles (default 16)")
    ap.add_argument("--split", choices=("flow", "time"), default="flow",
                    help="how manyfiles splits noise: by flow hash (default) or contiguous time ranges")
    ap.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)),
                    help="N for the fwdaudit-jN rows (default: usable cores)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds before one run is killed")
    ap.add_argument("--cache", type=Path, default=gen.DEFAULT_CACHE, help="capture cache directory")
    ap.add_argument("--list", action="store_true", help="list the selected row ids and exit")
    args = ap.parse_args(list(argv) if argv is not None else None)
    signal.signal(signal.SIGTERM, _terminate)
    if min(args.reps, args.size_mb, args.scapy_mb, args.files, args.mail_flows, args.scapy_mail_flows) < 1:
        ap.error("--reps, --size-mb, --scapy-mb, --scapy-mail-flows, --files and --mail-flows "
                 "must be positive")

    if args.list:
        for spec in select(row_catalog(), args.only):
            print(spec.row_id)
        return 0
    needed = {r.capture for r in select(row_catalog(), args.only)}
    if not needed:
        ap.error(f"--only {args.only!r} selects no row (try --list)")
    jobs_ok, help_error = analyze_help()
    warning = None
    if args.size_mb < MIN_PUBLISHED_MB and needed & {"noise", "manyfiles"}:
        warning = (f"noise is {args.size_mb} MB, below the {MIN_PUBLISHED_MB} MB minimum for published "
                   "figures; use these numbers for development only")
        print("WARNING: " + warning, file=sys.stderr)
    t0 = time.perf_counter()
    caps = prepare(needed, args)
    print(f"[bench] captures ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    mach = machine()
    rows = select(build_rows(caps, args.jobs, jobs_ok, help_error), args.only)
    results: list[RowResult] = []
    workdir = Path(tempfile.mkdtemp(prefix="fwdaudit-bench-"))
    try:
        for name, cap in caps.items():
            mine = [r for r in rows if r.capture == name]
            if not mine:
                continue
            files = list(cap.generated.files) + ([cap.scapy.files[0]] if cap.scapy is not None else [])
            print(f"[bench] {name}: warm-up read {warm(files):.1f} s", file=sys.stderr)
            for spec in mine:
                res = measure(spec, args.reps, args.timeout, workdir)
                results.append(res)
                print(f"[bench] {spec.row_id}: {res.status}"
                      + (f" {res.wall:.2f} s, {res.mbps:.1f} MB/s" if res.wall and res.mbps else "")
                      + (f" ({res.error})" if res.error else ""), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    mach["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    sys.stdout.write(render_text(mach, caps, results, args.reps, warning))
    command = "python3 bench/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.markdown:
        args.markdown.write_text(render_markdown(mach, caps, results, args.reps, warning, command.strip()))
    if args.json:
        args.json.write_text(json.dumps(to_json(mach, caps, results), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
