"""ASGI middleware running relayq's plugins around any ASGI app (FastAPI, Starlette, ...).

The application plays the part of Kong's upstream service: tracing plugins inject their
propagation headers into the request the app sees, ``header_filter`` may add response headers,
and the log phase (building the entries and enqueueing them) runs only once the last body
chunk was handed to the server, scheduled on the loop rather than awaited, so a slow or failing
log server never delays a response. On lifespan shutdown the middleware flushes the queues
within a deadline, so entries still coalescing are delivered before the process exits.

Sizes are counted as the middleware sees them: ``request.size`` is the request line, the
client's headers and the body; ``response.size`` the status line, the headers the app and the
plugins set, and the body. Headers a server adds on its own (``date``, ``server``) are invisible
to middleware and not counted.

Usage::

    plugins = [{"name": "http-log", "config": {"http_endpoint": "http://logs:9000/"}}]
    app = RelayqMiddleware(app, plugins=plugins)
    # or, with Starlette / FastAPI:  app.add_middleware(RelayqMiddleware, plugins=plugins)
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any
from urllib.parse import quote

from relayq._hostcore import (
    PluginChain,
    PluginsConfigError,
    RuntimeLike,
    Stopwatch,
    build_plugins,
    content_length,
    head_size,
    headers_from_pairs,
    new_request_id,
    request_head_size,
    split_host,
)
from relayq.serializer import RequestContext

__all__ = ["PluginsConfigError", "RelayqMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# The wrapped app is only called, so any three-argument coroutine function fits, whatever
# scope and message types it declares (Starlette's, asgiref's TypedDicts, plain dicts).
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

log = logging.getLogger("relayq.asgi")

_TLS_VERSIONS = {0x0301: "TLSv1", 0x0302: "TLSv1.1", 0x0303: "TLSv1.2", 0x0304: "TLSv1.3"}


class RelayqMiddleware:
    """Wrap an ASGI app so every HTTP request runs the configured plugins' phases.

    ``plugins`` has the shape of a Kong declarative ``plugins[]`` list (``name``, ``config``,
    optional ``id``, ``instance_name``, ``enabled``); it is validated here, and every problem
    is reported at once as ``PluginsConfigError`` (a ``ValueError`` with ``errors``).
    ``runtime`` is the ``relayq.Runtime`` the plugins enqueue into (``None``: the process-wide
    default). On lifespan shutdown the runtime is closed within ``shutdown_timeout`` seconds
    unless ``close_runtime`` is false (for a runtime shared with other code).
    """

    def __init__(
        self,
        app: ASGIApp,
        plugins: Iterable[Mapping[str, Any]] = (),
        *,
        runtime: RuntimeLike | None = None,
        shutdown_timeout: float | None = 10.0,
        close_runtime: bool = True,
    ) -> None:
        if shutdown_timeout is not None and shutdown_timeout < 0:
            raise ValueError("shutdown_timeout must be >= 0 or None")
        self.app = app
        self.runtime = runtime
        self.chain = PluginChain(build_plugins(plugins, runtime=runtime))
        self.shutdown_timeout = shutdown_timeout
        self.close_runtime = close_runtime
        self.undelivered: int | None = None  # set by the lifespan shutdown, for the host's report

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" and self.chain.plugins:
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = RequestContext()
        watch = Stopwatch(ctx)
        fill_request(ctx, scope)
        self.chain.access(ctx)
        if ctx.upstream_headers or ctx.upstream_headers_cleared:
            scope = dict(scope)
            scope["headers"] = with_headers(
                scope.get("headers") or [], ctx.upstream_headers, ctx.upstream_headers_cleared
            )
        exchange = _Exchange(self.chain, ctx, watch, receive, send)
        watch.mark("access_end")
        watch.mark("upstream_start")
        try:
            await self.app(scope, exchange.receive, exchange.send)
        except asyncio.CancelledError:
            if not exchange.started:
                ctx.status, ctx.source = 499, "kong"  # nginx's "client closed request"
            raise
        except BaseException:
            if not exchange.started:
                # The server answers for the app: Kong counts such responses as its own.
                ctx.status, ctx.source = 500, "kong"
            raise
        finally:
            exchange.complete()

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = {"startup_received": False, "app_replied": False}

        async def lifespan_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                state["startup_received"] = True
            return message

        async def lifespan_send(message: Message) -> None:
            state["app_replied"] = True
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.aclose()
            await send(message)

        try:
            await self.app(scope, lifespan_receive, lifespan_send)
        except Exception:
            if state["app_replied"]:
                raise
            # The app does not speak the lifespan protocol: speak it for the app, so the
            # queues are still flushed at shutdown.
            log.debug("app does not support lifespan; relayq handles it", exc_info=True)
            if not state["startup_received"]:
                await receive()
            await send({"type": "lifespan.startup.complete"})
            while (await receive())["type"] != "lifespan.shutdown":
                pass
            await self.aclose()
            await send({"type": "lifespan.shutdown.complete"})

    async def aclose(self) -> int:
        """Flush every queue within ``shutdown_timeout``; return the entries not delivered.

        Called on lifespan shutdown; call it yourself if your server has no lifespan support.
        """
        if not self.close_runtime:
            return 0
        runtime: Any = self.runtime
        if runtime is None:
            import relayq

            runtime = relayq
        timeout = self.shutdown_timeout
        # The runtime honours its own deadline; the guard only protects against a stuck one.
        guard = None if timeout is None else timeout + 5.0
        try:
            undelivered = int(await asyncio.wait_for(runtime.aclose(timeout=timeout), guard))
        except TimeoutError:
            log.error("relayq queues did not close within %.1f s", guard)
            undelivered = -1
        self.undelivered = undelivered
        if undelivered:
            log.warning("relayq shutdown: %d queued entries were not delivered", undelivered)
        return undelivered


class _Exchange:
    """One request's view of the ASGI conversation: sizes, timings, and when to log."""

    def __init__(
        self,
        chain: PluginChain,
        ctx: RequestContext,
        watch: Stopwatch,
        receive: Receive,
        send: Send,
    ) -> None:
        self.chain = chain
        self.ctx = ctx
        self.watch = watch
        self._receive = receive
        self._send = send
        self.started = False
        self.body_received = 0
        self.head_sent = 0
        self.body_sent = 0
        self._logged = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.body_received += len(message.get("body", b""))
        return message

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            message = self._start(message)
            await self._send(message)
        elif kind == "http.response.body":
            self.body_sent += len(message.get("body", b""))
            await self._send(message)
            if not message.get("more_body", False):
                self.complete()
        elif kind == "http.response.pathsend":
            await self._send(message)
            with contextlib.suppress(OSError):
                self.body_sent += os.path.getsize(message["path"])
            self.complete()
        else:
            await self._send(message)

    def _start(self, message: Message) -> Message:
        ctx = self.ctx
        self.started = True
        self.watch.mark("upstream_first_byte")
        self.watch.mark("response_start")
        ctx.status = int(message["status"])
        ctx.upstream_status = str(ctx.status)
        raw = list(message.get("headers") or [])
        ctx.response_headers = headers_from_pairs(raw)
        self.chain.header_filter(ctx)
        if ctx.response_headers_to_add:
            raw = with_headers(raw, ctx.response_headers_to_add)
            message = {**message, "headers": raw}
            ctx.response_headers = headers_from_pairs(raw)
        try:
            reason = http.HTTPStatus(ctx.status).phrase
        except ValueError:
            reason = ""
        self.head_sent = head_size(
            f"HTTP/{ctx.http_version} {ctx.status} {reason}",
            ((n.decode("latin-1"), v.decode("latin-1")) for n, v in raw),
        )
        return message

    def complete(self) -> None:
        """The response is finished (or abandoned): fill the sizes, schedule the log phase."""
        if self._logged:
            return
        self._logged = True
        ctx = self.ctx
        self.watch.finish()
        declared = content_length(ctx.headers)
        ctx.request_size = request_head_size(ctx) + max(declared, self.body_received)
        ctx.response_size = self.head_sent + self.body_sent
        # Not awaited and not run inline: the app's final send returns at once, and the entries
        # are built on the next loop iteration, after the server wrote the response.
        asyncio.get_running_loop().call_soon(self.chain.log, ctx)


