"""A local-only HTTP listener exposing every queue's statistics: ``/status`` and ``/metrics``.

Kong's queues are invisible: a silent drop is only found in error logs. This listener turns
``Runtime.stats()`` into JSON (``/status``) and Prometheus text (``/metrics``), per worker
process. It binds a loopback address unless told otherwise, because queue names and errors
describe internal endpoints; credentials in them (http-log names its queues after the log
server's URL, possibly with ``user:pass@``) are redacted before anything leaves the process.

It runs on the caller's asyncio loop (``await listener.start()``, as the gateway's workers do)
or on a thread of its own (``listener.start_in_thread()``, for WSGI apps and scripts). With
several worker processes, each worker runs a ``WorkerPublisher`` on a Unix socket in a shared
directory and one listener gathers them all (``StatusListener(workers=directory_workers(d))``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import os
import re
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

__all__ = [
    "RuntimeCollector",
    "StatusListener",
    "WorkerPublisher",
    "check_loopback",
    "directory_workers",
    "metric_families",
    "parse_address",
    "queue_table",
    "redact",
    "render_metrics",
    "worker_status",
]

log = logging.getLogger("relayq.status")

WorkerStatus = dict[str, Any]
WorkersSource = Callable[[], Awaitable[list[WorkerStatus]]]

MAX_HEAD_BYTES = 16384
READ_TIMEOUT = 5.0

# scheme://userinfo@ : the userinfo ends at the last "@" before the path, query or fragment,
# so a password containing a raw "@" is still hidden completely.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s?#]*@")


def redact(text: str) -> str:
    """``text`` with the userinfo of every URL in it replaced by ``***``."""
    return _USERINFO.sub(r"\1***@", text)


def parse_address(value: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:PORT`` for IPv6, ``:PORT`` for the default host)."""
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"invalid address {value!r}: expected HOST:PORT, e.g. 127.0.0.1:9100")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"invalid address {value!r}: write IPv6 hosts in brackets, [::1]:9100")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"invalid address {value!r}: port must be between 0 and 65535")
    return host or default_host, port


