"""Newline-terminated lines over pooled TCP connections (StatsD's TCP mode).

Kong's statsd handler connects with a 1 s timeout, writes each metric followed by ``\\n`` and
puts the socket back into the keep-alive pool after the batch. Here the pool holds at most one
idle connection per (event loop, host, port): a connection is reused only while the server has
not closed it, and a connection that fails while writing is dropped, never reused.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Iterable

from relayq.plugins._udp import error_text, log_send_error

log = logging.getLogger("relayq.plugins")

CONNECT_TIMEOUT = 1.0
WRITE_TIMEOUT = 10.0

_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]
_POOLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, int], _Conn]] = (
    weakref.WeakKeyDictionary()
)
_LOCK = threading.Lock()


def _pool() -> dict[tuple[str, int], _Conn]:
    loop = asyncio.get_running_loop()
    with _LOCK:
        pool = _POOLS.get(loop)
        if pool is None:
            pool = _POOLS[loop] = {}
        return pool


def _usable(conn: _Conn) -> bool:
    reader, writer = conn
    return not writer.is_closing() and not reader.at_eof()


async def connect(host: str, port: int, *, timeout: float = CONNECT_TIMEOUT) -> _Conn:
    """A pooled connection to ``host:port`` if one is still open, else a new one.
    ``OSError`` (with ``timeout`` as its text on a timeout) when it cannot connect."""
    pool = _pool()
    conn = pool.pop((host, port), None)
    if conn is not None:
        if _usable(conn):
            return conn
        conn[1].close()
    try:
        return await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except TimeoutError as exc:
        raise OSError("timeout") from exc
    except OSError as exc:
        raise OSError(error_text(exc)) from exc


async def send_lines(
    conn: _Conn, lines: Iterable[bytes], *, host: str, port: int, tag: str
) -> bool:
    """Write every line plus ``\\n``, then return the connection to the pool. On a write error
    the error is logged (``[<tag>] failed to send data to host:port: err``, at most once a second
    per destination), the connection is closed, and ``False`` is returned."""
    writer = conn[1]
    try:
        writer.write(b"".join(line + b"\n" for line in lines))
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        text = "timeout" if isinstance(exc, TimeoutError) else error_text(exc)
        log_send_error(f"[{tag}] ", f"{host}:{port}", text)
        writer.close()
        return False
    pool = _pool()
    previous = pool.get((host, port))
    if previous is None:
        pool[(host, port)] = conn
    else:
        writer.close()
    return True
