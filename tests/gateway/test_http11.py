"""The gateway's upstream HTTP/1.1 client against scripted raw TCP servers on 127.0.0.1:
framing (length, chunked, end of connection, HEAD/204/304, interim 1xx), keep-alive reuse and
when a connection must not be reused, streaming both ways with back-pressure, the three
timeouts, and failures mapped to the exceptions the proxy turns into 502/503/504."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from relayq.gateway._http11 import (
    STALE_CHECK_AFTER,
    ConnectError,
    ConnectTimeout,
    NameResolutionError,
    ProtocolError,
    ReadTimeout,
    Timeouts,
    UpstreamPool,
    UpstreamResponse,
    WriteTimeout,
)
from relayq.gateway._upstream import classify

T = Timeouts(connect=2.0, write=2.0, read=2.0)

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def both_loops(check: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """A test running ``check`` once on the standard loop and once on uvloop (what the
    gateway's workers run); ``check``'s own parameters stay fixtures and parameters."""

    def test(loop: str, **kwargs: Any) -> None:
        with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
            runner.run(check(**kwargs))

    params = inspect.signature(check).parameters.values()
    test.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("loop", inspect.Parameter.POSITIONAL_OR_KEYWORD), *params])
    test.__name__ = test.__qualname__ = check.__name__
    test.__doc__ = check.__doc__
    parametrized: Callable[..., None] = pytest.mark.parametrize("loop", list(LOOPS))(test)
    return parametrized
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A TCP server on a free port running ``handler`` per connection; counts connections."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl = ssl_context
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client left, or the test is over
        finally:
            writer.close()

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def read_head(reader: asyncio.StreamReader) -> tuple[str, dict[str, str]]:
    """The request line and lower-cased headers of the next request."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    line, *rest = head.split("\r\n")
    headers = {}
    for item in rest:
        if item:
            name, _, value = item.partition(":")
            headers[name.strip().lower()] = value.strip()
    return line, headers


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding") == "chunked":
        parts: list[bytes] = []
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                await reader.readline()
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readline()
    return await reader.readexactly(int(headers.get("content-length", "0")))


def ok(body: bytes = b"hello", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%b\r\n%b" % (len(body), extra, body)


async def answer_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        line, headers = await read_head(reader)
        await read_body(reader, headers)
        writer.write(ok(line.encode()))
        await writer.drain()


async def body_of(response: UpstreamResponse) -> bytes:
    parts = []
    while chunk := await response.read():
        parts.append(chunk)
    return b"".join(parts)


async def get(pool: UpstreamPool, port: int, method: str = "GET", target: str = "/",
              body: bytes | AsyncIterator[bytes] | None = None,
              headers: list[tuple[bytes, bytes]] | None = None,
              timeouts: Timeouts = T) -> UpstreamResponse:
    return await pool.request(method, "http", "127.0.0.1", port, target,
                              [(b"host", b"upstream"), *(headers or [])], body, timeouts)


@both_loops
async def test_keep_alive_reuses_one_connection() -> None:
    pool = UpstreamPool()
    async with Server(answer_forever) as server:
        for i in range(3):
            response = await get(pool, server.port, target=f"/r{i}")
            assert response.status == 200
            line = f"GET /r{i} HTTP/1.1".encode()
            assert (b"Content-Length", str(len(line)).encode()) in response.headers
            assert await body_of(response) == line
            assert response.peer == ("127.0.0.1", server.port)
        assert server.connections == 1
        assert pool.idle_count() == 1
        await pool.aclose()


@both_loops
async def test_connection_close_and_http10_are_not_reused() -> None:
    async def close_each(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(ok(extra=b"Connection: close\r\n"))
        await writer.drain()
        await reader.read()  # until the client closes

    pool = UpstreamPool()
    async with Server(close_each) as server:
        for _ in range(2):
            assert await body_of(await get(pool, server.port)) == b"hello"
        assert server.connections == 2
        assert pool.idle_count() == 0


@both_loops
async def test_body_delimited_by_the_connection_end() -> None:
    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npart one, ")
        await writer.drain()
        writer.write(b"part two")
        await writer.drain()

    pool = UpstreamPool()
    async with Server(until_close) as server:
        response = await get(pool, server.port)
        assert await body_of(response) == b"part one, part two"
        assert pool.idle_count() == 0


@both_loops
async def test_chunked_response_streams_as_it_arrives() -> None:
    release = asyncio.Event()

    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        await writer.drain()
        await answer_forever(reader, writer)

    pool = UpstreamPool()
    async with Server(chunked) as server:
        response = await get(pool, server.port)
        assert await response.read() == b"first"  # before the server sent the rest
        release.set()
        assert await body_of(response) == b"second"
        assert await body_of(await get(pool, server.port)) == b"GET / HTTP/1.1"
        assert server.connections == 1


@both_loops
async def test_head_204_304_have_no_body_and_keep_the_connection() -> None:
    async def bodiless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line, _ = await read_head(reader)
        assert line.startswith("HEAD")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for status in (b"204 No Content", b"304 Not Modified"):
            await read_head(reader)
            writer.write(b"HTTP/1.1 " + status + b"\r\nETag: x\r\n\r\n")
        await answer_forever(reader, writer)

    pool = UpstreamPool()
    async with Server(bodiless) as server:
        head = await get(pool, server.port, method="HEAD")
        assert (head.status, await body_of(head)) == (200, b"")
        for status in (204, 304):
            response = await get(pool, server.port)
            assert (response.status, await body_of(response)) == (status, b"")
        assert await body_of(await get(pool, server.port)) == b"GET / HTTP/1.1"
        assert server.connections == 1


@both_loops
async def test_interim_responses_are_skipped() -> None:
    async def interim(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
        writer.write(ok(b"final", b"X-Final: 1\r\n"))
        await writer.drain()

    pool = UpstreamPool()
    async with Server(interim) as server:
        response = await get(pool, server.port)
        assert response.status == 200
        assert [n for n, _ in response.headers] == [b"Content-Length", b"X-Final"]
        assert await body_of(response) == b"final"


@both_loops
async def test_request_body_framing() -> None:
    seen: list[tuple[str, dict[str, str], bytes]] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            line, headers = await read_head(reader)
            seen.append((line, headers, await read_body(reader, headers)))
            writer.write(ok())
            await writer.drain()

    async def stream() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b""
        yield b"defg"

    pool = UpstreamPool()
    async with Server(record) as server:
        for method, body, headers in [
            ("GET", None, []),
            ("POST", None, []),
            ("POST", b"", []),
            ("PUT", b"payload", []),
            ("POST", stream(), []),
            ("POST", stream(), [(b"content-length", b"7")]),
        ]:
            await body_of(await get(pool, server.port, method, body=body, headers=headers))
        assert server.connections == 1
    lengths = [(h.get("content-length"), h.get("transfer-encoding"), b) for _, h, b in seen]
    assert lengths == [
        (None, None, b""),
        ("0", None, b""),
        ("0", None, b""),
        ("7", None, b"payload"),
        (None, "chunked", b"abcdefg"),
        ("7", None, b"abcdefg"),
    ]


@both_loops
async def test_large_bodies_both_ways_with_back_pressure() -> None:
    payload = bytes(range(256)) * 16384  # 4 MiB

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, headers = await read_head(reader)
        body = await read_body(reader, headers)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        for i in range(0, len(body), 1 << 16):
            writer.write(body[i:i + (1 << 16)])
            await writer.drain()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 100_000):
            yield payload[i:i + 100_000]

    pool = UpstreamPool()
    async with Server(echo) as server:
        response = await get(pool, server.port, "POST", body=chunks())
        received = hashlib.sha256()
        while chunk := await response.read():
            assert len(chunk) <= 4 << 20
            received.update(chunk)
            await asyncio.sleep(0)  # a slow reader: the client must pause reading
        assert received.hexdigest() == hashlib.sha256(payload).hexdigest()
        assert pool.idle_count() == 1


@both_loops
async def test_read_timeout_waiting_for_headers_and_between_body_chunks() -> None:
    async def stall_then_part(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line, _ = await read_head(reader)
        if "part" in line:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            await writer.drain()
        await reader.read()

    pool = UpstreamPool()
    quick = Timeouts(connect=2.0, write=2.0, read=0.2)
    async with Server(stall_then_part) as server:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(ReadTimeout):
            await get(pool, server.port, target="/stall", timeouts=quick)
        assert 0.15 < loop.time() - start < 2.0
        response = await get(pool, server.port, target="/part", timeouts=quick)
        assert await response.read() == b"abc"
        with pytest.raises(ReadTimeout) as info:
            await response.read()
        assert classify(info.value).status == 504 and not classify(info.value).retry
        response.close()
        assert pool.idle_count() == 0


@both_loops
async def test_write_timeout_when_the_upstream_reads_nothing() -> None:
    async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async def endless() -> AsyncIterator[bytes]:
        chunk = b"x" * (1 << 16)
        while True:
            yield chunk

    pool = UpstreamPool()
    async with Server(never_reads) as server:
        with pytest.raises(WriteTimeout) as info:
            await get(pool, server.port, "POST", body=endless(),
                      timeouts=Timeouts(connect=2.0, write=0.3, read=2.0))
        assert classify(info.value).status == 504


@both_loops
async def test_an_early_answer_stops_the_upload_and_the_connection_is_not_reused() -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(ok(b"too large"))
        await writer.drain()
        await reader.read(1 << 16)
        await asyncio.sleep(0.5)

    sent = 0

    async def slow_upload() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(50):
            sent += 1
            yield b"y" * 1000
            await asyncio.sleep(0.02)

    pool = UpstreamPool()
    async with Server(refuse) as server:
        response = await get(pool, server.port, "POST", body=slow_upload())
        assert await body_of(response) == b"too large"
        assert sent < 50
        assert pool.idle_count() == 0


@both_loops
async def test_connect_failures() -> None:
    pool = UpstreamPool()
    async with Server(answer_forever) as server:
        port = server.port
    with pytest.raises(ConnectError) as refused:
        await get(pool, port)
    assert (classify(refused.value).status, classify(refused.value).retry) == (502, True)
    with pytest.raises(NameResolutionError) as unresolved:
        await pool.request("GET", "http", "no-such-host.invalid", 80, "/", [], None, T)
    assert classify(unresolved.value).status == 503


@both_loops
async def test_connect_timeout_covers_the_tls_handshake() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    pool = UpstreamPool()
    async with Server(silent) as server:
        with pytest.raises(ConnectTimeout) as info:
            await pool.request("GET", "https", "127.0.0.1", server.port, "/", [], None,
                               Timeouts(connect=0.2, write=2.0, read=2.0), verify=False)
    assert (classify(info.value).status, classify(info.value).retry) == (504, True)


@pytest.mark.parametrize("reply", [b"this is not http\r\n\r\n", b"",
                                   b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort"])
@both_loops
async def test_bad_or_cut_responses_are_protocol_errors(reply: bytes) -> None:
    async def bad(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(reply)
        await writer.drain()

    pool = UpstreamPool()
    async with Server(bad) as server:
        with pytest.raises(ProtocolError) as info:
            response = await get(pool, server.port)
            await body_of(response)
    assert (classify(info.value).status, classify(info.value).retry) == (502, False)
    assert pool.idle_count() == 0


@both_loops
async def test_idle_connections_closed_by_the_server_or_expired_are_not_used() -> None:
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(ok())
        await writer.drain()  # then the handler returns: the server closes the connection

    pool = UpstreamPool()
    async with Server(once) as server:
        assert await body_of(await get(pool, server.port)) == b"hello"
        deadline = asyncio.get_running_loop().time() + 5
        while pool.idle_count() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        assert pool.idle_count() == 0
        assert await body_of(await get(pool, server.port)) == b"hello"
        assert server.connections == 2

    expiring = UpstreamPool(idle_timeout=0.0)
    async with Server(answer_forever) as server:
        for _ in range(2):
            await body_of(await get(expiring, server.port))
        assert server.connections == 2


@both_loops
async def test_a_close_the_loop_has_not_seen_yet_is_caught_before_reuse() -> None:
    # The server closes an idle connection just as a request wants it; the loop has not read
    # the close yet (reading paused here to hold that moment). The pool must not send on it.
    closed = asyncio.Event()

    async def close_after_one(reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
        if server.connections > 1:
            return await answer_forever(reader, writer)
        await read_head(reader)
        writer.write(ok())
        await writer.drain()
        writer.close()
        closed.set()

    pool = UpstreamPool()
    async with Server(close_after_one) as server:
        first = await get(pool, server.port)
        conn = first._conn
        assert conn is not None and conn.transport is not None
        conn.transport.pause_reading()
        assert await body_of(first) == b"hello"
        await closed.wait()
        await asyncio.sleep(0.05)  # the FIN is in the socket, unread
        assert pool.idle_count() == 1
        conn.idle_since -= 2 * STALE_CHECK_AFTER  # idle long enough to be checked
        assert await body_of(await get(pool, server.port)) == b"GET / HTTP/1.1"
        assert server.connections == 2


@both_loops
async def test_unsolicited_data_on_an_idle_connection_drops_it() -> None:
    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if server.connections > 1:
            return await answer_forever(reader, writer)
        await read_head(reader)
        writer.write(ok())
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale")
        await writer.drain()
        await answer_forever(reader, writer)

    pool = UpstreamPool()
    async with Server(chatty) as server:
        await body_of(await get(pool, server.port))
        deadline = asyncio.get_running_loop().time() + 5
        while pool.idle_count() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        assert pool.idle_count() == 0
        assert await body_of(await get(pool, server.port)) == b"GET / HTTP/1.1"
        assert server.connections == 2


@both_loops
async def test_unread_incomplete_response_closes_its_connection() -> None:
    async def slow_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if server.connections > 1:
            return await answer_forever(reader, writer)
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
        await writer.drain()
        await answer_forever(reader, writer)

    pool = UpstreamPool()
    async with Server(slow_body) as server:
        response = await get(pool, server.port)
        response.close()
        assert pool.idle_count() == 0
        assert await body_of(await get(pool, server.port)) == b"GET / HTTP/1.1"
        assert server.connections == 2


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@both_loops
async def test_tls_upstream_with_and_without_verification(certificate: tuple[Path, Path]) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    pool = UpstreamPool()
    async with Server(answer_forever, context) as server:
        for _ in range(2):
            response = await pool.request("GET", "https", "127.0.0.1", server.port, "/tls",
                                          [(b"host", b"x")], None, T, verify=False)
            assert await body_of(response) == b"GET /tls HTTP/1.1"
        assert server.connections == 1
        with pytest.raises(ConnectError) as info:  # self-signed: verification fails
            await pool.request("GET", "https", "127.0.0.1", server.port, "/", [], None, T,
                               verify=True)
        assert classify(info.value).status == 502
        await pool.aclose()
