"""RFC 3461 xtext, decoded the way Dovecot and Postfix decode it (pure, total functions).

Strategy: attribute values reach us as ``str`` made by
:func:`~analyzer.protocols.base.wire_text` (UTF-8 with surrogateescape). Each
function turns the value back into its wire bytes, works on bytes (so a
non-ASCII character or a surrogate escape is simply a raw byte >= 0x80), and
turns decoded bytes into ``str`` with ``wire_text`` again. A decoded ``+C3+A9``
therefore becomes ``"é"`` and a decoded ``+FF`` the surrogate escape of 0xFF.

Two decoders are needed because the two servers disagree (spec section 7):

* :func:`decode_strict` follows Dovecot (``smtp_param_parse()`` then
  ``smtp_xtext_parse()``): a value is rejected when it holds a byte outside
  0x21-0x7E or a raw ``=``, a ``+`` not followed by two upper-case hex digits,
  or a ``+00``. Every problem found is reported, not only the first one
  (Dovecot stops at the first), so a report can name them all.
* :func:`decode_lenient` follows Postfix (``xtext_unquote_append()``): hex digits
  of either case; when the value is not valid xtext Postfix falls back to the
  raw value. A decoded NUL is kept in the result (Postfix would cut the C string
  there) so that the evidence is not hidden.

Problem names are stable strings: ``xtext_lowercase_hex``, ``xtext_bad_hexchar``,
``xtext_nul``, ``xtext_raw_char``.
"""

from __future__ import annotations

import re

from analyzer.protocols.base import XParam, wire_text

XCHAR_MIN = 0x21  # RFC 3461 section 4: xchar is "!" (33) ..
XCHAR_MAX = 0x7E  # .. "~" (126), except "+" and "="
XTEXT_PLUS = 0x2B  # RFC 3461: "+" introduces a hexchar
XTEXT_EQUALS = 0x3D  # RFC 3461: "=" is not an xchar; Dovecot smtp_param_parse(): "Unexpected character"

PROBLEM_LOWERCASE_HEX = "xtext_lowercase_hex"  # "+3d": Dovecot 501 "Invalid hexchar after '+' in xtext"
PROBLEM_BAD_HEXCHAR = "xtext_bad_hexchar"  # "+" not followed by two hex digits: Dovecot 501 (same text)
PROBLEM_NUL = "xtext_nul"  # "+00": Dovecot 501 "Encountered NUL character in xtext"
PROBLEM_RAW_CHAR = (
    "xtext_raw_char"  # byte outside 0x21-0x7E or raw "=": Dovecot 501 "Unexpected character ..."
)

# Anything that makes Dovecot reject a value: a byte that is neither an xchar nor "+", or a "+"
# not followed by two upper-case hex digits (NUL is checked separately). A search for it needs no
# backtracking stack, unlike a fullmatch of "(?:xchar|hexchar)*", which grows with the value.
_STRICT_INVALID = re.compile(rb"[^\x21-\x2a\x2c-\x3c\x3e-\x7e+]|\+(?![0-9A-F]{2})")
_ANY_HEXCHAR = re.compile(rb"\+([0-9A-Fa-f]{2})")
_LONE_PLUS = re.compile(rb"\+(?![0-9A-Fa-f]{2})")
#: xchars other than "+" (and "=", which is not one): a value made only of these decodes to itself.
_PLAIN_XCHARS = bytes(c for c in range(XCHAR_MIN, XCHAR_MAX + 1) if c not in (XTEXT_PLUS, XTEXT_EQUALS))
_HEX_DIGITS = frozenset(b"0123456789ABCDEFabcdef")
_LOWER_HEX = frozenset(b"abcdef")

# encode(): byte -> its xtext form (smtp_xtext_encode(): "+XX" for all but xchars).
_ENCODE_TABLE: tuple[str, ...] = tuple(
    chr(b) if XCHAR_MIN <= b <= XCHAR_MAX and b not in (XTEXT_PLUS, XTEXT_EQUALS) else f"+{b:02X}"
    for b in range(256)
)


