"""Checks of the real-server captures in captures/real (no server needed).

Run: python3 -m pytest -q captures/real/test_recorded_captures.py

Strategy: each `<scenario>.pcap` is re-read with dpkt (independent of record.py's stdlib
reader) and compared with its `<scenario>.expected.json`: same TCP connections, same byte
counts, and every forwarding command and reply line quoted in expected.json is present
byte for byte in the right stream. Then the behaviour of the real Dovecot 2.3.19 / Postfix
3.7 servers observed on the wire is pinned scenario by scenario (TTL values, attribute
order, reply texts, what the backend log says it applied). A hypothesis test feeds random
bytes to record.py's pcap reader and decoders, which must never raise.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import socket
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

import dpkt  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings, strategies as st

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import record  # noqa: E402

SCENARIOS = sorted(p.name.removesuffix(".expected.json") for p in HERE.glob("*.expected.json"))
ALL_EXPECTED = (
    "imap_proxy_trusted",
    "pop3_proxy_trusted",
    "submission_proxy_trusted",
    "lmtp_proxy",
    "imap_untrusted_proxy",
    "imap_two_hop",
    "imap_raw_overlimit",
    "pop3_raw_overlimit",
    "postfix_xclient",
    "imap_ipv6",
    "imap_client_spoof",
    "plain_noise",
)


def load(name: str) -> dict[str, Any]:
    """The scenario's expected.json."""
    data: dict[str, Any] = json.loads((HERE / f"{name}.expected.json").read_text())
    return data


def dpkt_connections(pcap: Path) -> list[dict[str, Any]]:
    """Connections (in SYN order) with reassembled payloads, read with dpkt."""
    conns: dict[tuple[Any, ...], dict[str, Any]] = {}
    order: list[dict[str, Any]] = []
    with pcap.open("rb") as fh:
        for _ts, buf in dpkt.pcap.Reader(fh):
            ip = dpkt.ethernet.Ethernet(buf).data
            if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)) or not isinstance(ip.data, dpkt.tcp.TCP):
                continue
            fam = socket.AF_INET6 if isinstance(ip, dpkt.ip6.IP6) else socket.AF_INET
            tcp = ip.data
            src = (socket.inet_ntop(fam, ip.src), tcp.sport)
            dst = (socket.inet_ntop(fam, ip.dst), tcp.dport)
            if tcp.flags & dpkt.tcp.TH_SYN and not tcp.flags & dpkt.tcp.TH_ACK:
                c: dict[str, Any] = {"client": src, "server": dst, "isn": {True: tcp.seq}}
                c["segs"] = {True: {}, False: {}}
                conns[(src, dst)] = conns[(dst, src)] = c
                order.append(c)
                continue
            c2 = conns.get((src, dst))
            if c2 is None:
                continue
            up = src == c2["client"]
            if tcp.flags & dpkt.tcp.TH_SYN:
                c2["isn"][False] = tcp.seq
                continue
            if tcp.data:
                c2["segs"][up][(tcp.seq - c2["isn"][up] - 1) % 2**32] = bytes(tcp.data)
    for c in order:
        for up, key in ((True, "c2s"), (False, "s2c")):
            data = b""
            for off, seg in sorted(c["segs"][up].items()):
                assert off <= len(data), f"gap in {c['client']}->{c['server']}"
                data += seg[len(data) - off :]
            c[key] = data
    return order


def ep(ip_port: tuple[str, int]) -> str:
    """Endpoint formatted as in expected.json."""
    return record.fmt_ep(*ip_port)


def fwd(exp: dict[str, Any], role: str | None = None) -> list[dict[str, Any]]:
    """must_show.forwarding entries, optionally of one role."""
    return [f for f in exp["must_show"]["forwarding"] if role is None or f["role"] == role]


def raw_replies(exp: dict[str, Any]) -> dict[str, list[list[str]]]:
    """label -> list of reply-line lists, one per command sent on that raw connection."""
    return {r["label"]: [x["reply"] for x in r["replies"]] for r in exp["must_show"]["raw_replies"]}


