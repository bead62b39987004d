"""The Zipkin plugin: schema, propagation, the spans Kong reports, and Zipkin v2 JSON received
by a real HTTP server on 127.0.0.1, validated against the Zipkin v2 span model."""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import socket
from typing import Any

import pytest

import relayq
from relayq.plugins import PluginConfigError, create_plugin
from relayq.plugins import _propagation as prop
from relayq.plugins._http import MemoryHttpSender
from relayq.plugins.zipkin import SCHEMA, ZipkinConf, ZipkinPlugin, parse_request_tags, send_spans
from relayq.serializer import RequestContext
from tests.support.http_receiver import HttpReceiver, Reply

TRACE = "0af7651916cd43dd8448eb211c80319c"
TRACE64 = "8448eb211c80319c"
CALLER = "b7ad6b7169203331"
GRANDPARENT = "00f067aa0ba902b7"
MS = 1_700_000_000_000  # epoch milliseconds
NS = MS * 1_000_000

# ------------------------------------------------------------------ Zipkin v2 span model

_HEX16 = re.compile(r"[0-9a-f]{16}")
_TRACE_ID = re.compile(r"[0-9a-f]{16}|[0-9a-f]{32}")
_SPAN_KEYS = {
    "traceId",
    "name",
    "parentId",
    "id",
    "kind",
    "timestamp",
    "duration",
    "debug",
    "shared",
    "localEndpoint",
    "remoteEndpoint",
    "annotations",
    "tags",
}
_ENDPOINT_KEYS = {"serviceName", "ipv4", "ipv6", "port"}
_YEAR_2000_US = 946_684_800_000_000
_YEAR_2100_US = 4_102_444_800_000_000


def _check_endpoint(endpoint: Any, where: str) -> None:
    assert isinstance(endpoint, dict), where
    assert set(endpoint) <= _ENDPOINT_KEYS, (
        f"{where}: unknown keys {set(endpoint) - _ENDPOINT_KEYS}"
    )
    if "serviceName" in endpoint:
        assert isinstance(endpoint["serviceName"], str) and endpoint["serviceName"], where
    if "ipv4" in endpoint:
        assert isinstance(ipaddress.ip_address(endpoint["ipv4"]), ipaddress.IPv4Address), where
    if "ipv6" in endpoint:
        assert isinstance(ipaddress.ip_address(endpoint["ipv6"]), ipaddress.IPv6Address), where
    if "port" in endpoint:
        port = endpoint["port"]
        assert type(port) is int and 1 <= port <= 65535, where


def validate_zipkin_v2(span: Any) -> None:
    """The Zipkin v2 API's Span model (zipkin2-api.yaml): required fields, id formats, kind
    enum, integer microsecond timestamps, endpoints and string-to-string tags."""
    assert isinstance(span, dict)
    assert set(span) <= _SPAN_KEYS, f"unknown keys {set(span) - _SPAN_KEYS}"
    assert _TRACE_ID.fullmatch(span["traceId"]) and int(span["traceId"], 16) != 0
    assert _HEX16.fullmatch(span["id"]) and int(span["id"], 16) != 0
    if "parentId" in span:
        assert _HEX16.fullmatch(span["parentId"]) and span["parentId"] != span["id"]
    assert span.get("kind") in ("CLIENT", "SERVER", "PRODUCER", "CONSUMER")
    assert isinstance(span["name"], str) and span["name"]
    for key in ("timestamp", "duration"):
        assert type(span[key]) is int, f"{key} must be an integer"
        assert span[key] >= 1
    assert _YEAR_2000_US < span["timestamp"] < _YEAR_2100_US, "timestamp must be in microseconds"
    _check_endpoint(span["localEndpoint"], "localEndpoint")
    if span.get("remoteEndpoint") is not None:
        _check_endpoint(span["remoteEndpoint"], "remoteEndpoint")
    if "tags" in span:
        assert isinstance(span["tags"], dict) and span["tags"]
        for key, value in span["tags"].items():
            assert isinstance(key, str) and isinstance(value, str) and value != ""
    if "annotations" in span:
        assert span["annotations"]
        for annotation in span["annotations"]:
            assert set(annotation) == {"timestamp", "value"}
            assert type(annotation["timestamp"]) is int
            assert _YEAR_2000_US < annotation["timestamp"] < _YEAR_2100_US
            assert isinstance(annotation["value"], str) and annotation["value"]


