"""Per-request plugin driving shared by the ASGI and WSGI middleware.

Both middleware do the same three things around an application: build plugin instances once
from a Kong-style ``plugins`` list, run the ``access``, ``header_filter`` and ``log`` phases in
Kong's priority order on one ``RequestContext`` per request, and measure the request the way
Kong's log serializer reports it. Keeping that here means the two hosts differ only in how they
observe their protocol, and a plugin bug behaves the same under both: it is logged (throttled)
and counted, and never breaks the request.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from relayq.plugins import Plugin, PluginConfigError, create_plugin
from relayq.serializer import HeaderValue, RequestContext

log = logging.getLogger("relayq.host")

PHASES = ("access", "header_filter", "log")

# Keys of a Kong ``plugins[]`` item the middleware uses, and those that only make sense in a
# gateway (they scope a plugin to routes, services, consumers or protocols) but are accepted so
# that an item copied from a kong.yml works unchanged.
_USED_KEYS = frozenset({"name", "config", "id", "instance_name", "enabled"})
_GATEWAY_ONLY_KEYS = frozenset({"tags", "protocols", "ordering", "created_at", "updated_at"})

# Plugin ids that were not given are derived from the item, so a restarted process keeps the
# same queue names (a plugin's queue is named after its id) and the same metric labels.
_ID_NAMESPACE = uuid.UUID("6f1c2a52-6d0e-4d53-9a51-2b8f0d7c9e10")

# A failing plugin on a busy server would otherwise log once per request.
ERROR_LOG_INTERVAL = 60.0


class RuntimeLike(Protocol):
    """The part of ``relayq.Runtime`` the hosts use: snapshots and a bounded async close."""

    def stats(self) -> Mapping[str, Any]: ...

    async def aclose(self, timeout: float | None = None) -> int: ...


class PluginsConfigError(ValueError):
    """The ``plugins`` list is invalid; ``errors`` lists every problem with its path."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("invalid plugins list:\n  " + "\n  ".join(self.errors))


def build_plugins(items: Iterable[Mapping[str, Any]], *, runtime: Any = None) -> list[Plugin]:
    """Validate a Kong-style ``plugins[]`` list and build the enabled plugins, by priority.

    Every problem is collected before raising, so a user fixes the whole list in one go.
    Plugins run in descending Kong priority; equal priorities keep the list order.
    """
    if isinstance(items, (str, bytes, Mapping)):
        raise PluginsConfigError(["plugins: must be a list of plugin objects"])
    errors: list[str] = []
    built: list[Plugin] = []
    seen_ids: set[str] = set()
    for index, item in enumerate(items):
        where = f"plugins[{index}]"
        if not isinstance(item, Mapping):
            errors.append(f"{where}: must be an object with 'name' and 'config'")
            continue
        item_errors = _check_item(where, item)
        errors.extend(item_errors)
        name, config = item.get("name"), item.get("config") or {}
        if not name or not isinstance(name, str) or not isinstance(config, Mapping):
            continue  # nothing to validate the config against
        if item.get("enabled", True) is False:
            continue
        plugin_id = str(item.get("id") or _derived_id(index, item))
        if plugin_id in seen_ids:
            errors.append(f"{where}.id: duplicate plugin id {plugin_id!r}")
            continue
        seen_ids.add(plugin_id)
        try:
            plugin = create_plugin(
                name,
                config,
                plugin_id=plugin_id,
                instance_name=item.get("instance_name"),
                runtime=runtime,
            )
        except PluginConfigError as exc:
            errors.extend(f"{where}.config.{path}: {msg}" for path, msg in exc.errors.items())
            continue
        except KeyError as exc:
            errors.append(f"{where}.name: {exc.args[0] if exc.args else exc}")
            continue
        except (TypeError, ValueError) as exc:
            errors.append(f"{where}.config: {exc}")
            continue
        built.append(plugin)
    if errors:
        raise PluginsConfigError(errors)
    return sorted(built, key=lambda p: -p.priority)


def _check_item(where: str, item: Mapping[str, Any]) -> list[str]:
    errors = [
        f"{where}.{key}: unknown field"
        for key in item
        if key not in _USED_KEYS | _GATEWAY_ONLY_KEYS
    ]
    name = item.get("name")
    if not isinstance(name, str) or not name:
        errors.append(f"{where}.name: required, a plugin name such as 'http-log'")
    config = item.get("config")
    if config is not None and not isinstance(config, Mapping):
        errors.append(f"{where}.config: must be an object")
    for key in ("id", "instance_name"):
        if item.get(key) is not None and not isinstance(item[key], str):
            errors.append(f"{where}.{key}: must be a string")
    if not isinstance(item.get("enabled", True), bool):
        errors.append(f"{where}.enabled: must be a boolean")
    return errors


def _derived_id(index: int, item: Mapping[str, Any]) -> uuid.UUID:
    return uuid.uuid5(_ID_NAMESPACE, f"{index}:{item['name']}:{item.get('instance_name') or ''}")


