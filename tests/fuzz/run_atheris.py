"""Run one fuzz target of ``harnesses.py`` under atheris (libFuzzer), coverage-guided.

    python3 tests/fuzz/run_atheris.py TARGET [CORPUS_DIR] [libFuzzer options ...]

``TARGET`` is one of ``reader``, ``pipeline``, ``decode``, ``parsers``, ``blobs``. Without a
corpus directory, ``$FWDAUDIT_FUZZ_CORPUS/TARGET`` (default ``/tmp/fwdaudit-fuzz-corpus/TARGET``)
is created and seeded: the capture targets with every ``captures/**`` file and the small
hostile cases of ``tests/hostile/generate.py``, the others with a few protocol lines.
libFuzzer writes new inputs there and crashers to ``crash-*`` files in the current
directory. atheris is not a project dependency: ``python3 -m pip install atheris``.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SEED_MAX_BYTES = 1 << 20  # ours: larger seeds slow every libFuzzer iteration
PROTOCOL_SEEDS = [
    b'\x00\x00\x30* OK ready\r\na1 ID ("x-originating-ip" "1.2.3.4")\r\n',
    b"\x01\x01\x20+OK [XCLIENT]\r\n\x00\x30XCLIENT ADDR=1.2.3.4 FORWARD=eD15CXo9dw==\r\n",
    b"\x02\x01\x10220 mx ESMTP\r\n\x00\x30XCLIENT ADDR=1.2.3.4 LOGIN=a+3Db\r\n",
    b"\x04\x01\x10220 LMTP\r\n\x00\x30RCPT TO:<a@b> XRCPTFORWARD=x+3Dy\r\n",
]


def _seed(target: str, corpus: Path) -> None:
    """Fill an empty corpus directory with seed inputs."""
    corpus.mkdir(parents=True, exist_ok=True)
    if any(corpus.iterdir()):
        return
    if target in ("reader", "pipeline"):
        for i, p in enumerate(sorted((ROOT / "captures").rglob("*.pcap*"))):
            if p.stat().st_size <= SEED_MAX_BYTES:
                (corpus / f"capture-{i:03d}").write_bytes(p.read_bytes())
        sys.path.insert(0, str(ROOT / "tests"))
        from hostile import KNOWN_BUGS
        from hostile.generate import CASES, case_bytes

        for name, case in CASES.items():
            if not case.big and "flood" not in case.tags and name not in KNOWN_BUGS:
                blob = case_bytes(name)
                if len(blob) <= SEED_MAX_BYTES:
                    (corpus / f"hostile-{name}").write_bytes(blob)
    else:
        for i, blob in enumerate(PROTOCOL_SEEDS):
            (corpus / f"seed-{i}").write_bytes(blob)


def main(argv: list[str]) -> None:
    """Entry point: instrument the analyzer, seed the corpus, start libFuzzer."""
    import atheris  # type: ignore[import-untyped]  # optional, not a project dependency

    if len(argv) < 2:
        sys.exit(__doc__)
    target = argv[1]
    rest = argv[2:]
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(ROOT))
    with atheris.instrument_imports(include=["analyzer"]):
        # every analyzer module now, so that modules the analyzer imports lazily (parsers via
        # protocols.make_parser, rules, report writers) are instrumented too
        import analyzer

        for mod in pkgutil.walk_packages(analyzer.__path__, "analyzer."):
            try:
                importlib.import_module(mod.name)
            except ImportError:  # optional extras (e.g. a distributed engine) may be missing
                continue
        import harnesses
    if target not in harnesses.TARGETS:
        sys.exit(f"unknown target {target!r}; choose from {', '.join(harnesses.TARGETS)}")
    if not rest or rest[0].startswith("-"):
        base = Path(os.environ.get("FWDAUDIT_FUZZ_CORPUS", "/tmp/fwdaudit-fuzz-corpus"))
        corpus = base / target
        _seed(target, corpus)
        rest = [str(corpus), *rest]
    atheris.Setup([argv[0], *rest], harnesses.TARGETS[target])
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
