"""datadog's config schema: Kong 3.10's fields, the six default metrics, bounds and checks.

``host`` and ``port`` may be set to null to take ``KONG_DATADOG_AGENT_HOST`` and
``KONG_DATADOG_AGENT_PORT`` from the environment, as in Kong.
"""

from __future__ import annotations

from relayq.plugins import _typedefs as t
from relayq.plugins._schema import (
    Conditional,
    Field,
    Schema,
    When,
    legacy_fields,
    queue_record,
    record,
)

METRIC_NAMES = (
    "kong_latency",
    "latency",
    "request_count",
    "request_size",
    "response_size",
    "upstream_latency",
)
STAT_TYPES = ("counter", "gauge", "histogram", "meter", "set", "timer", "distribution")
CONSUMER_IDENTIFIERS = ("consumer_id", "custom_id", "username")


def _metric(name: str, stat_type: str, sample_rate: float | None = None) -> dict[str, object]:
    return {
        "name": name,
        "stat_type": stat_type,
        "tags": ["app:kong"],
        "sample_rate": sample_rate,
        "consumer_identifier": "custom_id",
    }


DEFAULT_METRICS = (
    _metric("request_count", "counter", 1),
    _metric("latency", "timer"),
    _metric("request_size", "timer"),
    _metric("response_size", "timer"),
    _metric("upstream_latency", "timer"),
    _metric("kong_latency", "timer"),
)

METRIC = record(
    {
        "name": Field(type="string", required=True, one_of=METRIC_NAMES),
        "stat_type": Field(type="string", required=True, one_of=STAT_TYPES),
        "tags": Field(type="array", elements=Field(type="string", match=r"^.*[^:]$")),
        "sample_rate": Field(type="number", between=(0, 1)),
        "consumer_identifier": Field(type="string", one_of=CONSUMER_IDENTIFIERS),
    },
    entity_checks=(
        Conditional(
            "stat_type", When(one_of=("counter", "gauge")), "sample_rate", When(required=True)
        ),
    ),
)

SCHEMA = Schema(
    "datadog",
    {
        "host": t.host(default="localhost"),
        "port": t.port(default=8125),
        "prefix": Field(type="string", default="kong"),
        "service_name_tag": Field(type="string", default="name"),
        "status_tag": Field(type="string", default="status"),
        "consumer_tag": Field(type="string", default="consumer"),
        **legacy_fields("datadog"),
        "queue": queue_record(),
        "metrics": Field(
            type="array",
            required=True,
            default=list(DEFAULT_METRICS),  # copied by the schema on every use
            elements=METRIC,
        ),
    },
)
