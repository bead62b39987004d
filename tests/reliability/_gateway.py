"""The gateway as users run it: ``relayq serve`` in a subprocess on 127.0.0.1, with its output
kept in a file (for the credential greps) and its status listener read over HTTP.

With one worker the served process *is* the worker, so its pid is what /proc is read for.
Also here: the local sinks the gateway's plugins send to during long runs, which count what
arrives instead of keeping it (a soak must not make the *test* process grow), and ``wrk``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.reliability._probe import wait_until
from tests.support.fault_proxy import FaultProxy, Hit

ROOT = Path(__file__).resolve().parents[2]


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}",
            "PYTHONUNBUFFERED": "1"}


class Served:
    """``python -m relayq serve --config <file>`` with a status listener."""

    def __init__(self, workdir: Path, config: str, *, shutdown_timeout: float = 10.0,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.status_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.status_url = f"http://127.0.0.1:{self.status_port}"
        self.config_path = workdir / f"kong-{self.port}.yml"
        self.config_path.write_text(config)
        self.output_path = workdir / f"gateway-{self.port}.log"
        self._out = open(self.output_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relayq", "serve", "--config", str(self.config_path),
             "--listen", f"127.0.0.1:{self.port}",
             "--status-listen", f"127.0.0.1:{self.status_port}",
             "--shutdown-timeout", str(shutdown_timeout), *extra_args],
            stdout=self._out, stderr=subprocess.STDOUT, env=env(), cwd=workdir)
        self.pid = self.proc.pid

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> Served:
        def answers() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited ({self.proc.returncode}):\n{self.output()}")
            try:
                httpx.get(self.status_url + "/status", timeout=1.0)
                httpx.get(self.url + "/__ready__", timeout=1.0)
                return True
            except httpx.TransportError:
                return False

        try:
            wait_until(answers, timeout, "the gateway to answer")
        except BaseException:
            self.kill()  # never leave a gateway behind a failed start
            raise
        return self

    def status(self) -> dict[str, Any]:
        """Every queue of the (single) worker: ``{name: {...}}``."""
        document = httpx.get(self.status_url + "/status", timeout=5).json()
        queues: dict[str, Any] = {}
        for worker in document["workers"]:
            queues.update(worker["queues"])
        return queues

    def idle(self) -> bool:
        """Every queue empty with nothing in flight."""
        return all(q["depth"] == 0 and q["in_flight"] == 0 for q in self.status().values())

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"gateway did not stop within {timeout}s") from None
        finally:
            self._out.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(Exception):
            self._out.close()


class Upstream:
    """``tests/reliability/_upstream_app.py`` under uvicorn in its own process."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability._upstream_app", str(self.port)],
            env=env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

        def up() -> bool:
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", self.port)) == 0

        wait_until(up, 20, "the upstream to listen")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Upstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class CountingSink:
    """An HTTP sink for the log and trace plugins that counts requests and http-log entries
    (a :class:`FaultProxy` without upstream, answering 200, keeping no bodies)."""

    def __init__(self) -> None:
        self.entries = 0
        self.requests = 0
        self._lock = threading.Lock()
        self.proxy = FaultProxy(keep_bodies=False, on_request=self._count)

    def _count(self, hit: Hit, body: bytes) -> None:
        with self._lock:
            self.requests += 1
            if hit.path.startswith("/logs"):
                data = orjson.loads(body)
                self.entries += len(data) if isinstance(data, list) else 1

    @property
    def url(self) -> str:
        return self.proxy.url

    def __enter__(self) -> CountingSink:
        self.proxy.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.proxy.stop()


class UdpCounter:
    """A UDP socket drained by a thread, counting datagrams (the statsd/datadog sink)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.datagrams = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.datagrams += 1

    def __enter__(self) -> UdpCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    errors: int  # socket errors plus non-2xx/3xx responses


def ensure_wrk() -> str:
    """The ``wrk`` binary; installed with apt-get when missing and we are root."""
    found = shutil.which("wrk")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        quiet = subprocess.DEVNULL
        if subprocess.run(["apt-get", "install", "-y", "wrk"], stdout=quiet,
                          stderr=quiet).returncode != 0:
            subprocess.run(["apt-get", "update"], stdout=quiet, stderr=quiet)
            subprocess.run(["apt-get", "install", "-y", "wrk"], stdout=quiet, stderr=quiet)
        found = shutil.which("wrk")
    if found is None:
        raise AssertionError("wrk is required (Debian package 'wrk'): apt-get install -y wrk")
    return found


def run_wrk(url: str, seconds: float, *, connections: int = 16) -> WrkResult:
    """``wrk -t1 -c<connections> -d<seconds>s url``, parsed."""
    out = subprocess.run(
        [ensure_wrk(), "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", url],
        capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    match = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)\b", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None or rps is None:
        raise AssertionError(f"cannot read wrk's output:\n{out}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}[match.group(3)]
    elapsed = float(match.group(2)) * scale
    errors = 0
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        errors += int(bad.group(1))
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if socket_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
    return WrkResult(int(match.group(1)), elapsed, float(rps.group(1)), errors)


def settle(predicate: Any, timeout: float = 30.0, what: str = "the gateway to settle") -> None:
    """Wait until ``predicate()``, then a little longer for late stragglers to show."""
    wait_until(predicate, timeout, what, interval=0.1)
    time.sleep(0.2)
    wait_until(predicate, timeout, what, interval=0.1)
