"""ASGI middleware under a real uvicorn server, with the recording plugin from ``fakes``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

import relayq
from relayq.asgi import PluginsConfigError, RelayqMiddleware

from .fakes import RecorderPlugin
from .servers import UvicornThread


async def echo(request: Request) -> Response:
    body = await request.body()
    await asyncio.sleep(0.05)  # before the first response byte: proxy latency
    return JSONResponse(
        {"headers": dict(request.headers), "body": len(body), "query": str(request.query_params)},
        headers={"x-app": "yes"},
    )


async def stream(request: Request) -> Response:
    async def chunks() -> Any:
        yield b"a" * 1000
        await asyncio.sleep(0.05)  # after the first byte: receive latency
        yield b"b" * 1000

    return StreamingResponse(chunks(), media_type="text/plain")


async def boom(request: Request) -> Response:
    raise RuntimeError("the app fails")


async def plain(request: Request) -> Response:
    return PlainTextResponse("ok")


def make_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/echo/{item}", echo, methods=["GET", "POST"]),
            Route("/stream", stream),
            Route("/boom", boom),
            Route("/plain", plain),
        ]
    )


def recorder(mw: RelayqMiddleware, name: str = "test-recorder") -> RecorderPlugin:
    plugin = next(p for p in mw.chain.plugins if p.name == name)
    assert isinstance(plugin, RecorderPlugin)
    return plugin


@pytest.fixture
def runtime() -> Iterator[relayq.Runtime]:
    rt = relayq.Runtime()
    yield rt
    rt.shutdown(timeout=5)


def test_fills_request_response_and_timings(runtime: relayq.Runtime) -> None:
    mw = RelayqMiddleware(
        make_app(),
        plugins=[{"name": "test-recorder", "config": {"add_response": {"X-Relayq": "1"}}}],
        runtime=runtime,
    )
    with UvicornThread(mw) as server, httpx.Client(base_url=server.url) as client:
        body = b"x" * 300
        response = client.post(
            "/echo/42?a=1&a=2&flag", content=body, headers={"X-Test": "Value", "Cookie": "c=1"}
        )
        assert response.status_code == 200
        assert response.headers["x-relayq"] == "1"
        (ctx,) = recorder(mw).wait_logged(1)
    assert ctx.method == "POST"
    assert ctx.path == "/echo/42"
    assert ctx.query_string == "a=1&a=2&flag"
    assert ctx.upstream_uri == "/echo/42?a=1&a=2&flag"
    assert ctx.host == "127.0.0.1"
    assert ctx.port == server.port
    assert ctx.scheme == "http"
    assert ctx.headers["x-test"] == "Value"
    assert all(name == name.lower() for name in ctx.headers)
    assert ctx.client_ip == "127.0.0.1" and ctx.client_port > 0
    assert len(ctx.request_id) == 32
    sent_head = "POST /echo/42?a=1&a=2&flag HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in response.request.headers.items()
    )
    assert ctx.request_size == len(sent_head) + 2 + len(body)
    assert ctx.status == 200 and ctx.upstream_status == "200"
    assert ctx.response_headers["x-app"] == "yes"
    assert ctx.response_headers["x-relayq"] == "1"  # what the client got, plugin headers included
    # Status line, the headers the app and plugins set, body; uvicorn adds date and server.
    app_headers = [(k, v) for k, v in response.headers.items() if k not in ("date", "server")]
    expected = len("HTTP/1.1 200 OK\r\n") + sum(len(k) + len(v) + 4 for k, v in app_headers) + 2
    assert ctx.response_size == expected + len(response.content)
    assert ctx.source == "upstream"
    assert ctx.proxy_latency >= 50.0  # the app slept 50 ms before answering
    assert 0 <= ctx.kong_latency < ctx.proxy_latency
    assert ctx.request_latency >= ctx.kong_latency + ctx.proxy_latency
    ts = ctx.timestamps
    assert (
        ts["request_start"] <= ts["access_end"] <= ts["upstream_first_byte"] <= ts["response_end"]
    )
    assert abs(ctx.started_at - time.time()) < 60


def test_streaming_response_sizes_and_receive_latency(runtime: relayq.Runtime) -> None:
    mw = RelayqMiddleware(make_app(), plugins=[{"name": "test-recorder"}], runtime=runtime)
    with UvicornThread(mw) as server, httpx.Client(base_url=server.url) as client:
        response = client.get("/stream")
        assert len(response.content) == 2000
        (ctx,) = recorder(mw).wait_logged(1)
    assert ctx.response_size > 2000
    assert ctx.receive_latency >= 50.0  # the second chunk came 50 ms after the first
    assert ctx.request_latency >= ctx.receive_latency


def test_access_injects_and_clears_headers_the_app_sees(runtime: relayq.Runtime) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    config = {"inject": {"traceparent": traceparent}, "clear": ["x-b3-sampled"]}
    mw = RelayqMiddleware(
        make_app(), plugins=[{"name": "test-recorder", "config": config}], runtime=runtime
    )
    with UvicornThread(mw) as server, httpx.Client(base_url=server.url) as client:
        sent = {"traceparent": "00-old-old-00", "x-b3-sampled": "1", "x-kept": "yes"}
        seen = client.get("/echo/1", headers=sent).json()["headers"]
        (ctx,) = recorder(mw).wait_logged(1)
    assert seen["traceparent"] == traceparent  # replaced, not duplicated
    assert "x-b3-sampled" not in seen and seen["x-kept"] == "yes"
    assert ctx.headers["traceparent"] == "00-old-old-00"  # the log shows what the client sent


def test_plugins_run_by_priority_and_phase_order(runtime: relayq.Runtime) -> None:
    mw = RelayqMiddleware(
        make_app(),
        plugins=[{"name": "test-recorder"}, {"name": "test-recorder-high"}],
        runtime=runtime,
    )
    assert [p.name for p in mw.chain.plugins] == ["test-recorder-high", "test-recorder"]
    with UvicornThread(mw) as server, httpx.Client(base_url=server.url) as client:
        client.get("/plain")
        recorder(mw).wait_logged(1)
    low, high = recorder(mw).events, recorder(mw, "test-recorder-high").events
    assert [e for e, _ in low] == ["access", "header_filter", "log"]
    for (phase_h, at_h), (phase_l, at_l) in zip(high, low, strict=True):
        assert phase_h == phase_l and at_h <= at_l


def test_slow_log_phase_does_not_delay_the_response(runtime: relayq.Runtime) -> None:
    mw = RelayqMiddleware(
        make_app(),
        plugins=[{"name": "test-recorder", "config": {"log_sleep": 1.0}}],
        runtime=runtime,
    )
    with UvicornThread(mw) as server, httpx.Client(base_url=server.url) as client:
        started = time.monotonic()
        response = client.get("/plain")
        elapsed = time.monotonic() - started
        assert response.text == "ok"
        recorder(mw).wait_logged(1)
    assert elapsed < 0.8, f"response took {elapsed:.2f}s: the log phase delayed it"


def test_failing_plugins_never_break_the_request(runtime: relayq.Runtime) -> None:
    fail_all = {"fail": ["access", "header_filter", "log"], "add_response": {"x-added": "1"}}
    mw = RelayqMiddleware(
        make_app(),
        plugins=[
            {"name": "test-recorder-high", "config": fail_all},
            {"name": "test-recorder"},
        ],
        runtime=runtime,
    )
    with UvicornThread(mw) as server, httpx.Client(base_url=server.url) as client:
        for _ in range(3):
            assert client.get("/plain").text == "ok"
        assert len(recorder(mw).wait_logged(3)) == 3  # the healthy plugin still ran
    failing = recorder(mw, "test-recorder-high").id
    assert mw.chain.errors == {
        (failing, "access"): 3,
        (failing, "header_filter"): 3,
        (failing, "log"): 3,
    }


def test_app_exception_is_logged_as_500(runtime: relayq.Runtime) -> None:
    mw = RelayqMiddleware(make_app(), plugins=[{"name": "test-recorder"}], runtime=runtime)
    with UvicornThread(mw) as server, httpx.Client(base_url=server.url) as client:
        assert client.get("/boom").status_code == 500
        (ctx,) = recorder(mw).wait_logged(1)
    assert ctx.status == 500


async def test_cancelled_before_responding_is_logged_as_499() -> None:
    """Without a server: a client that went away cancels the app before any response."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise asyncio.CancelledError

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        raise AssertionError("nothing may be sent")

    mw = RelayqMiddleware(app, plugins=[{"name": "test-recorder"}], runtime=relayq.Runtime())
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""}
    with pytest.raises(asyncio.CancelledError):
        await mw(scope, receive, send)
    plugin = recorder(mw)
    assert plugin.logged == []  # scheduled, not run inline
    for _ in range(100):
        if plugin.logged:
            break
        await asyncio.sleep(0.01)
    (ctx,) = plugin.logged
    assert (ctx.status, ctx.source, ctx.path, ctx.response_size) == (499, "kong", "/", 0)


