"""The proxy in-process (uvicorn on a thread) with recording plugins: what the upstream and the
client see, and the RequestContext the plugins get in each phase."""

from __future__ import annotations

import copy
import hashlib
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import pytest

from relayq.gateway import Gateway, parse_config
from relayq.plugins import Plugin
from relayq.serializer import RequestContext
from tests.gateway.conftest import free_port, serve_app, wait_until
from tests.gateway.upstream import Upstream

PRIORITIES = {"zipkin": 100000, "opentelemetry": 14, "http-log": 12, "statsd": 11,
              "datadog": 10}
VALID = {
    "http-log": {"http_endpoint": "http://127.0.0.1:9/log"},
    "zipkin": {"http_endpoint": "http://127.0.0.1:9/api/v2/spans"},
    "statsd": {},
    "datadog": {},
    "opentelemetry": {"traces_endpoint": "http://127.0.0.1:9/v1/traces"},
}


class Recorder(Plugin):
    """Stands in for a queue plugin: records the context in each phase."""

    def __init__(self, name: str, plugin_id: str, journal: list[tuple[str, str, str]]) -> None:
        self.id = plugin_id
        self.instance_name = None
        self.runtime = None
        self.config = {}
        self.kong_name = name
        self.priority = PRIORITIES[name]  # type: ignore[misc]
        self.journal = journal
        self.logged: list[RequestContext] = []
        self.fail_in: str | None = None
        self.block_log: threading.Event | None = None

    def access(self, ctx: RequestContext) -> None:
        self.journal.append(("access", self.kong_name, self.id))
        ctx.upstream_headers["x-injected-by"] = self.kong_name
        ctx.upstream_headers_cleared.append("x-cleared")
        if self.fail_in == "access":
            raise RuntimeError("boom in access")

    def header_filter(self, ctx: RequestContext) -> None:
        self.journal.append(("header_filter", self.kong_name, self.id))
        ctx.response_headers_to_add[f"x-seen-{self.kong_name}"] = str(ctx.status)

    def log(self, ctx: RequestContext) -> None:
        self.journal.append(("log", self.kong_name, self.id))
        if self.block_log is not None:
            self.block_log.wait(10)
        if self.fail_in == "log":
            raise RuntimeError("boom in log")
        self.logged.append(copy.deepcopy(ctx))


class Harness:
    def __init__(self, config: Mapping[str, Any]) -> None:
        self.journal: list[tuple[str, str, str]] = []
        self.plugins: dict[str, Recorder] = {}
        self.config = parse_config(config)
        self.app = Gateway(self.config, plugin_factory=self.factory)

    def factory(self, name: str, config: Mapping[str, Any], *, plugin_id: str,
                instance_name: str | None = None, runtime: Any = None) -> Recorder:
        recorder = Recorder(name, plugin_id, self.journal)
        self.plugins[plugin_id] = recorder
        return recorder

    def by_location(self, location: str) -> Recorder:
        entity = next(p for p in self.config.plugins if p.location == location)
        return self.plugins[entity.id]


def plugin(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "config": dict(VALID[name]), **extra}


@pytest.fixture
def harness(upstream: Upstream) -> Iterator[tuple[Harness, str, Upstream]]:
    h = Harness(base_config(upstream.url))
    with serve_app(h.app) as url:
        yield h, url, upstream


def base_config(upstream_url: str) -> dict[str, Any]:
    return {
        "_format_version": "3.0",
        "services": [
            {"name": "svc", "url": upstream_url + "/base", "routes": [
                {"name": "open", "paths": ["/open"]},
                {"name": "kept", "paths": ["/kept"], "strip_path": False, "preserve_host": True},
                {"name": "private", "paths": ["/private"],
                 "plugins": [{"name": "key-auth"}, plugin("zipkin")]},
            ]},
            {"name": "dead", "url": f"http://127.0.0.1:{free_port()}", "retries": 2,
             "routes": [{"name": "dead", "paths": ["/dead"]}]},
            {"name": "unresolvable", "host": "no-such-host.invalid", "retries": 0,
             "routes": [{"name": "unresolvable", "paths": ["/unresolvable"]}]},
            {"name": "slow", "url": upstream_url, "read_timeout": 300, "retries": 0,
             "routes": [{"name": "slow", "paths": ["/slow"], "strip_path": False}]},
        ],
        "routes": [
            {"name": "serviceless", "paths": ["/nowhere-to-go"]},
            {"name": "tls-only", "paths": ["/secure"], "protocols": ["https"],
             "service": "svc"},
        ],
        "consumers": [
            {"username": "alice", "custom_id": "c-alice",
             "keyauth_credentials": [{"key": "alice-key"}],
             "plugins": [plugin("http-log", instance_name="alice-log")]},
        ],
        "plugins": [plugin("http-log"), plugin("statsd")],
    }


