"""Decoders for Dovecot's forward list: POP3/submission ``FORWARD=`` and LMTP ``XRCPTFORWARD=``.

The forward list (spec section 5) is ``<name>=<value>`` elements, each
tab-escaped with 0x01 as the escape character, joined with a raw TAB. POP3 sends
it as standard base64 with padding, submission as base64 then xtext, and LMTP
as xtext of the list itself (no base64). Every function here is pure and total:
it never raises on any input string, and problems come back as stable codes in
``DecodedBlob.problems`` (each code at most once, in the order first seen).

Strategy: everything runs in C-speed passes over the whole string (``str.split``
with a bounded ``maxsplit``, ``str.replace`` chains, compiled regular
expressions, ``binascii``), so a 100 MB blob costs a few linear passes and never
a per-character Python loop. Well-formed input takes a fast path: a strict
``binascii`` decode, and for tab-unescaping a fixed sequence of ``replace``
calls, which is exact when no 0x01 follows another 0x01 and every escape is one
of the five Dovecot defines. Anything else falls back to a regex scan that
classifies every problem while still decoding what can be decoded, the way an
auditor wants to see it (Dovecot itself stops and rejects; see
:data:`DOVECOT_REJECTS`).

Strings are ``wire_text`` (UTF-8 with surrogateescape), so bytes that are not
UTF-8 survive as lone surrogates U+DC80..U+DCFF and are reported as
``not_utf8``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass

MAX_ENTRIES = 1000  # our memory bound; Dovecot has none (the 1026-byte POP3 line caps a blob in practice)

TAB_ESCAPE_CHAR = "\x01"  # src/lib/strescape.c: str_append_tabescaped() escape byte (SOH)
BASE64_WHITESPACE = " \t\r\n"  # src/lib/base64.c: IS_EMPTY(), skipped anywhere unless NO_WHITESPACE

#: Problem codes after which Dovecot's ``base64_decode()`` fails, so the backend answers
#: POP3 ``-ERR Invalid parameters`` / submission ``501 5.5.4 Invalid FORWARD parameter``
#: (src/lib/base64.c: ``base64_decode_more()``/``base64_decode_finish()`` with flags 0).
DOVECOT_REJECTS: frozenset[str] = frozenset(
    {"base64_bad_padding", "base64_bad_char", "base64_urlsafe_alphabet", "base64_trailing_data"}
)

#: src/lib/strescape.c: str_append_tabunescaped(), the character after 0x01 -> the byte it stands for
_UNESCAPES: dict[str, str] = {"1": "\x01", "t": "\t", "n": "\n", "r": "\r", "0": "\x00"}
_ESCAPES = tuple("\x01" + c for c in _UNESCAPES)  # the five defined two-character escapes
_ESCAPE_RE = re.compile(r"\x01(.?)", re.DOTALL)  # one escape: 0x01 and the character after it (or end)
_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")  # spec A-C6: forward names outside this set are suspicious
#: RFC 4648 section 4 (Dovecot's base64_scheme)
_B64_ALPHABET_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_NOT_ANY_ALPHABET_BYTES = bytes(  # neither the standard nor the URL-safe (section 5) alphabet
    c for c in range(256) if c not in _B64_ALPHABET_BYTES + b"-_"
)
_B64_STRICT_RE = re.compile(r"(?:[A-Za-z0-9+/]{4})+(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_WHITESPACE_BYTES = BASE64_WHITESPACE.encode("ascii")
_PADDING_NEEDED = {0: 0, 2: 2, 3: 1}  # body length mod 4 -> '=' count (1 is never valid)


@dataclass(frozen=True, slots=True)
class ForwardEntry:
    """One element of a forward list."""

    name: str | None  #: text before the first ``=``; None without ``=`` (imported as a plain passdb field)
    value: str  #: unescaped value (the whole unescaped element when there is no ``=``)
    raw: str  #: the element as it was in the list, before unescaping


@dataclass(frozen=True, slots=True)
class DecodedBlob:
    """A decoded forward list and everything that was wrong with it."""

    entries: tuple[ForwardEntry, ...]  #: elements in list order (at most :data:`MAX_ENTRIES`)
    problems: tuple[str, ...]  #: stable codes, each once, in order first seen (see module docstring)


def _unique(codes: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(codes))


def tab_unescape(s: str) -> tuple[str, tuple[str, ...]]:
    """Undo Dovecot tab-escaping (``str_append_tabunescaped``); return the text and problem codes."""
    if TAB_ESCAPE_CHAR not in s:
        return s, ()
    if "\x01\x01" not in s and s.count("\x01") == sum(s.count(e) for e in _ESCAPES):
        # every 0x01 starts one of the five defined escapes, none overlapping: '1' must go last
        out = s.replace("\x01t", "\t").replace("\x01n", "\n").replace("\x01r", "\r").replace("\x010", "\x00")
        return out.replace("\x011", "\x01"), ()
    seen: set[str] = set()

    def one(m: re.Match[str]) -> str:
        c = m.group(1)
        if c == "":
            seen.add("trailing_escape")  # a lone 0x01 at the end is dropped
            return ""
        r = _UNESCAPES.get(c)
        if r is None:
            seen.add("bad_escape")  # 0x01 + any other character yields that character
            return c
        return r

    out = _ESCAPE_RE.sub(one, s)
    return out, tuple(code for code in ("bad_escape", "trailing_escape") if code in seen)


def tab_escape(s: str) -> str:
    """Dovecot tab-escaping (``str_append_tabescaped_n``): 0x01, TAB, LF, CR and NUL become 0x01 + letter."""
    if not any(c in s for c in "\x01\t\n\r\x00"):
        return s
    # 0x01 first, so the escape bytes added by the later replacements are not escaped again
    return (
        s.replace("\x01", "\x011")
        .replace("\t", "\x01t")
        .replace("\n", "\x01n")
        .replace("\r", "\x01r")
        .replace("\x00", "\x010")
    )


def _entry(element: str, problems: list[str]) -> ForwardEntry:
    text, escape_problems = tab_unescape(element)
    problems.extend(escape_problems)
    if "\x00" in text:
        problems.append("nul_in_value")
    if "\r" in text or "\n" in text:
        problems.append("cr_lf_in_value")
    eq = text.find("=")
    if eq < 0:
        problems.append("entry_without_equals")
        return ForwardEntry(None, text, element)
    name = text[:eq]
    if name == "":
        problems.append("empty_name")
    elif _NAME_RE.fullmatch(name) is None:
        problems.append("name_bad_chars")
    return ForwardEntry(name, text[eq + 1 :], element)


def split_forward_list(s: str) -> DecodedBlob:
    """Split a forward list on raw TAB, then unescape each element (``p_strsplit_tabescaped``)."""
    if s == "":
        return DecodedBlob((), ("empty_blob",))
    problems: list[str] = []
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: surrogateescape stand-ins for bytes that were not UTF-8
            problems.append("not_utf8")
    parts = s.split("\t", MAX_ENTRIES)
    if len(parts) > MAX_ENTRIES:
        problems.append("too_many_entries")
        del parts[MAX_ENTRIES:]
    entries = tuple(_entry(p, problems) for p in parts)
    return DecodedBlob(entries, _unique(problems))


def _is_strict_base64(s: str) -> bool:
    """Exactly what Dovecot accepts without whitespace: alphabet, then the padding the length needs."""
    if len(s) % 4 != 0 or not s.isascii():
        return False
    rest = s.encode("ascii").translate(None, _B64_ALPHABET_BYTES)
    if rest == b"":
        return True
    return rest in (b"=", b"==") and s.endswith(rest.decode("ascii"))  # only trailing padding


def _decode_base64_lenient(raw: str, problems: list[str]) -> bytes:
    """Decode what can be decoded; append a code for every way ``raw`` differs from strict padded base64."""
    # surrogatepass makes this total; every non-ASCII character becomes bytes >= 0x80 (bad chars)
    b = raw.encode("utf-8", "surrogatepass")
    if b.translate(None, _WHITESPACE_BYTES) != b:
        problems.append("base64_whitespace")  # Dovecot skips it; only worth a note
        b = b.translate(None, _WHITESPACE_BYTES)
    first_pad = b.find(b"=")
    if first_pad < 0:
        body, pad = b, 0
    else:
        body = b[:first_pad]
        tail = b[first_pad:]
        rest = tail.lstrip(b"=")
        pad = len(tail) - len(rest)
        if rest:
            problems.append("base64_trailing_data")  # Dovecot fails on anything after the padding
    leftover = body.translate(None, _B64_ALPHABET_BYTES)
    if leftover:
        if b"-" in leftover or b"_" in leftover:
            problems.append("base64_urlsafe_alphabet")
        if leftover.translate(None, b"-_"):
            problems.append("base64_bad_char")
        body = body.translate(_URLSAFE_TO_STANDARD, _B64_NOT_ANY_ALPHABET_BYTES)
    rem = len(body) % 4
    need = _PADDING_NEEDED.get(rem)
    if need is None:
        problems.append("base64_bad_padding")  # one dangling character carries no whole byte
        body = body[:-1]
        need = 0
    elif pad != need:
        problems.append("base64_bad_padding")  # missing, short or excess '='
    return binascii.a2b_base64(body + b"=" * need)


def decode_forward_base64(raw: str) -> DecodedBlob:
    """Decode a POP3/submission ``FORWARD=`` value (after xtext decoding): base64, then the forward list."""
    if raw == "":
        return DecodedBlob((), ("empty_blob",))
    problems: list[str] = []
    if _is_strict_base64(raw):
        data = binascii.a2b_base64(raw)
    else:
        data = _decode_base64_lenient(raw, problems)
    blob = split_forward_list(data.decode("utf-8", "surrogateescape"))
    return DecodedBlob(blob.entries, _unique([*problems, *blob.problems]))


def decode_xrcptforward(decoded_xtext: str) -> DecodedBlob:
    """Decode an LMTP ``XRCPTFORWARD=`` value: the xtext-decoded value is the forward list itself."""
    blob = split_forward_list(decoded_xtext)
    if "\t" not in decoded_xtext and _B64_STRICT_RE.fullmatch(decoded_xtext) is not None:
        # spec A-S11: base64 where xtext of the raw list belongs (a documentation-driven mistake)
        inner = binascii.a2b_base64(decoded_xtext)
        try:
            text = inner.decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        if "=" in text:
            return DecodedBlob(blob.entries, _unique([*blob.problems, "looks_like_base64"]))
    return blob


def _to_wire(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no wire byte stands for: keep it visible rather than fail
        return text.encode("utf-8", "surrogatepass")


def encode_forward_base64(entries: list[tuple[str, str]]) -> str:
    """Build a POP3 ``FORWARD=`` value the way Dovecot's proxy does (tab-escape, TAB-join, padded base64)."""
    joined = "\t".join(tab_escape(f"{name}={value}") for name, value in entries)
    return base64.b64encode(_to_wire(joined)).decode("ascii")
