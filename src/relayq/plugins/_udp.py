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
import threading
import time
from collections.abc import Iterable

from relayq.plugins import _mmsg

log = logging.getLogger("relayq.plugins")

# A dead metrics agent makes every datagram fail; log such send errors at most this often per
# destination (Kong logs each one: thousands of lines a second under load), with the number of
# failures in between.
SEND_ERROR_INTERVAL = 1.0
_send_errors: dict[tuple[str, str], list[float]] = {}  # (prefix, where) -> [logged at, skipped]
_send_errors_lock = threading.Lock()


def log_send_error(prefix: str, where: str, text: str) -> None:
    """Log ``<prefix>failed to send data to <where>: <text>``, rate-limited per destination."""
    now = time.monotonic()
    key = (prefix, where)
    with _send_errors_lock:
        state = _send_errors.get(key)
        if state is not None and 0 <= now - state[0] < SEND_ERROR_INTERVAL:
            state[1] += 1
            return
        skipped = int(state[1]) if state is not None else 0
        _send_errors[key] = [now, 0]
    if skipped:
        log.error("%sfailed to send data to %s: %s (%d more failed sends in the last %.0f s)",
                  prefix, where, text, skipped, SEND_ERROR_INTERVAL)
    else:
        log.error("%sfailed to send data to %s: %s", prefix, where, text)


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
    (no ``[<tag>] `` when ``tag`` is empty; at most once a second per destination) and
    skipped. Returns how many were sent.

    Each datagram is its own ``send`` as far as the receiver can tell, but on Linux they go out
    ``sendmmsg`` many at a time; a large batch (a busy gateway's, thousands of lines) is sent
    from a worker thread, so the kernel's work of delivering them runs beside the event loop,
    not on it. Anything unusual (a full socket buffer, an error the kernel reports only for
    one datagram) hands the rest of the batch to the one-send-per-datagram loop.
    """
    prefix = f"[{tag}] " if tag else ""
    pending = datagrams if isinstance(datagrams, list) else list(datagrams)
    sent = 0
    if _mmsg.available and len(pending) > 1:
        if len(pending) >= THREAD_MIN_DATAGRAMS:
            # The thread gets its own descriptor for the socket, and closes it when done: if
            # this task is cancelled (shutdown) and the caller closes the socket meanwhile, the
            # number cannot be reused under the thread.
            fd = os.dup(sock.fileno())
            try:
                future = asyncio.get_running_loop().run_in_executor(
                    None, _send_all_and_close, fd, pending)
            except BaseException:
                os.close(fd)
                raise
            done, errors = await future
        else:
            done, errors = _mmsg.send_all(sock.fileno(), pending)
        for err in errors:
            log_send_error(prefix, where, error_text(OSError(err, os.strerror(err))))
        sent = done - len(errors)
        pending = pending[done:]
    return sent + await _send_each(sock, pending, prefix, where)


def _send_all_and_close(fd: int, datagrams: list[bytes]) -> tuple[int, list[int]]:
    try:
        return _mmsg.send_all(fd, datagrams)
    finally:
        os.close(fd)


# Batches of at least this many datagrams are sent from a worker thread (below it, handing
# them over costs more than it saves).
THREAD_MIN_DATAGRAMS = 256


async def _send_each(sock: socket.socket, datagrams: list[bytes], prefix: str, where: str) -> int:
    loop = asyncio.get_running_loop()
    sent = 0
    for datagram in datagrams:
        try:
            try:
                sock.send(datagram)
            except BlockingIOError:
                await loop.sock_sendall(sock, datagram)
        except OSError as exc:
            log_send_error(prefix, where, error_text(exc))
            continue
        sent += 1
    return sent
