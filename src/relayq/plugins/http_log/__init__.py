"""The http-log plugin: each request's serialized log, as JSON, to an HTTP log server.

One entry per request (``serialize(ctx)`` as JSON bytes) goes into a queue shared by every
http-log instance with the same endpoint, method, content type, timeout, keepalive and
retry_count (Kong's naming); batches are posted as one object (configured ``max_batch_size``
1) or as a JSON array.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from relayq.plugins._base import Plugin, register
from relayq.plugins._enqueue import QueueBinding
from relayq.plugins._http import HttpSender, shared_sender
from relayq.plugins.http_log._encode import encode_body, encode_entry
from relayq.plugins.http_log._endpoint import Endpoint, parse_endpoint, queue_name
from relayq.plugins.http_log._handler import Delivery, retry_after, send_entries
from relayq.plugins.http_log._schema import SCHEMA
from relayq.serializer import RequestContext, serialize

log = logging.getLogger("relayq.plugins")

_RESERVED = ("content-type", "content-length", "authorization", "host")


def request_headers(config: Mapping[str, Any], endpoint: Endpoint) -> dict[str, str]:
    """Content-Type, Basic ``Authorization`` from userinfo, then the configured headers, which
    never replace the first two (nor Content-Length or Host, which the client sets)."""
    headers = {"Content-Type": config["content_type"]}
    if endpoint.authorization is not None:
        headers["Authorization"] = endpoint.authorization
    taken = {name.lower() for name in headers}
    for name, value in (config.get("headers") or {}).items():
        lower = name.lower()
        if lower in taken or (lower in _RESERVED and lower != "authorization"):
            continue
        headers[name] = value
        taken.add(lower)
    return headers


@register
class HttpLogPlugin(Plugin):
    """Kong's http-log (priority 12). ``sender`` replaces the shared httpx sender (for tests,
    e.g. a :class:`~relayq.plugins.MemoryHttpSender`)."""

    name = "http-log"
    priority = 12
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
        endpoint = parse_endpoint(conf["http_endpoint"])
        self.queue_name = queue_name(conf)
        log.debug(
            "Queue name automatically configured based on configuration parameters to: %s",
            self.queue_name,
        )
        self.queue = QueueBinding(
            self, queue_name=self.queue_name, failure="Failed to enqueue log entry to log server"
        )
        if sender is None:
            sender = shared_sender(verify=conf["ssl_verify"], keepalive=conf["keepalive"] / 1000)
        self.delivery = Delivery(
            endpoint=endpoint,
            method=conf["method"],
            headers=request_headers(conf, endpoint),
            timeout=conf["timeout"] / 1000,
            array=self.queue.params().max_batch_size != 1,
            sender=sender,
        )


    def log(self, ctx: RequestContext) -> None:
        self.queue.enqueue(ctx, send_entries, self.delivery, encode_entry(serialize(ctx)))


__all__ = [
    "SCHEMA",
    "Delivery",
    "Endpoint",
    "HttpLogPlugin",
    "encode_body",
    "encode_entry",
    "parse_endpoint",
    "queue_name",
    "request_headers",
    "retry_after",
    "send_entries",
]
