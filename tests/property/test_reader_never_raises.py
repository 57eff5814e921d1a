"""Capture bytes never make the reader, the decoder, the engine or the reports raise (issue 7 item 2).

Coverage-guided in spirit: besides plain random bytes (which mostly die at the magic),
the strategies build files that are *almost* right: a valid file header followed by
records or blocks whose every length field may lie, frames whose IP and TCP headers
lie, and TCP conversations on mail ports whose payloads are assembled from protocol
tokens. The invariants are the reader's contract: only :class:`CaptureFormatError`
(with a one-line message) may come out of ``open_capture``; iteration never raises,
yields ``(ts_ns, linktype, wirelen, data)`` with ``wirelen >= len(data)``, yields no more
packets than the file could hold, and names every problem with a documented damage
code. Downstream, the engine and the report writers must not raise either, the JSON
must be valid UTF-8 and the HTML must not let a payload's markup through.

``FWDAUDIT_FUZZ=long`` multiplies the example counts.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from analyzer.capture import open_capture
from analyzer.capture.decode import Decoder
from analyzer.capture.reader import DAMAGE_CODES
from analyzer.config import Settings
from analyzer.errors import CaptureFormatError
from analyzer.flows.table import Engine
from analyzer.pipeline import analyze
from analyzer.report import write_reports

LONG = os.environ.get("FWDAUDIT_FUZZ", "").strip().lower() == "long"  # tests/hostile: the profile switch


def _n(fast: int, long: int) -> int:
    return long if LONG else fast


PCAP_MAGICS = [
    b"\xd4\xc3\xb2\xa1",
    b"\xa1\xb2\xc3\xd4",
    b"\x4d\x3c\xb2\xa1",
    b"\xa1\xb2\x3c\x4d",
    b"\x34\xcd\xb2\xa1",
]
SHB = b"\x0a\x0d\x0d\x0a"  # pcapng Section Header Block type
BOM_LE = b"\x4d\x3c\x2b\x1a"  # pcapng byte-order magic, little-endian
LINKTYPES = [
    0,
    1,
    12,
    14,
    101,
    108,
    113,
    147,
    228,
    229,
    276,
    0xFFFF,
]  # analyzer/capture/decode.py + unknown ones
MIN_RECORD = 16  # pcap-savefile(5): the smallest record is its header
MAIL_PORTS = [143, 110, 25, 24, 587, 993]


def _read_all(path: Path) -> tuple[int, int]:
    """Open and read a capture like the pipeline does; return (packets, file size). Checks the contract."""
    size = path.stat().st_size
    try:
        cap = open_capture(str(path))
    except CaptureFormatError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg, repr(msg)
        return 0, size
    n = 0
    with cap:
        for ts, linktype, wirelen, data in cap.packets():
            n += 1
            assert isinstance(ts, int) and isinstance(linktype, int) and isinstance(data, bytes)
            assert wirelen >= len(data), (wirelen, len(data))
        info = cap.info
    assert info.packets == n
    for d in info.damage:
        assert d.code in DAMAGE_CODES, d
        assert d.offset >= 0 and "\n" not in d.detail
    if info.compression is None:
        assert n <= size // MIN_RECORD + 1, (n, size)
        assert info.bytes <= size
    return n, size


def _check_file(data: bytes) -> tuple[int, int]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.cap"
        path.write_bytes(data)
        return _read_all(path)


@settings(max_examples=_n(200, 5000), deadline=None)
@given(st.sampled_from([b"", b"\x1f\x8b", SHB, *PCAP_MAGICS]), st.binary(max_size=3000))
def test_any_bytes_after_a_magic(magic: bytes, rest: bytes) -> None:
    """Arbitrary bytes behind every magic the reader sniffs."""
    _check_file(magic + rest)


u32 = st.one_of(
    st.integers(0, 2000),
    st.sampled_from([0, 1, 15, 16, 65535, 262144, 262145, 1 << 24, 0xFFFFFFFF]),
    st.integers(0, 0xFFFFFFFF),
)


@st.composite
def pcap_files(draw: st.DrawFn) -> bytes:
    """A pcap header (random order, resolution, snaplen, link type, version) and records whose lengths may lie."""
    magic = draw(st.sampled_from(PCAP_MAGICS))
    e = "<" if magic[0] in (0xD4, 0x4D, 0x34) else ">"
    hlen = 24 if magic == b"\x34\xcd\xb2\xa1" else 16
    minor = draw(st.sampled_from([4, 4, 4, 0, 99]))
    out = [
        magic
        + struct.pack(e + "HHiII", 2, minor, 0, 0, draw(u32))
        + struct.pack(e + "I", draw(st.sampled_from(LINKTYPES)))
    ]
    for _ in range(draw(st.integers(0, 12))):
        data = draw(st.binary(max_size=200))
        cap = draw(st.one_of(st.just(len(data)), u32))
        wire = draw(st.one_of(st.just(len(data)), u32))
        sec = draw(st.one_of(st.just(1_700_000_000), u32))
        frac = draw(st.one_of(st.integers(0, 999_999), u32))
        out.append(struct.pack(e + "IIII", sec, frac, cap, wire) + b"\x00" * (hlen - 16) + data)
    blob = b"".join(out)
    cut = draw(st.one_of(st.just(len(blob)), st.integers(0, len(blob))))
    return blob[:cut]


@settings(max_examples=_n(200, 8000), deadline=None)
@given(pcap_files())
def test_pcap_with_lying_records(data: bytes) -> None:
    """Classic pcap: lying caplen/wirelen/timestamps, truncation anywhere."""
    _check_file(data)


def _block(btype: int, body: bytes, length: int | None = None, trailer: int | None = None) -> bytes:
    body = body + b"\x00" * (-len(body) % 4)
    total = 12 + len(body)
    return (
        struct.pack("<II", btype, total if length is None else length)
        + body
        + struct.pack("<I", total if trailer is None else trailer)
    )


@st.composite
def pcapng_files(draw: st.DrawFn) -> bytes:
    """SHB, then a random mix of IDBs (with options), EPBs, SPBs, OPBs, unknown blocks and new sections."""
    out = [_block(0x0A0D0D0A, BOM_LE + struct.pack("<HHq", 1, 0, -1))]
    for _ in range(draw(st.integers(0, 14))):
        kind = draw(st.sampled_from(["idb", "epb", "epb", "epb", "spb", "opb", "other", "shb"]))
        lie_len = draw(st.one_of(st.none(), st.none(), u32))
        lie_tail = draw(st.one_of(st.none(), st.none(), u32))
        if kind == "idb":
            opts = b""
            for _ in range(draw(st.integers(0, 3))):
                code = draw(st.sampled_from([0, 2, 9, 13, 14, 0xFFFF]))
                value = draw(st.binary(max_size=12))
                olen = draw(st.one_of(st.just(len(value)), st.integers(0, 0xFFFF)))
                opts += struct.pack("<HH", code, olen) + value + b"\x00" * (-len(value) % 4)
            body = struct.pack("<HHI", draw(st.sampled_from(LINKTYPES)), 0, draw(u32)) + opts
            out.append(_block(1, body, lie_len, lie_tail))
        elif kind in ("epb", "opb"):
            data = draw(st.binary(max_size=200))
            cap = draw(st.one_of(st.just(len(data)), u32))
            head = struct.pack(
                "<IIIII",
                draw(st.integers(0, 3)),
                draw(u32),
                draw(u32),
                cap,
                draw(st.one_of(st.just(len(data)), u32)),
            )
            if kind == "opb":
                head = head[:4] + b"\x00\x00\x00\x00" + head[4:]
            out.append(_block(6 if kind == "epb" else 2, head + data, lie_len, lie_tail))
        elif kind == "spb":
            data = draw(st.binary(max_size=200))
            out.append(
                _block(
                    3, struct.pack("<I", draw(st.one_of(st.just(len(data)), u32))) + data, lie_len, lie_tail
                )
            )
        elif kind == "shb":
            bom = draw(st.sampled_from([BOM_LE, BOM_LE[::-1], b"\xde\xad\xbe\xef"]))
            out.append(
                _block(
                    0x0A0D0D0A,
                    bom + struct.pack("<HHq", draw(st.sampled_from([1, 1, 2])), 0, -1),
                    lie_len,
                    lie_tail,
                )
            )
        else:
            out.append(_block(draw(u32), draw(st.binary(max_size=100)), lie_len, lie_tail))
    blob = b"".join(out)
    cut = draw(st.one_of(st.just(len(blob)), st.integers(0, len(blob))))
    return blob[:cut]


@settings(max_examples=_n(200, 8000), deadline=None)
@given(pcapng_files())
def test_pcapng_with_lying_blocks(data: bytes) -> None:
    """pcapng: lying block lengths and trailers, unknown interfaces, bad options, new sections."""
    _check_file(data)


@settings(max_examples=_n(100, 2000), deadline=None)
@given(st.one_of(pcap_files(), pcapng_files()), st.integers(0, 10_000), st.integers(0, 255))
def test_gzip_cut_or_corrupted(data: bytes, where: int, value: int) -> None:
    """A gzip-compressed capture cut short or with one byte changed."""
    gz = bytearray(gzip.compress(data, mtime=0))
    cut = bytes(gz[: 2 + where % max(len(gz) - 1, 1)])
    _check_file(cut)
    if len(gz) > 10:
        gz[10 + where % (len(gz) - 10)] = value
        _check_file(bytes(gz))


# ----------------------------------------------------------------------------- frames and flows


def _ipv4(src: int, dst: int, payload: bytes, ihl: int, total: int | None, frag: int, proto: int) -> bytes:
    t = 20 + len(payload) if total is None else total
    return struct.pack("!BBHHHBBHII", 0x40 | ihl, 0, t & 0xFFFF, 1, frag, 64, proto, 0, src, dst) + payload


def _tcp(sport: int, dport: int, seq: int, ack: int, flags: int, doff: int, payload: bytes) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, 65535, 0, 0) + payload


PAYLOAD_TOKENS = [
    b"* OK ready\r\n",
    b'a1 ID ("x-originating-ip" "1.2.3.4")\r\n',
    b"a1 OK\r\n",
    b"{5}\r\n",
    b"hello",
    b"+OK [XCLIENT]\r\n",
    b"XCLIENT ADDR=1.2.3.4 FORWARD=eD15\r\n",
    b"220 mx ESMTP\r\n",
    b"EHLO x\r\n",
    b"250 XCLIENT ADDR\r\n",
    b"RCPT TO:<a@b> XRCPTFORWARD=a+3Db\r\n",
    b"<script>x</script>",
    b"\xff\xfe\x00",
    b"\r\n",
    b"STARTTLS\r\n",
    b"a2 OK Begin TLS\r\n",
    b"\x16\x03\x01",
]
payloads = st.lists(st.sampled_from(PAYLOAD_TOKENS) | st.binary(max_size=16), max_size=6).map(b"".join)


@st.composite
def tcp_frames(draw: st.DrawFn) -> tuple[int, int, int, bytes]:
    """One Ethernet/IPv4/TCP packet of a few mail flows, any flags, sequence numbers near each other, lies allowed."""
    client = draw(st.sampled_from([0xC0000201, 0xC0000202]))
    server = 0xC6336414
    cport = draw(st.sampled_from([50000, 50001]))
    sport = draw(st.sampled_from(MAIL_PORTS + [8080]))
    to_server = draw(st.booleans())
    seq = draw(st.one_of(st.integers(1000, 1200), st.integers(0, 0xFFFFFFFF)))
    ack = draw(st.one_of(st.integers(5000, 5200), st.integers(0, 0xFFFFFFFF)))
    flags = draw(
        st.one_of(st.sampled_from([0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14]), st.integers(0, 0x1FF))
    )
    doff = draw(st.one_of(st.just(5), st.integers(0, 15)))
    body = draw(payloads)
    seg = (
        _tcp(cport, sport, seq, ack, flags & 0xFF, doff, body)
        if to_server
        else _tcp(sport, cport, seq, ack, flags & 0xFF, doff, body)
    )
    ihl = draw(st.one_of(st.just(5), st.integers(0, 15)))
    total = draw(st.one_of(st.none(), st.integers(0, 0xFFFF)))
    frag = draw(st.sampled_from([0x4000, 0x4000, 0x2000, 0x0001, 0x2003]))
    ip = (
        _ipv4(client, server, seg, ihl, total, frag, 6)
        if to_server
        else _ipv4(server, client, seg, ihl, total, frag, 6)
    )
    frame = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip
    cut = draw(st.one_of(st.just(len(frame)), st.integers(0, len(frame))))
    linktype = draw(st.sampled_from([1, 1, 1, 101, 113, 147]))
    if linktype == 101:
        frame = frame[14:]
    ts = 1_700_000_000 * 10**9 + draw(st.integers(0, 10**10))
    return ts, linktype, len(frame), frame[:cut]


@settings(max_examples=_n(300, 8000), deadline=None)
@given(st.integers(0, 276), st.binary(max_size=200), st.integers(0, 1 << 32))
def test_decoder_any_frame(linktype: int, data: bytes, wirelen: int) -> None:
    """The decoder returns a TCP tuple or None for any bytes and link type."""
    dec = Decoder()
    out = dec.decode(1, 0, linktype, data, wirelen)
    if out is not None:
        key, seq, ack, flags, payload = out
        assert (
            len(key) in (12, 36) and 0 <= seq < 1 << 32 and 0 <= ack < 1 << 32 and isinstance(payload, bytes)
        )
    assert all(i.code and "\n" not in i.detail for i in dec.issues)


@settings(max_examples=_n(150, 4000), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(tcp_frames(), max_size=40))
def test_engine_any_packets(packets: list[tuple[int, int, int, bytes]]) -> None:
    """The engine (hot path, flow table, reassembly, parsers) takes any packet sequence."""
    engine = Engine(Settings())
    flows, stats = engine.run(iter(packets), 0, Decoder())
    assert stats.packets == len(packets)
    assert stats.parser_errors == 0
    for f in flows:
        assert f.bytes_to_server >= 0 and f.bytes_to_client >= 0
        assert f.first_frame <= f.last_frame


def _pcap(packets: list[tuple[int, int, int, bytes]]) -> bytes:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)]
    for ts, linktype, wire, data in packets:
        if linktype != 1:
            continue
        sec, ns = divmod(ts, 10**9)
        out.append(struct.pack("<IIII", sec, ns // 1000, len(data), max(wire, len(data))) + data)
    return b"".join(out)


@settings(max_examples=_n(60, 1500), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(tcp_frames(), min_size=1, max_size=30))
def test_pipeline_and_reports_any_packets(packets: list[tuple[int, int, int, bytes]]) -> None:
    """analyze() and both report writers take any such capture; JSON is UTF-8, HTML escapes payloads."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.pcap"
        path.write_bytes(_pcap(packets))
        result = analyze([str(path)], Settings())
        written = write_reports(result, str(Path(tmp) / "out"), ("json", "html"), force=True)
        assert {p.name for p in written} == {"report.json", "report.html"}
        report = json.loads((Path(tmp) / "out" / "report.json").read_bytes().decode("utf-8"))
        assert report["format_version"] >= 1
        html = (Path(tmp) / "out" / "report.html").read_bytes().decode("utf-8")
        assert "<script>x" not in html
