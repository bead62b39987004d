"""Property tests of the queue core: random interleavings of enqueue, consumer steps, handler
outcomes and clock steps never break its invariants:

- depth <= max_entries; bytes <= max_bytes (when set) and equal to the waiting strings' size;
- delivered entries keep their enqueue order (FIFO);
- every offered entry is delivered, waiting, in flight, or counted under a drop reason.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relayq.queue import QueueConfig, QueueCore
from relayq.queue._core import DELIVER, DONE, REJECTED, SLEEP, WAIT, entry_size
from relayq.queue._stats import REJECTIONS, Counters

configs = st.builds(
    QueueConfig,
    name=st.just("prop"),
    max_batch_size=st.integers(1, 6),
    max_coalescing_delay=st.sampled_from([0, 0.01, 0.05, 0.3, 2.0]),
    max_entries=st.integers(1, 8),
    max_bytes=st.one_of(st.none(), st.integers(0, 40)),
    max_retry_time=st.sampled_from([-1, 0, 0.05, 1.0, 30.0]),
    initial_retry_delay=st.sampled_from([0.001, 0.01, 0.5]),
    max_retry_delay=st.sampled_from([0.01, 1.0, 60.0]),
    retry_on=st.sampled_from(["all", "retryable"]),
    drop_policy=st.sampled_from(["drop_oldest", "drop_newest"]),
)

values = st.one_of(
    st.text(max_size=12),
    st.binary(max_size=12),
    st.integers(),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.none(),
)

ops = st.lists(
    st.one_of(
        st.tuples(st.just("offer"), values),
        st.tuples(st.just("step"), st.floats(-5, 5, allow_nan=False)),
        st.tuples(st.just("result"), st.sampled_from(["ok", "fail", "permanent", "retry_after"])),
        st.tuples(st.just("exit"), st.booleans()),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conf=configs, script=ops)
def test_invariants_hold_under_any_interleaving(conf: QueueConfig, script: list[Any]) -> None:
    counters = Counters("prop", None)
    core = QueueCore(conf, counters, lambda *a: None, rng=lambda: 0.5)
    now = 0.0
    exiting = False
    outstanding: list[Any] | None = None  # batch handed to the "handler"
    offered: list[int] = []  # numbers of accepted entries, in order
    delivered: list[int] = []
    next_id = 0

    for op, arg in script:
        if op == "offer":
            value = tag(arg, next_id)  # each entry carries its offer number
            if core.offer(value) != REJECTED:
                offered.append(next_id)
            next_id += 1
        elif op == "step":
            now += arg
            if outstanding is None:
                action = core.next_action(now, exiting)
                if action.kind == DELIVER:
                    outstanding = action.batch
                else:
                    assert action.kind in (DONE, WAIT, SLEEP)
        elif op == "result" and outstanding is not None:
            batch = outstanding
            outstanding = None
            if arg == "ok":
                delivered.extend(number(v) for v in batch)
                core.on_result(now, None, ok=True)
            else:
                core.on_result(now, "x", ok=False, permanent=arg == "permanent",
                               retry_after=3.0 if arg == "retry_after" else None)
        elif op == "exit":
            exiting = arg

        # depth and bytes bounds
        assert len(core.entries) <= conf.max_entries
        if conf.max_bytes is not None:
            waiting = sum(entry_size(v) or 0 for v in core.entries)
            assert core.bytes == waiting
            assert core.bytes <= conf.max_bytes
        # accounting: accepted = delivered + waiting + in flight + dropped after acceptance
        dropped = sum(n for r, n in counters.dropped.items() if r not in REJECTIONS)
        assert counters.entries_sent + len(core.entries) + core.in_flight + dropped == len(offered)

    # FIFO: what was delivered appears in the order it was offered, each entry once
    assert delivered == sorted(delivered)
    assert len(set(delivered)) == len(delivered)


def tag(value: Any, n: int) -> Any:
    if isinstance(value, str):
        return f"{n}|{value}"
    if isinstance(value, bytes):
        return b"%d|" % n + value
    if isinstance(value, int):
        return (n, value)
    if isinstance(value, dict):
        return {**value, "#": n}
    return value  # None: refused


def number(value: Any) -> int:
    if isinstance(value, str):
        return int(value.split("|", 1)[0])
    if isinstance(value, bytes):
        return int(value.split(b"|", 1)[0])
    if isinstance(value, tuple):
        return int(value[0])
    return int(value["#"])


@settings(max_examples=100, deadline=None)
@given(conf=configs, n=st.integers(0, 30))
def test_everything_is_delivered_when_the_handler_succeeds(conf: QueueConfig, n: int) -> None:
    counters = Counters("prop", None)
    core = QueueCore(conf, counters, lambda *a: None)
    accepted = 0
    for i in range(n):
        if core.offer(f"e{i}") != REJECTED:
            accepted += 1
    now = 0.0
    got: list[Any] = []
    for _ in range(10_000):
        action = core.next_action(now, False)
        if action.kind == DONE:
            break
        if action.kind == DELIVER:
            assert action.batch is not None
            assert len(action.batch) <= conf.max_batch_size
            got.extend(action.batch)
            core.on_result(now, None, ok=True)
        now += action.delay
    dropped = sum(n for r, n in counters.dropped.items() if r not in REJECTIONS)
    assert len(got) + dropped == accepted
    assert got == sorted(got, key=lambda s: int(s[1:]))
