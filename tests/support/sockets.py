"""Raw listeners on 127.0.0.1 for checking the exact bytes a sender puts on the wire.

``UdpListener`` keeps every datagram (one ``bytes`` each, boundaries preserved); ``TcpListener``
accepts connections and keeps the byte stream of each. Both collect in a background thread and
offer ``wait_for(n)`` that polls with a deadline.
"""

from __future__ import annotations

import socket
import threading
import time


class UdpListener:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port: int = self.sock.getsockname()[1]
        self.datagrams: list[bytes] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.datagrams.append(data)

    def start(self) -> UdpListener:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def __enter__(self) -> UdpListener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[bytes]:
        """At least ``count`` datagrams, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if len(self.datagrams) >= count:
                    return list(self.datagrams)
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} datagrams, got {self.datagrams}")
            time.sleep(0.01)

    def quiet(self, duration: float = 0.2) -> list[bytes]:
        """Everything received once nothing new arrived for ``duration`` seconds."""
        seen = -1
        while True:
            with self._lock:
                now = len(self.datagrams)
            if now == seen:
                with self._lock:
                    return list(self.datagrams)
            seen = now
            time.sleep(duration)


class TcpListener:
    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.05)
        self.port: int = self.server.getsockname()[1]
        self.streams: list[bytearray] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            buffer = bytearray()
            with self._lock:
                self.streams.append(buffer)
            thread = threading.Thread(target=self._read, args=(conn, buffer), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _read(self, conn: socket.socket, buffer: bytearray) -> None:
        conn.settimeout(0.05)
        with conn:
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                with self._lock:
                    buffer.extend(data)

    @property
    def received(self) -> bytes:
        """All bytes of all connections, in connection order."""
        with self._lock:
            return b"".join(bytes(s) for s in self.streams)

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self.streams)

    def start(self) -> TcpListener:
        self._accept.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._accept.join(5)
        for thread in self._threads:
            thread.join(5)
        self.server.close()

    def __enter__(self) -> TcpListener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for_lines(self, count: int, timeout: float = 10.0) -> list[bytes]:
        """At least ``count`` complete (newline-terminated) lines."""
        deadline = time.monotonic() + timeout
        while True:
            data = self.received
            lines = data.split(b"\n")[:-1]
            if len(lines) >= count:
                return lines
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} lines, got {data!r}")
            time.sleep(0.01)
