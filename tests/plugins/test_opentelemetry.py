"""The OpenTelemetry plugin end to end: propagation in access, spans in log, OTLP/HTTP protobuf
received by a real HTTP server on 127.0.0.1 and decoded with ``opentelemetry-proto``, retries
through a real ``relayq.Runtime``."""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

import relayq
from relayq.plugins import _propagation as prop
from relayq.plugins.opentelemetry import (
    OpenTelemetryPlugin,
    RequestTrace,
    SpanData,
    encode_traces,
    request_spans,
)
from relayq.serializer import RequestContext
from tests.support.http_receiver import HttpReceiver, Reply

TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
T0 = 1_700_000_000_000_000_000  # epoch ns


def value_of(v: AnyValue) -> tuple[str, Any]:
    kind = v.WhichOneof("value")
    return kind, getattr(v, kind) if kind else None


def attrs(kvs: list[KeyValue] | Any) -> dict[str, tuple[str, Any]]:
    return {kv.key: value_of(kv.value) for kv in kvs}


def timed_context(**overrides: Any) -> RequestContext:
    ctx = RequestContext(
        method="POST",
        scheme="https",
        host="api.example.com",
        path="/orders/7",
        query_string="expand=items",
        headers={"traceparent": f"00-{TRACE}-{CALLER_SPAN}-01", "tracestate": "vendor=1"},
        client_ip="203.0.113.9",
        request_id="req-42",
        status=201,
        route={"id": "r1", "paths": ["/orders"]},
        timestamps={
            "request_start": T0,
            "access_start": T0 + 1_000,
            "access_end": T0 + 2_000,
            "upstream_start": T0 + 3_000,
            "upstream_first_byte": T0 + 40_000,
            "response_start": T0 + 41_000,
            "response_end": T0 + 50_000,
        },
    )
    for key, value in overrides.items():
        setattr(ctx, key, value)
    return ctx


def new_plugin(rt: relayq.Runtime, endpoint: str, **config: Any) -> OpenTelemetryPlugin:
    conf = {
        "traces_endpoint": endpoint,
        "queue": {"max_batch_size": 50, "max_coalescing_delay": 0.05, "initial_retry_delay": 0.01},
        **config,
    }
    return OpenTelemetryPlugin(conf, plugin_id="otel-1", runtime=rt)


def run_request(plugin: OpenTelemetryPlugin, ctx: RequestContext) -> None:
    plugin.access(ctx)
    plugin.header_filter(ctx)
    plugin.log(ctx)


def decode(body: bytes) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest.FromString(body)


def all_spans(requests: list[Any]) -> list[Span]:
    return [
        span
        for r in requests
        for rs in decode(r.body).resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]


