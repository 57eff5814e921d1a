"""Wireshark-style mutation fuzzing of every capture we have (issue 7 item 2).

Sources: ``captures/**`` of this repository and the third-party public captures in
``/work/shared/captures-public`` (``FWDAUDIT_PUBLIC_CAPTURES`` overrides the path; the
tests for it are skipped when it is absent). Each source is corrupted three ways, with
fixed seeds so every mutant can be rebuilt from its recipe ``(source, mode, seed)``:

* ``editcap``: ``editcap -E 0.02 --seed S`` (Wireshark's own fuzzer: packet bytes only,
  the file framing stays valid). Without editcap on the machine the same algorithm runs
  in Python (:func:`corrupt_packets`, a port of editcap.c's ``-E`` loop).
* ``bytes``: the same error mix applied to every byte of the file after its 4-byte
  magic, record and block headers included (what a damaged disk or transfer does).
* ``splice``: a few structural edits (delete, duplicate or insert a range) at random
  offsets, which shift every later header (what a bad concatenation does).

Strategy: mutants are analyzed in batches of :data:`BATCH` files per analyzer
invocation (the CLI takes several captures), two invocations at a time, so the
interpreter start-up is paid once per batch rather than once per mutant; a batch that
misbehaves is re-run one mutant at a time to name the culprits. Every run must meet the
same rules as the hostile corpus (exit 0/1/2, no traceback, time, memory). A culprit
whose traceback matches a bug already pinned by a minimal ``xfail`` test is tolerated
(:data:`KNOWN_SIGNATURES`); anything else fails with the recipe.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import ROOT, CliRun, examples, run_cli, time_budget

PUBLIC_CAPTURES = Path(os.environ.get("FWDAUDIT_PUBLIC_CAPTURES", "/work/shared/captures-public"))
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".pcap.gz", ".pcapng.gz")  # analyzer/cli.py _CAPTURE_SUFFIXES
ERROR_PROBABILITY = 0.02  # issue 7: "as editcap -E 0.02 does"
BATCH = 40  # ours: mutants per analyzer invocation (start-up is paid once per batch)
WORKERS = 2  # issue 7: the CI profile is sized for 2 cores
SPLICE_EDITS = 4  # ours: structural edits per splice mutant
SPLICE_MAX_LEN = 512  # ours: longest range a splice edit moves
KEEP_MAGIC = 4  # the 4-byte magic stays, so the reader gets past format sniffing

# editcap.c: weights of the error kinds of -E (ERR_WT_BIT, _BYTE, _ALNUM, _FMT, _AA)
ERR_WT_BIT = 5
ERR_WT_BYTE = 5
ERR_WT_ALNUM = 5
ERR_WT_FMT = 2
ERR_WT_AA = 1
ERR_WT_TOTAL = ERR_WT_BIT + ERR_WT_BYTE + ERR_WT_ALNUM + ERR_WT_FMT + ERR_WT_AA
ALNUM_CHARS = b"1234567890abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"  # editcap.c ALNUM_CHARS
AA_RUN_MAX = 64  # ours: in whole-file mode an 0xAA run stops here instead of at the end of the packet

#: Traceback fragments of bugs pinned elsewhere by a minimal xfail(strict=True) test.
KNOWN_SIGNATURES: dict[str, str] = {}


def sources() -> list[Path]:
    """Every capture of the repository and of the public set, sorted."""
    found: list[Path] = []
    for base in (ROOT / "captures", PUBLIC_CAPTURES):
        if base.is_dir():
            found += [p for p in base.rglob("*") if p.is_file() and p.name.lower().endswith(CAPTURE_SUFFIXES)]
    return sorted(found)


# ----------------------------------------------------------------------------- mutators


def _corrupt(
    buf: bytearray, start: int, end: int, rnd: random.Random, prob: float, aa_limit: int | None
) -> None:
    """editcap.c's -E loop over ``buf[start:end]``."""
    i = start
    while i < end:
        if rnd.random() < prob:
            kind = rnd.randrange(ERR_WT_TOTAL)
            if kind < ERR_WT_BIT:
                buf[i] ^= 1 << rnd.randrange(8)
            elif kind < ERR_WT_BIT + ERR_WT_BYTE:
                buf[i] = rnd.randrange(256)
            elif kind < ERR_WT_BIT + ERR_WT_BYTE + ERR_WT_ALNUM:
                buf[i] = ALNUM_CHARS[rnd.randrange(len(ALNUM_CHARS))]
            elif kind < ERR_WT_TOTAL - ERR_WT_AA:
                if i < end - 2:
                    buf[i : i + 2] = b"%s"
            else:
                stop = end if aa_limit is None else min(end, i + aa_limit)
                buf[i:stop] = b"\xaa" * (stop - i)
                i = stop
                continue
        i += 1


