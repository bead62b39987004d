"""Kong's DB-less declarative file (``kong.yml``): load, validate, and resolve into entities.

The whole file is checked in one pass and every problem is reported at once, each prefixed with
the path of the value it concerns (``services[0].routes[1].paths[0]: must start with /``), so a
user fixes a file in one round trip. Then, as Kong's loader does, missing ids are derived,
uniqueness and references are checked, and each plugin's ``config`` is validated by the plugin
class itself, its error paths prefixed with the plugin's location.
"""

from __future__ import annotations

import copy
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from relayq.gateway import _keyauth
from relayq.gateway._entities import (
    DEFAULT_WORKSPACE_ID,
    Consumer,
    GatewayConfig,
    KeyAuthCredential,
    PluginEntity,
    Route,
    Service,
)
from relayq.gateway._fields import Field, join, record
from relayq.gateway._ids import entity_id, plugin_cache_key, positional_id
from relayq.gateway._schemas import (
    CONSUMER_FIELDS,
    CREDENTIAL_FIELDS,
    KONG_ONLY_ENTITIES,
    PLUGIN_FIELDS,
    ROUTE_FIELDS,
    SERVICE_FIELDS,
    TOP_CREDENTIAL_FIELDS,
    TOP_LEVEL_ENTITIES,
    TOP_LEVEL_FIELDS,
    TOP_PLUGIN_FIELDS,
    TOP_ROUTE_FIELDS,
    _service_path,
)
from relayq.plugins import PluginConfigError, plugin_class, plugin_names


class DeclarativeError(ValueError):
    """The declarative file is invalid; ``errors`` lists every problem, each with its path."""

    def __init__(self, errors: Sequence[str], source: str = "<memory>") -> None:
        self.errors = list(errors)
        self.source = source
        count = len(self.errors)
        super().__init__(
            f"{source}: invalid declarative config ({count} error{'s' if count != 1 else ''}):"
            "\n  " + "\n  ".join(self.errors)
        )


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Read and validate a declarative file (YAML, or JSON when it ends in ``.json``)."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise DeclarativeError([f"cannot read {source}: {exc.strerror or exc}"], source) from exc
    except UnicodeDecodeError as exc:
        raise DeclarativeError([f"{source} is not UTF-8 text: {exc}"], source) from exc
    return parse_config_text(text, source=source, as_json=source.endswith(".json"))


def parse_config_text(text: str, *, source: str = "<memory>",
                      as_json: bool = False) -> GatewayConfig:
    """Parse YAML (a superset of JSON) or strict JSON text, then validate it."""
    if as_json:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DeclarativeError(
                [f"line {exc.lineno}, column {exc.colno}: {exc.msg}"], source) from exc
    else:
        data = _load_yaml(text, source)
    return parse_config(data, source=source)


def _load_yaml(text: str, source: str) -> Any:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    yaml = YAML(typ="safe", pure=True)
    try:
        return yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        raise DeclarativeError([f"{where}{problem or exc}"], source) from exc
    except YAMLError as exc:
        raise DeclarativeError([f"invalid YAML: {exc}"], source) from exc


def parse_config(data: Any, *, source: str = "<memory>") -> GatewayConfig:
    """Validate an already-parsed declarative document and resolve it into entities."""
    return _Loader(source).load(data)


# ------------------------------------------------------------------------------------------


@dataclass
class _Raw:
    """One entity as declared: its checked fields, its location and its enclosing entity."""

    kind: str
    loc: str
    data: dict[str, Any]
    parent: _Raw | None = None
    id: str = ""
    given: frozenset[str] = frozenset()  # keys the file set to a non-null value


_PLAIN_PATH_V2 = re.compile(r"[a-zA-Z0-9.\-_~/%]*")


def _migrate_paths(root: dict[str, Any]) -> None:
    """Format 1.1/2.1 -> 3.0: a route path that is not a plain prefix was a regex (Kong's
    ``migrate_path_280_300``), so it gets the ``~`` that 3.0 requires."""

    def migrate(routes: Any) -> None:
        for route in routes if isinstance(routes, list) else []:
            paths = route.get("paths") if isinstance(route, dict) else None
            if isinstance(paths, list):
                route["paths"] = [
                    p if not isinstance(p, str) or _PLAIN_PATH_V2.fullmatch(p) else "~" + p
                    for p in paths
                ]

    migrate(root.get("routes"))
    services = root.get("services")
    for service in services if isinstance(services, list) else []:
        if isinstance(service, dict):
            migrate(service.get("routes"))


