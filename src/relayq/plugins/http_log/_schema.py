"""http-log's config schema: Kong 3.10's fields, defaults and checks, plus ``ssl_verify``.

``ssl_verify`` exists in Kong's Enterprise/Konnect schema only; OSS Kong never verifies
certificates. relayq verifies by default and lets a config opt out.
``custom_fields_by_lua`` is accepted only when empty: relayq cannot run Lua, and silently
ignoring configured fields would lose data. Hosts set custom fields through
``RequestContext.serialize_values`` instead.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any

from relayq.plugins import _typedefs as t
from relayq.plugins._schema import CustomCheck, Field, Schema, legacy_fields, queue_record

_FORBIDDEN_HEADERS = (
    (r"(?i)^host$", "cannot contain 'Host' header"),
    # Kong's pattern has a typo ([nn]) that lets "CONTENT-LENGTH" through; this one does not.
    (r"(?i)^content-length$", "cannot contain 'Content-Length' header"),
    (r"(?i)^content-type$", "cannot contain 'Content-Type' header"),
)


def _no_lua(value: Mapping[str, Any]) -> str | None:
    if value:
        return (
            "Lua expressions are not supported by relayq; set custom fields through "
            "RequestContext.serialize_values"
        )
    return None


def _userinfo_and_authorization(config: Mapping[str, Any]) -> str | None:
    endpoint = config.get("http_endpoint")
    headers = config.get("headers") or {}
    if not endpoint:
        return None
    has_userinfo = "@" in urllib.parse.urlsplit(endpoint).netloc
    if has_userinfo and any(str(name).lower() == "authorization" for name in headers):
        return (
            "specifying both an 'Authorization' header and user info in 'http_endpoint' "
            "is not allowed"
        )
    return None


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "value should be at least 0"


SCHEMA = Schema(
    "http-log",
    {
        "http_endpoint": t.url(required=True),
        "method": Field(type="string", default="POST", required=True,
                        one_of=("POST", "PUT", "PATCH")),
        "content_type": Field(
            type="string",
            default="application/json",
            required=True,
            one_of=("application/json", "application/json; charset=utf-8"),
        ),
        "timeout": Field(type="number", default=10000, required=True, gt=0),
        "keepalive": Field(type="number", default=60000, required=True, check=_non_negative),
        **legacy_fields("http-log"),
        "headers": Field(
            type="map",
            default=None,
            keys=t.header_name(match_none=_FORBIDDEN_HEADERS),
            values=t.header_value(),
        ),
        "queue": queue_record(),
        "custom_fields_by_lua": Field(type="map", default=None, check=_no_lua),
        "ssl_verify": Field(type="boolean", default=True),
    },
    entity_checks=(CustomCheck(("http_endpoint", "headers"), _userinfo_and_authorization),),
)
