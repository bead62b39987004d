"""The statsd and datadog batch encoders (``batch_lines``: per-shape templates, one encode per
batch) send exactly the bytes of the encoders they replaced, kept frozen in
``_reference_statsd`` / ``_reference_datadog``: the same lines in the same order, the same
datagrams when packed, the same exceptions, for any config and any batch (hypothesis explores
metric sets, stat types, sample rates, identifiers, tag styles, prefixes and odd values and
identifiers: non-ASCII, lone surrogates, ``%``, NUL, newlines, numbers, booleans)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayq.plugins import datadog, statsd
from relayq.plugins.datadog import _encode as datadog_encode
from relayq.plugins.datadog import _handler as datadog_handler
from relayq.plugins.statsd import _encode as statsd_encode
from relayq.plugins.statsd import _handler as statsd_handler
from relayq.plugins.statsd._schema import METRIC_NAMES as STATSD_METRICS
from relayq.plugins.statsd._schema import STAT_TYPES as STATSD_TYPES
from relayq.plugins.statsd._schema import TAG_STYLES
from tests.plugins import _reference_datadog as ref_datadog
from tests.plugins import _reference_statsd as ref_statsd

numbers = st.one_of(
    st.none(),
    st.integers(min_value=-(10**16), max_value=10**16),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([-1, -1.0, 0, 1, 0.5, 12.0, 1e14, 1e14 - 1, 10**14, -0.0, 0.123, 1.234, 1.5,
                     1e300, 10**400, True, False, "12", 2**53 + 1]),
)
common_numbers = st.sampled_from([40, 200, 0.123, 1.5, 12.0, -1, -1.0, None, 7, 3.25e-7, 1 / 3,
                                  123456.78901234567, 2 / 3 * 1000, 99999999999999, 0, 1])
odd_texts = st.sampled_from(["", "a.b", "svc", "ws-1", "alice", "x-y-z", "ünï.cødé", "%s%%",
                             "a\x00b", "\x000\x00", "new\nline", "sur\ud800rogate", "日本.語",
                             "c-1-2", "a|b:c#d"])
plain_texts = st.sampled_from(["", "svc", "a.b", "ws-1", "alice", "ünï.cødé", "%s%%", "c-1-2",
                               "sur\ud800rogate", "日本.語"])
# mostly strings, as in a serialized request (other identifiers are never templated)
identifiers = st.integers(0, 19).flatmap(lambda n: (
    st.sampled_from([0, 1, 12, 1.5, True, False]) if n == 0 else odd_texts if n < 3
    else st.none() if n < 6 else plain_texts))


@st.composite
def entity(draw: st.DrawFn, keys: tuple[str, ...]) -> Any:
    if draw(st.integers(0, 5)) == 0:
        return draw(st.sampled_from([None, {}]))
    return {key: draw(identifiers) for key in keys if draw(st.integers(0, 6))}


@st.composite
def message_pools(draw: st.DrawFn) -> Callable[[st.DrawFn], dict[str, Any]]:
    """A few services, routes, consumers, statuses and workspaces, so that batches repeat
    request shapes (what the templates are for) and still mix in others."""
    services = draw(st.lists(entity(("id", "name", "host")), min_size=1, max_size=3))
    routes = draw(st.lists(entity(("id", "name")), min_size=1, max_size=3))
    consumers = draw(st.lists(entity(("id", "custom_id", "username")), min_size=1, max_size=3))
    statuses = draw(st.lists(st.one_of(st.integers(100, 599), st.sampled_from(
        [None, 200, 200.0, True, False, 0, 1, 10**15, "200"])), min_size=1, max_size=3))
    workspaces = draw(st.lists(identifiers, min_size=1, max_size=2))
    # per value, a few candidates (so that shapes repeat), now and then anything at all
    candidates = [draw(st.lists(common_numbers, min_size=1, max_size=3)) for _ in range(5)]

    def message(draw: st.DrawFn) -> dict[str, Any]:
        request_size, response_size, kong, proxy, request = (
            draw(numbers) if draw(st.integers(0, 9)) == 0 else draw(st.sampled_from(values))
            for values in candidates)
        response: Any = {"status": draw(st.sampled_from(statuses)), "size": response_size}
        if draw(st.integers(0, 12)) == 0:
            response = draw(st.sampled_from([None, {}, {"size": 5}]))
        return {
            "request": {"size": request_size},
            "response": response,
            "latencies": {"kong": kong, "proxy": proxy, "request": request, "receive": 0.01},
            "service": draw(st.sampled_from(services)),
            "route": draw(st.sampled_from(routes)),
            "consumer": draw(st.sampled_from(consumers)),
            "workspace": draw(st.sampled_from(workspaces)),
            "workspace_name": draw(st.sampled_from(workspaces)),
        }

    return message


@st.composite
def batches(draw: st.DrawFn) -> list[dict[str, Any]]:
    message = draw(message_pools())
    return [message(draw) for _ in range(draw(st.integers(0, 40)))]


def outcome(encode: Callable[..., list[Any]], *args: Any) -> Any:
    """The lines, or the type of the exception the encoder raised."""
    try:
        return encode(*args)
    except Exception as exc:  # the old encoders raise on some odd values: so must the new
        return type(exc)


statsd_metrics = st.fixed_dictionaries(
    {
        "name": st.sampled_from(STATSD_METRICS),
        "stat_type": st.sampled_from(STATSD_TYPES),
        "sample_rate": st.sampled_from([None, 1, 0.25, 2, 1e-20, 0.1]),
    },
    optional={
        "consumer_identifier": st.sampled_from(["consumer_id", "custom_id", "username"]),
        "service_identifier": st.sampled_from(
            ["service_id", "service_name", "service_host", "service_name_or_host"]),
        "workspace_identifier": st.sampled_from(["workspace_id", "workspace_name"]),
    },
)


@st.composite
def statsd_configs(draw: st.DrawFn) -> dict[str, Any]:
    config: dict[str, Any] = {
        "prefix": draw(st.sampled_from(["kong", "a.b", "pré%fix"])),
        "hostname_in_prefix": draw(st.booleans()),
        "tag_style": draw(st.sampled_from([None, None, *TAG_STYLES])),
        "consumer_identifier_default": draw(
            st.sampled_from(["consumer_id", "custom_id", "username"])),
        "service_identifier_default": draw(st.sampled_from(
            ["service_id", "service_name", "service_host", "service_name_or_host"])),
        "workspace_identifier_default": draw(st.sampled_from(["workspace_id", "workspace_name"])),
    }
    if draw(st.booleans()):
        metrics = draw(st.lists(statsd_metrics, max_size=14))
        for metric in metrics:  # counters and gauges need a sample rate (schema rule)
            if metric["stat_type"] in ("counter", "gauge") and metric["sample_rate"] is None:
                metric["sample_rate"] = 1
        config["metrics"] = metrics
    return statsd.SCHEMA.validate(config)


def check_statsd(config: Mapping[str, Any], hostname: str,
                 batch_list: list[list[dict[str, Any]]]) -> None:
    new = statsd.Settings.from_config(config, hostname=hostname)
    old = ref_statsd.Settings.from_config(config, hostname=hostname)
    for batch in batch_list:  # one Settings throughout: templates carry over between batches
        expected = outcome(ref_statsd.batch_lines, old, batch)
        assert outcome(statsd_encode.batch_lines, new, batch) == expected
        if isinstance(expected, list):
            for size in (0, 1, 40, 100, 1400):
                assert statsd.pack_datagrams(expected, size) == ref_statsd.pack_datagrams(
                    expected, size)
        for message in batch:
            assert outcome(statsd.metric_lines, new, message) == outcome(
                ref_statsd.metric_lines, old, message)


@settings(max_examples=400, deadline=None)
@given(config=statsd_configs(), hostname=st.sampled_from(["node.example", "", "h-ö"]),
       batch_list=st.lists(batches(), min_size=1, max_size=3))
def test_statsd_batches_match_the_old_encoder(
        config: dict[str, Any], hostname: str, batch_list: list[list[dict[str, Any]]]) -> None:
    check_statsd(config, hostname, batch_list)


datadog_metrics = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["kong_latency", "latency", "request_count", "request_size",
                                 "response_size", "upstream_latency"]),
        "stat_type": st.sampled_from(["counter", "gauge", "histogram", "meter", "set", "timer",
                                      "distribution"]),
        "sample_rate": st.sampled_from([None, 1, 0.5]),
        "tags": st.one_of(st.none(), st.lists(st.sampled_from(["app:kong", "env", "a:b", "%d",
                                                               "ü:1"]), max_size=3)),
        "consumer_identifier": st.sampled_from([None, "consumer_id", "custom_id", "username"]),
    },
)


@st.composite
def datadog_configs(draw: st.DrawFn) -> dict[str, Any]:
    config: dict[str, Any] = {"prefix": draw(st.sampled_from(["kong", "a.b", "%x"]))}
    tags = draw(st.sampled_from([("name", "status", "consumer"), ("svc", "code", "user")]))
    config.update(service_name_tag=tags[0], status_tag=tags[1], consumer_tag=tags[2])
    if draw(st.booleans()):
        metrics = draw(st.lists(datadog_metrics, max_size=8))
        for metric in metrics:
            if metric["stat_type"] in ("counter", "gauge") and metric["sample_rate"] is None:
                metric["sample_rate"] = 1
        config["metrics"] = metrics
    return datadog.SCHEMA.validate(config)


@settings(max_examples=300, deadline=None)
@given(config=datadog_configs(), batch_list=st.lists(batches(), min_size=1, max_size=3))
def test_datadog_batches_match_the_old_encoder(
        config: dict[str, Any], batch_list: list[list[dict[str, Any]]]) -> None:
    new = datadog.Settings.from_config(config)
    old = ref_datadog.Settings.from_config(config)
    for batch in batch_list:
        assert outcome(datadog_encode.batch_lines, new, batch) == outcome(
            ref_datadog.batch_lines, old, batch)


def gateway_message(i: int, **changes: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "request": {"size": 40 + i % 3},
        "response": {"status": 200 if i % 5 else 404, "size": 200},
        "latencies": {"kong": 0.123 * i, "proxy": 1.234 if i % 7 else -1, "request": 1.5 + i,
                      "receive": 0.01},
        "service": {"id": "s-1", "name": "bench", "host": "127.0.0.1"},
        "route": {"id": "r-1", "name": "bench"},
        "consumer": {"id": "c-1", "username": "alice", "custom_id": "alice-1"} if i % 2 else None,
        "workspace": "ws-1",
        "workspace_name": "default",
    }
    message.update(changes)
    return message


ODD_VALUES = [math.nan, -math.nan, math.inf, -math.inf, 10**14, 10**400, True, "7", -0.0, 1e-300]


@pytest.mark.parametrize("odd", ODD_VALUES, ids=repr)
@pytest.mark.parametrize("tag_style", [None, *TAG_STYLES])
def test_a_templated_shape_meets_odd_values(odd: Any, tag_style: str | None) -> None:
    """A shape whose template is built (by its second request) still gives the old lines when a
    later request of it carries a value a template cannot print."""
    config = statsd.SCHEMA.validate({"tag_style": tag_style})
    batch = [gateway_message(i) for i in range(6)]
    for field in ("kong", "request", "proxy"):
        batch.append(gateway_message(2, latencies={**batch[2]["latencies"], field: odd}))
        batch.extend(gateway_message(i) for i in range(3))
    check_statsd(config, "node", [batch, batch[::-1]])
    dd_config = datadog.SCHEMA.validate({})
    new, old = datadog.Settings.from_config(dd_config), ref_datadog.Settings.from_config(dd_config)
    assert outcome(datadog_encode.batch_lines, new, batch) == outcome(
        ref_datadog.batch_lines, old, batch)


def test_many_shapes_restart_the_template_cache() -> None:
    config = statsd.SCHEMA.validate({})
    new = statsd.Settings.from_config(config, hostname="n")
    old = ref_statsd.Settings.from_config(config, hostname="n")
    for start in range(0, 2 * statsd_encode.TEMPLATE_LIMIT, 50):  # 50 new shapes a batch
        batch = [gateway_message(i, consumer={"custom_id": f"user-{start + i % 50}"})
                 for i in range(150)]
        assert statsd_encode.batch_lines(new, batch) == ref_statsd.batch_lines(old, batch)
        assert len(new._templates) <= statsd_encode.TEMPLATE_LIMIT
    assert any(type(t) is statsd_encode._Template for t in new._templates.values())


def test_a_batch_of_mostly_new_shapes_goes_line_by_line() -> None:
    config = statsd.SCHEMA.validate({})
    new = statsd.Settings.from_config(config, hostname="n")
    old = ref_statsd.Settings.from_config(config, hostname="n")
    batch = [gateway_message(i, consumer={"custom_id": f"user-{i}"}) for i in range(500)]
    batch += [gateway_message(1)] * 20
    assert statsd_encode.batch_lines(new, batch) == ref_statsd.batch_lines(old, batch)
    # it gave up after NEW_SHAPES_TRIED new shapes: the rest were not even looked up
    assert len(new._templates) == statsd_encode.NEW_SHAPES_TRIED
    assert statsd_encode.batch_lines(new, batch) == ref_statsd.batch_lines(old, batch)


def test_value_fields_are_what_the_metrics_read() -> None:
    """Templates put a slot where each of VALUE_FIELDS goes: every metric value must be one."""
    fields = dict.fromkeys(statsd_encode.VALUE_FIELDS)
    for name, (_, read) in statsd_encode.SIMPLE_METRICS.items():
        marker = object()
        readers = [(section, key) for section, key in fields
                   if read({section: {key: marker}}) is marker]
        assert len(readers) == 1 or (name == "request_count" and read({}) == 1), name


class Captured:
    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []

    async def open_udp(self, host: str, port: int) -> Any:
        class Sock:
            def close(self) -> None:
                pass
        return Sock()

    async def send_datagrams(self, sock: Any, datagrams: list[bytes], **kwargs: Any) -> int:
        self.sent.append(list(datagrams))
        return len(datagrams)


@pytest.mark.parametrize("packet_size", [0, 60, 1400])
async def test_handlers_send_the_old_datagrams(
        monkeypatch: pytest.MonkeyPatch, packet_size: int) -> None:
    captured = Captured()
    for module in (statsd_handler, datadog_handler):
        monkeypatch.setattr(module._udp, "open_udp", captured.open_udp)
        monkeypatch.setattr(module._udp, "send_datagrams", captured.send_datagrams)
    batch = [gateway_message(i) for i in range(40)]
    config = statsd.SCHEMA.validate({"udp_packet_size": packet_size})
    conf = statsd.Settings.from_config(config, hostname="n")
    delivery = statsd.Delivery(host="127.0.0.1", port=1, use_tcp=False,
                               udp_packet_size=packet_size, settings=conf)
    assert await statsd.send_entries(delivery, batch) is True
    old = ref_statsd.Settings.from_config(config, hostname="n")
    assert captured.sent == [ref_statsd.pack_datagrams(ref_statsd.batch_lines(old, batch),
                                                       packet_size)]
    dd_config = datadog.SCHEMA.validate({})
    dd_delivery = datadog.Delivery(host="127.0.0.1", port=1,
                                   settings=datadog.Settings.from_config(dd_config))
    assert await datadog.send_entries(dd_delivery, batch) is True
    assert captured.sent[1] == ref_datadog.batch_lines(
        ref_datadog.Settings.from_config(dd_config), batch)


def variants() -> list[dict[str, Any]]:
    """Requests that differ from ``gateway_message(1, ...)`` in one thing its lines may read."""
    base = gateway_message(1, response={"status": 1, "size": 200})
    out: list[dict[str, Any]] = []
    for entity, keys in (("service", ("id", "name", "host")), ("route", ("id", "name")),
                         ("consumer", ("id", "custom_id", "username"))):
        out += [{**base, entity: None}, {**base, entity: {}}]
        out += [{**base, entity: {**base[entity], key: "other.one"}} for key in keys]
        out += [{**base, entity: {**base[entity], key: None}} for key in keys]
    out += [{**base, field: value} for field in ("workspace", "workspace_name")
            for value in ("other", "", None)]
    out += [{**base, "response": {**base["response"], "status": status}}
            for status in (True, 1.0, None, 2)]
    for section, key in statsd_encode.VALUE_FIELDS:
        out += [{**base, section: {**base[section], key: value}}
                for value in (-1, -1.0, None, True, 7, 7.5, 1e20)]
    return [base, *out]


@pytest.mark.parametrize("tag_style", [None, *TAG_STYLES])
def test_every_field_a_line_reads_keeps_its_own_template(tag_style: str | None) -> None:
    """A request differing from an already templated shape in any one field gets its own lines:
    each such pair, for every identifier kind."""
    cases = variants()
    base = cases[0]
    for consumer in ("consumer_id", "custom_id", "username"):
        for service in ("service_id", "service_name", "service_host", "service_name_or_host"):
            for workspace in ("workspace_id", "workspace_name"):
                config = statsd.SCHEMA.validate({
                    "tag_style": tag_style, "consumer_identifier_default": consumer,
                    "service_identifier_default": service,
                    "workspace_identifier_default": workspace})
                new = statsd.Settings.from_config(config, hostname="n")
                old = ref_statsd.Settings.from_config(config, hostname="n")
                for variant in cases:
                    batch = [base, base, variant, base, variant, variant, base, variant]
                    assert outcome(statsd_encode.batch_lines, new, batch) == outcome(
                        ref_statsd.batch_lines, old, batch)
                assert any(type(t) is statsd_encode._Template for t in new._templates.values())
    for consumer_tag in ("consumer_id", "custom_id", "username", None):
        config = datadog.SCHEMA.validate({"metrics": [
            {**metric, "consumer_identifier": consumer_tag}
            for metric in datadog.SCHEMA.validate({})["metrics"]]})
        dd_new = datadog.Settings.from_config(config)
        dd_old = ref_datadog.Settings.from_config(config)
        for variant in cases:
            batch = [base, base, variant, base, variant, variant, base, variant]
            assert outcome(datadog_encode.batch_lines, dd_new, batch) == outcome(
                ref_datadog.batch_lines, dd_old, batch)
