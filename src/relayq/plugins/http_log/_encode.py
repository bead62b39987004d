"""http-log's wire format: each entry is the serializer dict as JSON; a batch body is either that
one object or a JSON array of entries, chosen by the *configured* ``max_batch_size`` (Kong).

Entries are encoded once, at enqueue time, so the queue's ``max_bytes`` limit counts real bytes
and a batch body is a plain join with no re-encoding.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS


def encode_entry(log: Any) -> bytes:
    """One log entry as compact JSON. Values JSON cannot hold (custom fields set by a host) are
    written as their ``str()``; integers beyond 64 bits and strings that are not valid UTF-8
    fall back to the standard library (which must then not write ``NaN``/``Infinity``: not JSON,
    a log server would refuse the whole batch)."""
    try:
        return orjson.dumps(log, default=str, option=_OPTIONS)
    except orjson.JSONEncodeError:
        return json.dumps(_finite(log), default=str, separators=(",", ":"),
                          ensure_ascii=False).encode("utf-8", "replace")


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by ``None``, as orjson writes them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def encode_body(entries: Sequence[bytes], *, array: bool) -> bytes:
    """The request body: ``entries[0]`` alone, or ``[e1,e2,...]`` with no whitespace."""
    if not array:
        return entries[0]
    return b"[" + b",".join(entries) + b"]"
