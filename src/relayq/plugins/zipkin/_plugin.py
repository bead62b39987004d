"""The Zipkin plugin: B3/W3C/... propagation in ``access``, phase annotations as the request
goes, and in ``log`` one CLIENT span per balancer try, the CLIENT proxy span and the SERVER
request span, each enqueued separately (in that order) when the trace is sampled.

The spans are created lazily by whichever phase first needs them, as in Kong, so a host that
only runs the log phase still reports a trace. Differences from Kong, on purpose: an incoming
64-bit trace id stays 64-bit in the reported spans (Kong pads it to 128 bits, so Zipkin shows
Kong's spans apart from the caller's); the propagated sampling decision is always explicit;
without an ``http_endpoint`` spans are not even queued (Kong queues them and its handler
discards them).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from relayq.plugins._base import Plugin, register
from relayq.plugins._enqueue import QueueBinding
from relayq.plugins._http import DEFAULT_TIMEOUT, HttpSender, shared_sender
from relayq.plugins._propagation import (
    PropagationConfig,
    Propagator,
    TraceContext,
    new_span_id,
    new_trace_id,
    node_id,
    propagation_config,
)
from relayq.plugins.zipkin._export import ZipkinConf, send_spans
from relayq.plugins.zipkin._schema import SCHEMA
from relayq.plugins.zipkin._spans import (
    CLIENT,
    SERVER,
    ZipkinSpan,
    header_values,
    parse_request_tags,
)
from relayq.queue import QueueConfig
from relayq.serializer import RequestContext

_NUMBER = (int, float)  # isinstance with a tuple constant: `int | float` builds a union each call

log = logging.getLogger("relayq.plugins.zipkin")

# header_filter's annotations, all at the moment the response headers go out
_HEADER_FILTER_ANNOTATIONS = ("khs", "khf", "kbs")


@dataclass(slots=True)
class ZipkinRequest:
    """The spans of one request while it is in flight (Kong's ``kong.ctx.plugin.zipkin``)."""

    request_span: ZipkinSpan
    proxy_span: ZipkinSpan | None = None
    header_filter_finished: bool = False


def _us(ns: Any) -> int | None:
    if type(ns) is int:
        return ns // 1000
    if isinstance(ns, _NUMBER) and not isinstance(ns, bool):
        return int(ns) // 1000
    return None


def _now_us() -> int:
    return time.time_ns() // 1000


def _ms_between(ts: Mapping[str, int], start: str, end: str) -> int | None:
    if start in ts and end in ts:
        return round((ts[end] - ts[start]) / 1e6)
    return None


@register
class ZipkinPlugin(Plugin):
    """Kong's ``zipkin`` plugin (priority 100000, so its timestamps are taken first).
    ``sender`` replaces the shared httpx sender, e.g. with ``MemoryHttpSender`` in tests."""

    name = "zipkin"
    priority = 100000
    schema = SCHEMA

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        plugin_id: str,
        instance_name: str | None = None,
        runtime: Any = None,
        sender: HttpSender | None = None,
    ) -> None:
        super().__init__(config, plugin_id=plugin_id, instance_name=instance_name, runtime=runtime)
        conf = self.config
        self.propagation: PropagationConfig = propagation_config(conf)
        self._propagator = Propagator(self.propagation)
        self.sender: HttpSender = sender if sender is not None else shared_sender()
        timeout_ms = max(conf["connect_timeout"], conf["send_timeout"], conf["read_timeout"])
        self.export = ZipkinConf(
            conf["http_endpoint"],
            timeout_ms / 1000 if timeout_ms > 0 else DEFAULT_TIMEOUT,
            self.sender,
        )
        self._queue = QueueBinding(self, failure="failed to enqueue span")
        self._annotations = conf["phase_duration_flavor"] == "annotations"
        # read once: the config is immutable once validated
        self._sample_ratio: float = conf["sample_ratio"]
        self._traceid_byte_count: int = conf["traceid_byte_count"]
        self._method_path = conf["http_span_name"] == "method_path"
        self._static_tags = tuple((t["name"], t["value"]) for t in conf["static_tags"] or ())
        self._tags_header: str = conf["tags_header"].lower()
        self._traceid_header: str | None = conf["http_response_header_for_traceid"]
        self._include_credential: bool = conf["include_credential"]
        self._local_service_name: str = conf["local_service_name"]
        self._default_service_name: str | None = conf["default_service_name"]

    @property
    def queue(self) -> QueueConfig:
        """The queue's parameters (named after the plugin id)."""
        return self._queue.params()

    # --------------------------------------------------------------------------- spans

    def _initialize(self, ctx: RequestContext, extracted: TraceContext | None) -> ZipkinRequest:
        if extracted is None:
            extracted, _ = self._propagator.extract(ctx.headers)
        trace_id = extracted.trace_id
        if trace_id is not None and extracted.trace_id_original_size == 8:
            trace_id = trace_id[-8:]
        # B3 and Jaeger share one span between client and server (span id plus parent id);
        # W3C and the others send only the caller's span, which becomes our parent.
        if extracted.reuse_span_id:
            span_id, parent_id = extracted.span_id, extracted.parent_id
        else:
            span_id, parent_id = None, extracted.span_id
        should_sample = extracted.should_sample
        if should_sample is None:
            should_sample = random.random() < self._sample_ratio
        if trace_id is None:
            trace_id = new_trace_id(self._traceid_byte_count)
        name = ctx.method
        if self._method_path:
            name = f"{ctx.method} {ctx.path}"
        start = _us(ctx.timestamps.get("request_start")) or int(ctx.started_at * 1_000_000)
        # The first tags in one literal rather than a set_tag call each. set_tag skips a None
        # value (Kong's set_tag(key, nil)), so a field the host left None is dropped here too.
        method, host, path = ctx.method, ctx.host, ctx.path
        tags: dict[str, Any] = {
            "lc": "kong",
            "http.method": method,
            "http.host": host,
            "http.path": path,
        }
        if method is None or host is None or path is None:
            tags = {key: value for key, value in tags.items() if value is not None}
        if ctx.http_version:
            tags["http.protocol"] = f"HTTP/{ctx.http_version}"
        # Positional, in field order (kind, name, trace_id, span_id, parent_id, timestamp,
        # should_sample, duration, tags, annotations, ip, port): a class called with keywords
        # costs twice as much, and this runs for every request.
        span = ZipkinSpan(
            SERVER,
            name,
            trace_id,
            span_id or new_span_id(),
            parent_id,
            start,
            should_sample,
            None,
            tags,
            [],
            ctx.client_ip or None,
            ctx.client_port or None,
        )
        for tag_name, tag_value in self._static_tags:
            span.set_tag(tag_name, tag_value)
        if self._tags_header in ctx.headers:
            tags, errors = parse_request_tags(header_values(ctx.headers, self._tags_header))
            if errors:
                log.warning("Could not parse the following Zipkin tags: %s", ", ".join(errors))
            for key, value in tags.items():
                span.set_tag(key, value)
        state = ZipkinRequest(span)
        ctx.plugin_data[self.id] = state
        return state

    def _state(self, ctx: RequestContext, extracted: TraceContext | None = None) -> ZipkinRequest:
        state = ctx.plugin_data.get(self.id)
        if isinstance(state, ZipkinRequest):
            return state
        return self._initialize(ctx, extracted)

    @staticmethod
    def _proxy_span(state: ZipkinRequest, timestamp: int) -> ZipkinSpan:
        if state.proxy_span is None:
            request = state.request_span
            state.proxy_span = request.child(CLIENT, f"{request.name} (proxy)", timestamp)
        return state.proxy_span

    @staticmethod
    def _service_and_route_tags(ctx: RequestContext) -> tuple[dict[str, Any], str | None]:
        """The tags naming the request's service and route, and the service name (the remote
        service of the spans that carry them)."""
        tags: dict[str, Any] = {}
        service_name = None
        service = ctx.service
        if service and service.get("id"):
            tags["kong.service"] = service["id"]
            name = service.get("name")
            if isinstance(name, str):
                service_name = name
                tags["kong.service_name"] = name
        route = ctx.route
        if route:
            if route.get("id"):
                tags["kong.route"] = route["id"]
            name = route.get("name")
            if isinstance(name, str):
                tags["kong.route_name"] = name
        return tags, service_name

    @staticmethod
    def _tag_service_and_route(span: ZipkinSpan, tags: dict[str, Any],
                               service_name: str | None) -> None:
        if service_name is not None:
            span.service_name = service_name
        span.tags.update(tags)

    # --------------------------------------------------------------------------- phases

    def access(self, ctx: RequestContext) -> None:
        """Start the proxy span and propagate its context upstream."""
        extracted, found_in = self._propagator.extract(ctx.headers)
        state = ctx.plugin_data.get(self.id)  # _state(ctx, extracted), one call fewer
        if not isinstance(state, ZipkinRequest):
            state = self._initialize(ctx, extracted)
        start = _us(ctx.timestamps.get("access_start")) or _now_us()
        proxy = self._proxy_span(state, start)
        # The outgoing context is the incoming one with the proxy span's ids and decision.
        # ``extract`` built ``extracted`` for this call alone and the spans keep none of it, so
        # it is updated in place instead of copied with ``with_ids``.
        extracted.trace_id = proxy.trace_id
        extracted.span_id = proxy.span_id
        extracted.parent_id = proxy.parent_id
        extracted.should_sample = proxy.should_sample
        extracted.trace_id_original_size = len(proxy.trace_id)
        self._propagator.propagate(ctx, extracted, found_in)

    def header_filter(self, ctx: RequestContext) -> None:
        """Annotate the header filter (``khs``/``khf``/``kbs``) and add the trace-id header."""
        state = self._state(ctx)
        at = _us(ctx.timestamps.get("response_start")) or _now_us()
        proxy = self._proxy_span(state, at)
        if self._annotations:
            # The host sends the body right after the headers: the header filter ends and
            # the body filter starts at the same moment.
            proxy.annotate_all(_HEADER_FILTER_ANNOTATIONS, at)
        state.header_filter_finished = True
        header = self._traceid_header
        if header:
            ctx.response_headers_to_add[header] = proxy.trace_id.hex()

    def log(self, ctx: RequestContext) -> None:
        """Finish the spans and enqueue balancer tries, proxy and request span."""
        now = _now_us()
        state = self._state(ctx)
        request = state.request_span
        if not (request.should_sample and self.export.endpoint):
            return  # nothing of this trace leaves the process (Kong builds it, then drops it)
        proxy = self._proxy_span(state, now)
        ts = ctx.timestamps
        proxy_finish = _us(ts.get("response_end")) or now

        if self._annotations:
            request.annotate("krs", request.timestamp)
            access_start = _us(ts.get("access_start"))
            if access_start is not None:
                request.annotate("krf", access_start)
            proxy.annotate("kas", access_start or proxy.timestamp)
            proxy.annotate("kaf", _us(ts.get("access_end")) or proxy_finish)
            if not state.header_filter_finished:
                proxy.annotate("khf", now)
                state.header_filter_finished = True
            proxy.annotate("kbf", proxy_finish)
        else:
            request.set_tag(
                "kong.rewrite.duration_ms", _ms_between(ts, "request_start", "access_start")
            )
            proxy.set_tag("kong.access.duration_ms", _ms_between(ts, "access_start", "access_end"))

        spans: list[ZipkinSpan] = []
        service_tags, service_name = self._service_and_route_tags(ctx)
        tries = [t for t in ctx.tries if type(t) is dict or isinstance(t, Mapping)]
        for index, attempt in enumerate(tries, start=1):
            start = _us(attempt.get("balancer_start_ns"))
            if start is None:
                start_ms = attempt.get("balancer_start")
                start = (
                    int(start_ms * 1000) if isinstance(start_ms, _NUMBER) else proxy.timestamp
                )
            span = request.child(CLIENT, f"{request.name} (balancer try {index})", start)
            span.ip = attempt.get("ip")
            span.port = attempt.get("port")
            span.set_tag("kong.balancer.try", index)
            if index < len(tries):
                span.set_tag("error", True)
                span.set_tag("kong.balancer.state", attempt.get("state"))
                span.set_tag("http.status_code", attempt.get("code"))
            self._tag_service_and_route(span, service_tags, service_name)
            latency_us = _us(attempt.get("balancer_latency_ns"))
            if latency_us is None:
                latency = attempt.get("balancer_latency")
                latency_us = int(latency * 1000) if isinstance(latency, _NUMBER) else 0
            span.finish(start + latency_us)
            spans.append(span)
        if tries:
            last = tries[-1]
            proxy.set_tag("peer.hostname", last.get("hostname"))
            proxy.ip = last.get("ip")
            proxy.port = last.get("port")

        if ctx.status:
            request.set_tag("http.status_code", ctx.status)
        if ctx.consumer and ctx.consumer.get("id"):
            request.set_tag("kong.consumer", ctx.consumer["id"])
        if self._include_credential and ctx.credential and ctx.credential.get("id"):
            request.set_tag("kong.credential", ctx.credential["id"])
        request.set_tag("kong.node.id", node_id())
        self._tag_service_and_route(proxy, service_tags, service_name)

        proxy.finish(proxy_finish)
        request.finish(now)
        spans.append(proxy)
        spans.append(request)
        local, default = self._local_service_name, self._default_service_name
        self._queue.enqueue_many(
            ctx, send_spans, self.export, [span.to_zipkin(local, default) for span in spans]
        )
