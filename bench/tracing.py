"""Log-phase cost of the tracing plugins, against building their spans alone.

For each plugin the log phase is timed twice in the same run on identical requests: once as it
runs in production (build the spans, then enqueue each into a real ``relayq.Runtime`` whose
consumer exports to an in-memory sender), and once with the enqueue replaced by a no-op (the
serializer-free baseline: building the spans alone). The ratio is the price of queueing.
For scale, the OpenTelemetry Python SDK's cost to start and end one span with the same
attributes into a ``BatchSpanProcessor`` is measured too. Absolute numbers mean little on a
busy machine; the ratios are the result.

    python bench/tracing.py [--rounds 5] [--n 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import relayq
from relayq.plugins import Plugin
from relayq.plugins._http import MemoryHttpSender
from relayq.plugins.opentelemetry import OpenTelemetryPlugin
from relayq.plugins.zipkin import ZipkinPlugin
from relayq.serializer import RequestContext

T0 = time.time_ns()
BATCH = 200  # OpenTelemetry's default batch size; Zipkin is given the same


def request() -> RequestContext:
    """A proxied request with one balancer try and the timings a host records."""
    return RequestContext(
        method="GET",
        host="api.example.com",
        path="/orders/7",
        query_string="expand=items",
        headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        client_ip="203.0.113.9",
        client_port=50000,
        request_id="req-1",
        status=200,
        service={"id": "s1", "name": "orders", "host": "orders.internal", "port": 80},
        route={"id": "r1", "name": "orders", "paths": ["/orders"]},
        tries=[
            {
                "ip": "10.0.0.1",
                "port": 80,
                "balancer_start": T0 / 1e6,
                "balancer_start_ns": T0,
                "balancer_latency": 1,
                "balancer_latency_ns": 1_000_000,
            }
        ],
        timestamps={
            "request_start": T0,
            "access_start": T0 + 100_000,
            "access_end": T0 + 200_000,
            "upstream_start": T0 + 300_000,
            "upstream_first_byte": T0 + 2_000_000,
            "response_start": T0 + 2_100_000,
            "response_end": T0 + 2_500_000,
        },
    )


def prepared(plugin: Plugin, n: int) -> list[RequestContext]:
    """Requests that went through access and header_filter, ready for the log phase."""
    out = []
    for _ in range(n):
        ctx = request()
        plugin.access(ctx)
        plugin.header_filter(ctx)
        out.append(ctx)
    return out


def time_log(plugin: Plugin, n: int) -> float:
    contexts = prepared(plugin, n)
    log = plugin.log
    gc.collect()
    gc.disable()  # as timeit does: a collection of the prepared requests is not the plugin's
    try:
        t0 = time.perf_counter_ns()
        for ctx in contexts:
            log(ctx)
        return (time.perf_counter_ns() - t0) / n
    finally:
        gc.enable()


class BuildOnly:
    """Replaces a plugin's enqueue: keeps the entries (a list append) and queues nothing, so
    the log phase costs just building them; the entries then feed the handler benchmark."""

    def __init__(self) -> None:
        self.entries: list[Any] = []
        self.handler: Callable[..., Awaitable[Any]] | None = None
        self.handler_conf: Any = None

    def __call__(self, ctx: Any, handler: Any, handler_conf: Any, entry: Any) -> bool:
        self.entries.append(entry)
        self.handler, self.handler_conf = handler, handler_conf
        return True

    def many(self, ctx: Any, handler: Any, handler_conf: Any, entries: list[Any]) -> int:
        """The same for ``enqueue_many`` (a request's spans at once)."""
        self.entries.extend(entries)
        self.handler, self.handler_conf = handler, handler_conf
        return len(entries)


def build_only(plugin: Plugin, binding_attr: str, sink: BuildOnly) -> Plugin:
    """The same plugin with its queue's enqueue replaced by ``sink``."""
    binding = getattr(plugin, binding_attr)
    binding.enqueue = sink
    binding.enqueue_many = sink.many
    return plugin


async def time_handler(sink: BuildOnly, batch_size: int) -> float:
    """ns per entry the batch handler takes (encode, then the in-memory sender)."""
    assert sink.handler is not None
    batches = [sink.entries[i : i + batch_size] for i in range(0, len(sink.entries), batch_size)]
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter_ns()
        for batch in batches:
            assert await sink.handler(sink.handler_conf, batch) is True
        return (time.perf_counter_ns() - t0) / len(sink.entries)
    finally:
        gc.enable()


class _NullExporter(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def time_sdk_span(n: int) -> float:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_NullExporter(), max_queue_size=n + 10))
    tracer = provider.get_tracer("bench")
    attributes: dict[str, Any] = {
        "http.method": "GET",
        "http.url": "http://api.example.com/orders/7?expand=items",
        "http.host": "api.example.com",
        "http.scheme": "http",
        "http.flavor": "1.1",
        "http.client_ip": "203.0.113.9",
        "net.peer.ip": "203.0.113.9",
        "kong.request.id": "req-1",
        "http.status_code": 200,
        "http.route": "/orders",
    }
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter_ns()
        for _ in range(n):
            span = tracer.start_span("kong", attributes=attributes)
            span.end()
        elapsed = time.perf_counter_ns() - t0
    finally:
        gc.enable()
    provider.shutdown()
    return elapsed / n


