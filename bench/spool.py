"""Cost of the durable spool: hot-path append, durable throughput, replay after restart.

Prints medians of a few interleaved rounds and ratios against baselines measured in the same
run (absolute numbers mean little on a shared machine; the ratios are the result):

- hot path: ``Spool.append`` (group commit every 50 ms, fsync on, writer thread running)
  against ``deque.append``; and ``relayq.enqueue`` with an ``encode_entry`` + ``Spool.append``
  added, against ``relayq.enqueue`` alone: the hot path with the spool on versus off
  (issue 5's target: <= 3x).
- durable throughput: entries/s from the first append until ``wait_durable`` confirms them,
  with group commit, and with ``commit_interval=0`` (one fsync per append or per batch).
- replay: entries/s to open a spool left by a previous process and read back what is pending.
- ``--compare``: the log format against SQLite in WAL mode (synchronous=FULL) on the same
  batches, the measurement behind the choice documented in ``relayq/durable/_spool.py``.

    python bench/spool.py [--rounds 5] [--n 20000] [--compare]
"""

from __future__ import annotations

import argparse
import collections
import functools
import shutil
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relayq import QueueConfig, Runtime
from relayq.durable import Spool
from relayq.durable._spoolfile import SpoolFile
from relayq.queue import encode_entry

ENTRY = "x" * 200
VALUE = encode_entry(ENTRY)


async def _ok(conf: Any, entries: list[Any]) -> bool:
    return True


BLOCK = 100  # calls per timed block


