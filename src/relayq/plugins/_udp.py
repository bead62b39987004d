"""A connected UDP socket for one batch of StatsD/DogStatsD datagrams, opened on the event loop.

Kong's statsd and datadog handlers open one UDP socket per batch (``setpeername``), send each
datagram, and close it. Only a failure to open the socket (name resolution, ``connect``) fails
the batch and makes the queue retry it; an individual send error is logged and the batch still
counts as delivered, so a retry never duplicates metrics that did go out (Kong #10052/#10044).
Name resolution runs through the loop's resolver so it never blocks the loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from collections.abc import Iterable

log = logging.getLogger("relayq.plugins")


def error_text(exc: OSError) -> str:
    """A socket error in nginx's words: the lower-case system message (``connection refused``,
    ``no route to host``), or the resolver's message for a failed name lookup."""
    if isinstance(exc, socket.gaierror):
        return (exc.strerror or str(exc)).lower()
    if exc.errno is not None:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


async def _resolve(host: str, port: int, kind: socket.SocketKind) -> tuple[int, tuple[object, ...]]:
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        return family, (str(address), port)
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=kind)
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


async def open_udp(host: str, port: int) -> socket.socket:
    """A non-blocking UDP socket connected to ``host:port``; ``OSError`` names the reason."""
    try:
        family, sockaddr = await _resolve(host, port, socket.SOCK_DGRAM)
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError as exc:
        raise OSError(error_text(exc)) from exc
    try:
        sock.setblocking(False)
        sock.connect(sockaddr)
    except OSError as exc:
        sock.close()
        raise OSError(error_text(exc)) from exc
    return sock


async def send_datagrams(
    sock: socket.socket, datagrams: Iterable[bytes], *, where: str, tag: str = ""
) -> int:
    """Send each datagram; failures are logged as ``[<tag>] failed to send data to <where>: <err>``
    (no ``[<tag>] `` when ``tag`` is empty) and skipped. Returns how many were sent."""
    loop = asyncio.get_running_loop()
    sent = 0
    for datagram in datagrams:
        try:
            try:
                sock.send(datagram)
            except BlockingIOError:
                await loop.sock_sendall(sock, datagram)
        except OSError as exc:
            prefix = f"[{tag}] " if tag else ""
            log.error("%sfailed to send data to %s: %s", prefix, where, error_text(exc))
            continue
        sent += 1
    return sent