async def measure_plugin(
    rt: relayq.Runtime, make: Callable[[BuildOnly | None], Plugin], rounds: int, n: int
) -> tuple[float, float, float]:
    """Median build-only and log-phase ns per request, and the handler's ns per span.

    The log phase is timed without yielding to the event loop, so the queue's consumer (which
    shares the loop) does not run inside the timed section; the runtime drains between rounds.
    """
    built, full = [], []
    sink = BuildOnly()
    for _ in range(rounds):
        built.append(time_log(make(sink), n))
        full.append(time_log(make(None), n))
        assert await rt.drain(60)
    export = await time_handler(sink, BATCH)
    return statistics.median(built), statistics.median(full), export


async def run(rounds: int, n: int) -> None:
    rt = relayq.Runtime()
    sender = MemoryHttpSender()
    queue = {"max_batch_size": BATCH, "max_coalescing_delay": 0.01, "max_entries": 100_000}
    otel_conf = {"traces_endpoint": "http://collector.invalid/v1/traces", "queue": queue}
    zipkin_conf = {
        "http_endpoint": "http://zipkin.invalid/api/v2/spans",
        "sample_ratio": 1,
        "queue": queue,
    }

    def otel(sink: BuildOnly | None) -> Plugin:
        plugin = OpenTelemetryPlugin(otel_conf, plugin_id="bench-otel", runtime=rt, sender=sender)
        return build_only(plugin, "_traces_queue", sink) if sink else plugin

    def zipkin(sink: BuildOnly | None) -> Plugin:
        plugin = ZipkinPlugin(zipkin_conf, plugin_id="bench-zipkin", runtime=rt, sender=sender)
        return build_only(plugin, "_queue", sink) if sink else plugin

    sdk = statistics.median(time_sdk_span(n) for _ in range(rounds))
    rows = []
    plugins: tuple[tuple[str, Callable[[BuildOnly | None], Plugin], int], ...] = (
        ("opentelemetry", otel, 2),
        ("zipkin", zipkin, 3),
    )
    for name, make, spans in plugins:
        built, full, export = await measure_plugin(rt, make, rounds, n)
        sender.clear()
        rows.append((name, spans, built, full, export))
    await rt.aclose(10)

    print(f"log phase per request, median of {rounds} rounds x {n} requests")
    print(
        f"{'plugin':<15}{'spans':>6}{'build only µs':>15}{'log phase µs':>14}"
        f"{'log/build':>11}{'log/SDK span':>14}{'handler µs/span':>17}"
    )
    for name, spans, built, full, export in rows:
        print(
            f"{name:<15}{spans:>6}{built / 1000:>15.1f}{full / 1000:>14.1f}"
            f"{full / built:>11.2f}{full / sdk:>14.2f}{export / 1000:>17.1f}"
        )
    print(
        "OpenTelemetry SDK, one span started and ended into BatchSpanProcessor: "
        f"{sdk / 1000:.1f} µs"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=3000, help="requests per round")
    args = parser.parse_args()
    asyncio.run(run(args.rounds, args.n))


if __name__ == "__main__":
    main()
