"""The gateway's ASGI application: route, run the plugins' phases, proxy, log.

Each request goes through Kong's phases: the router picks a route; the access phase runs the
applicable plugins by priority (key-auth identifies the consumer here); the request streams to
the service over a pooled keep-alive connection; header_filter runs when the upstream's status
and headers are known; the response streams back; and only after its last byte was handed to
the server does the log phase run, so building log entries never delays a response.

A config reload swaps one immutable ``GatewayState``; requests already running finish with the
state they started with, and the queues (which live in the runtime, not in the state) keep
every entry.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from itertools import chain
from typing import Any
from urllib.parse import parse_qsl, urlencode

import relayq
from relayq.gateway._entities import DEFAULT_WORKSPACE_ID, DEFAULT_WORKSPACE_NAME, GatewayConfig
from relayq.gateway._exits import NO_ROUTE, NO_SERVICE, USE_HTTPS, Exit
from relayq.gateway._http11 import UpstreamError, UpstreamResponse
from relayq.gateway._keyauth import AuthRequest, Credentials, Identity, KeyAuth, UpstreamEdits
from relayq.gateway._paths import escape
from relayq.gateway._plugins import Bound, PhaseErrors, PluginIndex, run_phase
from relayq.gateway._relay import WATCH_ABOVE, ClientWatch, Pump
from relayq.gateway._router import RouteMatch, Router, split_host_header
from relayq.gateway._timing import Stopwatch
from relayq.gateway._upstream import (
    UpstreamPool,
    classify,
    forward_headers,
    response_headers,
    service_host_header,
    timeout_for,
)
from relayq.plugins import Plugin, create_plugin
from relayq.queue import CURRENT_WORKSPACE
from relayq.serializer import HeaderValue, RequestContext

log = logging.getLogger("relayq.gateway")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

VIA = f"1.1 relayq/{relayq.__version__}"
SERVER = f"relayq/{relayq.__version__}".encode()
_JSON = b"application/json; charset=utf-8"


@dataclass(frozen=True, eq=False)
class GatewayState:
    """Everything built from one config; replaced as a whole on reload."""

    config: GatewayConfig
    router: Router
    plugins: PluginIndex
    credentials: Credentials


def build_state(config: GatewayConfig, *, runtime: Any = None,
                plugin_factory: Callable[..., Plugin] = create_plugin) -> GatewayState:
    """Build the router and every enabled plugin instance for ``config``."""
    credentials = Credentials.build(config.consumers, config.credentials)
    return GatewayState(
        config=config,
        router=Router(config.routes, config.services),
        plugins=PluginIndex(config, credentials, runtime=runtime, factory=plugin_factory),
        credentials=credentials,
    )


class Gateway:
    """The ASGI app. ``runtime`` is the ``relayq.Runtime`` the plugins enqueue into (None:
    the process-wide default). ``plugin_factory`` builds queue plugins (tests inject fakes)."""

    def __init__(self, config: GatewayConfig, *, runtime: Any = None,
                 plugin_factory: Callable[..., Plugin] = create_plugin,
                 workspace_id: str = DEFAULT_WORKSPACE_ID) -> None:
        self.runtime = runtime
        self.plugin_factory = plugin_factory
        self.workspace_id = workspace_id
        self.state = build_state(config, runtime=runtime, plugin_factory=plugin_factory)
        self.pool = UpstreamPool()
        self.errors = PhaseErrors()

    def reload(self, config: GatewayConfig) -> None:
        """Swap in a new config; raises (keeping the old one) if a plugin cannot be built."""
        self.state = build_state(config, runtime=self.runtime,
                                 plugin_factory=self.plugin_factory)

    async def aclose(self) -> None:
        """Close the pooled upstream connections."""
        await self.pool.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            # relayq.workspace(), without a context manager's cost on every request
            token = CURRENT_WORKSPACE.set(self.workspace_id or None)
            try:
                await _Exchange(self, self.state, scope, receive, send).run()
            finally:
                CURRENT_WORKSPACE.reset(token)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _header_dict(pairs: list[tuple[bytes, bytes]]) -> dict[str, HeaderValue]:
    out: dict[str, HeaderValue] = {}
    for raw_name, raw_value in pairs:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        existing = out.get(name)
        if existing is None:
            out[name] = value
        elif isinstance(existing, list):
            existing.append(value)
        else:
            out[name] = [existing, value]
    return out


def _head_size(first_line_len: int, pairs: list[tuple[bytes, bytes]]) -> int:
    """Bytes of a head: the first line, each ``name: value`` line, CRLFs."""
    return first_line_len + 4 + sum(map(len, chain.from_iterable(pairs))) + 4 * len(pairs)


def _first(value: HeaderValue | None) -> str | None:
    if isinstance(value, list):
        return value[0] if value else None
    return value


class _Exchange:
    """One request/response, phase by phase."""

    def __init__(self, gw: Gateway, state: GatewayState, scope: Scope, receive: Receive,
                 send: Send) -> None:
        self.gw = gw
        self.state = state
        self.scope = scope
        self.receive = receive
        self.send = send
        self.ctx = ctx = RequestContext()
        self.clock = Stopwatch(ctx)
        self.chosen: list[Bound] = []
        self.edits = UpstreamEdits()
        self.body: bytes | None = None  # the request body, when it had to be buffered
        self.body_bytes = 0
        self.body_started = False
        self.raw_headers: list[tuple[bytes, bytes]] = list(scope.get("headers") or [])
        self.match: RouteMatch | None = None
        self.upstream_codes: list[str] = []
        self.try_start = 0

    # ------------------------------------------------------------------------- request

    def _fill_request(self) -> None:
        scope, ctx = self.scope, self.ctx
        ctx.method = scope["method"]
        ctx.scheme = scope.get("scheme", "http")
        ctx.http_version = scope.get("http_version", "1.1")
        raw_path = scope.get("raw_path")
        ctx.path = raw_path.decode("latin-1") if raw_path else escape(scope.get("path", "/"))
        ctx.query_string = (scope.get("query_string") or b"").decode("latin-1")
        ctx.headers = _header_dict(self.raw_headers)
        server = scope.get("server") or ("127.0.0.1", 80)
        ctx.port = int(server[1] or 80)
        host_header = _first(ctx.headers.get("host")) or f"{server[0]}:{ctx.port}"
        self.host_header = host_header
        ctx.host = split_host_header(host_header)[0]
        client = scope.get("client") or ("", 0)
        ctx.client_ip, ctx.client_port = client[0], int(client[1] or 0)
        ctx.request_id = _new_request_id()
        ctx.workspace_id = self.gw.workspace_id
        ctx.workspace_name = DEFAULT_WORKSPACE_NAME
        target = len(ctx.path) + (len(ctx.query_string) + 1 if ctx.query_string else 0)
        first_line = len(ctx.method) + 1 + target + 6 + len(ctx.http_version)
        self.head_size = _head_size(first_line, self.raw_headers)

    def _has_body(self) -> bool:
        headers = self.ctx.headers
        if "transfer-encoding" in headers:
            return True
        length = _first(headers.get("content-length"))
        return bool(length and length.strip() not in ("", "0"))

    async def _body_stream(self) -> AsyncIterator[bytes]:
        self.body_started = True
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected("client closed the connection while sending the body")
            chunk = message.get("body", b"")
            if chunk:
                self.body_bytes += len(chunk)
                yield chunk
            if not message.get("more_body", False):
                return

    async def _read_body(self) -> bytes:
        if self.body is None:
            parts = [chunk async for chunk in self._body_stream()] if self._has_body() else []
            self.body = b"".join(parts)
        return self.body

    # -------------------------------------------------------------------------- phases

    async def run(self) -> None:
        self._fill_request()
        ctx, state = self.ctx, self.state
        self.clock.mark("router_start")
        self.match = match = state.router.match(ctx.method, ctx.path, self.host_header,
                                                 ctx.headers)
        self.clock.mark("router_end")
        if match is None:
            self.chosen = [b for b in state.plugins.global_only
                           if ctx.scheme in b.entity.protocols]
            await self._exit(Exit(404, NO_ROUTE))
            return
        route = match.route
        ctx.route = dict(route.entity)
        if match.service is not None:
            ctx.service = dict(match.service.entity)
        if "https" in route.protocols and "http" not in route.protocols and \
                ctx.scheme != "https":
            self.chosen = self._collect_without_access()
            await self._exit(self._https_required())
            return
        self.clock.mark("access_start")
        exit_ = await self._access()
        self.clock.mark("access_end")
        if exit_ is not None:
            await self._exit(exit_)
        elif match.service is None:
            await self._exit(Exit(503, NO_SERVICE))
        else:
            await self._proxy(match)

    def _collect_without_access(self) -> list[Bound]:
        assert self.match is not None
        route = self.match.route
        plugins = self.state.plugins
        chosen = []
        for name in plugins.names:
            bound = plugins.select(name, route.id, route.service_id, None, self.ctx.scheme)
            if bound is not None:
                chosen.append(bound)
        return chosen

    async def _access(self) -> Exit | None:
        """Kong's collecting access phase: each plugin's configuration is chosen with the
        consumer known so far; after an exit, the rest are still collected (for log) but
        their access handlers do not run."""
        assert self.match is not None
        ctx, route = self.ctx, self.match.route
        plugins = self.state.plugins
        consumer_id: str | None = None
        exit_: Exit | None = None
        for name in plugins.names:
            bound = plugins.select(name, route.id, route.service_id, consumer_id, ctx.scheme)
            if bound is None:
                continue
            self.chosen.append(bound)
            if exit_ is not None:
                continue
            instance = bound.instance
            if isinstance(instance, KeyAuth):
                outcome = await self._key_auth(instance)
                if isinstance(outcome, Exit):
                    exit_ = outcome
                elif isinstance(outcome, Identity):
                    consumer_id = outcome.consumer.id
                    ctx.consumer = dict(outcome.consumer.entity)
                    ctx.credential = (dict(outcome.credential.entity)
                                      if outcome.credential else None)
                continue
            try:
                instance.access(ctx)
            except Exception as exc:
                self.gw.errors.failed(bound, "access", exc)
        return exit_

    async def _key_auth(self, plugin: KeyAuth) -> Identity | Exit | None:
        ctx = self.ctx
        query = _parse_query(ctx.query_string) if self.edits.query is None else self.edits.query
        body = await self._read_body() if plugin.needs_body else None
        req = AuthRequest(ctx.method, ctx.headers, query,
                          _first(ctx.headers.get("content-type")) or "", body)
        return plugin.authenticate(req, self.edits)

    def _https_required(self) -> Exit:
        assert self.match is not None
        code = self.match.route.https_redirect_status_code
        if code == 426:
            return Exit(426, USE_HTTPS, {"Upgrade": "TLS/1.2, HTTP/1.1"})
        target = self.ctx.path + (f"?{self.ctx.query_string}" if self.ctx.query_string else "")
        return Exit(code, "", {"Location": f"https://{self.ctx.host}{target}"})

    # --------------------------------------------------------------------------- exits

    async def _exit(self, exit_: Exit) -> None:
        """Send a response the gateway generated, then run the log phase."""
        ctx = self.ctx
        ctx.status = exit_.status
        ctx.source = "kong"
        body = exit_.body(ctx.request_id) if exit_.message else b""
        latency = self.clock.since_start_ms()
        headers: list[tuple[bytes, bytes]] = [
            (b"date", formatdate(usegmt=True).encode()),
            (b"content-length", str(len(body)).encode()),
            (b"x-kong-request-id", ctx.request_id.encode()),
            (b"server", SERVER),
        ]
        if body:
            headers.insert(0, (b"content-type", _JSON))
        if "upstream_start" in ctx.timestamps:
            waited = self.clock.ms("upstream_start", "upstream_end")
            headers.append((b"x-kong-upstream-latency", str(int(waited)).encode()))
            headers.append((b"x-kong-proxy-latency",
                            str(int(self.clock.ms("request_start", "upstream_start"))).encode()))
        else:
            headers.append((b"x-kong-response-latency", str(int(latency)).encode()))
        headers.extend((k.lower().encode("latin-1"), v.encode("latin-1"))
                       for k, v in exit_.headers.items())
        ctx.response_headers = _header_dict(headers)
        self._header_filter(headers)
        self.clock.mark("response_start")
        await self.send({"type": "http.response.start", "status": exit_.status,
                         "headers": headers})
        if ctx.method == "HEAD":
            body = b""
        await self.send({"type": "http.response.body", "body": body, "more_body": False})
        self._finish(exit_.status, headers, len(body), chunked=False)

    def _header_filter(self, headers: list[tuple[bytes, bytes]]) -> None:
        ctx = self.ctx
        run_phase(self.chosen, "header_filter", ctx, self.gw.errors)
        for name, value in ctx.response_headers_to_add.items():
            headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))

    def _finish(self, status: int, headers: list[tuple[bytes, bytes]], body_sent: int,
                *, chunked: bool) -> None:
        """After the last byte was handed to the server: sizes, latencies, the log phase."""
        ctx = self.ctx
        self.clock.finish()
        ctx.request_size = self.head_size + self.body_bytes
        phrase = _phrase(status)
        head = _head_size(len("HTTP/1.1 ") + 4 + len(phrase), headers)
        ctx.response_size = head + body_sent
        if self.upstream_codes:
            ctx.upstream_status = ", ".join(self.upstream_codes)
        run_phase(self.chosen, "log", ctx, self.gw.errors)

    # --------------------------------------------------------------------------- proxy

    def _upstream_request_headers(self, match: RouteMatch) -> list[tuple[bytes, bytes]]:
        ctx, edits = self.ctx, self.edits
        assert match.service is not None
        drop: set[str] = set()
        if edits.remove_headers or edits.set_headers:
            drop.update(edits.remove_headers)
            drop.update(edits.set_headers)
        if ctx.upstream_headers_cleared:
            drop.update(name.lower() for name in ctx.upstream_headers_cleared)
        if ctx.upstream_headers:
            drop.update(name.lower() for name in ctx.upstream_headers)
        if edits.body is not None:
            drop.add("content-length")
        headers = forward_headers(self.raw_headers, drop)
        host = self.host_header if match.route.preserve_host else \
            service_host_header(match.service)
        xff = ctx.headers.get("x-forwarded-for")
        xff_text = ", ".join(xff) if isinstance(xff, list) else xff
        via = _first(ctx.headers.get("via"))
        extra = {
            "host": host,
            "x-real-ip": ctx.client_ip,
            "x-forwarded-for": f"{xff_text}, {ctx.client_ip}" if xff_text else ctx.client_ip,
            "x-forwarded-proto": ctx.scheme,
            "x-forwarded-host": ctx.host,
            "x-forwarded-port": str(ctx.port),
            "x-forwarded-path": ctx.path,
            "x-kong-request-id": ctx.request_id,
            "via": f"{via}, {VIA}" if via else VIA,
        }
        if match.route.strip_path and match.matched_path:
            extra["x-forwarded-prefix"] = match.matched_path
        if edits.set_headers:
            extra.update(edits.set_headers)
        if ctx.upstream_headers:
            extra.update({k.lower(): v for k, v in ctx.upstream_headers.items()})
        headers.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items())
        return headers

    def _upstream_target(self, match: RouteMatch) -> str:
        """The request target sent upstream: the service path plus the query string."""
        path = escape(match.upstream_path)
        edited = self.edits.query
        query = urlencode(edited) if edited is not None else self.ctx.query_string
        return f"{path}?{query}" if query else path

    @staticmethod
    def _upstream_url(match: RouteMatch, target: str) -> str:
        service = match.service
        assert service is not None
        host = f"[{service.host}]" if ":" in service.host else service.host
        return f"{service.protocol}://{host}:{service.port}{target}"

    async def _proxy(self, match: RouteMatch) -> None:
        service = match.service
        assert service is not None
        ctx, clock = self.ctx, self.clock
        target = self._upstream_target(match)
        ctx.upstream_uri = target
        headers = self._upstream_request_headers(match)
        pool = self.gw.pool
        timeouts = timeout_for(service)
        verify = bool(service.tls_verify)
        on_connected = self._connected if self.chosen else None
        response: UpstreamResponse | None = None
        clock.mark("upstream_start")
        for attempt in range(service.retries + 1):
            content: Any = self.edits.body if self.edits.body is not None else self.body
            if content is None and self._has_body():
                content = self._body_stream()
            try_start = clock.now()
            self.try_start = try_start
            try:
                response = await pool.request(
                    ctx.method, service.protocol, service.host, service.port, target, headers,
                    content, timeouts, verify=verify, on_connected=on_connected)
            except ClientDisconnected:
                # nginx's 499: nothing can be answered, but the request is still logged.
                log.info("request %s: client went away while sending its body", ctx.request_id)
                clock.mark("upstream_end")
                ctx.status = 499
                self._finish(499, [], 0, chunked=False)
                return
            except UpstreamError as exc:
                failure = classify(exc)
                self._record_try(service.host, service.port, try_start, failure.status)
                self.upstream_codes.append(str(failure.status))
                # A streamed body that began to flow cannot be sent again; bytes can.
                replayable = isinstance(content, bytes) or not self.body_started
                if failure.retry and attempt < service.retries and replayable:
                    continue
                clock.mark("upstream_end")
                log.warning("request %s: upstream %s failed: %s: %s", ctx.request_id,
                            self._upstream_url(match, target), type(exc).__name__, exc)
                await self._exit(Exit(failure.status, failure.message))
                return
            self._record_try(service.host, service.port, try_start, None, response)
            break
        assert response is not None
        try:
            await self._relay(response)
        finally:
            response.close()

    def _record_try(self, host: str, port: int, start_ns: int, failed_code: int | None,
                    response: UpstreamResponse | None = None) -> None:
        """One entry of Kong's ``tries``. As in Kong, a failed try's ``balancer_latency`` is
        its whole duration (set when the next try starts); the last try's is the time until
        its connection was ready."""
        ip = host
        if response is not None and response.peer is not None:
            ip, port = response.peer
        if failed_code is not None:
            latency_ns = self.clock.now() - start_ns
        else:
            connected = self.ctx.timestamps.get("upstream_connected", start_ns)
            latency_ns = max(0, connected - start_ns)
        entry: dict[str, Any] = {
            "ip": ip, "port": port, "hostname": host,
            "balancer_start": start_ns // 1_000_000, "balancer_start_ns": start_ns,
            "balancer_latency": latency_ns // 1_000_000, "balancer_latency_ns": latency_ns,
        }
        if failed_code is not None:
            entry["state"], entry["code"] = "failed", failed_code
        self.ctx.tries.append(entry)

    def _connected(self) -> None:
        """The try's connection is ready (new, or reused from the pool)."""
        self.clock.mark("upstream_connected")

    async def _relay(self, response: UpstreamResponse) -> None:
        ctx, clock = self.ctx, self.clock
        clock.mark("upstream_first_byte")
        status = response.status
        ctx.status = status
        ctx.source = "upstream"
        self.upstream_codes.append(str(status))
        headers = response_headers(response.headers)
        ctx.response_headers = _header_dict(headers)
        upstream_ms = clock.ms("upstream_start", "upstream_first_byte")
        proxy_ms = clock.ms("request_start", "upstream_start")
        via = _first(ctx.response_headers.get("via"))
        headers = [(n, v) for n, v in headers if n.lower() != b"via"]
        headers.extend((
            (b"x-kong-upstream-latency", str(int(upstream_ms)).encode()),
            (b"x-kong-proxy-latency", str(int(proxy_ms)).encode()),
            (b"via", (f"{via}, {VIA}" if via else VIA).encode("latin-1")),
            (b"x-kong-request-id", ctx.request_id.encode()),
        ))
        self._header_filter(headers)
        length = _first(ctx.response_headers.get("content-length"))
        remaining = int(length) if length and length.isdigit() else None
        chunked = remaining is None and ctx.method != "HEAD" and status not in (
            204, 304) and status >= 200
        clock.mark("response_start")
        await self.send({"type": "http.response.start", "status": status,
                         "headers": headers})
        pump = Pump(self.send, remaining, chunked)
        watch = ClientWatch(self.receive, lambda: pump.finished) \
            if remaining is None or remaining > WATCH_ABOVE else None
        try:
            if watch is None:
                await pump.run(response)
            else:
                async with watch:
                    await pump.run(response)
        except UpstreamError as exc:
            clock.mark("upstream_end")
            log.warning("request %s: upstream failed while sending its body (%s: %s); "
                        "closing the client connection", ctx.request_id,
                        type(exc).__name__, exc)
            # Returning without the final body message makes the server close the client
            # connection, so the client sees a truncated response, not a complete one.
            self._finish(status, headers, pump.wire_bytes, chunked=chunked)
            return
        clock.mark("upstream_end")
        if watch is not None and watch.gone:
            log.info("request %s: client went away during the response; upstream stream "
                     "closed", ctx.request_id)
        self._finish(status, headers, pump.wire_bytes, chunked=chunked)


class ClientDisconnected(Exception):
    """The client closed its connection before the request body was complete."""


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _parse_query(query: str) -> list[tuple[str, str]]:
    return parse_qsl(query, keep_blank_values=True)


def _new_request_id() -> str:
    return os.urandom(16).hex()
