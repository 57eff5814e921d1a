from __future__ import annotations

import base64
import time

import pytest

from analyzer.forwarding.blobs import (
    DOVECOT_REJECTS,
    MAX_ENTRIES,
    DecodedBlob,
    ForwardEntry,
    decode_forward_base64,
    decode_xrcptforward,
    encode_forward_base64,
    split_forward_list,
    tab_escape,
    tab_unescape,
)


def b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8", "surrogateescape")).decode("ascii")


# --- tab escaping (src/lib/strescape.c) -------------------------------------------------------


@pytest.mark.parametrize(
    ("escaped", "plain"),
    [
        ("\x011", "\x01"),
        ("\x01t", "\t"),
        ("\x01n", "\n"),
        ("\x01r", "\r"),
        ("\x010", "\x00"),
        ("a\x01tb\x01nc", "a\tb\nc"),
        ("\x011t", "\x01t"),  # the escaped 0x01 is not an escape start again
        ("\x011\x01t", "\x01\t"),
        ("plain", "plain"),
        ("", ""),
    ],
)
def test_tab_unescape_defined_escapes(escaped: str, plain: str) -> None:
    assert tab_unescape(escaped) == (plain, ())
    assert tab_escape(plain) == escaped


@pytest.mark.parametrize(
    ("escaped", "plain", "problems"),
    [
        ("a\x01xb", "axb", ("bad_escape",)),  # 0x01 + other byte yields that byte
        ("\x01=", "=", ("bad_escape",)),
        ("\x01\x01", "\x01", ("bad_escape",)),  # 0x01 0x01 is "0x01 + other": one 0x01
        ("\x01\x01\x01t", "\x01\t", ("bad_escape",)),
        ("abc\x01", "abc", ("trailing_escape",)),  # lone trailing 0x01 is dropped
        ("\x01", "", ("trailing_escape",)),
        ("\x01q\x01", "q", ("bad_escape", "trailing_escape")),
        ("\x01\x01t", "\x01t", ("bad_escape",)),
    ],
)
def test_tab_unescape_undefined_escapes(escaped: str, plain: str, problems: tuple[str, ...]) -> None:
    assert tab_unescape(escaped) == (plain, problems)


def test_tab_escape_all_five() -> None:
    assert tab_escape("\x00\x01\t\n\r=") == "\x010\x011\x01t\x01n\x01r="
    for s in ["\x01\x01t", "x\x011", "\t\x01\n", "\x01"]:
        assert tab_unescape(tab_escape(s)) == (s, ())


# --- splitting ----------------------------------------------------------------------------------


def test_split_plain_list() -> None:
    blob = split_forward_list("tenant=acme\tplan=gold")
    assert blob == DecodedBlob(
        (ForwardEntry("tenant", "acme", "tenant=acme"), ForwardEntry("plan", "gold", "plan=gold")), ()
    )


def test_split_unescapes_after_splitting_and_keeps_raw() -> None:
    blob = split_forward_list("k=a\x01tb\tk2=x\x01ny\x01rz")
    assert [(e.name, e.value, e.raw) for e in blob.entries] == [
        ("k", "a\tb", "k=a\x01tb"),
        ("k2", "x\ny\rz", "k2=x\x01ny\x01rz"),
    ]
    assert blob.problems == ("cr_lf_in_value",)


def test_split_value_keeps_later_equals() -> None:
    (e,) = split_forward_list("k=a=b==").entries
    assert (e.name, e.value) == ("k", "a=b==")


def test_entry_without_equals_is_flagged() -> None:
    blob = split_forward_list("tenant=acme\tnopassword\tproxy")
    assert blob.entries[1] == ForwardEntry(None, "nopassword", "nopassword")
    assert blob.entries[2].name is None
    assert blob.problems == ("entry_without_equals",)


def test_empty_name_and_bad_name_chars() -> None:
    assert split_forward_list("=x").problems == ("empty_name",)
    assert split_forward_list("=x").entries == (ForwardEntry("", "x", "=x"),)
    assert split_forward_list("a.b=1").problems == ("name_bad_chars",)
    assert split_forward_list("a b=1").problems == ("name_bad_chars",)
    assert split_forward_list("a_b-C9=1").problems == ()


