"""The Zipkin log phase builds the Zipkin v2 dicts directly; what it enqueues must stay exactly
what the span-object implementation produced (``ZipkinSpan`` tags/annotations, then
``to_zipkin`` per span).

Two checks, both over requests drawn by :func:`make_case` (incoming B3/W3C/Jaeger contexts,
tag headers, static tags, both phase-duration flavours, failed balancer tries, consumers and
credentials, IPv6 peers, missing or odd timestamps, no service/route, log-only hosts...):

* ``zipkin_reference_spans.json`` holds the JSON the span-object implementation enqueued for
  seeded cases; it was generated (``python tests/plugins/test_zipkin_fast.py``) at the commit
  that added this module, before the log phase changed. The current implementation must
  produce the same bytes. Changing :func:`make_case` means regenerating the file from that
  implementation (run the module in a ``git worktree`` of that commit).
* Hypothesis draws further cases and compares against :func:`reference_log`, a verbatim copy of
  that implementation's ``log`` and ``to_zipkin``.

Span ids and sampling come from ``random`` and "now" from ``time.time_ns``; both runs of a case
seed the one and pin the other, so the ids and timestamps agree.
"""

from __future__ import annotations

import copy
import random
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relayq.plugins._propagation import node_id
from relayq.plugins.zipkin import ZipkinPlugin, ZipkinRequest, ZipkinSpan, send_spans, tag_text
from relayq.plugins.zipkin._plugin import _ms_between, _us
from relayq.serializer import RequestContext

FIXTURE = Path(__file__).with_name("zipkin_reference_spans.json")
FIXTURE_SEEDS = range(160)

NS = 1_700_000_000_000_000_000  # epoch nanoseconds
NOW_NS = NS + 97_654_321  # what time.time_ns() returns while a case runs
TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER = "b7ad6b7169203331"
GRANDPARENT = "00f067aa0ba902b7"

_NUMBER = (int, float)


class Recorder:
    """A runtime stand-in that keeps what the plugin enqueues."""

    def __init__(self) -> None:
        self.entries: list[Any] = []

    def enqueue(self, conf: Any, handler: Any, handler_conf: Any, value: Any) -> bool:
        assert handler is send_spans
        self.entries.append(value)
        return True


# ------------------------------------------------------------------------------ cases


def _maybe(rng: random.Random, value: Any, p: float = 0.5) -> Any:
    return value if rng.random() < p else None


def _config(rng: random.Random) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "http_endpoint": rng.choice(["http://127.0.0.1:9/api/v2/spans"] * 9 + [None]),
        "sample_ratio": rng.choice([1, 1, 1, 0]),
        "phase_duration_flavor": rng.choice(["annotations", "tags"]),
        "include_credential": rng.random() < 0.6,
        "default_service_name": rng.choice([None, None, "fallback-svc"]),
        "local_service_name": rng.choice(["kong", "edge-gw"]),
        "http_span_name": rng.choice(["method", "method_path"]),
        "traceid_byte_count": rng.choice([8, 16]),
        "http_response_header_for_traceid": rng.choice([None, "x-trace-id"]),
        "tags_header": rng.choice(["Zipkin-Tags", "X-Span-Tags"]),
    }
    static = rng.choice([
        None,
        [{"name": "env", "value": "prod"}],
        [{"name": "env", "value": "prod"}, {"name": "http.host", "value": "pinned"},
         {"name": "kong.service_name", "value": "static-svc"}],
        [{"name": "http.protocol", "value": "h9"},
         {"name": "kong.rewrite.duration_ms", "value": "7"},
         {"name": "kong.access.duration_ms", "value": "8"}],
    ])
    if static is not None:
        conf["static_tags"] = static
    if rng.random() < 0.2:
        conf["propagation"] = {
            "extract": ["w3c", "b3", "jaeger"],
            "inject": ["preserve", "w3c"],
            "default_format": "w3c",
        }
    return conf


