"""http-log's batch handler: POST (or PUT/PATCH) one body to the log server.

Success is a status below 300. A 3xx or higher status and every transport failure are returned
as failures with Kong's texts, so the queue logs them and retries the whole batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from relayq.plugins._http import HttpSender, HttpTransportError
from relayq.plugins.http_log._encode import encode_body
from relayq.plugins.http_log._endpoint import Endpoint

MAX_BODY_IN_MESSAGE = 4096  # characters of a failed response's body quoted in the error


@dataclass(frozen=True)
class Delivery:
    """Everything the handler needs, fixed per plugin instance (Kong's ``handler_conf``)."""

    endpoint: Endpoint
    method: str
    headers: Mapping[str, str]
    timeout: float  # seconds
    array: bool  # configured max_batch_size != 1
    sender: HttpSender


ONE_ENTRY_ONLY = (
    "internal error, received more than one entry in queue handler even though "
    "max_batch_size is 1"
)


async def send_entries(conf: Delivery, entries: list[bytes]) -> bool | tuple[bool, str]:
    """Send one batch; ``True`` on a status below 300, else ``(False, Kong's message)``."""
    if not conf.array and len(entries) != 1:
        return False, ONE_ENTRY_ONLY
    body = encode_body(entries, array=conf.array)
    where = f"{conf.endpoint.host}:{conf.endpoint.port}"
    try:
        response = await conf.sender.request(
            conf.method, conf.endpoint.url, body, conf.headers, timeout=conf.timeout
        )
    except HttpTransportError as exc:
        return False, f"failed request to {where}: {exc}"
    if response.status >= 300:
        text = response.body.decode("utf-8", "replace")
        if len(text) > MAX_BODY_IN_MESSAGE:
            text = text[:MAX_BODY_IN_MESSAGE] + "..."
        return False, f"request to {where} returned status code {response.status} and body {text}"
    return True
