"""Helpers shared by the durable tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from relayq.durable._format import (
    HEADER_SIZE,
    KIND_APPEND,
    SPOOL_KINDS,
    ScanResult,
    iter_records,
)


def eventually(check: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``check`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def raw_appends(path: Path) -> dict[int, bytes]:
    """APPEND records found in a spool file by reading its bytes directly (ignores acks)."""
    data = path.read_bytes()
    out: dict[int, bytes] = {}
    for kind, seq, off, length in iter_records(data, memoryview(data), HEADER_SIZE, len(data),
                                               SPOOL_KINDS, ScanResult()):
        if kind == KIND_APPEND:
            out[seq] = data[off:off + length]
    return out