def fill_request(ctx: RequestContext, scope: Scope) -> None:
    """Fill the request fields of ``ctx`` from an ASGI HTTP scope (before the access phase)."""
    scheme = str(scope.get("scheme") or "http")
    server = scope.get("server")
    ctx.method = str(scope.get("method") or "GET").upper()
    ctx.scheme = scheme
    ctx.port = (
        int(server[1]) if server and server[1] is not None else (443 if scheme == "https" else 80)
    )
    ctx.headers = headers_from_pairs(scope.get("headers") or [])
    host = ctx.headers.get("host")
    default_host = str(server[0]) if server else "localhost"
    ctx.host = split_host(host if isinstance(host, str) else default_host, default_host)
    ctx.path = _raw_path(scope)
    ctx.query_string = bytes(scope.get("query_string") or b"").decode("latin-1")
    ctx.upstream_uri = ctx.path + (f"?{ctx.query_string}" if ctx.query_string else "")
    client = scope.get("client")
    if client:
        ctx.client_ip, ctx.client_port = str(client[0]), int(client[1] or 0)
    ctx.http_version = str(scope.get("http_version") or "1.1")
    ctx.request_id = new_request_id()
    tls = (scope.get("extensions") or {}).get("tls")
    if scheme in ("https", "wss") and isinstance(tls, Mapping):
        ctx.tls = {
            "version": _TLS_VERSIONS.get(tls.get("tls_version") or 0),
            "cipher": tls.get("cipher_suite"),
            "client_verify": "SUCCESS" if tls.get("client_cert_chain") else "NONE",
        }


def _raw_path(scope: Scope) -> str:
    raw = scope.get("raw_path")
    if raw:
        return bytes(raw).decode("latin-1").partition("?")[0]
    # Without raw_path, re-encode the decoded path (which includes root_path, per the spec).
    return quote(str(scope.get("path") or "/"), safe="/:@!$&'()*+,;=-._~%")


def with_headers(
    raw: Iterable[tuple[bytes, bytes]], new: Mapping[str, str], drop: Iterable[str] = ()
) -> list[tuple[bytes, bytes]]:
    """``raw`` ASGI headers without those named in ``drop``, with each header of ``new`` set
    (replacing any of the same name)."""
    names = {name.lower().encode("latin-1") for name in (*new, *drop)}
    kept = [(n, v) for n, v in raw if n.lower() not in names]
    kept.extend(
        (name.lower().encode("latin-1"), str(value).encode("latin-1"))
        for name, value in new.items()
    )
    return kept
