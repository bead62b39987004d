"""relayq's options beyond Kong: retry classes, poison isolation, jitter, drop policies,
dead letters, batch ids. All off by default (the Kong tests pin the defaults)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

import relayq
from relayq import QueueConfig, Runtime
from relayq.queue import Failure, PermanentError, current_batch
from relayq.queue._config import DeadLetterSettings, SpoolSettings
from relayq.queue.testing import simulate


def test_permanent_failure_retried_like_kong_by_default() -> None:
    conf = QueueConfig(name="k", max_retry_time=0.05)
    sim = simulate(conf, [(0.0, "a")], lambda t, b, n: Failure("400", retryable=False))
    assert len(sim.attempts) > 1  # Kong retries everything
    assert sim.counters.dropped["retry_exhausted"] == 1


def test_permanent_single_entry_not_retried_with_retry_on_retryable() -> None:
    conf = QueueConfig(name="k", retry_on="retryable")
    sim = simulate(conf, [(0.0, "a")], lambda t, b, n: Failure("bad request", retryable=False))
    assert len(sim.attempts) == 1
    assert sim.counters.dropped["permanent"] == 1
    assert sim.lost[0].entries == ["a"] and sim.lost[0].reason == "permanent"


def test_poison_entry_isolated_by_halving() -> None:
    def rejects_poison(t: float, batch: list[Any], n: int) -> bool | Failure:
        return Failure("400 invalid entry", retryable=False) if "poison" in batch else True

    conf = QueueConfig(name="p", retry_on="retryable", max_batch_size=8,
                       max_coalescing_delay=1)
    entries = [f"e{i}" for i in range(7)]
    entries.insert(5, "poison")
    sim = simulate(conf, [(0.0, e) for e in entries], rejects_poison)
    delivered = [e for a in sim.attempts if a.ok for e in a.batch]
    assert sorted(delivered) == sorted(e for e in entries if e != "poison")
    assert [lost.entries for lost in sim.lost] == [["poison"]]
    assert sim.counters.dropped["permanent"] == 1
    assert len(sim.attempts) <= 1 + 2 * 3  # log2(8) levels of halving


def test_retry_after_honoured_with_retryable_classes() -> None:
    conf = QueueConfig(name="r", retry_on="retryable", max_retry_time=100)
    sim = simulate(conf, [(0.0, "a")],
                   lambda t, b, n: True if n == 2 else Failure("429", retry_after=7.5))
    assert [round(a.time, 3) for a in sim.attempts] == [0.0, 7.5]


def test_retry_after_capped_by_max_retry_delay() -> None:
    conf = QueueConfig(name="r", retry_on="retryable", max_retry_delay=2)
    sim = simulate(conf, [(0.0, "a")],
                   lambda t, b, n: True if n == 2 else Failure("429", retry_after=3600))
    assert [round(a.time, 3) for a in sim.attempts] == [0.0, 2.0]


def test_full_jitter_scales_each_delay() -> None:
    conf = QueueConfig(name="j", retry_jitter=True, initial_retry_delay=1, max_retry_time=5)
    sim = simulate(conf, [(0.0, "a")], lambda t, b, n: True if n == 4 else "x", rng=lambda: 0.5)
    assert [round(a.time, 3) for a in sim.attempts] == [0.0, 0.5, 1.5, 3.5]


def test_drop_newest_keeps_the_oldest() -> None:
    conf = QueueConfig(name="n", drop_policy="drop_newest", max_entries=3,
                       max_coalescing_delay=10, max_batch_size=100)
    sim = simulate(conf, [(0.0, v) for v in "abcde"])
    assert sim.rejected == ["d", "e"]
    assert [e for a in sim.attempts for e in a.batch] == ["a", "b", "c"]
    assert sim.counters.dropped["full"] == 2 and sim.counters.dropped["capacity"] == 0


def test_config_validates_beyond_kong_fields() -> None:
    with pytest.raises(ValueError, match="retry_on must be one of: all, retryable"):
        QueueConfig(name="x", retry_on="never")
    with pytest.raises(ValueError, match=r"spool\.path is required"):
        QueueConfig(name="x", spool={"max_bytes": 5})
    with pytest.raises(ValueError, match="block_timeout must be between 0 and 3600"):
        QueueConfig(name="x", block_timeout=-1)
    c = QueueConfig(name="x", spool={"path": "/tmp/s", "fsync": False},
                    dead_letter={"path": "/tmp/d"})
    assert c.spool == SpoolSettings("/tmp/s", None, False)
    assert c.dead_letter == DeadLetterSettings("/tmp/d")


def test_block_policy_makes_other_threads_wait_for_room() -> None:
    rt = Runtime()
    release = threading.Event()

    def slow(conf: Any, entries: list[Any]) -> bool:
        release.wait(5)
        return True

    conf = QueueConfig(name="b", drop_policy="block", block_timeout=5, max_entries=2,
                       max_coalescing_delay=0)
    rt.enqueue(conf, slow, None, 0)
    time.sleep(0.1)  # entry 0 is in flight, held by the handler
    rt.enqueue(conf, slow, None, 1)
    rt.enqueue(conf, slow, None, 2)  # the queue is full now
    t0 = time.monotonic()
    threading.Timer(0.3, release.set).start()
    assert rt.enqueue(conf, slow, None, 3)  # waits until the handler frees room
    assert time.monotonic() - t0 >= 0.25
    assert rt.flush(5)
    s = rt.stats()["b"]
    assert s.entries_sent == 4 and s.dropped_total == 0


def test_block_policy_times_out_and_counts() -> None:
    rt = Runtime()
    release = threading.Event()

    def stuck(conf: Any, entries: list[Any]) -> bool:
        release.wait(5)
        return True

    conf = QueueConfig(name="bt", drop_policy="block", block_timeout=0.1, max_entries=1)
    rt.enqueue(conf, stuck, None, 0)
    time.sleep(0.1)
    rt.enqueue(conf, stuck, None, 1)
    t0 = time.monotonic()
    assert not rt.enqueue(conf, stuck, None, 2)
    assert 0.08 <= time.monotonic() - t0 < 1
    assert rt.stats()["bt"].dropped["full"] == 1
    release.set()
    rt.flush(5)


class MemoryDeadLetters:
    def __init__(self) -> None:
        self.items: list[tuple[str, list[bytes], str, int]] = []

    def add(self, queue_name: str, entries: list[bytes], error: str, attempts: int,
            batch_id: str | None) -> None:
        self.items.append((queue_name, entries, error, attempts))


class MemoryStorage:
    def __init__(self) -> None:
        self.dlq = MemoryDeadLetters()

    def open_spool(self, settings: SpoolSettings, queue_key: str) -> Any:
        raise NotImplementedError("spool not used in this test")

    def open_dead_letters(self, settings: DeadLetterSettings) -> MemoryDeadLetters:
        return self.dlq


async def test_given_up_batches_go_to_dead_letters_not_lost() -> None:
    storage = MemoryStorage()
    rt = Runtime(storage=storage)

    async def failing(conf: Any, entries: list[Any]) -> Any:
        return False, "503 unavailable"

    conf = QueueConfig(name="dl", max_retry_time=0.02, dead_letter={"path": "/unused"})
    rt.enqueue(conf, failing, None, "entry-1")
    rt.enqueue(conf, failing, None, {"k": 1})
    assert await rt.drain(5)
    assert [(q, e, err) for q, e, err, _ in storage.dlq.items] == [
        ("dl", [b"sentry-1"], "503 unavailable"), ("dl", [b'j{"k":1}'], "503 unavailable")]
    s = rt.stats()["dl"]
    assert s.dead_lettered == 2 and s.dropped_total == 0


async def test_batch_id_is_stable_across_retries() -> None:
    rt = Runtime()
    seen: list[Any] = []

    async def flaky(conf: Any, entries: list[Any]) -> Any:
        seen.append(current_batch())
        return len(seen) >= 3 or (False, "again")

    rt.enqueue(QueueConfig(name="id"), flaky, None, "x")
    rt.enqueue(QueueConfig(name="id"), flaky, None, "y")
    assert await rt.drain(5)
    ids = [b.id for b in seen]
    assert ids[0] == ids[1] == ids[2] and ids[3] != ids[0]
    assert [b.attempt for b in seen] == [1, 2, 3, 1]
    assert current_batch() is None


async def test_sync_handler_sees_batch_info_and_permanent_error() -> None:
    rt = Runtime()
    seen: list[Any] = []

    def handler(conf: Any, entries: list[Any]) -> bool:
        seen.append(current_batch())
        raise PermanentError("schema rejected")

    conf = QueueConfig(name="perm", retry_on="retryable")
    rt.enqueue(conf, handler, None, "x")
    assert await rt.drain(5)
    assert seen[0] is not None and seen[0].queue == "perm" and len(seen) == 1
    assert rt.stats()["perm"].dropped["permanent"] == 1


def test_module_level_api_exposes_outcomes() -> None:
    assert relayq.Failure is Failure and relayq.current_batch is current_batch
    asyncio.run(asyncio.sleep(0))


class MemorySpool:
    """An in-memory stand-in for relayq.durable.Spool: what survives a 'restart' is `rows`."""

    def __init__(self, rows: dict[int, bytes], max_count: int | None = None) -> None:
        self.rows = rows
        self.max_count = max_count
        self.closed = False

    def append(self, value: bytes) -> int | None:
        if self.max_count is not None and len(self.rows) >= self.max_count:
            return None
        seq = max(self.rows, default=0) + 1
        self.rows[seq] = value
        return seq

    def ack(self, seqs: Any) -> None:
        for s in seqs:
            self.rows.pop(s, None)

    def pending(self) -> list[tuple[int, bytes]]:
        return sorted(self.rows.items())

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


class SpoolStorage(MemoryStorage):
    def __init__(self, rows: dict[int, bytes], max_count: int | None = None) -> None:
        super().__init__()
        self.rows = rows
        self.max_count = max_count
        self.opened: list[str] = []

    def open_spool(self, settings: SpoolSettings, queue_key: str) -> MemorySpool:
        self.opened.append(queue_key)
        return MemorySpool(self.rows, self.max_count)


def test_spool_keeps_undelivered_entries_for_the_next_start() -> None:
    rows: dict[int, bytes] = {}
    conf = QueueConfig(name="sp", spool={"path": "/unused"}, initial_retry_delay=10,
                       max_retry_time=600)

    async def down(conf: Any, entries: list[Any]) -> Any:
        return False, "receiver down"

    rt = Runtime(storage=SpoolStorage(rows))
    for v in ["a", "b", {"c": 3}]:
        assert rt.enqueue(conf, down, None, v)
    assert rt.shutdown(0.2) == 0  # nothing lost: kept in the spool
    assert rt.stats()["sp"].kept_in_spool == 3
    assert len(rows) == 3

    got: list[Any] = []

    async def up(conf: Any, entries: list[Any]) -> bool:
        got.extend(entries)
        return True

    rt2 = Runtime(storage=SpoolStorage(rows))  # the next start
    rt2.enqueue(conf, up, None, "d")
    assert rt2.flush(5)
    assert got == ["a", "b", {"c": 3}, "d"]  # replayed first, oldest first
    assert rows == {}  # all acknowledged


def test_spooled_drops_leave_the_spool_and_ids_follow_seqs() -> None:
    rows: dict[int, bytes] = {}
    ids: list[str] = []

    def handler(conf: Any, entries: list[Any]) -> bool:
        info = current_batch()
        assert info is not None
        ids.append(info.id)
        return True

    conf = QueueConfig(name="spd", spool={"path": "/unused"}, max_entries=2,
                       max_batch_size=10, max_coalescing_delay=0.05)
    rt = Runtime(storage=SpoolStorage(rows))
    for v in "abcd":
        rt.enqueue(conf, handler, None, v)
    assert len(rows) == 2  # a and b were dropped (capacity) and left the spool
    assert rt.flush(5)
    assert ids == ["spd-3-4"] and rows == {}
    assert rt.stats()["spd"].dropped["capacity"] == 2


def test_a_full_spool_refuses_new_entries_and_counts_them() -> None:
    rows: dict[int, bytes] = {}
    gate = threading.Event()

    def handler(conf: Any, entries: list[Any]) -> bool:
        gate.wait(5)
        return True

    newest = QueueConfig(name="sfn", spool={"path": "/u"}, drop_policy="drop_newest",
                         max_coalescing_delay=0.1, max_batch_size=100)
    rt = Runtime(storage=SpoolStorage(rows, max_count=2))
    assert rt.enqueue(newest, handler, None, "a")
    assert rt.enqueue(newest, handler, None, "b")
    assert not rt.enqueue(newest, handler, None, "c")
    assert rt.stats()["sfn"].dropped["full"] == 1
    gate.set()
    assert rt.flush(5)

    got: list[Any] = []

    def record(conf: Any, entries: list[Any]) -> bool:
        got.extend(entries)
        return True

    # drop_oldest too: the spool cannot take the new entry, and dropping an older one would
    # not make room before its next commit, so the new one is refused and counted.
    oldest = newest.replace(name="sfo", drop_policy="drop_oldest")
    rt = Runtime(storage=SpoolStorage({}, max_count=2))
    assert [rt.enqueue(oldest, record, None, v) for v in "abc"] == [True, True, False]
    assert rt.flush(5)
    s = rt.stats()["sfo"]
    assert got == ["a", "b"] and s.dropped["full"] == 1 and s.dropped["capacity"] == 0


def test_worker_processes_keep_their_own_spools(tmp_path: Any) -> None:
    # Two "workers" (runtimes, as in two processes) share a spool directory; each one's
    # restart replays exactly what it left behind.
    conf = QueueConfig(name="w", spool={"path": str(tmp_path)}, initial_retry_delay=10,
                       max_retry_time=600)

    def down(conf: Any, entries: list[Any]) -> Any:
        return False, "down"

    for scope in ("worker-0", "worker-1"):
        rt = Runtime()
        rt.spool_scope = scope
        rt.enqueue(conf, down, None, f"from {scope}")
        assert rt.shutdown(0.2) == 0
    for scope in ("worker-1", "worker-0"):
        got: list[Any] = []

        def up(conf: Any, entries: list[Any], got: list[Any] = got) -> bool:
            got.extend(entries)
            return True

        rt = Runtime()
        rt.spool_scope = scope
        assert rt.replay(conf, up, None) == 1
        assert rt.flush(5)
        rt.shutdown(1)
        assert got == [f"from {scope}"]
