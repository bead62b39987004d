"""Test helpers: a fake clock, and a virtual-time simulation of one queue's core.

``simulate`` runs ``QueueCore`` against a list of timed arrivals and a scripted handler with
exact virtual times (no threads, loops or sleeps), the way trio's MockClock or tenacity's
recorded sleeps test timer code. Users can use it to check their own queue settings, e.g. when
a batch would give up under a given retry policy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from relayq.queue._config import QueueConfig
from relayq.queue._core import DELIVER, DONE, QUEUED_WAKE, SLEEP, WAIT, Lost, QueueCore
from relayq.queue._outcome import Failure
from relayq.queue._stats import Counters


class FakeClock:
    """A monotonic clock that moves only when told to (``advance``/``set``), or steps back."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move forward (or, with a negative value, backward) by ``seconds``."""
        self.now += seconds

    def set(self, now: float) -> None:
        """Jump to ``now``."""
        self.now = now


@dataclass
class Attempt:
    """One handler call in a simulation."""

    time: float
    batch: list[Any]
    ok: bool


@dataclass
class Simulation:
    """What happened: every handler attempt, every log line, and the counters."""

    attempts: list[Attempt] = field(default_factory=list)
    logs: list[tuple[int, str]] = field(default_factory=list)
    counters: Counters = field(default_factory=lambda: Counters("sim", None))
    end: float = 0.0
    rejected: list[Any] = field(default_factory=list)
    lost: list[Lost] = field(default_factory=list)  # batches given up on

    def messages(self, level: int | None = None) -> list[str]:
        """The log texts, optionally only those at ``level``."""
        return [text for lvl, text in self.logs if level is None or lvl == level]


# A scripted handler: (virtual time, batch, attempt number within the batch) -> True, an error
# text, or a Failure (permanent / retry_after).
Outcome = Callable[[float, list[Any], int], "bool | str | Failure"]


def simulate(
    conf: QueueConfig,
    arrivals: Iterable[tuple[float, Any]],
    handler: Outcome | None = None,
    *,
    clock_offsets: Iterable[tuple[float, float]] = (),
    exiting_at: float | None = None,
    handler_duration: float = 0.0,
    until: float = 1e9,
    rng: Callable[[], float] = lambda: 1.0,
) -> Simulation:
    """Run one queue in virtual time.

    ``arrivals`` are (time, value) pairs; ``handler`` returns True or an error text (default:
    always succeed); ``clock_offsets`` are (virtual time, offset) pairs: from that time on, the
    clock the core sees is shifted by ``offset`` (negative = the clock stepped backwards);
    ``exiting_at`` is when graceful shutdown starts.
    """
    sim = Simulation()

    def log(level: int, template: str, *args: object) -> None:
        sim.logs.append((level, template % args if args else template))

    core = QueueCore(conf, sim.counters, log, rng=rng)
    pending = sorted(arrivals, key=lambda a: a[0])
    offsets = sorted(clock_offsets)
    outcome = handler or (lambda t, b, n: True)
    tries: dict[int, int] = {}

    def seen(t: float) -> float:
        shift = 0.0
        for when, off in offsets:
            if when <= t:
                shift = off
        return t + shift

    def arrive(upto: float, stop_on_wake: bool = False) -> float | None:
        while pending and pending[0][0] <= upto:
            t, value = pending.pop(0)
            result = core.offer(value)
            if result == 0:
                sim.rejected.append(value)
            if stop_on_wake and result == QUEUED_WAKE:
                return t
        return None

    now = pending[0][0] if pending else 0.0
    arrive(now)
    while now <= until:
        exiting = exiting_at is not None and now >= exiting_at
        action = core.next_action(seen(now), exiting)
        if action.kind == DONE:
            if not pending:
                break
            now = pending[0][0]
            arrive(now)
        elif action.kind == WAIT:
            target = now + action.delay
            if exiting_at is not None and now < exiting_at < target:
                target = exiting_at  # shutdown wakes a coalescing consumer
            woke = arrive(target, stop_on_wake=True)
            now = target if woke is None else woke
        elif action.kind == SLEEP:
            now += action.delay
            arrive(now)
        elif action.kind == DELIVER:
            assert action.batch is not None
            key = id(action.batch)
            n = tries[key] = tries.get(key, 0) + 1
            result = outcome(now, list(action.batch), n)
            sim.attempts.append(Attempt(now, list(action.batch), result is True))
            now += handler_duration
            arrive(now)
            if isinstance(result, Failure):
                lost = core.on_result(seen(now), result.reason, ok=False,
                                      permanent=not result.retryable,
                                      retry_after=result.retry_after)
            else:
                lost = core.on_result(seen(now), None if result is True else str(result),
                                      ok=result is True)
            if lost is not None:
                sim.lost.append(lost)
    sim.end = now
    return sim


def capture_logs(logger: str = "relayq") -> tuple[logging.Handler, list[logging.LogRecord]]:
    """Attach a handler recording every record of ``logger`` at DEBUG and above."""
    records: list[logging.LogRecord] = []

    class _Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = _Recorder(logging.DEBUG)
    lg = logging.getLogger(logger)
    lg.addHandler(handler)
    lg.setLevel(logging.DEBUG)
    return handler, records