class _Loader:
    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[str] = []
        self.now = int(time.time())
        self.services: list[_Raw] = []
        self.routes: list[_Raw] = []
        self.consumers: list[_Raw] = []
        self.credentials: list[_Raw] = []
        self.plugins: list[_Raw] = []

    # ----------------------------------------------------------------------- structure

    def load(self, data: Any) -> GatewayConfig:
        if data is None:
            raise DeclarativeError(["the file is empty; expected at least _format_version"],
                                   self.source)
        if isinstance(data, dict) and data.get("_format_version") in ("1.1", "2.1"):
            data = copy.deepcopy(data)
            _migrate_paths(data)
        nested = TOP_LEVEL_ENTITIES + tuple(KONG_ONLY_ENTITIES)
        top = record(data, TOP_LEVEL_FIELDS, "", self.errors, nested=nested)
        if top is None:
            raise DeclarativeError(self.errors, self.source)
        for key in sorted(KONG_ONLY_ENTITIES & top.keys()):
            self.errors.append(
                f"{key}: not supported by relayq (supported entities: "
                f"{', '.join(TOP_LEVEL_ENTITIES)})")
        self._walk(top)
        self._assign_ids()
        self._check_unique()
        refs = self._resolve_references()
        configs = self._check_plugins(refs)
        self._check_routes()
        if self.errors:
            raise DeclarativeError(self.errors, self.source)
        return self._build(top, refs, configs)

    def _items(self, container: Mapping[str, Any], key: str, loc: str) -> Iterator[tuple[str, Any]]:
        value = container.get(key)
        if value is None:
            return
        path = join(loc, key)
        if not isinstance(value, list):
            self.errors.append(f"{path}: expected an array")
            return
        for i, item in enumerate(value):
            yield f"{path}[{i}]", item

    def _add(self, kind: str, loc: str, item: Any, fields: Mapping[str, Field],
             parent: _Raw | None, nested: tuple[str, ...] = ()) -> _Raw | None:
        data = record(item, fields, loc, self.errors, nested=nested)
        if data is None:
            return None
        given = frozenset(k for k, v in item.items() if v is not None)
        raw = _Raw(kind, loc, data, parent, given=given)
        getattr(self, kind).append(raw)
        return raw

    def _walk(self, top: Mapping[str, Any]) -> None:
        for loc, item in self._items(top, "services", ""):
            svc = self._add("services", loc, item, SERVICE_FIELDS, None, ("routes", "plugins"))
            if svc is None:
                continue
            self._service_target(svc, item)
            for rloc, ritem in self._items(svc.data, "routes", loc):
                route = self._add("routes", rloc, ritem, ROUTE_FIELDS, svc, ("plugins",))
                if route is not None:
                    self._nested_plugins(route)
            self._nested_plugins(svc)
        for loc, item in self._items(top, "routes", ""):
            route = self._add("routes", loc, item, TOP_ROUTE_FIELDS, None, ("plugins",))
            if route is not None:
                self._nested_plugins(route)
        for loc, item in self._items(top, "consumers", ""):
            consumer = self._add("consumers", loc, item, CONSUMER_FIELDS, None,
                                 ("plugins", "keyauth_credentials"))
            if consumer is None:
                continue
            if not consumer.data.get("username") and not consumer.data.get("custom_id"):
                self.errors.append(f"{loc}: at least one of these fields must be non-empty: "
                                   "'custom_id', 'username'")
            for cloc, citem in self._items(consumer.data, "keyauth_credentials", loc):
                self._add("credentials", cloc, citem, CREDENTIAL_FIELDS, consumer)
            self._nested_plugins(consumer)
        for loc, item in self._items(top, "keyauth_credentials", ""):
            self._add("credentials", loc, item, TOP_CREDENTIAL_FIELDS, None)
        for loc, item in self._items(top, "plugins", ""):
            self._add("plugins", loc, item, TOP_PLUGIN_FIELDS, None)

    def _nested_plugins(self, parent: _Raw) -> None:
        for loc, item in self._items(parent.data, "plugins", parent.loc):
            self._add("plugins", loc, item, PLUGIN_FIELDS, parent)

    def _service_target(self, svc: _Raw, item: Mapping[str, Any]) -> None:
        """Resolve the ``url`` shorthand or the protocol/host/port/path fields."""
        data = svc.data
        url = data.get("url")
        if url is not None:
            conflicting = [k for k in ("protocol", "host", "port", "path") if item.get(k)]
            if conflicting:
                self.errors.append(f"{svc.loc}.url: cannot be combined with "
                                   f"{', '.join(conflicting)}; use one or the other")
                return
            parts = urlsplit(url)
            data["protocol"] = parts.scheme
            data["host"] = parts.hostname
            data["port"] = parts.port or (443 if parts.scheme == "https" else 80)
            data["path"] = parts.path or None
            if parts.path:
                message = _service_path(parts.path)
                if message:
                    self.errors.append(f"{svc.loc}.url: path {message}")
            return
        if "url" in item and item["url"] is not None:
            return  # the url itself was invalid and already reported
        if not item.get("host"):
            if "host" not in item or item["host"] is None:
                self.errors.append(f"{svc.loc}.host: required field missing")
            return
        data["protocol"] = data.get("protocol") or "http"
        if data.get("port") is None:
            data["port"] = 80

    # ----------------------------------------------------------------------------- ids

    def _assign_ids(self) -> None:
        keys: dict[str, Callable[[_Raw], str | None]] = {
            "services": lambda r: r.data.get("name"),
            "routes": lambda r: r.data.get("name"),
            "consumers": lambda r: r.data.get("username"),
            "credentials": lambda r: r.data.get("key"),
        }
        entity_names = {"credentials": "keyauth_credentials"}
        for kind, key_of in keys.items():
            entity = entity_names.get(kind, kind)
            for raw in getattr(self, kind):
                key = key_of(raw)
                raw.id = raw.data.get("id") or (
                    entity_id(entity, key) if key else positional_id(entity, raw.loc))
        for cred in self.credentials:
            if not cred.data.get("key"):
                cred.data["key"] = uuid.uuid4().hex  # Kong generates a key when none is given
        for plugin in self.plugins:
            data = plugin.data
            if data.get("id"):
                plugin.id = data["id"]
            elif data.get("instance_name"):
                plugin.id = entity_id("plugins", data["instance_name"])
            else:
                scope: dict[str, str | None] = {"routes": None, "services": None,
                                                "consumers": None}
                if plugin.parent is not None:
                    scope[plugin.parent.kind] = plugin.parent.id
                else:
                    scope = {"routes": data.get("route"), "services": data.get("service"),
                             "consumers": data.get("consumer")}
                plugin.id = entity_id("plugins", plugin_cache_key(
                    str(data.get("name")), scope["routes"], scope["services"],
                    scope["consumers"]))

    def _check_unique(self) -> None:
        fields = {
            "services": ("id", "name"),
            "routes": ("id", "name"),
            "consumers": ("id", "username", "custom_id"),
            "credentials": ("id", "key"),
            "plugins": ("id", "instance_name"),
        }
        for kind, names in fields.items():
            entity = "keyauth_credentials" if kind == "credentials" else kind
            for field_name in names:
                seen: set[str] = set()
                for raw in getattr(self, kind):
                    value = raw.id if field_name == "id" else raw.data.get(field_name)
                    if value is None:
                        continue
                    if value in seen:
                        shown = "<hidden>" if field_name == "key" else value
                        self.errors.append(
                            f"{join(raw.loc, field_name)}: uniqueness violation: '{entity}' "
                            f"entity with {field_name} set to '{shown}' already declared")
                    seen.add(value)

    # ---------------------------------------------------------------------- references

    def _resolve_references(self) -> dict[int, dict[str, str | None]]:
        """For each route, credential and plugin (by ``id(raw)``): the ids it refers to."""
        index = {
            "service": _index(self.services, "name"),
            "route": _index(self.routes, "name"),
            "consumer": _index(self.consumers, "username"),
        }
        plural = {"service": "services", "route": "routes", "consumer": "consumers"}

        def resolve(raw: _Raw, field_name: str) -> str | None:
            value = raw.data.get(field_name)
            if value is None:
                return None
            found = index[field_name].get(value)
            if found is None:
                self.errors.append(
                    f"{raw.loc}.{field_name}: invalid reference '{field_name}: {value}' "
                    f"(no such entry in '{plural[field_name]}')")
            return found

        refs: dict[int, dict[str, str | None]] = {}
        for route in self.routes:
            sid = route.parent.id if route.parent else resolve(route, "service")
            refs[id(route)] = {"service": sid}
        for cred in self.credentials:
            cid = cred.parent.id if cred.parent else resolve(cred, "consumer")
            refs[id(cred)] = {"consumer": cid}
        for plugin in self.plugins:
            scope: dict[str, str | None] = {"service": None, "route": None, "consumer": None}
            if plugin.parent is not None:
                scope[plugin.parent.kind[:-1]] = plugin.parent.id
            else:
                for field_name in scope:
                    scope[field_name] = resolve(plugin, field_name)
            refs[id(plugin)] = scope
        seen_scopes: set[tuple[Any, ...]] = set()
        for plugin in self.plugins:
            scope = refs[id(plugin)]
            key = (plugin.data.get("name"), scope["route"], scope["service"], scope["consumer"])
            if key in seen_scopes and plugin.data.get("instance_name") is None:
                self.errors.append(
                    f"{plugin.loc}: uniqueness violation: plugin '{key[0]}' is already "
                    "configured for the same route, service and consumer (give one an "
                    "instance_name to run both)")
            seen_scopes.add(key)
        return refs

    # ------------------------------------------------------------------------- plugins

    def _check_plugins(self, refs: Mapping[int, Mapping[str, str | None]]
                       ) -> dict[int, dict[str, Any]]:
        configs: dict[int, dict[str, Any]] = {}
        consumers = _index(self.consumers, "username")
        for plugin in self.plugins:
            name = plugin.data.get("name")
            if not isinstance(name, str):
                continue
            config = plugin.data.get("config") or {}
            try:
                if name == _keyauth.NAME:
                    validated = _keyauth.validate_config(config)
                    self._check_keyauth_scope(plugin, refs[id(plugin)], validated, consumers)
                else:
                    validated = plugin_class(name).validate(config)
            except KeyError:
                known = sorted({*plugin_names(), _keyauth.NAME})
                self.errors.append(f"{plugin.loc}.name: plugin '{name}' is not supported by "
                                   f"relayq (supported: {', '.join(known)})")
                continue
            except PluginConfigError as exc:
                for path, message in exc.errors.items():
                    self.errors.append(f"{_config_path(plugin.loc, path)}: {message}")
                continue
            except (TypeError, ValueError) as exc:
                self.errors.append(f"{plugin.loc}.config: {exc}")
                continue
            configs[id(plugin)] = validated
        return configs

    def _check_keyauth_scope(self, plugin: _Raw, scope: Mapping[str, str | None],
                             config: Mapping[str, Any], consumers: Mapping[str, str]) -> None:
        if scope["consumer"] is not None:
            where = plugin.loc if plugin.parent is not None else f"{plugin.loc}.consumer"
            self.errors.append(f"{where}: the key-auth plugin cannot be applied to a consumer "
                               "(it is what identifies the consumer)")
        anonymous = config.get("anonymous")
        if anonymous and anonymous not in consumers:
            self.errors.append(f"{plugin.loc}.config.anonymous: no consumer with id or "
                               f"username '{anonymous}'")

    def _check_routes(self) -> None:
        for route in self.routes:
            data = route.data
            fields = ("methods", "hosts", "headers", "paths")
            if any(k in route.given and k not in data for k in fields):
                continue  # a matching field was set but invalid, and already reported
            if not any(data.get(k) for k in fields):
                protocols = data.get("protocols") or ["http"]
                self.errors.append(
                    f"{route.loc}: must set one of 'methods', 'hosts', 'headers', 'paths' "
                    f"when 'protocols' is '{protocols[0]}'")

    # --------------------------------------------------------------------------- build

    def _times(self, data: Mapping[str, Any]) -> dict[str, Any]:
        created = data.get("created_at") or self.now
        return {"created_at": created, "updated_at": data.get("updated_at") or created}

    def _build(self, top: Mapping[str, Any], refs: Mapping[int, Mapping[str, str | None]],
               configs: Mapping[int, dict[str, Any]]) -> GatewayConfig:
        services = tuple(self._build_service(raw) for raw in self.services)
        routes = tuple(self._build_route(raw, refs[id(raw)]["service"], i)
                       for i, raw in enumerate(self.routes))
        consumers = tuple(self._build_consumer(raw) for raw in self.consumers)
        credentials = tuple(self._build_credential(raw, refs[id(raw)]["consumer"])
                            for raw in self.credentials)
        plugins = tuple(self._build_plugin(raw, refs[id(raw)], configs[id(raw)])
                        for raw in self.plugins)
        return GatewayConfig(
            format_version="3.0",
            transform=bool(top.get("_transform", True)),
            services=services,
            routes=routes,
            consumers=consumers,
            credentials=credentials,
            plugins=plugins,
            source=self.source,
        )

    def _build_service(self, raw: _Raw) -> Service:
        d = raw.data
        entity = {
            "id": raw.id, "name": d.get("name"), "protocol": d["protocol"], "host": d["host"],
            "port": d["port"], "path": d.get("path"), "retries": d["retries"],
            "connect_timeout": d["connect_timeout"], "write_timeout": d["write_timeout"],
            "read_timeout": d["read_timeout"], "tags": d.get("tags"),
            "client_certificate": None, "tls_verify": d.get("tls_verify"),
            "tls_verify_depth": d.get("tls_verify_depth"), "ca_certificates": None,
            "enabled": d["enabled"], "ws_id": DEFAULT_WORKSPACE_ID, **self._times(d),
        }
        return Service(
            id=raw.id, name=d.get("name"), protocol=d["protocol"], host=d["host"],
            port=d["port"], path=d.get("path"), retries=d["retries"],
            connect_timeout=d["connect_timeout"], write_timeout=d["write_timeout"],
            read_timeout=d["read_timeout"], enabled=d["enabled"],
            tls_verify=d.get("tls_verify"), entity=entity,
        )

    def _build_route(self, raw: _Raw, service_id: str | None, position: int) -> Route:
        d = raw.data
        headers = d.get("headers") or {}
        entity = {
            "id": raw.id, "name": d.get("name"), "protocols": d["protocols"],
            "methods": d.get("methods"), "hosts": d.get("hosts"), "paths": d.get("paths"),
            "headers": d.get("headers"),
            "https_redirect_status_code": d["https_redirect_status_code"],
            "regex_priority": d["regex_priority"], "strip_path": d["strip_path"],
            "path_handling": d["path_handling"], "preserve_host": d["preserve_host"],
            "request_buffering": d["request_buffering"],
            "response_buffering": d["response_buffering"],
            "snis": None, "sources": None, "destinations": None, "tags": d.get("tags"),
            "service": {"id": service_id} if service_id else None,
            "ws_id": DEFAULT_WORKSPACE_ID, **self._times(d),
        }
        return Route(
            id=raw.id, name=d.get("name"), service_id=service_id,
            protocols=tuple(d["protocols"]), methods=tuple(d.get("methods") or ()),
            hosts=tuple(h.lower() for h in d.get("hosts") or ()),
            paths=tuple(d.get("paths") or ()),
            headers={k.lower(): tuple(v.lower() for v in vals) for k, vals in headers.items()},
            https_redirect_status_code=d["https_redirect_status_code"],
            regex_priority=d["regex_priority"], strip_path=d["strip_path"],
            path_handling=d["path_handling"], preserve_host=d["preserve_host"],
            entity=entity, position=position,
        )

    def _build_consumer(self, raw: _Raw) -> Consumer:
        d = raw.data
        entity = {"id": raw.id, "username": d.get("username"), "custom_id": d.get("custom_id"),
                  "tags": d.get("tags"), "ws_id": DEFAULT_WORKSPACE_ID, **self._times(d)}
        return Consumer(id=raw.id, username=d.get("username"), custom_id=d.get("custom_id"),
                        entity=entity)

    def _build_credential(self, raw: _Raw, consumer_id: str | None) -> KeyAuthCredential:
        d = raw.data
        assert consumer_id is not None  # unresolved references were reported as errors
        # The key itself is left out: the entity ends up in logs, the key must not.
        entity = {"id": raw.id, "consumer": {"id": consumer_id}, "tags": d.get("tags"),
                  "ws_id": DEFAULT_WORKSPACE_ID, "created_at": d.get("created_at") or self.now}
        return KeyAuthCredential(id=raw.id, key=d["key"], consumer_id=consumer_id,
                                 entity=entity)

    def _build_plugin(self, raw: _Raw, scope: Mapping[str, str | None],
                      config: dict[str, Any]) -> PluginEntity:
        d = raw.data
        return PluginEntity(
            id=raw.id, name=d["name"], config=config, enabled=d["enabled"],
            instance_name=d.get("instance_name"), protocols=tuple(d["protocols"]),
            service_id=scope["service"], route_id=scope["route"],
            consumer_id=scope["consumer"], location=raw.loc,
        )


def _index(raws: Sequence[_Raw], endpoint_key: str) -> dict[str, str]:
    """Lookup from endpoint key (name/username) and from id to id, as Kong's ``find_entity``."""
    out: dict[str, str] = {}
    for raw in raws:
        out[raw.id] = raw.id
        key = raw.data.get(endpoint_key)
        if isinstance(key, str):
            out.setdefault(key, raw.id)
    return out


def _config_path(loc: str, path: str) -> str:
    """``services[0].plugins[1]`` + ``queue.max_batch_size`` -> ``...config.queue.max_batch_size``
    (a plugin's record-level ``@entity`` errors are reported at the record itself)."""
    parts = [p for p in path.split(".") if p and p != "@entity"]
    return ".".join([loc, "config", *parts])
