"""A real HTTP server on 127.0.0.1 that records requests and answers from a script.

Usage::

    with HttpReceiver() as rx:                      # free port, background threads
        rx.script(Reply(500), Reply(302, headers={"Location": "/x"}), Reply(reset=True))
        ...                                          # point a sender at rx.url + "/path"
        first, second = rx.wait_for(2)              # polls until 2 requests arrived (deadline)
        assert first.json() == {...}

Requests are recorded *before* the reply is produced, so a request answered slowly or with a
connection reset is still visible. Unscripted requests get ``default`` (200, empty body).
HTTP/1.1 keep-alive is supported; ``Received.connection`` identifies the client connection so
tests can check that connections are reused. ``tls=(certfile, keyfile)`` serves HTTPS
(``self_signed_certificate`` makes a pair with the openssl command line tool).
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    """How to answer one request: a status with body and headers after ``delay`` seconds, or a
    connection reset (``reset=True``, the client sees ECONNRESET and no response)."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    reset: bool = False


@dataclass(frozen=True)
class Received:
    """One recorded request. ``headers`` maps lower-case names to the last value;
    ``header_list`` keeps every (name, value) pair in arrival order."""

    method: str
    path: str
    headers: dict[str, str]
    header_list: list[tuple[str, str]]
    body: bytes
    connection: int
    at: float

    def json(self) -> Any:
        """The body decoded as JSON."""
        return json.loads(self.body)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.connection_number = self.server.receiver._new_connection()

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._read_body()
        receiver = self.server.receiver
        reply = receiver._record(
            Received(
                method=self.command,
                path=self.path,
                headers={k.lower(): v for k, v in self.headers.items()},
                header_list=list(self.headers.items()),
                body=body,
                connection=self.connection_number,
                at=time.monotonic(),
            )
        )
        if reply.delay and receiver._stopping.wait(reply.delay):
            self.close_connection = True
            return
        if reply.reset:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
        except OSError:
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    receiver: HttpReceiver


class HttpReceiver:
    """The recording server; see the module docstring."""

    def __init__(self, default: Reply | None = None, *, tls: tuple[str, str] | None = None) -> None:
        self.default = default or Reply()
        self._script: list[Reply] = []
        self._received: list[Received] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self.connections = 0  # client connections accepted so far
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.receiver = self
        if tls is not None:  # (certificate file, key file): serve HTTPS
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.host = "127.0.0.1"
        self.port: int = self._server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://{self.host}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> HttpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> HttpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with ``replies``, in order, then with ``default``."""
        with self._lock:
            self._script.extend(replies)

    def _new_connection(self) -> int:
        with self._lock:
            self.connections += 1
            return self.connections

    def _record(self, received: Received) -> Reply:
        with self._arrived:
            self._received.append(received)
            self._arrived.notify_all()
            return self._script.pop(0) if self._script else self.default

    @property
    def requests(self) -> list[Received]:
        """A snapshot of the requests received so far."""
        with self._lock:
            return list(self._received)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Wait until at least ``count`` requests arrived; ``AssertionError`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self._received) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"expected {count} requests within {timeout}s, got {len(self._received)}"
                    )
                self._arrived.wait(remaining)
            return list(self._received)


def self_signed_certificate(directory: str) -> tuple[str, str]:
    """A throwaway certificate for 127.0.0.1 and its key, made with ``openssl`` (which must be
    installed: the TLS tests fail without it rather than being skipped)."""
    import subprocess
    from pathlib import Path

    cert, key = str(Path(directory) / "cert.pem"), str(Path(directory) / "key.pem")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            key,
            "-out",
            cert,
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key