def closed_port_url() -> str:
    """A URL on 127.0.0.1 whose port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1/traces"


@pytest.fixture
def receiver():
    with HttpReceiver() as rx:
        yield rx


# ------------------------------------------------------------------------ span building


def trace_for(sampled: bool = True) -> RequestTrace:
    return RequestTrace(
        trace_id=bytes.fromhex(TRACE),
        root_span_id=b"\x01" * 8,
        balancer_span_id=b"\x02" * 8,
        parent_span_id=bytes.fromhex(CALLER_SPAN),
        sampled=sampled,
        flags=1,
    )


def test_root_span_has_kongs_name_kind_attributes_and_host_timings():
    (root, balancer) = request_spans(timed_context(), trace_for(), now_ns=T0 + 99_000)
    assert root.name == "kong" and root.kind == 2
    assert root.span_id == b"\x01" * 8
    assert root.parent_span_id == bytes.fromhex(CALLER_SPAN)
    assert (root.start_time_unix_nano, root.end_time_unix_nano) == (T0, T0 + 50_000)
    assert root.attributes == {
        "http.method": "POST",
        "http.url": "https://api.example.com/orders/7?expand=items",
        "http.host": "api.example.com",
        "http.scheme": "https",
        "http.flavor": "1.1",
        "http.client_ip": "203.0.113.9",
        "net.peer.ip": "203.0.113.9",
        "kong.request.id": "req-42",
        "http.status_code": 201,
        "http.route": "/orders",
    }
    # without balancer tries the upstream leg becomes one balancer span carrying the id that
    # was injected upstream
    assert balancer.name == "kong.balancer" and balancer.kind == 3
    assert balancer.span_id == b"\x02" * 8 and balancer.parent_span_id == b"\x01" * 8
    assert (balancer.start_time_unix_nano, balancer.end_time_unix_nano) == (
        T0 + 3_000,
        T0 + 50_000,
    )


def test_balancer_tries_become_client_spans_and_failed_tries_are_errors():
    tries = [
        {
            "ip": "10.0.0.1",
            "port": 8080,
            "balancer_start_ns": T0 + 3_000,
            "balancer_latency_ns": 500,
            "state": "failed",
            "code": 502,
        },
        {
            "ip": "10.0.0.2",
            "port": 8081,
            "balancer_start_ns": T0 + 10_000,
            "balancer_latency_ns": 700,
            "hostname": "backend.internal",
        },
    ]
    ctx = timed_context(tries=tries, service={"protocol": "http"}, upstream_uri="/v2/orders/7")
    ctx.timestamps.update(router_start=T0 + 500, router_end=T0 + 800)
    root, router, first, last = request_spans(ctx, trace_for(), now_ns=T0 + 99_000)
    assert router.name == "kong.router" and router.kind == 1
    assert (router.start_time_unix_nano, router.end_time_unix_nano) == (T0 + 500, T0 + 800)
    assert router.parent_span_id == root.span_id
    assert first.status_code == 2
    assert first.attributes == {
        "try_count": 1,
        "net.peer.ip": "10.0.0.1",
        "net.peer.port": 8080,
        "http.status_code": 502,
    }
    assert (first.start_time_unix_nano, first.end_time_unix_nano) == (T0 + 3_000, T0 + 3_500)
    assert first.span_id not in (b"\x02" * 8, root.span_id)
    assert last.status_code == 0
    assert last.span_id == b"\x02" * 8
    assert last.attributes["net.peer.name"] == "backend.internal"
    assert last.attributes["http.url"] == "http://backend.internal/v2/orders/7"
    # the last try ends when the response body ended, as Kong's does
    assert last.end_time_unix_nano == T0 + 50_000


def test_a_request_never_proxied_has_only_the_root_span_ended_now():
    ctx = RequestContext(timestamps={"request_start": T0})
    spans = request_spans(ctx, trace_for(), now_ns=T0 + 5)
    assert [s.name for s in spans] == ["kong"]
    assert spans[0].end_time_unix_nano == T0 + 5
    assert "http.status_code" not in spans[0].attributes


def test_encoding_types_attributes_like_kong_and_repairs_bad_text():
    span = SpanData(
        trace_id=b"\x07" * 8,  # short ids are left-padded like Kong's id formatter
        span_id=b"\x01" * 8,
        parent_span_id=b"",
        name="kong",
        kind=2,
        start_time_unix_nano=1,
        end_time_unix_nano=2,
        attributes={
            "http.status_code": 200,
            "n": 3,
            "b": True,
            "s": "x\udcff",
            "l": [1, "a"],
            "m": {"k": "v"},
            "none": None,
        },
        status_code=2,
    )
    message = decode(encode_traces([span], {"team": "edge"})).resource_spans[0]
    encoded = message.scope_spans[0].spans[0]
    assert encoded.trace_id == bytes(8) + b"\x07" * 8
    assert encoded.parent_span_id == b""
    assert encoded.status.code == Status.STATUS_CODE_ERROR
    values = attrs(encoded.attributes)
    assert values["http.status_code"] == ("int_value", 200)
    assert values["n"] == ("double_value", 3.0)
    assert values["b"] == ("bool_value", True)
    assert values["s"] == ("string_value", "x\ufffd")
    assert [value_of(v) for v in values["l"][1].values] == [
        ("double_value", 1.0),
        ("string_value", "a"),
    ]
    assert attrs(values["m"][1].values) == {"k": ("string_value", "v")}
    assert "none" not in values
    assert attrs(message.resource.attributes)["team"] == ("string_value", "edge")


# ------------------------------------------------------------------------------ access


async def test_access_propagates_the_incoming_w3c_context_upstream(receiver):
    rt = relayq.Runtime()
    plugin = new_plugin(rt, receiver.url + "/v1/traces")
    ctx = timed_context()
    plugin.access(ctx)
    trace = ctx.plugin_data["otel-1"]
    assert trace.trace_id == bytes.fromhex(TRACE)
    assert trace.parent_span_id == bytes.fromhex(CALLER_SPAN)
    assert ctx.upstream_headers == {
        "traceparent": f"00-{TRACE}-{trace.balancer_span_id.hex()}-01",
        "tracestate": "vendor=1",
    }
    assert ctx.trace_id == {"w3c": TRACE}
    await rt.aclose(5)


async def test_preserve_answers_b3_with_b3_and_the_root_span_as_parent(receiver):
    rt = relayq.Runtime()
    plugin = new_plugin(rt, receiver.url + "/v1/traces")
    ctx = timed_context(
        headers={"x-b3-traceid": TRACE, "x-b3-spanid": CALLER_SPAN, "x-b3-sampled": "1"}
    )
    plugin.access(ctx)
    trace = ctx.plugin_data["otel-1"]
    assert ctx.upstream_headers == {
        "x-b3-traceid": TRACE,
        "x-b3-spanid": trace.balancer_span_id.hex(),
        "x-b3-parentspanid": trace.root_span_id.hex(),
        "x-b3-sampled": "1",
    }
    await rt.aclose(5)


async def test_propagation_record_extracts_b3_clears_it_and_injects_w3c(receiver):
    rt = relayq.Runtime()
    plugin = new_plugin(
        rt,
        receiver.url + "/v1/traces",
        propagation={
            "extract": ["b3"],
            "clear": ["b3"],
            "inject": ["w3c"],
            "default_format": "w3c",
        },
    )
    ctx = timed_context(headers={"b3": f"{TRACE}-{CALLER_SPAN}-1"})
    plugin.access(ctx)
    assert ctx.upstream_headers_cleared == ["b3"]
    assert set(ctx.upstream_headers) == {"traceparent"}
    assert ctx.upstream_headers["traceparent"].startswith(f"00-{TRACE}-")
    await rt.aclose(5)


async def test_header_filter_adds_the_trace_id_response_header(receiver):
    rt = relayq.Runtime()
    plugin = new_plugin(rt, receiver.url, http_response_header_for_traceid="X-Trace-Id")
    ctx = timed_context(headers={})
    plugin.access(ctx)
    plugin.header_filter(ctx)
    assert ctx.response_headers_to_add == {"X-Trace-Id": ctx.plugin_data["otel-1"].trace_id.hex()}
    await rt.aclose(5)


# ------------------------------------------------------------------------------ export


async def test_spans_reach_the_collector_as_otlp_protobuf(receiver):
    rt = relayq.Runtime()
    plugin = new_plugin(
        rt,
        receiver.url + "/v1/traces",
        headers={"Authorization": "Bearer t0k3n"},
        resource_attributes={"deployment.environment": "test", "service.name": "edge"},
    )
    tries = [
        {
            "ip": "10.0.0.1",
            "port": 80,
            "balancer_start_ns": T0 + 3_000,
            "balancer_latency_ns": 1_000,
        }
    ]
    ctx = timed_context(tries=tries)
    run_request(plugin, ctx)
    trace = ctx.plugin_data["otel-1"]
    assert await rt.drain(10)
    (request,) = receiver.wait_for(1)
    assert request.method == "POST" and request.path == "/v1/traces"
    assert request.headers["content-type"] == "application/x-protobuf"
    assert request.headers["authorization"] == "Bearer t0k3n"

    message = decode(request.body)
    assert len(message.resource_spans) == 1
    resource_spans = message.resource_spans[0]
    assert attrs(resource_spans.resource.attributes) == {
        "service.name": ("string_value", "edge"),
        "service.instance.id": ("string_value", prop.node_id()),
        "service.version": ("string_value", relayq.__version__),
        "deployment.environment": ("string_value", "test"),
    }
    (scope_spans,) = resource_spans.scope_spans
    assert (scope_spans.scope.name, scope_spans.scope.version) == ("kong-internal", "0.1.0")
    root, balancer = scope_spans.spans
    for span in (root, balancer):
        assert span.trace_id == bytes.fromhex(TRACE)
        assert len(span.span_id) == 8
    assert root.name == "kong" and root.kind == Span.SPAN_KIND_SERVER
    assert root.span_id == trace.root_span_id
    assert root.parent_span_id == bytes.fromhex(CALLER_SPAN)
    assert (root.start_time_unix_nano, root.end_time_unix_nano) == (T0, T0 + 50_000)
    root_attrs = attrs(root.attributes)
    assert root_attrs["http.status_code"] == ("int_value", 201)
    assert root_attrs["http.url"] == (
        "string_value",
        "https://api.example.com/orders/7?expand=items",
    )
    assert root_attrs["kong.request.id"] == ("string_value", "req-42")
    assert balancer.name == "kong.balancer" and balancer.kind == Span.SPAN_KIND_CLIENT
    assert balancer.span_id == trace.balancer_span_id
    assert balancer.parent_span_id == root.span_id
    assert attrs(balancer.attributes) == {
        "try_count": ("double_value", 1.0),
        "net.peer.ip": ("string_value", "10.0.0.1"),
        "net.peer.port": ("double_value", 80.0),
    }
    stats = rt.stats()["otel-1:traces"]
    assert (stats.entries_sent, stats.batches_sent, stats.retries) == (2, 1, 0)
    await rt.aclose(5)


async def test_a_user_content_type_replaces_the_default(receiver):
    rt = relayq.Runtime()
    plugin = new_plugin(rt, receiver.url, headers={"content-type": "application/vnd.otlp"})
    run_request(plugin, timed_context())
    assert await rt.drain(10)
    (request,) = receiver.wait_for(1)
    assert [v for k, v in request.header_list if k.lower() == "content-type"] == [
        "application/vnd.otlp"
    ]
    await rt.aclose(5)


async def test_only_200_is_success_other_answers_are_retried_with_kongs_text(receiver, caplog):
    caplog.set_level(logging.WARNING)
    receiver.script(Reply(500, b"collector down"), Reply(202), Reply(200))
    rt = relayq.Runtime()
    plugin = new_plugin(rt, receiver.url + "/v1/traces")
    run_request(plugin, timed_context(headers={}))
    assert await rt.drain(10)
    received = receiver.requests
    assert len(received) == 3
    assert received[0].body == received[1].body == received[2].body
    assert "[otel] response error: 500, body: collector down" in caplog.messages
    assert "[otel] response error: 202, body: " in caplog.messages
    stats = rt.stats()["otel-1:traces"]
    assert stats.retries == 2 and stats.entries_sent == 2 and stats.dropped_total == 0
    assert stats.last_error == "response error: 202, body: "
    await rt.aclose(5)


async def test_transport_failures_are_reported_with_kongs_text(caplog):
    caplog.set_level(logging.WARNING)
    url = closed_port_url()
    rt = relayq.Runtime()
    plugin = new_plugin(
        rt, url, queue={"max_batch_size": 10, "max_coalescing_delay": 0, "max_retry_time": 0.05}
    )
    run_request(plugin, timed_context(headers={}))
    assert await rt.drain(10)
    stats = rt.stats()["otel-1:traces"]
    assert stats.last_error == "failed to send request: connection refused"
    assert stats.dropped["retry_exhausted"] == 2
    assert "[otel] failed to send request: connection refused" in caplog.messages
    await rt.aclose(5)


async def test_unsampled_traces_are_propagated_but_not_exported(receiver):
    rt = relayq.Runtime()
    plugin = new_plugin(rt, receiver.url)
    ctx = timed_context(headers={"traceparent": f"00-{TRACE}-{CALLER_SPAN}-00"})
    run_request(plugin, ctx)
    assert ctx.upstream_headers["traceparent"].endswith("-00")
    assert "otel-1:traces" not in rt.stats()

    rated = OpenTelemetryPlugin(
        {"traces_endpoint": receiver.url, "sampling_rate": 0}, plugin_id="otel-2", runtime=rt
    )
    ctx = timed_context(headers={})
    run_request(rated, ctx)
    assert ctx.upstream_headers["traceparent"].endswith("-00")
    assert "otel-2:traces" not in rt.stats()
    assert await rt.drain(5)
    assert receiver.requests == []
    await rt.aclose(5)


async def test_batches_of_many_requests_share_one_export(receiver):
    rt = relayq.Runtime()
    plugin = new_plugin(
        rt, receiver.url, queue={"max_batch_size": 200, "max_coalescing_delay": 0.2}
    )
    for _ in range(20):
        run_request(plugin, timed_context(headers={}))
    assert await rt.drain(10)
    spans = all_spans(receiver.requests)
    assert len(spans) == 40
    assert len(receiver.requests) < 5
    assert len({s.trace_id for s in spans}) == 20
    await rt.aclose(5)


async def test_log_without_access_still_reports_the_request(receiver):
    rt = relayq.Runtime()
    plugin = new_plugin(rt, receiver.url)
    ctx = timed_context(timestamps={"request_start": time.time_ns()})
    plugin.log(ctx)
    assert await rt.drain(10)
    (span,) = all_spans(receiver.wait_for(1))
    assert span.trace_id == bytes.fromhex(TRACE)
    assert ctx.upstream_headers == {}
    await rt.aclose(5)
