"""The declarative loader: Kong's format, every error at once with its path, Kong's ids."""

from __future__ import annotations

import json
import string
import uuid
from importlib import resources
from pathlib import Path

import pytest

from relayq.gateway import DeclarativeError, load_config, parse_config, parse_config_text

DATA = Path(__file__).parent / "data"
KONG_NS = uuid.UUID("fd02801f-0957-4a15-a55a-c8d9606f30b5")


def kong_id(entity: str, key: str) -> str:
    return str(uuid.uuid5(uuid.uuid5(KONG_NS, entity), key))


def errors_of(text: str) -> list[str]:
    with pytest.raises(DeclarativeError) as info:
        parse_config_text(text)
    return info.value.errors


def test_realistic_kong_yml_loads_unchanged() -> None:
    config = load_config(DATA / "kong.yml")
    assert [s.name for s in config.services] == ["orders", "billing"]
    orders, billing = config.services
    assert (orders.protocol, orders.host, orders.port, orders.path) == (
        "http", "orders.internal", 8080, "/v1")
    assert (billing.protocol, billing.host, billing.port, billing.path) == (
        "https", "billing.internal", 8443, "/api")
    assert billing.write_timeout == 30000 and billing.read_timeout == 60000
    routes = {r.name: r for r in config.routes}
    assert set(routes) == {"orders-api", "billing-read", "billing-admin"}
    assert routes["billing-admin"].service_id == billing.id
    assert routes["orders-api"].paths[1] == r"~/orders/(?<order_id>\d+)/items$"
    assert routes["orders-api"].headers == {"x-api-version": ("2", "3")}
    names = sorted((p.name, p.location) for p in config.plugins)
    assert names == [
        ("datadog", "plugins[1]"),
        ("http-log", "consumers[1].plugins[0]"),
        ("http-log", "services[0].plugins[0]"),
        ("key-auth", "services[0].routes[0].plugins[0]"),
        ("opentelemetry", "plugins[2]"),
        ("statsd", "plugins[0]"),
        ("zipkin", "plugins[3]"),
    ]
    zipkin = next(p for p in config.plugins if p.name == "zipkin")
    assert zipkin.service_id == orders.id and zipkin.config["sample_ratio"] == 0.25
    http_log = next(p for p in config.plugins if p.location == "services[0].plugins[0]")
    assert http_log.config["queue"]["max_batch_size"] == 100
    assert {c.key for c in config.credentials} == {"mobile-secret", "partner-secret"}


def test_ids_are_derived_as_kong_derives_them() -> None:
    config = load_config(DATA / "kong.yml")
    orders = config.services[0]
    assert orders.id == kong_id("services", "orders")
    route = next(r for r in config.routes if r.name == "orders-api")
    assert route.id == kong_id("routes", "orders-api")
    assert config.consumers[0].id == kong_id("consumers", "mobile-app")
    assert config.credentials[0].id == kong_id("keyauth_credentials", "mobile-secret")
    audit = next(p for p in config.plugins if p.instance_name == "orders-audit")
    assert audit.id == kong_id("plugins", "orders-audit")  # instance_name is the endpoint key
    key_auth = next(p for p in config.plugins if p.name == "key-auth")
    assert key_auth.id == kong_id("plugins", f"plugins:key-auth:{route.id}::")
    statsd = next(p for p in config.plugins if p.name == "statsd")
    assert statsd.id == kong_id("plugins", "plugins:statsd:::")
    again = load_config(DATA / "kong.yml")
    assert [p.id for p in again.plugins] == [p.id for p in config.plugins]


def test_given_ids_are_kept_and_entity_dicts_look_like_kongs() -> None:
    sid = "9f1a1c1e-0000-4000-8000-000000000001"
    config = parse_config({
        "_format_version": "3.0",
        "services": [{"id": sid, "name": "s", "host": "example.com",
                      "routes": [{"name": "r", "paths": ["/"]}]}],
    })
    service, route = config.services[0], config.routes[0]
    assert service.id == sid and route.service_id == sid
    assert route.entity["service"] == {"id": sid}
    assert route.entity["protocols"] == ["http", "https"]
    assert route.entity["strip_path"] is True and route.entity["hosts"] is None
    assert service.entity["port"] == 80 and service.entity["retries"] == 5