def _headers(rng: random.Random, tags_header: str) -> dict[str, Any]:
    headers: dict[str, Any] = {"host": "api.example.com"}
    kind = rng.choice(["none", "b3", "b3-64", "b3-single", "w3c", "jaeger", "b3-unsampled"])
    if kind == "b3":
        headers.update({"x-b3-traceid": TRACE, "x-b3-spanid": CALLER, "x-b3-sampled": "1"})
        if rng.random() < 0.5:
            headers["x-b3-parentspanid"] = GRANDPARENT
    elif kind == "b3-64":
        headers.update({"x-b3-traceid": TRACE[16:], "x-b3-spanid": CALLER})
    elif kind == "b3-unsampled":
        headers.update({"x-b3-traceid": TRACE, "x-b3-spanid": CALLER, "x-b3-sampled": "0"})
    elif kind == "b3-single":
        headers["b3"] = f"{TRACE}-{CALLER}-{rng.choice(['1', 'd'])}-{GRANDPARENT}"
    elif kind == "w3c":
        headers["traceparent"] = f"00-{TRACE}-{CALLER}-{rng.choice(['01', '01', '00'])}"
    elif kind == "jaeger":
        headers["uber-trace-id"] = f"{TRACE}:{CALLER}:0:1"
    tags = rng.choice([
        None,
        "team=payments; tier = gold",
        "a=1;;bad item;b= two words ;http.status_code=999",
        ["x=1", "lc=override"],
        "kong.node.id=mine;kong.consumer=me;peer.hostname=p",
        "",
    ])
    if tags is not None:
        headers[tags_header.lower()] = tags
    return headers


def _tries(rng: random.Random) -> list[Any]:
    tries: list[Any] = []
    for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
        attempt: dict[str, Any] = {}
        ip = rng.choice(["10.0.0.1", "fd00::2", None, "missing"])
        if ip != "missing":
            attempt["ip"] = ip
        port = rng.choice([8080, 0, None, "missing"])
        if port != "missing":
            attempt["port"] = port
        hostname = rng.choice(["up.internal", None, "missing"])
        if hostname != "missing":
            attempt["hostname"] = hostname
        start = rng.choice(["ns", "ms", "ms-float", "none", "bad"])
        if start == "ns":
            attempt["balancer_start_ns"] = NS + rng.randrange(40_000_000)
        elif start == "ms":
            attempt["balancer_start"] = NS // 1_000_000 + rng.randrange(40)
        elif start == "ms-float":
            attempt["balancer_start"] = NS / 1_000_000 + rng.random() * 40
        elif start == "bad":
            attempt["balancer_start"] = "soon"
        latency = rng.choice(["ns", "ms", "ms-float", "none", "zero"])
        if latency == "ns":
            attempt["balancer_latency_ns"] = rng.randrange(5_000_000)
        elif latency == "ms":
            attempt["balancer_latency"] = rng.randrange(5)
        elif latency == "ms-float":
            attempt["balancer_latency"] = rng.random() * 5
        elif latency == "zero":
            attempt["balancer_latency_ns"] = 0
        state = rng.choice(["failed", "next", None, "missing", 3])
        if state != "missing":
            attempt["state"] = state
        code = rng.choice([502, 504, None, "missing", 0])
        if code != "missing":
            attempt["code"] = code
        tries.append(attempt)
    if tries and rng.random() < 0.1:
        tries.insert(0, "not a try")
    return tries


def _timestamps(rng: random.Random) -> dict[str, Any]:
    offsets = {
        "request_start": 0,
        "access_start": 1_234_567,
        "access_end": 2_500_000,
        "upstream_start": 3_000_000,
        "response_start": 40_000_000,
        "response_end": 45_678_901,
    }
    choice = rng.choice(["all", "all", "some", "none", "odd"])
    if choice == "none":
        return {}
    ts: dict[str, Any] = {}
    for key, offset in offsets.items():
        if choice == "some" and rng.random() < 0.4:
            continue
        ts[key] = NS + offset
    if choice == "odd":
        ts[rng.choice(list(offsets))] = rng.choice([0, 999, float(NS + 5_500_000), True])
    return ts


