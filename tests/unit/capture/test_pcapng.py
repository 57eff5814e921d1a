"""pcapng reader: sections, interfaces and their timestamp units, every packet block, damage, fuzzing."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
from pathlib import Path

import dpkt
import pytest
from fixtures import (
    BASE_SEC,
    BT_CUSTOM,
    BT_ISB,
    BT_NRB,
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_RAW,
    pcapng_block,
    pcapng_epb,
    pcapng_idb,
    pcapng_opb,
    pcapng_option,
    pcapng_shb,
    pcapng_spb,
    payload,
    three_packet_pcapng,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import analyzer.capture.pcapng as pcapng
import analyzer.capture.reader as reader
from analyzer.capture import CaptureInfo, open_capture
from analyzer.capture.pcapng import MAX_BLOCK_LEN
from analyzer.capture.reader import DAMAGE_CODES, MAX_SKIPPED_BLOCK_TYPES, OTHER_BLOCK_TYPE, Packet
from analyzer.errors import CaptureFormatError

NS = 1_000_000_000
ROOT = Path(__file__).resolve().parents[3]
PUBLIC_CANDIDATES = (ROOT.parent / "shared" / "captures-public", Path("/work/shared/captures-public"))
PUBLIC = next((p for p in PUBLIC_CANDIDATES if p.is_dir()), None)
TSHARK = shutil.which("tshark")


def read(tmp_path: Path, data: bytes, name: str = "t.pcapng") -> tuple[list[Packet], CaptureInfo]:
    """Write ``data`` to a file, read every packet, return them with the final info."""
    path = tmp_path / name
    path.write_bytes(data)
    with open_capture(str(path)) as cap:
        packets = list(cap.packets())
    return packets, cap.info


def codes(info: CaptureInfo) -> list[str]:
    return [d.code for d in info.damage]


def multi_interface_file(little: bool = True) -> tuple[bytes, list[int]]:
    """Three interfaces (10^-6, 10^-9 + offset, 2^-10) and the exact expected ts_ns per packet."""
    data = (
        pcapng_shb(little=little)
        + pcapng_idb(LINKTYPE_ETHERNET, 65535, little=little, name="eth0")
        + pcapng_idb(LINKTYPE_RAW, 0, little=little, tsresol=9, tsoffset=-3600, name="tun0")
        + pcapng_idb(LINKTYPE_LINUX_SLL, 262144, little=little, tsresol=0x80 | 10, name="any")
    )
    stamps = []
    for i in range(6):
        k = i // 3
        if i % 3 == 0:
            units = BASE_SEC * 10**6 + 1 + k
            stamps.append(units * 1000)
        elif i % 3 == 1:
            units = BASE_SEC * 10**9 + 123_456_789 + k
            stamps.append(units - 3600 * NS)
        else:
            units = BASE_SEC * 1024 + 1023 + k
            stamps.append(units * NS // 1024)  # 2^-10 s ticks, floored to the nanosecond
        data += pcapng_epb(i % 3, units, payload(i, 40 + i), little=little)
    return data, stamps


# ----------------------------------------------------------------- variants


@pytest.mark.parametrize("little", [True, False], ids=["le", "be"])
def test_three_packets_both_byte_orders(tmp_path: Path, little: bool) -> None:
    data = three_packet_pcapng(little=little)
    packets, info = read(tmp_path, data)
    assert packets == [
        (BASE_SEC * NS + 123_456_000, LINKTYPE_ETHERNET, 60, payload(1, 60)),
        ((BASE_SEC + 1) * NS + 999_999_000, LINKTYPE_ETHERNET, 70, payload(2, 70)),
        ((BASE_SEC + 2) * NS, LINKTYPE_ETHERNET, 41, payload(3, 41)),
    ]
    assert info.format == "pcapng"
    assert info.byte_order == ("little" if little else "big")
    assert info.ts_resolution == "per-interface"
    assert info.snaplen is None
    assert info.packets == 3
    assert info.bytes == len(data)
    assert info.first_ts_ns == packets[0][0] and info.last_ts_ns == packets[-1][0]
    assert info.linktypes == {LINKTYPE_ETHERNET: 3}
    assert info.interfaces == [
        {
            "id": 0,
            "section": 0,
            "section_id": 0,
            "linktype": LINKTYPE_ETHERNET,
            "snaplen": 65535,
            "name": "eth0",
            "tsresol": 6,
            "units_per_s": 10**6,
            "tsresol_ns_mul": 1000,
            "tsresol_ns_div": 1,
            "tsoffset_s": 0,
            "fcs_len": None,
        }
    ]
    assert info.damage == [] and info.skipped_blocks == {}
    ref = list(dpkt.pcapng.Reader(io.BytesIO(data)))
    assert [bytes(b) for _, b in ref] == [p[3] for p in packets]
    assert all(abs(p[0] / NS - float(t)) < 1e-6 for p, (t, _) in zip(packets, ref))


@pytest.mark.parametrize("little", [True, False], ids=["le", "be"])
def test_interfaces_with_different_linktypes_and_resolutions(tmp_path: Path, little: bool) -> None:
    data, stamps = multi_interface_file(little)
    packets, info = read(tmp_path, data)
    assert [p[0] for p in packets] == stamps
    assert [p[1] for p in packets] == [LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LINUX_SLL] * 2
    assert [p[3] for p in packets] == [payload(i, 40 + i) for i in range(6)]
    assert info.linktypes == {LINKTYPE_ETHERNET: 2, LINKTYPE_RAW: 2, LINKTYPE_LINUX_SLL: 2}
    assert [
        (i["name"], i["tsresol_ns_mul"], i["tsresol_ns_div"], i["tsoffset_s"]) for i in info.interfaces
    ] == [
        ("eth0", 1000, 1, 0),
        ("tun0", 1, 1, -3600),
        ("any", 1953125, 2, 0),
    ]
    assert info.damage == []


def test_multi_interface_matches_scapy(tmp_path: Path) -> None:
    from scapy.utils import RawPcapNgReader

    data, _ = multi_interface_file()
    packets, _ = read(tmp_path, data)
    path = tmp_path / "m.pcapng"
    path.write_bytes(data)
    with RawPcapNgReader(str(path)) as r:
        ref = list(r)
    assert [bytes(d) for d, _ in ref] == [p[3] for p in packets]
    for (ts, _lt, _w, _d), (_, meta) in zip(packets, ref):
        scapy_ns = ((meta.tshigh << 32) | meta.tslow) * NS // meta.tsresol
        # scapy ignores if_tsoffset: compare without it
        assert abs(ts - scapy_ns) in (0, 3600 * NS)


@pytest.mark.tshark
@pytest.mark.skipif(TSHARK is None, reason="tshark not installed")
def test_multi_interface_matches_tshark(tmp_path: Path) -> None:
    data, _ = multi_interface_file(little=False)
    packets, _ = read(tmp_path, data)
    path = tmp_path / "m.pcapng"
    path.write_bytes(data)
    assert TSHARK is not None
    out = subprocess.run(
        [TSHARK, "-r", str(path), "-T", "fields", "-e", "frame.time_epoch", "-e", "frame.cap_len"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    epochs, caplens = out[0::2], out[1::2]
    assert [int(c) for c in caplens] == [len(p[3]) for p in packets]
    for p, epoch in zip(packets, epochs):
        sec, _, frac = epoch.partition(".")
        assert p[0] // NS == int(sec)
        assert abs(p[0] % NS - int(frac.ljust(9, "0")[:9])) <= 1  # tshark rounds, we floor


def test_simple_packet_block_caplen_is_min_of_original_room_and_snaplen(tmp_path: Path) -> None:
    data = (
        pcapng_shb()
        + pcapng_idb(LINKTYPE_ETHERNET, 50)
        + pcapng_epb(0, BASE_SEC * 10**6, payload(0, 20))
        + pcapng_spb(payload(1, 30))  # all there
        + pcapng_spb(payload(2, 45), wirelen=1500)  # cut by the block room: 48 bytes with padding
        + pcapng_spb(payload(3, 60))  # cut by snaplen 50
        + pcapng_spb(payload(4, 60), wirelen=10)  # cut by the original length
    )
    packets, info = read(tmp_path, data)
    assert [(p[2], len(p[3])) for p in packets] == [(20, 20), (30, 30), (1500, 48), (60, 50), (10, 10)]
    assert packets[1][3] == payload(1, 30)
    assert packets[2][3] == payload(2, 45) + b"\x00\x00\x00"
    assert packets[4][3] == payload(4, 60)[:10]
    assert all(p[0] == BASE_SEC * NS for p in packets)  # SPBs carry the previous packet's time
    assert info.damage == []


def test_simple_packet_block_without_interface(tmp_path: Path) -> None:
    packets, info = read(tmp_path, pcapng_shb() + pcapng_spb(payload(1)))
    assert packets == []
    assert codes(info) == ["unknown_interface"]


def test_obsolete_packet_block(tmp_path: Path) -> None:
    data = (
        pcapng_shb()
        + pcapng_idb(tsresol=9)
        + pcapng_opb(0, BASE_SEC * NS + 5, payload(1))
        + pcapng_epb(0, BASE_SEC * NS + 6, payload(2))
    )
    packets, info = read(tmp_path, data)
    assert [(p[0], p[3]) for p in packets] == [
        (BASE_SEC * NS + 5, payload(1)),
        (BASE_SEC * NS + 6, payload(2)),
    ]
    assert info.damage == []


def test_unknown_and_non_packet_blocks_are_skipped_and_counted(tmp_path: Path) -> None:
    data = (
        pcapng_shb()
        + pcapng_block(0x12345678, b"whatever")
        + pcapng_idb()
        + pcapng_block(BT_NRB, b"\x00\x00\x00\x00")
        + pcapng_epb(0, BASE_SEC * 10**6, payload(1))
        + pcapng_block(BT_ISB, struct.pack("<III", 0, 0, 0))
        + pcapng_block(BT_CUSTOM, b"PEN!data")
        + pcapng_block(0x12345678, b"")
        + pcapng_epb(0, BASE_SEC * 10**6 + 1, payload(2))
    )
    packets, info = read(tmp_path, data)
    assert [p[3] for p in packets] == [payload(1), payload(2)]
    assert info.skipped_blocks == {0x12345678: 2, BT_NRB: 1, BT_ISB: 1, BT_CUSTOM: 1}
    assert info.damage == []


def test_many_distinct_skipped_block_types_are_bounded(tmp_path: Path) -> None:
    blocks = b"".join(pcapng_block(0x1000 + i, b"") for i in range(MAX_SKIPPED_BLOCK_TYPES + 6))
    packets, info = read(tmp_path, three_packet_pcapng() + blocks)
    assert len(packets) == 3
    assert len(info.skipped_blocks) == MAX_SKIPPED_BLOCK_TYPES + 1
    assert info.skipped_blocks[OTHER_BLOCK_TYPE] == 6


def test_too_many_interfaces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pcapng, "MAX_INTERFACES", 2)
    data = (
        pcapng_shb()
        + pcapng_idb(LINKTYPE_ETHERNET)
        + pcapng_idb(LINKTYPE_RAW)
        + pcapng_idb(LINKTYPE_LINUX_SLL)
        + pcapng_epb(1, BASE_SEC * 10**6, payload(1))
        + pcapng_epb(2, BASE_SEC * 10**6, payload(2))
    )
    packets, info = read(tmp_path, data)
    assert [(p[1], p[3]) for p in packets] == [(LINKTYPE_RAW, payload(1))]
    assert codes(info) == ["too_many_interfaces", "unknown_interface"]
    assert len(info.interfaces) == 2


def test_fcs_length_and_long_name(tmp_path: Path) -> None:
    data = pcapng_shb() + pcapng_idb(fcslen=32, name="x" * 1000) + pcapng_epb(0, 1, payload(1))
    packets, info = read(tmp_path, data)
    assert len(packets) == 1
    assert info.interfaces[0]["fcs_len"] == 4
    assert info.interfaces[0]["name"] == "x" * 256


def test_two_sections_reset_interfaces_and_switch_byte_order(tmp_path: Path) -> None:
    data = (
        pcapng_shb(little=True)
        + pcapng_idb(LINKTYPE_ETHERNET)
        + pcapng_idb(LINKTYPE_RAW)
        + pcapng_epb(1, BASE_SEC * 10**6, payload(1))
        + pcapng_shb(little=False)
        + pcapng_idb(LINKTYPE_LINUX_SLL, little=False, tsresol=9)
        + pcapng_epb(0, BASE_SEC * NS + 7, payload(2), little=False)
        + pcapng_epb(1, BASE_SEC * NS + 8, payload(3), little=False)  # interface 1 is gone
        + pcapng_epb(0, BASE_SEC * NS + 9, payload(4), little=False)
    )
    packets, info = read(tmp_path, data)
    assert [(p[0], p[1], p[3]) for p in packets] == [
        (BASE_SEC * NS, LINKTYPE_RAW, payload(1)),
        (BASE_SEC * NS + 7, LINKTYPE_LINUX_SLL, payload(2)),
        (BASE_SEC * NS + 9, LINKTYPE_LINUX_SLL, payload(4)),
    ]
    assert codes(info) == ["unknown_interface"]
    assert info.byte_order == "little"
    assert [(i["id"], i["section"], i["section_id"]) for i in info.interfaces] == [
        (0, 0, 0),
        (1, 0, 1),
        (2, 1, 0),
    ]
    assert info.linktypes == {LINKTYPE_RAW: 1, LINKTYPE_LINUX_SLL: 2}


def test_unsupported_later_section_is_skipped(tmp_path: Path) -> None:
    data = (
        three_packet_pcapng()
        + pcapng_shb(major=2)
        + pcapng_idb()
        + pcapng_epb(0, 1, payload(9))
        + pcapng_shb()
        + pcapng_idb()
        + pcapng_epb(0, BASE_SEC * 10**6, payload(4))
    )
    packets, info = read(tmp_path, data)
    assert [p[3] for p in packets][-1] == payload(4)
    assert len(packets) == 4
    assert codes(info) == ["unsupported_section"]


def test_unsupported_first_section_is_unusable(tmp_path: Path) -> None:
    path = tmp_path / "v.pcapng"
    path.write_bytes(pcapng_shb(major=2) + pcapng_idb())
    with pytest.raises(CaptureFormatError, match=r"unsupported pcapng version 2\.0"):
        open_capture(str(path))


# ----------------------------------------------------------------- damage


def test_epb_caplen_above_wirelen_and_snaplen(tmp_path: Path) -> None:
    data = (
        pcapng_shb()
        + pcapng_idb(snaplen=64)
        + pcapng_epb(0, BASE_SEC * 10**6, payload(1, 60), wirelen=50)
        + pcapng_epb(0, BASE_SEC * 10**6, payload(2, 70))
    )
    packets, info = read(tmp_path, data)
    assert [(p[2], len(p[3])) for p in packets] == [(60, 60), (70, 70)]
    assert [(d.code, d.frame) for d in info.damage] == [("bad_caplen", 1), ("caplen_exceeds_snaplen", 2)]


def test_epb_implausible_wirelen_is_damage(tmp_path: Path) -> None:
    data = (
        pcapng_shb()
        + pcapng_idb()
        + pcapng_epb(0, BASE_SEC * 10**6, payload(1, 60))
        + pcapng_epb(0, BASE_SEC * 10**6, payload(2, 70), wirelen=0xFFFFFFFF)
    )
    packets, info = read(tmp_path, data)
    assert [(p[2], len(p[3])) for p in packets] == [(60, 60), (70, 70)]
    assert [(d.code, d.frame) for d in info.damage] == [("implausible_wirelen", 2)]


def test_epb_caplen_beyond_its_block_is_skipped(tmp_path: Path) -> None:
    data = (
        pcapng_shb()
        + pcapng_idb()
        + pcapng_epb(0, BASE_SEC * 10**6, payload(1, 60), caplen=61)
        + pcapng_epb(0, BASE_SEC * 10**6, payload(2))
    )
    packets, info = read(tmp_path, data)
    assert [p[3] for p in packets] == [payload(2)]
    assert codes(info) == ["caplen_exceeds_block"]


def test_epb_with_unknown_interface_is_skipped(tmp_path: Path) -> None:
    data = three_packet_pcapng() + pcapng_epb(5, 0, payload(9)) + pcapng_epb(0, BASE_SEC * 10**6, payload(4))
    packets, info = read(tmp_path, data)
    assert [p[3] for p in packets][-1] == payload(4)
    assert len(packets) == 4
    assert codes(info) == ["unknown_interface"]
    assert info.damage[0].offset == len(three_packet_pcapng())


@pytest.mark.parametrize(
    "bad_length",
    [30, 13, 8, 0, MAX_BLOCK_LEN + 4, 0xFFFFFFFC],
    ids=["unaligned", "odd", "below-min", "zero", "above-max", "huge"],
)
def test_bogus_block_length_resyncs(tmp_path: Path, bad_length: int) -> None:
    good = three_packet_pcapng()
    bad = pcapng_epb(0, BASE_SEC * 10**6, payload(8), options=b"")
    bad = bad[:4] + struct.pack("<I", bad_length) + bad[8:]
    data = (
        good
        + bad
        + pcapng_epb(0, BASE_SEC * 10**6 + 5, payload(4))
        + pcapng_epb(0, BASE_SEC * 10**6 + 6, payload(5))
    )
    packets, info = read(tmp_path, data)
    assert [p[3] for p in packets] == [payload(1, 60), payload(2, 70), payload(3, 41), payload(4), payload(5)]
    assert codes(info) == ["bad_block_length", "resynced"]
    assert info.damage[0].offset == len(good)
    assert f"skipped {len(bad)} " in info.damage[1].detail


def test_bad_block_trailer_resyncs(tmp_path: Path) -> None:
    good = three_packet_pcapng()
    bad = pcapng_epb(0, BASE_SEC * 10**6, payload(8))
    bad = bad[:-4] + struct.pack("<I", len(bad) + 4)
    data = good + bad + pcapng_epb(0, BASE_SEC * 10**6 + 5, payload(4))
    packets, info = read(tmp_path, data)
    assert [p[3] for p in packets][-1] == payload(4)
    assert len(packets) == 4
    assert codes(info) == ["bad_block_trailer", "resynced"]


def test_bad_section_header_magic_resyncs(tmp_path: Path) -> None:
    shb = pcapng_shb()
    bad_shb = shb[:8] + b"\x00\x00\x00\x00" + shb[12:]
    data = three_packet_pcapng() + bad_shb + pcapng_epb(0, BASE_SEC * 10**6 + 5, payload(4))
    packets, info = read(tmp_path, data)
    assert len(packets) == 4
    assert codes(info) == ["bad_section_header", "resynced"]


def test_garbage_until_end_is_trailing_garbage(tmp_path: Path) -> None:
    bad = b"\x06\x00\x00\x00\x07\x00\x00\x00" + b"\xee" * 500
    packets, info = read(tmp_path, three_packet_pcapng() + bad)
    assert len(packets) == 3
    assert codes(info) == ["bad_block_length", "trailing_garbage"]


def test_resync_finds_new_section_in_other_byte_order(tmp_path: Path) -> None:
    data = (
        three_packet_pcapng()
        + b"\x06\x00\x00\x00\x07\x00\x00\x00garbage!"
        + pcapng_shb(little=False)
        + pcapng_idb(little=False)
        + pcapng_epb(0, BASE_SEC * 10**6, payload(4), little=False)
    )
    packets, info = read(tmp_path, data)
    assert [p[3] for p in packets][-1] == payload(4)
    assert codes(info) == ["bad_block_length", "resynced"]


def test_bad_options(tmp_path: Path) -> None:
    opts = pcapng_option(9, b"\x06\x07") + pcapng_option(14, b"\x01") + struct.pack("<HH", 2, 200)
    idb = pcapng_block(1, struct.pack("<HHI", LINKTYPE_ETHERNET, 0, 0) + opts)
    data = pcapng_shb() + idb + pcapng_epb(0, BASE_SEC * 10**6, payload(1))
    packets, info = read(tmp_path, data)
    assert packets[0][0] == BASE_SEC * NS  # defaults kept: microseconds, no offset
    assert codes(info) == ["bad_option", "bad_option", "bad_option"]


def test_truncation_at_every_offset(tmp_path: Path) -> None:
    data = three_packet_pcapng()
    full, _ = read(tmp_path, data)
    shb_len = len(pcapng_shb())
    bounds = [shb_len]
    pos = shb_len
    while pos < len(data):
        pos += struct.unpack_from("<I", data, pos + 4)[0]
        bounds.append(pos)
    for cut in range(1, shb_len):
        path = tmp_path / "cut.pcapng"
        path.write_bytes(data[:cut])
        with pytest.raises(CaptureFormatError):
            open_capture(str(path))
    for cut in range(shb_len, len(data) + 1):
        packets, info = read(tmp_path, data[:cut])
        complete_packets = sum(1 for b in bounds[2:] if b <= cut)  # bounds[1] ends the IDB
        assert packets == full[:complete_packets], cut
        if cut in bounds:
            assert info.damage == [], cut
        else:
            assert codes(info) == ["truncated_block"], cut
            assert info.damage[0].offset == max(b for b in bounds if b <= cut)


@pytest.mark.parametrize("chunk", [1, 3, 8, 28, 29, 64, 1000])
def test_chunk_size_does_not_change_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    multi, _ = multi_interface_file()
    bad = pcapng_epb(0, 0, payload(8))
    bad = bad[:-4] + b"\x00\x00\x00\x00"
    data = (
        multi
        + pcapng_spb(payload(6, 33))
        + bad
        + b"".join(pcapng_epb(i % 3, BASE_SEC * 10**6 + i, payload(i, 1 + i * 7)) for i in range(20))
        + pcapng_shb(little=False)
        + pcapng_idb(little=False)
        + pcapng_epb(0, 1, payload(1), little=False)
        + b"\x01\x02"
    )
    expected, info_default = read(tmp_path, data)
    monkeypatch.setattr(reader, "CHUNK_SIZE", chunk)
    packets, info = read(tmp_path, data)
    assert packets == expected
    assert len(packets) == 6 + 1 + 20 + 1
    assert info.damage == info_default.damage
    assert codes(info) == ["bad_block_trailer", "resynced", "truncated_block"]


def test_info_packets_is_exact_during_iteration(tmp_path: Path) -> None:
    data = (
        pcapng_shb()
        + pcapng_idb()
        + b"".join(pcapng_epb(0, BASE_SEC * 10**6 + i, payload(i)) for i in range(30))
    )
    path = tmp_path / "p.pcapng"
    path.write_bytes(data)
    with open_capture(str(path)) as cap:
        for frame, packet in enumerate(cap.packets(), 1):
            assert cap.info.packets == frame
            assert packet[3] == payload(frame - 1)
            if frame == 10:
                break
    assert cap.info.last_ts_ns == BASE_SEC * NS + 9000


# ----------------------------------------------------------------- fuzzing


@settings(max_examples=200, deadline=None)
@given(tail=st.binary(max_size=3000), little=st.booleans())
def test_random_bytes_after_section_header_never_raise(
    tmp_path_factory: pytest.TempPathFactory, tail: bytes, little: bool
) -> None:
    data = pcapng_shb(little=little) + pcapng_idb(little=little) + tail
    packets, info = read(tmp_path_factory.mktemp("fz"), data)
    assert info.bytes == len(data)
    assert sum(len(p[3]) for p in packets) <= len(tail)
    assert all(d.code in DAMAGE_CODES for d in info.damage)


@settings(max_examples=200, deadline=None)
@given(flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8))
def test_mutated_file_never_raises(
    tmp_path_factory: pytest.TempPathFactory, flips: list[tuple[int, int]]
) -> None:
    multi, _ = multi_interface_file()
    data = bytearray(multi + b"".join(pcapng_epb(i % 3, i, payload(i, 10 + i)) for i in range(30)))
    shb_len = len(pcapng_shb())
    for where, value in flips:
        data[shb_len + where % (len(data) - shb_len)] = value
    packets, info = read(tmp_path_factory.mktemp("mut"), bytes(data))
    assert info.bytes == len(data)
    assert len(packets) <= 36
    assert all(d.code in DAMAGE_CODES for d in info.damage)


# ----------------------------------------------------------------- public captures


def _public_pcapngs() -> list[str]:
    if PUBLIC is None:
        return []
    return sorted(str(p.relative_to(PUBLIC)) for p in PUBLIC.rglob("*.pcapng"))


@pytest.mark.skipif(PUBLIC is None, reason="shared/captures-public not present")
@pytest.mark.parametrize("rel", _public_pcapngs())
def test_public_pcapng_matches_dpkt(rel: str) -> None:
    assert PUBLIC is not None
    path = PUBLIC / rel
    with open_capture(str(path)) as cap:
        packets = list(cap.packets())
    with open(path, "rb") as f:
        ref = list(dpkt.pcapng.Reader(f))
    assert len(packets) == len(ref) > 0
    for (ts, _lt, _wire, data), (rts, rbuf) in zip(packets, ref):
        assert data == bytes(rbuf)
        assert abs(ts / NS - float(rts)) < 1e-6
    assert cap.info.damage == []
