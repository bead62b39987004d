"""The entry statsd and datadog queue per request: the part of Kong's serializer output their
metrics read.

Kong queues the whole ``kong.log.serialize()`` table. The metric lines depend only on request
and response sizes, the status, the latencies, and the service, route, consumer and workspace,
so relayq queues exactly those fields, in the same shape (``metric_lines`` reads either). It is
several times cheaper to build than the full log and, more importantly, holds a handful of
objects instead of dozens while it waits in the queue, which keeps the garbage collector's work
per request small. Custom serialize values can change any field, so with them the full
serializer output is queued, as in Kong.
"""

from __future__ import annotations

from typing import Any

from relayq.serializer import RequestContext, serialize


def _ms(value: float) -> float | int:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def metrics_entry(ctx: RequestContext) -> dict[str, Any]:
    """The serializer fields the statsd and datadog metrics read (all of them when the request
    has custom serialize values). Entities are shared, not copied: nothing mutates them."""
    if ctx.serialize_values:
        return serialize(ctx)
    return {
        "request": {"size": ctx.request_size},
        "response": {"status": ctx.status, "size": ctx.response_size},
        "latencies": {
            "kong": _ms(ctx.kong_latency),
            "proxy": _ms(ctx.proxy_latency),
            "request": _ms(ctx.request_latency),
            "receive": _ms(ctx.receive_latency),
        },
        "service": ctx.service,
        "route": ctx.route,
        "consumer": ctx.consumer,
        "workspace": ctx.workspace_id,
        "workspace_name": ctx.workspace_name,
    }
