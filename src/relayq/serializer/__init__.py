"""Kong's log serializer: the finished request as the dict http-log, statsd and datadog consume."""

from relayq.serializer._context import HeaderValue, RequestContext
from relayq.serializer._serialize import parse_query, serialize

__all__ = ["HeaderValue", "RequestContext", "parse_query", "serialize"]
