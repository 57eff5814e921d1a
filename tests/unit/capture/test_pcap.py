"""Classic pcap reader: every header variant, damage, resync, chunking, fuzzing, public captures."""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import dpkt
import pytest
from fixtures import (
    BASE_SEC,
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    pcap_file,
    pcap_header,
    pcap_record,
    payload,
    three_packet_pcap,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import analyzer.capture.reader as reader
from analyzer.capture import CaptureInfo, open_capture
from analyzer.capture.reader import DAMAGE_CODES, MAX_DAMAGE, Packet
from analyzer.errors import CaptureFormatError

NS = 1_000_000_000
ROOT = Path(__file__).resolve().parents[3]
PUBLIC_CANDIDATES = (ROOT.parent / "shared" / "captures-public", Path("/work/shared/captures-public"))
PUBLIC = next((p for p in PUBLIC_CANDIDATES if p.is_dir()), None)
#: a public capture with 3 bytes missing inside frame 18, and its intact twin
DAMAGED_PUBLIC = "suricata-verify/smtp-to-comma/10.7.29.101_49898-178.63.41.150_25.pcap"
INTACT_TWIN = "suricata-verify/smtp-data-rejected/10.7.29.101_49898-178.63.41.150_25.pcap"


def read(tmp_path: Path, data: bytes, name: str = "t.pcap") -> tuple[list[Packet], CaptureInfo]:
    """Write ``data`` to a file, read every packet, return them with the final info."""
    path = tmp_path / name
    path.write_bytes(data)
    with open_capture(str(path)) as cap:
        packets = list(cap.packets())
    return packets, cap.info


def codes(info: CaptureInfo) -> list[str]:
    return [d.code for d in info.damage]


# ----------------------------------------------------------------- variants


@pytest.mark.parametrize("little", [True, False], ids=["le", "be"])
@pytest.mark.parametrize("nano", [False, True], ids=["us", "ns"])
def test_three_packets_every_variant(tmp_path: Path, little: bool, nano: bool) -> None:
    data = three_packet_pcap(little=little, nano=nano)
    packets, info = read(tmp_path, data)
    first_frac_ns = 123_456_789 if nano else 123_456_000
    second_frac_ns = 999_999_999 if nano else 999_999_000
    assert packets == [
        (BASE_SEC * NS + first_frac_ns, LINKTYPE_ETHERNET, 60, payload(1, 60)),
        ((BASE_SEC + 1) * NS + second_frac_ns, LINKTYPE_ETHERNET, 70, payload(2, 70)),
        ((BASE_SEC + 2) * NS, LINKTYPE_ETHERNET, 41, payload(3, 41)),
    ]
    assert all(type(p[3]) is bytes for p in packets)
    assert info.format == "pcap"
    assert info.byte_order == ("little" if little else "big")
    assert info.ts_resolution == ("ns" if nano else "us")
    assert info.snaplen == 65535
    assert info.compression is None
    assert info.packets == 3
    assert info.bytes == len(data) == info.file_size == info.raw_bytes
    assert info.first_ts_ns == packets[0][0]
    assert info.last_ts_ns == packets[-1][0]
    assert info.linktypes == {LINKTYPE_ETHERNET: 3}
    assert info.damage == []
    assert info.interfaces[0]["linktype"] == LINKTYPE_ETHERNET
    assert info.interfaces[0]["units_per_s"] == (NS if nano else 1_000_000)


@pytest.mark.parametrize("little", [True, False], ids=["le", "be"])
@pytest.mark.parametrize("nano", [False, True], ids=["us", "ns"])
def test_variants_match_dpkt(tmp_path: Path, little: bool, nano: bool) -> None:
    records = [
        (BASE_SEC + i, (i * 7919) % (NS if nano else 1_000_000), payload(i, 20 + i * 13)) for i in range(40)
    ]
    data = pcap_file(records, little=little, nano=nano, linktype=LINKTYPE_RAW)
    packets, info = read(tmp_path, data)
    ref = list(dpkt.pcap.Reader(io.BytesIO(data)))
    assert len(packets) == len(ref) == 40
    for (ts, lt, wire, pkt), (rts, rbuf) in zip(packets, ref):
        assert pkt == rbuf
        assert abs(ts / NS - float(rts)) < 1e-6
        assert lt == LINKTYPE_RAW and wire == len(pkt)
    assert [p[0] for p in packets] == [s * NS + f * (1 if nano else 1000) for s, f, _ in records]


@pytest.mark.parametrize("little", [True, False], ids=["le", "be"])
def test_modified_pcap_24_byte_record_headers(tmp_path: Path, little: bool) -> None:
    data = three_packet_pcap(little=little, modified=True)
    packets, info = read(tmp_path, data)
    assert [p[3] for p in packets] == [payload(1, 60), payload(2, 70), payload(3, 41)]
    assert packets[0][0] == BASE_SEC * NS + 123_456_000
    assert info.damage == []
    ref = list(dpkt.pcap.Reader(io.BytesIO(data)))
    assert [bytes(b) for _, b in ref] == [p[3] for p in packets]


def test_fcs_bits_in_linktype_field_are_masked(tmp_path: Path) -> None:
    raw_linktype = LINKTYPE_ETHERNET | 0x04000000 | (2 << 28)  # FCS present, 2 x 16-bit words
    data = pcap_header(linktype=raw_linktype) + pcap_record(BASE_SEC, 0, payload(1))
    packets, info = read(tmp_path, data)
    assert packets[0][1] == LINKTYPE_ETHERNET
    assert info.interfaces[0]["fcs_len"] == 4
    assert info.linktypes == {LINKTYPE_ETHERNET: 1}


def test_fcs_length_ignored_without_present_bit(tmp_path: Path) -> None:
    data = pcap_header(linktype=LINKTYPE_ETHERNET | (3 << 28)) + pcap_record(BASE_SEC, 0, payload(1))
    packets, info = read(tmp_path, data)
    assert packets[0][1] == LINKTYPE_ETHERNET
    assert info.interfaces[0]["fcs_len"] is None


def test_header_only_file_has_no_packets(tmp_path: Path) -> None:
    packets, info = read(tmp_path, pcap_header())
    assert packets == [] and info.damage == [] and info.first_ts_ns is None and info.linktypes == {}


def test_unusual_minor_version_is_read_and_noted(tmp_path: Path) -> None:
    data = pcap_header(version=(2, 2)) + pcap_record(BASE_SEC, 5, payload(1))
    packets, info = read(tmp_path, data)
    assert len(packets) == 1
    assert codes(info) == ["unusual_version"]


def test_unsupported_major_version_is_unusable(tmp_path: Path) -> None:
    path = tmp_path / "v.pcap"
    path.write_bytes(pcap_header(version=(1, 0)))
    with pytest.raises(CaptureFormatError, match=r"unsupported pcap version 1\.0"):
        open_capture(str(path))


# ----------------------------------------------------------------- per-record damage


def test_caplen_above_wirelen_is_yielded_with_wirelen_caplen(tmp_path: Path) -> None:
    data = (
        pcap_header()
        + pcap_record(BASE_SEC, 0, payload(1, 60), wirelen=50)
        + pcap_record(BASE_SEC, 1, payload(2))
    )
    packets, info = read(tmp_path, data)
    assert [(p[2], len(p[3])) for p in packets] == [(60, 60), (60, 60)]
    assert [(d.code, d.frame, d.offset) for d in info.damage] == [("bad_caplen", 1, 24)]
    assert "60" in info.damage[0].detail and "50" in info.damage[0].detail


def test_implausible_wirelen_is_damage_and_set_to_caplen(tmp_path: Path) -> None:
    """A 4 GB original length is reported (hot loop and slow path alike), the packet still read."""
    data = (
        pcap_header()
        + pcap_record(BASE_SEC, 0, payload(1, 60))
        + pcap_record(BASE_SEC, 1, payload(2, 60), wirelen=0xFFFFFFFF)
        + pcap_record(BASE_SEC, 2, payload(3, 60), wirelen=(1 << 24) - 1)
    )
    packets, info = read(tmp_path, data)
    assert [(p[2], len(p[3])) for p in packets] == [(60, 60), (60, 60), ((1 << 24) - 1, 60)]
    assert [(d.code, d.frame) for d in info.damage] == [("implausible_wirelen", 2)]
    assert "4294967295" in info.damage[0].detail


def test_caplen_above_snaplen_is_yielded(tmp_path: Path) -> None:
    data = pcap_header(snaplen=64) + b"".join(
        pcap_record(BASE_SEC, i, payload(i, 60 + 5 * i)) for i in range(3)
    )
    packets, info = read(tmp_path, data)
    assert [len(p[3]) for p in packets] == [60, 65, 70]
    assert [(d.code, d.frame) for d in info.damage] == [
        ("caplen_exceeds_snaplen", 2),
        ("caplen_exceeds_snaplen", 3),
    ]


def test_snaplen_zero_means_no_snaplen_check(tmp_path: Path) -> None:
    data = pcap_header(snaplen=0) + pcap_record(BASE_SEC, 0, payload(1, 1500))
    packets, info = read(tmp_path, data)
    assert len(packets[0][3]) == 1500 and info.damage == []


def test_damage_list_is_bounded(tmp_path: Path) -> None:
    n = MAX_DAMAGE + 123
    data = pcap_header() + b"".join(pcap_record(BASE_SEC, i, b"ab", wirelen=1) for i in range(n))
    packets, info = read(tmp_path, data)
    assert len(packets) == n
    assert len(info.damage) == MAX_DAMAGE
    assert info.damage_dropped == 123


# ----------------------------------------------------------------- truncation


def _boundaries(data: bytes, hlen: int = 16) -> list[int]:
    out = [24]
    pos = 24
    while pos < len(data):
        pos += hlen + struct.unpack_from("<I", data, pos + 8)[0]
        out.append(pos)
    return out


@pytest.mark.parametrize("modified", [False, True], ids=["std", "modified"])
def test_truncation_at_every_offset(tmp_path: Path, modified: bool) -> None:
    data = three_packet_pcap(modified=modified)
    hlen = 24 if modified else 16
    full, _ = read(tmp_path, data)
    bounds = _boundaries(data, hlen)
    for cut in range(1, 24):
        path = tmp_path / "cut.pcap"
        path.write_bytes(data[:cut])
        with pytest.raises(CaptureFormatError):
            open_capture(str(path))
    for cut in range(24, len(data) + 1):
        packets, info = read(tmp_path, data[:cut])
        complete = sum(1 for b in bounds[1:] if b <= cut)
        assert packets == full[:complete], cut
        if cut in bounds:
            assert info.damage == [], cut
        else:
            last = max(b for b in bounds if b <= cut)
            expected = "truncated_header" if cut - last < hlen else "truncated_record"
            assert codes(info) == [expected], cut
            assert info.damage[0].offset == last
        assert info.bytes == cut


def test_truncated_huge_record_does_not_allocate_it(tmp_path: Path) -> None:
    # caplen 200000 is legal (below 262144) but only 10 data bytes follow
    data = (
        pcap_header(snaplen=262144)
        + pcap_record(BASE_SEC, 0, payload(1))
        + struct.pack("<IIII", BASE_SEC, 0, 200000, 200000)
    )
    packets, info = read(tmp_path, data + b"x" * 10)
    assert len(packets) == 1
    assert codes(info) == ["truncated_record"]


# ----------------------------------------------------------------- resync


ABSURD = struct.pack("<IIII", BASE_SEC, 0, 0xFFFFFFFF, 0xFFFFFFFF)


def test_absurd_caplen_resyncs_to_later_records(tmp_path: Path) -> None:
    head = pcap_header() + pcap_record(BASE_SEC, 1, payload(1)) + pcap_record(BASE_SEC, 2, payload(2))
    tail = pcap_record(BASE_SEC + 1, 3, payload(3)) + pcap_record(BASE_SEC + 1, 4, payload(4))
    garbage = b"\xff" * 37
    packets, info = read(tmp_path, head + ABSURD + garbage + tail)
    assert [p[3] for p in packets] == [payload(i) for i in (1, 2, 3, 4)]
    assert codes(info) == ["caplen_too_large", "resynced"]
    assert info.damage[0].offset == len(head)
    assert "skipped 53 " in info.damage[1].detail
    assert info.packets == 4


def test_absurd_caplen_in_first_record(tmp_path: Path) -> None:
    tail = pcap_record(BASE_SEC, 3, payload(3)) + pcap_record(BASE_SEC, 4, payload(4))
    packets, info = read(tmp_path, pcap_header() + ABSURD + tail)
    assert [p[3] for p in packets] == [payload(3), payload(4)]
    assert codes(info) == ["caplen_too_large", "resynced"]
    assert info.first_ts_ns == BASE_SEC * NS + 3000


def test_huge_snaplen_does_not_make_absurd_caplens_acceptable(tmp_path: Path) -> None:
    tail = pcap_record(BASE_SEC, 3, payload(3)) + pcap_record(BASE_SEC, 4, payload(4))
    packets, info = read(tmp_path, pcap_header(snaplen=0xFFFFFFFF) + ABSURD + tail)
    assert len(packets) == 2
    assert codes(info) == ["caplen_too_large", "resynced"]


def test_resync_skips_long_zero_run_quickly(tmp_path: Path) -> None:
    head = pcap_header() + pcap_record(BASE_SEC, 1, payload(1))
    tail = pcap_record(BASE_SEC, 3, payload(3)) + pcap_record(BASE_SEC, 4, payload(4))
    packets, info = read(tmp_path, head + ABSURD + bytes(300_000) + tail)
    assert [p[3] for p in packets] == [payload(1), payload(3), payload(4)]
    assert f"skipped {16 + 300_000} " in info.damage[1].detail


def test_resync_rejects_candidate_far_from_last_timestamp(tmp_path: Path) -> None:
    head = pcap_header() + pcap_record(BASE_SEC, 1, payload(1))
    fake = pcap_record(BASE_SEC - 5 * 366 * 86400, 0, b"abcd")  # plausible but five years off
    tail = pcap_record(BASE_SEC, 3, payload(3)) + pcap_record(BASE_SEC, 4, payload(4))
    packets, info = read(tmp_path, head + ABSURD + fake + tail)
    assert [p[3] for p in packets] == [payload(1), payload(3), payload(4)]
    assert f"skipped {16 + len(fake)} " in info.damage[1].detail


def test_resync_requires_the_following_header_to_be_plausible(tmp_path: Path) -> None:
    head = pcap_header() + pcap_record(BASE_SEC, 1, payload(1))
    fake = pcap_record(BASE_SEC, 0, b"abcd") + b"\xff" * 16  # good header, then junk where the next should be
    tail = pcap_record(BASE_SEC, 3, payload(3)) + pcap_record(BASE_SEC, 4, payload(4))
    packets, info = read(tmp_path, head + ABSURD + fake + tail)
    assert [p[3] for p in packets] == [payload(1), payload(3), payload(4)]


def test_damage_then_only_garbage_is_trailing_garbage(tmp_path: Path) -> None:
    head = pcap_header() + pcap_record(BASE_SEC, 1, payload(1))
    packets, info = read(tmp_path, head + ABSURD + b"\xee" * 1000)
    assert [p[3] for p in packets] == [payload(1)]
    assert codes(info) == ["caplen_too_large", "trailing_garbage"]
    assert "1016 bytes" in info.damage[1].detail


def test_resync_accepts_last_record_ending_exactly_at_eof(tmp_path: Path) -> None:
    head = pcap_header() + pcap_record(BASE_SEC, 1, payload(1))
    packets, _ = read(tmp_path, head + ABSURD + b"\xff" * 5 + pcap_record(BASE_SEC, 2, payload(2)))
    assert [p[3] for p in packets] == [payload(1), payload(2)]


# ----------------------------------------------------------------- chunking


def _mixed_file() -> bytes:
    recs = [pcap_record(BASE_SEC + i // 3, i, payload(i, 1 + (i * 37) % 300)) for i in range(30)]
    recs.insert(10, ABSURD + b"\xff" * 9)
    recs.insert(20, pcap_record(BASE_SEC + 9, 0, payload(99, 80), wirelen=10))
    return pcap_header() + b"".join(recs) + b"\x01\x02\x03"


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 16, 17, 100, 4096])
def test_chunk_size_does_not_change_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    data = _mixed_file()
    expected, info_default = read(tmp_path, data)
    assert len(expected) == 31
    monkeypatch.setattr(reader, "CHUNK_SIZE", chunk)
    packets, info = read(tmp_path, data)
    assert packets == expected
    assert info.damage == info_default.damage
    assert codes(info) == ["caplen_too_large", "resynced", "bad_caplen", "truncated_header"]
    assert info.bytes == len(data)


def test_progress_fields_advance_while_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader, "CHUNK_SIZE", 500)
    data = pcap_file([(BASE_SEC, i, payload(i, 100)) for i in range(100)])
    path = tmp_path / "p.pcap"
    path.write_bytes(data)
    seen = []
    with open_capture(str(path)) as cap:
        for _ in cap.packets():
            seen.append((cap.info.bytes, cap.info.raw_bytes))
    assert seen == sorted(seen) and len(set(seen)) > 10
    assert seen[-1][0] <= len(data) == cap.info.bytes == cap.info.raw_bytes


