"""Options and fixtures of the reliability suite.

``--long`` (or ``RELAYQ_LONG=1`` in the environment, which also works when pytest is started on
the whole ``tests`` tree, where this conftest is loaded too late to add options) turns the
overload and soak runs from seconds into minutes. ``RELAYQ_RELIABILITY_FIGURES=<file>`` makes
the tests append their measured figures to ``<file>`` as JSON lines; ``bench/report.py`` reads
them to write the README's reliability table, so the figures come from the same runs that the
assertions checked.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from typing import Any

import pytest

FIGURES_ENV = "RELAYQ_RELIABILITY_FIGURES"
LONG_ENV = "RELAYQ_LONG"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        default=False,
        help="reliability suite: run the overload and soak scenarios for minutes, not seconds",
    )


class Figures:
    """Appends one JSON line per recorded scenario to the file named by the environment (a
    no-op without it). Lines are written with one ``write`` in append mode, so parallel test
    workers do not interleave them."""

    _lock = threading.Lock()

    def __init__(self, test: str) -> None:
        self.test = test
        self.path = os.environ.get(FIGURES_ENV)

    def record(self, kind: str, **values: Any) -> None:
        if not self.path:
            return
        line = json.dumps({"kind": kind, "test": self.test, **values}, sort_keys=True) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    return Figures(request.node.nodeid)


@pytest.fixture
def long_run(request: pytest.FixtureRequest) -> bool:
    """True when the minutes-long versions were asked for."""
    option = False
    with contextlib.suppress(ValueError):  # not registered: conftest loaded after parsing
        option = bool(request.config.getoption("--long"))
    return option or os.environ.get(LONG_ENV, "") not in ("", "0")
