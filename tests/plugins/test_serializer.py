"""Kong's log-serializer shape, redaction, custom values and hostile input."""

from __future__ import annotations

import json

import orjson
import pytest

from relayq.serializer import HeaderValue, RequestContext, parse_query, serialize


def full_context() -> RequestContext:
    return RequestContext(
        method="POST",
        scheme="https",
        host="api.example.com",
        port=8443,
        path="/orders/7",
        query_string="expand=items&expand=user&debug&q=a+b%2Fc&empty=",
        headers={
            "host": "api.example.com:8443",
            "authorization": "Bearer secret",
            "proxy-authorization": "Basic c2VjcmV0",
            "x-multi": ["1", "2"],
        },
        client_ip="10.0.0.7",
        request_id="req-123",
        request_size=512,
        tls={"version": "TLSv1.3", "cipher": "TLS_AES_128_GCM_SHA256", "client_verify": "NONE"},
        route={"id": "route-1", "name": "orders", "paths": ["/orders"]},
        service={"id": "svc-1", "name": "orders-svc", "host": "orders.internal"},
        consumer={"id": "cons-1", "username": "alice", "custom_id": "a-1"},
        credential={"id": "cred-1", "consumer": {"id": "cons-1"}},
        workspace_id="ws-uuid",
        workspace_name="team-a",
        upstream_uri="/7",
        upstream_status="502, 200",
        tries=[
            {"ip": "10.1.0.1", "port": 80, "state": "failed", "code": 502},
            {"ip": "10.1.0.2", "port": 80},
        ],
        status=201,
        response_headers={"content-type": "application/json", "set-cookie": ["a=1", "b=2"]},
        response_size=2048,
        started_at=1700000000.123,
        kong_latency=2.0,
        proxy_latency=30.0,
        receive_latency=1.0,
        request_latency=33.5,
        trace_id={"w3c": "4bf92f3577b34da6a3ce929d0e0e4736"},
    )


def test_full_shape() -> None:
    log = serialize(full_context())
    assert log == {
        "request": {
            "id": "req-123",
            "uri": "/orders/7?expand=items&expand=user&debug&q=a+b%2Fc&empty=",
            "url": "https://api.example.com:8443/orders/7?expand=items&expand=user&debug"
            "&q=a+b%2Fc&empty=",
            "querystring": {"expand": ["items", "user"], "debug": True, "q": "a b/c", "empty": ""},
            "method": "POST",
            "headers": {
                "host": "api.example.com:8443",
                "authorization": "REDACTED",
                "proxy-authorization": "REDACTED",
                "x-multi": ["1", "2"],
            },
            "size": 512,
            "tls": {
                "version": "TLSv1.3",
                "cipher": "TLS_AES_128_GCM_SHA256",
                "client_verify": "NONE",
            },
        },
        "upstream_uri": "/7?expand=items&expand=user&debug&q=a+b%2Fc&empty=",
        "upstream_status": "502, 200",
        "response": {
            "status": 201,
            "headers": {"content-type": "application/json", "set-cookie": ["a=1", "b=2"]},
            "size": 2048,
        },
        "latencies": {"kong": 2, "proxy": 30, "request": 33.5, "receive": 1},
        "tries": [
            {"ip": "10.1.0.1", "port": 80, "state": "failed", "code": 502},
            {"ip": "10.1.0.2", "port": 80},
        ],
        "authenticated_entity": {"id": "cred-1", "consumer_id": "cons-1"},
        "route": {"id": "route-1", "name": "orders", "paths": ["/orders"]},
        "service": {"id": "svc-1", "name": "orders-svc", "host": "orders.internal"},
        "consumer": {"id": "cons-1", "username": "alice", "custom_id": "a-1"},
        "client_ip": "10.0.0.7",
        "started_at": 1700000000123,
        "source": "upstream",
        "workspace": "ws-uuid",
        "workspace_name": "team-a",
        "trace_id": {"w3c": "4bf92f3577b34da6a3ce929d0e0e4736"},
    }


def test_minimal_request_omits_optional_parts() -> None:
    log = serialize(RequestContext(status=404, source="kong"))
    assert set(log) == {
        "request",
        "upstream_uri",
        "upstream_status",
        "response",
        "latencies",
        "client_ip",
        "started_at",
        "source",
        "workspace",
        "workspace_name",
    }
    assert log["request"]["url"] == "http://localhost:80/"
    assert log["request"]["querystring"] == {}
    assert "tls" not in log["request"]
    assert log["latencies"] == {"kong": 0, "proxy": -1, "request": 0, "receive": 0}
    assert log["source"] == "kong"
    assert orjson.dumps(log)  # JSON-encodable


def test_redaction_does_not_touch_the_context() -> None:
    ctx = full_context()
    serialize(ctx)
    assert ctx.headers["authorization"] == "Bearer secret"


