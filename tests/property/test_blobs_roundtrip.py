from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.forwarding.blobs import (
    DecodedBlob,
    decode_forward_base64,
    decode_xrcptforward,
    encode_forward_base64,
    split_forward_list,
    tab_escape,
    tab_unescape,
)

# wire_text strings: any code point except surrogates, plus the surrogateescape range for non-UTF-8 bytes
SPECIAL = "\x00\x01\t\n\r\udc80\udcff"  # the tab-escaped bytes and two non-UTF-8 stand-ins
WIRE_CHARS = st.one_of(st.characters(exclude_categories=["Cs"]), st.sampled_from(SPECIAL + "="))
NAME_CHARS = st.one_of(
    st.characters(exclude_categories=["Cs"], exclude_characters="="), st.sampled_from(SPECIAL)
)
NAMES = st.text(NAME_CHARS, max_size=12)  # a name never contains '=' (the split point)
VALUES = st.text(WIRE_CHARS, max_size=40)
ENTRIES = st.lists(st.tuples(NAMES, VALUES), max_size=8)


@settings(max_examples=200, deadline=None)
@given(ENTRIES)
def test_encode_then_decode_gives_the_entries_back(entries: list[tuple[str, str]]) -> None:
    blob = decode_forward_base64(encode_forward_base64(entries))
    assert [(e.name, e.value) for e in blob.entries] == entries
    assert not any(p.startswith("base64_") or p.endswith("_escape") for p in blob.problems)
    assert ("empty_blob" in blob.problems) == (entries == [])


@settings(max_examples=200, deadline=None)
@given(VALUES)
def test_tab_escape_round_trip(s: str) -> None:
    escaped = tab_escape(s)
    assert not any(c in escaped for c in "\t\n\r\x00")
    assert tab_unescape(escaped) == (s, ())


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_decoders_never_raise_on_text(s: str) -> None:
    for blob in (decode_forward_base64(s), decode_xrcptforward(s), split_forward_list(s)):
        assert isinstance(blob, DecodedBlob)
        assert len(set(blob.problems)) == len(blob.problems)
    tab_unescape(s)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_decoders_never_raise_on_wire_bytes(b: bytes) -> None:
    s = b.decode("utf-8", "surrogateescape")
    decode_forward_base64(s)
    decode_xrcptforward(s)
    tab_unescape(s)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ABCDab01+/=-_ \t\r\n!", max_size=60))
def test_base64_like_text_never_raises_and_clean_input_has_no_base64_problems(s: str) -> None:
    blob = decode_forward_base64(s)
    if not any(p.startswith("base64_") for p in blob.problems):
        # exactly strict padded base64: the reference decoder agrees byte for byte
        decoded = base64.b64decode(s, validate=True)
        assert "\t".join(e.raw for e in blob.entries).encode("utf-8", "surrogateescape") == decoded
