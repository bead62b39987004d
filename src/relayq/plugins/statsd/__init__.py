"""The statsd plugin: per-request metrics as StatsD lines over UDP or TCP.

Each request's metric fields of the serialized log are queued (``metrics_entry``; unless its
status is outside ``allow_status_codes``);
the batch handler turns every entry into the configured metrics' lines and sends them, one
datagram per line or packed up to ``udp_packet_size``, or newline-terminated over TCP.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from relayq.plugins._base import Plugin, register
from relayq.plugins._enqueue import QueueBinding
from relayq.plugins.statsd._encode import (
    STAT_CODES,
    Metric,
    Settings,
    format_line,
    metric_lines,
    pack_datagrams,
)
from relayq.plugins.statsd._entry import metrics_entry
from relayq.plugins.statsd._handler import Delivery, send_entries
from relayq.plugins.statsd._schema import DEFAULT_METRICS, SCHEMA
from relayq.serializer import RequestContext


def status_ranges(specs: Sequence[str] | None) -> tuple[tuple[int, int], ...] | None:
    """``allow_status_codes`` entries (``"200-299"``) as inclusive ranges; ``None`` allows all."""
    if specs is None:
        return None
    ranges = []
    for spec in specs:
        low, _, high = spec.partition("-")
        ranges.append((int(low), int(high)))
    return tuple(ranges)


@register
class StatsdPlugin(Plugin):
    """Kong's statsd (priority 11)."""

    name = "statsd"
    priority = 11
    schema = SCHEMA

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        plugin_id: str,
        instance_name: str | None = None,
        runtime: Any = None,
        hostname: str | None = None,
    ) -> None:
        super().__init__(config, plugin_id=plugin_id, instance_name=instance_name, runtime=runtime)
        conf = self.config
        self.allowed = status_ranges(conf["allow_status_codes"])
        self.queue = QueueBinding(self, failure="Failed to enqueue log entry to StatsD server")
        self.delivery = Delivery(
            host=conf["host"],
            port=conf["port"],
            use_tcp=conf["use_tcp"],
            udp_packet_size=int(conf["udp_packet_size"]),
            settings=Settings.from_config(conf, hostname),
        )


    def log(self, ctx: RequestContext) -> None:
        allowed = self.allowed
        if allowed is not None and not any(low <= ctx.status <= high for low, high in allowed):
            return
        self.queue.enqueue(ctx, send_entries, self.delivery, metrics_entry(ctx))


__all__ = [
    "DEFAULT_METRICS",
    "SCHEMA",
    "STAT_CODES",
    "Delivery",
    "Metric",
    "Settings",
    "StatsdPlugin",
    "format_line",
    "metric_lines",
    "metrics_entry",
    "pack_datagrams",
    "send_entries",
    "status_ranges",
]
