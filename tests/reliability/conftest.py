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
LONG_TIMEOUT = 1200  # seconds, for a test marked slow in a long run


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        default=False,
        help="reliability suite: run the overload and soak scenarios for minutes, not seconds",
    )


def _long_requested(config: pytest.Config) -> bool:
    option = False
    with contextlib.suppress(ValueError):  # not registered: conftest loaded after parsing
        option = bool(config.getoption("--long"))
    return option or os.environ.get(LONG_ENV, "") not in ("", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The minutes-long runs outlive the suite's 120 s per-test timeout: give the tests
    marked ``slow`` (overload, soak) a timeout that fits, only when they run long."""
    if not _long_requested(config):
        return
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(pytest.mark.timeout(LONG_TIMEOUT))


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
    return _long_requested(request.config)
