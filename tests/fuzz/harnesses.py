"""Fuzz targets: one function per entry point that takes attacker bytes (issue 7 item 2).

Each ``fuzz_<name>(data: bytes) -> None`` must return for any input; an exception is a
bug (only ``CaptureFormatError`` out of ``open_capture`` is part of a contract, and the
targets absorb it). The targets do not import atheris, so the smoke test
(``test_harnesses.py``) runs them on seed inputs in every profile, and
``run_atheris.py`` hands them to libFuzzer through atheris for coverage-guided runs.

Strategy for the parser targets: the input is a *script* so that the fuzzer controls
both directions, gaps and ends, not just one byte string: byte 0 of every step picks
the operation (feed to server, feed to client, gap, end), byte 1 the length, and the
next bytes are the data. The first byte of the whole input picks the protocol.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from analyzer.capture import open_capture
from analyzer.capture.decode import Decoder
from analyzer.config import Settings
from analyzer.errors import CaptureFormatError
from analyzer.flows.table import Engine
from analyzer.forwarding.blobs import (
    decode_forward_base64,
    decode_xrcptforward,
    split_forward_list,
    tab_unescape,
)
from analyzer.forwarding.extract import parse_address, parse_port, parse_ttl
from analyzer.forwarding.sessionid import decode_session_id
from analyzer.model import Direction
from analyzer.pipeline import analyze
from analyzer.protocols import detect, make_parser
from analyzer.protocols.base import wire_text
from analyzer.protocols.xtext import decode_lenient, decode_strict
from analyzer.report import write_reports

PROTOCOLS = ("imap", "pop3", "smtp", "submission", "lmtp")
LINKTYPES = (
    0,
    1,
    12,
    14,
    101,
    108,
    113,
    228,
    229,
    276,
)  # analyzer/capture/decode.py: every decoded link type
SMALL_LIMIT = 200  # max_line / max_literal of the parser targets: small, so the limits are reached
GAP_UNIT = 4096  # a gap step's length byte counts in these units (gaps of up to ~1 MB)
OP_FEED_SERVER, OP_FEED_CLIENT, OP_GAP, OP_EOF = range(4)

_SCRATCH = (
    Path(os.environ.get("FWDAUDIT_FUZZ_SCRATCH", tempfile.gettempdir())) / f"fwdaudit-fuzz-{os.getpid()}"
)


def set_scratch(path: Path) -> None:
    """Use ``path`` for the scratch capture and report files (tests point it at their tmp_path)."""
    global _SCRATCH
    _SCRATCH = path


def _scratch_file(data: bytes) -> Path:
    """Write ``data`` to this process's scratch capture file (one file, rewritten per input)."""
    _SCRATCH.mkdir(parents=True, exist_ok=True)
    path = _SCRATCH / "input.cap"
    path.write_bytes(data)
    return path


def fuzz_reader(data: bytes) -> None:
    """The capture reader and the engine: open, read every packet, decode, reassemble, dissect."""
    path = _scratch_file(data)
    try:
        cap = open_capture(str(path))
    except CaptureFormatError:
        return
    with cap:
        decoder = Decoder()
        _flows, stats = Engine(Settings()).run(cap.packets(), 0, decoder)
    if stats.parser_errors:
        raise AssertionError(f"{stats.parser_errors} parser errors caught at the engine boundary")


def fuzz_pipeline(data: bytes) -> None:
    """The whole pipeline and both report writers on the input as a capture file."""
    path = _scratch_file(data)
    result = analyze([str(path)], Settings())
    write_reports(result, str(_SCRATCH / "out"), ("json", "html"), force=True)


def fuzz_decode(data: bytes) -> None:
    """The link/IP/TCP decoder: byte 0 picks the link type, the rest is the frame."""
    if not data:
        return
    Decoder().decode(1, 0, LINKTYPES[data[0] % len(LINKTYPES)], data[1:], len(data) - 1)


def script(data: bytes) -> Iterator[tuple[int, Direction, bytes, int]]:
    """Decode a parser script: (operation, direction, bytes, gap length) steps."""
    i = 1
    while i + 1 < len(data):
        op = data[i] & 3
        d = Direction.TO_SERVER if data[i] & 4 else Direction.TO_CLIENT
        n = data[i + 1]
        i += 2
        if op in (OP_FEED_SERVER, OP_FEED_CLIENT):
            d = Direction.TO_SERVER if op == OP_FEED_SERVER else Direction.TO_CLIENT
            yield op, d, data[i : i + n], 0
            i += n
        elif op == OP_GAP:
            yield op, d, b"", (n + 1) * GAP_UNIT
        else:
            yield op, d, b"", 0


def fuzz_parsers(data: bytes) -> None:
    """A protocol parser (byte 0 picks it) driven by a script of feeds, gaps and ends."""
    if not data:
        return
    proto = PROTOCOLS[data[0] % len(PROTOCOLS)]
    opts = (
        {"max_line": SMALL_LIMIT, "max_literal": SMALL_LIMIT}
        if proto == "imap"
        else {"max_line": SMALL_LIMIT}
    )
    parser = make_parser(proto, **opts)
    ended: set[Direction] = set()
    for op, d, chunk, gap in script(data):
        if d in ended:
            continue
        if op in (OP_FEED_SERVER, OP_FEED_CLIENT):
            parser.feed(d, chunk)
            detect(chunk, d, proto)
        elif op == OP_GAP:
            parser.gap(d, gap)
        else:
            parser.eof(d)
            ended.add(d)
    for d in Direction:
        if d not in ended:
            parser.eof(d)


def fuzz_blobs(data: bytes) -> None:
    """FORWARD / XRCPTFORWARD blobs, tab escapes, xtext, session IDs and field parsers."""
    text = wire_text(data)
    decode_forward_base64(text)
    decode_xrcptforward(text)
    split_forward_list(text)
    tab_unescape(text)
    decode_strict(text)
    decode_lenient(text)
    decode_session_id(text)
    parse_ttl(text)
    parse_port(text)
    parse_address(text)
    parse_address(text, True)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "reader": fuzz_reader,
    "pipeline": fuzz_pipeline,
    "decode": fuzz_decode,
    "parsers": fuzz_parsers,
    "blobs": fuzz_blobs,
}
