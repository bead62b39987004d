"""Spool behaviour: round trips, ordering, restart replay, acks, group commit, limits."""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from pathlib import Path

import pytest

from relayq.durable import Spool, SpoolError, SpoolLockedError, _fileio, _spool, spool_path
from relayq.durable._format import HEADER_SIZE, RECORD_OVERHEAD
from tests.durable._helpers import eventually, raw_appends


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "q.spool"


@pytest.fixture(params=["gil", "locked"])
def appends(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the lock-free append (the GIL build) and the locked one (free-threaded
    builds), whichever this interpreter is."""
    if request.param == "locked":
        monkeypatch.setattr(_spool, "_GIL", False)
    return str(request.param)


@pytest.fixture
def fast_switching() -> object:
    """Make the interpreter switch threads as often as it can, to provoke interleavings."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield None
    sys.setswitchinterval(interval)


def test_round_trip_in_order(path: Path) -> None:
    values = [f"entry-{i}".encode() * (i % 7 + 1) for i in range(500)]
    with Spool(path) as spool:
        seqs = [spool.append(v) for v in values]
        assert all(isinstance(s, int) for s in seqs)
        assert seqs == sorted(s for s in seqs if s is not None) and len(set(seqs)) == len(seqs)
        assert spool.count == 500
        assert spool.bytes == sum(len(v) + RECORD_OVERHEAD for v in values)
        assert spool.pending() == list(zip(seqs, values, strict=True))  # before any commit too
        assert spool.wait_durable(5)
        assert spool.pending() == list(zip(seqs, values, strict=True))
    with Spool(path) as spool:
        assert spool.pending() == list(zip(seqs, values, strict=True))
        assert spool.count == 500
        assert spool.bytes == sum(len(v) + RECORD_OVERHEAD for v in values)


def test_empty_and_binary_values(path: Path) -> None:
    values = [b"", bytes(range(256)), b"\xf7\x9e" * 50, b"\x00" * 1000]
    with Spool(path) as spool:
        seqs = spool.append_many(values)
    with Spool(path) as spool:
        assert spool.pending() == list(zip(seqs, values, strict=True))


def test_restart_replays_only_unacked_and_numbers_keep_growing(path: Path) -> None:
    with Spool(path) as spool:
        seqs = [spool.append(b"v%d" % i) for i in range(100)]
        assert None not in seqs
        spool.ack(s for s in seqs if s is not None and s % 3 == 0)
    expected = [(s, b"v%d" % i) for i, s in enumerate(seqs) if s is not None and s % 3]
    with Spool(path) as spool:
        assert spool.pending() == expected
        assert spool.count == len(expected)
        new = spool.append(b"after restart")
        assert new is not None and new > max(s for s in seqs if s is not None)
    with Spool(path) as spool:
        assert spool.pending() == [*expected, (new, b"after restart")]


def test_ack_before_commit_is_never_written(path: Path) -> None:
    with Spool(path, commit_interval=10.0) as spool:
        seqs = [spool.append(b"x" * 100) for _ in range(10)]
        spool.ack(s for s in seqs[:8] if s is not None)
        assert spool.wait_durable(5)
        eventually(lambda: spool.count == 2, what="acks applied")
        assert spool.bytes == 2 * (100 + RECORD_OVERHEAD)
        assert sorted(raw_appends(path)) == seqs[8:]
        assert [s for s, _ in spool.pending()] == seqs[8:]


def test_ack_ignores_unknown_and_repeated_numbers(path: Path) -> None:
    with Spool(path) as spool:
        seq = spool.append(b"a")
        assert seq is not None
        assert spool.wait_durable(5)
        spool.ack([seq, seq, 123456789])
        eventually(lambda: spool.count == 0, what="ack applied")
        spool.ack([seq])
        assert spool.wait_durable(5)
        assert spool.count == 0 and spool.bytes == 0
        with pytest.raises(TypeError, match="int"):
            spool.ack(["1"])  # type: ignore[list-item]


def test_group_commit_one_write_per_interval(path: Path) -> None:
    interval = 0.05
    with Spool(path, commit_interval=interval) as spool:
        started = time.monotonic()
        for i in range(20000):
            spool.append(b"entry %d" % i)
        elapsed = time.monotonic() - started
        assert spool.wait_durable(5)
        commits = spool.commits
        # One commit per interval at most (plus the first and the one wait_durable forced).
        assert 1 <= commits <= elapsed / interval + 2, (commits, elapsed)
    with Spool(path) as spool:
        assert spool.count == 20000


def test_writer_commits_within_the_interval_without_being_asked(path: Path) -> None:
    with Spool(path, commit_interval=0.02) as spool:
        seq = spool.append(b"hello")
        eventually(lambda: spool.commits == 1, timeout=5, what="the writer's commit")
        assert seq in raw_appends(path)


def test_commit_interval_zero_is_durable_before_append_returns(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fsyncs: list[int] = []
    real_fsync = _fileio.fsync

    def counting_fsync(fd: int) -> None:
        real_fsync(fd)
        fsyncs.append(fd)

    monkeypatch.setattr(_fileio, "fsync", counting_fsync)
    with Spool(path, commit_interval=0) as spool:
        for i in range(20):
            before = len(fsyncs)
            seq = spool.append(b"sync %d" % i)
            assert seq is not None
            assert len(fsyncs) > before  # fsynced inside append
            assert raw_appends(path)[seq] == b"sync %d" % i
        seqs = spool.append_many([b"a", b"b", b"c"])
        assert set(raw_appends(path)) >= set(seqs)


def test_commit_interval_zero_shares_commits_between_threads(path: Path, appends: str) -> None:
    with Spool(path, commit_interval=0) as spool:
        results: list[int | None] = []

        def produce() -> None:
            for i in range(200):
                results.append(spool.append(b"t%d" % i))

        threads = [threading.Thread(target=produce) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert None not in results and len(set(results)) == 800
        assert spool.commits <= 800
        on_disk = raw_appends(path)
        assert all(seq in on_disk for seq in results)


def test_max_bytes_refuses_and_counts_then_accepts_after_acks(path: Path) -> None:
    size = 100 + RECORD_OVERHEAD
    with Spool(path, max_bytes=size * 5) as spool:
        seqs = [spool.append(b"x" * 100) for _ in range(7)]
        assert seqs[5:] == [None, None]
        assert spool.dropped_full == 2
        assert spool.stats().dropped_full == 2
        assert spool.bytes == size * 5
        spool.ack([s for s in seqs[:2] if s is not None])
        eventually(lambda: spool.bytes == size * 3, what="acks freeing room")
        assert spool.append(b"x" * 100) is not None
        assert spool.append(b"y" * 250) is None  # needs more than the 1 slot left
        assert spool.dropped_full == 3


def test_many_threads_keep_numbers_unique_and_per_thread_order(path: Path, appends: str,
                                                                fast_switching: object) -> None:
    per_thread: dict[int, list[int | None]] = {}
    with Spool(path) as spool:
        def produce(n: int) -> None:
            per_thread[n] = [spool.append(b"%d:%d" % (n, i)) for i in range(2000)]

        threads = [threading.Thread(target=produce, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    everything = [s for seqs in per_thread.values() for s in seqs]
    assert None not in everything and len(set(everything)) == 8000
    for seqs in per_thread.values():
        assert seqs == sorted(seqs)  # type: ignore[type-var]
    with Spool(path) as spool:
        pending = spool.pending()
    assert [s for s, _ in pending] == sorted(everything)  # type: ignore[type-var]
    by_seq = dict(pending)
    for n, seqs in per_thread.items():
        assert [by_seq[s] for s in seqs if s is not None] == [b"%d:%d" % (n, i)
                                                              for i in range(2000)]


def test_compaction_truncates_when_everything_is_delivered(path: Path) -> None:
    with Spool(path, compact_threshold=4096) as spool:
        seqs = [spool.append(b"z" * 200) for _ in range(100)]
        assert spool.wait_durable(5)
        assert path.stat().st_size > 100 * 200
        spool.ack(s for s in seqs if s is not None)
        eventually(lambda: path.stat().st_size == HEADER_SIZE, what="reset to the header")
        after = spool.append(b"later")
    with Spool(path) as spool:
        assert spool.pending() == [(after, b"later")]


def test_compaction_rewrites_live_entries(path: Path) -> None:
    with Spool(path, compact_threshold=4096) as spool:
        seqs = [spool.append(b"%05d" % i + b"z" * 200) for i in range(200)]
        assert spool.wait_durable(5)
        spool.ack(s for s in seqs[:150] if s is not None)
        eventually(lambda: spool.stats().compactions >= 1, what="a compaction")
        assert path.stat().st_size < 60 * (205 + RECORD_OVERHEAD) + HEADER_SIZE
        expected = [(s, b"%05d" % i + b"z" * 200) for i, s in enumerate(seqs) if i >= 150]
        assert spool.pending() == expected
        more = spool.append(b"more")
    with Spool(path) as spool:
        assert spool.pending() == [*expected, (more, b"more")]
    assert not path.with_name(path.name + ".compact").exists()


def test_one_owner_per_file(path: Path) -> None:
    with Spool(path), pytest.raises(SpoolLockedError, match="already open"):
        Spool(path)
    with Spool(path):
        pass


def test_queues_share_a_directory(tmp_path: Path) -> None:
    names = ["http-log:http://user:pw@example.com/log?x=1", "statsd", "../../etc/passwd", "ü n i"]
    spools = [Spool.for_queue(tmp_path, name) for name in names]
    try:
        for spool, name in zip(spools, names, strict=True):
            spool.append(name.encode())
    finally:
        for spool in spools:
            spool.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 4 and all(f.endswith(".spool") and "/" not in f for f in files)
    assert all(p.parent == tmp_path for p in tmp_path.iterdir())
    for name in names:
        assert spool_path(tmp_path, name).exists()
        with Spool.for_queue(tmp_path, name) as spool:
            assert [v for _, v in spool.pending()] == [name.encode()]
    assert spool_path(tmp_path, "a/b") != spool_path(tmp_path, "a_b")


def test_bad_arguments_are_clear(path: Path) -> None:
    with pytest.raises(ValueError, match="commit_interval must be between 0 and 60"):
        Spool(path, commit_interval=-1)
    with pytest.raises(TypeError, match="max_bytes must be an int"):
        Spool(path, max_bytes="10")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_bytes must be at least 1"):
        Spool(path, max_bytes=0)
    with pytest.raises(TypeError, match="fsync must be a bool"):
        Spool(path, fsync=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on_corruption must be one of"):
        Spool(path, on_corruption="ignore")
    with Spool(path) as spool:
        with pytest.raises(TypeError, match="spool entries must be bytes, not str"):
            spool.append("text")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="not bytearray"):
            spool.append_many([b"ok", bytearray(b"no")])  # type: ignore[list-item]
        assert spool.count == 0


def test_closed_spool_refuses_appends(path: Path) -> None:
    spool = Spool(path)
    spool.close()
    assert spool.append(b"late") is None
    assert spool.stats().refused == 1
    with pytest.raises(SpoolError, match="closed"):
        spool.pending()
    spool.close()  # idempotent


def test_no_fsync_mode_still_persists_across_reopen(path: Path) -> None:
    with Spool(path, fsync=False) as spool:
        seqs = spool.append_many([b"a", b"b"])
    with Spool(path) as spool:
        assert spool.pending() == list(zip(seqs, [b"a", b"b"], strict=True))


def test_forked_child_cannot_write_the_parents_spool(path: Path) -> None:
    with Spool(path) as spool:
        first = spool.append(b"parent")
        pid = os.fork()
        if pid == 0:  # child: the spool is orphaned, appends are refused
            code = 0 if spool.append(b"child") is None else 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        second = spool.append(b"parent again")
        assert spool.wait_durable(5)
    with Spool(path) as spool:
        assert spool.pending() == [(first, b"parent"), (second, b"parent again")]


def test_byte_limit_is_exact_under_contention(path: Path, appends: str,
                                              fast_switching: object) -> None:
    """Eight threads race for the last bytes below max_bytes: never more is accepted, and the
    counters match exactly what was accepted."""
    limit = 200_000
    accepted: list[list[tuple[int, int]]] = [[] for _ in range(8)]
    with Spool(path, max_bytes=limit, commit_interval=0.01) as spool:
        def produce(n: int) -> None:
            rnd = random.Random(n)
            for _ in range(3000):
                value = b"v" * rnd.randrange(0, 200)
                seq = spool.append(value)
                if seq is not None:
                    accepted[n].append((seq, len(value) + RECORD_OVERHEAD))

        threads = [threading.Thread(target=produce, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        everything = [a for per_thread in accepted for a in per_thread]
        total = sum(size for _, size in everything)
        assert total <= limit
        assert spool.bytes == total and spool.count == len(everything)
        assert len({seq for seq, _ in everything}) == len(everything)
        assert spool.dropped_full == 8 * 3000 - len(everything) > 0
        assert limit - total < 200 + RECORD_OVERHEAD  # filled up to the last entry that fit
        assert spool.wait_durable(5)
    with Spool(path) as spool:
        assert sorted(s for s, _ in spool.pending()) == sorted(s for s, _ in everything)