def corrupt_bytes(data: bytes, seed: int, prob: float = ERROR_PROBABILITY) -> bytes:
    """The editcap error mix over the whole file (after the magic)."""
    buf = bytearray(data)
    _corrupt(buf, KEEP_MAGIC, len(buf), random.Random(seed), prob, AA_RUN_MAX)
    return bytes(buf)


def _packet_ranges(data: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) of every packet's bytes in a classic pcap or a pcapng file (best effort)."""
    if len(data) < 24:
        return
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        e = "<" if magic[0] in (0xD4, 0x4D) else ">"
        pos = 24
        while pos + 16 <= len(data):
            cap = struct.unpack_from(e + "I", data, pos + 8)[0]
            start = pos + 16
            end = min(start + cap, len(data))
            yield start, end
            pos = start + cap
    elif magic == b"\x0a\x0d\x0d\x0a":
        e = "<"
        pos = 0
        while pos + 12 <= len(data):
            btype = struct.unpack_from(e + "I", data, pos)[0]
            if btype == 0x0A0D0D0A:
                e = "<" if data[pos + 8 : pos + 12] == b"\x4d\x3c\x2b\x1a" else ">"
            blen = struct.unpack_from(e + "I", data, pos + 4)[0]
            if blen < 12 or blen % 4 or pos + blen > len(data):
                return
            if btype == 6 and blen >= 32:  # EPB: data after a 28-byte head
                cap = struct.unpack_from(e + "I", data, pos + 20)[0]
                yield pos + 28, min(pos + 28 + cap, pos + blen - 4)
            pos += blen


def corrupt_packets(data: bytes, seed: int, prob: float = ERROR_PROBABILITY) -> bytes:
    """editcap -E in Python: corrupt packet bytes only, keep the file framing."""
    buf = bytearray(data)
    rnd = random.Random(seed)
    for start, end in list(_packet_ranges(data)):
        _corrupt(buf, start, end, rnd, prob, None)
    return bytes(buf)


def splice(data: bytes, seed: int) -> bytes:
    """A few deletions, duplications and insertions of byte ranges."""
    rnd = random.Random(seed)
    buf = bytearray(data)
    for _ in range(SPLICE_EDITS):
        if len(buf) <= KEEP_MAGIC + 1:
            break
        at = rnd.randrange(KEEP_MAGIC, len(buf))
        n = rnd.randrange(1, SPLICE_MAX_LEN)
        op = rnd.randrange(3)
        if op == 0:
            del buf[at : at + n]
        elif op == 1:
            buf[at:at] = buf[at : at + n]
        else:
            buf[at:at] = rnd.randbytes(n)
    return bytes(buf)


def editcap_available() -> bool:
    """Wireshark's editcap is on PATH."""
    return shutil.which("editcap") is not None


def mutate(source: Path, mode: str, seed: int, dest: Path) -> Path:
    """Write the mutant ``(source, mode, seed)`` to ``dest`` (the recipe rebuilds it exactly)."""
    if mode == "editcap" and editcap_available() and not source.name.endswith(".gz"):
        done = subprocess.run(
            ["editcap", "-E", str(ERROR_PROBABILITY), "--seed", str(seed), str(source), str(dest)],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if done.returncode == 0 and dest.exists():
            return dest
    data = source.read_bytes()
    if mode == "editcap":
        dest.write_bytes(corrupt_packets(data, seed))
    elif mode == "bytes":
        dest.write_bytes(corrupt_bytes(data, seed))
    elif mode == "splice":
        dest.write_bytes(splice(data, seed))
    else:
        raise ValueError(mode)
    return dest


# ----------------------------------------------------------------------------- running


@dataclass(frozen=True, slots=True)
class Mutant:
    """One mutated file and how to rebuild it."""

    source: Path
    mode: str
    seed: int
    path: Path

    @property
    def recipe(self) -> str:
        """How to rebuild it (tests/hostile/test_mutation.py mutate())."""
        return f"mutate({str(self.source)!r}, {self.mode!r}, {self.seed})"


def _run_batch(batch: list[Mutant], out: Path) -> CliRun:
    size = sum(m.path.stat().st_size for m in batch)
    return run_cli(
        ["analyze", *(str(m.path) for m in batch), "-o", str(out), "--force", "-q"],
        timeout=time_budget(size) + len(batch),
    )


def _known(run: CliRun) -> str | None:
    for sig, why in KNOWN_SIGNATURES.items():
        if sig in run.stderr:
            return why
    return None


def _read_captures(out: Path) -> int:
    """Captures of one batch's report.json that yielded at least one packet (0 if there is no report)."""
    try:
        report = json.loads((out / "report.json").read_text("utf-8"))
    except (OSError, ValueError):
        return 0
    return sum(1 for c in report.get("captures", []) if (c.get("packets") or 0) > 0)


def run_mutants(mutants: list[Mutant], work: Path) -> tuple[list[str], list[str], int, int]:
    """Analyze the mutants; (failures with recipes, tolerated known bugs, runs, mutants read)."""
    batches = [mutants[i : i + BATCH] for i in range(0, len(mutants), BATCH)]
    failures: list[str] = []
    known: list[str] = []
    runs = 0
    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(lambda ib: _run_batch(ib[1], work / f"out{ib[0]}"), enumerate(batches)))
        runs += len(batches)
        read = sum(_read_captures(work / f"out{i}") for i in range(len(batches)))
        suspects = [m for b, r in zip(batches, results) if r.problems() for m in b]
        singles = list(
            pool.map(lambda im: (im[1], _run_batch([im[1]], work / f"one{im[0]}")), enumerate(suspects))
        )
        runs += len(singles)
    for m, r in singles:
        problems = r.problems()
        if not problems:
            continue
        why = _known(r)
        if why is not None:
            known.append(f"{m.recipe}: {why}")
        else:
            failures.append(f"{m.recipe} ({m.path}): " + "; ".join(problems))
    if suspects and not failures and not known:
        failures.append(
            "a batch misbehaved but no single mutant did (interaction between files?): "
            + ", ".join(m.recipe for m in suspects[:BATCH])
        )
    return failures, known, runs, read


