"""Decode Dovecot session IDs (``x-session-id`` / ``SESSION=``) for correlation and A-C5 checks.

Two generators exist (spec 4.3):

* Login services (``src/login-common/client-common.c: client_get_session_id()``)
  take the lowest 48 bits of the microsecond wall-clock timestamp (6 bytes,
  little-endian), the client port (2 bytes, little-endian) and the client IP in
  network order (4 or 16 bytes), and base64-encode them with the standard
  alphabet: 12 bytes give 16 characters and 24 bytes give 32, never padded.
  Early 2.x builds wrote ``port >> 16`` as the second port byte, so their IDs
  carry only the low byte of the port (high byte 0): compare ``port & 0xff`` when
  the high byte is 0 and the full port does not match.
* lib-smtp / LMTP (``smtp_server_connection_init_session()``): a random
  128-bit GUID in base64 with the ``==`` padding cut off (22 characters),
  followed by ``:T<n>`` per transaction, ``:P<n>`` per LMTP proxy connection and
  ``:R<n>`` per recipient; chains of hops keep appending, e.g. ``<guid>:T1:P1:T1:P1``.

A 16/32-character ID that decodes cleanly is reported as ``login`` even when
some other software made it: no test can tell random text from a Dovecot ID, so
rules should compare the embedded port/IP with the forwarded ``ADDR``/``PORT``.
Never raises.
"""

from __future__ import annotations

import binascii
import ipaddress
import re
from dataclasses import dataclass

LOGIN_MAX_SESSION_ID_LEN = 64  # login-common/client-common.h: longer is rejected (IMAP 2.4) or ignored
LOGIN_ID_LEN_IPV4 = 16  # base64 of 6 (timestamp) + 2 (port) + 4 (IPv4) bytes, client_get_session_id()
LOGIN_ID_LEN_IPV6 = 32  # base64 of 6 + 2 + 16 (IPv6) bytes
LMTP_GUID_B64_LEN = 22  # base64 of guid_128_t (16 bytes) without "==", smtp_server_connection_init_session()
LOGIN_TS_BYTES = 6  # "add lowest 48 bits of the timestamp" (client_get_session_id)
LOGIN_PORT_BYTES = 2  # remote_port, little-endian
KNOWN_SUFFIXES = frozenset("TPR")  # :T<n> transaction, :P<n> LMTP proxy connection, :R<n> recipient

_B64_CHARS_RE = re.compile(r"[A-Za-z0-9+/]+")  # standard alphabet, as base64_encode() writes it
_SUFFIX_RE = re.compile(r"([A-Z])([0-9]+)")


@dataclass(frozen=True, slots=True)
class SessionIdInfo:
    """What a session ID reveals."""

    kind: str  #: ``login`` (16/32-char login-service ID), ``lmtp`` (22-char GUID + suffixes), ``unknown``
    ts_us: int | None  #: login IDs: lowest 48 bits of the microsecond Unix timestamp at connection time
    port: int | None  #: login IDs: the client port embedded in the ID
    ip: str | None  #: login IDs: the client IP embedded in the ID (``ipaddress`` canonical text)
    proxy_hops: int  #: number of ``:P<n>`` suffixes (LMTP proxy connections along the chain)
    problems: tuple[str, ...]  #: ``empty``, ``too_long``, ``bad_base64``, ``bad_suffix``, ``unknown_suffix``,
    #: ``unexpected_suffix`` (suffixes after a login-service ID)


def _b64_strict(text: str) -> bytes | None:
    if _B64_CHARS_RE.fullmatch(text) is None:
        return None
    padded = text + "=" * (-len(text) % 4)
    try:
        return binascii.a2b_base64(padded, strict_mode=True)
    except ValueError:  # binascii.Error: a length no base64 encoder produces
        return None


def _login(base: str, problems: list[str], hops: int) -> SessionIdInfo:
    raw = _b64_strict(base)
    if raw is None or len(raw) not in (12, 24):
        problems.append("bad_base64")
        return SessionIdInfo("unknown", None, None, None, hops, tuple(problems))
    ts = int.from_bytes(raw[:LOGIN_TS_BYTES], "little")
    port = int.from_bytes(raw[LOGIN_TS_BYTES : LOGIN_TS_BYTES + LOGIN_PORT_BYTES], "little")
    addr = raw[LOGIN_TS_BYTES + LOGIN_PORT_BYTES :]
    ip = str(ipaddress.IPv4Address(addr)) if len(addr) == 4 else str(ipaddress.IPv6Address(addr))
    return SessionIdInfo("login", ts, port, ip, hops, tuple(problems))


def decode_session_id(s: str) -> SessionIdInfo:
    """Classify and decode a session ID as sent in ``x-session-id`` / ``SESSION=``."""
    if s == "":
        return SessionIdInfo("unknown", None, None, None, 0, ("empty",))
    problems: list[str] = []
    if len(s) > LOGIN_MAX_SESSION_ID_LEN:
        problems.append("too_long")
    base, *suffixes = s.split(":")
    hops = 0
    for suffix in suffixes:
        m = _SUFFIX_RE.fullmatch(suffix)
        if m is None:
            problems.append("bad_suffix")
        elif m.group(1) not in KNOWN_SUFFIXES:
            problems.append("unknown_suffix")
        elif m.group(1) == "P":
            hops += 1
    if len(base) in (LOGIN_ID_LEN_IPV4, LOGIN_ID_LEN_IPV6):
        if suffixes:
            problems.append("unexpected_suffix")
        return _login(base, list(dict.fromkeys(problems)), hops)
    problems = list(dict.fromkeys(problems))
    if len(base) == LMTP_GUID_B64_LEN:
        raw = _b64_strict(base)
        if raw is not None and len(raw) == 16:
            return SessionIdInfo("lmtp", None, None, None, hops, tuple(problems))
        problems.append("bad_base64")
    return SessionIdInfo("unknown", None, None, None, hops, tuple(problems))
