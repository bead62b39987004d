"""Trace-context propagation shared by the tracing plugins, as Kong 3.10 does it.

Kong's ``kong.observability.tracing.propagation`` reads an incoming trace context with the first
configured extractor that finds one, lets the plugin decide what to send on, clears configured
headers and writes the context with every configured injector. This module is that pipeline
without any I/O: ``extract`` and ``inject`` are pure functions over header mappings, and
``propagate`` applies the result to a ``RequestContext``.

Formats: W3C ``traceparent`` (with ``tracestate`` passed through), B3 multi-header and single
``b3`` header, Jaeger ``uber-trace-id``, OpenTracing ``ot-tracer-*``, Datadog, AWS X-Ray, GCP
``x-cloud-trace-context`` and Instana ``x-instana-*`` (relayq follows Instana's published
header format for the last; the others follow Kong's extractors and injectors).

Malformed input never raises: like Kong, a bad header is logged at WARNING and ignored. Where
relayq differs on purpose: an extractor counts as having found a context only when it read a
trace id or a sampling decision (Kong's B3 extractor "matches" a request that merely carries a
W3C ``tracestate`` header and then hides its ``traceparent``); a B3 ``x-b3-flags`` value other
than ``1`` is dropped instead of being forwarded; Jaeger's ``0`` parent id means "no parent";
a Datadog trace id of ``0`` is invalid.
"""

from __future__ import annotations

import logging
import os
import random
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from relayq.plugins import _typedefs as t
from relayq.plugins._schema import Field, record
from relayq.serializer import RequestContext

log = logging.getLogger("relayq.plugins.propagation")

W3C = "w3c"
B3 = "b3"
B3_SINGLE = "b3-single"
JAEGER = "jaeger"
OT = "ot"
DATADOG = "datadog"
AWS = "aws"
GCP = "gcp"
INSTANA = "instana"
PRESERVE = "preserve"
IGNORE = "ignore"

FORMATS: tuple[str, ...] = (W3C, B3, B3_SINGLE, JAEGER, OT, DATADOG, AWS, GCP, INSTANA)
"""Every header format relayq can inject (Kong's ``propagation`` formats)."""

EXTRACT_FORMATS: tuple[str, ...] = tuple(f for f in FORMATS if f != B3_SINGLE)
"""Formats allowed in ``propagation.extract``: one B3 extractor reads both B3 variants."""

INJECT_FORMATS: tuple[str, ...] = (PRESERVE, *FORMATS)
"""Values allowed in ``propagation.inject``."""

HEADER_TYPES: tuple[str, ...] = (
    PRESERVE,
    IGNORE,
    B3,
    B3_SINGLE,
    W3C,
    JAEGER,
    OT,
    AWS,
    GCP,
    DATADOG,
    INSTANA,
)
"""Values of the deprecated ``header_type`` field, in Kong's order."""

# The order the pre-3.7 propagation module tried formats in; the legacy ``header_type``
# conversion keeps it so old configs keep extracting what they used to.
LEGACY_EXTRACT_ORDER: tuple[str, ...] = (B3, W3C, JAEGER, OT, DATADOG, AWS, GCP, INSTANA)

TRACE_ID_SIZE = 16
SPAN_ID_SIZE = 8

_HEX = "0-9a-fA-F"
_W3C_RE = re.compile(rf"([{_HEX}]+)-([{_HEX}]+)-([{_HEX}]+)-([{_HEX}]+)")
_B3_SINGLE_RE = re.compile(rf"([{_HEX}]+)-([{_HEX}]{{16}})-?([01d]?)-?([{_HEX}]*)")
_JAEGER_RE = re.compile(rf"([{_HEX}]+):([{_HEX}]+):([{_HEX}]+):([{_HEX}]+)")
_AWS_ROOT_RE = re.compile(rf"([{_HEX}]+)-([{_HEX}]+)-([{_HEX}]+)")
_GCP_RE = re.compile(r"([0-9a-f]{32})/([0-9]{1,20})(?:;o=([0-9]))?")
_DECIMAL_RE = re.compile(r"\s*([0-9]+)\s*")
_HEX_ONLY_RE = re.compile(rf"[{_HEX}]+")
_UNSAFE_RE = re.compile(r"[\r\n\0]")  # would let a forwarded value inject headers

# A repeated header (a list of values) is never a valid single trace header; it is replaced by
# a value that fails every format's validation, so it is reported and ignored like Kong does.
_REPEATED = "<repeated header>"


