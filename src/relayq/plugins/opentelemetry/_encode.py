"""OTLP/HTTP protobuf bodies from finished spans and log records (pure).

Trace bodies are written directly in the protobuf wire format by ``_wire`` (the hot path:
every batch of spans); ``encode_traces_reference`` builds the same body from the
``opentelemetry-proto`` messages, as log bodies are built. Each body holds exactly one
``resource_spans`` (or ``resource_logs``) entry whose resource attributes are the defaults
(``service.name=kong``, ``service.instance.id``, ``service.version``) merged with the user's,
and one scope, ``kong-internal`` 0.1.0, as Kong sends them. Attribute values follow Kong's
``transform_value``: strings, booleans, numbers as doubles (except ``http.status_code``,
always an integer), lists as arrays and mappings as key/value lists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from relayq.plugins._propagation import SPAN_ID_SIZE, TRACE_ID_SIZE, node_id, resize_id
from relayq.plugins.opentelemetry import _wire
from relayq.plugins.opentelemetry._logcapture import LogData
from relayq.plugins.opentelemetry._spans import SpanData
from relayq.plugins.opentelemetry._wire import INT_KEYS as _INT_KEYS
from relayq.plugins.opentelemetry._wire import NUMBER as _NUMBER
from relayq.plugins.opentelemetry._wire import text as _text

SCOPE_NAME = "kong-internal"
SCOPE_VERSION = "0.1.0"
_SCOPE_BODY = _wire.scope(SCOPE_NAME, SCOPE_VERSION)


def set_value(target: AnyValue, value: Any, key: str | None = None) -> None:
    """Fill ``target`` with one attribute value, typed as Kong's ``transform_value`` does."""
    if isinstance(value, str):
        target.string_value = _text(value)
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, _NUMBER):
        if key in _INT_KEYS:
            target.int_value = int(value)
        else:
            target.double_value = float(value)
    elif isinstance(value, Mapping):
        add_attributes(target.kvlist_value.values, value)
    elif isinstance(value, list | tuple):
        values = target.array_value.values
        for item in value:
            set_value(values.add(), item)


def any_value(value: Any, key: str | None = None) -> AnyValue:
    """One attribute value as a new ``AnyValue``."""
    out = AnyValue()
    set_value(out, value, key)
    return out


def add_attributes(target: Any, attributes: Mapping[str, Any]) -> None:
    """Append ``attributes`` to a repeated KeyValue field, skipping ``None`` values (Kong never
    sets a nil attribute). Filling messages in place avoids building and copying temporaries,
    which is most of the encoding time; ASCII strings, the common case, skip the checks."""
    add = target.add
    for key, value in attributes.items():
        if value is None:
            continue
        kv = add()
        kv.key = key if type(key) is str and key.isascii() else _text(str(key))
        if type(value) is str and value.isascii():
            kv.value.string_value = value
        else:
            set_value(kv.value, value, key)


_Scalar = str | bool | int | float
_CacheKey = tuple[str, type, _Scalar]


def add_shared_attributes(
    target: Any, attributes: Mapping[str, Any], cache: dict[_CacheKey, KeyValue]
) -> None:
    """``add_attributes`` for a batch: a scalar attribute seen before in the batch is copied
    from the KeyValue built the first time (``cache``), which is cheaper than building it again;
    most attributes repeat from span to span (method, host, route, peer, try count). Float
    zeros are not cached: ``0.0 == -0.0`` (one key) but their doubles differ."""
    kvs: list[KeyValue] = []
    for key, value in attributes.items():
        kind = type(value)
        if type(key) is str and (
            kind is str or kind is int or kind is bool or (kind is float and value != 0.0)
        ):
            cache_key = (key, kind, value)
            kv = cache.get(cache_key)
            if kv is None:
                kv = KeyValue(key=key if key.isascii() else _text(str(key)))
                if kind is str and value.isascii():
                    kv.value.string_value = value
                else:
                    set_value(kv.value, value, key)
                cache[cache_key] = kv
            kvs.append(kv)
        elif value is not None:
            kv = KeyValue(key=_text(str(key)))
            set_value(kv.value, value, key)
            kvs.append(kv)
    target.extend(kvs)


def key_values(attributes: Mapping[str, Any]) -> list[KeyValue]:
    """``attributes`` as a list of new KeyValue messages."""
    holder = KeyValueList()
    add_attributes(holder.values, attributes)
    return list(holder.values)


def default_resource_attributes() -> dict[str, str]:
    """Kong's defaults: ``service.name``, ``service.instance.id`` (the node id) and
    ``service.version`` (the relayq version, where Kong reports its own)."""
    from relayq import __version__

    return {
        "service.name": "kong",
        "service.instance.id": node_id(),
        "service.version": __version__,
    }