async def _raw_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        raise RuntimeError("this app only speaks http")  # no lifespan support
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def test_lifespan_shutdown_flushes_coalescing_entries(runtime: relayq.Runtime) -> None:
    queue = {"name": "mw-flush", "max_batch_size": 100, "max_coalescing_delay": 1000}
    for app in (make_app(), _raw_app):  # a lifespan-aware app, and one without lifespan
        mw = RelayqMiddleware(
            app,
            plugins=[{"name": "test-recorder", "config": {"queue": queue}}],
            runtime=relayq.Runtime(),
            shutdown_timeout=5,
        )
        server = UvicornThread(mw).start()
        with httpx.Client(base_url=server.url) as client:
            for _ in range(3):
                client.get("/plain")
        plugin = recorder(mw)
        plugin.wait_logged(3)
        assert plugin.delivered == []  # still coalescing: 1000 s delay
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 5
        assert len(plugin.delivered) == 3
        assert mw.undelivered == 0


def test_starlette_add_middleware(runtime: relayq.Runtime) -> None:
    app = make_app()
    config = {"add_response": {"x-relayq": "via add_middleware"}}
    app.add_middleware(
        RelayqMiddleware, plugins=[{"name": "test-recorder", "config": config}], runtime=runtime
    )
    with UvicornThread(app) as server, httpx.Client(base_url=server.url) as client:
        assert client.get("/plain").headers["x-relayq"] == "via add_middleware"


