from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.protocols.base import XParam, wire_bytes, wire_text
from analyzer.protocols.xtext import decode_lenient, decode_strict, encode, make_param, param_from_wire

# (id, raw, strict value, strict problems, lenient value)
DECODE_CASES = [
    ("empty", "", "", (), ""),
    ("plain", "client.example", "client.example", (), "client.example"),
    ("forward_blob", "dGVuYW50PWFjbWU+3D", "dGVuYW50PWFjbWU=", (), "dGVuYW50PWFjbWU="),
    ("plus_encoded", "AbCd+2Bef", "AbCd+ef", (), "AbCd+ef"),
    ("xrcptforward", "tenant+3Dacme+09plan+3Dgold", "tenant=acme\tplan=gold", (), "tenant=acme\tplan=gold"),
    ("ipv6", "IPV6:2001:db8::7", "IPV6:2001:db8::7", (), "IPV6:2001:db8::7"),
    ("unavailable", "[UNAVAILABLE]", "[UNAVAILABLE]", (), "[UNAVAILABLE]"),
    ("tempunavail_lower", "[tempunavail]", "[tempunavail]", (), "[tempunavail]"),
    ("space_encoded", "a+20b", "a b", (), "a b"),
    ("utf8_encoded", "+C3+A9t+C3+A9", "\u00e9t\u00e9", (), "\u00e9t\u00e9"),
    ("high_byte", "+FF", wire_text(b"\xff"), (), wire_text(b"\xff")),
    ("lowercase_hex", "dGVu+3d", None, ("xtext_lowercase_hex",), "dGVu="),
    ("lowercase_one_digit", "+3a", None, ("xtext_lowercase_hex",), ":"),
    ("bad_hexchar", "ab+G1", None, ("xtext_bad_hexchar",), "ab+G1"),
    ("plus_at_end", "ab+", None, ("xtext_bad_hexchar",), "ab+"),
    ("plus_one_digit", "ab+4", None, ("xtext_bad_hexchar",), "ab+4"),
    ("double_plus", "++41", None, ("xtext_bad_hexchar",), "++41"),
    ("nul", "ab+00cd", None, ("xtext_nul",), "ab\x00cd"),
    ("raw_equals", "dGVuYW50PWFjbWU=", None, ("xtext_raw_char",), "dGVuYW50PWFjbWU="),
    ("raw_space", "a b", None, ("xtext_raw_char",), "a b"),
    ("raw_tab", "a\tb", None, ("xtext_raw_char",), "a\tb"),
    ("raw_del", "a\x7fb", None, ("xtext_raw_char",), "a\x7fb"),
    ("raw_non_ascii", "caf\u00e9", None, ("xtext_raw_char",), "caf\u00e9"),
    ("raw_surrogate_escape", wire_text(b"a\xffb"), None, ("xtext_raw_char",), wire_text(b"a\xffb")),
    (
        "several_problems_in_order",
        "x=+3d+G+00 ",
        None,
        ("xtext_raw_char", "xtext_lowercase_hex", "xtext_bad_hexchar", "xtext_nul"),
        "x=+3d+G+00 ",
    ),
    ("lowercase_and_nul", "+3d+00", None, ("xtext_lowercase_hex", "xtext_nul"), "=\x00"),
]


@pytest.mark.parametrize(
    ("raw", "value", "problems", "lenient"), [c[1:] for c in DECODE_CASES], ids=[c[0] for c in DECODE_CASES]
)
def test_decode(raw: str, value: str | None, problems: tuple[str, ...], lenient: str) -> None:
    assert decode_strict(raw) == (value, problems)
    assert decode_lenient(raw) == lenient


ENCODE_CASES = [
    ("", ""),
    ("tenant=acme\tplan=gold", "tenant+3Dacme+09plan+3Dgold"),
    ("dGVuYW50PWFjbWU=", "dGVuYW50PWFjbWU+3D"),
    ("a+b c", "a+2Bb+20c"),
    ("\u00e9", "+C3+A9"),
    ("\x00\x7f~!", "+00+7F~!"),
    (wire_text(b"\xff"), "+FF"),
]


@pytest.mark.parametrize(("value", "encoded"), ENCODE_CASES)
def test_encode(value: str, encoded: str) -> None:
    assert encode(value) == encoded


def test_encode_is_total_on_lone_surrogates() -> None:
    # wire_text never makes "\ud800", but encode() must not raise on any str
    assert encode("\ud800") == "+ED+A0+80"


