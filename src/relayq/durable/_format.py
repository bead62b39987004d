"""The on-disk format shared by the spool and the dead-letter store.

A file is a 64-byte header followed by records appended one after another::

    header  = magic (8 bytes) + slot 0 (28 bytes) + slot 1 (28 bytes)
    slot    = generation u64, a u64, b u64, crc32 u32       (little-endian)
    record  = b"\\xf7\\x9e", kind u8, flags u8, length u32, seq u64, payload, crc32 u32

Why this shape: every record carries its own checksum over its header and payload, so a torn
write (a crash or kill -9 in the middle of ``write``) or damaged bytes are detected per record and
never replayed, and everything around the damage can still be read: the scanner looks for the
next record magic and resumes there. The header's two slots are rewritten alternately, so an
interrupted header update leaves the other slot valid. The record magic is two bytes that are
never valid UTF-8 next to each other, so text payloads rarely produce false resync candidates
(and a false one still has to pass the checksum).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

SPOOL_MAGIC = b"RQSPOOL1"
DEADLETTER_MAGIC = b"RQDEADL1"
HEADER_SIZE = 64
_MAGIC_SIZE = 8
_SLOT = struct.Struct("<QQQI")
SLOT_OFFSETS = (_MAGIC_SIZE, _MAGIC_SIZE + _SLOT.size)

RECORD_MAGIC = b"\xf7\x9e"
RECORD_HEAD = struct.Struct("<2sBBIQ")
RECORD_CRC = struct.Struct("<I")
RECORD_OVERHEAD = RECORD_HEAD.size + RECORD_CRC.size
MAX_PAYLOAD = 64 * 1024 * 1024

KIND_APPEND = 1  # spool: one entry; seq = its sequence number
KIND_ACK = 2  # spool: payload = (start u64, count u64) ranges of delivered sequence numbers
KIND_DEAD = 3  # dead letters: one undelivered batch
KIND_REMOVE = 4  # dead letters: payload = ids of removed batches

SPOOL_KINDS = frozenset({KIND_APPEND, KIND_ACK})
DEADLETTER_KINDS = frozenset({KIND_DEAD, KIND_REMOVE})

_crc32 = zlib.crc32


class Readable(Protocol):
    """What the scanner needs from the file's bytes: ``bytes`` and ``mmap.mmap`` both fit."""

    def find(self, sub: bytes, start: int = ..., end: int = ..., /) -> int: ...
    def __len__(self) -> int: ...


def encode_record(kind: int, seq: int, payload: bytes) -> bytes:
    """One framed record."""
    head = RECORD_HEAD.pack(RECORD_MAGIC, kind, 0, len(payload), seq)
    return b"".join((head, payload, RECORD_CRC.pack(_crc32(payload, _crc32(head)))))


def encode_appends(items: list[tuple[int, bytes]]) -> bytes:
    """Many APPEND records at once, for the spool writer's group commit."""
    pack = RECORD_HEAD.pack
    pack_crc = RECORD_CRC.pack
    crc32 = _crc32
    parts: list[bytes] = []
    add = parts.append
    for seq, value in items:
        record = pack(RECORD_MAGIC, KIND_APPEND, 0, len(value), seq) + value  # one crc call
        add(record)
        add(pack_crc(crc32(record)))
    return b"".join(parts)


def encode_ack(seqs: list[int]) -> bytes:
    """ACK records for sorted sequence numbers, compressed into ranges (acks are mostly FIFO)."""
    flat: list[int] = []
    start = prev = seqs[0]
    for seq in seqs[1:]:
        if seq != prev + 1:
            flat += (start, prev - start + 1)
            start = seq
        prev = seq
    flat += (start, prev - start + 1)
    per_record = MAX_PAYLOAD // 16
    out = []
    for i in range(0, len(flat), 2 * per_record):
        part = flat[i:i + 2 * per_record]
        out.append(encode_record(KIND_ACK, 0, struct.pack(f"<{len(part)}Q", *part)))
    return b"".join(out)


def decode_ack(payload: bytes) -> Iterator[int]:
    """The sequence numbers an ACK record's payload covers."""
    flat = struct.unpack(f"<{len(payload) // 8}Q", payload)
    for i in range(0, len(flat) - 1, 2):
        yield from range(flat[i], flat[i] + flat[i + 1])


# ------------------------------------------------------------------------------------ header

@dataclass(frozen=True, slots=True)
class Header:
    """The newest valid header slot. ``a`` and ``b`` mean what the store says (the spool:
    reserved sequence numbers and the floor below which every record is dead)."""

    generation: int
    a: int
    b: int
    slot: int


def encode_header(magic: bytes, a: int, b: int) -> bytes:
    """A fresh header: generation 1 in slot 0, slot 1 empty (invalid until first rewritten)."""
    return magic + encode_slot(1, a, b) + bytes(HEADER_SIZE - SLOT_OFFSETS[1])