def test_empty_elements_and_empty_blob() -> None:
    assert split_forward_list("") == DecodedBlob((), ("empty_blob",))
    blob = split_forward_list("a=1\t\tb=2")
    assert [e.name for e in blob.entries] == ["a", None, "b"]
    assert blob.problems == ("entry_without_equals",)


def test_nul_and_crlf_in_values() -> None:
    assert split_forward_list("k=a\x010b").entries[0].value == "a\x00b"
    assert split_forward_list("k=a\x010b").problems == ("nul_in_value",)
    assert split_forward_list("k=a\x00b").problems == ("nul_in_value",)  # raw NUL too
    assert split_forward_list("k=a\rb").problems == ("cr_lf_in_value",)


def test_escaped_equals_in_name_still_splits_on_first_equals() -> None:
    blob = split_forward_list("a\x01=b=c")
    assert blob.entries[0].name == "a"
    assert blob.entries[0].value == "b=c"
    assert blob.problems == ("bad_escape",)


def test_too_many_entries_is_capped() -> None:
    blob = split_forward_list("\t".join(f"k{i}=v" for i in range(MAX_ENTRIES + 5)))
    assert len(blob.entries) == MAX_ENTRIES
    assert blob.entries[-1].name == f"k{MAX_ENTRIES - 1}"
    assert blob.problems == ("too_many_entries",)
    assert split_forward_list("\t".join(["k=v"] * MAX_ENTRIES)).problems == ()


def test_not_utf8() -> None:
    blob = split_forward_list(b"k=\xff\xfe".decode("utf-8", "surrogateescape"))
    assert blob.problems == ("not_utf8",)
    assert blob.entries[0].value == "\udcff\udcfe"


# --- base64 (POP3 / submission FORWARD=) --------------------------------------------------------


def test_spec_example_forward() -> None:
    assert decode_forward_base64("dGVuYW50PWFjbWU=") == DecodedBlob(
        (ForwardEntry("tenant", "acme", "tenant=acme"),), ()
    )


def test_every_padding_length() -> None:
    for text in ["a=", "a=b", "a=bc", "a=bcd"]:
        blob = decode_forward_base64(b64(text))
        assert blob.problems == ()
        assert blob.entries[0].raw == text


@pytest.mark.parametrize(
    ("raw", "problems", "decoded"),
    [
        ("YT1i", (), "a=b"),
        ("YT0", ("base64_bad_padding",), "a="),  # padding missing: Dovecot fails in base64_decode_finish()
        ("YT1iYw", ("base64_bad_padding",), "a=bc"),
        ("YT1iYw=", ("base64_bad_padding",), "a=bc"),  # one '=' short
        ("YT1i=", ("base64_bad_padding",), "a=b"),  # '=' where none is expected
        ("YT0===", ("base64_bad_padding",), "a="),  # excess padding
        ("YT1iY", ("base64_bad_padding",), "a=b"),  # one dangling character
        ("YT0=YT0=", ("base64_trailing_data",), "a="),  # data after the padding
        ("YT!1i", ("base64_bad_char",), "a=b"),
        ("YT1i\x00", ("base64_bad_char",), "a=b"),
        ("YT1iYz\u00e9w=", ("base64_bad_char",), "a=bc<"),  # read as "YT1iYzw="
        ("YT1iYz_-", ("base64_urlsafe_alphabet",), "a=bc?\xfe"),  # read as "YT1iYz/+"
        ("YT1i\tYw==", ("base64_whitespace",), "a=bc"),  # Dovecot skips SP/TAB/CR/LF
        ("YT1i\r\nYw=\n=", ("base64_whitespace",), "a=bc"),
        ("YT1i\x0bYw==", ("base64_bad_char",), "a=bc"),  # VT is not IS_EMPTY()
    ],
)
def test_bad_base64_variants(raw: str, problems: tuple[str, ...], decoded: str) -> None:
    blob = decode_forward_base64(raw)
    assert [p for p in blob.problems if p.startswith("base64_")] == list(problems)
    assert "\t".join(e.raw for e in blob.entries) == decoded.encode("latin-1").decode(
        "utf-8", "surrogateescape"
    )


