"""Kong's log serializer: the finished request as the dict http-log, statsd and datadog consume."""

from relayq.serializer._context import HeaderValue, RequestContext

__all__ = ["HeaderValue", "RequestContext"]