def check_loopback(host: str, *, allow_remote: bool = False) -> None:
    """Raise ``ValueError`` unless ``host`` only resolves to loopback addresses.

    The listener reveals internal endpoints and error texts; exposing it beyond the machine
    must be a deliberate choice (``allow_remote``), not the result of a typo like ``0.0.0.0``.
    """
    if allow_remote:
        return
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except (socket.gaierror, UnicodeError) as exc:
        raise ValueError(f"status listener: cannot resolve {host!r}: {exc}") from None
    remote = sorted(a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
    if remote or not addresses:
        raise ValueError(
            f"status listener refuses the non-loopback address {host!r} "
            f"({', '.join(remote) or 'no address'}): it exposes queue internals; bind "
            "127.0.0.1 or ::1, or allow remote access explicitly"
        )


def worker_status(runtime: Any = None) -> WorkerStatus:
    """This process's queues as JSON-safe data: ``{"pid": ..., "queues": {name: {...}}}``.

    ``runtime`` is a ``relayq.Runtime``; ``None`` means the process-wide default.
    """
    if runtime is None:
        import relayq

        runtime = relayq.default_runtime()
    queues: dict[str, Any] = {}
    for label, stats in sorted(runtime.stats().items()):
        name = redact(str(label))
        unique, n = name, 2
        while unique in queues:  # two names differing only in their credentials
            unique, n = f"{name}#{n}", n + 1
        entry = _queue_status(stats)
        entry["name"] += unique[len(name) :]
        queues[unique] = entry
    return {"pid": os.getpid(), "queues": queues}


def _queue_status(s: Any) -> dict[str, Any]:
    last_error = getattr(s, "last_error", None)
    return {
        "name": redact(str(s.name)),
        "workspace": getattr(s, "workspace", None),
        "depth": int(s.depth),
        "bytes": int(s.bytes),
        "in_flight": int(s.in_flight),
        "enqueued": int(getattr(s, "enqueued", 0)),
        "sent": int(s.entries_sent),
        "batches_sent": int(s.batches_sent),
        "retries": int(s.retries),
        "failures": int(getattr(s, "failures", 0)),
        "dropped": {str(k): int(v) for k, v in dict(s.dropped).items()},
        "last_error": redact(str(last_error)) if last_error is not None else None,
        "handler_calls": int(getattr(s, "handler_calls", 0)),
        "handler_seconds": float(getattr(s, "handler_seconds", 0.0)),
        "handler_buckets": [
            ["+Inf" if math.isinf(bound) else bound, int(count)]
            for bound, count in getattr(s, "handler_buckets", ())
        ],
    }


def metric_families(workers: list[WorkerStatus]) -> Iterator[Metric]:
    """Prometheus metric families for the given worker snapshots, labelled by worker pid."""
    labels = ["worker", "workspace", "queue"]
    gauges = {
        "depth": GaugeMetricFamily(
            "relayq_queue_depth", "Entries waiting in the queue.", labels=labels
        ),
        "bytes": GaugeMetricFamily(
            "relayq_queue_bytes", "Bytes of string entries waiting.", labels=labels
        ),
        "in_flight": GaugeMetricFamily(
            "relayq_queue_in_flight", "Entries being handled or retried.", labels=labels
        ),
    }
    counters = {
        "enqueued": CounterMetricFamily(
            "relayq_queue_entries_enqueued", "Entries accepted.", labels=labels
        ),
        "sent": CounterMetricFamily(
            "relayq_queue_entries_sent", "Entries delivered by the handler.", labels=labels
        ),
        "batches_sent": CounterMetricFamily(
            "relayq_queue_batches_sent", "Batches delivered by the handler.", labels=labels
        ),
        "retries": CounterMetricFamily(
            "relayq_queue_retries", "Handler attempts that were retries.", labels=labels
        ),
        "failures": CounterMetricFamily(
            "relayq_queue_handler_failures", "Handler attempts that failed.", labels=labels
        ),
    }
    dropped = CounterMetricFamily(
        "relayq_queue_dropped", "Entries lost, by reason.", labels=[*labels, "reason"]
    )
    latency = HistogramMetricFamily(
        "relayq_queue_handler_seconds", "Duration of handler calls.", labels=labels
    )
    for worker in workers:
        pid = str(worker.get("pid", ""))
        for label, q in worker.get("queues", {}).items():
            # Label by the queue's own name: the key adds the workspace, which has its own label.
            values = [pid, str(q.get("workspace") or ""), redact(str(q.get("name") or label))]
            for key, family in gauges.items():
                family.add_metric(values, float(q.get(key, 0)))
            for key, counter in counters.items():
                counter.add_metric(values, float(q.get(key, 0)))
            for reason, count in sorted(q.get("dropped", {}).items()):
                dropped.add_metric([*values, reason], float(count))
            buckets = [
                (str(bound) if bound != "+Inf" else "+Inf", float(count))
                for bound, count in q.get("handler_buckets", [])
            ]
            if buckets:
                latency.add_metric(values, buckets, float(q.get("handler_seconds", 0.0)))
    yield from gauges.values()
    yield from counters.values()
    yield dropped
    yield latency


class RuntimeCollector(Collector):
    """A ``prometheus_client`` collector reading ``runtime.stats()`` at every scrape.

    Register it in your own registry to export relayq's metrics next to your app's.
    """

    def __init__(self, runtime: Any = None) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        yield from metric_families([worker_status(self.runtime)])


def render_metrics(workers: list[WorkerStatus]) -> bytes:
    """Prometheus text exposition of the worker snapshots."""

    class _Snapshot(Collector):
        def collect(self) -> Iterator[Metric]:
            yield from metric_families(workers)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot())
    return generate_latest(registry)


