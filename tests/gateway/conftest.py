"""Helpers for the gateway tests: serve a ``Gateway`` app in a thread, or ``run()`` it as a
subprocess, on free ports of 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from relayq.gateway import Gateway
from relayq.gateway._worker import _Server, uvicorn_config
from tests.gateway.upstream import Upstream

ROOT = Path(__file__).resolve().parents[2]


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition"
               ) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve_app(app: Gateway) -> Iterator[str]:
    """Serve ``app`` with uvicorn (as a worker would) on a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _Server(uvicorn_config(app, 5.0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started, what="uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as up:
        yield up


class GatewayProcess:
    """``relayq.gateway.run(...)`` in a subprocess, its output collected in a file."""

    def __init__(self, tmp_path: Path, config: str | None, *, workers: int = 1,
                 shutdown_timeout: float = 10.0, status_listen: str | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = tmp_path / "kong.yml"
        if config is not None:
            self.config_path.write_text(config)
        self.output_path = tmp_path / f"gateway-{self.port}.log"
        path_arg = repr(str(self.config_path)) if config is not None else "None"
        code = (
            "import sys; from relayq.gateway import run; "
            f"sys.exit(run({path_arg}, '127.0.0.1:{self.port}', {workers}, "
            f"{shutdown_timeout}, {status_listen!r}))"
        )
        environment = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1",
                       **(env or {})}
        self._out = open(self.output_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdout=self._out,
                                     stderr=subprocess.STDOUT, env=environment, cwd=tmp_path)

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the gateway answers HTTP (any status)."""

        def answers() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited early ({self.proc.returncode}):\n"
                                     f"{self.output()}")
            try:
                httpx.get(self.url + "/__ready__", timeout=1.0)
                return True
            except httpx.TransportError:
                return False

        wait_until(answers, timeout, "the gateway to answer")

    def send_signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"gateway did not stop within {timeout}s:\n{self.output()}") from None
        finally:
            self._out.close()
        return code


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    started: list[GatewayProcess] = []

    def start(config: str | None, **kwargs: Any) -> GatewayProcess:
        gp = GatewayProcess(tmp_path, config, **kwargs)
        started.append(gp)
        gp.wait_ready()
        return gp

    yield start
    for gp in started:
        if gp.proc.poll() is None:
            gp.proc.send_signal(signal.SIGKILL)
            gp.proc.wait()
        with contextlib.suppress(Exception):
            gp._out.close()
