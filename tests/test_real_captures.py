"""Records from real Dovecot 2.3.19 / Postfix 3.7 captures, checked field by field.

``captures/real/record.py`` ran real proxies and backends on loopback, recorded them
with tcpdump and wrote ``<scenario>.expected.json``: for every forwarding command on
the wire, what was sent and, from the servers' own logs, what they applied. Every
such command must appear as exactly one record with the same values.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from analyzer.config import Settings
from analyzer.forwarding.model import ForwardingRecord
from analyzer.pipeline import analyze

COMMITTED = Path(__file__).resolve().parents[1] / "captures" / "real"
#: .ci/run records the scenarios again from the real servers into this directory when it can
#: (FWDAUDIT_REAL_DIR); the same checks then run on the fresh captures instead of the committed ones
REAL = Path(os.environ.get("FWDAUDIT_REAL_DIR") or COMMITTED)
EXPECTED = sorted(REAL.glob("*.expected.json"))


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _cases() -> list[tuple[str, int]]:
    out = []
    for path in EXPECTED:
        data = json.loads(path.read_text("utf-8"))
        out += [(path.name, i) for i in range(len(data["must_show"]["forwarding"]))]
    return out


@pytest.fixture(scope="module")
def analyzed() -> dict[str, Any]:
    return {p.name: analyze([str(REAL / json.loads(p.read_text("utf-8"))["pcap"])], Settings()) for p in EXPECTED}


def _record_for(result: Any, data: dict[str, Any], want: dict[str, Any], index: int) -> ForwardingRecord:
    conn = data["connections"][want["connection"] - 1]
    client, server = _endpoint(conn["client"]), _endpoint(conn["server"])
    on_conn = [r for r in result.records
               if (r.sender.ip, r.sender.port) == client and (r.receiver.ip, r.receiver.port) == server]
    # the n-th forwarding command of this connection in the expectation is the n-th record
    same_conn = [w for w in data["must_show"]["forwarding"][:index] if w["connection"] == want["connection"]]
    assert len(on_conn) > len(same_conn), f"no record for {want['command'][:80]!r} on {conn['client']}"
    return on_conn[len(same_conn)]


@pytest.mark.parametrize("name, index", _cases(), ids=[f"{n.split('.')[0]}-{i}" for n, i in _cases()])
def test_record_matches_what_the_server_saw(analyzed: dict[str, Any], name: str, index: int) -> None:
    data = json.loads((REAL / name).read_text("utf-8"))
    want = data["must_show"]["forwarding"][index]
    rec = _record_for(analyzed[name], data, want, index)
    assert rec.carrier == want["carrier"]
    assert rec.protocol == want["protocol"]
    assert rec.excerpt.decode("utf-8", "surrogateescape") == want["command"][: len(rec.excerpt)]
    if "command_len" in want:
        assert rec.line_len == want["command_len"] + 2  # CRLF
    if "tag" in want:
        assert rec.tag == want["tag"]
    if "attributes" in want:
        assert [list(p) for p in rec.params] == want["attributes"]
    if "client_ip" in want:
        got_ip = rec.forwarded_client.ip if rec.forwarded_client else None
        got_port = rec.forwarded_client.port if rec.forwarded_client else None
        assert (got_ip, got_port or None) == (want["client_ip"], want["client_port"])
    if "connected_ip" in want:
        fs = rec.forwarded_server
        assert ((fs.ip, fs.port) if fs else (None, None)) == (want["connected_ip"], want["connected_port"])
    if "session_id" in want:
        assert rec.session_id == want["session_id"]
    if "ttl" in want:
        assert rec.ttl == want["ttl"]
    if "forward_error" not in want:
        assert {v.name: v.value for v in rec.forward} == want["forward"]
    # the server's final reply line, exactly
    assert rec.reply is not None
    last = want["reply"][-1]
    assert last.endswith(rec.reply.text.split("\n")[-1]) and rec.reply.code in last
    # what the server applied (its own log) never contradicts the record's verdict
    if want["reply_ok"] and want["applied"].get("client_ip"):
        assert rec.accepted is True and rec.trusted is not False
    if not want["reply_ok"]:
        assert rec.accepted is False
    if want["accepted"] is False:
        # not applied: the record must not claim trust; Dovecot 2.3's IMAP "ID completed." does not
        # tell trusted from untrusted senders, so there the verdict stays open (trusted None)
        assert rec.trusted is not True
        assert rec.accepted is False or rec.trusted is None


def test_every_forwarding_record_is_expected(analyzed: dict[str, Any]) -> None:
    """No record beyond the expected commands (ID without forwarding keys included)."""
    for path in EXPECTED:
        data = json.loads(path.read_text("utf-8"))
        assert len(analyzed[path.name].records) == len(data["must_show"]["forwarding"]), path.name
