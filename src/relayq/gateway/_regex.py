"""Route regex paths: Kong's PCRE syntax translated to Python's ``re``, anchored at the start.

Kong matches a ``~/...`` path as a PCRE anchored at the beginning of the normalised request
path (not at the end). The syntax PCRE users write most that Python spells differently is the
named group ``(?<name>...)`` and the absolute end ``\\z``; both are translated.
"""

from __future__ import annotations

import re
from functools import lru_cache

_NAMED_GROUP = re.compile(r"\(\?<(?![=!])")


@lru_cache(maxsize=1024)
def compile_path_regex(pattern: str) -> re.Pattern[str]:
    """Compile a route regex (without its ``~``); raises ``re.error`` when it is invalid."""
    translated = _NAMED_GROUP.sub("(?P<", pattern).replace(r"\z", r"\Z")
    return re.compile(translated)
