"""open_capture: format sniffing, gzip, standard input, unusable inputs, stream errors."""

from __future__ import annotations

import gzip
import io
import os
import re
import sys
from pathlib import Path

import dpkt
import pytest
from fixtures import (
    BASE_SEC,
    gz,
    pcap_file,
    pcap_header,
    pcap_record,
    payload,
    three_packet_pcap,
    three_packet_pcapng,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import analyzer.capture.reader as reader
from analyzer.capture import Capture, CaptureInfo, open_capture
from analyzer.capture.reader import DAMAGE_CODES, Packet
from analyzer.errors import CaptureFormatError

NS = 1_000_000_000
ROOT = Path(__file__).resolve().parents[3]
PUBLIC_CANDIDATES = (ROOT.parent / "shared" / "captures-public", Path("/work/shared/captures-public"))
PUBLIC = next((p for p in PUBLIC_CANDIDATES if p.is_dir()), None)

FORMATS = {
    "pcap-le-us": lambda: three_packet_pcap(),
    "pcap-be-us": lambda: three_packet_pcap(little=False),
    "pcap-le-ns": lambda: three_packet_pcap(nano=True),
    "pcap-be-ns": lambda: three_packet_pcap(little=False, nano=True),
    "pcap-modified": lambda: three_packet_pcap(modified=True),
    "pcapng-le": lambda: three_packet_pcapng(),
    "pcapng-be": lambda: three_packet_pcapng(little=False),
}


def read_path(path: Path | str) -> tuple[list[Packet], CaptureInfo]:
    with open_capture(str(path)) as cap:
        packets = list(cap.packets())
    return packets, cap.info


def read(tmp_path: Path, data: bytes, name: str = "t.cap") -> tuple[list[Packet], CaptureInfo]:
    path = tmp_path / name
    path.write_bytes(data)
    return read_path(path)


class FakeStdin:
    """Stands in for sys.stdin: only ``.buffer`` is used."""

    def __init__(self, buffer: io.BufferedIOBase | io.BytesIO) -> None:
        self.buffer = buffer


class FailingReader(io.BytesIO):
    """A byte stream whose reads fail with EIO once ``fail_at`` bytes were delivered."""

    def __init__(self, data: bytes, fail_at: int) -> None:
        super().__init__(data)
        self.fail_at = fail_at

    def read(self, n: int | None = -1) -> bytes:
        if self.tell() >= self.fail_at:
            raise OSError(5, "Input/output error")
        size = self.fail_at - self.tell() if n is None or n < 0 else min(n, self.fail_at - self.tell())
        return super().read(size)


def message_of(tmp_path: Path, data: bytes, name: str = "x.bin") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(CaptureFormatError) as exc_info:
        open_capture(str(path))
    text = str(exc_info.value)
    assert "\n" not in text and text.strip() == text and text
    return text


# ----------------------------------------------------------------- gzip and stdin


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_gzip_of_every_format(tmp_path: Path, fmt: str) -> None:
    plain = FORMATS[fmt]()
    expected, plain_info = read(tmp_path, plain, "p.cap")
    compressed = gz(plain)
    packets, info = read(tmp_path, compressed, "p.cap.gz")
    assert packets == expected and len(packets) == 3
    assert info.compression == "gzip" and plain_info.compression is None
    assert info.format == plain_info.format
    assert info.bytes == len(plain)
    assert info.raw_bytes == info.file_size == len(compressed)
    assert info.damage == []


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, compress: bool) -> None:
    plain = FORMATS[fmt]()
    expected, _ = read(tmp_path, plain)
    monkeypatch.setattr(sys, "stdin", FakeStdin(io.BytesIO(gz(plain) if compress else plain)))
    packets, info = read_path("-")
    assert packets == expected
    assert info.path == "-"
    assert info.file_size is None
    assert info.compression == ("gzip" if compress else None)
    assert info.bytes == len(plain)


