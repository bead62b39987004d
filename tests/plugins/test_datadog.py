"""datadog: schema, DogStatsD lines byte for byte, env fallback, and end to end through a real
Runtime into a raw UDP socket and Etsy's StatsD daemon (which parses DogStatsD tags)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import relayq
from relayq.plugins import PluginConfigError, create_plugin
from relayq.plugins.datadog import (
    HOST_ENV,
    PORT_ENV,
    SCHEMA,
    DatadogPlugin,
    Settings,
    agent_address,
    metric_lines,
)
from relayq.serializer import RequestContext, serialize
from tests.support.sockets import UdpListener
from tests.support.statsd_daemon import StatsdDaemon


def ctx(**kw: Any) -> RequestContext:
    base: dict[str, Any] = {
        "status": 200,
        "service": {"id": "svc", "name": "dd1", "host": "dd1.test"},
        "consumer": {
            "id": "8bc8ac2f-5b3c-4b2e-a1d4-1d9a1c3d7f00",
            "username": "bar",
            "custom_id": "bar",
        },
        "request_size": 33,
        "response_size": 210,
        "kong_latency": 1.0,
        "proxy_latency": 20.0,
        "request_latency": 22.0,
    }
    base.update(kw)
    return RequestContext(**base)


def lines(message: RequestContext, **config: Any) -> list[str]:
    return metric_lines(Settings.from_config(SCHEMA.validate(config)), serialize(message))


class TestSchema:
    def test_defaults(self) -> None:
        conf = SCHEMA.validate({})
        assert (conf["host"], conf["port"], conf["prefix"]) == ("localhost", 8125, "kong")
        assert (conf["service_name_tag"], conf["status_tag"], conf["consumer_tag"]) == (
            "name",
            "status",
            "consumer",
        )
        assert [(m["name"], m["stat_type"], m["sample_rate"]) for m in conf["metrics"]] == [
            ("request_count", "counter", 1),
            ("latency", "timer", None),
            ("request_size", "timer", None),
            ("response_size", "timer", None),
            ("upstream_latency", "timer", None),
            ("kong_latency", "timer", None),
        ]
        assert all(m["tags"] == ["app:kong"] for m in conf["metrics"])
        assert all(m["consumer_identifier"] == "custom_id" for m in conf["metrics"])

    def test_errors(self) -> None:
        with pytest.raises(PluginConfigError) as info:
            SCHEMA.validate(
                {
                    "metrics": [
                        {"name": "request_count", "stat_type": "counter", "sample_rate": 2},
                        {"name": "status_count", "stat_type": "gauge", "tags": ["ok", "bad:"]},
                    ]
                }
            )
        assert info.value.errors == {
            "metrics[1].sample_rate": "value should be between 0 and 1",
            "metrics[2].name": "expected one of: kong_latency, latency, request_count, "
            "request_size, response_size, upstream_latency",
            "metrics[2].tags[2]": "invalid value: bad:",
            "metrics[2].sample_rate": "required field missing",
            "metrics[2].@entity": "failed conditional validation given value of field 'stat_type'",
        }

    def test_metrics_cannot_be_null(self) -> None:
        with pytest.raises(PluginConfigError) as info:
            SCHEMA.validate({"metrics": None})
        assert info.value.errors == {"metrics": "required field missing"}

    def test_deprecation(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.WARNING, logger="relayq.plugins")
        SCHEMA.validate({"queue_size": 10})
        assert [r.getMessage() for r in caplog.records] == [
            "datadog: config.queue_size is deprecated, please use config.queue.max_batch_size "
            "instead"
        ]


class TestLines:
    def test_default_metrics_match_kongs_test_lines(self) -> None:
        tags = "|#name:dd1,status:200,consumer:bar,app:kong"
        assert lines(ctx()) == [
            "kong.request.count:1|c" + tags,
            "kong.latency:22|ms" + tags,
            "kong.request.size:33|ms" + tags,
            "kong.response.size:210|ms" + tags,
            "kong.upstream_latency:20|ms" + tags,
            "kong.kong_latency:1|ms" + tags,
        ]

    def test_custom_tag_keys(self) -> None:
        out = lines(
            ctx(), service_name_tag="upstream", status_tag="http_status", consumer_tag="user"
        )
        assert out[0] == "kong.request.count:1|c|#upstream:dd1,http_status:200,user:bar,app:kong"

    def test_distribution_rate_and_custom_tags(self) -> None:
        metrics = [
            {"name": "request_size", "stat_type": "distribution"},
            {
                "name": "request_count",
                "stat_type": "counter",
                "sample_rate": 0.5,
                "tags": ["env:prod", "canary"],
                "consumer_identifier": "consumer_id",
            },
        ]
        assert lines(ctx(), metrics=metrics, prefix="edge") == [
            "edge.request.size:33|d|#name:dd1,status:200",
            "edge.request.count:1|c|@0.5|#name:dd1,status:200,"
            "consumer:8bc8ac2f_5b3c_4b2e_a1d4_1d9a1c3d7f00,env:prod,canary",
        ]

    def test_minus_one_is_sent_and_missing_service_is_an_empty_tag(self) -> None:
        metrics = [{"name": "upstream_latency", "stat_type": "timer"}]
        assert lines(ctx(service=None, consumer=None, proxy_latency=-1.0), metrics=metrics) == [
            "kong.upstream_latency:-1|ms|#name:,status:200"
        ]

    def test_service_host_with_dots_when_no_name(self) -> None:
        metrics = [{"name": "kong_latency", "stat_type": "gauge", "sample_rate": 1}]
        assert lines(ctx(service={"host": "api.example.com"}), metrics=metrics) == [
            "kong.kong_latency:1|g|#name:api_example_com,status:200"
        ]


class TestAgentAddress:
    def test_configured_values_win(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(HOST_ENV, "agent.env")
        monkeypatch.setenv(PORT_ENV, "9125")
        assert agent_address(SCHEMA.validate({"host": "dd.local", "port": 1})) == ("dd.local", 1)

    def test_null_falls_back_to_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(HOST_ENV, "agent.env")
        monkeypatch.setenv(PORT_ENV, "9125")
        assert agent_address(SCHEMA.validate({"host": None, "port": None})) == ("agent.env", 9125)

    def test_null_without_environment_is_a_clear_error(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv(HOST_ENV, raising=False)
        monkeypatch.setenv(PORT_ENV, "not-a-port")
        with pytest.raises(PluginConfigError) as info:
            create_plugin("datadog", {"host": None, "port": None}, plugin_id="dd")
        assert info.value.errors == {
            "host": f"required field missing (null, and {HOST_ENV} is not set)",
            "port": f"required field missing (null, and {PORT_ENV} is not a port number)",
        }


@pytest.fixture
async def rt() -> AsyncIterator[relayq.Runtime]:
    runtime = relayq.Runtime()
    yield runtime
    await runtime.aclose(timeout=5)


def dd_plugin(rt: relayq.Runtime, config: dict[str, Any], pid: str = "dd") -> DatadogPlugin:
    plugin = create_plugin("datadog", config, plugin_id=pid, runtime=rt)
    assert isinstance(plugin, DatadogPlugin)
    return plugin


async def test_udp_exact_bytes_from_the_environment_address(
    rt: relayq.Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    with UdpListener() as udp:
        monkeypatch.setenv(HOST_ENV, "127.0.0.1")
        monkeypatch.setenv(PORT_ENV, str(udp.port))
        p = dd_plugin(rt, {"host": None, "port": None, "queue": {"max_batch_size": 2}})
        p.log(ctx())
        p.log(ctx(status=404, service=None))
        assert await rt.drain(timeout=5)
        got = udp.wait_for(12)
    first = "|#name:dd1,status:200,consumer:bar,app:kong"
    second = "|#name:,status:404,consumer:bar,app:kong"
    assert got == [
        line.encode()
        for tags in (first, second)
        for line in (
            "kong.request.count:1|c" + tags,
            "kong.latency:22|ms" + tags,
            "kong.request.size:33|ms" + tags,
            "kong.response.size:210|ms" + tags,
            "kong.upstream_latency:20|ms" + tags,
            "kong.kong_latency:1|ms" + tags,
        )
    ]
    assert rt.stats()["dd"].batches_sent == 1


async def test_connect_failure_is_retried_with_kongs_message(
    rt: relayq.Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    p = dd_plugin(
        rt,
        {
            "host": "no-such-host.invalid",
            "port": 8125,
            "queue": {"max_retry_time": 0.05, "initial_retry_delay": 0.01},
        },
    )
    p.log(ctx())
    assert await rt.drain(timeout=15)
    failures = [r.getMessage() for r in caplog.records if "could not process" in r.getMessage()]
    assert failures
    assert (
        failures[0]
        .split("handler could not process entries: ", 1)[1]
        .startswith("failed to connect to no-such-host.invalid:8125: ")
    )
    assert rt.stats()["dd"].dropped["retry_exhausted"] == 1


@pytest.fixture(scope="module")
def daemon() -> Iterator[StatsdDaemon]:
    with StatsdDaemon() as running:
        yield running


async def test_statsd_daemon_parses_the_dogstatsd_tags(
    rt: relayq.Runtime, daemon: StatsdDaemon
) -> None:
    daemon.reset()
    p = dd_plugin(rt, {"host": "127.0.0.1", "port": daemon.udp_port, "prefix": "ddtest"})
    for latency in (5.0, 7.0):
        p.log(ctx(request_latency=latency))
    assert await rt.drain(timeout=5)
    tags = ";name=dd1;status=200;consumer=bar;app=kong"
    daemon.wait_until(
        lambda d: (
            d.counters.get("ddtest.request.count" + tags) == 2
            and len(d.timers.get("ddtest.latency" + tags, [])) == 2
        )
    )
    assert sorted(daemon.timers["ddtest.latency" + tags]) == [5, 7]
    assert daemon.timers["ddtest.request.size" + tags] == [33, 33]
