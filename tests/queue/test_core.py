"""The queue core's decisions, at exact virtual times (no threads, loops or sleeps)."""

from __future__ import annotations

import logging

import pytest

from relayq.queue import QueueConfig, QueueCore, retry_delay
from relayq.queue._core import DELIVER, DONE, QUEUED, QUEUED_WAKE, REJECTED, WAIT
from relayq.queue._stats import Counters
from relayq.queue.testing import simulate

ERR, WARN, INFO = logging.ERROR, logging.WARNING, logging.INFO


def make(conf: QueueConfig) -> tuple[QueueCore, list[tuple[int, str]]]:
    logs: list[tuple[int, str]] = []
    core = QueueCore(conf, Counters(conf.name, None),
                     lambda lvl, t, *a: logs.append((lvl, t % a if a else t)))
    return core, logs


def approx_times(sim_times: list[float]) -> list[float]:
    return [round(t, 6) for t in sim_times]


# ------------------------------------------------------------------ retry schedule


def fail(t: float, batch: list[object], n: int) -> str:
    return "boom"


def test_retry_schedule_max_retry_time_1_gives_up_after_8_attempts() -> None:
    conf = QueueConfig(name="r", max_retry_time=1)
    sim = simulate(conf, [(0.0, "a")], fail)
    assert approx_times([a.time for a in sim.attempts]) == [
        0.0, 0.01, 0.03, 0.07, 0.15, 0.31, 0.63, 1.27]
    assert sim.counters.dropped["retry_exhausted"] == 1
    assert sim.messages(ERR)[-1] == (
        "could not send entries due to max_retry_time exceeded. 1 queue entries were lost")
    assert sim.messages(WARN).count("handler could not process entries: boom") == 8


def test_retry_schedule_defaults_make_14_attempts() -> None:
    sim = simulate(QueueConfig(name="r"), [(0.0, "a")], fail)
    times = approx_times([a.time for a in sim.attempts])
    assert len(times) == 14
    assert times[-1] == 81.91
    assert sim.counters.retries == 13


def test_retry_time_3_gives_up_at_5_11() -> None:
    sim = simulate(QueueConfig(name="r", max_retry_time=3), [(0.0, "a")], fail)
    assert len(sim.attempts) == 10
    assert round(sim.attempts[-1].time, 6) == 5.11


def test_negative_max_retry_time_means_no_retries() -> None:
    sim = simulate(QueueConfig(name="r", max_retry_time=-1), [(0.0, "a")], fail)
    assert len(sim.attempts) == 1
    assert sim.counters.dropped["retry_exhausted"] == 1


def test_retry_delay_capped_by_max_retry_delay() -> None:
    conf = QueueConfig(name="r", initial_retry_delay=1, max_retry_delay=5)
    assert [retry_delay(conf, n) for n in range(5)] == [1, 2, 4, 5, 5]
    assert retry_delay(conf, 10_000) == 5


def test_success_after_failures_sends_same_batch() -> None:
    def flaky(t: float, batch: list[object], n: int) -> bool | str:
        return True if n == 3 else "down"

    conf = QueueConfig(name="r", max_batch_size=3, max_coalescing_delay=0)
    sim = simulate(conf, [(0.0, "a")], flaky)
    assert [a.batch for a in sim.attempts] == [["a"], ["a"], ["a"]]
    assert sim.counters.entries_sent == 1 and sim.counters.retries == 2


def test_retries_block_the_queue_and_later_entries_wait() -> None:
    def first_fails_twice(t: float, batch: list[object], n: int) -> bool | str:
        return True if batch != ["a"] or n == 3 else "down"

    sim = simulate(QueueConfig(name="r"), [(0.0, "a"), (0.001, "b")], first_fails_twice)
    assert [(round(a.time, 3), a.batch) for a in sim.attempts] == [
        (0.0, ["a"]), (0.01, ["a"]), (0.03, ["a"]), (0.03, ["b"])]


def test_falsy_failure_logs_both_lines() -> None:
    sim = simulate(QueueConfig(name="r", max_retry_time=-1), [(0.0, "a")], lambda t, b, n: "")
    assert "handler could not process entries: no error details returned by handler" in (
        sim.messages(WARN))
    assert "handler returned falsy value but no error information" in sim.messages(ERR)


# ------------------------------------------------------------------ coalescing


def test_batch_leaves_after_coalescing_delay() -> None:
    conf = QueueConfig(name="c", max_batch_size=10, max_coalescing_delay=2)
    sim = simulate(conf, [(0.0, 1), (0.5, 2), (1.5, 3), (2.5, 4)])
    assert [(round(a.time, 2), a.batch) for a in sim.attempts] == [(2.0, [1, 2, 3]), (4.5, [4])]


