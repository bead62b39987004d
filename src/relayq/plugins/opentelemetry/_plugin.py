"""The OpenTelemetry plugin: propagation in ``access``, the trace-id header in ``header_filter``,
spans and log records enqueued in ``log``.

Queues (Kong's names): ``<plugin_id>:traces`` takes one span per entry; ``<plugin_id>:logs``
takes one log record per entry, and only when ``can_enqueue`` says it fits, so a full logs
queue drops the *newest* records (Kong's choice: dropping the oldest synchronously is costly).
Kong drops them silently; relayq counts them in ``logs_dropped`` and warns once a minute.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any

import relayq
from relayq.plugins._base import Plugin, register
from relayq.plugins._enqueue import QueueBinding
from relayq.plugins._http import DEFAULT_TIMEOUT, HttpSender, shared_sender
from relayq.plugins._propagation import (
    PropagationConfig,
    Propagator,
    TraceContext,
    new_span_id,
    new_trace_id,
    propagation_config,
    sampling_decision,
)
from relayq.plugins.opentelemetry import _schema
from relayq.plugins.opentelemetry._export import (
    ExportConf,
    export_headers,
    export_logs,
    export_traces,
)
from relayq.plugins.opentelemetry._logcapture import (
    LogCapture,
    LogData,
    RequestLogs,
    begin_request,
    end_request,
    install_log_capture,
)
from relayq.plugins.opentelemetry._spans import RequestTrace, request_spans
from relayq.queue import QueueConfig, workspace
from relayq.serializer import RequestContext

log = logging.getLogger("relayq.plugins.opentelemetry")

# Shared by every OpenTelemetry instance of a request: the request's captured log records.
_REQUEST_LOGS = "opentelemetry:request_logs"
_DROP_WARNING_INTERVAL = 60.0


class _SignalQueue(QueueBinding):
    """A plugin's queue for one signal: Kong's queue name with ``:traces`` / ``:logs`` added."""

    def __init__(self, plugin: Plugin, suffix: str, *, failure: str) -> None:
        self._suffix = suffix
        self._base: QueueConfig | None = None
        self._named: QueueConfig | None = None
        super().__init__(plugin, failure=failure)

    def params(self) -> QueueConfig:
        base = super().params()
        if base is not self._base or self._named is None:
            self._base = base
            self._named = base.replace(name=base.name + self._suffix)
        return self._named

    def count_drop(self, ctx: RequestContext, count: int) -> None:
        """Count records skipped because the queue was full (reason ``full``)."""
        params = self.params()
        if ctx.workspace_id:
            with relayq.workspace(ctx.workspace_id):
                self.target.count_drop(params, "full", count)
        else:
            self.target.count_drop(params, "full", count)

    def can_enqueue(self, ctx: RequestContext, entry: Any) -> bool:
        """Kong's ``Queue.can_enqueue`` under the request's workspace."""
        params = self.params()
        if ctx.workspace_id:
            with workspace(ctx.workspace_id):
                return bool(self.target.can_enqueue(params, entry))
        return bool(self.target.can_enqueue(params, entry))


@register
class OpenTelemetryPlugin(Plugin):
    """Kong's ``opentelemetry`` plugin (priority 14). ``sender`` replaces the shared httpx
    sender, e.g. with ``MemoryHttpSender`` in tests."""

    name = "opentelemetry"
    priority = 14

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        plugin_id: str,
        instance_name: str | None = None,
        runtime: Any = None,
        sender: HttpSender | None = None,
    ) -> None:
        super().__init__(config, plugin_id=plugin_id, instance_name=instance_name, runtime=runtime)
        conf = self.config
        self.propagation: PropagationConfig = propagation_config(conf)
        self._propagator = Propagator(self.propagation)
        self._traceid_header: str | None = conf["http_response_header_for_traceid"]
        rate = conf["sampling_rate"]
        self.sampling_rate: float = 1.0 if rate is None else float(rate)
        self.sender: HttpSender = sender if sender is not None else shared_sender()
        timeout_ms = max(conf["connect_timeout"], conf["send_timeout"], conf["read_timeout"])
        timeout = timeout_ms / 1000 if timeout_ms > 0 else DEFAULT_TIMEOUT
        headers = export_headers(conf["headers"])
        attributes = conf["resource_attributes"]
        self.traces_export: ExportConf | None = None
        self.logs_export: ExportConf | None = None
        self._traces_queue: _SignalQueue | None = None
        self._logs_queue: _SignalQueue | None = None
        self._capture: LogCapture | None = None
        if conf["traces_endpoint"]:
            self.traces_export = ExportConf(
                conf["traces_endpoint"], headers, timeout, attributes, self.sender
            )
            self._traces_queue = _SignalQueue(
                self, ":traces", failure="Failed to enqueue span to log server"
            )
        if conf["logs_endpoint"]:
            self.logs_export = ExportConf(
                conf["logs_endpoint"], headers, timeout, attributes, self.sender
            )
            self._logs_queue = _SignalQueue(
                self, ":logs", failure="Failed to enqueue log record to log server"
            )
            self._capture = install_log_capture()
        self.logs_dropped = 0
        self._drop_warned_at = -_DROP_WARNING_INTERVAL

    @classmethod
    def validate(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        return _schema.validate(config)

    # ------------------------------------------------------------------------------ queues

    @property
    def traces_queue(self) -> QueueConfig | None:
        """The traces queue's parameters (``None`` without ``traces_endpoint``)."""
        return self._traces_queue.params() if self._traces_queue is not None else None

    @property
    def logs_queue(self) -> QueueConfig | None:
        """The logs queue's parameters (``None`` without ``logs_endpoint``)."""
        return self._logs_queue.params() if self._logs_queue is not None else None

    # ------------------------------------------------------------------------------ phases

    def _trace_for(self, extracted: TraceContext) -> RequestTrace:
        trace_id = extracted.trace_id or new_trace_id()
        rate = self.sampling_rate
        if rate >= 1:  # sampling_decision's answer at this rate, without its two calls
            sampled = extracted.should_sample is not False
        else:
            sampled = sampling_decision(extracted.should_sample, trace_id, rate)
        if extracted.w3c_flags is not None:
            flags = extracted.w3c_flags
        else:
            flags = 1 if extracted.flags == "1" else 0
        # positional, in field order: trace_id, root_span_id, balancer_span_id, parent_span_id,
        # sampled, flags (keywords cost more and this runs for every request)
        return RequestTrace(
            trace_id,
            new_span_id(),
            new_span_id(),
            extracted.span_id or extracted.parent_id,
            sampled,
            flags | int(sampled),
        )

    def _current_trace(self, ctx: RequestContext) -> RequestTrace:
        trace = ctx.plugin_data.get(self.id)
        if isinstance(trace, RequestTrace):
            return trace
        extracted, _ = self._propagator.extract(ctx.headers)
        trace = ctx.plugin_data[self.id] = self._trace_for(extracted)
        return trace

    def access(self, ctx: RequestContext) -> None:
        """Extract the incoming context, decide sampling, inject the outgoing headers."""
        extracted, found_in = self._propagator.extract(ctx.headers)
        trace = ctx.plugin_data[self.id] = self._trace_for(extracted)
        # The outgoing context is the incoming one with our ids and decision. ``extract`` built
        # ``extracted`` for this call alone and it is not read again, so it is updated in place
        # instead of copied (``with_ids`` would cost a 11-field construction per request).
        extracted.trace_id = trace.trace_id
        extracted.span_id = trace.balancer_span_id
        extracted.parent_id = trace.root_span_id
        extracted.should_sample = trace.sampled
        self._propagator.propagate(ctx, extracted, found_in)
        if self._capture is not None and _REQUEST_LOGS not in ctx.plugin_data:
            ctx.plugin_data[_REQUEST_LOGS] = begin_request(ctx.request_id)

    def header_filter(self, ctx: RequestContext) -> None:
        """Add ``http_response_header_for_traceid`` with the hex trace id."""
        header = self._traceid_header
        if header:
            ctx.response_headers_to_add[header] = self._current_trace(ctx).trace_id.hex()

    def log(self, ctx: RequestContext) -> None:
        """Enqueue the request's spans (when sampled) and the pending log records."""
        trace = self._current_trace(ctx)
        if self._traces_queue is not None and trace.sampled:
            spans = request_spans(ctx, trace, time.time_ns())
            self._traces_queue.enqueue_many(ctx, export_traces, self.traces_export, spans)
        if self._logs_queue is not None:
            self._enqueue_logs(ctx, trace)

    def _enqueue_logs(self, ctx: RequestContext, trace: RequestTrace) -> None:
        assert self._logs_queue is not None and self._capture is not None
        records: list[LogData] = self._capture.take_worker_logs()
        request = ctx.plugin_data.get(_REQUEST_LOGS)
        if isinstance(request, RequestLogs):
            end_request(request)
            records.extend(
                dataclasses.replace(
                    r, trace_id=trace.trace_id, span_id=trace.root_span_id, flags=trace.flags
                )
                for r in request.records
            )
        queue, conf = self._logs_queue, self.logs_export
        dropped = 0
        for record in records:
            if queue.can_enqueue(ctx, record):
                queue.enqueue(ctx, export_logs, conf, record)
            else:
                dropped += 1
        if dropped:
            self._count_dropped(ctx, dropped)

    def _count_dropped(self, ctx: RequestContext, count: int) -> None:
        assert self._logs_queue is not None
        self._logs_queue.count_drop(ctx, count)  # so the queue's stats() show the loss too
        self.logs_dropped += count
        now = time.monotonic()
        if now - self._drop_warned_at >= _DROP_WARNING_INTERVAL:
            self._drop_warned_at = now
            log.warning(
                "%slogs queue %s is full: dropped new log records (%d so far)",
                "[otel] ",
                self.logs_queue.name if self.logs_queue else "",
                self.logs_dropped,
                extra={"relayq_no_capture": True},
            )
