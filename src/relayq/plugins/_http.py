"""One small HTTP sender interface for the plugins that post batches over HTTP.

Batch handlers call ``await sender.post(url, body, headers, timeout=...)`` (or ``request`` with
another method) and get an :class:`HttpResponse` back, or an :class:`HttpTransportError` whose
text is the short reason Kong's handlers put in their messages (``timeout``, ``connection
refused``, ``closed``...). Status codes are *not* errors here: each plugin decides what counts
as success (http-log: below 300; OpenTelemetry: exactly 200).

Two implementations ship with the library:

- :class:`HttpxSender`, on ``httpx.AsyncClient``: pooled keep-alive connections, one client per
  running event loop (a queue runtime can move to a new loop, and an httpx client must not be
  shared across loops), TLS verification on unless explicitly turned off.
- :class:`MemoryHttpSender`, an in-memory fake that records every request and answers from a
  script, so users can test their plugin setups without a server (like ``httpx.MockTransport``
  or OpenTelemetry's ``InMemorySpanExporter``).

:func:`shared_sender` returns a process-wide ``HttpxSender`` per (verify, keepalive) setting so
every plugin instance with the same settings shares one connection pool.
"""

from __future__ import annotations

import abc
import asyncio
import errno
import logging
import threading
import urllib.parse
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

import relayq

DEFAULT_TIMEOUT = 10.0
DEFAULT_KEEPALIVE = 60.0
MAX_RESPONSE_BODY = 1 << 20  # bytes of a response body kept; the rest is discarded
USER_AGENT = f"relayq/{relayq.__version__}"


@dataclass(frozen=True)
class HttpResponse:
    """A response: status, headers (lower-case names) and body (at most ``MAX_RESPONSE_BODY``)."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True)
class HttpRequest:
    """A request as a sender saw it (what :class:`MemoryHttpSender` records)."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes
    timeout: float


class HttpTransportError(Exception):
    """The request got no HTTP response: connect failure, timeout, reset or protocol error.

    ``str(error)`` is a short reason in the words Kong's HTTP client uses (``timeout``,
    ``connection refused``, ``connection reset by peer``, ``closed``), suitable for
    ``"failed request to host:port: <reason>"``.
    """


BATCH_ID_HEADER = "X-Relayq-Batch-Id"


def with_batch_id(headers: Mapping[str, str]) -> Mapping[str, str]:
    """Add the id of the batch being delivered (stable across retries, and across restarts
    with a spool) so a receiver can drop the duplicates at-least-once delivery makes."""
    info = relayq.current_batch()
    if info is None or any(k.lower() == "x-relayq-batch-id" for k in headers):
        return headers
    return {**headers, BATCH_ID_HEADER: info.id}


class HttpSender(abc.ABC):
    """Sends one HTTP request and returns the response; the interface plugins depend on."""

    @abc.abstractmethod
    async def request(
        self,
        method: str,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> HttpResponse:
        """Send ``body`` to ``url``; ``timeout`` (seconds) bounds connect, each write and each
        read. Raises :class:`HttpTransportError` when no response arrives."""

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> HttpResponse:
        """``request("POST", ...)``."""
        return await self.request("POST", url, body, headers, timeout=timeout)

    async def aclose(self) -> None:  # noqa: B027 -- optional hook; stateless senders keep nothing
        """Release pooled connections held for the running event loop."""


def _reason(exc: httpx.TransportError) -> str:
    """Kong-style short reason for a transport failure."""
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno is not None:
            if cause.errno == errno.ECONNREFUSED:
                return "connection refused"
            if cause.errno == errno.ECONNRESET:
                return "connection reset by peer"
            return cause.strerror or str(cause)
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, ConnectionResetError):
            return "connection reset by peer"
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        text = str(exc)
        if not text or "disconnected" in text or "closed" in text.lower():
            return "closed"
        return text
    return str(exc) or type(exc).__name__


def redact_url(url: str) -> str:
    """``url`` fit for a log line: userinfo shown as ``***@``, a query string as ``?***``
    (collectors take tokens in either, e.g. ``?api-key=...``)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(
        (parts.scheme, netloc, parts.path, "***" if parts.query else "", parts.fragment))


class _RedactUrls(logging.Filter):
    """On httpx's logger: its per-request INFO line prints the full request URL, and the
    OpenTelemetry and Zipkin endpoints may carry credentials in it."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, httpx.URL) for a in args):
            record.args = tuple(
                redact_url(str(a)) if isinstance(a, httpx.URL) and (a.userinfo or a.query)
                else a
                for a in args
            )
        return True


