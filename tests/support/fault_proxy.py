"""Fault injection on 127.0.0.1: a TCP proxy (HTTP-aware or raw) and a UDP proxy whose
behaviour can be switched while senders keep sending.

Real receivers (``HttpReceiver``, ``TcpListener``, ``UdpListener``, Etsy's statsd) only fail in
the ways they were scripted to, and only per request. A fault proxy sits between a sender and
its receiver and makes the *network* misbehave, switchable at any moment from the test::

    with HttpReceiver() as rx, FaultProxy(upstream=(rx.host, rx.port)) as proxy:
        ...                                  # point the sender at proxy.url
        proxy.fault = REFUSE                 # nothing listens on the port any more
        proxy.fault = answer(429, headers={"Retry-After": "1"})
        proxy.fault = PASS                   # requests reach rx again

Faults (``Fault.kind``):

- ``pass``: forward to the upstream (HTTP mode without an upstream: answer 200 itself, a sink).
- ``refuse``: close the listening socket, so connects get ECONNREFUSED; open connections are
  reset. Leaving ``refuse`` listens again on the same port.
- ``reset``: accept, read the request head, then reset the connection (RST).
- ``stall``: accept and read, never answer (the sender's timeout must fire). Raw TCP mode stops
  reading instead, so the bytes wait in the kernel and are forwarded once the stall ends.
- ``answer(status, headers, body, delay)``: HTTP mode only; answer every request with this
  status (5xx, 3xx, 429 with Retry-After...) after ``delay`` seconds, without forwarding.
- ``slow(delay)``: forward, but only after ``delay`` seconds (per request, per chunk or per
  datagram).
- ``cut_request``: read half of the request body, then close the connection (the upstream
  never sees the request).
- ``cut_response``: forward the request, then send the client half of the upstream's response
  body and close (the upstream did get it: a retry makes a duplicate).

Every request the HTTP mode handles is recorded as a :class:`Hit` (which fault handled it, when,
its headers), so tests can check a fault was really exercised and measure retry gaps.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Self


@dataclass(frozen=True)
class Fault:
    """How the proxy treats traffic; see the module docstring for the kinds."""

    kind: str
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    delay: float = 0.0

    def __str__(self) -> str:
        if self.kind == "answer":
            return f"answer {self.status}" + (f" after {self.delay:g}s" if self.delay else "")
        if self.kind == "slow":
            return f"slow {self.delay:g}s"
        return self.kind


PASS = Fault("pass")
REFUSE = Fault("refuse")
RESET = Fault("reset")
STALL = Fault("stall")
CUT_REQUEST = Fault("cut_request")
CUT_RESPONSE = Fault("cut_response")


def answer(
    status: int,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    delay: float = 0.0,
) -> Fault:
    """Answer every request with ``status`` (HTTP mode), after ``delay`` seconds."""
    return Fault("answer", status, tuple((headers or {}).items()), body, delay)


def slow(delay: float) -> Fault:
    """Forward everything, ``delay`` seconds late."""
    return Fault("slow", delay=delay)


@dataclass(frozen=True)
class Hit:
    """One HTTP request as the proxy handled it: the fault in force when its head arrived."""

    fault: str
    at: float  # time.monotonic()
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes = b""


_REASONS = {200: "OK", 204: "No Content", 301: "Moved Permanently", 302: "Found",
            400: "Bad Request", 404: "Not Found", 429: "Too Many Requests",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0), as a crashing peer or a firewall would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip() or b"0")
    return 0


def _with_length(head: bytes, length: int) -> bytes:
    lines = [line for line in head.split(b"\r\n")
             if line and not line.lower().startswith(b"content-length:")]
    return b"\r\n".join([*lines, b"Content-Length: %d" % length]) + b"\r\n\r\n"


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, _, rest = lines[0].partition(" ")
    path = rest.rpartition(" ")[0]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return method, path, headers


class _LoopThread:
    """An event loop on a daemon thread, for proxies used from synchronous and async tests."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.call(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


