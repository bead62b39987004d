"""Batch handlers encode in slices and let the event loop run in between."""

from __future__ import annotations

import asyncio
from typing import Any

from relayq.plugins._http import MemoryHttpSender
from relayq.plugins._slices import SLICE, encoded_lines, slices
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


def test_slices_cover_everything_in_order_and_yield_between() -> None:
    items = list(range(2 * SLICE + 5))

    async def collect() -> list[list[int]]:
        return [list(part) async for part in slices(items)]

    parts, ticks = asyncio.run(_with_ticker(collect()))
    assert [len(p) for p in parts] == [SLICE, SLICE, 5]
    assert [item for part in parts for item in part] == items
    assert ticks >= 2  # the other task ran between the slices


def test_an_empty_batch_is_no_slice() -> None:
    async def collect() -> list[Any]:
        return [part async for part in slices([])]

    assert asyncio.run(collect()) == []


def test_otel_handler_lets_the_loop_run_and_sends_the_same_body() -> None:
    spans = [SpanData(trace_id=bytes(range(16)), span_id=(i + 1).to_bytes(8, "big"),
                      parent_span_id=b"", name="kong", kind=2,
                      start_time_unix_nano=1_700_000_000_000_000_000 + i,
                      end_time_unix_nano=1_700_000_000_000_100_000 + i,
                      attributes={"http.method": "GET", "http.status_code": 200, "try": i})
             for i in range(3 * SLICE)]
    sender = MemoryHttpSender()
    conf = ExportConf("http://collector:4318/v1/traces", {}, 5.0, {"team": "edge"}, sender)
    ok, ticks = asyncio.run(_with_ticker(export_traces(conf, spans)))
    assert ok is True
    assert ticks >= 2
    assert sender.requests[0].body == encode_traces(spans, {"team": "edge"})


def test_encoded_lines_keeps_order_across_slices_and_replaces_what_utf8_cannot_hold() -> None:
    items = list(range(SLICE + 3))

    def lines_of(n: int) -> list[str]:
        return [f"m{n}.a", f"m{n}.b\udce9" if n == SLICE else f"m{n}.b"]

    lines, ticks = asyncio.run(_with_ticker(encoded_lines(lines_of, items)))
    expected = [f"m{n}.{x}".encode() for n in items for x in "ab"]
    expected[2 * SLICE + 1] = f"m{SLICE}.b?".encode()
    assert lines == expected
    assert ticks >= 1
