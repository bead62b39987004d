"""Overload: producers offer ten times what the receiver absorbs, for seconds (minutes with
``--long``).

http-log's real log phase (serializer, JSON encoding, enqueue) runs on the producer thread
against a sink that answers each batch slowly, so the queue is full for the whole run and drops
continuously. What must hold, measured rather than assumed:

- memory stays bounded by the queue limits: the process's RSS, once the queue is full, grows by
  no more than a few megabytes, while the bytes offered are tens of times more;
- the hot path does not slow down as drops accumulate (late vs early per-call cost);
- every entry is accounted for (sent + waiting + in flight + dropped == produced);
- drops are logged at a bounded rate: a handful of lines a second, not one per drop.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

import relayq
from relayq.plugins import HttpxSender
from tests.reliability._probe import rss_bytes, wait_until
from tests.reliability._rigs import HTTP_LOG, request_context
from tests.reliability.conftest import Figures
from tests.support.fault_proxy import FaultProxy, answer

MB = 1 << 20


class _Count(logging.Handler):
    """Counts relayq's log records per level (kept as counts: a storm must not eat memory)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.by_level: dict[int, int] = {}
        self.samples: list[str] = []
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock2:
            self.by_level[record.levelno] = self.by_level.get(record.levelno, 0) + 1
            if len(self.samples) < 20:
                self.samples.append(record.getMessage())

    def at_least(self, level: int) -> int:
        return sum(n for lvl, n in self.by_level.items() if lvl >= level)


@dataclass
class OverloadResult:
    seconds: float
    produced: int
    sent: int
    dropped: dict[str, int]
    depth: int
    in_flight: int
    rss_full_mb: float  # RSS once the queue was first full
    rss_peak_mb: float  # the highest RSS after that
    offered_mb: float  # bytes of entries offered over the whole run
    cost_early_us: float  # median per-call cost of the log phase, second window of the run
    cost_late_us: float  # the same, last window
    error_lines: int
    info_lines: int
    samples: list[str] = field(default_factory=list)

    @property
    def offered_rate(self) -> float:
        return self.produced / self.seconds

    @property
    def absorbed_rate(self) -> float:
        return self.sent / self.seconds


def run_overload(seconds: float, queue: dict[str, Any], *, rate: int = 10000,
                 sink_delay: float = 0.05) -> OverloadResult:
    """Offer ``rate`` requests/s through http-log for ``seconds`` into a sink that answers
    each batch after ``sink_delay`` seconds; measure memory, cost and logs."""
    counter = _Count()
    logger = logging.getLogger("relayq")
    logger.addHandler(counter)
    previous_level = logger.level
    logger.setLevel(logging.INFO)
    rt = relayq.Runtime()
    sender = HttpxSender()
    try:
        with FaultProxy(keep_bodies=False) as sink:
            sink.fault = answer(200, delay=sink_delay)
            plugin = HTTP_LOG.build(rt, sink.url, queue, sender=sender, timeout_ms=5000)
            name = HTTP_LOG.queue_name(plugin)
            # About 1 KB of JSON per entry, like a request with a browser's headers.
            headers = {"user-agent": "Mozilla/5.0 " + "x" * 300, "accept": "*/*",
                       "cookie": "session=" + "c" * 200, "x-request-id": "r" * 36}
            contexts = [request_context(i, service="overload", headers=dict(headers))
                        for i in range(1000)]
            entry_bytes = len(orjson_entry(contexts[0]))
            medians: list[float] = []  # per-call cost (ns), median of each 1 s window; only
            # the medians are kept, or the measurement itself would grow the process
            rss_full = 0
            rss_peak = 0
            produced = 0
            log = plugin.log
            perf = time.perf_counter_ns
            start = time.monotonic()
            next_window = start + 1.0
            current: list[int] = []
            tick = 0.01
            per_tick = max(1, int(rate * tick))
            next_tick = start
            while True:
                now = time.monotonic()
                if now - start >= seconds:
                    break
                if now >= next_window:
                    medians.append(statistics.median(current) if current else 0.0)
                    current = []
                    next_window += 1.0
                    s = rt.stats()[name]
                    if not rss_full and s.dropped_total:
                        rss_full = rss_bytes()
                    elif rss_full:
                        rss_peak = max(rss_peak, rss_bytes())
                for k in range(per_tick):
                    ctx = contexts[(produced + k) % 1000]
                    t0 = perf()
                    log(ctx)
                    current.append(perf() - t0)
                produced += per_tick
                next_tick += tick
                pause = next_tick - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            elapsed = time.monotonic() - start
            s = rt.stats()[name]
            result = OverloadResult(
                seconds=elapsed,
                produced=produced,
                sent=s.entries_sent,
                dropped={k: v for k, v in s.dropped.items() if v},
                depth=s.depth,
                in_flight=s.in_flight,
                rss_full_mb=rss_full / MB,
                rss_peak_mb=max(rss_peak, rss_full) / MB,
                offered_mb=produced * entry_bytes / MB,
                cost_early_us=medians[1] / 1000,
                cost_late_us=medians[-1] / 1000,
                error_lines=counter.at_least(logging.ERROR),
                info_lines=counter.by_level.get(logging.INFO, 0),
                samples=list(counter.samples),
            )
            # Drain what is left so the accounting can be checked at rest.
            wait_until(lambda: (t := rt.stats()[name]).depth == 0 and t.in_flight == 0, 30,
                       "the queue to drain after the overload")
            final = rt.stats()[name]
            assert final.entries_sent + final.dropped_total == produced, final
            return result
    finally:
        rt.shutdown(timeout=5)
        logger.removeHandler(counter)
        logger.setLevel(previous_level)


