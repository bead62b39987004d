"""Process lifecycle: flush at interpreter exit, and a clean start after fork()."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import relayq
from relayq import QueueConfig, Runtime

SCRIPT = """
import relayq, sys
out = open(sys.argv[1], "a")
def handler(conf, entries):
    out.write("\\n".join(entries) + "\\n"); out.flush()
    return True
conf = relayq.QueueConfig(name="exit", max_batch_size=100, max_coalescing_delay=1000)
for i in range(250):
    relayq.enqueue(conf, handler, None, f"line{i}")
# no shutdown call: the atexit hook must flush
"""


def test_plain_script_loses_nothing_at_exit(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    script = tmp_path / "s.py"
    script.write_text(textwrap.dedent(SCRIPT))
    proc = subprocess.run([sys.executable, str(script), str(out)], timeout=30,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = out.read_text().split()
    assert lines == [f"line{i}" for i in range(250)]


def test_fork_child_starts_clean_and_never_sends_parents_entries() -> None:
    rt = Runtime()
    sent: list[Any] = []
    gate = threading.Event()

    def handler(conf: Any, entries: list[Any]) -> bool:
        gate.wait(10)
        sent.extend(entries)
        return True

    conf = QueueConfig(name="f", max_batch_size=1)
    for i in range(5):
        rt.enqueue(conf, handler, None, f"parent{i}")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_fd)
            child_sent: list[Any] = []

            def child_handler(conf: Any, entries: list[Any]) -> bool:
                child_sent.extend(entries)
                return True

            before = {k: v.depth for k, v in rt.stats().items()}
            rt.enqueue(conf, child_handler, None, "child")
            ok = rt.flush(5)
            relayq_default_ok = relayq.stats() == {} or all(
                not s.exists for s in relayq.stats().values())
            os.write(write_fd, json.dumps({"before": before, "sent": child_sent, "ok": ok,
                                           "default": relayq_default_ok}).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as r:
        data = json.loads(r.read())
    os.waitpid(pid, 0)
    assert data == {"before": {}, "sent": ["child"], "ok": True, "default": True}
    gate.set()
    assert rt.flush(10)
    assert sent == [f"parent{i}" for i in range(5)]
