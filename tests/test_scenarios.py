"""Every generated capture shows what its scenario says (captures/scenarios.py ``must_show``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from analyzer.config import Settings
from analyzer.pipeline import analyze

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "captures"))

from scenarios import SCENARIOS, Scenario  # noqa: E402


def _path(sc: Scenario) -> Path:
    return ROOT / "captures" / f"{sc.name}.{'pcap' if sc.fmt == 'pcap' else 'pcapng'}"


def test_generated_captures_match_their_scenarios() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "captures" / "generate.py"), "--check"], capture_output=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()


@pytest.mark.parametrize("sc", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario_must_show(sc: Scenario) -> None:
    result = analyze([str(_path(sc))], Settings())
    assert not result.unusable
    flows = [f.summary for f in result.flows]
    want = sc.must_show
    assert len(flows) == want["flows"]
    if "gaps" in want:
        assert sum(f.gaps_to_server + f.gaps_to_client for f in flows) == want["gaps"]
    if "ended" in want:
        assert {f.ended for f in flows} == {want["ended"]}
    if "overlap_conflicts" in want:
        assert sum(f.overlap_conflicts for f in flows) == want["overlap_conflicts"]
    ids = [r for r in result.records if r.carrier == "ID"]
    if sc.name.startswith("tcp_"):
        if want.get("gaps"):
            # the ID command lost a segment: no record may be made up from half a command
            assert ids == []
        else:
            assert len(ids) == len(flows)
            for r in ids:
                assert r.forwarded_client is not None and r.forwarded_client.ip == "198.51.100.9"
                assert r.ttl == 6 and r.accepted is True and r.trusted is True
    if "id_commands" in want:
        assert len(ids) == want["id_commands"]
        assert len([r for r in result.records if r.carrier == "XCLIENT"]) == want["xclient_commands"]
        assert len([r for r in result.records if r.carrier == "XRCPTFORWARD"]) == want["xrcptforward"]


def test_flow_frames_point_into_the_capture() -> None:
    result = analyze([str(ROOT / "captures" / "sample.pcapng")], Settings())
    rec = next(r for r in result.records if r.carrier == "ID")
    # the ID command is the 2nd client data segment of flow 1; the reply comes later
    assert rec.frames and rec.reply is not None and rec.reply.frames[0] > rec.frames[-1]
    flow = result.flows[rec.flow].summary
    assert flow.first_frame < rec.frames[0] <= flow.last_frame
