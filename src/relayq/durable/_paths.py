"""File names for stores that share a directory.

Queue names are arbitrary text (Kong's HTTP Log names a shared queue after its endpoint), so
they are never used as file names directly: a readable, sanitized prefix helps a human find
the file, and a hash of the full name keeps two names that sanitize alike apart.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

SPOOL_SUFFIX = ".spool"
DEAD_LETTER_FILE = "dead-letters.rqdl"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(name: str) -> str:
    """``<readable prefix>-<12 hex digits of sha256(name)>``, safe on any file system."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a queue name must be a non-empty string (got {name!r})")
    prefix = _UNSAFE.sub("_", name).strip("._-")[:40] or "queue"
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{prefix}-{digest}"


def spool_path(directory: str | os.PathLike[str], queue_name: str) -> Path:
    """The spool file of ``queue_name`` inside ``directory``."""
    return Path(directory) / (safe_name(queue_name) + SPOOL_SUFFIX)


def dead_letter_path(path: str | os.PathLike[str]) -> Path:
    """The dead-letter file: ``path`` itself, or the standard file inside it when ``path`` is a
    directory (or ends with a separator), as ``queue.dead_letter.path`` names a directory."""
    p = Path(path)
    if p.is_dir() or str(path).endswith(os.sep):
        return p / DEAD_LETTER_FILE
    return p