class _Counted:
    """What both proxies count per fault kind (``counts``, under ``_lock``), and waiting on it.
    ``counts`` holds requests (HTTP) or chunks/connections (raw) for ``FaultProxy``, datagrams
    received for ``UdpFaultProxy``."""

    counts: Counter[str]
    _lock: threading.Lock

    def count(self, kind: str) -> int:
        """What was handled under fault ``kind``."""
        with self._lock:
            return self.counts[kind]

    def wait_for(self, predicate: Callable[[Self], bool], timeout: float = 10.0,
                 what: str = "the proxy condition") -> None:
        """Poll ``predicate(self)`` until true; ``AssertionError`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                                     f"counts={dict(self.counts)}")
            time.sleep(0.01)


class FaultProxy(_Counted):
    """A TCP proxy (``http=True``: per-request, HTTP/1.1 keep-alive aware; ``http=False``: raw
    byte streams) in front of ``upstream``; see the module docstring.

    ``keep_bodies=False`` records hits without their bodies (long runs); ``on_request`` is
    called on the proxy's thread with each request's head and body (e.g. to count entries).
    """

    def __init__(
        self,
        upstream: tuple[str, int] | None = None,
        *,
        http: bool = True,
        keep_bodies: bool = True,
        on_request: Callable[[Hit, bytes], None] | None = None,
    ) -> None:
        if upstream is None and not http:
            raise ValueError("a raw TCP proxy needs an upstream")
        self.upstream = upstream
        self.http = http
        self.keep_bodies = keep_bodies
        self.on_request = on_request
        self.host = "127.0.0.1"
        self.port = 0
        self.connections = 0  # accepted so far
        self.counts: Counter[str] = Counter()  # requests (HTTP) or chunks (raw) per fault kind
        self.bytes_forwarded = 0
        self._fault = PASS
        self._hits: list[Hit] = []
        self._lock = threading.Lock()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._changed: asyncio.Event | None = None
        self._runner = _LoopThread("fault-proxy")

    # ------------------------------------------------------------------ control

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def fault(self) -> Fault:
        return self._fault

    @fault.setter
    def fault(self, fault: Fault) -> None:
        if fault.kind == "answer" and not self.http:
            raise ValueError("answer(...) needs an HTTP proxy")
        self._runner.call(self._apply(fault))

    @property
    def hits(self) -> list[Hit]:
        """A snapshot of the HTTP requests handled so far."""
        with self._lock:
            return list(self._hits)

    def start(self) -> FaultProxy:
        self._runner.start()
        self._runner.call(self._listen())
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._runner.call(self._close_all())
        self._runner.stop()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ loop side

    async def _listen(self) -> None:
        self._changed = self._changed or asyncio.Event()
        deadline = time.monotonic() + 5
        while True:
            try:
                self._server = await asyncio.start_server(
                    self._handle, self.host, self.port, reuse_address=True, backlog=512)
                break
            except OSError:  # the port was taken meanwhile (rare): retry briefly
                if not self.port or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close_all(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            _rst(writer)
        self._writers.clear()

    async def _apply(self, fault: Fault) -> None:
        previous, self._fault = self._fault, fault
        if fault.kind == "refuse" and previous.kind != "refuse":
            await self._close_all()
        elif previous.kind == "refuse" and fault.kind != "refuse":
            await self._listen()
        assert self._changed is not None
        self._changed.set()
        self._changed = asyncio.Event()

    async def _until_not_stalled(self) -> None:
        while self._fault.kind == "stall":
            assert self._changed is not None
            await self._changed.wait()

    def _note(self, kind: str, hit: Hit | None = None) -> None:
        with self._lock:
            self.counts[kind] += 1
            if hit is not None:
                self._hits.append(hit)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            if self.http:
                upstream = await self._http(reader, writer)
            else:
                await self._raw(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        except asyncio.CancelledError:  # the proxy stops: end quietly (asyncio would log a
            pass  # cancelled connection handler as an error)
        finally:
            self._writers.discard(writer)
            if upstream is not None:
                upstream[1].close()
            writer.close()

    # HTTP mode ---------------------------------------------------------------------------

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return upstream
            fault = self._fault
            method, path, headers = _parse_head(head)
            length = _content_length(head)
            if fault.kind == "reset":
                self._note("reset", Hit("reset", time.monotonic(), method, path, headers))
                _rst(writer)
                return upstream
            if fault.kind == "cut_request":
                self._note("cut_request", Hit("cut_request", time.monotonic(), method, path,
                                              headers))
                await reader.readexactly(length // 2)
                writer.close()
                return upstream
            body = await reader.readexactly(length)
            hit = Hit(fault.kind, time.monotonic(), method, path, headers,
                      body if self.keep_bodies else b"")
            self._note(fault.kind, hit)
            if self.on_request is not None:
                self.on_request(hit, body)
            if fault.kind == "stall":
                while await reader.read(65536):  # until the sender gives up
                    pass
                return upstream
            if fault.kind == "answer" or self.upstream is None:
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                status = fault.status if fault.kind == "answer" else 200
                out = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
                out += [f"{k}: {v}" for k, v in fault.headers]
                out.append(f"Content-Length: {len(fault.body)}")
                writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + fault.body)
                await writer.drain()
                continue
            if fault.kind == "slow":
                await asyncio.sleep(fault.delay)
            if upstream is None or upstream[0].at_eof():
                if upstream is not None:
                    upstream[1].close()
                upstream = await asyncio.open_connection(*self.upstream)
            up_reader, up_writer = upstream
            up_writer.write(head + body)
            await up_writer.drain()
            response_head = await up_reader.readuntil(b"\r\n\r\n")
            response_body = await up_reader.readexactly(_content_length(response_head))
            if fault.kind == "cut_response":  # promise more body than is ever sent
                promised = _with_length(response_head, len(response_body) + 16)
                writer.write(promised + response_body[: len(response_body) // 2])
                await writer.drain()
                writer.close()
                return upstream
            writer.write(response_head + response_body)
            await writer.drain()
            self.bytes_forwarded += len(head) + len(body)

    # raw TCP mode ------------------------------------------------------------------------

    async def _raw(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._fault.kind == "reset":
            self._note("reset")
            _rst(writer)
            return
        assert self.upstream is not None
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        back = asyncio.create_task(self._pipe_back(up_reader, writer))
        try:
            while True:
                if self._fault.kind == "stall":  # stop reading: bytes wait in the kernel
                    self._note("stall")
                    await self._until_not_stalled()
                chunk = await reader.read(65536)
                if not chunk:
                    return
                fault = self._fault
                self._note(fault.kind)
                if fault.kind == "stall":  # stalled while we waited for the chunk: hold it
                    await self._until_not_stalled()
                    fault = self._fault
                if fault.kind == "reset":
                    _rst(writer)
                    return
                if fault.kind == "slow":
                    await asyncio.sleep(fault.delay)
                if fault.kind == "cut_request":
                    up_writer.write(chunk[: len(chunk) // 2])
                    await up_writer.drain()
                    return
                up_writer.write(chunk)
                await up_writer.drain()
                self.bytes_forwarded += len(chunk)
        finally:
            back.cancel()
            up_writer.close()

    @staticmethod
    async def _pipe_back(up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, proxy: UdpFaultProxy) -> None:
        self.proxy = proxy

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.proxy._received(data)


class UdpFaultProxy(_Counted):
    """A UDP relay to ``127.0.0.1:upstream_port`` with the faults that make sense for datagrams:
    ``pass``, ``refuse`` (socket closed: the sender's socket gets ICMP port unreachable),
    ``stall`` (a black hole: datagrams are read and dropped) and ``slow(delay)``."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.host = "127.0.0.1"
        self.port = 0
        self.counts: Counter[str] = Counter()  # datagrams received per fault kind
        self._fault = PASS
        self._runner = _LoopThread("udp-fault-proxy")
        self._transport: asyncio.DatagramTransport | None = None
        self._out: socket.socket | None = None
        self._lock = threading.Lock()

    @property
    def fault(self) -> Fault:
        return self._fault

    @fault.setter
    def fault(self, fault: Fault) -> None:
        if fault.kind not in ("pass", "refuse", "stall", "slow"):
            raise ValueError(f"fault {fault} does not apply to UDP")
        self._runner.call(self._apply(fault))

    def start(self) -> UdpFaultProxy:
        self._out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._runner.start()
        self._runner.call(self._bind())
        return self

    def stop(self) -> None:
        if self._transport is not None:
            self._runner.loop.call_soon_threadsafe(self._transport.close)
        self._runner.stop()
        if self._out is not None:
            self._out.close()

    def __enter__(self) -> UdpFaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self), local_addr=(self.host, self.port))
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    async def _apply(self, fault: Fault) -> None:
        previous, self._fault = self._fault, fault
        if fault.kind == "refuse" and previous.kind != "refuse" and self._transport is not None:
            self._transport.close()
            self._transport = None
        elif previous.kind == "refuse" and fault.kind != "refuse":
            await self._bind()

    def _received(self, data: bytes) -> None:
        fault = self._fault
        with self._lock:
            self.counts[fault.kind] += 1
        if fault.kind == "stall":
            return
        if fault.kind == "slow":
            self._runner.loop.call_later(fault.delay, self._forward, data)
        else:
            self._forward(data)

    def _forward(self, data: bytes) -> None:
        assert self._out is not None
        with contextlib.suppress(OSError):
            self._out.sendto(data, ("127.0.0.1", self.upstream_port))
