"""A recording plugin for host tests: it sees every phase, can fail or be slow on purpose, and
enqueues a copy of the finished context into a real ``relayq.Runtime`` when given a queue."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from relayq.plugins import Plugin, register
from relayq.serializer import RequestContext


@register
class RecorderPlugin(Plugin):
    """Config: ``fail`` (phases that raise), ``inject`` (upstream headers set in access),
    ``clear`` (request headers removed in access),
    ``add_response`` (response headers set in header_filter), ``log_sleep`` (seconds the log
    phase blocks), ``queue`` (a queue config: the log phase enqueues the context there)."""

    name: ClassVar[str] = "test-recorder"
    priority: ClassVar[int] = 5

    def __init__(self, config: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.events: list[tuple[str, float]] = []
        self.logged: list[RequestContext] = []
        self.delivered: list[RequestContext] = []
        self.seen_in_header_filter: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.log_entered = threading.Event()

    @classmethod
    def validate(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        from relayq.plugins import PluginConfigError

        allowed = {"fail", "inject", "clear", "add_response", "log_sleep", "queue"}
        unknown = {k: "unknown field" for k in config if k not in allowed}
        if unknown:
            raise PluginConfigError(cls.name, unknown)
        defaults = {"fail": [], "inject": {}, "clear": [], "add_response": {}, "log_sleep": 0.0}
        return {**defaults, **config}

    def _event(self, phase: str) -> None:
        with self._lock:
            self.events.append((phase, time.monotonic()))
        if phase in self.config["fail"]:
            raise RuntimeError(f"{self.name} fails in {phase} on purpose")

    def access(self, ctx: RequestContext) -> None:
        self._event("access")
        ctx.upstream_headers.update(self.config["inject"])
        ctx.upstream_headers_cleared.extend(self.config["clear"])

    def header_filter(self, ctx: RequestContext) -> None:
        with self._lock:
            self.seen_in_header_filter.append({"status": ctx.status, **ctx.response_headers})
        self._event("header_filter")
        ctx.response_headers_to_add.update(self.config["add_response"])

    def log(self, ctx: RequestContext) -> None:
        self.log_entered.set()
        self._event("log")
        if self.config["log_sleep"]:
            time.sleep(self.config["log_sleep"])
        with self._lock:
            self.logged.append(copy.deepcopy(ctx))
        if self.config.get("queue") and self.runtime is not None:
            self.runtime.enqueue(self.config["queue"], self._deliver, None, copy.deepcopy(ctx))

    def _deliver(self, _conf: Any, entries: list[RequestContext]) -> bool:
        with self._lock:
            self.delivered.extend(entries)
        return True

    def wait_logged(self, count: int, timeout: float = 10.0) -> list[RequestContext]:
        """Poll until ``count`` contexts were logged (the log phase runs after the response)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.logged) >= count:
                    return list(self.logged)
            time.sleep(0.005)
        raise AssertionError(f"expected {count} logged requests, got {len(self.logged)}")


@register
class HighPriorityRecorder(RecorderPlugin):
    """The same recorder, running before ``test-recorder`` (Kong: higher priority first)."""

    name: ClassVar[str] = "test-recorder-high"
    priority: ClassVar[int] = 1000