# ---------------------------------------------------------------------------------------
# Consistency of every capture with its expected.json
# ---------------------------------------------------------------------------------------


def test_every_scenario_was_recorded() -> None:
    assert set(ALL_EXPECTED) <= set(SCENARIOS)
    for name in ALL_EXPECTED:
        assert (HERE / f"{name}.pcap").is_file()


@pytest.mark.parametrize("name", SCENARIOS)
def test_versions_and_capture_health(name: str) -> None:
    exp = load(name)
    assert exp["scenario"] == name
    assert exp["dovecot_version"].startswith("2.3.19")
    assert exp["postfix_version"].startswith("3.7")
    assert exp["tcpdump"]["capture_problems"] == []
    assert any(s.endswith("0 packets dropped by kernel") for s in exp["tcpdump"]["stats"])
    assert exp["pcap_bytes"] == (HERE / exp["pcap"]).stat().st_size < 64 * 1024


@pytest.mark.parametrize("name", SCENARIOS)
def test_connections_match_independent_reader(name: str) -> None:
    exp = load(name)
    conns = dpkt_connections(HERE / exp["pcap"])
    assert [(ep(c["client"]), ep(c["server"])) for c in conns] == [
        (c["client"], c["server"]) for c in exp["connections"]
    ]
    for c, e in zip(conns, exp["connections"]):
        assert (len(c["c2s"]), len(c["s2c"])) == (e["bytes_c2s"], e["bytes_s2c"])
        assert e["role"] != "unknown"


@pytest.mark.parametrize("name", SCENARIOS)
def test_forwarding_commands_and_replies_are_on_the_wire(name: str) -> None:
    exp = load(name)
    conns = dpkt_connections(HERE / exp["pcap"])
    for entry in fwd(exp):
        c = conns[entry["connection"] - 1]
        assert entry["command"].encode("latin-1") + b"\r\n" in c["c2s"]
        for line in entry["reply"]:
            assert line.encode("latin-1") + b"\r\n" in c["s2c"]


# ---------------------------------------------------------------------------------------
# Observed behaviour, scenario by scenario
# ---------------------------------------------------------------------------------------


def check_login_session_id(session: str, client_ip: str, client_port: int) -> None:
    """Spec 4.3: base64 of 6-byte usec time, 2-byte LE port, 4/16-byte IP."""
    raw = base64.b64decode(session)
    ip = ipaddress.ip_address(client_ip)
    assert len(raw) == 8 + (4 if ip.version == 4 else 16)
    assert struct.unpack_from("<H", raw, 6)[0] == client_port
    assert raw[8:] == ip.packed


def test_imap_proxy_trusted() -> None:
    exp = load("imap_proxy_trusted")
    (entry,) = fwd(exp, "proxy->backend")
    end_client = exp["connections"][0]["client"]
    assert entry["tag"] == "I" and entry["value_forms"] == ["quoted"]
    assert [k for k, _v in entry["attributes"]] == [
        "x-session-id",
        "x-originating-ip",
        "x-originating-port",
        "x-connected-ip",
        "x-connected-port",
        "x-proxy-ttl",
        "x-forward-tenant",
        "x-forward-plan",
        "x-forward-region",
    ]
    assert f"{entry['client_ip']}:{entry['client_port']}" == end_client
    assert (entry["connected_ip"], entry["connected_port"]) == ("127.0.0.2", 143)
    assert entry["ttl"] == 4  # LOGIN_PROXY_TTL 5 in 2.3, sent minus one
    assert entry["forward"] == {"tenant": "acme", "plan": "gold", "region": "eu"}
    assert entry["reply"] == ['* ID ("name" "Dovecot")', "I OK ID completed."]  # no "Trusted" in 2.3
    assert entry["accepted"] is True and all(entry["applied"].values())
    assert entry["server_applied"]["lip"] == "127.0.0.2"  # x-connected-ip applied as local ip
    check_login_session_id(entry["session_id"], entry["client_ip"], entry["client_port"])
    # ID, CAPABILITY and LOGIN are pipelined, before the backend's ID reply.
    c2s = dpkt_connections(HERE / exp["pcap"])[1]["c2s"]
    assert c2s.startswith(entry["command"].encode() + b"\r\nC CAPABILITY\r\nL LOGIN ")