def logged(recorder: Recorder, count: int = 1) -> list[RequestContext]:
    wait_until(lambda: len(recorder.logged) >= count, what=f"{count} logged request(s)")
    return recorder.logged


def test_proxied_request_context(harness: tuple[Harness, str, Upstream]) -> None:
    h, url, up = harness
    response = httpx.get(f"{url}/open/items?page=2&x", headers={"x-trace": "t1"})
    assert response.status_code == 200
    echo = response.json()
    assert echo["path"] == "/base/items?page=2&x"
    ctx = logged(h.by_location("plugins[0]"))[0]
    assert (ctx.method, ctx.path, ctx.query_string) == ("GET", "/open/items", "page=2&x")
    assert ctx.headers["x-trace"] == "t1"
    assert ctx.route is not None and ctx.route["name"] == "open"
    assert ctx.service is not None and ctx.service["name"] == "svc"
    assert ctx.consumer is None
    assert ctx.upstream_uri == "/base/items?page=2&x"
    assert (ctx.status, ctx.upstream_status, ctx.source) == (200, "200", "upstream")
    assert ctx.request_id == response.headers["x-kong-request-id"] == \
        echo["headers"]["x-kong-request-id"]
    assert ctx.workspace_id == "0dc6f45b-8f8d-40d2-a504-473544ee190b"
    ts = ctx.timestamps
    order = ["request_start", "router_start", "router_end", "access_start", "access_end",
             "upstream_start",
             "upstream_connected", "upstream_first_byte", "response_start", "upstream_end",
             "response_end"]
    assert [ts[k] for k in order] == sorted(ts[k] for k in order)
    assert ctx.proxy_latency >= 0 and ctx.kong_latency >= 0 and ctx.receive_latency >= 0
    assert ctx.request_latency >= ctx.proxy_latency
    assert ctx.proxy_latency == pytest.approx(
        (ts["upstream_first_byte"] - ts["upstream_start"]) / 1e6)
    assert ctx.request_size > len("GET /open/items?page=2&x HTTP/1.1")
    assert ctx.response_size > len(response.content)
    assert len(ctx.tries) == 1 and ctx.tries[0]["ip"] == "127.0.0.1"
    assert ctx.tries[0]["port"] == up.port
    assert int(response.headers["x-kong-upstream-latency"]) == int(ctx.proxy_latency)


