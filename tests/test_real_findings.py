"""Findings that the real Dovecot/Postfix scenarios must (and must not) produce (issue 4)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from analyzer.config import Settings
from analyzer.pipeline import AnalysisResult, analyze
from analyzer.rules.base import Severity
from analyzer.rules.trustconf import load_trust

REAL = Path(os.environ.get("FWDAUDIT_REAL_DIR") or Path(__file__).resolve().parents[1] / "captures" / "real")


def run(name: str, settings: Settings | None = None) -> AnalysisResult:
    return analyze([str(REAL / f"{name}.pcap")], settings or Settings())


def rules(result: AnalysisResult, at_least: Severity = Severity.LOW) -> set[str]:
    return {f.rule for f in result.findings if f.severity >= at_least}


@pytest.mark.parametrize("name", ["imap_proxy_trusted", "pop3_proxy_trusted", "submission_proxy_trusted",
                                  "lmtp_proxy", "imap_ipv6", "imap_two_hop", "plain_noise"])
def test_healthy_proxies_raise_nothing_above_info(name: str) -> None:
    result = run(name)
    assert [(f.rule, f.message) for f in result.findings if f.severity > Severity.INFO] == []


def test_two_hop_chain_is_linked_with_decreasing_ttl() -> None:
    result = run("imap_two_hop")
    [chain] = result.chains
    assert len(chain.hops) == 3  # client -> proxy1 -> proxy2 -> backend
    assert [h.ttl for h in chain.hops[1:]] == [4, 3]
    assert chain.client is not None and chain.client.ip == "127.0.0.10"
    assert len({h.session_id for h in chain.hops[1:]}) == 1


def test_ipv6_chain() -> None:
    result = run("imap_ipv6")
    [rec] = result.records
    assert rec.forwarded_client is not None and rec.forwarded_client.ip == "fd00:fa::10"
    assert len(result.chains) == 1


def test_untrusted_proxy_needs_the_config_to_be_seen() -> None:
    # Dovecot 2.3 answers "ID completed." to trusted and untrusted senders alike: the wire alone
    # cannot tell, so only the backend's configuration (login_trusted_networks) reveals it
    assert "trust.untrusted_sender" not in rules(run("imap_untrusted_proxy"))
    trust = load_trust([], [], ["127.0.0.3=127.0.0.4/32"])  # the backend trusts proxy2 only
    result = run("imap_untrusted_proxy", Settings(trust=trust))
    [f] = [f for f in result.findings if f.rule == "trust.untrusted_sender"]
    assert f.severity == Severity.HIGH and "127.0.0.2" in f.message
    trusted = Settings(trust=load_trust([], [], ["127.0.0.3=127.0.0.2/32"]))
    assert "trust.untrusted_sender" not in rules(run("imap_proxy_trusted", trusted))


def test_raw_over_limit_imap() -> None:
    got = rules(run("imap_raw_overlimit"))
    assert {"limits.imap_id_value_too_long", "limits.imap_id_key_too_long", "limits.imap_id_too_many_pairs",
            "limits.overflow_reply", "protocol.imap_id_rejected", "ttl.zero", "session.too_long",
            "encoding.address_invalid", "encoding.imap_empty_forward_suffix"} <= got


def test_raw_over_limit_pop3() -> None:
    result = run("pop3_raw_overlimit")
    got = rules(result)
    assert {"limits.pop3_xclient_line_too_long", "trust.pop3_xclient_ignored", "encoding.forward_bad_base64",
            "encoding.pop3_addr_syntax", "protocol.pop3_xclient_rejected"} <= got
    # the 1032-byte line was accepted by the real server, the 1033-byte one was not
    long_lines = [f for f in result.findings if f.rule == "limits.pop3_xclient_line_too_long"]
    assert {dict(f.facts)["content_bytes"] for f in long_lines} == {"1033"}


def test_postfix_xclient() -> None:
    got = rules(run("postfix_xclient"))
    assert {"trust.xclient_refused_untrusted", "trust.xclient_attribute_not_advertised",
            "encoding.smtp_addr_syntax", "encoding.proto_lmtp_to_postfix", "encoding.login_attribute"} <= got


def test_end_client_spoofing() -> None:
    result = run("imap_client_spoof")
    spoof = [f for f in result.findings if f.rule == "trust.spoofed_forwarding"]
    assert spoof and all("127.0.0.10" in f.message for f in spoof)
