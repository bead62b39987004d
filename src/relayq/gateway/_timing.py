"""Phase boundaries of one proxied request, and Kong's latencies derived from them.

Marks are epoch nanoseconds (what tracing spans need) computed as one wall-clock reading at the
start plus monotonic offsets, so durations are exact and ordered even if the wall clock jumps.
"""

from __future__ import annotations

import time

from relayq.serializer import RequestContext


class Stopwatch:
    __slots__ = ("_epoch_ns", "_mono_ns", "ctx")

    def __init__(self, ctx: RequestContext) -> None:
        self.ctx = ctx
        self._mono_ns = time.perf_counter_ns()
        self._epoch_ns = time.time_ns()
        ctx.started_at = self._epoch_ns / 1e9
        ctx.timestamps["request_start"] = self._epoch_ns

    def now(self) -> int:
        """The current time as epoch nanoseconds on this request's clock."""
        return self._epoch_ns + (time.perf_counter_ns() - self._mono_ns)

    def mark(self, key: str) -> int:
        value = self.now()
        self.ctx.timestamps[key] = value
        return value

    def ms(self, start: str, end: str) -> float:
        ts = self.ctx.timestamps
        return max(0, ts[end] - ts[start]) / 1e6 if start in ts and end in ts else 0.0

    def since_start_ms(self) -> float:
        return (self.now() - self._epoch_ns) / 1e6

    def finish(self) -> None:
        """Fill Kong's latencies once the last response byte was handed to the server.

        ``kong``: until the request went upstream (KONG_PROXY_LATENCY), or until the gateway
        produced its own response (KONG_RESPONSE_LATENCY); ``proxy``: waiting for the
        upstream's first byte, -1 if never proxied; ``receive``: from that first byte to the
        last byte sent; ``request``: the whole request.
        """
        ctx = self.ctx
        ts = ctx.timestamps
        if "response_end" not in ts:
            self.mark("response_end")
        if "upstream_start" in ts:
            ctx.kong_latency = self.ms("request_start", "upstream_start")
        else:
            ctx.kong_latency = self.ms("request_start", "response_start")
        if "upstream_first_byte" in ts:
            ctx.proxy_latency = self.ms("upstream_start", "upstream_first_byte")
            ctx.receive_latency = self.ms("upstream_first_byte", "response_end")
        elif "upstream_end" in ts:  # proxied but failed: the time spent waiting
            ctx.proxy_latency = self.ms("upstream_start", "upstream_end")
        ctx.request_latency = self.ms("request_start", "response_end")