def test_pop3_proxy_trusted() -> None:
    exp = load("pop3_proxy_trusted")
    (entry,) = fwd(exp, "proxy->backend")
    assert entry["greeting"][0].startswith("+OK [XCLIENT] ")
    assert [k for k, _v in entry["attributes"]] == ["ADDR", "PORT", "SESSION", "TTL", "FORWARD"]
    assert entry["ttl"] == 4
    assert dict(entry["attributes"])["FORWARD"].endswith("==")  # raw base64, padding unencoded
    assert entry["forward"] == {"tenant": "acme", "plan": "gold", "region": "eu"}
    assert entry["reply"] == ["+OK Updated"]
    assert entry["accepted"] is True and all(entry["applied"].values())
    check_login_session_id(entry["session_id"], entry["client_ip"], entry["client_port"])


def test_submission_proxy_trusted() -> None:
    exp = load("submission_proxy_trusted")
    (entry,) = fwd(exp, "proxy->backend")
    assert entry["advertised"] == ["XCLIENT ADDR PORT PROTO HELO LOGIN SESSION TTL TIMEOUT FORWARD"]
    assert [k for k, _v in entry["attributes"]] == [
        "HELO",
        "PROTO",
        "TTL",
        "PORT",
        "ADDR",
        "SESSION",
        "FORWARD",
    ]
    assert entry["command"].endswith("+3D+3D")  # base64 padding xtext-encoded
    assert entry["helo"] == "client.fwdaudit.test" and entry["proto"] == "ESMTP" and entry["ttl"] == 4
    assert entry["reply"] == ["220 backend.fwdaudit.test Dovecot (Debian) ready."]
    assert entry["accepted"] is True and all(entry["applied"].values())
    roles = [c["role"] for c in exp["connections"]]
    assert roles == ["client->proxy", "proxy->backend", "backend->relay"]
    assert not fwd(exp, "backend->relay")  # submission_relay_trusted=no: no XCLIENT to the relay


def test_lmtp_proxy() -> None:
    exp = load("lmtp_proxy")
    xclient, rcpt = fwd(exp, "proxy->backend")
    assert xclient["carrier"] == "XCLIENT" and rcpt["carrier"] == "XRCPTFORWARD"
    assert xclient["advertised"] == ["XCLIENT ADDR PORT PROTO HELO LOGIN SESSION TTL TIMEOUT", "XRCPTFORWARD"]
    assert [k for k, _v in xclient["attributes"]] == ["HELO", "PROTO", "SESSION", "TTL", "PORT", "ADDR"]
    assert xclient["proto"] == "LMTP" and xclient["ttl"] == 5  # LMTP_PROXY_DEFAULT_TTL, not minus one
    assert xclient["session_id"].endswith(":P1") and len(xclient["session_id"]) == 22 + 3
    assert "+2B" in xclient["command"] or "+" not in xclient["session_id"]
    assert rcpt["value_wire"] == "tenant+3Dacme+09plan+3Dgold+09region+3Deu"  # xtext, not base64
    assert rcpt["reply"] == ["250 2.1.5 OK"]
    assert rcpt["accepted"] is True and xclient["accepted"] is True
    assert rcpt["server_applied"]["session"] == xclient["session_id"]


def test_imap_untrusted_proxy() -> None:
    exp = load("imap_untrusted_proxy")
    (entry,) = fwd(exp, "proxy->backend")
    assert entry["reply"] == ['* ID ("name" "Dovecot")', "I OK ID completed."]  # same text as trusted
    assert entry["accepted"] is False
    assert entry["server_applied"]["rip"] == "127.0.0.2"
    assert entry["server_applied"]["forward"] == {}


