"""Kong's ``key-auth`` plugin: identifies the consumer so consumer fields in logs are real.

It runs in the access phase at Kong's priority 1250, before the queue plugins read the
consumer. A key is looked up in the request headers, then the query string (then, if asked, a
form or JSON body) under each of ``key_names``; the credential's consumer becomes the request's
consumer and is announced upstream with Kong's ``X-Consumer-*`` headers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

from relayq.gateway._entities import Consumer, KeyAuthCredential
from relayq.gateway._exits import UNEXPECTED, Exit
from relayq.plugins import PluginConfigError
from relayq.serializer import HeaderValue

NAME = "key-auth"
PRIORITY = 1250

NO_KEY = "No API key found in request"
INVALID_CREDENTIALS = "Invalid authentication credentials"
DUPLICATE_KEY = "Duplicate API key found"

CONSUMER_HEADERS = (
    "x-consumer-id",
    "x-consumer-custom-id",
    "x-consumer-username",
    "x-credential-identifier",
    "x-anonymous-consumer",
)

_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+")

_DEFAULTS: dict[str, Any] = {
    "key_names": ["apikey"],
    "hide_credentials": False,
    "anonymous": None,
    "key_in_header": True,
    "key_in_query": True,
    "key_in_body": False,
    "run_on_preflight": True,
    "realm": None,
}


def validate_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Return key-auth's config with Kong's defaults, or raise ``PluginConfigError``."""
    errors: dict[str, str] = {}
    out = dict(_DEFAULTS)
    for key, value in config.items():
        if key not in _DEFAULTS:
            errors[key] = "unknown field"
            continue
        if value is None:
            continue
        if key == "key_names":
            if not isinstance(value, list) or not value:
                errors[key] = "expected a non-empty array of header names"
                continue
            for i, item in enumerate(value):
                if not isinstance(item, str) or not _HEADER_NAME.fullmatch(item):
                    errors[f"{key}.{i}"] = f"bad header name {item!r}"
            out[key] = list(value)
        elif key in ("anonymous", "realm"):
            if not isinstance(value, str) or not value:
                errors[key] = "expected a string"
                continue
            out[key] = value
        elif not isinstance(value, bool):
            errors[key] = "expected a boolean"
        else:
            out[key] = value
    if errors:
        raise PluginConfigError(NAME, errors)
    return out


@dataclass
class UpstreamEdits:
    """Changes access-phase plugins make to the request before it is proxied."""

    set_headers: dict[str, str] = field(default_factory=dict)
    remove_headers: set[str] = field(default_factory=set)
    query: list[tuple[str, str]] | None = None  # replacement query, when changed
    body: bytes | None = None  # replacement body, when changed


@dataclass(frozen=True)
class Identity:
    """Who key-auth found: the consumer, and the credential unless anonymous."""

    consumer: Consumer
    credential: KeyAuthCredential | None


@dataclass(frozen=True)
class Credentials:
    """The consumers and key-auth credentials of one config, indexed for lookups."""

    by_key: Mapping[str, tuple[KeyAuthCredential, Consumer]]
    consumers: Mapping[str, Consumer]  # by id and by username

    @classmethod
    def build(cls, consumers: Sequence[Consumer],
              credentials: Sequence[KeyAuthCredential]) -> Credentials:
        by_id = {c.id: c for c in consumers}
        index: dict[str, Consumer] = dict(by_id)
        for c in consumers:
            if c.username:
                index.setdefault(c.username, c)
        by_key = {cred.key: (cred, by_id[cred.consumer_id]) for cred in credentials
                  if cred.consumer_id in by_id}
        return cls(by_key=by_key, consumers=index)


@dataclass
class AuthRequest:
    """What key-auth reads from a request; ``body`` only when ``key_in_body`` needs it."""

    method: str
    headers: Mapping[str, HeaderValue]
    query: list[tuple[str, str]]
    content_type: str = ""
    body: bytes | None = None


