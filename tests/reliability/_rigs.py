"""One "rig" per sender: how to build the plugin against an endpoint, drive one request through
its phases, and recognise each queued entry again at the receiver.

The fault tests count exactly (every entry delivered or counted as dropped), so each rig names
every entry it produces: http-log entries by their request path, OpenTelemetry spans by trace
id, Zipkin spans by (trace id, span id). The HTTP rigs share one shape so a fault scenario can
be run against each of them unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import relayq
from relayq.plugins import HttpSender, Plugin, plugin_class
from relayq.serializer import RequestContext


def request_context(i: int, *, service: str = "orders", **kw: Any) -> RequestContext:
    """A finished request numbered ``i`` (path ``/r/<i>``), as a host would fill it."""
    return RequestContext(
        path=f"/r/{i}",
        status=200,
        request_id=f"req-{i}",
        service={"id": f"svc-{service}", "name": service},
        route={"id": "route-1", "name": "r"},
        started_at=1_700_000_000.0 + i,
        **kw,
    )


def run_phases(plugins: Iterable[Plugin], ctx: RequestContext) -> None:
    """Kong's phase order for one request: access, header_filter, then log."""
    ordered = list(plugins)
    for plugin in ordered:
        plugin.access(ctx)
    for plugin in ordered:
        plugin.header_filter(ctx)
    for plugin in ordered:
        plugin.log(ctx)


@dataclass(frozen=True)
class HttpRig:
    """A plugin that posts batches over HTTP. ``per_request``: queue entries one request makes.

    ``config(url, queue, timeout_ms)`` is the plugin config for a receiver at ``url``;
    ``ids(body)`` names the entries in one received request body.
    """

    name: str
    path: str
    per_request: int
    config: Callable[[str, dict[str, Any], int], dict[str, Any]]
    ids: Callable[[bytes], list[str]]

    def build(self, rt: relayq.Runtime, base_url: str, queue: dict[str, Any], *,
              sender: HttpSender | None = None, timeout_ms: int = 300,
              plugin_id: str = "p1", extra: dict[str, Any] | None = None) -> Plugin:
        config = {**self.config(base_url + self.path, queue, timeout_ms), **(extra or {})}
        cls = plugin_class(self.name)
        plugin: Plugin = cls(config, plugin_id=plugin_id, runtime=rt,  # type: ignore[call-arg]
                             sender=sender)
        return plugin

    def queue_name(self, plugin: Plugin) -> str:
        """The name the plugin's queue has in ``stats()``."""
        if self.name == "http-log":
            return str(plugin.queue.params().name)  # type: ignore[attr-defined]
        if self.name == "opentelemetry":
            return f"{plugin.id}:traces"
        return plugin.id


def _http_log_ids(body: bytes) -> list[str]:
    data = orjson.loads(body)
    items = data if isinstance(data, list) else [data]
    return [str(item["request"]["uri"]) for item in items]


def _otel_ids(body: bytes) -> list[str]:
    message = ExportTraceServiceRequest()
    message.ParseFromString(body)
    return [
        span.trace_id.hex()
        for rs in message.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]


def _zipkin_ids(body: bytes) -> list[str]:
    return [f"{span['traceId']}/{span['id']}" for span in orjson.loads(body)]


def _timeouts(ms: int) -> dict[str, int]:
    return {"connect_timeout": ms, "send_timeout": ms, "read_timeout": ms}


HTTP_LOG = HttpRig(
    "http-log", "/logs", 1,
    lambda url, queue, ms: {"http_endpoint": url, "timeout": ms, "queue": queue},
    _http_log_ids,
)
OPENTELEMETRY = HttpRig(
    "opentelemetry", "/v1/traces", 1,
    lambda url, queue, ms: {"traces_endpoint": url, "queue": queue, **_timeouts(ms)},
    _otel_ids,
)
ZIPKIN = HttpRig(
    "zipkin", "/api/v2/spans", 2,
    lambda url, queue, ms: {"http_endpoint": url, "sample_ratio": 1, "queue": queue,
                            **_timeouts(ms)},
    _zipkin_ids,
)
HTTP_RIGS = (HTTP_LOG, OPENTELEMETRY, ZIPKIN)
