"""QueueConfig: Kong's defaults and bounds, clear errors, dict input; get_plugin_params."""

from __future__ import annotations

import logging

import pytest

import relayq
from relayq.queue import QUEUE_FIELDS, QueueConfig, WarningThrottle, validate_queue_record
from relayq.queue.testing import FakeClock


def test_kong_defaults() -> None:
    c = QueueConfig(name="q")
    assert (c.max_batch_size, c.max_coalescing_delay, c.max_entries, c.max_bytes,
            c.max_retry_time, c.initial_retry_delay, c.max_retry_delay,
            c.concurrency_limit, c.log_tag) == (1, 1.0, 10000, None, 60.0, 0.01, 60.0, 1, None)


def test_table_has_kongs_eight_fields_with_descriptions() -> None:
    assert [f.name for f in QUEUE_FIELDS] == [
        "max_batch_size", "max_coalescing_delay", "max_entries", "max_bytes", "max_retry_time",
        "initial_retry_delay", "max_retry_delay", "concurrency_limit"]
    assert all(f.description for f in QUEUE_FIELDS)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("max_batch_size", 0, "max_batch_size must be between 1 and 1000000"),
    ("max_batch_size", 1_000_001, "max_batch_size must be between 1 and 1000000"),
    ("max_coalescing_delay", 3601, "max_coalescing_delay must be between 0 and 3600"),
    ("max_entries", 0, "max_entries must be between 1 and 1000000"),
    ("initial_retry_delay", 0.0001, "initial_retry_delay must be between 0.001 and 1000000"),
    ("max_retry_delay", 2e6, "max_retry_delay must be between 0.001 and 1000000"),
    ("concurrency_limit", 2, "concurrency_limit must be -1 or 1"),
    ("max_bytes", -1, "max_bytes must be at least 0"),
    ("max_batch_size", 1.5, "max_batch_size must be an integer"),
    ("max_retry_time", float("nan"), "max_retry_time must be a finite number"),
])
def test_out_of_range_values_name_field_and_bound(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        QueueConfig(name="q", **{field: value})


@pytest.mark.parametrize(("field", "value"), [
    ("max_batch_size", "10"), ("max_entries", None), ("max_retry_time", True),
    ("name", 5), ("log_tag", 3),
])
def test_wrong_types_raise_type_error(field: str, value: object) -> None:
    kwargs: dict[str, object] = {"name": "q", field: value}
    with pytest.raises(TypeError, match=field):
        QueueConfig(**kwargs)  # type: ignore[arg-type]


def test_frozen_and_replace_revalidates() -> None:
    c = QueueConfig(name="q")
    with pytest.raises(AttributeError):
        c.max_entries = 5  # type: ignore[misc]
    assert c.replace(max_entries=5).max_entries == 5
    with pytest.raises(ValueError, match="max_entries"):
        c.replace(max_entries=0)


def test_integral_float_accepted_for_integer_fields() -> None:
    assert QueueConfig(name="q", max_batch_size=10.0).max_batch_size == 10


def test_dict_config_and_unknown_keys() -> None:
    assert QueueConfig.from_dict({"name": "q", "max_entries": 3}).max_entries == 3
    with pytest.raises(ValueError, match=r"unknown queue config field.*bogus"):
        QueueConfig.from_dict({"name": "q", "bogus": 1})
    with pytest.raises(ValueError, match="name"):
        QueueConfig.from_dict({"max_entries": 3})


def test_max_retry_time_has_no_range_like_kong() -> None:
    assert QueueConfig(name="q", max_retry_time=-1).max_retry_time == -1


def test_validate_queue_record_fills_defaults_and_rejects_unknown() -> None:
    rec = validate_queue_record({"max_batch_size": 5})
    assert rec["max_batch_size"] == 5 and rec["max_entries"] == 10000 and rec["max_bytes"] is None
    assert validate_queue_record(None, defaults={"max_batch_size": 200})["max_batch_size"] == 200
    with pytest.raises(ValueError, match="handler_timeout: unknown field"):
        validate_queue_record({"handler_timeout": 3})


# ------------------------------------------------------------------ get_plugin_params


def test_plugin_params_name_and_tag() -> None:
    conf = relayq.get_plugin_params("http-log", {"queue": {"max_batch_size": 7}}, "endpoint-q",
                                    plugin_id="abc", instance_name="mine")
    assert conf.name == "endpoint-q" and conf.max_batch_size == 7
    assert conf.log_tag == "http-log plugin abc (mine)"
    assert relayq.get_plugin_params("statsd", {}, plugin_id="p1").name == "p1"


def test_otel_record_default_only_when_record_absent() -> None:
    assert relayq.get_plugin_params("opentelemetry", {}, plugin_id="o").max_batch_size == 200
    partial = relayq.get_plugin_params("opentelemetry", {"queue": {"max_entries": 5}},
                                       plugin_id="o")
    assert partial.max_batch_size == 1


@pytest.mark.parametrize(("legacy", "expected"), [
    ({"queue_size": 1, "flush_timeout": 2, "retry_count": 10}, (1, 1.0)),  # old defaults: unset
    ({"queue_size": 5}, (5, 1.0)),
    ({"flush_timeout": 7}, (1, 7.0)),
    ({"queue_size": 5, "batch_span_count": 9}, (9, 1.0)),  # later rules override
    ({"flush_timeout": 7, "batch_flush_delay": 0}, (1, 0.0)),
])
def test_legacy_conversion(legacy: dict[str, float], expected: tuple[int, float]) -> None:
    t = WarningThrottle(FakeClock())
    conf = relayq.get_plugin_params("statsd", {"queue": {}, **legacy}, plugin_id="p", throttle=t)
    assert (conf.max_batch_size, conf.max_coalescing_delay) == expected


def test_legacy_value_overrides_queue_record() -> None:
    t = WarningThrottle(FakeClock())
    conf = relayq.get_plugin_params("http-log", {"queue": {"max_batch_size": 50},
                                                 "queue_size": 3}, plugin_id="p", throttle=t)
    assert conf.max_batch_size == 3


def test_legacy_warnings_throttled_per_queue_and_message(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    t = WarningThrottle(clock)
    cfg = {"queue_size": 5, "retry_count": 3}
    with caplog.at_level(logging.WARNING, logger="relayq"):
        for _ in range(10):
            relayq.get_plugin_params("datadog", cfg, plugin_id="p", throttle=t)
        clock.advance(59.9)
        relayq.get_plugin_params("datadog", cfg, plugin_id="p", throttle=t)
        relayq.get_plugin_params("datadog", cfg, plugin_id="other", throttle=t)
        clock.advance(0.1)
        relayq.get_plugin_params("datadog", cfg, plugin_id="p", throttle=t)
    texts = [r.getMessage() for r in caplog.records]
    qs = ("the queue_size parameter is deprecated, please update your configuration to use "
          "queue.max_batch_size instead")
    rc = ("the retry_count parameter no longer works, please update your configuration to use "
          "initial_retry_delay and max_retry_time instead")
    assert texts.count(qs) == 3 and texts.count(rc) == 3


def test_plugin_params_bad_queue_record_names_field() -> None:
    with pytest.raises(ValueError, match="max_batch_size must be between 1 and 1000000"):
        relayq.get_plugin_params("http-log", {"queue": {"max_batch_size": 0}}, plugin_id="p")
