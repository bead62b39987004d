"""The declarative config schema: Kong's messages, defaults, paths, records, deprecations."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from relayq.plugins import PluginConfigError
from relayq.plugins import _typedefs as t
from relayq.plugins._schema import (
    NO_DEFAULT,
    Conditional,
    CustomCheck,
    Field,
    Schema,
    When,
    legacy_fields,
    queue_record,
    record,
)
from relayq.queue import QUEUE_FIELDS


def errors_of(schema: Schema, config: Any) -> dict[str, str]:
    with pytest.raises(PluginConfigError) as info:
        schema.validate(config)
    assert info.value.plugin == schema.plugin
    return info.value.errors


SIMPLE = Schema(
    "demo",
    {
        "name": Field(type="string", required=True),
        "count": Field(type="integer", default=3, between=(1, 10)),
        "ratio": Field(type="number", gt=0),
        "flag": Field(type="boolean", default=False),
        "mode": Field(type="string", default="a", one_of=("a", "b")),
        "code": Field(type="string", match=r"^[0-9]+-[0-9]+$"),
        "items": Field(type="array", elements=Field(type="integer")),
        "labels": Field(type="map", keys=Field(type="string"), values=Field(type="string")),
        "tags": Field(type="set", elements=Field(type="string")),
    },
)


class TestTypesAndMessages:
    def test_defaults_fill_absent_fields_and_none_for_no_default(self) -> None:
        out = SIMPLE.validate({"name": "x"})
        assert out == {
            "name": "x",
            "count": 3,
            "ratio": None,
            "flag": False,
            "mode": "a",
            "code": None,
            "items": None,
            "labels": None,
            "tags": None,
        }

    def test_every_error_is_collected_with_kongs_texts(self) -> None:
        errors = errors_of(
            SIMPLE,
            {
                "count": 11,
                "ratio": 0,
                "flag": "yes",
                "mode": "c",
                "code": "200",
                "items": [1, "x", 2.5],
                "labels": {"a": 1},
                "extra": True,
            },
        )
        assert errors == {
            "extra": "unknown field",
            "name": "required field missing",
            "count": "value should be between 1 and 10",
            "ratio": "value must be greater than 0",
            "flag": "expected a boolean",
            "mode": "expected one of: a, b",
            "code": "invalid value: 200",
            "items[2]": "expected an integer",
            "items[3]": "expected an integer",
            "labels.a": "expected a string",
        }

    @pytest.mark.parametrize(
        ("field", "value", "message"),
        [
            ("count", True, "expected an integer"),
            ("count", "3", "expected an integer"),
            ("ratio", "1", "expected a number"),
            ("ratio", float("nan"), "expected a number"),
            ("ratio", float("inf"), "expected a number"),
            ("name", 5, "expected a string"),
            ("name", "", "length must be at least 1"),
            ("items", "1,2", "expected an array"),
            ("items", {"a": 1}, "expected an array"),
            ("labels", ["a"], "expected a map"),
        ],
    )
    def test_type_errors(self, field: str, value: Any, message: str) -> None:
        config = {"name": "x", field: value}
        assert errors_of(SIMPLE, config) == {field: message}

    def test_integral_float_is_an_integer(self) -> None:
        assert SIMPLE.validate({"name": "x", "count": 4.0})["count"] == 4
        assert isinstance(SIMPLE.validate({"name": "x", "count": 4.0})["count"], int)

    def test_explicit_null_stays_null_and_required_null_fails(self) -> None:
        assert SIMPLE.validate({"name": "x", "count": None})["count"] is None
        assert errors_of(SIMPLE, {"name": None}) == {"name": "required field missing"}

    def test_set_removes_duplicates_keeping_order(self) -> None:
        assert SIMPLE.validate({"name": "x", "tags": ["b", "a", "b"]})["tags"] == ["b", "a"]

    def test_not_a_mapping_at_the_top(self) -> None:
        assert errors_of(SIMPLE, ["name"]) == {"@entity": "expected a record"}

    def test_none_config_means_empty(self) -> None:
        assert errors_of(SIMPLE, None) == {"name": "required field missing"}

    def test_defaults_are_copied(self) -> None:
        schema = Schema("demo", {"list": Field(type="array", default=[{"a": 1}])})
        first = schema.validate({})
        first["list"][0]["a"] = 2
        assert schema.validate({})["list"] == [{"a": 1}]

    def test_error_message_joins_paths(self) -> None:
        with pytest.raises(PluginConfigError) as info:
            SIMPLE.validate({"count": 0})
        assert str(info.value) == (
            "invalid demo plugin config: name: required field missing; "
            "count: value should be between 1 and 10"
        )
        assert isinstance(info.value, ValueError)

    def test_custom_check_runs_after_builtin_checks(self) -> None:
        calls: list[Any] = []

        def check(value: Any) -> str | None:
            calls.append(value)
            return "too odd" if value % 2 else None

        schema = Schema("demo", {"n": Field(type="integer", between=(0, 10), check=check)})
        assert errors_of(schema, {"n": 3}) == {"n": "too odd"}
        assert errors_of(schema, {"n": 12}) == {"n": "value should be between 0 and 10"}
        assert calls == [3]


class TestRecordsAndEntityChecks:
    METRIC = record(
        {
            "name": Field(type="string", required=True),
            "stat_type": Field(type="string", required=True, one_of=("counter", "timer")),
            "sample_rate": Field(type="number", gt=0),
        },
        entity_checks=(
            Conditional("stat_type", When(one_of=("counter",)), "sample_rate", When(required=True)),
        ),
    )
    SCHEMA = Schema("demo", {"metrics": Field(type="array", elements=METRIC)})

    def test_nested_paths_are_dotted_with_one_based_positions(self) -> None:
        errors = errors_of(
            self.SCHEMA,
            {"metrics": [{"name": "a", "stat_type": "timer"}, {"stat_type": "counter", "x": 1}]},
        )
        assert errors == {
            "metrics[2].x": "unknown field",
            "metrics[2].name": "required field missing",
            "metrics[2].sample_rate": "required field missing",
            "metrics[2].@entity": "failed conditional validation given value of field 'stat_type'",
        }

    def test_conditional_passes_when_condition_does_not_apply(self) -> None:
        out = self.SCHEMA.validate({"metrics": [{"name": "a", "stat_type": "timer"}]})
        assert out["metrics"] == [{"name": "a", "stat_type": "timer", "sample_rate": None}]

    def test_conditional_eq_message(self) -> None:
        schema = Schema(
            "demo",
            {"a": Field(type="string"), "b": Field(type="string")},
            entity_checks=(Conditional("a", When(eq="x"), "b", When(eq="y")),),
        )
        assert errors_of(schema, {"a": "x", "b": "z"}) == {
            "b": "value must be y",
            "@entity": "failed conditional validation given value of field 'a'",
        }

    def test_entity_check_skipped_when_its_fields_are_invalid(self) -> None:
        calls: list[Any] = []

        def check(rec: Any) -> str | None:
            calls.append(rec)
            return "never both"

        schema = Schema(
            "demo",
            {"a": Field(type="integer"), "b": Field(type="integer")},
            entity_checks=(CustomCheck(("a", "b"), check),),
        )
        assert errors_of(schema, {"a": "x", "b": 1}) == {"a": "expected an integer"}
        assert calls == []
        assert errors_of(schema, {"a": 1, "b": 1}) == {"@entity": "never both"}

    def test_custom_check_can_name_fields(self) -> None:
        schema = Schema(
            "demo",
            {"a": Field(type="integer")},
            entity_checks=(CustomCheck(("a",), lambda rec: {"a": "bad a"}),),
        )
        assert errors_of(schema, {"a": 1}) == {"a": "bad a"}

    def test_record_default_applies_only_when_the_record_is_absent(self) -> None:
        inner = {"size": Field(type="integer", default=1), "delay": Field(type="number", default=1)}
        schema = Schema("demo", {"q": record(inner, default={"size": 200})})
        assert schema.validate({})["q"] == {"size": 200, "delay": 1}
        assert schema.validate({"q": None})["q"] == {"size": 200, "delay": 1}
        assert schema.validate({"q": {"delay": 5}})["q"] == {"size": 1, "delay": 5}

    def test_record_without_default_is_filled_from_subfields(self) -> None:
        schema = Schema("demo", {"q": record({"size": Field(type="integer", default=7)})})
        assert schema.validate({})["q"] == {"size": 7}

    def test_nullable_record(self) -> None:
        schema = Schema("demo", {"q": record({"size": Field(type="integer")}, default=None)})
        assert schema.validate({})["q"] is None
        assert schema.validate({"q": {"size": 2}})["q"] == {"size": 2}


class TestQueueRecord:
    SCHEMA = Schema("demo", {"queue": queue_record()})
    OTEL = Schema("demo", {"queue": queue_record({"max_batch_size": 200})})

    def test_defaults_come_from_the_engine_table(self) -> None:
        queue = self.SCHEMA.validate({})["queue"]
        for spec in QUEUE_FIELDS:
            assert queue[spec.name] == spec.default
        assert queue["max_batch_size"] == 1
        assert queue["max_entries"] == 10000
        assert queue["max_bytes"] is None
        assert queue["concurrency_limit"] == 1

    def test_bounds_and_messages(self) -> None:
        errors = errors_of(
            self.SCHEMA,
            {
                "queue": {
                    "max_batch_size": 0,
                    "max_coalescing_delay": 3601,
                    "max_entries": 1_000_001,
                    "initial_retry_delay": 0,
                    "max_retry_delay": 0.0001,
                    "concurrency_limit": 2,
                    "max_retry_time": "long",
                    "name": "x",
                }
            },
        )
        assert errors == {
            "queue.name": "unknown field",
            "queue.max_batch_size": "value should be between 1 and 1000000",
            "queue.max_coalescing_delay": "value should be between 0 and 3600",
            "queue.max_entries": "value should be between 1 and 1000000",
            "queue.max_retry_time": "expected a number",
            "queue.initial_retry_delay": "value should be between 0.001 and 1000000",
            "queue.max_retry_delay": "value should be between 0.001 and 1000000",
            "queue.concurrency_limit": "expected one of: -1, 1",
        }

    def test_null_required_queue_field(self) -> None:
        errors = errors_of(self.SCHEMA, {"queue": {"max_batch_size": None}})
        assert errors == {"queue.max_batch_size": "required field missing"}

    def test_max_bytes_is_nullable(self) -> None:
        assert self.SCHEMA.validate({"queue": {"max_bytes": None}})["queue"]["max_bytes"] is None
        assert self.SCHEMA.validate({"queue": {"max_bytes": 100}})["queue"]["max_bytes"] == 100

    def test_record_default_versus_partial_record(self) -> None:
        assert self.OTEL.validate({})["queue"]["max_batch_size"] == 200
        partial = self.OTEL.validate({"queue": {"max_entries": 5}})["queue"]
        assert partial["max_batch_size"] == 1
        assert partial["max_entries"] == 5

    def test_relayq_extras_are_validated_by_the_engine(self) -> None:
        queue = self.SCHEMA.validate(
            {"queue": {"retry_on": "retryable", "handler_timeout": 5, "drop_policy": "block"}}
        )["queue"]
        assert (queue["retry_on"], queue["handler_timeout"], queue["drop_policy"]) == (
            "retryable",
            5,
            "block",
        )
        assert queue["spool"] is None
        errors = errors_of(self.SCHEMA, {"queue": {"retry_on": "sometimes", "spool": {}}})
        assert errors == {
            "queue.retry_on": "retry_on must be one of: all, retryable (got 'sometimes')"
        }

    def test_concurrency_limit_minus_one_allowed(self) -> None:
        queue = self.SCHEMA.validate({"queue": {"concurrency_limit": -1}})["queue"]
        assert queue["concurrency_limit"] == -1


class TestLegacyFields:
    SCHEMA = Schema("http-log", {**legacy_fields("http-log"), "queue": queue_record()})

    def test_defaults_are_null(self) -> None:
        out = self.SCHEMA.validate({})
        assert (out["retry_count"], out["queue_size"], out["flush_timeout"]) == (None, None, None)

    def test_deprecation_warnings_when_different_from_old_default(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger="relayq.plugins")
        self.SCHEMA.validate({"retry_count": 3, "queue_size": 5, "flush_timeout": 4})
        messages = [r.getMessage() for r in caplog.records if r.name == "relayq.plugins"]
        assert messages == [
            "http-log: config.retry_count no longer works, please use "
            "config.queue.max_retry_time instead",
            "http-log: config.queue_size is deprecated, please use "
            "config.queue.max_batch_size instead",
            "http-log: config.flush_timeout is deprecated, please use "
            "config.queue.max_coalescing_delay instead",
        ]
        assert all(r.levelno == logging.WARNING for r in caplog.records)

    def test_no_warning_for_old_defaults_or_null(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.WARNING, logger="relayq.plugins")
        self.SCHEMA.validate({"retry_count": 10, "queue_size": 1, "flush_timeout": 2})
        self.SCHEMA.validate({"retry_count": None})
        assert [r for r in caplog.records if r.name == "relayq.plugins"] == []

    def test_no_warning_when_validation_fails(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.WARNING, logger="relayq.plugins")
        errors_of(self.SCHEMA, {"retry_count": 3, "queue": {"max_batch_size": 0}})
        assert [r for r in caplog.records if r.name == "relayq.plugins"] == []

    def test_legacy_values_get_the_bounds_of_their_queue_fields(self) -> None:
        errors = errors_of(self.SCHEMA, {"queue_size": 0, "flush_timeout": -1})
        assert errors == {
            "queue_size": "value should be between 1 and 1000000",
            "flush_timeout": "value should be between 0 and 3600",
        }


class TestTypedefs:
    SCHEMA = Schema(
        "demo",
        {
            "host": t.host(),
            "port": t.port(),
            "url": t.url(),
            "headers": Field(type="map", keys=t.header_name(), values=t.header_value()),
        },
    )

    @pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "::1", "[::1]", "a-b.example.com"])
    def test_valid_hosts(self, host: str) -> None:
        assert self.SCHEMA.validate({"host": host})["host"] == host

    @pytest.mark.parametrize(
        ("host", "message"),
        [
            ("a b", "invalid value: a b"),
            ("example.com:80", "must not have a port"),
            ("exa/mple", "invalid value: exa/mple"),
        ],
    )
    def test_invalid_hosts(self, host: str, message: str) -> None:
        assert errors_of(self.SCHEMA, {"host": host}) == {"host": message}

    def test_port_bounds(self) -> None:
        assert errors_of(self.SCHEMA, {"port": 65536}) == {
            "port": "value should be between 0 and 65535"
        }

    @pytest.mark.parametrize(
        ("url", "message"),
        [
            ("example.com/x", "missing scheme in url"),
            ("http://", "missing host in url"),
            ("ftp://h/x", "unsupported scheme in url: ftp (expected one of: http, https)"),
            ("http://h:99999/", "could not parse url. Port out of range 0-65535"),
        ],
    )
    def test_invalid_urls(self, url: str, message: str) -> None:
        assert errors_of(self.SCHEMA, {"url": url}) == {"url": message}

    def test_header_names_and_values(self) -> None:
        errors = errors_of(self.SCHEMA, {"headers": {"X Bad": "v", "X-Ok": "a\r\nInjected: 1"}})
        assert errors == {
            "headers.X Bad": "bad header name 'X Bad', allowed characters are A-Z, a-z, 0-9, "
            "'_', and '-'",
            "headers.X-Ok": "header value must not contain CR, LF or NUL characters",
        }
        assert self.SCHEMA.validate({"headers": {"X-Empty": ""}})["headers"] == {"X-Empty": ""}


def test_no_default_marker_is_distinct_from_none() -> None:
    assert NO_DEFAULT is not None
    assert repr(NO_DEFAULT) == "NO_DEFAULT"


def test_the_documented_examples_are_valid() -> None:
    """Every YAML example in docs/plugins.md validates with its plugin's schema."""
    import re
    from pathlib import Path

    from ruamel.yaml import YAML

    from relayq.plugins import plugin_class

    text = (Path(__file__).resolve().parents[2] / "docs" / "plugins.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    names = []
    for block in blocks:
        for entry in YAML(typ="safe").load(block)["plugins"]:
            plugin_class(entry["name"]).validate(entry["config"])
            names.append(entry["name"])
    assert names == ["http-log", "statsd", "datadog"]
