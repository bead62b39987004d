"""A minimal upstream for the soak run: uvicorn with a tiny ASGI app, in its own process.

The soak measures the gateway's worker; a threaded Python upstream inside the test process
would be the bottleneck and would compete for the test's own CPU, so the upstream is the
fastest thing available and runs apart. Usage: ``python -m tests.reliability._upstream_app PORT``.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

BODY = b'{"ok": true, "service": "soak-upstream"}'


async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
              send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = bool(message.get("more_body", False))
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]})
    await send({"type": "http.response.body", "body": BODY})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                access_log=False)
