"""Several processes (or Dask workers) on one analysis, with the one-process result.

Strategy. Files go to processes whole: a pcapng file, a gzip-compressed file, a
classic pcap file below ``split_min_bytes``, and standard input are read by one
worker with the one-process engine (:func:`analyzer.pipeline.analyze_capture`);
inputs that add up to less than ``split_min_bytes`` are all read in this process
(a pool would cost more than it gains). A large classic pcap file is cut into byte
ranges and goes through four stages:

1. *Split.* Target offsets (size / n apart) are moved forward to the next offset where
   a chain of :data:`SPLIT_CHAIN` plausible record headers starts (the reader's resync
   rules: caplen within the limit and not above wirelen, sub-second field below one
   second, timestamp within a year of the first packet's).
2. *Count* (parallel). Each worker walks the record headers of its range ``[start, end)``;
   the records must tile the range exactly (the walk of range k-1 must end where range k
   starts), so a split point that is not a true record boundary can never go unnoticed.
   A range where the walk meets anything unusual is read again with the real pcap reader
   (fed the file header, then the range's bytes): damage that moves the reader
   (``caplen_too_large``, resync, trailing garbage, read errors), or a range other than
   the last ending inside a record, sends the whole file to one process. The counts give
   every range its first global frame number. The last range is not counted (its scan
   gives its frame count, and its reader's damage is checked the same way), and the
   first range is scanned while the others are counted.
3. *Scan* (parallel). Each worker reads its range again, frames numbered globally (so
   damage, decode issues and housekeeping frames are the one-process ones), decodes
   and filters with :class:`~analyzer.flows.table.Scanner`, and spills the packets that
   may matter to per-partition files (partition = hash of the unordered address/port
   pair). A range holding IP fragments sends the file to one process (reassembly
   crosses ranges). A flow picked by content in an earlier range that a later range
   ignored (its first payload there did not look like mail) is a *conflict*: that
   range is scanned again with those flows forced in.
4. *Flows* (parallel). Each partition's packets, range after range (frame order), go
   through :meth:`~analyzer.flows.table.Engine.run_decoded` with the housekeeping
   frames of the whole file. Flows are independent, so each partition gives exactly
   its flows. The caps that count all flows together (``max_flows``, pending and
   ignored flows, ``total_buffer_bytes``) are checked against the sum over partitions
   at every housekeeping frame (and the sum of the peaks): if the one-process engine
   could have hit one, the flow stage runs again in one process over all partitions,
   merged by frame number. Results travel pickled with a dispatch table that sends the
   slotted dataclasses as field tuples, with the cyclic collector paused
   (:func:`encode_result`): the default pickling of such objects cost more than
   computing them. With local processes the parent, idle otherwise, runs the first
   partition itself, so its flows are never pickled.

Exactness of the scan stage (the reason a range may drop a packet) is argued in the
:class:`~analyzer.flows.table.Scanner` docstring; the property test
``tests/test_parallel.py::test_scanner_and_partitions_equal_one_engine`` checks it on
random packet lists cut at random places.

Counters, damage records, decode issues and flows are merged in range or frame order,
so the report is byte for byte the one-process report (the tests compare
``report.json``). Measured numbers are in ``docs/dask.md``.
"""

from __future__ import annotations

import contextlib
import copyreg
import dataclasses
import gc
import io
import operator
import os
import pickle
import shutil
import stat
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from analyzer.capture.decode import Decoder, DecodeIssue
from analyzer.capture.pcap import MAXIMUM_SNAPLEN, PCAP_MAGICS, RESYNC_WINDOW_S, SNAPLEN_CAP, VERSION_MAJOR, \
    PcapCapture
from analyzer.capture.reader import GZIP_MAGIC, MAX_PLAUSIBLE_WIRELEN, CaptureInfo, Damage, Stream, os_reason
from analyzer.config import Settings
from analyzer.flows.model import FlowSummary
from analyzer.flows.table import MAX_TRACKED_FLOWS, CaptureStats, Decoded, Engine, Scanner, ScanResult, key_hash, \
    merge_decoded
from analyzer.pipeline import CaptureResult, analyze_capture, gc_tuned, run_spool, unusable_reason

#: classic pcap files smaller than this are read whole by one worker (ours: below it the
#: split, count and spill stages cost more than a second core gains; measured in docs/dask.md)
SPLIT_MIN_BYTES = 64 * 1024 * 1024
#: a split point needs this many consecutive plausible record headers (ours) ...
SPLIT_CHAIN = 16
#: ... or at least this many, running to the end of the window (large records) (ours)
SPLIT_CHAIN_MIN = 4
#: bytes examined after a target offset for a split point before giving that split up (ours)
SPLIT_WINDOW = 2 * 1024 * 1024
#: packets per pickled chunk of a spill (ours: chunks of about 1-4 MB)
SPILL_CHUNK = 4096
#: bytes read at a time when counting records (ours)
COUNT_CHUNK = 8 * 1024 * 1024
PCAP_FILE_HEADER = 24  # pcap-savefile(5): file header length
NS_PER_S = 1_000_000_000  # nanoseconds per second
#: damage codes after which a reader skipped or stopped somewhere we cannot re-split exactly
_MOVING_DAMAGE = frozenset({"caplen_too_large", "resynced", "trailing_garbage", "read_error", "gzip_error"})
#: damage codes a range that is not the last may not have: its last record runs past its end
_END_DAMAGE = frozenset({"truncated_header", "truncated_record"})