def test_imap_two_hop() -> None:
    exp = load("imap_two_hop")
    (hop1,) = fwd(exp, "proxy->proxy2")
    (hop2,) = fwd(exp, "proxy2->backend")
    assert (hop1["ttl"], hop2["ttl"]) == (4, 3)
    assert hop1["session_id"] == hop2["session_id"]
    assert hop1["client_ip"] == hop2["client_ip"] == "127.0.0.10"
    assert hop1["client_port"] == hop2["client_port"]
    assert (hop2["connected_ip"], hop2["connected_port"]) == ("127.0.0.2", 143)  # first hop's
    assert hop1["forward"] == {"tenant": "acme", "plan": "gold", "region": "eu"}
    assert hop2["forward"] == {"tenant": "acme", "plan": "gold", "region": "eu", "hop2": "yes"}
    assert hop1["accepted"] is hop2["accepted"] is True


def test_imap_raw_overlimit() -> None:
    exp = load("imap_raw_overlimit")
    replies = raw_replies(exp)
    ok = ['* ID ("name" "Dovecot")', "A OK ID completed."]
    assert replies["value_1024"][0] == ok
    assert replies["value_1025"] == [["* BYE Input buffer full, aborting"]]
    assert replies["key_30"][0] == ok
    assert replies["key_31"][0] == ["A BAD Invalid ID parameters"]
    for label in ("pairs_31", "forward_empty_name", "forward_value_tab", "ttl_zero", "session_65"):
        assert replies[label][0] == ok, label
    by_label = {e["raw_label"]: e for e in exp["connections"]}
    applied = {k: v.get("server_applied", {}) for k, v in by_label.items()}
    # 2.3.19 applies the pairs before the over-long key, and silently drops what it rejects.
    assert applied["key_31"]["rip"] == record.FORWARDED_IP
    assert applied["key_31"]["forward"] == {}
    assert applied["forward_empty_name"]["forward"] == {"": "x"}
    assert applied["forward_value_tab"]["forward"] == {"t": "a\tb"}
    assert applied["session_65"]["session"] != "S" * 65
    assert applied["bad_originating_ip"]["rip"] == "127.0.0.2"
    assert applied["bad_originating_ip"]["rport"] == 40001
    # The pairs before the over-long value were applied before the BYE (disconnect log line).
    assert applied["value_1025"]["rip"] == record.FORWARDED_IP


def test_pop3_raw_overlimit() -> None:
    exp = load("pop3_raw_overlimit")
    r = raw_replies(exp)
    n = record.POP3_MAX_LINE
    assert r["trusted_valid"][0] == ["+OK Updated"]
    assert r[f"trusted_line_{n}"][0] == ["+OK Updated"]
    assert r[f"trusted_line_{n + 1}"] == [["-ERR Input buffer full, aborting"]]
    assert r["trusted_bad_base64"][0] == ["-ERR Invalid parameters"]
    assert r["trusted_addr_ipv6_prefix"][0] == ["-ERR Invalid parameters"]
    for label in ("valid", f"line_{n}", "bad_base64", "addr_ipv6_prefix"):
        assert r[f"untrusted_{label}"][0] == ["+OK You are not from trusted IP - ignoring"]
    assert r[f"untrusted_line_{n + 1}"] == [["-ERR Input buffer full, aborting"]]
    applied = {e["raw_label"]: e.get("server_applied", {}) for e in exp["connections"]}
    assert applied["trusted_bad_base64"]["rip"] == record.FORWARDED_IP  # ADDR before FORWARD applied
    assert applied["trusted_addr_ipv6_prefix"]["rip"] == "127.0.0.2"
    assert applied["trusted_addr_ipv6_prefix"]["rport"] == 40002  # PORT after the bad ADDR applied
    assert applied["untrusted_valid"]["rip"] == "127.0.0.10"


