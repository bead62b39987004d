"""The per-process registry of queues and the asyncio driver that runs their consumers.

One ``Runtime`` is Kong's per-worker queue scope. ``enqueue`` is synchronous, takes one lock
for a few hundred nanoseconds and never awaits, so it is safe on a request's hot path from the
event loop's thread and from any other thread. Each registered queue has one consumer task on
the runtime's event loop: the loop of the program when there is one (uvicorn, aiohttp), or a
background loop thread started lazily. The consumer executes what ``QueueCore`` decides.

Waking costs: a consumer coalescing a batch is woken only when the batch becomes full (once per
batch, not per entry), and a consumer is created only when a queue is created (Kong removes a
queue when it drains).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from relayq.queue import _messages as m
from relayq.queue._config import QueueConfig, as_config
from relayq.queue._core import (
    DELIVER,
    DONE,
    QUEUED_WAKE,
    REJECTED,
    SLEEP,
    WAIT,
    Lost,
    QueueCore,
    entry_size,
)
from relayq.queue._handler import Handler, Outcome, attempt, is_async
from relayq.queue._keys import Key, label, make_key
from relayq.queue._keys import _workspace as _workspace
from relayq.queue._legacy import WarningThrottle
from relayq.queue._outcome import BatchInfo
from relayq.queue._outcome import _current as _current_batch
from relayq.queue._queuelog import QueueLog
from relayq.queue._stats import Counters, QueueStats, snapshot
from relayq.queue._storage import (
    DeadLetterStore,
    EntryStore,
    Storage,
    decode_entry,
    default_storage,
    encode_entry,
)
from relayq.queue._workers import HandlerThreads

log = logging.getLogger("relayq")



class _Queue(QueueCore):
    """A registered queue: the core plus what the driver needs to run it."""

    __slots__ = ("closed", "gen", "handler", "handler_conf", "is_async", "key", "loop", "qlog",
                 "spool", "waker")

    def __init__(self, conf: QueueConfig, key: Key, counters: Counters, handler: Handler,
                 clock: Callable[[], float], spool: EntryStore | None = None) -> None:
        qlog = QueueLog(conf.log_tag, conf.name, clock)
        on_drop = None if spool is None else _acker(spool)
        super().__init__(conf, counters, qlog, on_drop=on_drop)
        self.spool = spool
        self.qlog = qlog
        self.key = key
        self.handler = handler
        self.handler_conf: Any = None
        self.is_async = is_async(handler)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.waker: asyncio.Future[None] | None = None
        self.gen = 0
        self.closed = False  # removed from the registry; a late lock-free append is rescued


def _acker(spool: EntryStore) -> Callable[[Any], None]:
    def ack(value: Any) -> None:
        spool.ack((value[0],))

    return ack


class Runtime:
    """An isolated queue registry (Kong's per-worker scope) with the whole public API as methods.

    ``clock`` is the monotonic clock time decisions use (inject a fake one in tests).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, *,
                 max_handler_threads: int = 32, storage: Storage | None = None) -> None:
        self.clock = clock
        self.storage = storage
        # Set by a host running several worker processes ("worker-0", ...): each worker's
        # spools live apart (a spool file has one writer) and a restarted worker finds its own.
        self.spool_scope: str | None = None
        self.warning_throttle = WarningThrottle(clock)
        self._threads = HandlerThreads(max_handler_threads)
        self._init_state()
        _RUNTIMES.add(self)

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[Key, _Queue] = {}
        self._singles: set[_Queue] = set()  # concurrency_limit = -1 deliveries in progress
        self._counters: dict[Key, Counters] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._bg_thread: threading.Thread | None = None
        self._exiting = False
        self._pid = os.getpid()
        self._space = threading.Condition(self._lock)  # producers blocked on a full queue
        self._blocked = 0
        self._uid = uuid.uuid4().hex[:12]  # batch ids: unique per process
        self._batch_seq = 0
        self._batch_ids: dict[int, tuple[list[Any], str, int]] = {}
        self._dead_letter_stores: dict[str, DeadLetterStore] = {}
        self._spools: dict[tuple[str, str], EntryStore] = {}

    # ================================================================ producer API

    def enqueue(self, conf: QueueConfig | Mapping[str, Any], handler: Handler,
                handler_conf: Any, value: Any) -> bool:
        """Queue ``value`` for ``handler``; True if queued, False if rejected (reason logged)."""
        if type(conf) is QueueConfig:
            name = conf.name
        elif isinstance(conf, Mapping):
            name = conf.get("name")  # type: ignore[assignment]
            if not isinstance(name, str):
                raise TypeError("queue config must include a name (string)")
        else:
            raise TypeError(f"conf must be a QueueConfig or a dict, not {type(conf).__name__}")
        ws = _workspace.get()
        key: Key = name if ws is None else (ws, name)
        q = self._queues.get(key)
        if q is not None and value is not None:
            # Fast path, no lock: far below capacity, no byte limit, so Kong's steps reduce to
            # an append (deque.append is atomic). The consumer removes a drained queue by
            # marking it closed *before* it checks for entries, and we look after appending.
            entries = q.entries
            if len(entries) < q.fast_limit:
                spool = q.spool
                if spool is not None:  # written to disk (by its writer) before it is queued
                    if value.__class__ is str:  # encode_entry's common case, without the call
                        try:
                            data = b"s" + value.encode()
                        except UnicodeEncodeError:
                            data = encode_entry(value)
                    else:
                        data = encode_entry(value)
                    seq = spool.append(data)
                    if seq is None:  # spool full or failing: the locked path counts the refusal
                        return self._enqueue_locked(conf, key, handler, handler_conf, value)
                    value = (seq, value)
                q.handler_conf = handler_conf
                entries.append(value)
                if q.closed or (q.waiting and len(entries) >= q.conf.max_batch_size):
                    self._settle_fast_path(q)
                return True
        return self._enqueue_locked(conf, key, handler, handler_conf, value)

    def _enqueue_locked(self, conf: QueueConfig | Mapping[str, Any], key: Key,
                        handler: Handler, handler_conf: Any, value: Any) -> bool:
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        wake = None
        with self._lock:
            q = self._queues.get(key)
            if q is None:
                qc = as_config(conf)
                if qc.concurrency_limit == -1:
                    return self._deliver_single(qc, key, handler, handler_conf, value)
                q = self._create(qc, key, handler)
            q.handler_conf = handler_conf
            if q.conf.drop_policy == "block" and q.is_full():
                q = self._wait_for_space(q)
            if q.spool is not None and value is not None:
                result = self._offer_spooled(q, value)
            else:
                result = q.offer(value)
            if result == QUEUED_WAKE:
                wake = q.waker
                q.waker = None
        if wake is not None:
            self._wake(wake)
        return result != REJECTED

    @staticmethod
    def _offer_spooled(q: _Queue, value: Any) -> int:
        """Write the entry to the spool, then queue it; a refused entry leaves the spool."""
        assert q.spool is not None
        seq = q.spool.append(encode_entry(value))
        if seq is None:  # spool full, or its disk failing
            q.refuse_unspooled()
            return REJECTED
        result = q.offer((seq, value))
        if result == REJECTED:
            q.spool.ack((seq,))
        return result

    def _wait_for_space(self, q: _Queue) -> _Queue:
        """drop_policy "block": wait (lock held, released while waiting) until the queue has
        room or block_timeout passes. Never from the loop's own thread: that would stall the
        consumer that makes room, so there the policy acts like drop_newest."""
        loop = q.loop
        if loop is None or self._in_loop_thread(loop):
            return q
        deadline = time.monotonic() + q.conf.block_timeout
        self._blocked += 1
        try:
            while q.is_full() and not q.closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._space.wait(remaining)
        finally:
            self._blocked -= 1
        if q.closed:  # drained and removed while we waited
            q = self._queues.get(q.key) or self._create(q.conf, q.key, q.handler)
        return q

    def _settle_fast_path(self, q: _Queue) -> None:
        """After a lock-free append: wake a consumer whose batch is now full, or rescue the
        entries of a queue that was removed meanwhile (they go to the queue now registered)."""
        wake = None
        with self._lock:
            orphans = []
            if q.closed:
                # Pop one by one (each pop is atomic): another lock-free producer may still be
                # appending; whatever it adds after we stop, its own settle call rescues.
                while q.entries:
                    orphans.append(q.entries.popleft())
            elif (q.waiting and len(q.entries) >= q.conf.max_batch_size
                  and q.waker is not None):
                q.waiting = False
                wake, q.waker = q.waker, None
        if wake is not None:
            self._wake(wake)
        if orphans:
            self._requeue(q, orphans)

    def _requeue(self, old: _Queue, orphans: list[Any]) -> None:
        """Give entries of a removed queue to the queue now registered under its key; spooled
        entries keep their place in the spool when that queue shares it."""
        wake = None
        with self._lock:
            q = self._queues.get(old.key) or self._create(old.conf, old.key, old.handler)
            q.handler_conf = old.handler_conf
            for entry in orphans:
                if old.spool is not None and q.spool is old.spool:
                    result = q.offer(entry)
                else:
                    if old.spool is not None:
                        old.spool.ack((entry[0],))
                        entry = entry[1]
                    result = (self._offer_spooled(q, entry) if q.spool is not None
                              else q.offer(entry))
                if result == QUEUED_WAKE:
                    wake, q.waker = q.waker, None
        if wake is not None:
            self._wake(wake)

    def replay(self, conf: QueueConfig | Mapping[str, Any], handler: Handler,
               handler_conf: Any) -> int:
        """Start sending what a spooled queue's previous run left behind, without waiting for
        the first new entry (a queue replays on creation). Returns the number of entries now
        waiting; 0 for a queue without a spool."""
        qc = as_config(conf)
        if qc.spool is None:
            return 0
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        key = make_key(qc.name, _workspace.get())
        with self._lock:
            q = self._queues.get(key)
            if q is None:
                q = self._create(qc, key, handler)
            q.handler_conf = handler_conf
            return len(q.entries) + q.in_flight

    def can_enqueue(self, conf: QueueConfig | Mapping[str, Any], value: Any = None) -> bool:
        """Kong's Queue.can_enqueue: True for a queue that does not exist yet."""
        q = self._queues.get(self._key_of(conf))
        if q is None:
            return True
        with self._lock:
            return q.can_enqueue(value)

    def is_full(self, conf: QueueConfig | Mapping[str, Any]) -> bool:
        """Kong's Queue.is_full: False for a queue that does not exist."""
        q = self._queues.get(self._key_of(conf))
        if q is None:
            return False
        with self._lock:
            return q.is_full()

    def exists(self, name: str) -> bool:
        """Kong's Queue.exists: a queue of that name is registered in the current workspace."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a string, not {type(name).__name__}")
        return make_key(name, _workspace.get()) in self._queues

    def stats(self) -> dict[str, QueueStats]:
        """A frozen snapshot of every queue this runtime has seen, by name (``ws.name`` in a
        workspace)."""
        with self._lock:
            in_flight: dict[Key, int] = {}
            for s in self._singles:
                in_flight[s.key] = in_flight.get(s.key, 0) + s.in_flight + len(s.entries)
            out = {}
            for key, c in self._counters.items():
                q = self._queues.get(key)
                out[label(key)] = snapshot(
                    c,
                    exists=q is not None,
                    depth=len(q.entries) if q else 0,
                    nbytes=q.bytes if q else 0,
                    in_flight=(q.in_flight if q else 0) + in_flight.get(key, 0),
                )
            return out

    def count_drop(self, conf: QueueConfig | Mapping[str, Any], reason: str = "full",
                   count: int = 1) -> None:
        """Count entries a producer chose not to enqueue (e.g. after ``can_enqueue`` said no,
        as Kong's OpenTelemetry logs do), so ``stats()`` shows every loss."""
        key = self._key_of(conf)
        name = key if isinstance(key, str) else key[1]
        with self._lock:
            self._counters_for(key, name).drop(reason, count)

    def _key_of(self, conf: QueueConfig | Mapping[str, Any]) -> Key:
        if isinstance(conf, QueueConfig):
            name = conf.name
        elif isinstance(conf, Mapping) and isinstance(conf.get("name"), str):
            name = conf["name"]
        else:
            raise TypeError("conf must be a QueueConfig or a dict with a name")
        return make_key(name, _workspace.get())

    # ================================================================ queue creation

    def _counters_for(self, key: Key, name: str) -> Counters:
        c = self._counters.get(key)
        if c is None:
            c = self._counters[key] = Counters(name, key[0] if isinstance(key, tuple) else None)
        return c

    def _create(self, conf: QueueConfig, key: Key, handler: Handler) -> _Queue:
        # Called with the lock held.
        if os.getpid() != self._pid:  # forked without the at-fork hook (uWSGI may skip it)
            self._after_fork()
        spool, replay = self._spool_for(conf, key) if conf.spool is not None else (None, [])
        q = _Queue(conf, key, self._counters_for(key, conf.name), handler, self.clock, spool)
        self._queues[key] = q
        q.qlog(m.TRACE, m.QUEUE_CREATED)
        if replay:
            # Entries a previous run accepted and did not deliver: they go first, oldest first.
            q.entries.extend((seq, decode_entry(data)) for seq, data in replay)
            q.bytes += sum(entry_size(v) or 0 for _, v in q.entries) if conf.max_bytes else 0
            q.qlog(m.INFO, m.REPLAYED, len(replay))
        self._start_consumer(q)
        return q

    def _spool_for(self, conf: QueueConfig, key: Key) -> tuple[EntryStore, list[tuple[int, bytes]]]:
        """The queue's spool, opened once per process (queues come and go as they drain);
        on first open, what the previous run left behind, to replay."""
        assert conf.spool is not None
        name = label(key) if self.spool_scope is None else f"{self.spool_scope}/{label(key)}"
        cache_key = (conf.spool.path, name)
        store = self._spools.get(cache_key)
        if store is not None:
            return store, []
        store = self._storage().open_spool(conf.spool, name)
        self._spools[cache_key] = store
        return store, store.pending()

    def _deliver_single(self, conf: QueueConfig, key: Key, handler: Handler,
                        handler_conf: Any, value: Any) -> bool:
        """concurrency_limit = -1: no queue, one delivery task per entry (retries still apply)."""
        # A spool applies to queues (concurrency_limit 1) only.
        q = _Queue(conf.replace(max_batch_size=1, max_coalescing_delay=0.0, spool=None), key,
                   self._counters_for(key, conf.name), handler, self.clock)
        q.handler_conf = handler_conf
        q.qlog(m.TRACE, m.QUEUE_CREATED)
        if q.offer(value) == REJECTED:
            return False
        self._singles.add(q)
        self._start_consumer(q)
        return True

    def _start_consumer(self, q: _Queue) -> None:
        # Called with the lock held; schedules, never runs the consumer inline.
        loop = self._bind_loop()
        q.loop = loop
        gen = q.gen
        if self._in_loop_thread(loop):
            self._spawn(q, gen)
        else:
            loop.call_soon_threadsafe(self._spawn, q, gen)

    def _spawn(self, q: _Queue, gen: int) -> None:
        task = asyncio.get_running_loop().create_task(self._consume(q, gen))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _in_loop_thread(self, loop: asyncio.AbstractEventLoop) -> bool:
        return self._loop_thread == threading.get_ident() and loop.is_running()

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        """The loop consumers run on: the current one if alive, else the caller's running loop,
        else a background loop thread. Rebinding moves every queue to the new loop."""
        loop = self._loop
        if loop is not None and not loop.is_closed() and loop.is_running():
            return loop
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None:
            self._loop, self._loop_thread = running, threading.get_ident()
        else:
            self._start_background_loop()
        assert self._loop is not None
        if loop is not None and loop is not self._loop:
            self._move_queues()
        return self._loop

    def _start_background_loop(self) -> None:
        loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(started.set)
            loop.run_forever()

        thread = threading.Thread(target=run, name="relayq-loop", daemon=True)
        thread.start()
        started.wait()
        self._loop, self._loop_thread, self._bg_thread = loop, thread.ident, thread

    def _move_queues(self) -> None:
        # The previous loop is gone (closed or stopped): its consumer tasks will never run again.
        # Restart every queue's consumer on the new loop; a batch caught mid-delivery is resent.
        self._tasks = set()
        for q in [*self._queues.values(), *self._singles]:
            q.gen += 1
            q.waker = None
            q.waiting = False
            q.redeliver()
            self._start_consumer(q)

    # ================================================================ consumer

    async def _consume(self, q: _Queue, gen: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            waker: asyncio.Future[None] | None = None
            with self._lock:
                if q.gen != gen:
                    return
                action = q.next_action(self.clock(), self._exiting)
                if action.kind == DONE:
                    q.closed = True  # first close, then look: see enqueue's fast path
                    if q.entries:
                        q.closed = False
                        continue
                    self._remove(q)
                    return
                if action.kind == WAIT:
                    waker = q.waker = loop.create_future()
            if waker is not None:
                handle = loop.call_later(action.delay, _resolve, waker)
                try:
                    await waker
                finally:
                    handle.cancel()
            elif action.kind == SLEEP:
                await asyncio.sleep(action.delay)
            elif action.kind == DELIVER:
                assert action.batch is not None
                if self._blocked:
                    with self._lock:
                        self._space.notify_all()  # a batch left: blocked producers may go on
                r = await self._call(q, action.batch)
                with self._lock:
                    if q.gen != gen:
                        return
                    lost = q.on_result(self.clock(), r.error, ok=r.ok, permanent=r.permanent,
                                       retry_after=r.retry_after)
                if r.ok or lost is not None:
                    self._batch_ids.pop(id(action.batch), None)
                if lost is not None and q.conf.dead_letter is not None:
                    await self._dead_letter(q, lost)
                if q.spool is not None and (r.ok or lost is not None):
                    q.spool.ack([seq for seq, _ in action.batch])

    def _remove(self, q: _Queue) -> None:
        # Called with the lock held.
        if q in self._singles:
            self._singles.discard(q)
        elif self._queues.get(q.key) is q:
            del self._queues[q.key]
            q.qlog.flush()
            q.qlog(m.TRACE, m.DONE_PROCESSING)

    async def _call(self, q: _Queue, batch: list[Any]) -> Outcome:
        """One handler attempt, with the batch's identity visible to the handler."""
        info = self._batch_info(q, batch)
        if q.spool is not None:
            batch = [value for _, value in batch]
        token = _current_batch.set(info)
        start = time.perf_counter()
        try:
            # handler_conf is the latest enqueuer's, re-read on every attempt (Kong)
            return await attempt(q.handler, q.is_async, q.handler_conf, batch,
                                 q.conf.handler_timeout, self._threads)
        finally:
            _current_batch.reset(token)
            q.counters.observe_handler(time.perf_counter() - start)

    def _batch_info(self, q: _Queue, batch: list[Any]) -> BatchInfo:
        entry = self._batch_ids.get(id(batch))
        if entry is None or entry[0] is not batch:
            if q.spool is not None and batch:
                # Spool sequence numbers survive restarts, so the id does too.
                batch_id = f"{label(q.key)}-{batch[0][0]}-{batch[-1][0]}"
            else:
                self._batch_seq += 1
                batch_id = f"{self._uid}-{self._batch_seq}"
            entry = self._batch_ids[id(batch)] = (batch, batch_id, 0)
        attempt = entry[2] + 1
        self._batch_ids[id(batch)] = (batch, entry[1], attempt)
        return BatchInfo(entry[1], q.conf.name, attempt, len(batch))

    async def _dead_letter(self, q: _Queue, lost: Lost) -> None:
        """Park a batch given up on in the dead-letter store (off the loop: it is disk I/O)."""
        settings = q.conf.dead_letter
        assert settings is not None
        store = self._dead_letter_stores.get(settings.path)
        if store is None:
            store = self._storage().open_dead_letters(settings)
            self._dead_letter_stores[settings.path] = store
        values = [v for _, v in lost.entries] if q.spool is not None else lost.entries
        entries = [encode_entry(v) for v in values]
        try:
            await self._threads.run(lambda: store.add(
                q.conf.name, entries, lost.error, lost.attempts, None))
        except Exception as exc:  # the store failed: the entries are lost after all
            with self._lock:
                q.counters.dead_lettered -= len(lost.entries)
                q.counters.drop(lost.reason, len(lost.entries))
            log.error("[%s] queue %s: could not write %d entries to dead letters: %s",
                      q.conf.log_tag or "", q.conf.name, len(lost.entries), exc)

    def _storage(self) -> Storage:
        return self.storage if self.storage is not None else default_storage()

    def _wake(self, waker: asyncio.Future[None]) -> None:
        loop = waker.get_loop()
        if self._loop_thread == threading.get_ident():
            _resolve(waker)
        else:
            with contextlib.suppress(RuntimeError):  # loop closed: its consumer is gone
                loop.call_soon_threadsafe(_resolve, waker)

    # ================================================================ draining and shutdown

    def pending(self) -> bool:
        """Anything waiting or in flight in any queue."""
        return any(not q.idle for q in (*self._queues.values(), *self._singles))

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queue is empty and no delivery is in progress; True if it happened
        within ``timeout``. Does not stop anything or shorten coalescing."""
        return bool(await self._on_loop(self._drain_here(timeout)))

    def flush(self, timeout: float | None = None) -> bool:
        """``drain`` for synchronous code (not from the runtime's own loop thread)."""
        return bool(self._run_sync(self._drain_here(timeout), timeout, default=True))

    async def _drain_here(self, timeout: float | None) -> bool:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            tasks = [t for t in self._tasks if not t.done()]
            if not tasks:
                return not self.pending()
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            await asyncio.wait(tasks, timeout=remaining)

    async def aclose(self, timeout: float | None = None) -> int:
        """Flush every queue with best-effort batching (coalescing cut to 0.05 s) until
        ``timeout`` (None: until every queue is delivered or given up); then give up on the
        rest. Returns, and logs, how many entries were not delivered."""
        return int(await self._on_loop(self._close_here(timeout)))

    def shutdown(self, timeout: float | None = None) -> int:
        """``aclose`` for synchronous code; must not be called from the runtime's loop thread."""
        return int(self._run_sync(self._close_here(timeout), None, default=0))

    async def _close_here(self, timeout: float | None) -> int:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        with self._lock:
            lost_before = self._total_dropped()
            kept_before = sum(c.kept_in_spool for c in self._counters.values())
            self._exiting = True
            wakers = [q.waker for q in self._queues.values() if q.waker is not None]
            for q in self._queues.values():
                q.waker = None
        for w in wakers:
            _resolve(w)
        try:
            while True:
                tasks = [t for t in self._tasks if not t.done()]
                if not tasks:
                    break
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    for t in tasks:
                        t.cancel()
                    await asyncio.wait(tasks, timeout=1.0)
                    break
                await asyncio.wait(tasks, timeout=remaining)
            with self._lock:
                abandoned = 0
                for q in [*self._queues.values(), *self._singles]:
                    q.closed = True
                    abandoned += q.abandon("shutdown")
                    q.gen += 1
                self._queues.clear()
                self._singles.clear()
                lost = self._total_dropped() - lost_before
                kept = sum(c.kept_in_spool for c in self._counters.values()) - kept_before
                spools = list(self._spools.values())
                self._spools.clear()
        finally:
            self._exiting = False
        for store in spools:  # flushed to disk; reopened (and replayed) on the next use
            await asyncio.get_running_loop().run_in_executor(None, store.close)
        if kept:
            log.warning(m.SHUTDOWN_KEPT, kept)
        if abandoned:
            log.error(m.SHUTDOWN_LOST, abandoned)
        if lost:
            log.warning("shutdown: %d queue entries were not delivered", lost)
        return lost

    def _total_dropped(self) -> int:
        return sum(sum(c.dropped.values()) for c in self._counters.values())

    async def _on_loop(self, coro: Any) -> Any:
        """Run ``coro`` on the runtime's loop and await it from the caller's loop."""
        running = asyncio.get_running_loop()
        with self._lock:
            loop = self._loop
            alive = loop is not None and not loop.is_closed() and loop.is_running()
            if not alive or loop is running:
                if loop is not running:
                    self._loop, self._loop_thread = running, threading.get_ident()
                    if loop is not None:
                        self._move_queues()
                loop = None
        if loop is None:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    def _run_sync(self, coro: Any, timeout: float | None, *, default: Any) -> Any:
        with self._lock:
            loop = self._loop
            if loop is not None and self._in_loop_thread(loop):
                coro.close()
                raise RuntimeError(
                    "this call would block the event loop the queues run on; "
                    "use 'await runtime.aclose()' or 'await runtime.drain()' instead"
                )
            alive = loop is not None and not loop.is_closed() and loop.is_running()
            if not alive:
                if not self.pending():
                    coro.close()
                    return default
                self._start_background_loop()
                self._move_queues()
            loop = self._loop
            assert loop is not None
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    # ================================================================ fork

    def _after_fork(self) -> None:
        """In a forked child: start clean; the parent's entries are the parent's to send."""
        self._threads.reset()
        self.warning_throttle.reset()
        self._init_state()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


_RUNTIMES: weakref.WeakSet[Runtime] = weakref.WeakSet()


def _reset_all_after_fork() -> None:
    for rt in list(_RUNTIMES):
        rt._after_fork()


os.register_at_fork(after_in_child=_reset_all_after_fork)