class KeyAuth:
    """One configured key-auth plugin instance."""

    name = NAME
    priority = PRIORITY

    def __init__(self, plugin_id: str, config: Mapping[str, Any], credentials: Credentials):
        self.id = plugin_id
        self.config = dict(config)
        self.credentials = credentials
        self.needs_body = bool(config["key_in_body"])

    def authenticate(self, req: AuthRequest, edits: UpstreamEdits) -> Identity | Exit | None:
        """Kong's ``KeyAuthHandler:access``: an identity, an error response, or None when the
        plugin does not apply (a preflight request with ``run_on_preflight`` off)."""
        conf = self.config
        if not conf["run_on_preflight"] and req.method == "OPTIONS":
            return None
        outcome = self._authenticate(req, edits)
        if isinstance(outcome, Exit) and conf["anonymous"]:
            anonymous = self.credentials.consumers.get(conf["anonymous"])
            if anonymous is None:
                return Exit(500, UNEXPECTED)
            _announce(edits, anonymous, None)
            return Identity(anonymous, None)
        return outcome

    def _authenticate(self, req: AuthRequest, edits: UpstreamEdits) -> Identity | Exit:
        conf = self.config
        key: str | None = None
        body_fields: dict[str, Any] | None = None
        for name in conf["key_names"]:
            value: Any = None
            if conf["key_in_header"]:
                value = req.headers.get(name.lower())
                if value is None and "_" in name:
                    value = req.headers.get(name.lower().replace("_", "-"))
            if value is None and conf["key_in_query"]:
                found = [v for k, v in req.query if k == name]
                value = found[0] if len(found) == 1 else (found or None)
            if value is None and conf["key_in_body"]:
                if body_fields is None:
                    body_fields = _parse_body(req.content_type, req.body)
                value = body_fields.get(name)
            if isinstance(value, str):
                key = value
                if conf["hide_credentials"]:
                    _hide(edits, req, name, body_fields)
                break
            if isinstance(value, list):
                return Exit(401, DUPLICATE_KEY)
        if not key:
            realm = conf["realm"] or "kong"
            return Exit(401, NO_KEY, {"WWW-Authenticate": f'Key realm="{realm}"'})
        found_cred = self.credentials.by_key.get(key)
        if found_cred is None:
            return Exit(401, INVALID_CREDENTIALS)
        credential, consumer = found_cred
        _announce(edits, consumer, credential)
        return Identity(consumer, credential)


def _hide(edits: UpstreamEdits, req: AuthRequest, name: str,
          body_fields: dict[str, Any] | None) -> None:
    query = edits.query if edits.query is not None else req.query
    edits.query = [(k, v) for k, v in query if k != name]
    edits.remove_headers.add(name.lower())
    if body_fields and name in body_fields:
        remaining = {k: v for k, v in body_fields.items() if k != name}
        if "json" in req.content_type:
            edits.body = json.dumps(remaining).encode()
        else:
            edits.body = urlencode(remaining, doseq=True).encode()


def _announce(edits: UpstreamEdits, consumer: Consumer,
              credential: KeyAuthCredential | None) -> None:
    """Kong's ``set_consumer``: set or clear the X-Consumer-* headers sent upstream, so a
    client can never spoof them."""
    values = {
        "x-consumer-id": consumer.id,
        "x-consumer-custom-id": consumer.custom_id,
        "x-consumer-username": consumer.username,
        "x-credential-identifier": credential.id if credential else None,
        "x-anonymous-consumer": None if credential else "true",
    }
    for header, value in values.items():
        if value is None:
            edits.set_headers.pop(header, None)
            edits.remove_headers.add(header)
        else:
            edits.remove_headers.discard(header)
            edits.set_headers[header] = value


def _parse_body(content_type: str, body: bytes | None) -> dict[str, Any]:
    """Form and JSON bodies, as Kong's ``kong.request.get_body``; anything else is empty."""
    if not body:
        return {}
    try:
        if "application/json" in content_type:
            parsed = json.loads(body)
            return parsed if isinstance(parsed, dict) else {}
        if "application/x-www-form-urlencoded" in content_type:
            fields: dict[str, Any] = {}
            for k, v in parse_qsl(body.decode("latin-1"), keep_blank_values=True):
                existing = fields.get(k)
                if existing is None:
                    fields[k] = v
                elif isinstance(existing, list):
                    existing.append(v)
                else:
                    fields[k] = [existing, v]
            return fields
    except (ValueError, UnicodeDecodeError):
        return {}
    return {}
