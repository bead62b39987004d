"""datadog's batch handler: one UDP socket per batch, one datagram per metric line.

Only a failure to open the socket fails the batch (and makes the queue retry it); send errors
are logged and the batch counts as delivered, so retries never duplicate metrics (Kong #10044).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

from relayq.plugins import _udp
from relayq.plugins._slices import encoded_lines
from relayq.plugins.datadog._encode import Settings, metric_lines

log = logging.getLogger("relayq.plugins")


@dataclass(frozen=True)
class Delivery:
    """Where to send, fixed per plugin instance (Kong's ``handler_conf``)."""

    host: str
    port: int
    settings: Settings


async def send_entries(conf: Delivery, entries: list[Any]) -> bool | tuple[bool, str]:
    """Send every metric line of every serialized request in the batch."""
    lines = await encoded_lines(partial(metric_lines, conf.settings), entries)
    where = f"{conf.host}:{conf.port}"
    try:
        sock = await _udp.open_udp(conf.host, conf.port)
    except OSError as exc:
        message = f"failed to connect to {where}: {exc}"
        log.error("failed to create Statsd logger: %s", message)
        return False, message
    try:
        await _udp.send_datagrams(sock, lines, where=where)
    finally:
        sock.close()
    return True
