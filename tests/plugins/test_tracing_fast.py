"""The tracing plugins' per-request shortcuts give the results of the plain constructions:
``with_ids`` is ``dataclasses.replace``, the OTLP batch encoder's shared attributes encode the
same bytes as attributes built one by one, ``extract``'s header-name pre-check never hides
a context an extractor would find, injectors writing into one dict give what merging each
format's headers gives, and a ``Propagator`` (its plans made once) does what ``extract`` and
``propagate`` do."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from relayq.plugins._propagation import (
    EXTRACT_FORMATS,
    FORMATS,
    INJECT_FORMATS,
    PropagationConfig,
    Propagator,
    TraceContext,
    extract,
    inject,
    propagate,
    with_ids,
)
from relayq.plugins.opentelemetry._encode import encode_traces, fill_span
from relayq.plugins.opentelemetry._spans import SpanData
from relayq.serializer import RequestContext

ids = st.one_of(st.none(), st.binary(min_size=1, max_size=16))

contexts = st.builds(
    TraceContext,
    trace_id=ids,
    span_id=ids,
    parent_id=ids,
    should_sample=st.one_of(st.none(), st.booleans()),
    reuse_span_id=st.booleans(),
    flags=st.one_of(st.none(), st.just("1")),
    w3c_flags=st.one_of(st.none(), st.integers(0, 255)),
    single_header=st.booleans(),
    baggage=st.one_of(st.none(), st.dictionaries(st.text(max_size=3), st.text(max_size=3))),
    tracestate=st.one_of(st.none(), st.text(max_size=8)),
    trace_id_original_size=st.one_of(st.none(), st.sampled_from([8, 16])),
)


@given(ctx=contexts, new=contexts)
def test_with_ids_is_replace(ctx: TraceContext, new: TraceContext) -> None:
    changes: dict[str, Any] = {
        "trace_id": new.trace_id,
        "span_id": new.span_id,
        "parent_id": new.parent_id,
        "should_sample": new.should_sample,
        "trace_id_original_size": new.trace_id_original_size,
    }
    assert with_ids(ctx, **changes) == dataclasses.replace(ctx, **changes)


scalars = st.one_of(
    st.text(max_size=6),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(min_value=-1e6, max_value=1e6),  # int() of any of them fits an int64
    st.sampled_from([1, 1.0, True, 0, 0.0, False, "1", "é", "\udcff"]),
)
values = st.one_of(
    scalars,
    st.none(),
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=3), scalars, max_size=2),
)
keys = st.sampled_from(["http.status_code", "try_count", "a", "b", "é", "\udcff"])


@settings(max_examples=200, deadline=None)
@given(attribute_sets=st.lists(st.dictionaries(keys, values, max_size=5), min_size=1,
                               max_size=6))
def test_shared_attributes_encode_like_attributes_built_one_by_one(
        attribute_sets: list[dict[str, Any]]) -> None:
    spans = [
        SpanData(trace_id=b"\x01" * 16, span_id=bytes([i + 1]) * 8, parent_span_id=b"",
                 name="kong", kind=2, start_time_unix_nano=1, end_time_unix_nano=2,
                 attributes=attributes)
        for i, attributes in enumerate(attribute_sets)
    ]
    body = encode_traces(spans, None)
    expected = ExportTraceServiceRequest.FromString(body)
    scope = expected.resource_spans[0].scope_spans[0]
    del scope.spans[:]
    for span in spans:  # no cache: every attribute built on its own
        fill_span(scope.spans.add(), span)
    assert body == expected.SerializeToString()


header_names = st.sampled_from([
    "traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled",
    "uber-trace-id", "ot-tracer-traceid", "ot-tracer-spanid", "x-datadog-trace-id",
    "x-amzn-trace-id", "x-cloud-trace-context", "x-instana-t", "x-instana-s", "host",
    "user-agent",
])
header_values = st.sampled_from([
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
    "b7ad6b7169203331", "0af7651916cd43dd8448eb211c80319c", "1", "0", "garbage",
    "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
])


@settings(max_examples=300, deadline=None)
@given(headers=st.dictionaries(header_names, header_values, max_size=4),
       formats=st.lists(st.sampled_from((*EXTRACT_FORMATS, "unknown")), max_size=5))
def test_extract_finds_what_each_extractor_finds(headers: dict[str, str],
                                                 formats: list[str]) -> None:
    found, fmt = extract(headers, formats)
    # The same question asked one format at a time, without the shared pre-check.
    expected: tuple[TraceContext, str | None] = (TraceContext(), None)
    for one in formats:
        ctx, name = extract(headers, [one])
        if name is not None:
            expected = (ctx, name)
            break
    assert (found, fmt) == expected


formats_to_inject = st.lists(st.sampled_from((*INJECT_FORMATS, "unknown")), max_size=4)


@settings(max_examples=300, deadline=None)
@given(ctx=contexts, formats=formats_to_inject,
       extracted_from=st.one_of(st.none(), st.sampled_from(FORMATS)),
       default_format=st.sampled_from(FORMATS))
def test_inject_merges_each_formats_headers_in_order(
        ctx: TraceContext, formats: list[str], extracted_from: str | None,
        default_format: str) -> None:
    result = inject(ctx, formats, extracted_from=extracted_from, default_format=default_format)
    headers: dict[str, str] = {}
    trace_ids: dict[str, str] = {}
    errors: list[str] = []
    for fmt in formats:  # one format at a time, merged as dict.update does
        one = inject(ctx, [fmt], extracted_from=extracted_from, default_format=default_format)
        headers.update(one.headers)
        trace_ids.update(one.trace_ids)
        errors.extend(one.errors)
    assert list(result.headers.items()) == list(headers.items())
    assert list(result.trace_ids.items()) == list(trace_ids.items())
    assert result.errors == errors


propagation_configs = st.builds(
    PropagationConfig,
    extract=st.one_of(st.none(), st.lists(st.sampled_from((*EXTRACT_FORMATS, "unknown")),
                                          max_size=4).map(tuple)),
    inject=st.one_of(st.none(), formats_to_inject.map(tuple)),
    clear=st.lists(header_names, max_size=2).map(tuple),
    default_format=st.sampled_from(FORMATS),
)


@settings(max_examples=300, deadline=None)
@given(conf=propagation_configs, headers=st.dictionaries(header_names, header_values, max_size=4),
       ctx=contexts, existing=st.dictionaries(header_names, st.just("old"), max_size=3))
def test_propagator_does_what_extract_and_propagate_do(
        conf: PropagationConfig, headers: dict[str, str], ctx: TraceContext,
        existing: dict[str, str]) -> None:
    propagator = Propagator(conf)
    assert propagator.extract(headers) == extract(headers, conf.extract)
    _, extracted_from = extract(headers, conf.extract)
    planned = RequestContext(upstream_headers=dict(existing), upstream_headers_cleared=["host"],
                             trace_id={"w3c": "old"})
    plain = RequestContext(upstream_headers=dict(existing), upstream_headers_cleared=["host"],
                           trace_id={"w3c": "old"})
    propagator.propagate(planned, dataclasses.replace(ctx), extracted_from)
    propagate(plain, conf, dataclasses.replace(ctx), extracted_from)
    assert list(planned.upstream_headers.items()) == list(plain.upstream_headers.items())
    assert planned.upstream_headers_cleared == plain.upstream_headers_cleared
    assert list(planned.trace_id.items()) == list(plain.trace_id.items())
