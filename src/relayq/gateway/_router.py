"""Route selection with Kong's precedence (the ``traditional_compatible`` router of Kong 3.x).

Kong splits a route with several paths into one candidate per path and orders candidates by a
priority it packs into 64 bits (``kong/router/compat.lua``'s ``get_priority``); the first
candidate whose every field matches wins. The order, most significant first:

1. how many of ``methods``, ``hosts``, ``headers``, ``paths`` the route sets (more wins);
2. hosts all plain (no wildcard) beat hosts with a wildcard;
3. a regex path beats a prefix path;
4. more header conditions win;
5. among regex paths, the higher ``regex_priority``;
6. among prefix paths, the longer prefix.

Ties keep declaration order. Services that are disabled take their routes out of the router.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from relayq.gateway._entities import Route, Service
from relayq.gateway._paths import normalize, upstream_path
from relayq.gateway._regex import compile_path_regex
from relayq.serializer import HeaderValue


class RouteMatch(NamedTuple):
    """What the router found for a request."""

    route: Route
    service: Service | None
    matched_path: str | None  # the prefix, or the regex's matched text; None without paths
    upstream_path: str  # the path to send upstream (not yet escaped, no query)
    captures: Mapping[str, str]  # named groups of a regex path


HostMatcher = Callable[[str, str | None], bool]


def _host_matcher(pattern: str) -> HostMatcher:
    """``pattern`` is lower-case, possibly ``*.suffix`` / ``prefix.*``, possibly ``:port``."""
    want_port: str | None = None
    host = pattern
    if pattern.startswith("["):
        end = pattern.find("]")
        if pattern[end + 1:].startswith(":"):
            host, want_port = pattern[: end + 1], pattern[end + 2:]
    elif pattern.count(":") == 1:
        host, want_port = pattern.split(":")
    if host.startswith("*."):
        suffix = host[1:]

        def match(h: str, p: str | None) -> bool:
            return h.endswith(suffix) and len(h) > len(suffix) and (
                want_port is None or p == want_port)
    elif host.endswith(".*"):
        prefix = host[:-1]

        def match(h: str, p: str | None) -> bool:
            return h.startswith(prefix) and len(h) > len(prefix) and (
                want_port is None or p == want_port)
    else:

        def match(h: str, p: str | None) -> bool:
            return h == host and (want_port is None or p == want_port)

    return match


def _header_matcher(values: Sequence[str]) -> Callable[[Sequence[str]], bool]:
    """Kong compares header values lower-cased; a value starting with ``~*`` is a regex."""
    plain = frozenset(v for v in values if not v.startswith("~*"))
    regexes = [re.compile(v[2:], re.IGNORECASE) for v in values if v.startswith("~*")]

    def match(got: Sequence[str]) -> bool:
        return any(value in plain or any(r.search(value) for r in regexes) for value in got)

    return match


@dataclass(frozen=True, eq=False)
class _Candidate:
    route: Route
    service: Service | None
    path: str | None
    regex: re.Pattern[str] | None
    hosts: tuple[HostMatcher, ...]
    methods: frozenset[str]
    headers: tuple[tuple[str, Callable[[Sequence[str]], bool]], ...]
    priority: tuple[int, ...]


def _priority(route: Route, path: str | None) -> tuple[int, ...]:
    weight = sum(1 for f in (route.methods, route.hosts, route.headers, path) if f)
    plain_hosts = bool(route.hosts) and not any("*" in h for h in route.hosts)
    is_regex = path is not None and path.startswith("~")
    return (
        weight,
        int(plain_hosts),
        int(is_regex),
        len(route.headers),
        route.regex_priority if is_regex else 0,
        len(path) if path is not None and not is_regex else 0,
    )


def split_host_header(value: str) -> tuple[str, str | None]:
    """``Example.com:8000`` -> ``("example.com", "8000")``; IPv6 literals keep brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end != -1:
            rest = value[end + 1:]
            return value[: end + 1], rest[1:] if rest.startswith(":") else None
    if value.count(":") == 1:
        host, port = value.split(":")
        return host, port or None
    return value, None


class Router:
    """Selects the route for a request; built once per config (and again on reload)."""

    def __init__(self, routes: Sequence[Route], services: Sequence[Service]) -> None:
        by_id = {s.id: s for s in services}
        candidates: list[_Candidate] = []
        for route in routes:
            service = by_id.get(route.service_id) if route.service_id else None
            if service is not None and not service.enabled:
                continue
            for path in route.paths or (None,):
                regex = compile_path_regex(path[1:]) if path and path.startswith("~") else None
                candidates.append(_Candidate(
                    route=route,
                    service=service,
                    path=path,
                    regex=regex,
                    hosts=tuple(_host_matcher(h) for h in route.hosts),
                    methods=frozenset(route.methods),
                    headers=tuple((n, _header_matcher(v)) for n, v in route.headers.items()),
                    priority=_priority(route, path),
                ))
        candidates.sort(key=lambda c: (*tuple(-p for p in c.priority), c.route.position))
        self._candidates = tuple(candidates)

    def __len__(self) -> int:
        return len(self._candidates)

    def match(self, method: str, raw_path: str, host_header: str,
              headers: Mapping[str, HeaderValue] | None = None) -> RouteMatch | None:
        """The winning route for a request, or None (Kong answers 404 then).

        ``raw_path`` is the request path as sent (percent-encoded, no query string);
        ``host_header`` the Host header (or ``:authority``) as sent.
        """
        path = normalize(raw_path)
        host, port = split_host_header(host_header)
        for cand in self._candidates:
            if cand.methods and method not in cand.methods:
                continue
            if cand.hosts and not any(m(host, port) for m in cand.hosts):
                continue
            if cand.headers and not _headers_match(cand.headers, headers or {}):
                continue
            matched: str | None = None
            captures: Mapping[str, str] = {}
            if cand.regex is not None:
                found = cand.regex.match(path)
                if found is None:
                    continue
                matched = found.group(0)
                captures = {k: v for k, v in found.groupdict().items() if v is not None}
            elif cand.path is not None:
                if not path.startswith(cand.path):
                    continue
                matched = cand.path
            route = cand.route
            service_path = cand.service.path if cand.service else None
            return RouteMatch(
                route=route,
                service=cand.service,
                matched_path=matched,
                upstream_path=upstream_path(path, matched, route.strip_path, service_path,
                                            route.path_handling),
                captures=captures,
            )
        return None


def _headers_match(conditions: Sequence[tuple[str, Callable[[Sequence[str]], bool]]],
                   headers: Mapping[str, HeaderValue]) -> bool:
    for name, matcher in conditions:
        got = headers.get(name)
        if got is None:
            return False
        values = [v.lower() for v in got] if isinstance(got, list) else [got.lower()]
        if not matcher(values):
            return False
    return True
