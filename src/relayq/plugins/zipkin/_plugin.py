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
    remote_endpoint,
    render_tags,
    tag_text,
)
from relayq.queue import QueueConfig
from relayq.serializer import RequestContext

_NUMBER = (int, float)  # isinstance with a tuple constant: `int | float` builds a union each call

log = logging.getLogger("relayq.plugins.zipkin")

# header_filter's annotations, all at the moment the response headers go out
_HEADER_FILTER_ANNOTATIONS = ("khs", "khf", "kbs")
# the tags of a balancer try that was not the last one, and the try's fields they report
_FAILED_TRY_TAGS = (("kong.balancer.state", "state"), ("http.status_code", "code"))


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
        # Every span's localEndpoint, shared by the dicts log() enqueues: nothing changes an
        # enqueued span (the batch handler only serializes it), and one dict fewer per span
        # saves its allocation, its garbage-collector count and its deallocation.
        self._local_endpoint: dict[str, str] = {"serviceName": self._local_service_name}
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
    def _service_and_route_text(ctx: RequestContext) -> tuple[dict[str, str], str | None]:
        """The tags naming the request's service and route, rendered (a value that renders
        empty is kept as ``""``: see :func:`_without_empty`), and the service name (the remote
        service of the spans that carry them)."""
        tags: dict[str, str] = {}
        service_name = None
        service = ctx.service
        if service:
            service_id = service.get("id")
            if service_id:
                tags["kong.service"] = (
                    service_id if type(service_id) is str else tag_text(service_id)
                )
                name = service.get("name")
                if isinstance(name, str):
                    service_name = name
                    tags["kong.service_name"] = name if type(name) is str else tag_text(name)
        route = ctx.route
        if route:
            route_id = route.get("id")
            if route_id:
                tags["kong.route"] = route_id if type(route_id) is str else tag_text(route_id)
            name = route.get("name")
            if isinstance(name, str):
                tags["kong.route_name"] = name if type(name) is str else tag_text(name)
        return tags, service_name

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
        """Finish the spans and enqueue balancer tries, proxy and request span.

        The spans' Zipkin v2 dicts are built here directly, each exactly what
        ``ZipkinSpan.to_zipkin`` returned for the span as Kong's log phase finishes it (see
        tests/plugins/test_zipkin_fast.py): tag values are rendered (:func:`tag_text`) as they
        are set, a tag set to ``None`` is removed, and those that rendered empty are dropped last,
        so the keys keep the order ``set_tag`` gave them. This is the last phase, so the request
        and proxy span objects are only read: they keep the tags and annotations the earlier
        phases gave them. This runs for every request, hence the inlined steps:
        ``x // 1000 if type(x) is int else _us(x)`` is ``_us(x)`` without a call in the common
        case, and a span is one dict display (keys in ``to_zipkin``'s order) with the keys it
        omits deleted after.
        """
        now = time.time_ns() // 1000
        state = ctx.plugin_data.get(self.id)  # _state(ctx), one call fewer
        if not isinstance(state, ZipkinRequest):
            state = self._initialize(ctx, None)
        request = state.request_span
        if not (request.should_sample and self.export.endpoint):
            return  # nothing of this trace leaves the process (Kong builds it, then drops it)
        proxy = state.proxy_span or self._proxy_span(state, now)
        ts = ctx.timestamps
        value = ts.get("response_end")
        proxy_finish = (value // 1000 if type(value) is int else _us(value)) or now
        default = self._default_service_name
        local = self._local_endpoint
        # The proxy and try spans are children of the request span (_proxy_span and the loop
        # below): same trace, the request span as parent. Each id is rendered in hex once.
        trace_hex = request.trace_id.hex()
        request_hex = request.span_id.hex()

        # Kong's phase annotations, or the phase durations as tags (set with the spans' other
        # tags below, in Kong's order).
        annotations = self._annotations
        if annotations:
            value = ts.get("access_start")
            access_start = value // 1000 if type(value) is int else _us(value)
            request_annotations = [
                *request.annotations, {"value": "krs", "timestamp": request.timestamp}
            ]
            if access_start is not None:
                request_annotations.append({"value": "krf", "timestamp": access_start})
            value = ts.get("access_end")
            kas = {"value": "kas", "timestamp": access_start or proxy.timestamp}
            kaf = {
                "value": "kaf",
                "timestamp": (value // 1000 if type(value) is int else _us(value))
                or proxy_finish,
            }
            kbf = {"value": "kbf", "timestamp": proxy_finish}
            if state.header_filter_finished:
                proxy_annotations = [*proxy.annotations, kas, kaf, kbf]
            else:
                khf = {"value": "khf", "timestamp": now}
                proxy_annotations = [*proxy.annotations, kas, kaf, khf, kbf]
                state.header_filter_finished = True
        else:
            # to_zipkin copied the span's list
            request_annotations = list(request.annotations)
            proxy_annotations = list(proxy.annotations)

        service_tags, service_name = self._service_and_route_text(ctx)
        service_empty = "" in service_tags.values()  # rare: a value that rendered empty
        spans: list[dict[str, Any]] = []

        # One CLIENT span per balancer try; all but the last one failed.
        tries = ctx.tries
        for attempt in tries:
            if type(attempt) is not dict:  # rare: keep the tries that are mappings
                tries = [t for t in tries if type(t) is dict or isinstance(t, Mapping)]
                break
        last_index = len(tries)
        try_service = service_name or default
        for index, attempt in enumerate(tries, start=1):
            value = attempt.get("balancer_start_ns")
            start = value // 1000 if type(value) is int else _us(value)
            if start is None:
                start_ms = attempt.get("balancer_start")
                start = (
                    int(start_ms * 1000) if isinstance(start_ms, _NUMBER) else proxy.timestamp
                )
            value = attempt.get("balancer_latency_ns")
            latency_us = value // 1000 if type(value) is int else _us(value)
            if latency_us is None:
                latency = attempt.get("balancer_latency")
                latency_us = int(latency * 1000) if isinstance(latency, _NUMBER) else 0
            # A try's own tags and the service/route tags have no key in common, so the
            # former can drop an empty text at once. str(index): tag_text of a small int.
            if index < last_index:
                tags: dict[str, str] = {"kong.balancer.try": str(index), "error": "true"}
                for key, field_name in _FAILED_TRY_TAGS:
                    value = attempt.get(field_name)
                    if value is not None:
                        text = tag_text(value)
                        if text:
                            tags[key] = text
                tags.update(service_tags)
            else:
                tags = {"kong.balancer.try": str(index), **service_tags}
            if service_empty:
                tags = _without_empty(tags)
            remote = remote_endpoint(try_service, attempt.get("port"), attempt.get("ip"))
            spans.append({
                "traceId": trace_hex,
                "name": f"{request.name} (balancer try {index})",
                "parentId": request_hex,
                "id": new_span_id().hex(),
                "kind": CLIENT,
                "timestamp": start,
                "duration": latency_us if latency_us > 1 else 1,  # Zipkin's minimum: 1
                "localEndpoint": local,
                "remoteEndpoint": remote,
                "tags": tags,
            })

        # The proxy span: the last try's peer, the service and route.
        tags = render_tags(proxy.tags, keep_empty=True) if proxy.tags else {}
        if not annotations:
            _set_text(tags, "kong.access.duration_ms",
                      _ms_between(ts, "access_start", "access_end"))
        if service_name is None:
            service_name = proxy.service_name
        if tries:
            last = tries[-1]
            value = last.get("hostname")
            if value is not None:
                tags["peer.hostname"] = value if type(value) is str else tag_text(value)
            else:
                tags.pop("peer.hostname", None)
            if service_name is None or service_name == try_service:
                # the last try's remote endpoint: same service, ip and port (one dict for
                # both spans, as localEndpoint is one for all: the batch handler only reads)
                remote = spans[-1]["remoteEndpoint"]
            else:  # a service name on the proxy span object itself
                remote = remote_endpoint(service_name or default, last.get("port"),
                                         last.get("ip"))
        else:
            remote = remote_endpoint(service_name or default, proxy.port, proxy.ip)
        tags.update(service_tags)
        if "" in tags.values():
            tags = _without_empty(tags)
        duration = proxy_finish - proxy.timestamp
        span = {
            "traceId": trace_hex,
            "name": proxy.name,
            "parentId": request_hex,
            "id": proxy.span_id.hex(),
            "kind": proxy.kind,
            "timestamp": proxy.timestamp,
            "duration": duration if duration > 1 else 1,
            "localEndpoint": local,
            "remoteEndpoint": remote,
            "tags": tags,
            "annotations": proxy_annotations,
        }
        if not tags:
            del span["tags"]
        if not proxy_annotations:
            del span["annotations"]
        spans.append(span)

        # The request span. Its tags so far (set by _initialize) are nearly always strings:
        # copy them and render the others.
        tags = request.tags.copy()
        for key, value in request.tags.items():
            if type(value) is not str:
                tags[key] = tag_text(value)
        if not annotations:
            _set_text(tags, "kong.rewrite.duration_ms",
                      _ms_between(ts, "request_start", "access_start"))
        value = ctx.status
        if value:
            # tag_text's first case for an int status code, without the call
            tags["http.status_code"] = (
                str(value) if type(value) is int and 0 < value < 1000 else tag_text(value)
            )
        consumer = ctx.consumer
        if consumer and consumer.get("id"):
            tags["kong.consumer"] = tag_text(consumer["id"])
        credential = ctx.credential
        if self._include_credential and credential and credential.get("id"):
            tags["kong.credential"] = tag_text(credential["id"])
        tags["kong.node.id"] = node_id()  # a str: tag_text would return it as is
        if "" in tags.values():
            tags = _without_empty(tags)
        parent = request.parent_id
        duration = now - request.timestamp
        span = {
            "traceId": trace_hex,
            "name": request.name,
            "parentId": parent.hex() if parent is not None else None,
            "id": request_hex,
            "kind": request.kind,
            "timestamp": request.timestamp,
            "duration": duration if duration > 1 else 1,
            "localEndpoint": local,
            "remoteEndpoint": remote_endpoint(
                request.service_name or default, request.port, request.ip
            ),
            "tags": tags,
            "annotations": request_annotations,
        }
        if parent is None:
            del span["parentId"]
        if not tags:
            del span["tags"]
        if not request_annotations:
            del span["annotations"]
        spans.append(span)
        self._queue.enqueue_many(ctx, send_spans, self.export, spans)


def _set_text(tags: dict[str, str], key: str, value: Any) -> None:
    """``ZipkinSpan.set_tag`` on rendered tags: ``None`` removes the tag."""
    if value is None:
        tags.pop(key, None)
    else:
        tags[key] = tag_text(value)


def _without_empty(tags: dict[str, str]) -> dict[str, str]:
    """Rendered tags without those that rendered empty (``to_zipkin`` drops them)."""
    return {key: text for key, text in tags.items() if text}
