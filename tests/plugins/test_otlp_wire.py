"""The OTLP trace body written directly in the protobuf wire format (``_wire``) is the body
the ``opentelemetry-proto`` messages serialize to (``encode_traces_reference``): the same
bytes, hence the same message once decoded, and the same error for input they refuse."""

from __future__ import annotations

import math
import time
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from relayq.plugins._http import HttpResponse, HttpSender
from relayq.plugins.opentelemetry import OpenTelemetryPlugin
from relayq.plugins.opentelemetry._encode import (
    encode_traces,
    encode_traces_reference,
    fill_span,
)
from relayq.plugins.opentelemetry._spans import SpanData, request_spans
from relayq.plugins.opentelemetry._wire import signed_varint, varint
from relayq.serializer import RequestContext

decode = ExportTraceServiceRequest.FromString


def assert_same_body(spans: list[SpanData], resource: dict[Any, Any] | None) -> bytes:
    """``encode_traces`` gives the reference's bytes, or raises the reference's error."""
    try:
        expected = encode_traces_reference(spans, resource)
    except Exception as exc:  # the generated classes refuse the input: so must the encoder
        with pytest.raises(type(exc)):
            encode_traces(spans, resource)
        return b""
    body = encode_traces(spans, resource)
    assert body == expected
    return body


def span(attributes: dict[Any, Any] | None = None, **fields: Any) -> SpanData:
    values: dict[str, Any] = {
        "trace_id": b"\x01" * 16, "span_id": b"\x02" * 8, "parent_span_id": b"\x03" * 8,
        "name": "kong", "kind": 2, "start_time_unix_nano": 1_700_000_000_000_000_000,
        "end_time_unix_nano": 1_700_000_000_000_500_000, "attributes": attributes or {},
    }
    values.update(fields)
    return SpanData(**values)


# ------------------------------------------------------------------------------ properties

def strategies(hostile: bool) -> tuple[st.SearchStrategy[SpanData], st.SearchStrategy[Any]]:
    """Spans and resource attributes; ``hostile`` adds what the generated classes refuse
    (integers outside int64 or a double, enums outside int32, times outside uint64, text
    that is not UTF-8 even after repair) to the valid values."""
    texts = st.one_of(
        st.text(max_size=8),
        st.sampled_from(["", "é", "日本", "x\udcff", "\udc80\udcff", "a\x00b"]),
    )
    integers = st.one_of(
        st.integers(-3, 300),
        st.integers(-(2**63), 2**63 - 1),
        st.sampled_from([2**63 - 1, -(2**63), 2**64, -(2**70)]),  # last two: doubles only
    )
    floats = st.one_of(
        st.floats(),
        st.sampled_from([0.0, -0.0, 1.0, math.inf, -math.inf, math.nan, 1e300, 5e-324]),
    )
    int32s = st.one_of(st.integers(0, 5), st.integers(-(2**31), 2**31 - 1))
    times = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**64 - 1]))
    if hostile:
        texts = st.one_of(texts, st.just("\ud800"))
        integers = st.one_of(integers, st.sampled_from([2**63, -(2**63) - 1, 2**1100]))
        int32s = st.one_of(int32s, st.sampled_from([2**31, -(2**31) - 1]))
        times = st.one_of(times, st.sampled_from([-1, 2**64]))
        floats = st.one_of(floats, st.just(math.inf))  # int(inf) for http.status_code
    scalars = st.one_of(texts, st.booleans(), integers, floats)
    # None (skipped) and types set_value leaves unset (a KeyValue without value, an empty
    # AnyValue in a list) next to the ones it encodes.
    leaves = st.one_of(
        scalars, st.none(), st.sampled_from([b"bytes", Decimal("2.5"), Decimal(200), object()])
    )
    containers = st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.lists(children, max_size=3).map(tuple),
            st.dictionaries(st.one_of(texts, st.integers(-2, 2)), children, max_size=3),
        ),
        max_leaves=6,
    )
    values = st.one_of(scalars, st.none(), leaves, containers, containers)
    keys = st.one_of(
        st.sampled_from(["http.status_code", "try_count", "http.method", "", "é", "\udcff"]),
        texts,
    )
    ids = st.binary(max_size=20)
    spans = st.builds(
        SpanData,
        trace_id=ids,
        span_id=ids,
        parent_span_id=ids,
        name=st.one_of(st.sampled_from(["kong", "kong.balancer", ""]), texts,
                       st.text(min_size=200)),
        kind=int32s,
        start_time_unix_nano=times,
        end_time_unix_nano=times,
        attributes=st.one_of(st.dictionaries(keys, values, max_size=6), repeated_sets),
        status_code=int32s,
    )
    resources = st.one_of(
        st.none(),
        st.dictionaries(
            st.one_of(keys, st.sampled_from(["service.name", "service.version"])), values,
            max_size=4,
        ),
    )
    return spans, resources


