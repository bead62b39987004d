"""Cost of the http-log, statsd and datadog log phases, and what each sender sustains end to end.

1. Log phase: ns per request of ``plugin.log(ctx)`` (serialize + encode + enqueue), with ratios
   against ``serialize(ctx)`` alone, measured in the same run (median of several rounds; the
   consumers run between timed blocks, as they would between requests).
2. Whole request: CPU per request of all five plugins' ``access``, ``header_filter`` and
   ``log`` plus their batch handlers' share (encoding, sending to a null HTTP sender or a
   bound UDP socket), configured as bench/gateway.py configures them (batches of 500), against
   ``serialize(ctx)`` in the same run. This is what a gateway pays per request.
3. Request-path floor: what any design must still do per request with these five plugins, even
   one that moved every encoder out of the process: OpenTelemetry's and Zipkin's ``access`` and
   ``header_filter`` (extract the incoming trace context, new ids, sampling, inject the outgoing
   headers) plus one ``enqueue`` per plugin handing the request over; and ``serialize(ctx)``, the
   least an in-process http-log must build. Set against the gateway's own cost per request
   (bench/gateway.py), this bounds how little the plugins can cost.
4. End to end: entries/s from the first ``log`` call until the queue is drained into a real
   receiver: http-log into bench/_receiver.py (its own process, decodes every JSON body), statsd
   and datadog into Etsy's StatsD daemon over UDP (counted with its management interface).

    python bench/plugins.py [--rounds 5] [--n 5000] [--e2e 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import relayq
from relayq.plugins import Plugin, create_plugin
from relayq.plugins._http import HttpResponse, HttpSender
from relayq.plugins.http_log import HttpLogPlugin
from relayq.plugins.opentelemetry import OpenTelemetryPlugin
from relayq.plugins.zipkin import ZipkinPlugin
from relayq.serializer import RequestContext, serialize

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 100


def context(i: int = 0) -> RequestContext:
    return RequestContext(
        method="GET",
        host="api.example.com",
        port=8000,
        path=f"/orders/{i}",
        query_string="expand=items&page=2",
        headers={
            "host": "api.example.com:8000",
            "user-agent": "bench/1.0",
            "accept": "application/json",
            "authorization": "Bearer abc",
            "x-request-id": f"req-{i}",
        },
        request_id=f"req-{i}",
        request_size=230,
        route={"id": "r-1", "name": "orders", "paths": ["/orders"], "protocols": ["http"]},
        service={"id": "s-1", "name": "orders", "host": "orders.internal", "port": 80},
        consumer={"id": "c-1", "username": "alice", "custom_id": "alice-1"},
        workspace_id="ws-1",
        upstream_uri=f"/{i}",
        upstream_status="200",
        status=200,
        response_headers={"content-type": "application/json", "content-length": "512"},
        response_size=700,
        kong_latency=1.0,
        proxy_latency=12.0,
        receive_latency=1.0,
        request_latency=14.5,
    )


class NullSender(HttpSender):
    """Answers 200 at once without recording: the log phase is measured, not the network."""

    async def request(
        self, method: str, url: str, body: bytes, headers: Any, *, timeout: float = 10.0
    ) -> HttpResponse:
        return HttpResponse(200)


def median_ns(rounds: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(rounds))


async def timed_blocks(n: int, call: Callable[[RequestContext], Any]) -> float:
    """ns per call, timing only the calls; the loop runs consumers between blocks."""
    contexts = [context(i) for i in range(BLOCK)]
    spent = 0
    for _ in range(n // BLOCK):
        t0 = time.perf_counter_ns()
        for c in contexts:
            call(c)
        spent += time.perf_counter_ns() - t0
        await asyncio.sleep(0)
    return spent / (n // BLOCK * BLOCK)


async def log_phase(rounds: int, n: int, sink_port: int) -> None:
    rt = relayq.Runtime()
    big_queue = {"max_entries": 1_000_000, "max_batch_size": 500, "max_coalescing_delay": 0.05}
    plugins: dict[str, Plugin] = {
        "http-log": HttpLogPlugin(
            {"http_endpoint": "http://collector.test/logs", "queue": big_queue},
            plugin_id="bench-http",
            runtime=rt,
            sender=NullSender(),
        ),
        "statsd": create_plugin(
            "statsd",
            {"host": "127.0.0.1", "port": sink_port, "udp_packet_size": 1400, "queue": big_queue},
            plugin_id="bench-statsd",
            runtime=rt,
        ),
        "datadog": create_plugin(
            "datadog",
            {"host": "127.0.0.1", "port": sink_port, "queue": big_queue},
            plugin_id="bench-datadog",
            runtime=rt,
        ),
    }
    results: dict[str, float] = {}
    base = [await timed_blocks(n, serialize) for _ in range(rounds)]
    results["serialize() alone"] = statistics.median(base)
    for name, plugin in plugins.items():
        samples = []
        for _ in range(rounds):
            samples.append(await timed_blocks(n, plugin.log))
            await rt.drain(timeout=30)
        results[f"{name} log()"] = statistics.median(samples)
    await rt.aclose(timeout=30)
    baseline = results["serialize() alone"]
    print("log phase, per request (median of rounds)")
    for label, ns in results.items():
        print(f"  {label:<20} {ns / 1000:8.2f} us   {ns / baseline:5.2f}x serialize()")


# ------------------------------------------------------------------------- whole request


def gateway_context(i: int) -> RequestContext:
    """A request as the gateway fills it for wrk's ``GET /`` (one upstream try, timings)."""
    t0 = time.time_ns()
    return RequestContext(
        method="GET", host="127.0.0.1", port=8000, path="/",
        headers={"host": "127.0.0.1:8000"}, client_ip="127.0.0.1", client_port=50000 + i % 1000,
        request_id=f"{i:032x}", request_size=40,
        route={"id": "r-1", "name": "bench", "paths": ["/"], "protocols": ["http", "https"]},
        service={"id": "s-1", "name": "bench", "host": "127.0.0.1", "port": 9000,
                 "protocol": "http"},
        workspace_id="ws-1", upstream_uri="/", upstream_status="200", status=200,
        response_headers={"content-type": "application/json", "content-length": "41"},
        response_size=200, kong_latency=0.123, proxy_latency=1.234, receive_latency=0.01,
        request_latency=1.5,
        tries=[{"ip": "127.0.0.1", "port": 9000, "hostname": "127.0.0.1",
                "balancer_start": t0 // 1_000_000, "balancer_start_ns": t0,
                "balancer_latency": 0, "balancer_latency_ns": 20_000}],
        timestamps={"request_start": t0, "router_start": t0 + 1_000, "router_end": t0 + 3_000,
                    "access_start": t0 + 5_000, "access_end": t0 + 30_000,
                    "upstream_start": t0 + 40_000, "upstream_connected": t0 + 45_000,
                    "upstream_first_byte": t0 + 400_000, "response_start": t0 + 420_000,
                    "upstream_end": t0 + 430_000, "response_end": t0 + 450_000},
    )


