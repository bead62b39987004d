"""Kong's ``zipkin`` plugin: B3/W3C/... propagation and Zipkin v2 JSON spans over HTTP.

Importing this package registers the plugin under the name ``zipkin``.
"""

from relayq.plugins.zipkin._export import ZipkinConf, send_spans
from relayq.plugins.zipkin._plugin import ZipkinPlugin, ZipkinRequest
from relayq.plugins.zipkin._schema import PROTECTED_TAGS, SCHEMA
from relayq.plugins.zipkin._spans import ZipkinSpan, parse_request_tags, tag_text

__all__ = [
    "PROTECTED_TAGS",
    "SCHEMA",
    "ZipkinConf",
    "ZipkinPlugin",
    "ZipkinRequest",
    "ZipkinSpan",
    "parse_request_tags",
    "send_spans",
    "tag_text",
]