# Few distinct values, so that attributes repeat from span to span as in a gateway's batch.
repeated_scalars = st.sampled_from(
    [0, 1, 0.0, -0.0, 1.0, True, False, 200, 200.0, "200", "GET", "", math.nan, -1]
)
repeated_sets = st.dictionaries(
    st.sampled_from(["http.status_code", "try_count", "a"]), repeated_scalars, max_size=3
)
valid_spans, valid_resources = strategies(hostile=False)
hostile_spans, hostile_resources = strategies(hostile=True)


@settings(max_examples=400, deadline=None)
@given(batch=st.lists(valid_spans, max_size=6), resource=valid_resources)
def test_wire_encoding_is_the_reference_encoding(
        batch: list[SpanData], resource: dict[Any, Any] | None) -> None:
    body = assert_same_body(batch, resource)
    assert decode(body).SerializeToString() == body


@settings(max_examples=200, deadline=None)
@given(batch=st.lists(hostile_spans, max_size=4), resource=hostile_resources)
def test_what_the_reference_refuses_the_wire_encoder_refuses(
        batch: list[SpanData], resource: dict[Any, Any] | None) -> None:
    assert_same_body(batch, resource)


@settings(max_examples=200, deadline=None)
@given(attribute_sets=st.lists(repeated_sets, min_size=1, max_size=8))
def test_repeated_attributes_encode_like_attributes_built_one_by_one(
        attribute_sets: list[dict[str, Any]]) -> None:
    batch = [span(attributes, span_id=bytes([i]) * 8)
             for i, attributes in enumerate(attribute_sets)]
    body = assert_same_body(batch, None)
    if not body:
        return
    expected = decode(body)
    scope = expected.resource_spans[0].scope_spans[0]
    del scope.spans[:]
    for one in batch:  # no cache: every attribute built on its own
        fill_span(scope.spans.add(), one)
    assert body == expected.SerializeToString()


@given(st.integers(0, 2**64 - 1))
def test_varint_round_trips(value: int) -> None:
    from google.protobuf.internal.decoder import _DecodeVarint

    encoded = varint(value)
    assert _DecodeVarint(encoded, 0) == (value, len(encoded))


# ------------------------------------------------------------------------------ examples


class _NullSender(HttpSender):
    async def request(self, method: str, url: str, body: bytes, headers: Any, *,
                      timeout: float = 10.0) -> HttpResponse:
        return HttpResponse(200)


def _gateway_context(i: int) -> RequestContext:
    t0 = time.time_ns()
    return RequestContext(
        method="GET", host="127.0.0.1", port=8000, path="/", headers={"host": "127.0.0.1"},
        client_ip="127.0.0.1", request_id=f"{i:032x}", status=200 + i % 3,
        route={"paths": ["/"]},
        service={"host": "127.0.0.1", "port": 9000, "protocol": "http"},
        tries=[{"ip": "127.0.0.1", "port": 9000, "hostname": "backend", "state": "failed",
                "code": 502, "balancer_start_ns": t0, "balancer_latency_ns": 10},
               {"ip": "127.0.0.2", "port": 9000, "balancer_start_ns": t0 + 20}],
        timestamps={"request_start": t0, "router_start": t0 + 1, "router_end": t0 + 3,
                    "upstream_start": t0 + 10, "response_end": t0 + 50},
    )


