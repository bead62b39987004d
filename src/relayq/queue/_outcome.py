"""How a handler says more than Kong's true/false: failure classes and batch identity.

Kong's contract stays: exactly ``True`` is success, ``(False, "why")`` or anything else a
failure. A handler may also return a ``Failure`` (or raise ``PermanentError``) to say whether
retrying can help and how long the receiver asked to wait; queues honour that only with
``retry_on = "retryable"``. ``current_batch()`` tells a handler which batch it is sending, with
a stable id a receiver can use to drop duplicates of a retried batch.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed delivery: the reason, whether a retry can help, and the receiver's wait."""

    reason: str
    retryable: bool = True
    retry_after: float | None = None  # seconds, e.g. from an HTTP Retry-After header


class PermanentError(Exception):
    """Raise from a handler: the batch can never be delivered as it is (e.g. HTTP 400)."""


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """The batch a handler is delivering: stable id across retries and restarts."""

    id: str
    queue: str
    attempt: int  # 1 for the first attempt
    size: int


_current: contextvars.ContextVar[BatchInfo | None] = contextvars.ContextVar(
    "relayq_batch", default=None
)


def current_batch() -> BatchInfo | None:
    """The batch being delivered by the handler that calls this, or None outside a handler."""
    return _current.get()
