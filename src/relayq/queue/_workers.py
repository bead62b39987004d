"""Daemon worker threads for plain (non-async) handlers.

``concurrent.futures.ThreadPoolExecutor`` joins its threads at interpreter exit, so one hung
handler would hold the process forever. These threads are daemons: a handler that never returns
costs its thread, never the shutdown deadline. Threads start on demand and exit when idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any

_IDLE_SECONDS = 30.0


class HandlerThreads:
    """Runs blocking calls on daemon threads and hands results back to an event loop."""

    def __init__(self, max_threads: int = 32, name: str = "relayq-handler") -> None:
        self.max_threads = max_threads
        self.name = name
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0

    def run(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        """Schedule ``fn`` on a worker thread; the returned future belongs to the running loop."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        with self._lock:
            spawn = self._idle == 0 and self._threads < self.max_threads
            if spawn:
                self._threads += 1
            else:
                self._idle -= 1 if self._idle else 0
        self._jobs.put((fn, fut))
        if spawn:
            threading.Thread(target=self._work, name=self.name, daemon=True).start()
        return fut

    def _work(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=_IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:
                        self._idle -= 1
                        self._threads -= 1
                        return
                continue
            if job is None:
                with self._lock:
                    self._threads -= 1
                return
            fn, fut = job
            try:
                result: Any = fn()
            except Exception as exc:  # handed to the waiting coroutine
                _settle(fut, None, exc)
            except BaseException as exc:  # SystemExit & co. must not kill the consumer
                _settle(fut, None, RuntimeError(f"handler raised {exc!r}"))
            else:
                _settle(fut, result, None)
            with self._lock:
                self._idle += 1

    def reset(self) -> None:
        """Forget threads inherited across fork (they do not exist in the child)."""
        self._jobs = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0


def _settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    def done() -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    loop = fut.get_loop()
    with contextlib.suppress(RuntimeError):  # loop closed: nobody is waiting any more
        loop.call_soon_threadsafe(done)
