"""Queue keys: a queue's name within a workspace (Kong's ``<workspace>.<name>`` registry key)."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

Key = str | tuple[str, str]  # the name alone outside a workspace, else (workspace, name)

_workspace: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "relayq_workspace", default=None
)
# Public handle for hosts on a hot path: ``CURRENT_WORKSPACE.set(ws)`` / ``.reset(token)`` is
# what ``workspace()`` does, without the context manager's cost.
CURRENT_WORKSPACE = _workspace

@contextlib.contextmanager
def workspace(workspace_id: str | None) -> Iterator[None]:
    """Within this block, queues are keyed by ``workspace_id`` (Kong's ``ngx.ctx.workspace``)."""
    token = _workspace.set(workspace_id or None)
    try:
        yield
    finally:
        _workspace.reset(token)


def make_key(name: str, ws: str | None) -> Key:
    return name if not ws else (ws, name)


def label(key: Key) -> str:
    return key if isinstance(key, str) else f"{key[0]}.{key[1]}"
