"""The runtime on a real event loop: consumers, handlers, threads, shutdown, stats."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import relayq
from relayq import QueueConfig, Runtime


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


class Recorder:
    """An async handler that records batches and fails on demand."""

    def __init__(self, fail_times: int = 0, reason: Any = (False, "down")) -> None:
        self.batches: list[list[Any]] = []
        self.confs: list[Any] = []
        self.fail_times = fail_times
        self.reason = reason
        self.calls = 0

    async def __call__(self, conf: Any, entries: list[Any]) -> Any:
        self.calls += 1
        self.confs.append(conf)
        if self.calls <= self.fail_times:
            if isinstance(self.reason, BaseException):
                raise self.reason
            return self.reason
        self.batches.append(list(entries))
        return True

    @property
    def entries(self) -> list[Any]:
        return [e for b in self.batches for e in b]


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


async def test_async_handler_receives_batches_in_order() -> None:
    rt = Runtime()
    h = Recorder()
    conf = QueueConfig(name="q", max_batch_size=3, max_coalescing_delay=0.1)
    for i in range(7):
        assert rt.enqueue(conf, h, {"c": 1}, i)
    assert await rt.drain(5)
    assert h.batches == [[0, 1, 2], [3, 4, 5], [6]]
    s = rt.stats()["q"]
    assert (s.entries_sent, s.batches_sent, s.depth, s.in_flight, s.exists) == (7, 3, 0, 0, False)


async def test_consumer_never_runs_inside_enqueue() -> None:
    rt = Runtime()
    h = Recorder()
    rt.enqueue(QueueConfig(name="q"), h, None, "x")
    assert h.calls == 0 and rt.exists("q")
    await rt.drain(5)
    assert h.entries == ["x"]


async def test_sync_handler_runs_off_the_loop() -> None:
    rt = Runtime()
    loop_thread = threading.get_ident()
    seen: list[int] = []

    def handler(conf: Any, entries: list[Any]) -> bool:
        seen.append(threading.get_ident())
        time.sleep(0.01)
        return True

    rt.enqueue(QueueConfig(name="s"), handler, None, 1)
    await rt.drain(5)
    assert seen and seen[0] != loop_thread


@pytest.mark.parametrize(("result", "text"), [
    ((False, "nope"), "handler could not process entries: nope"),
    (False, "handler could not process entries: no error details returned by handler"),
    ("yes", "handler could not process entries: no error details returned by handler"),
    (1, "handler could not process entries: no error details returned by handler"),
    (RuntimeError("hard error"), "handler could not process entries: hard error"),
])
async def test_only_exactly_true_is_success(result: Any, text: str,
                                            caplog: pytest.LogCaptureFixture) -> None:
    rt = Runtime()
    h = Recorder(fail_times=1, reason=result)
    caplog.set_level(logging.DEBUG, logger="relayq")
    rt.enqueue(QueueConfig(name="t", log_tag="tag"), h, None, "e")
    assert await rt.drain(5)
    assert h.entries == ["e"] and h.calls == 2
    assert f"[tag] queue t: {text}" in messages(caplog)
    assert rt.stats()["t"].retries == 1 and rt.stats()["t"].failures == 1


async def test_give_up_counts_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    rt = Runtime()
    h = Recorder(fail_times=100)
    conf = QueueConfig(name="g", max_retry_time=0.05, max_batch_size=2, max_coalescing_delay=0)
    rt.enqueue(conf, h, None, 1)
    assert await rt.drain(5)
    assert rt.stats()["g"].dropped["retry_exhausted"] == 1
    assert ("[] queue g: could not send entries due to max_retry_time exceeded. "
            "1 queue entries were lost") in messages(caplog)


async def test_handler_timeout_fails_attempt_and_queue_goes_on() -> None:
    rt = Runtime()
    calls: list[int] = []

    async def hangs_first(conf: Any, entries: list[Any]) -> bool:
        calls.append(1)
        if len(calls) == 1:
            await asyncio.sleep(3600)
        return True

    conf = QueueConfig(name="h", handler_timeout=0.05)
    rt.enqueue(conf, hangs_first, None, "x")
    assert await rt.drain(5)
    s = rt.stats()["h"]
    assert s.entries_sent == 1 and s.last_error == "handler did not finish within 0.05 s"


async def test_handler_conf_last_writer_wins_and_params_fixed_until_drained() -> None:
    rt = Runtime()
    gate = asyncio.Event()
    confs: list[Any] = []

    async def handler(conf: Any, entries: list[Any]) -> bool:
        await gate.wait()
        confs.append(conf)
        return True

    first = QueueConfig(name="shared", max_batch_size=10, max_coalescing_delay=0.05)
    second = first.replace(max_batch_size=1)
    rt.enqueue(first, handler, "conf-1", 1)
    rt.enqueue(second, handler, "conf-2", 2)  # params ignored: the queue exists
    await asyncio.sleep(0.1)
    gate.set()
    await rt.drain(5)
    assert confs == ["conf-2"]  # one batch of 2, sent with the latest conf
    assert not rt.exists("shared")
    rt.enqueue(second, handler, "conf-3", 3)  # recreated with the new parameters
    rt.enqueue(second, handler, "conf-3", 4)
    await rt.drain(5)
    assert confs == ["conf-2", "conf-3", "conf-3"]


async def test_concurrency_minus_one_delivers_each_entry_in_parallel() -> None:
    rt = Runtime()
    running = 0
    peak = 0
    got: list[Any] = []

    async def handler(conf: Any, entries: list[Any]) -> bool:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        got.extend(entries)
        return True

    conf = QueueConfig(name="par", concurrency_limit=-1, max_batch_size=100)
    for i in range(5):
        assert rt.enqueue(conf, handler, None, i)
    assert not rt.exists("par") and not rt.is_full(conf) and rt.can_enqueue(conf, "x")
    await rt.drain(5)
    assert sorted(got) == [0, 1, 2, 3, 4] and peak == 5
    assert rt.stats()["par"].entries_sent == 5


async def test_concurrency_minus_one_still_retries() -> None:
    rt = Runtime()
    h = Recorder(fail_times=2)
    rt.enqueue(QueueConfig(name="p1", concurrency_limit=-1), h, None, "x")
    await rt.drain(5)
    assert h.entries == ["x"] and rt.stats()["p1"].retries == 2


async def test_exists_is_full_can_enqueue_and_workspaces() -> None:
    rt = Runtime()
    gate = asyncio.Event()

    async def blocked(conf: Any, entries: list[Any]) -> bool:
        await gate.wait()
        return True

    conf = QueueConfig(name="k", max_entries=2, max_bytes=6)
    assert not rt.exists("k") and not rt.is_full(conf) and rt.can_enqueue(conf, "x" * 100)
    with relayq.workspace("ws1"):
        rt.enqueue(conf, blocked, None, "abc")
        rt.enqueue(conf, blocked, None, "def")
        assert rt.exists("k") and rt.is_full(conf) and not rt.can_enqueue(conf)
    assert not rt.exists("k")  # other workspace: another queue
    assert "ws1.k" in rt.stats()
    gate.set()
    await rt.drain(5)


async def test_none_entry_rejected() -> None:
    rt = Runtime()
    assert rt.enqueue(QueueConfig(name="n"), Recorder(), None, None) is False
    assert rt.stats()["n"].dropped["invalid"] == 1
    await rt.drain(5)


async def test_bad_arguments_raise_type_error() -> None:
    rt = Runtime()
    with pytest.raises(TypeError, match="handler"):
        rt.enqueue(QueueConfig(name="b"), "not callable", None, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="QueueConfig or a dict"):
        rt.enqueue(42, Recorder(), None, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="name"):
        rt.enqueue({"max_entries": 3}, Recorder(), None, 1)
    with pytest.raises(ValueError, match="max_entries must be between 1 and 1000000"):
        rt.enqueue({"name": "b", "max_entries": 0}, Recorder(), None, 1)


async def test_enqueue_from_many_threads_loses_nothing() -> None:
    rt = Runtime()
    h = Recorder()
    conf = QueueConfig(name="mt", max_batch_size=500, max_coalescing_delay=0.05,
                       max_entries=100000)

    def produce(k: int) -> None:
        for i in range(2000):
            rt.enqueue(conf, h, None, (k, i))

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    await asyncio.get_running_loop().run_in_executor(None, lambda: [t.join() for t in threads])
    assert await rt.drain(10)
    got = h.entries
    assert len(got) == 8000
    for k in range(4):
        mine = [i for kk, i in got if kk == k]
        assert mine == sorted(mine)  # FIFO per producer


def test_background_loop_when_no_loop_is_running() -> None:
    rt = Runtime()
    h = Recorder()
    for i in range(3):
        rt.enqueue(QueueConfig(name="bg", max_batch_size=3, max_coalescing_delay=0.05), h,
                   None, i)
    assert rt.flush(5)
    assert h.entries == [0, 1, 2]
    assert rt._bg_thread is not None and rt._bg_thread.daemon


def test_many_queues_cost_no_thread_each() -> None:
    rt = Runtime()
    before = threading.active_count()
    h = Recorder()
    for i in range(3000):
        rt.enqueue(QueueConfig(name=f"q{i}", max_coalescing_delay=0.05), h, None, i)
    assert threading.active_count() <= before + 1  # one background loop thread
    assert rt.flush(20)
    assert len(h.entries) == 3000


def test_shutdown_flushes_long_coalescing_quickly() -> None:
    rt = Runtime()
    h = Recorder()
    conf = QueueConfig(name="long", max_batch_size=2, max_coalescing_delay=1000)
    for v in ["One", "Two", "Three", "Four", "Five"]:
        rt.enqueue(conf, h, None, v)
    start = time.monotonic()
    assert rt.shutdown(10) == 0
    assert time.monotonic() - start < 2
    assert h.batches == [["One", "Two"], ["Three", "Four"], ["Five"]]


def test_shutdown_deadline_wakes_retries_and_reports_lost(
        caplog: pytest.LogCaptureFixture) -> None:
    rt = Runtime()
    h = Recorder(fail_times=10**9)
    conf = QueueConfig(name="down", max_batch_size=2, max_coalescing_delay=0,
                       initial_retry_delay=5, max_retry_time=600)
    for i in range(5):
        rt.enqueue(conf, h, None, i)
    start = time.monotonic()
    lost = rt.shutdown(0.3)
    assert time.monotonic() - start < 2
    assert lost == 5
    s = rt.stats()["down"]
    assert s.dropped["shutdown"] == 5 and s.depth == 0
    assert "shutdown deadline reached, 5 queue entries were not delivered" in messages(caplog)


def test_shutdown_deadline_holds_against_hung_sync_handler() -> None:
    rt = Runtime()
    release = threading.Event()

    def hung(conf: Any, entries: list[Any]) -> bool:
        release.wait(30)
        return True

    rt.enqueue(QueueConfig(name="hung", handler_timeout=None), hung, None, 1)
    start = time.monotonic()
    assert rt.shutdown(0.2) == 1
    assert time.monotonic() - start < 2
    release.set()


async def test_aclose_from_async_code() -> None:
    rt = Runtime()
    h = Recorder()
    rt.enqueue(QueueConfig(name="a", max_batch_size=10, max_coalescing_delay=1000), h, None, 1)
    assert await rt.aclose(5) == 0
    assert h.entries == [1]


async def test_shutdown_from_loop_thread_is_refused() -> None:
    rt = Runtime()
    rt.enqueue(QueueConfig(name="r"), Recorder(), None, 1)
    with pytest.raises(RuntimeError, match="aclose"):
        rt.shutdown(1)
    await rt.aclose(5)


def test_runtime_moves_to_a_new_loop() -> None:
    rt = Runtime()
    h = Recorder()
    conf = QueueConfig(name="m", max_batch_size=10, max_coalescing_delay=1000)

    async def first() -> None:
        rt.enqueue(conf, h, None, 1)  # the loop ends before the batch leaves

    asyncio.run(first())

    async def second() -> None:
        rt.enqueue(conf, h, None, 2)
        assert await rt.aclose(5) == 0

    asyncio.run(second())
    assert h.entries == [1, 2]


async def test_stats_are_frozen_snapshots() -> None:
    rt = Runtime()
    h = Recorder()
    rt.enqueue(QueueConfig(name="f", max_entries=2), h, None, 1)
    s = rt.stats()["f"]
    with pytest.raises(AttributeError):
        s.depth = 9  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.dropped["capacity"] = 3  # type: ignore[index]
    await rt.drain(5)
    assert s.depth == 1 and rt.stats()["f"].depth == 0


async def test_full_queue_logs_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    rt = Runtime()
    gate = asyncio.Event()

    async def blocked(conf: Any, entries: list[Any]) -> bool:
        await gate.wait()
        return True

    conf = QueueConfig(name="storm", max_entries=10)
    for i in range(5000):
        rt.enqueue(conf, blocked, None, i)
    full = [t for t in messages(caplog) if "queue full" in t]
    assert 1 <= len(full) <= 3
    assert rt.stats()["storm"].dropped["capacity"] == 4990
    gate.set()
    await rt.drain(5)
    assert any("more like this" in t for t in messages(caplog))


def test_lock_free_appends_racing_queue_removal_lose_nothing() -> None:
    # Producers in other threads append without the lock while the consumer keeps draining
    # and removing the queue; every entry must arrive exactly once.
    rt = Runtime()
    got: list[Any] = []

    async def handler(conf: Any, entries: list[Any]) -> bool:
        got.extend(entries)
        return True

    conf = QueueConfig(name="race", max_batch_size=1000, max_coalescing_delay=0,
                       max_entries=1_000_000)

    def produce(k: int) -> None:
        for i in range(3000):
            rt.enqueue(conf, handler, None, (k, i))
            if i % 7 == 0:
                time.sleep(0)  # let the consumer drain and remove the queue

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert rt.flush(20)
    assert len(got) == 12000 and len(set(got)) == 12000


def test_append_to_a_queue_removed_meanwhile_is_rescued() -> None:
    # The interleaving the fast path guards against, made deterministic: a producer fetched the
    # queue, the consumer removed it, then the producer appended.
    rt = Runtime()
    got: list[Any] = []

    def handler(conf: Any, entries: list[Any]) -> bool:
        got.extend(entries)
        return True

    conf = QueueConfig(name="orphan")
    rt.enqueue(conf, handler, None, "first")
    assert rt.flush(5) and not rt.exists("orphan")
    stale = rt._queues.get("orphan")
    assert stale is None
    with rt._lock:
        q = rt._create(conf, "orphan", handler)
        q.gen += 1  # its consumer (scheduled by _create) stands down, as a finished one would
        q.closed = True
        del rt._queues["orphan"]
    q.entries.append("late")
    rt._settle_fast_path(q)
    assert rt.flush(5)
    assert got == ["first", "late"]
