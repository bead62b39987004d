"""``DeadLetters``: batches that could not be delivered, kept with their last error.

The file uses the spool's record format (``_format``), one record per batch. Unlike a spool it
is shared: the running service adds to it while ``relayq dlq list`` / ``replay`` read and
remove from another process, so every operation takes an ``flock`` only for its own duration
(shared to read, exclusive to write) and reopens the file if another process replaced it by
compaction meanwhile. ``add`` is durable (fsynced) before it returns: these entries have no
other copy.
"""

from __future__ import annotations

import builtins
import contextlib
import itertools
import json
import os
import secrets
import struct
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from relayq.durable import _fileio
from relayq.durable._errors import SpoolCorruptError, SpoolError
from relayq.durable._format import (
    DEADLETTER_KINDS,
    DEADLETTER_MAGIC,
    HEADER_SIZE,
    KIND_DEAD,
    KIND_REMOVE,
    MAX_PAYLOAD,
    RECORD_CRC,
    RECORD_HEAD,
    ScanResult,
    decode_header,
    encode_header,
    encode_record,
    iter_records,
)
from relayq.durable._paths import dead_letter_path
from relayq.durable._salvage import Recovery, check_policy, keep_corrupt_copy, log, log_recovery

_U32 = struct.Struct("<I")
_COMPACT_MIN = 64 * 1024
_OPEN: weakref.WeakSet[DeadLetters] = weakref.WeakSet()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One undelivered batch (or, for a batch over 64 MiB, one part of it)."""

    id: str
    queue: str
    time: float  # when it was written, seconds since the epoch
    error: str  # the last error
    attempts: int
    count: int
    entries: tuple[bytes, ...] = field(repr=False)
    batch_id: str | None = None

    @property
    def bytes(self) -> int:
        return sum(len(e) for e in self.entries)


@dataclass(slots=True)
class _Contents:
    """A scan of the whole file: the live batches and where their records are."""

    letters: dict[str, DeadLetter | None]
    runs: dict[str, tuple[int, int]]
    result: ScanResult
    problem: str | None



class DeadLetters:
    """An append-only, crash-safe store of undelivered batches, shared between processes."""

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True,
                 on_corruption: str = "salvage", compact_threshold: int = _COMPACT_MIN) -> None:
        if not isinstance(fsync, bool):
            raise TypeError(f"fsync must be a bool, not {type(fsync).__name__}")
        check_policy(on_corruption)
        self.path = dead_letter_path(path)
        self.recovery: Recovery | None = None
        self._fsync = fsync
        self._on_corruption = on_corruption
        self._compact_threshold = compact_threshold
        self._mutex = threading.Lock()
        self._fd: int | None = None
        self._known_end = 0  # the current file is validated up to here
        with self._locked(exclusive=True):
            self._scan(decode=False, repair=True)
        _OPEN.add(self)

    # -------------------------------------------------------------------------------- API

    def add(self, queue_name: str, entries: Sequence[bytes], error: str, attempts: int,
            batch_id: str | None) -> None:
        """Record an undelivered batch; durable before returning. Raises ``OSError`` if the
        disk refuses (the caller counts those entries as lost)."""
        _check_add(queue_name, entries, error, attempts, batch_id)
        now = time.time()
        records = b"".join(encode_record(KIND_DEAD, 0, payload) for payload in
                           _payloads(queue_name, list(entries), error, attempts, batch_id, now))
        with self._locked(exclusive=True):
            self._append(self._validated_end(), records)

    def list(self, queue_name: str | None = None) -> builtins.list[DeadLetter]:
        """The batches kept, oldest first, optionally only those of one queue."""
        with self._locked(exclusive=False):
            contents = self._scan(decode=True, repair=False)
        return [letter for letter in contents.letters.values()
                if letter is not None and (queue_name is None or letter.queue == queue_name)]

    def remove(self, ids: Iterable[str]) -> int:
        """Forget batches (replayed, or given up on); returns how many of ``ids`` existed."""
        wanted = {i for i in ids if isinstance(i, str)}
        with self._locked(exclusive=True):
            contents = self._scan(decode=False, repair=True)
            present = sorted(i for i in wanted if i in contents.runs)
            if not present:
                return 0
            record = encode_record(KIND_REMOVE, 0, json.dumps(present).encode())
            self._append(contents.result.end, record)
            live = sorted(run for i, run in contents.runs.items() if i not in wanted)
            live_bytes = sum(stop - start for start, stop in live)
            dead = self._known_end - HEADER_SIZE - live_bytes
            if dead >= self._compact_threshold and dead >= live_bytes:
                self._compact(live)
        return len(present)

    def close(self) -> None:
        with self._mutex:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        _OPEN.discard(self)

    def _forked(self) -> None:
        """In a forked child: a descriptor shared with the parent shares its flock too, so the
        lock would no longer keep the two apart. Drop it; the next operation reopens."""
        self._mutex = threading.Lock()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DeadLetters:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --------------------------------------------------------------------------- internals

    @property
    def _cur(self) -> int:
        assert self._fd is not None
        return self._fd

    @contextlib.contextmanager
    def _locked(self, *, exclusive: bool) -> Iterator[None]:
        """Hold the file flocked; reopen it first if another process replaced it (compaction).
        Methods inside use ``self._cur``, which compaction may itself replace."""
        with self._mutex:
            while True:
                if self._fd is None:
                    try:
                        self._fd = _fileio.open_file(self.path)
                    except OSError as exc:
                        raise SpoolError(f"{self.path}: cannot open: "
                                         f"{_fileio.describe_os_error(exc)}") from exc
                    self._known_end = 0
                _fileio.lock(self._fd, self.path, exclusive=exclusive, wait=True)
                if _fileio.same_file(self._fd, self.path):
                    break
                os.close(self._fd)  # replaced meanwhile; closing also drops the lock
                self._fd = None
            try:
                if exclusive and _fileio.size_of(self._fd) == 0:
                    _fileio.remove_leftover(self.path)
                    _fileio.pwrite_all(self._fd, encode_header(DEADLETTER_MAGIC, 0, 0), 0)
                    if self._fsync:
                        _fileio.fsync(self._fd)
                        _fileio.fsync_dir(self.path)
                yield
            finally:
                if self._fd is not None:
                    _fileio.unlock(self._fd)

    def _append(self, end: int, data: bytes) -> None:
        fd = self._cur
        try:
            _fileio.pwrite_all(fd, data, end)
            if self._fsync:
                _fileio.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                _fileio.truncate(fd, end)
            raise
        self._known_end = end + len(data)

    def _validated_end(self) -> int:
        """Where to append: after the last valid record, checking only what other processes
        wrote since this one last looked (and cutting off a torn tail one of them left)."""
        fd = self._cur
        size = _fileio.size_of(fd)
        if self._known_end < HEADER_SIZE or self._known_end > size:
            return self._scan(decode=False, repair=True).result.end
        if self._known_end == size:
            return size
        result = ScanResult()
        with _fileio.mapped(fd, size) as (data, view):
            for _ in iter_records(data, view, self._known_end, size, DEADLETTER_KINDS, result):
                pass
        if result.mid_file:  # damage between valid records: look at (and salvage) everything
            return self._scan(decode=False, repair=True).result.end
        if result.damage:
            self._cut_tail(result)
        self._known_end = result.end
        return result.end

    def _scan(self, *, decode: bool, repair: bool) -> _Contents:
        """Read the whole file. With ``repair`` (exclusive lock held), cut a torn tail off and
        salvage damage; without, only skip it."""
        fd = self._cur
        size = _fileio.size_of(fd)
        letters: dict[str, DeadLetter | None] = {}
        runs: dict[str, tuple[int, int]] = {}
        result = ScanResult()
        problem: str | None = None
        with _fileio.mapped(fd, size) as (data, view):
            head = bytes(data[:HEADER_SIZE])
            if size:
                problem = decode_header(head)[1]
                if head[:8] != DEADLETTER_MAGIC:
                    problem = f"the file starts with {head[:8]!r} instead of {DEADLETTER_MAGIC!r}"
            for kind, _seq, off, length in iter_records(data, view, HEADER_SIZE, size,
                                                        DEADLETTER_KINDS, result):
                payload = data[off:off + length]
                if kind == KIND_DEAD:
                    letter_id, letter = _decode(payload, entries=decode)
                    letters[letter_id] = letter
                    runs[letter_id] = (off - RECORD_HEAD.size, off + length + RECORD_CRC.size)
                else:
                    for removed in json.loads(payload):
                        letters.pop(removed, None)
                        runs.pop(removed, None)
        if size <= HEADER_SIZE:
            result.end = size
        if problem and result.records == 0 and size >= 8 and head[:8] != DEADLETTER_MAGIC:
            raise SpoolError(f"{self.path} is not a relayq dead-letter file (it starts with "
                             f"{head[:8]!r}); not touching it")
        contents = _Contents(letters, runs, result, problem)
        if problem or result.damage:
            self._damaged(contents, repair)
        elif repair:
            self._known_end = result.end
        return contents

    def _damaged(self, contents: _Contents, repair: bool) -> None:
        result = contents.result
        recovery = Recovery(self.path, len(contents.runs), tuple(result.damage or ()),
                            contents.problem)
        if not repair:
            if not recovery.torn_tail_only:
                log.warning("%s; skipped while reading", recovery.describe())
            return
        if recovery.torn_tail_only:
            self._cut_tail(result)
            self.recovery = recovery
            return
        if self._on_corruption == "raise":
            raise SpoolCorruptError(
                f"damaged dead-letter file {recovery.describe()}; {len(contents.runs)} intact "
                f"batches can be salvaged by opening it with on_corruption='salvage'")
        copy = keep_corrupt_copy(self.path)
        self.recovery = Recovery(self.path, recovery.entries, recovery.damage,
                                 recovery.header_problem, copy)
        self._compact(sorted(contents.runs.values()))
        log_recovery(self.recovery, "batches")
        result.end = self._known_end

    def _cut_tail(self, result: ScanResult) -> None:
        recovery = Recovery(self.path, result.records, tuple(result.damage or ()), None)
        _fileio.truncate(self._cur, result.end)
        if self._fsync:
            _fileio.fsync(self._cur)
        self._known_end = result.end
        log_recovery(recovery, "records")

    def _compact(self, runs: builtins.list[tuple[int, int]]) -> None:
        """Copy the live records into a new file renamed over this one (exclusive lock held;
        the new file is created locked, and ``_locked`` unlocks it when the operation ends)."""
        old = self._cur
        chunks = itertools.chain((encode_header(DEADLETTER_MAGIC, 0, 0),),
                                 _fileio.read_ranges(old, runs))
        self._fd = _fileio.write_new(self.path, chunks, durable=self._fsync, exclusive=True)
        self._known_end = HEADER_SIZE + sum(stop - start for start, stop in runs)
        os.close(old)  # drops the old lock: waiters find the file replaced and reopen


def _check_add(queue_name: object, entries: object, error: object, attempts: object,
               batch_id: object) -> None:
    if not isinstance(queue_name, str) or not queue_name:
        raise TypeError("queue_name must be a non-empty string")
    if not isinstance(entries, Sequence) or isinstance(entries, str | bytes):
        raise TypeError(f"entries must be a list of bytes, not {type(entries).__name__}")
    for entry in entries:
        if not isinstance(entry, bytes):
            raise TypeError(f"entries must be bytes, not {type(entry).__name__}")
    if not isinstance(error, str):
        raise TypeError(f"error must be a string, not {type(error).__name__}")
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 0:
        raise TypeError(f"attempts must be an int >= 0, not {attempts!r}")
    if batch_id is not None and not isinstance(batch_id, str):
        raise TypeError(f"batch_id must be a string or None, not {type(batch_id).__name__}")


def _new_id(now: float) -> str:
    """Sortable by time, unique across processes: 11 hex digits of milliseconds + 6 random."""
    return f"{int(now * 1000):011x}{secrets.randbits(24):06x}"


def _payloads(queue: str, entries: list[bytes], error: str, attempts: int,
              batch_id: str | None, now: float) -> Iterator[bytes]:
    """One payload per part: a batch over the record limit is split (each part its own id)."""
    parts: list[list[bytes]] = [[]]
    size = 0
    budget = MAX_PAYLOAD - 64 * 1024  # room for the metadata
    for entry in entries:
        if len(entry) + 4 > budget:
            raise ValueError(f"a dead-letter entry of {len(entry)} bytes exceeds the "
                             f"{budget}-byte record limit")
        if size + len(entry) + 4 > budget:
            parts.append([])
            size = 0
        parts[-1].append(entry)
        size += len(entry) + 4
    for part in parts:
        meta = json.dumps({"id": _new_id(now), "queue": queue, "time": now, "error": error[:4096],
                           "attempts": attempts, "count": len(part), "batch_id": batch_id},
                          ensure_ascii=False, separators=(",", ":")).encode()
        yield b"".join([_U32.pack(len(meta)), meta,
                        *(_U32.pack(len(e)) + e for e in part)])


def _decode(payload: bytes, *, entries: bool) -> tuple[str, DeadLetter | None]:
    """The batch's id, and (with ``entries``) the whole batch."""
    (meta_len,) = _U32.unpack_from(payload, 0)
    meta = json.loads(payload[4:4 + meta_len])
    if not entries:
        return meta["id"], None
    values = []
    pos = 4 + meta_len
    for _ in range(meta["count"]):
        (length,) = _U32.unpack_from(payload, pos)
        values.append(payload[pos + 4:pos + 4 + length])
        pos += 4 + length
    letter = DeadLetter(meta["id"], meta["queue"], meta["time"], meta["error"], meta["attempts"],
                        meta["count"], tuple(values), meta.get("batch_id"))
    return letter.id, letter


def _after_fork_in_child() -> None:
    for store in list(_OPEN):
        store._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)
