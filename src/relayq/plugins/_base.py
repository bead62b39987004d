"""The plugin interface the hosts drive by phase, and the registry of plugin classes.

A plugin instance is built once per configured plugin entity (Kong's ``plugins[]`` item) from
its ``config`` dict, validated with the plugin's schema. Hosts call the phases in Kong's order
for every request the plugin applies to: ``access`` (before proxying; tracing plugins read and
inject propagation headers here), ``header_filter`` (the response status and headers are known),
and ``log`` (after the response was sent; the plugin builds its entry and enqueues it).
Phases never block: ``log`` only builds an entry and calls ``enqueue``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

from relayq.serializer import RequestContext

log = logging.getLogger("relayq.plugins")


class PluginConfigError(ValueError):
    """A plugin config failed validation; ``errors`` maps a dotted field path to its message."""

    def __init__(self, plugin: str, errors: Mapping[str, str]) -> None:
        self.plugin = plugin
        self.errors = dict(errors)
        detail = "; ".join(f"{path}: {msg}" for path, msg in self.errors.items())
        super().__init__(f"invalid {plugin} plugin config: {detail}")


class ConfigSchema(Protocol):
    """What a plugin validates its config with (``relayq.plugins._schema.Schema``)."""

    def validate(self, config: Mapping[str, Any]) -> dict[str, Any]: ...


class Plugin:
    """Base class of the five queue plugins. Subclasses set ``name``, ``priority`` and
    ``schema`` (or override ``validate``).

    ``runtime`` is the ``relayq.Runtime`` whose queues the plugin enqueues into; ``None`` means
    the process-wide default runtime (``relayq.enqueue`` and friends).
    """

    name: ClassVar[str] = ""
    priority: ClassVar[int] = 0
    schema: ClassVar[ConfigSchema | None] = None

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        plugin_id: str,
        instance_name: str | None = None,
        runtime: Any = None,
    ) -> None:
        self.id = plugin_id
        self.instance_name = instance_name
        self.runtime = runtime
        self.config: dict[str, Any] = self.validate(config)

    @classmethod
    def validate(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """Return the config with Kong's defaults filled in, or raise ``PluginConfigError``."""
        if cls.schema is None:
            raise TypeError(f"plugin {cls.name!r} has neither a schema nor its own validate()")
        return cls.schema.validate(config)

    def access(self, ctx: RequestContext) -> None:
        """Before the request is proxied."""

    def header_filter(self, ctx: RequestContext) -> None:
        """When the response status and headers are known, before they are sent."""

    def log(self, ctx: RequestContext) -> None:
        """After the response was sent: build this plugin's entry and enqueue it."""


_REGISTRY: dict[str, type[Plugin]] = {}


def register(cls: type[Plugin]) -> type[Plugin]:
    """Class decorator: make a plugin class available by its Kong name."""
    _REGISTRY[cls.name] = cls
    return cls


def plugin_class(name: str) -> type[Plugin]:
    """The plugin class registered under ``name``; ``KeyError`` names the known plugins."""
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise KeyError(f"plugin '{name}' not enabled; known plugins: {known}") from None


def plugin_names() -> list[str]:
    """The names of every registered plugin, sorted."""
    _load_builtin()
    return sorted(_REGISTRY)


def create_plugin(
    name: str,
    config: Mapping[str, Any] | None = None,
    *,
    plugin_id: str,
    instance_name: str | None = None,
    runtime: Any = None,
) -> Plugin:
    """Build a validated plugin instance by Kong name."""
    cls = plugin_class(name)
    return cls(config or {}, plugin_id=plugin_id, instance_name=instance_name, runtime=runtime)


def _load_builtin() -> None:
    # Importing the built-in plugin packages registers them; done lazily to keep imports cheap.
    import importlib

    for mod in ("http_log", "statsd", "datadog", "opentelemetry", "zipkin"):
        try:
            importlib.import_module(f"relayq.plugins.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"relayq.plugins.{mod}":
                raise
