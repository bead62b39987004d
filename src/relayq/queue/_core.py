"""The queue's brain, free of I/O: capacity, drops, batches, coalescing and the retry schedule.

``QueueCore`` holds one queue's entries and decides what happens next; it never sleeps, locks or
reads a clock. The producer side is ``offer`` (Kong's enqueue steps, in Kong's order). The
consumer side is a small state machine: the driver asks ``next_action(now, exiting)`` and executes
the answer (wait for entries, deliver a batch, sleep before a retry, or stop), then reports a
delivery's outcome with ``on_result``. Tests drive it with exact virtual times.

Time is doubly guarded: elapsed time is the larger of what the (injectable, possibly jumping)
clock says and the sum of the waits the core itself asked for, so a clock that stands still or
steps backwards never holds a batch past its coalescing delay or retries past max_retry_time.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from itertools import repeat, starmap
from typing import Any, Final, NamedTuple

from relayq.queue import _messages as m
from relayq.queue._config import (
    CAPACITY_WARNING_THRESHOLD,
    COALESCE_MIN_TIME,
    COALESCE_POLL_TIME,
    QueueConfig,
)
from relayq.queue._stats import Counters

# offer() results
REJECTED: Final = 0
QUEUED: Final = 1
QUEUED_WAKE: Final = 2  # queued, and the consumer waiting for a full batch must be woken

# next_action() kinds
DONE: Final = 0  # nothing left: the queue is removed (Kong unregisters a drained queue)
WAIT: Final = 1  # coalescing: wait up to `delay` s, or until woken by a full batch
DELIVER: Final = 2  # call the handler with `batch`
SLEEP: Final = 3  # back off `delay` s before retrying the same batch

# consumer phases
_IDLE, _COALESCING, _SENDING, _BACKOFF, _RETRY_DUE, _PART_DUE = range(6)

LogSink = Callable[..., None]  # (level, template, *args)


class Lost(NamedTuple):
    """A batch given up on: its entries, why (a drop reason), the last error, attempts made."""

    entries: list[Any]
    reason: str
    error: str
    attempts: int


class Action(NamedTuple):
    """What the driver must do next."""

    kind: int
    delay: float = 0.0
    batch: list[Any] | None = None


_DONE_ACTION: Final = Action(DONE)

FAST_PATH_MARGIN: Final = 64


def entry_size(value: object) -> int | None:
    """Bytes a string entry occupies (UTF-8), or None for entries that are not strings."""
    if isinstance(value, str):
        return len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, bytes | bytearray | memoryview):
        return len(value)
    return None


def retry_delay(conf: QueueConfig, retry_count: int) -> float:
    """Kong's backoff: min(max_retry_delay, initial_retry_delay * 2^retry_count)."""
    if retry_count > 1000:  # 2**1000 overflows nothing but is far past any cap
        return conf.max_retry_delay
    delay: float = conf.initial_retry_delay * (2**retry_count)
    return min(conf.max_retry_delay, delay)


