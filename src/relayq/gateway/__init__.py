"""A Kong-style gateway: a reverse proxy driven by a DB-less declarative file (``kong.yml``).

``run()`` is what ``relayq serve`` calls; ``Gateway`` is the ASGI app it serves, usable on its
own (``uvicorn.run(Gateway(load_config("kong.yml")))``); ``load_config`` validates a file and
reports every error with its path; ``Router`` selects routes with Kong's precedence.
"""

from relayq.gateway._declarative import (
    DeclarativeError,
    load_config,
    parse_config,
    parse_config_text,
)
from relayq.gateway._entities import (
    Consumer,
    GatewayConfig,
    KeyAuthCredential,
    PluginEntity,
    Route,
    Service,
)
from relayq.gateway._proxy import Gateway, GatewayState, build_state
from relayq.gateway._router import RouteMatch, Router
from relayq.gateway._server import run

__all__ = [
    "Consumer",
    "DeclarativeError",
    "Gateway",
    "GatewayConfig",
    "GatewayState",
    "KeyAuthCredential",
    "PluginEntity",
    "Route",
    "RouteMatch",
    "Router",
    "Service",
    "build_state",
    "load_config",
    "parse_config",
    "parse_config_text",
    "run",
]
