"""Field tables of the entities relayq reads from a Kong declarative file (Kong 3.10 schemas).

Every field Kong's schema has is known, so a file exported by ``kong config db_export`` or
written for Kong loads unchanged; the few that relayq cannot honour (TLS client certificates,
stream routing) are rejected when set, with a message saying so, instead of being ignored.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

from relayq.gateway._fields import (
    INVALID,
    Checker,
    Field,
    any_record,
    array,
    boolean,
    integer,
    mapping,
    name,
    string,
    tags,
    timestamp,
    uuid_string,
)
from relayq.gateway._regex import compile_path_regex

SUPPORTED_PROTOCOLS = ("http", "https")
KONG_PROTOCOLS = ("grpc", "grpcs", "http", "https", "tcp", "tls", "tls_passthrough", "udp",
                  "ws", "wss")
DEFAULT_PLUGIN_PROTOCOLS = ["grpc", "grpcs", "http", "https"]
MAX_TIMEOUT = 2**31 - 2

_HOST_LABELS = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_\-]*[A-Za-z0-9_])?"
                          r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_\-]*[A-Za-z0-9_])?)*\.?")
_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_METHOD = re.compile(r"[A-Z]+")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+")


def _unsupported(what: str) -> Checker:
    """A Kong field relayq cannot honour: fine when empty, an error when set."""

    def check(value: Any, path: str, errors: list[str]) -> Any:
        if value in (None, [], {}, ""):
            return value
        errors.append(f"{path}: {what} is not supported by relayq")
        return INVALID

    return check


def _anything() -> Checker:
    def check(value: Any, path: str, errors: list[str]) -> Any:
        return value

    return check


def _protocol(*, supported: tuple[str, ...]) -> Checker:
    def check(value: Any, path: str, errors: list[str]) -> Any:
        if not isinstance(value, str):
            errors.append(f"{path}: expected a string")
            return INVALID
        if value in supported:
            return value
        if value in KONG_PROTOCOLS:
            errors.append(f"{path}: protocol '{value}' is not supported by relayq "
                          f"(supported: {', '.join(supported)})")
        else:
            errors.append(f"{path}: expected one of: {', '.join(KONG_PROTOCOLS)}")
        return INVALID

    return check


def valid_host(value: str) -> str | None:
    """Kong's ``typedefs.host``: a hostname or an IP address, without a port."""
    candidate = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        ipaddress.ip_address(candidate)
        return None
    except ValueError:
        pass
    if _HOST_LABELS.fullmatch(value) and len(value) <= 253:
        return None
    return f"invalid hostname: {value}"


def _route_host(value: str) -> str | None:
    """Kong's ``typedefs.wildcard_host``: a hostname, optionally ``:port``, with at most one
    ``*`` as the whole leftmost or rightmost label."""
    host, port = value, None
    if value.startswith("["):
        end = value.find("]")
        if end != -1 and value[end + 1:].startswith(":"):
            host, port = value[: end + 1], value[end + 2:]
    elif value.count(":") == 1:
        host, port = value.split(":")
    if port is not None and (not port.isdigit() or not 0 <= int(port) <= 65535):
        return f"invalid port number: {port}"
    stars = host.count("*")
    if stars > 1:
        return "invalid wildcard: must have at most one wildcard"
    if stars == 1:
        if not (host.startswith("*.") or host.endswith(".*")):
            return "invalid wildcard: must be placed at leftmost or rightmost label"
        host = host.replace("*", "wildcard")
    return valid_host(host)


def _service_path(value: str) -> str | None:
    if not value.startswith("/"):
        return "should start with: /"
    if "//" in value:
        return "must not have empty segments"
    if _PERCENT.search(value):
        return f"invalid url-encoded value: '{value}'"
    return None


def route_path(value: str) -> str | None:
    """A route path: a prefix starting with ``/`` or a regex starting with ``~/``."""
    if value.startswith("~"):
        if not value.startswith("~/"):
            return "regex path must start with ~/"
        try:
            compile_path_regex(value[1:])
        except re.error as exc:
            return f"invalid regex: '{value[1:]}' ({exc})"
        return None
    if not value.startswith("/"):
        return "must start with /"
    if _PERCENT.search(value):
        return f"invalid url-encoded value: '{value}'"
    return None


def _header_values() -> Checker:
    return array(string())


def _header_name(value: str) -> str | None:
    if not _HEADER_NAME.fullmatch(value):
        return f"bad header name '{value}'"
    if value.lower() == "host":
        return ("cannot contain 'host' header, which must be specified in the 'hosts' "
                "attribute")
    return None


def _url(value: str) -> str | None:
    try:
        parts = urlsplit(value)
    except ValueError as exc:  # e.g. "http://[host:80/": an unclosed IPv6 bracket
        return f"invalid url '{value}': {exc}"
    if parts.scheme not in SUPPORTED_PROTOCOLS:
        if parts.scheme in KONG_PROTOCOLS:
            return (f"protocol '{parts.scheme}' is not supported by relayq (supported: "
                    f"{', '.join(SUPPORTED_PROTOCOLS)})")
        return f"missing or invalid scheme in url '{value}' (expected http:// or https://)"
    if not parts.hostname:
        return f"missing host in url '{value}'"
    if parts.query or parts.fragment:
        return f"url '{value}' must not have a query string or fragment"
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        return f"invalid port in url '{value}'"
    return None


