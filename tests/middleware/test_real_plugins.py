"""The middleware with the five real plugins, sending to real receivers: an HTTP receiver for
http-log, OpenTelemetry and Zipkin, Etsy's StatsD daemon, and a raw UDP socket for Datadog."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from flask import Flask, request
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import relayq
from relayq import asgi, wsgi
from relayq.status import StatusListener
from tests.support.http_receiver import HttpReceiver, Received, Reply
from tests.support.sockets import UdpListener
from tests.support.statsd_daemon import StatsdDaemon

from .servers import UvicornThread, WsgiThread
from .test_asgi import make_app

FAST = {"max_batch_size": 10, "max_coalescing_delay": 0.05}


@pytest.fixture
def runtime() -> Iterator[relayq.Runtime]:
    rt = relayq.Runtime()
    yield rt
    rt.shutdown(timeout=2)


def by_path(rx: HttpReceiver, path: str) -> list[Received]:
    return [r for r in rx.requests if r.path == path]


def wait_path(rx: HttpReceiver, path: str, count: int = 1, timeout: float = 10) -> list[Received]:
    deadline = time.monotonic() + timeout
    while len(found := by_path(rx, path)) < count:
        assert time.monotonic() < deadline, f"{path}: {len(found)} of {count} requests arrived"
        time.sleep(0.01)
    return found


def test_asgi_with_all_five_plugins(runtime: relayq.Runtime) -> None:
    with HttpReceiver() as rx, StatsdDaemon() as statsd, UdpListener() as dogstatsd:
        plugins = [
            {"name": "http-log", "config": {"http_endpoint": f"{rx.url}/logs"}},
            {
                "name": "opentelemetry",
                "config": {"traces_endpoint": f"{rx.url}/v1/traces", "queue": FAST},
            },
            {"name": "zipkin", "config": {"http_endpoint": f"{rx.url}/zipkin", "sample_ratio": 1}},
            {"name": "statsd", "config": {"host": "127.0.0.1", "port": statsd.udp_port}},
            {"name": "datadog", "config": {"host": "127.0.0.1", "port": dogstatsd.port}},
        ]
        mw = asgi.RelayqMiddleware(make_app(), plugins=plugins, runtime=runtime)
        assert [p.name for p in mw.chain.plugins] == [
            "zipkin", "opentelemetry", "http-log", "statsd", "datadog"
        ]  # fmt: skip
        with UvicornThread(mw) as server:
            response = httpx.get(
                f"{server.url}/echo/5?a=1&a=2&flag", headers={"Authorization": "Bearer secret"}
            )
            seen = response.json()["headers"]
            (log,) = wait_path(rx, "/logs")
            (otlp,) = wait_path(rx, "/v1/traces")
            zipkin = wait_path(rx, "/zipkin")
            statsd.wait_until(lambda d: d.counters.get("kong.global.unmatched.request.count") == 1)
            datagrams = dogstatsd.wait_for(1)
        assert mw.chain.errors == {}

    entry = log.json()
    assert entry["request"]["method"] == "GET"
    assert entry["request"]["uri"] == "/echo/5?a=1&a=2&flag"
    assert entry["request"]["url"] == f"{server.url}/echo/5?a=1&a=2&flag"
    assert entry["request"]["querystring"] == {"a": ["1", "2"], "flag": True}
    assert entry["request"]["headers"]["authorization"] == "REDACTED"
    assert entry["request"]["size"] > 0 and entry["response"]["size"] > len(response.content)
    assert entry["response"]["status"] == 200 and entry["upstream_status"] == "200"
    assert entry["response"]["headers"]["x-app"] == "yes"
    assert entry["upstream_uri"] == "/echo/5?a=1&a=2&flag"
    assert entry["client_ip"] == "127.0.0.1" and entry["source"] == "upstream"
    latencies = entry["latencies"]
    assert latencies["proxy"] >= 50 and latencies["request"] >= latencies["proxy"]
    assert 0 <= latencies["kong"] < latencies["proxy"]
    assert abs(entry["started_at"] / 1000 - time.time()) < 60

    # The trace ids the app received are the ones the tracers exported and http-log logged.
    w3c_trace = seen["traceparent"].split("-")[1]
    assert entry["trace_id"] == {"w3c": w3c_trace, "b3": seen["x-b3-traceid"]}
    export = ExportTraceServiceRequest.FromString(otlp.body)
    spans = [s for rs in export.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert spans and {s.trace_id.hex() for s in spans} == {w3c_trace}
    zipkin_spans = [span for r in zipkin for span in r.json()]
    assert {s["traceId"] for s in zipkin_spans} == {seen["x-b3-traceid"]}
    assert any(s["kind"] == "SERVER" and s["tags"]["http.path"] == "/echo/5" for s in zipkin_spans)

    assert statsd.counters["kong.global.unmatched.status.200"] == 1
    assert any(d.startswith(b"kong.request.count:1|c|#") for d in datagrams)


def flask_app() -> Flask:
    app = Flask(__name__)

    @app.route("/hello", methods=["POST"])
    def hello() -> Any:
        return {"got": len(request.get_data()), "traceparent": request.headers.get("traceparent")}

    return app


def test_wsgi_with_http_log_and_opentelemetry(runtime: relayq.Runtime) -> None:
    with HttpReceiver() as rx:
        app = flask_app()
        app.wsgi_app = wsgi.RelayqMiddleware(  # type: ignore[method-assign]
            app.wsgi_app,
            plugins=[
                {"name": "http-log", "config": {"http_endpoint": f"{rx.url}/logs"}},
                {
                    "name": "opentelemetry",
                    "config": {"traces_endpoint": f"{rx.url}/v1/traces", "queue": FAST},
                },
            ],
            runtime=runtime,
        )
        with WsgiThread(app) as server:
            response = httpx.post(f"{server.url}/hello?x=1", content=b"y" * 100)
            (log,) = wait_path(rx, "/logs")
            (otlp,) = wait_path(rx, "/v1/traces")
    entry = log.json()
    assert entry["request"]["method"] == "POST"
    assert entry["request"]["uri"] == "/hello?x=1"
    assert entry["request"]["querystring"] == {"x": "1"}
    assert entry["request"]["size"] > 100
    assert entry["response"]["status"] == 200
    assert entry["response"]["size"] > len(response.content)
    trace_id = response.json()["traceparent"].split("-")[1]
    assert entry["trace_id"] == {"w3c": trace_id}
    export = ExportTraceServiceRequest.FromString(otlp.body)
    assert {s.trace_id.hex() for rs in export.resource_spans for ss in rs.scope_spans
            for s in ss.spans} == {trace_id}  # fmt: skip


@pytest.mark.parametrize("host", ["asgi", "wsgi"])
def test_slow_log_server_never_delays_responses(host: str, runtime: relayq.Runtime) -> None:
    rx = HttpReceiver(default=Reply(delay=5.0)).start()
    try:
        plugins = [{"name": "http-log", "config": {"http_endpoint": f"{rx.url}/logs"}}]
        if host == "asgi":
            server: Any = UvicornThread(
                asgi.RelayqMiddleware(
                    make_app(), plugins=plugins, runtime=runtime, shutdown_timeout=0.5
                )
            )
            path = "/plain"
        else:
            app = flask_app()
            app.wsgi_app = wsgi.RelayqMiddleware(  # type: ignore[method-assign]
                app.wsgi_app, plugins=plugins, runtime=runtime
            )
            server, path = WsgiThread(app), "/hello"
        with server, httpx.Client(base_url=server.url) as client:
            slowest = 0.0
            for _ in range(5):
                started = time.monotonic()
                assert client.request("GET" if host == "asgi" else "POST", path).status_code == 200
                slowest = max(slowest, time.monotonic() - started)
            rx.wait_for(1)  # the log server is busy with the first entry for 5 s
            # The last log phase may still be pending: it runs after its response was sent.
            deadline = time.monotonic() + 5
            while sum(s.depth + s.in_flight for s in runtime.stats().values()) < 5:
                assert time.monotonic() < deadline, runtime.stats()
                time.sleep(0.01)
            (stats,) = runtime.stats().values()
            assert stats.depth + stats.in_flight == 5 and stats.entries_sent == 0
        assert slowest < 0.5, f"a response took {slowest:.2f}s behind a 5 s log server"
    finally:
        rx.stop()


async def test_failing_log_server_shows_in_status_and_metrics() -> None:
    rt = relayq.Runtime()
    with HttpReceiver(default=Reply(500, body=b"down")) as rx:
        endpoint = f"http://user:hunter2@127.0.0.1:{rx.port}/logs"
        queue = {"initial_retry_delay": 0.01, "max_retry_time": 0.2}
        mw = asgi.RelayqMiddleware(
            make_app(),
            plugins=[{"name": "http-log", "config": {"http_endpoint": endpoint, "queue": queue}}],
            runtime=rt,
        )
        server = UvicornThread(mw).start()
        try:
            async with httpx.AsyncClient(base_url=server.url) as client:
                for _ in range(3):
                    assert (await client.get("/plain")).status_code == 200
            deadline = time.monotonic() + 10
            while sum(s.dropped.get("retry_exhausted", 0) for s in rt.stats().values()) < 3:
                assert time.monotonic() < deadline, rt.stats()
                time.sleep(0.02)
            async with StatusListener(runtime=rt) as listener, httpx.AsyncClient() as client:
                status = (await client.get(f"{listener.url}/status")).json()
                metrics = (await client.get(f"{listener.url}/metrics")).text
        finally:
            server.stop()
    assert rx.requests[0].headers["authorization"].startswith("Basic ")
    ((name, queue_status),) = status["workers"][0]["queues"].items()
    assert name.startswith(f"http://***@127.0.0.1:{rx.port}/logs:POST:")
    assert queue_status["dropped"]["retry_exhausted"] == 3
    assert queue_status["retries"] >= 3
    assert "500" in queue_status["last_error"]
    assert "hunter2" not in str(status) and "hunter2" not in metrics
    assert 'reason="retry_exhausted"' in metrics
