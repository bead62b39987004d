"""OpenTelemetry's config schema: Kong 3.10's fields, defaults, deprecations and entity check.

Differences from Kong, on purpose: ``resource_attributes`` values are plain strings (Kong can
render ``$(...)`` templates when untrusted Lua is enabled; relayq runs no Lua and rejects such
values instead of sending them verbatim), and a null ``sampling_rate`` means "sample every
trace" because relayq has no ``kong.conf`` ``tracing_sampling_rate`` to fall back on.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from relayq.plugins import _typedefs as t
from relayq.plugins._base import PluginConfigError
from relayq.plugins._propagation import HEADER_TYPES, propagation_field
from relayq.plugins._schema import CustomCheck, Deprecation, Field, Schema, queue_record

log = logging.getLogger("relayq.plugins")

PLUGIN = "opentelemetry"
TIMEOUT_MAX = 2**31 - 2

ENDPOINT_DEPRECATION = (
    "OpenTelemetry: config.endpoint is deprecated, please use config.traces_endpoint instead"
)

_TEMPLATE = re.compile(r"\$\(.*\)")


def timeout(default: int) -> Field:
    """Kong's ``typedefs.timeout``: milliseconds, 0 to 2^31-2. An explicit null is refused
    (Kong accepts it, then fails on every request)."""
    return Field(type="integer", default=default, required=True, between=(0, TIMEOUT_MAX))


def _no_template(value: str) -> str | None:
    if _TEMPLATE.search(value):
        return (
            "loading of untrusted Lua code disabled because "
            "'untrusted_lua' config option is set to 'off'"
        )
    return None


def _an_endpoint(config: Mapping[str, Any]) -> str | None:
    if config.get("traces_endpoint") or config.get("logs_endpoint"):
        return None
    return (
        "at least one of these fields must be non-empty: "
        "'config.traces_endpoint', 'config.logs_endpoint'"
    )


SCHEMA = Schema(
    PLUGIN,
    {
        "traces_endpoint": t.url(),
        "logs_endpoint": t.url(),
        "headers": Field(type="map", default=None, keys=t.header_name(), values=t.header_value()),
        "resource_attributes": Field(
            type="map",
            default=None,
            keys=Field(type="string"),
            values=Field(type="string", check=_no_template),
        ),
        "queue": queue_record(default={"max_batch_size": 200}),
        "batch_span_count": Field(
            type="integer",
            default=None,
            between=(1, 1_000_000),
            deprecation=Deprecation(
                "opentelemetry: config.batch_span_count is deprecated, "
                "please use config.queue.max_batch_size instead",
                old_default=200,
            ),
        ),
        "batch_flush_delay": Field(
            type="integer",
            default=None,
            between=(0, 3600),
            deprecation=Deprecation(
                "opentelemetry: config.batch_flush_delay is deprecated, "
                "please use config.queue.max_coalescing_delay instead",
                old_default=3,
            ),
        ),
        "connect_timeout": timeout(1000),
        "send_timeout": timeout(5000),
        "read_timeout": timeout(5000),
        # A response header name: a CR/LF here broke every response (uvicorn refuses it).
        "http_response_header_for_traceid": t.header_name(),
        "header_type": Field(
            type="string",
            default="preserve",
            one_of=HEADER_TYPES,
            deprecation=Deprecation(
                "opentelemetry: config.header_type is deprecated, "
                "please use config.propagation options instead",
                old_default="preserve",
            ),
        ),
        "sampling_rate": Field(type="number", default=None, between=(0, 1)),
        "propagation": propagation_field("w3c"),
    },
    entity_checks=(CustomCheck(("traces_endpoint", "logs_endpoint"), _an_endpoint),),
)


def validate(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate an OpenTelemetry config; ``endpoint`` is Kong's deprecated shorthand for
    ``traces_endpoint`` (both given with different values is an error, as in Kong)."""
    config = dict(config or {})
    if "endpoint" in config:
        endpoint = config.pop("endpoint")
        current = config.get("traces_endpoint")
        if current is not None and endpoint is not None and current != endpoint:
            raise PluginConfigError(
                PLUGIN,
                {
                    "endpoint": "both deprecated and new field are used but their values "
                    f"mismatch: config.endpoint = {endpoint} vs "
                    f"config.traces_endpoint = {current}"
                },
            )
        if endpoint is not None:
            config["traces_endpoint"] = endpoint
            log.warning("%s", ENDPOINT_DEPRECATION)
    return SCHEMA.validate(config)
