"""http-log's endpoint: the request URL, Basic credentials from userinfo, and the queue name.

Kong names an http-log queue after the whole endpoint URL, credentials included, and that name
appears in every queue log line. relayq keeps Kong's six-part name and its sharing rule (one
queue per endpoint/method/content type/timeout/keepalive/retry_count) but replaces the userinfo
and the query string with ``REDACTED-<digest>``: a keyed digest, so configurations that differ
only in credentials still get separate queues, while nothing secret reaches a log line.

As in Kong, the endpoint's query string is not sent (Kong's PR #8627 to send it was never
merged); HTTP client libraries log request URLs, so dropping it also keeps tokens out of logs.
Unlike Kong, userinfo is percent-decoded before it is Base64-encoded (Kong encodes the raw
text, so ``user%40example.com`` would reach the server percent-encoded).
"""

from __future__ import annotations

import base64
import hashlib
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from relayq.plugins._luanum import lua_number

_DIGEST_KEY = os.urandom(16)  # per process: digests are not comparable across processes


@dataclass(frozen=True)
class Endpoint:
    """A parsed ``http_endpoint``: the URL to request (without userinfo), ``host``/``port`` as
    Kong's messages show them, and the ``Authorization`` value derived from userinfo."""

    url: str
    host: str
    port: int
    authorization: str | None


def _redact(secret: str) -> str:
    digest = hashlib.blake2b(secret.encode(), key=_DIGEST_KEY, digest_size=4).hexdigest()
    return f"REDACTED-{digest}"


@lru_cache(maxsize=256)
def parse_endpoint(endpoint: str) -> Endpoint:
    """Parse (and cache, like Kong's per-endpoint cache) an endpoint URL."""
    parts = urllib.parse.urlsplit(endpoint)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    port = parts.port or (443 if scheme == "https" else 80)
    authorization = None
    if "@" in parts.netloc:
        user = urllib.parse.unquote(parts.username or "")
        password = urllib.parse.unquote(parts.password or "")
        userinfo = f"{user}:{password}" if parts.password is not None else user
        authorization = "Basic " + base64.b64encode(userinfo.encode()).decode("ascii")
    shown_host = f"[{host}]" if ":" in host else host
    url = urllib.parse.urlunsplit(
        (scheme, f"{shown_host}:{port}", parts.path or "/", "", "")
    )
    return Endpoint(url=url, host=host, port=port, authorization=authorization)


def redacted_endpoint(endpoint: str) -> str:
    """The endpoint with userinfo and query string replaced by keyed digests."""
    parts = urllib.parse.urlsplit(endpoint)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{_redact(userinfo)}@{hostport}"
    query = _redact(parts.query) if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def queue_name(config: Mapping[str, Any]) -> str:
    """Kong's http-log queue name, ``<endpoint>:<method>:<content_type>:<timeout>:<keepalive>:
    <retry_count>`` (``nil`` when unset), with the endpoint redacted."""

    def show(value: Any) -> str:
        if value is None:
            return "nil"
        if isinstance(value, int | float) and not isinstance(value, bool):
            return lua_number(value)
        return str(value)

    return ":".join(
        (
            redacted_endpoint(config["http_endpoint"]),
            show(config["method"]),
            show(config["content_type"]),
            show(config["timeout"]),
            show(config["keepalive"]),
            show(config.get("retry_count")),
        )
    )