def test_every_error_is_reported_at_once_with_its_path() -> None:
    errors = errors_of("""
_format_version: "3.0"
services:
- name: orders
  url: http://127.0.0.1:9000
  colour: blue
  routes:
  - name: ok
    paths: [/fine]
  - name: bad
    paths: [orders, "~/broken(", /ok]
    methods: [get]
  plugins:
  - name: no-such-plugin
  - name: http-log
    config:
      http_endpoint: not a url
      queue: {max_batch_size: 0}
consumers:
- tags: [anonymous]
""")
    assert "services[0].colour: unknown field" in errors
    assert "services[0].routes[1].paths[0]: must start with /" in errors
    assert any(e.startswith("services[0].routes[1].paths[1]: invalid regex") for e in errors)
    assert any(e.startswith("services[0].routes[1].methods[0]:") for e in errors)
    assert any(e.startswith("services[0].plugins[0].name: plugin 'no-such-plugin' is not "
                            "supported") for e in errors)
    assert any(e.startswith("services[0].plugins[1].config.http_endpoint:") for e in errors)
    assert ("services[0].plugins[1].config.queue.max_batch_size: value should be between 1 "
            "and 1000000") in errors
    assert ("consumers[0]: at least one of these fields must be non-empty: 'custom_id', "
            "'username'") in errors
    # A route whose only matching field was invalid is not reported a second time.
    assert not any("must set one of" in e for e in errors)
    assert len(errors) == 8, errors


def test_unknown_top_level_keys_and_kong_only_entities() -> None:
    errors = errors_of("""
_format_version: "3.0"
upstreams: [{name: u}]
colour: blue
""")
    assert "colour: unknown field" in errors
    assert any(e.startswith("upstreams: not supported by relayq") for e in errors)


def test_missing_and_unsupported_format_version() -> None:
    assert errors_of("services: []") == ["_format_version: required field missing"]
    assert errors_of('_format_version: "4.0"') == [
        "_format_version: expected one of: 1.1, 2.1, 3.0"]


def test_references_are_resolved_by_name_or_id_and_reported_when_missing() -> None:
    errors = errors_of("""
_format_version: "3.0"
services: [{name: s, host: example.com}]
routes:
- {name: r1, service: s, paths: [/a]}
- {name: r2, service: nope, paths: [/b]}
plugins:
- {name: key-auth, route: missing-route}
keyauth_credentials:
- {consumer: ghost, key: k}
""")
    assert "routes[1].service: invalid reference 'service: nope' (no such entry in " \
           "'services')" in errors
    assert "plugins[0].route: invalid reference 'route: missing-route' (no such entry in " \
           "'routes')" in errors
    assert "keyauth_credentials[0].consumer: invalid reference 'consumer: ghost' (no such " \
           "entry in 'consumers')" in errors


def test_uniqueness_violations() -> None:
    errors = errors_of("""
_format_version: "3.0"
services:
- {name: s, host: a.example.com}
- {name: s, host: b.example.com}
consumers:
- {username: u, keyauth_credentials: [{key: k}]}
- {username: v, keyauth_credentials: [{key: k}]}
plugins:
- {name: key-auth}
- {name: key-auth}
""")
    assert "services[1].name: uniqueness violation: 'services' entity with name set to 's' " \
           "already declared" in errors
    assert any(e.startswith("consumers[1].keyauth_credentials[0].key: uniqueness violation")
               and "'k'" not in e for e in errors)  # the key itself is not echoed
    assert any(e.startswith("plugins[1]: uniqueness violation") for e in errors)


def test_service_target_forms_and_conflicts() -> None:
    errors = errors_of("""
_format_version: "3.0"
services:
- {name: a, url: "http://x.example.com/p", host: y.example.com}
- {name: b}
- {name: c, url: "grpc://x.example.com"}
- {name: d, host: "bad host!"}
- {name: e, protocol: tcp, host: x.example.com}
""")
    assert "services[0].url: cannot be combined with host; use one or the other" in errors
    assert "services[1].host: required field missing" in errors
    assert any(e.startswith("services[2].url: protocol 'grpc' is not supported") for e in errors)
    assert "services[3].host: invalid hostname: bad host!" in errors
    assert any(e.startswith("services[4].protocol: protocol 'tcp' is not supported")
               for e in errors)


