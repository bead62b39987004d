"""Fault injection against the three HTTP senders (http-log, opentelemetry, zipkin).

Each sender posts through a :class:`FaultProxy` to a real recording receiver. For every fault
the proxy can inject, the test shows what the queue does while the receiver misbehaves
(failures retried on the backoff schedule of the queue's settings, the error named in
``stats()``), that the process stays healthy (requests keep being accepted, the accounting in
``stats()`` adds up, no tracebacks), and that once the receiver is back every retained entry
arrives: entries seen by the receiver, counted one by one, equal the entries produced.
Separate scenarios make the queue lose entries on purpose (capacity, retry budget, permanent
failures) and check each loss is counted under its reason and logged.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import relayq
from relayq.plugins import HttpxSender, Plugin
from relayq.queue import QueueStats
from tests.reliability._probe import until
from tests.reliability._rigs import HTTP_LOG, HTTP_RIGS, HttpRig, request_context, run_phases
from tests.reliability.conftest import Figures
from tests.support.fault_proxy import (
    CUT_REQUEST,
    CUT_RESPONSE,
    PASS,
    REFUSE,
    RESET,
    STALL,
    Fault,
    FaultProxy,
    answer,
    slow,
)
from tests.support.http_receiver import HttpReceiver

INITIAL_RETRY = 0.02
MAX_RETRY = 0.16
BATCH = 10
TIMEOUT_MS = 300

QUEUE: dict[str, Any] = {
    "max_batch_size": BATCH,
    "max_coalescing_delay": 0.05,
    "initial_retry_delay": INITIAL_RETRY,
    "max_retry_delay": MAX_RETRY,
    "max_retry_time": 60,
}

# What each fault looks like in the queue's last_error (any of the fragments).
EXPECTED_ERROR = {
    "refuse": ("connection refused",),
    "reset": ("connection reset", "closed"),
    "stall": ("timeout",),
    "answer": ("503", "302", "429"),
    "cut_request": ("closed", "connection reset"),
    "cut_response": ("closed", "connection reset"),
}

HTTP_FAULTS = [
    REFUSE,
    RESET,
    STALL,
    answer(503, body=b"overloaded"),
    answer(302, headers={"Location": "http://127.0.0.1:1/elsewhere"}),
    answer(429, headers={"Retry-After": "1"}),
    slow(0.1),  # below the 300 ms timeout: slow, but every attempt succeeds
    CUT_REQUEST,
    CUT_RESPONSE,
]


@dataclass
class Harness:
    """A receiver behind a fault proxy, an isolated runtime and one HTTP sender."""

    rx: HttpReceiver
    proxy: FaultProxy
    rt: relayq.Runtime
    sender: HttpxSender
    produced: list[str] = field(default_factory=list)

    def build(self, rig: HttpRig, queue: dict[str, Any] | None = None, **kw: Any) -> Plugin:
        return rig.build(self.rt, self.proxy.url, {**QUEUE, **(queue or {})},
                         sender=self.sender, timeout_ms=TIMEOUT_MS, **kw)

    def produce(self, plugin: Plugin, start: int, count: int) -> None:
        for i in range(start, start + count):
            run_phases([plugin], request_context(i))

    def stats(self, rig: HttpRig, plugin: Plugin) -> QueueStats:
        return self.rt.stats()[rig.queue_name(plugin)]

    def received(self, rig: HttpRig) -> list[str]:
        """Every entry id the receiver got, duplicates included, in arrival order."""
        return [entry for request in self.rx.requests for entry in rig.ids(request.body)]


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    with HttpReceiver() as rx, FaultProxy(upstream=(rx.host, rx.port)) as proxy:
        rt = relayq.Runtime()
        sender = HttpxSender()
        try:
            yield Harness(rx, proxy, rt, sender)
        finally:
            await rt.aclose(timeout=5)
            await sender.aclose()


def backoff(k: int) -> float:
    """The queue's k-th retry delay for QUEUE's settings (Kong's doubling, capped)."""
    return float(min(MAX_RETRY, INITIAL_RETRY * 2**k))


def attempts_by_batch(proxy: FaultProxy, kind: str) -> dict[str, list[float]]:
    """Arrival times of the attempts the proxy saw under ``kind``, by X-Relayq-Batch-Id."""
    out: dict[str, list[float]] = {}
    for hit in proxy.hits:
        if hit.fault == kind:
            out.setdefault(hit.headers.get("x-relayq-batch-id", "?"), []).append(hit.at)
    return out


def assert_sane(s: QueueStats, produced: int) -> None:
    """The accounting of a healthy queue: every accepted entry is somewhere."""
    assert s.enqueued == produced, s
    assert s.entries_sent + s.depth + s.in_flight + s.dropped_total == produced, s
    assert 0 <= s.in_flight <= BATCH, s
    assert s.depth <= QUEUE.get("max_entries", 10000), s


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info]