@dataclass(slots=True)
class TraceContext:
    """A trace context read from headers or to be written to them (Kong's extractor table).

    Ids are raw bytes. After ``extract`` the trace id is 16 bytes and span ids 8 bytes (left
    padded with zero bytes or truncated to the last bytes, as Kong does), and
    ``trace_id_original_size`` remembers the incoming size so injectors that allow both 8 and
    16 byte trace ids can keep it. ``span_id`` is the caller's span (W3C's parent-id);
    ``parent_id`` is only set by formats that share a span between client and server (B3,
    Jaeger; ``reuse_span_id``).
    """

    trace_id: bytes | None = None
    span_id: bytes | None = None
    parent_id: bytes | None = None
    should_sample: bool | None = None
    reuse_span_id: bool = False
    flags: str | None = None  # B3 debug flag, "1" when set
    w3c_flags: int | None = None
    single_header: bool = False
    baggage: Mapping[str, str] | None = None
    tracestate: str | None = None
    trace_id_original_size: int | None = None

    def found(self) -> bool:
        """Whether an extractor read anything that identifies or samples a trace."""
        return (
            self.trace_id is not None
            or self.span_id is not None
            or self.should_sample is not None
            or self.flags is not None
        )


@dataclass(frozen=True, slots=True)
class PropagationConfig:
    """Kong's ``propagation`` record after the legacy ``header_type`` conversion.

    ``extract``/``inject`` of ``None`` or empty mean "do not extract" / "do not inject".
    """

    extract: tuple[str, ...] | None = None
    inject: tuple[str, ...] | None = None
    clear: tuple[str, ...] = ()
    default_format: str = W3C


@dataclass(slots=True)
class Injection:
    """What ``inject`` produced: headers to set upstream, the trace id per format, errors."""

    headers: dict[str, str] = field(default_factory=dict)
    trace_ids: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# configuration


def propagation_config(config: Mapping[str, Any]) -> PropagationConfig:
    """Kong's ``propagation.get_plugin_params``: the effective propagation settings of a plugin.

    When the ``propagation`` record sets ``extract``, ``inject`` or ``clear`` it is used as is.
    Otherwise the deprecated ``default_header_type`` and ``header_type`` fields are converted:
    ``preserve`` extracts every format (in the old order) and injects the incoming one;
    ``ignore`` extracts nothing and injects ``default_format``; a format name extracts every
    format and injects both the incoming format and that one.
    """
    record: Mapping[str, Any] = config.get("propagation") or {}
    default_format = record.get("default_format") or W3C
    extract = _tuple_or_none(record.get("extract"))
    inject = _tuple_or_none(record.get("inject"))
    clear = _tuple_or_none(record.get("clear")) or ()
    if extract is not None or inject is not None or clear:
        return PropagationConfig(extract, inject, tuple(h.lower() for h in clear), default_format)

    if config.get("default_header_type") is not None:
        default_format = config["default_header_type"]
    header_type = config.get("header_type")
    if header_type is None:
        return PropagationConfig(None, None, (), default_format)
    if header_type == PRESERVE:
        return PropagationConfig(LEGACY_EXTRACT_ORDER, (PRESERVE,), (), default_format)
    if header_type == IGNORE:
        return PropagationConfig(None, (default_format,), (), default_format)
    return PropagationConfig(LEGACY_EXTRACT_ORDER, (PRESERVE, header_type), (), default_format)


