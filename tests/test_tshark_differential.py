"""Differential test: our reassembled TCP streams equal tshark's ``follow,tcp,raw``.

Runs on every capture in ``../shared/captures-public/`` and on the project's own
generated captures, with every TCP flow reassembled (``all_tcp``). tshark writes a
gap as the text ``[N bytes missing in capture file]`` followed by NUL, so our gap
items are rendered the same way and flows with gaps are compared too.
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from analyzer.capture import open_capture
from analyzer.capture.decode import Decoder
from analyzer.config import Settings
from analyzer.flows.model import FlowSummary
from analyzer.flows.table import Engine

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = ROOT.parent / "shared" / "captures-public"

pytestmark = [
    pytest.mark.tshark,
    pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed"),
]


def _captures() -> list[Path]:
    found = [p for p in PUBLIC.rglob("*") if p.is_file() and re.search(r"\.(pcap|pcapng|cap)(\.gz)?$", p.name)]
    found += [p for p in (ROOT / "captures").rglob("*") if p.is_file() and re.search(r"\.(pcap|pcapng)$", p.name)]
    return sorted(found)


CAPTURES = _captures()


def _tshark_streams(path: Path) -> tuple[int | None, list[tuple[tuple[str, str], bytes, bytes]]]:
    """Frames tshark could read (None: all), and per tcp.stream (node0, node1), bytes from node 0 and 1."""
    run = subprocess.run(
        ["tshark", "-n", "-r", str(path), "-T", "fields", "-e", "frame.number", "-e", "tcp.stream"],
        capture_output=True, timeout=120,
    )
    rows = [line.split(b"\t") for line in run.stdout.splitlines()]
    frames_read = None
    if run.returncode != 0:
        # tshark stops at the first damaged record ("appears to be damaged or corrupt"); we
        # resync past it, so only the prefix tshark read can be compared
        assert b"damaged or corrupt" in run.stderr or b"cut short" in run.stderr, run.stderr
        frames_read = len(rows)
    n = len({r[1] for r in rows if len(r) > 1 and r[1]})
    if n == 0:
        return frames_read, []
    args = ["tshark", "-n", "-r", str(path), "-q"]
    for i in range(n):
        args += ["-z", f"follow,tcp,raw,{i}"]
    out = subprocess.run(args, capture_output=True, timeout=300).stdout.decode("ascii", "replace")
    streams = []
    for block in out.split("===================================================================\nFollow: tcp,raw\n")[1:]:
        node0 = re.search(r"^Node 0: (.*)$", block, re.M)
        node1 = re.search(r"^Node 1: (.*)$", block, re.M)
        a, b = bytearray(), bytearray()
        for line in block.splitlines():
            if re.fullmatch(r"\t[0-9a-f]+", line):
                b += bytes.fromhex(line[1:])
            elif re.fullmatch(r"[0-9a-f]+", line):
                a += bytes.fromhex(line)
        streams.append(((node0.group(1) if node0 else "", node1.group(1) if node1 else ""), bytes(a), bytes(b)))
    return frames_read, streams


def _ours(path: Path, frames: int | None) -> list[FlowSummary]:
    """Every TCP flow of the capture (or of its first ``frames`` frames), with the delivery log."""
    settings = Settings(all_tcp=True)
    with open_capture(str(path)) as cap:
        packets = cap.packets() if frames is None else itertools.islice(cap.packets(), frames)
        flows, _stats = Engine(settings, keep_streams=True).run(packets, 0, Decoder())
    return flows


def _render(items: list[tuple[str, int, object]]) -> bytes:
    out = bytearray()
    for kind, _offset, item in items:
        if kind == "data":
            assert isinstance(item, bytes)
            out += item
        else:
            out += b"[%d bytes missing in capture file]\x00" % item
    return bytes(out)


def _node(ep: object) -> str:
    ip, port = ep.ip, ep.port  # type: ignore[attr-defined]
    return f"{ip}:{port}" if ":" not in ip else f"[{ip}]:{port}"


@pytest.mark.parametrize("path", CAPTURES, ids=[str(p.relative_to(p.parents[1])) for p in CAPTURES])
def test_streams_equal_tshark_follow(path: Path) -> None:
    frames_read, theirs = _tshark_streams(path)
    ours: dict[frozenset[str], list[tuple[FlowSummary, bytes, bytes]]] = {}
    for s in _ours(path, frames_read):
        assert s.streams is not None
        ours.setdefault(frozenset((_node(s.client), _node(s.server))), []).append(
            (s, _render(s.streams["to_server"]), _render(s.streams["to_client"])))
    for (n0, n1), b0, b1 in theirs:
        key = frozenset((n0, n1))
        cands = ours.get(key)
        if not cands:
            # tshark counts streams we do not have: only acceptable for flows with no payload
            assert not b0 and not b1, f"{path.name}: tshark stream {n0} <-> {n1} has data, we have no flow"
            continue
        s, to_server, to_client = cands.pop(0)
        if _node(s.client) == n0:
            got0, got1 = to_server, to_client
        else:
            got0, got1 = to_client, to_server
        assert got0 == b0, f"{path.name}: {n0} -> {n1} differs from tshark (ours {len(got0)} bytes, tshark {len(b0)})"
        assert got1 == b1, f"{path.name}: {n1} -> {n0} differs from tshark (ours {len(got1)} bytes, tshark {len(b1)})"
    leftover = [s for v in ours.values() for s, a, b in v if a or b]
    assert not leftover, f"{path.name}: flows with data that tshark did not follow: {leftover[:3]}"
