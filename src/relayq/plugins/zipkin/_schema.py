"""Zipkin's config schema: Kong 3.10's fields, defaults, checks and deprecations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from relayq.plugins import _typedefs as t
from relayq.plugins._propagation import FORMATS, HEADER_TYPES, propagation_field
from relayq.plugins._schema import Deprecation, Field, Schema, queue_record, record

PLUGIN = "zipkin"
TIMEOUT_MAX = 2**31 - 2

# Tags the plugin sets itself; static tags may not overwrite them.
PROTECTED_TAGS = (
    "error",
    "http.method",
    "http.path",
    "http.status_code",
    "kong.balancer.state",
    "kong.balancer.try",
    "kong.consumer",
    "kong.credential",
    "kong.node.id",
    "kong.route",
    "kong.service",
    "lc",
    "peer.hostname",
)


def timeout(default: int) -> Field:
    """Kong's ``typedefs.timeout``: milliseconds, 0 to 2^31-2. An explicit null is refused
    (Kong accepts it, then fails on every request)."""
    return Field(type="integer", default=default, required=True, between=(0, TIMEOUT_MAX))


def _not_protected(name: str) -> str | None:
    if name in PROTECTED_TAGS:
        return "must not be one of: " + ", ".join(PROTECTED_TAGS)
    return None


def _unique_names(tags: Sequence[Any]) -> str | None:
    seen: set[str] = set()
    for tag in tags:
        name = tag.get("name") if isinstance(tag, dict) else None
        if name in seen:
            return f"repeated tags are not allowed: {name}"
        if isinstance(name, str):
            seen.add(name)
    return None


_STATIC_TAG = record(
    {
        "name": Field(type="string", required=True, check=_not_protected),
        "value": Field(type="string", required=True),
    }
)

SCHEMA = Schema(
    PLUGIN,
    {
        "local_service_name": Field(type="string", default="kong", required=True),
        "http_endpoint": t.url(),
        "sample_ratio": Field(type="number", default=0.001, required=True, between=(0, 1)),
        "default_service_name": Field(type="string", default=None),
        "include_credential": Field(type="boolean", default=True, required=True),
        "traceid_byte_count": Field(type="integer", default=16, required=True, one_of=(8, 16)),
        "header_type": Field(
            type="string",
            default="preserve",
            required=True,
            one_of=HEADER_TYPES,
            deprecation=Deprecation(
                "zipkin: config.header_type is deprecated, please use config.propagation "
                "options instead",
                old_default="preserve",
            ),
        ),
        "default_header_type": Field(
            type="string",
            default="b3",
            required=True,
            one_of=FORMATS,
            deprecation=Deprecation(
                "zipkin: config.default_header_type is deprecated, please use "
                "config.propagation.default_format instead",
                old_default="b3",
            ),
        ),
        "tags_header": Field(type="string", default="Zipkin-Tags", required=True),
        "static_tags": Field(type="array", default=None, elements=_STATIC_TAG, check=_unique_names),
        "http_span_name": Field(
            type="string", default="method", required=True, one_of=("method", "method_path")
        ),
        "connect_timeout": timeout(2000),
        "send_timeout": timeout(5000),
        "read_timeout": timeout(5000),
        # A response header name: a CR/LF here broke every response (uvicorn refuses it).
        "http_response_header_for_traceid": t.header_name(),
        "phase_duration_flavor": Field(
            type="string", default="annotations", required=True, one_of=("annotations", "tags")
        ),
        "queue": queue_record(),
        "propagation": propagation_field("b3"),
    },
)
