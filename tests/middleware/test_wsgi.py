"""WSGI middleware around a Flask app under werkzeug's real server, with the recording plugin."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from flask import Flask, Response, request, stream_with_context

import relayq
from relayq.wsgi import RelayqMiddleware

from .fakes import RecorderPlugin
from .servers import WsgiThread


def make_app(state: dict[str, Any]) -> Flask:
    app = Flask(__name__)

    @app.route("/echo/<item>", methods=["GET", "POST"])
    def echo(item: str) -> Any:
        body = request.get_data()
        time.sleep(0.05)  # before the response starts: proxy latency
        return {"headers": dict(request.headers), "body": len(body)}, 200, {"X-App": "yes"}

    @app.route("/stream")
    def stream() -> Response:
        def chunks() -> Iterator[bytes]:
            yield b"a" * 1000
            time.sleep(0.05)  # after the first byte: receive latency
            yield b"b" * 1000
            state["last_chunk_done"] = time.monotonic()

        return Response(stream_with_context(chunks()), mimetype="text/plain")

    @app.route("/plain")
    def plain() -> str:
        return "ok"

    return app


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
    app = make_app({})
    mw = RelayqMiddleware(
        app.wsgi_app,
        plugins=[{"name": "test-recorder", "config": {"add_response": {"X-Relayq": "1"}}}],
        runtime=runtime,
    )
    app.wsgi_app = mw  # type: ignore[method-assign]
    with WsgiThread(app) as server, httpx.Client(base_url=server.url) as client:
        body = b"x" * 300
        response = client.post("/echo/7?a=1&a=2", content=body, headers={"X-Test": "Value"})
        assert response.status_code == 200
        assert response.headers["x-relayq"] == "1"
        (ctx,) = recorder(mw).wait_logged(1)
    assert ctx.method == "POST"
    assert ctx.path == "/echo/7"
    assert ctx.query_string == "a=1&a=2"
    assert ctx.upstream_uri == "/echo/7?a=1&a=2"
    assert ctx.host == "127.0.0.1" and ctx.port == server.port
    assert ctx.headers["x-test"] == "Value"
    assert ctx.headers["content-length"] == "300"
    assert ctx.client_ip == "127.0.0.1" and ctx.client_port > 0
    sent_head = "POST /echo/7?a=1&a=2 HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in response.request.headers.items()
    )
    assert ctx.request_size == len(sent_head) + 2 + len(body)
    assert ctx.status == 200
    assert ctx.response_headers["x-app"] == "yes"
    assert ctx.response_headers["x-relayq"] == "1"
    added_by_server = ("date", "server", "connection")
    app_headers = [(k, v) for k, v in response.headers.items() if k not in added_by_server]
    expected = len("HTTP/1.1 200 OK\r\n") + sum(len(k) + len(v) + 4 for k, v in app_headers) + 2
    assert ctx.response_size == expected + len(response.content)
    assert ctx.proxy_latency >= 50.0
    assert 0 <= ctx.kong_latency < ctx.proxy_latency
    assert ctx.request_latency >= ctx.proxy_latency


def test_log_phase_runs_only_after_the_last_chunk(runtime: relayq.Runtime) -> None:
    state: dict[str, Any] = {}
    app = make_app(state)
    mw = RelayqMiddleware(app.wsgi_app, plugins=[{"name": "test-recorder"}], runtime=runtime)
    app.wsgi_app = mw  # type: ignore[method-assign]
    with WsgiThread(app) as server, httpx.Client(base_url=server.url) as client:
        assert len(client.get("/stream").content) == 2000
        (ctx,) = recorder(mw).wait_logged(1)
    log_at = next(at for phase, at in recorder(mw).events if phase == "log")
    assert log_at >= state["last_chunk_done"]
    assert ctx.response_size > 2000
    assert ctx.receive_latency >= 50.0


def test_access_injects_and_clears_headers_the_app_sees(runtime: relayq.Runtime) -> None:
    app = make_app({})
    config = {
        "inject": {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        "clear": ["x-b3-sampled"],
    }
    mw = RelayqMiddleware(
        app.wsgi_app, plugins=[{"name": "test-recorder", "config": config}], runtime=runtime
    )
    app.wsgi_app = mw  # type: ignore[method-assign]
    with WsgiThread(app) as server, httpx.Client(base_url=server.url) as client:
        sent = {"traceparent": "00-old", "x-b3-sampled": "1", "x-kept": "yes"}
        seen = client.get("/echo/1", headers=sent).json()["headers"]
    assert seen["Traceparent"] == config["inject"]["traceparent"]  # type: ignore[index]
    assert "X-B3-Sampled" not in seen and seen["X-Kept"] == "yes"


def test_slow_log_phase_does_not_delay_the_response(runtime: relayq.Runtime) -> None:
    app = make_app({})
    mw = RelayqMiddleware(
        app.wsgi_app,
        plugins=[{"name": "test-recorder", "config": {"log_sleep": 1.0}}],
        runtime=runtime,
    )
    app.wsgi_app = mw  # type: ignore[method-assign]
    with WsgiThread(app) as server, httpx.Client(base_url=server.url) as client:
        started = time.monotonic()
        assert client.get("/plain").text == "ok"
        elapsed = time.monotonic() - started
        recorder(mw).wait_logged(1)
    assert elapsed < 0.8, f"response took {elapsed:.2f}s: the log phase delayed it"


def test_failing_plugin_and_failing_app(runtime: relayq.Runtime) -> None:
    def broken(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise RuntimeError("the app fails")

    mw = RelayqMiddleware(
        broken,
        plugins=[
            {"name": "test-recorder-high", "config": {"fail": ["access", "log"]}},
            {"name": "test-recorder"},
        ],
        runtime=runtime,
    )
    with WsgiThread(mw) as server, httpx.Client(base_url=server.url) as client:
        assert client.get("/x").status_code == 500
        (ctx,) = recorder(mw).wait_logged(1)
    assert ctx.status == 500 and ctx.source == "kong"
    failing = recorder(mw, "test-recorder-high").id
    assert mw.chain.errors == {(failing, "access"): 1, (failing, "log"): 1}


def test_entries_reach_the_runtime_from_many_threads() -> None:
    rt = relayq.Runtime()
    app = make_app({})
    queue = {"name": "wsgi-q", "max_batch_size": 50, "max_coalescing_delay": 0.05}
    mw = RelayqMiddleware(
        app.wsgi_app, plugins=[{"name": "test-recorder", "config": {"queue": queue}}], runtime=rt
    )
    app.wsgi_app = mw  # type: ignore[method-assign]
    with WsgiThread(app) as server:

        def hit() -> None:
            with httpx.Client(base_url=server.url) as client:
                for _ in range(5):
                    assert client.get("/plain").status_code == 200

        threads = [threading.Thread(target=hit) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        recorder(mw).wait_logged(20)
    assert rt.flush(timeout=5)
    assert len(recorder(mw).delivered) == 20
    assert rt.stats()["wsgi-q"].entries_sent == 20
    assert rt.shutdown(timeout=5) == 0
