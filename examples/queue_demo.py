"""relayq in twenty lines: entries go through a queue to a local HTTP receiver.

    python examples/queue_demo.py

Starts a receiver on 127.0.0.1, enqueues 1000 access-log entries from the "request path"
(never blocking it), lets the queue batch and POST them, shuts down cleanly, and prints what
arrived and the queue's stats.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

import relayq

received: list[Any] = []


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        received.extend(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def send(conf: dict[str, str], entries: list[dict[str, Any]]) -> bool | tuple[bool, str]:
    """The batch handler: one POST per batch; only exactly True counts as success."""
    r = httpx.post(conf["url"], json=entries)
    return True if r.status_code < 300 else (False, f"status {r.status_code}")


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/logs"

    queue = relayq.QueueConfig(name="access-log", max_batch_size=100, max_coalescing_delay=0.2)
    for i in range(1000):
        relayq.enqueue(queue, send, {"url": url}, {"request": i, "status": 200})
    lost = relayq.shutdown(timeout=10)  # flush everything (also done at exit)

    s = relayq.stats()["access-log"]
    print(f"received {len(received)} entries in {s.batches_sent} batches; lost {lost}")
    print(f"stats: sent={s.entries_sent} retries={s.retries} dropped={dict(s.dropped)}")
    server.shutdown()


if __name__ == "__main__":
    main()
