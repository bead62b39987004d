"""The status listener against a real runtime: /status JSON, /metrics parsed by prometheus_client,
credential redaction, loopback-only binding, multi-worker gathering and ``relayq status``."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import relayq
from relayq.status import (
    RuntimeCollector,
    StatusListener,
    WorkerPublisher,
    directory_workers,
    parse_address,
    redact,
)

SECRET_QUEUE = "http://user:s3cr@t@logs.example:9000/path:POST:application/json:10000:60000:nil"


async def _fill(rt: relayq.Runtime) -> None:
    """Three queues: one delivering, one failing with credentials in its error, one dropping."""

    async def ok(_conf: Any, entries: list[Any]) -> bool:
        return True

    async def failing(_conf: Any, entries: list[Any]) -> tuple[bool, str]:
        return False, "failed request to http://user:s3cr@t@logs.example:9000/: refused"

    for i in range(5):
        rt.enqueue({"name": "ok-q", "max_batch_size": 5, "max_coalescing_delay": 0.01}, ok, None, i)
    rt.enqueue(
        {"name": SECRET_QUEUE, "max_retry_time": 0.05, "initial_retry_delay": 0.01},
        failing,
        None,
        "entry",
    )
    full = {"name": "full-q", "max_entries": 1, "max_coalescing_delay": 1000, "max_batch_size": 10}
    for i in range(3):
        rt.enqueue(full, ok, None, i)
    deadline = time.monotonic() + 10
    while rt.stats()[SECRET_QUEUE].dropped.get("retry_exhausted", 0) < 1:
        assert time.monotonic() < deadline, "the failing queue never gave up"
        await asyncio.sleep(0.01)
    while rt.stats()["ok-q"].entries_sent < 5:
        assert time.monotonic() < deadline, "the ok queue never delivered"
        await asyncio.sleep(0.01)


async def test_status_json_metrics_and_redaction() -> None:
    rt = relayq.Runtime()
    await _fill(rt)
    async with StatusListener(runtime=rt) as listener, httpx.AsyncClient() as client:
        assert listener.port > 0
        status = await client.get(f"{listener.url}/status")
        metrics = await client.get(f"{listener.url}/metrics")
        missing = await client.get(f"{listener.url}/nope")
        post = await client.post(f"{listener.url}/status")
    assert status.status_code == 200 and metrics.status_code == 200
    assert (missing.status_code, post.status_code) == (404, 405)
    for text in (status.text, metrics.text):
        assert "s3cr" not in text and "user:" not in text

    (worker,) = status.json()["workers"]
    assert worker["pid"] == os.getpid()
    queues = worker["queues"]
    redacted = "http://***@logs.example:9000/path:POST:application/json:10000:60000:nil"
    assert set(queues) == {"ok-q", "full-q", redacted}
    assert queues["ok-q"]["sent"] == 5 and queues["ok-q"]["depth"] == 0
    assert queues["full-q"]["depth"] == 1
    assert queues["full-q"]["dropped"]["capacity"] == 2
    failing = queues[redacted]
    assert failing["dropped"]["retry_exhausted"] == 1
    assert failing["retries"] >= 1
    assert failing["last_error"] == "failed request to http://***@logs.example:9000/: refused"

    families = {f.name: f for f in text_string_to_metric_families(metrics.text)}

    def value(family: str, suffix: str = "", **labels: str) -> float:
        for sample in families[family].samples:
            if sample.name == family + suffix and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                return float(sample.value)
        raise AssertionError(f"no sample {family}{suffix} {labels}")

    pid = str(os.getpid())
    assert value("relayq_queue_entries_sent", "_total", queue="ok-q", worker=pid) == 5
    assert value("relayq_queue_depth", queue="full-q") == 1
    assert value("relayq_queue_dropped", "_total", queue="full-q", reason="capacity") == 2
    assert value("relayq_queue_dropped", "_total", queue=redacted, reason="retry_exhausted") == 1
    assert value("relayq_queue_retries", "_total", queue=redacted) == failing["retries"]
    calls = rt.stats()["ok-q"].handler_calls
    assert value("relayq_queue_handler_seconds", "_count", queue="ok-q") == calls
    assert value("relayq_queue_handler_seconds", "_bucket", queue="ok-q", le="+Inf") == calls
    await rt.aclose(timeout=1)


async def test_runtime_collector_in_a_user_registry() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    rt = relayq.Runtime()
    await _fill(rt)
    registry = CollectorRegistry()
    registry.register(RuntimeCollector(rt))
    text = generate_latest(registry).decode()
    assert 'relayq_queue_entries_sent_total{queue="ok-q"' in text
    assert "s3cr" not in text
    await rt.aclose(timeout=1)


async def test_workspaces_and_names_differing_only_in_credentials() -> None:
    rt = relayq.Runtime()
    conf = {"max_coalescing_delay": 1000, "max_batch_size": 10}
    rt.enqueue({**conf, "name": "http://a:one@h/x"}, lambda c, e: True, 0, 1)
    rt.enqueue({**conf, "name": "http://b:two@h/x"}, lambda c, e: True, 0, 1)
    with relayq.workspace("ws1"):
        rt.enqueue({**conf, "name": "shared"}, lambda c, e: True, 0, 1)
    rt.enqueue({**conf, "name": "shared"}, lambda c, e: True, 0, 1)
    async with StatusListener(runtime=rt) as listener, httpx.AsyncClient() as client:
        queues = (await client.get(f"{listener.url}/status")).json()["workers"][0]["queues"]
        metrics = (await client.get(f"{listener.url}/metrics")).text
    assert set(queues) == {"http://***@h/x", "http://***@h/x#2", "shared", "ws1.shared"}
    assert queues["ws1.shared"]["name"] == "shared" and queues["ws1.shared"]["workspace"] == "ws1"
    depth = {
        (s.labels["workspace"], s.labels["queue"]): s.value
        for f in text_string_to_metric_families(metrics)
        if f.name == "relayq_queue_depth"
        for s in f.samples
    }
    assert depth == {
        ("", "http://***@h/x"): 1,
        ("", "http://***@h/x#2"): 1,
        ("", "shared"): 1,
        ("ws1", "shared"): 1,
    }
    assert ":one@" not in metrics and ":two@" not in metrics
    await rt.aclose(timeout=1)


def test_redact_hides_userinfo_only() -> None:
    assert redact("https://a:b@h:1/p?q=1") == "https://***@h:1/p?q=1"
    assert redact("http://tok@h/") == "http://***@h/"
    assert redact("x http://h/p?mail=a@b.c y") == "x http://h/p?mail=a@b.c y"
    assert redact("no url here") == "no url here"


def test_only_loopback_unless_allowed() -> None:
    for host in ("0.0.0.0", "::", "8.8.8.8"):
        with pytest.raises(ValueError, match="non-loopback"):
            StatusListener(host, 0)
    StatusListener("0.0.0.0", 0, allow_remote=True)  # explicit opt-in: constructed
    StatusListener("localhost", 0)
    StatusListener("::1", 0)


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:9100") == ("127.0.0.1", 9100)
    assert parse_address("[::1]:80") == ("::1", 80)
    assert parse_address(":8007") == ("127.0.0.1", 8007)
    for bad in ("9100", "host:", "::1:80", "h:70000", "h:x"):
        with pytest.raises(ValueError, match="invalid address"):
            parse_address(bad)


def test_thread_mode_without_a_loop() -> None:
    rt = relayq.Runtime()
    assert rt.enqueue(
        {"name": "threaded", "max_coalescing_delay": 1000, "max_batch_size": 10},
        lambda c, e: True,
        0,
        1,
    )
    with StatusListener(runtime=rt) as listener:
        document = httpx.get(f"{listener.url}/status").json()
    assert document["workers"][0]["queues"]["threaded"]["depth"] == 1
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{listener.url}/status", timeout=2)
    rt.shutdown(timeout=2)


WORKER = textwrap.dedent(
    """
    import asyncio, sys
    import relayq
    from relayq.status import WorkerPublisher

    async def main():
        rt = relayq.Runtime()
        for i in range(4):
            conf = {"name": "child-q", "max_coalescing_delay": 1000, "max_batch_size": 10}
            rt.enqueue(conf, lambda c, e: True, 0, i)
        publisher = WorkerPublisher(sys.argv[1], rt)
        await publisher.start()
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await publisher.stop()

    asyncio.run(main())
    """
)


async def test_gathers_every_worker_from_a_directory(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        rt = relayq.Runtime()
        rt.enqueue(
            {"name": "parent-q", "max_coalescing_delay": 1000, "max_batch_size": 10},
            lambda c, e: True,
            0,
            1,
        )
        publisher = WorkerPublisher(tmp_path, rt)
        await publisher.start()
        (tmp_path / "worker-999999.sock").touch()  # left behind by a dead worker
        listener = StatusListener(workers=directory_workers(tmp_path))
        async with listener, httpx.AsyncClient() as client:
            workers = (await client.get(f"{listener.url}/status")).json()["workers"]
            metrics = (await client.get(f"{listener.url}/metrics")).text
        await publisher.stop()
        by_pid = {w["pid"]: w["queues"] for w in workers}
        assert {pid: set(queues) for pid, queues in by_pid.items()} == {
            os.getpid(): {"parent-q"},
            child.pid: {"child-q"},
        }
        assert by_pid[child.pid]["child-q"]["depth"] == 4
        assert by_pid[os.getpid()]["parent-q"]["depth"] == 1
        expected = f'relayq_queue_depth{{queue="child-q",worker="{child.pid}",workspace=""}} 4.0'
        assert expected in metrics
        assert not (tmp_path / "worker-999999.sock").exists()
        await rt.aclose(timeout=1)
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(timeout=10)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relayq", *args], capture_output=True, text=True, timeout=60
    )


def test_relayq_status_prints_a_table() -> None:
    rt = relayq.Runtime()
    for i in range(2):
        rt.enqueue(
            {"name": "table-q", "max_coalescing_delay": 1000, "max_batch_size": 10},
            lambda c, e: True,
            0,
            i,
        )
    with StatusListener(runtime=rt) as listener:
        result = run_cli("status", "--url", listener.url)
        as_json = run_cli("status", "--url", listener.url, "--json")
        bare = run_cli("status", "--url", listener.url.removeprefix("http://"))
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split() == [
        "PID", "QUEUE", "DEPTH", "BYTES", "IN_FLIGHT", "SENT", "RETRIES", "DROPPED", "LAST_ERROR"
    ]  # fmt: skip
    assert row.split() == [str(os.getpid()), "table-q", "2", "0", "0", "0", "0", "0", "-"]
    assert "\x1b[" not in result.stdout  # no colour when piped
    assert as_json.returncode == 0
    assert bare.returncode == 0 and bare.stdout == result.stdout
    assert '"table-q"' in as_json.stdout
    rt.shutdown(timeout=2)


def test_relayq_status_unreachable() -> None:
    with StatusListener() as listener:
        url = listener.url
    result = run_cli("status", "--url", url, "--timeout", "2")
    assert result.returncode == 1
    assert f"relayq status: cannot reach the status listener at {url}" in result.stderr