def test_info_packets_is_exact_during_iteration(tmp_path: Path) -> None:
    data = pcap_file([(BASE_SEC, i, payload(i)) for i in range(50)])
    path = tmp_path / "p.pcap"
    path.write_bytes(data)
    with open_capture(str(path)) as cap:
        for frame, packet in enumerate(cap.packets(), 1):
            assert cap.info.packets == frame
            assert packet[3] == payload(frame - 1)


def test_close_mid_iteration_syncs_info(tmp_path: Path) -> None:
    data = pcap_file([(BASE_SEC, i, payload(i)) for i in range(50)])
    path = tmp_path / "p.pcap"
    path.write_bytes(data)
    cap = open_capture(str(path))
    it = cap.packets()
    for _ in range(5):
        next(it)
    cap.close()
    assert cap.info.packets == 5
    assert cap.info.last_ts_ns == BASE_SEC * NS + 4000
    assert list(it) == []
    assert list(cap.packets()) == []


def test_packets_after_close_without_reading(tmp_path: Path) -> None:
    path = tmp_path / "p.pcap"
    path.write_bytes(three_packet_pcap())
    cap = open_capture(str(path))
    cap.close()
    assert list(cap.packets()) == []
    assert cap.info.damage == [] and cap.info.packets == 0


# ----------------------------------------------------------------- fuzzing