def _tuple_or_none(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(value)


def propagation_field(default_format: str) -> Field:
    """Kong's ``propagation`` record; its default applies only when the record is absent.

    A partial record must name ``default_format`` itself (Kong's rule for required fields in a
    user-supplied record).
    """
    return record(
        {
            "extract": Field(
                type="array",
                default=None,
                elements=Field(type="string", one_of=EXTRACT_FORMATS),
                description="Header formats used to extract tracing context from incoming "
                "requests; the first one found is used. Empty: no extraction.",
            ),
            "clear": Field(
                type="array",
                default=None,
                elements=t.header_name(),
                description="Header names to clear after context extraction.",
            ),
            "inject": Field(
                type="array",
                default=None,
                elements=Field(type="string", one_of=INJECT_FORMATS),
                description="Header formats used to inject tracing context; `preserve` uses the "
                "incoming format. Empty: no injection.",
            ),
            "default_format": Field(
                type="string",
                required=True,
                one_of=FORMATS,
                description="The format `preserve` injects when no incoming format was found.",
            ),
        },
        default={"default_format": default_format},
    )


# --------------------------------------------------------------------------------------------
# ids and sampling


def new_trace_id(size: int = TRACE_ID_SIZE) -> bytes:
    """A random non-zero trace id of ``size`` bytes (W3C forbids the all-zero id)."""
    while True:
        value = random.getrandbits(size * 8)
        if value:
            return value.to_bytes(size, "big")


def new_span_id() -> bytes:
    """A random non-zero 8-byte span id."""
    # new_trace_id(SPAN_ID_SIZE) spelled out: two or three of these run for every request.
    while True:
        value = random.getrandbits(64)
        if value:
            return value.to_bytes(SPAN_ID_SIZE, "big")


def resize_id(value: bytes, size: int) -> bytes:
    """Kong's ``to_id_size``: keep the last ``size`` bytes, or left-pad with zero bytes."""
    n = len(value)
    if n > size:
        return value[-size:]
    if n < size:
        return bytes(size - n) + value
    return value


_BOUND_MAX = 2.0**64


def trace_id_sampled(trace_id: bytes, rate: float) -> bool:
    """Kong's trace-id based sampler: the same trace id always gets the same decision.

    The first 8 bytes, read as the little-endian unsigned integer Kong's FFI cast sees on
    x86-64 and arm64, are compared with ``rate * 2**64``.
    """
    if rate >= 1:
        return True
    if rate <= 0 or len(trace_id) < 8:
        return False
    return int.from_bytes(trace_id[:8], "little") < rate * _BOUND_MAX


def sampling_decision(parent_sampled: bool | None, trace_id: bytes, rate: float) -> bool:
    """Kong's ``tracer:get_sampling_decision``: a parent's "not sampled" wins, else the rate."""
    if parent_sampled is False:
        return False
    return trace_id_sampled(trace_id, rate)


_node_id = os.environ.get("RELAYQ_NODE_ID") or str(uuid.uuid4())


def node_id() -> str:
    """The node id tracing data reports (Kong's ``kong.node.get_id()``).

    ``RELAYQ_NODE_ID`` if set, else a random UUID chosen once per process tree: forked workers
    share it, as Kong's workers share their node's id.
    """
    return _node_id


# --------------------------------------------------------------------------------------------
# header access


class _Headers:
    """Read access to request headers (lower-case names) that tolerates repeated values."""

    __slots__ = ("_raw",)

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self._raw = raw

    def has_any(self, names: Iterable[str]) -> bool:
        raw = self._raw
        return any(name in raw for name in names)

    def get(self, name: str) -> str | None:
        value = self._raw.get(name)
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list | tuple) and len(value) == 1 and isinstance(value[0], str):
            return value[0]
        return _REPEATED

    def get_all(self, name: str) -> list[str]:
        value = self._raw.get(name)
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        if isinstance(value, list | tuple):
            return [v for v in value if isinstance(v, str)]
        return []

    def with_prefix(self, prefix: str) -> dict[str, str] | None:
        found: dict[str, str] | None = None
        for name, value in self._raw.items():
            if isinstance(name, str) and name.startswith(prefix) and isinstance(value, str):
                if found is None:
                    found = {}
                found[name[len(prefix) :]] = unquote(value)
        return found


def _from_hex(text: str) -> bytes:
    if len(text) % 2:
        text = "0" + text
    return bytes.fromhex(text)


def _is_hex(text: str, *lengths: int) -> bool:
    return len(text) in lengths and _HEX_ONLY_RE.fullmatch(text) is not None


