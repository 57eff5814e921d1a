"""The Dask engine on a real LocalCluster (worker processes): the report equals the local one, byte for byte."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from analyzer.config import Settings
from analyzer.errors import ConfigError
from analyzer.pipeline import analyze, finish
from analyzer.report.jsonout import dumps, report_data

distributed = pytest.importorskip("dask.distributed")

from test_parallel import PROJECT_CAPTURES, crossing_frames, pcap_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=50) as c:
        yield c


@pytest.fixture(scope="module")
def client(cluster: Any) -> Iterator[Any]:
    with distributed.Client(cluster) as cl:
        yield cl


@pytest.fixture(scope="module")
def crossing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dask") / "crossing.pcap"
    path.write_bytes(pcap_file(crossing_frames(seed=21)))
    return path


def _local(paths: list[str]) -> str:
    return dumps(report_data(analyze(paths, Settings())))


def test_split_files_on_the_cluster(client: Any, crossing: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Project captures and a capture whose flows cross the split points: ranges and partitions as Dask tasks."""
    from analyzer.dask_engine import analyze_dask

    paths = [str(crossing), *PROJECT_CAPTURES]
    parts = analyze_dask(paths, Settings(), client=client, jobs=2, progress=True, split_min_bytes=0)
    assert dumps(report_data(finish(parts, Settings()))) == _local(paths)
    err = capsys.readouterr().err
    assert "2 ranges, " in err and "one process" not in err, err
    assert "scanned 1 range(s) again" in err, err


def test_engine_dask_through_the_pipeline(cluster: Any, crossing: Path) -> None:
    """``analyze(engine="dask", scheduler=ADDRESS)``: connects, runs whole files as tasks, disconnects."""
    paths = [str(ROOT / "captures" / "sample.pcapng"), str(crossing)]
    got = analyze(paths, Settings(), engine="dask", scheduler=cluster.scheduler_address, jobs=2)
    assert dumps(report_data(got)) == _local(paths)


def test_engine_and_scheduler_are_checked() -> None:
    with pytest.raises(ConfigError, match="scheduler"):
        analyze([], Settings(), engine="dask")
    with pytest.raises(ConfigError, match="dask engine"):
        analyze([], Settings(), scheduler="tcp://127.0.0.1:8786")
    with pytest.raises(ConfigError, match="unknown engine"):
        analyze([], Settings(), engine="spark")


def test_dask_is_imported_only_for_the_dask_engine() -> None:
    code = (
        "import sys\n"
        "from analyzer.config import Settings\n"
        "from analyzer.pipeline import analyze\n"
        "import analyzer.cli, analyzer.parallel\n"
        f"analyze([{str(ROOT / 'captures' / 'sample.pcapng')!r}], Settings(), jobs=2)\n"
        "assert not any(m == 'dask' or m.startswith(('dask.', 'distributed')) for m in sys.modules), 'dask imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=300)