Part = tuple[CaptureResult, list[FlowSummary]]


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# ---------------------------------------------------------------------------------------------- split points


@dataclass(frozen=True, slots=True)
class PcapLayout:
    """What the file header of a classic pcap file fixes for every record."""

    header: bytes  #: the 24-byte file header, given to every range's reader
    record_format: str  #: ``struct`` format of a record header (byte order)
    hlen: int  #: record header length (16, or 24 for the Kuznetzov variant)
    units: int  #: sub-second units per second
    limit: int  #: largest plausible caplen (the reader's resync limit)
    size: int  #: file size


def pcap_layout(path: str) -> PcapLayout | None:
    """The layout of a plain (not compressed) classic pcap regular file of version 2.x; None for anything else."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # never read a pipe or a device here: bytes would be lost
            return None
        with open(path, "rb") as f:
            head = f.read(PCAP_FILE_HEADER)
            size = os.fstat(f.fileno()).st_size
    except (OSError, ValueError):  # ValueError: a path with a NUL byte
        return None
    if len(head) < PCAP_FILE_HEADER or head.startswith(GZIP_MAGIC) or head[:4] not in PCAP_MAGICS:
        return None
    order, resolution, hlen = PCAP_MAGICS[head[:4]]
    e = "<" if order == "little" else ">"
    major, snaplen = struct.unpack_from(e + "H", head, 4)[0], struct.unpack_from(e + "I", head, 16)[0]
    if major != VERSION_MAJOR:
        return None  # the reader refuses it: one process reports why
    return PcapLayout(
        header=head, record_format=e + "IIII", hlen=hlen,
        units=1_000_000 if resolution == "us" else NS_PER_S,
        limit=max(min(snaplen, SNAPLEN_CAP), MAXIMUM_SNAPLEN), size=size,
    )


def _plausible(lay: PcapLayout, buf: bytes, q: int, ref_sec: int | None) -> int:
    """Record length at ``q`` if its header is plausible (else -1); -2 when ``buf`` ends inside the header."""
    if q + lay.hlen > len(buf):
        return -2
    sec: int
    cap: int
    sec, frac, cap, wire = struct.unpack_from(lay.record_format, buf, q)
    if not (0 < cap <= lay.limit and cap <= wire <= MAX_PLAUSIBLE_WIRELEN and frac < lay.units):
        return -1
    if ref_sec is not None and abs(sec - ref_sec) > RESYNC_WINDOW_S:
        return -1
    return lay.hlen + cap


def _boundary_after(f: BinaryIO, lay: PcapLayout, target: int, ref_sec: int | None) -> int | None:
    """The first offset at or after ``target`` where a chain of plausible records starts.

    The chain must be :data:`SPLIT_CHAIN` records long, or end exactly at the end of the
    file, or run past the window after :data:`SPLIT_CHAIN_MIN` records. A wrong guess
    costs only speed: the count stage notices it and the file goes to one process.
    """
    f.seek(target)
    buf = f.read(SPLIT_WINDOW)
    at_eof = target + len(buf) >= lay.size
    for q in range(len(buf)):
        p = q
        chain = 0
        ok = False
        while True:
            n = _plausible(lay, buf, p, ref_sec)
            if n < 0:
                ok = (n == -2 and chain >= SPLIT_CHAIN_MIN) or (at_eof and p == len(buf) and chain > 0)
                break
            p += n
            chain += 1
            if chain >= SPLIT_CHAIN or (p >= len(buf) and chain >= SPLIT_CHAIN_MIN) or (at_eof and p == len(buf)):
                ok = True
                break
            if p > len(buf):
                break
        if ok:
            return target + q
    return None


def split_points(path: str, lay: PcapLayout, n: int) -> list[int]:
    """Range boundaries ``[24, s1, ..., size]`` for ``n`` ranges (fewer when no boundary is found)."""
    points = [PCAP_FILE_HEADER]
    try:
        with open(path, "rb") as f:
            f.seek(PCAP_FILE_HEADER)
            first = f.read(lay.hlen)
            ref = struct.unpack_from(lay.record_format, first, 0)[0] if len(first) == lay.hlen else None
            for k in range(1, n):
                target = max(PCAP_FILE_HEADER + k * (lay.size - PCAP_FILE_HEADER) // n, points[-1] + 1)
                if target >= lay.size:
                    break
                b = _boundary_after(f, lay, target, ref)
                if b is not None and b > points[-1] and b < lay.size:
                    points.append(b)
    except OSError:
        return [PCAP_FILE_HEADER, lay.size]
    points.append(lay.size)
    return points


# ---------------------------------------------------------------------------------------------- range readers


class _RangeSource:
    """A byte source giving the pcap file header, then the file's bytes from ``start`` to ``end``."""

    __slots__ = ("_f", "_head", "_left", "error", "error_code", "raw_bytes")

    def __init__(self, f: BinaryIO, header: bytes, start: int, end: int) -> None:
        self._f = f
        self._head = header
        self._left = end - start
        self.error: str | None = None
        self.error_code = "read_error"
        self.raw_bytes = 0
        f.seek(start)

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; b"" at the end of the range or after an error."""
        if self._head:
            out, self._head = self._head, b""
            return out
        if self._left <= 0:
            return b""
        try:
            data = self._f.read(min(n, self._left))
        except (OSError, ValueError) as exc:
            self.error = os_reason(exc)
            self._left = 0
            return b""
        if not data:
            self._left = 0
            return b""
        self._left -= len(data)
        self.raw_bytes += len(data)
        return bytes(data)


def _open_range(path: str, lay: PcapLayout, start: int, end: int, f: BinaryIO) -> PcapCapture:
    stream = Stream(_RangeSource(f, lay.header, start, end))
    return PcapCapture(stream, path, None, lay.size, None)


def _shift_damage(damage: list[Damage], start: int, first: bool) -> list[Damage]:
    """Damage of a range reader with file offsets (the file header is reported by the first range only)."""
    out = []
    for d in damage:
        if d.code == "unusual_version":
            if first:
                out.append(d)
            continue
        out.append(Damage(d.offset + start - PCAP_FILE_HEADER, d.frame, d.code, d.detail))
    return out


@dataclass(slots=True)
class RangeCount:
    """The count stage's answer for one range."""

    packets: int
    codes: list[str]  #: damage codes found (walk-affecting ones make the file go to one process)
    error: str | None  #: why the range cannot be used


