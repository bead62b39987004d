"""Dead letters: durable adds, listing, removal, sharing between processes, damage, the CLI
functions, and the storage the queue engine opens."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from relayq.durable import (
    DeadLetters,
    DurableStorage,
    Spool,
    SpoolCorruptError,
    _deadletter,
    _fileio,
    dead_letter_path,
    dlq_list,
    dlq_replay,
)
from relayq.queue._config import DeadLetterSettings, SpoolSettings
from relayq.queue._storage import default_storage


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "dead.rqdl"


def test_add_list_remove_and_reopen(path: Path) -> None:
    with DeadLetters(path) as store:
        store.add("http-log", [b"a", b"bb"], "HTTP 500: boom", 5, "run-1")
        store.add("statsd", [b"c"], "connection refused", 1, None)
        store.add("http-log", [b"d"], "HTTP 400", 1, "run-2")
        letters = store.list()
        assert [(d.queue, d.entries, d.attempts, d.count) for d in letters] == [
            ("http-log", (b"a", b"bb"), 5, 2), ("statsd", (b"c",), 1, 1),
            ("http-log", (b"d",), 1, 1)]
        assert letters[0].error == "HTTP 500: boom" and letters[0].batch_id == "run-1"
        assert letters[0].bytes == 3 and letters[1].batch_id is None
        assert len({d.id for d in letters}) == 3
        assert [d.entries for d in store.list("http-log")] == [(b"a", b"bb"), (b"d",)]
        assert store.remove([letters[0].id, "no-such-id"]) == 1
        assert store.remove([letters[0].id]) == 0
    with DeadLetters(path) as store:
        assert [d.id for d in store.list()] == [letters[1].id, letters[2].id]


def test_directory_path_uses_the_standard_file(tmp_path: Path) -> None:
    with DeadLetters(tmp_path) as store:
        store.add("q", [b"x"], "e", 1, None)
    assert dead_letter_path(tmp_path) == tmp_path / "dead-letters.rqdl"
    assert (tmp_path / "dead-letters.rqdl").exists()


def test_bad_arguments(path: Path) -> None:
    with DeadLetters(path) as store:
        with pytest.raises(TypeError, match="entries must be bytes"):
            store.add("q", ["text"], "e", 1, None)  # type: ignore[list-item]
        with pytest.raises(TypeError, match="queue_name"):
            store.add("", [b"x"], "e", 1, None)
        with pytest.raises(TypeError, match="attempts"):
            store.add("q", [b"x"], "e", -1, None)
        with pytest.raises(TypeError, match="entries must be a list"):
            store.add("q", b"xyz", "e", 1, None)  # type: ignore[arg-type]
        assert store.list() == []


def test_large_batches_are_split_into_parts(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_deadletter, "MAX_PAYLOAD", 200 * 1024)
    entries = [bytes([i]) * 50_000 for i in range(10)]
    with DeadLetters(path) as store:
        store.add("q", entries, "too many retries", 3, "b1")
        parts = store.list()
    assert len(parts) > 1 and all(p.batch_id == "b1" for p in parts)
    assert [e for p in parts for e in p.entries] == entries


def test_shared_between_processes(path: Path) -> None:
    with DeadLetters(path) as store:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                with DeadLetters(path) as child:
                    for i in range(100):
                        child.add("child", [b"c%d" % i], "e", 1, None)
                code = 0
            finally:
                os._exit(code)
        for i in range(100):
            store.add("parent", [b"p%d" % i], "e", 1, None)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        letters = store.list()
    assert [d.entries[0] for d in letters if d.queue == "child"] == [b"c%d" % i
                                                                     for i in range(100)]
    assert [d.entries[0] for d in letters if d.queue == "parent"] == [b"p%d" % i
                                                                      for i in range(100)]
    assert store.recovery is None


def test_an_object_used_on_both_sides_of_a_fork(path: Path) -> None:
    """The child reopens the file: a shared descriptor would share the flock, and the two
    processes would append over each other."""
    with DeadLetters(path) as store:
        store.add("before", [b"x"], "e", 1, None)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for i in range(200):
                    store.add("child", [b"c%d" % i], "e", 1, None)
                code = 0
            finally:
                os._exit(code)
        for i in range(200):
            store.add("parent", [b"p%d" % i], "e", 1, None)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    with DeadLetters(path) as store:
        assert store.recovery is None
        letters = store.list()
    assert len(letters) == 401
    assert [d.entries[0] for d in letters if d.queue == "child"] == [b"c%d" % i
                                                                     for i in range(200)]


def test_compaction_by_one_object_is_seen_by_another(path: Path) -> None:
    with DeadLetters(path) as a, DeadLetters(path, compact_threshold=0) as b:
        for i in range(50):
            a.add("q", [b"x" * 100, b"%d" % i], "e", 1, None)
        inode = path.stat().st_ino
        ids = [d.id for d in b.list()]
        assert b.remove(ids[:40]) == 40
        assert path.stat().st_ino != inode  # rewritten and renamed
        a.add("q", [b"late"], "e", 1, None)  # a reopens the new file
        assert [d.entries[-1] for d in b.list()] == [b"%d" % i for i in range(40, 50)] + [b"late"]
        assert not path.with_name(path.name + ".compact").exists()


def test_torn_tail_is_cut_and_damage_salvaged(path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="relayq.durable")
    with DeadLetters(path) as store:
        for i in range(5):
            store.add("q", [b"entry %d" % i], "e", 1, None)
    good = path.read_bytes()
    path.write_bytes(good + good[64:64 + 30])  # half a record: a writer killed mid-write
    with DeadLetters(path) as store:
        assert len(store.list()) == 5
        assert "incomplete record" in caplog.text and str(path) in caplog.text
        store.add("q", [b"after"], "e", 1, None)
        assert [d.entries[0] for d in store.list()][-1] == b"after"
    data = bytearray(path.read_bytes())
    data[64 + 40] ^= 0xFF  # inside the first batch
    path.write_bytes(bytes(data))
    with pytest.raises(SpoolCorruptError, match="checksum"):
        DeadLetters(path, on_corruption="raise")
    caplog.clear()
    with DeadLetters(path) as store:
        assert [d.entries[0] for d in store.list()] == [b"entry %d" % i for i in range(1, 5)] + [
            b"after"]
        assert "salvaged 5 intact batches" in caplog.text
        assert store.recovery is not None and store.recovery.corrupt_copy is not None


def test_full_disk_raises_and_leaves_the_file_intact(path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with DeadLetters(path) as store:
        store.add("q", [b"kept"], "e", 1, None)
        real = _fileio.pwrite_all

        def half_then_full(fd: int, data: bytes, offset: int) -> None:
            real(fd, data[:len(data) // 2], offset)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(_fileio, "pwrite_all", half_then_full)
        with pytest.raises(OSError, match="No space"):
            store.add("q", [b"lost"], "e", 1, None)
        monkeypatch.undo()
        assert [d.entries for d in store.list()] == [(b"kept",)]
        store.add("q", [b"later"], "e", 1, None)
    with DeadLetters(path) as store:
        assert store.recovery is None
        assert [d.entries for d in store.list()] == [(b"kept",), (b"later",)]


def test_dlq_list_table(tmp_path: Path) -> None:
    assert "does not exist" in dlq_list(tmp_path / "nowhere")
    with DeadLetters(tmp_path) as store:
        store.add("http-log", [b"a", b"bb"], "HTTP 503\nService Unavailable", 10, None)
        store.add("statsd", [b"c"], "x" * 200, 1, None)
    table = dlq_list(tmp_path)
    lines = table.splitlines()
    assert lines[0].split() == ["ID", "QUEUE", "TIME", "(UTC)", "ATTEMPTS", "ENTRIES", "BYTES",
                                "ERROR"]
    assert "HTTP 503 Service Unavailable" in lines[1] and "http-log" in lines[1]
    assert lines[1].split()[4:7] == ["10", "2", "3"]
    assert lines[2].endswith("x" * 57 + "...")
    assert lines[-1] == "2 dead letters, 3 entries"
    only = dlq_list(tmp_path, queue="statsd").splitlines()
    assert len(only) == 3 and only[-1] == "1 dead letter, 1 entry"
    assert "no dead letters for queue zipkin" in dlq_list(tmp_path, queue="zipkin")


def test_dlq_replay_removes_what_was_resent(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    with DeadLetters(tmp_path) as store:
        store.add("a", [b"1"], "e", 1, None)
        store.add("b", [b"2"], "e", 1, None)
        store.add("a", [b"3"], "e", 1, None)
        store.add("c", [b"4"], "e", 1, None)
    sent: list[tuple[str, list[bytes]]] = []

    def send(queue: str, entries: list[bytes]) -> bool:
        sent.append((queue, entries))
        if queue == "b":
            raise ConnectionError("still down")
        return queue == "a"  # "c" returns False

    assert dlq_replay(tmp_path, send, queue="a") == (2, 0)
    assert sent == [("a", [b"1"]), ("a", [b"3"])]
    assert dlq_replay(tmp_path, send) == (0, 2)
    assert "still down" in caplog.text
    assert dlq_replay(tmp_path, lambda queue, entries: queue == "c") == (1, 1)
    with DeadLetters(tmp_path) as store:
        assert [d.queue for d in store.list()] == ["b"]
    assert dlq_replay(tmp_path / "missing", send) == (0, 0)


def test_storage_opens_stores_from_queue_settings(tmp_path: Path) -> None:
    assert isinstance(default_storage(), DurableStorage)
    storage = DurableStorage()
    sync = storage.open_spool(SpoolSettings(path=str(tmp_path), max_bytes=1000, fsync=0),
                              "http-log:example")
    lazy = storage.open_spool(SpoolSettings(path=str(tmp_path), fsync=False), "statsd")
    try:
        assert isinstance(sync, Spool) and isinstance(lazy, Spool)
        assert sync.append(b"x" * 2000) is None and sync.dropped_full == 1
        seq = sync.append(b"durable now")
        assert seq is not None
        assert sync.stats().commits == 1  # written before append returned
        assert sync.path.parent == tmp_path and lazy.path != sync.path
    finally:
        sync.close()
        lazy.close()
    letters = storage.open_dead_letters(DeadLetterSettings(path=str(tmp_path)))
    with letters:
        letters.add("q", [b"x"], "e", 1, None)
    assert (tmp_path / "dead-letters.rqdl").exists()