def encode_slot(generation: int, a: int, b: int) -> bytes:
    body = _SLOT.pack(generation, a, b, 0)[:-4]
    return body + RECORD_CRC.pack(_crc32(body))


def decode_header(data: bytes) -> tuple[Header | None, str | None]:
    """The newest valid slot, or None and what is wrong with the header."""
    if len(data) < HEADER_SIZE:
        return None, f"the file ends inside its {HEADER_SIZE}-byte header ({len(data)} bytes)"
    best: Header | None = None
    for index, offset in enumerate(SLOT_OFFSETS):
        generation, a, b, crc = _SLOT.unpack_from(data, offset)
        if generation and _crc32(data[offset:offset + _SLOT.size - 4]) == crc and (
                best is None or generation > best.generation):
            best = Header(generation, a, b, index)
    if best is None:
        return None, "both header slots fail their checksum"
    return best, None


# ----------------------------------------------------------------------------------- scanning

@dataclass(frozen=True, slots=True)
class Damage:
    """A run of bytes that holds no valid record. ``at_tail``: nothing valid follows it, the
    signature of a write cut short by a crash rather than of damage to written data."""

    offset: int
    length: int
    reason: str
    at_tail: bool


@dataclass(slots=True)
class ScanResult:
    """What a scan found besides the records: where valid data ends, and the damage."""

    end: int = HEADER_SIZE
    records: int = 0
    damage: list[Damage] | None = None

    @property
    def damaged(self) -> bool:
        return bool(self.damage)

    @property
    def mid_file(self) -> list[Damage]:
        """Damage with valid records after it: written data was destroyed, not a torn tail."""
        return [d for d in self.damage or () if not d.at_tail]


def _check(data: Readable, view: memoryview, off: int, end: int,
           kinds: frozenset[int]) -> tuple[int, int, int] | str:
    """(kind, seq, length) of a valid record at ``off``, or why there is none."""
    if off + RECORD_OVERHEAD > end:
        return f"incomplete record ({end - off} bytes where a record needs at least 20)"
    magic, kind, _flags, length, seq = RECORD_HEAD.unpack_from(view, off)
    if magic != RECORD_MAGIC or kind not in kinds or length > MAX_PAYLOAD:
        return "bytes that are not a record header"
    stop = off + RECORD_HEAD.size + length
    if stop + 4 > end:
        return (f"incomplete record (the file ends {end - off} bytes into a "
                f"{length + RECORD_OVERHEAD}-byte record)")
    if _crc32(view[off:stop]) != RECORD_CRC.unpack_from(view, stop)[0]:
        return "a record whose checksum does not match its contents"
    return kind, seq, length


def iter_records(data: Readable, view: memoryview, start: int, end: int,
                 kinds: frozenset[int], result: ScanResult) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(kind, seq, payload_offset, payload_length)`` for each valid record.

    Invalid bytes are skipped by searching for the next record magic whose record checks out;
    each skipped run is added to ``result.damage``. ``result.end`` ends after the last valid
    record, so truncating there removes a torn tail.
    """
    unpack, unpack_crc, crc32 = RECORD_HEAD.unpack_from, RECORD_CRC.unpack_from, _crc32
    head_size, overhead = RECORD_HEAD.size, RECORD_OVERHEAD
    off = last_end = start
    records = 0
    try:
        while off < end:
            if off + overhead <= end:  # the common case, inlined: a whole, valid record
                magic, kind, _flags, length, seq = unpack(view, off)
                stop = off + head_size + length
                if (magic == RECORD_MAGIC and kind in kinds and length <= MAX_PAYLOAD
                        and stop + 4 <= end and crc32(view[off:stop]) == unpack_crc(view, stop)[0]):
                    yield kind, seq, off + head_size, length
                    off = last_end = stop + 4
                    records += 1
                    continue
            reason = _check(data, view, off, end, kinds)
            assert isinstance(reason, str)
            off = _resync(data, view, off, end, kinds, reason, result)
    finally:
        result.end = last_end
        result.records += records


def _resync(data: Readable, view: memoryview, off: int, end: int, kinds: frozenset[int],
            reason: str, result: ScanResult) -> int:
    probe = off
    while True:
        probe = data.find(RECORD_MAGIC, probe + 1, end)
        if probe < 0:
            _note(result, Damage(off, end - off, reason, at_tail=True))
            return end
        if not isinstance(_check(data, view, probe, end, kinds), str):
            _note(result, Damage(off, probe - off, reason, at_tail=False))
            return probe


def _note(result: ScanResult, damage: Damage) -> None:
    if result.damage is None:
        result.damage = []
    result.damage.append(damage)


def describe(damage: list[Damage]) -> str:
    """One line per damaged run, for log messages and errors."""
    return "; ".join(
        f"{d.length} bytes at offset {d.offset}: {d.reason}"
        + (" (a torn tail: a write cut short by a crash)" if d.at_tail else "")
        for d in damage)