def count_range(path: str, lay: PcapLayout, start: int, end: int) -> RangeCount:
    """Count the records of ``[start, end)`` (stage 2).

    Record headers are walked directly; a range where that walk meets anything the
    reader treats specially (a caplen above the limit, a record running past the range
    end) is counted again with the real reader, which records the same damage as one
    reader of the whole file would.
    """
    n = _walk_records(path, lay, start, end)
    if n is not None:
        return RangeCount(n, [], None)
    return _count_with_reader(path, lay, start, end)


def _walk_records(path: str, lay: PcapLayout, start: int, end: int) -> int | None:
    """Number of records that tile ``[start, end)`` exactly, all with a caplen within the limit; else None."""
    caplen = struct.Struct(lay.record_format[0] + "I")
    hl = lay.hlen
    limit = lay.limit
    n = 0
    try:
        with open(path, "rb", buffering=0) as f:
            f.seek(start)
            buf = b""
            base = start  # file offset of buf[0]
            q = start
            while q < end:
                i = q - base
                if i + hl > len(buf):
                    if i < len(buf):  # a header straddles the buffer end: keep its start
                        keep = buf[i:]
                        pos = base + len(buf)
                    else:  # the last record's data ran past the buffer: skip to the next header
                        keep = b""
                        pos = q
                        f.seek(q)
                    more = f.read(min(COUNT_CHUNK, end - pos))
                    if not more:
                        return None
                    buf = keep + more
                    base = q
                    continue
                cap = caplen.unpack_from(buf, i + 8)[0]
                if cap > limit:
                    return None
                q += hl + cap
                n += 1
    except OSError:
        return None
    return n if q == end else None


def _count_with_reader(path: str, lay: PcapLayout, start: int, end: int) -> RangeCount:
    try:
        with open(path, "rb", buffering=0) as f:
            cap = _open_range(path, lay, start, end, f)
            n = 0
            for _ in cap.packets():
                n += 1
            cap.close()
            return RangeCount(n, [d.code for d in cap.info.damage], None)
    except OSError as exc:
        return RangeCount(0, [], os_reason(exc))


@dataclass(slots=True)
class RangeScan:
    """The scan stage's answer for one range."""

    scan: ScanResult
    info: CaptureInfo
    damage: list[Damage]  #: with file offsets and global frame numbers
    issues: list[DecodeIssue]
    issue_counts: dict[str, int]
    counts: dict[str, int]
    spills: list[Any]  #: per partition: a spill file path, or a list of pickled chunks (in-memory spill)
    error: str | None = None


class _Spill:
    """Per-partition buffers of forwarded packets, pickled in chunks to files or kept as bytes."""

    def __init__(self, parts: int, directory: str | None, tag: str) -> None:
        self.buffers: list[list[Decoded]] = [[] for _ in range(parts)]
        self.files: list[BinaryIO] | None = None
        self.paths: list[str] = []
        self.chunks: list[list[bytes]] = [[] for _ in range(parts)]
        if directory is not None:
            self.paths = [os.path.join(directory, f"{tag}-p{p}.spill") for p in range(parts)]
            self.files = [open(p, "wb") for p in self.paths]

    def emit(self, part: int, pkt: Decoded) -> None:
        buf = self.buffers[part]
        buf.append(pkt)
        if len(buf) >= SPILL_CHUNK:
            self._flush(part)

    def _flush(self, part: int) -> None:
        buf = self.buffers[part]
        if not buf:
            return
        data = pickle.dumps(buf, protocol=pickle.HIGHEST_PROTOCOL)
        buf.clear()
        if self.files is not None:
            self.files[part].write(data)
        else:
            self.chunks[part].append(data)

    def close(self) -> list[Any]:
        for p in range(len(self.buffers)):
            self._flush(p)
        if self.files is not None:
            for f in self.files:
                f.close()
            return list(self.paths)
        return [list(c) for c in self.chunks]


