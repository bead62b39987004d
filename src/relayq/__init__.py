"""relayq: Kong Gateway's plugin queues in Python.

Bounded in-process queues that take access logs, metrics and trace spans on a request's hot
path without blocking it, and send them to their collectors from one background consumer per
queue. The module-level functions act on one process-wide default ``Runtime``.
"""

from __future__ import annotations

from relayq.queue import (
    BatchInfo,
    Failure,
    PermanentError,
    QueueConfig,
    QueueStats,
    Runtime,
    current_batch,
    default_runtime,
    get_plugin_params,
    workspace,
)

__version__ = "0.1.0"

_rt = default_runtime()

# Bound methods of the default runtime: one call less on the hot path. After fork() the same
# runtime object is reset in place, so these stay valid.
enqueue = _rt.enqueue
can_enqueue = _rt.can_enqueue
is_full = _rt.is_full
exists = _rt.exists
stats = _rt.stats
shutdown = _rt.shutdown
flush = _rt.flush
count_drop = _rt.count_drop
replay = _rt.replay


async def aclose(timeout: float | None = None) -> int:
    """Flush every queue of the default runtime from async code; returns entries not delivered."""
    return await _rt.aclose(timeout)


async def drain(timeout: float | None = None) -> bool:
    """Wait until every queue of the default runtime is empty and idle (stops nothing)."""
    return await _rt.drain(timeout)




__all__ = [
    "BatchInfo",
    "Failure",
    "PermanentError",
    "QueueConfig",
    "QueueStats",
    "Runtime",
    "aclose",
    "can_enqueue",
    "count_drop",
    "current_batch",
    "default_runtime",
    "drain",
    "enqueue",
    "exists",
    "flush",
    "get_plugin_params",
    "is_full",
    "replay",
    "shutdown",
    "stats",
    "workspace",
]
