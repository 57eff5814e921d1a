"""Micro-benchmark of the mail path: protocol parsers, line framing and TCP reassembly.

Strategy: realistic Dovecot proxy -> backend sessions are built with the
benchmark generator (``bench/gen.py``: IMAP ``ID``, POP3 ``XCLIENT``,
submission and LMTP ``XCLIENT`` + ``XRCPTFORWARD``), once, with a fixed seed.
Each session is turned into a script of ``(direction, bytes)`` runs (consecutive
writes of one direction joined) and fed to a fresh parser in three
segmentations:

* ``packets``: one ``feed`` per segment exactly as the generator writes them
  (carrier lines sometimes split in two, bodies cut at 1400 bytes);
* ``whole``: one ``feed`` per run;
* ``seg1460``: every run cut into 1460-byte feeds (an Ethernet MSS).

Each row reports MB/s, lines/s (LF bytes fed per second), events/s and
microseconds per ``feed``, as the best of ``--repeat`` timed passes. Time is
process CPU time by default (``--clock cpu``): on a shared machine the wall
clock mostly measures the neighbours, CPU time the work done; ``--clock wall``
gives wall time. ``reassembly`` rows
time :class:`~analyzer.flows.reassembly.HalfStream` on the same client and
server runs cut into 1460-byte segments: ``segment()`` plus one ``frames_for`` and
``ts_for`` per segment (what the flow table does per delivered chunk), in order
and with every second pair of segments swapped.

``--root DIR`` imports ``analyzer`` from another checkout (e.g. an export of the
previous commit), so two implementations can be compared in one sitting::

    python3 bench/micro_parsers.py
    python3 bench/micro_parsers.py --root /tmp/base --json /tmp/base.json
    python3 bench/micro_parsers.py --compare /tmp/base.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

SEGMENT = 1460  # IEEE 802.3 MTU 1500 - 20 (IPv4) - 20 (TCP): the common MSS
DEFAULT_SESSIONS = 300  # sessions per protocol and kind: about 1-3 MB of traffic per row
DEFAULT_REPEAT = 5  # timed passes per row; the best one is reported
MB = 1_000_000  # decimal MB, as in bench/README.md

Script = list[tuple[int, list[bytes]]]  # (0 = to server, 1 = to client, the feeds of one run)


def _setup_path(root: Path) -> None:
    for p in (str(BENCH), str(root)):
        if p in sys.path:
            sys.path.remove(p)
        sys.path.insert(0, p)


def build_sessions(n: int, seed: int) -> dict[str, list[list[tuple[int, bytes]]]]:
    """``{kind: [session segments]}``: each session a list of (direction, payload) as written on the wire."""
    import gen  # noqa: PLC0415  (bench/gen.py, found through sys.path)

    rng = random.Random(seed)
    content = gen.Content(random.Random(seed + 1))
    plan = gen.SplitPlan(split=0.25, reorder=0.0)  # reordering is the reassembler's job: in order here
    stats: dict[str, int] = dict.fromkeys(("split_lines", "reordered_lines"), 0)
    makers: dict[str, Callable[[bool], list[Any]]] = {
        "imap": lambda rich: gen.imap_session(rng, content, plan, stats, rich),
        "pop3": lambda rich: gen.pop3_session(rng, content, plan, stats, rich),
        "submission": lambda rich: gen.smtp_session(rng, content, plan, stats, rich, postfix=False),
        "lmtp": lambda rich: gen.lmtp_session(rng, content, plan, stats, rich),
    }
    out: dict[str, list[list[tuple[int, bytes]]]] = {}
    for kind, make in makers.items():
        for rich in (False, True):
            sessions = []
            for _ in range(n):
                segs: list[tuple[int, bytes]] = []
                for d, _flags, payload, _cmds in make(rich):
                    if d == gen.R:
                        segs += [(gen.C, payload[0]), (gen.C, payload[1])]
                    elif payload:
                        segs.append((d, payload))
                sessions.append(segs)
            out[f"{kind}-{'rich' if rich else 'short'}"] = sessions
    return out


def runs_of(segs: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """Consecutive payloads of one direction joined."""
    runs: list[tuple[int, bytes]] = []
    for d, p in segs:
        if runs and runs[-1][0] == d:
            runs[-1] = (d, runs[-1][1] + p)
        else:
            runs.append((d, p))
    return runs


def script(segs: list[tuple[int, bytes]], mode: str) -> Script:
    """The feeds of one session in segmentation ``mode``."""
    if mode == "packets":
        return [(d, [p]) for d, p in segs]
    runs = runs_of(segs)
    if mode == "whole":
        return [(d, [p]) for d, p in runs]
    return [(d, [p[i : i + SEGMENT] for i in range(0, len(p), SEGMENT)]) for d, p in runs]


CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}
_clock = CLOCKS["cpu"]


def _best(fn: Callable[[], int], repeat: int) -> tuple[float, int]:
    best = float("inf")
    result = 0
    for _ in range(repeat):
        t0 = _clock()
        result = fn()
        best = min(best, _clock() - t0)
    return best, result


def bench_parsers(sessions: dict[str, list[list[tuple[int, bytes]]]], repeat: int) -> list[dict[str, Any]]:
    """One row per (session kind, segmentation)."""
    from analyzer.model import Direction  # noqa: PLC0415
    from analyzer.protocols import make_parser  # noqa: PLC0415

    dirs = (Direction.TO_SERVER, Direction.TO_CLIENT)
    rows: list[dict[str, Any]] = []
    for kind, sess in sessions.items():
        proto = kind.split("-")[0]
        for mode in ("packets", "whole", "seg1460"):
            scripts = [script(s, mode) for s in sess]
            nbytes = sum(len(p) for sc in scripts for _, ps in sc for p in ps)
            nlines = sum(p.count(b"\n") for sc in scripts for _, ps in sc for p in ps)
            nfeeds = sum(len(ps) for sc in scripts for _, ps in sc)
            # the work list is flattened once, so the timed loop is the parser and nothing else
            work = [[(dirs[d], p) for d, ps in sc for p in ps] for sc in scripts]

            def run() -> int:
                events = 0
                for feeds in work:
                    parser = make_parser(proto)
                    feed = parser.feed
                    for d, p in feeds:
                        events += len(feed(d, p))
                    events += len(parser.eof(dirs[0])) + len(parser.eof(dirs[1]))
                return events

            secs, events = _best(run, repeat)
            rows.append({
                "row": f"{kind}:{mode}", "bytes": nbytes, "lines": nlines, "feeds": nfeeds, "events": events,
                "seconds": secs, "mb_s": nbytes / secs / MB, "klines_s": nlines / secs / 1e3,
                "kevents_s": events / secs / 1e3, "us_per_feed": secs / nfeeds * 1e6,
            })
    return rows


def bench_reassembly(sessions: dict[str, list[list[tuple[int, bytes]]]], repeat: int) -> list[dict[str, Any]]:
    """HalfStream: in order and with neighbouring segment pairs swapped, plus the per-chunk frame lookups."""
    from analyzer.flows.reassembly import HalfStream  # noqa: PLC0415

    streams: list[list[bytes]] = []
    for sess in sessions.values():
        for segs in sess:
            for d in (0, 1):
                data = b"".join(p for dd, p in segs if dd == d)
                streams.append([data[i : i + SEGMENT] for i in range(0, len(data), SEGMENT)])
    nbytes = sum(len(p) for st in streams for p in st)
    nsegs = sum(len(st) for st in streams)
    rows: list[dict[str, Any]] = []
    for mode in ("in-order", "pairs-swapped"):
        work = []
        for st in streams:
            items = []
            seq = 1000
            for i, p in enumerate(st):
                items.append((seq, p, i + 1))
                seq += len(p)
            if mode == "pairs-swapped":
                for i in range(0, len(items) - 1, 4):
                    items[i], items[i + 1] = items[i + 1], items[i]
            work.append(items)

        def run() -> int:
            delivered = 0
            for items in work:
                hs = HalfStream()
                hs.syn(999)
                seg = hs.segment
                frames_for = hs.frames_for
                ts_for = hs.ts_for
                for seq, p, frame in items:
                    for _kind, off, item in seg(seq, p, frame, frame * 1000):
                        if _kind == "data":
                            n = len(item)  # type: ignore[arg-type]
                            delivered += n
                            frames_for(off, off + n)
                            ts_for(off)
                for _kind, _off, item in hs.flush():
                    delivered += len(item) if _kind == "data" else 0  # type: ignore[arg-type]
            return delivered

        secs, delivered = _best(run, repeat)
        if delivered != nbytes:
            raise SystemExit(f"reassembly {mode}: delivered {delivered} of {nbytes} bytes")
        rows.append({
            "row": f"reassembly:{mode}", "bytes": nbytes, "lines": 0, "feeds": nsegs, "events": 0,
            "seconds": secs, "mb_s": nbytes / secs / MB, "klines_s": 0.0, "kevents_s": 0.0,
            "us_per_feed": secs / nsegs * 1e6,
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    """Build the sessions, time every row, print a table (and optionally JSON / a comparison)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=REPO, help="checkout whose analyzer/ is measured")
    ap.add_argument("--sessions", type=int, default=DEFAULT_SESSIONS, help="sessions per kind")
    ap.add_argument("--repeat", type=int, default=DEFAULT_REPEAT, help="timed passes per row (best is kept)")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="cpu", help="process CPU time or wall time")
    ap.add_argument("--only", default="", help="substring a row name must contain")
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--compare", type=Path, help="JSON of an earlier run: add a speed-up column")
    args = ap.parse_args(argv)
    global _clock
    _clock = CLOCKS[args.clock]
    _setup_path(args.root.resolve())
    sessions = build_sessions(args.sessions, args.seed)
    rows = bench_parsers(sessions, args.repeat) + bench_reassembly(sessions, args.repeat)
    if args.only:
        rows = [r for r in rows if args.only in r["row"]]
    base: dict[str, float] = {}
    if args.compare is not None:
        base = {r["row"]: r["seconds"] for r in json.loads(args.compare.read_text())["rows"]}
    head = f"{'row':32} {'MB':>7} {'MB/s':>8} {'klines/s':>9} {'kevents/s':>9} {'us/feed':>8}"
    print(f"analyzer from {args.root.resolve()} ({args.clock} time, best of {args.repeat})")
    print(head + ("  speed-up" if base else ""))
    for r in rows:
        line = (f"{r['row']:32} {r['bytes'] / MB:7.2f} {r['mb_s']:8.1f} {r['klines_s']:9.0f} "
                f"{r['kevents_s']:9.0f} {r['us_per_feed']:8.2f}")
        if r["row"] in base:
            line += f"  {base[r['row']] / r['seconds']:7.2f}x"
        print(line)
    if args.json is not None:
        args.json.write_text(json.dumps({"root": str(args.root.resolve()), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