def _reference() -> Checker:
    """A foreign key in a top-level entity: a name or id, or ``{id: ...}`` / ``{name: ...}``."""

    def check(value: Any, path: str, errors: list[str]) -> Any:
        if isinstance(value, str) and value:
            return value
        if isinstance(value, dict) and len(value) == 1:
            key, inner = next(iter(value.items()))
            if key in ("id", "name", "username") and isinstance(inner, str) and inner:
                return inner
        errors.append(f"{path}: expected a name or id (or a record with an 'id')")
        return INVALID

    return check


def _common() -> dict[str, Field]:
    return {
        "id": Field(uuid_string()),
        "created_at": Field(timestamp()),
        "updated_at": Field(timestamp()),
        "tags": Field(tags()),
        "_comment": Field(string(allow_empty=True)),
        "_ignore": Field(array(_anything())),
    }


SERVICE_FIELDS: dict[str, Field] = {
    **_common(),
    "name": Field(name()),
    "url": Field(string(validate=_url)),
    "protocol": Field(_protocol(supported=SUPPORTED_PROTOCOLS)),
    "host": Field(string(validate=valid_host)),
    "port": Field(integer(minimum=0, maximum=65535)),
    "path": Field(string(validate=_service_path)),
    "retries": Field(integer(minimum=0, maximum=32767), default=5),
    "connect_timeout": Field(integer(minimum=1, maximum=MAX_TIMEOUT), default=60000),
    "write_timeout": Field(integer(minimum=1, maximum=MAX_TIMEOUT), default=60000),
    "read_timeout": Field(integer(minimum=1, maximum=MAX_TIMEOUT), default=60000),
    "enabled": Field(boolean(), default=True),
    "tls_verify": Field(boolean()),
    "tls_verify_depth": Field(integer(minimum=0, maximum=64)),
    "ca_certificates": Field(_unsupported("ca_certificates")),
    "client_certificate": Field(_unsupported("client_certificate")),
}

ROUTE_FIELDS: dict[str, Field] = {
    **_common(),
    "name": Field(name()),
    "protocols": Field(array(_protocol(supported=SUPPORTED_PROTOCOLS), unique=True),
                       default=["http", "https"]),
    "methods": Field(array(string(pattern=_METHOD.pattern,
                                  pattern_message="invalid value: expected an upper-case "
                                                  "HTTP method such as GET"), unique=True)),
    "hosts": Field(array(string(validate=_route_host), unique=True)),
    "paths": Field(array(string(validate=route_path), unique=True)),
    "headers": Field(mapping(_header_values(), key_checker=string(validate=_header_name))),
    "https_redirect_status_code": Field(integer(one_of=(426, 301, 302, 307, 308)),
                                        default=426),
    "regex_priority": Field(integer(), default=0),
    "strip_path": Field(boolean(), default=True),
    "path_handling": Field(string(one_of=("v0", "v1")), default="v0"),
    "preserve_host": Field(boolean(), default=False),
    "request_buffering": Field(boolean(), default=True),
    "response_buffering": Field(boolean(), default=True),
    "snis": Field(_unsupported("snis (TLS routing)")),
    "sources": Field(_unsupported("sources (stream routing)")),
    "destinations": Field(_unsupported("destinations (stream routing)")),
    "expression": Field(_unsupported("expression (the expressions router)")),
    "priority": Field(_unsupported("priority (the expressions router)")),
}
TOP_ROUTE_FIELDS = {**ROUTE_FIELDS, "service": Field(_reference())}

CONSUMER_FIELDS: dict[str, Field] = {
    **_common(),
    "username": Field(string()),
    "custom_id": Field(string()),
}

CREDENTIAL_FIELDS: dict[str, Field] = {
    **_common(),
    "key": Field(string()),
    "ttl": Field(_unsupported("ttl")),
}
TOP_CREDENTIAL_FIELDS = {**CREDENTIAL_FIELDS, "consumer": Field(_reference(), required=True)}

PLUGIN_FIELDS: dict[str, Field] = {
    **_common(),
    "name": Field(string(), required=True),
    "instance_name": Field(name()),
    "config": Field(any_record(), default={}),
    "enabled": Field(boolean(), default=True),
    "protocols": Field(array(string(one_of=KONG_PROTOCOLS), unique=True),
                       default=DEFAULT_PLUGIN_PROTOCOLS),
    "consumer_group": Field(_unsupported("consumer_group")),
    "ordering": Field(_unsupported("ordering (dynamic plugin ordering)")),
}
TOP_PLUGIN_FIELDS = {
    **PLUGIN_FIELDS,
    "service": Field(_reference()),
    "route": Field(_reference()),
    "consumer": Field(_reference()),
}

TOP_LEVEL_FIELDS: dict[str, Field] = {
    "_format_version": Field(string(one_of=("1.1", "2.1", "3.0")), required=True),
    "_transform": Field(boolean(), default=True),
    "_comment": Field(string(allow_empty=True)),
    "_ignore": Field(array(_anything())),
}
TOP_LEVEL_ENTITIES = ("services", "routes", "consumers", "plugins", "keyauth_credentials")

# Entities of Kong's declarative format relayq does not implement; named in the error message.
KONG_ONLY_ENTITIES = frozenset({
    "upstreams", "targets", "certificates", "ca_certificates", "snis", "vaults",
    "consumer_groups", "basicauth_credentials", "hmacauth_credentials", "jwt_secrets",
    "oauth2_credentials", "acls", "keys", "key_sets", "filter_chains", "workspaces",
    "parameters", "clustering_data_planes", "_workspace",
})
