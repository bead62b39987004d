"""statsd's wire format, pure: serialized requests in, StatsD lines and datagrams out.

Line shapes, metric names, skip rules and tag styles follow Kong 3.10's ``statsd`` plugin
(kong-plugins.md section 2). Where Kong's output depends on Lua table iteration order (tags),
relayq uses the order Kong inserts them in: service, route, workspace, consumer, node, status.
Numbers print as Lua's ``tostring`` does (``%.14g``).

Deliberate differences: ``status_count_per_user_per_route`` is skipped for a request without a
route (Kong raises, failing and retrying the whole batch); an empty workspace id or service name
counts as absent; ``shdict_usage`` emits nothing because there are no nginx shared dicts (Kong
with no shared dicts does the same); ``allow_status_codes`` ranges are read as whole numbers;
and packed datagrams never exceed ``udp_packet_size`` (Kong's can by one byte after a flush).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from relayq.plugins._luanum import lua_number

log = logging.getLogger("relayq.plugins")

_NUMBER = (int, float)  # isinstance with a tuple constant: `int | float` builds a union each call

STAT_CODES = {
    "gauge": "g",
    "counter": "c",
    "timer": "ms",
    "histogram": "h",
    "meter": "m",
    "set": "s",
}

# metric name -> (stat name, how to read its value from the serialized request)
SIMPLE_METRICS: dict[str, tuple[str, Callable[[Mapping[str, Any]], Any]]] = {
    "request_count": ("request.count", lambda m: 1),
    "request_size": ("request.size", lambda m: (m.get("request") or {}).get("size")),
    "response_size": ("response.size", lambda m: (m.get("response") or {}).get("size")),
    "latency": ("latency", lambda m: (m.get("latencies") or {}).get("request")),
    "upstream_latency": ("upstream_latency", lambda m: (m.get("latencies") or {}).get("proxy")),
    "kong_latency": ("kong_latency", lambda m: (m.get("latencies") or {}).get("kong")),
}


def show(value: Any) -> str:
    """A value as Lua's ``tostring`` prints it inside a StatsD line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, _NUMBER):
        return lua_number(value)
    return str(value)


def node_hostname() -> str:
    """This host's name with dots replaced by underscores (Kong's ``hostname``)."""
    return socket.gethostname().replace(".", "_")


def consumer_identifier(kind: str, consumer: Mapping[str, Any] | None) -> Any:
    """The consumer's id, custom_id or username; ``None`` without a consumer."""
    if not consumer:
        return None
    key = {"consumer_id": "id", "custom_id": "custom_id", "username": "username"}[kind]
    return consumer.get(key)


def service_identifier(kind: str, service: Mapping[str, Any] | None) -> Any:
    """The service's id, name, host, or name-or-host; ``None`` without a service."""
    if not service:
        return None
    if kind == "service_name_or_host":
        return service.get("name") or service.get("host")
    key = {"service_id": "id", "service_name": "name", "service_host": "host"}[kind]
    return service.get(key)


def workspace_identifier(kind: str, message: Mapping[str, Any]) -> Any:
    """The request's workspace id or name; ``None`` when empty."""
    value = message.get("workspace" if kind == "workspace_id" else "workspace_name")
    return value or None


def format_line(
    prefix: str,
    stat: str,
    value: Any,
    kind: str,
    sample_rate: float | None,
    tags: Sequence[tuple[str, Any]] | None = None,
    style: str | None = None,
) -> str:
    """One StatsD line: ``<prefix>.<stat>:<value>|<kind>[|@rate]`` plus tags in ``style``."""
    rate = f"|@{show(sample_rate)}" if sample_rate is not None and sample_rate != 1 else ""
    if style is None or tags is None:
        return f"{prefix}.{stat}:{show(value)}|{kind}{rate}"
    if style == "dogstatsd":
        text = ",".join(f"{k}:{show(v)}" for k, v in tags)
        return f"{prefix}.{stat}:{show(value)}|{kind}{rate}|#{text}"
    text = ",".join(f"{k}={show(v)}" for k, v in tags)
    if style == "influxdb":
        return f"{prefix}.{stat},{text}:{show(value)}|{kind}{rate}"
    if style == "librato":
        return f"{prefix}.{stat}#{text}:{show(value)}|{kind}{rate}"
    if style == "signalfx":
        return f"{prefix}.{stat}[{text}]:{show(value)}|{kind}{rate}"
    raise ValueError(f"unknown tag style {style!r}")


@dataclass(frozen=True)
class Metric:
    """One configured metric with its identifiers resolved against the ``*_default`` fields."""

    name: str
    code: str  # the stat type's line code (c, g, ms, ...)
    sample_rate: float | None
    consumer: str
    service: str
    workspace: str


