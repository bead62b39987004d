"""Batch handlers encode in slices and let the event loop run when they have worked a while."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from relayq.plugins import _slices
from relayq.plugins._http import MemoryHttpSender
from relayq.plugins._slices import STEP, encoded_lines, slices
from relayq.plugins.opentelemetry import ExportConf, export_traces
from relayq.plugins.opentelemetry._encode import encode_traces
from relayq.plugins.opentelemetry._spans import SpanData


async def _with_ticker(work: Any) -> tuple[Any, int]:
    """Run ``work`` while another task counts the loop turns it gets."""
    ticks = 0
    stop = False

    async def ticker() -> None:
        nonlocal ticks
        while not stop:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)  # the ticker is running
    before = ticks
    result = await work
    stop = True
    await task
    return result, ticks - before


def _collect(items: list[int], **kwargs: Any) -> tuple[list[list[int]], int]:
    async def collect() -> list[list[int]]:
        return [list(part) async for part in slices(items, **kwargs)]

    parts: list[list[int]]
    parts, ticks = asyncio.run(_with_ticker(collect()))
    return parts, ticks


def test_slices_cover_everything_in_order() -> None:
    items = list(range(2 * STEP + 5))
    parts, _ = _collect(items)
    assert [len(p) for p in parts] == [STEP, STEP, 5]
    assert [item for part in parts for item in part] == items


def test_slices_yield_only_once_the_budget_is_spent() -> None:
    items = list(range(10 * STEP))
    _, ticks = _collect(items, budget=3600.0)  # quick work: no yield at all
    assert ticks == 0
    _, ticks = _collect(items, budget=0.0)  # every slice over budget: a yield before each
    assert ticks >= 9

    async def slow() -> int:
        count = 0
        async for _ in slices(items, budget=0.001):
            time.sleep(0.002)  # a slice of work longer than the budget
            count += 1
        return count

    count, ticks = asyncio.run(_with_ticker(slow()))
    assert count == 10 and ticks >= 9


def test_an_empty_batch_is_no_slice() -> None:
    assert _collect([]) == ([], 0)


def test_otel_handler_lets_the_loop_run_and_sends_the_same_body(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_slices, "BUDGET", 0.0)  # whatever this machine's speed: yield often
    spans = [SpanData(trace_id=bytes(range(16)), span_id=(i + 1).to_bytes(8, "big"),
                      parent_span_id=b"", name="kong", kind=2,
                      start_time_unix_nano=1_700_000_000_000_000_000 + i,
                      end_time_unix_nano=1_700_000_000_000_100_000 + i,
                      attributes={"http.method": "GET", "http.status_code": 200, "try": i})
             for i in range(10 * STEP)]
    sender = MemoryHttpSender()
    conf = ExportConf("http://collector:4318/v1/traces", {}, 5.0, {"team": "edge"}, sender)
    ok, ticks = asyncio.run(_with_ticker(export_traces(conf, spans)))
    assert ok is True
    assert ticks >= 9  # the loop ran while the batch was being encoded
    assert sender.requests[0].body == encode_traces(spans, {"team": "edge"})


def test_encoded_lines_keeps_order_across_slices_and_replaces_what_utf8_cannot_hold() -> None:
    items = list(range(STEP + 3))

    def lines_of(n: int) -> list[str]:
        return [f"m{n}.a", f"m{n}.b\udce9" if n == STEP else f"m{n}.b"]

    lines = asyncio.run(encoded_lines(lines_of, items))
    expected = [f"m{n}.{x}".encode() for n in items for x in "ab"]
    expected[2 * STEP + 1] = f"m{STEP}.b?".encode()
    assert lines == expected