def received_spans(receiver: HttpReceiver) -> list[dict[str, Any]]:
    spans = []
    for request in receiver.requests:
        assert request.method == "POST"
        assert request.headers["content-type"] == "application/json"
        body = json.loads(request.body)
        assert isinstance(body, list), "Zipkin bodies are always JSON arrays"
        for span in body:
            validate_zipkin_v2(span)
        spans.extend(body)
    return spans


# ------------------------------------------------------------------------------ helpers


@pytest.fixture
def receiver():
    with HttpReceiver() as rx:
        yield rx


def new_plugin(rt: relayq.Runtime, url: str | None, **config: Any) -> ZipkinPlugin:
    conf: dict[str, Any] = {"http_endpoint": url, "sample_ratio": 1, **config}
    return ZipkinPlugin(conf, plugin_id="zipkin-1", runtime=rt)


def proxied_context(**overrides: Any) -> RequestContext:
    ctx = RequestContext(
        method="GET",
        host="shop.example.com",
        path="/cart",
        headers={
            "x-b3-traceid": TRACE,
            "x-b3-spanid": CALLER,
            "x-b3-parentspanid": GRANDPARENT,
            "x-b3-sampled": "1",
        },
        client_ip="198.51.100.7",
        client_port=50123,
        status=200,
        service={"id": "svc-1", "name": "cart-service", "protocol": "http"},
        route={"id": "route-1", "name": "cart-route", "paths": ["/cart"]},
        consumer={"id": "consumer-1"},
        credential={"id": "cred-1"},
        tries=[
            {
                "ip": "10.0.0.1",
                "port": 8080,
                "balancer_start": MS + 3,
                "balancer_latency": 2,
                "state": "failed",
                "code": 503,
            },
            {
                "ip": "fd00::2",
                "port": 8081,
                "balancer_start": MS + 6,
                "balancer_latency": 1,
                "hostname": "cart.internal",
            },
        ],
        timestamps={
            "request_start": NS,
            "access_start": NS + 1_000_000,
            "access_end": NS + 2_000_000,
            "upstream_start": NS + 3_000_000,
            "response_start": NS + 20_000_000,
            "response_end": NS + 25_000_000,
        },
    )
    for key, value in overrides.items():
        setattr(ctx, key, value)
    return ctx


def run_request(plugin: ZipkinPlugin, ctx: RequestContext) -> None:
    plugin.access(ctx)
    plugin.header_filter(ctx)
    plugin.log(ctx)