def read_spill(ref: Any) -> Iterator[Decoded]:
    """The packets of one spill (a file path, or a list of pickled chunks), in frame order."""
    if isinstance(ref, str):
        with open(ref, "rb") as f:
            while True:
                try:
                    chunk: list[Decoded] = pickle.load(f)
                except EOFError:
                    return
                yield from chunk
    else:
        for data in ref:
            yield from pickle.loads(data)


def scan_range(path: str, lay: PcapLayout, start: int, end: int, frame0: int, settings: Settings, parts: int,
               forced: frozenset[bytes], spill_dir: str | None, tag: str) -> RangeScan:
    """Decode and filter one range, frames numbered from ``frame0`` + 1; spill per partition (stage 3)."""
    spill = _Spill(parts, spill_dir, tag)
    decoder = Decoder(max_issues=Decoder().max_issues + 1)  # room for the range's own unsupported_linktype issue
    try:
        with open(path, "rb", buffering=0) as f:
            cap = _open_range(path, lay, start, end, f)
            cap.info.packets = frame0  # the reader numbers frames on from here (pcap.py: pk = info.packets)
            res = Scanner(settings, parts, forced).run(cap.packets(), frame0, decoder, spill.emit)
            cap.close()
    except OSError as exc:
        spill.close()
        return RangeScan(ScanResult(), CaptureInfo(path, "pcap", None, "little", "us", None), [], [], {}, {},
                         [], os_reason(exc))
    refs = spill.close()
    error = None
    if cap.info.packets != frame0 + res.frames:
        error = "the reader did not number frames from the range's first frame"
    return RangeScan(res, cap.info, _shift_damage(cap.info.damage, start, start == PCAP_FILE_HEADER),
                     list(decoder.issues), dict(decoder.issue_counts), dict(decoder.counts), refs, error)


@dataclass(slots=True)
class FlowsOut:
    """The flow stage's answer for one partition."""

    flows: list[FlowSummary]
    stats: CaptureStats


def flow_stage(spills: Sequence[Any], settings: Settings, index: int, housekeeping: Sequence[tuple[int, int]],
               frames: int, keep_streams: bool) -> FlowsOut:
    """Run the flow stage over one partition's spills (one per range, in range order) (stage 4)."""
    packets = (p for ref in spills for p in read_spill(ref))
    with gc_tuned():
        flows, stats = Engine(settings, keep_streams=keep_streams).run_decoded(packets, index, housekeeping, frames)
    return FlowsOut(flows, stats)


def flow_partition(spills: Sequence[Any], settings: Settings, index: int, housekeeping: Sequence[tuple[int, int]],
                   frames: int, keep_streams: bool) -> bytes:
    """:func:`flow_stage` as a task: returns an encoded :class:`FlowsOut` (:func:`decode_result`)."""
    return encode_result(flow_stage(spills, settings, index, housekeeping, frames, keep_streams))


def flow_all(spills: Sequence[Sequence[Any]], settings: Settings, index: int,
             housekeeping: Sequence[tuple[int, int]], frames: int, keep_streams: bool) -> bytes:
    """The flow stage in one process over every partition (``spills[p][k]``), merged by frame number."""
    streams = [(p for ref in part for p in read_spill(ref)) for part in spills]
    with gc_tuned():
        flows, stats = Engine(settings, keep_streams=keep_streams).run_decoded(
            merge_decoded(streams), index, housekeeping, frames)
    return encode_result(FlowsOut(flows, stats))


def whole_file(path: str, index: int, settings: Settings, keep_streams: bool) -> bytes:
    """One capture file read by one worker with the one-process engine (an encoded :data:`Part`)."""
    with gc_tuned():
        part = analyze_capture(path, index, settings, keep_streams=keep_streams)
    return encode_result(part)


# ---------------------------------------------------------------------------------------------- results codec

_new = object.__new__
_setattr = object.__setattr__
_FACTORIES: dict[type, Callable[..., Any]] = {}


def _slot_fields(cls: type) -> tuple[str, ...] | None:
    """Field names of an ``analyzer`` dataclass whose whole state is its slots (else None)."""
    if not cls.__module__.startswith("analyzer.") or not dataclasses.is_dataclass(cls):
        return None
    names = tuple(f.name for f in dataclasses.fields(cls))
    slots: set[str] = set()
    for c in cls.__mro__:
        slots.update(c.__dict__.get("__slots__", ()))
    if cls.__dictoffset__ or set(names) != slots - {"__weakref__"}:
        return None
    return names


