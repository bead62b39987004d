"""The five queue plugins (http-log, statsd, datadog, opentelemetry, zipkin) and their interface."""

from relayq.plugins._base import (
    Plugin,
    PluginConfigError,
    create_plugin,
    plugin_class,
    plugin_names,
    register,
)
from relayq.plugins._http import (
    BATCH_ID_HEADER,
    HttpRequest,
    HttpResponse,
    HttpSender,
    HttpTransportError,
    HttpxSender,
    MemoryHttpSender,
    shared_sender,
)

__all__ = [
    "BATCH_ID_HEADER",
    "HttpRequest",
    "HttpResponse",
    "HttpSender",
    "HttpTransportError",
    "HttpxSender",
    "MemoryHttpSender",
    "Plugin",
    "PluginConfigError",
    "create_plugin",
    "plugin_class",
    "plugin_names",
    "register",
    "shared_sender",
]
