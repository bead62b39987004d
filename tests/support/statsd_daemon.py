"""Etsy's StatsD daemon (``tests/node/node_modules/statsd``) run by the tests on free ports.

``StatsdDaemon`` writes a config listening on 127.0.0.1 (UDP and TCP), loads the JSON backend
beside this file (``statsd_json_backend.js``), which reports every packet received and every
flush, and accumulates what the daemon aggregated::

    with StatsdDaemon() as daemon:
        ...  # send to daemon.udp_port or daemon.tcp_port
        daemon.wait_until(lambda d: d.counters.get("kong.request.count") == 3)

Node.js is required: without it ``start()`` raises, so the tests that need it fail instead of
being skipped.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
STATSD_DIR = ROOT / "tests" / "node" / "node_modules" / "statsd"
BACKEND = Path(__file__).resolve().parent / "statsd_json_backend.js"
INTERNAL_PREFIXES = ("statsd.", "relayq.probe")  # the daemon's own counters and our probe


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A port the OS just handed out on 127.0.0.1 for ``kind`` (then released)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class StatsdDaemon:
    """See the module docstring. ``flush_interval`` is in seconds."""

    def __init__(self, *, flush_interval: float = 0.1) -> None:
        self.flush_interval = flush_interval
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.tcp_port = free_port(socket.SOCK_STREAM)
        self.mgmt_port = free_port(socket.SOCK_STREAM)
        self.packets: list[str] = []
        self.counters: dict[str, float] = {}
        self.timers: dict[str, list[float]] = {}
        self.gauges: dict[str, float] = {}
        self.sets: dict[str, set[str]] = {}
        self.output: list[str] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._probed = False
        self._dir = tempfile.TemporaryDirectory(prefix="relayq-statsd-")
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> StatsdDaemon:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node (Node.js) is not installed; the StatsD daemon tests need it")
        if not (STATSD_DIR / "stats.js").exists():
            raise RuntimeError(f"Etsy's statsd is not installed at {STATSD_DIR} (run scripts/test)")
        config = {
            "address": "127.0.0.1",
            "mgmt_address": "127.0.0.1",
            "mgmt_port": self.mgmt_port,
            "flushInterval": int(self.flush_interval * 1000),
            "backends": [str(BACKEND)],
            "servers": [
                {"server": "./servers/udp", "address": "127.0.0.1", "port": self.udp_port},
                {"server": "./servers/tcp", "address": "127.0.0.1", "port": self.tcp_port},
            ],
            "automaticConfigReload": False,
        }
        path = Path(self._dir.name) / "config.js"
        path.write_text(json.dumps(config))
        self._proc = subprocess.Popen(
            [node, "stats.js", str(path)],
            cwd=STATSD_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(15):
            self.stop()
            raise RuntimeError("statsd did not start:\n" + "\n".join(self.output))
        self._probe()
        return self

    def _probe(self) -> None:
        """Wait until both listeners answer: a UDP probe is seen and TCP accepts."""
        deadline = time.monotonic() + 10
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            while not self._probed:
                if time.monotonic() > deadline:
                    raise RuntimeError("statsd UDP listener did not come up")
                udp.sendto(b"relayq.probe:1|c", ("127.0.0.1", self.udp_port))
                time.sleep(0.02)
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.tcp_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("statsd TCP listener did not come up") from None
                time.sleep(0.02)
        self.reset()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            if not line.startswith("RELAYQ "):
                with self._lock:
                    self.output.append(line.rstrip("\n"))
                continue
            event = json.loads(line[len("RELAYQ ") :])
            with self._lock:
                if "ready" in event:
                    self._ready.set()
                elif "packet" in event:
                    if not event["packet"].startswith("relayq.probe"):
                        self.packets.append(event["packet"])
                    self._probed = True
                elif "flush" in event:
                    self._accumulate(event["flush"])

    def _accumulate(self, flush: dict[str, Any]) -> None:
        for key, value in flush["counters"].items():
            if not key.startswith(INTERNAL_PREFIXES) and value:
                self.counters[key] = self.counters.get(key, 0) + value
        for key, values in flush["timers"].items():
            if values:
                self.timers.setdefault(key, []).extend(values)
        for key, value in flush["gauges"].items():
            if not key.startswith(INTERNAL_PREFIXES):
                self.gauges[key] = value
        for key, values in flush["sets"].items():
            self.sets.setdefault(key, set()).update(values)

    def packet_snapshot(self) -> list[str]:
        with self._lock:
            return list(self.packets)

    def reset(self) -> None:
        """Forget what was received and aggregated so far."""
        with self._lock:
            self.packets.clear()
            self.counters.clear()
            self.timers.clear()
            self.gauges.clear()
            self.sets.clear()

    def wait_until(self, predicate: Callable[[StatsdDaemon], bool], timeout: float = 10.0) -> None:
        """Poll ``predicate(self)`` (under the daemon's lock) until true; ``AssertionError``
        with what was aggregated when ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if predicate(self):
                    return
            if time.monotonic() > deadline:
                with self._lock:
                    raise AssertionError(
                        f"statsd state not reached within {timeout}s: counters={self.counters} "
                        f"timers={self.timers} sets={self.sets} packets={self.packets}"
                    )
            time.sleep(0.02)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        if self._reader is not None:
            self._reader.join(5)
        self._dir.cleanup()

    def __enter__(self) -> StatsdDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
