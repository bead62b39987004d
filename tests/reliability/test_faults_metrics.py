"""Fault injection against the metric senders: statsd over UDP and TCP, datadog over UDP.

These senders follow Kong: a batch fails (and is retried) only when the socket cannot be
opened; a datagram or line that cannot be written is logged and skipped, so a retry never
duplicates metrics that did go out (Kong #10052/#10044). What that means under each fault is
pinned here, counted exactly at real listeners behind a fault proxy:

- TCP refused: the batch is retained and retried; after recovery every line arrives once.
- TCP stalled (the receiver stops reading): lines wait in the kernel and arrive once it reads.
- UDP refused or black-holed, TCP reset: the metrics of that moment are lost *by design* (the
  protocol gives no delivery signal); the loss is measured and reported, never hidden as a
  queue drop, the queue never stalls, the error log stays bounded, and metrics produced after
  recovery all arrive.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest

import relayq
from relayq.plugins import Plugin, create_plugin
from tests.reliability._probe import until
from tests.reliability._rigs import request_context, run_phases
from tests.reliability.conftest import Figures
from tests.support.fault_proxy import (
    PASS,
    REFUSE,
    RESET,
    STALL,
    Fault,
    FaultProxy,
    UdpFaultProxy,
    slow,
)
from tests.support.sockets import TcpListener, UdpListener

QUEUE: dict[str, Any] = {
    "max_batch_size": 10,
    "max_coalescing_delay": 0.05,
    "initial_retry_delay": 0.02,
    "max_retry_delay": 0.16,
    "max_retry_time": 60,
}
REQUESTS = 30


@dataclass
class MetricRig:
    """A metric plugin behind a fault proxy, with a raw listener counting what arrives."""

    name: str
    transport: str
    proxy: FaultProxy | UdpFaultProxy
    lines: Any  # () -> list[bytes]: every line received so far
    plugin: Plugin

    def count(self, service: str) -> int:
        """``request.count`` lines received for ``service``: exactly one per request."""
        return sum(1 for line in self.lines() if b"request.count" in line
                   and service.encode() in line)


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as st:
        yield st


def build(kind: str, rt: relayq.Runtime, stack: ExitStack) -> MetricRig:
    if kind == "statsd-tcp":
        tcp = stack.enter_context(TcpListener())
        proxy: FaultProxy | UdpFaultProxy = stack.enter_context(
            FaultProxy(upstream=("127.0.0.1", tcp.port), http=False))
        config = {"host": "127.0.0.1", "port": proxy.port, "use_tcp": True, "queue": QUEUE}
        plugin = create_plugin("statsd", config, plugin_id=kind, runtime=rt)
        return MetricRig("statsd", "tcp", proxy,
                         lambda: tcp.received.split(b"\n"), plugin)
    udp = stack.enter_context(UdpListener())
    proxy = stack.enter_context(UdpFaultProxy(udp.port))
    name = kind.split("-")[0]
    config = {"host": "127.0.0.1", "port": proxy.port, "queue": QUEUE}
    plugin = create_plugin(name, config, plugin_id=kind, runtime=rt)

    def lines() -> list[bytes]:
        with udp._lock:
            return [line for d in udp.datagrams for line in d.split(b"\n")]

    return MetricRig(name, "udp", proxy, lines, plugin)


CASES = [
    ("statsd-udp", REFUSE), ("statsd-udp", STALL), ("statsd-udp", slow(0.1)),
    ("datadog-udp", REFUSE), ("datadog-udp", STALL), ("datadog-udp", slow(0.1)),
    ("statsd-tcp", REFUSE), ("statsd-tcp", STALL), ("statsd-tcp", slow(0.1)),
    ("statsd-tcp", RESET),
]
# Faults after which every metric produced during the fault still arrives exactly once.
RETAINED = {("statsd-tcp", "refuse"), ("statsd-tcp", "stall"), ("statsd-tcp", "slow"),
            ("statsd-udp", "slow"), ("datadog-udp", "slow")}


@pytest.mark.parametrize(("kind", "fault"), CASES, ids=[f"{k}-{f}" for k, f in CASES])
async def test_metric_sender_under_fault(
    kind: str, fault: Fault, stack: ExitStack, caplog: pytest.LogCaptureFixture,
    figures: Figures,
) -> None:
    caplog.set_level(logging.WARNING)
    rt = relayq.Runtime()
    try:
        rig = build(kind, rt, stack)
        name = kind  # the plugin id is the queue name
        began = time.monotonic()
        rig.proxy.fault = fault
        for i in range(REQUESTS):
            run_phases([rig.plugin], request_context(i, service="during"))
        retained = (kind, fault.kind) in RETAINED

        def describe() -> str:
            return f"stats={rt.stats().get(name)} received={rig.count('during')}"

        if fault.kind == "refuse" and rig.transport == "tcp":
            # Connecting fails: the batch is kept and retried, nothing is counted as sent.
            await until(lambda: rt.stats()[name].failures >= 3, 10, "retried connects",
                        describe)
            s = rt.stats()[name]
            assert s.entries_sent == 0 and s.dropped_total == 0, s
            assert "failed to connect" in (s.last_error or ""), s
        else:
            # Kong semantics: the socket opened, so the batch counts as sent (no retries that
            # could duplicate metrics), and the queue moves on.
            await until(lambda: rt.stats()[name].entries_sent == REQUESTS, 10,
                        "the batches handled", describe)
            s = rt.stats()[name]
            assert s.dropped_total == 0, s
            # A reset can also hit the connect (then the batch is retried, Kong's way).
            assert s.retries == 0 or fault.kind == "reset", s
        if fault.kind != "refuse":
            rig.proxy.wait_for(lambda p: p.count(fault.kind) >= 1, 10, "the fault exercised")
        rig.proxy.fault = PASS
        if retained:
            await until(lambda: rig.count("during") == REQUESTS, 10,
                        "every metric of the fault period", describe)
        for i in range(REQUESTS):
            run_phases([rig.plugin], request_context(REQUESTS + i, service="after"))
        await until(lambda: rig.count("after") == REQUESTS, 10,
                    "every metric produced after recovery", describe)
        await until(lambda: rt.stats()[name].depth == 0 and rt.stats()[name].in_flight == 0,
                    10, "the queue to drain", describe)
        s = rt.stats()[name]
        assert s.entries_sent == 2 * REQUESTS and s.dropped_total == 0, s
        during = rig.count("during")
        assert during <= REQUESTS and rig.count("after") == REQUESTS  # never duplicated
        if retained:
            assert during == REQUESTS
        send_errors = [r for r in caplog.records if "failed to send data" in r.getMessage()]
        # No log storm: a dead metrics agent costs at most one error line a second (with the
        # number of failed sends in between), not one per datagram.
        elapsed = time.monotonic() - began
        assert len(send_errors) <= 2 + elapsed, [r.getMessage() for r in send_errors[:5]]
        assert [r for r in caplog.records if r.exc_info] == []
        figures.record("fault", sender=rig.name, transport=rig.transport, fault=str(fault),
                       produced=2 * REQUESTS, delivered=during + REQUESTS, duplicates=0,
                       retries=s.retries, dropped=s.dropped_total,
                       lost=(REQUESTS - during) if retained else 0,
                       lost_by_design=0 if retained else REQUESTS - during,
                       error_lines=len(send_errors),
                       seconds=round(time.monotonic() - began, 2))
    finally:
        await rt.aclose(timeout=5)
