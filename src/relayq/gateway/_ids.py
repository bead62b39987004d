"""Stable ids for entities declared without one, computed the way Kong's DB-less loader does.

Kong derives a missing id as a UUIDv5 of the entity's endpoint key (a service's or route's
``name``, a consumer's ``username``, a credential's ``key``, a plugin's ``instance_name``) or of
its cache key (a plugin's ``plugins:<name>:<route>:<service>:<consumer>``), in a per-entity
namespace. Reproducing that keeps ids, and so the queue names derived from plugin ids, equal to
what Kong would use and stable across reloads. Where Kong falls back to a random id, relayq uses
the entity's position in the file instead, so ids stay stable as long as the file does.
"""

from __future__ import annotations

import hashlib
import uuid
from functools import cache

# resty.jit-uuid factory namespace used by kong/db/schema/others/declarative_config.lua.
_ENTITIES_NAMESPACE = uuid.UUID("fd02801f-0957-4a15-a55a-c8d9606f30b5")


def _uuid5(namespace: uuid.UUID, name: str) -> uuid.UUID:
    # uuid.uuid5, but never raising on text that is not valid UTF-8 (a lone surrogate from a
    # JSON escape): ids are computed before validation has refused such a name.
    data = name.encode("utf-8", "surrogatepass")
    return uuid.UUID(bytes=hashlib.sha1(namespace.bytes + data).digest()[:16], version=5)


@cache
def _namespace(entity: str) -> uuid.UUID:
    return _uuid5(_ENTITIES_NAMESPACE, entity)


def entity_id(entity: str, key: str) -> str:
    """Kong's ``generate_uuid(schema.name, key)``: e.g. ``entity_id("services", "orders")``."""
    return str(_uuid5(_namespace(entity), key))


def positional_id(entity: str, location: str) -> str:
    """An id for an entity Kong would give a random id: derived from where it is declared."""
    return str(_uuid5(_namespace(entity), f"relayq-position:{location}"))


def plugin_cache_key(name: str, route: str | None, service: str | None,
                     consumer: str | None) -> str:
    """Kong's plugin cache key as ``build_cache_key`` composes it (missing parts empty)."""
    return ":".join(("plugins", name, route or "", service or "", consumer or ""))