def _to_bytes(text: str) -> bytes:
    """The wire bytes behind ``text``; total even for surrogates ``wire_text`` never makes."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _hex_byte(match: re.Match[bytes]) -> bytes:
    return bytes((int(match.group(1), 16),))


def decode_strict(raw: str) -> tuple[str | None, tuple[str, ...]]:
    """Dovecot smtp_xtext_parse(): '+' + two UPPER-case hex digits; returns (value or None if
    Dovecot would reject, problems)."""
    return _strict(_to_bytes(raw), raw)


def _strict(data: bytes, raw: str) -> tuple[str | None, tuple[str, ...]]:
    """:func:`decode_strict` of ``raw``, whose wire bytes are ``data``."""
    if _STRICT_INVALID.search(data) is None:
        if b"+" not in data:
            return raw, ()
        decoded = _ANY_HEXCHAR.sub(_hex_byte, data)
        if b"\x00" not in decoded:
            return wire_text(decoded), ()
        return None, (PROBLEM_NUL,)
    found: dict[str, None] = {}  # insertion-ordered set of problems
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        if b == XTEXT_PLUS:
            h1 = data[i + 1] if i + 1 < n else -1
            h2 = data[i + 2] if i + 2 < n else -1
            if h1 in _HEX_DIGITS and h2 in _HEX_DIGITS:
                if h1 in _LOWER_HEX or h2 in _LOWER_HEX:
                    found[PROBLEM_LOWERCASE_HEX] = None
                if int(data[i + 1 : i + 3], 16) == 0:
                    found[PROBLEM_NUL] = None
                i += 3
                continue
            found[PROBLEM_BAD_HEXCHAR] = None
        elif b < XCHAR_MIN or b > XCHAR_MAX or b == XTEXT_EQUALS:
            found[PROBLEM_RAW_CHAR] = None
        i += 1
    return None, tuple(found)


def decode_lenient(raw: str) -> str:
    """Postfix xtext_unquote(): upper or lower hex; on invalid xtext falls back to the raw value."""
    return _lenient(_to_bytes(raw), raw)


def _lenient(data: bytes, raw: str) -> str:
    """:func:`decode_lenient` of ``raw``, whose wire bytes are ``data``."""
    if b"+" not in data or _LONE_PLUS.search(data) is not None:
        return raw
    return wire_text(_ANY_HEXCHAR.sub(_hex_byte, data))


def encode(value: str) -> str:
    """smtp_xtext_encode(): bytes outside 0x21..0x7E, '+' and '=' become upper-case ``+XX``."""
    table = _ENCODE_TABLE
    return "".join([table[b] for b in _to_bytes(value)])


def make_param(name: str, raw: str, has_equals: bool) -> XParam:
    """Build an :class:`XParam` for ``name[=raw]`` with strict and lenient xtext decodings."""
    if not has_equals:
        return XParam(name=name, raw="", value=None, lenient="", has_equals=False, problems=())
    data = _to_bytes(raw)
    value, problems = _strict(data, raw)
    return XParam(
        name=name,
        raw=raw,
        value=value,
        lenient=_lenient(data, raw),
        has_equals=True,
        problems=problems,
    )


TOKEN_MEMO_SIZE = 1024  # ours: attribute tokens remembered with their XParam (emptied when full)
TOKEN_MEMO_MAX = 128  # ours: only tokens this short are remembered (a few hundred KiB at most)
#: token bytes -> its XParam: a repeated attribute (a flood, a proxy's fixed PROTO=ESMTP) shares one object
_TOKEN_MEMO: dict[bytes, XParam] = {}


def param_from_wire(token: bytes) -> XParam:
    """:func:`make_param` for one ``NAME[=value]`` token as sent, straight from its bytes.

    XParam objects are never changed, so equal short tokens get the same object (:data:`_TOKEN_MEMO`).
    """
    if len(token) > TOKEN_MEMO_MAX:
        return _param_from_wire(token)
    hit = _TOKEN_MEMO.get(token)
    if hit is None:
        hit = _param_from_wire(token)
        if len(_TOKEN_MEMO) >= TOKEN_MEMO_SIZE:
            _TOKEN_MEMO.clear()
        _TOKEN_MEMO[token] = hit
    return hit


def _param_from_wire(token: bytes) -> XParam:
    eq = token.find(b"=")
    if eq < 0:
        return XParam(wire_text(token), "", None, "", False, ())
    name = token[:eq].decode("utf-8", "surrogateescape")
    data = token[eq + 1 :]
    raw = data.decode("utf-8", "surrogateescape")
    if not data.translate(None, _PLAIN_XCHARS):  # plain xchars only (the usual case): decodes to itself
        return XParam(name, raw, raw, raw, True, ())
    value, problems = _strict(data, raw)
    return XParam(name, raw, value, _lenient(data, raw), True, problems)