def test_batch_leaves_as_soon_as_full() -> None:
    conf = QueueConfig(name="c", max_batch_size=3, max_coalescing_delay=10)
    sim = simulate(conf, [(0.0, 1), (0.2, 2), (0.4, 3), (0.6, 4)])
    assert [(round(a.time, 2), a.batch) for a in sim.attempts] == [(0.4, [1, 2, 3]), (10.6, [4])]


def test_no_batching_below_minimum_delay() -> None:
    conf = QueueConfig(name="c", max_batch_size=100, max_coalescing_delay=0.049)
    sim = simulate(conf, [(0.0, i) for i in range(4)])
    assert [a.batch for a in sim.attempts] == [[0], [1], [2], [3]]


def test_window_starts_when_consumer_takes_first_entry() -> None:
    # While [a, b] is retried until t=0.031, c..e pile up. At 0.031 the next batch takes what is
    # there at once ([c, d], full); e's window then starts at 0.031, not at its arrival (0.004).
    def ab_fails_twice(t: float, batch: list[object], n: int) -> bool | str:
        return True if batch != ["a", "b"] or n == 3 else "down"

    conf = QueueConfig(name="c", max_batch_size=2, max_coalescing_delay=5)
    arrivals = [(0.0, "a"), (0.001, "b"), (0.002, "c"), (0.003, "d"), (0.004, "e")]
    sim = simulate(conf, arrivals, ab_fails_twice)
    assert [(round(a.time, 3), a.batch) for a in sim.attempts] == [
        (0.001, ["a", "b"]), (0.011, ["a", "b"]), (0.031, ["a", "b"]),
        (0.031, ["c", "d"]), (5.031, ["e"])]


def test_backward_clock_never_holds_batch_longer_than_delay() -> None:
    conf = QueueConfig(name="c", max_batch_size=10, max_coalescing_delay=3)
    sim = simulate(conf, [(0.0, 1), (0.1, 2)], clock_offsets=[(0.5, -1000.0)])
    assert [a.batch for a in sim.attempts] == [[1, 2]]
    assert sim.attempts[0].time <= 3.0 + 1e-9


def test_forward_clock_jump_sends_early() -> None:
    conf = QueueConfig(name="c", max_batch_size=10, max_coalescing_delay=3)
    sim = simulate(conf, [(0.0, 1)], clock_offsets=[(0.5, 1000.0)])
    assert sim.attempts[0].time < 3.0


def test_backward_clock_does_not_extend_retries() -> None:
    conf = QueueConfig(name="r", max_retry_time=1)
    sim = simulate(conf, [(0.0, "a")], fail, clock_offsets=[(0.05, -500.0)])
    assert len(sim.attempts) == 8


# ------------------------------------------------------------------ shutdown


def test_shutdown_best_effort_batching() -> None:
    conf = QueueConfig(name="s", max_batch_size=2, max_coalescing_delay=1000)
    sim = simulate(conf, [(0.0, v) for v in ["One", "Two", "Three", "Four", "Five"]][:1]
                   + [(0.0, v) for v in ["Two", "Three", "Four", "Five"]], exiting_at=0.0)
    assert [a.batch for a in sim.attempts] == [["One", "Two"], ["Three", "Four"], ["Five"]]
    assert sim.end <= 0.051


def test_shutdown_cuts_a_long_coalescing_wait() -> None:
    conf = QueueConfig(name="s", max_batch_size=100, max_coalescing_delay=1000)
    sim = simulate(conf, [(0.0, "a")], exiting_at=2.0)
    assert len(sim.attempts) == 1
    assert 2.0 <= sim.attempts[0].time <= 2.05 + 1e-9


# ------------------------------------------------------------------ enqueue order and limits


def test_capacity_warning_once_per_episode_and_rearmed() -> None:
    core, logs = make(QueueConfig(name="w", max_entries=10))
    for i in range(10):
        core.offer(i)
    warnings = [t for lvl, t in logs if lvl == WARN]
    assert warnings == ["queue at 80% capacity"]  # at count 8 and 9: once
    core.entries.clear()
    core.offer("x")  # below threshold: re-armed silently
    for i in range(8):
        core.offer(i)
    assert [t for lvl, t in logs if lvl == WARN] == ["queue at 80% capacity"] * 2


def test_full_queue_drops_oldest_and_resumes() -> None:
    core, logs = make(QueueConfig(name="f", max_entries=3, max_batch_size=10,
                                  max_coalescing_delay=0))
    for v in "abcde":
        assert core.offer(v) == QUEUED
    assert list(core.entries) == ["c", "d", "e"]
    assert core.counters.dropped["capacity"] == 2
    assert logs.count((ERR, "queue full, dropping old entries until processing is successful "
                             "again")) == 2
    action = core.next_action(0.0, False)
    assert action.kind == DELIVER
    assert (INFO, "queue resumed processing") in logs