def by_kind_and_name(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {span["name"]: span for span in spans}


# ------------------------------------------------------------------------------- schema


def test_schema_defaults_match_kong():
    conf = SCHEMA.validate({})
    assert conf["local_service_name"] == "kong"
    assert conf["http_endpoint"] is None
    assert conf["sample_ratio"] == 0.001
    assert conf["include_credential"] is True
    assert conf["traceid_byte_count"] == 16
    assert conf["header_type"] == "preserve"
    assert conf["default_header_type"] == "b3"
    assert conf["tags_header"] == "Zipkin-Tags"
    assert conf["http_span_name"] == "method"
    assert (conf["connect_timeout"], conf["send_timeout"], conf["read_timeout"]) == (
        2000,
        5000,
        5000,
    )
    assert conf["phase_duration_flavor"] == "annotations"
    assert conf["queue"]["max_batch_size"] == 1
    assert conf["propagation"]["default_format"] == "b3"


def test_schema_errors_use_kongs_messages():
    with pytest.raises(PluginConfigError) as info:
        SCHEMA.validate(
            {
                "sample_ratio": 1.5,
                "traceid_byte_count": 12,
                "http_span_name": "path",
                "phase_duration_flavor": "logs",
                "static_tags": [{"name": "http.method", "value": "x"}, {"name": "ok"}],
            }
        )
    errors = info.value.errors
    assert errors["sample_ratio"] == "value should be between 0 and 1"
    assert errors["traceid_byte_count"] == "expected one of: 8, 16"
    assert errors["http_span_name"] == "expected one of: method, method_path"
    assert errors["phase_duration_flavor"] == "expected one of: annotations, tags"
    assert errors["static_tags[1].name"].startswith("must not be one of: error, http.method")
    assert errors["static_tags[2].value"] == "required field missing"
    with pytest.raises(PluginConfigError) as info:
        SCHEMA.validate({"static_tags": [{"name": "a", "value": "1"}, {"name": "a", "value": "2"}]})
    assert info.value.errors == {"static_tags": "repeated tags are not allowed: a"}


def test_deprecated_header_fields_warn_with_kongs_text(caplog):
    caplog.set_level(logging.WARNING)
    SCHEMA.validate({"header_type": "w3c", "default_header_type": "w3c"})
    assert (
        "zipkin: config.header_type is deprecated, please use config.propagation options instead"
        in caplog.messages
    )
    assert (
        "zipkin: config.default_header_type is deprecated, please use "
        "config.propagation.default_format instead" in caplog.messages
    )


def test_registered_with_kongs_name_priority_and_queue_name():
    rt = relayq.Runtime()
    plugin = create_plugin("zipkin", {}, plugin_id="z-9", runtime=rt)
    assert isinstance(plugin, ZipkinPlugin)
    assert plugin.priority == 100000
    assert plugin.queue.name == "z-9"
    assert plugin.queue.max_batch_size == 1
    rt.shutdown(1)


def test_request_tags_header_parsing():
    tags, errors = parse_request_tags(["foo=bar; baz = qux quux ;;", "broken; x=1"])
    assert tags == {"foo": "bar", "baz": "qux quux", "x": "1"}
    assert errors == ["broken"]


# ------------------------------------------------------------------------- propagation


async def test_b3_context_is_shared_with_the_caller_and_the_proxy_span_propagated():
    rt = relayq.Runtime()
    plugin = new_plugin(rt, None)
    ctx = proxied_context()
    plugin.access(ctx)
    state = ctx.plugin_data["zipkin-1"]
    request, proxy = state.request_span, state.proxy_span
    # B3 shares the span between client and server: Kong's server span reuses its id
    assert request.span_id.hex() == CALLER
    assert request.parent_id.hex() == GRANDPARENT
    assert proxy.parent_id == request.span_id
    assert ctx.upstream_headers == {
        "x-b3-traceid": TRACE,
        "x-b3-spanid": proxy.span_id.hex(),
        "x-b3-parentspanid": CALLER,
        "x-b3-sampled": "1",
    }
    assert ctx.trace_id == {"b3": TRACE}
    await rt.aclose(5)


async def test_w3c_parent_becomes_the_server_spans_parent_and_w3c_is_preserved():
    rt = relayq.Runtime()
    plugin = new_plugin(rt, None)
    ctx = proxied_context(headers={"traceparent": f"00-{TRACE}-{CALLER}-01"})
    plugin.access(ctx)
    state = ctx.plugin_data["zipkin-1"]
    assert state.request_span.parent_id.hex() == CALLER
    assert state.request_span.span_id.hex() != CALLER
    assert ctx.upstream_headers == {
        "traceparent": f"00-{TRACE}-{state.proxy_span.span_id.hex()}-01"
    }
    await rt.aclose(5)


async def test_without_incoming_headers_kong_defaults_to_b3_and_traceid_byte_count():
    rt = relayq.Runtime()
    plugin = new_plugin(rt, None, traceid_byte_count=8)
    ctx = proxied_context(headers={})
    plugin.access(ctx)
    assert len(ctx.upstream_headers["x-b3-traceid"]) == 16
    assert ctx.upstream_headers["x-b3-sampled"] == "1"
    await rt.aclose(5)


async def test_null_endpoint_propagates_headers_but_queues_nothing(receiver):
    rt = relayq.Runtime()
    plugin = new_plugin(rt, None)
    ctx = proxied_context()
    run_request(plugin, ctx)
    assert "x-b3-traceid" in ctx.upstream_headers
    assert rt.stats() == {}
    assert await send_spans(ZipkinConf(None, 1.0, MemoryHttpSender()), [{"id": "x"}]) is True
    await rt.aclose(5)


# ------------------------------------------------------------------------------- export


async def test_spans_reach_the_server_as_zipkin_v2_json(receiver):
    rt = relayq.Runtime()
    plugin = new_plugin(
        rt,
        receiver.url + "/api/v2/spans",
        static_tags=[{"name": "env", "value": "test"}],
        http_response_header_for_traceid="X-Trace",
    )
    ctx = proxied_context()
    ctx.headers["zipkin-tags"] = "team=checkout; tier = gold"
    run_request(plugin, ctx)
    assert ctx.response_headers_to_add == {"X-Trace": TRACE}
    assert await rt.drain(10)

    assert len(receiver.requests) == 4  # max_batch_size 1: one POST per span
    assert all(r.path == "/api/v2/spans" for r in receiver.requests)
    spans = received_spans(receiver)
    assert [s["name"] for s in spans] == [
        "GET (balancer try 1)",
        "GET (balancer try 2)",
        "GET (proxy)",
        "GET",
    ]
    named = by_kind_and_name(spans)
    first, second = named["GET (balancer try 1)"], named["GET (balancer try 2)"]
    proxy, request = named["GET (proxy)"], named["GET"]
    assert {s["traceId"] for s in spans} == {TRACE}
    assert request["id"] == CALLER and request["parentId"] == GRANDPARENT
    for child in (first, second, proxy):
        assert child["parentId"] == CALLER
        assert child["kind"] == "CLIENT"
    assert request["kind"] == "SERVER"
    assert {s["localEndpoint"]["serviceName"] for s in spans} == {"kong"}

    assert (first["timestamp"], first["duration"]) == ((MS + 3) * 1000, 2000)
    assert first["tags"] == {
        "kong.balancer.try": "1",
        "error": "true",
        "kong.balancer.state": "failed",
        "http.status_code": "503",
        "kong.service": "svc-1",
        "kong.service_name": "cart-service",
        "kong.route": "route-1",
        "kong.route_name": "cart-route",
    }
    assert first["remoteEndpoint"] == {
        "serviceName": "cart-service",
        "port": 8080,
        "ipv4": "10.0.0.1",
    }
    assert second["remoteEndpoint"] == {
        "serviceName": "cart-service",
        "port": 8081,
        "ipv6": "fd00::2",
    }
    assert "error" not in second["tags"]

    assert proxy["timestamp"] == (NS + 1_000_000) // 1000
    assert proxy["duration"] == 24_000  # access start to response end
    assert proxy["tags"]["peer.hostname"] == "cart.internal"
    assert proxy["remoteEndpoint"]["port"] == 8081
    assert [a["value"] for a in proxy["annotations"]] == ["khs", "khf", "kbs", "kas", "kaf", "kbf"]
    annotation = {a["value"]: a["timestamp"] for a in proxy["annotations"]}
    assert annotation["kas"] == (NS + 1_000_000) // 1000
    assert annotation["kaf"] == (NS + 2_000_000) // 1000
    assert annotation["khs"] == (NS + 20_000_000) // 1000
    assert annotation["kbf"] == (NS + 25_000_000) // 1000

    assert request["timestamp"] == NS // 1000
    assert request["remoteEndpoint"] == {"port": 50123, "ipv4": "198.51.100.7"}
    assert request["tags"] == {
        "lc": "kong",
        "http.method": "GET",
        "http.host": "shop.example.com",
        "http.path": "/cart",
        "http.protocol": "HTTP/1.1",
        "env": "test",
        "team": "checkout",
        "tier": "gold",
        "http.status_code": "200",
        "kong.consumer": "consumer-1",
        "kong.credential": "cred-1",
        "kong.node.id": prop.node_id(),
    }
    assert [a["value"] for a in request["annotations"]] == ["krs", "krf"]
    await rt.aclose(5)


async def test_tags_flavour_reports_phase_durations_as_tags(receiver):
    rt = relayq.Runtime()
    plugin = new_plugin(
        rt,
        receiver.url,
        phase_duration_flavor="tags",
        include_credential=False,
        http_span_name="method_path",
        default_service_name="upstream-default",
    )
    run_request(plugin, proxied_context(service=None, route=None, tries=[]))
    assert await rt.drain(10)
    named = by_kind_and_name(received_spans(receiver))
    proxy, request = named["GET /cart (proxy)"], named["GET /cart"]
    assert "annotations" not in proxy and "annotations" not in request
    assert proxy["tags"] == {"kong.access.duration_ms": "1"}
    assert request["tags"]["kong.rewrite.duration_ms"] == "1"
    assert "kong.credential" not in request["tags"]
    assert proxy["remoteEndpoint"] == {"serviceName": "upstream-default"}
    await rt.aclose(5)


async def test_remote_endpoint_is_null_without_port_or_service_name(receiver):
    rt = relayq.Runtime()
    plugin = new_plugin(rt, receiver.url)
    run_request(plugin, proxied_context(client_port=0, service=None, route=None, tries=[]))
    assert await rt.drain(10)
    for span in received_spans(receiver):
        assert span["remoteEndpoint"] is None
    await rt.aclose(5)


async def test_spans_of_one_batch_are_posted_as_one_array(receiver):
    rt = relayq.Runtime()
    plugin = new_plugin(
        rt, receiver.url, queue={"max_batch_size": 100, "max_coalescing_delay": 0.1}
    )
    for _ in range(3):
        run_request(plugin, proxied_context(headers={}, tries=[]))
    assert await rt.drain(10)
    spans = received_spans(receiver)
    assert len(spans) == 6
    assert len(receiver.requests) < 6
    assert len({s["traceId"] for s in spans}) == 3
    await rt.aclose(5)


@pytest.mark.parametrize(
    ("headers", "ratio", "sent"),
    [
        ({}, 0, False),
        ({}, 1, True),
        ({"x-b3-traceid": TRACE, "x-b3-spanid": CALLER, "x-b3-sampled": "0"}, 1, False),
        ({"x-b3-traceid": TRACE, "x-b3-spanid": CALLER, "x-b3-sampled": "1"}, 0, True),
        ({"traceparent": f"00-{TRACE}-{CALLER}-00"}, 1, False),
    ],
)
async def test_sample_ratio_applies_only_without_an_incoming_decision(
    receiver, headers, ratio, sent
):
    rt = relayq.Runtime()
    plugin = new_plugin(rt, receiver.url, sample_ratio=ratio)
    ctx = proxied_context(headers=headers, tries=[])
    run_request(plugin, ctx)
    assert await rt.drain(10)
    assert bool(receiver.requests) is sent
    assert ctx.upstream_headers  # propagated either way
    await rt.aclose(5)


async def test_non_2xx_is_retried_with_kongs_text_and_2xx_is_success(receiver, caplog):
    caplog.set_level(logging.WARNING)
    receiver.script(Reply(500), Reply(429), Reply(202))
    rt = relayq.Runtime()
    plugin = new_plugin(rt, receiver.url)
    run_request(plugin, proxied_context(tries=[]))  # proxy + request span, one POST each
    assert await rt.drain(10)
    assert len(receiver.requests) == 4
    assert receiver.requests[0].body == receiver.requests[1].body == receiver.requests[2].body
    stats = rt.stats()["zipkin-1"]
    assert stats.retries == 2
    assert stats.entries_sent == 2
    assert any(
        "zipkin server responded unexpectedly: 500 Internal Server Error" in m
        for m in caplog.messages
    )
    assert any(
        "zipkin server responded unexpectedly: 429 Too Many Requests" in m for m in caplog.messages
    )
    await rt.aclose(5)


async def test_transport_errors_fail_with_kongs_text():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    rt = relayq.Runtime()
    plugin = new_plugin(
        rt,
        f"http://127.0.0.1:{port}/api/v2/spans",
        queue={"max_retry_time": 0.05, "max_batch_size": 10, "max_coalescing_delay": 0},
    )
    run_request(plugin, proxied_context(tries=[]))
    assert await rt.drain(10)
    stats = rt.stats()["zipkin-1"]
    assert stats.last_error == "zipkin request failed: connection refused"
    assert stats.dropped["retry_exhausted"] == 2
    await rt.aclose(5)


async def test_log_only_host_still_reports_the_request(receiver):
    rt = relayq.Runtime()
    plugin = new_plugin(rt, receiver.url)
    ctx = proxied_context(tries=[])
    plugin.log(ctx)
    assert await rt.drain(10)
    named = by_kind_and_name(received_spans(receiver))
    assert named["GET"]["id"] == CALLER
    assert [a["value"] for a in named["GET (proxy)"]["annotations"]] == ["kas", "kaf", "khf", "kbf"]
    await rt.aclose(5)


async def test_a_64_bit_incoming_trace_id_stays_64_bit(receiver):
    rt = relayq.Runtime()
    plugin = new_plugin(rt, receiver.url)
    ctx = proxied_context(headers={"b3": f"{TRACE64}-{CALLER}-1"}, tries=[])
    run_request(plugin, ctx)
    assert ctx.upstream_headers["b3"].startswith(f"{TRACE64}-")
    assert await rt.drain(10)
    assert {s["traceId"] for s in received_spans(receiver)} == {TRACE64}
    await rt.aclose(5)
