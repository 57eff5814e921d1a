"""The fuzz targets run on their seeds in every profile; under FWDAUDIT_FUZZ=long, atheris runs them.

The seed run keeps the harnesses from rotting (an API change breaks them here, not in
a week-long fuzzing job) and is itself a regression test over every capture of the
repository and every small hostile case. The long profile starts each target under
atheris for :data:`ATHERIS_SECONDS` and requires libFuzzer to end without a crash.
"""

from __future__ import annotations

import importlib.util
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

from harnesses import TARGETS, script, set_scratch  # noqa: E402
from hostile import KNOWN_BUGS  # noqa: E402
from hostile.generate import CASES, case_bytes  # noqa: E402

LONG = os.environ.get("FWDAUDIT_FUZZ", "").strip().lower() == "long"  # tests/hostile: the profile switch
ATHERIS_SECONDS = 300  # per target in the long profile
RANDOM_SEEDS = 50  # random inputs per target in the seed run
SEED_MAX_BYTES = 1 << 20  # run_atheris.py: larger seeds are not used


def _capture_seeds() -> list[bytes]:
    seeds = [
        p.read_bytes()
        for p in sorted((ROOT / "captures").rglob("*.pcap*"))
        if p.stat().st_size <= SEED_MAX_BYTES
    ]
    seeds += [
        case_bytes(n)
        for n, c in CASES.items()
        if not c.big and "flood" not in c.tags and "edge" not in c.tags and n not in KNOWN_BUGS
    ]
    return [s for s in seeds if len(s) <= SEED_MAX_BYTES]


def _random_seeds(target: str) -> list[bytes]:
    rnd = random.Random(target)
    return [rnd.randbytes(rnd.randrange(0, 2000)) for _ in range(RANDOM_SEEDS)]


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_target_on_seeds(target: str, tmp_path: Path) -> None:
    """Every target returns on the repository's captures, the small hostile cases and random bytes."""
    set_scratch(tmp_path)
    seeds = _random_seeds(target)
    if target in ("reader", "pipeline"):
        caps = _capture_seeds()
        seeds += caps if target == "reader" else caps[:: max(1, len(caps) // 25)]
    else:
        seeds += [b'\x00\x00\x30* OK\r\na1 ID ("k" {3}\r\n', b"XCLIENT ADDR=1.2.3.4 FORWARD=eD15CXo9dw=="]
    for data in seeds:
        TARGETS[target](data)


def test_script_decoding_covers_every_operation() -> None:
    """The parser script format reaches feeds in both directions, gaps and ends."""
    steps = list(script(b"\x00" + b"\x00\x02ab" + b"\x01\x01c" + b"\x06\x00" + b"\x07\x00"))
    assert [s[0] for s in steps] == [0, 1, 2, 3]
    assert steps[0][2] == b"ab" and steps[1][2] == b"c" and steps[2][3] > 0


@pytest.mark.skipif(not LONG, reason="atheris runs only under FWDAUDIT_FUZZ=long")
@pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None, reason="atheris not installed (pip install atheris)"
)
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_atheris(target: str, tmp_path: Path) -> None:
    """libFuzzer finds no crash in ATHERIS_SECONDS of coverage-guided fuzzing."""
    env = dict(os.environ, FWDAUDIT_FUZZ_CORPUS=str(tmp_path / "corpus"), FWDAUDIT_FUZZ_SCRATCH=str(tmp_path))
    done = subprocess.run(
        [
            sys.executable,
            str(HERE / "run_atheris.py"),
            target,
            f"-max_total_time={ATHERIS_SECONDS}",
            "-rss_limit_mb=4096",
            f"-artifact_prefix={tmp_path}/",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=ATHERIS_SECONDS * 3,
        check=False,
    )
    crashes = sorted(p.name for p in tmp_path.glob("crash-*")) + sorted(
        p.name for p in tmp_path.glob("timeout-*")
    )
    assert done.returncode == 0 and not crashes, f"{crashes}\n{done.stderr[-4000:]}"
