"""The tracing plugins behind a real host: relayq's ASGI middleware drives the phases, the app
sees the injected headers, and the spans reach a real collector on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import relayq
from relayq.asgi import RelayqMiddleware
from relayq.plugins.opentelemetry import uninstall_log_capture
from tests.support.http_receiver import HttpReceiver

TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER = "b7ad6b7169203331"


async def call(app: Any, headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[str, str]]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/orders",
        "raw_path": b"/orders",
        "query_string": b"",
        "headers": [(b"host", b"api.local"), *headers],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_spans_and_logs_through_the_asgi_middleware():
    seen: dict[str, str] = {}

    async def upstream(scope: Any, receive: Any, send: Any) -> None:
        seen.update({k.decode(): v.decode() for k, v in scope["headers"]})
        logging.getLogger("tests.app").warning("handled the order")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    rt = relayq.Runtime()
    with HttpReceiver() as collector:
        plugins = [
            {
                "name": "opentelemetry",
                "id": "otel-asgi",
                "config": {
                    "traces_endpoint": collector.url + "/v1/traces",
                    "logs_endpoint": collector.url + "/v1/logs",
                    "http_response_header_for_traceid": "x-trace-id",
                    "queue": {"max_batch_size": 10, "max_coalescing_delay": 0.05},
                },
            },
            {
                "name": "zipkin",
                "id": "zipkin-asgi",
                "config": {
                    "http_endpoint": collector.url + "/zipkin",
                    "sample_ratio": 1,
                    "propagation": {"extract": ["w3c"], "inject": ["b3"], "default_format": "b3"},
                },
            },
        ]
        app = RelayqMiddleware(upstream, plugins, runtime=rt, close_runtime=False)
        try:
            status, response_headers = await call(
                app, [(b"traceparent", f"00-{TRACE}-{CALLER}-01".encode())]
            )
            assert status == 200
            assert response_headers["x-trace-id"] == TRACE
            # zipkin (priority 100000) injected B3 first, then OpenTelemetry W3C
            assert seen["traceparent"].startswith(f"00-{TRACE}-")
            assert seen["x-b3-traceid"] == TRACE
            # the middleware schedules the log phase after the response: wait for its entries
            await wait_until(lambda: len(collector.requests) >= 4)
            assert await rt.drain(10)
        finally:
            uninstall_log_capture()
        by_path: dict[str, list[Any]] = {}
        for request in collector.requests:
            by_path.setdefault(request.path, []).append(request)

    (traces,) = by_path["/v1/traces"]
    spans = ExportTraceServiceRequest.FromString(traces.body).resource_spans[0].scope_spans[0].spans
    root = next(s for s in spans if s.name == "kong")
    balancer = next(s for s in spans if s.name == "kong.balancer")
    assert root.trace_id == bytes.fromhex(TRACE)
    assert root.parent_span_id == bytes.fromhex(CALLER)
    # the app (the upstream) received the balancer span as its parent
    assert seen["traceparent"] == f"00-{TRACE}-{balancer.span_id.hex()}-01"
    assert root.start_time_unix_nano <= balancer.start_time_unix_nano
    assert balancer.end_time_unix_nano <= root.end_time_unix_nano

    (logs,) = by_path["/v1/logs"]
    records = ExportLogsServiceRequest.FromString(logs.body).resource_logs[0].scope_logs[0]
    handled = [r for r in records.log_records if r.body.string_value == "handled the order"]
    assert len(handled) == 1
    assert handled[0].trace_id == bytes.fromhex(TRACE)
    assert handled[0].span_id == root.span_id

    zipkin_spans = [span for r in by_path["/zipkin"] for span in json.loads(r.body)]
    assert {s["name"] for s in zipkin_spans} == {"GET", "GET (proxy)"}
    assert {s["traceId"] for s in zipkin_spans} == {TRACE}
    await rt.aclose(5)