def test_upstream_uri_keeps_its_own_query() -> None:
    ctx = RequestContext(query_string="a=1", upstream_uri="/x?b=2")
    assert serialize(ctx)["upstream_uri"] == "/x?b=2"
    assert serialize(RequestContext(query_string="a=1"))["upstream_uri"] == ""


def test_authenticated_entity_consumer_fallbacks() -> None:
    ctx = RequestContext(credential={"id": "c", "consumer_id": "direct"}, consumer={"id": "other"})
    assert serialize(ctx)["authenticated_entity"] == {"id": "c", "consumer_id": "direct"}
    ctx = RequestContext(credential={"id": "c"}, consumer={"id": "from-consumer"})
    assert serialize(ctx)["authenticated_entity"] == {"id": "c", "consumer_id": "from-consumer"}


class TestCustomValues:
    def test_dotted_keys_nest_and_escaped_dots_do_not(self) -> None:
        ctx = RequestContext(
            serialize_values={"meta.team": "a", "meta.region": "eu", r"dotted\.key": 1}
        )
        log = serialize(ctx)
        assert log["meta"] == {"team": "a", "region": "eu"}
        assert log["dotted.key"] == 1

    def test_none_deletes_and_values_override(self) -> None:
        ctx = RequestContext(serialize_values={"source": None, "client_ip": "hidden"})
        log = serialize(ctx)
        assert "source" not in log
        assert log["client_ip"] == "hidden"

    def test_nested_write_never_changes_shared_entities(self) -> None:
        route = {"id": "r", "tags": ["t"]}
        ctx = RequestContext(route=route, serialize_values={"route.extra": "x", "route.id": None})
        log = serialize(ctx)
        assert log["route"] == {"tags": ["t"], "extra": "x"}
        assert route == {"id": "r", "tags": ["t"]}

    def test_writing_through_a_scalar_replaces_it(self) -> None:
        log = serialize(RequestContext(serialize_values={"source.kind": "x"}))
        assert log["source"] == {"kind": "x"}


class TestQueryParsing:
    @pytest.mark.parametrize(
        ("query", "expected"),
        [
            ("", {}),
            ("a=1", {"a": "1"}),
            ("a=1&a=2&a=3", {"a": ["1", "2", "3"]}),
            ("flag", {"flag": True}),
            ("a=&b", {"a": "", "b": True}),
            ("x=%E2%9C%93+ok", {"x": "\u2713 ok"}),
            ("&&a=1&", {"a": "1"}),
            ("=novalue", {}),
            ("a=1=2", {"a": "1=2"}),
        ],
    )
    def test_kong_shapes(self, query: str, expected: dict[str, object]) -> None:
        assert parse_query(query) == expected

    def test_at_most_100_arguments(self) -> None:
        query = "&".join(f"k{i}=v" for i in range(150))
        assert len(parse_query(query)) == 100

    def test_invalid_percent_encoding_is_replaced(self) -> None:
        assert parse_query("bad=%ff%fe") == {"bad": "\ufffd\ufffd"}


class TestHostileInput:
    def test_surrogate_escaped_bytes_are_repaired(self) -> None:
        raw = "caf\u00e9".encode().decode("utf-8", "surrogateescape")
        undecodable = b"\xff\xfe".decode("utf-8", "surrogateescape")
        ctx = RequestContext(
            path="/p" + undecodable,
            headers={"x-name": raw, "x-bad": undecodable, "x-lone": "\ud800z"},
            response_headers={"x-list": [undecodable]},
        )
        log = serialize(ctx)
        assert log["request"]["headers"]["x-name"] == "caf\u00e9"
        assert log["request"]["headers"]["x-bad"] == "\ufffd\ufffd"
        assert log["request"]["headers"]["x-lone"] == "?z"
        assert log["response"]["headers"]["x-list"] == ["\ufffd\ufffd"]
        assert log["request"]["uri"] == "/p\ufffd\ufffd"
        decoded = json.loads(orjson.dumps(log))
        assert decoded["request"]["headers"]["x-name"] == "caf\u00e9"

    def test_only_the_first_100_headers_are_kept(self) -> None:
        headers: dict[str, HeaderValue] = {
            "authorization": "secret",
            **{f"x-h{i}": "v" for i in range(500)},
        }
        log = serialize(RequestContext(headers=headers, response_headers={"a": "1", **headers}))
        assert len(log["request"]["headers"]) == 100
        assert log["request"]["headers"]["authorization"] == "REDACTED"
        assert len(log["response"]["headers"]) == 100
        assert list(log["request"]["headers"])[:2] == ["authorization", "x-h0"]

    def test_huge_header_value_is_kept_intact(self) -> None:
        value = "x" * 1_000_000
        log = serialize(RequestContext(headers={"x-big": value}))
        assert log["request"]["headers"]["x-big"] == value
