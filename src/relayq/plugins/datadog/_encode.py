"""datadog's wire format, pure: serialized requests in, DogStatsD lines out.

``<prefix>.<stat>:<value>|<type>[|@rate]|#<tags>`` with tags in Kong's order: the service tag
(service name, else host, dots as ``_``; empty without a service), the status tag (``-`` without
a status), the consumer tag when the metric's identifier yields a value (``consumer_id`` with
dashes as ``_``), then the metric's own tags. Unlike statsd, -1 values are sent.
A missing value (which Kong would print as ``nil``) skips the line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from relayq.plugins.statsd._encode import SIMPLE_METRICS, STAT_CODES, _number, _rate, show

DATADOG_CODES = {**STAT_CODES, "distribution": "d"}


@dataclass(frozen=True)
class Metric:
    """One configured metric."""

    name: str
    stat: str  # Kong's stat name (request.count, latency, ...)
    code: str  # the stat type's line code (c, ms, d, ...)
    sample_rate: float | None
    consumer_identifier: str | None
    tags: tuple[str, ...]


# (value reader, "<prefix>.<stat>:", "|<type>[|@rate]", ",<own tags>", consumer identifier)
_Step = tuple[Callable[[Mapping[str, Any]], Any], str, str, str, str | None]


@dataclass(frozen=True)
class Settings:
    """What the encoder needs from a validated datadog config, computed once per instance."""

    prefix: str
    service_name_tag: str
    status_tag: str
    consumer_tag: str
    metrics: tuple[Metric, ...]
    _plan: tuple[_Step, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Per metric, what its line takes from the request (the value reader) and the parts
        # that never change: "<prefix>.<stat>:", "|<type>[|@rate]" and ",<own tags>".
        plan = tuple(
            (
                SIMPLE_METRICS[m.name][1],
                f"{self.prefix}.{m.stat}:",
                f"|{m.code}{_rate(m.sample_rate)}",
                "," + ",".join(m.tags) if m.tags else "",
                m.consumer_identifier,
            )
            for m in self.metrics
        )
        object.__setattr__(self, "_plan", plan)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Settings:
        return cls(
            prefix=config["prefix"],
            service_name_tag=config["service_name_tag"],
            status_tag=config["status_tag"],
            consumer_tag=config["consumer_tag"],
            metrics=tuple(
                Metric(
                    name=m["name"],
                    stat=SIMPLE_METRICS[m["name"]][0],
                    code=DATADOG_CODES[m["stat_type"]],
                    sample_rate=m.get("sample_rate"),
                    consumer_identifier=m.get("consumer_identifier"),
                    tags=tuple(m.get("tags") or ()),
                )
                for m in config["metrics"]
            ),
        )


def consumer_tag_value(kind: str | None, consumer: Mapping[str, Any] | None) -> Any:
    """The consumer's identifier for the consumer tag; ``consumer_id`` with ``-`` as ``_``."""
    if kind is None or not consumer:
        return None
    if kind == "consumer_id":
        value = consumer.get("id")
        return None if value is None else str(value).replace("-", "_")
    return consumer.get("custom_id" if kind == "custom_id" else "username")


def service_tag_value(service: Mapping[str, Any] | None) -> str:
    """Service name, else host, with dots as underscores; ``""`` without a service."""
    if not service:
        return ""
    return str(service.get("name") or service.get("host") or "").replace(".", "_")


def format_line(
    prefix: str, stat: str, value: Any, code: str, sample_rate: float | None, tags: Sequence[str]
) -> str:
    """One DogStatsD line."""
    rate = f"|@{show(sample_rate)}" if sample_rate is not None and sample_rate != 1 else ""
    tag_text = "|#" + ",".join(tags) if tags else ""
    return f"{prefix}.{stat}:{show(value)}|{code}{rate}{tag_text}"


def metric_lines(settings: Settings, message: Mapping[str, Any]) -> list[str]:
    """Every DogStatsD line one serialized request produces, in configured metric order."""
    service = f"{settings.service_name_tag}:{service_tag_value(message.get('service'))}"
    status_value = (message.get("response") or {}).get("status")
    status = f"{settings.status_tag}:{'-' if status_value is None else show(status_value)}"
    consumer = message.get("consumer")
    # format_line's output, with the parts every metric of the request shares built once
    shared = f"|#{service},{status}"
    consumer_tags: dict[str | None, str] = {}  # identifier kind -> ",<tag>:<id>" or ""
    lines = []
    for read, head, kind_text, own, identifier in settings._plan:
        value = read(message)
        if value is None:
            continue
        consumer_tag = consumer_tags.get(identifier)
        if consumer_tag is None:
            consumer_id = consumer_tag_value(identifier, consumer)
            consumer_tag = consumer_tags[identifier] = (
                "" if consumer_id is None else f",{settings.consumer_tag}:{show(consumer_id)}"
            )
        lines.append(f"{head}{_number(value)}{kind_text}{shared}{consumer_tag}{own}")
    return lines