@pytest.mark.parametrize("fault", HTTP_FAULTS, ids=str)
@pytest.mark.parametrize("rig", HTTP_RIGS, ids=lambda r: r.name)
async def test_fault_then_recovery_delivers_every_entry(
    rig: HttpRig, fault: Fault, harness: Harness, caplog: pytest.LogCaptureFixture,
    figures: Figures,
) -> None:
    caplog.set_level(logging.WARNING)
    h = harness
    plugin = h.build(rig)
    began = time.monotonic()
    h.proxy.fault = fault
    h.produce(plugin, 0, 20)
    failing = fault.kind != "slow"

    def describe() -> str:
        return f"stats={h.stats(rig, plugin)} proxy={dict(h.proxy.counts)}"

    if failing:
        # The first batch fails, and is retried at least twice, against the fault itself.
        await until(lambda: h.stats(rig, plugin).failures >= 3, 15, "three failed attempts",
                    describe)
        if fault.kind != "refuse":
            assert h.proxy.count(fault.kind) >= 3
        error = h.stats(rig, plugin).last_error or ""
        assert any(fragment in error for fragment in EXPECTED_ERROR[fault.kind]), error
        # Healthy while failing: new requests are still taken, the accounting adds up.
        h.produce(plugin, 20, 10)
        s = h.stats(rig, plugin)
        assert_sane(s, 30 * rig.per_request)
        assert s.dropped_total == 0 and s.in_flight > 0, s
        # Retries follow the queue's schedule: each gap is at least the backoff delay and
        # not much more than the delay plus one attempt.
        gaps_checked = 0
        for times in attempts_by_batch(h.proxy, fault.kind).values():
            for k, (a, b) in enumerate(itertools.pairwise(times)):
                assert b - a >= 0.8 * backoff(k), (k, b - a, times)
                assert b - a <= backoff(k) + TIMEOUT_MS / 1000 + 1.5, (k, b - a, times)
                gaps_checked += 1
        assert gaps_checked >= 2 or fault.kind == "refuse"
    else:
        h.produce(plugin, 20, 10)
        await until(lambda: h.proxy.count("slow") >= 2, 10, "slow requests", describe)
    h.proxy.fault = PASS
    expected = 30 * rig.per_request
    await until(lambda: (s := h.stats(rig, plugin)).entries_sent == expected
                and s.depth == 0 and s.in_flight == 0,
                20, "every entry delivered after recovery", describe)
    s = h.stats(rig, plugin)
    received = h.received(rig)
    unique = set(received)
    assert len(unique) == expected == s.entries_sent, (len(unique), s)
    assert s.dropped_total == 0, s
    duplicates = len(received) - len(unique)
    if fault.kind == "cut_response":
        # The receiver took the batch but the sender never saw the answer: at-least-once
        # delivery sends it again, with the same batch id so the receiver can tell.
        assert duplicates > 0
        ids = Counter(r.headers.get("x-relayq-batch-id") for r in h.rx.requests)
        assert any(n > 1 for n in ids.values()), ids
    else:
        assert duplicates == 0, Counter(received).most_common(3)
    if failing:
        assert s.retries >= 2, s
        assert any("handler could not process entries" in r.getMessage()
                   for r in caplog.records)
    else:
        assert s.failures == 0, s
    assert tracebacks(caplog) == []
    figures.record("fault", sender=rig.name, transport="http", fault=str(fault),
                   produced=expected, delivered=len(unique), duplicates=duplicates,
                   retries=s.retries, dropped=s.dropped_total,
                   lost=expected - len(unique) - s.dropped_total,
                   seconds=round(time.monotonic() - began, 2))