async def whole_request(rounds: int, n: int, sink_port: int) -> None:
    rt = relayq.Runtime()
    queue = {"max_batch_size": 500, "max_coalescing_delay": 1, "max_entries": 1_000_000}
    udp = {"host": "127.0.0.1", "port": sink_port, "queue": queue}
    plugins: list[tuple[str, Plugin]] = [
        ("http-log", HttpLogPlugin({"http_endpoint": "http://127.0.0.1:9/logs", "queue": queue},
                                   plugin_id="w-http", runtime=rt, sender=NullSender())),
        ("statsd", create_plugin("statsd", udp, plugin_id="w-statsd", runtime=rt)),
        ("datadog", create_plugin("datadog", udp, plugin_id="w-datadog", runtime=rt)),
        ("opentelemetry", OpenTelemetryPlugin(
            {"traces_endpoint": "http://127.0.0.1:9/v1/traces", "queue": queue},
            plugin_id="w-otel", runtime=rt, sender=NullSender())),
        ("zipkin", ZipkinPlugin(
            {"http_endpoint": "http://127.0.0.1:9/api/v2/spans", "sample_ratio": 1,
             "queue": queue}, plugin_id="w-zipkin", runtime=rt, sender=NullSender())),
    ]

    async def cpu_per_request(plugin: Plugin | None) -> float:
        contexts = [gateway_context(i) for i in range(n)]
        start = time.process_time_ns()
        if plugin is None:
            for ctx in contexts:
                serialize(ctx)
        else:
            for phase in (plugin.access, plugin.header_filter, plugin.log):
                for ctx in contexts:
                    phase(ctx)
            await rt.drain(timeout=60)  # the batch handlers' share
        return (time.process_time_ns() - start) / n

    results: dict[str, list[float]] = {}
    for _ in range(rounds):  # interleaved, so a busy moment of the machine hits all alike
        results.setdefault("serialize() alone", []).append(await cpu_per_request(None))
        for name, plugin in plugins:
            results.setdefault(name, []).append(await cpu_per_request(plugin))
    await rt.aclose(timeout=30)
    baseline = statistics.median(results.pop("serialize() alone"))
    print("whole request: all phases + batch handler share, CPU per request (median of rounds)")
    total = 0.0
    for name, samples in results.items():
        ns = statistics.median(samples)
        total += ns
        print(f"  {name:<20} {ns / 1000:8.2f} us   {ns / baseline:5.2f}x serialize()")
    print(f"  {'five plugins':<20} {total / 1000:8.2f} us   {total / baseline:5.2f}x serialize()")


