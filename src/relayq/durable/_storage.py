"""The bridge to the queue engine: opens a spool or dead-letter store from a queue's settings."""

from __future__ import annotations

from relayq.durable._deadletter import DeadLetters
from relayq.durable._paths import dead_letter_path
from relayq.durable._spool import Spool
from relayq.queue._config import DeadLetterSettings, SpoolSettings
from relayq.queue._storage import set_storage


class DurableStorage:
    """``relayq.queue.Storage`` backed by ``Spool`` and ``DeadLetters``.

    ``queue.spool.fsync`` is the commit interval in seconds (0: durable before ``enqueue``
    returns) or False (commit every 0.05 s without fsync: survives a crash of the process,
    not of the machine).
    """

    def open_spool(self, settings: SpoolSettings, queue_key: str) -> Spool:
        if settings.fsync is False:
            return Spool.for_queue(settings.path, queue_key, max_bytes=settings.max_bytes,
                                   commit_interval=0.05, fsync=False)
        return Spool.for_queue(settings.path, queue_key, max_bytes=settings.max_bytes,
                               commit_interval=float(settings.fsync), fsync=True)

    def open_dead_letters(self, settings: DeadLetterSettings) -> DeadLetters:
        return DeadLetters(dead_letter_path(settings.path))


def register() -> None:
    """Make this the storage of runtimes created without their own."""
    set_storage(DurableStorage())
