"""A direct protobuf encoder for OTLP trace export bodies (pure).

Building ``opentelemetry-proto`` messages and serializing them costs several microseconds a
span, most of it in setting fields one by one and copying cached attribute messages. The body
is simple enough to write directly: this module writes exactly the messages
``encode_traces`` needs, with the bytes the upb serializer writes for the same message (fields
in field-number order, proto3 defaults left out, oneof members written even when zero)::

    ExportTraceServiceRequest
      1 resource_spans: ResourceSpans
          1 resource: Resource
              1 attributes: KeyValue*
          2 scope_spans: ScopeSpans
              1 scope: InstrumentationScope
                  1 name: string
                  2 version: string
              2 spans: Span*
                  1 trace_id, 2 span_id, 4 parent_span_id: bytes
                  5 name: string
                  6 kind: enum (varint)
                  7 start_time_unix_nano, 8 end_time_unix_nano: fixed64
                  9 attributes: KeyValue*
                  15 status: Status
                      3 code: enum (varint)

    KeyValue: 1 key: string, 2 value: AnyValue
    AnyValue (oneof): 1 string_value, 2 bool_value, 3 int_value (int64 varint),
                      4 double_value (fixed64 IEEE 754), 5 array_value: ArrayValue,
                      6 kvlist_value: KeyValueList
    ArrayValue: 1 values: AnyValue*         KeyValueList: 1 values: KeyValue*

Attribute values are typed as ``_encode.set_value`` types them (Kong's ``transform_value``),
and values it leaves unset (``None`` at the top level, empty lists and mappings, other types)
leave ``KeyValue.value`` out here too. Values the generated classes refuse (integers outside
int64, enums outside int32, times outside uint64, text that cannot be UTF-8) raise
``ValueError`` / ``UnicodeEncodeError`` as they do.

Within one batch, a scalar attribute already seen is written from the bytes encoded the first
time (``AttributeCache``), and spans are appended to one ``bytearray``, the enclosing
messages' keys and lengths written in front at the end.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import Any

from relayq.plugins._propagation import SPAN_ID_SIZE, TRACE_ID_SIZE, resize_id
from relayq.plugins.opentelemetry._spans import SpanData

NUMBER = (int, float)  # isinstance with a tuple constant: `int | float` builds a union each call
INT_KEYS = frozenset({"http.status_code"})  # attributes sent as int_value, not double_value

# ------------------------------------------------------------------------------ wire format

# Wire types: the low three bits of a field's tag.
WIRE_VARINT = 0  # int32/int64/uint64/bool/enum: base-128 varint
WIRE_FIXED64 = 1  # fixed64/double: 8 bytes, little-endian
WIRE_LEN = 2  # string/bytes/message/packed: varint length, then the bytes

# Field numbers, per message (opentelemetry/proto/**/*.proto).
REQUEST_RESOURCE_SPANS = 1  # ExportTraceServiceRequest.resource_spans
RESOURCE_SPANS_RESOURCE = 1  # ResourceSpans.resource
RESOURCE_SPANS_SCOPE_SPANS = 2  # ResourceSpans.scope_spans
RESOURCE_ATTRIBUTES = 1  # Resource.attributes
SCOPE_SPANS_SCOPE = 1  # ScopeSpans.scope
SCOPE_SPANS_SPANS = 2  # ScopeSpans.spans
SCOPE_NAME = 1  # InstrumentationScope.name
SCOPE_VERSION = 2  # InstrumentationScope.version
SPAN_TRACE_ID = 1
SPAN_SPAN_ID = 2
SPAN_PARENT_SPAN_ID = 4
SPAN_NAME = 5
SPAN_KIND = 6
SPAN_START_TIME = 7
SPAN_END_TIME = 8
SPAN_ATTRIBUTES = 9
SPAN_STATUS = 15
STATUS_CODE = 3  # Status.code
KEY_VALUE_KEY = 1
KEY_VALUE_VALUE = 2
ANY_STRING = 1
ANY_BOOL = 2
ANY_INT = 3
ANY_DOUBLE = 4
ANY_ARRAY = 5
ANY_KVLIST = 6
ARRAY_VALUES = 1  # ArrayValue.values
KVLIST_VALUES = 1  # KeyValueList.values

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1
_UINT64_LIMIT = 1 << 64


def tag(field: int, wire_type: int) -> bytes:
    """A field's key: ``field << 3 | wire_type`` as a varint (one byte for fields 1-15)."""
    return varint(field << 3 | wire_type)


_SMALL_VARINTS = tuple(bytes((n,)) for n in range(0x80))


