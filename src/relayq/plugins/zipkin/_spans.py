"""Zipkin spans as Kong's plugin builds them, and their Zipkin v2 JSON shape.

Times are integer microseconds since the epoch (Kong floors ``ngx.now() * 1e6``). A span is
mutable while its request is in flight (tags and annotations accumulate phase by phase) and is
turned into the JSON-ready dict Kong's reporter enqueues by :meth:`ZipkinSpan.to_zipkin`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from relayq.plugins._luanum import lua_number
from relayq.plugins._propagation import new_span_id

_NUMBER = (int, float)  # isinstance with a tuple constant: `int | float` builds a union each call
_LUA_INT_LIMIT = 10**14  # below it, Lua prints an integer as Python's str() does

SERVER = "SERVER"
CLIENT = "CLIENT"


def tag_text(value: Any) -> str:
    """A tag value as Lua's ``tostring`` renders it (Zipkin tag values are strings)."""
    kind = type(value)
    if kind is str:
        return str(value)
    if kind is int and -_LUA_INT_LIMIT < value < _LUA_INT_LIMIT:  # status codes, try numbers
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, _NUMBER):
        return lua_number(value)
    return str(value)


@dataclass(slots=True)
class ZipkinSpan:
    """One span under construction (Kong's ``kong.plugins.zipkin.span``)."""

    kind: str
    name: str
    trace_id: bytes
    span_id: bytes
    parent_id: bytes | None
    timestamp: int
    should_sample: bool
    duration: int | None = None
    tags: dict[str, Any] = field(default_factory=dict)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    ip: str | None = None
    port: int | None = None
    service_name: str | None = None

    def child(self, kind: str, name: str, timestamp: int) -> ZipkinSpan:
        """A span in the same trace whose parent is this one."""
        # Positional, in field order (kind, name, trace_id, span_id, parent_id, timestamp,
        # should_sample): a class called with keywords costs twice as much, and the proxy
        # span is made for every request.
        return ZipkinSpan(
            kind,
            name,
            self.trace_id,
            new_span_id(),
            self.span_id,
            int(timestamp),
            self.should_sample,
        )

    def set_tag(self, key: str, value: Any) -> None:
        """Set a tag; ``None`` removes it (Kong's ``set_tag(key, nil)``)."""
        if value is None:
            self.tags.pop(key, None)
        else:
            self.tags[key] = value

    def annotate(self, value: str, timestamp: int) -> None:
        """Add a ``{value, timestamp}`` annotation."""
        self.annotations.append({"value": value, "timestamp": int(timestamp)})

    def annotate_all(self, values: Iterable[str], timestamp: int) -> None:
        """``annotate(value, timestamp)`` for each of ``values``, in order, in one call."""
        timestamp = int(timestamp)
        append = self.annotations.append
        for value in values:
            append({"value": value, "timestamp": timestamp})

    def finish(self, end: int) -> None:
        """Set the duration. Zipkin's model requires at least 1 µs ("durations of less than one
        are rounded up"), so a sub-microsecond or clock-stepped span reports 1, not 0."""
        self.duration = max(1, int(end) - self.timestamp)

    def to_zipkin(
        self, local_service_name: str, default_service_name: str | None
    ) -> dict[str, Any]:
        """The Zipkin v2 span (Kong's reporter): lowercase hex ids, ``parentId``, ``tags`` and
        ``annotations`` omitted when absent, ``remoteEndpoint`` JSON null without a port or a
        service name, ``ipv6`` for addresses containing ``:``."""
        service_name = self.service_name or default_service_name
        remote: dict[str, Any] | None = None
        if self.port or service_name:
            remote = {}
            if service_name:
                remote["serviceName"] = service_name
            if self.port:
                remote["port"] = self.port
            if self.ip:
                remote["ipv6" if ":" in self.ip else "ipv4"] = self.ip
        span: dict[str, Any] = {"traceId": self.trace_id.hex(), "name": self.name}
        if self.parent_id is not None:
            span["parentId"] = self.parent_id.hex()
        span["id"] = self.span_id.hex()
        span["kind"] = self.kind
        span["timestamp"] = self.timestamp
        span["duration"] = self.duration if self.duration is not None else 1
        span["localEndpoint"] = {"serviceName": local_service_name}
        span["remoteEndpoint"] = remote
        tags: dict[str, str] = {}
        for key, value in self.tags.items():
            text = value if type(value) is str else tag_text(value)
            if text:
                tags[key] = text
        if tags:
            span["tags"] = tags
        if self.annotations:
            span["annotations"] = list(self.annotations)
        return span


_TAG_ITEM = re.compile(r"\s*(\S+)\s*=\s*(.*\S)\s*", re.DOTALL)


def parse_request_tags(values: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """Tags from the ``tags_header`` request header(s): ``k=v; k2=v2`` (Kong's request_tags).

    Returns the tags and the items that could not be parsed (Kong warns about those and keeps
    the rest).
    """
    tags: dict[str, str] = {}
    errors: list[str] = []
    for value in values:
        for item in value.split(";"):
            if item == "":
                continue
            m = _TAG_ITEM.fullmatch(item)
            if m is None:
                errors.append(item)
            else:
                tags[m[1]] = m[2]
    return tags, errors


def header_values(headers: Mapping[str, Any], name: str) -> list[str]:
    """The values of one request header (lower-case lookup), repeated or not."""
    value = headers.get(name.lower())
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, str)]
    return []