def _factory(cls: type) -> Callable[..., Any]:
    """A function building an instance of ``cls`` from its field values, without ``__init__``."""
    fn = _FACTORIES.get(cls)
    if fn is None:
        names = _slot_fields(cls)
        if names is None:
            raise TypeError(f"{cls!r} is not a slotted analyzer dataclass")
        args = [f"v{i}" for i in range(len(names))]  # field names are identifiers; these are too
        body = "".join(f" _set(o, {n!r}, {a})\n" for n, a in zip(names, args))
        ns: dict[str, Any] = {"_new": _new, "_set": _setattr, "cls": cls}
        exec(f"def build({', '.join(args)}):\n o = _new(cls)\n{body} return o\n", ns)  # noqa: S102
        fn = _FACTORIES[cls] = ns["build"]
    return fn


def _rebuild(cls: type, values: tuple[Any, ...]) -> Any:
    """Unpickling side of :class:`_Reducers`."""
    return _factory(cls)(*values)


def _plain_init(cls: type, names: tuple[str, ...]) -> bool:
    """Whether ``cls(*values)`` rebuilds an instance from its field values: a generated ``__init__``
    taking every field positionally, in field order, with no ``__post_init__``; or a hand-written one
    the class vouches for with ``INIT_TAKES_FIELDS = True`` (it stores its positional parameters, the
    fields in field order, unchanged: ``flows.model.FlowSummary``)."""
    fs = dataclasses.fields(cls)
    init = cls.__dict__.get("__init__") or getattr(cls, "__init__", None)
    code = getattr(init, "__code__", None)
    if cls.__dict__.get("INIT_TAKES_FIELDS") is True:
        return (tuple(f.name for f in fs) == names and code is not None
                and code.co_argcount == len(names) + 1 and not hasattr(cls, "__post_init__"))
    return (
        getattr(getattr(cls, "__dataclass_params__", None), "init", False)
        and not hasattr(cls, "__post_init__")
        and tuple(f.name for f in fs) == names
        and all(f.init and not f.kw_only for f in fs)
        and code is not None and code.co_filename == "<string>"  # made by dataclasses, not written by hand
        and code.co_argcount == len(names) + 1
    )


class _Reducers(dict[type, Any]):
    """Pickler dispatch table: slotted analyzer dataclasses travel as (class, field values).

    A class whose generated ``__init__`` takes every field positionally is rebuilt by calling
    it (one call per object: loading is about 4 times faster than the default pickling of
    slotted dataclasses, which goes through ``dataclasses.fields()`` for every object);
    others through :func:`_rebuild`, without ``__init__``.
    """

    def __missing__(self, cls: type) -> Any:
        names = _slot_fields(cls)
        if names is None:
            red = copyreg.dispatch_table.get(cls)
            if red is None:
                raise KeyError(cls)
            return red
        get = operator.attrgetter(*names)
        if _plain_init(cls, names):
            if len(names) == 1:
                def reduce(obj: Any) -> tuple[Any, ...]:
                    return cls, (get(obj),)
            else:
                def reduce(obj: Any) -> tuple[Any, ...]:
                    return cls, get(obj)
        elif len(names) == 1:
            def reduce(obj: Any) -> tuple[Any, ...]:
                return _rebuild, (cls, (get(obj),))
        else:
            def reduce(obj: Any) -> tuple[Any, ...]:
                return _rebuild, (cls, get(obj))
        self[cls] = reduce
        return reduce


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a large object graph is built or walked."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def encode_result(obj: Any) -> bytes:
    """Pickle a task's result (flows with their events) quickly."""
    buf = io.BytesIO()
    pk = pickle.Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
    pk.dispatch_table = _Reducers()
    with gc_paused():
        pk.dump(obj)
        pk.clear_memo()  # before the collector runs again: it would walk every memo entry
        del pk
    return buf.getvalue()


def decode_result(data: bytes) -> Any:
    """The inverse of :func:`encode_result`."""
    with gc_paused():
        return pickle.loads(data)


# ---------------------------------------------------------------------------------------------- executors


class Executor(Protocol):
    """Where the stages run: local processes or a Dask cluster."""

    #: spills go to files in this directory (shared by every worker), or stay in worker memory when None
    spill_root: str | None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Start ``fn(*args)``; arguments may be handles returned by :meth:`submit` or :meth:`item`."""
        ...

    def result(self, handle: Any) -> Any:
        """Wait for a handle's value (brings it to this process)."""
        ...

    def apply(self, fn: Callable[..., Any], handle: Any, *args: Any) -> Any:
        """A handle to ``fn(value, *args)`` computed where the value is (cheap accessors only)."""
        ...


