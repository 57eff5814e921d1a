"""Fixtures of the hostile-input suite: the profile switch, the generated corpus, a parallel runner.

``FWDAUDIT_FUZZ=long`` selects the long profile (see :mod:`hostile`). The corpus is
generated once per session into a temporary directory (it is deterministic, so nothing
is committed), and every selected case is started at once on a pool of
:data:`RUN_WORKERS` threads, heaviest first, each thread driving one analyzer child
process; a test then waits only for its own case. A one-line summary (runs, worst time
per MB, highest peak memory) is printed at the end of the session.
"""

from __future__ import annotations

import gzip
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import KNOWN_BUGS, PROFILE, CliRun, analyze_args, run_cli, time_budget
from .generate import CASES, PROFILES, Case, Scale, write_case

RUN_WORKERS = max(1, min(2, os.cpu_count() or 1))  # issue 7: the CI profile is sized for 2 cores
GUNZIP_READ = 1 << 20  # bytes per read when measuring a gzip case's inflated size


@dataclass(frozen=True, slots=True)
class CaseRun:
    """A case file and how the analyzer treated it."""

    case: Case
    path: Path  #: the generated capture
    out_dir: Path  #: the -o directory of the run
    size: int  #: bytes the time budget is computed from (inflated size for gzip bombs)
    run: CliRun

    @property
    def seconds_per_mb(self) -> float:
        """Run time per MB of input (the issue's linearity measure)."""
        return self.run.elapsed_s / max(self.size / 1e6, 1e-6)


def inflated_size(path: Path) -> int:
    """Bytes a gzip file inflates to."""
    n = 0
    with gzip.open(path, "rb") as fh:
        while chunk := fh.read(GUNZIP_READ):
            n += len(chunk)
    return n


class HostileRunner:
    """Generates cases on demand and runs each once, in parallel; results are cached."""

    def __init__(self, root: Path, scale: Scale) -> None:
        self.root = root
        self.scale = scale
        self._pool = ThreadPoolExecutor(max_workers=RUN_WORKERS, thread_name_prefix="hostile")
        self._futures: dict[str, Future[CaseRun]] = {}
        self._lock = threading.Lock()
        self.finished: list[CaseRun] = []

    def submit(self, names: list[str]) -> None:
        """Start the given cases (heaviest first) unless already started."""
        order = sorted(names, key=lambda n: (not CASES[n].big, n))
        with self._lock:
            for name in order:
                if name not in self._futures:
                    self._futures[name] = self._pool.submit(self._run, CASES[name])

    def result(self, name: str) -> CaseRun:
        """Wait for one case."""
        self.submit([name])
        return self._futures[name].result()

    def _run(self, case: Case) -> CaseRun:
        path = write_case(case, self.root / "cases", self.scale)
        size = inflated_size(path) if case.size_basis == "gunzip" else path.stat().st_size
        out_dir = self.root / "out" / case.name
        run = run_cli(analyze_args(path, out_dir), timeout=time_budget(size))
        cr = CaseRun(case, path, out_dir, size, run)
        with self._lock:
            self.finished.append(cr)
        return cr

    def close(self) -> None:
        """Stop: cancel what has not started, wait for the rest."""
        self._pool.shutdown(wait=True, cancel_futures=True)


_RUNNER: list[HostileRunner] = []  # the session's runner, for the terminal summary


@pytest.fixture(scope="session")
def hostile_scale() -> Scale:
    """Sizes of the big cases in the current profile."""
    return PROFILES[PROFILE]


@pytest.fixture(scope="session")
def hostile_runner(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, hostile_scale: Scale
) -> Iterator[HostileRunner]:
    """The session's runner, with every selected corpus case already started."""
    root = tmp_path_factory.mktemp("hostile")
    (root / "cases").mkdir()
    runner = HostileRunner(root, hostile_scale)
    _RUNNER.append(runner)
    selected = []
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        name = callspec.params.get("case_name") if callspec is not None else None
        bug = KNOWN_BUGS.get(name) if isinstance(name, str) else None
        if (
            isinstance(name, str)
            and name in CASES
            and (PROFILE == "long" or bug is None or not bug.expensive)
        ):
            selected.append(name)
    runner.submit(selected)
    yield runner
    runner.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line with the numbers issue 7 asks for."""
    if not _RUNNER or not _RUNNER[0].finished:
        return
    runs = _RUNNER[0].finished
    sized = [r for r in runs if r.size >= 1_000_000]  # per-MB figures of tiny files only measure start-up
    if sized:
        slow = max(sized, key=lambda r: r.seconds_per_mb)
        per_mb = f"{slow.seconds_per_mb:.2f} s/MB ({slow.case.name}, {slow.size / 1e6:.1f} MB in {slow.run.elapsed_s:.1f} s)"
    else:
        per_mb = "n/a (no input of 1 MB or more)"
    big = max(runs, key=lambda r: r.run.maxrss_mb)
    bad = [r.case.name for r in runs if r.run.problems(unusable=r.case.unusable)]
    terminalreporter.write_line(
        f"hostile corpus ({PROFILE}): {len(runs)} runs, {len(bad)} misbehaved; "
        f"longest per MB (inputs >= 1 MB): {per_mb}; "
        f"highest peak memory: {big.run.maxrss_mb:.0f} MB ({big.case.name})"
    )
