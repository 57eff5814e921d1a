"""The per-capture work as tasks on an existing Dask distributed cluster.

Strategy: the stages are the ones of :mod:`analyzer.parallel` (whole files, or a large
classic pcap file split into ranges: plan, count, scan, flows), submitted with
``Client.submit`` instead of to a local process pool. Workers open the capture paths
they are given (a shared file system, or the same paths on every machine), so the
client never reads packet data. The packets a range's scan keeps stay in the memory
of the worker that scanned it (Dask spills them to its disk under memory pressure);
each flow-stage task asks for its partition of every range, which Dask moves between
workers. The small per-part results (flows, counters) come back to the client, which
does the cross-flow work (flow ids, records, rules and hop chains) once in
:func:`analyzer.pipeline.finish`. Dask is imported only here, and this module only when
``engine="dask"`` is asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from analyzer.config import Settings
from analyzer.errors import ConfigError
from analyzer.parallel import SPLIT_MIN_BYTES, Part, run_jobs


class DaskExecutor:
    """The :class:`analyzer.parallel.Executor` of a Dask ``Client``; spills stay in worker memory."""

    spill_root: str | None = None

    def __init__(self, client: Any) -> None:
        self.client = client

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A task on the cluster; futures among the arguments are resolved on the worker."""
        return self.client.submit(fn, *args, pure=False)

    def result(self, handle: Any) -> Any:
        """Wait for a future's value; a task's exception is raised here."""
        return handle.result()

    def apply(self, fn: Callable[..., Any], handle: Any, *args: Any) -> Any:
        """``fn(value, *args)`` as a task next to the value."""
        return self.client.submit(fn, handle, *args, pure=False)


def connect(scheduler: str | None) -> Any:
    """A ``dask.distributed.Client`` of the cluster whose scheduler listens at ``scheduler``."""
    if not scheduler:
        raise ConfigError("the dask engine needs the address of a running scheduler (--scheduler tcp://HOST:8786)")
    try:
        from dask.distributed import Client
    except ImportError:
        raise ConfigError("the dask engine needs dask.distributed: pip install 'dask[distributed]'") from None
    try:
        return Client(scheduler, timeout=30)  # type: ignore[no-untyped-call]
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None


def analyze_dask(paths: Sequence[str], settings: Settings, *, scheduler: str | None = None, client: Any = None,
                 jobs: int = 0, progress: bool = False, keep_streams: bool = False,
                 split_min_bytes: int = SPLIT_MIN_BYTES) -> list[Part]:
    """Per-capture results of every file, computed on the cluster.

    ``client`` (an existing ``Client``) is used as is; otherwise one is connected to
    ``scheduler`` and closed at the end. Large pcap files are split into ``jobs`` ranges
    (below 1: as many as the cluster has worker threads).
    """
    own = client is None
    if client is None:
        client = connect(scheduler)
    try:
        n = jobs if jobs >= 1 else max(1, sum(client.nthreads().values()))
        return run_jobs(paths, settings, DaskExecutor(client), jobs=n, progress=progress, keep_streams=keep_streams,
                        split_min_bytes=split_min_bytes)
    finally:
        if own:
            client.close()