@settings(max_examples=200, deadline=None)
@given(tail=st.binary(max_size=3000), little=st.booleans(), nano=st.booleans())
def test_random_bytes_after_header_never_raise(
    tmp_path_factory: pytest.TempPathFactory, tail: bytes, little: bool, nano: bool
) -> None:
    data = pcap_header(little=little, nano=nano, snaplen=1000) + tail
    packets, info = read(tmp_path_factory.mktemp("fz"), data)
    assert info.bytes == len(data)
    assert sum(len(p[3]) for p in packets) <= len(tail)
    assert all(p[2] >= len(p[3]) for p in packets)
    assert all(d.code in DAMAGE_CODES for d in info.damage)


@settings(max_examples=200, deadline=None)
@given(flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8))
def test_mutated_file_never_raises(
    tmp_path_factory: pytest.TempPathFactory, flips: list[tuple[int, int]]
) -> None:
    data = bytearray(pcap_file([(BASE_SEC + i, i, payload(i, 20 + i)) for i in range(40)]))
    for where, value in flips:
        data[24 + where % (len(data) - 24)] = value
    packets, info = read(tmp_path_factory.mktemp("mut"), bytes(data))
    assert info.bytes == len(data)
    assert len(packets) <= 40 + len(data) // 16
    assert all(d.code in DAMAGE_CODES for d in info.damage)


