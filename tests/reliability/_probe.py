"""Reading a process's health from /proc (no psutil): resident memory, open descriptors,
threads and TCP connections, plus polling with a deadline.

The reliability claims are about what the operating system sees (a queue that keeps a
reference too many shows up as RSS, a leaked connection as a descriptor), so they are
measured there rather than from the library's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of ``pid`` in bytes (``/proc/<pid>/statm``, second field)."""
    with open(f"/proc/{pid}/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * PAGE


def open_fds(pid: int | str = "self") -> int:
    """Open file descriptors of ``pid`` (entries of ``/proc/<pid>/fd``)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def socket_fds(pid: int | str = "self") -> int:
    """Open descriptors of ``pid`` that are sockets."""
    count = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                count += 1
        except OSError:  # closed while we looked
            continue
    return count


def threads(pid: int | str = "self") -> int:
    """Threads of ``pid`` (``Threads:`` in ``/proc/<pid>/status``)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError(f"no Threads line for pid {pid}")


def cpu_seconds(pid: int | str = "self") -> float:
    """User plus system CPU time of ``pid`` so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition",
               interval: float = 0.01) -> T:
    """Poll ``predicate`` until it returns something truthy; ``AssertionError`` after
    ``timeout`` seconds (never a bare sleep standing in for an assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition",
                describe: Callable[[], Any] | None = None) -> Any:
    """``wait_until`` for async tests: yields to the loop between polls, so the queues whose
    progress is awaited keep running."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f": {describe()}" if describe is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail}")
        await asyncio.sleep(0.01)

