"""OpenTelemetry logs: records captured per request and per process, exported as OTLP
``ExportLogsServiceRequest`` to a real HTTP server, and the logs queue dropping the newest
records when full (counted)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

import relayq
from relayq.plugins import _propagation as prop
from relayq.plugins.opentelemetry import (
    OpenTelemetryPlugin,
    install_log_capture,
    log_capture,
    uninstall_log_capture,
)
from relayq.plugins.opentelemetry._logcapture import MAX_REQUEST_LOGS, severity
from relayq.serializer import RequestContext
from tests.support.http_receiver import HttpReceiver

TRACE = "0af7651916cd43dd8448eb211c80319c"
app_log = logging.getLogger("tests.app")


@pytest.fixture
def receiver():
    with HttpReceiver() as rx:
        yield rx


@pytest.fixture(autouse=True)
def fresh_capture():
    uninstall_log_capture()
    yield
    uninstall_log_capture()


def new_plugin(rt: relayq.Runtime, url: str, **config: Any) -> OpenTelemetryPlugin:
    conf = {
        "logs_endpoint": url + "/v1/logs",
        "queue": {"max_batch_size": 100, "max_coalescing_delay": 0.05},
        **config,
    }
    plugin = OpenTelemetryPlugin(conf, plugin_id="otel-logs", runtime=rt)
    capture = log_capture()
    assert capture is not None
    capture.take_worker_logs()  # whatever other code logged before this test
    return plugin


def records(requests: list[Any]) -> list[LogRecord]:
    out = []
    for request in requests:
        message = ExportLogsServiceRequest.FromString(request.body)
        assert len(message.resource_logs) == 1
        (scope_logs,) = message.resource_logs[0].scope_logs
        assert (scope_logs.scope.name, scope_logs.scope.version) == ("kong-internal", "0.1.0")
        out.extend(scope_logs.log_records)
    return out


def attributes(record: LogRecord) -> dict[str, Any]:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in record.attributes}


async def test_request_and_background_records_are_exported(receiver):
    rt = relayq.Runtime()
    plugin = new_plugin(rt, receiver.url)
    app_log.warning("background %s", "job")
    ctx = RequestContext(
        request_id="req-1", headers={"traceparent": f"00-{TRACE}-b7ad6b7169203331-01"}
    )
    plugin.access(ctx)
    app_log.error("order %d failed", 7)
    plugin.log(ctx)
    app_log.warning("after the request")  # not the request's any more
    assert await rt.drain(10)

    (request,) = receiver.wait_for(1)
    assert request.path == "/v1/logs"
    assert request.headers["content-type"] == "application/x-protobuf"
    background, during = records(receiver.requests)
    assert background.body.string_value == "background job"
    assert (background.severity_number, background.severity_text) == (13, "WARN")
    assert background.trace_id == b"" and background.span_id == b""
    assert "request.id" not in attributes(background)

    trace = ctx.plugin_data["otel-logs"]
    assert during.body.string_value == "order 7 failed"
    assert (during.severity_number, during.severity_text) == (17, "ERR")
    assert during.trace_id == bytes.fromhex(TRACE)
    assert during.span_id == trace.root_span_id
    assert during.flags == 1
    assert during.time_unix_nano == during.observed_time_unix_nano > 0
    attrs = attributes(during)
    assert attrs["request.id"] == "req-1"
    assert attrs["introspection.source"].endswith("test_opentelemetry_logs.py")
    assert attrs["introspection.name"] == "test_request_and_background_records_are_exported"
    assert attrs["introspection.current.line"] > 0
    capture = log_capture()
    assert capture is not None
    assert [r.body for r in capture.take_worker_logs()] == ["after the request"]
    await rt.aclose(5)


async def test_only_records_at_the_capture_level_are_kept(receiver):
    rt = relayq.Runtime()
    plugin = new_plugin(rt, receiver.url)
    app_log.setLevel(logging.DEBUG)
    try:
        ctx = RequestContext(request_id="r")
        plugin.access(ctx)
        app_log.info("not at the default level")
        install_log_capture(logging.INFO)
        app_log.info("now captured")
        app_log.debug("still below")
        plugin.log(ctx)
    finally:
        app_log.setLevel(logging.NOTSET)
    assert await rt.drain(10)
    assert [r.body.string_value for r in records(receiver.requests)] == ["now captured"]
    await rt.aclose(5)


async def test_a_full_logs_queue_drops_the_newest_records_and_counts_them(receiver):
    rt = relayq.Runtime()
    plugin = new_plugin(
        rt,
        receiver.url,
        queue={"max_entries": 2, "max_batch_size": 10, "max_coalescing_delay": 0.05},
    )
    ctx = RequestContext(request_id="burst")
    plugin.access(ctx)
    for i in range(5):
        app_log.warning("record %d", i)
    plugin.log(ctx)  # no await in between: the consumer has not taken anything yet
    assert plugin.logs_dropped == 3
    # the queue dropped nothing itself (drop-newest, as Kong), but stats() count the skipped ones
    assert dict(rt.stats()["otel-logs:logs"].dropped) == {
        **rt.stats()["otel-logs:logs"].dropped, "capacity": 0, "full": 3}
    assert await rt.drain(10)
    assert [r.body.string_value for r in records(receiver.requests)] == ["record 0", "record 1"]
    await rt.aclose(5)


async def test_logs_are_exported_for_unsampled_traces_too(receiver):
    rt = relayq.Runtime()
    plugin = new_plugin(
        rt, receiver.url, traces_endpoint=receiver.url + "/v1/traces", sampling_rate=0
    )
    ctx = RequestContext(request_id="quiet")
    plugin.access(ctx)
    app_log.warning("still worth knowing")
    plugin.log(ctx)
    assert await rt.drain(10)
    assert [r.path for r in receiver.requests] == ["/v1/logs"]
    (record,) = records(receiver.requests)
    assert record.flags == 0
    assert record.trace_id == ctx.plugin_data["otel-logs"].trace_id
    await rt.aclose(5)


def test_the_request_buffer_keeps_at_most_1000_records(caplog):
    rt = relayq.Runtime()
    plugin = OpenTelemetryPlugin(
        {"logs_endpoint": "http://127.0.0.1:9/v1/logs"}, plugin_id="cap", runtime=rt
    )
    ctx = RequestContext(request_id="noisy")
    plugin.access(ctx)
    with caplog.at_level(logging.INFO, "relayq.plugins.opentelemetry"):
        for i in range(MAX_REQUEST_LOGS + 5):
            app_log.warning("line %d", i)
    buffer = ctx.plugin_data["opentelemetry:request_logs"]
    assert len(buffer.records) == MAX_REQUEST_LOGS
    assert buffer.records[-1].body == f"line {MAX_REQUEST_LOGS - 1}"
    notices = [
        m
        for m in caplog.messages
        if m == "[observability] OpenTelemetry logs buffer is full: dropping new log entries."
    ]
    assert len(notices) == 1
    rt.shutdown(1)


def test_severity_follows_kongs_nginx_scale():
    assert severity(logging.DEBUG) == (5, "DEBUG")
    assert severity(logging.INFO) == (9, "INFO")
    assert severity(25) == (11, "NOTICE")
    assert severity(logging.WARNING) == (13, "WARN")
    assert severity(logging.ERROR) == (17, "ERR")
    assert severity(logging.CRITICAL) == (19, "CRIT")


def test_node_id_is_stable_within_the_process():
    assert prop.node_id() == prop.node_id()
    assert len(prop.node_id()) >= 8
