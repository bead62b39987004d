"""Numbers rendered the way Lua's ``tostring`` renders them (``%.14g``).

Kong builds queue names, StatsD lines and schema messages by concatenating Lua numbers, so an
integer-valued float prints as ``10000`` and 0.1 as ``0.1``; matching that keeps queue names and
metric lines byte-identical to Kong's.
"""

from __future__ import annotations

import math


def lua_number(value: float) -> str:
    """``value`` as Lua's ``tostring`` prints it: ``%.14g``, with ``inf``/``-inf``/``nan``."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**14:
        return str(value)
    number = float(value)
    if math.isnan(number):
        return "nan" if math.copysign(1.0, number) > 0 else "-nan"
    if math.isinf(number):
        return "inf" if number > 0 else "-inf"
    return f"{number:.14g}"
