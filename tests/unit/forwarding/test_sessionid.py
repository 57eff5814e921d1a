from __future__ import annotations

import base64
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.forwarding.sessionid import SessionIdInfo, decode_session_id


def login_id(ts_us: int, port: int, ip: str) -> str:
    """What client_get_session_id() builds: 48-bit LE timestamp, LE port, IP in network order, base64."""
    raw = (ts_us & (2**48 - 1)).to_bytes(6, "little") + port.to_bytes(2, "little")
    raw += ipaddress.ip_address(ip).packed
    return base64.b64encode(raw).decode("ascii")


@pytest.mark.parametrize(
    ("ts_us", "port", "ip"),
    [
        (1_700_000_000_123_456, 51234, "198.51.100.7"),
        (1_700_000_000_000_000, 1, "0.0.0.0"),
        (2**48 - 1, 65535, "255.255.255.255"),
        (1_717_171_717_171_717, 443, "2001:db8::7"),
        (0, 0, "::ffff:192.0.2.1"),
    ],
)
def test_login_ids_round_trip(ts_us: int, port: int, ip: str) -> None:
    sid = login_id(ts_us, port, ip)
    assert len(sid) == (16 if ipaddress.ip_address(ip).version == 4 else 32)
    assert decode_session_id(sid) == SessionIdInfo(
        "login", ts_us & (2**48 - 1), port, str(ipaddress.ip_address(ip)), 0, ()
    )


def test_known_vector_bytes() -> None:
    # ts 0x0102030405 06, port 0x1f90 (8080), 10.0.0.1: bytes 06 05 04 03 02 01 90 1f 0a 00 00 01
    sid = base64.b64encode(bytes.fromhex("060504030201901f0a000001")).decode()
    info = decode_session_id(sid)
    assert (info.kind, info.ts_us, info.port, info.ip) == ("login", 0x010203040506, 8080, "10.0.0.1")


def test_timestamp_is_the_low_48_bits() -> None:
    full = 1_700_000_000_123_456 + 2**48 * 3
    info = decode_session_id(login_id(full, 1000, "192.0.2.1"))
    assert info.ts_us == full % 2**48


def test_lmtp_guid_and_suffixes() -> None:
    guid = base64.b64encode(bytes(range(16))).decode()[:-2]
    assert len(guid) == 22
    assert decode_session_id(guid) == SessionIdInfo("lmtp", None, None, None, 0, ())
    assert decode_session_id(guid + ":T1:P1").proxy_hops == 1
    info = decode_session_id(guid + ":T1:P1:T1:P2:R3")
    assert (info.kind, info.proxy_hops, info.problems) == ("lmtp", 2, ())


def test_suffix_problems() -> None:
    guid = "AAECAwQFBgcICQoLDA0ODw"
    assert decode_session_id(guid + ":X1").problems == ("unknown_suffix",)
    assert decode_session_id(guid + ":P").problems == ("bad_suffix",)
    assert decode_session_id(guid + "::P1").problems == ("bad_suffix",)
    login = login_id(1, 2, "192.0.2.1")
    info = decode_session_id(login + ":P1")
    assert (info.kind, info.port, info.problems) == ("login", 2, ("unexpected_suffix",))


def test_empty_too_long_and_bad_base64() -> None:
    assert decode_session_id("") == SessionIdInfo("unknown", None, None, None, 0, ("empty",))
    long_id = "A" * 65
    assert decode_session_id(long_id).problems == ("too_long",)
    assert decode_session_id("A" * 64).problems == ()
    assert decode_session_id("q1w2e3r4t5y6u7i8").kind == "login"  # 16 base64 characters: cannot be told apart
    bad = decode_session_id("q1w2e3r4-5y6u7i8")
    assert (bad.kind, bad.problems) == ("unknown", ("bad_base64",))
    assert decode_session_id("AAECAwQFBgcICQoLDA0OD_").problems == ("bad_base64",)
    assert decode_session_id("short").kind == "unknown"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_never_raises(s: str) -> None:
    info = decode_session_id(s)
    assert info.kind in ("login", "lmtp", "unknown")
    assert (info.ip is None) == (info.kind != "login")


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**48 - 1), st.integers(0, 65535), st.ip_addresses())
def test_login_round_trip_property(
    ts: int, port: int, ip: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> None:
    info = decode_session_id(login_id(ts, port, str(ip)))
    assert (info.kind, info.ts_us, info.port, info.ip) == ("login", ts, port, str(ip))
