"""Kong's key-auth: where keys are found, Kong's 401 answers, anonymous, hide_credentials."""

from __future__ import annotations

from typing import Any

import pytest

from relayq.gateway import parse_config
from relayq.gateway._exits import Exit
from relayq.gateway._keyauth import (
    AuthRequest,
    Credentials,
    Identity,
    KeyAuth,
    UpstreamEdits,
    validate_config,
)
from relayq.plugins import PluginConfigError

CONFIG = parse_config({
    "_format_version": "3.0",
    "consumers": [
        {"username": "alice", "custom_id": "c-1", "keyauth_credentials": [{"key": "k-alice"}]},
        {"username": "guest"},
    ],
})
CREDENTIALS = Credentials.build(CONFIG.consumers, CONFIG.credentials)


def auth(config: dict[str, Any] | None = None, *, headers: dict[str, Any] | None = None,
         query: list[tuple[str, str]] | None = None, method: str = "GET",
         body: bytes | None = None, content_type: str = "") -> tuple[Any, UpstreamEdits]:
    plugin = KeyAuth("p1", validate_config(config or {}), CREDENTIALS)
    edits = UpstreamEdits()
    outcome = plugin.authenticate(
        AuthRequest(method, headers or {}, query or [], content_type, body), edits)
    return outcome, edits


def test_key_in_header_identifies_the_consumer_and_announces_it() -> None:
    outcome, edits = auth(headers={"apikey": "k-alice"})
    assert isinstance(outcome, Identity)
    assert outcome.consumer.username == "alice"
    assert outcome.credential is not None and outcome.credential.key == "k-alice"
    assert edits.set_headers["x-consumer-username"] == "alice"
    assert edits.set_headers["x-consumer-custom-id"] == "c-1"
    assert edits.set_headers["x-credential-identifier"] == outcome.credential.id
    assert "x-anonymous-consumer" in edits.remove_headers  # never spoofable by clients


def test_key_in_query_and_custom_key_names() -> None:
    outcome, _ = auth(query=[("apikey", "k-alice")])
    assert isinstance(outcome, Identity)
    outcome, _ = auth({"key_names": ["x-api-key"]}, headers={"x-api-key": "k-alice"})
    assert isinstance(outcome, Identity)
    outcome, _ = auth({"key_in_query": False}, query=[("apikey", "k-alice")])
    assert isinstance(outcome, Exit) and outcome.message == "No API key found in request"


def test_kong_401_answers() -> None:
    outcome, _ = auth()
    assert isinstance(outcome, Exit)
    assert (outcome.status, outcome.message) == (401, "No API key found in request")
    assert outcome.headers == {"WWW-Authenticate": 'Key realm="kong"'}
    outcome, _ = auth(headers={"apikey": "wrong"})
    assert isinstance(outcome, Exit)
    assert (outcome.status, outcome.message) == (401, "Invalid authentication credentials")
    outcome, _ = auth(query=[("apikey", "a"), ("apikey", "b")])
    assert isinstance(outcome, Exit) and outcome.message == "Duplicate API key found"


def test_hide_credentials_removes_the_key_from_header_and_query() -> None:
    _, edits = auth({"hide_credentials": True}, headers={"apikey": "k-alice"},
                    query=[("apikey", "k-alice"), ("page", "2")])
    assert "apikey" in edits.remove_headers
    assert edits.query == [("page", "2")]


def test_anonymous_consumer_on_failure() -> None:
    guest = next(c for c in CONFIG.consumers if c.username == "guest")
    outcome, edits = auth({"anonymous": guest.id})
    assert isinstance(outcome, Identity)
    assert outcome.consumer is guest and outcome.credential is None
    assert edits.set_headers["x-anonymous-consumer"] == "true"
    outcome, _ = auth({"anonymous": "guest"})  # a username works as well
    assert isinstance(outcome, Identity) and outcome.consumer is guest


def test_preflight_is_skipped_only_when_asked() -> None:
    outcome, _ = auth({"run_on_preflight": False}, method="OPTIONS")
    assert outcome is None
    outcome, _ = auth(method="OPTIONS")
    assert isinstance(outcome, Exit)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [("application/json", b'{"apikey": "k-alice", "x": 1}'),
     ("application/x-www-form-urlencoded", b"apikey=k-alice&x=1")],
)
def test_key_in_body(content_type: str, body: bytes) -> None:
    outcome, edits = auth({"key_in_body": True, "hide_credentials": True}, method="POST",
                          body=body, content_type=content_type)
    assert isinstance(outcome, Identity)
    assert edits.body is not None and b"k-alice" not in edits.body and b"x" in edits.body


def test_config_errors_use_kong_field_paths() -> None:
    with pytest.raises(PluginConfigError) as info:
        validate_config({"key_names": [], "hide_credentials": "yes", "colour": 1})
    assert info.value.errors == {
        "key_names": "expected a non-empty array of header names",
        "hide_credentials": "expected a boolean",
        "colour": "unknown field",
    }
