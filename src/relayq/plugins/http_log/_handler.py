"""http-log's batch handler: POST (or PUT/PATCH) one body to the log server.

Success is a status below 300. A 3xx or higher status and every transport failure are failures
with Kong's texts, so the queue logs them and retries the whole batch. A status failure is
returned as a ``relayq.Failure`` that also says whether a retry can help (408, 425, 429 and 5xx
can; other 3xx/4xx cannot) and carries the server's ``Retry-After``; the queue uses those only
when its ``retry_on`` is ``"retryable"``, otherwise it retries everything as Kong does.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass

from relayq import Failure
from relayq.plugins._http import HttpSender, HttpTransportError
from relayq.plugins.http_log._encode import encode_body
from relayq.plugins.http_log._endpoint import Endpoint

MAX_BODY_IN_MESSAGE = 4096  # characters of a failed response's body quoted in the error
RETRYABLE_STATUSES = frozenset({408, 425, 429})


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


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


async def send_entries(conf: Delivery, entries: list[bytes]) -> bool | tuple[bool, str] | Failure:
    """Send one batch: ``True`` on a status below 300, else a failure with Kong's message."""
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
    status = response.status
    if status < 300:
        return True
    text = response.body.decode("utf-8", "replace")
    if len(text) > MAX_BODY_IN_MESSAGE:
        text = text[:MAX_BODY_IN_MESSAGE] + "..."
    return Failure(
        f"request to {where} returned status code {status} and body {text}",
        retryable=status >= 500 or status in RETRYABLE_STATUSES,
        retry_after=retry_after(response.headers.get("retry-after")),
    )
