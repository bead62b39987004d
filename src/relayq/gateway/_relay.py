"""Relaying an upstream response body to the client, and noticing when the client leaves.

Split from the proxy because both halves are about the same subtle contract with the two
sides involved: an upstream connection goes back to the pool only once its response was
received to the end, and uvicorn reports a vanished client only through ``receive``, never
through ``send``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from types import TracebackType
from typing import Any

from relayq.gateway._http11 import UpstreamResponse

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Responses longer than this (or of unknown length) are relayed watching for the client to
# disconnect; shorter ones finish on their own quickly enough.
WATCH_ABOVE = 1 << 20


class Pump:
    """Relays the upstream body to the client, counting the bytes put on the wire."""

    def __init__(self, send: Send, remaining: int | None, chunked: bool) -> None:
        self.send = send
        self.remaining = remaining
        self.chunked = chunked
        self.sent = 0
        self.framing = 0
        self.finished = False  # the final body message was handed to the server

    @property
    def wire_bytes(self) -> int:
        return self.sent + self.framing

    async def run(self, response: UpstreamResponse) -> None:
        # Read to the very end even after the last byte was sent: a response left unfinished
        # makes the pool close the connection instead of keeping it alive.
        while chunk := await response.read():
            if self.finished:
                continue
            self.sent += len(chunk)
            if self.chunked:
                self.framing += len(f"{len(chunk):x}") + 4
            done = self.remaining is not None and self.sent >= self.remaining
            self.finished = done
            await self.send({"type": "http.response.body", "body": chunk, "more_body": not done})
        if not self.finished:
            self.finished = True
            if self.chunked:
                self.framing += 5
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})


class ClientWatch:
    """Stops relaying when the client disconnects, so a long or endless upstream stream
    (server-sent events, a large download) is not read on for nobody.

    uvicorn's ``send`` silently drops data once the client is gone; only ``receive`` reports
    ``http.disconnect``. A watcher task waits for it and cancels the relaying task; the
    cancellation is absorbed here. Used only for responses without a small known length.
    """

    def __init__(self, receive: Receive, finished: Callable[[], bool]) -> None:
        self.receive = receive
        self.finished = finished  # True once the response is complete
        self.gone = False

    async def __aenter__(self) -> ClientWatch:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._watcher = asyncio.create_task(self._watch())
        return self

    async def _watch(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                # uvicorn also reports a disconnect once the response is complete.
                if not self.finished():
                    self.gone = True
                    self._task.cancel()
                return

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        self._watcher.cancel()
        if exc_type is asyncio.CancelledError and self.gone:
            self._task.uncancel()
            return True
        return False
