"""The built-in example: a demo upstream, demo receivers that print what arrives, demo traffic.

``relayq serve`` without ``--config`` must show the whole system on a fresh machine, with
nothing else installed or running. So this module starts, inside the relayq process, a tiny
upstream service, an HTTP receiver for http-log, OpenTelemetry and Zipkin, and UDP receivers
for StatsD and Datadog metrics; renders ``example.yml`` with their addresses; and once the
gateway answers, sends a few requests through it so entries start arriving at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import string
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, TextIO

import httpx


def _say(out: TextIO, text: str) -> None:
    with contextlib.suppress(ValueError, OSError):  # stdout closed at exit
        print(text, file=out, flush=True)


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "relayq-demo-upstream"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps({
            "message": "hello from the demo upstream",
            "path": self.path,
            "consumer": self.headers.get("X-Consumer-Username"),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _answer


class _Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    out: TextIO = sys.stdout

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            lines = _describe(self.path, body)
        except Exception as exc:
            lines = [f"{self.path}: {len(body)} bytes ({exc})"]
        for line in lines:
            _say(self.out, f"[demo receiver] {line}")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


def _describe(path: str, body: bytes) -> list[str]:
    if path.startswith("/http-log"):
        data = json.loads(body)
        entries = data if isinstance(data, list) else [data]
        lines = [f"http-log: batch of {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"]
        for e in entries:
            consumer = (e.get("consumer") or {}).get("username", "-")
            lines.append(
                f"  {e['request']['method']} {e['request']['uri']} -> {e['response']['status']}"
                f"  consumer={consumer}  latencies={json.dumps(e.get('latencies'))}")
        return lines
    if path.startswith("/api/v2/spans"):
        spans = json.loads(body)
        names = sorted({s.get("name", "?") for s in spans})
        return [f"zipkin: {len(spans)} spans ({', '.join(names)})"]
    if path.startswith("/v1/traces"):
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        request = ExportTraceServiceRequest.FromString(body)
        names = [s.name for rs in request.resource_spans for ss in rs.scope_spans
                 for s in ss.spans]
        return [f"opentelemetry: {len(names)} spans ({', '.join(sorted(set(names)))})"]
    return [f"{path}: {len(body)} bytes"]


class Demo:
    """The demo servers and the rendered example config; ``stop()`` removes everything."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out
        self._servers: list[ThreadingHTTPServer] = []
        self._udp: list[socket.socket] = []
        self._stopping = threading.Event()
        self._dir = tempfile.mkdtemp(prefix="relayq-example-")
        upstream = self._http(_Upstream)
        receiver_class = type("Receiver", (_Receiver,), {"out": out})
        receiver = self._http(receiver_class)
        statsd = self._udp_receiver("statsd")
        datadog = self._udp_receiver("datadog")
        template = resources.files("relayq.gateway").joinpath("example.yml").read_text("utf-8")
        text = string.Template(template).substitute(
            UPSTREAM_URL=f"http://127.0.0.1:{upstream}",
            RECEIVER_URL=f"http://127.0.0.1:{receiver}",
            STATSD_PORT=statsd,
            DATADOG_PORT=datadog,
        )
        self.config_path = os.path.join(self._dir, "example.yml")
        with open(self.config_path, "w", encoding="utf-8") as fh:
            fh.write(text)

    def _http(self, handler: type[BaseHTTPRequestHandler]) -> int:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        self._servers.append(server)
        threading.Thread(target=server.serve_forever, name="relayq-demo", daemon=True).start()
        return int(server.server_address[1])

    def _udp_receiver(self, label: str) -> int:
        """Metrics arrive one datagram per metric; print one summary line per burst."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.3)
        self._udp.append(sock)

        def receive() -> None:
            burst: list[str] = []
            while not self._stopping.is_set():
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    if burst:
                        shown = ", ".join(burst[:3]) + (", ..." if len(burst) > 3 else "")
                        _say(self.out, f"[demo receiver] {label}: {len(burst)} metrics: "
                                       f"{shown}")
                        burst = []
                    continue
                except OSError:
                    return
                burst.extend(x for x in data.decode("utf-8", "replace").splitlines() if x)

        threading.Thread(target=receive, name=f"relayq-demo-{label}", daemon=True).start()
        return int(sock.getsockname()[1])

    def start_traffic(self, gateway_url: str) -> None:
        """Once the gateway answers, send a few requests through it (in the background)."""

        def traffic() -> None:
            calls: list[tuple[str, dict[str, str]]] = [
                ("/hello", {}),
                ("/private", {}),
                ("/private", {"apikey": "demo-key"}),
                ("/nowhere", {}),
            ]
            deadline = time.monotonic() + 30
            with httpx.Client(base_url=gateway_url, timeout=5, trust_env=False) as client:
                while not self._stopping.is_set():
                    try:
                        client.get("/hello")
                        break
                    except httpx.TransportError:
                        if time.monotonic() > deadline:
                            return
                        time.sleep(0.1)
                _say(self.out, f"\nrelayq example: gateway on {gateway_url}; try:\n"
                               f"  curl -i {gateway_url}/hello\n"
                               f"  curl -i -H 'apikey: demo-key' {gateway_url}/private\n"
                               f"sending demo requests now; their log entries, metrics and "
                               f"spans are printed as the receivers get them.\n")
                for path, headers in calls:
                    with contextlib.suppress(httpx.HTTPError):
                        r = client.get(path, headers=headers)
                        _say(self.out, f"[demo client] GET {path} "
                                       f"{'(apikey) ' if headers else ''}-> {r.status_code}")

        threading.Thread(target=traffic, name="relayq-demo-client", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for sock in self._udp:
            sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)
