"""statsd's config schema: Kong 3.10's fields, the 13 default metrics, bounds and checks."""

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
    "request_per_user",
    "request_size",
    "response_size",
    "status_count",
    "status_count_per_user",
    "unique_users",
    "upstream_latency",
    "status_count_per_workspace",
    "status_count_per_user_per_route",
    "shdict_usage",
)
STAT_TYPES = ("counter", "gauge", "histogram", "meter", "set", "timer")
CONSUMER_IDENTIFIERS = ("consumer_id", "custom_id", "username")
SERVICE_IDENTIFIERS = ("service_id", "service_name", "service_host", "service_name_or_host")
WORKSPACE_IDENTIFIERS = ("workspace_id", "workspace_name")
TAG_STYLES = ("dogstatsd", "influxdb", "librato", "signalfx")


def _metric(name: str, stat_type: str, sample_rate: float | None = None) -> dict[str, object]:
    return {
        "name": name,
        "stat_type": stat_type,
        "sample_rate": sample_rate,
        "consumer_identifier": None,
        "service_identifier": None,
        "workspace_identifier": None,
    }


DEFAULT_METRICS = (
    _metric("request_count", "counter", 1),
    _metric("latency", "timer"),
    _metric("request_size", "counter", 1),
    _metric("status_count", "counter", 1),
    _metric("response_size", "counter", 1),
    _metric("unique_users", "set"),
    _metric("request_per_user", "counter", 1),
    _metric("upstream_latency", "timer"),
    _metric("kong_latency", "timer"),
    _metric("status_count_per_user", "counter", 1),
    _metric("status_count_per_workspace", "counter", 1),
    _metric("status_count_per_user_per_route", "counter", 1),
    _metric("shdict_usage", "gauge", 1),
)

METRIC = record(
    {
        "name": Field(type="string", required=True, one_of=METRIC_NAMES),
        "stat_type": Field(type="string", required=True, one_of=STAT_TYPES),
        "sample_rate": Field(type="number", gt=0),
        "consumer_identifier": Field(type="string", one_of=CONSUMER_IDENTIFIERS),
        "service_identifier": Field(type="string", one_of=SERVICE_IDENTIFIERS),
        "workspace_identifier": Field(type="string", one_of=WORKSPACE_IDENTIFIERS),
    },
    entity_checks=(
        Conditional(
            "stat_type", When(one_of=("counter", "gauge")), "sample_rate", When(required=True)
        ),
    ),
)

SCHEMA = Schema(
    "statsd",
    {
        "host": t.host(default="localhost", required=True),
        "port": t.port(default=8125, required=True),
        "prefix": Field(type="string", default="kong"),
        "metrics": Field(type="array", default=list(DEFAULT_METRICS), required=True,
                         elements=METRIC),
        "allow_status_codes": Field(
            type="array",
            default=None,
            elements=Field(type="string", match=r"^[0-9]+-[0-9]+$"),
        ),
        "udp_packet_size": Field(type="number", default=0, required=True, between=(0, 65507)),
        "use_tcp": Field(type="boolean", default=False),
        "hostname_in_prefix": Field(type="boolean", default=False),
        "consumer_identifier_default": Field(
            type="string", required=True, default="custom_id", one_of=CONSUMER_IDENTIFIERS
        ),
        "service_identifier_default": Field(
            type="string", required=True, default="service_name_or_host", one_of=SERVICE_IDENTIFIERS
        ),
        "workspace_identifier_default": Field(
            type="string", required=True, default="workspace_id", one_of=WORKSPACE_IDENTIFIERS
        ),
        **legacy_fields("statsd"),
        "tag_style": Field(type="string", default=None, one_of=TAG_STYLES),
        "queue": queue_record(),
    },
)
