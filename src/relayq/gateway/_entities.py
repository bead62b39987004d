"""The validated entities of a declarative file, as frozen values the router and proxy share.

Each entity also carries ``entity``: the dict shaped like Kong's entity (all schema fields, null
ones included), which the log serializer copies into ``route``, ``service`` and ``consumer``.
It is built once at load time and shared by every request, so plugins must treat it as
read-only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Kong's DB-less mode puts every entity in the default workspace with this fixed id.
DEFAULT_WORKSPACE_ID = "0dc6f45b-8f8d-40d2-a504-473544ee190b"
DEFAULT_WORKSPACE_NAME = "default"


@dataclass(frozen=True, eq=False)
class Service:
    id: str
    name: str | None
    protocol: str
    host: str
    port: int
    path: str | None
    retries: int
    connect_timeout: int  # ms
    write_timeout: int  # ms
    read_timeout: int  # ms
    enabled: bool
    tls_verify: bool | None
    entity: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True, eq=False)
class Route:
    id: str
    name: str | None
    service_id: str | None
    protocols: tuple[str, ...]
    methods: tuple[str, ...]
    hosts: tuple[str, ...]
    paths: tuple[str, ...]
    headers: Mapping[str, tuple[str, ...]]
    https_redirect_status_code: int
    regex_priority: int
    strip_path: bool
    path_handling: str
    preserve_host: bool
    entity: Mapping[str, Any] = field(repr=False)
    position: int = 0  # declaration order, the router's last tie-breaker


@dataclass(frozen=True, eq=False)
class Consumer:
    id: str
    username: str | None
    custom_id: str | None
    entity: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True, eq=False)
class KeyAuthCredential:
    id: str
    key: str
    consumer_id: str
    entity: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True, eq=False)
class PluginEntity:
    """A ``plugins[]`` item: ``config`` is the plugin's validated config (defaults filled)."""

    id: str
    name: str
    config: Mapping[str, Any]
    enabled: bool
    instance_name: str | None
    protocols: tuple[str, ...]
    service_id: str | None
    route_id: str | None
    consumer_id: str | None
    location: str  # e.g. "services[0].plugins[1]", for messages


@dataclass(frozen=True, eq=False)
class GatewayConfig:
    """A whole validated declarative file."""

    format_version: str
    transform: bool
    services: tuple[Service, ...]
    routes: tuple[Route, ...]
    consumers: tuple[Consumer, ...]
    credentials: tuple[KeyAuthCredential, ...]
    plugins: tuple[PluginEntity, ...]
    source: str = "<memory>"

    def service(self, service_id: str | None) -> Service | None:
        """The service with this id, or None."""
        if service_id is None:
            return None
        for service in self.services:
            if service.id == service_id:
                return service
        return None
