"""forwarding.extract: the cheap paths give what the plain ``ipaddress`` reading gives."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.forwarding.extract import ADDRESS_CACHE_TEXT_MAX, _last_index, _last_of, parse_address


def reference_parse_address(raw: str | None, smtp: bool = False) -> tuple[str | None, list[str]]:
    """parse_address as it was before the IPv4 fast path and the cache (HEAD 7890d9f)."""
    if raw is None:
        return None, []
    problems = []
    text = raw
    if text.upper() in ("[UNAVAILABLE]", "[TEMPUNAVAIL]"):
        return None, []
    if text[:5].upper() == "IPV6:":
        text = text[5:]
        if not smtp:
            problems.append("addr_ipv6_prefix")
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
        problems.append("addr_brackets")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return raw, problems + ["addr_invalid"]
    if problems and not smtp:
        return raw, problems + ["addr_invalid"]
    if raw[:5].upper() == "IPV6:" and ip.version == 4:
        problems.append("addr_ipv6_prefix_on_ipv4")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        problems.append("addr_ipv4_mapped")
    return str(ip), problems


_OCTETS = st.sampled_from(["0", "00", "01", "1", "9", "10", "99", "100", "199", "249", "250", "255", "256", "012",
                           "1a", " 1", "\u0663", "999"])
_ADDRESSES = st.one_of(
    st.lists(_OCTETS, min_size=3, max_size=5).map(".".join),
    st.ip_addresses().map(str),
    st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
    st.sampled_from(["IPV6:", "ipv6:", "[", ""]).flatmap(
        lambda pre: st.ip_addresses().map(lambda a: pre + str(a) + ("]" if pre == "[" else ""))),
    st.text(max_size=ADDRESS_CACHE_TEXT_MAX + 8),
    st.sampled_from(["[UNAVAILABLE]", "[tempunavail]", "1.2.3.4\n", "1.2.3.4 ", "x" * 200]),
)


@settings(max_examples=200, deadline=None)
@given(raw=_ADDRESSES, smtp=st.booleans())
def test_parse_address_matches_ipaddress(raw: str, smtp: bool) -> None:
    want = reference_parse_address(raw, smtp)
    assert parse_address(raw, smtp) == want
    assert parse_address(raw, smtp) == want  # again: from the cache, and the cached list was not shared
    got = parse_address(raw, smtp)
    got[1].append("changed")
    assert parse_address(raw, smtp) == want


def test_parse_address_examples() -> None:
    assert parse_address("192.0.2.1") == ("192.0.2.1", [])
    assert parse_address("192.000.2.1") == ("192.000.2.1", ["addr_invalid"])
    assert parse_address("IPV6:192.0.2.1", smtp=True) == ("192.0.2.1", ["addr_ipv6_prefix_on_ipv4"])
    assert parse_address("[192.0.2.1]") == ("[192.0.2.1]", ["addr_brackets", "addr_invalid"])
    assert parse_address("::ffff:192.0.2.1") == ("::ffff:c000:201", ["addr_ipv4_mapped"])
    assert parse_address(None) == (None, [])


_PARAMS = st.lists(st.tuples(st.sampled_from(["ADDR", "addr", "Port", "SESSION", "x-session-id",
                                              "x-session-ext-id", "TTL", "other"]),
                             st.one_of(st.none(), st.text(max_size=3))), max_size=12)


def _reference_last(params: list[tuple[str, str | None]], *names: str) -> str | None:
    found = None
    wanted = {n.lower() for n in names}
    for name, value in params:
        if name.lower() in wanted and value is not None:
            found = value
    return found


@settings(max_examples=200, deadline=None)
@given(params=_PARAMS)
def test_last_of_is_the_last_value_of_any_name(params: list[tuple[str, str | None]]) -> None:
    index = _last_index(params)
    for names in (("addr",), ("port",), ("x-session-id", "x-session-ext-id"), ("session",), ("nothing",)):
        assert _last_of(index, *names) == _reference_last(params, *names)