def test_route_field_rules() -> None:
    errors = errors_of("""
_format_version: "3.0"
services:
- name: s
  host: example.com
  routes:
  - {name: r0}
  - {name: r1, hosts: ["*.a.*"], paths: [/x]}
  - {name: r2, hosts: ["a.*.com"], paths: [/x]}
  - {name: r3, headers: {host: [a]}, paths: [/x]}
  - {name: r4, paths: [/x], snis: [a.example.com]}
  - {name: r5, paths: [/x], https_redirect_status_code: 303}
  - {name: r6, paths: [/x], service: s}
""")
    assert ("services[0].routes[0]: must set one of 'methods', 'hosts', 'headers', 'paths' "
            "when 'protocols' is 'http'") in errors
    assert "services[0].routes[1].hosts[0]: invalid wildcard: must have at most one wildcard" \
        in errors
    assert ("services[0].routes[2].hosts[0]: invalid wildcard: must be placed at leftmost or "
            "rightmost label") in errors
    assert any(e.startswith("services[0].routes[3].headers.host: cannot contain 'host'")
               for e in errors)
    assert "services[0].routes[4].snis: snis (TLS routing) is not supported by relayq" in errors
    assert any(e.startswith("services[0].routes[5].https_redirect_status_code:") for e in errors)
    assert "services[0].routes[6].service: unknown field" in errors


def test_key_auth_scope_and_anonymous_are_checked() -> None:
    errors = errors_of("""
_format_version: "3.0"
consumers:
- username: u
  plugins:
  - {name: key-auth}
plugins:
- {name: key-auth, config: {anonymous: nobody, key_names: ["bad name"], realm: 3}}
""")
    assert any(e.startswith("consumers[0].plugins[0]: the key-auth plugin cannot be applied "
                            "to a consumer") for e in errors)
    assert "plugins[0].config.key_names.0: bad header name 'bad name'" in errors
    assert "plugins[0].config.realm: expected a string" in errors


def test_format_2_1_regex_paths_gain_their_tilde() -> None:
    config = parse_config_text(r"""
_format_version: "2.1"
services:
- name: s
  host: example.com
  routes:
  - name: r
    paths: [/plain/path, /users/\d+]
""")
    assert config.routes[0].paths == ("/plain/path", r"~/users/\d+")
    assert config.format_version == "3.0"


def test_yaml_syntax_errors_name_line_and_column() -> None:
    errors = errors_of('_format_version: "3.0"\nservices:\n  - name: [unclosed\n')
    assert len(errors) == 1 and errors[0].startswith("line ")


def test_json_files_load(tmp_path: Path) -> None:
    path = tmp_path / "kong.json"
    path.write_text(json.dumps({
        "_format_version": "3.0",
        "services": [{"name": "s", "url": "http://example.com",
                      "routes": [{"name": "r", "paths": ["/"]}]}],
    }))
    assert load_config(path).routes[0].name == "r"
    path.write_text("{not json")
    with pytest.raises(DeclarativeError) as info:
        load_config(path)
    assert info.value.errors[0].startswith("line 1, column 2:")


def test_missing_file_is_a_declarative_error(tmp_path: Path) -> None:
    with pytest.raises(DeclarativeError) as info:
        load_config(tmp_path / "absent.yml")
    assert "cannot read" in info.value.errors[0]


def test_shipped_examples_load() -> None:
    config = load_config(DATA.parents[2] / "examples" / "kong.yml")
    assert {p.name for p in config.plugins} == {
        "key-auth", "http-log", "statsd", "datadog", "opentelemetry", "zipkin"}
    template = resources.files("relayq.gateway").joinpath("example.yml").read_text("utf-8")
    builtin = parse_config_text(string.Template(template).substitute(
        UPSTREAM_URL="http://127.0.0.1:1", RECEIVER_URL="http://127.0.0.1:2",
        STATSD_PORT=3, DATADOG_PORT=4))
    assert len(builtin.plugins) == 6 and builtin.credentials[0].key == "demo-key"


def test_text_that_is_not_utf8_is_an_error_not_a_crash() -> None:
    # Found by the fuzzer: a lone surrogate (a JSON "\udcff" escape) in a name crashed the
    # loader while it derived ids.
    from relayq.gateway import DeclarativeError, parse_config

    doc = {"_format_version": "3.0",
           "services": [{"name": "orders\udcff", "url": "http://orders.internal"}],
           "consumers": [{"username": "\udcff"}]}
    with pytest.raises(DeclarativeError) as err:
        parse_config(doc)
    assert "services[0].name: invalid utf-8 sequence" in err.value.errors
    assert "consumers[0].username: invalid utf-8 sequence" in err.value.errors