def resource(attributes: Mapping[str, Any] | None) -> Resource:
    """The OTLP resource: the defaults merged with the user's ``resource_attributes``."""
    merged: dict[str, Any] = default_resource_attributes()
    if attributes:
        merged.update(attributes)
    out = Resource()
    add_attributes(out.attributes, merged)
    return out


def _scope() -> InstrumentationScope:
    return InstrumentationScope(name=SCOPE_NAME, version=SCOPE_VERSION)


def fill_span(
    message: Span, span: SpanData, cache: dict[_CacheKey, KeyValue] | None = None
) -> None:
    """Fill ``message`` as Kong's ``transform_span`` shapes a span (ids sized to 16 and 8
    bytes, short ids left-padded). ``cache``: see ``add_shared_attributes``."""
    trace_id, span_id, parent_id = span.trace_id, span.span_id, span.parent_span_id
    message.trace_id = trace_id if len(trace_id) == TRACE_ID_SIZE else resize_id(
        trace_id, TRACE_ID_SIZE)
    message.span_id = span_id if len(span_id) == SPAN_ID_SIZE else resize_id(
        span_id, SPAN_ID_SIZE)
    if parent_id:
        message.parent_span_id = parent_id if len(parent_id) == SPAN_ID_SIZE else resize_id(
            parent_id, SPAN_ID_SIZE)
    message.name = _text(span.name)
    message.kind = span.kind  # type: ignore[assignment]
    message.start_time_unix_nano = span.start_time_unix_nano
    message.end_time_unix_nano = span.end_time_unix_nano
    if cache is None:
        add_attributes(message.attributes, span.attributes)
    else:
        add_shared_attributes(message.attributes, span.attributes, cache)
    if span.status_code:
        message.status.code = span.status_code  # type: ignore[assignment]


def span_message(span: SpanData) -> Span:
    """One span as a new ``Span`` message."""
    message = Span()
    fill_span(message, span)
    return message


def encode_traces(
    spans: Sequence[SpanData], resource_attributes: Mapping[str, Any] | None
) -> bytes:
    """An ``ExportTraceServiceRequest`` body for one batch of spans, written directly in the
    protobuf wire format (``_wire``): the bytes ``encode_traces_reference`` serializes from
    ``opentelemetry-proto`` messages, in less than half its time."""
    body = traces_body(resource_attributes)
    body.add(spans)
    return body.finish()


def traces_body(resource_attributes: Mapping[str, Any] | None) -> _wire.TraceBody:
    """An ``encode_traces`` body to add spans to a slice at a time (see ``_wire.TraceBody``)."""
    merged: dict[Any, Any] = default_resource_attributes()
    if resource_attributes:
        merged.update(resource_attributes)
    return _wire.TraceBody(merged, _SCOPE_BODY)


def encode_traces_reference(
    spans: Sequence[SpanData], resource_attributes: Mapping[str, Any] | None
) -> bytes:
    """``encode_traces`` built from ``opentelemetry-proto`` messages (``fill_span``): the
    definition the wire encoder is tested against."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.CopyFrom(resource(resource_attributes))
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.CopyFrom(_scope())
    add = scope_spans.spans.add
    cache: dict[_CacheKey, KeyValue] = {}
    for span in spans:
        fill_span(add(), span, cache)
    return request.SerializeToString()


def fill_log(message: LogRecord, record: LogData) -> None:
    """Fill ``message`` as Kong's ``prepare_logs`` shapes a record."""
    message.time_unix_nano = record.time_unix_nano
    message.observed_time_unix_nano = record.time_unix_nano
    message.severity_number = record.severity_number  # type: ignore[assignment]
    message.severity_text = record.severity_text
    message.body.string_value = _text(record.body)
    add_attributes(message.attributes, record.attributes)
    if record.trace_id:
        message.trace_id = record.trace_id
    if record.span_id:
        message.span_id = record.span_id
    if record.flags:
        message.flags = record.flags


def log_message(record: LogData) -> LogRecord:
    """One captured log record as a new ``LogRecord`` message."""
    message = LogRecord()
    fill_log(message, record)
    return message


def encode_logs(records: Sequence[LogData], resource_attributes: Mapping[str, Any] | None) -> bytes:
    """An ``ExportLogsServiceRequest`` body for one batch of log records."""
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.CopyFrom(resource(resource_attributes))
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.CopyFrom(_scope())
    add = scope_logs.log_records.add
    for record in records:
        fill_log(add(), record)
    return request.SerializeToString()
