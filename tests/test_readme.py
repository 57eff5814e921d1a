"""README.md's rule table is rendered from the rule modules; this keeps the two from drifting.

Update it with ``python tests/test_readme.py``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"(<!-- rules:begin -->\n)(.*?)(<!-- rules:end -->)", re.S)


def rendered() -> str:
    from analyzer.cli import rule_table

    return BLOCK.sub(lambda m: m.group(1) + rule_table(markdown=True) + m.group(3), README.read_text("utf-8"))


def test_readme_rule_table_is_current() -> None:
    text = README.read_text("utf-8")
    assert BLOCK.search(text), "README.md lost its <!-- rules:begin/end --> markers"
    assert text == rendered(), "README.md rule table is stale: run python tests/test_readme.py"


def test_every_rule_has_a_unique_stable_id() -> None:
    from analyzer.rules import all_rules

    ids = [r.id for r in all_rules()]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z0-9]+\.[a-z0-9_]+", i) for i in ids)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    README.write_text(rendered(), "utf-8")
