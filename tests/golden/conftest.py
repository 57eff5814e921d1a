"""Gold-file options: ``pytest tests/golden --update-gold`` rewrites the expected outputs.

pytest reads ``pytest_addoption`` only from the conftest files it loads at start-up: this one
when ``tests/golden`` is named on the command line. For a bare ``pytest --update-gold`` the same
option must also be registered in ``tests/conftest.py``; registering it twice is harmless.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    try:
        parser.addoption("--update-gold", action="store_true", default=False,
                         help="rewrite tests/gold/** from the current output instead of comparing with it")
    except ValueError:  # already registered by a conftest higher up (tests/conftest.py), so bare `pytest` knows it
        pass


@pytest.fixture
def update_gold(request: pytest.FixtureRequest) -> bool:
    """True when the run was asked to rewrite the gold files."""
    return bool(request.config.getoption("--update-gold", default=False))
