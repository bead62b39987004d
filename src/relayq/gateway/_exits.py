"""Responses the gateway generates itself, with Kong's status codes, JSON bodies and headers.

Kong's own responses (no route, authentication failures, upstream errors) are JSON objects with
a ``message`` and, since 3.5, the ``request_id``; clients and dashboards match on these texts, so
they are reproduced verbatim.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

NO_ROUTE = "no Route matched with those values"
NO_SERVICE = "no Service found with those values"
BAD_GATEWAY = "An invalid response was received from the upstream server"
UNAVAILABLE = "The upstream server is currently unavailable"
TIMEOUT = "The upstream server is timing out"
NAME_RESOLUTION = "name resolution failed"
UNEXPECTED = "An unexpected error occurred"
USE_HTTPS = "Please use HTTPS protocol"
BAD_REQUEST = "Bad request"


@dataclass
class Exit:
    """A response produced by the gateway instead of the upstream (Kong's ``kong.response.exit``
    and its error pages)."""

    status: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)

    def body(self, request_id: str) -> bytes:
        payload: dict[str, str] = {"message": self.message}
        if request_id:
            payload["request_id"] = request_id
        return orjson.dumps(payload)