class QueueCore:
    """One queue: its waiting entries, byte count, warning flags and consumer state."""

    __slots__ = (
        "_batch_size",
        "_bytes_limit",
        "_coalesce_started",
        "_coalesce_waited",
        "_delay",
        "_fast_default",
        "_first_attempt",
        "_keep_oldest",
        "_log",
        "_max_entries",
        "_on_drop",
        "_parts",
        "_pending_sleep",
        "_phase",
        "_retry_count",
        "_rng",
        "_slept",
        "_spooled",
        "_warn_at",
        "batch",
        "bytes",
        "conf",
        "counters",
        "dropped_since_resume",
        "entries",
        "fast_limit",
        "waiting",
        "warned",
    )

    def __init__(self, conf: QueueConfig, counters: Counters, log: LogSink,
                 rng: Callable[[], float] = random.random,
                 on_drop: Callable[[Any], None] | None = None) -> None:
        self.conf = conf
        self._on_drop = on_drop  # told about every entry dropped from the queue (spool acks)
        # With a spool every entry is a (seq, value) pair; sizes are the value's.
        self._spooled = conf.spool is not None
        self._rng = rng
        self._parts: list[list[Any]] = []  # the rest of a batch split to isolate a bad entry
        self.counters = counters
        self._log = log
        self.entries: deque[Any] = deque()
        self.bytes = 0
        self.warned = False
        self.dropped_since_resume = False
        self.waiting = False  # consumer is coalescing and wants a wake-up on a full batch
        self.batch: list[Any] | None = None  # in flight (handled or between retries)
        self._max_entries = conf.max_entries
        self._keep_oldest = conf.drop_policy != "drop_oldest"
        self._warn_at = conf.max_entries * CAPACITY_WARNING_THRESHOLD
        # Below this depth an append needs none of offer()'s checks (no warning, no drop, no
        # byte accounting); the runtime's lock-free fast path uses it. The margin keeps depth
        # within max_entries even when that many producer threads race past the check.
        self._fast_default = (
            0 if conf.max_bytes is not None
            else max(0, int(self._warn_at) - FAST_PATH_MARGIN)
        )
        self.fast_limit = self._fast_default
        self._bytes_limit = conf.max_bytes
        self._batch_size = conf.max_batch_size
        self._delay = conf.max_coalescing_delay
        self._phase = _IDLE
        self._coalesce_started = 0.0
        self._coalesce_waited = 0.0
        self._first_attempt = 0.0
        self._slept = 0.0
        self._retry_count = 0
        self._pending_sleep = 0.0

    # ---------------------------------------------------------------- producer side

    def offer(self, value: Any) -> int:
        """Kong's enqueue steps 1-9 (kong-queue.md 2.3) in order; never blocks."""
        if value is None:
            self.counters.drop("invalid")
            self._log(m.ERR, m.NIL_ENTRY)
            return REJECTED
        entries = self.entries
        count = len(entries)
        if count >= self._warn_at:
            if not self.warned:
                self._log(m.WARN, m.CAPACITY_WARNING, int(CAPACITY_WARNING_THRESHOLD * 100))
                self.warned = True
                self.fast_limit = 0  # the next offer below the threshold must re-arm
            if count >= self._max_entries:
                if self._keep_oldest:  # drop_newest / block: the new entry is refused
                    self.counters.drop("full")
                    self._log(m.ERR, m.QUEUE_FULL_NEWEST)
                    return REJECTED
                self._log(m.ERR, m.QUEUE_FULL)
                self._drop_oldest("capacity")
        elif self.warned:
            self.warned = False
            self.fast_limit = self._fast_default
        limit = self._bytes_limit
        if limit is None:
            entries.append(value)
        else:
            size = entry_size(value[1] if self._spooled else value)
            if size is None:
                self._log(m.ERR, m.NON_STRING)
                size = 0
            elif size > limit:
                self.counters.drop("too_large")
                self._log(m.ERR, m.STRING_TOO_LONG, size, limit)
                return REJECTED
            elif size > limit - self.bytes:
                dropped = 0
                while entries and size > limit - self.bytes:
                    self._drop_oldest("bytes")
                    dropped += 1
                self._log(m.ERR, m.BYTES_EXCEEDED, dropped)
            entries.append(value)
            self.bytes += size
        if self.waiting and len(entries) >= self._batch_size:
            self.waiting = False
            return QUEUED_WAKE
        return QUEUED

    def _drop_oldest(self, reason: str) -> None:
        value = self.entries.popleft()
        if self._bytes_limit is not None:
            self.bytes -= self._size(value)
        self.counters.drop(reason)
        self.dropped_since_resume = True
        if self._on_drop is not None:
            self._on_drop(value)

    def _size(self, entry: Any) -> int:
        return entry_size(entry[1] if self._spooled else entry) or 0

    def refuse_unspooled(self) -> None:
        """The spool refused the entry (full, or the disk is failing): refuse it too, whatever
        the drop policy, and count it. Dropping older entries would not make room (the spool
        frees space at its next commit), and queuing it in memory only would break the
        promise the spool makes."""
        self.counters.drop("full")
        self._log(m.ERR, m.SPOOL_FULL)

    def is_full(self) -> bool:
        """Kong's Queue.is_full: no entry slot left, or exactly 0 bytes left."""
        if self._max_entries - len(self.entries) <= 0:
            return True
        return self._bytes_limit is not None and self._bytes_limit - self.bytes <= 0

    def can_enqueue(self, value: Any = None) -> bool:
        """Kong's Queue.can_enqueue for a registered queue."""
        if self.is_full():
            return False
        if self._bytes_limit is not None and value is not None:
            size = entry_size(value[1] if self._spooled else value)
            if size is not None and size > self._bytes_limit - self.bytes:
                return False
        return True

    # ---------------------------------------------------------------- consumer side

    def next_action(self, now: float, exiting: bool) -> Action:
        """Decide the consumer's next step at time ``now``."""
        phase = self._phase
        if phase == _IDLE:
            if not self.entries:
                return _DONE_ACTION
            if self.conf.concurrency_limit != -1:  # Kong: -1 bypasses the queue loop
                self._log(m.TRACE, m.PROCESSING)
            self._phase = _COALESCING
            self._coalesce_started = now
            self._coalesce_waited = 0.0
            phase = _COALESCING
        if phase == _COALESCING:
            return self._coalesce(now, exiting)
        if phase == _BACKOFF:
            self._phase = _RETRY_DUE
            self._slept += self._pending_sleep
            return Action(SLEEP, self._pending_sleep)
        if phase == _PART_DUE:
            self._phase = _SENDING
            self._first_attempt = now
            assert self.batch is not None
            self._log(m.TRACE, m.PASSING, len(self.batch))
            return Action(DELIVER, 0.0, self.batch)
        if phase == _RETRY_DUE:
            self._phase = _SENDING
            self._retry_count += 1
            self.counters.retries += 1
            assert self.batch is not None
            self._log(m.TRACE, m.PASSING, len(self.batch))
            return Action(DELIVER, 0.0, self.batch)
        raise RuntimeError("next_action called while a delivery is outstanding")

    def _coalesce(self, now: float, exiting: bool) -> Action:
        self.waiting = False
        if not self.entries:  # everything waiting was dropped (e.g. max_entries 1)
            self._phase = _IDLE
            return _DONE_ACTION
        if exiting and self._delay > COALESCE_MIN_TIME:
            self._delay = COALESCE_MIN_TIME  # best-effort batching during shutdown, for good
        if self._delay < COALESCE_MIN_TIME:
            return self._take_batch(now, 1)  # Kong never coalesces below 0.05 s: one per batch
        elapsed = max(now - self._coalesce_started, self._coalesce_waited)
        remaining = self._delay - elapsed
        if remaining >= COALESCE_MIN_TIME:
            # Announce the wait before looking at the depth: a producer that appends without
            # the lock looks at `waiting` after its append, so one of the two sees the other.
            self.waiting = True
            if len(self.entries) < self._batch_size:
                wait = min(remaining, COALESCE_POLL_TIME)
                self._coalesce_waited += wait
                return Action(WAIT, wait)
            self.waiting = False
        return self._take_batch(now)

    def _take_batch(self, now: float, limit: int | None = None) -> Action:
        entries = self.entries
        n = min(len(entries), limit or self._batch_size)
        batch = list(starmap(entries.popleft, repeat((), n)))  # a C loop of atomic pops
        if self._bytes_limit is not None:
            self.bytes -= sum(self._size(v) for v in batch)
        if self.dropped_since_resume:
            self.dropped_since_resume = False
            self._log(m.INFO, m.RESUMED)
        self.batch = batch
        self._phase = _SENDING
        self._first_attempt = now
        self._slept = 0.0
        self._retry_count = 0
        self._log(m.TRACE, m.PASSING, n)
        return Action(DELIVER, 0.0, batch)

    def on_result(self, now: float, error: str | None, *, ok: bool, permanent: bool = False,
                  retry_after: float | None = None) -> Lost | None:
        """Record the outcome of the delivery ``next_action`` asked for.

        Returns the entries given up on (with why), for the driver to dead-letter, or None.
        ``permanent`` and ``retry_after`` are honoured only with ``retry_on = "retryable"``.
        """
        batch = self.batch
        if self._phase != _SENDING or batch is None:
            raise RuntimeError("on_result called without a delivery outstanding")
        c = self.counters
        if ok:
            c.batches_sent += 1
            c.entries_sent += len(batch)
            self._log(m.TRACE, m.PROCESSED, len(batch))
            self._finish_part()
            return None
        c.failures += 1
        c.last_error = error or m.NO_DETAILS
        self._log(m.WARN, m.HANDLER_FAILED, error or m.NO_DETAILS)
        if not error:
            self._log(m.ERR, m.FALSY)
        classes = self.conf.retry_on == "retryable"
        if classes and permanent:
            if len(batch) > 1:  # poison isolation: retry each half, so one bad entry
                mid = len(batch) // 2  # does not take the others with it
                self._parts[:0] = [batch[:mid], batch[mid:]]
                self._log(m.WARN, m.SPLITTING, len(batch), mid, len(batch) - mid)
                self._next_part()
                return None
            return self._give_up("permanent", error, m.PERMANENT, 1)
        elapsed = max(now - self._first_attempt, self._slept)
        if self.conf.max_retry_time < 0 or elapsed > self.conf.max_retry_time:
            return self._give_up("retry_exhausted", error, m.GAVE_UP, len(batch))
        delay = retry_delay(self.conf, self._retry_count)
        if self.conf.retry_jitter:
            delay *= self._rng()
        if classes and retry_after is not None and retry_after > delay:
            delay = min(retry_after, self.conf.max_retry_delay)
        self._pending_sleep = delay
        self._phase = _BACKOFF
        return None

    def _give_up(self, reason: str, error: str | None, message: str, count: int) -> Lost:
        assert self.batch is not None
        lost = Lost(self.batch, reason, error or m.NO_DETAILS, self._retry_count + 1)
        if self.conf.dead_letter is None:
            self.counters.drop(reason, len(self.batch))
        else:
            self.counters.dead_lettered += len(self.batch)
        self._log(m.ERR, message, count)
        self._finish_part()
        return lost

    def _finish_part(self) -> None:
        if self._parts:
            self._next_part()
        else:
            self.batch = None
            self._phase = _IDLE

    def _next_part(self) -> None:
        self.batch = self._parts.pop(0)
        self._phase = _PART_DUE
        self._retry_count = 0
        self._slept = 0.0

    def redeliver(self) -> None:
        """The delivery in progress was lost with its event loop: send the batch again."""
        if self._phase == _SENDING:
            self._phase = _RETRY_DUE
            self._retry_count -= 1
            self.counters.retries -= 1

    def abandon(self, reason: str = "shutdown") -> int:
        """Give up on everything waiting or in flight; count it under ``reason``."""
        lost = len(self.entries) + self.in_flight
        self.entries.clear()
        self._parts.clear()
        if self.conf.spool is not None:  # kept in the spool: the next start sends them
            self.counters.kept_in_spool += lost
            self.batch = None
            self._phase = _IDLE
            self.waiting = False
            self.bytes = 0
            return 0
        self.bytes = 0
        self.batch = None
        self._phase = _IDLE
        self.waiting = False
        if lost:
            self.counters.drop(reason, lost)
        return lost

    @property
    def in_flight(self) -> int:
        """Entries in the batch being handled or waiting for a retry."""
        return (len(self.batch) if self.batch else 0) + sum(len(p) for p in self._parts)

    @property
    def idle(self) -> bool:
        """Nothing waiting and nothing in flight."""
        return not self.entries and self.batch is None
