"""http-log: schema, queue naming, wire format, handler messages, and end to end through a real
Runtime into a real HTTP server (tests/support/http_receiver.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest

import relayq
from relayq import Failure
from relayq.plugins import PluginConfigError, create_plugin
from relayq.plugins._http import HttpResponse, HttpTransportError, MemoryHttpSender
from relayq.plugins.http_log import (
    SCHEMA,
    Delivery,
    HttpLogPlugin,
    encode_body,
    encode_entry,
    parse_endpoint,
    queue_name,
    request_headers,
    retry_after,
    send_entries,
)
from relayq.serializer import RequestContext, serialize
from tests.support.http_receiver import HttpReceiver, Reply, self_signed_certificate

SECRET = "s3cr3t-pw"


def ctx(i: int = 0, **kw: Any) -> RequestContext:
    return RequestContext(
        path=f"/r/{i}",
        status=200,
        request_id=f"id-{i}",
        service={"id": "svc", "name": "orders"},
        started_at=1700000000.0 + i,
        **kw,
    )


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


@pytest.fixture
def rx() -> Iterator[HttpReceiver]:
    with HttpReceiver() as receiver:
        yield receiver


@pytest.fixture
async def rt() -> AsyncIterator[relayq.Runtime]:
    runtime = relayq.Runtime()
    yield runtime
    await runtime.aclose(timeout=5)


def plugin(rt: relayq.Runtime, config: dict[str, Any], pid: str = "p1") -> HttpLogPlugin:
    instance = create_plugin("http-log", config, plugin_id=pid, runtime=rt)
    assert isinstance(instance, HttpLogPlugin)
    return instance


# ---------------------------------------------------------------------------- schema


class TestSchema:
    def test_defaults(self) -> None:
        conf = SCHEMA.validate({"http_endpoint": "http://log.test/x"})
        assert {k: v for k, v in conf.items() if k != "queue"} == {
            "http_endpoint": "http://log.test/x",
            "method": "POST",
            "content_type": "application/json",
            "timeout": 10000,
            "keepalive": 60000,
            "retry_count": None,
            "queue_size": None,
            "flush_timeout": None,
            "headers": None,
            "custom_fields_by_lua": None,
            "ssl_verify": True,
        }
        assert conf["queue"]["max_batch_size"] == 1

    def test_endpoint_required(self) -> None:
        with pytest.raises(PluginConfigError) as info:
            SCHEMA.validate({})
        assert info.value.errors == {"http_endpoint": "required field missing"}

    def test_userinfo_and_authorization_header_conflict(self) -> None:
        with pytest.raises(PluginConfigError) as info:
            SCHEMA.validate(
                {"http_endpoint": "http://u:p@log.test/", "headers": {"AUTHORIZATION": "x"}}
            )
        assert info.value.errors == {
            "@entity": "specifying both an 'Authorization' header and user info in "
            "'http_endpoint' is not allowed"
        }
        SCHEMA.validate({"http_endpoint": "http://log.test/", "headers": {"Authorization": "x"}})

    def test_header_rules(self) -> None:
        with pytest.raises(PluginConfigError) as info:
            SCHEMA.validate(
                {
                    "http_endpoint": "http://log.test/",
                    "headers": {
                        "host": "x",
                        "CONTENT-LENGTH": "1",
                        "Content-Type": "text/plain",
                        "X-Token": "a\nb",
                        "Bad Name": "v",
                    },
                }
            )
        assert info.value.errors == {
            "headers.host": "cannot contain 'Host' header",
            "headers.CONTENT-LENGTH": "cannot contain 'Content-Length' header",
            "headers.Content-Type": "cannot contain 'Content-Type' header",
            "headers.X-Token": "header value must not contain CR, LF or NUL characters",
            "headers.Bad Name": "bad header name 'Bad Name', allowed characters are A-Z, a-z, "
            "0-9, '_', and '-'",
        }

    def test_choices_and_bounds(self) -> None:
        with pytest.raises(PluginConfigError) as info:
            SCHEMA.validate(
                {
                    "http_endpoint": "http://log.test/",
                    "method": "GET",
                    "content_type": "text/plain",
                    "timeout": 0,
                    "keepalive": -1,
                }
            )
        assert info.value.errors == {
            "method": "expected one of: POST, PUT, PATCH",
            "content_type": "expected one of: application/json, application/json; charset=utf-8",
            "timeout": "value must be greater than 0",
            "keepalive": "value should be at least 0",
        }

    def test_lua_custom_fields_are_refused_but_empty_is_fine(self) -> None:
        with pytest.raises(PluginConfigError) as info:
            SCHEMA.validate({"http_endpoint": "http://h/", "custom_fields_by_lua": {"a": "x"}})
        assert "Lua expressions are not supported" in info.value.errors["custom_fields_by_lua"]
        SCHEMA.validate({"http_endpoint": "http://h/", "custom_fields_by_lua": {}})

    def test_schema_time_deprecation(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.WARNING, logger="relayq.plugins")
        SCHEMA.validate({"http_endpoint": "http://h/", "queue_size": 5})
        assert messages(caplog) == [
            "http-log: config.queue_size is deprecated, please use config.queue.max_batch_size "
            "instead"
        ]


# ---------------------------------------------------------------------------- naming


class TestQueueName:
    def conf(self, **kw: Any) -> dict[str, Any]:
        return SCHEMA.validate({"http_endpoint": "http://log.test:9000/path", **kw})

    def test_kong_format(self) -> None:
        assert (
            queue_name(self.conf())
            == "http://log.test:9000/path:POST:application/json:10000:60000:nil"
        )

    def test_numbers_print_like_lua_and_retry_count_is_included(self) -> None:
        name = queue_name(self.conf(timeout=2500.0, keepalive=0.5, retry_count=3))
        assert name == "http://log.test:9000/path:POST:application/json:2500:0.5:3"

    def test_queue_fields_and_legacy_batching_are_not_part_of_the_name(self) -> None:
        base = queue_name(self.conf())
        assert queue_name(self.conf(queue={"max_batch_size": 50}, queue_size=7)) == base

    def test_credentials_and_query_are_redacted_but_kept_distinct(self) -> None:
        a = queue_name(SCHEMA.validate({"http_endpoint": f"http://u:{SECRET}@h/p?token={SECRET}"}))
        b = queue_name(SCHEMA.validate({"http_endpoint": "http://u:other@h/p?token=other"}))
        again = queue_name(
            SCHEMA.validate({"http_endpoint": f"http://u:{SECRET}@h/p?token={SECRET}"})
        )
        assert SECRET not in a and "u:" not in a
        assert a.startswith("http://REDACTED-") and "@h/p?REDACTED-" in a
        assert a != b
        assert a == again


class TestEndpoint:
    def test_parse(self) -> None:
        ep = parse_endpoint("https://us%40er:p%3Ass@log.test/a/b?x=1")
        assert ep.url == "https://log.test:443/a/b"
        assert (ep.host, ep.port) == ("log.test", 443)
        assert ep.authorization == "Basic " + base64.b64encode(b"us@er:p:ss").decode()

    def test_defaults_and_ipv6(self) -> None:
        assert parse_endpoint("http://h").url == "http://h:80/"
        ep = parse_endpoint("http://[::1]:8080/x")
        assert (ep.url, ep.host, ep.port, ep.authorization) == (
            "http://[::1]:8080/x",
            "::1",
            8080,
            None,
        )

    def test_user_without_password(self) -> None:
        assert (
            parse_endpoint("http://token@h/").authorization
            == "Basic " + base64.b64encode(b"token").decode()
        )

    def test_headers_never_override_computed_ones(self) -> None:
        conf = {
            "content_type": "application/json; charset=utf-8",
            "headers": {"authorization": "Bearer x", "X-Env": "prod", "content-type": "text/plain"},
        }
        headers = request_headers(conf, parse_endpoint("http://u:p@h/"))
        assert headers == {
            "Content-Type": "application/json; charset=utf-8",
            "Authorization": "Basic dTpw",
            "X-Env": "prod",
        }
        headers = request_headers(conf, parse_endpoint("http://h/"))
        assert headers["authorization"] == "Bearer x"
        assert "content-type" not in headers


# ---------------------------------------------------------------------------- wire format


class TestEncoding:
    def test_body_is_the_object_or_a_compact_array(self) -> None:
        a, b, c = b'{"a":1}', b'{"b":"x"}', b"{}"
        assert encode_body([a], array=False) == a
        assert encode_body([a], array=True) == b'[{"a":1}]'
        assert encode_body([a, b, c], array=True) == b'[{"a":1},{"b":"x"},{}]'

    def test_entry_is_compact_json_of_the_serializer(self) -> None:
        log = serialize(ctx(1))
        entry = encode_entry(log)
        assert json.loads(entry) == log
        assert b" " not in entry and b"\n" not in entry

    def test_entry_survives_values_json_cannot_hold(self) -> None:
        entry = encode_entry({"obj": object(), "big": 2**80, 1: "int key"})
        decoded = json.loads(entry)
        assert decoded["big"] == 2**80
        assert decoded["obj"].startswith("<object object")
        assert decoded["1"] == "int key"


# ---------------------------------------------------------------------------- handler


def test_retry_after_header() -> None:
    assert retry_after(None) is None
    assert retry_after(" 120 ") == 120.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412500.0) == 0.0
    assert retry_after("soon") is None


class TestHandler:
    def delivery(self, sender: MemoryHttpSender, *, array: bool = False) -> Delivery:
        return Delivery(
            endpoint=parse_endpoint("http://log.test:9000/in"),
            method="PATCH",
            headers={"Content-Type": "application/json"},
            timeout=1.5,
            array=array,
            sender=sender,
        )

    async def test_success_statuses(self) -> None:
        sender = MemoryHttpSender(HttpResponse(204), HttpResponse(100), HttpResponse(299))
        for _ in range(3):
            assert await send_entries(self.delivery(sender), [b"{}"]) is True
        request = sender.requests[0]
        assert (request.method, request.url, request.body, request.timeout) == (
            "PATCH",
            "http://log.test:9000/in",
            b"{}",
            1.5,
        )

    async def test_status_300_and_above_fail_with_kongs_message(self) -> None:
        sender = MemoryHttpSender(
            HttpResponse(500, body=b"boom"),
            HttpResponse(301),
            HttpResponse(400, body=b"bad"),
            HttpResponse(429, headers={"retry-after": "7"}),
        )
        results = [await send_entries(self.delivery(sender), [b"{}"]) for _ in range(4)]
        assert results == [
            Failure("request to log.test:9000 returned status code 500 and body boom"),
            Failure("request to log.test:9000 returned status code 301 and body ", retryable=False),
            Failure(
                "request to log.test:9000 returned status code 400 and body bad", retryable=False
            ),
            Failure("request to log.test:9000 returned status code 429 and body ", retry_after=7.0),
        ]

    async def test_huge_error_body_is_cut_in_the_message(self) -> None:
        sender = MemoryHttpSender(HttpResponse(503, body=b"e" * 100_000))
        result = await send_entries(self.delivery(sender), [b"{}"])
        assert isinstance(result, Failure)
        assert result.reason.endswith("e" * 4096 + "...")
        assert len(result.reason) < 4200

    async def test_transport_error(self) -> None:
        sender = MemoryHttpSender(HttpTransportError("timeout"))
        assert await send_entries(self.delivery(sender), [b"{}"]) == (
            False,
            "failed request to log.test:9000: timeout",
        )

    async def test_more_than_one_entry_with_batch_size_one(self) -> None:
        sender = MemoryHttpSender()
        assert await send_entries(self.delivery(sender), [b"{}", b"{}"]) == (
            False,
            "internal error, received more than one entry in queue handler even though "
            "max_batch_size is 1",
        )
        assert sender.requests == []


async def test_memory_sender_lets_users_test_their_setup(rt: relayq.Runtime) -> None:
    sender = MemoryHttpSender()
    p = HttpLogPlugin(
        {"http_endpoint": "http://collector.test/logs", "queue": {"max_batch_size": 2}},
        plugin_id="mem",
        runtime=rt,
        sender=sender,
    )
    p.log(ctx(1))
    p.log(ctx(2))
    assert await rt.drain(timeout=5)
    [request] = sender.requests
    assert [e["request"]["id"] for e in json.loads(request.body)] == ["id-1", "id-2"]


# ---------------------------------------------------------------------------- end to end


async def test_single_entry_body_and_headers(rx: HttpReceiver, rt: relayq.Runtime) -> None:
    p = plugin(
        rt,
        {
            "http_endpoint": f"{rx.url}/logs/in?dropped=1",
            "method": "PUT",
            "headers": {"X-Env": "test"},
        },
    )
    context = ctx(7, headers={"authorization": "Bearer client-token", "accept": "*/*"})
    p.log(context)
    [got] = await asyncio.to_thread(rx.wait_for, 1)
    assert got.method == "PUT"
    assert got.path == "/logs/in"
    assert got.json() == json.loads(orjson.dumps(serialize(context)))
    assert got.json()["request"]["headers"]["authorization"] == "REDACTED"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["content-length"] == str(len(got.body))
    assert got.headers["x-env"] == "test"
    assert got.headers["host"] == f"127.0.0.1:{rx.port}"
    assert got.headers["user-agent"].startswith("relayq/")
    assert "authorization" not in got.headers


async def test_basic_auth_and_no_credentials_in_any_log_line(
    rx: HttpReceiver, rt: relayq.Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rx.script(Reply(500, b"first attempt fails"))
    p = plugin(
        rt,
        {
            "http_endpoint": f"http://admin:{SECRET}@127.0.0.1:{rx.port}/in?token={SECRET}",
            "queue": {"initial_retry_delay": 0.01},
        },
    )
    p.log(ctx(1))
    first, second = await asyncio.to_thread(rx.wait_for, 2)
    expected = "Basic " + base64.b64encode(f"admin:{SECRET}".encode()).decode()
    assert first.headers["authorization"] == second.headers["authorization"] == expected
    assert first.path == "/in"
    assert await rt.drain(timeout=5)
    lines = messages(caplog)
    assert any("handler could not process entries: request to 127.0.0.1" in m for m in lines)
    assert any("Queue name automatically configured" in m for m in lines)
    assert not [m for m in lines if SECRET in m or "admin" in m]


async def test_batches_are_json_arrays(rx: HttpReceiver, rt: relayq.Runtime) -> None:
    p = plugin(
        rt,
        {
            "http_endpoint": f"{rx.url}/batch",
            "queue": {"max_batch_size": 3, "max_coalescing_delay": 5},
        },
    )
    for i in range(3):
        p.log(ctx(i))
    [got] = await asyncio.to_thread(rx.wait_for, 1)
    body = got.json()
    assert isinstance(body, list)
    assert [e["request"]["id"] for e in body] == ["id-0", "id-1", "id-2"]
    assert got.body.startswith(b"[{") and got.body.endswith(b"}]") and b"},{" in got.body


async def test_array_even_for_a_single_entry_when_batching(
    rx: HttpReceiver, rt: relayq.Runtime
) -> None:
    p = plugin(
        rt,
        {
            "http_endpoint": f"{rx.url}/b",
            "queue": {"max_batch_size": 10, "max_coalescing_delay": 0},
        },
    )
    p.log(ctx(1))
    [got] = await asyncio.to_thread(rx.wait_for, 1)
    assert isinstance(got.json(), list) and len(got.json()) == 1


async def test_legacy_queue_size_turns_on_batching_with_a_warning(
    rx: HttpReceiver, rt: relayq.Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    p = plugin(rt, {"http_endpoint": f"{rx.url}/legacy", "queue_size": 2, "flush_timeout": 5})
    p.log(ctx(1))
    p.log(ctx(2))
    [got] = await asyncio.to_thread(rx.wait_for, 1)
    assert [e["request"]["id"] for e in got.json()] == ["id-1", "id-2"]
    lines = messages(caplog)
    assert (
        "the queue_size parameter is deprecated, please update your configuration to use "
        "queue.max_batch_size instead"
    ) in lines
    assert (
        "http-log: config.queue_size is deprecated, please use config.queue.max_batch_size instead"
    ) in lines


async def test_failures_are_retried_with_kongs_messages(
    rx: HttpReceiver, rt: relayq.Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="relayq")
    rx.script(
        Reply(503, b"busy"), Reply(302, headers={"Location": "/elsewhere"}), Reply(reset=True)
    )
    p = plugin(rt, {"http_endpoint": f"{rx.url}/r", "queue": {"initial_retry_delay": 0.01}})
    p.log(ctx(3))
    got = await asyncio.to_thread(rx.wait_for, 4)
    assert len({g.body for g in got}) == 1
    assert await rt.drain(timeout=5)
    where = f"127.0.0.1:{rx.port}"
    failures = [m.split(": ", 1)[1] for m in messages(caplog) if "could not process" in m]
    prefix = "handler could not process entries: "
    assert failures[0] == f"{prefix}request to {where} returned status code 503 and body busy"
    assert failures[1] == f"{prefix}request to {where} returned status code 302 and body "
    assert failures[2] in (
        f"handler could not process entries: failed request to {where}: connection reset by peer",
        f"handler could not process entries: failed request to {where}: closed",
    )
    assert len(failures) == 3
    stats = rt.stats()[p.queue_name]
    assert (stats.entries_sent, stats.failures, stats.retries) == (1, 3, 3)


async def test_timeout_is_a_retried_failure(
    rx: HttpReceiver, rt: relayq.Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="relayq")
    rx.script(Reply(delay=3))
    p = plugin(
        rt,
        {"http_endpoint": f"{rx.url}/slow", "timeout": 200, "queue": {"initial_retry_delay": 0.01}},
    )
    p.log(ctx(1))
    await asyncio.to_thread(rx.wait_for, 2)
    assert await rt.drain(timeout=5)
    assert f"handler could not process entries: failed request to 127.0.0.1:{rx.port}: timeout" in [
        m.split(": ", 1)[1] for m in messages(caplog)
    ]


async def test_retry_budget_exhausted_loses_the_batch_with_a_count(
    rx: HttpReceiver, rt: relayq.Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="relayq")
    rx.default = Reply(500, b"down")
    p = plugin(
        rt,
        {
            "http_endpoint": f"{rx.url}/down",
            "queue": {
                "max_retry_time": 0.2,
                "initial_retry_delay": 0.05,
                "max_batch_size": 2,
                "max_coalescing_delay": 5,
            },
        },
    )
    p.log(ctx(1))
    p.log(ctx(2))
    assert await rt.drain(timeout=5)
    assert any(
        m.endswith(
            "could not send entries due to max_retry_time exceeded. 2 queue entries were lost"
        )
        for m in messages(caplog)
    )
    assert rt.stats()[p.queue_name].dropped["retry_exhausted"] == 2
    assert len(rx.requests) >= 2


async def test_two_instances_with_the_same_endpoint_share_one_queue(
    rx: HttpReceiver, rt: relayq.Runtime
) -> None:
    endpoint = f"{rx.url}/shared"
    a = plugin(
        rt,
        {
            "http_endpoint": endpoint,
            "headers": {"X-From": "a"},
            "queue": {"max_batch_size": 4, "max_coalescing_delay": 5},
        },
        "a",
    )
    b = plugin(
        rt,
        {
            "http_endpoint": endpoint,
            "headers": {"X-From": "b"},
            "queue": {"max_batch_size": 4, "max_coalescing_delay": 5},
        },
        "b",
    )
    other = plugin(rt, {"http_endpoint": endpoint, "timeout": 5000}, "c")
    assert a.queue_name == b.queue_name != other.queue_name
    a.log(ctx(1))
    b.log(ctx(2))
    a.log(ctx(3))
    b.log(ctx(4))
    [got] = await asyncio.to_thread(rx.wait_for, 1)
    assert [e["request"]["id"] for e in got.json()] == ["id-1", "id-2", "id-3", "id-4"]
    assert got.headers["x-from"] == "b"  # the last enqueuer's config sends the batch
    assert [
        name
        for name in rt.stats()
        if name.endswith("/shared:POST:application/json:10000:60000:nil")
    ] == [a.queue_name]


async def test_concurrency_limit_minus_one_sends_each_entry_alone(
    rx: HttpReceiver, rt: relayq.Runtime
) -> None:
    rx.default = Reply(delay=2.0)  # deliveries overlap: none waits for another
    p = plugin(
        rt,
        {
            "http_endpoint": f"{rx.url}/each",
            "queue": {"concurrency_limit": -1, "max_batch_size": 1, "max_coalescing_delay": 5},
        },
    )
    for i in range(3):
        p.log(ctx(i))
    got = await asyncio.to_thread(rx.wait_for, 3, 1.5)
    assert sorted(g.json()["request"]["id"] for g in got) == ["id-0", "id-1", "id-2"]
    assert all(isinstance(g.json(), dict) for g in got)
    assert await rt.drain(timeout=5)


async def test_keep_alive_reuses_the_connection(rx: HttpReceiver, rt: relayq.Runtime) -> None:
    p = plugin(rt, {"http_endpoint": f"{rx.url}/ka"})
    for i in range(3):
        p.log(ctx(i))
        await asyncio.to_thread(rx.wait_for, i + 1)
        assert await rt.drain(timeout=5)
    assert {g.connection for g in rx.requests} == {1}
    assert rx.connections == 1


async def test_max_bytes_counts_the_json_entry(
    rx: HttpReceiver, rt: relayq.Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    p = plugin(rt, {"http_endpoint": f"{rx.url}/mb", "queue": {"max_bytes": 50}})
    p.log(ctx(1))
    size = len(encode_entry(serialize(ctx(1))))
    lines = messages(caplog)
    assert any(
        f"string to be queued is longer ({size} bytes) than the queue's max_bytes (50 bytes)" in m
        for m in lines
    )
    assert any(
        m.startswith(
            "Failed to enqueue log entry to log server: rejected by queue http://127.0.0.1"
        )
        for m in lines
    )
    assert rx.requests == []


async def test_connection_refused(rt: relayq.Runtime, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="relayq")
    with HttpReceiver() as closed:
        port = closed.port
    p = plugin(
        rt,
        {
            "http_endpoint": f"http://127.0.0.1:{port}/x",
            "queue": {"max_retry_time": 0.05, "initial_retry_delay": 0.01},
        },
    )
    p.log(ctx(1))
    assert await rt.drain(timeout=5)
    assert (
        f"handler could not process entries: failed request to 127.0.0.1:{port}: connection refused"
        in [m.split(": ", 1)[1] for m in messages(caplog)]
    )


async def test_retry_on_retryable_drops_client_errors_and_honours_retry_after(
    rx: HttpReceiver, rt: relayq.Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="relayq")
    rx.script(Reply(400, b"malformed"), Reply(429, headers={"Retry-After": "1"}))
    p = plugin(
        rt,
        {
            "http_endpoint": f"{rx.url}/classes",
            "queue": {"retry_on": "retryable", "initial_retry_delay": 0.01},
        },
    )
    p.log(ctx(1))
    await asyncio.to_thread(rx.wait_for, 1)
    assert await rt.drain(timeout=5)
    assert any(
        m.endswith("could not send entries: permanent failure. 1 queue entries were lost")
        for m in messages(caplog)
    )
    assert rt.stats()[p.queue_name].dropped["permanent"] == 1
    p.log(ctx(2))
    limited, accepted = (await asyncio.to_thread(rx.wait_for, 3))[1:]
    assert accepted.at - limited.at >= 0.9
    assert accepted.json()["request"]["id"] == "id-2"


async def test_legacy_runtime_warning_repeats_once_a_minute(
    rx: HttpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]
    runtime = relayq.Runtime(clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="relayq")
    warning = (
        "the retry_count parameter no longer works, please update your configuration to use "
        "initial_retry_delay and max_retry_time instead"
    )
    try:
        p = plugin(runtime, {"http_endpoint": f"{rx.url}/legacy", "retry_count": 3})
        for _ in range(5):
            p.log(ctx(1))
        assert messages(caplog).count(warning) == 1
        now[0] += 61
        p.log(ctx(2))
        p.log(ctx(3))
        assert messages(caplog).count(warning) == 2
        assert p.queue_name.endswith(":60000:3")
    finally:
        await runtime.aclose(timeout=5)


async def test_compressed_error_body_is_quoted_decoded(
    rx: HttpReceiver, rt: relayq.Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    import gzip

    caplog.set_level(logging.WARNING, logger="relayq")
    rx.script(Reply(502, gzip.compress(b"upstream gone"), headers={"Content-Encoding": "gzip"}))
    p = plugin(rt, {"http_endpoint": f"{rx.url}/gz", "queue": {"initial_retry_delay": 0.01}})
    p.log(ctx(1))
    await asyncio.to_thread(rx.wait_for, 2)
    assert await rt.drain(timeout=5)
    assert any(m.endswith("status code 502 and body upstream gone") for m in messages(caplog))


async def test_tls_is_verified_unless_turned_off(
    rt: relayq.Runtime, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="relayq")
    with HttpReceiver(tls=self_signed_certificate(str(tmp_path))) as https:
        strict = plugin(
            rt,
            {"http_endpoint": f"{https.url}/tls", "queue": {"max_retry_time": 0.05}},
            "strict",
        )
        strict.log(ctx(1))
        assert await rt.drain(timeout=5)
        failures = [m for m in messages(caplog) if "could not process" in m]
        assert failures and f"failed request to 127.0.0.1:{https.port}: " in failures[0]
        assert "certificate verify failed" in failures[0]
        assert https.requests == []
        relaxed = plugin(rt, {"http_endpoint": f"{https.url}/tls", "ssl_verify": False}, "relaxed")
        relaxed.log(ctx(2))
        [got] = await asyncio.to_thread(https.wait_for, 1)
        assert got.json()["request"]["id"] == "id-2"


async def test_retried_batch_carries_the_same_batch_id(
    rx: HttpReceiver, rt: relayq.Runtime
) -> None:
    rx.script(Reply(503), Reply(500))
    p = plugin(rt, {"http_endpoint": f"{rx.url}/r", "queue": {"initial_retry_delay": 0.01}})
    p.log(ctx(1))
    got = await asyncio.to_thread(rx.wait_for, 3)
    ids = [g.headers.get("x-relayq-batch-id") for g in got]
    assert ids[0] and ids[0] == ids[1] == ids[2]
    p.log(ctx(2))
    assert await rt.drain(timeout=5)
    assert rx.requests[-1].headers["x-relayq-batch-id"] != ids[0]