def make_case(rng: random.Random) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A plugin config, ``RequestContext`` keyword arguments and which phases run."""
    conf = _config(rng)
    entity = rng.choice
    ctx: dict[str, Any] = {
        "method": rng.choice(["GET", "POST", "DELETE"]),
        "host": rng.choice(["api.example.com", ""]),
        "path": rng.choice(["/orders/7", "/", ""]),
        "http_version": rng.choice(["1.1", "2", ""]),
        "headers": _headers(rng, conf["tags_header"]),
        "client_ip": rng.choice(["198.51.100.7", "2001:db8::7", ""]),
        "client_port": rng.choice([50123, 0]),
        "service": entity([
            None, {"id": "svc-1", "name": "orders"}, {"id": "svc-1"}, {"name": "orders"},
            {"id": "svc-1", "name": ""}, {"id": 42, "name": 7}, {"id": ""},
        ]),
        "route": entity([
            None, {"id": "route-1", "name": "orders-route"}, {"id": "route-1"},
            {"name": "orders-route"}, {"id": "", "name": ""}, {},
        ]),
        "consumer": entity([None, {"id": "consumer-1"}, {"username": "bob"}, {"id": ""}]),
        "credential": entity([None, {"id": "cred-1"}, {"id": 0}]),
        "status": rng.choice([200, 503, 0]),
        "tries": _tries(rng),
        "timestamps": _timestamps(rng),
        "started_at": 1_700_000_000.0 + rng.random(),
        "workspace_id": rng.choice(["", "ws-1"]),
    }
    if rng.random() < 0.05:
        ctx["method"] = None
    if rng.random() < 0.05:
        ctx["host"] = None
    phases = rng.choice(["all", "all", "all", "access", "header_filter", "log"])
    return conf, ctx, phases


def _tamper(ctx: RequestContext, plugin_id: str, how: int) -> None:
    """Give the in-flight spans what no phase gives them before ``log`` (tags on the proxy
    span, service names on the span objects, odd tag values), to reach the general paths."""
    state = ctx.plugin_data.get(plugin_id)
    if not isinstance(state, ZipkinRequest):
        return
    request, proxy = state.request_span, state.proxy_span
    request.tags.update({"n": 2**60, "f": 1.5, "b": False, "blank": "", "http.status_code": 1})
    if how % 2:
        request.service_name = "request-svc"
        request.annotations.append({"value": "early", "timestamp": 1})
    if proxy is not None:
        proxy.tags.update(
            {"peer.hostname": ["", "pre-host"][how % 2], "kong.service": "pre",
             "kong.route_name": "", "x": 0.25}
        )
        proxy.service_name = ["proxy-svc", "fallback-svc", ""][how % 3]
        proxy.ip, proxy.port = "fd00::9", 9999


def run_case(
    case: tuple[dict[str, Any], dict[str, Any], str],
    seed: int,
    *,
    reference: bool = False,
    tamper: int | None = None,
) -> list[Any]:
    """Run one case (fresh plugin and context) and return what the log phase enqueued."""
    conf, ctx_kwargs, phases = case
    recorder = Recorder()
    plugin = ZipkinPlugin(copy.deepcopy(conf), plugin_id="zipkin-fast", runtime=recorder)
    ctx = RequestContext(**copy.deepcopy(ctx_kwargs))
    random.seed(seed)
    with mock.patch("time.time_ns", return_value=NOW_NS):
        if phases in ("all", "access"):
            plugin.access(ctx)
        if phases in ("all", "header_filter"):
            plugin.header_filter(ctx)
        if tamper is not None:
            _tamper(ctx, plugin.id, tamper)
        if reference:
            recorder.entries.extend(reference_log(plugin, ctx))
        else:
            plugin.log(ctx)
    return recorder.entries


# ------------------------------------------------------------- the previous implementation


def reference_to_zipkin(
    span: ZipkinSpan, local_service_name: str, default_service_name: str | None
) -> dict[str, Any]:
    """``ZipkinSpan.to_zipkin`` as it was."""
    service_name = span.service_name or default_service_name
    remote: dict[str, Any] | None = None
    if span.port or service_name:
        remote = {}
        if service_name:
            remote["serviceName"] = service_name
        if span.port:
            remote["port"] = span.port
        if span.ip:
            remote["ipv6" if ":" in span.ip else "ipv4"] = span.ip
    out: dict[str, Any] = {"traceId": span.trace_id.hex(), "name": span.name}
    if span.parent_id is not None:
        out["parentId"] = span.parent_id.hex()
    out["id"] = span.span_id.hex()
    out["kind"] = span.kind
    out["timestamp"] = span.timestamp
    out["duration"] = span.duration if span.duration is not None else 1
    out["localEndpoint"] = {"serviceName": local_service_name}
    out["remoteEndpoint"] = remote
    tags: dict[str, str] = {}
    for key, value in span.tags.items():
        text = value if type(value) is str else tag_text(value)
        if text:
            tags[key] = text
    if tags:
        out["tags"] = tags
    if span.annotations:
        out["annotations"] = list(span.annotations)
    return out


def _reference_service_and_route_tags(ctx: RequestContext) -> tuple[dict[str, Any], str | None]:
    tags: dict[str, Any] = {}
    service_name = None
    service = ctx.service
    if service and service.get("id"):
        tags["kong.service"] = service["id"]
        name = service.get("name")
        if isinstance(name, str):
            service_name = name
            tags["kong.service_name"] = name
    route = ctx.route
    if route:
        if route.get("id"):
            tags["kong.route"] = route["id"]
        name = route.get("name")
        if isinstance(name, str):
            tags["kong.route_name"] = name
    return tags, service_name


def _reference_tag_service_and_route(
    span: ZipkinSpan, tags: dict[str, Any], service_name: str | None
) -> None:
    if service_name is not None:
        span.service_name = service_name
    span.tags.update(tags)


def _reference_proxy_span(state: ZipkinRequest, timestamp: int) -> ZipkinSpan:
    if state.proxy_span is None:
        request = state.request_span
        state.proxy_span = request.child("CLIENT", f"{request.name} (proxy)", timestamp)
    return state.proxy_span


def reference_log(plugin: ZipkinPlugin, ctx: RequestContext) -> list[dict[str, Any]]:
    """``ZipkinPlugin.log`` as it was, returning the dicts it enqueued."""
    import time

    now = time.time_ns() // 1000
    state = ctx.plugin_data.get(plugin.id)
    if not isinstance(state, ZipkinRequest):
        state = plugin._initialize(ctx, None)
    request = state.request_span
    if not (request.should_sample and plugin.export.endpoint):
        return []
    proxy = _reference_proxy_span(state, now)
    ts = ctx.timestamps
    proxy_finish = _us(ts.get("response_end")) or now
    conf = plugin.config

    if conf["phase_duration_flavor"] == "annotations":
        request.annotate("krs", request.timestamp)
        access_start = _us(ts.get("access_start"))
        if access_start is not None:
            request.annotate("krf", access_start)
        proxy.annotate("kas", access_start or proxy.timestamp)
        proxy.annotate("kaf", _us(ts.get("access_end")) or proxy_finish)
        if not state.header_filter_finished:
            proxy.annotate("khf", now)
            state.header_filter_finished = True
        proxy.annotate("kbf", proxy_finish)
    else:
        request.set_tag(
            "kong.rewrite.duration_ms", _ms_between(ts, "request_start", "access_start")
        )
        proxy.set_tag("kong.access.duration_ms", _ms_between(ts, "access_start", "access_end"))

    spans: list[ZipkinSpan] = []
    service_tags, service_name = _reference_service_and_route_tags(ctx)
    tries = [t for t in ctx.tries if type(t) is dict or isinstance(t, Mapping)]
    for index, attempt in enumerate(tries, start=1):
        start = _us(attempt.get("balancer_start_ns"))
        if start is None:
            start_ms = attempt.get("balancer_start")
            start = int(start_ms * 1000) if isinstance(start_ms, _NUMBER) else proxy.timestamp
        span = request.child("CLIENT", f"{request.name} (balancer try {index})", start)
        span.ip = attempt.get("ip")
        span.port = attempt.get("port")
        span.set_tag("kong.balancer.try", index)
        if index < len(tries):
            span.set_tag("error", True)
            span.set_tag("kong.balancer.state", attempt.get("state"))
            span.set_tag("http.status_code", attempt.get("code"))
        _reference_tag_service_and_route(span, service_tags, service_name)
        latency_us = _us(attempt.get("balancer_latency_ns"))
        if latency_us is None:
            latency = attempt.get("balancer_latency")
            latency_us = int(latency * 1000) if isinstance(latency, _NUMBER) else 0
        span.finish(start + latency_us)
        spans.append(span)
    if tries:
        last = tries[-1]
        proxy.set_tag("peer.hostname", last.get("hostname"))
        proxy.ip = last.get("ip")
        proxy.port = last.get("port")

    if ctx.status:
        request.set_tag("http.status_code", ctx.status)
    if ctx.consumer and ctx.consumer.get("id"):
        request.set_tag("kong.consumer", ctx.consumer["id"])
    if conf["include_credential"] and ctx.credential and ctx.credential.get("id"):
        request.set_tag("kong.credential", ctx.credential["id"])
    request.set_tag("kong.node.id", node_id())
    _reference_tag_service_and_route(proxy, service_tags, service_name)

    proxy.finish(proxy_finish)
    request.finish(now)
    spans.append(proxy)
    spans.append(request)
    local, default = conf["local_service_name"], conf["default_service_name"]
    return [reference_to_zipkin(span, local, default) for span in spans]


# ------------------------------------------------------------------------------- tests


def _fixture_cases() -> list[dict[str, Any]]:
    """What the log phase enqueues for each fixture seed, with the node id made neutral (it is
    random per process)."""
    cases = []
    for seed in FIXTURE_SEEDS:
        entries = run_case(make_case(random.Random(seed)), seed)
        text = orjson.dumps(entries).decode().replace(node_id(), "<node-id>")
        cases.append({"seed": seed, "json": text})
    return cases


def test_fixture_cases_cover_the_interesting_shapes():
    spans = [
        span
        for case in orjson.loads(FIXTURE.read_bytes())["cases"]
        for span in orjson.loads(case["json"])
    ]
    names = {span["name"] for span in spans}
    assert any("(balancer try 3)" in name for name in names)
    assert any(span.get("tags", {}).get("error") == "true" for span in spans)
    assert any("parentId" not in span for span in spans)
    assert any("tags" not in span for span in spans)
    assert any(span["remoteEndpoint"] is None for span in spans)
    assert any("ipv6" in (span["remoteEndpoint"] or {}) for span in spans)
    assert any("kong.rewrite.duration_ms" in span.get("tags", {}) for span in spans)
    assert any(len(span["traceId"]) == 16 for span in spans)
    assert sum(1 for case in orjson.loads(FIXTURE.read_bytes())["cases"] if case["json"] == "[]")


def test_log_phase_matches_the_fixture_of_the_previous_implementation():
    expected = orjson.loads(FIXTURE.read_bytes())["cases"]
    assert [case["seed"] for case in expected] == list(FIXTURE_SEEDS)
    for want, got in zip(expected, _fixture_cases(), strict=True):
        assert got["json"] == want["json"], f"seed {want['seed']}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rng=st.randoms(use_true_random=False),
    seed=st.integers(0, 2**32),
    tamper=st.none() | st.integers(0, 5),
)
def test_log_phase_matches_the_reference_implementation(
    rng: random.Random, seed: int, tamper: int | None
):
    case = make_case(rng)
    got = run_case(case, seed, tamper=tamper)
    want = run_case(case, seed, reference=True, tamper=tamper)
    assert orjson.dumps(got) == orjson.dumps(want)
    assert all(type(entry) is dict for entry in got)


@pytest.mark.parametrize("run_header_filter", [False, True])
def test_log_finishes_the_header_filter_and_the_proxy_span(run_header_filter: bool):
    """As before, the log phase creates a missing proxy span and marks the header filter
    finished (its ``khf`` annotation is added once)."""
    conf = {"http_endpoint": "http://127.0.0.1:9/api/v2/spans", "sample_ratio": 1}
    recorder = Recorder()
    plugin = ZipkinPlugin(conf, plugin_id="zipkin-fast", runtime=recorder)
    ctx = RequestContext(timestamps={"request_start": NS, "response_end": NS + 9_000_000})
    if run_header_filter:
        plugin.header_filter(ctx)
    plugin.log(ctx)
    state = ctx.plugin_data["zipkin-fast"]
    assert isinstance(state, ZipkinRequest)
    assert state.proxy_span is not None and state.header_filter_finished
    request, proxy = recorder.entries[-1], recorder.entries[-2]
    assert proxy["id"] == state.proxy_span.span_id.hex()
    assert request["id"] == state.request_span.span_id.hex()
    values = [annotation["value"] for annotation in proxy["annotations"]]
    assert values.count("khf") == 1


if __name__ == "__main__":  # regenerate the fixture (from the implementation to compare with)
    FIXTURE.write_text(
        orjson.dumps({"cases": _fixture_cases()}, option=orjson.OPT_INDENT_2).decode() + "\n"
    )
    print(f"wrote {len(FIXTURE_SEEDS)} cases to {FIXTURE}", file=sys.stderr)