def test_stdin_chunked_pipe_reads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A pipe returns short reads: the reader must keep reading until it has a whole record."""

    class ShortReads(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            return super().read(min(7, n if n is not None and n >= 0 else 7))

    data = pcap_file([(BASE_SEC, i, payload(i, 100 + i)) for i in range(20)])
    expected, _ = read(tmp_path, data)
    monkeypatch.setattr(sys, "stdin", FakeStdin(ShortReads(data)))
    packets, info = read_path("-")
    assert packets == expected and info.damage == []


def test_stdin_is_not_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.BytesIO(three_packet_pcap())
    monkeypatch.setattr(sys, "stdin", FakeStdin(buf))
    with open_capture("-") as cap:
        assert len(list(cap.packets())) == 3
    assert not buf.closed


def test_multi_member_gzip_and_zero_padding(tmp_path: Path) -> None:
    data = three_packet_pcap()
    split = 24 + 16 + 30  # inside the first record
    packets, info = read(tmp_path, gz(data[:split]) + gz(data[split:]) + b"\x00" * 1000)
    expected, _ = read(tmp_path, data, "plain.pcap")
    assert packets == expected
    assert info.damage == []


def test_garbage_after_gzip_member(tmp_path: Path) -> None:
    packets, info = read(tmp_path, gz(three_packet_pcap()) + b"this is not gzip")
    assert len(packets) == 3
    assert [d.code for d in info.damage] == ["gzip_error"]


def test_gzip_truncated_at_every_offset(tmp_path: Path) -> None:
    plain = pcap_file([(BASE_SEC, i, payload(i, 80) + bytes(range(i, i + 40))) for i in range(60)])
    full, _ = read(tmp_path, plain, "full.pcap")
    compressed = gz(plain)
    outcomes = {"error": 0, "damaged": 0}
    for cut in range(2, len(compressed)):
        path = tmp_path / "cut.pcap.gz"
        path.write_bytes(compressed[:cut])
        try:
            packets, info = read_path(path)
        except CaptureFormatError as exc:
            assert "gzip stream broken before any packet" in str(exc), cut
            outcomes["error"] += 1
            continue
        assert packets == full[: len(packets)], cut
        assert len(packets) >= 1
        assert [d.code for d in info.damage] == ["gzip_error"], cut
        outcomes["damaged"] += 1
    assert outcomes["error"] > 0 and outcomes["damaged"] > 0


def test_gzip_corrupted_in_the_middle(tmp_path: Path) -> None:
    plain = pcap_file([(BASE_SEC, i, payload(i, 150) + bytes([i % 7]) * 50) for i in range(400)])
    compressed = bytearray(gz(plain))
    compressed[len(compressed) // 2] ^= 0xFF
    packets, info = read(tmp_path, bytes(compressed))
    full, _ = read(tmp_path, plain, "full.pcap")
    assert packets[:100] == full[:100]  # everything well before the damaged byte is intact
    # the bad byte garbles what follows (pcap damage may come first); the gzip error is reported last
    assert info.damage[-1].code == "gzip_error"
    assert len(info.damage) <= 3


def test_gzip_error_in_stored_block_keeps_every_byte_before_it(tmp_path: Path) -> None:
    # incompressible data is stored: a flipped byte is only caught by the CRC at the very end,
    # and all the data decoded by the failing zlib call is salvaged
    plain = pcap_file([(BASE_SEC, i, os.urandom(200)) for i in range(400)])
    compressed = bytearray(gz(plain))
    where = len(compressed) // 2
    compressed[where] ^= 0xFF
    packets, info = read(tmp_path, bytes(compressed))
    full, _ = read(tmp_path, plain, "full.pcap")
    assert len(packets) == 400
    assert sum(a != b for a, b in zip(packets, full)) == 1
    assert [d.code for d in info.damage] == ["gzip_error"]
    assert "incorrect data check" in info.damage[0].detail


def test_gzip_crc_mismatch_is_reported(tmp_path: Path) -> None:
    compressed = bytearray(gz(three_packet_pcap()))
    compressed[-8] ^= 0x01  # CRC32 in the gzip trailer
    packets, info = read(tmp_path, bytes(compressed))
    assert [d.code for d in info.damage] == ["gzip_error"]
    assert len(packets) == 3


def test_gzip_broken_before_any_packet(tmp_path: Path) -> None:
    text = message_of(tmp_path, gz(three_packet_pcap())[:20], "x.pcap.gz")
    assert "gzip stream broken before any packet" in text
    text = message_of(tmp_path, b"\x1f\x8b\x08\x00garbage-garbage-garbage", "y.pcap.gz")
    assert "gzip stream broken before any packet" in text
    text = message_of(tmp_path, gz(pcap_header() + pcap_record(BASE_SEC, 0, payload(1)))[:-12], "z.pcap.gz")
    assert "gzip stream broken before any packet" in text


def test_read_error_mid_stream_is_damage(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(reader, "CHUNK_SIZE", 64)
    data = pcap_file([(BASE_SEC, i, payload(i)) for i in range(20)])
    monkeypatch.setattr(sys, "stdin", FakeStdin(FailingReader(data, 500)))
    packets, info = read_path("-")
    full, _ = read(tmp_path, data)
    assert packets == full[: len(packets)] and 0 < len(packets) < 20
    assert [d.code for d in info.damage] == ["read_error"]
    assert "Input/output error" in info.damage[0].detail


def test_read_error_at_start_is_unusable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", FakeStdin(FailingReader(b"", 0)))
    with pytest.raises(CaptureFormatError, match="^cannot read standard input: Input/output error$"):
        open_capture("-")


# ----------------------------------------------------------------- unusable inputs


def test_empty_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert message_of(tmp_path, b"", "empty.pcap").endswith("empty.pcap: empty file")
    assert "empty file (after gzip decompression)" in message_of(tmp_path, gz(b""), "e.gz")
    monkeypatch.setattr(sys, "stdin", FakeStdin(io.BytesIO(b"")))
    with pytest.raises(CaptureFormatError, match="^standard input is empty$"):
        open_capture("-")


@pytest.mark.parametrize(
    ("data", "guess"),
    [
        (b"hello, this is a text file\nwith two lines\n", "a text file?"),
        (b"PK\x03\x04\x14\x00\x06\x00" + bytes(40), "a zip archive?"),
        (b"<!DOCTYPE html>\n<html><body>404</body></html>\n", "an HTML page?"),
        (b"<?xml version='1.0'?><a/>", "an XML or HTML document?"),
        (b"\x7fELF\x02\x01\x01" + bytes(50), "an ELF executable?"),
        (b"BZh91AY&SY", "a bzip2 file?"),
        (b'{"not": "a capture"}', "a JSON document?"),
        (bytes(range(250, 256)) + bytes(range(0, 30)), "binary data of an unknown kind"),
    ],
    ids=["text", "zip", "html", "xml", "elf", "bzip2", "json", "binary"],
)
def test_not_a_capture(tmp_path: Path, data: bytes, guess: str) -> None:
    text = message_of(tmp_path, data)
    assert "not a capture file" in text and guess in text
    assert text.startswith(str(tmp_path / "x.bin") + ": ")


def test_not_a_capture_shows_first_bytes_escaped(tmp_path: Path) -> None:
    text = message_of(tmp_path, b"PK\x03\x04\x14\x00\x06\x00rest")
    assert "(starts with 'PK\\x03\\x04\\x14\\x00\\x06\\x00', a zip archive?)" in text


def test_gzip_of_text_is_not_a_capture(tmp_path: Path) -> None:
    text = message_of(tmp_path, gz(b"just some words\n"), "t.gz")
    assert "not a capture file (gzip-compressed)" in text and "a text file?" in text


def test_cannot_open(tmp_path: Path) -> None:
    with pytest.raises(CaptureFormatError, match=r"^cannot open .*nope\.pcap: No such file or directory$"):
        open_capture(str(tmp_path / "nope.pcap"))
    with pytest.raises(CaptureFormatError, match=r"^cannot open .*: Is a directory$"):
        open_capture(str(tmp_path))


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_capture_header_cut_in_its_magic(tmp_path: Path, cut: int) -> None:
    assert "truncated capture file header" in message_of(tmp_path, three_packet_pcap()[:cut])
    assert "truncated capture file header" in message_of(tmp_path, three_packet_pcapng()[:cut])


def test_truncated_file_headers(tmp_path: Path) -> None:
    assert "truncated pcap file header (10 of 24 bytes)" in message_of(tmp_path, three_packet_pcap()[:10])
    assert "truncated" in message_of(tmp_path, three_packet_pcapng()[:20])
    bad_magic = bytearray(three_packet_pcapng())
    bad_magic[8:12] = b"\x01\x02\x03\x04"
    assert "invalid byte-order magic 0x01020304" in message_of(tmp_path, bytes(bad_magic))


def test_files_are_closed(tmp_path: Path) -> None:
    path = tmp_path / "c.pcap"
    path.write_bytes(three_packet_pcap())
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"not a capture at all")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(30):
        with open_capture(str(path)) as cap:
            next(cap.packets())
        with pytest.raises(CaptureFormatError):
            open_capture(str(bad))
    assert len(os.listdir("/proc/self/fd")) == before


def test_capture_is_a_context_manager_returning_itself(tmp_path: Path) -> None:
    path = tmp_path / "c.pcap"
    path.write_bytes(three_packet_pcap())
    cap = open_capture(str(path))
    with cap as entered:
        assert entered is cap and isinstance(cap, Capture)


# ----------------------------------------------------------------- fuzzing


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=400), gzip_it=st.booleans())
def test_any_bytes_either_open_cleanly_or_raise_one_line(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, gzip_it: bool
) -> None:
    path = tmp_path_factory.mktemp("any") / "f"
    path.write_bytes(gz(data) if gzip_it else data)
    try:
        cap = open_capture(str(path))
    except CaptureFormatError as exc:
        assert "\n" not in str(exc)
        return
    with cap:
        packets = list(cap.packets())
    assert sum(len(p[3]) for p in packets) <= len(data)
    assert all(d.code in DAMAGE_CODES for d in cap.info.damage)


@settings(max_examples=200, deadline=None)
@given(prefix=st.sampled_from(["pcap", "pcapng"]), tail=st.binary(max_size=600))
def test_random_bytes_after_a_magic_never_raise_after_open(
    tmp_path_factory: pytest.TempPathFactory, prefix: str, tail: bytes
) -> None:
    head = three_packet_pcap()[:24] if prefix == "pcap" else three_packet_pcapng()[:28]
    path = tmp_path_factory.mktemp("mg") / "f"
    path.write_bytes(gz(head + tail))
    with open_capture(str(path)) as cap:
        list(cap.packets())
    assert cap.info.bytes == len(head) + len(tail)


# ----------------------------------------------------------------- documentation


def test_damage_code_table_matches_docstring() -> None:
    doc = reader.__doc__ or ""
    documented = set(re.findall(r"^([a-z_]+) {2,}", doc, re.MULTILINE)) - {"code"}  # minus the header row
    assert documented == set(DAMAGE_CODES)


# ----------------------------------------------------------------- public captures


def _public_gz() -> list[str]:
    if PUBLIC is None:
        return []
    return sorted(str(p.relative_to(PUBLIC)) for p in PUBLIC.rglob("*.pcap.gz"))


@pytest.mark.skipif(PUBLIC is None, reason="shared/captures-public not present")
@pytest.mark.parametrize("rel", _public_gz())
def test_public_gzip_captures_match_dpkt(rel: str) -> None:
    assert PUBLIC is not None
    path = PUBLIC / rel
    packets, info = read_path(path)
    plain = gzip.decompress(path.read_bytes())
    ref = list(dpkt.pcap.UniversalReader(io.BytesIO(plain)))
    assert len(packets) == len(ref) > 0
    assert all(p[3] == bytes(b) and abs(p[0] / NS - float(t)) < 1e-6 for p, (t, b) in zip(packets, ref))
    assert info.compression == "gzip" and info.damage == []
    assert info.bytes == len(plain)