class PluginChain:
    """Runs one phase of every plugin on a context; a plugin that raises is logged and counted.

    Shared by every request of one middleware instance, possibly from many threads (WSGI), so
    the error counters are guarded by a lock; the lock is only taken when a plugin fails.
    """

    def __init__(self, plugins: Sequence[Plugin]) -> None:
        self.plugins: tuple[Plugin, ...] = tuple(plugins)
        self._errors: Counter[tuple[str, str]] = Counter()
        self._last_logged: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    @property
    def errors(self) -> dict[tuple[str, str], int]:
        """Exceptions raised so far, by (plugin id, phase)."""
        with self._lock:
            return dict(self._errors)

    def access(self, ctx: RequestContext) -> None:
        """Kong's access phase: before the application sees the request."""
        for plugin in self.plugins:
            try:
                plugin.access(ctx)
            except Exception as exc:
                self._failed(plugin, "access", exc)

    def header_filter(self, ctx: RequestContext) -> None:
        """Kong's header_filter phase: status and headers known, nothing sent yet."""
        for plugin in self.plugins:
            try:
                plugin.header_filter(ctx)
            except Exception as exc:
                self._failed(plugin, "header_filter", exc)

    def log(self, ctx: RequestContext) -> None:
        """Kong's log phase: the response is complete; plugins build and enqueue entries."""
        for plugin in self.plugins:
            try:
                plugin.log(ctx)
            except Exception as exc:
                self._failed(plugin, "log", exc)

    def _failed(self, plugin: Plugin, phase: str, exc: Exception) -> None:
        key = (plugin.id, phase)
        now = time.monotonic()
        with self._lock:
            self._errors[key] += 1
            count = self._errors[key]
            last = self._last_logged.get(key)
            due = last is None or now - last >= ERROR_LOG_INTERVAL
            if due:
                self._last_logged[key] = now
        if due:
            log.error(
                "%s plugin %s failed in the %s phase (%d failures so far); request unaffected",
                plugin.name,
                plugin.id,
                phase,
                count,
                exc_info=exc,
            )


class Stopwatch:
    """Phase boundaries of one request as epoch nanoseconds, measured on a monotonic clock.

    The epoch is read once at the start; later marks add monotonic offsets to it, so the
    timestamps are ordered and their differences are true durations even if the wall clock
    jumps during the request.
    """

    __slots__ = ("_epoch_ns", "_mono_ns", "ctx")

    def __init__(self, ctx: RequestContext) -> None:
        self.ctx = ctx
        self._epoch_ns = time.time_ns()
        self._mono_ns = time.perf_counter_ns()
        ctx.started_at = self._epoch_ns / 1e9
        ctx.timestamps["request_start"] = self._epoch_ns

    def mark(self, key: str) -> int:
        """Record ``key`` as now (epoch ns) and return it."""
        value = self._epoch_ns + (time.perf_counter_ns() - self._mono_ns)
        self.ctx.timestamps[key] = value
        return value

    def mark_once(self, key: str) -> int:
        """Record ``key`` unless it is already recorded; return the recorded value."""
        existing = self.ctx.timestamps.get(key)
        return existing if existing is not None else self.mark(key)

    def ms(self, start: str, end: str) -> float:
        """Milliseconds between two recorded marks, or 0.0 when one is missing."""
        ts = self.ctx.timestamps
        if start not in ts or end not in ts:
            return 0.0
        return max(0, ts[end] - ts[start]) / 1e6

    def finish(self) -> None:
        """Fill the latencies Kong's serializer reports, from the marks recorded so far."""
        ctx = self.ctx
        self.mark_once("response_end")
        ctx.kong_latency = self.ms("request_start", "access_end")
        if "upstream_start" in ctx.timestamps and "upstream_first_byte" in ctx.timestamps:
            ctx.proxy_latency = self.ms("upstream_start", "upstream_first_byte")
            ctx.receive_latency = self.ms("upstream_first_byte", "response_end")
        ctx.request_latency = self.ms("request_start", "response_end")


def new_request_id() -> str:
    """A request id shaped like Kong's ``X-Kong-Request-Id``: 32 lower-case hex digits."""
    return uuid.uuid4().hex


def add_header(headers: dict[str, HeaderValue], name: str, value: str) -> None:
    """Add one header to a lower-case header dict; a repeated name becomes a list (like Kong)."""
    existing = headers.get(name)
    if existing is None:
        headers[name] = value
    elif isinstance(existing, list):
        existing.append(value)
    else:
        headers[name] = [existing, value]


def headers_from_pairs(pairs: Iterable[tuple[bytes, bytes]]) -> dict[str, HeaderValue]:
    """Lower-case header dict from raw (name, value) byte pairs, decoded as Latin-1 (RFC 9110)."""
    headers: dict[str, HeaderValue] = {}
    for name, value in pairs:
        add_header(headers, name.decode("latin-1").lower(), value.decode("latin-1"))
    return headers


def head_size(first_line: str, pairs: Iterable[tuple[str, str]]) -> int:
    """Bytes of an HTTP/1.1 head: the first line, ``name: value`` lines and the blank line."""
    return len(first_line) + 2 + sum(len(n) + len(v) + 4 for n, v in pairs) + 2


def split_host(host_header: str, default: str) -> str:
    """The Host header without its port (Kong's ``$host``); IPv6 literals keep brackets."""
    host = host_header.strip().lower()
    if not host:
        return default
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def request_head_size(ctx: RequestContext) -> int:
    """Bytes of the request line and headers as the client sent them (``$request_length``)."""
    target = ctx.path + (f"?{ctx.query_string}" if ctx.query_string else "")
    pairs = (
        (name, value)
        for name, values in ctx.headers.items()
        for value in (values if isinstance(values, list) else [values])
    )
    return head_size(f"{ctx.method} {target} HTTP/{ctx.http_version}", pairs)


def content_length(headers: Mapping[str, HeaderValue]) -> int:
    """The request's declared body length, or 0 when absent or malformed."""
    value = headers.get("content-length")
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return 0
