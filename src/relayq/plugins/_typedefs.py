"""Field definitions shared by several plugin schemas (Kong's ``kong.db.schema.typedefs``).

Host, port, URL and header fields validate the way Kong's typedefs do, with Kong's messages;
header values additionally reject CR, LF and NUL so a configured value cannot inject headers.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from typing import Any

from relayq.plugins._schema import NO_DEFAULT, Field

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})*\.?$"
)
_HEADER_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def _validate_host(value: str) -> str | None:
    candidate = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        ipaddress.ip_address(candidate)
        return None
    except ValueError:
        pass
    if ":" in value:
        head, _, tail = value.rpartition(":")
        if tail.isdigit() and (_HOSTNAME.match(head) or head.startswith("[")):
            return "must not have a port"
    if _HOSTNAME.match(value) is None:
        return f"invalid value: {value}"
    return None


def host(default: Any = NO_DEFAULT, *, required: bool = False) -> Field:
    """A host name or IP address without a port (Kong's ``typedefs.host``)."""
    return Field(type="string", default=default, required=required, check=_validate_host)


def port(default: Any = NO_DEFAULT, *, required: bool = False) -> Field:
    """A TCP/UDP port number (Kong's ``typedefs.port``)."""
    return Field(type="integer", default=default, required=required, between=(0, 65535))


def url(*, required: bool = False, schemes: tuple[str, ...] = ("http", "https")) -> Field:
    """An absolute URL with a host (Kong's ``typedefs.url``), limited to ``schemes``."""

    def validate(value: str) -> str | None:
        try:
            parsed = urllib.parse.urlsplit(value)
            parsed.port  # noqa: B018 -- raises ValueError on a bad port
        except ValueError as exc:
            return f"could not parse url. {exc}"
        if not parsed.scheme:
            return "missing scheme in url"
        if not parsed.hostname:
            return "missing host in url"
        if parsed.scheme.lower() not in schemes:
            allowed = ", ".join(schemes)
            return f"unsupported scheme in url: {parsed.scheme} (expected one of: {allowed})"
        return None

    return Field(type="string", required=required, check=validate)


def _validate_header_name(value: str) -> str | None:
    if _HEADER_NAME.match(value) is None:
        return f"bad header name '{value}', allowed characters are A-Z, a-z, 0-9, '_', and '-'"
    return None


def header_name(*, match_none: tuple[tuple[str, str], ...] = ()) -> Field:
    """An HTTP header name (Kong's ``typedefs.header_name``)."""
    return Field(type="string", check=_validate_header_name, match_none=match_none)


def _validate_header_value(value: str) -> str | None:
    if "\r" in value or "\n" in value or "\0" in value:
        return "header value must not contain CR, LF or NUL characters"
    return None


def header_value() -> Field:
    """An HTTP header value; CR, LF and NUL are rejected so a value cannot smuggle headers."""
    return Field(type="string", len_min=0, check=_validate_header_value)