MODES = ("editcap", "bytes", "splice")
SEEDS_PER_MODE = examples(1, 8)  # CI: one mutant per source and mode; long: eight


def _group(public: bool) -> list[Path]:
    return [p for p in sources() if p.is_relative_to(PUBLIC_CAPTURES) == public]


@pytest.mark.parametrize("public", [False, True], ids=["repo", "public"])
@pytest.mark.parametrize("mode", MODES)
def test_mutated_captures(mode: str, public: bool, tmp_path: Path) -> None:
    """Every capture, corrupted: the analyzer exits 0/1/2 with no traceback, in time and memory."""
    srcs = _group(public)
    if not srcs:
        pytest.skip(f"no capture under {PUBLIC_CAPTURES if public else ROOT / 'captures'}")
    mutants: list[Mutant] = []
    for i, src in enumerate(srcs):
        for k in range(SEEDS_PER_MODE):
            seed = 1000 * k + i + (0 if mode == "editcap" else 500_000 if mode == "bytes" else 900_000)
            dest = tmp_path / f"{i:03d}-{mode}-{seed}-{src.name.replace(' ', '_')}"
            mutants.append(Mutant(src, mode, seed, mutate(src, mode, seed, dest)))
    failures, known, runs, read = run_mutants(mutants, tmp_path)
    assert not failures, f"{len(failures)} of {len(mutants)} mutants misbehaved ({runs} runs):\n" + "\n".join(
        failures
    )
    # the mutants must get past the file header, or this test would prove nothing
    assert read >= len(mutants) // 2, f"only {read} of {len(mutants)} mutants yielded a packet"


def test_mutators_are_deterministic_and_change_bytes(tmp_path: Path) -> None:
    """Same recipe, same bytes; about 2% of the bytes differ; packet mode keeps the framing."""
    src = ROOT / "captures" / "sample.pcapng"
    data = src.read_bytes()
    for fn in (corrupt_bytes, corrupt_packets, lambda d, s: splice(d, s)):
        assert fn(data, 5) == fn(data, 5)
        assert fn(data, 5) != data
    changed = sum(a != b for a, b in zip(data, corrupt_bytes(data, 5)))
    assert 0.005 * len(data) < changed < 0.2 * len(data), changed
    mutated = corrupt_packets(data, 9)
    assert list(_packet_ranges(mutated)) == list(_packet_ranges(data))  # framing intact
    assert (
        mutate(src, "bytes", 3, tmp_path / "a").read_bytes()
        == mutate(src, "bytes", 3, tmp_path / "b").read_bytes()
    )


@pytest.mark.skipif(not editcap_available(), reason="editcap (wireshark-common) not installed")
def test_editcap_mutant_is_reproducible(tmp_path: Path) -> None:
    """editcap -E with a fixed seed writes the same file twice."""
    src = ROOT / "captures" / "sample.pcapng"
    a = mutate(src, "editcap", 17, tmp_path / "a.pcapng").read_bytes()
    b = mutate(src, "editcap", 17, tmp_path / "b.pcapng").read_bytes()
    assert a == b and a != src.read_bytes()