def orjson_entry(ctx: Any) -> bytes:
    from relayq.plugins.http_log import encode_entry
    from relayq.serializer import serialize

    return encode_entry(serialize(ctx))


LIMITS = {
    # max_entries binds: at most 2000 entries (about 2 MB of JSON) wait.
    "max_entries": {"max_entries": 2000},
    # max_bytes binds: at most 1 MB of JSON waits, whatever the entry count.
    "max_bytes": {"max_entries": 100000, "max_bytes": 1_000_000},
}


@pytest.mark.slow
@pytest.mark.parametrize("limit", sorted(LIMITS))
def test_ten_times_overload_stays_bounded(limit: str, long_run: bool, figures: Figures) -> None:
    seconds = 120.0 if long_run else 5.0
    queue = {"max_batch_size": 50, "max_coalescing_delay": 0.05, **LIMITS[limit]}
    r = run_overload(seconds, queue)
    reason = "capacity" if limit == "max_entries" else "bytes"
    assert r.offered_rate >= 5 * r.absorbed_rate, (r.offered_rate, r.absorbed_rate)
    # Every entry is sent, waiting, in flight or dropped under the limit that was hit.
    assert r.sent + r.depth + r.in_flight + sum(r.dropped.values()) == r.produced, r
    assert set(r.dropped) == {reason} and r.dropped[reason] > r.produced / 2, r.dropped
    # Memory: bounded by the queue, not by what was offered.
    assert r.offered_mb > 5 * 8, r.offered_mb  # unbounded, this much would stay resident
    assert r.rss_full_mb > 0
    assert r.rss_peak_mb - r.rss_full_mb < 8, (r.rss_full_mb, r.rss_peak_mb)
    # The hot path: no slower at the end than early on (a generous bound: 2 shared cores).
    assert r.cost_late_us < 3 * r.cost_early_us + 5, (r.cost_early_us, r.cost_late_us)
    # Logs: drop errors at most about once a second, not once per drop.
    assert r.error_lines <= 2 * (r.seconds + 2), (r.error_lines, r.samples)
    # ... and "queue resumed processing" not once per batch while the drops go on.
    assert r.info_lines <= 2 * (r.seconds + 2), (r.info_lines, r.samples)
    figures.record("overload", limit=limit, seconds=round(r.seconds, 1),
                   offered_per_s=round(r.offered_rate), absorbed_per_s=round(r.absorbed_rate),
                   produced=r.produced, dropped=sum(r.dropped.values()),
                   lost=r.produced - r.sent - r.depth - r.in_flight - sum(r.dropped.values()),
                   rss_growth_mb=round(r.rss_peak_mb - r.rss_full_mb, 1),
                   offered_mb=round(r.offered_mb), cost_early_us=round(r.cost_early_us, 1),
                   cost_late_us=round(r.cost_late_us, 1), error_lines=r.error_lines,
                   info_lines=r.info_lines)


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
async def test_drop_messages_are_rate_limited_for_every_policy(
    policy: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """5000 entries into a queue of 10 whose receiver hangs: a few lines, whichever entries
    the policy sacrifices, and each loss counted."""
    caplog.set_level(logging.INFO)
    rt = relayq.Runtime()
    gate = asyncio.Event()

    async def hung(conf: Any, entries: list[Any]) -> bool:
        await gate.wait()
        return True

    conf = relayq.QueueConfig(name="storm", max_entries=10, drop_policy=policy)
    for i in range(5000):
        rt.enqueue(conf, hung, None, i)
    s = rt.stats()["storm"]
    assert s.dropped_total >= 4980, s
    assert s.dropped_total + s.depth + s.in_flight + s.entries_sent == 5000, s
    full = [r.getMessage() for r in caplog.records if "queue full" in r.getMessage()]
    assert 1 <= len(full) <= 3, full[:5]
    gate.set()
    await rt.aclose(5)