async def request_path_floor(rounds: int, n: int) -> None:
    rt = relayq.Runtime()
    queue = {"max_batch_size": 500, "max_coalescing_delay": 1, "max_entries": 1_000_000}
    otel = OpenTelemetryPlugin({"traces_endpoint": "http://127.0.0.1:9/v1/traces",
                                "queue": queue}, plugin_id="f-otel", runtime=rt,
                               sender=NullSender())
    zipkin = ZipkinPlugin({"http_endpoint": "http://127.0.0.1:9/api/v2/spans",
                           "sample_ratio": 1, "queue": queue}, plugin_id="f-zipkin",
                          runtime=rt, sender=NullSender())
    confs = [relayq.QueueConfig(name=f"floor-{i}", max_batch_size=500, max_coalescing_delay=1,
                                max_entries=1_000_000) for i in range(5)]

    async def discard(conf: Any, entries: list[Any]) -> bool:
        return True

    def propagation(ctx: RequestContext) -> None:
        otel.access(ctx)
        zipkin.access(ctx)
        otel.header_filter(ctx)
        zipkin.header_filter(ctx)

    def hand_over(ctx: RequestContext) -> None:
        for conf in confs:
            rt.enqueue(conf, discard, None, ctx)

    parts: dict[str, Callable[[RequestContext], Any]] = {
        "trace propagation (otel + zipkin access, header_filter)": propagation,
        "hand-over (5 enqueues of the request)": hand_over,
        "serialize() (http-log's entry)": serialize,
    }
    results: dict[str, list[float]] = {name: [] for name in parts}
    for _ in range(rounds):
        for name, call in parts.items():
            contexts = [gateway_context(i) for i in range(n)]
            start = time.process_time_ns()
            for ctx in contexts:
                call(ctx)
            results[name].append((time.process_time_ns() - start) / n)
            await rt.drain(timeout=60)
    await rt.aclose(timeout=30)
    print("request-path floor, CPU per request (median of rounds)")
    total = 0.0
    for name, samples in results.items():
        ns = statistics.median(samples)
        total += ns
        print(f"  {name:<56} {ns / 1000:6.2f} us")
    print(f"  {'floor with every encoder but serialize() elsewhere':<56} {total / 1000:6.2f} us")


# ------------------------------------------------------------------------------ end to end