# ----------------------------------------------------------------- public captures


def _public_pcaps() -> list[str]:
    if PUBLIC is None:
        return []
    found = sorted(str(p.relative_to(PUBLIC)) for p in PUBLIC.rglob("*.pcap"))
    return [rel for rel in found if rel != DAMAGED_PUBLIC]  # see test_public_damaged_capture_...


@pytest.mark.skipif(PUBLIC is None, reason="shared/captures-public not present")
@pytest.mark.parametrize("rel", _public_pcaps())
def test_public_pcap_matches_dpkt(rel: str) -> None:
    assert PUBLIC is not None
    path = PUBLIC / rel
    with open_capture(str(path)) as cap:
        packets = list(cap.packets())
    with open(path, "rb") as f:
        ref = list(dpkt.pcap.UniversalReader(f))
    assert len(packets) == len(ref)
    for (ts, _lt, wire, data), (rts, rbuf) in zip(packets, ref):
        assert data == bytes(rbuf)
        assert abs(ts / NS - float(rts)) < 1e-6
    assert cap.info.damage == []
    assert cap.info.bytes == os.path.getsize(path)


@pytest.mark.skipif(PUBLIC is None, reason="shared/captures-public not present")
def test_public_damaged_capture_recovers_every_frame() -> None:
    # tshark and tcpdump stop after 18 frames ("File has 3925868813-byte packet"); the file is
    # its intact twin with 3 bytes missing inside frame 18, so resync recovers all 199 frames.
    assert PUBLIC is not None
    with open_capture(str(PUBLIC / DAMAGED_PUBLIC)) as cap:
        damaged = list(cap.packets())
    with open_capture(str(PUBLIC / INTACT_TWIN)) as cap2:
        intact = list(cap2.packets())
    assert len(damaged) == len(intact) == 199
    assert [i + 1 for i, (a, b) in enumerate(zip(damaged, intact)) if a != b] == [18]
    assert codes(cap.info) == ["caplen_too_large", "resynced"]
    assert "skipped 3 " in cap.info.damage[1].detail
