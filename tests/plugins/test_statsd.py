"""statsd: schema, line formats byte for byte, tag styles, packing, and end to end through a real
Runtime into raw UDP/TCP sockets and Etsy's StatsD daemon."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import relayq
from relayq.plugins import PluginConfigError, create_plugin
from relayq.plugins.statsd import (
    SCHEMA,
    Settings,
    StatsdPlugin,
    format_line,
    metric_lines,
    metrics_entry,
    pack_datagrams,
    status_ranges,
)
from relayq.serializer import RequestContext, serialize
from tests.support.sockets import TcpListener, UdpListener
from tests.support.statsd_daemon import StatsdDaemon, free_port

ROUTE_ID = "4a8f0f5e-8c2d-4e60-9d3e-2a7f6f1b0c11"


def ctx(**kw: Any) -> RequestContext:
    base: dict[str, Any] = {
        "status": 200,
        "service": {"id": "svc-id", "name": "statsd1", "host": "statsd1.test"},
        "route": {"id": ROUTE_ID, "name": "r1"},
        "consumer": {"id": "cons-id", "username": "bob", "custom_id": "robert"},
        "workspace_id": "ws-id",
        "workspace_name": "default",
        "request_size": 120,
        "response_size": 640,
        "kong_latency": 2.0,
        "proxy_latency": 15.0,
        "request_latency": 18.5,
    }
    base.update(kw)
    return RequestContext(**base)


def settings(hostname: str = "node_1", **config: Any) -> Settings:
    return Settings.from_config(SCHEMA.validate(config), hostname)


def lines(message: RequestContext, **config: Any) -> list[str]:
    return metric_lines(settings(**config), serialize(message))


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


# ---------------------------------------------------------------------------- schema


class TestSchema:
    def test_defaults(self) -> None:
        conf = SCHEMA.validate({})
        assert (conf["host"], conf["port"], conf["prefix"]) == ("localhost", 8125, "kong")
        assert [m["name"] for m in conf["metrics"]] == [
            "request_count",
            "latency",
            "request_size",
            "status_count",
            "response_size",
            "unique_users",
            "request_per_user",
            "upstream_latency",
            "kong_latency",
            "status_count_per_user",
            "status_count_per_workspace",
            "status_count_per_user_per_route",
            "shdict_usage",
        ]
        types = {m["name"]: (m["stat_type"], m["sample_rate"]) for m in conf["metrics"]}
        assert types["request_size"] == ("counter", 1)
        assert types["response_size"] == ("counter", 1)
        assert types["latency"] == ("timer", None)
        assert types["unique_users"] == ("set", None)
        assert types["shdict_usage"] == ("gauge", 1)
        assert conf["udp_packet_size"] == 0 and conf["use_tcp"] is False
        assert conf["consumer_identifier_default"] == "custom_id"
        assert conf["service_identifier_default"] == "service_name_or_host"
        assert conf["workspace_identifier_default"] == "workspace_id"
        assert conf["tag_style"] is None and conf["allow_status_codes"] is None

    def test_errors(self) -> None:
        with pytest.raises(PluginConfigError) as info:
            SCHEMA.validate(
                {
                    "host": "bad host",
                    "port": -1,
                    "metrics": [
                        {"name": "request_count", "stat_type": "gauge"},
                        {"name": "nope", "stat_type": "timer", "consumer_identifier": "email"},
                    ],
                    "allow_status_codes": ["200-299", "2xx"],
                    "udp_packet_size": 65508,
                    "tag_style": "graphite",
                    "consumer_identifier_default": None,
                }
            )
        assert info.value.errors == {
            "host": "invalid value: bad host",
            "port": "value should be between 0 and 65535",
            "metrics[1].sample_rate": "required field missing",
            "metrics[1].@entity": "failed conditional validation given value of field 'stat_type'",
            "metrics[2].name": "expected one of: kong_latency, latency, request_count, "
            "request_per_user, request_size, response_size, status_count, "
            "status_count_per_user, unique_users, upstream_latency, status_count_per_workspace, "
            "status_count_per_user_per_route, shdict_usage",
            "metrics[2].consumer_identifier": "expected one of: consumer_id, custom_id, username",
            "allow_status_codes[2]": "invalid value: 2xx",
            "udp_packet_size": "value should be between 0 and 65507",
            "tag_style": "expected one of: dogstatsd, influxdb, librato, signalfx",
            "consumer_identifier_default": "required field missing",
        }

    def test_deprecation(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.WARNING, logger="relayq.plugins")
        SCHEMA.validate({"retry_count": 5, "flush_timeout": 1})
        assert messages(caplog) == [
            "statsd: config.retry_count no longer works, please use "
            "config.queue.max_retry_time instead",
            "statsd: config.flush_timeout is deprecated, please use "
            "config.queue.max_coalescing_delay instead",
        ]


# ---------------------------------------------------------------------------- lines


DEFAULT_LINES = [
    "kong.service.statsd1.request.count:1|c",
    "kong.service.statsd1.latency:18.5|ms",
    "kong.service.statsd1.request.size:120|c",
    "kong.service.statsd1.status.200:1|c",
    "kong.service.statsd1.response.size:640|c",
    "kong.service.statsd1.user.uniques:robert|s",
    "kong.service.statsd1.user.robert.request.count:1|c",
    "kong.service.statsd1.upstream_latency:15|ms",
    "kong.service.statsd1.kong_latency:2|ms",
    "kong.service.statsd1.user.robert.status.200:1|c",
    "kong.service.statsd1.workspace.ws-id.status.200:1|c",
    f"kong.route.{ROUTE_ID}.user.robert.status.200:1|c",
]


class TestLines:
    def test_default_metrics(self) -> None:
        assert lines(ctx()) == DEFAULT_LINES

    def test_unmatched_request_without_consumer(self) -> None:
        message = ctx(status=404, service=None, route=None, consumer=None, proxy_latency=-1.0)
        assert lines(message) == [
            "kong.global.unmatched.request.count:1|c",
            "kong.global.unmatched.latency:18.5|ms",
            "kong.global.unmatched.request.size:120|c",
            "kong.global.unmatched.status.404:1|c",
            "kong.global.unmatched.response.size:640|c",
            "kong.global.unmatched.kong_latency:2|ms",
            "kong.global.unmatched.workspace.ws-id.status.404:1|c",
        ]

    @pytest.mark.parametrize(
        ("identifier", "service", "scope"),
        [
            ("service_id", {"id": "a.b", "name": "n"}, "service.a_b"),
            ("service_name", {"name": "my.svc", "host": "h"}, "service.my_svc"),
            ("service_host", {"name": "n", "host": "api.example.com"}, "service.api_example_com"),
            ("service_name_or_host", {"host": "only.host"}, "service.only_host"),
            ("service_name", {"host": "h"}, "service.unnamed"),
        ],
    )
    def test_service_identifiers(
        self, identifier: str, service: dict[str, Any], scope: str
    ) -> None:
        metric = {"name": "request_count", "stat_type": "counter", "sample_rate": 1}
        out = lines(ctx(service=service), metrics=[metric], service_identifier_default=identifier)
        assert out == [f"kong.{scope}.request.count:1|c"]

    def test_consumer_and_workspace_identifiers(self) -> None:
        metrics = [
            {
                "name": "request_per_user",
                "stat_type": "counter",
                "sample_rate": 1,
                "consumer_identifier": "username",
            },
            {"name": "status_count_per_user", "stat_type": "counter", "sample_rate": 1},
            {
                "name": "status_count_per_workspace",
                "stat_type": "counter",
                "sample_rate": 1,
                "workspace_identifier": "workspace_name",
            },
            {"name": "unique_users", "stat_type": "set", "consumer_identifier": "consumer_id"},
        ]
        out = lines(ctx(), metrics=metrics, consumer_identifier_default="username")
        assert out == [
            "kong.service.statsd1.user.bob.request.count:1|c",
            "kong.service.statsd1.user.bob.status.200:1|c",
            "kong.service.statsd1.workspace.default.status.200:1|c",
            "kong.service.statsd1.user.uniques:cons-id|s",
        ]

    def test_stat_types_and_sample_rates(self) -> None:
        metrics = [
            {"name": "request_count", "stat_type": "counter", "sample_rate": 0.25},
            {"name": "request_size", "stat_type": "gauge", "sample_rate": 1},
            {"name": "response_size", "stat_type": "histogram"},
            {"name": "latency", "stat_type": "meter", "sample_rate": 2},
            {"name": "kong_latency", "stat_type": "set"},
            {"name": "upstream_latency", "stat_type": "timer", "sample_rate": 0.5},
        ]
        assert lines(ctx(), metrics=metrics) == [
            "kong.service.statsd1.request.count:1|c|@0.25",
            "kong.service.statsd1.request.size:120|g",
            "kong.service.statsd1.response.size:640|h",
            "kong.service.statsd1.latency:18.5|m|@2",
            "kong.service.statsd1.kong_latency:2|s",
            "kong.service.statsd1.upstream_latency:15|ms|@0.5",
        ]

    @pytest.mark.parametrize(
        ("value", "text"),
        [
            (12.345678901234567, "12.345678901235"),
            (100.0, "100"),
            (0.1, "0.1"),
            (1e15, "1e+15"),
            (123456789012345.0, "1.2345678901234e+14"),
            (-0.5, "-0.5"),
        ],
    )
    def test_numbers_print_like_lua(self, value: float, text: str) -> None:
        metric = {"name": "latency", "stat_type": "timer"}
        assert lines(ctx(request_latency=value), metrics=[metric]) == [
            f"kong.service.statsd1.latency:{text}|ms"
        ]

    def test_prefix_and_hostname_in_prefix(self) -> None:
        metric = [{"name": "request_count", "stat_type": "counter", "sample_rate": 1}]
        assert lines(ctx(), metrics=metric, prefix="edge", hostname_in_prefix=True) == [
            "edge.node.node_1.service.statsd1.request.count:1|c"
        ]
        tagged = lines(ctx(), metrics=metric, hostname_in_prefix=True, tag_style="dogstatsd")
        assert tagged[0].startswith("kong.request.count:1|c|#")

    def test_shdict_usage_emits_nothing_without_shared_dicts(self) -> None:
        metric = [{"name": "shdict_usage", "stat_type": "gauge", "sample_rate": 1}]
        assert lines(ctx(), metrics=metric) == []
        assert lines(ctx(), metrics=metric, tag_style="influxdb") == []

    def test_route_metric_skipped_without_route(self) -> None:
        metric = [
            {"name": "status_count_per_user_per_route", "stat_type": "counter", "sample_rate": 1}
        ]
        assert lines(ctx(route=None), metrics=metric) == []


class TestEntry:
    @pytest.mark.parametrize("style", [None, "dogstatsd"])
    @pytest.mark.parametrize(
        "message",
        [
            ctx(),
            ctx(service=None, route=None, consumer=None, proxy_latency=-1.0, status=404),
            ctx(workspace_id="", kong_latency=0.25),
        ],
    )
    def test_the_queued_fields_give_the_same_lines_as_the_full_log(
        self, message: RequestContext, style: str | None
    ) -> None:
        conf = settings(tag_style=style)
        assert metric_lines(conf, metrics_entry(message)) == metric_lines(conf, serialize(message))

    def test_custom_serialize_values_reach_the_metrics(self) -> None:
        message = ctx(serialize_values={"latencies.request": 99, "service.name": "renamed"})
        metric = [{"name": "latency", "stat_type": "timer"}]
        entry = metrics_entry(message)
        assert entry == serialize(message)
        assert metric_lines(settings(metrics=metric), entry) == [
            "kong.service.renamed.latency:99|ms"
        ]


class TestTags:
    TAGS = "service=statsd1,route=r1,workspace=ws-id,consumer=robert,node=node_1,status=200"

    @pytest.mark.parametrize(
        ("style", "line"),
        [
            ("dogstatsd", "kong.request.count:1|c|@0.5|#" + TAGS.replace("=", ":")),
            ("influxdb", f"kong.request.count,{TAGS}:1|c|@0.5"),
            ("librato", f"kong.request.count#{TAGS}:1|c|@0.5"),
            ("signalfx", f"kong.request.count[{TAGS}]:1|c|@0.5"),
        ],
    )
    def test_styles(self, style: str, line: str) -> None:
        metric = [{"name": "request_count", "stat_type": "counter", "sample_rate": 0.5}]
        assert lines(ctx(), metrics=metric, tag_style=style) == [line]

    def test_default_metrics_in_tag_mode_skip_the_special_ones(self) -> None:
        out = lines(ctx(), tag_style="dogstatsd")
        tags = "|#" + self.TAGS.replace("=", ":")
        assert out == [
            "kong.request.count:1|c" + tags,
            "kong.latency:18.5|ms" + tags,
            "kong.request.size:120|c" + tags,
            "kong.response.size:640|c" + tags,
            "kong.upstream_latency:15|ms" + tags,
            "kong.kong_latency:2|ms" + tags,
        ]

    def test_no_service_means_no_tags(self) -> None:
        metric = [{"name": "request_count", "stat_type": "counter", "sample_rate": 1}]
        assert lines(ctx(service=None), metrics=metric, tag_style="dogstatsd") == [
            "kong.request.count:1|c"
        ]

    def test_consumer_tag_needs_a_workspace_and_route_name_falls_back_to_id(self) -> None:
        metric = [{"name": "request_count", "stat_type": "counter", "sample_rate": 1}]
        out = lines(
            ctx(workspace_id="", route={"id": ROUTE_ID}),
            metrics=metric,
            tag_style="influxdb",
        )
        assert out == [
            f"kong.request.count,service=statsd1,route={ROUTE_ID},node=node_1,status=200:1|c"
        ]

    def test_format_line_without_tags(self) -> None:
        assert format_line("p", "s", 3, "g", None) == "p.s:3|g"
        assert format_line("p", "s", 3, "g", 1) == "p.s:3|g"


class TestPacking:
    LINES = (b"a.b:1|c", b"c.d:22|ms", b"e:333|g")  # 7, 9 and 7 bytes

    def test_zero_means_one_datagram_per_line(self) -> None:
        assert pack_datagrams(self.LINES, 0) == list(self.LINES)

    def test_packs_up_to_the_size_exactly(self) -> None:
        assert pack_datagrams(self.LINES, 17) == [b"a.b:1|c\nc.d:22|ms", b"e:333|g"]
        assert pack_datagrams(self.LINES, 25) == [b"a.b:1|c\nc.d:22|ms\ne:333|g"]
        assert pack_datagrams(self.LINES, 24) == [b"a.b:1|c\nc.d:22|ms", b"e:333|g"]

    def test_never_exceeds_the_size(self) -> None:
        many = [f"kong.metric.{i}:{i * 7}|c".encode() for i in range(200)]
        for size in (30, 64, 512):
            packed = pack_datagrams(many, size)
            assert all(len(d) <= size for d in packed)
            assert b"\n".join(packed).split(b"\n") == many

    def test_oversized_line_goes_alone_with_kongs_warning(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger="relayq.plugins")
        assert pack_datagrams(self.LINES, 8) == [b"a.b:1|c", b"c.d:22|ms", b"e:333|g"]
        assert messages(caplog) == [
            "[statsd] configured udp_packet_size is smaller than single message of length 9, "
            "UDP packet may be truncated"
        ]


def test_status_ranges() -> None:
    assert status_ranges(None) is None
    assert status_ranges(["200-299", "404-404"]) == ((200, 299), (404, 404))


# ---------------------------------------------------------------------------- end to end


@pytest.fixture
async def rt() -> AsyncIterator[relayq.Runtime]:
    runtime = relayq.Runtime()
    yield runtime
    await runtime.aclose(timeout=5)


@pytest.fixture
def udp() -> Iterator[UdpListener]:
    with UdpListener() as listener:
        yield listener


def statsd_plugin(rt: relayq.Runtime, config: dict[str, Any], pid: str = "sd") -> StatsdPlugin:
    plugin = create_plugin("statsd", config, plugin_id=pid, runtime=rt)
    assert isinstance(plugin, StatsdPlugin)
    return plugin


async def test_udp_one_datagram_per_metric(rt: relayq.Runtime, udp: UdpListener) -> None:
    p = statsd_plugin(rt, {"host": "127.0.0.1", "port": udp.port})
    p.log(ctx())
    assert await rt.drain(timeout=5)
    got = udp.wait_for(len(DEFAULT_LINES))
    hostless = [line.encode() for line in DEFAULT_LINES]
    assert got == hostless
    assert rt.stats()["ws-id.sd"].entries_sent == 1


async def test_udp_packing_and_batches(rt: relayq.Runtime, udp: UdpListener) -> None:
    p = statsd_plugin(
        rt,
        {
            "host": "127.0.0.1",
            "port": udp.port,
            "udp_packet_size": 200,
            "queue": {"max_batch_size": 2, "max_coalescing_delay": 5},
        },
    )
    p.log(ctx())
    p.log(ctx(status=500))
    assert await rt.drain(timeout=5)
    expected = [line.encode() for line in DEFAULT_LINES]
    expected += [line.replace("200", "500").encode() for line in DEFAULT_LINES]
    got = udp.quiet()
    assert all(len(d) <= 200 for d in got)
    assert len(got) < len(expected)
    assert b"\n".join(got).split(b"\n") == expected


async def test_allow_status_codes_filters_before_enqueueing(
    rt: relayq.Runtime, udp: UdpListener
) -> None:
    metric = [{"name": "status_count", "stat_type": "counter", "sample_rate": 1}]
    p = statsd_plugin(
        rt,
        {
            "host": "127.0.0.1",
            "port": udp.port,
            "metrics": metric,
            "allow_status_codes": ["200-204", "500-599"],
        },
    )
    for status in (200, 204, 302, 404, 503, 600):
        p.log(ctx(status=status))
    assert await rt.drain(timeout=5)
    assert udp.wait_for(3) == [
        b"kong.service.statsd1.status.200:1|c",
        b"kong.service.statsd1.status.204:1|c",
        b"kong.service.statsd1.status.503:1|c",
    ]
    assert rt.stats()["ws-id.sd"].enqueued == 3  # queues are keyed <workspace>.<plugin id>


async def test_tcp_lines_and_connection_reuse(rt: relayq.Runtime) -> None:
    with TcpListener() as tcp:
        metric = [
            {"name": "request_count", "stat_type": "counter", "sample_rate": 1},
            {"name": "kong_latency", "stat_type": "timer"},
        ]
        p = statsd_plugin(
            rt, {"host": "127.0.0.1", "port": tcp.port, "use_tcp": True, "metrics": metric}
        )
        p.log(ctx())
        assert await rt.drain(timeout=5)
        tcp.wait_for_lines(2)
        p.log(ctx(kong_latency=7.5))
        assert await rt.drain(timeout=5)
        assert tcp.wait_for_lines(4) == [
            b"kong.service.statsd1.request.count:1|c",
            b"kong.service.statsd1.kong_latency:2|ms",
            b"kong.service.statsd1.request.count:1|c",
            b"kong.service.statsd1.kong_latency:7.5|ms",
        ]
        assert tcp.received.endswith(b"\n")
        assert tcp.connections == 1


async def test_tcp_connect_failure_is_retried(
    rt: relayq.Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    port = free_port()
    p = statsd_plugin(
        rt,
        {
            "host": "127.0.0.1",
            "port": port,
            "use_tcp": True,
            "queue": {"max_retry_time": 0.1, "initial_retry_delay": 0.02},
        },
    )
    p.log(ctx())
    assert await rt.drain(timeout=5)
    reason = f"failed to connect to 127.0.0.1:{port}: connection refused"
    lines_logged = messages(caplog)
    assert f"failed to create Statsd logger: {reason}" in lines_logged
    assert any(m.endswith(f"handler could not process entries: {reason}") for m in lines_logged)
    stats = rt.stats()["ws-id.sd"]
    assert stats.retries >= 1 and stats.dropped["retry_exhausted"] == 1


async def test_udp_send_errors_are_logged_not_retried(
    rt: relayq.Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="relayq.plugins")
    port = free_port()  # nothing listens: the kernel answers with port unreachable
    p = statsd_plugin(rt, {"host": "127.0.0.1", "port": port})
    p.log(ctx())
    assert await rt.drain(timeout=5)
    assert f"[statsd] failed to send data to 127.0.0.1:{port}: connection refused" in messages(
        caplog
    )
    stats = rt.stats()["ws-id.sd"]
    assert (stats.entries_sent, stats.failures, stats.retries) == (1, 0, 0)


# ---------------------------------------------------------------------------- the real daemon


@pytest.fixture(scope="module")
def daemon() -> Iterator[StatsdDaemon]:
    with StatsdDaemon() as running:
        yield running


async def test_statsd_daemon_aggregates_default_metrics_over_udp(
    rt: relayq.Runtime, daemon: StatsdDaemon
) -> None:
    daemon.reset()
    p = statsd_plugin(rt, {"host": "127.0.0.1", "port": daemon.udp_port, "prefix": "udp"})
    for latency in (10.0, 20.0, 30.0):
        p.log(ctx(request_latency=latency))
    p.log(ctx(status=500, consumer={"id": "c2", "custom_id": "alice"}))
    assert await rt.drain(timeout=5)
    daemon.wait_until(
        lambda d: (
            d.counters.get("udp.service.statsd1.request.count") == 4
            and len(d.timers.get("udp.service.statsd1.latency", [])) == 4
        )
    )
    assert daemon.counters["udp.service.statsd1.status.200"] == 3
    assert daemon.counters["udp.service.statsd1.status.500"] == 1
    assert daemon.counters["udp.service.statsd1.request.size"] == 480
    assert daemon.counters["udp.service.statsd1.user.robert.request.count"] == 3
    assert daemon.counters[f"udp.route.{ROUTE_ID}.user.alice.status.500"] == 1
    assert sorted(daemon.timers["udp.service.statsd1.latency"]) == [10, 18.5, 20, 30]
    assert daemon.sets["udp.service.statsd1.user.uniques"] == {"robert", "alice"}


async def test_statsd_daemon_over_tcp_with_tags(rt: relayq.Runtime, daemon: StatsdDaemon) -> None:
    daemon.reset()
    p = statsd_plugin(
        rt,
        {
            "host": "127.0.0.1",
            "port": daemon.tcp_port,
            "use_tcp": True,
            "prefix": "tcp",
            "tag_style": "dogstatsd",
        },
        pid="sd-tcp",
    )
    p.log(ctx())
    p.log(ctx())
    assert await rt.drain(timeout=5)
    key = "tcp.request.count;service=statsd1;route=r1;workspace=ws-id;consumer=robert;node="
    daemon.wait_until(lambda d: any(k.startswith(key) and v == 2 for k, v in d.counters.items()))
    assert all(packet.endswith("\n") for packet in daemon.packet_snapshot())


async def test_statsd_daemon_scales_counters_by_the_sample_rate(
    rt: relayq.Runtime, daemon: StatsdDaemon
) -> None:
    """Kong annotates ``|@rate`` without sampling client-side; a StatsD server scales by 1/rate,
    so every request counts 1/rate times (the caveat in Kong's docs, reproduced faithfully)."""
    daemon.reset()
    metric = [{"name": "request_count", "stat_type": "counter", "sample_rate": 0.5}]
    p = statsd_plugin(
        rt,
        {"host": "127.0.0.1", "port": daemon.udp_port, "prefix": "rate", "metrics": metric},
        pid="sd-rate",
    )
    for _ in range(3):
        p.log(ctx())
    assert await rt.drain(timeout=5)
    daemon.wait_until(lambda d: d.counters.get("rate.service.statsd1.request.count") == 6)
    assert daemon.packet_snapshot() == ["rate.service.statsd1.request.count:1|c|@0.5"] * 3