def test_without_plugins_the_app_is_untouched() -> None:
    mw = RelayqMiddleware(make_app(), plugins=[])
    with UvicornThread(mw) as server, httpx.Client(base_url=server.url) as client:
        assert client.get("/plain").text == "ok"


def test_invalid_plugins_list_reports_every_error() -> None:
    with pytest.raises(PluginsConfigError) as info:
        RelayqMiddleware(
            make_app(),
            plugins=[
                {"name": "no-such-plugin"},
                {"config": {}},
                {"name": "test-recorder", "config": {"bogus": 1}, "colour": "red"},
                {"name": "test-recorder", "enabled": "yes"},
            ],
        )
    errors = info.value.errors
    assert errors[0].startswith("plugins[0].name: plugin 'no-such-plugin' not enabled")
    assert "plugins[1].name: required, a plugin name such as 'http-log'" in errors
    assert "plugins[2].colour: unknown field" in errors
    assert "plugins[2].config.bogus: unknown field" in errors
    assert "plugins[3].enabled: must be a boolean" in errors
    assert len(errors) == 5


def test_disabled_plugins_are_skipped_and_ids_are_stable() -> None:
    plugins: list[dict[str, Any]] = [
        {"name": "test-recorder", "enabled": False},
        {"name": "test-recorder"},
    ]
    first = RelayqMiddleware(make_app(), plugins=plugins)
    second = RelayqMiddleware(make_app(), plugins=plugins)
    assert len(first.chain.plugins) == 1
    assert first.chain.plugins[0].id == second.chain.plugins[0].id
    explicit = RelayqMiddleware(make_app(), plugins=[{"name": "test-recorder", "id": "abc"}])
    assert explicit.chain.plugins[0].id == "abc"
