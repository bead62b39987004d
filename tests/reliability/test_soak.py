"""Soak: the gateway (``relayq serve``, one worker) under ``wrk`` with all five plugins sending
to local sinks, for seconds (minutes with ``--long``).

The worker is measured from /proc while idle before and after the load (so request buffers in
flight do not count): resident memory, open descriptors, sockets and threads must come back to
where they were, and the idle worker must not burn CPU (a leaked task or connection that
spins shows up there). Its status listener must show every queue drained with nothing dropped,
and the http-log sink must have received exactly as many entries as the queue says it sent.
"""

from __future__ import annotations

import statistics
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.reliability._gateway import (
    CountingSink,
    Served,
    UdpCounter,
    Upstream,
    ensure_wrk,
    run_wrk,
)
from tests.reliability._probe import cpu_seconds, open_fds, rss_bytes, socket_fds, threads
from tests.reliability._probe import wait_until as poll
from tests.reliability.conftest import Figures

MB = 1 << 20


def soak_config(upstream: str, sink: str, udp: int) -> str:
    # Batches of 500, as bench/gateway.py and a busy production setup use. Each queue has one
    # batch in flight (Kong's model), and under wrk the loop is saturated, so every await of a
    # POST waits a turn of a busy loop: about 10 ms a POST. With batches of 200, the
    # OpenTelemetry queue (3 spans a request) would need ~17k spans/s from a consumer that can
    # do ~20k/s, and a long soak would end in counted capacity drops.
    queue = "queue: {max_batch_size: 500, max_coalescing_delay: 0.2}"
    return textwrap.dedent(f"""\
        _format_version: "3.0"
        services:
          - name: soak
            url: {upstream}
            routes:
              - name: all
                paths: [/]
        plugins:
          - name: http-log
            config: {{http_endpoint: "{sink}/logs", {queue}}}
          - name: statsd
            config: {{host: 127.0.0.1, port: {udp}, {queue}}}
          - name: datadog
            config: {{host: 127.0.0.1, port: {udp}, {queue}}}
          - name: opentelemetry
            config: {{traces_endpoint: "{sink}/v1/traces", {queue}}}
          - name: zipkin
            config: {{http_endpoint: "{sink}/api/v2/spans", sample_ratio: 1, {queue}}}
        """)


def snapshot(pid: int) -> dict[str, float]:
    """The worker's footprint, as the operating system sees it."""
    return {"rss_mb": rss_bytes(pid) / MB, "fds": open_fds(pid), "sockets": socket_fds(pid),
            "threads": threads(pid)}


def idle_cpu(pid: int, seconds: float = 1.0) -> float:
    """CPU seconds the process used over ``seconds`` of wall time (it should be ~0 when idle)."""
    before = cpu_seconds(pid)
    time.sleep(seconds)  # measuring a rate over an interval, not waiting for a condition
    return cpu_seconds(pid) - before


@pytest.mark.slow
def test_gateway_soak_under_wrk_keeps_memory_and_descriptors_flat(
    tmp_path: Path, long_run: bool, figures: Figures,
) -> None:
    ensure_wrk()
    seconds = 180.0 if long_run else 8.0
    with Upstream() as upstream, CountingSink() as sink, UdpCounter() as udp:
        gw = Served(tmp_path, soak_config(upstream.url, sink.url, udp.port)).wait_ready()
        try:
            target = gw.url + "/soak/items?page=1"
            warm = run_wrk(target, 3)  # pools, caches and allocator arenas fill up here
            assert warm.errors == 0, warm
            poll(gw.idle, 30, "the queues to drain after the warm-up", interval=0.1)
            before = snapshot(gw.pid)
            cpu_before = idle_cpu(gw.pid)
            samples: list[float] = []  # RSS under load, every half second
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(0.5):
                    samples.append(rss_bytes(gw.pid) / MB)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            try:
                load = run_wrk(target, seconds)
            finally:
                stop.set()
                sampler.join(5)
            assert load.errors == 0, load
            # Still serving.
            assert httpx.get(gw.url + "/soak/after", timeout=5).status_code == 200
            poll(gw.idle, 30, "the queues to drain after the load", interval=0.1)
            after = snapshot(gw.pid)
            cpu_after = idle_cpu(gw.pid)
            queues = gw.status()
        finally:
            code = gw.stop()
        assert code == 0, gw.output()[-3000:]
        # Nothing lost: every queue sent all it accepted, and dropped nothing.
        assert len(queues) == 5, sorted(queues)
        for name, q in queues.items():
            assert q["sent"] == q["enqueued"] and not any(q["dropped"].values()), (name, q)
        http_log = next(q for name, q in queues.items() if "/logs" in name)
        poll(lambda: sink.entries >= http_log["sent"], 10, "the sink to count every entry")
        assert sink.entries == http_log["sent"] >= warm.requests + load.requests
        # Flat footprint: the idle worker after the load looks like the idle worker before it.
        growth = after["rss_mb"] - before["rss_mb"]
        assert growth < max(16.0, 0.2 * before["rss_mb"]), (before, after)
        assert after["fds"] - before["fds"] <= 4, (before, after)
        assert after["sockets"] - before["sockets"] <= 4, (before, after)
        assert after["threads"] <= before["threads"] + 1, (before, after)
        assert cpu_after < 0.2 and cpu_before < 0.2, (cpu_before, cpu_after)
        # Under load too: the last third of the run holds no more memory than the first
        # third did (a leak of even a few hundred bytes a request shows over minutes).
        # Medians, not maxima: under load RSS saw-tooths by 10-20 MB as batches of 500 spans
        # are built, encoded and freed, so a single peak says nothing about a trend; a leak
        # moves the whole third, and so its median.
        third = max(1, len(samples) // 3)
        early, late = statistics.median(samples[:third]), statistics.median(samples[-third:])
        assert late - early < 8.0, samples
        figures.record("soak", seconds=round(load.seconds, 1), requests=load.requests,
                       rps=round(load.rps), wrk_errors=load.errors,
                       entries_sent=sum(q["sent"] for q in queues.values()),
                       dropped=sum(sum(q["dropped"].values()) for q in queues.values()),
                       lost=http_log["sent"] - sink.entries,
                       rss_before_mb=round(before["rss_mb"], 1),
                       rss_after_mb=round(after["rss_mb"], 1),
                       rss_peak_mb=round(max(samples), 1),
                       rss_load_early_mb=round(early, 1), rss_load_late_mb=round(late, 1),
                       fds_before=before["fds"],
                       fds_after=after["fds"], threads_before=before["threads"],
                       threads_after=after["threads"], udp_datagrams=udp.datagrams)