def test_a_gateway_batch_encodes_like_the_reference():
    plugin = OpenTelemetryPlugin({"traces_endpoint": "http://127.0.0.1:9/v1/traces"},
                                 plugin_id="wire", sender=_NullSender())
    batch: list[SpanData] = []
    for i in range(50):
        ctx = _gateway_context(i)
        plugin.access(ctx)
        batch += request_spans(ctx, ctx.plugin_data["wire"], time.time_ns())
    body = assert_same_body(batch, {"deployment.environment": "test", "replicas": 3})
    message = decode(body)
    encoded = message.resource_spans[0].scope_spans[0].spans
    assert len(encoded) == len(batch) == 50 * 4
    assert [s.name for s in encoded[:4]] == ["kong", "kong.router", "kong.balancer",
                                             "kong.balancer"]
    assert encoded[2].status.code == 2 and not encoded[3].HasField("status")


def test_negative_zero_keeps_its_sign_after_a_zero_in_the_batch():
    batch = [span({"ratio": 0.0}), span({"ratio": -0.0}), span({"ratio": 0})]
    body = assert_same_body(batch, None)
    doubles = [s.attributes[0].value.double_value
               for s in decode(body).resource_spans[0].scope_spans[0].spans]
    assert [math.copysign(1, d) for d in doubles] == [1, -1, 1]


def test_lengths_of_one_to_three_bytes():
    # a span shorter than 128 bytes (its length one byte), spans of 16-32 KiB and more than
    # 32 KiB (lengths of three bytes, the second byte's high bit set or not)
    small = span(trace_id=b"", span_id=b"", parent_span_id=b"", name="", kind=0,
                 start_time_unix_nano=0, end_time_unix_nano=0)
    medium = span({"blob": "x" * 20_000})
    large = span({"blob": "x" * 20_000, "list": ["y" * 20_000, None, []]})
    body = assert_same_body([small, medium, large, small], {"big": "z" * 300})
    assert len(body) > 60_000


def test_containers_and_values_left_unset():
    attributes = {
        "empty list": [], "empty map": {}, "map of nones": {"a": None},
        "list with holes": [None, [], {}, b"x", "s", 1, True, 2.5],
        "nested": {"http.status_code": 404, 7: ("t", ("u",)), "m": {"k": [{}]}},
        "bytes": b"x", "decimal": Decimal("2.5"), "none": None, "": "empty key",
        "http.status_code": 200.0,
    }
    body = assert_same_body([span(attributes), span(dict(attributes))], {"service.name": None})
    decoded = decode(body).resource_spans[0]
    kvs = {kv.key: kv for kv in decoded.scope_spans[0].spans[0].attributes}
    assert "none" not in kvs
    assert not kvs["empty list"].HasField("value") and not kvs["bytes"].HasField("value")
    assert kvs["nested"].value.kvlist_value.values[0].value.int_value == 404
    assert kvs["http.status_code"].value.int_value == 200
    assert "service.name" not in {kv.key for kv in decoded.resource.attributes}


def test_refused_values_raise_like_the_generated_classes():
    for bad in (
        span({"http.status_code": 2**63}),
        span({"n": 2**1100}),
        span({"s": "\ud800"}),
        span(kind=2**31),
        span(status_code=-(2**31) - 1),
        span(start_time_unix_nano=-1),
        span(end_time_unix_nano=2**64),
    ):
        with pytest.raises((ValueError, OverflowError, UnicodeEncodeError)):
            encode_traces([bad], None)
        assert_same_body([bad], None)


def test_signed_varints_are_ten_bytes_when_negative():
    assert signed_varint(-1, -(2**31), 2**31 - 1) == b"\xff" * 9 + b"\x01"
    with pytest.raises(ValueError, match="Value out of range"):
        signed_varint(2**31, -(2**31), 2**31 - 1)


def test_equal_keys_of_other_types_are_not_confused():
    # 1 == 1.0 == True as dictionary keys, but the keys are sent as "1", "1.0" and "True";
    # values too: 1, 1.0 and True under one key are a double, a double and a bool
    batch = [span({key: "v", "k": key}) for key in (1, 1.0, True, "1")]
    body = assert_same_body(batch, None)
    spans = decode(body).resource_spans[0].scope_spans[0].spans
    assert [s.attributes[0].key for s in spans] == ["1", "1.0", "True", "1"]
    assert [s.attributes[1].value.WhichOneof("value") for s in spans] == [
        "double_value", "double_value", "bool_value", "string_value"]
