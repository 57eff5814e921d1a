"""Repeats of one rule in one flow past MAX_FINDINGS_PER_RULE_FLOW are folded into one counted finding."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

from analyzer.config import Settings
from analyzer.pipeline import analyze
from analyzer.rules import MAX_FINDINGS_PER_RULE_FLOW, MAX_FOLDED_FRAMES
from tests.hostile.generate import CASES, PROFILES, write_case


def _findings(n: int, tmp_path: Path) -> list:  # type: ignore[type-arg]
    path = write_case(CASES["smtp_xclient_100k"], tmp_path, replace(PROFILES["ci"], xclient_repeats=n))
    return analyze([str(path)], Settings()).findings


def test_repeats_fold_into_one_counted_finding(tmp_path: Path) -> None:
    n = MAX_FINDINGS_PER_RULE_FLOW * 3
    few = _findings(MAX_FINDINGS_PER_RULE_FLOW // 2, tmp_path / "few")
    many = _findings(n, tmp_path / "many")
    per_rule_few = Counter(f.rule for f in few)
    repeated = [rule for rule, c in per_rule_few.items() if c >= MAX_FINDINGS_PER_RULE_FLOW // 2]
    assert repeated, per_rule_few  # the case gives at least one finding per XCLIENT
    for rule in repeated:
        mine = [f for f in many if f.rule == rule]
        folded = [f for f in mine if any(k == "folded_findings" for k, _ in f.facts)]
        assert len(mine) == MAX_FINDINGS_PER_RULE_FLOW + 1, (rule, len(mine))
        assert len(folded) == 1
        fold = folded[0]
        count = int(dict(fold.facts)["folded_findings"])
        assert count == n - MAX_FINDINGS_PER_RULE_FLOW
        assert f"{count} more findings" in fold.message
        assert 1 <= len(fold.frames) <= MAX_FOLDED_FRAMES
        kept = [f for f in mine if f is not fold]
        assert fold.stream is not None and all(f.stream is not None for f in kept)
        # the first ones are listed, the later ones folded (commands are pipelined: compare stream offsets)
        assert fold.stream[1] > max(f.stream[1] for f in kept if f.stream is not None)
    # deterministic: the same capture gives the same findings
    again = _findings(n, tmp_path / "again")
    assert [(f.rule, f.frames, f.message, f.facts) for f in again] == [
        (f.rule, f.frames, f.message, f.facts) for f in many
    ]


def test_below_the_cap_nothing_is_folded(tmp_path: Path) -> None:
    found = _findings(MAX_FINDINGS_PER_RULE_FLOW, tmp_path)
    assert not any(k == "folded_findings" for f in found for k, _ in f.facts)
