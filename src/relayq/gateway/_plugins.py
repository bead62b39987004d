"""Which configured plugins run for a request, in which order, and running their phases.

Kong runs plugins by descending priority. For each plugin name, the one configuration that
applies is the most specific one for the request's route, service and consumer (Kong 3's
precedence: consumer+route+service, consumer+route, consumer+service, route+service, consumer,
route, service, global). The consumer is only known once an authentication plugin (key-auth,
priority 1250) has run, so the choice is made plugin by plugin during the access phase, exactly
as Kong's collecting iterator does; the chosen list then drives ``header_filter`` and ``log``.

A plugin that raises never breaks the request: the error is logged (at most once a minute per
plugin and phase) and counted.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from relayq.gateway._entities import GatewayConfig, PluginEntity
from relayq.gateway._keyauth import Credentials, KeyAuth
from relayq.plugins import Plugin, create_plugin
from relayq.serializer import RequestContext

log = logging.getLogger("relayq.gateway")

ERROR_LOG_INTERVAL = 60.0
SELECT_CACHE_SIZE = 65536

Scope = tuple[str | None, str | None, str | None]  # (route id, service id, consumer id)


@dataclass(frozen=True, eq=False)
class Bound:
    """A built plugin instance with the entity it came from."""

    entity: PluginEntity
    instance: Plugin | KeyAuth

    @property
    def name(self) -> str:
        return self.entity.name


def _combos(route: str | None, service: str | None, consumer: str | None) -> list[Scope]:
    """Lookup keys from most to least specific, skipping those that need a missing id."""
    order: list[Scope] = [
        (route, service, consumer),
        (route, None, consumer),
        (None, service, consumer),
        (route, service, None),
        (None, None, consumer),
        (route, None, None),
        (None, service, None),
        (None, None, None),
    ]
    out: list[Scope] = []
    for combo in order:
        needed = (
            (combo[0] is None or route is not None)
            and (combo[1] is None or service is not None)
            and (combo[2] is None or consumer is not None)
        )
        if needed and combo not in out:
            out.append(combo)
    return out


class PluginIndex:
    """Every enabled plugin of one config, built once, indexed by name and scope."""

    def __init__(self, config: GatewayConfig, credentials: Credentials, *, runtime: Any = None,
                 factory: Callable[..., Plugin] = create_plugin) -> None:
        self.by_name: dict[str, dict[Scope, Bound]] = {}
        priorities: dict[str, int] = {}
        self.bound: list[Bound] = []
        for entity in config.plugins:
            if not entity.enabled:
                continue
            instance: Plugin | KeyAuth
            if entity.name == KeyAuth.name:
                instance = KeyAuth(entity.id, entity.config, credentials)
            else:
                with _quiet_revalidation():
                    instance = factory(entity.name, entity.config, plugin_id=entity.id,
                                       instance_name=entity.instance_name, runtime=runtime)
            bound = Bound(entity, instance)
            self.bound.append(bound)
            scope = (entity.route_id, entity.service_id, entity.consumer_id)
            self.by_name.setdefault(entity.name, {})[scope] = bound
            priorities[entity.name] = instance.priority
        # Kong breaks priority ties by name.
        self.names = tuple(sorted(priorities, key=lambda n: (-priorities[n], n)))
        self.global_only = tuple(
            b for n in self.names if (b := self.by_name[n].get((None, None, None))) is not None
        )
        # select() runs for every plugin name on every request; its answers only depend on
        # its arguments and this immutable index.
        self._selected: dict[tuple[str, str | None, str | None, str | None, str],
                             Bound | None] = {}

    def select(self, name: str, route: str | None, service: str | None, consumer: str | None,
               protocol: str) -> Bound | None:
        """The configuration of plugin ``name`` that applies, or None."""
        key = (name, route, service, consumer, protocol)
        try:
            return self._selected[key]
        except KeyError:
            pass
        bound = self._select(name, route, service, consumer, protocol)
        if len(self._selected) >= SELECT_CACHE_SIZE:  # many consumers: start over
            self._selected.clear()
        self._selected[key] = bound
        return bound

    def _select(self, name: str, route: str | None, service: str | None, consumer: str | None,
                protocol: str) -> Bound | None:
        configs = self.by_name.get(name)
        if not configs:
            return None
        for combo in _combos(route, service, consumer):
            bound = configs.get(combo)
            if bound is not None:
                return bound if protocol in bound.entity.protocols else None
        return None


class _DropWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno != logging.WARNING


@contextlib.contextmanager
def _quiet_revalidation() -> Iterator[None]:
    """Building a plugin validates its config again; the loader already did and logged the
    schema's deprecation warnings, so the repeat is silenced rather than logged twice."""
    schema_log = logging.getLogger("relayq.plugins")
    quiet = _DropWarnings()
    schema_log.addFilter(quiet)
    try:
        yield
    finally:
        schema_log.removeFilter(quiet)


class PhaseErrors:
    """Counts plugin exceptions by (plugin id, phase) and throttles their log lines."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self._last: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def failed(self, bound: Bound, phase: str, exc: BaseException) -> None:
        key = (bound.entity.id, phase)
        now = time.monotonic()
        with self._lock:
            self.counts[key] += 1
            count = self.counts[key]
            due = now - self._last.get(key, -ERROR_LOG_INTERVAL) >= ERROR_LOG_INTERVAL
            if due:
                self._last[key] = now
        if due:
            log.error("%s plugin %s (%s) failed in the %s phase (%d failures so far); "
                      "request unaffected", bound.name, bound.entity.id, bound.entity.location,
                      phase, count, exc_info=exc)


def run_phase(plugins: Iterable[Bound], phase: str, ctx: RequestContext,
              errors: PhaseErrors) -> None:
    """``header_filter`` or ``log`` of every queue plugin in ``plugins``, isolated."""
    for bound in plugins:
        instance = bound.instance
        if isinstance(instance, KeyAuth):
            continue
        try:
            getattr(instance, phase)(ctx)
        except Exception as exc:
            errors.failed(bound, phase, exc)