_HTTPX_FILTER = _RedactUrls()
logging.getLogger("httpx").addFilter(_HTTPX_FILTER)


class HttpxSender(HttpSender):
    """``HttpSender`` on ``httpx.AsyncClient``, one pooled client per running event loop.

    ``verify=False`` turns TLS certificate verification off (Kong's http-log never verifies;
    relayq verifies unless told otherwise). ``keepalive`` is how long (seconds) an idle pooled
    connection is kept, Kong's ``keepalive`` setting.
    """

    def __init__(
        self,
        *,
        verify: bool = True,
        keepalive: float = DEFAULT_KEEPALIVE,
        max_connections: int = 100,
        max_response_body: int = MAX_RESPONSE_BODY,
    ) -> None:
        self.verify = verify
        self.keepalive = keepalive
        self.max_connections = max_connections
        self.max_response_body = max_response_body
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._clients.get(loop)
            if client is None or client.is_closed:
                client = httpx.AsyncClient(
                    headers={"User-Agent": USER_AGENT},
                    verify=self.verify,
                    follow_redirects=False,
                    trust_env=False,
                    limits=httpx.Limits(
                        max_connections=self.max_connections,
                        max_keepalive_connections=self.max_connections,
                        keepalive_expiry=self.keepalive if self.keepalive > 0 else None,
                    ),
                )
                self._clients[loop] = client
            return client

    async def request(
        self,
        method: str,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> HttpResponse:
        client = self._client()
        headers = with_batch_id(headers)
        try:
            request = client.build_request(
                method, url, content=body, headers=dict(headers), timeout=httpx.Timeout(timeout)
            )
            response = await client.send(request, stream=True)
            try:
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    if size < self.max_response_body:
                        chunks.append(chunk[: self.max_response_body - size])
                    size += len(chunk)
                    if size >= self.max_response_body:
                        break
            finally:
                await response.aclose()
        except httpx.TransportError as exc:
            raise HttpTransportError(_reason(exc)) from exc
        return HttpResponse(
            status=response.status_code,
            headers={k.lower(): v for k, v in response.headers.items()},
            body=b"".join(chunks),
        )

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._clients.pop(loop, None)
        if client is not None:
            await client.aclose()


_SHARED: dict[tuple[bool, float], HttpxSender] = {}
_SHARED_LOCK = threading.Lock()


def shared_sender(*, verify: bool = True, keepalive: float = DEFAULT_KEEPALIVE) -> HttpxSender:
    """The process-wide ``HttpxSender`` for these settings (one connection pool each)."""
    key = (verify, float(keepalive))
    with _SHARED_LOCK:
        sender = _SHARED.get(key)
        if sender is None:
            sender = _SHARED[key] = HttpxSender(verify=verify, keepalive=keepalive)
        return sender


OK = HttpResponse(200)


class MemoryHttpSender(HttpSender):
    """An in-memory ``HttpSender`` for tests: records requests and answers from a script.

    Each request takes the next item of ``responses``: an :class:`HttpResponse` is returned, an
    exception is raised (use :class:`HttpTransportError` to simulate a network failure). When
    the script is used up every request gets ``default`` (200 with an empty body).
    """

    def __init__(
        self,
        *responses: HttpResponse | BaseException,
        default: HttpResponse = OK,
    ) -> None:
        self.requests: list[HttpRequest] = []
        self._script = list(responses)
        self.default = default
        self._lock = threading.Lock()

    def script(self, *responses: HttpResponse | BaseException) -> None:
        """Append answers to the script."""
        with self._lock:
            self._script.extend(responses)

    def clear(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self.requests.clear()

    async def request(
        self,
        method: str,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> HttpResponse:
        headers = with_batch_id(headers)
        with self._lock:
            self.requests.append(HttpRequest(method, url, dict(headers), bytes(body), timeout))
            answer = self._script.pop(0) if self._script else self.default
        if isinstance(answer, BaseException):
            raise answer
        return answer
