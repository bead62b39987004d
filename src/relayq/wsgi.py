"""WSGI middleware running relayq's plugins around any WSGI app (Flask, Django, ...).

The application plays the part of Kong's upstream service. The log phase runs when the server
closes the response iterable, which PEP 3333 servers do only after the last body byte was
written, so the entries are built after the response was sent and never delay it; enqueueing
never blocks, so a slow or failing log server cannot hold a worker thread either.

Usage::

    app.wsgi_app = RelayqMiddleware(app.wsgi_app, plugins=[...])      # Flask
    application = RelayqMiddleware(get_wsgi_application(), plugins=[...])  # Django wsgi.py
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import quote
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from relayq._hostcore import (
    PluginChain,
    PluginsConfigError,
    RuntimeLike,
    Stopwatch,
    add_header,
    build_plugins,
    content_length,
    head_size,
    new_request_id,
    request_head_size,
    split_host,
)
from relayq.serializer import HeaderValue, RequestContext

__all__ = ["PluginsConfigError", "RelayqMiddleware"]

log = logging.getLogger("relayq.wsgi")

Environ = WSGIEnvironment
ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]
Write = Callable[[bytes], object]


class RelayqMiddleware:
    """Wrap a WSGI app so every request runs the configured plugins' phases.

    ``plugins`` has the shape of a Kong declarative ``plugins[]`` list and is validated here
    (every problem at once, as ``PluginsConfigError``, a ``ValueError`` with ``errors``).
    ``runtime`` is the ``relayq.Runtime`` the plugins enqueue into; ``None`` means the
    process-wide default, whose background thread delivers entries and whose ``atexit`` hook
    flushes them.
    """

    def __init__(
        self,
        app: WSGIApplication,
        plugins: Iterable[Mapping[str, Any]] = (),
        *,
        runtime: RuntimeLike | None = None,
    ) -> None:
        self.app = app
        self.runtime = runtime
        self.chain = PluginChain(build_plugins(plugins, runtime=runtime))

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if not self.chain.plugins:
            return self.app(environ, start_response)
        ctx = RequestContext()
        watch = Stopwatch(ctx)
        fill_request(ctx, environ)
        self.chain.access(ctx)
        body = _CountingInput(environ.get("wsgi.input"))
        environ = _with_headers(environ, ctx.upstream_headers, ctx.upstream_headers_cleared)
        environ["wsgi.input"] = body
        exchange = _Exchange(self.chain, ctx, watch, body, start_response)
        watch.mark("access_end")
        watch.mark("upstream_start")
        try:
            result = self.app(environ, exchange.start_response)
        except BaseException:
            # No response exists yet; the server will send its own 500, which Kong would
            # attribute to itself. The entry is built now because nothing later will run.
            ctx.status, ctx.source = 500, "kong"
            exchange.complete()
            raise
        return _LoggedResponse(result, exchange)


class _CountingInput:
    """``wsgi.input`` that counts the body bytes the app reads (for ``request.size``)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._stream.read(size) if self._stream is not None else b""
        self.count += len(data)
        return data

    def readline(self, size: int = -1) -> bytes:
        data: bytes = self._stream.readline(size) if self._stream is not None else b""
        self.count += len(data)
        return data

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines: list[bytes] = self._stream.readlines(hint) if self._stream is not None else []
        self.count += sum(map(len, lines))
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def __getattr__(self, name: str) -> Any:
        # Servers' extensions (e.g. gunicorn's Body.close) stay reachable.
        return getattr(self._stream, name)


class _Exchange:
    """One request's view of the WSGI conversation: sizes, timings, and when to log."""

    def __init__(
        self,
        chain: PluginChain,
        ctx: RequestContext,
        watch: Stopwatch,
        body: _CountingInput,
        start_response: StartResponse,
    ) -> None:
        self.chain = chain
        self.ctx = ctx
        self.watch = watch
        self._body = body
        self._start_response = start_response
        self._filtered = False
        self._logged = False
        self.head_sent = 0
        self.body_sent = 0

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | None = None,
        /,
    ) -> Write:
        ctx = self.ctx
        self.watch.mark("upstream_first_byte")
        self.watch.mark("response_start")
        ctx.status = _status_code(status)
        ctx.upstream_status = str(ctx.status)
        ctx.response_headers = _header_dict(headers)
        if not self._filtered:
            # A second start_response (with exc_info) replaces the response; the headers the
            # plugins chose still apply, but their header_filter ran once, like Kong's.
            self._filtered = True
            self.chain.header_filter(ctx)
        if ctx.response_headers_to_add:
            names = {name.lower() for name in ctx.response_headers_to_add}
            headers = [(n, v) for n, v in headers if n.lower() not in names]
            headers.extend((n.lower(), str(v)) for n, v in ctx.response_headers_to_add.items())
            ctx.response_headers = _header_dict(headers)
        self.head_sent = head_size(f"HTTP/{ctx.http_version} {status}", headers)
        write = (
            self._start_response(status, headers, exc_info)
            if exc_info is not None
            else self._start_response(status, headers)
        )

        def counting_write(data: bytes) -> object:
            self.body_sent += len(data)
            return write(data)

        return counting_write

    def complete(self) -> None:
        """The response was sent (or abandoned): fill sizes and timings, run the log phase."""
        if self._logged:
            return
        self._logged = True
        ctx = self.ctx
        self.watch.finish()
        declared = content_length(ctx.headers)
        ctx.request_size = request_head_size(ctx) + max(declared, self._body.count)
        ctx.response_size = self.head_sent + self.body_sent
        self.chain.log(ctx)


