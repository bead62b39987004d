"""statsd's batch handler: one UDP socket (or a pooled TCP connection) per batch.

Only a failure to connect fails the batch (and makes the queue retry it); send errors are logged
and the batch counts as delivered, so retries never duplicate metrics (Kong #10052).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

from relayq.plugins import _tcp, _udp
from relayq.plugins._slices import encoded_lines
from relayq.plugins.statsd._encode import Settings, metric_lines, pack_datagrams

log = logging.getLogger("relayq.plugins")


@dataclass(frozen=True)
class Delivery:
    """Where and how to send, fixed per plugin instance (Kong's ``handler_conf``)."""

    host: str
    port: int
    use_tcp: bool
    udp_packet_size: int
    settings: Settings


async def send_entries(conf: Delivery, entries: list[Any]) -> bool | tuple[bool, str]:
    """Send every metric line of every serialized request in the batch."""
    lines = await encoded_lines(partial(metric_lines, conf.settings), entries)
    where = f"{conf.host}:{conf.port}"
    if conf.use_tcp:
        try:
            conn = await _tcp.connect(conf.host, conf.port)
        except OSError as exc:
            return _connect_failed(where, exc)
        await _tcp.send_lines(conn, lines, host=conf.host, port=conf.port, tag="statsd")
        return True
    try:
        sock = await _udp.open_udp(conf.host, conf.port)
    except OSError as exc:
        return _connect_failed(where, exc)
    try:
        datagrams = pack_datagrams(lines, conf.udp_packet_size)
        await _udp.send_datagrams(sock, datagrams, where=where, tag="statsd")
    finally:
        sock.close()
    return True


def _connect_failed(where: str, exc: OSError) -> tuple[bool, str]:
    message = f"failed to connect to {where}: {exc}"
    log.error("failed to create Statsd logger: %s", message)
    return False, message
