"""Settings of one analysis run. Defaults cite where they come from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from analyzer.rules.trustconf import TrustConfig

#: Mail service ports whose flows are always dissected (server side).
MAIL_PORTS: dict[int, str] = {
    25: "smtp",  # SMTP (RFC 5321)
    465: "submission",  # SMTPS (implicit TLS)
    587: "submission",  # Submission (RFC 6409)
    24: "lmtp",  # LMTP, Dovecot's default inet_listener lmtp port
    2525: "smtp",  # common alternative SMTP port
    143: "imap",  # IMAP (RFC 3501)
    993: "imap",  # IMAPS (implicit TLS)
    110: "pop3",  # POP3 (RFC 1939)
    995: "pop3",  # POP3S (implicit TLS)
    1143: "imap",  # common proxy-backend IMAP port
    10143: "imap",  # common proxy-backend IMAP port
    1110: "pop3",  # common proxy-backend POP3 port
    10110: "pop3",  # common proxy-backend POP3 port
    1587: "submission",  # common proxy-backend submission port
    10587: "submission",  # common proxy-backend submission port
    10025: "smtp",  # Postfix content-filter re-injection / backend SMTP
    10024: "smtp",  # amavis-style backend SMTP
    1024: "lmtp",  # common backend LMTP port
}


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on every buffer the analyzer keeps (design habit 8)."""

    max_line: int = 64 * 1024  #: longest protocol line kept before line_too_long (bytes)
    max_literal: int = 64 * 1024  #: largest IMAP literal kept in a record; larger ones are skipped
    ooo_bytes_per_direction: int = 4 * 1024 * 1024  #: out-of-order bytes held per direction
    ooo_segments_per_direction: int = 4096  #: out-of-order segments held per direction
    history_bytes: int = 16 * 1024  #: delivered bytes kept per direction to detect conflicting retransmissions
    total_buffer_bytes: int = 256 * 1024 * 1024  #: all out-of-order buffers together
    idle_timeout_ns: int = 3600 * 10**9  #: capture-time idle period after which a flow is flushed
    max_flows: int = 1_000_000  #: open flows of interest; past it the oldest idle ones are flushed
    #: events of ended flows held in memory (ours: ~0.5 KB each, so ~25 MB); past it an ended flow's events go to
    #: a temporary file until the rules read them (analyzer/flows/spool.py): memory stays flat as captures grow
    events_in_memory: int = 50_000


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything that changes what an analysis produces."""

    ports: frozenset[int] = frozenset(MAIL_PORTS)  #: server ports that make a flow interesting
    all_tcp: bool = False  #: dissect every TCP flow (differential tests, unusual deployments)
    content_detection: bool = True  #: also pick flows whose first bytes look like mail
    excerpt_len: int = 256  #: bytes of evidence kept per finding
    limits: Limits = field(default_factory=Limits)
    trust: TrustConfig | None = None  #: from --dovecot-config / --postfix-config / --trusted (None: replies only)
