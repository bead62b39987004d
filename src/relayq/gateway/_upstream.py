"""The upstream leg: the request's headers, timeouts, and how failures are answered.

Connections come from the worker's :class:`~relayq.gateway._http11.UpstreamPool` (keep-alive per
service, as nginx's upstream keepalive does for Kong). That client adds nothing a proxied request
did not ask for: no default headers, no cookies, no proxy settings from the environment, no
redirects followed.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from relayq.gateway._entities import Service
from relayq.gateway._exits import BAD_GATEWAY, NAME_RESOLUTION, TIMEOUT
from relayq.gateway._http11 import (
    KEEPALIVE_IDLE_TIMEOUT,
    KEEPALIVE_POOL_SIZE,
    ConnectError,
    ConnectTimeout,
    NameResolutionError,
    ReadTimeout,
    Timeouts,
    UpstreamError,
    UpstreamPool,
    WriteTimeout,
)

__all__ = [
    "HOP_BY_HOP",
    "KEEPALIVE_IDLE_TIMEOUT",
    "KEEPALIVE_POOL_SIZE",
    "Failure",
    "UpstreamPool",
    "classify",
    "forward_headers",
    "response_headers",
    "service_host_header",
    "timeout_for",
]

# RFC 9110 7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade",
})
_HOP_BY_HOP_BYTES = frozenset(name.encode() for name in HOP_BY_HOP)
# Replaced by the gateway's own values (Kong trusts none from clients by default); ``expect``
# is answered by the gateway's own server, and the body streams on without waiting.
_REPLACED = frozenset({
    "expect",
    "host", "x-real-ip", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
    "x-forwarded-port", "x-forwarded-path", "x-forwarded-prefix", "x-kong-request-id", "via",
})
_SKIPPED = frozenset(name.encode() for name in HOP_BY_HOP | _REPLACED)


@functools.lru_cache(maxsize=256)
def _timeout(connect_ms: int, write_ms: int, read_ms: int) -> Timeouts:
    return Timeouts(connect=connect_ms / 1000, write=write_ms / 1000, read=read_ms / 1000)


def timeout_for(service: Service) -> Timeouts:
    """nginx's proxy_connect/send/read timeouts from the service's milliseconds."""
    return _timeout(service.connect_timeout, service.write_timeout, service.read_timeout)


@dataclass(frozen=True)
class Failure:
    """How an upstream error is answered: status and Kong message; ``retry`` when the
    request never left the gateway, so trying again is safe for any method."""

    status: int
    message: str
    retry: bool


def classify(exc: UpstreamError) -> Failure:
    """Map an upstream error to nginx's answer: timeouts 504, name resolution 503, the rest
    502. Only a failure to connect is safe to retry with any method."""
    if isinstance(exc, ConnectTimeout):
        return Failure(504, TIMEOUT, True)
    if isinstance(exc, ReadTimeout | WriteTimeout):
        return Failure(504, TIMEOUT, False)
    if isinstance(exc, ConnectError):
        if isinstance(exc, NameResolutionError) or _is_name_resolution(exc):
            return Failure(503, NAME_RESOLUTION, False)
        return Failure(502, BAD_GATEWAY, True)
    return Failure(502, BAD_GATEWAY, False)


def _is_name_resolution(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, socket.gaierror):
            return True
        text = str(current)
        if "Name or service not known" in text or "nodename nor servname" in text or \
                "Temporary failure in name resolution" in text:
            return True
        current = current.__cause__ or current.__context__
    return False


def service_host_header(service: Service) -> str:
    """Kong's upstream Host when ``preserve_host`` is off: the host, with a non-default port."""
    if service.port in (80, 443):
        return service.host
    return f"{service.host}:{service.port}"


def forward_headers(pairs: Iterable[tuple[bytes, bytes]], drop: set[str]
                    ) -> list[tuple[bytes, bytes]]:
    """The client's headers minus hop-by-hop ones, those named in ``Connection``, those the
    gateway replaces, and ``drop``."""
    pairs = list(pairs)
    named: set[str] = set()
    for name, value in pairs:
        if name.lower() == b"connection":
            named.update(t.strip().lower() for t in value.decode("latin-1").split(",") if t)
    skip = _SKIPPED
    if named or drop:
        # Compared as bytes (latin-1, as the names were decoded); a name latin-1 cannot
        # encode matches no header anyway.
        skip = skip | {n.encode("latin-1") for n in named | drop if n.isascii() or _latin1(n)}
    return [(name, value) for name, value in pairs if name.lower() not in skip]


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def response_headers(pairs: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers to relay: hop-by-hop ones removed."""
    named: set[bytes] = set()
    for name, value in pairs:
        if name.lower() == b"connection":
            named.update(t.strip().lower() for t in value.split(b",") if t.strip())
    if named:
        return [
            (name, value) for name, value in pairs
            if name.lower() not in _HOP_BY_HOP_BYTES and name.lower() not in named
        ]
    return [(name, value) for name, value in pairs if name.lower() not in _HOP_BY_HOP_BYTES]
