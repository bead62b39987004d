"""Trace-context propagation: every format's extraction and injection, Kong's legacy
``header_type`` conversion, sampling, and malformed input that must be ignored, never raised."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayq.plugins import _propagation as p
from relayq.serializer import RequestContext

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"
PARENT = "00f067aa0ba902b7"
TRACE64 = "8448eb211c80319c"


def extract(headers: dict[str, Any], formats: tuple[str, ...] = p.EXTRACT_FORMATS):
    return p.extract(headers, formats)


# ----------------------------------------------------------------------------------- W3C


def test_w3c_traceparent_is_extracted_with_sampled_flag_and_tracestate():
    ctx, fmt = extract({"traceparent": f"00-{TRACE}-{SPAN}-01", "tracestate": "congo=t61rcWkgMzE"})
    assert fmt == "w3c"
    assert ctx.trace_id == bytes.fromhex(TRACE)
    assert ctx.span_id == bytes.fromhex(SPAN)
    assert ctx.parent_id is None
    assert ctx.should_sample is True
    assert ctx.w3c_flags == 1
    assert ctx.tracestate == "congo=t61rcWkgMzE"
    assert ctx.trace_id_original_size == 16
    assert ctx.reuse_span_id is False


def test_w3c_unsampled_flag_and_repeated_tracestate_headers_are_joined():
    ctx, fmt = extract(
        {"traceparent": f"00-{TRACE}-{SPAN}-00", "tracestate": ["a=1", "b=2"]}, ("w3c",)
    )
    assert fmt == "w3c"
    assert ctx.should_sample is False
    assert ctx.tracestate == "a=1,b=2"


def test_w3c_tracestate_alone_does_not_make_b3_hide_the_traceparent():
    # Kong's B3 extractor "matches" any request carrying tracestate; relayq requires an id or
    # a sampling decision, so the W3C context behind it is found.
    ctx, fmt = extract(
        {"traceparent": f"00-{TRACE}-{SPAN}-01", "tracestate": "congo=1"},
        p.LEGACY_EXTRACT_ORDER,
    )
    assert fmt == "w3c"
    assert ctx.trace_id == bytes.fromhex(TRACE)


@pytest.mark.parametrize(
    ("traceparent", "warning"),
    [
        (f"01-{TRACE}-{SPAN}-01", "invalid W3C Trace Context version; ignoring."),
        (f"00-{'0' * 32}-{SPAN}-01", "invalid W3C trace context trace ID; ignoring."),
        (f"00-{TRACE[:-2]}-{SPAN}-01", "invalid W3C trace context trace ID; ignoring."),
        (f"00-{TRACE}-{'0' * 16}-01", "invalid W3C trace context parent ID; ignoring."),
        (f"00-{TRACE}-{SPAN}0-01", "invalid W3C trace context parent ID; ignoring."),
        (f"00-{TRACE}-{SPAN}-001", "invalid W3C trace context flags; ignoring."),
        (f"00-{TRACE}-{SPAN}-0x", "invalid W3C traceparent header; ignoring."),
        (f"00_{TRACE}_{SPAN}_01", "invalid W3C traceparent header; ignoring."),
        (f"00-{TRACE}-{SPAN}-01\n", "invalid W3C traceparent header; ignoring."),
        ("garbage", "invalid W3C traceparent header; ignoring."),
    ],
)
def test_malformed_traceparent_is_ignored_with_kongs_warning(caplog, traceparent, warning):
    caplog.set_level(logging.WARNING, "relayq.plugins.propagation")
    ctx, fmt = extract({"traceparent": traceparent}, ("w3c",))
    assert (ctx, fmt) == (p.TraceContext(), None)
    assert warning in caplog.messages


def test_empty_or_repeated_traceparent_is_ignored():
    assert extract({"traceparent": ""}, ("w3c",))[1] is None
    value = f"00-{TRACE}-{SPAN}-01"
    assert extract({"traceparent": [value, value]}, ("w3c",))[1] is None
    # a single-element list is the same as the plain value
    assert extract({"traceparent": [value]}, ("w3c",))[1] == "w3c"


def test_w3c_injection_passes_tracestate_through():
    ctx = p.TraceContext(
        trace_id=bytes.fromhex(TRACE),
        span_id=bytes.fromhex(SPAN),
        should_sample=True,
        tracestate="congo=t61rcWkgMzE",
    )
    out = p.inject(ctx, ("w3c",))
    assert out.headers == {
        "traceparent": f"00-{TRACE}-{SPAN}-01",
        "tracestate": "congo=t61rcWkgMzE",
    }
    assert out.trace_ids == {"w3c": TRACE}
    assert out.errors == []


def test_w3c_injection_pads_a_64_bit_trace_id():
    ctx, _ = extract({"x-b3-traceid": TRACE64, "x-b3-spanid": SPAN})
    out = p.inject(ctx, ("w3c",))
    assert out.headers["traceparent"] == f"00-{'0' * 16}{TRACE64}-{SPAN}-00"


# ----------------------------------------------------------------------------------- B3


def test_b3_multi_header_with_parent_and_sampled():
    ctx, fmt = extract(
        {
            "x-b3-traceid": TRACE,
            "x-b3-spanid": SPAN,
            "x-b3-parentspanid": PARENT,
            "x-b3-sampled": "1",
        }
    )
    assert fmt == "b3"
    assert (ctx.trace_id, ctx.span_id, ctx.parent_id) == (
        bytes.fromhex(TRACE),
        bytes.fromhex(SPAN),
        bytes.fromhex(PARENT),
    )
    assert ctx.should_sample is True
    assert ctx.reuse_span_id is True
    assert ctx.single_header is False


@pytest.mark.parametrize(
    ("sampled", "expected"),
    [("1", True), ("true", True), ("0", False), ("false", False), ("yes", None)],
)
def test_b3_sampled_values(sampled, expected):
    ctx, _ = extract({"x-b3-traceid": TRACE, "x-b3-spanid": SPAN, "x-b3-sampled": sampled})
    assert ctx.should_sample is expected


def test_b3_debug_flag_forces_sampling_and_is_propagated():
    ctx, _ = extract(
        {"x-b3-traceid": TRACE, "x-b3-spanid": SPAN, "x-b3-sampled": "0", "x-b3-flags": "1"}
    )
    assert ctx.should_sample is True
    assert ctx.flags == "1"
    out = p.inject(ctx, ("b3",))
    assert out.headers["x-b3-flags"] == "1"
    assert "x-b3-sampled" not in out.headers


def test_b3_invalid_flags_are_dropped_not_forwarded(caplog):
    caplog.set_level(logging.WARNING, "relayq.plugins.propagation")
    ctx, _ = extract({"x-b3-traceid": TRACE, "x-b3-spanid": SPAN, "x-b3-flags": "2\r\nx: y"})
    assert ctx.flags is None
    assert "x-b3-flags header invalid; ignoring." in caplog.messages
    assert p.inject(ctx, ("b3",)).headers["x-b3-sampled"] == "0"


@pytest.mark.parametrize(
    "headers",
    [
        {"x-b3-traceid": "xyz", "x-b3-spanid": SPAN},
        {"x-b3-traceid": TRACE[:20], "x-b3-spanid": SPAN},
        {"x-b3-traceid": TRACE, "x-b3-spanid": SPAN[:-1]},
        {"x-b3-traceid": TRACE, "x-b3-spanid": SPAN, "x-b3-parentspanid": "g" * 16},
        {"x-b3-traceid": [TRACE, TRACE], "x-b3-spanid": SPAN},
    ],
)
def test_b3_invalid_ids_discard_all_multi_header_ids(headers):
    ctx, fmt = extract(headers)
    assert ctx.trace_id is None and ctx.span_id is None and ctx.parent_id is None
    assert fmt is None


def test_b3_invalid_ids_keep_the_sampling_decision():
    ctx, fmt = extract({"x-b3-traceid": "nothex", "x-b3-sampled": "0"})
    assert fmt == "b3"
    assert ctx.trace_id is None
    assert ctx.should_sample is False


def test_b3_span_without_trace_id_is_dropped():
    ctx, fmt = extract({"x-b3-spanid": SPAN, "x-b3-sampled": "1"})
    assert fmt == "b3"
    assert ctx.span_id is None and ctx.should_sample is True


@pytest.mark.parametrize(
    ("value", "ids", "sampled", "flags", "parent"),
    [
        (f"{TRACE}-{SPAN}", True, None, None, None),
        (f"{TRACE}-{SPAN}-1", True, True, None, None),
        (f"{TRACE}-{SPAN}-0", True, False, None, None),
        (f"{TRACE}-{SPAN}-d", True, True, "1", None),
        (f"{TRACE}-{SPAN}-1-{PARENT}", True, True, None, PARENT),
        (f"{TRACE64}-{SPAN}-1", True, True, None, None),
        ("1", False, True, None, None),
        ("0", False, False, None, None),
        ("d", False, True, "1", None),
    ],
)
def test_b3_single_header_forms(value, ids, sampled, flags, parent):
    ctx, fmt = extract({"b3": value})
    assert fmt == "b3"
    assert ctx.single_header is True
    assert ctx.should_sample is sampled
    assert ctx.flags == flags
    assert (ctx.trace_id is not None) is ids
    if ids:
        assert ctx.trace_id.hex().endswith(value.split("-")[0])
        assert ctx.span_id == bytes.fromhex(SPAN)
    assert ctx.parent_id == (bytes.fromhex(parent) if parent else None)


@pytest.mark.parametrize(
    "value",
    [f"{TRACE[:30]}-{SPAN}-1", f"{TRACE}-{SPAN[:15]}-1", f"{TRACE}-{SPAN}-1-{PARENT[:8]}", "x", ""],
)
def test_b3_single_header_invalid_is_ignored(caplog, value):
    caplog.set_level(logging.WARNING, "relayq.plugins.propagation")
    ctx, fmt = extract({"b3": value})
    assert ctx.trace_id is None
    assert fmt is None
    assert "b3 single header invalid; ignoring." in caplog.messages


def test_b3_single_header_wins_over_multi_header_ids():
    other = "1" * 32
    ctx, _ = extract(
        {
            "b3": f"{TRACE}-{SPAN}-0",
            "x-b3-traceid": other,
            "x-b3-spanid": "2" * 16,
            "x-b3-sampled": "1",
        }
    )
    assert ctx.trace_id == bytes.fromhex(TRACE)
    assert ctx.should_sample is False


def test_b3_single_sampling_only_falls_back_to_multi_header_ids():
    ctx, _ = extract({"b3": "1", "x-b3-traceid": TRACE, "x-b3-spanid": SPAN})
    assert ctx.trace_id == bytes.fromhex(TRACE)
    assert ctx.should_sample is True


def test_b3_single_header_read_from_tracestate_entry():
    ctx, fmt = extract({"tracestate": f"b3={TRACE}-{SPAN}-1"}, ("b3",))
    assert fmt == "b3" and ctx.trace_id == bytes.fromhex(TRACE)


def test_b3_injection_multi_and_single():
    ctx = p.TraceContext(
        trace_id=bytes.fromhex(TRACE),
        span_id=bytes.fromhex(SPAN),
        parent_id=bytes.fromhex(PARENT),
        should_sample=True,
    )
    out = p.inject(ctx, ("b3", "b3-single"))
    assert out.headers == {
        "x-b3-traceid": TRACE,
        "x-b3-spanid": SPAN,
        "x-b3-parentspanid": PARENT,
        "x-b3-sampled": "1",
        "b3": f"{TRACE}-{SPAN}-1-{PARENT}",
    }
    assert out.trace_ids == {"b3": TRACE}


def test_b3_keeps_a_64_bit_trace_id_when_re_injected():
    ctx, _ = extract({"x-b3-traceid": TRACE64, "x-b3-spanid": SPAN, "x-b3-sampled": "1"})
    assert ctx.trace_id == bytes(8) + bytes.fromhex(TRACE64)
    assert ctx.trace_id_original_size == 8
    out = p.inject(ctx, ("b3", "b3-single"))
    assert out.headers["x-b3-traceid"] == TRACE64
    assert out.headers["b3"] == f"{TRACE64}-{SPAN}-1"


def test_b3_single_injection_without_ids_sends_the_decision_only():
    assert p.inject(p.TraceContext(should_sample=False), ("b3-single",)).headers == {"b3": "0"}
    assert p.inject(p.TraceContext(), ("b3-single",)).headers == {"b3": "0"}
    assert p.inject(p.TraceContext(flags="1"), ("b3-single",)).headers == {"b3": "d"}
    assert p.inject(p.TraceContext(should_sample=True), ("b3",)).headers == {"x-b3-sampled": "1"}


# ------------------------------------------------------------------------- other formats


def test_jaeger_round_trip_with_baggage():
    ctx, fmt = extract(
        {"uber-trace-id": f"{TRACE}:{SPAN}:{PARENT}:1", "uberctx-user": "a%20b"}, ("jaeger",)
    )
    assert fmt == "jaeger"
    assert ctx.parent_id == bytes.fromhex(PARENT)
    assert ctx.baggage == {"user": "a b"}
    assert ctx.should_sample is True
    out = p.inject(ctx, ("jaeger",))
    assert out.headers == {
        "uber-trace-id": f"{TRACE}:{SPAN}:{PARENT}:01",
        "uberctx-user": "a%20b",
    }
    assert out.trace_ids == {"jaeger": TRACE}


def test_jaeger_zero_parent_means_no_parent_and_short_ids_are_padded():
    ctx, _ = extract({"uber-trace-id": "abc:def:0:0"}, ("jaeger",))
    assert ctx.trace_id == bytes(14) + bytes.fromhex("0abc")
    assert ctx.span_id == bytes(6) + bytes.fromhex("0def")
    assert ctx.parent_id is None
    assert ctx.should_sample is False
    assert p.inject(ctx, ("jaeger",)).headers["uber-trace-id"] == (
        f"{'0' * 28}0abc:{'0' * 12}0def:0:00"
    )


@pytest.mark.parametrize(
    "value", ["a:b:c", f"{'0' * 32}:{SPAN}:0:1", f"{TRACE}:{'1' * 17}:0:1", f"{TRACE}:{SPAN}:0:123"]
)
def test_jaeger_malformed_is_ignored(value):
    assert extract({"uber-trace-id": value}, ("jaeger",)) == (p.TraceContext(), None)


def test_ot_round_trip_defaults_to_64_bit_trace_ids():
    ctx, fmt = extract(
        {
            "ot-tracer-traceid": TRACE,
            "ot-tracer-spanid": SPAN,
            "ot-tracer-sampled": "true",
            "ot-baggage-k": "v",
        },
        ("ot",),
    )
    assert fmt == "ot" and ctx.should_sample is True and ctx.baggage == {"k": "v"}
    out = p.inject(ctx, ("ot",))
    assert out.headers == {
        "ot-tracer-traceid": TRACE,
        "ot-tracer-spanid": SPAN,
        "ot-tracer-sampled": "1",
        "ot-baggage-k": "v",
    }
    generated = p.TraceContext(trace_id=bytes.fromhex(TRACE), span_id=bytes.fromhex(SPAN))
    assert p.inject(generated, ("ot",)).headers["ot-tracer-traceid"] == TRACE64


def test_datadog_decimal_ids_round_trip():
    ctx, fmt = extract(
        {
            "x-datadog-trace-id": "12345678901234567890",
            "x-datadog-parent-id": " 42 ",
            "x-datadog-sampling-priority": "2",
        },
        ("datadog",),
    )
    assert fmt == "datadog"
    assert ctx.trace_id == (12345678901234567890).to_bytes(16, "big")
    assert ctx.span_id == (42).to_bytes(8, "big")
    assert ctx.should_sample is True
    out = p.inject(ctx, ("datadog",))
    assert out.headers == {
        "x-datadog-trace-id": "12345678901234567890",
        "x-datadog-parent-id": "42",
        "x-datadog-sampling-priority": "1",
    }
    assert out.trace_ids == {"datadog": "12345678901234567890"}


def test_datadog_invalid_priority_discards_the_context_and_bad_ids_are_ignored():
    assert extract({"x-datadog-sampling-priority": "7"}, ("datadog",))[1] is None
    ctx, fmt = extract(
        {"x-datadog-trace-id": "0x12", "x-datadog-sampling-priority": "0"}, ("datadog",)
    )
    assert fmt == "datadog" and ctx.trace_id is None and ctx.should_sample is False


def test_aws_round_trip():
    header = f"Root=1-{TRACE[:8]}-{TRACE[8:]};Parent={SPAN};Sampled=1;Lineage=a:1"
    ctx, fmt = extract({"x-amzn-trace-id": header}, ("aws",))
    assert fmt == "aws"
    assert ctx.trace_id == bytes.fromhex(TRACE)
    assert ctx.span_id == bytes.fromhex(SPAN)
    assert p.inject(ctx, ("aws",)).headers == {
        "x-amzn-trace-id": f"Root=1-{TRACE[:8]}-{TRACE[8:]};Parent={SPAN};Sampled=1"
    }


@pytest.mark.parametrize(
    "header",
    [
        "Root=2-0af76519-16cd43dd8448eb211c80319c",
        "Root=1-0af76519-16cd",
        "Parent=12",
        "Sampled=yes",
        f"Root=1-{TRACE[:8]}-{TRACE[8:]};Parent",
    ],
)
def test_aws_malformed_is_ignored(header):
    assert extract({"x-amzn-trace-id": header}, ("aws",))[1] is None


def test_gcp_round_trip():
    ctx, fmt = extract({"x-cloud-trace-context": f"{TRACE}/12345;o=1"}, ("gcp",))
    assert fmt == "gcp"
    assert ctx.span_id == (12345).to_bytes(8, "big")
    assert p.inject(ctx, ("gcp",)).headers == {"x-cloud-trace-context": f"{TRACE}/12345;o=1"}
    assert extract({"x-cloud-trace-context": f"{TRACE.upper()}/1"}, ("gcp",))[1] is None


def test_instana_round_trip():
    ctx, fmt = extract(
        {"x-instana-t": TRACE64, "x-instana-s": SPAN, "x-instana-l": "1,correlationType=web"},
        ("instana",),
    )
    assert fmt == "instana" and ctx.should_sample is True
    assert p.inject(ctx, ("instana",)).headers == {
        "x-instana-t": TRACE64,
        "x-instana-s": SPAN,
        "x-instana-l": "1",
    }
    ctx, fmt = extract({"x-instana-l": "0"}, ("instana",))
    assert fmt == "instana" and ctx.should_sample is False and ctx.trace_id is None


def test_first_matching_extractor_wins_in_configured_order():
    headers = {
        "traceparent": f"00-{TRACE}-{SPAN}-01",
        "x-b3-traceid": "1" * 32,
        "x-b3-spanid": "2" * 16,
    }
    assert extract(headers, ("w3c", "b3"))[1] == "w3c"
    assert extract(headers, ("b3", "w3c"))[1] == "b3"
    assert extract(headers, ())[1] is None
    assert extract(headers, None)[1] is None


# --------------------------------------------------------------------------- injection


def test_preserve_injects_the_extracted_format_or_the_default():
    ctx = p.TraceContext(
        trace_id=bytes.fromhex(TRACE),
        span_id=bytes.fromhex(SPAN),
        should_sample=True,
        single_header=True,
    )
    assert set(p.inject(ctx, ("preserve",), extracted_from="b3").headers) == {"b3"}
    assert set(p.inject(ctx, ("preserve",), extracted_from="jaeger").headers) == {"uber-trace-id"}
    assert set(p.inject(ctx, ("preserve",), default_format="datadog").headers) == {
        "x-datadog-trace-id",
        "x-datadog-parent-id",
        "x-datadog-sampling-priority",
    }
    assert set(p.inject(ctx, ("preserve",)).headers) == {"traceparent"}


def test_injectors_that_need_ids_report_kongs_error():
    out = p.inject(p.TraceContext(should_sample=True), ("w3c", "b3", "aws"))
    assert out.errors == [
        "w3c injector context is invalid: field trace_id not found in context",
        "aws injector context is invalid: field trace_id not found in context",
    ]
    assert out.headers == {"x-b3-sampled": "1"}


def test_propagate_clears_then_injects_and_records_trace_ids():
    request = RequestContext(headers={"traceparent": f"00-{TRACE}-{SPAN}-01"})
    request.upstream_headers["traceparent"] = "set by an earlier plugin"
    conf = p.PropagationConfig(
        extract=("w3c",), inject=("b3", "w3c"), clear=("traceparent", "x-custom")
    )
    ctx, fmt = p.extract(request.headers, conf.extract)
    p.propagate(request, conf, ctx, fmt)
    assert request.upstream_headers_cleared == ["traceparent", "x-custom"]
    assert request.upstream_headers["traceparent"] == f"00-{TRACE}-{SPAN}-01"
    assert request.upstream_headers["x-b3-traceid"] == TRACE
    assert request.trace_id == {"b3": TRACE, "w3c": TRACE}


# ------------------------------------------------------------------------ configuration


def test_propagation_record_is_used_as_is_when_it_sets_anything():
    conf = p.propagation_config(
        {
            "header_type": "b3",
            "propagation": {
                "extract": ["w3c"],
                "inject": None,
                "clear": None,
                "default_format": "b3",
            },
        }
    )
    assert conf == p.PropagationConfig(("w3c",), None, (), "b3")


@pytest.mark.parametrize(
    ("legacy", "expected"),
    [
        (
            {"header_type": "preserve"},
            p.PropagationConfig(p.LEGACY_EXTRACT_ORDER, ("preserve",), (), "w3c"),
        ),
        ({"header_type": "ignore"}, p.PropagationConfig(None, ("w3c",), (), "w3c")),
        (
            {"header_type": "jaeger"},
            p.PropagationConfig(p.LEGACY_EXTRACT_ORDER, ("preserve", "jaeger"), (), "w3c"),
        ),
        (
            {"header_type": "ignore", "default_header_type": "b3-single"},
            p.PropagationConfig(None, ("b3-single",), (), "b3-single"),
        ),
        ({}, p.PropagationConfig(None, None, (), "w3c")),
    ],
)
def test_legacy_header_type_conversion(legacy, expected):
    assert p.propagation_config({"propagation": {"default_format": "w3c"}, **legacy}) == expected


# ----------------------------------------------------------------------- ids, sampling


def test_generated_ids_have_the_right_size_and_are_not_zero():
    ids = {p.new_trace_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 16 and any(i) for i in ids)
    assert len(p.new_trace_id(8)) == 8
    assert len(p.new_span_id()) == 8


def test_resize_id_pads_left_and_keeps_the_last_bytes():
    assert p.resize_id(b"\x01", 4) == b"\x00\x00\x00\x01"
    assert p.resize_id(b"\x01\x02\x03", 2) == b"\x02\x03"
    assert p.resize_id(b"\x01\x02", 2) == b"\x01\x02"


def test_trace_id_sampler_compares_the_first_eight_bytes_little_endian():
    below = (2**63 - 1).to_bytes(8, "little") + bytes(8)
    at = (2**63).to_bytes(8, "little") + bytes(8)
    assert p.trace_id_sampled(below, 0.5) is True
    assert p.trace_id_sampled(at, 0.5) is False
    assert p.trace_id_sampled(at, 1) is True
    assert p.trace_id_sampled(below, 0) is False
    share = sum(p.trace_id_sampled(p.new_trace_id(), 0.25) for _ in range(4000)) / 4000
    assert 0.2 < share < 0.3


def test_sampling_decision_inherits_only_a_negative_parent_decision():
    trace = bytes(16)
    assert p.sampling_decision(False, trace, 1.0) is False
    assert p.sampling_decision(True, (2**64 - 1).to_bytes(8, "little") * 2, 0.5) is False
    assert p.sampling_decision(None, trace, 0.5) is True


# ----------------------------------------------------------------------------- fuzzing

_NAMES = st.sampled_from(
    [
        "traceparent",
        "tracestate",
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
        "x-b3-flags",
        "uber-trace-id",
        "uberctx-k",
        "ot-tracer-traceid",
        "ot-tracer-spanid",
        "ot-tracer-sampled",
        "ot-baggage-x",
        "x-datadog-trace-id",
        "x-datadog-parent-id",
        "x-datadog-sampling-priority",
        "x-amzn-trace-id",
        "x-cloud-trace-context",
        "x-instana-t",
        "x-instana-s",
        "x-instana-l",
    ]
)
_VALUES = st.one_of(
    st.text(max_size=80),
    st.text(alphabet="0123456789abcdefABCDEF-:;=/,d ", max_size=80),
    st.lists(st.text(max_size=20), max_size=3),
    st.none(),
    st.integers(),
    st.binary(max_size=10),
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_NAMES, _VALUES, max_size=8), st.permutations(p.EXTRACT_FORMATS))
def test_arbitrary_headers_never_raise_and_always_inject_cleanly(headers, order):
    ctx, fmt = p.extract(headers, order)
    assert fmt is None or fmt in p.EXTRACT_FORMATS
    ctx.trace_id = ctx.trace_id or p.new_trace_id()
    ctx.span_id = ctx.span_id or p.new_span_id()
    out = p.inject(ctx, p.INJECT_FORMATS, extracted_from=fmt)
    assert out.errors == []
    for name, value in out.headers.items():
        assert name == name.lower()
        assert isinstance(value, str)
        assert "\r" not in value and "\n" not in value


def test_tracestate_with_line_breaks_is_not_forwarded(caplog):
    caplog.set_level(logging.WARNING, "relayq.plugins.propagation")
    ctx, fmt = extract(
        {"traceparent": f"00-{TRACE}-{SPAN}-01", "tracestate": "a=1\r\nx-evil: 1"}, ("w3c",)
    )
    assert fmt == "w3c" and ctx.tracestate is None
    assert "invalid W3C tracestate header; ignoring." in caplog.messages
    assert "tracestate" not in p.inject(ctx, ("w3c",)).headers