@pytest.mark.parametrize("rig", HTTP_RIGS, ids=lambda r: r.name)
async def test_capacity_drops_are_counted_logged_once_and_processing_resumes(
    rig: HttpRig, harness: Harness, caplog: pytest.LogCaptureFixture, figures: Figures,
) -> None:
    """A long outage with a small queue: the oldest entries are dropped (counted under
    ``capacity``, logged at most once a second), the newest survive, and after recovery the
    queue logs "queue resumed processing" and delivers what it kept."""
    caplog.set_level(logging.INFO)
    h = harness
    max_entries = 30
    plugin = h.build(rig, {"max_entries": max_entries})
    h.proxy.fault = REFUSE
    h.produce(plugin, 0, 5)  # the first batch: taken, then retried
    await until(lambda: h.stats(rig, plugin).failures >= 1, 10, "a failed attempt")
    requests = 200
    h.produce(plugin, 5, requests - 5)
    s = h.stats(rig, plugin)
    produced = requests * rig.per_request
    assert s.dropped["capacity"] > 0 and s.depth <= max_entries, s
    assert_sane(s, produced)
    h.proxy.fault = PASS
    await until(lambda: (s := h.stats(rig, plugin)).depth == 0 and s.in_flight == 0, 15,
                "the queue to drain")
    s = h.stats(rig, plugin)
    received = h.received(rig)
    assert len(received) == len(set(received)) == s.entries_sent
    assert s.entries_sent + s.dropped["capacity"] == produced, s
    assert s.dropped_total == s.dropped["capacity"], s
    # Drop-oldest: the newest entries are among those delivered.
    newest = {i for i in range(requests - max_entries // rig.per_request, requests)}
    delivered_requests = {int(x.split("/")[-1]) for x in received} if rig is HTTP_LOG else None
    if delivered_requests is not None:
        assert newest <= delivered_requests
    messages = [r.getMessage() for r in caplog.records]
    full = [m for m in messages if "queue full" in m]
    assert 1 <= len(full) <= 3, full  # the outage lasted well under 2 s
    assert any("queue resumed processing" in m for m in messages), messages[-10:]
    figures.record("drops", sender=rig.name, reason="capacity", produced=produced,
                   delivered=s.entries_sent, dropped=s.dropped_total,
                   lost=produced - s.entries_sent - s.dropped_total, log_lines=len(full))


@pytest.mark.parametrize("rig", HTTP_RIGS, ids=lambda r: r.name)
async def test_retry_budget_exhausted_is_counted_and_later_entries_still_go_out(
    rig: HttpRig, harness: Harness, caplog: pytest.LogCaptureFixture, figures: Figures,
) -> None:
    """With a short ``max_retry_time``, batches that cannot be sent during an outage are given
    up (counted under ``retry_exhausted`` and logged); the queue is not stuck: entries
    produced after the receiver is back are delivered."""
    caplog.set_level(logging.WARNING)
    h = harness
    plugin = h.build(rig, {"max_retry_time": 0.2})
    h.proxy.fault = REFUSE
    h.produce(plugin, 0, 25)
    await until(lambda: h.stats(rig, plugin).dropped["retry_exhausted"] >= 2 * BATCH, 15,
                "two batches given up")
    await until(lambda: (s := h.stats(rig, plugin)).depth == 0 and s.in_flight == 0, 15,
                "every outage batch given up")
    h.proxy.fault = PASS
    h.produce(plugin, 25, 15)
    produced = 40 * rig.per_request
    await until(lambda: h.stats(rig, plugin).entries_sent == 15 * rig.per_request, 15,
                "the entries produced after recovery")
    s = h.stats(rig, plugin)
    assert s.entries_sent + s.dropped["retry_exhausted"] == produced, s
    assert s.dropped["retry_exhausted"] == 25 * rig.per_request, s
    assert len(set(h.received(rig))) == s.entries_sent
    assert any("max_retry_time exceeded" in r.getMessage() for r in caplog.records)
    figures.record("drops", sender=rig.name, reason="retry_exhausted", produced=produced,
                   delivered=s.entries_sent, dropped=s.dropped_total,
                   lost=produced - s.entries_sent - s.dropped_total)


async def test_retry_after_is_honoured_and_permanent_failures_are_counted(
    harness: Harness, caplog: pytest.LogCaptureFixture, figures: Figures,
) -> None:
    """http-log with ``retry_on: retryable``: a 429 with ``Retry-After: 1`` holds the retry
    for a second although the backoff would retry after 20 ms; a 302 is not retried (a
    redirect will not go away), its entries are counted under ``permanent``."""
    caplog.set_level(logging.WARNING)
    h = harness
    plugin = h.build(HTTP_LOG, {"retry_on": "retryable", "max_retry_delay": 5})
    h.proxy.fault = answer(429, headers={"Retry-After": "1"})
    h.produce(plugin, 0, 1)
    await until(lambda: h.proxy.count("answer") >= 1, 10, "the 429")
    h.proxy.fault = PASS
    await until(lambda: h.stats(HTTP_LOG, plugin).entries_sent == 1, 10, "the retried entry")
    times = [hit.at for hit in h.proxy.hits]
    assert times[1] - times[0] >= 0.95, times  # Retry-After, not the 20 ms backoff
    h.proxy.fault = answer(302, headers={"Location": "/x"})
    h.produce(plugin, 1, 4)
    await until(lambda: h.stats(HTTP_LOG, plugin).dropped["permanent"] == 4, 10,
                "permanent drops")
    h.proxy.fault = PASS
    h.produce(plugin, 5, 3)
    await until(lambda: h.stats(HTTP_LOG, plugin).entries_sent == 4, 10, "later entries")
    s = h.stats(HTTP_LOG, plugin)
    assert s.entries_sent + s.dropped_total == 8 and s.dropped_total == 4, s
    assert any("permanent failure" in r.getMessage() for r in caplog.records)
    figures.record("drops", sender="http-log", reason="permanent", produced=8,
                   delivered=s.entries_sent, dropped=s.dropped_total,
                   lost=8 - s.entries_sent - s.dropped_total)
