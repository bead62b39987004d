"""The process-wide default runtime behind ``relayq.enqueue`` and friends, and its flush at
interpreter exit, so a plain script loses nothing when its receiver is up."""

from __future__ import annotations

import atexit
import logging
import os
import threading

from relayq.queue._runtime import Runtime

log = logging.getLogger("relayq")

ATEXIT_TIMEOUT = float(os.environ.get("RELAYQ_ATEXIT_TIMEOUT", "5"))

_default: Runtime | None = None
_default_lock = threading.Lock()


def default_runtime() -> Runtime:
    """The process-wide runtime behind ``relayq.enqueue`` and friends."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Runtime()
    return _default


def _atexit_flush() -> None:
    rt = _default
    if rt is None or not rt.pending():
        return
    try:
        rt.shutdown(ATEXIT_TIMEOUT)
    except RuntimeError as exc:  # e.g. called from inside a still-running loop
        log.error("relayq: could not flush queues at exit: %s", exc)


atexit.register(_atexit_flush)
