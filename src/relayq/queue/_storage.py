"""The storage the runtime needs for ``queue.spool`` and ``queue.dead_letter``, as protocols.

The engine stays free of disk formats: ``relayq.durable`` implements these and registers
itself with ``set_storage``; a Runtime can also be given its own ``storage=`` (tests, or a
different store). Entries cross this boundary as bytes (see ``encode_entry``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Protocol

from relayq.queue._config import DeadLetterSettings, SpoolSettings


class EntryStore(Protocol):
    """A crash-safe store of one queue's waiting entries (``relayq.durable.Spool``)."""

    def append(self, value: bytes) -> int | None: ...
    def ack(self, seqs: Iterable[int]) -> None: ...
    def pending(self) -> list[tuple[int, bytes]]: ...
    def close(self, timeout: float | None = ...) -> None: ...


class DeadLetterStore(Protocol):
    """Where batches go that could not be delivered (``relayq.durable.DeadLetters``)."""

    def add(self, queue_name: str, entries: list[bytes], error: str, attempts: int,
            batch_id: str | None) -> None: ...


class Storage(Protocol):
    """Opens the stores a queue's settings ask for."""

    def open_spool(self, settings: SpoolSettings, queue_key: str) -> EntryStore: ...
    def open_dead_letters(self, settings: DeadLetterSettings) -> DeadLetterStore: ...


_default: Storage | None = None


def set_storage(storage: Storage | None) -> None:
    """Make ``storage`` the default for runtimes created without one."""
    global _default
    _default = storage


def default_storage() -> Storage:
    """The registered storage; importing ``relayq`` registers ``relayq.durable``'s."""
    if _default is None:
        import relayq.durable  # noqa: F401 - registers itself

    if _default is None:
        raise RuntimeError("no storage registered for queue.spool / queue.dead_letter")
    return _default


def encode_entry(value: Any) -> bytes:
    """An entry as bytes, tagged so ``decode_entry`` gives back the same type."""
    if value.__class__ is str:  # the hot path: strict UTF-8 skips the error-handler lookup
        try:
            return b"s" + value.encode()
        except UnicodeEncodeError:  # a lone surrogate
            return b"s" + value.encode("utf-8", "surrogatepass")
    if isinstance(value, str):
        return b"s" + value.encode("utf-8", "surrogatepass")
    if isinstance(value, bytes | bytearray | memoryview):
        return b"b" + bytes(value)
    return b"j" + json.dumps(value, separators=(",", ":"), default=str).encode()


def decode_entry(data: bytes) -> Any:
    """The inverse of ``encode_entry``."""
    tag, body = data[:1], data[1:]
    if tag == b"s":
        return body.decode("utf-8", "surrogatepass")
    if tag == b"b":
        return body
    if tag == b"j":
        return json.loads(body)
    raise ValueError(f"unknown entry encoding tag {tag!r}")
