"""A real upstream service on 127.0.0.1 for the gateway tests, behaving by path.

- ``/stream?chunks=N&delay=S``: a chunked response, one chunk every ``S`` seconds.
- ``/slow?delay=S``: answers after ``S`` seconds (read timeouts, 504).
- ``/close``: closes the connection without answering (502).
- ``/garbage``: answers with bytes that are not HTTP (502).
- ``/big?size=N``: ``N`` bytes with a Content-Length.
- anything else: echoes the request as JSON (method, path, headers, body size and sha256),
  reading a chunked or sized body chunk by chunk and recording when each chunk arrived.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    chunk_times: list[float] = field(default_factory=list)  # monotonic arrival of each chunk


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The head and the body are separate writes: with Nagle's algorithm on, the body would
    # wait for the gateway's delayed ACK (40 ms per keep-alive request).
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _read_body(self, seen: Seen) -> bytes:
        parts: list[bytes] = []
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(self.rfile.read(size))
                seen.chunk_times.append(time.monotonic())
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining > 0:
                chunk = self.rfile.read1(min(remaining, 65536))
                if not chunk:
                    break
                parts.append(chunk)
                seen.chunk_times.append(time.monotonic())
                remaining -= len(chunk)
        return b"".join(parts)

    def _handle(self) -> None:
        try:
            self._answer()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the gateway gave up (a timeout test)

    def _answer(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                    b"")
        self.server.upstream._record(seen)
        seen.body = self._read_body(seen)
        route = url.path.rstrip("/").rsplit("/", 1)[-1]
        if route == "close":
            self.close_connection = True
            return
        if route == "garbage":
            self.wfile.write(b"this is not http\r\n\r\n")
            self.close_connection = True
            return
        if route == "slow":
            time.sleep(float(query.get("delay", "1")))
        if route == "stream":
            self._stream(int(query.get("chunks", "3")), float(query.get("delay", "0.2")))
            return
        if route == "big":
            body = b"x" * int(query.get("size", "1000"))
            self._send(200, body, "application/octet-stream")
            return
        echo = {
            "method": self.command,
            "path": self.path,
            "headers": seen.headers,
            "body_size": len(seen.body),
            "body_sha256": hashlib.sha256(seen.body).hexdigest(),
        }
        status = int(query.get("status", "200"))
        self._send(status, json.dumps(echo).encode(), "application/json")

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Set-Cookie", "upstream=1")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _stream(self, chunks: int, delay: float) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(chunks):
            data = f"chunk {i}\n".encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
            if i < chunks - 1:
                time.sleep(delay)
        self.wfile.write(b"0\r\n\r\n")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    upstream: Upstream


class Upstream:
    """``with Upstream() as up: ... up.url ... up.requests``."""

    def __init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.upstream = self
        self.port: int = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._seen: list[Seen] = []
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self._seen.append(seen)

    @property
    def requests(self) -> list[Seen]:
        with self._lock:
            return list(self._seen)

    def __enter__(self) -> Upstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
