"""OTLP/HTTP protobuf bodies from finished spans and log records (pure).

The messages come from ``opentelemetry-proto``. Each body holds exactly one ``resource_spans``
(or ``resource_logs``) entry whose resource attributes are the defaults (``service.name=kong``,
``service.instance.id``, ``service.version``) merged with the user's, and one scope,
``kong-internal`` 0.1.0, as Kong sends them. Attribute values follow Kong's
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
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from relayq.plugins._propagation import SPAN_ID_SIZE, TRACE_ID_SIZE, node_id, resize_id
from relayq.plugins.opentelemetry._logcapture import LogData
from relayq.plugins.opentelemetry._spans import SpanData

SCOPE_NAME = "kong-internal"
SCOPE_VERSION = "0.1.0"
_INT_KEYS = frozenset({"http.status_code"})


def _text(value: str) -> str:
    """``value`` if protobuf can encode it; lone surrogates (``surrogateescape``) repaired."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return value


def any_value(value: Any, key: str | None = None) -> AnyValue:
    """One attribute value as Kong's ``transform_value`` types it."""
    if key in _INT_KEYS and isinstance(value, int | float) and not isinstance(value, bool):
        return AnyValue(int_value=int(value))
    if isinstance(value, str):
        return AnyValue(string_value=_text(value))
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int | float):
        return AnyValue(double_value=float(value))
    if isinstance(value, Mapping):
        return AnyValue(kvlist_value=KeyValueList(values=key_values(value)))
    if isinstance(value, list | tuple):
        return AnyValue(array_value=ArrayValue(values=[any_value(v) for v in value]))
    return AnyValue()


def key_values(attributes: Mapping[str, Any]) -> list[KeyValue]:
    """A KeyValue list, skipping ``None`` values (Kong never sets a nil attribute)."""
    return [
        KeyValue(key=_text(str(k)), value=any_value(v, k))
        for k, v in attributes.items()
        if v is not None
    ]


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
    return Resource(attributes=key_values(merged))


def _scope() -> InstrumentationScope:
    return InstrumentationScope(name=SCOPE_NAME, version=SCOPE_VERSION)


def span_message(span: SpanData) -> Span:
    """One span as Kong's ``transform_span`` shapes it (ids sized to 16 and 8 bytes)."""
    message = Span(
        trace_id=resize_id(span.trace_id, TRACE_ID_SIZE),
        span_id=resize_id(span.span_id, SPAN_ID_SIZE),
        parent_span_id=resize_id(span.parent_span_id, SPAN_ID_SIZE) if span.parent_span_id else b"",
        name=_text(span.name),
        kind=span.kind,  # type: ignore[arg-type]
        start_time_unix_nano=span.start_time_unix_nano,
        end_time_unix_nano=span.end_time_unix_nano,
        attributes=key_values(span.attributes),
    )
    if span.status_code:
        message.status.CopyFrom(Status(code=span.status_code))  # type: ignore[arg-type]
    return message


def encode_traces(
    spans: Sequence[SpanData], resource_attributes: Mapping[str, Any] | None
) -> bytes:
    """An ``ExportTraceServiceRequest`` body for one batch of spans."""
    request = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=resource(resource_attributes),
                scope_spans=[ScopeSpans(scope=_scope(), spans=[span_message(s) for s in spans])],
            )
        ]
    )
    return request.SerializeToString()


def log_message(record: LogData) -> LogRecord:
    """One captured log record as Kong's ``prepare_logs`` shapes it."""
    return LogRecord(
        time_unix_nano=record.time_unix_nano,
        observed_time_unix_nano=record.time_unix_nano,
        severity_number=record.severity_number,  # type: ignore[arg-type]
        severity_text=record.severity_text,
        body=AnyValue(string_value=_text(record.body)),
        attributes=key_values(record.attributes),
        trace_id=record.trace_id,
        span_id=record.span_id,
        flags=record.flags,
    )


def encode_logs(records: Sequence[LogData], resource_attributes: Mapping[str, Any] | None) -> bytes:
    """An ``ExportLogsServiceRequest`` body for one batch of log records."""
    request = ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=resource(resource_attributes),
                scope_logs=[
                    ScopeLogs(scope=_scope(), log_records=[log_message(r) for r in records])
                ],
            )
        ]
    )
    return request.SerializeToString()