class _LoggedResponse:
    """The app's response iterable, counting body bytes; ``close()`` runs the log phase."""

    def __init__(self, result: Iterable[bytes], exchange: _Exchange) -> None:
        self._result = result
        self._exchange = exchange

    def __iter__(self) -> Iterator[bytes]:
        exchange = self._exchange
        for chunk in self._result:
            exchange.body_sent += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._exchange.complete()


def fill_request(ctx: RequestContext, environ: Environ) -> None:
    """Fill the request fields of ``ctx`` from a WSGI environ (before the access phase)."""
    scheme = str(environ.get("wsgi.url_scheme") or "http")
    ctx.method = str(environ.get("REQUEST_METHOD") or "GET").upper()
    ctx.scheme = scheme
    ctx.port = _int(environ.get("SERVER_PORT"), 443 if scheme == "https" else 80)
    headers: dict[str, HeaderValue] = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            add_header(headers, key[5:].replace("_", "-").lower(), str(value))
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            add_header(headers, key.replace("_", "-").lower(), str(value))
    ctx.headers = headers
    server_name = str(environ.get("SERVER_NAME") or "localhost")
    host = headers.get("host")
    ctx.host = split_host(host if isinstance(host, str) else server_name, server_name)
    ctx.path = _raw_path(environ)
    ctx.query_string = str(environ.get("QUERY_STRING") or "")
    ctx.upstream_uri = ctx.path + (f"?{ctx.query_string}" if ctx.query_string else "")
    ctx.client_ip = str(environ.get("REMOTE_ADDR") or "")
    ctx.client_port = _int(environ.get("REMOTE_PORT"), 0)
    protocol = str(environ.get("SERVER_PROTOCOL") or "HTTP/1.1")
    ctx.http_version = protocol.partition("/")[2] or "1.1"
    ctx.request_id = new_request_id()
    if scheme == "https" and environ.get("SSL_PROTOCOL"):
        ctx.tls = {
            "version": environ.get("SSL_PROTOCOL"),
            "cipher": environ.get("SSL_CIPHER"),
            "client_verify": environ.get("SSL_CLIENT_VERIFY") or "NONE",
        }


def _raw_path(environ: Environ) -> str:
    for key in ("RAW_URI", "REQUEST_URI"):
        raw = environ.get(key)
        if raw:
            path = str(raw).partition("?")[0]
            if "://" in path:  # an absolute-form request target
                path = "/" + path.split("://", 1)[1].partition("/")[2]
            return path
    # PEP 3333 decodes the path as Latin-1 bytes; re-encode them as sent.
    path = str(environ.get("SCRIPT_NAME") or "") + str(environ.get("PATH_INFO") or "")
    return quote(path.encode("latin-1"), safe="/:@!$&'()*+,;=-._~%") or "/"


def _with_headers(environ: Environ, new: Mapping[str, str], drop: Iterable[str]) -> Environ:
    """A copy of ``environ`` without the headers named in ``drop``, with ``new`` set."""
    out = dict(environ)
    for name in drop:
        out.pop(_environ_key(name), None)
    for name, value in new.items():
        out[_environ_key(name)] = str(value)
    return out


def _environ_key(name: str) -> str:
    key = name.upper().replace("-", "_")
    return key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"


def _header_dict(headers: Iterable[tuple[str, str]]) -> dict[str, HeaderValue]:
    out: dict[str, HeaderValue] = {}
    for name, value in headers:
        add_header(out, name.lower(), value)
    return out


def _status_code(status: str) -> int:
    try:
        return int(status.split(None, 1)[0])
    except (ValueError, IndexError):
        log.warning("app returned a malformed WSGI status %r", status)
        return 0


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
