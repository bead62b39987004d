"""Hot-path cost of ``relayq.enqueue``, beside deque.append and OpenTelemetry's on_end.

Prints ns per call (median of several rounds) and ratios against the baselines measured in the
same run; absolute numbers mean little on a noisy machine, the ratios are the result.

    python bench/enqueue.py [--rounds 7] [--n 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import relayq
from relayq import QueueConfig, Runtime

BLOCK = 100  # entries timed between yields to the event loop


async def _ok(conf: Any, entries: list[Any]) -> bool:
    return True


def bench_deque(n: int) -> float:
    d: collections.deque[Any] = collections.deque()
    append = d.append
    entry = "x" * 200
    t0 = time.perf_counter_ns()
    for _ in range(n):
        append(entry)
    return (time.perf_counter_ns() - t0) / n


class _NullExporter(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def bench_otel(n: int) -> float:
    provider = TracerProvider()
    tracer = provider.get_tracer("bench")
    span = tracer.start_span("request")
    span.end()
    assert isinstance(span, ReadableSpan)
    proc = BatchSpanProcessor(_NullExporter(), max_queue_size=max(n, 2048))
    on_end = proc.on_end
    t0 = time.perf_counter_ns()
    for _ in range(n):
        on_end(span)
    elapsed = time.perf_counter_ns() - t0
    proc.shutdown()
    return elapsed / n


def bench_relayq_loop(n: int, enqueue: Callable[..., bool], conf: Any,
                      close: Callable[[], Any] | None = None) -> float:
    """From the event loop's thread, yielding to the consumer every BLOCK entries."""
    entry = "x" * 200

    async def run() -> float:
        spent = 0
        for _ in range(n // BLOCK):
            t0 = time.perf_counter_ns()
            for _ in range(BLOCK):
                enqueue(conf, _ok, None, entry)
            spent += time.perf_counter_ns() - t0
            await asyncio.sleep(0)
        if close is not None:
            await close()
        return spent / n

    return asyncio.run(run())


def bench_spool(n: int, spooled: bool) -> float:
    """A fresh runtime per round, spool on (group commit every 0.05 s) or off."""
    rt = Runtime()
    conf = QueueConfig(name="bench-spool", max_batch_size=1000, max_coalescing_delay=0.05,
                       max_entries=1_000_000,
                       spool={"path": tempfile.mkdtemp(prefix="relayq-bench-")} if spooled
                       else None)
    return bench_relayq_loop(n, rt.enqueue, conf, close=lambda: rt.aclose(30))


def bench_relayq_thread(n: int) -> float:
    """From another thread while the loop (background thread) consumes."""
    rt = Runtime()
    conf = QueueConfig(name="bench-thread", max_batch_size=1000, max_coalescing_delay=0.05,
                       max_entries=1_000_000)
    entry = "x" * 200
    result: list[float] = []

    def producer() -> None:
        enqueue = rt.enqueue
        t0 = time.perf_counter_ns()
        for _ in range(n):
            enqueue(conf, _ok, None, entry)
        result.append((time.perf_counter_ns() - t0) / n)

    rt.enqueue(conf, _ok, None, entry)  # start the background loop outside the timing
    t = threading.Thread(target=producer)
    t.start()
    t.join()
    rt.flush(30)
    return result[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--n", type=int, default=20000)
    args = ap.parse_args()
    n = args.n
    conf = QueueConfig(name="bench-loop", max_batch_size=1000, max_coalescing_delay=0.05,
                       max_entries=1_000_000)
    rows: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(args.rounds):  # interleaved, so drift hits every variant alike
        rows["deque.append"].append(bench_deque(n))
        rows["otel BatchSpanProcessor.on_end"].append(bench_otel(n))
        rows["relayq.enqueue (loop thread)"].append(bench_relayq_loop(n, relayq.enqueue, conf))
        rows["relayq.enqueue (dict conf)"].append(
            bench_relayq_loop(n, relayq.enqueue, conf.to_dict()))
        rows["relayq.enqueue (other thread)"].append(bench_relayq_thread(n))
        rows["relayq.enqueue, spool off"].append(bench_spool(n, spooled=False))
        rows["relayq.enqueue, spool on"].append(bench_spool(n, spooled=True))
    relayq.shutdown(10)
    med = {k: statistics.median(v) for k, v in rows.items()}
    otel = med["otel BatchSpanProcessor.on_end"]
    dq = med["deque.append"]
    print(f"{'variant':34} {'ns/call':>9} {'x deque':>8} {'x otel':>8}")
    for k, v in med.items():
        print(f"{k:34} {v:9.0f} {v / dq:8.2f} {v / otel:8.2f}")
    print()
    print(f"target: loop thread <= 0.6x otel -> {med['relayq.enqueue (loop thread)'] / otel:.2f}x")
    print(f"target: other thread <= 1500 ns -> {med['relayq.enqueue (other thread)']:.0f} ns")
    spool = med["relayq.enqueue, spool on"] / med["relayq.enqueue, spool off"]
    print(f"target: spool on <= 3x spool off -> {spool:.2f}x")


if __name__ == "__main__":
    main()