def test_urlsafe_of_real_blob_decodes_and_is_flagged() -> None:
    text = "k=\u00ff\u00ff\u00ff~~~?"  # UTF-8 bytes chosen so standard base64 contains '+' and '/'
    std = b64(text)
    assert "+" in std or "/" in std
    urlsafe = std.replace("+", "-").replace("/", "_")
    blob = decode_forward_base64(urlsafe)
    assert blob.problems == ("base64_urlsafe_alphabet",)
    assert blob.entries == decode_forward_base64(std).entries


def test_dovecot_rejects_set() -> None:
    assert "base64_whitespace" not in DOVECOT_REJECTS
    assert DOVECOT_REJECTS >= {"base64_bad_padding", "base64_urlsafe_alphabet"}


def test_empty_forward_values() -> None:
    assert decode_forward_base64("") == DecodedBlob((), ("empty_blob",))
    assert decode_forward_base64("====").problems == ("base64_bad_padding", "empty_blob")
    assert decode_forward_base64(" ").problems == ("base64_whitespace", "empty_blob")


def test_blob_with_entry_without_equals_and_escapes() -> None:
    raw = b64("tenant=a\x01tb\tnopassword\tx=\x01q")
    blob = decode_forward_base64(raw)
    assert [(e.name, e.value) for e in blob.entries] == [("tenant", "a\tb"), (None, "nopassword"), ("x", "q")]
    assert blob.problems == ("entry_without_equals", "bad_escape")


def test_encode_matches_dovecot_layout() -> None:
    assert encode_forward_base64([("tenant", "acme")]) == "dGVuYW50PWFjbWU="
    assert base64.b64decode(encode_forward_base64([("a", "x\ty"), ("b", "1")])) == b"a=x\x01ty\tb=1"
    assert encode_forward_base64([]) == ""


def test_ten_megabyte_blob_is_linear() -> None:
    value = "v\t\x01\n" * 2_500_000  # 10 MB of text, half of it escapes
    entries = [("big", value), ("tenant", "acme")]
    raw = encode_forward_base64(entries)
    t0 = time.perf_counter()
    blob = decode_forward_base64(raw)
    elapsed = time.perf_counter() - t0
    assert [(e.name, e.value) for e in blob.entries] == entries
    assert elapsed < 2.0, elapsed
    # the slow (regex callback) paths stay linear too
    t0 = time.perf_counter()
    bad = decode_forward_base64("\n" + raw[:-1] + "_")
    elapsed = time.perf_counter() - t0
    assert "base64_whitespace" in bad.problems and "base64_urlsafe_alphabet" in bad.problems
    assert elapsed < 2.0, elapsed
    t0 = time.perf_counter()
    text, problems = tab_unescape("\x01x" * 1_000_000)
    assert (len(text), problems) == (1_000_000, ("bad_escape",))
    assert time.perf_counter() - t0 < 2.0


# --- LMTP XRCPTFORWARD= --------------------------------------------------------------------------


def test_xrcptforward_is_the_list_itself() -> None:
    blob = decode_xrcptforward("tenant=acme\tplan=gold")
    assert [(e.name, e.value) for e in blob.entries] == [("tenant", "acme"), ("plan", "gold")]
    assert blob.problems == ()


def test_xrcptforward_base64_mistake_is_flagged() -> None:
    blob = decode_xrcptforward("dGVuYW50PWFjbWU=")
    assert "looks_like_base64" in blob.problems
    assert decode_xrcptforward("abcd").problems == ("entry_without_equals",)  # base64-shaped, no '=' inside


def test_xrcptforward_nul_and_empty() -> None:
    assert decode_xrcptforward("k=a\x00").problems == ("nul_in_value",)
    assert decode_xrcptforward("").problems == ("empty_blob",)
