"""The datadog plugin: per-request metrics as DogStatsD lines over UDP.

Each request's metric fields of the serialized log are queued (see ``statsd.metrics_entry``);
the batch handler sends one datagram per configured metric with Kong's tags. With
``host``/``port`` set to null the agent address comes from ``KONG_DATADOG_AGENT_HOST`` /
``KONG_DATADOG_AGENT_PORT``, read when the plugin is built.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from relayq.plugins._base import Plugin, PluginConfigError, register
from relayq.plugins._enqueue import QueueBinding
from relayq.plugins.datadog._encode import (
    DATADOG_CODES,
    Metric,
    Settings,
    format_line,
    metric_lines,
)
from relayq.plugins.datadog._handler import Delivery, send_entries
from relayq.plugins.datadog._schema import DEFAULT_METRICS, SCHEMA
from relayq.plugins.statsd._entry import metrics_entry
from relayq.serializer import RequestContext

HOST_ENV = "KONG_DATADOG_AGENT_HOST"
PORT_ENV = "KONG_DATADOG_AGENT_PORT"


def agent_address(config: Mapping[str, Any]) -> tuple[str, int]:
    """The configured host and port, falling back to the environment for null ones."""
    errors = {}
    host = config.get("host")
    if host is None:
        host = os.environ.get(HOST_ENV) or None
        if host is None:
            errors["host"] = f"required field missing (null, and {HOST_ENV} is not set)"
    port = config.get("port")
    if port is None:
        raw = os.environ.get(PORT_ENV, "")
        if raw.strip().isdigit() and 0 <= int(raw) <= 65535:
            port = int(raw)
        else:
            errors["port"] = f"required field missing (null, and {PORT_ENV} is not a port number)"
    if errors:
        raise PluginConfigError("datadog", errors)
    assert host is not None and port is not None
    return host, port


@register
class DatadogPlugin(Plugin):
    """Kong's datadog (priority 10)."""

    name = "datadog"
    priority = 10
    schema = SCHEMA

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        plugin_id: str,
        instance_name: str | None = None,
        runtime: Any = None,
    ) -> None:
        super().__init__(config, plugin_id=plugin_id, instance_name=instance_name, runtime=runtime)
        host, port = agent_address(self.config)
        self.queue = QueueBinding(self, failure="failed to enqueue log entry to Datadog")
        self.delivery = Delivery(host=host, port=port, settings=Settings.from_config(self.config))


    def log(self, ctx: RequestContext) -> None:
        self.queue.enqueue(ctx, send_entries, self.delivery, metrics_entry(ctx))


__all__ = [
    "DATADOG_CODES",
    "DEFAULT_METRICS",
    "HOST_ENV",
    "PORT_ENV",
    "SCHEMA",
    "DatadogPlugin",
    "Delivery",
    "Metric",
    "Settings",
    "agent_address",
    "format_line",
    "metric_lines",
    "send_entries",
]
