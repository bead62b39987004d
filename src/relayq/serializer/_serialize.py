"""Kong's ``kong.log.serialize()``: a finished request as the dict log plugins consume.

http-log sends this dict as JSON; statsd and datadog read their metric values from it. The shape
follows Kong 3.10's HTTP subsystem (request, upstream_uri, upstream_status, response, latencies,
tries, authenticated_entity, route, service, consumer, client_ip, started_at, source,
workspace, workspace_name, trace_id), with the ``authorization`` and ``proxy-authorization``
request headers replaced by ``"REDACTED"`` and custom values (``serialize_values``) applied last.

Hosts hand us whatever a client sent, so the serializer never fails on it: strings that cannot be
encoded as UTF-8 (lone surrogates from ``surrogateescape`` decoding) are repaired, and like Kong
only the first 100 request headers, response headers and query arguments are kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus

from relayq.serializer._context import HeaderValue, RequestContext

MAX_HEADERS = 100  # Kong's default for kong.request.get_headers() / kong.response.get_headers()
MAX_QUERY_ARGS = 100  # Kong's default for kong.request.get_query()
REDACTED = "REDACTED"
_REDACTED_HEADERS = ("authorization", "proxy-authorization")


def _text(value: str) -> str:
    """``value`` if it encodes as UTF-8; else repaired: bytes smuggled in by ``surrogateescape``
    decoding are decoded as UTF-8 (invalid sequences become U+FFFD), other lone surrogates
    become ``?``."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:
            return value.encode("utf-8", "replace").decode("utf-8")
    return value


def _header_value(value: HeaderValue) -> HeaderValue:
    if isinstance(value, str):
        return _text(value)
    return [_text(str(v)) for v in value]


def _headers(headers: Mapping[str, HeaderValue], *, redact: bool) -> dict[str, HeaderValue]:
    out: dict[str, HeaderValue] = {}
    for name, value in headers.items():
        if len(out) >= MAX_HEADERS:
            break
        out[_text(name)] = _header_value(value)
    if redact:
        for name in _REDACTED_HEADERS:
            if name in out:
                out[name] = REDACTED
    return out


def parse_query(query_string: str) -> dict[str, Any]:
    """Query arguments as Kong's ``get_uri_args`` returns them: repeated keys become lists,
    a bare flag (``?debug``) becomes ``True``, ``?a=`` becomes ``""``; at most 100 arguments."""
    args: dict[str, Any] = {}
    if not query_string:
        return args
    count = 0
    for part in query_string.split("&"):
        if not part:
            continue
        if count >= MAX_QUERY_ARGS:
            break
        count += 1
        name, sep, raw = part.partition("=")
        key = _text(unquote_plus(name, errors="replace"))
        if not key:
            continue
        value: Any = _text(unquote_plus(raw, errors="replace")) if sep else True
        if key in args:
            existing = args[key]
            if isinstance(existing, list):
                existing.append(value)
            else:
                args[key] = [existing, value]
        else:
            args[key] = value
    return args


def _ms(value: float) -> float | int:
    """Integral floats as ints, so JSON shows ``12`` like Kong's cjson rather than ``12.0``."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _split_key(key: str) -> list[str]:
    """Split a dotted custom-value key; ``\\.`` is a literal dot (Kong's escaping rule)."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(key):
        char = key[i]
        if char == "\\" and i + 1 < len(key) and key[i + 1] == ".":
            current.append(".")
            i += 2
            continue
        if char == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    return parts


def _apply_custom(root: dict[str, Any], key: str, value: Any) -> None:
    """Set (or with ``None`` delete) a dotted path, copying each dict on the way so shared
    entities (route, service, consumer) are never modified."""
    parts = _split_key(key)
    node = root
    for part in parts[:-1]:
        child = node.get(part)
        child = dict(child) if isinstance(child, dict) else {}
        node[part] = child
        node = child
    if value is None:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value


def serialize(ctx: RequestContext) -> dict[str, Any]:
    """The Kong log-serializer dict for one finished request (see the module docstring)."""
    query = ctx.query_string
    uri = f"{ctx.path}?{query}" if query else ctx.path
    request: dict[str, Any] = {
        "id": ctx.request_id,
        "uri": _text(uri),
        "url": _text(f"{ctx.scheme}://{ctx.host}:{ctx.port}{uri}"),
        "querystring": parse_query(query),
        "method": ctx.method,
        "headers": _headers(ctx.headers, redact=True),
        "size": ctx.request_size,
    }
    if ctx.tls is not None:
        request["tls"] = {
            "version": ctx.tls.get("version"),
            "cipher": ctx.tls.get("cipher"),
            "client_verify": ctx.tls.get("client_verify", "NONE"),
        }

    upstream_uri = ctx.upstream_uri
    if upstream_uri and query and "?" not in upstream_uri:
        upstream_uri = f"{upstream_uri}?{query}"

    out: dict[str, Any] = {
        "request": request,
        "upstream_uri": _text(upstream_uri),
        "upstream_status": ctx.upstream_status,
        "response": {
            "status": ctx.status,
            "headers": _headers(ctx.response_headers, redact=False),
            "size": ctx.response_size,
        },
        "latencies": {
            "kong": _ms(ctx.kong_latency),
            "proxy": _ms(ctx.proxy_latency),
            "request": _ms(ctx.request_latency),
            "receive": _ms(ctx.receive_latency),
        },
        "client_ip": ctx.client_ip,
        "started_at": round(ctx.started_at * 1000),
        "source": ctx.source,
        "workspace": ctx.workspace_id,
        "workspace_name": ctx.workspace_name,
    }
    if ctx.tries:
        out["tries"] = [dict(t) for t in ctx.tries]
    credential = ctx.credential
    if credential is not None:
        consumer_id = credential.get("consumer_id")
        if consumer_id is None:
            owner = credential.get("consumer")
            if isinstance(owner, Mapping):
                consumer_id = owner.get("id")
        if consumer_id is None and ctx.consumer is not None:
            consumer_id = ctx.consumer.get("id")
        out["authenticated_entity"] = {"id": credential.get("id"), "consumer_id": consumer_id}
    if ctx.route is not None:
        out["route"] = dict(ctx.route)
    if ctx.service is not None:
        out["service"] = dict(ctx.service)
    if ctx.consumer is not None:
        out["consumer"] = dict(ctx.consumer)
    if ctx.trace_id:
        out["trace_id"] = dict(ctx.trace_id)
    for key, value in ctx.serialize_values.items():
        _apply_custom(out, key, value)
    return out