class LocalExecutor:
    """A process pool on this machine; spills in a temporary directory."""

    def __init__(self, jobs: int) -> None:
        self.pool = ProcessPoolExecutor(max_workers=jobs)
        self.spill_root: str | None = tempfile.mkdtemp(prefix="fwdaudit-spill-")

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        return self.pool.submit(fn, *[self.result(a) if isinstance(a, (Future, _Value)) else a for a in args])

    def result(self, handle: Any) -> Any:
        if isinstance(handle, _Value):
            return handle.value
        return handle.result()

    def apply(self, fn: Callable[..., Any], handle: Any, *args: Any) -> _Value:
        return _Value(fn(self.result(handle), *args))

    def close(self) -> None:
        """Stop the workers and remove the spill directory."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.spill_root is not None:
            shutil.rmtree(self.spill_root, ignore_errors=True)


class InlineExecutor:
    """Runs every stage in the calling process, one after the other (debugging, tests); spills to files."""

    def __init__(self) -> None:
        self.spill_root: str | None = tempfile.mkdtemp(prefix="fwdaudit-spill-")

    def submit(self, fn: Callable[..., Any], *args: Any) -> _Value:
        return _Value(fn(*[self.result(a) if isinstance(a, _Value) else a for a in args]))

    def result(self, handle: Any) -> Any:
        return handle.value if isinstance(handle, _Value) else handle

    def apply(self, fn: Callable[..., Any], handle: Any, *args: Any) -> _Value:
        return _Value(fn(self.result(handle), *args))

    def close(self) -> None:
        """Remove the spill directory."""
        if self.spill_root is not None:
            shutil.rmtree(self.spill_root, ignore_errors=True)


@dataclass(slots=True)
class _Value:
    """An already known value standing in for a handle."""

    value: Any


def _spill_of(scan: RangeScan, part: int) -> Any:
    return scan.spills[part]


def _meta_of(scan: RangeScan) -> RangeScan:
    """The scan result without its in-memory spills (small enough to bring to the client)."""
    return RangeScan(scan.scan, scan.info, scan.damage, scan.issues, scan.issue_counts, scan.counts, [], scan.error)


# ---------------------------------------------------------------------------------------------- orchestration


@dataclass(slots=True)
class _Job:
    """One capture file of the run."""

    index: int
    path: str
    layout: PcapLayout | None = None  #: set when the file is split into ranges
    points: list[int] = field(default_factory=list)  #: range boundaries
    handle: Any = None  #: whole-file task
    part: Part | None = None
    notes: list[str] = field(default_factory=list)


def plan_file(path: str, jobs: int, split_min_bytes: int) -> tuple[PcapLayout | None, list[int]]:
    """Whether a file is split (a large plain classic pcap) and where (runs where the files are)."""
    lay = pcap_layout(path)
    if lay is None or lay.size < split_min_bytes:
        return None, []
    return lay, split_points(path, lay, jobs)


def run_jobs(paths: Sequence[str], settings: Settings, ex: Executor, *, jobs: int, progress: bool,
             keep_streams: bool, split_min_bytes: int = SPLIT_MIN_BYTES) -> list[Part]:
    """Analyze every file on ``ex``: whole files first (they queue), then large pcap files split in ``jobs`` ranges."""
    plan = [_Job(i, p) for i, p in enumerate(paths)]
    if jobs > 1:
        planned = [ex.submit(plan_file, job.path, jobs, split_min_bytes) if job.path != "-" else None
                   for job in plan]
        for job, h in zip(plan, planned):
            if h is not None:
                job.layout, job.points = ex.result(h)
    for job in plan:
        if job.layout is None:
            if job.path == "-":
                job.part = analyze_capture(job.path, job.index, settings, keep_streams=keep_streams)
            else:
                job.handle = ex.submit(whole_file, job.path, job.index, settings, keep_streams)
    for job in plan:
        if job.layout is not None:
            t0 = time.monotonic()
            part = _split_file(job, settings, ex, jobs, keep_streams, progress)
            if part is None:
                _say(progress, f"{job.path}: {'; '.join(job.notes)}; read in one process")
                part = decode_result(ex.result(ex.submit(whole_file, job.path, job.index, settings, keep_streams)))
            part[0].elapsed_s = time.monotonic() - t0
            job.part = part
    out: list[Part] = []
    for job in plan:
        if job.part is None:
            job.part = decode_result(ex.result(job.handle))
            _say(progress, f"{job.path}: done")
        out.append(job.part)
    return out


def analyze_files(paths: Sequence[str], settings: Settings, *, jobs: int, progress: bool = False,
                  keep_streams: bool = False, split_min_bytes: int = SPLIT_MIN_BYTES) -> list[Part]:
    """Per-capture results of every file, computed by ``jobs`` local processes."""
    if len(paths) == 1:
        lay = pcap_layout(paths[0]) if paths[0] != "-" else None
        if lay is None or lay.size < split_min_bytes:  # one whole file: no pool to start
            return [analyze_capture(paths[0], 0, settings, progress=progress, keep_streams=keep_streams)]
    elif _input_bytes(paths) < split_min_bytes:  # small inputs: starting the pool costs more than it gains
        spool = run_spool(settings)
        return [analyze_capture(p, i, settings, progress=progress, keep_streams=keep_streams, spool=spool)
                for i, p in enumerate(paths)]
    ex = LocalExecutor(jobs)
    try:
        return run_jobs(paths, settings, ex, jobs=jobs, progress=progress, keep_streams=keep_streams,
                        split_min_bytes=split_min_bytes)
    finally:
        ex.close()


def _input_bytes(paths: Sequence[str]) -> int:
    """Total size of the regular files among ``paths`` (others count as nothing: they are read whole anyway)."""
    total = 0
    for p in paths:
        if p == "-":
            continue
        try:
            st = os.stat(p)
        except (OSError, ValueError):  # ValueError: a path with a NUL byte
            continue
        if stat.S_ISREG(st.st_mode):
            total += st.st_size
    return total


def _say(progress: bool, text: str) -> None:
    if progress:
        sys.stderr.write(f"{text}\n")
        sys.stderr.flush()


def _split_file(job: _Job, settings: Settings, ex: Executor, jobs: int, keep_streams: bool,
                progress: bool) -> Part | None:
    """Stages 1-4 for one large pcap file; None when it must be read by one process (reason in job.notes)."""
    points = job.points
    if len(points) - 1 < 2:
        job.notes.append("no split point found")
        return None
    ranges = list(zip(points[:-1], points[1:]))
    spill_dir = None
    if ex.spill_root is not None:
        spill_dir = tempfile.mkdtemp(prefix=f"c{job.index}-", dir=ex.spill_root)
    try:
        return _scan_and_flow(job, settings, ex, ranges, jobs, spill_dir, keep_streams, progress)
    finally:
        if spill_dir is not None:
            shutil.rmtree(spill_dir, ignore_errors=True)


def _scan_and_flow(job: _Job, settings: Settings, ex: Executor, ranges: list[tuple[int, int]], parts: int,
                   spill_dir: str | None, keep_streams: bool, progress: bool) -> Part | None:
    """Stages 2 to 4 (and the merge) of one split file.

    The first range is scanned at once (its first frame is frame 1), beside the count of the
    others; each later range is scanned as soon as the counts before it are known. The last
    range is not counted: its scan says how many frames it has, and its reader records the
    damage a count would have found (checked below).
    """
    lay = job.layout
    assert lay is not None
    n = len(ranges)
    frame0 = [0]

    def scan(k: int, forced: frozenset[bytes], tag: str) -> Any:
        s, e = ranges[k]
        return ex.submit(scan_range, job.path, lay, s, e, frame0[k], settings, parts, forced, spill_dir, tag)

    handles = [scan(0, frozenset(), "r0")]
    count_handles = [ex.submit(count_range, job.path, lay, s, e) for s, e in ranges[:-1]]
    counts: list[int] = []
    for k, h in enumerate(count_handles):
        c: RangeCount = ex.result(h)
        if c.error is not None:
            job.notes.append(f"range {k}: {c.error}")
            return None
        moving = [code for code in c.codes if code in _MOVING_DAMAGE]
        if moving or any(code in _END_DAMAGE for code in c.codes):  # not the last range: must end on a record
            job.notes.append(f"range {k} of {n}: {', '.join(sorted(set(moving or c.codes)))}")
            return None
        counts.append(c.packets)
        frame0.append(frame0[-1] + c.packets)
        handles.append(scan(k + 1, frozenset(), f"r{k + 1}"))
    metas: list[RangeScan] = [ex.result(ex.apply(_meta_of, h)) for h in handles]
    for k, m in enumerate(metas):
        if m.error is not None:
            job.notes.append(f"range {k}: {m.error}")
            return None
        if m.counts.get("fragments"):
            job.notes.append("IP fragments (reassembly crosses ranges)")
            return None
        if k < n - 1 and m.scan.frames != counts[k]:
            job.notes.append(f"range {k}: scan and count disagree")
            return None
        if m.info.damage_dropped:  # more damage than a reader lists: a code that moves the reader may be unseen
            job.notes.append(f"range {k}: damage beyond what is listed")
            return None
    moving = sorted({d.code for d in metas[-1].damage if d.code in _MOVING_DAMAGE})
    if moving:
        job.notes.append(f"range {n - 1} of {n}: {', '.join(moving)}")
        return None
    frames = frame0[-1] + metas[-1].scan.frames
    _say(progress, f"{job.path}: {n} ranges, {frames:,} frames")
    # conflicts: flows picked by content in an earlier range, ignored in this one
    earlier: set[bytes] = set()
    rescans: dict[int, Any] = {}
    for k, m in enumerate(metas):
        if earlier and m.scan.ignored:
            forced = frozenset(c for c in earlier if key_hash(c) in m.scan.ignored)
            if forced:
                rescans[k] = scan(k, forced, f"r{k}x")
        earlier |= m.scan.interest
    for k, h in rescans.items():
        handles[k] = h
        metas[k] = ex.result(ex.apply(_meta_of, h))
        if metas[k].error is not None:
            job.notes.append(f"range {k}: {metas[k].error}")
            return None
    if rescans:
        _say(progress, f"{job.path}: scanned {len(rescans)} range(s) again for flows picked by content earlier")
    housekeeping = [h for m in metas for h in m.scan.housekeeping]
    by_part = [[ex.apply(_spill_of, h, p) for h in handles] for p in range(parts)]
    # local pool: the parent, idle otherwise, runs the first partition itself (no pickling of its flows)
    here = isinstance(ex, LocalExecutor) and parts > 1
    handles = [ex.submit(flow_partition, _gather(ex, by_part[p]), settings, job.index, housekeeping, frames,
                         keep_streams) for p in range(1 if here else 0, parts)]
    first = [flow_stage(_gather(ex, by_part[0]), settings, job.index, housekeeping, frames, keep_streams)] if here \
        else []
    outs: list[FlowsOut] = first + _decoded_results(ex, handles)
    if _caps_reached(outs, settings):
        _say(progress, f"{job.path}: a cap counting all flows may have been reached; flow stage in one process")
        outs = [decode_result(ex.result(ex.submit(flow_all, [_gather(ex, by_part[p]) for p in range(parts)], settings,
                                                  job.index, housekeeping, frames, keep_streams)))]
    return _merge(job, metas, outs, frames, ranges[-1][0])


def _decoded_results(ex: Executor, handles: list[Any]) -> list[Any]:
    """The decoded results of ``handles``, in their order; local results are decoded as they arrive.

    The parent decodes one partition's flows while the other partitions still run (decoding
    is the parent's share of the flow stage, about a quarter of a partition's time). Each
    handle is dropped from ``handles`` once decoded: a future keeps its encoded result (tens
    of MB for a million flows) for as long as anything refers to it.
    """
    out: list[Any] = [None] * len(handles)
    if isinstance(ex, LocalExecutor):
        index = {id(h): i for i, h in enumerate(handles)}
        for h in as_completed(handles):  # as_completed lets go of each future it has yielded
            i = index[id(h)]
            handles[i] = None
            out[i] = decode_result(h.result())
            del h
        return out
    for i, h in enumerate(handles):
        handles[i] = None
        out[i] = decode_result(ex.result(h))
        del h
    return out


def _gather(ex: Executor, handles: list[Any]) -> Any:
    """One argument standing for a list of handles (a list of values once the task runs)."""
    if isinstance(ex, (LocalExecutor, InlineExecutor)):
        return [ex.result(h) for h in handles]
    return handles


def _caps_reached(outs: Sequence[FlowsOut], settings: Settings) -> bool:
    """Whether the sums over partitions reach a cap the one-process engine applies to all flows together."""
    lim = settings.limits
    if sum(o.stats.peak_buffer_bytes for o in outs) > lim.total_buffer_bytes:
        return True
    rows = [o.stats.housekeeping for o in outs]
    for cols in zip(*rows):
        if sum(c[1] for c in cols) > lim.max_flows or sum(c[2] for c in cols) > 2 * MAX_TRACKED_FLOWS:
            return True
    return False


def _merge(job: _Job, metas: list[RangeScan], outs: list[FlowsOut], frames: int, last_start: int) -> Part:
    """One capture result from the ranges' scans and the partitions' flows."""
    stats = CaptureStats()
    for o in outs:
        stats.merge(o.stats)
    stats.housekeeping = [(cols[0][0], sum(c[1] for c in cols), sum(c[2] for c in cols))
                          for cols in zip(*(o.stats.housekeeping for o in outs))]
    stats.packets = frames
    stats.fast_path = sum(m.scan.fast_path for m in metas)
    stats.slow_path = sum(m.scan.slow_path for m in metas)
    flows = sorted((f for o in outs for f in o.flows), key=lambda f: f.key)
    # decoder: counters add up; issue examples in range order, one unsupported_linktype (pcap: one link type)
    issue_counts: dict[str, int] = {}
    counts: dict[str, int] = {}
    issues: list[DecodeIssue] = []
    linktype_reported = False
    for m in metas:
        for k, v in m.issue_counts.items():
            issue_counts[k] = issue_counts.get(k, 0) + v
        for k, v in m.counts.items():
            counts[k] = counts.get(k, 0) + v
        for i in m.issues:
            if i.code == "unsupported_linktype":
                if linktype_reported:
                    continue
                linktype_reported = True
            issues.append(i)
    issues = issues[: Decoder().max_issues]
    info = _merge_info(job, metas, frames, last_start)
    error = unusable_reason(job.path, info, issue_counts)
    return CaptureResult(job.path, info, error, stats, issue_counts, issues, counts), flows


def _merge_info(job: _Job, metas: list[RangeScan], frames: int, last_start: int) -> CaptureInfo:
    """The capture info one reader would have ended with."""
    first = metas[0].info
    info = CaptureInfo(
        path=job.path, format=first.format, compression=None, byte_order=first.byte_order,
        ts_resolution=first.ts_resolution, snaplen=first.snaplen, file_size=first.file_size,
    )
    info.packets = frames
    last = metas[-1].info
    info.bytes = last_start + last.bytes - PCAP_FILE_HEADER
    info.raw_bytes = last_start + last.raw_bytes
    info.interfaces = first.interfaces
    info.first_ts_ns = first.first_ts_ns
    for m in metas:
        if m.info.last_ts_ns is not None:
            info.last_ts_ns = m.info.last_ts_ns
        for lt, v in m.info.linktypes.items():
            info.linktypes[lt] = max(info.linktypes.get(lt, 0), v)
        for d in m.damage:
            info.add_damage(d.offset, d.frame, d.code, d.detail)
        info.damage_dropped += m.info.damage_dropped
    return info
