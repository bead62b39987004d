"""The per-request fast paths of the statsd and datadog encoders produce exactly the lines of
the straightforward metric-by-metric construction, for any config and any serialized request
(hypothesis explores metric sets, stat types, sample rates, identifiers and odd values)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from relayq.plugins.datadog import SCHEMA as DATADOG_SCHEMA
from relayq.plugins.datadog import Settings as DatadogSettings
from relayq.plugins.datadog import metric_lines as datadog_lines
from relayq.plugins.datadog._encode import consumer_tag_value, format_line, service_tag_value
from relayq.plugins.statsd import SCHEMA as STATSD_SCHEMA
from relayq.plugins.statsd import Settings as StatsdSettings
from relayq.plugins.statsd import metric_lines as statsd_lines
from relayq.plugins.statsd._encode import SIMPLE_METRICS, _generic_lines, _plain_lines, show
from relayq.plugins.statsd._schema import METRIC_NAMES as STATSD_METRICS
from relayq.plugins.statsd._schema import STAT_TYPES as STATSD_TYPES

numbers = st.one_of(
    st.none(),
    st.integers(min_value=-(10**16), max_value=10**16),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([-1, 0, 1, 0.5, 12.0, 1e14, -0.0]),
)
texts = st.one_of(st.none(), st.sampled_from(["", "a.b", "svc", "ws-1", "alice", "x-y-z"]))


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    """Serialized requests as the metrics entry (or the full serializer) shapes them."""
    message: dict[str, Any] = {
        "request": {"size": draw(numbers)},
        "response": draw(st.one_of(st.none(), st.fixed_dictionaries(
            {"status": st.one_of(st.none(), st.integers(100, 599)), "size": numbers}))),
        "latencies": {"kong": draw(numbers), "proxy": draw(numbers),
                      "request": draw(numbers), "receive": draw(numbers)},
        "workspace": draw(texts),
        "workspace_name": draw(texts),
    }
    for entity, keys in (("service", ("id", "name", "host")), ("route", ("id", "name")),
                         ("consumer", ("id", "custom_id", "username"))):
        if draw(st.booleans()):
            message[entity] = {key: draw(texts) for key in keys}
        elif draw(st.booleans()):
            message[entity] = None
    return message


metric_entries = st.fixed_dictionaries(
    {
        "name": st.sampled_from(STATSD_METRICS),
        "stat_type": st.sampled_from(STATSD_TYPES),
        "sample_rate": st.sampled_from([None, 1, 0.25, 2]),
    },
    optional={
        "consumer_identifier": st.sampled_from(["consumer_id", "custom_id", "username"]),
        "service_identifier": st.sampled_from(
            ["service_id", "service_name", "service_host", "service_name_or_host"]),
        "workspace_identifier": st.sampled_from(["workspace_id", "workspace_name"]),
    },
)


@settings(max_examples=300, deadline=None)
@given(metrics=st.lists(metric_entries, max_size=14), prefix=st.sampled_from(["kong", "a.b"]),
       hostname_in_prefix=st.booleans(), message=messages())
def test_statsd_plain_lines_match_the_generic_construction(
        metrics: list[dict[str, Any]], prefix: str, hostname_in_prefix: bool,
        message: dict[str, Any]) -> None:
    for metric in metrics:  # counters and gauges need a sample rate (schema rule)
        if metric["stat_type"] in ("counter", "gauge") and metric["sample_rate"] is None:
            metric["sample_rate"] = 1
    config = STATSD_SCHEMA.validate({"metrics": metrics, "prefix": prefix,
                                     "hostname_in_prefix": hostname_in_prefix})
    conf = StatsdSettings.from_config(config, hostname="node.example")
    assert _plain_lines(conf, message) == _generic_lines(conf, message)
    assert statsd_lines(conf, message) == _generic_lines(conf, message)


def reference_datadog_lines(conf: DatadogSettings, message: Mapping[str, Any]) -> list[str]:
    """datadog's lines built metric by metric with the module's own building blocks."""
    service = f"{conf.service_name_tag}:{service_tag_value(message.get('service'))}"
    status_value = (message.get("response") or {}).get("status")
    status = f"{conf.status_tag}:{'-' if status_value is None else show(status_value)}"
    lines = []
    for metric in conf.metrics:
        value = SIMPLE_METRICS[metric.name][1](message)
        if value is None:
            continue
        tags = [service, status]
        consumer_id = consumer_tag_value(metric.consumer_identifier, message.get("consumer"))
        if consumer_id is not None:
            tags.append(f"{conf.consumer_tag}:{show(consumer_id)}")
        tags.extend(metric.tags)
        lines.append(format_line(conf.prefix, metric.stat, value, metric.code, metric.sample_rate,
                                 tags))
    return lines


datadog_metrics = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["kong_latency", "latency", "request_count", "request_size",
                                 "response_size", "upstream_latency"]),
        "stat_type": st.sampled_from(["counter", "gauge", "histogram", "meter", "set", "timer",
                                      "distribution"]),
        "sample_rate": st.sampled_from([None, 1, 0.5]),
        "tags": st.one_of(st.none(), st.lists(st.sampled_from(["app:kong", "env", "a:b"]),
                                              max_size=3)),
        "consumer_identifier": st.sampled_from([None, "consumer_id", "custom_id", "username"]),
    },
)


@settings(max_examples=300, deadline=None)
@given(metrics=st.lists(datadog_metrics, max_size=8), message=messages(),
       tag_names=st.sampled_from([("name", "status", "consumer"), ("svc", "code", "user")]))
def test_datadog_lines_match_the_metric_by_metric_construction(
        metrics: list[dict[str, Any]], message: dict[str, Any],
        tag_names: tuple[str, str, str]) -> None:
    for metric in metrics:
        if metric["stat_type"] in ("counter", "gauge") and metric["sample_rate"] is None:
            metric["sample_rate"] = 1
    config = DATADOG_SCHEMA.validate({
        "metrics": metrics, "service_name_tag": tag_names[0], "status_tag": tag_names[1],
        "consumer_tag": tag_names[2]})
    conf = DatadogSettings.from_config(config)
    assert datadog_lines(conf, message) == reference_datadog_lines(conf, message)
