"""One handler attempt: call it (on the loop, or in a worker thread), bound it in time, and read
what it returned by Kong's contract (exactly ``True`` is success) plus relayq's failure classes.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

from relayq.queue import _messages as m
from relayq.queue._outcome import Failure, PermanentError
from relayq.queue._workers import HandlerThreads

Handler = Callable[[Any, list[Any]], Any]


class Outcome(NamedTuple):
    """What one attempt came to: the error text (None if none was given) and its class."""

    error: str | None
    ok: bool = False
    permanent: bool = False
    retry_after: float | None = None


OK = Outcome(None, ok=True)


def is_async(handler: Handler) -> bool:
    """A coroutine function, or an object whose ``__call__`` is one."""
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - async callable objects
    )


async def attempt(handler: Handler, coroutine: bool, handler_conf: Any, batch: list[Any],
                  timeout: float | None, threads: HandlerThreads) -> Outcome:
    """Call ``handler(handler_conf, batch)`` once. Never raises (but cancellation): a plain
    function runs in a worker thread (with the caller's context variables), never on the loop;
    a coroutine runs in the caller's task (the queue's consumer), cancelled at ``timeout``:
    an attempt longer than ``timeout`` seconds fails."""
    try:
        if coroutine:  # in the consumer's own task: no task per attempt, no extra loop turns
            async with asyncio.timeout(timeout):
                result = await handler(handler_conf, batch)
        else:
            ctx = contextvars.copy_context()
            result = await asyncio.wait_for(
                threads.run(lambda: ctx.run(handler, handler_conf, batch)), timeout)
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(result, timeout)
    except TimeoutError:
        return Outcome(m.HANDLER_TIMEOUT % timeout)
    except asyncio.CancelledError:
        raise
    except PermanentError as exc:
        return Outcome(str(exc) or "permanent failure", permanent=True)
    except Exception as exc:
        return Outcome(str(exc) or type(exc).__name__)
    return interpret(result)


def interpret(result: Any) -> Outcome:
    """Kong: only exactly ``True`` succeeds; ``(False, "why")`` gives a reason. relayq: a
    ``Failure`` also says whether a retry can help and how long to wait."""
    if result is True:
        return OK
    if isinstance(result, Failure):
        return Outcome(result.reason, permanent=not result.retryable,
                       retry_after=result.retry_after)
    if isinstance(result, tuple) and len(result) >= 2 and result[1]:
        return Outcome(str(result[1]))
    return Outcome(None)
