"""The log-phase step every queue plugin shares: queue parameters, then a non-blocking enqueue.

Kong calls ``Queue.get_plugin_params`` on every log-phase invocation (that is also where the
throttled legacy-parameter warnings come from) and enqueues under the request's workspace.
:class:`QueueBinding` does the same for one plugin instance, but caches the resulting
``QueueConfig``: it is recomputed only when the legacy warnings are due again (every 60 s while a
legacy field is in effect), because building it per request would dominate the log phase.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import relayq
from relayq.plugins._base import Plugin
from relayq.queue import CURRENT_WORKSPACE as _current_workspace
from relayq.queue import QueueConfig, legacy_overrides
from relayq.serializer import RequestContext

log = logging.getLogger("relayq.plugins")

_WARNING_INTERVAL = 60.0


class QueueBinding:
    """One plugin instance's queue: its parameters and the enqueue call with Kong's failure log.

    ``queue_name`` is the name Kong's plugin passes to ``get_plugin_params`` (http-log's
    endpoint-derived name); ``None`` means the plugin id. ``failure`` is the plugin's own
    "failed to enqueue" text, logged at ERROR when the queue rejects an entry.
    """

    def __init__(self, plugin: Plugin, *, queue_name: str | None = None, failure: str) -> None:
        self.plugin = plugin
        self.queue_name = queue_name
        self.failure = failure
        self._has_legacy = bool(legacy_overrides(plugin.config))
        # the runtime's clock, so a fake clock drives the warning interval in tests too
        self._clock: Callable[[], float] = getattr(plugin.runtime, "clock", time.monotonic)
        self._params: QueueConfig | None = None
        self._computed_at = 0.0
        self.params()  # a bad queue record fails at construction, not on the request path

    @property
    def target(self) -> Any:
        """The runtime (or the ``relayq`` module, for the default runtime) enqueued into."""
        return self.plugin.runtime if self.plugin.runtime is not None else relayq

    def params(self) -> QueueConfig:
        """The queue parameters (Kong's ``get_plugin_params`` result) for this instance."""
        params = self._params
        if params is not None and not (
            self._has_legacy and self._clock() - self._computed_at >= _WARNING_INTERVAL
        ):
            return params
        runtime = self.plugin.runtime
        throttle = getattr(runtime, "warning_throttle", None) if runtime is not None else None
        params = relayq.get_plugin_params(
            self.plugin.name,
            self.plugin.config,
            self.queue_name,
            plugin_id=self.plugin.id,
            instance_name=self.plugin.instance_name,
            throttle=throttle,
        )
        self._params = params
        self._computed_at = self._clock()
        return params

    def enqueue(
        self,
        ctx: RequestContext,
        handler: Callable[..., Any],
        handler_conf: Any,
        entry: Any,
    ) -> bool:
        """Enqueue ``entry`` under the request's workspace; log the plugin's failure text if the
        queue rejects it (the queue itself logs why)."""
        params = self.params()
        target = self.target
        if ctx.workspace_id:
            # relayq.workspace() without the context-manager overhead (it is per request)
            token = _current_workspace.set(ctx.workspace_id)
            try:
                ok: bool = target.enqueue(params, handler, handler_conf, entry)
            finally:
                _current_workspace.reset(token)
        else:
            ok = target.enqueue(params, handler, handler_conf, entry)
        if not ok:
            log.error("%s: rejected by queue %s", self.failure, params.name)
        return ok

    def enqueue_many(
        self,
        ctx: RequestContext,
        handler: Callable[..., Any],
        handler_conf: Any,
        entries: list[Any],
    ) -> int:
        """``enqueue`` each of ``entries`` in order (a request's spans), entering the request's
        workspace once; returns how many were queued."""
        params = self.params()
        enqueue = self.target.enqueue
        token = _current_workspace.set(ctx.workspace_id) if ctx.workspace_id else None
        queued = 0
        try:
            for entry in entries:
                if enqueue(params, handler, handler_conf, entry):
                    queued += 1
                else:
                    log.error("%s: rejected by queue %s", self.failure, params.name)
        finally:
            if token is not None:
                _current_workspace.reset(token)
        return queued