# _plain_lines's kinds of metric
_SIMPLE, _STATUS, _WORKSPACE, _CONSUMER, _UNIQUE, _SKIP = range(6)
_SPECIAL_KINDS = {
    "status_count": _STATUS,
    "status_count_per_workspace": _WORKSPACE,
    "unique_users": _UNIQUE,
    "request_per_user": _CONSUMER,
    "status_count_per_user": _CONSUMER,
    "status_count_per_user_per_route": _CONSUMER,
}
# (kind, metric, value reader of a simple metric, ".<stat>:", "|<type>[|@rate]")
_Step = tuple[int, Metric, Callable[[Mapping[str, Any]], Any] | None, str, str]


@dataclass(frozen=True)
class Settings:
    """What the encoder needs from a validated statsd config, computed once per instance."""

    prefix: str  # Kong's conf._prefix: with ".node.<hostname>" in non-tag mode if configured
    metrics: tuple[Metric, ...]
    tag_style: str | None
    hostname: str
    # per metric, what does not change from request to request (see _plain_lines)
    _plan: tuple[_Step, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        plan = []
        for m in self.metrics:
            simple = SIMPLE_METRICS.get(m.name)
            kind = _SIMPLE if simple is not None else _SPECIAL_KINDS.get(m.name, _SKIP)
            stat, read = simple if simple is not None else ("", None)
            # Kong sends the status and per-user counters as counters whatever the stat type
            tail = f"|{m.code if kind == _SIMPLE else 'c'}{_rate(m.sample_rate)}"
            plan.append((kind, m, read, f".{stat}:" if stat else "", tail))
        object.__setattr__(self, "_plan", tuple(plan))

    @classmethod
    def from_config(cls, config: Mapping[str, Any], hostname: str | None = None) -> Settings:
        host = node_hostname() if hostname is None else hostname
        prefix = config["prefix"]
        if config["hostname_in_prefix"] and config["tag_style"] is None:
            prefix = f"{prefix}.node.{host}"
        metrics = tuple(
            Metric(
                name=m["name"],
                code=STAT_CODES[m["stat_type"]],
                sample_rate=m.get("sample_rate"),
                consumer=m.get("consumer_identifier") or config["consumer_identifier_default"],
                service=m.get("service_identifier") or config["service_identifier_default"],
                workspace=m.get("workspace_identifier") or config["workspace_identifier_default"],
            )
            for m in config["metrics"]
        )
        return cls(prefix=prefix, metrics=metrics, tag_style=config["tag_style"], hostname=host)


def scope_name(metric: Metric, message: Mapping[str, Any]) -> str:
    """Non-tag mode's scope: ``service.<id with dots as _>``, ``service.unnamed`` or
    ``global.unmatched``."""
    service = message.get("service")
    if not service:
        return "global.unmatched"
    name = service_identifier(metric.service, service)
    if name is None or name == "":
        return "service.unnamed"
    return "service." + str(name).replace(".", "_")


def tags_for(
    settings: Settings, metric: Metric, message: Mapping[str, Any]
) -> list[tuple[str, Any]] | None:
    """Tag mode's tags in Kong's insertion order; ``None`` (no tags) without a service."""
    service_id = service_identifier(metric.service, message.get("service"))
    if service_id is None or service_id == "":
        return None
    tags: list[tuple[str, Any]] = [("service", service_id)]
    route = message.get("route")
    if route:
        route_name = route.get("name") or route.get("id")
        if route_name is not None:
            tags.append(("route", route_name))
    workspace = workspace_identifier(metric.workspace, message)
    if workspace is not None:
        tags.append(("workspace", workspace))
        consumer = consumer_identifier(metric.consumer, message.get("consumer"))
        if consumer is not None:
            tags.append(("consumer", consumer))
    if settings.hostname:
        tags.append(("node", settings.hostname))
    status = (message.get("response") or {}).get("status")
    if status is not None:
        tags.append(("status", status))
    return tags


def _special_line(
    settings: Settings, metric: Metric, scope: str, message: Mapping[str, Any]
) -> str | None:
    """Non-tag mode's special metrics (status and per-user/per-workspace/per-route counters)."""
    prefix = settings.prefix
    status = show((message.get("response") or {}).get("status"))
    name = metric.name
    if name == "status_count":
        return format_line(prefix, f"{scope}.status.{status}", 1, "c", metric.sample_rate)
    if name == "status_count_per_workspace":
        workspace = workspace_identifier(metric.workspace, message)
        if workspace is None:
            return None
        stat = f"{scope}.workspace.{workspace}.status.{status}"
        return format_line(prefix, stat, 1, "c", metric.sample_rate)
    consumer = consumer_identifier(metric.consumer, message.get("consumer"))
    if consumer is None:
        return None
    if name == "unique_users":
        return format_line(prefix, f"{scope}.user.uniques", consumer, "s", None)
    if name == "request_per_user":
        stat = f"{scope}.user.{show(consumer)}.request.count"
        return format_line(prefix, stat, 1, "c", metric.sample_rate)
    if name == "status_count_per_user":
        stat = f"{scope}.user.{show(consumer)}.status.{status}"
        return format_line(prefix, stat, 1, "c", metric.sample_rate)
    if name == "status_count_per_user_per_route":
        route_id = (message.get("route") or {}).get("id")
        if route_id is None:
            return None
        stat = f"route.{route_id}.user.{show(consumer)}.status.{status}"
        return format_line(prefix, stat, 1, "c", metric.sample_rate)
    return None


def metric_lines(settings: Settings, message: Mapping[str, Any]) -> list[str]:
    """Every StatsD line one serialized request produces, in configured metric order."""
    if settings.tag_style is None:
        return _plain_lines(settings, message)
    return _generic_lines(settings, message)


def _number(value: Any) -> str:
    """``show`` for a metric value, with the common cases (small int, finite float) first."""
    kind = type(value)
    if kind is int and -_LUA_INT_LIMIT < value < _LUA_INT_LIMIT:
        return str(value)
    if kind is float and value - value == 0.0:  # finite: nan and inf fail this
        return f"{value:.14g}"
    return show(value)


_LUA_INT_LIMIT = 10**14


def _rate(sample_rate: float | None) -> str:
    return f"|@{show(sample_rate)}" if sample_rate is not None and sample_rate != 1 else ""


def _plain_lines(settings: Settings, message: Mapping[str, Any]) -> list[str]:
    """``metric_lines`` without tags (the default): the lines ``_generic_lines`` builds, with
    the constant parts of each line prepared once per config and what the metrics of one
    request share (scope, status, consumer) looked up once. This runs for every request a
    gateway serves."""
    lines: list[str] = []
    prefix = settings.prefix
    scopes: dict[str, str] = {}
    consumers: dict[str, Any] = {}
    status: str | None = None
    for kind, metric, read, stat, tail in settings._plan:
        if kind == _SKIP:
            continue
        scope = scopes.get(metric.service)
        if scope is None:
            scope = scopes[metric.service] = scope_name(metric, message)
        if read is not None:
            value = read(message)
            if value is None or value == -1:
                continue
            lines.append(f"{prefix}.{scope}{stat}{_number(value)}{tail}")
            continue
        if status is None:
            status = show((message.get("response") or {}).get("status"))
        if kind == _STATUS:
            lines.append(f"{prefix}.{scope}.status.{status}:1{tail}")
            continue
        if kind == _WORKSPACE:
            workspace = workspace_identifier(metric.workspace, message)
            if workspace is not None:
                lines.append(f"{prefix}.{scope}.workspace.{workspace}.status.{status}:1{tail}")
            continue
        if metric.consumer in consumers:
            consumer = consumers[metric.consumer]
        else:
            consumer = consumers[metric.consumer] = consumer_identifier(
                metric.consumer, message.get("consumer"))
        if consumer is None:
            continue
        line = _special_line(settings, metric, scope, message)
        if line is not None:
            lines.append(line)
    return lines


def _generic_lines(settings: Settings, message: Mapping[str, Any]) -> list[str]:
    """``metric_lines`` for every tag style, metric by metric."""
    lines: list[str] = []
    style = settings.tag_style
    for metric in settings.metrics:
        simple = SIMPLE_METRICS.get(metric.name)
        if simple is None:
            if style is None and metric.name != "shdict_usage":
                line = _special_line(settings, metric, scope_name(metric, message), message)
                if line is not None:
                    lines.append(line)
            continue
        stat, read = simple
        value = read(message)
        if value is None or value == -1:
            continue
        if style is None:
            stat = f"{scope_name(metric, message)}.{stat}"
            lines.append(format_line(settings.prefix, stat, value, metric.code, metric.sample_rate))
        else:
            tags = tags_for(settings, metric, message)
            lines.append(
                format_line(
                    settings.prefix, stat, value, metric.code, metric.sample_rate, tags, style
                )
            )
    return lines


def pack_datagrams(lines: Iterable[bytes], size: int) -> list[bytes]:
    """Join lines with ``\\n`` into datagrams of at most ``size`` bytes (``size`` 0: one line
    each). A line longer than ``size`` travels alone, with Kong's warning."""
    if size <= 0:
        return list(lines)
    datagrams: list[bytes] = []
    buffer: list[bytes] = []
    used = 0
    for line in lines:
        if len(line) > size:
            log.warning(
                "[statsd] configured udp_packet_size is smaller than single message of length %d, "
                "UDP packet may be truncated",
                len(line),
            )
        needed = len(line) if not buffer else used + 1 + len(line)
        if buffer and needed > size:
            datagrams.append(b"\n".join(buffer))
            buffer = []
            needed = len(line)
        buffer.append(line)
        used = needed
    if buffer:
        datagrams.append(b"\n".join(buffer))
    return datagrams