def _per_call(n: int, call: Callable[[], object]) -> tuple[float, float]:
    """(median ns per call over blocks of BLOCK calls, mean ns per call over all of them).

    The median is what one call costs its caller; the mean also carries the background
    threads' share of the interpreter lock (the spool's writer encoding, the queue's consumer),
    which only shows when a program does nothing but append.
    """
    blocks = []
    for _ in range(n // BLOCK):
        t0 = time.perf_counter_ns()
        for _ in range(BLOCK):
            call()
        blocks.append(time.perf_counter_ns() - t0)
    return statistics.median(blocks) / BLOCK, sum(blocks) / (len(blocks) * BLOCK)


def bench_deque(n: int, _: Path) -> tuple[float, float]:
    d: collections.deque[bytes] = collections.deque()
    return _per_call(n, functools.partial(d.append, VALUE))


def bench_spool_append(n: int, tmp: Path) -> tuple[float, float]:
    with Spool(tmp / "hot.spool", commit_interval=0.05) as spool:
        result = _per_call(n, functools.partial(spool.append, VALUE))
    (tmp / "hot.spool").unlink()
    return result


def _in_thread(n: int, body: Callable[[], object]) -> tuple[float, float]:
    """Time ``body`` from a producer thread while the runtime's loop thread consumes."""
    result: list[tuple[float, float]] = []
    thread = threading.Thread(target=lambda: result.append(_per_call(n, body)))
    thread.start()
    thread.join()
    return result[0]


def bench_enqueue(n: int, _: Path) -> tuple[float, float]:
    rt = Runtime()
    conf = QueueConfig(name="bench-off", max_batch_size=1000, max_coalescing_delay=0.05,
                       max_entries=1_000_000)
    rt.enqueue(conf, _ok, None, ENTRY)  # start the loop outside the timing
    result = _in_thread(n, functools.partial(rt.enqueue, conf, _ok, None, ENTRY))
    rt.shutdown(30)
    return result


def bench_enqueue_spooled(n: int, tmp: Path) -> tuple[float, float]:
    """What the engine adds to ``enqueue`` with a spool: encode the entry, append it."""
    rt = Runtime()
    conf = QueueConfig(name="bench-on", max_batch_size=1000, max_coalescing_delay=0.05,
                       max_entries=1_000_000)
    enqueue = rt.enqueue
    enqueue(conf, _ok, None, ENTRY)
    with Spool(tmp / "enqueue.spool", commit_interval=0.05) as spool:
        append = spool.append

        def both() -> None:
            enqueue(conf, _ok, None, ENTRY)
            append(encode_entry(ENTRY))

        result = _in_thread(n, both)
    rt.shutdown(30)
    (tmp / "enqueue.spool").unlink()
    return result


def durable_throughput(n: int, tmp: Path, interval: float, batch: int = 1) -> float:
    """Entries/s from the first append until all are confirmed on disk."""
    path = tmp / f"tput-{interval}-{batch}.spool"
    with Spool(path, commit_interval=interval) as spool:
        t0 = time.perf_counter()
        if batch == 1:
            append = spool.append
            for _ in range(n):
                append(VALUE)
        else:
            values = [VALUE] * batch
            for _ in range(n // batch):
                spool.append_many(values)
        assert spool.wait_durable(60)
        elapsed = time.perf_counter() - t0
        commits = spool.commits
    path.unlink()
    if interval > 0:
        print(f"    ({n} entries in {commits} group commits)")
    return n / elapsed


def replay_speed(n: int, tmp: Path) -> float:
    path = tmp / "replay.spool"
    with Spool(path, commit_interval=0.05) as spool:
        spool.append_many([VALUE] * n)
    t0 = time.perf_counter()
    with Spool(path) as spool:
        pending = spool.pending()
    elapsed = time.perf_counter() - t0
    assert len(pending) == n
    path.unlink()
    return n / elapsed


# ----------------------------------------------------------------------------- --compare

def compare(n: int, tmp: Path, group: int = 1000) -> None:
    """The log format and SQLite (WAL, synchronous=FULL), same batches, same thread."""
    items = [(i, VALUE) for i in range(1, n + 1)]
    batches = [items[i:i + group] for i in range(0, n, group)]

    log_path = tmp / "cmp.spool"
    log = SpoolFile(log_path, fsync=True, on_corruption="salvage")
    t0 = time.perf_counter()
    for batch in batches:
        log.write(batch, [], None)
    log_write = time.perf_counter() - t0
    t0 = time.perf_counter()
    for batch in batches[: len(batches) // 2]:
        log.write([], [seq for seq, _ in batch], None)
    log_ack = (time.perf_counter() - t0) / max(1, len(batches) // 2)
    log.close()
    t0 = time.perf_counter()  # a restart: open (one checked scan) and read what is pending
    log = SpoolFile(log_path, fsync=True, on_corruption="salvage")
    replayed = len(log.read_live()[0])
    log_replay = time.perf_counter() - t0
    log.close()

    db_path = tmp / "cmp.db"
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE entries (seq INTEGER PRIMARY KEY, value BLOB NOT NULL)")
    t0 = time.perf_counter()
    for batch in batches:
        db.execute("BEGIN")
        db.executemany("INSERT INTO entries VALUES (?, ?)", batch)
        db.execute("COMMIT")
    db_write = time.perf_counter() - t0
    t0 = time.perf_counter()
    for batch in batches[: len(batches) // 2]:
        db.execute("BEGIN")
        db.execute("DELETE FROM entries WHERE seq BETWEEN ? AND ?", (batch[0][0], batch[-1][0]))
        db.execute("COMMIT")
    db_ack = (time.perf_counter() - t0) / max(1, len(batches) // 2)
    db.close()
    t0 = time.perf_counter()
    db = sqlite3.connect(db_path)
    db_replayed = len(db.execute("SELECT seq, value FROM entries ORDER BY seq").fetchall())
    db_replay = time.perf_counter() - t0
    db.close()
    assert replayed == db_replayed

    print(f"\n--compare: {n} entries of {len(VALUE)} bytes, {group} per commit, fsync on")
    print(f"{'':24} {'log':>14} {'sqlite wal':>14} {'log / sqlite':>13}")
    rows = [("durable writes /s", n / log_write, n / db_write),
            ("ack commit (ms)", log_ack * 1e3, db_ack * 1e3),
            ("replay entries /s", replayed / log_replay, db_replayed / db_replay)]
    for name, a, b in rows:
        print(f"{name:24} {a:14.2f} {b:14.2f} {a / b:13.2f}")
    print(f"{'truncated at half':24} {_log_after_cut(log_path):>14} {_db_after_cut(db_path):>14}")


def _log_after_cut(path: Path) -> str:
    cut = path.with_name("cut.spool")
    shutil.copy(path, cut)
    with cut.open("r+b") as f:
        f.truncate(cut.stat().st_size // 2)
    with Spool(cut) as spool:
        return f"{len(spool.pending())} kept"


def _db_after_cut(path: Path) -> str:
    cut = path.with_name("cut.db")
    shutil.copy(path, cut)
    with cut.open("r+b") as f:
        f.truncate(cut.stat().st_size // 2)
    try:
        db = sqlite3.connect(cut)
        return f"{len(db.execute('SELECT seq FROM entries').fetchall())} kept"
    except sqlite3.DatabaseError as exc:
        return f"error: {str(exc)[:20]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--compare", action="store_true", help="also measure SQLite in WAL mode")
    args = ap.parse_args()
    n = args.n
    with tempfile.TemporaryDirectory(prefix="relayq-bench-", dir=".") as tmpdir:
        tmp = Path(tmpdir)
        med: dict[str, list[float]] = collections.defaultdict(list)
        mean: dict[str, list[float]] = collections.defaultdict(list)
        for _ in range(args.rounds):  # interleaved, so drift hits every variant alike
            for name, fn in (("deque.append", bench_deque),
                             ("Spool.append", bench_spool_append),
                             ("enqueue (spool off)", bench_enqueue),
                             ("enqueue + spool.append", bench_enqueue_spooled)):
                per_call, per_call_mean = fn(n, tmp)
                med[name].append(per_call)
                mean[name].append(per_call_mean)
        m = {k: statistics.median(v) for k, v in med.items()}
        a = {k: statistics.median(v) for k, v in mean.items()}
        print(f"hot path, {n} calls x {args.rounds} rounds: ns per call "
              f"(median of {BLOCK}-call blocks; mean incl. background threads)")
        for k in m:
            print(f"  {k:28} {m[k]:8.0f} ns {a[k]:8.0f} ns")
        print(f"  Spool.append / deque.append  {m['Spool.append'] / m['deque.append']:7.2f}x "
              f"{a['Spool.append'] / a['deque.append']:9.2f}x")
        on, off = "enqueue + spool.append", "enqueue (spool off)"
        print(f"  enqueue spool on / off       {m[on] / m[off]:7.2f}x {a[on] / a[off]:9.2f}x"
              f"   (target <= 3x)")

        print("\ndurable throughput (appended until wait_durable confirms)")
        total = n * 5
        print(f"  group commit 50 ms: {durable_throughput(total, tmp, 0.05):10.0f} entries/s")
        print(f"  group commit 5 ms:  {durable_throughput(total, tmp, 0.005):10.0f} entries/s")
        sync_n = max(200, n // 20)
        print(f"  commit_interval 0, one append at a time: "
              f"{durable_throughput(sync_n, tmp, 0.0):10.0f} entries/s")
        print(f"  commit_interval 0, append_many(100):      "
              f"{durable_throughput(total, tmp, 0.0, batch=100):10.0f} entries/s")

        print("\nreplay after restart (open + pending)")
        print(f"  {total} entries: {replay_speed(total, tmp):10.0f} entries/s")
        if args.compare:
            compare(total, tmp)


if __name__ == "__main__":
    main()