class StatusListener:
    """Serves ``/status`` (JSON) and ``/metrics`` (Prometheus text) on a loopback address.

    ``workers`` is an async callable returning worker snapshots (see ``directory_workers``);
    by default the listener reports this process's ``runtime`` (``None``: the default one).
    ``allow_remote`` permits a non-loopback ``host``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        runtime: Any = None,
        workers: WorkersSource | None = None,
        allow_remote: bool = False,
    ) -> None:
        check_loopback(host, allow_remote=allow_remote)
        self.host = host
        self.port = port
        self.runtime = runtime
        self._workers = workers
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        """Base URL of the running listener, e.g. ``http://127.0.0.1:9100``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Start serving on the running loop; ``port`` becomes the bound port."""
        if self._server is not None:
            raise RuntimeError("status listener already started")
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, limit=MAX_HEAD_BYTES
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("status listener on %s (/status, /metrics)", self.url)

    async def stop(self) -> None:
        """Stop accepting and close the listening socket."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def __aenter__(self) -> StatusListener:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start_in_thread(self) -> None:
        """Serve from a daemon thread with its own loop, for programs without one."""
        started = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="relayq-status", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            self._thread.join()
            self._thread = self._loop = None
            raise failure[0]

    def stop_thread(self, timeout: float = 5.0) -> None:
        """Stop a listener started with ``start_in_thread``."""
        thread, loop = self._thread, self._loop
        self._thread = self._loop = None
        if thread is not None and loop is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)

    def __enter__(self) -> StatusListener:
        self.start_in_thread()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_thread()

    async def workers(self) -> list[WorkerStatus]:
        """The snapshots this listener reports."""
        if self._workers is not None:
            return await self._workers()
        return [worker_status(self.runtime)]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            status, ctype, body, method = await self._respond(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            status, ctype, body, method = 400, "text/plain", b"bad request\n", "GET"
        except Exception:
            log.exception("status listener failed to build a response")
            status, ctype, body, method = 500, "text/plain", b"internal error\n", "GET"
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
        head_out = (
            f"HTTP/1.1 {status} {reason.get(status, 'Internal Server Error')}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
        ).encode("ascii")
        with contextlib.suppress(ConnectionError):
            writer.write(head_out if method == "HEAD" else head_out + body)
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    async def _respond(self, head: bytes) -> tuple[int, str, bytes, str]:
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if len(parts) != 3:
            return 400, "text/plain", b"bad request\n", "GET"
        method, target = parts[0], parts[1].partition("?")[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET and HEAD\n", method
        if target == "/status":
            document = {"workers": await self.workers()}
            return 200, "application/json", json.dumps(document).encode(), method
        if target == "/metrics":
            return 200, CONTENT_TYPE_LATEST, render_metrics(await self.workers()), method
        if target == "/":
            index = {"endpoints": ["/status", "/metrics"]}
            return 200, "application/json", json.dumps(index).encode(), method
        return 404, "text/plain", b"not found: try /status or /metrics\n", method


class WorkerPublisher:
    """Serves this worker's snapshot on ``<directory>/worker-<pid>.sock`` for a gathering
    listener in another process (see ``directory_workers``)."""

    def __init__(self, directory: str | os.PathLike[str], runtime: Any = None) -> None:
        self.directory = Path(directory)
        self.runtime = runtime
        self.path = self.directory / f"worker-{os.getpid()}.sock"
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen on the worker's socket on the running loop (replacing a stale file)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / f"worker-{os.getpid()}.sock"
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._handle, path=str(self.path))

    async def stop(self) -> None:
        """Stop serving and remove the socket file."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(json.dumps(worker_status(self.runtime)).encode())
            await writer.drain()
        except Exception:
            log.exception("worker status publisher failed")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def directory_workers(directory: str | os.PathLike[str], timeout: float = 2.0) -> WorkersSource:
    """A ``workers`` source for ``StatusListener`` reading every ``WorkerPublisher`` in
    ``directory``; sockets left behind by dead workers are removed."""
    root = Path(directory)

    async def gather() -> list[WorkerStatus]:
        paths = sorted(root.glob("worker-*.sock"))
        results = await asyncio.gather(*(_read_worker(p, timeout) for p in paths))
        return [r for r in results if r is not None]

    return gather


async def _read_worker(path: Path, timeout: float) -> WorkerStatus | None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout)
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return None
    except (OSError, TimeoutError) as exc:
        log.warning("worker status %s unavailable: %s", path.name, exc)
        return None
    try:
        data = await asyncio.wait_for(reader.read(), timeout)
        status = json.loads(data)
        return status if isinstance(status, dict) else None
    except (OSError, TimeoutError, ValueError) as exc:
        log.warning("worker status %s unreadable: %s", path.name, exc)
        return None
    finally:
        writer.close()


def queue_table(workers: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Flatten worker snapshots into one row per (worker, queue), for the command line."""
    rows = []
    for worker in workers:
        for name, q in sorted(worker.get("queues", {}).items()):
            rows.append({"pid": worker.get("pid"), "queue": name, **q})
    return rows
