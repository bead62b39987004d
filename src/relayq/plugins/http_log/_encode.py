"""http-log's wire format: each entry is the serializer dict as JSON; a batch body is either that
one object or a JSON array of entries, chosen by the *configured* ``max_batch_size`` (Kong).

Entries are encoded once, at enqueue time, so the queue's ``max_bytes`` limit counts real bytes
and a batch body is a plain join with no re-encoding.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS


def encode_entry(log: Any) -> bytes:
    """One log entry as compact JSON. Values JSON cannot hold (custom fields set by a host) are
    written as their ``str()``; integers beyond 64 bits fall back to the standard library."""
    try:
        return orjson.dumps(log, default=str, option=_OPTIONS)
    except orjson.JSONEncodeError:
        return json.dumps(log, default=str, separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8", "replace"
        )


def encode_body(entries: Sequence[bytes], *, array: bool) -> bytes:
    """The request body: ``entries[0]`` alone, or ``[e1,e2,...]`` with no whitespace."""
    if not array:
        return entries[0]
    return b"[" + b",".join(entries) + b"]"
