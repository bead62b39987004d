"""Batch work in slices, so a batch handler never holds the event loop for long.

A batch handler runs on the loop that serves the host's requests. Encoding a batch of 500
requests' spans or metric lines in one go takes a few milliseconds, and every request that
arrives meanwhile waits for it. Handlers encode ``SLICE`` entries at a time and let the loop
run in between; the few extra loop turns per batch cost next to nothing. (The gateway with all
five plugins at 2 connections: p99 5.9 ms before slicing, 3.5-3.8 ms after, 0.16 ms without
plugins; the rest is mostly garbage collection and the log phases.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import TypeVar

SLICE = 64  # entries encoded between two yields: well under a millisecond of work

T = TypeVar("T")


async def slices(items: Sequence[T], size: int = SLICE) -> AsyncIterator[Sequence[T]]:
    """``items`` in consecutive slices of ``size``, yielding to the event loop between them."""
    for start in range(0, len(items), size):
        if start:
            await asyncio.sleep(0)
        yield items[start:start + size]


async def encoded_lines(lines_of: Callable[[T], Iterable[str]], items: Sequence[T]) -> list[bytes]:
    """Every line ``lines_of`` gives for each of ``items``, in order, UTF-8 encoded (what
    cannot be, lone surrogates, as ``?``), a slice of ``items`` at a time (the metric
    plugins' batch handlers)."""
    lines: list[bytes] = []
    async for part in slices(items):
        lines += [line.encode("utf-8", "replace") for item in part for line in lines_of(item)]
    return lines