def test_upstream_and_client_headers(harness: tuple[Harness, str, Upstream]) -> None:
    _, url, up = harness
    response = httpx.get(f"{url}/open/a", headers={
        "x-forwarded-for": "10.0.0.1", "x-forwarded-proto": "spoofed",
        "connection": "keep-alive, x-hop", "x-hop": "must not pass",
        "x-consumer-username": "spoofed", "x-cleared": "a propagation header",
    })
    seen = response.json()["headers"]
    assert seen["host"] == f"127.0.0.1:{up.port}"
    assert seen["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    assert seen["x-real-ip"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "127.0.0.1"
    assert seen["x-forwarded-port"] == url.rsplit(":", 1)[1]
    assert seen["x-forwarded-path"] == "/open/a"
    assert seen["x-forwarded-prefix"] == "/open"
    assert seen["via"].startswith("1.1 relayq/")
    assert seen["x-injected-by"] in ("http-log", "statsd")  # ctx.upstream_headers reach it
    assert "x-hop" not in seen
    assert "x-cleared" not in seen  # ctx.upstream_headers_cleared (propagation.clear)
    assert seen["x-consumer-username"] == "spoofed"  # as Kong: only key-auth routes reset it
    assert "user-agent" in seen and "python-httpx" in seen["user-agent"]  # the client's own
    assert response.headers["via"].startswith("1.1 relayq/")
    assert response.headers["set-cookie"] == "upstream=1"
    assert response.headers["x-seen-http-log"] == "200"  # added in header_filter
    assert "x-kong-proxy-latency" in response.headers
    kept = httpx.get(f"{url}/kept/b", headers={"host": "public.example.com:8443"}).json()
    assert kept["path"] == "/base/kept/b" and kept["headers"]["host"] == "public.example.com:8443"
    assert "x-forwarded-prefix" not in kept["headers"]


def test_no_cookies_are_shared_between_clients(harness: tuple[Harness, str, Upstream]) -> None:
    _, url, _ = harness
    httpx.get(f"{url}/open/first")
    assert "cookie" not in httpx.get(f"{url}/open/second").json()["headers"]


def test_no_route_is_404_and_logged_by_global_plugins(
        harness: tuple[Harness, str, Upstream]) -> None:
    h, url, _ = harness
    response = httpx.get(f"{url}/missing")
    assert response.status_code == 404
    assert response.json() == {"message": "no Route matched with those values",
                               "request_id": response.headers["x-kong-request-id"]}
    assert "x-kong-response-latency" in response.headers
    ctx = logged(h.by_location("plugins[0]"))[0]
    assert (ctx.status, ctx.source, ctx.route, ctx.proxy_latency) == (404, "kong", None, -1.0)
    assert not any(j[0] == "access" for j in h.journal)  # Kong runs no access phase on 404


def test_route_without_service_and_https_only_route(
        harness: tuple[Harness, str, Upstream]) -> None:
    _, url, _ = harness
    response = httpx.get(f"{url}/nowhere-to-go")
    assert response.status_code == 503
    assert response.json()["message"] == "no Service found with those values"
    response = httpx.get(f"{url}/secure")
    assert response.status_code == 426
    assert response.json()["message"] == "Please use HTTPS protocol"


def test_key_auth_consumer_and_consumer_scoped_plugin(
        harness: tuple[Harness, str, Upstream]) -> None:
    h, url, _ = harness
    global_log = h.by_location("plugins[0]")
    alice_log = h.by_location("consumers[0].plugins[0]")
    denied = httpx.get(f"{url}/private/x")
    assert denied.status_code == 401
    assert denied.json()["message"] == "No API key found in request"
    assert denied.headers["www-authenticate"] == 'Key realm="kong"'
    ctx = logged(global_log)[0]
    assert (ctx.status, ctx.consumer) == (401, None)
    wrong = httpx.get(f"{url}/private/x", headers={"apikey": "nope"})
    assert wrong.json()["message"] == "Invalid authentication credentials"
    logged(global_log, 2)
    before = len(h.journal)
    ok = httpx.get(f"{url}/private/x?apikey=alice-key")
    assert ok.status_code == 200
    assert ok.json()["headers"]["x-consumer-username"] == "alice"
    ctx = logged(alice_log)[0]  # the consumer's http-log replaced the global one
    assert ctx.consumer is not None and ctx.consumer["username"] == "alice"
    assert ctx.consumer["custom_id"] == "c-alice"
    assert ctx.credential is not None and "key" not in ctx.credential
    assert len(global_log.logged) == 2
    # Kong's order: zipkin (100000) before key-auth (1250) before http-log (12), statsd (11).
    accesses = [name for phase, name, _ in h.journal[before:] if phase == "access"]
    assert accesses == ["zipkin", "http-log", "statsd"]


def test_a_failing_plugin_never_breaks_the_request(
        harness: tuple[Harness, str, Upstream]) -> None:
    h, url, _ = harness
    statsd = h.by_location("plugins[1]")
    statsd.fail_in = "access"
    http_log = h.by_location("plugins[0]")
    http_log.fail_in = "log"
    assert httpx.get(f"{url}/open/x").status_code == 200
    wait_until(lambda: h.app.errors.counts[(http_log.id, "log")] == 1)
    assert h.app.errors.counts[(statsd.id, "access")] == 1
    logged(statsd)


def test_log_phase_runs_after_the_response_was_sent(
        harness: tuple[Harness, str, Upstream]) -> None:
    h, url, _ = harness
    gate = threading.Event()
    http_log = h.by_location("plugins[0]")
    http_log.block_log = gate
    try:
        # The log phase is blocked; the client still gets its whole response.
        response = httpx.get(f"{url}/open/x", timeout=5)
        assert response.status_code == 200 and response.json()["path"] == "/base/x"
        assert http_log.logged == []
    finally:
        gate.set()
    logged(http_log)


def test_upstream_failures_502_and_504(harness: tuple[Harness, str, Upstream]) -> None:
    h, url, _ = harness
    global_log = h.by_location("plugins[0]")
    refused = httpx.get(f"{url}/dead")
    assert refused.status_code == 502
    assert refused.json()["message"] == "An invalid response was received from the upstream " \
                                        "server"
    ctx = logged(global_log)[0]
    assert ctx.upstream_status == "502, 502, 502"  # retries: 2
    assert [t.get("state") for t in ctx.tries] == ["failed"] * 3
    assert all(t["balancer_latency_ns"] > 0 and t["hostname"] == "127.0.0.1" for t in ctx.tries)
    assert ctx.source == "kong" and ctx.proxy_latency >= 0
    slow = httpx.get(f"{url}/slow?delay=2")
    assert slow.status_code == 504
    assert slow.json()["message"] == "The upstream server is timing out"
    closed = httpx.get(f"{url}/open/close")
    assert closed.status_code == 502
    garbage = httpx.get(f"{url}/open/garbage")
    assert garbage.status_code == 502
    unresolvable = httpx.get(f"{url}/unresolvable")
    assert unresolvable.status_code == 503
    assert unresolvable.json()["message"] == "name resolution failed"
    statuses = [c.status for c in logged(global_log, 5)]
    assert statuses == [502, 504, 502, 502, 503]


def test_streaming_response(harness: tuple[Harness, str, Upstream]) -> None:
    _, url, _ = harness
    arrivals: list[float] = []
    start = time.monotonic()
    with httpx.stream("GET", f"{url}/open/stream?chunks=4&delay=0.4") as response:
        assert response.headers.get("transfer-encoding") == "chunked"
        text = b""
        for chunk in response.iter_raw():
            arrivals.append(time.monotonic() - start)
            text += chunk
    assert text == b"chunk 0\nchunk 1\nchunk 2\nchunk 3\n"
    assert arrivals[0] < 0.6 and arrivals[-1] > 1.1  # the first chunk did not wait for the rest


def test_streaming_request_body(harness: tuple[Harness, str, Upstream]) -> None:
    _, url, up = harness

    def body() -> Iterator[bytes]:
        yield b"first chunk;"
        # Only continue once the upstream has the first chunk: a buffering proxy would hang.
        wait_until(lambda: up.requests and up.requests[-1].chunk_times, 5.0,
                   "the upstream to receive the first chunk")
        yield b"second chunk"

    response = httpx.post(f"{url}/open/upload", content=body(), timeout=10)
    assert response.status_code == 200
    assert response.json()["body_size"] == len(b"first chunk;second chunk")


def test_large_bodies_both_ways_are_intact(harness: tuple[Harness, str, Upstream]) -> None:
    h, url, _ = harness
    payload = bytes(range(256)) * 20000  # ~5 MB
    response = httpx.post(f"{url}/open/echo", content=payload, timeout=30)
    assert response.json()["body_sha256"] == hashlib.sha256(payload).hexdigest()
    big = httpx.get(f"{url}/open/big?size=3000000", timeout=30)
    assert len(big.content) == 3000000
    ctx = logged(h.by_location("plugins[0]"), 2)[1]
    assert ctx.response_size > 3000000


def test_head_requests(harness: tuple[Harness, str, Upstream]) -> None:
    _, url, _ = harness
    assert httpx.head(f"{url}/open/x").status_code == 200
    assert httpx.head(f"{url}/missing").status_code == 404


def test_reload_swaps_routes_and_plugins(upstream: Upstream) -> None:
    h = Harness(base_config(upstream.url))
    with serve_app(h.app) as url:
        assert httpx.get(f"{url}/v2/x").status_code == 404
        config = base_config(upstream.url)
        config["services"][0]["routes"].append({"name": "v2", "paths": ["/v2"]})
        h.app.reload(parse_config(config))
        assert httpx.get(f"{url}/v2/x").json()["path"] == "/base/x"


def test_client_leaving_stops_an_endless_upstream_stream(
        harness: tuple[Harness, str, Upstream]) -> None:
    h, url, _ = harness
    with httpx.stream("GET", f"{url}/open/stream?chunks=100&delay=0.1") as response:
        first = next(response.iter_raw())
        assert first.startswith(b"chunk 0")
    left_at = time.monotonic()
    ctx = logged(h.by_location("plugins[0]"))[0]
    assert time.monotonic() - left_at < 3  # the upstream stream would last 10 s
    assert ctx.status == 200 and ctx.response_size < 100 * len(b"chunk 99\n")


def test_client_leaving_during_upload_is_logged_as_499(
        harness: tuple[Harness, str, Upstream]) -> None:
    h, url, _ = harness
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /open/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
                     b"only a few bytes")
        wait_until(lambda: h.journal and h.journal[-1][0] == "access", what="the access phase")
    ctx = logged(h.by_location("plugins[0]"))[0]
    assert ctx.status == 499 and ctx.request_size > len("only a few bytes")
