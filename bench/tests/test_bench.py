"""Tests of the benchmark harness: generator correctness and determinism, baselines, runner plumbing.

Run: ``python3 -m pytest -q bench/tests`` (not part of the main suite; about half a minute).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import struct
import sys
from pathlib import Path

import dpkt  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

BENCH = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BENCH))

import baselines  # noqa: E402
import gen  # noqa: E402
import run  # noqa: E402

SMALL_NOISE = gen.NoiseParams(size_mb=3, bulk_concurrency=8, mail_concurrency=8, mail_share=0.2)
SMALL_MAIL = gen.Mail200kParams(mail_flows=400, split=0.3)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def noise(cache: Path) -> gen.Generated:
    return gen.build_noise(SMALL_NOISE, cache, log=False)


@pytest.fixture(scope="module")
def mail(cache: Path) -> gen.Generated:
    return gen.build_mail200k(SMALL_MAIL, cache, log=False)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ generator


def test_noise_is_deterministic(noise: gen.Generated, tmp_path: Path) -> None:
    again = gen.build_noise(SMALL_NOISE, tmp_path, log=False)
    assert _sha(again.files[0]) == _sha(noise.files[0])
    assert again.manifest == noise.manifest


def test_cache_is_reused_and_keyed_by_parameters(noise: gen.Generated, cache: Path) -> None:
    before = noise.files[0].stat().st_mtime_ns
    assert gen.build_noise(SMALL_NOISE, cache, log=False).files == noise.files
    assert noise.files[0].stat().st_mtime_ns == before
    other = gen.NoiseParams(size_mb=3, bulk_concurrency=8, mail_concurrency=8, mail_share=0.2, seed=9)
    assert gen.cache_key("noise", other) != gen.cache_key("noise", SMALL_NOISE)


def _check_frames(path: Path) -> dict[str, int]:
    """Every frame decodes; IP lengths, header lengths and IPv4 checksums are right."""
    seen = {"ipv4": 0, "ipv6": 0, "udp": 0, "syn": 0}
    with open(path, "rb") as f:
        reader = dpkt.pcap.Reader(f)
        assert reader.datalink() == dpkt.pcap.DLT_EN10MB
        for _ts, buf in reader:
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            raw_ip = buf[gen.ETH_HLEN:]
            if isinstance(ip, dpkt.ip.IP):
                seen["ipv4"] += 1
                assert ip.hl == 5 and ip.len == len(raw_ip)
                words = struct.unpack(f"!{gen.IPV4_HLEN // 2}H", raw_ip[: gen.IPV4_HLEN])
                assert gen._fold(sum(words)) == 0xFFFF  # RFC 1071: a correct header sums to all ones
            else:
                assert isinstance(ip, dpkt.ip6.IP6)
                seen["ipv6"] += 1
                assert ip.plen == len(raw_ip) - gen.IPV6_HLEN
            l4 = ip.data
            if isinstance(l4, dpkt.udp.UDP):
                seen["udp"] += 1
                assert l4.ulen == len(bytes(l4))
            else:
                assert isinstance(l4, dpkt.tcp.TCP) and l4.off == 5
                seen["syn"] += bool(l4.flags & dpkt.tcp.TH_SYN)
    return seen


def test_noise_frames_are_well_formed(noise: gen.Generated) -> None:
    seen = _check_frames(noise.files[0])
    assert seen["ipv4"] and seen["ipv6"] and seen["udp"] and seen["syn"]
    m = noise.manifest
    assert m["packets"] == sum((seen["ipv4"], seen["ipv6"]))
    assert m["bytes"] == noise.files[0].stat().st_size >= SMALL_NOISE.size_mb * gen.MB
    assert m["stats"]["split_lines"] > 0 and m["stats"]["reordered_lines"] > 0
    assert 0.15 < m["mail_share_actual"] < 0.25


def test_mail_frames_are_well_formed(mail: gen.Generated) -> None:
    _check_frames(mail.files[0])
    assert mail.manifest["known"]["ID"] + mail.manifest["known"]["XCLIENT"] >= SMALL_MAIL.mail_flows


def test_mail_flows_are_all_open_at_once(mail: gen.Generated) -> None:
    open_flows = 0
    most = 0
    with open(mail.files[0], "rb") as f:
        for _ts, buf in dpkt.pcap.Reader(f):
            tcp = dpkt.ethernet.Ethernet(buf).data.data
            if not isinstance(tcp, dpkt.tcp.TCP) or tcp.sport in baselines.PORTS:
                continue
            if tcp.flags & dpkt.tcp.TH_SYN:
                open_flows += 1
            elif tcp.flags & dpkt.tcp.TH_FIN:
                open_flows -= 1
            most = max(most, open_flows)
    assert most == SMALL_MAIL.mail_flows


# ------------------------------------------------------------------ baselines find exactly what was written


@pytest.mark.parametrize("tool", ["dpkt", "scapy"])
def test_baselines_find_every_known_command(tool: str, noise: gen.Generated, mail: gen.Generated) -> None:
    runner = baselines.run_dpkt if tool == "dpkt" else baselines.run_scapy
    for g in (noise, mail):
        got = runner([str(g.files[0])])
        assert (got["ID"], got["XCLIENT"]) == (g.manifest["known"]["ID"], g.manifest["known"]["XCLIENT"])
        assert got["packets"] == g.manifest["packets"]


def test_prefix_known_count_matches_what_a_finder_sees(noise: gen.Generated, cache: Path) -> None:
    pre = gen.build_prefix(noise, 1, cache)
    assert pre.files[0] != noise.files[0]
    assert pre.manifest["bytes"] <= gen.MB < pre.manifest["bytes"] + 2000
    got = baselines.run_dpkt([str(pre.files[0])])
    assert 0 < got["ID"] + got["XCLIENT"] == pre.manifest["known_total"] < noise.manifest["known_total"]
    assert got["packets"] == pre.manifest["packets"]


@pytest.mark.parametrize("split", ["flow", "time"])
def test_manyfiles_keeps_every_packet(split: str, noise: gen.Generated, cache: Path) -> None:
    many = gen.build_manyfiles(noise, 4, split, cache, log=False)
    assert len(many.files) == 4 and many.manifest["packets"] == noise.manifest["packets"]
    got = baselines.run_dpkt([str(p) for p in many.files])
    assert got["packets"] == noise.manifest["packets"]
    if split == "flow":  # each flow lives in one file: a per-file reader sees every command
        per_file = [baselines.run_dpkt([str(p)]) for p in many.files]
        assert sum(r["ID"] + r["XCLIENT"] for r in per_file) == noise.manifest["known_total"]
    assert got["ID"] + got["XCLIENT"] == noise.manifest["known_total"]


def test_xtext_matches_rfc3461() -> None:
    assert gen.xtext(b"a=b+c d\t") == b"a+3Db+2Bc+20d+09"


# ------------------------------------------------------------------ the reference Finder


def _stream(lines: list[bytes]) -> tuple[bytes, dict[str, int]]:
    truth = {"ID": 0, "XCLIENT": 0}
    for ln in lines:
        m = baselines.COMMAND_RE.match(ln)
        if m:
            truth[m.lastgroup or "ID"] += 1
    return b"".join(lines), truth


LINES = st.lists(st.sampled_from([
    b"I ID (\"x-originating-ip\" \"192.0.2.1\")\r\n", b"XCLIENT ADDR=192.0.2.1 PORT=1\r\n", b"a1 id NIL\r\n",
    b"xclient addr=1\n", b"L LOGIN a b\r\n", b"A2 UID FETCH 1 (BODY[])\r\n", b"MAIL FROM:<a@b>\r\n", b"\r\n",
    b"Lorem ipsum dolor XCLIENT ID (\r\n",
]), max_size=40)


@settings(max_examples=200, deadline=None)
@given(LINES, st.integers(0, 2**32 - 1), st.randoms(use_true_random=False))
def test_finder_counts_any_segmentation_and_reordering(lines: list[bytes], isn: int,
                                                        rnd: random.Random) -> None:
    data, truth = _stream(lines)
    ncuts = min(len(data) - 1, rnd.randrange(0, 12)) if len(data) > 1 else 0
    cuts = sorted(rnd.sample(range(1, len(data)), ncuts))
    bounds = [0, *cuts, len(data)]
    segs = [((isn + 1 + a) % 2**32, data[a:b]) for a, b in zip(bounds, bounds[1:])]
    for i in range(len(segs) - 1):  # swap some neighbours, duplicate some segments
        if rnd.random() < 0.3:
            segs[i], segs[i + 1] = segs[i + 1], segs[i]
    segs += [s for s in segs if rnd.random() < 0.2]
    finder = baselines.Finder()
    finder.segment("k", isn, gen.TH_SYN, b"")
    for seq, payload in segs:
        finder.segment("k", seq, gen.TH_ACK, payload)
    assert finder.counts == truth


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 255), st.binary(max_size=300)),
                max_size=60))
def test_finder_never_raises_and_stays_bounded(segments: list[tuple[int, int, bytes]]) -> None:
    finder = baselines.Finder()
    for seq, flags, payload in segments:
        finder.segment(("a", seq % 3), seq, flags, payload)
        for hs in finder.streams.values():
            assert len(hs.tail) <= baselines.MAX_LINE
            assert hs.ooo_bytes <= baselines.MAX_OOO_BYTES and len(hs.ooo) <= baselines.MAX_OOO_SEGMENTS


def test_finder_drops_over_long_lines_then_resyncs() -> None:
    finder = baselines.Finder()
    finder.segment("k", 0, gen.TH_SYN, b"")
    seq = 1
    for chunk in (b"x" * (baselines.MAX_LINE + 10), b" XCLIENT A=1\r\n", b"XCLIENT A=2\r\n"):
        finder.segment("k", seq, gen.TH_ACK, chunk)
        seq += len(chunk)
    assert finder.counts == {"ID": 0, "XCLIENT": 1}


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000))
def test_iter_records_terminates_on_random_bytes(tail: bytes) -> None:
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".pcap") as f:
        f.write(gen.PCAP_HEADER.pack(gen.PCAP_MAGIC_US, 2, 4, 0, 0, 65535, 1) + tail)
        f.flush()
        total = 0
        for end, rec in gen.iter_records(Path(f.name), chunk=512):
            total += len(rec)
            assert end == gen.PCAP_HEADER_LEN + total
        assert total <= len(tail)


# ------------------------------------------------------------------ runner plumbing


def test_count_tshark_counts_commands_not_frames(tmp_path: Path) -> None:
    out = tmp_path / "t.out"
    out.write_bytes(b"1\tID,LOGIN\t\t\n2\t\tXCLIENT\t\n3\t\t\tXCLI,XCLI,EHLO\n4\t\t\tXCLIENT\n")
    assert run.count_tshark(out, tmp_path) == {"ID": 1, "XCLIENT": 4}


def test_count_fwdaudit_reads_records(tmp_path: Path) -> None:
    assert run.count_fwdaudit(tmp_path, tmp_path) is None
    (tmp_path / "report.json").write_text(json.dumps({"flows": [{"id": 0}]}))
    assert run.count_fwdaudit(tmp_path, tmp_path) is None
    recs = [{"carrier": "ID"}, {"carrier": "XCLIENT"}, {"carrier": "XCLIENT"}, {"carrier": "XRCPTFORWARD"}]
    (tmp_path / "report.json").write_text(json.dumps({"records": recs}))
    assert run.count_fwdaudit(tmp_path, tmp_path) == {"ID": 1, "XCLIENT": 2}
    per_flow = {"flows": [{"records": recs[:2]}, {"records": recs[2:]}]}
    (tmp_path / "report.json").write_text(json.dumps(per_flow))
    assert run.count_fwdaudit(tmp_path, tmp_path) == {"ID": 1, "XCLIENT": 2}


def test_select_patterns() -> None:
    ids = [r.row_id for r in run.select(run.row_catalog(), "noise:fwdaudit-*,tcpdump")]
    assert ids == ["noise:fwdaudit-j1", "noise:fwdaudit-jN", "noise:tcpdump", "mail200k:tcpdump",
                   "manyfiles:tcpdump"]
    assert "manyfiles:tshark" not in [r.row_id for r in run.row_catalog()]


def _spec(argv: list[str], known: int | None = None) -> run.RowSpec:
    return run.RowSpec("t:x", "t", "x", tuple(argv), None, 10**6, 1000, known, None, True, False, "")


def test_peak_rss_belongs_to_the_child(tmp_path: Path) -> None:
    ballast = bytearray(200 << 20)  # make the parent big: the child's figure must not include it
    touch = "b = bytearray(120 << 20); b[::4096] = b'x' * len(b[::4096])"
    res = run.measure(_spec([sys.executable, "-c", touch]), 2, 60, tmp_path)
    assert res.status == "ok" and len(res.runs) == 2
    assert res.rss_mb is not None and 120 <= res.rss_mb < 200
    small = run.measure(_spec(["true"]), 1, 60, tmp_path)
    assert small.rss_mb is not None and small.rss_mb < 50
    del ballast


def test_failing_row_is_reported_not_raised(tmp_path: Path) -> None:
    fail = "import sys; print('noise'); sys.exit('boom: the last line')"
    res = run.measure(_spec([sys.executable, "-c", fail]), 3, 60, tmp_path)
    assert res.status == "failed" and len(res.runs) == 1
    assert res.error is not None and "boom: the last line" in res.error
    timed = run.measure(_spec([sys.executable, "-c", "import time; time.sleep(30)"]), 1, 0.5, tmp_path)
    assert timed.status == "failed" and timed.error is not None and "timed out" in timed.error
    text = run.render_text({"cpu": "x"}, {}, [res, timed], 3, None)
    assert "cpu: x" in text


def test_sigterm_stops_the_measured_command(tmp_path: Path) -> None:
    import signal
    import subprocess
    import time

    pidfile = tmp_path / "pid"
    sleeper = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    harness = (f"import sys, signal; sys.path.insert(0, {str(BENCH)!r}); import run; "
               f"signal.signal(signal.SIGTERM, run._terminate); "
               f"spec = run.RowSpec('t:x', 't', 'x', ({sys.executable!r}, '-c', {sleeper!r}), None, 1, 1, "
               f"None, None, True, False, ''); "
               f"run.measure(spec, 1, 120, __import__('pathlib').Path({str(tmp_path)!r}))")
    proc = subprocess.Popen([sys.executable, "-c", harness])
    deadline = time.monotonic() + 30
    while not pidfile.exists() or not pidfile.read_text():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    pid = int(pidfile.read_text())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 10
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except FileNotFoundError:
            break
        if state == "Z":
            break
        assert time.monotonic() < deadline, "the measured command survived SIGTERM of the harness"
        time.sleep(0.05)


def test_end_to_end_small_run(tmp_path: Path) -> None:
    md = tmp_path / "bench.md"
    js = tmp_path / "bench.json"
    rc = run.main(["--size-mb", "2", "--mail-flows", "150", "--scapy-mb", "1", "--scapy-mail-flows", "40",
                   "--reps", "1", "--files", "3", "--cache", str(tmp_path / "cache"), "--markdown", str(md),
                   "--json", str(js), "--only",
                   "noise:dpkt,noise:tshark,noise:tcpdump,noise:fwdaudit-j1,mail200k:dpkt,mail200k:scapy,"
                   "manyfiles:cat"])
    assert rc == 0
    data = json.loads(js.read_text())
    rows = {r["row"]: r for r in data["rows"]}
    assert set(rows) == {"noise:fwdaudit-j1", "noise:dpkt", "noise:tshark", "noise:tcpdump", "mail200k:dpkt",
                         "mail200k:scapy", "manyfiles:cat"}
    assert rows["noise:fwdaudit-j1"]["status"] in ("ok", "failed")  # the CLI is still being built
    for rid in ("noise:dpkt", "mail200k:dpkt", "mail200k:scapy"):
        assert rows[rid]["status"] == "ok"
        assert sum(rows[rid]["found"].values()) == rows[rid]["known"] > 0
    assert rows["mail200k:scapy"]["packets"] < rows["mail200k:dpkt"]["packets"]
    tshark = rows["noise:tshark"]
    if shutil.which("tshark"):
        assert tshark["status"] == "ok" and 0 < sum(tshark["found"].values()) <= tshark["known"]
    text = md.read_text()
    assert "## noise" in text and "| noise:dpkt |" in text and "below the 500 MB minimum" in text
