"""Entries/s through a relayq queue into a local HTTP receiver, beside a hand-written loop.

Both variants JSON-encode batches of 1000 entries (orjson) and POST them with one pooled
httpx.AsyncClient to a receiver running in another process; the ratio relayq / hand-written is
the result. Also prints how much the process grows when 1,000,000 entries are enqueued against a
dead receiver with max_entries 10000 (memory must stay bounded by the queue, not the traffic).

    python bench/throughput.py [--entries 200000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from relayq import QueueConfig, Runtime

BATCH = 1000
YIELD_EVERY = 100  # entries the relayq producer makes between yields to the event loop
ENTRY = {"request": {"method": "GET", "uri": "/status/200", "size": 120},
         "response": {"status": 200, "size": 532}, "latencies": {"kong": 1, "proxy": 3},
         "client_ip": "127.0.0.1", "started_at": 1700000000000}


def start_receiver() -> tuple[subprocess.Popen[bytes], str]:
    port_file = Path(tempfile.mkdtemp()) / "port"
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("_receiver.py")),
                             str(port_file)])
    deadline = time.monotonic() + 10
    while not port_file.exists() or not port_file.read_text():
        if time.monotonic() > deadline:
            raise RuntimeError("receiver did not start")
        time.sleep(0.01)
    return proc, f"http://127.0.0.1:{port_file.read_text()}/log"


async def hand_written(url: str, n: int) -> float:
    async with httpx.AsyncClient() as client:
        t0 = time.perf_counter()
        pending: list[Any] = []
        for _ in range(n):
            pending.append(dict(ENTRY))
            if len(pending) == BATCH:
                r = await client.post(url, content=orjson.dumps(pending),
                                      headers={"content-type": "application/json"})
                assert r.status_code == 200
                pending = []
        if pending:
            await client.post(url, content=orjson.dumps(pending))
        return n / (time.perf_counter() - t0)


async def through_relayq(url: str, n: int) -> float:
    rt = Runtime()
    async with httpx.AsyncClient() as client:

        async def handler(conf: Any, entries: list[Any]) -> bool:
            r = await client.post(url, content=orjson.dumps(entries),
                                  headers={"content-type": "application/json"})
            return r.status_code == 200

        conf = QueueConfig(name="bench", max_batch_size=BATCH, max_coalescing_delay=0.05,
                           max_entries=min(n, 1_000_000))
        t0 = time.perf_counter()
        for i in range(n):
            rt.enqueue(conf, handler, None, dict(ENTRY))
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                # A server yields between requests; and a producer that outruns its sender
                # for long would only be dropping entries, so keep a steady state of about 2
                # batches waiting (what the hand-written loop gets by awaiting each POST).
                # stats() costs a few µs, so it is looked at once per batch, not per yield.
                await asyncio.sleep(0)
                if i % BATCH == BATCH - 1:
                    while rt.stats()["bench"].depth > 2 * BATCH:
                        await asyncio.sleep(0.0005)  # idle like a server between requests
        assert await rt.drain(60)
        rate = n / (time.perf_counter() - t0)
        s = rt.stats()["bench"]
        assert s.entries_sent == n, s
        return rate


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_bound() -> tuple[float, float]:
    """(MB grown after 1M enqueues to a dead receiver, MB of the entries the queue may hold)."""
    rt = Runtime()

    async def dead(conf: Any, entries: list[Any]) -> Any:
        return False, "connection refused"

    conf = QueueConfig(name="dead", max_entries=10000, max_batch_size=BATCH,
                       initial_retry_delay=10, max_retry_time=3600)
    payload = orjson.dumps(ENTRY).decode()
    gc.collect()
    before = rss_bytes()
    for i in range(1_000_000):
        rt.enqueue(conf, dead, None, payload + str(i))  # distinct strings, like real logs
    gc.collect()
    grown = rss_bytes() - before
    one = sys.getsizeof(payload + "1000000") + 8  # the string plus its deque slot
    held = 10000 + BATCH  # max_entries waiting + one batch in flight
    s = rt.stats()["dead"]
    assert s.depth <= 10000 and s.in_flight <= BATCH, s  # Kong: the batch in flight is extra
    rt.shutdown(0.5)
    return grown / 1e6, one * held / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--entries", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    proc, url = start_receiver()
    try:
        hw: list[float] = []
        rq: list[float] = []
        for round_ in range(args.rounds):
            # Alternate which goes first, so a drift of the machine within a round hits both.
            order = [(hw, hand_written), (rq, through_relayq)]
            for results, variant in order if round_ % 2 == 0 else order[::-1]:
                results.append(asyncio.run(variant(url, args.entries)))
        received = int(httpx.get(url.replace("/log", "/count")).text)
        assert received == 2 * args.rounds * args.entries, received  # nothing lost on the way
    finally:
        proc.terminate()
        proc.wait()
    h, r = statistics.median(hw), statistics.median(rq)
    print(f"{'variant':28} {'entries/s':>12}")
    print(f"{'hand-written encode+POST':28} {h:12,.0f}")
    print(f"{'relayq queue (batch 1000)':28} {r:12,.0f}")
    print(f"ratio relayq / hand-written: {r / h:.2f}x (target >= 1.0x)")
    grown, ten_k = memory_bound()
    print(f"memory: 1,000,000 enqueues to a dead receiver grew the process by {grown:.1f} MB; "
          f"the 11000 entries it may hold (10000 waiting + a batch of 1000 in flight) occupy "
          f"about {ten_k:.1f} MB")


if __name__ == "__main__":
    main()
