"""``relayq serve`` as a real subprocess with two workers and a status listener: ``relayq status``
sees every worker, and SIGTERM flushes entries still coalescing (1000 s delay) before exit 0."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.http_receiver import HttpReceiver


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"upstream ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class Output:
    """Collects a subprocess's stderr lines in a thread; ``wait`` polls for a pattern."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stderr is not None
        self._stream = proc.stderr
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            self.lines.append(line)

    def wait(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            time.sleep(0.02)
        raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(self.lines)}")


def test_serve_status_and_sigterm_flush(tmp_path: Path, upstream: str) -> None:
    with HttpReceiver() as rx:
        config = tmp_path / "kong.yml"
        config.write_text(
            f"""\
_format_version: "3.0"
services:
  - name: up
    url: {upstream}
    routes:
      - name: all
        paths: [/]
plugins:
  - name: http-log
    config:
      http_endpoint: {rx.url}/logs
      queue:
        max_batch_size: 100
        max_coalescing_delay: 1000
"""
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "relayq", "serve", "--config", str(config),
             "--listen", "127.0.0.1:0", "--workers", "2", "--shutdown-timeout", "10",
             "--status-listen", "127.0.0.1:0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        output = Output(proc)
        try:
            gateway = output.wait(r"relayq gateway on (http://127\.0\.0\.1:\d+)").group(1)
            status_url = output.wait(r"status listener on (http://127\.0\.0\.1:\d+)").group(1)
            with httpx.Client(base_url=gateway) as client:
                deadline = time.monotonic() + 30
                while True:  # both workers accept on the shared socket once they are up
                    try:
                        if client.get("/").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert time.monotonic() < deadline, "".join(output.lines)
                    time.sleep(0.05)
                for _ in range(9):
                    assert client.get("/").text == "upstream ok"

            def status(*extra: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run(
                    [sys.executable, "-m", "relayq", "status", "--url", status_url, *extra],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )

            # Every worker reports, with its own queues; all 10 entries are still coalescing.
            deadline = time.monotonic() + 20
            while True:
                document = json.loads(status("--json").stdout)
                queues = [q for w in document["workers"] for q in w["queues"].values()]
                if len(document["workers"]) == 2 and sum(q["depth"] for q in queues) == 10:
                    break
                assert time.monotonic() < deadline, document
                time.sleep(0.1)
            assert len({w["pid"] for w in document["workers"]}) == 2
            table = status()
            assert table.returncode == 0
            assert f"{rx.url}/logs:POST" in table.stdout
            assert rx.requests == []

            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, "".join(output.lines)
            entries = [e for r in rx.wait_for(1) for e in _entries(r.json())]
            assert len(entries) == 10
            assert {e["request"]["uri"] for e in entries} == {"/"}
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def _entries(body: Any) -> list[Any]:
    return body if isinstance(body, list) else [body]
