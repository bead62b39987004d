"""Damaged spool files: a clear message naming the file, every intact entry recovered, nothing
damaged replayed. Expected contents are computed from the record sizes (64-byte header, then
each entry as 20 bytes of framing plus its value), independently of the reader under test."""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path

import pytest

from relayq.durable import Spool, SpoolCorruptError, SpoolError

HEADER, FRAME = 64, 20


def _build(path: Path, n: int = 60, seed: int = 7) -> list[tuple[int, bytes, int]]:
    """A spool of ``n`` entries written one commit each; returns (seq, value, end offset)."""
    rnd = random.Random(seed)
    out = []
    end = HEADER
    with Spool(path, commit_interval=0) as spool:
        for i in range(n):
            value = b"%04d:" % i + rnd.randbytes(rnd.randrange(0, 300))
            seq = spool.append(value)
            assert seq is not None
            end += len(value) + FRAME
            out.append((seq, value, end))
    assert path.stat().st_size == end
    return out


def _open_logged(path: Path, caplog: pytest.LogCaptureFixture) -> tuple[Spool, str]:
    caplog.clear()
    spool = Spool(path)
    return spool, "\n".join(r.getMessage() for r in caplog.records
                            if r.levelno >= logging.WARNING)


def test_truncation_at_random_offsets(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="relayq.durable")
    original = tmp_path / "original.spool"
    entries = _build(original)
    size = original.stat().st_size
    rnd = random.Random(1)
    cuts = sorted({0, 3, 8, 40, HEADER, HEADER + 1, size - 1, *rnd.sample(range(size), 40)})
    for cut in cuts:
        path = tmp_path / f"cut{cut}.spool"
        shutil.copy(original, path)
        with path.open("r+b") as f:
            f.truncate(cut)
        spool, logged = _open_logged(path, caplog)
        with spool:
            expected = [(s, v) for s, v, end in entries if end <= cut]
            assert spool.pending() == expected, cut
            if cut > HEADER and all(end != cut for _, _, end in entries):
                assert str(path) in logged and "incomplete record" in logged, (cut, logged)
                assert spool.recovery is not None and spool.recovery.torn_tail_only
            if 0 < cut < HEADER:
                assert str(path) in logged and "header" in logged, (cut, logged)
            new = spool.append(b"new")
            assert new is not None and all(new > s for s, _ in expected)
        with Spool(path) as again:  # the repaired file is clean
            assert again.recovery is None
            assert again.pending() == [*expected, (new, b"new")]


def test_garbage_filled_tails(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="relayq.durable")
    original = tmp_path / "original.spool"
    entries = _build(original)
    size = original.stat().st_size
    rnd = random.Random(2)
    for start in sorted(rnd.sample(range(HEADER, size), 25)):
        for fill in (b"\x00", b"random"):
            path = tmp_path / f"garbage{start}.spool"
            shutil.copy(original, path)
            length = size - start + rnd.randrange(0, 5000)
            junk = bytes(length) if fill == b"\x00" else rnd.randbytes(length)
            with path.open("r+b") as f:
                f.seek(start)
                f.write(junk)
            spool, logged = _open_logged(path, caplog)
            with spool:
                expected = [(s, v) for s, v, end in entries if end <= start]
                assert spool.pending() == expected, (start, fill)
                assert str(path) in logged and f"at offset {expected_end(entries, start)}" in logged


def expected_end(entries: list[tuple[int, bytes, int]], start: int) -> int:
    """Where the damage begins: the end of the last record wholly before ``start``."""
    return max([HEADER] + [end for _, _, end in entries if end <= start])


def test_damage_in_the_middle_is_salvaged(tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="relayq.durable")
    path = tmp_path / "q.spool"
    entries = _build(path)
    data = bytearray(path.read_bytes())
    hit = {10, 11, 30}  # damage inside the values of these entries (and 11's header)
    for i in hit:
        end = entries[i][2]
        data[end - 5] ^= 0xFF
    data[entries[10][2] + 2] ^= 0x01  # entry 11's header (its length field)
    path.write_bytes(bytes(data))
    spool, logged = _open_logged(path, caplog)
    with spool:
        assert spool.pending() == [(s, v) for i, (s, v, _) in enumerate(entries) if i not in hit]
        assert spool.recovery is not None and not spool.recovery.torn_tail_only
        assert spool.recovery.entries == len(entries) - 3
        assert str(path) in logged and "salvaged 57 intact entries" in logged
        corrupt = path.with_name(path.name + ".corrupt")
        assert corrupt.read_bytes() == bytes(data) and f"kept as {corrupt}" in logged
    with Spool(path) as again:
        assert again.recovery is None and len(again.pending()) == len(entries) - 3


def test_raise_policy_names_the_file_and_leaves_it_alone(tmp_path: Path) -> None:
    path = tmp_path / "q.spool"
    entries = _build(path, n=20)
    data = bytearray(path.read_bytes())
    data[entries[5][2] - 3] ^= 0x55
    path.write_bytes(bytes(data))
    with pytest.raises(SpoolCorruptError) as info:
        Spool(path, on_corruption="raise")
    message = str(info.value)
    assert str(path) in message and "checksum" in message and "Spool.recover" in message
    assert "19 intact entries" in message
    assert path.read_bytes() == bytes(data)
    recovery = Spool.recover(path)
    assert recovery is not None and recovery.entries == 19
    assert Spool.recover(path) is None
    with Spool(path, on_corruption="raise") as spool:
        assert len(spool.pending()) == 19


def test_a_torn_tail_is_not_corruption_even_with_the_raise_policy(tmp_path: Path) -> None:
    path = tmp_path / "q.spool"
    entries = _build(path, n=5)
    with path.open("r+b") as f:
        f.truncate(entries[-1][2] - 7)
    with Spool(path, on_corruption="raise") as spool:
        assert [s for s, _ in spool.pending()] == [s for s, _, _ in entries[:-1]]


def test_lost_header_keeps_entries_and_never_reuses_numbers(tmp_path: Path) -> None:
    path = tmp_path / "q.spool"
    entries = _build(path, n=10)
    with Spool(path) as spool:  # numbers issued in this session are not in the file
        unwritten = [spool.append_many([b"x"] * 5)]
        spool.ack(s for s, _, _ in entries[:2])
    data = bytearray(path.read_bytes())
    data[8:HEADER] = bytes(HEADER - 8)
    path.write_bytes(bytes(data))
    with Spool(path) as spool:
        assert spool.recovery is not None and spool.recovery.header_problem
        pending = spool.pending()
        assert [v for _, v in pending] == [v for _, v, _ in entries[2:]] + [b"x"] * 5
        new = spool.append(b"new")
        assert new is not None and new > max(s for batch in unwritten for s in batch if s)


def test_a_foreign_file_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"these are my notes, not a spool\n" * 10)
    with pytest.raises(SpoolError, match="is not a relayq spool file"):
        Spool(path)
    assert path.read_bytes() == b"these are my notes, not a spool\n" * 10
