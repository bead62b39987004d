"""Zipkin's batch handler: POST the spans as one JSON array, 2xx is success.

Failures carry Kong's texts: ``zipkin request failed: <err>`` when no response arrived and
``zipkin server responded unexpectedly: <status> <reason>`` otherwise; the queue retries them.
Without an ``http_endpoint`` the batch is discarded and the handler succeeds, as in Kong (the
plugin then only propagates headers).
"""

from __future__ import annotations

import http
import logging
from dataclasses import dataclass
from typing import Any

import orjson

from relayq.plugins._http import HttpSender, HttpTransportError

log = logging.getLogger("relayq.plugins.zipkin")

HEADERS = {"content-type": "application/json"}


@dataclass(frozen=True, slots=True)
class ZipkinConf:
    """What the handler needs: endpoint (``None``: discard), timeout in seconds, sender."""

    endpoint: str | None
    timeout: float
    sender: HttpSender


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


async def send_spans(conf: ZipkinConf, spans: list[dict[str, Any]]) -> bool | tuple[bool, str]:
    """Batch handler of the plugin's queue (named after the plugin id)."""
    if not conf.endpoint:
        return True
    log.debug("zipkin batch size: %d", len(spans))
    body = orjson.dumps(spans)
    try:
        response = await conf.sender.post(conf.endpoint, body, HEADERS, timeout=conf.timeout)
    except HttpTransportError as exc:
        return False, f"zipkin request failed: {exc}"
    if not 200 <= response.status < 300:
        return False, (
            f"zipkin server responded unexpectedly: {response.status} {_reason(response.status)}"
        )
    return True
