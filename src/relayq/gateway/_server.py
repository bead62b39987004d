"""``relayq serve``: bind the listener, then run one worker in-process or supervise several.

Like nginx's master process, the supervisor binds the listening socket once, before any worker
exists, and hands it to each spawned worker; the kernel spreads connections over the workers
accepting on it, and a connection arriving while a worker starts waits in the backlog instead
of being refused. The supervisor forwards stop and reload signals, restarts a worker that dies,
and gathers the workers' queue statistics for the status listener.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from typing import Any

from relayq.gateway._declarative import DeclarativeError, load_config
from relayq.gateway._worker import STOP_SIGNALS, WorkerSpec, run_worker

log = logging.getLogger("relayq.gateway")

# Beyond shutdown_timeout, how long the supervisor waits for a worker before killing it.
KILL_GRACE = 5.0
RESPAWN_DELAY = 1.0


def run(config_path: str | None, listen: str = "127.0.0.1:8000", workers: int = 1,
        shutdown_timeout: float = 10.0, status_listen: str | None = None) -> int:
    """Serve the gateway until SIGTERM/SIGINT/SIGQUIT; SIGHUP reloads the config.

    ``config_path`` None serves the built-in example (demo upstream and receivers included).
    Returns the exit code: 0 after a clean stop, 1 if the config or listener failed or queued
    entries could not be delivered within ``shutdown_timeout``.
    """
    _setup_logging()
    if workers < 1:
        log.error("workers must be at least 1, got %d", workers)
        return 1
    demo: Any = None
    if config_path is None:
        from relayq.gateway._demo import Demo

        demo = Demo()
        config_path = demo.config_path
    try:
        try:
            config = load_config(config_path)
        except DeclarativeError as exc:
            for line in exc.errors:
                log.error("%s: %s", config_path, line)
            return 1
        try:
            sock = bind(listen)
            status = _status_address(status_listen)
        except (OSError, ValueError) as exc:
            log.error("cannot listen: %s", exc)
            return 1
        host, port = sock.getsockname()[:2]
        url = f"http://{_url_host(host)}:{port}"
        log.info("relayq gateway on %s: %s (%d services, %d routes, %d plugins), %d worker%s",
                 url, config_path, len(config.services), len(config.routes),
                 len(config.plugins), workers, "" if workers == 1 else "s")
        if demo is not None:
            demo.start_traffic(url)
        if workers == 1:
            spec = WorkerSpec(config_path, shutdown_timeout, status_listen=status)
            return run_worker(sock, spec, config)
        return Supervisor(sock, config_path, workers, shutdown_timeout, status).run()
    finally:
        if demo is not None:
            demo.stop()


def bind(listen: str) -> socket.socket:
    """A listening TCP socket for ``host:port`` (``[v6]:port`` too), shared by all workers."""
    from relayq.status import parse_address

    host, port = parse_address(listen)
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family = infos[0][0]
    sock = socket.create_server((host, port), family=family, backlog=2048)
    # Accepted connections inherit TCP_NODELAY from the listener. Without it, the standard
    # asyncio loop leaves Nagle's algorithm on for them (it sets TCP_NODELAY only on sockets
    # whose ``proto`` says TCP, and this one says 0), so a response written as head then body
    # waits for the client's delayed ACK: 40 ms per keep-alive request. uvloop sets it anyway.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.set_inheritable(True)
    return sock


def _status_address(status_listen: str | None) -> tuple[str, int] | None:
    if not status_listen:
        return None
    from relayq.status import check_loopback, parse_address

    host, port = parse_address(status_listen)
    check_loopback(host)
    return host, port


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _setup_logging() -> None:
    """Timestamped lines with the process id (several workers log to one terminal)."""
    # httpx logs every request at INFO: once per proxied request, which is noise (and cost).
    logging.getLogger("httpx").setLevel(logging.WARNING)
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )


def _worker_entry(sock: socket.socket, spec: WorkerSpec) -> None:
    """Body of a spawned worker process."""
    _setup_logging()
    code = run_worker(sock, spec)
    sock.close()
    sys.exit(code)


class Supervisor:
    """Runs ``workers`` worker processes on one listening socket."""

    def __init__(self, sock: socket.socket, config_path: str, workers: int,
                 shutdown_timeout: float, status: tuple[str, int] | None) -> None:
        self.sock = sock
        self.config_path = config_path
        self.count = workers
        self.shutdown_timeout = shutdown_timeout
        self.status = status
        self.mp = multiprocessing.get_context("spawn")
        self.procs: list[Any] = []
        self.pending: list[int] = []
        self.status_dir: str | None = None

    def _spawn(self, index: int) -> Any:
        spec = WorkerSpec(self.config_path, self.shutdown_timeout,
                          status_directory=self.status_dir, index=index)
        proc = self.mp.Process(target=_worker_entry, args=(self.sock, spec),
                               name="relayq-worker", daemon=False)
        proc.start()
        log.info("worker %d started", proc.pid)
        return proc

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.pending.append(signum)

    def run(self) -> int:
        listener = None
        if self.status is not None:
            from relayq.status import StatusListener, directory_workers

            self.status_dir = tempfile.mkdtemp(prefix="relayq-status-")
            listener = StatusListener(*self.status,
                                      workers=directory_workers(self.status_dir))
            listener.start_in_thread()
        previous = {s: signal.signal(s, self._on_signal) for s in (*STOP_SIGNALS, signal.SIGHUP)}
        try:
            self.procs = [self._spawn(i) for i in range(self.count)]
            stop_signal = self._watch()
            return self._stop(stop_signal)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if listener is not None:
                listener.stop_thread()
            if self.status_dir is not None:
                shutil.rmtree(self.status_dir, ignore_errors=True)
            self.sock.close()

    def _watch(self) -> int:
        """Until a stop signal: forward reloads, replace workers that die."""
        while True:
            sentinels = [p.sentinel for p in self.procs]
            multiprocessing.connection.wait(sentinels, timeout=0.2)
            while self.pending:
                signum = self.pending.pop(0)
                if signum in STOP_SIGNALS:
                    return signum
                self._reload()
            for i, proc in enumerate(self.procs):
                if proc.exitcode is not None:
                    log.error("worker %d exited unexpectedly (code %s); starting a new one",
                              proc.pid, proc.exitcode)
                    time.sleep(RESPAWN_DELAY)
                    self.procs[i] = self._spawn(i)  # same index: it replays that spool

    def _reload(self) -> None:
        try:
            load_config(self.config_path)
        except DeclarativeError as exc:
            log.error("reload refused, workers keep their config:\n  %s",
                      "\n  ".join(exc.errors))
            return
        log.info("reloading %s in %d workers", self.config_path, len(self.procs))
        for proc in self.procs:
            if proc.exitcode is None and proc.pid is not None:
                os.kill(proc.pid, signal.SIGHUP)

    def _stop(self, signum: int) -> int:
        log.info("%s received: stopping %d workers (shutdown timeout %gs)",
                 signal.Signals(signum).name, len(self.procs), self.shutdown_timeout)
        for proc in self.procs:
            if proc.exitcode is None and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.shutdown_timeout + KILL_GRACE
        for proc in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        code = 0
        for proc in self.procs:
            if proc.exitcode is None:
                log.error("worker %d did not stop in time; killing it (its queued entries "
                          "are lost)", proc.pid)
                proc.kill()
                proc.join()
            if proc.exitcode != 0:
                code = 1
        log.info("all workers stopped%s", "" if code == 0 else
                 " (some queued entries were not delivered; see the workers' logs)")
        return code
