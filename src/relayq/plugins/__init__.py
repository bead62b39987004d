"""The five queue plugins (http-log, statsd, datadog, opentelemetry, zipkin) and their interface."""

from relayq.plugins._base import (
    Plugin,
    PluginConfigError,
    create_plugin,
    plugin_class,
    plugin_names,
    register,
)

__all__ = [
    "Plugin",
    "PluginConfigError",
    "create_plugin",
    "plugin_class",
    "plugin_names",
    "register",
]
