"""``get_plugin_params``: a plugin's queue config from its ``queue`` record and legacy fields.

Kong 3.3 replaced per-plugin batching fields with the shared ``queue`` record; old configs still
work. A legacy value counts as unset when it is null or equal to its old default; otherwise it
overrides the ``queue`` value and a warning is logged, at most once per 60 s per (queue name,
message). Unlike Kong, the plugin's config is not modified in place.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from relayq.queue._config import QueueConfig, validate_queue_record

log = logging.getLogger("relayq")

MIN_WARNING_INTERVAL_SECONDS = 60.0


class LegacyRule(NamedTuple):
    """One legacy field: its old default, the queue field it maps to, and the warning."""

    field: str
    old_default: float
    target: str | None
    message: str


LEGACY_RULES: tuple[LegacyRule, ...] = (
    LegacyRule(
        "retry_count", 10, None,
        "the retry_count parameter no longer works, please update your configuration to use "
        "initial_retry_delay and max_retry_time instead",
    ),
    LegacyRule(
        "queue_size", 1, "max_batch_size",
        "the queue_size parameter is deprecated, please update your configuration to use "
        "queue.max_batch_size instead",
    ),
    LegacyRule(
        "flush_timeout", 2, "max_coalescing_delay",
        "the flush_timeout parameter is deprecated, please update your configuration to use "
        "queue.max_coalescing_delay instead",
    ),
    LegacyRule(
        "batch_span_count", 200, "max_batch_size",
        "the batch_span_count parameter is deprecated, please update your configuration to use "
        "queue.max_batch_size instead",
    ),
    LegacyRule(
        "batch_flush_delay", 3, "max_coalescing_delay",
        "the batch_flush_delay parameter is deprecated, please update your configuration to use "
        "queue.max_coalescing_delay instead",
    ),
)

# Record defaults that differ from the field defaults (used only when the record is absent).
RECORD_DEFAULTS: dict[str, dict[str, Any]] = {"opentelemetry": {"max_batch_size": 200}}


class WarningThrottle:
    """Logs a message at most once per interval per key (Kong: per worker, per queue+message)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 interval: float = MIN_WARNING_INTERVAL_SECONDS) -> None:
        self.clock = clock
        self.interval = interval
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def should_log(self, key: str) -> bool:
        """True when ``key`` was never logged or last logged at least ``interval`` ago."""
        now = self.clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                return False
            self._last[key] = now
            return True

    def reset(self) -> None:
        """Forget every key (after fork, and in tests)."""
        with self._lock:
            self._last.clear()


def legacy_overrides(plugin_config: Mapping[str, Any]) -> list[LegacyRule]:
    """The legacy rules that apply to this config (set and different from the old default)."""
    active = []
    for rule in LEGACY_RULES:
        value = plugin_config.get(rule.field)
        if value is not None and value != rule.old_default:
            active.append(rule)
    return active


def get_plugin_params(
    plugin_name: str,
    plugin_config: Mapping[str, Any],
    queue_name: str | None = None,
    *,
    plugin_id: str | None = None,
    instance_name: str | None = None,
    throttle: WarningThrottle | None = None,
) -> QueueConfig:
    """Kong's ``Queue.get_plugin_params``: the queue config a plugin instance enqueues with.

    ``plugin_id`` defaults to ``plugin_config["id"]`` if present, else the plugin name; the queue
    name is ``queue.name``, else ``queue_name``, else the plugin id. Raises ``ValueError`` or
    ``TypeError`` naming the field when the ``queue`` record is invalid.
    """
    if not isinstance(plugin_config, Mapping):
        raise TypeError(f"plugin_config must be a dict, not {type(plugin_config).__name__}")
    pid = plugin_id or str(plugin_config.get("id") or plugin_name)
    inst = instance_name or plugin_config.get("plugin_instance_name")
    record = plugin_config.get("queue")
    defaults = RECORD_DEFAULTS.get(plugin_name) if record is None else None
    values = validate_queue_record(record, defaults=defaults, allow_extra=True)
    log_tag = f"{plugin_name} plugin {pid}" + (f" ({inst})" if inst else "")
    name = (record or {}).get("name") or queue_name or pid
    for rule in legacy_overrides(plugin_config):
        if rule.target is not None:
            values[rule.target] = plugin_config[rule.field]
        if throttle is None:
            from relayq.queue._default import default_runtime

            throttle = default_runtime().warning_throttle
        if throttle.should_log(f"{name}/{rule.message}"):
            log.warning("%s", rule.message)
    return QueueConfig(name=name, log_tag=log_tag, **values)
