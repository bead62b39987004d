"""Kong's ``opentelemetry`` plugin: W3C/B3/... propagation, OTLP/HTTP protobuf traces and logs.

Importing this package registers the plugin under the name ``opentelemetry``.
"""

from relayq.plugins.opentelemetry._encode import (
    SCOPE_NAME,
    SCOPE_VERSION,
    default_resource_attributes,
    encode_logs,
    encode_traces,
)
from relayq.plugins.opentelemetry._export import (
    ExportConf,
    export_headers,
    export_logs,
    export_traces,
)
from relayq.plugins.opentelemetry._logcapture import (
    LogCapture,
    LogData,
    install_log_capture,
    log_capture,
    uninstall_log_capture,
)
from relayq.plugins.opentelemetry._plugin import OpenTelemetryPlugin
from relayq.plugins.opentelemetry._schema import SCHEMA
from relayq.plugins.opentelemetry._spans import RequestTrace, SpanData, request_spans

__all__ = [
    "SCHEMA",
    "SCOPE_NAME",
    "SCOPE_VERSION",
    "ExportConf",
    "LogCapture",
    "LogData",
    "OpenTelemetryPlugin",
    "RequestTrace",
    "SpanData",
    "default_resource_attributes",
    "encode_logs",
    "encode_traces",
    "export_headers",
    "export_logs",
    "export_traces",
    "install_log_capture",
    "log_capture",
    "request_spans",
    "uninstall_log_capture",
]