def varint(value: int) -> bytes:
    """``value`` (0 <= value < 2**64) as a base-128 varint: 7 bits a byte, least significant
    group first, the high bit set on every byte but the last."""
    if 0 <= value < 0x80:
        return _SMALL_VARINTS[value]
    if 0x80 <= value < 0x4000:  # lengths of spans and attribute sets: two bytes
        return bytes((value & 0x7F | 0x80, value >> 7))
    if not 0 <= value < _UINT64_LIMIT:
        raise ValueError(f"Value out of range: {value}")
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def signed_varint(value: int, low: int, high: int) -> bytes:
    """An int32/int64/enum value: negative values are written as their 64-bit two's complement
    (ten bytes), as protobuf does; outside ``[low, high]`` raises like the generated classes."""
    if not low <= value <= high:
        raise ValueError(f"Value out of range: {value}")
    return varint(value & (_UINT64_LIMIT - 1))


def len_field(key: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its key, the payload's length, the payload."""
    return key + varint(len(payload)) + payload


_T_TRACE_ID = tag(SPAN_TRACE_ID, WIRE_LEN)
_T_SPAN_ID = tag(SPAN_SPAN_ID, WIRE_LEN)
_T_PARENT_SPAN_ID = tag(SPAN_PARENT_SPAN_ID, WIRE_LEN)
_T_NAME = tag(SPAN_NAME, WIRE_LEN)
_T_KIND = tag(SPAN_KIND, WIRE_VARINT)
_T_START = tag(SPAN_START_TIME, WIRE_FIXED64)
_T_END = tag(SPAN_END_TIME, WIRE_FIXED64)
_T_ATTRIBUTE = tag(SPAN_ATTRIBUTES, WIRE_LEN)
_T_STATUS = tag(SPAN_STATUS, WIRE_LEN)
_T_STATUS_CODE = tag(STATUS_CODE, WIRE_VARINT)
_T_KEY = tag(KEY_VALUE_KEY, WIRE_LEN)
_T_VALUE = tag(KEY_VALUE_VALUE, WIRE_LEN)
_T_STRING = tag(ANY_STRING, WIRE_LEN)
_T_BOOL = tag(ANY_BOOL, WIRE_VARINT)
_T_INT = tag(ANY_INT, WIRE_VARINT)
_T_DOUBLE = tag(ANY_DOUBLE, WIRE_FIXED64)
_T_ARRAY = tag(ANY_ARRAY, WIRE_LEN)
_T_KVLIST = tag(ANY_KVLIST, WIRE_LEN)
_T_ARRAY_VALUE = tag(ARRAY_VALUES, WIRE_LEN)
_T_KVLIST_VALUE = tag(KVLIST_VALUES, WIRE_LEN)
_T_RESOURCE_ATTRIBUTE = tag(RESOURCE_ATTRIBUTES, WIRE_LEN)
_T_SPAN = tag(SCOPE_SPANS_SPANS, WIRE_LEN)

# The id fields' key and length byte: ids are always resized to 16 and 8 bytes.
_TRACE_ID_HEAD = _T_TRACE_ID + varint(TRACE_ID_SIZE)
_SPAN_ID_HEAD = _T_SPAN_ID + varint(SPAN_ID_SIZE)
_PARENT_ID_HEAD = _T_PARENT_SPAN_ID + varint(SPAN_ID_SIZE)
_BOOL_VALUES = (_T_BOOL + b"\x00", _T_BOOL + b"\x01")
_DOUBLE = struct.Struct("<d")
_UINT64 = struct.Struct("<Q")

# ------------------------------------------------------------------------------ values


def text(value: str) -> str:
    """``value`` if protobuf can encode it; lone surrogates (``surrogateescape``) repaired."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return value


def utf8(value: str) -> bytes:
    """``text(value)`` as UTF-8 (the valid case, nearly every one, encoded once)."""
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        return text(value).encode("utf-8")


def any_value(value: Any, key: str | None = None) -> bytes | None:
    """The body of the ``AnyValue`` ``_encode.set_value`` fills for ``value``, or ``None``
    where it sets nothing (the message would be absent from its ``KeyValue``)."""
    if isinstance(value, str):
        return len_field(_T_STRING, utf8(value))  # written even when empty: a oneof member
    if isinstance(value, bool):
        return _BOOL_VALUES[value]
    if isinstance(value, NUMBER):
        if key in INT_KEYS:
            return _T_INT + signed_varint(int(value), _INT64_MIN, _INT64_MAX)
        return _T_DOUBLE + _DOUBLE.pack(float(value))
    if isinstance(value, Mapping):
        entries = key_values(value, _T_KVLIST_VALUE)
        return len_field(_T_KVLIST, entries) if entries else None
    if isinstance(value, list | tuple):
        if not value:
            return None
        # Every item is an element, an empty AnyValue where set_value sets nothing.
        items = b"".join([len_field(_T_ARRAY_VALUE, any_value(item) or b"") for item in value])
        return len_field(_T_ARRAY, items)
    return None


def key_value(key: Any, value: Any) -> bytes:
    """The body of a ``KeyValue`` for one attribute (the key as ``text(str(key))``)."""
    name = utf8(str(key))
    body = len_field(_T_KEY, name) if name else b""  # proto3: an empty key is left out
    payload = any_value(value, key)
    if payload is not None:
        body += len_field(_T_VALUE, payload)
    return body


def key_values(attributes: Mapping[Any, Any], key: bytes) -> bytes:
    """``attributes`` as repeated KeyValue fields with field key ``key``, skipping ``None``
    values like ``_encode.add_attributes``."""
    return b"".join([
        len_field(key, key_value(name, value))
        for name, value in attributes.items() if value is not None
    ])


# ------------------------------------------------------------------------------ spans

# A batch's cache of encoded attribute fields (key + length + KeyValue), two kinds of keys:
# - the attribute's ``(key, value)`` item itself, for a ``str`` value under a ``str`` key: the
#   hot path looks the item up without checking types, which is safe because only strings
#   compare equal to a string (a ``str`` subclass encodes the same);
# - ``(key, type, value)`` for an int, bool or float value: the type is part of the key because
#   ``1 == 1.0 == True`` but ``True`` encodes as bool_value, and float zeros are not cached
#   because ``0.0 == -0.0`` but their doubles differ.
# The two never meet: a 2-tuple never equals a 3-tuple. Most attributes repeat from span to
# span (method, host, route, peer, try count), so most are one dict lookup.
AttributeCache = dict[tuple[Any, ...], bytes]


def attribute_field(key: Any, value: Any) -> bytes:
    """One ``Span.attributes`` field: key, length, ``KeyValue``."""
    return len_field(_T_ATTRIBUTE, key_value(key, value))


def _attribute(item: tuple[Any, Any], cache: AttributeCache) -> bytes:
    """An attribute not found by its item in ``cache``: encoded (and cached when it can be);
    ``b""`` for a ``None`` value, which Kong never sets."""
    key, value = item
    kind = type(value)
    if kind is str:
        field = attribute_field(key, value)
        if type(key) is str:
            cache[item] = field
        return field
    if type(key) is str and (
        kind is int or kind is bool or (kind is float and value != 0.0)
    ):
        typed = (key, kind, value)
        cached = cache.get(typed)
        if cached is None:
            cached = cache[typed] = attribute_field(key, value)
        return cached
    return b"" if value is None else attribute_field(key, value)


def _enum(key: bytes, value: int) -> bytes:
    return key + signed_varint(value, _INT32_MIN, _INT32_MAX)


def _fixed64(key: bytes, value: int) -> bytes:
    """A fixed64 field, left out when zero (proto3 default)."""
    if not 0 <= value < _UINT64_LIMIT:
        raise ValueError(f"Value out of range: {value}")
    return key + _UINT64.pack(value) if value else b""


_KINDS = tuple(_T_KIND + varint(kind) if kind else b"" for kind in range(6))
_STATUSES = tuple(
    len_field(_T_STATUS, _T_STATUS_CODE + varint(code)) if code else b"" for code in range(3)
)


class SpanLayout:
    """What spans with one name, kind and parent presence share: the encoded name and kind
    fields, and a ``struct`` that writes fields 1-8 in one call when both times are set and
    in range (the usual case): ``head(trace id key, trace id, span id key, span id,
    [parent key, parent id,] name_kind, start key, start, end key, end)``."""

    __slots__ = ("head", "name_kind")

    def __init__(self, name: str, kind: int, parent: bool) -> None:
        encoded = utf8(name)
        self.name_kind = (len_field(_T_NAME, encoded) if encoded else b"") + (
            _KINDS[kind] if type(kind) is int and 0 <= kind < len(_KINDS) else _enum(_T_KIND, kind)
        )
        ids = f"2s{TRACE_ID_SIZE}s2s{SPAN_ID_SIZE}s" + (f"2s{SPAN_ID_SIZE}s" if parent else "")
        self.head = struct.Struct(f"<{ids}{len(self.name_kind)}scQcQ").pack


_SPAN_PLACEHOLDER = _T_SPAN + b"\x00\x00"  # the key and a two-byte length, filled in after


def add_span(
    buf: bytearray, span: SpanData, cache: AttributeCache, layouts: dict[Any, SpanLayout]
) -> None:
    """Append one ``ScopeSpans.spans`` field to ``buf``, shaped as ``_encode.fill_span``
    shapes the message (ids resized to 16 and 8 bytes, an empty parent left out, status only
    for a non-zero code); ``layouts``: the batch's ``SpanLayout`` by (name, kind, parent)."""
    trace_id, span_id, parent_id = span.trace_id, span.span_id, span.parent_span_id
    if len(trace_id) != TRACE_ID_SIZE:
        trace_id = resize_id(trace_id, TRACE_ID_SIZE)
    if len(span_id) != SPAN_ID_SIZE:
        span_id = resize_id(span_id, SPAN_ID_SIZE)
    if parent_id and len(parent_id) != SPAN_ID_SIZE:
        parent_id = resize_id(parent_id, SPAN_ID_SIZE)
    layout_key = (span.name, span.kind, bool(parent_id))
    layout = layouts.get(layout_key)
    if layout is None:
        layout = layouts[layout_key] = SpanLayout(*layout_key)
    start, end = span.start_time_unix_nano, span.end_time_unix_nano

    buf += _SPAN_PLACEHOLDER
    body_start = len(buf)
    if 0 < start < _UINT64_LIMIT and 0 < end < _UINT64_LIMIT:
        if parent_id:
            buf += layout.head(_TRACE_ID_HEAD, trace_id, _SPAN_ID_HEAD, span_id,
                               _PARENT_ID_HEAD, parent_id, layout.name_kind,
                               _T_START, start, _T_END, end)
        else:
            buf += layout.head(_TRACE_ID_HEAD, trace_id, _SPAN_ID_HEAD, span_id,
                               layout.name_kind, _T_START, start, _T_END, end)
    else:  # a zero time is left out; one out of range raises
        buf += _TRACE_ID_HEAD + trace_id + _SPAN_ID_HEAD + span_id
        if parent_id:
            buf += _PARENT_ID_HEAD + parent_id
        buf += layout.name_kind + _fixed64(_T_START, start) + _fixed64(_T_END, end)
    attributes = span.attributes
    mark = len(buf)
    get = cache.get
    try:
        for item in attributes.items():
            buf += get(item) or _attribute(item, cache)  # cached fields are never empty
    except TypeError:  # an unhashable value (a list, a mapping): the attributes again,
        del buf[mark:]  # without looking items up
        for item in attributes.items():
            buf += _attribute(item, cache)
    code = span.status_code
    if code:
        buf += _STATUSES[code] if type(code) is int and 0 < code < len(_STATUSES) else len_field(
            _T_STATUS, _enum(_T_STATUS_CODE, code))

    size = len(buf) - body_start
    if 0x80 <= size < 0x4000:  # the placeholder's two bytes: low seven bits first
        buf[body_start - 2] = size & 0x7F | 0x80
        buf[body_start - 1] = size >> 7
    else:  # a one-byte (or longer than two) length: the body moves
        buf[body_start - 2:body_start] = varint(size)


class TraceBody:
    """An ``ExportTraceServiceRequest`` body built span by span (``add`` may be called for
    slices of a batch): one ResourceSpans with the resource (``resource_attributes`` already
    merged with the defaults), one ScopeSpans with ``scope`` (the InstrumentationScope body) and
    the spans added; ``finish`` returns the bytes."""

    __slots__ = ("_buf", "_cache", "_layouts", "_resource")

    def __init__(self, resource_attributes: Mapping[Any, Any], scope: bytes) -> None:
        # The resource first, as the reference encoder does: the same error for bad input.
        self._resource = key_values(resource_attributes, _T_RESOURCE_ATTRIBUTE)
        self._cache: AttributeCache = {}
        self._layouts: dict[Any, SpanLayout] = {}
        self._buf = bytearray(len_field(tag(SCOPE_SPANS_SCOPE, WIRE_LEN), scope))  # ScopeSpans

    def add(self, spans: Iterable[SpanData]) -> None:
        buf, cache, layouts = self._buf, self._cache, self._layouts
        for one in spans:
            add_span(buf, one, cache, layouts)

    def finish(self) -> bytes:
        buf = self._buf
        # The enclosing messages' keys and lengths go in front: one copy of the spans at the end.
        resource_spans_head = (
            len_field(tag(RESOURCE_SPANS_RESOURCE, WIRE_LEN), self._resource)  # always present
            + tag(RESOURCE_SPANS_SCOPE_SPANS, WIRE_LEN)
            + varint(len(buf))
        )
        head = (
            tag(REQUEST_RESOURCE_SPANS, WIRE_LEN)
            + varint(len(resource_spans_head) + len(buf))
            + resource_spans_head
        )
        return b"".join((head, buf))


def scope(name: str, version: str) -> bytes:
    """An ``InstrumentationScope`` body."""
    body = len_field(tag(SCOPE_NAME, WIRE_LEN), utf8(name)) if name else b""
    if version:
        body += len_field(tag(SCOPE_VERSION, WIRE_LEN), utf8(version))
    return body
