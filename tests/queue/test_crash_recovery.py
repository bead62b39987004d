"""Crash test: a producer process is killed with SIGKILL at random points while it writes
through a spooled queue and the receiver flaps between up and down; after every kill a new
process starts, replays what the spool kept, and goes on. In the end every entry whose
``enqueue`` returned True (fsync 0: durable before it returns) must have reached the receiver
at least once; duplicates are counted and reported, not failed.

``RELAYQ_CRASH_KILLS`` sets the number of kills (default 200).
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import relayq
from relayq import QueueConfig, Runtime

KILLS = int(os.environ.get("RELAYQ_CRASH_KILLS", "200"))


class FlappingReceiver:
    """Records the entries of every batch it accepts; refuses (503) about a third of the time."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.batches = 0
        self.up = threading.Event()  # when set: always accept (the final drain)
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if not outer.up.is_set() and random.random() < 0.35:
                    self.send_response(503)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                with outer.lock:
                    outer.received.extend(json.loads(body))
                    outer.batches += 1
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/in"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _conf(spool: Path) -> QueueConfig:
    return QueueConfig(name="crash", max_batch_size=20, max_coalescing_delay=0.05,
                       initial_retry_delay=0.01, max_retry_delay=0.05, max_retry_time=3600,
                       spool={"path": str(spool), "fsync": 0})


def _send(url: str, entries: list[Any]) -> Any:
    req = urllib.request.Request(url, data=json.dumps(entries).encode(), method="POST",
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return True if r.status < 300 else (False, f"status {r.status}")
    except Exception as exc:  # refused, 503...: a retryable failure
        return False, str(exc)


def _producer(spool: Path, url: str, acks_fd: int, run: int) -> None:
    """The child: replay what the spool kept, then produce until killed."""
    rt = Runtime()
    conf = _conf(spool)
    rt.replay(conf, _send, url)
    i = 0
    while True:
        entry = f"{run}-{i}"
        if rt.enqueue(conf, _send, url, entry):
            os.write(acks_fd, (entry + "\n").encode())  # acknowledged: durable now
        i += 1
        time.sleep(0.0005)


def _drain(spool: Path, url: str) -> None:
    rt = Runtime()
    conf = _conf(spool)
    rt.replay(conf, _send, url)
    ok = rt.flush(60)
    rt.shutdown(5)
    os._exit(0 if ok else 3)


def _fork(target: Any, *args: Any) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            target(*args)
        finally:
            os._exit(1)
    return pid


def test_no_acknowledged_entry_is_lost_across_kill_9(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    acks_path = tmp_path / "acks"
    rx = FlappingReceiver()
    rng = random.Random(1234)
    acks_fd = os.open(acks_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for run in range(KILLS):
            pid = _fork(_producer, spool, rx.url, acks_fd, run)
            time.sleep(rng.uniform(0.01, 0.15))
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        rx.up.set()
        pid = _fork(_drain, spool, rx.url)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the final run did not drain its spool"
    finally:
        os.close(acks_fd)
        rx.close()
    acked = acks_path.read_text().split()
    received = set(rx.received)
    lost = [a for a in acked if a not in received]
    duplicates = len(rx.received) - len(received)
    print(f"\ncrash test: {KILLS} kills, {len(acked)} acknowledged entries, "
          f"{len(received)} received ({duplicates} duplicates), {len(lost)} lost")
    assert len(acked) > KILLS  # the producer really produced between kills
    assert lost == []


def test_replay_api_without_spool_is_a_no_op() -> None:
    assert relayq.replay(QueueConfig(name="nospool"), _send, None) == 0
