"""Capture of Python log records for OpenTelemetry's ``logs_endpoint``.

Kong hooks ``ngx.log`` when an OpenTelemetry instance has a ``logs_endpoint`` and keeps what is
logged at or above the configured level in two buffers of at most 1000 records: one per request
(records logged while a request is being handled) and one per worker (everything else). In the
log phase the plugin takes a copy of the request's records and *all* pending worker records,
so background records ride along with the next traced request.

relayq does the same with a ``logging.Handler`` on the root logger. The request scope is a
context variable the access phase sets, so records an application logs while handling the
request (in the same thread, or in tasks that inherit its context) are attributed to it.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

MAX_REQUEST_LOGS = 1000
MAX_WORKER_LOGS = 1000
DEFAULT_LEVEL = logging.WARNING  # the Python level nearest above Kong's default, "notice"

BUFFER_FULL = "[observability] OpenTelemetry logs buffer is full: dropping new log entries."

log = logging.getLogger("relayq.plugins.opentelemetry")
_FORMATTER = logging.Formatter()

# Kong's severities (kong/observability/otlp): number and text per nginx level.
_SEVERITIES = (
    (logging.CRITICAL, 19, "CRIT"),
    (logging.ERROR, 17, "ERR"),
    (logging.WARNING, 13, "WARN"),
    (25, 11, "NOTICE"),
    (logging.INFO, 9, "INFO"),
)


def severity(levelno: int) -> tuple[int, str]:
    """OTLP severity number and text for a Python level, on Kong's nginx scale."""
    for threshold, number, text in _SEVERITIES:
        if levelno >= threshold:
            return number, text
    return 5, "DEBUG"


@dataclass(slots=True)
class LogData:
    """One captured record, ready for OTLP encoding (Kong's prepared log table).

    ``trace_id``/``span_id``/``flags`` are set for records logged during a traced request.
    """

    time_unix_nano: int
    severity_number: int
    severity_text: str
    body: str
    attributes: dict[str, Any]
    trace_id: bytes = b""
    span_id: bytes = b""
    flags: int = 0


@dataclass(slots=True)
class RequestLogs:
    """The per-request buffer; the access phase creates it and sets the context variable."""

    request_id: str
    records: list[LogData] = field(default_factory=list)
    full_noted: bool = False


_current: contextvars.ContextVar[RequestLogs | None] = contextvars.ContextVar(
    "relayq_otel_request_logs", default=None
)


class LogCapture(logging.Handler):
    """Buffers records for the OpenTelemetry plugin; one instance per process."""

    def __init__(self, level: int = DEFAULT_LEVEL) -> None:
        super().__init__(level)
        self._worker: list[LogData] = []
        self._worker_lock = threading.Lock()
        self._worker_full_noted = False

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "relayq_no_capture", False):
            return
        request = _current.get()
        if request is not None:
            if len(request.records) >= MAX_REQUEST_LOGS:
                if not request.full_noted:
                    request.full_noted = True
                    _note_full()
                return
        else:
            with self._worker_lock:
                if len(self._worker) >= MAX_WORKER_LOGS:
                    noted, self._worker_full_noted = self._worker_full_noted, True
                    if not noted:
                        _note_full()
                    return
        try:
            body = record.getMessage()
        except Exception:  # a bad format string in someone's log call must not escape
            body = str(record.msg)
        if record.exc_info and record.exc_info[0] is not None:
            body = f"{body}\n{_FORMATTER.formatException(record.exc_info)}"
        if not body:
            return
        number, text = severity(record.levelno)
        attributes: dict[str, Any] = {
            "introspection.current.line": record.lineno,
            "introspection.name": record.funcName,
            "introspection.source": record.pathname,
            "logger.name": record.name,
        }
        entry = LogData(
            time_unix_nano=int(record.created * 1e9),
            severity_number=number,
            severity_text=text,
            body=body,
            attributes=attributes,
        )
        if request is not None:
            if request.request_id:
                attributes["request.id"] = request.request_id
            request.records.append(entry)
        else:
            with self._worker_lock:
                self._worker.append(entry)

    def take_worker_logs(self) -> list[LogData]:
        """Every pending background record; the buffer starts over empty."""
        with self._worker_lock:
            taken, self._worker = self._worker, []
            self._worker_full_noted = False
        return taken

    def reset(self) -> None:
        """Forget pending background records (after ``fork()``: the parent sends its own)."""
        with self._worker_lock:
            self._worker = []
            self._worker_full_noted = False


def _note_full() -> None:
    log.info(BUFFER_FULL, extra={"relayq_no_capture": True})


_capture: LogCapture | None = None
_install_lock = threading.Lock()


def install_log_capture(level: int | None = None) -> LogCapture:
    """Start capturing log records at ``level`` and above (WARNING by default) on the root
    logger; idempotent. The OpenTelemetry plugin calls it when ``logs_endpoint`` is set; call
    it yourself to choose another level."""
    global _capture
    with _install_lock:
        if _capture is None:
            _capture = LogCapture(DEFAULT_LEVEL if level is None else level)
            logging.getLogger().addHandler(_capture)
        elif level is not None:
            _capture.setLevel(level)
        return _capture


def uninstall_log_capture() -> None:
    """Stop capturing and drop pending records."""
    global _capture
    with _install_lock:
        if _capture is not None:
            logging.getLogger().removeHandler(_capture)
            _capture = None


def log_capture() -> LogCapture | None:
    """The installed capture handler, if any."""
    return _capture


def begin_request(request_id: str) -> RequestLogs:
    """Start a request scope in the current context: records logged from here on belong to
    the request."""
    request = RequestLogs(request_id)
    _current.set(request)
    return request


def end_request(request: RequestLogs) -> None:
    """Leave the request scope in the current context, if it is still this request's."""
    if _current.get() is request:
        _current.set(None)


def _after_fork_in_child() -> None:
    if _capture is not None:
        _capture.reset()


os.register_at_fork(after_in_child=_after_fork_in_child)
