"""One spool file on disk: loading (with salvage), group-commit writes, compaction.

Not thread-safe: ``Spool`` calls it only while holding its I/O lock. Everything here may raise
``OSError``; a failed write is rolled back (the file is cut back to its last committed size), so
what is on disk is always a prefix of whole records.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path

from relayq.durable import _fileio
from relayq.durable._errors import SpoolCorruptError, SpoolError
from relayq.durable._format import (
    HEADER_SIZE,
    KIND_ACK,
    KIND_APPEND,
    RECORD_CRC,
    RECORD_HEAD,
    RECORD_OVERHEAD,
    SLOT_OFFSETS,
    SPOOL_KINDS,
    SPOOL_MAGIC,
    ScanResult,
    decode_ack,
    decode_header,
    encode_ack,
    encode_appends,
    encode_header,
    encode_slot,
    iter_records,
)
from relayq.durable._salvage import Recovery, keep_corrupt_copy, log_recovery

# Sequence numbers are reserved in blocks recorded in the header before any is handed out, so a
# crash can never lead to one being issued twice (a batch id a receiver already saw). Each open
# starts a new block; the writer extends the reservation long before the hot path reaches it.
RESERVE = 1 << 32


class SpoolFile:
    """The file, its header state and the index of live entries (sequence number -> size on disk).

    ``live_bytes`` counts the records of live entries; everything else past the header is dead
    (delivered entries and ack records) and is reclaimed by ``compact``.
    """

    def __init__(self, path: Path, *, fsync: bool, on_corruption: str) -> None:
        self.path = path
        self.fsync = fsync
        self.index: dict[int, int] = {}
        self.live_bytes = 0
        self.size = HEADER_SIZE
        self.max_written = 0
        self.generation = 0
        self.slot = 0
        self.reserved = 0
        self.floor = 0  # records with a lower sequence number are dead (see ``reset``)
        self.first_seq = 1
        self.recovery: Recovery | None = None
        self.replay: dict[int, bytes] | None = None
        _fileio.remove_leftover(path)
        try:
            fd = _fileio.open_file(path)
        except OSError as exc:
            raise SpoolError(f"{path}: cannot open: {_fileio.describe_os_error(exc)}") from exc
        try:
            _fileio.lock(fd, path)
            self.fd = self._load(fd, on_corruption)
        except BaseException:
            os.close(fd)
            raise

    # ------------------------------------------------------------------------------ loading

    def _load(self, fd: int, on_corruption: str) -> int:
        size = _fileio.size_of(fd)
        if size == 0:
            self.reserved = 1 + RESERVE
            _fileio.pwrite_all(fd, encode_header(SPOOL_MAGIC, self.reserved, 0), 0)
            self._sync_new(fd)
            self.generation, self.slot, self.size = 1, 0, HEADER_SIZE
            return fd
        values, result, head, problem = self._scan(fd, size)
        if problem and result.records == 0 and not _spoolish(head):
            raise SpoolError(
                f"{self.path} is not a relayq spool file (it starts with {head[:8]!r}, expected "
                f"{SPOOL_MAGIC!r}); not touching it: move it away or delete it to start anew")
        header = decode_header(head)[0] if problem is None else None
        self.floor = header.b if header else 0
        max_seen = max(values, default=0)
        if header is not None:
            base = max(header.a, max_seen + 1, self.floor, 1)
        else:  # what was issued is unknown: jump past anything a lost header could have reserved
            base = max(max_seen + 1, time.time_ns() // 1000)
        self.first_seq, self.max_written = base, max_seen
        if problem or result.damage:
            self.recovery = Recovery(self.path, len(values), tuple(result.damage or ()), problem)
        if self.recovery is not None and not self.recovery.torn_tail_only:
            if on_corruption == "raise":
                raise SpoolCorruptError(
                    f"damaged spool file {self.recovery.describe()}; {len(values)} intact entries "
                    f"can be salvaged with Spool.recover(path) or on_corruption='salvage'")
            fd = self._rewrite_salvaged(fd, values, base + RESERVE)
        else:
            if self.recovery is not None:
                _fileio.truncate(fd, result.end)
                log_recovery(self.recovery, "entries")
            assert header is not None
            self.generation, self.slot, self.size = header.generation, header.slot, result.end
            self._write_header(fd, base + RESERVE, self.floor)
            if self.fsync:
                _fileio.fsync(fd)
        self._adopt(values)
        return fd

    def _scan(self, fd: int, size: int) -> tuple[dict[int, bytes], ScanResult, bytes, str | None]:
        """Live entries (appended, not acked, not below the floor) and what the scan found."""
        values: dict[int, bytes] = {}
        result = ScanResult()
        with _fileio.mapped(fd, size) as (data, view):
            head = bytes(data[:HEADER_SIZE])
            header, problem = decode_header(head)
            if head[:8] != SPOOL_MAGIC:
                problem = f"the file starts with {head[:8]!r} instead of {SPOOL_MAGIC!r}"
            floor = header.b if header is not None and problem is None else 0
            if size > HEADER_SIZE:
                for kind, seq, off, length in iter_records(data, view, HEADER_SIZE, size,
                                                           SPOOL_KINDS, result):
                    if kind == KIND_APPEND:
                        if seq >= floor:
                            values[seq] = data[off:off + length]
                    elif kind == KIND_ACK:
                        for acked in decode_ack(data[off:off + length]):
                            values.pop(acked, None)
            else:
                result.end = size
        return values, result, head, problem

    def _rewrite_salvaged(self, fd: int, values: dict[int, bytes], reserved: int) -> int:
        assert self.recovery is not None
        copy = keep_corrupt_copy(self.path)
        self.recovery = Recovery(self.path, self.recovery.entries, self.recovery.damage,
                                 self.recovery.header_problem, copy)
        body = encode_appends(sorted(values.items()))
        header = encode_header(SPOOL_MAGIC, reserved, self.floor)
        new_fd = _fileio.write_new(self.path, (header, body), durable=self.fsync, exclusive=True)
        os.close(fd)
        self.generation, self.slot, self.reserved = 1, 0, reserved
        self.size = HEADER_SIZE + len(body)
        log_recovery(self.recovery, "entries")
        return new_fd

    def _adopt(self, values: dict[int, bytes]) -> None:
        self.index = {seq: len(v) + RECORD_OVERHEAD for seq, v in values.items()}
        self.live_bytes = sum(self.index.values())
        self.replay = values

    def _sync_new(self, fd: int) -> None:
        if self.fsync:
            _fileio.fsync(fd)
            _fileio.fsync_dir(self.path)

    def _write_header(self, fd: int, reserved: int, floor: int) -> None:
        """Rewrite the older slot, so a torn write leaves the newer one valid."""
        slot = 1 - self.slot
        _fileio.pwrite_all(fd, encode_slot(self.generation + 1, reserved, floor),
                           SLOT_OFFSETS[slot])
        self.generation, self.slot, self.reserved, self.floor = (
            self.generation + 1, slot, reserved, floor)

    @contextlib.contextmanager
    def _undo_header_on_error(self) -> Iterator[None]:
        """If the commit fails, forget the header update: until an fsync went through, the slot
        just written may not be on disk, so the next attempt must rewrite that same slot rather
        than overwrite the other (the only one known to be durable)."""
        state = self.generation, self.slot, self.reserved, self.floor
        try:
            yield
        except OSError:
            self.generation, self.slot, self.reserved, self.floor = state
            raise

    # ------------------------------------------------------------------------------ writing

    def write(self, items: list[tuple[int, bytes]], acks: list[int], reserve: int | None) -> int:
        """Append ``items`` (ascending sequence numbers) and ack records for ``acks`` (live
        entries, sorted) in one write and one fsync; returns the on-disk bytes freed by the acks.

        On failure nothing changes: the file is cut back to where it was and the header slot
        that may have been half written is the older one, so the next attempt rewrites it.
        """
        appended = encode_appends(items) if items else b""
        blob = appended + encode_ack(acks) if acks else appended
        fd = self.fd
        # An entry numbered before an emptying (``reset``) but pushed after it must not fall
        # below the floor: lower the floor first (nothing below it is left in the file).
        floor = min(self.floor, items[0][0]) if items else self.floor
        try:
            with self._undo_header_on_error():
                if reserve is not None or floor != self.floor:
                    self._write_header(fd, reserve or self.reserved, floor)
                if blob:
                    _fileio.pwrite_all(fd, blob, self.size)
                if self.fsync:
                    _fileio.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                _fileio.truncate(fd, self.size)
            raise
        self.size += len(blob)
        index = self.index
        for seq, value in items:
            index[seq] = len(value) + RECORD_OVERHEAD
        if items:
            self.max_written = max(self.max_written, items[-1][0])
            self.replay = None
        freed = sum([index.pop(seq) for seq in acks])
        self.live_bytes += len(appended) - freed
        return freed

    # ---------------------------------------------------------------------------- compaction

    def dead_bytes(self) -> int:
        return self.size - HEADER_SIZE - self.live_bytes

    def compact(self) -> dict[int, int]:
        """Reclaim dead records; returns the entries (sequence number -> size) found unreadable
        meanwhile, which are lost."""
        if not self.index:
            self.reset()
            return {}
        return self._rewrite_live()

    def reset(self) -> int:
        """Drop every written entry (all delivered): raise the floor past every written record,
        then cut the file back to its header. Needs no free space, so it also works on a full
        disk, even when the ack records themselves could not be written. Returns the bytes freed.
        """
        with self._undo_header_on_error():
            self._write_header(self.fd, self.reserved, self.max_written + 1)
            if self.fsync:
                _fileio.fsync(self.fd)
        _fileio.truncate(self.fd, HEADER_SIZE)
        if self.fsync:
            _fileio.fsync(self.fd)
        self.size = HEADER_SIZE
        self.replay = None
        freed, self.live_bytes = self.live_bytes, 0
        self.index.clear()
        return freed

    def _rewrite_live(self) -> dict[int, int]:
        """Copy the live records (runs of them, byte for byte) into a new file renamed over this
        one: a crash leaves either file, both complete."""
        runs: list[tuple[int, int]] = []
        seen: set[int] = set()
        index = self.index
        result = ScanResult()
        with _fileio.mapped(self.fd, self.size) as (data, view):
            for kind, seq, off, length in iter_records(data, view, HEADER_SIZE, self.size,
                                                       SPOOL_KINDS, result):
                if kind != KIND_APPEND or seq not in index or seq in seen:
                    continue
                seen.add(seq)
                start, stop = off - RECORD_HEAD.size, off + length + RECORD_CRC.size
                if runs and runs[-1][1] == start:
                    runs[-1] = (runs[-1][0], stop)
                else:
                    runs.append((start, stop))
        lost = {seq: size for seq, size in index.items() if seq not in seen}
        copied = sum(stop - start for start, stop in runs)
        chunks = itertools.chain((encode_header(SPOOL_MAGIC, self.reserved, self.floor),),
                                 _fileio.read_ranges(self.fd, runs))
        new_fd = _fileio.write_new(self.path, chunks, durable=self.fsync, exclusive=True)
        os.close(self.fd)
        self.fd = new_fd
        self.generation, self.slot, self.size = 1, 0, HEADER_SIZE + copied
        for seq, size in lost.items():
            del index[seq]
            self.live_bytes -= size
        self.replay = None
        return lost

    # ------------------------------------------------------------------------------ reading

    def read_live(self) -> tuple[list[tuple[int, bytes]], ScanResult]:
        """Every live entry, oldest first, read back from the file."""
        if self.replay is not None:
            replay, self.replay = self.replay, None
            return sorted((s, v) for s, v in replay.items() if s in self.index), ScanResult()
        out: list[tuple[int, bytes]] = []
        index = self.index
        result = ScanResult()
        with _fileio.mapped(self.fd, self.size) as (data, view):
            for kind, seq, off, length in iter_records(data, view, HEADER_SIZE, self.size,
                                                       SPOOL_KINDS, result):
                if kind == KIND_APPEND and seq in index:
                    out.append((seq, data[off:off + length]))
        out.sort()
        return out, result

    def close(self) -> None:
        os.close(self.fd)


def _spoolish(head: bytes) -> bool:
    """Whether the first bytes could be a (possibly truncated) spool header."""
    return head[:8] == SPOOL_MAGIC or (len(head) < 8 and SPOOL_MAGIC.startswith(head))
