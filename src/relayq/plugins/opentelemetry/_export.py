"""OpenTelemetry's batch handlers: encode a batch, POST it, report Kong's success and failures.

Kong's exporter counts only status 200 as success. Any other status fails the batch with
``response error: <status>, body: <body>`` and a transport failure with
``failed to send request: <err>``; both are also logged at ERROR with the ``[otel] `` prefix,
and the queue retries the whole batch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from relayq.plugins._http import HttpSender, HttpTransportError, redact_url
from relayq.plugins._slices import slices
from relayq.plugins.opentelemetry._encode import encode_logs, traces_body
from relayq.plugins.opentelemetry._logcapture import LogData
from relayq.plugins.opentelemetry._spans import SpanData

log = logging.getLogger("relayq.plugins.opentelemetry")

LOG_PREFIX = "[otel] "
CONTENT_TYPE = "application/x-protobuf"


def export_headers(configured: Mapping[str, str] | None) -> dict[str, str]:
    """The request headers: ``Content-Type: application/x-protobuf`` unless the user's headers
    name a content type (compared case-insensitively; Kong compares the exact spelling and
    would then send two), plus the user's headers."""
    headers = dict(configured or {})
    if not any(name.lower() == "content-type" for name in headers):
        headers = {"Content-Type": CONTENT_TYPE, **headers}
    return headers


@dataclass(frozen=True, slots=True)
class ExportConf:
    """Everything a batch handler needs; the plugin builds one per signal and instance.

    ``timeout`` is in seconds and bounds connecting, each write and each read (the plugin
    passes the largest of Kong's three millisecond timeouts).
    """

    endpoint: str
    headers: Mapping[str, str]
    timeout: float
    resource_attributes: Mapping[str, Any] | None
    sender: HttpSender


async def _post(conf: ExportConf, body: bytes, what: str, count: int) -> bool | tuple[bool, str]:
    try:
        response = await conf.sender.post(conf.endpoint, body, conf.headers, timeout=conf.timeout)
    except HttpTransportError as exc:
        error = f"failed to send request: {exc}"
    else:
        if response.status == 200:
            log.debug("%sexporter sent %d %s to %s", LOG_PREFIX, count, what,
                      redact_url(conf.endpoint))
            return True
        text = response.body.decode("utf-8", "replace")
        error = f"response error: {response.status}, body: {text}"
    log.error("%s%s", LOG_PREFIX, error)
    return False, error


async def export_traces(conf: ExportConf, spans: list[SpanData]) -> bool | tuple[bool, str]:
    """Batch handler of the ``<plugin_id>:traces`` queue (encoding a slice at a time)."""
    body = traces_body(conf.resource_attributes)
    async for part in slices(spans):
        body.add(part)
    return await _post(conf, body.finish(), "spans", len(spans))


async def export_logs(conf: ExportConf, records: list[LogData]) -> bool | tuple[bool, str]:
    """Batch handler of the ``<plugin_id>:logs`` queue."""
    body = encode_logs(records, conf.resource_attributes)
    return await _post(conf, body, "logs", len(records))