def _int_bytes(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


# --------------------------------------------------------------------------------------------
# extractors: each returns raw (unsized) ids, or None when it found nothing usable


def _extract_w3c(h: _Headers) -> TraceContext | None:
    traceparent = h.get("traceparent")
    if not traceparent:
        return None
    m = _W3C_RE.fullmatch(traceparent)
    if m is None:
        log.warning("invalid W3C traceparent header; ignoring.")
        return None
    version, trace_id, parent_id, flags = m.groups()
    if version != "00":
        log.warning("invalid W3C Trace Context version; ignoring.")
        return None
    if len(trace_id) != 32 or int(trace_id, 16) == 0:
        log.warning("invalid W3C trace context trace ID; ignoring.")
        return None
    if len(parent_id) != 16 or int(parent_id, 16) == 0:
        log.warning("invalid W3C trace context parent ID; ignoring.")
        return None
    if len(flags) != 2:
        log.warning("invalid W3C trace context flags; ignoring.")
        return None
    w3c_flags = int(flags, 16)
    tracestate = ",".join(v for v in h.get_all("tracestate") if v) or None
    if tracestate is not None and _UNSAFE_RE.search(tracestate):
        log.warning("invalid W3C tracestate header; ignoring.")
        tracestate = None
    return TraceContext(
        trace_id=bytes.fromhex(trace_id),
        span_id=bytes.fromhex(parent_id),
        should_sample=bool(w3c_flags & 1),
        w3c_flags=w3c_flags,
        tracestate=tracestate,
    )


def _b3_single_value(h: _Headers) -> str | None:
    value = h.get("b3")
    if value is not None:
        return value
    for entry in h.get_all("tracestate"):
        if entry.startswith("b3=") and len(entry) > 3:
            return entry[3:]
    return None


def _extract_b3(h: _Headers) -> TraceContext | None:
    trace_id: str | None = None
    span_id: str | None = None
    parent_id: str | None = None
    should_sample: bool | None = None
    flags: str | None = None
    single_header = False

    single = _b3_single_value(h)
    if single is not None:
        single_header = True
        if single in ("1", "d"):
            should_sample = True
            flags = "1" if single == "d" else None
        elif single == "0":
            should_sample = False
        else:
            m = _B3_SINGLE_RE.fullmatch(single)
            if m is not None and len(m[1]) in (16, 32) and len(m[4]) in (0, 16):
                trace_id, span_id = m[1], m[2]
                parent_id = m[4] or None
                if m[3] in ("1", "d"):
                    should_sample = True
                    flags = "1" if m[3] == "d" else None
                elif m[3] == "0":
                    should_sample = False
            else:
                log.warning("b3 single header invalid; ignoring.")

    sampled_header = h.get("x-b3-sampled")
    multi_sample: bool | None = None
    if sampled_header in ("1", "true"):
        multi_sample = True
    elif sampled_header in ("0", "false"):
        multi_sample = False
    elif sampled_header is not None:
        log.warning("x-b3-sampled header invalid; ignoring.")
    flags_header = h.get("x-b3-flags")
    if flags_header == "1":
        multi_sample = True
    elif flags_header is not None:
        log.warning("x-b3-flags header invalid; ignoring.")
        flags_header = None
    if should_sample is None:
        should_sample = multi_sample
    flags = flags or flags_header

    multi_ids: list[str | None] = []
    invalid = False
    for name, lengths in (
        ("x-b3-traceid", (16, 32)),
        ("x-b3-spanid", (16,)),
        ("x-b3-parentspanid", (16,)),
    ):
        value = h.get(name)
        if value is not None and not _is_hex(value, *lengths):
            log.warning("%s header invalid; ignoring.", name)
            invalid = True
            value = None
        multi_ids.append(value)
    if not invalid:
        trace_id = trace_id or multi_ids[0]
        span_id = span_id or multi_ids[1]
        parent_id = parent_id or multi_ids[2]

    if trace_id is None:
        span_id = parent_id = None
    return TraceContext(
        trace_id=_from_hex(trace_id) if trace_id else None,
        span_id=_from_hex(span_id) if span_id else None,
        parent_id=_from_hex(parent_id) if parent_id else None,
        should_sample=should_sample,
        reuse_span_id=True,
        flags=flags,
        single_header=single_header,
    )


def _extract_jaeger(h: _Headers) -> TraceContext | None:
    header = h.get("uber-trace-id")
    if not header:
        return None
    m = _JAEGER_RE.fullmatch(header)
    if m is None:
        log.warning("invalid jaeger uber-trace-id header; ignoring.")
        return None
    trace_id, span_id, parent_id, trace_flags = m.groups()
    if len(trace_id) > 32 or int(trace_id, 16) == 0:
        log.warning("invalid jaeger trace ID; ignoring.")
        return None
    parent_value = int(parent_id, 16)
    if len(parent_id) != 16 and parent_value != 0:
        log.warning("invalid jaeger parent ID; ignoring.")
    if len(span_id) > 16 or int(span_id, 16) == 0:
        log.warning("invalid jaeger span ID; ignoring.")
        return None
    if len(trace_flags) not in (1, 2):
        log.warning("invalid jaeger flags; ignoring.")
        return None
    return TraceContext(
        trace_id=_from_hex(trace_id),
        span_id=_from_hex(span_id),
        parent_id=_from_hex(parent_id) if parent_value else None,
        reuse_span_id=True,
        should_sample=bool(int(trace_flags, 16) & 1),
        baggage=h.with_prefix("uberctx-"),
    )


def _extract_ot(h: _Headers) -> TraceContext | None:
    sampled = h.get("ot-tracer-sampled")
    should_sample: bool | None = None
    if sampled in ("1", "true"):
        should_sample = True
    elif sampled in ("0", "false"):
        should_sample = False
    elif sampled is not None:
        log.warning("ot-tracer-sampled header invalid; ignoring.")
    trace_id = h.get("ot-tracer-traceid")
    span_id = h.get("ot-tracer-spanid")
    invalid = False
    if trace_id is not None and not _is_hex(trace_id, 16, 32):
        log.warning("ot-tracer-traceid header invalid; ignoring.")
        invalid = True
    if span_id is not None and not _is_hex(span_id, 16):
        log.warning("ot-tracer-spanid header invalid; ignoring.")
        invalid = True
    if trace_id is None or invalid:
        trace_id = span_id = None
    return TraceContext(
        trace_id=_from_hex(trace_id) if trace_id else None,
        span_id=_from_hex(span_id) if span_id else None,
        should_sample=should_sample,
        baggage=h.with_prefix("ot-baggage-"),
    )


def _extract_datadog(h: _Headers) -> TraceContext | None:
    priority = h.get("x-datadog-sampling-priority")
    should_sample: bool | None = None
    if priority in ("1", "2"):
        should_sample = True
    elif priority in ("0", "-1"):
        should_sample = False
    elif priority is not None:
        log.warning("x-datadog-sampling-priority header invalid; ignoring.")
        return None
    trace_id = _datadog_id(h, "x-datadog-trace-id")
    parent_id = _datadog_id(h, "x-datadog-parent-id") if trace_id is not None else None
    return TraceContext(
        trace_id=_int_bytes(trace_id) if trace_id is not None else None,
        span_id=_int_bytes(parent_id) if parent_id is not None else None,
        should_sample=should_sample,
    )


def _datadog_id(h: _Headers, name: str) -> int | None:
    value = h.get(name)
    if value is None:
        return None
    m = _DECIMAL_RE.fullmatch(value)
    if m is None or int(m[1]) == 0:
        log.warning("%s header invalid; ignoring.", name)
        return None
    return int(m[1])


def _extract_aws(h: _Headers) -> TraceContext | None:
    header = h.get("x-amzn-trace-id")
    if header is None:
        return None
    trace_id: bytes | None = None
    parent_id: bytes | None = None
    should_sample: bool | None = None
    for pair in header.split(";"):
        key, _, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        if key == "Root":
            m = _AWS_ROOT_RE.fullmatch(value)
            if m is None or len(value) != 35 or m[1] != "1" or len(m[2]) != 8 or len(m[3]) != 24:
                log.warning("invalid aws header trace id; ignoring.")
                return None
            trace_id = bytes.fromhex(m[2] + m[3])
        elif key == "Parent":
            if not _is_hex(value, 16):
                log.warning("invalid aws header parent id; ignoring.")
                return None
            parent_id = bytes.fromhex(value)
        elif key == "Sampled":
            if value not in ("0", "1"):
                log.warning("invalid aws header sampled flag; ignoring.")
                return None
            should_sample = value == "1"
    return TraceContext(trace_id=trace_id, span_id=parent_id, should_sample=should_sample)


def _extract_gcp(h: _Headers) -> TraceContext | None:
    header = h.get("x-cloud-trace-context")
    if header is None:
        return None
    m = _GCP_RE.fullmatch(header)
    if m is None:
        log.warning("invalid GCP header; ignoring.")
        return None
    return TraceContext(
        trace_id=bytes.fromhex(m[1]),
        span_id=_int_bytes(int(m[2])),
        should_sample=m[3] == "1",
    )


def _extract_instana(h: _Headers) -> TraceContext | None:
    trace_id = h.get("x-instana-t")
    span_id = h.get("x-instana-s")
    level = h.get("x-instana-l")
    should_sample: bool | None = None
    if level is not None:
        head = level.split(",", 1)[0].strip()
        if head == "0":
            should_sample = False
        elif head == "1":
            should_sample = True
        else:
            log.warning("x-instana-l header invalid; ignoring.")
    if trace_id is not None and not _is_hex(trace_id, 16, 32):
        log.warning("x-instana-t header invalid; ignoring.")
        trace_id = None
    if span_id is not None and not _is_hex(span_id, 16):
        log.warning("x-instana-s header invalid; ignoring.")
        span_id = None
    if trace_id is None or span_id is None:
        trace_id = span_id = None
    return TraceContext(
        trace_id=_from_hex(trace_id) if trace_id else None,
        span_id=_from_hex(span_id) if span_id else None,
        should_sample=should_sample,
    )


_Extractor = Callable[[_Headers], TraceContext | None]

_EXTRACTORS: dict[str, tuple[tuple[str, ...], _Extractor]] = {
    W3C: (("traceparent",), _extract_w3c),
    B3: (
        (
            "b3",
            "tracestate",
            "x-b3-traceid",
            "x-b3-spanid",
            "x-b3-parentspanid",
            "x-b3-sampled",
            "x-b3-flags",
        ),
        _extract_b3,
    ),
    JAEGER: (("uber-trace-id",), _extract_jaeger),
    OT: (("ot-tracer-sampled", "ot-tracer-traceid", "ot-tracer-spanid"), _extract_ot),
    DATADOG: (
        ("x-datadog-trace-id", "x-datadog-parent-id", "x-datadog-sampling-priority"),
        _extract_datadog,
    ),
    AWS: (("x-amzn-trace-id",), _extract_aws),
    GCP: (("x-cloud-trace-context",), _extract_gcp),
    INSTANA: (("x-instana-t", "x-instana-s", "x-instana-l"), _extract_instana),
}


_Plan = tuple[frozenset[str], tuple[tuple[str, frozenset[str], _Extractor], ...]]
_PLANS: dict[tuple[str, ...], _Plan] = {}


def _plan(formats: Sequence[str]) -> _Plan:
    """The known formats of ``formats`` in order, with the header names each reads, and every
    such name at once: most requests carry none, and one set test says so."""
    key = tuple(formats)
    plan = _PLANS.get(key)
    if plan is None:
        steps = tuple(
            (fmt, frozenset(_EXTRACTORS[fmt][0]), _EXTRACTORS[fmt][1])
            for fmt in key
            if fmt in _EXTRACTORS
        )
        names = frozenset().union(*(step[1] for step in steps))
        plan = (names, steps)
        if len(_PLANS) < 256:  # configs are few; a caller passing fresh lists stays bounded
            _PLANS[key] = plan
    return plan


def extract(
    headers: Mapping[str, Any], formats: Sequence[str] | None
) -> tuple[TraceContext, str | None]:
    """Read the trace context with the first of ``formats`` that finds one.

    ``headers`` maps lower-case header names to a value or a list of values. Returns the context
    (empty when nothing was found) and the format it came from (``None`` if none). Unknown
    format names are skipped; bad header values are logged and ignored, never raised.
    """
    if not formats:
        return TraceContext(), None
    return _extract_planned(_plan(formats), headers)


def _extract_planned(plan: _Plan, headers: Mapping[str, Any]) -> tuple[TraceContext, str | None]:
    all_names, steps = plan
    if all_names.isdisjoint(headers):
        return TraceContext(), None
    h = _Headers(headers)
    for fmt, names, extractor in steps:
        if names.isdisjoint(headers):
            continue
        try:
            found = extractor(h)
        except (ValueError, TypeError, AttributeError):  # defensive: never fail a request
            log.warning("could not read %s tracing headers; ignoring.", fmt)
            found = None
        if found is not None and found.found():
            return _normalise(found), fmt
    return TraceContext(), None


def _normalise(ctx: TraceContext) -> TraceContext:
    if ctx.trace_id is not None:
        ctx.trace_id_original_size = len(ctx.trace_id)
        ctx.trace_id = resize_id(ctx.trace_id, TRACE_ID_SIZE)
    if ctx.span_id is not None:
        ctx.span_id = resize_id(ctx.span_id, SPAN_ID_SIZE)
    if ctx.parent_id is not None:
        ctx.parent_id = resize_id(ctx.parent_id, SPAN_ID_SIZE)
    return ctx


# --------------------------------------------------------------------------------------------
# injectors: each writes its headers into ``out`` (the result of ``inject`` or, for a
# ``Propagator``, the request's upstream headers: no per-format dict to build and merge)


def _headers_w3c(ctx: TraceContext, out: dict[str, str]) -> None:
    assert ctx.trace_id is not None and ctx.span_id is not None
    sampled = "01" if ctx.should_sample else "00"
    out["traceparent"] = f"00-{ctx.trace_id.hex()}-{ctx.span_id.hex()}-{sampled}"
    if ctx.tracestate:
        out["tracestate"] = ctx.tracestate


def _headers_b3(ctx: TraceContext, out: dict[str, str]) -> None:
    if ctx.trace_id is not None and ctx.span_id is not None:
        out["x-b3-traceid"] = ctx.trace_id.hex()
        out["x-b3-spanid"] = ctx.span_id.hex()
        if ctx.parent_id is not None:
            out["x-b3-parentspanid"] = ctx.parent_id.hex()
    if ctx.flags:
        out["x-b3-flags"] = ctx.flags
    else:
        out["x-b3-sampled"] = "1" if ctx.should_sample else "0"


def _headers_b3_single(ctx: TraceContext, out: dict[str, str]) -> None:
    sampled: str | None = None
    if ctx.flags == "1":
        sampled = "d"
    elif ctx.should_sample:
        sampled = "1"
    elif ctx.should_sample is False:
        sampled = "0"
    if ctx.trace_id is None or ctx.span_id is None:
        out["b3"] = sampled or "0"
        return
    value = f"{ctx.trace_id.hex()}-{ctx.span_id.hex()}"
    if sampled:
        value += "-" + sampled
    if ctx.parent_id is not None:
        value += "-" + ctx.parent_id.hex()
    out["b3"] = value


def _baggage_headers(prefix: str, baggage: Mapping[str, str] | None, out: dict[str, str]) -> None:
    if baggage:
        for k, v in baggage.items():
            out[prefix + k] = quote(v, safe="")


def _headers_jaeger(ctx: TraceContext, out: dict[str, str]) -> None:
    assert ctx.trace_id is not None and ctx.span_id is not None
    parent = ctx.parent_id.hex() if ctx.parent_id is not None else "0"
    sampled = "01" if ctx.should_sample else "00"
    out["uber-trace-id"] = f"{ctx.trace_id.hex()}:{ctx.span_id.hex()}:{parent}:{sampled}"
    _baggage_headers("uberctx-", ctx.baggage, out)


def _headers_ot(ctx: TraceContext, out: dict[str, str]) -> None:
    assert ctx.trace_id is not None and ctx.span_id is not None
    out["ot-tracer-traceid"] = ctx.trace_id.hex()
    out["ot-tracer-spanid"] = ctx.span_id.hex()
    if ctx.should_sample is not None:
        out["ot-tracer-sampled"] = "1" if ctx.should_sample else "0"
    _baggage_headers("ot-baggage-", ctx.baggage, out)


def _headers_datadog(ctx: TraceContext, out: dict[str, str]) -> None:
    if ctx.trace_id is not None:
        out["x-datadog-trace-id"] = str(int.from_bytes(ctx.trace_id, "big"))
    if ctx.span_id is not None:
        out["x-datadog-parent-id"] = str(int.from_bytes(ctx.span_id, "big"))
    if ctx.should_sample is not None:
        out["x-datadog-sampling-priority"] = "1" if ctx.should_sample else "0"


def _headers_aws(ctx: TraceContext, out: dict[str, str]) -> None:
    assert ctx.trace_id is not None and ctx.span_id is not None
    trace = ctx.trace_id.hex()
    sampled = "1" if ctx.should_sample else "0"
    value = f"Root=1-{trace[:8]}-{trace[8:]};Parent={ctx.span_id.hex()};Sampled={sampled}"
    out["x-amzn-trace-id"] = value


def _headers_gcp(ctx: TraceContext, out: dict[str, str]) -> None:
    assert ctx.trace_id is not None and ctx.span_id is not None
    span = int.from_bytes(ctx.span_id, "big")
    sampled = "1" if ctx.should_sample else "0"
    out["x-cloud-trace-context"] = f"{ctx.trace_id.hex()}/{span};o={sampled}"


def _headers_instana(ctx: TraceContext, out: dict[str, str]) -> None:
    assert ctx.trace_id is not None and ctx.span_id is not None
    out["x-instana-t"] = ctx.trace_id.hex()
    out["x-instana-s"] = ctx.span_id.hex()
    out["x-instana-l"] = "0" if ctx.should_sample is False else "1"


def _hex_id(trace_id: bytes | None) -> str:
    return trace_id.hex() if trace_id is not None else ""


def _decimal_id(trace_id: bytes | None) -> str:
    return str(int.from_bytes(trace_id, "big")) if trace_id is not None else ""


@dataclass(frozen=True, slots=True)
class _Injector:
    sizes: tuple[int, ...]  # allowed trace id sizes, the first is the default
    requires_ids: bool
    headers: Callable[[TraceContext, dict[str, str]], None]
    trace_id_key: str
    format_trace_id: Callable[[bytes | None], str] = _hex_id


_INJECTORS: dict[str, _Injector] = {
    W3C: _Injector((16,), True, _headers_w3c, W3C),
    B3: _Injector((16, 8), False, _headers_b3, B3),
    B3_SINGLE: _Injector((16, 8), False, _headers_b3_single, B3),
    JAEGER: _Injector((16, 8), True, _headers_jaeger, JAEGER),
    OT: _Injector((8, 16), True, _headers_ot, OT),
    DATADOG: _Injector((8,), False, _headers_datadog, DATADOG, _decimal_id),
    AWS: _Injector((16,), True, _headers_aws, AWS),
    GCP: _Injector((16,), True, _headers_gcp, GCP),
    INSTANA: _Injector((16, 8), True, _headers_instana, INSTANA),
}


# One planned inject step: a format and its injector; ``None`` for ``preserve`` (resolved per
# request) and for unknown formats (reported per request, as Kong does).
_InjectStep = tuple[str, _Injector | None]


def _inject_plan(formats: Sequence[str] | None) -> tuple[_InjectStep, ...]:
    return tuple((fmt, _INJECTORS.get(fmt)) for fmt in formats or ())


def inject(
    ctx: TraceContext,
    formats: Sequence[str] | None,
    *,
    extracted_from: str | None = None,
    default_format: str = W3C,
) -> Injection:
    """Headers for every format in ``formats``, each sized for its format.

    ``preserve`` means the format the context was extracted from (B3 keeps single or multi
    header), else ``default_format``. A format that needs ids the context lacks is reported in
    ``errors`` with Kong's text and skipped.
    """
    result = Injection({}, {}, [])
    if formats:
        _inject_into(
            result.headers,
            result.trace_ids,
            result.errors,
            ctx,
            _inject_plan(formats),
            extracted_from,
            default_format,
        )
    return result


def _inject_into(
    headers: dict[str, str],
    trace_ids: dict[str, str],
    errors: list[str],
    ctx: TraceContext,
    steps: tuple[_InjectStep, ...],
    extracted_from: str | None,
    default_format: str,
) -> None:
    """``inject``'s work, writing into the given mappings: the headers each step makes replace
    earlier ones of the same name, in step order, as ``dict.update`` of ``inject``'s result
    would."""
    for fmt, injector in steps:
        if injector is None:
            if fmt == PRESERVE:
                fmt = extracted_from or default_format or W3C
                if fmt == B3 and ctx.single_header:
                    fmt = B3_SINGLE
                injector = _INJECTORS.get(fmt)
            if injector is None:
                errors.append(f"unknown propagation format: {fmt}")
                continue
        if injector.requires_ids and (ctx.trace_id is None or ctx.span_id is None):
            missing = "trace_id" if ctx.trace_id is None else "span_id"
            errors.append(
                f"{fmt} injector context is invalid: field {missing} not found in context"
            )
            continue
        sized = _sized_for(ctx, injector.sizes)
        injector.headers(sized, headers)
        trace_ids[injector.trace_id_key] = injector.format_trace_id(sized.trace_id)


def _sized_for(ctx: TraceContext, sizes: tuple[int, ...]) -> TraceContext:
    original = ctx.trace_id_original_size
    size = original if original in sizes else sizes[0]
    trace_id, span_id, parent_id = ctx.trace_id, ctx.span_id, ctx.parent_id
    if (
        (trace_id is None or len(trace_id) == size)
        and (span_id is None or len(span_id) == SPAN_ID_SIZE)
        and (parent_id is None or len(parent_id) == SPAN_ID_SIZE)
    ):
        return ctx  # already sized: injectors only read it
    return with_ids(
        ctx,
        trace_id=resize_id(trace_id, size) if trace_id is not None else None,
        span_id=resize_id(span_id, SPAN_ID_SIZE) if span_id is not None else None,
        parent_id=resize_id(parent_id, SPAN_ID_SIZE) if parent_id is not None else None,
        should_sample=ctx.should_sample,
        trace_id_original_size=original,
    )


def with_ids(
    ctx: TraceContext,
    *,
    trace_id: bytes | None,
    span_id: bytes | None,
    parent_id: bytes | None,
    should_sample: bool | None,
    trace_id_original_size: int | None,
) -> TraceContext:
    """A copy of ``ctx`` with new ids and sampling decision (``dataclasses.replace`` spelled
    out: ``replace`` costs several times more)."""
    # Positional, in field order: a class called with keywords costs twice as much (the
    # keywords go through a dict). test_tracing_fast checks this against ``replace``.
    return TraceContext(
        trace_id,
        span_id,
        parent_id,
        should_sample,
        ctx.reuse_span_id,
        ctx.flags,
        ctx.w3c_flags,
        ctx.single_header,
        ctx.baggage,
        ctx.tracestate,
        trace_id_original_size,
    )


# --------------------------------------------------------------------------------------------
# applying to a request


def propagate(
    request: RequestContext,
    conf: PropagationConfig,
    inject_ctx: TraceContext,
    extracted_from: str | None,
) -> Injection:
    """Clear ``conf.clear`` headers, then inject ``inject_ctx`` into the upstream request.

    Writes ``request.upstream_headers_cleared`` / ``request.upstream_headers`` (the host applies
    them when proxying) and merges the per-format trace ids into ``request.trace_id`` (the log
    serializer's ``trace_id`` field). Injection errors are logged, never raised.
    """
    _clear(request, conf.clear)
    injection = inject(
        inject_ctx,
        conf.inject,
        extracted_from=extracted_from,
        default_format=conf.default_format,
    )
    request.upstream_headers.update(injection.headers)
    request.trace_id.update(injection.trace_ids)
    if injection.errors:
        log.error("%s", ", ".join(injection.errors))
    return injection


def _clear(request: RequestContext, names: tuple[str, ...]) -> None:
    for name in names:
        request.upstream_headers.pop(name, None)
        if name not in request.upstream_headers_cleared:
            request.upstream_headers_cleared.append(name)


class Propagator:
    """``extract`` and ``propagate`` for one plugin's ``PropagationConfig``, with what depends
    only on the config (the extract plan, each inject format's injector) looked up once: the
    plugins build one in ``__init__`` and use it on every request."""

    __slots__ = ("_extract_plan", "_inject_steps", "config")

    def __init__(self, config: PropagationConfig) -> None:
        self.config = config
        self._extract_plan: _Plan | None = _plan(config.extract) if config.extract else None
        self._inject_steps = _inject_plan(config.inject)

    def extract(self, headers: Mapping[str, Any]) -> tuple[TraceContext, str | None]:
        """``extract(headers, config.extract)``."""
        plan = self._extract_plan
        # Most requests carry no trace header: answer them without another call.
        if plan is None or plan[0].isdisjoint(headers):
            return TraceContext(), None
        return _extract_planned(plan, headers)

    def propagate(
        self, request: RequestContext, inject_ctx: TraceContext, extracted_from: str | None
    ) -> None:
        """``propagate(request, config, inject_ctx, extracted_from)`` without building the
        ``Injection`` it returns: the headers and trace ids go straight into ``request``."""
        config = self.config
        if config.clear:
            _clear(request, config.clear)
        errors: list[str] = []
        _inject_into(
            request.upstream_headers,
            request.trace_id,
            errors,
            inject_ctx,
            self._inject_steps,
            extracted_from,
            config.default_format,
        )
        if errors:
            log.error("%s", ", ".join(errors))
