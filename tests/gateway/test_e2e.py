"""End to end: ``relayq.gateway.run`` in a subprocess, a real upstream, real receivers, a real
HTTP client; what the log servers received, including across SIGTERM and SIGHUP."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import GatewayProcess, free_port, wait_until
from tests.gateway.upstream import Upstream
from tests.support.http_receiver import HttpReceiver, Reply
from tests.support.sockets import UdpListener
from tests.support.statsd_daemon import StatsdDaemon

Start = Callable[..., GatewayProcess]


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver() as rx:
        yield rx


def kong_yml(upstream: str, receiver: str, *, delay: float = 1000, extra: str = "") -> str:
    """Two routes, key-auth on one, a global http-log coalescing for ``delay`` seconds."""
    return textwrap.dedent(f"""\
        _format_version: "3.0"
        services:
          - name: svc
            url: {upstream}
            routes:
              - name: public
                paths: [/public]
              - name: private
                paths: [/private]
                plugins:
                  - name: key-auth
        consumers:
          - username: alice
            custom_id: alice-001
            keyauth_credentials:
              - key: alice-key
        plugins:
          - name: http-log
            config:
              http_endpoint: {receiver}/logs
              queue:
                max_batch_size: 100
                max_coalescing_delay: {delay}
        """) + textwrap.dedent(extra)


def entries(rx: HttpReceiver) -> list[dict[str, Any]]:
    """Every http-log entry received, except those of the readiness probe."""
    out: list[dict[str, Any]] = []
    for request in rx.requests:
        body = request.json()
        out.extend(body if isinstance(body, list) else [body])
    return [e for e in out if e["request"]["uri"] != "/__ready__"]


def test_sigterm_flushes_entries_still_coalescing(gateway_process: Start, upstream: Upstream,
                                                  receiver: HttpReceiver) -> None:
    status_port = free_port()
    gw = gateway_process(kong_yml(upstream.url, receiver.url), shutdown_timeout=10,
                         status_listen=f"127.0.0.1:{status_port}")
    with httpx.Client(base_url=gw.url) as client:
        assert client.get("/public/a").status_code == 200
        assert client.get("/private/b", headers={"apikey": "alice-key"}).status_code == 200
        assert client.get("/private/c").status_code == 401
        assert client.get("/nowhere").status_code == 404
    # Coalescing for up to 1000 s: nothing was sent yet, all of it is queued in the worker.
    assert receiver.requests == []
    status = httpx.get(f"http://127.0.0.1:{status_port}/status").json()
    (worker,) = status["workers"]
    (queue,) = worker["queues"].values()
    assert queue["depth"] == 5  # the four requests and the readiness probe
    started = time.monotonic()
    assert gw.stop(signal.SIGTERM) == 0, gw.output()
    assert time.monotonic() - started < 10
    got = entries(receiver)
    assert len(receiver.requests) == 1 and len(got) == 4
    by_uri = {e["request"]["uri"]: e for e in got}
    assert set(by_uri) == {"/public/a", "/private/b", "/private/c", "/nowhere"}
    alice = by_uri["/private/b"]
    assert alice["consumer"]["username"] == "alice"
    assert alice["authenticated_entity"]["consumer_id"] == alice["consumer"]["id"]
    assert alice["route"]["name"] == "private"
    assert by_uri["/private/c"]["response"]["status"] == 401
    assert by_uri["/nowhere"]["latencies"]["proxy"] == -1
    assert "every queued entry was delivered" in gw.output()


def test_sigterm_lets_in_flight_requests_finish(gateway_process: Start, upstream: Upstream,
                                                 receiver: HttpReceiver) -> None:
    gw = gateway_process(kong_yml(upstream.url, receiver.url))
    result: dict[str, httpx.Response] = {}

    def slow_request() -> None:
        result["response"] = httpx.get(f"{gw.url}/public/slow?delay=1.5", timeout=10)

    thread = threading.Thread(target=slow_request)
    thread.start()
    wait_until(lambda: any(r.path.startswith("/slow") for r in upstream.requests),
               what="the slow request to reach the upstream")
    gw.send_signal(signal.SIGTERM)
    thread.join(10)
    assert result["response"].status_code == 200
    assert gw.stop() == 0, gw.output()
    assert [e["request"]["uri"] for e in entries(receiver)] == [
        "/public/slow?delay=1.5"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGQUIT])
def test_sigint_and_sigquit_also_flush(signum: int, gateway_process: Start, upstream: Upstream,
                                       receiver: HttpReceiver) -> None:
    gw = gateway_process(kong_yml(upstream.url, receiver.url))
    assert httpx.get(f"{gw.url}/public/x").status_code == 200
    assert gw.stop(signum) == 0, gw.output()
    assert len(entries(receiver)) == 1


def test_undelivered_entries_are_reported_and_fail_the_exit_code(
        gateway_process: Start, upstream: Upstream) -> None:
    with HttpReceiver(default=Reply(500)) as failing:
        gw = gateway_process(kong_yml(upstream.url, failing.url), shutdown_timeout=1.0)
        for _ in range(3):
            assert httpx.get(f"{gw.url}/public/x").status_code == 200
        started = time.monotonic()
        assert gw.stop(signal.SIGTERM) == 1
        assert time.monotonic() - started < 8
        assert failing.requests  # it was tried
        # The three requests and the readiness probe.
        assert "4 queue entries were not delivered" in gw.output()


def test_sighup_reloads_without_losing_queued_entries(gateway_process: Start,
                                                      upstream: Upstream,
                                                      receiver: HttpReceiver) -> None:
    gw = gateway_process(kong_yml(upstream.url, receiver.url))
    for path in ("/public/1", "/public/2"):
        assert httpx.get(gw.url + path).status_code == 200
    assert httpx.get(f"{gw.url}/v2/3").status_code == 404
    new = kong_yml(upstream.url, receiver.url, extra="""\
        routes:
          - name: v2
            service: svc
            paths: [/v2]
        """)
    gw.config_path.write_text(new)
    gw.send_signal(signal.SIGHUP)
    wait_until(lambda: httpx.get(f"{gw.url}/v2/4").status_code == 200, what="the new route")
    # A broken file is refused and the running config kept.
    gw.config_path.write_text("_format_version: '3.0'\nservices: [{name: x}]\n")
    gw.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload failed" in gw.output(), what="the refused reload")
    assert httpx.get(f"{gw.url}/v2/5").status_code == 200
    assert receiver.requests == []
    assert gw.stop() == 0, gw.output()
    uris = sorted(e["request"]["uri"] for e in entries(receiver))
    assert uris == ["/public/1", "/public/2", "/v2/3", "/v2/4", "/v2/5"]
    assert "services[0].host: required field missing" in gw.output()


def test_upstream_errors_streaming_and_consumers_end_to_end(
        gateway_process: Start, upstream: Upstream, receiver: HttpReceiver) -> None:
    extra = """\
        routes:
          - name: dead
            service: dead
            paths: [/dead]
          - name: slow
            service: slow
            paths: [/slow]
            strip_path: false
        """
    config = kong_yml(upstream.url, receiver.url, delay=0.05).replace(
        "consumers:", textwrap.dedent(f"""\
              - name: dead
                url: http://127.0.0.1:{free_port()}
                retries: 1
              - name: slow
                url: {upstream.url}
                read_timeout: 300
                retries: 0
            consumers:"""), 1) + textwrap.dedent(extra)
    gw = gateway_process(config)
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        assert client.get("/dead").status_code == 502
        timed_out = client.get("/slow?delay=2")
        assert timed_out.status_code == 504
        assert timed_out.json()["message"] == "The upstream server is timing out"
        arrivals: list[float] = []
        start = time.monotonic()
        with client.stream("GET", "/public/stream?chunks=3&delay=0.5") as response:
            for _ in response.iter_raw():
                arrivals.append(time.monotonic() - start)
        assert arrivals[0] < 0.7 and arrivals[-1] > 0.9
        upload = client.post("/private/upload?apikey=alice-key",
                             content=(b"x" * 65536 for _ in range(32)))
        assert upload.json()["body_size"] == 32 * 65536
    got = wait_until(lambda: entries(receiver) if len(entries(receiver)) >= 4 else None,
                     what="4 log entries")
    by_uri = {e["request"]["uri"]: e for e in got}
    dead = by_uri["/dead"]
    assert dead["response"]["status"] == 502 and dead["upstream_status"] == "502, 502"
    assert by_uri["/slow?delay=2"]["response"]["status"] == 504
    upload_entry = by_uri["/private/upload?apikey=alice-key"]
    assert upload_entry["consumer"]["username"] == "alice"
    assert upload_entry["request"]["size"] > 32 * 65536
    assert gw.stop() == 0, gw.output()


def test_all_five_plugins_reach_real_receivers(gateway_process: Start, upstream: Upstream,
                                               receiver: HttpReceiver) -> None:
    with StatsdDaemon() as statsd, UdpListener() as dogstatsd:
        config = kong_yml(upstream.url, receiver.url, delay=0.05) + textwrap.indent(
            textwrap.dedent(f"""\
              - name: statsd
                config:
                  host: 127.0.0.1
                  port: {statsd.udp_port}
              - name: datadog
                config:
                  host: 127.0.0.1
                  port: {dogstatsd.port}
              - name: opentelemetry
                config:
                  traces_endpoint: {receiver.url}/v1/traces
                  queue:
                    max_coalescing_delay: 0.05
              - name: zipkin
                config:
                  http_endpoint: {receiver.url}/api/v2/spans
                  sample_ratio: 1
            """), "  ")
        gw = gateway_process(config)
        for _ in range(3):
            response = httpx.get(f"{gw.url}/private/x", headers={"apikey": "alice-key"})
            assert response.status_code == 200
        statsd.wait_until(lambda d: d.counters.get("kong.service.svc.request.count") == 3)
        statsd.wait_until(lambda d: d.counters.get(
            "kong.service.svc.user.alice-001.request.count") == 3)
        datagrams = b"\n".join(dogstatsd.wait_for(6))
        assert b"kong.request.count:1|c|#name:svc,status:200,consumer:alice-001" in datagrams

        def paths() -> set[str]:
            return {r.path for r in receiver.requests}

        wait_until(lambda: {"/logs", "/v1/traces", "/api/v2/spans"} <= paths(),
                   what="http-log, opentelemetry and zipkin deliveries")
        traces = next(r for r in receiver.requests if r.path == "/v1/traces")
        assert traces.headers["content-type"] == "application/x-protobuf"
        spans = [json.loads(r.body) for r in receiver.requests if r.path == "/api/v2/spans"]
        assert any(s.get("kind") == "SERVER" for batch in spans for s in batch)
        assert gw.stop() == 0, gw.output()


def test_two_workers_share_the_port_with_their_own_queues(
        gateway_process: Start, upstream: Upstream, receiver: HttpReceiver) -> None:
    status_port = free_port()
    gw = gateway_process(kong_yml(upstream.url, receiver.url), workers=2,
                         status_listen=f"127.0.0.1:{status_port}")

    def workers() -> list[dict[str, Any]]:
        doc = httpx.get(f"http://127.0.0.1:{status_port}/status").json()
        return list(doc["workers"])

    def depths() -> dict[int, int]:
        return {w["pid"]: sum(q["depth"] for q in w["queues"].values())
                for w in workers()}

    wait_until(lambda: len(workers()) == 2, what="two workers in /status")
    before = depths()  # the readiness probe's entry is in one of them
    with httpx.Client(base_url=gw.url) as client:
        for i in range(40):
            # A new connection each time, so the kernel can hand it to either worker.
            assert client.get(f"/public/{i}", headers={"connection": "close"}).status_code == 200
    after = depths()
    assert len(after) == 2
    assert sum(after.values()) - sum(before.values()) == 40
    assert gw.stop() == 0, gw.output()
    assert len(entries(receiver)) == 40
    # Each worker flushed its own queue: one batch per worker that had entries.
    assert len(receiver.requests) == sum(1 for d in after.values() if d)


def test_supervisor_replaces_a_worker_that_dies(gateway_process: Start, upstream: Upstream,
                                                receiver: HttpReceiver) -> None:
    status_port = free_port()
    gw = gateway_process(kong_yml(upstream.url, receiver.url, delay=0.05), workers=2,
                         status_listen=f"127.0.0.1:{status_port}")

    def pids() -> set[int]:
        doc = httpx.get(f"http://127.0.0.1:{status_port}/status").json()
        return {w["pid"] for w in doc["workers"]}

    first = wait_until(lambda: pids() if len(pids()) == 2 else None, what="two workers")
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(pids()) == 2 and victim not in pids(), 20, "a replacement worker")
    for i in range(5):
        assert httpx.get(f"{gw.url}/public/{i}").status_code == 200
    assert "exited unexpectedly" in gw.output()
    assert gw.stop() == 0, gw.output()


def test_builtin_example_shows_entries_arriving(gateway_process: Start) -> None:
    gw = gateway_process(None)
    wait_until(lambda: "[demo receiver] http-log: batch" in gw.output(), 20,
               "the demo receiver to print http-log entries")
    response = httpx.get(f"{gw.url}/private", headers={"apikey": "demo-key"})
    assert response.json()["consumer"] == "demo-user"
    wait_until(lambda: "consumer=demo-user" in gw.output(), 20, "the consumer in a log entry")
    out = gw.output()
    for name in ("statsd", "datadog", "opentelemetry", "zipkin"):
        assert f"[demo receiver] {name}" in out
    assert gw.stop() == 0, gw.output()
