"""Protocol parsers: registry and cheap content detection (Zeek DPD / Suricata probe).

Strategy: a flow's protocol is guessed from its server port, then checked against
the first bytes each side sent. Mail protocols are line based and talk first
from the server (greeting), so a greeting decides cleanly; a capture that starts
mid-stream may show a client command or a reply first, which are matched too.
TLS records (implicit TLS ports, or TLS after STARTTLS) are recognised so the
report can say that forwarding could not be seen there.
"""

from __future__ import annotations

import re
from importlib import import_module
from typing import Any

from analyzer.model import Direction
from analyzer.protocols.base import Parser

#: protocol name -> "module:Class"; the SMTP parser serves smtp, submission and lmtp.
PARSERS: dict[str, str] = {
    "imap": "analyzer.protocols.imap:ImapParser",
    "pop3": "analyzer.protocols.pop3:Pop3Parser",
    "smtp": "analyzer.protocols.smtp:SmtpParser",
    "submission": "analyzer.protocols.smtp:SmtpParser",
    "lmtp": "analyzer.protocols.smtp:SmtpParser",
}

# Server-side first lines.
_IMAP_GREETING = re.compile(rb"^\* (OK|PREAUTH|BYE)[ \[\r\n]", re.I)
_POP3_GREETING = re.compile(rb"^(\+OK|-ERR)( |\r|\n|$)")
_SMTP_GREETING = re.compile(rb"^(220|421|554)[ -]")
_LMTP_HINT = re.compile(rb"\bLMTP\b", re.I)
_SMTP_ANY_REPLY = re.compile(rb"^[2-5][0-9][0-9][ -]")
_IMAP_TAGGED_REPLY = re.compile(rb"^[!#-'*,.-9;-Z^-z|~]{1,64} (OK|NO|BAD) ", re.I)
_IMAP_UNTAGGED = re.compile(rb"^\* [A-Z0-9]+", re.I)

# Client-side first lines.
_SMTP_COMMAND = re.compile(
    rb"^(EHLO|HELO|LHLO|MAIL FROM:|RCPT TO:|XCLIENT |XFORWARD |STARTTLS|AUTH |NOOP|QUIT|RSET|DATA|BDAT )", re.I
)
_POP3_COMMAND = re.compile(rb"^(USER |PASS |CAPA|STLS|APOP |XCLIENT |XOIP |AUTH|STAT|LIST|UIDL|RETR |TOP |QUIT)", re.I)
_IMAP_COMMAND = re.compile(
    rb"^[!#-'*,.-9;-Z^-z|~]{1,64} (ID |ID\r|CAPABILITY|LOGIN |AUTHENTICATE |STARTTLS|NOOP|LOGOUT|SELECT |EXAMINE |"
    rb"LIST |LSUB |STATUS |FETCH |UID |ENABLE |IDLE|APPEND |NAMESPACE|COMPRESS )",
    re.I,
)


def is_tls_record(data: bytes) -> bool:
    """A TLS record header (handshake/alert/appdata, version 3.x) or an SSLv2 hello."""
    if len(data) >= 3 and data[0] in (0x14, 0x15, 0x16, 0x17) and data[1] == 3 and data[2] <= 4:
        return True
    return len(data) >= 3 and data[0] & 0x80 != 0 and data[2] == 1  # SSLv2 ClientHello


def detect(data: bytes, direction: Direction, port_hint: str | None) -> str | None:
    """The mail protocol these first bytes of one direction speak, or None.

    ``port_hint`` (from the server port) breaks ties between protocols with the same
    framing (SMTP, submission and LMTP all greet with 220).
    """
    head = data[:512]
    if direction is Direction.TO_CLIENT:
        if _IMAP_GREETING.match(head):
            return "imap"
        if _POP3_GREETING.match(head):
            return "pop3"
        if _SMTP_GREETING.match(head):
            if port_hint in ("smtp", "submission", "lmtp"):
                return port_hint
            first = head.split(b"\n", 1)[0]
            return "lmtp" if _LMTP_HINT.search(first) else "smtp"
        if _SMTP_ANY_REPLY.match(head) and port_hint in ("smtp", "submission", "lmtp"):
            return port_hint
        if (_IMAP_TAGGED_REPLY.match(head) or _IMAP_UNTAGGED.match(head)) and port_hint in (None, "imap"):
            return "imap"
        return None
    if head[:5].upper() == b"LHLO ":
        return "lmtp"
    if _SMTP_COMMAND.match(head) and not _POP3_COMMAND.match(head):
        return port_hint if port_hint in ("smtp", "submission", "lmtp") else "smtp"
    if _POP3_COMMAND.match(head):
        if port_hint in ("pop3", "smtp", "submission", "lmtp"):  # XCLIENT/AUTH/QUIT are shared
            return port_hint
        return "pop3"
    if _IMAP_COMMAND.match(head):
        return "imap"
    return None


def looks_like_mail(data: bytes, direction: Direction) -> bool:
    """Cheap test used to pick flows on ports that are not mail ports."""
    return detect(data, direction, None) is not None


_CLASSES: dict[str, Any] = {}  # protocol -> parser class, resolved once (saves ~1 us per flow)


def make_parser(protocol: str, **options: Any) -> Parser:
    """A new parser for ``protocol`` (``imap``, ``pop3``, ``smtp``, ``submission``, ``lmtp``)."""
    cls = _CLASSES.get(protocol)
    if cls is None:
        module_name, _, class_name = PARSERS[protocol].partition(":")
        cls = _CLASSES[protocol] = getattr(import_module(module_name), class_name)
    if protocol in ("smtp", "submission", "lmtp"):
        options["variant"] = protocol
    parser: Parser = cls(**options)
    return parser