def test_make_param() -> None:
    assert make_param("FORWARD", "dGVuYW50PWFjbWU+3D", True) == XParam(
        name="FORWARD",
        raw="dGVuYW50PWFjbWU+3D",
        value="dGVuYW50PWFjbWU=",
        lenient="dGVuYW50PWFjbWU=",
        has_equals=True,
        problems=(),
    )
    assert make_param("ttl", "+3d", True) == XParam(
        name="ttl", raw="+3d", value=None, lenient="=", has_equals=True, problems=("xtext_lowercase_hex",)
    )
    assert make_param("NOVALUE", "", False) == XParam(
        name="NOVALUE", raw="", value=None, lenient="", has_equals=False, problems=()
    )
    assert make_param("ADDR", "", True) == XParam(
        name="ADDR", raw="", value="", lenient="", has_equals=True, problems=()
    )


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_roundtrip_text(value: str) -> None:
    if "\x00" in value:
        value = value.replace("\x00", "")
    encoded = encode(value)
    assert all(0x21 <= ord(c) <= 0x7E for c in encoded)
    assert decode_strict(encoded) == (value, ())
    assert decode_lenient(encoded) == value


@settings(max_examples=200, deadline=None)
@given(st.binary())
def test_roundtrip_wire_bytes(data: bytes) -> None:
    value = wire_text(data.replace(b"\x00", b""))
    assert decode_strict(encode(value)) == (value, ())
    assert wire_bytes(decode_lenient(encode(value))) == data.replace(b"\x00", b"")


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary().map(wire_text), st.text()))
def test_decoders_are_total(raw: str) -> None:
    value, problems = decode_strict(raw)
    assert (value is None) == bool(problems)
    assert set(problems) <= {"xtext_lowercase_hex", "xtext_bad_hexchar", "xtext_nul", "xtext_raw_char"}
    assert isinstance(decode_lenient(raw), str)
    param = make_param("X", raw, True)
    assert param.value == value and param.problems == problems


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="+0123456789ABCDEFabcdefG=x \x00\u00e9", max_size=20))
def test_strict_agrees_with_a_reference_decoder(raw: str) -> None:
    """A byte-by-byte transcription of Dovecot's smtp_xtext_parse() (stops at the first error)."""
    data = raw.encode()
    out = bytearray()
    i, ok = 0, True
    while i < len(data):
        c = data[i]
        if c == 0x2B:
            h = data[i + 1 : i + 3]
            if len(h) < 2 or not all(x in b"0123456789ABCDEF" for x in h) or int(h, 16) == 0:
                ok = False
                break
            out.append(int(h, 16))
            i += 3
            continue
        if not (0x21 <= c <= 0x7E) or c == 0x3D:
            ok = False
            break
        out.append(c)
        i += 1
    value, _ = decode_strict(raw)
    assert value == (wire_text(bytes(out)) if ok else None)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=24),
        st.lists(
            st.sampled_from([b"=", b"+", b"+3D", b"+3d", b"+00", b"A", b"z", b"~", b" ", b"\xc3\xa9"]),
            max_size=10,
        ).map(b"".join),
    )
)
def test_param_from_wire_equals_make_param(token: bytes) -> None:
    """The bytes fast path builds exactly the XParam make_param builds from the decoded text."""
    name, eq, raw = token.partition(b"=")
    if eq:
        want = make_param(wire_text(name), wire_text(raw), True)
    else:
        want = make_param(wire_text(token), "", False)
    assert param_from_wire(token) == want


@pytest.mark.parametrize(
    ("token", "value", "problems"),
    [
        (b"ADDR=192.0.2.1", "192.0.2.1", ()),  # plain xchars: decodes to itself
        (b"ADDR=", "", ()),
        (b"FORWARD=dGVuYW50PWFjbWU+3D", "dGVuYW50PWFjbWU=", ()),
        (b"TTL=+3d", None, ("xtext_lowercase_hex",)),
        (b"NAME=a=b", None, ("xtext_raw_char",)),  # only the first "=" separates name and value
    ],
)
def test_param_from_wire_cases(token: bytes, value: str | None, problems: tuple[str, ...]) -> None:
    param = param_from_wire(token)
    assert param.has_equals and (param.value, param.problems) == (value, problems)
    assert param.raw == wire_text(token.partition(b"=")[2])


def test_param_from_wire_without_equals() -> None:
    assert param_from_wire(b"NOVALUE") == XParam("NOVALUE", "", None, "", False, ())
