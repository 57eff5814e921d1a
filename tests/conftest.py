"""Suite-wide options: hypothesis profiles and the gold-file update switch.

- ``FWDAUDIT_FUZZ=long`` selects the ``deep`` hypothesis profile (thousands of examples per
  property); the default ``fast`` profile keeps the suite within minutes on 2 cores.
- ``pytest --update-gold`` rewrites ``tests/gold/**`` from the current output.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # tests import the project's captures/ helpers and tests.helpers
    sys.path.insert(0, str(ROOT))

settings.register_profile("fast", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("deep", max_examples=5000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("deep" if os.environ.get("FWDAUDIT_FUZZ") == "long" else "fast")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-gold", action="store_true", default=False,
                     help="rewrite tests/gold/** from the current output instead of comparing with it")
