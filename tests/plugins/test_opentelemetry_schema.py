"""OpenTelemetry's config schema: Kong's defaults, the queue record-default rule, deprecations,
the ``endpoint`` shorthand and the at-least-one-endpoint check."""

from __future__ import annotations

import logging

import pytest

import relayq
from relayq.plugins import PluginConfigError, create_plugin
from relayq.plugins.opentelemetry import SCHEMA, OpenTelemetryPlugin
from relayq.plugins.opentelemetry._schema import validate

URL = "http://collector:4318/v1/traces"


def test_defaults_match_kong():
    conf = validate({"traces_endpoint": URL})
    assert conf["queue"]["max_batch_size"] == 200
    assert conf["queue"]["max_coalescing_delay"] == 1
    assert conf["queue"]["max_entries"] == 10000
    assert conf["connect_timeout"] == 1000
    assert conf["send_timeout"] == 5000
    assert conf["read_timeout"] == 5000
    assert conf["header_type"] == "preserve"
    assert conf["propagation"] == {
        "extract": None,
        "clear": None,
        "inject": None,
        "default_format": "w3c",
    }
    assert conf["logs_endpoint"] is None
    assert conf["sampling_rate"] is None
    assert conf["batch_span_count"] is None and conf["batch_flush_delay"] is None


def test_a_partial_queue_record_gets_the_field_default_batch_size_of_one():
    conf = validate({"traces_endpoint": URL, "queue": {"max_entries": 50}})
    assert conf["queue"]["max_batch_size"] == 1
    assert conf["queue"]["max_entries"] == 50
    # a null record is "absent": the record default applies
    assert validate({"traces_endpoint": URL, "queue": None})["queue"]["max_batch_size"] == 200


def test_queue_names_and_batch_sizes_through_get_plugin_params():
    rt = relayq.Runtime()
    plugin = OpenTelemetryPlugin(
        {"traces_endpoint": URL, "logs_endpoint": URL.replace("traces", "logs")},
        plugin_id="p-1",
        instance_name="edge",
        runtime=rt,
    )
    assert plugin.traces_queue is not None and plugin.logs_queue is not None
    assert plugin.traces_queue.name == "p-1:traces"
    assert plugin.logs_queue.name == "p-1:logs"
    assert plugin.traces_queue.max_batch_size == 200
    assert plugin.traces_queue.log_tag == "opentelemetry plugin p-1 (edge)"
    rt.shutdown(1)


def test_legacy_batch_fields_override_the_queue_record(caplog):
    caplog.set_level(logging.WARNING)
    rt = relayq.Runtime()
    plugin = OpenTelemetryPlugin(
        {"traces_endpoint": URL, "batch_span_count": 50, "batch_flush_delay": 0},
        plugin_id="legacy",
        runtime=rt,
    )
    assert plugin.traces_queue is not None
    assert plugin.traces_queue.max_batch_size == 50
    assert plugin.traces_queue.max_coalescing_delay == 0
    assert (
        "opentelemetry: config.batch_span_count is deprecated, please use "
        "config.queue.max_batch_size instead" in caplog.messages
    )
    assert (
        "opentelemetry: config.batch_flush_delay is deprecated, please use "
        "config.queue.max_coalescing_delay instead" in caplog.messages
    )
    assert (
        "the batch_span_count parameter is deprecated, please update your configuration to "
        "use queue.max_batch_size instead" in caplog.messages
    )
    rt.shutdown(1)


def test_legacy_fields_at_their_old_defaults_warn_nothing(caplog):
    caplog.set_level(logging.WARNING)
    validate({"traces_endpoint": URL, "batch_span_count": 200, "batch_flush_delay": 3})
    assert not any("deprecated" in m for m in caplog.messages)


def test_at_least_one_endpoint_is_required():
    with pytest.raises(PluginConfigError) as info:
        validate({})
    assert info.value.errors == {
        "@entity": "at least one of these fields must be non-empty: "
        "'config.traces_endpoint', 'config.logs_endpoint'"
    }
    assert validate({"logs_endpoint": URL})["traces_endpoint"] is None


def test_endpoint_is_a_deprecated_alias_of_traces_endpoint(caplog):
    caplog.set_level(logging.WARNING)
    conf = validate({"endpoint": URL})
    assert conf["traces_endpoint"] == URL
    assert "endpoint" not in conf
    assert (
        "OpenTelemetry: config.endpoint is deprecated, please use config.traces_endpoint instead"
        in caplog.messages
    )
    assert validate({"endpoint": URL, "traces_endpoint": URL})["traces_endpoint"] == URL
    with pytest.raises(PluginConfigError) as info:
        validate({"endpoint": URL, "traces_endpoint": "http://other/v1/traces"})
    assert "both deprecated and new field are used but their values mismatch" in str(info.value)


def test_header_type_is_deprecated_and_checked(caplog):
    caplog.set_level(logging.WARNING)
    validate({"traces_endpoint": URL, "header_type": "b3"})
    assert (
        "opentelemetry: config.header_type is deprecated, please use config.propagation "
        "options instead" in caplog.messages
    )
    with pytest.raises(PluginConfigError) as info:
        validate({"traces_endpoint": URL, "header_type": "zipkin"})
    assert info.value.errors["header_type"].startswith(
        "expected one of: preserve, ignore, b3, b3-single, w3c, jaeger, ot, aws, gcp"
    )


def test_every_error_is_reported_with_its_path():
    with pytest.raises(PluginConfigError) as info:
        validate(
            {
                "traces_endpoint": "ftp://x/",
                "sampling_rate": 1.5,
                "connect_timeout": -1,
                "resource_attributes": {"service.name": ""},
                "headers": {"bad header": "x"},
                "queue": {"max_batch_size": 0},
                "propagation": {"extract": ["b3-single"], "inject": ["zipkin"]},
                "unknown": 1,
            }
        )
    errors = info.value.errors
    assert errors["traces_endpoint"].startswith("unsupported scheme in url: ftp")
    assert errors["sampling_rate"] == "value should be between 0 and 1"
    assert errors["connect_timeout"] == "value should be between 0 and 2147483646"
    assert errors["resource_attributes.service.name"] == "length must be at least 1"
    assert errors["headers.bad header"].startswith("bad header name 'bad header'")
    assert errors["queue.max_batch_size"] == "value should be between 1 and 1000000"
    assert errors["propagation.extract[1]"].startswith("expected one of: w3c, b3, jaeger")
    assert errors["propagation.inject[1]"].startswith("expected one of: preserve, w3c")
    assert errors["propagation.default_format"] == "required field missing"
    assert errors["unknown"] == "unknown field"


def test_resource_attribute_templates_are_rejected_not_sent_verbatim():
    with pytest.raises(PluginConfigError) as info:
        validate({"traces_endpoint": URL, "resource_attributes": {"a": "$(headers.host)"}})
    assert "untrusted Lua" in info.value.errors["resource_attributes.a"]


def test_registered_under_kongs_name_with_kongs_priority():
    rt = relayq.Runtime()
    plugin = create_plugin("opentelemetry", {"traces_endpoint": URL}, plugin_id="x", runtime=rt)
    assert isinstance(plugin, OpenTelemetryPlugin)
    assert plugin.priority == 14
    assert set(SCHEMA.fields) >= {"traces_endpoint", "logs_endpoint", "propagation", "queue"}
    rt.shutdown(1)