def test_postfix_xclient() -> None:
    exp = load("postfix_xclient")
    r = raw_replies(exp)
    assert r["authorized"][1] == ["220 mta.fwdaudit.test ESMTP Postfix"]
    assert r["authorized"][3] == ["550 5.7.0 Error: insufficient authorization"]  # after ADDR changed
    assert r["unauthorized"][1] == ["550 5.7.0 Error: insufficient authorization"]
    assert r["dovecot_only_attributes"][1] == ["501 5.5.4 Bad XCLIENT attribute name: TTL"]
    assert r["bare_ipv6_addr"][1] == ["501 5.5.4 Bad ADDR syntax: 2001:db8::7"]
    assert r["proto_lmtp"][1] == ["501 5.5.4 Bad PROTO syntax: LMTP"]
    (relay,) = fwd(exp, "backend->postfix")
    assert [k for k, _v in relay["attributes"]] == ["HELO", "PROTO", "LOGIN", "PORT", "ADDR"]
    assert relay["login"] == "alice" and relay["accepted"] is True
    assert relay["server_applied"]["addr"] == "127.0.0.10"


def test_imap_ipv6() -> None:
    exp = load("imap_ipv6")
    (entry,) = fwd(exp, "proxy->backend")
    assert ipaddress.ip_address(entry["client_ip"]).version == 6
    assert len(entry["session_id"]) == 32
    check_login_session_id(entry["session_id"], entry["client_ip"], entry["client_port"])
    assert entry["accepted"] is True and all(entry["applied"].values())


def test_imap_client_spoof() -> None:
    exp = load("imap_client_spoof")
    spoof_proxy, real, spoof_backend = fwd(exp)
    assert spoof_proxy["role"] == "client->proxy" and spoof_backend["role"] == "client->backend"
    for e in (spoof_proxy, spoof_backend):
        assert e["tag"] == "a1" and e["client_ip"] == record.SPOOFED_IP
        assert e["reply"][-1] == "a1 OK ID completed."
        assert e["accepted"] is False and e["server_applied"]["rip"] == "127.0.0.10"
    assert real["role"] == "proxy->backend" and real["client_ip"] == "127.0.0.10"
    assert real["forward"] == {"tenant": "acme", "plan": "gold", "region": "eu"}  # not "evil"


def test_plain_noise() -> None:
    exp = load("plain_noise")
    assert all(not e.get("forwarding_keys") for e in fwd(exp) if e["carrier"] == "ID")
    assert not [e for e in fwd(exp) if e["carrier"] != "ID"]
    conns = dpkt_connections(HERE / exp["pcap"])
    assert not any(b"XCLIENT" in c["s2c"] or b"XRCPTFORWARD" in c["s2c"] for c in conns)


# ---------------------------------------------------------------------------------------
# record.py's decoders never raise on arbitrary bytes
# ---------------------------------------------------------------------------------------

PCAP_HEADER = struct.pack("<IHHiIII", record.PCAP_MAGIC_US, 2, 4, 0, 0, 65535, record.LINKTYPE_ETHERNET)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048), st.booleans())
def test_decoders_never_raise(data: bytes, with_header: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.pcap"
        path.write_bytes((PCAP_HEADER if with_header else b"") + data)
        for conn in record.read_pcap(path):
            _ = (conn.c2s, conn.s2c)
    record.imap_id_commands(data)
    record.smtp_exchanges(data, data[::-1])
    record.line_exchanges(data, data)
    s = data.decode("latin-1")
    record.parse_xclient_attrs("XCLIENT " + s, xtext=True)
    record.b64_forward(s)
    record.forward_list(record.tab_unescape(s))
    record.log_kv(s)
    record.auth_kv(s)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.binary(max_size=80)), max_size=20))
def test_pcap_records_with_random_frames(frames: list[tuple[int, bytes]]) -> None:
    eth = b"\x00" * 12 + b"\x08\x00"
    body = b""
    for kind, payload in frames:
        frame = (eth if kind else b"") + (b"\x45" + payload if kind == 2 else payload)
        body += struct.pack("<IIII", 0, 0, len(frame), len(frame)) + frame
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.pcap"
        path.write_bytes(PCAP_HEADER + body)
        for conn in record.read_pcap(path):
            _ = (conn.c2s, conn.s2c)
