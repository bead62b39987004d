"""The gateway's listening socket: what every accepted connection inherits from it."""

from __future__ import annotations

import socket
import statistics
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from relayq.gateway._server import bind
from tests.gateway.conftest import GatewayProcess, free_port
from tests.gateway.upstream import Upstream

Start = Callable[..., GatewayProcess]


def test_accepted_connections_have_nagle_off() -> None:
    listener = bind(f"127.0.0.1:{free_port()}")
    try:
        with socket.create_connection(listener.getsockname()[:2]):
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        listener.close()


def test_keep_alive_requests_do_not_wait_for_delayed_acks_on_the_standard_loop(
        gateway_process: Start, upstream: Upstream, tmp_path: Path) -> None:
    """Without uvloop, the standard asyncio loop serves the gateway; with Nagle's algorithm on
    (the bug this guards against) every request after the first on a connection took 40 ms,
    the client's delayed ACK. A healthy gateway answers in about a millisecond."""
    hide = tmp_path / "no-uvloop"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text('import sys\nsys.modules["uvloop"] = None\n')
    src = Path(__file__).resolve().parents[2] / "src"
    config = textwrap.dedent(f"""\
        _format_version: "3.0"
        services:
          - name: up
            url: {upstream.url}
            routes:
              - name: all
                paths: [/]
        """)
    gw = gateway_process(config, env={"PYTHONPATH": f"{hide}:{src}"})
    times = []
    with httpx.Client(base_url=gw.url) as client:
        for _ in range(12):
            start = time.perf_counter()
            assert client.get("/").status_code == 200
            times.append(time.perf_counter() - start)
    assert statistics.median(times[1:]) < 0.02, times
