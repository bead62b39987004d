"""Route selection with Kong's precedence, path normalisation and upstream path building."""

from __future__ import annotations

from typing import Any

import pytest

from relayq.gateway import Router, parse_config
from relayq.gateway._paths import normalize, upstream_path


def router(*routes: dict[str, Any], service: dict[str, Any] | None = None) -> Router:
    svc = {"name": "svc", "host": "example.com", **(service or {})}
    config = parse_config({"_format_version": "3.0",
                           "services": [{**svc, "routes": list(routes)}]})
    return Router(config.routes, config.services)


def pick(r: Router, path: str, *, method: str = "GET", host: str = "example.com",
         headers: dict[str, Any] | None = None) -> str | None:
    found = r.match(method, path, host, headers or {})
    return found.route.name if found else None


def test_longest_prefix_wins() -> None:
    r = router({"name": "short", "paths": ["/a"]}, {"name": "long", "paths": ["/a/b"]})
    assert pick(r, "/a/b/c") == "long"
    assert pick(r, "/a/x") == "short"
    assert pick(r, "/ab") == "short"  # Kong prefixes are plain string prefixes
    assert pick(r, "/b") is None


def test_regex_beats_prefix_and_regex_priority_orders_regexes() -> None:
    r = router(
        {"name": "prefix", "paths": ["/users/admin"]},
        {"name": "regex-low", "paths": [r"~/users/\w+$"], "regex_priority": 1},
        {"name": "regex-high", "paths": [r"~/users/(?<id>\d+)$"], "regex_priority": 5},
    )
    assert pick(r, "/users/admin") == "regex-low"  # a regex outranks any prefix
    assert pick(r, "/users/42") == "regex-high"
    assert pick(r, "/users/admin/x") == "prefix"  # regexes are anchored at the start only
    found = r.match("GET", "/users/42", "example.com")
    assert found is not None and found.captures == {"id": "42"}


def test_more_matching_fields_win() -> None:
    r = router(
        {"name": "path-only", "paths": ["/api/v1/long/prefix"]},
        {"name": "path-and-method", "paths": ["/api"], "methods": ["POST"]},
        {"name": "path-host-method", "paths": ["/"], "methods": ["POST"],
         "hosts": ["api.example.com"]},
    )
    assert pick(r, "/api/v1/long/prefix", method="POST", host="api.example.com") == \
        "path-host-method"
    assert pick(r, "/api/v1/long/prefix", method="POST") == "path-and-method"
    assert pick(r, "/api/v1/long/prefix") == "path-only"


def test_plain_hosts_beat_wildcards_and_wildcards_match_both_ends() -> None:
    r = router(
        {"name": "wild-suffix", "hosts": ["*.example.com"]},
        {"name": "wild-prefix", "hosts": ["api.*"]},
        {"name": "plain", "hosts": ["api.example.com"]},
    )
    assert pick(r, "/", host="api.example.com") == "plain"
    assert pick(r, "/", host="www.example.com") == "wild-suffix"
    assert pick(r, "/", host="a.b.example.com") == "wild-suffix"
    assert pick(r, "/", host="api.example.org") == "wild-prefix"
    assert pick(r, "/", host="example.com") is None
    assert pick(r, "/", host="API.Example.COM:8000") == "plain"  # case and port ignored


def test_host_with_port_requires_that_port() -> None:
    r = router({"name": "on-8000", "hosts": ["example.com:8000"]},
               {"name": "any-port", "hosts": ["example.com"], "paths": ["/"]})
    assert pick(r, "/", host="example.com:8000") == "any-port"  # two fields beat one
    r = router({"name": "on-8000", "hosts": ["example.com:8000"]})
    assert pick(r, "/", host="example.com:8000") == "on-8000"
    assert pick(r, "/", host="example.com:9000") is None


def test_methods_and_headers() -> None:
    r = router(
        {"name": "v2", "paths": ["/"], "headers": {"x-version": ["2", "~*^beta"]}},
        {"name": "delete", "paths": ["/"], "methods": ["DELETE"]},
        {"name": "default", "paths": ["/"]},
    )
    assert pick(r, "/", headers={"x-version": "2"}) == "v2"
    assert pick(r, "/", headers={"x-version": "BETA-7"}) == "v2"
    assert pick(r, "/", headers={"x-version": ["1", "2"]}) == "v2"
    assert pick(r, "/", headers={"x-version": "1"}) == "default"
    assert pick(r, "/", method="DELETE") == "delete"


def test_routes_with_several_paths_compete_path_by_path() -> None:
    r = router({"name": "multi", "paths": ["/a", "/b/c/d"]}, {"name": "mid", "paths": ["/b/c"]})
    assert pick(r, "/b/c/d/e") == "multi"
    assert pick(r, "/b/c/x") == "mid"


def test_ties_keep_declaration_order_and_disabled_services_are_skipped() -> None:
    r = router({"name": "first", "paths": ["/x"]}, {"name": "second", "paths": ["/x"]})
    assert pick(r, "/x") == "first"
    r = router({"name": "r", "paths": ["/x"]}, service={"enabled": False})
    assert pick(r, "/x") is None


def test_request_path_is_normalised_before_matching() -> None:
    r = router({"name": "r", "paths": ["/api/users"]})
    assert pick(r, "/api/%75sers") == "r"  # %75 is "u", an unreserved character
    assert pick(r, "/other/../api/users") == "r"
    assert pick(r, "/api//users") == "r"
    assert pick(r, "/api%2Fusers") is None  # an encoded "/" stays encoded


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/", "/"),
        ("/a/./b", "/a/b"),
        ("/a/b/../c", "/a/c"),
        ("/a/b/..", "/a/"),
        ("/../a", "/a"),
        ("/a%2fb", "/a%2Fb"),
        ("/%7Euser", "/~user"),
        ("//a///b", "/a/b"),
    ],
)
def test_normalize(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


# Kong's documented strip_path / service path combinations (get_upstream_uri_v0).
@pytest.mark.parametrize(
    ("service_path", "route_path", "strip", "req_path", "upstream"),
    [
        (None, "/foo", True, "/foo/bar", "/bar"),
        (None, "/foo", True, "/foo", "/"),
        (None, "/foo", False, "/foo/bar", "/foo/bar"),
        ("/svc", "/foo", True, "/foo/bar", "/svc/bar"),
        ("/svc", "/foo", True, "/foo", "/svc"),
        ("/svc", "/foo", True, "/foo/", "/svc/"),
        ("/svc/", "/foo", True, "/foo", "/svc"),
        ("/svc/", "/foo", True, "/foo/", "/svc/"),
        ("/svc/", "/foo", True, "/foo/bar", "/svc/bar"),
        ("/svc", "/foo", False, "/foo/bar", "/svc/foo/bar"),
        ("/svc/", "/foo", False, "/foo/bar", "/svc/foo/bar"),
        ("/svc", "/foo/", True, "/foo/bar", "/svc/bar"),
        ("/svc", "/", False, "/", "/svc"),
    ],
)
def test_upstream_path_v0(service_path: str | None, route_path: str, strip: bool,
                          req_path: str, upstream: str) -> None:
    assert upstream_path(req_path, route_path, strip, service_path) == upstream


def test_regex_strip_removes_the_matched_text() -> None:
    r = router({"name": "r", "paths": [r"~/v\d+"]}, service={"path": "/base"})
    found = r.match("GET", "/v12/items", "example.com")
    assert found is not None
    assert found.matched_path == "/v12" and found.upstream_path == "/base/items"