def test_oversized_string_rejected_after_full_drop() -> None:
    core, logs = make(QueueConfig(name="b", max_entries=2, max_bytes=10))
    core.offer("aa")
    core.offer("bb")
    assert core.offer("x" * 11) == REJECTED
    assert list(core.entries) == ["bb"]  # Kong: the full-queue drop already happened
    assert core.counters.dropped == {**core.counters.dropped, "capacity": 1, "too_large": 1}
    assert (ERR, "string to be queued is longer (11 bytes) than the queue's max_bytes "
                 "(10 bytes)") in logs


def test_string_exactly_max_bytes_accepted() -> None:
    core, _ = make(QueueConfig(name="b", max_bytes=4))
    assert core.offer("abcd") == QUEUED
    assert core.bytes == 4


def test_byte_limit_drops_oldest_until_it_fits() -> None:
    core, logs = make(QueueConfig(name="b", max_bytes=10))
    for v in ["aaaa", "bbbb", "cc"]:
        core.offer(v)
    core.offer("dddddd")
    assert list(core.entries) == ["cc", "dddddd"] and core.bytes == 8
    assert (ERR, "byte capacity exceeded, 2 queue entries were dropped") in logs
    assert core.counters.dropped["bytes"] == 2


def test_utf8_strings_count_bytes_not_characters() -> None:
    core, _ = make(QueueConfig(name="b", max_bytes=100))
    core.offer("é" * 10)
    assert core.bytes == 20


def test_non_string_with_max_bytes_is_queued_with_error() -> None:
    core, logs = make(QueueConfig(name="b", max_bytes=10))
    assert core.offer({"a": 1}) == QUEUED
    assert core.offer(42) == QUEUED  # Kong raises on numbers; relayq counts them as 0 bytes
    assert logs.count((ERR, "queuing non-string entry to a queue that has queue.max_bytes set, "
                            "capacity monitoring will not be correct")) == 2
    assert core.bytes == 0


def test_max_bytes_zero_is_defined() -> None:
    core, _ = make(QueueConfig(name="z", max_bytes=0))
    assert core.offer("x") == REJECTED
    assert core.counters.dropped["too_large"] == 1
    assert core.offer("") == QUEUED
    assert core.offer({"span": 1}) == QUEUED
    assert core.is_full()
    assert not core.can_enqueue()


def test_none_entry_rejected_and_counted() -> None:
    core, logs = make(QueueConfig(name="n"))
    assert core.offer(None) == REJECTED
    assert core.counters.dropped["invalid"] == 1
    assert (ERR, "entry must be a non-nil value") in logs


def test_drop_while_coalescing_keeps_totals_consistent() -> None:
    # Kong asserts (crashes) here when max_batch_size > max_entries; relayq drops the oldest.
    conf = QueueConfig(name="d", max_entries=1, max_batch_size=2, max_coalescing_delay=1)
    sim = simulate(conf, [(0.0, "A"), (0.1, "B")])
    assert [a.batch for a in sim.attempts] == [["B"]]
    assert sim.counters.dropped["capacity"] == 1


def test_is_full_and_can_enqueue_semantics() -> None:
    core, _ = make(QueueConfig(name="k", max_entries=2, max_bytes=5))
    assert core.can_enqueue("abcde") and not core.is_full()
    core.offer("abc")
    assert not core.can_enqueue("abc")  # only 2 bytes left
    assert core.can_enqueue({"table": 1})  # non-strings never rejected on bytes
    core.offer("de")
    assert core.is_full()  # exactly 0 bytes left


def test_wake_only_when_batch_becomes_full() -> None:
    core, _ = make(QueueConfig(name="w", max_batch_size=3, max_coalescing_delay=5))
    core.offer(1)
    assert core.next_action(0.0, False).kind == WAIT
    assert core.offer(2) == QUEUED
    assert core.offer(3) == QUEUED_WAKE
    assert core.offer(4) == QUEUED  # once per batch
    action = core.next_action(0.1, False)
    assert action.kind == DELIVER and action.batch == [1, 2, 3]


def test_drained_core_reports_done() -> None:
    core, _ = make(QueueConfig(name="d"))
    assert core.next_action(0.0, False).kind == DONE
    core.offer(1)
    action = core.next_action(0.0, False)
    assert action.kind == DELIVER
    core.on_result(0.0, None, ok=True)
    assert core.next_action(0.0, False).kind == DONE
    assert core.counters.entries_sent == 1 and core.counters.batches_sent == 1


def test_abandon_counts_waiting_and_in_flight() -> None:
    core, _ = make(QueueConfig(name="a", max_batch_size=2, max_coalescing_delay=0))
    for v in range(5):
        core.offer(v)
    core.next_action(0.0, False)  # 2 in flight, 3 waiting
    assert core.abandon() == 5
    assert core.counters.dropped["shutdown"] == 5 and core.idle


def test_on_result_without_delivery_is_an_error() -> None:
    core, _ = make(QueueConfig(name="e"))
    with pytest.raises(RuntimeError):
        core.on_result(0.0, None, ok=True)
