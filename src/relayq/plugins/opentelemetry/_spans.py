"""The spans one request produces, built from what the host recorded in its ``RequestContext``.

Kong's tracer records a ``kong`` SERVER span for every request, a ``kong.router`` span while
routing, and one ``kong.balancer`` CLIENT span per upstream try. The last try's span is created
early, in the access phase, because its id is what the upstream receives as its parent; so a
trace seen in the collector links Kong's spans to the upstream's without a gap. relayq keeps
that shape: ``RequestTrace`` holds the ids decided in the access phase, and ``request_spans``
turns the host's timings into finished spans in the log phase. Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from relayq.plugins._propagation import new_span_id
from relayq.serializer import RequestContext

_NUMBER = (int, float)  # isinstance with a tuple constant: `int | float` builds a union each call

KIND_INTERNAL = 1
KIND_SERVER = 2
KIND_CLIENT = 3
STATUS_ERROR = 2

ROOT_SPAN = "kong"
ROUTER_SPAN = "kong.router"
BALANCER_SPAN = "kong.balancer"


@dataclass(slots=True)
class SpanData:
    """One finished span, ready for OTLP encoding (Kong's ``transform_span`` table).

    ``parent_span_id`` is ``b""`` for a span without a parent. Attribute values are strings,
    booleans, numbers (sent as doubles, like Kong, except ``http.status_code``), lists or dicts.
    """

    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes
    name: str
    kind: int
    start_time_unix_nano: int
    end_time_unix_nano: int
    attributes: dict[str, Any] = field(default_factory=dict)
    status_code: int = 0


@dataclass(slots=True)
class RequestTrace:
    """The trace decisions of one request, made in the access phase (or lazily in log).

    ``balancer_span_id`` is the id injected upstream as the parent span; it becomes the last
    balancer try's span. ``flags`` are the W3C trace flags logs carry (incoming flags with the
    sampled bit set to this request's decision).
    """

    trace_id: bytes
    root_span_id: bytes
    balancer_span_id: bytes
    parent_span_id: bytes | None
    sampled: bool
    flags: int


def _request_uri(ctx: RequestContext) -> str:
    return f"{ctx.path}?{ctx.query_string}" if ctx.query_string else ctx.path


def _route_path(route: Mapping[str, Any] | None) -> str:
    paths = (route or {}).get("paths")
    if isinstance(paths, list | tuple) and paths and isinstance(paths[0], str):
        return paths[0]
    return ""


def _ns(value: Any) -> int | None:
    if type(value) is int:  # the common case, checked first: this runs a dozen times a request
        return value
    return int(value) if isinstance(value, _NUMBER) and not isinstance(value, bool) else None


def root_span(ctx: RequestContext, trace: RequestTrace, now_ns: int) -> SpanData:
    """Kong's ``kong`` SERVER span with the HTTP attributes Kong's request instrumentation sets."""
    start = _ns(ctx.timestamps.get("request_start")) or int(ctx.started_at * 1e9)
    end = _ns(ctx.timestamps.get("response_end")) or now_ns
    attributes: dict[str, Any] = {
        "http.method": ctx.method,
        "http.url": f"{ctx.scheme}://{ctx.host}{_request_uri(ctx)}",
        "http.host": ctx.host,
        "http.scheme": ctx.scheme,
        "http.flavor": ctx.http_version,
        "http.client_ip": ctx.client_ip,
        "net.peer.ip": ctx.client_ip,
    }
    if ctx.request_id:
        attributes["kong.request.id"] = ctx.request_id
    if ctx.status:
        attributes["http.status_code"] = ctx.status
    attributes["http.route"] = _route_path(ctx.route)
    return SpanData(
        trace_id=trace.trace_id,
        span_id=trace.root_span_id,
        parent_span_id=trace.parent_span_id or b"",
        name=ROOT_SPAN,
        kind=KIND_SERVER,
        start_time_unix_nano=start,
        end_time_unix_nano=max(start, end),
        attributes=attributes,
    )


def _router_span(ctx: RequestContext, trace: RequestTrace) -> SpanData | None:
    start = _ns(ctx.timestamps.get("router_start"))
    end = _ns(ctx.timestamps.get("router_end"))
    if start is None or end is None:
        return None
    return SpanData(
        trace_id=trace.trace_id,
        span_id=new_span_id(),
        parent_span_id=trace.root_span_id,
        name=ROUTER_SPAN,
        kind=KIND_INTERNAL,
        start_time_unix_nano=start,
        end_time_unix_nano=max(start, end),
    )


def _try_start(attempt: Mapping[str, Any]) -> int | None:
    start = _ns(attempt.get("balancer_start_ns"))
    if start is None:
        ms = _ns(attempt.get("balancer_start"))
        start = None if ms is None else int(ms * 1_000_000)
    return start


def _try_latency(attempt: Mapping[str, Any]) -> int | None:
    latency = _ns(attempt.get("balancer_latency_ns"))
    if latency is None:
        ms = attempt.get("balancer_latency")
        if isinstance(ms, _NUMBER) and not isinstance(ms, bool):
            latency = int(ms * 1_000_000)
    return latency


def _balancer_spans(ctx: RequestContext, trace: RequestTrace, now_ns: int) -> list[SpanData]:
    ts = ctx.timestamps
    upstream_done = _ns(ts.get("response_end")) or _ns(ts.get("upstream_end")) or now_ns
    tries = [t for t in ctx.tries if type(t) is dict or isinstance(t, Mapping)]
    if not tries:
        start = _ns(ts.get("upstream_start"))
        if start is None:
            return []
        end = _ns(ts.get("upstream_end")) or upstream_done
        service = ctx.service or {}
        tries = [
            {
                "balancer_start_ns": start,
                "ip": service.get("host"),
                "port": service.get("port"),
                "_end": end,
            }
        ]
    spans = []
    count = len(tries)
    for index, attempt in enumerate(tries, start=1):
        start = _try_start(attempt) or _ns(ts.get("upstream_start")) or now_ns
        attributes: dict[str, Any] = {"try_count": index}
        if attempt.get("ip") is not None:
            attributes["net.peer.ip"] = attempt["ip"]
        if attempt.get("port") is not None:
            attributes["net.peer.port"] = attempt["port"]
        failed = attempt.get("state") is not None
        if failed and attempt.get("code") is not None:
            attributes["http.status_code"] = attempt["code"]
        hostname = attempt.get("hostname")
        if isinstance(hostname, str) and hostname:
            scheme = (ctx.service or {}).get("protocol") or ctx.scheme
            attributes["net.peer.name"] = hostname
            attributes["http.method"] = ctx.method
            attributes["http.url"] = f"{scheme}://{hostname}{ctx.upstream_uri or ctx.path}"
        if index < count or failed:
            latency = _try_latency(attempt)
            end = start + latency if latency is not None else upstream_done
            span_id = new_span_id()
        else:
            end = _ns(attempt.get("_end")) or upstream_done
            span_id = trace.balancer_span_id
        spans.append(
            SpanData(
                trace_id=trace.trace_id,
                span_id=span_id,
                parent_span_id=trace.root_span_id,
                name=BALANCER_SPAN,
                kind=KIND_CLIENT,
                start_time_unix_nano=start,
                end_time_unix_nano=max(start, end),
                attributes=attributes,
                status_code=STATUS_ERROR if failed else 0,
            )
        )
    return spans


def request_spans(ctx: RequestContext, trace: RequestTrace, now_ns: int) -> list[SpanData]:
    """Every span of the request, root first (Kong's span order); ``now_ns`` ends what the host
    did not time."""
    spans = [root_span(ctx, trace, now_ns)]
    router = _router_span(ctx, trace)
    if router is not None:
        spans.append(router)
    spans.extend(_balancer_spans(ctx, trace, now_ns))
    return spans
