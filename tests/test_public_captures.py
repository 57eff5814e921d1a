"""Negative controls: the public mail captures of Zeek, Suricata, nDPI and Arkime.

None of them carries a forwarding command (shared/captures-public/INDEX.md: 0 hits for
XCLIENT, ' ID (', x-proxy-ttl ...); several carry ``X-Originating-IP:`` inside message
bodies, which must not be taken for forwarding. Nothing above ``info`` may be reported.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from analyzer.config import Settings
from analyzer.pipeline import analyze
from analyzer.rules.base import Severity

PUBLIC = Path(__file__).resolve().parents[2] / "shared" / "captures-public"
CAPTURES = sorted(p for p in PUBLIC.rglob("*") if p.is_file() and re.search(r"\.(pcap|pcapng)(\.gz)?$", p.name))

pytestmark = pytest.mark.skipif(not CAPTURES, reason="shared/captures-public not present")


@pytest.fixture(scope="module")
def result():  # type: ignore[no-untyped-def]
    return analyze([str(p) for p in CAPTURES], Settings())


def test_every_public_capture_is_readable(result) -> None:  # type: ignore[no-untyped-def]
    assert not result.unusable
    assert len(result.captures) == len(CAPTURES)
    assert sum(1 for f in result.flows if f.summary.protocol) >= 100


def test_no_forwarding_record(result) -> None:  # type: ignore[no-untyped-def]
    assert [(r.flow, r.carrier, r.params[:2]) for r in result.records] == []


def test_nothing_above_info(result) -> None:  # type: ignore[no-untyped-def]
    loud = [(f.rule, result.captures[f.capture].path if f.capture is not None else None, f.message)
            for f in result.findings if f.severity > Severity.INFO]
    assert loud == []


def test_community_ids_match_arkime() -> None:
    """Arkime's session JSON carries each TCP session's Community ID and endpoints; ours must agree."""
    import json

    checked = 0
    for test in sorted((PUBLIC / "arkime").glob("*.test")):
        pcap = test.with_suffix(".pcap")
        if not pcap.exists():
            continue
        sessions = [s["body"] for s in json.loads(test.read_text("utf-8"))["sessions3"]]
        ours = {}
        for f in analyze([str(pcap)], Settings(all_tcp=True)).flows:
            s = f.summary
            ours[frozenset({(s.client.ip, s.client.port), (s.server.ip, s.server.port)})] = f.community_id
        for body in sessions:
            cid = body.get("network", {}).get("community_id")
            if body.get("ipProtocol") != 6 or cid is None:
                continue
            key = frozenset({(body["source"]["ip"], body["source"]["port"]),
                             (body["destination"]["ip"], body["destination"]["port"])})
            assert ours.get(key) == cid, f"{pcap.name}: {sorted(key)}"
            checked += 1
    assert checked >= 10