def free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class HttpCollector:
    """bench/_receiver.py in its own process."""

    def __enter__(self) -> HttpCollector:
        self.dir = tempfile.TemporaryDirectory()
        port_file = Path(self.dir.name) / "port"
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "_receiver.py"), str(port_file)]
        )
        deadline = time.monotonic() + 10
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline:
                raise RuntimeError("bench/_receiver.py did not start")
            time.sleep(0.02)
        self.port = int(port_file.read_text())
        return self

    def count(self) -> int:
        with socket.create_connection(("127.0.0.1", self.port)) as sock:
            sock.sendall(b"GET /count HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data or not data.split(b"\r\n\r\n", 1)[1]:
                data += sock.recv(4096)
        return int(data.split(b"\r\n\r\n", 1)[1])

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        self.dir.cleanup()


class StatsdServer:
    """Etsy's statsd with no backend and no flush during the run; counts via its mgmt port."""

    def __enter__(self) -> StatsdServer:
        node = shutil.which("node")
        stats_js = ROOT / "tests" / "node" / "node_modules" / "statsd" / "stats.js"
        if node is None or not stats_js.exists():
            raise RuntimeError("node and tests/node/node_modules/statsd are needed (scripts/test)")
        self.port = free_port(socket.SOCK_DGRAM)
        self.mgmt = free_port(socket.SOCK_STREAM)
        self.dir = tempfile.TemporaryDirectory()
        config = Path(self.dir.name) / "config.js"
        config.write_text(
            json.dumps(
                {
                    "address": "127.0.0.1",
                    "port": self.port,
                    "mgmt_address": "127.0.0.1",
                    "mgmt_port": self.mgmt,
                    "flushInterval": 3_600_000,
                    "backends": [],
                    "automaticConfigReload": False,
                }
            )
        )
        self.proc = subprocess.Popen(
            [node, "stats.js", str(config)],
            cwd=stats_js.parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                self.metrics_received()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def metrics_received(self) -> int:
        with socket.create_connection(("127.0.0.1", self.mgmt), timeout=2) as sock:
            sock.sendall(b"counters\n")
            data = b""
            while b"END" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        match = re.search(rb"'statsd\.metrics_received': (\d+)", data)
        return int(match.group(1)) if match else 0

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        self.dir.cleanup()


async def deliver(plugin: Plugin, rt: relayq.Runtime, n: int) -> float:
    """Seconds from the first log call until every entry was handed to the receiver."""
    contexts = [context(i) for i in range(BLOCK)]
    t0 = time.perf_counter()
    for _ in range(n // BLOCK):
        for c in contexts:
            plugin.log(c)
        await asyncio.sleep(0)
    await rt.drain(timeout=120)
    return time.perf_counter() - t0


async def end_to_end(n: int) -> None:
    queue = {"max_entries": 1_000_000, "max_batch_size": 100, "max_coalescing_delay": 0.05}
    print(f"end to end, {n} entries each (from first log() until drained)")
    with HttpCollector() as collector:
        rt = relayq.Runtime()
        plugin = create_plugin(
            "http-log",
            {"http_endpoint": f"http://127.0.0.1:{collector.port}/logs", "queue": queue},
            plugin_id="e2e-http",
            runtime=rt,
        )
        seconds = await deliver(plugin, rt, n)
        await rt.aclose(timeout=10)
        received = collector.count()
        print(
            f"  http-log -> bench/_receiver.py   {n / seconds:9.0f} entries/s"
            f"   ({received} of {n} received, batches of 100)"
        )
    with StatsdServer() as statsd:
        for name, extra, per_entry in (
            ("statsd", {"udp_packet_size": 1400}, 12),  # default metrics: 12 lines a request
            ("datadog", {}, 6),  # default metrics: 6 lines, one datagram each
        ):
            before = statsd.metrics_received()
            rt = relayq.Runtime()
            plugin = create_plugin(
                name,
                {"host": "127.0.0.1", "port": statsd.port, "queue": queue, **extra},
                plugin_id=f"e2e-{name}",
                runtime=rt,
            )
            seconds = await deliver(plugin, rt, n)
            await rt.aclose(timeout=10)
            await asyncio.sleep(0.3)  # let the daemon read what is still in its socket buffer
            counted = statsd.metrics_received() - before
            print(
                f"  {name:<8} -> Etsy statsd (UDP)    {n / seconds:9.0f} entries/s"
                f"   ({counted} of {n * per_entry} metric lines counted by the daemon)"
            )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=5000, help="requests per log-phase round")
    parser.add_argument("--e2e", type=int, default=20000, help="entries per end-to-end run")
    args = parser.parse_args()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:  # bound, never read
        sink.bind(("127.0.0.1", 0))
        await log_phase(args.rounds, args.n, sink.getsockname()[1])
        await whole_request(args.rounds, args.n, sink.getsockname()[1])
    await request_path_floor(args.rounds, args.n)
    await end_to_end(args.e2e)


if __name__ == "__main__":
    asyncio.run(main())
