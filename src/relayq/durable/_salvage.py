"""What to do when a store file is damaged: tell torn tails from corruption, report, keep a copy.

Persistent buffers that crash-loop or silently stop on a bad file are the top complaint about
them (Vector, Fluent Bit), so a damaged file never stops a store from opening by default:
a torn tail (a write cut short by a crash) is cut off with a warning, and damage inside the
file is salvaged record by record, with the damaged original kept beside it as ``<name>.corrupt``
for inspection. ``on_corruption="raise"`` refuses instead, with the same description.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from relayq.durable._format import Damage, describe

log = logging.getLogger("relayq.durable")

ON_CORRUPTION = ("salvage", "raise")


@dataclass(frozen=True, slots=True)
class Recovery:
    """What opening a damaged file found and did."""

    path: Path
    entries: int  # intact entries (or batches, for dead letters) that were kept
    damage: tuple[Damage, ...]
    header_problem: str | None
    corrupt_copy: Path | None = None

    @property
    def torn_tail_only(self) -> bool:
        """Only the end was damaged: what a crash during a write leaves, not corruption."""
        return self.header_problem is None and all(d.at_tail for d in self.damage)

    @property
    def lost_bytes(self) -> int:
        return sum(d.length for d in self.damage)

    def describe(self) -> str:
        """What is wrong, in one line naming the file."""
        parts = []
        if self.header_problem:
            parts.append(f"bad header: {self.header_problem}")
        if self.damage:
            parts.append(describe(list(self.damage)))
        return f"{self.path}: " + "; ".join(parts)


def check_policy(on_corruption: str) -> None:
    if on_corruption not in ON_CORRUPTION:
        raise ValueError(f"on_corruption must be one of: {', '.join(ON_CORRUPTION)} "
                         f"(got {on_corruption!r})")


def keep_corrupt_copy(path: Path) -> Path | None:
    """Hard-link the damaged file as ``<name>.corrupt`` (no extra disk space needed) before it
    is replaced by the salvaged one; an older copy is replaced."""
    copy = path.with_name(path.name + ".corrupt")
    with contextlib.suppress(FileNotFoundError):
        copy.unlink()
    try:
        os.link(path, copy)
    except OSError as exc:
        log.warning("%s: could not keep a copy of the damaged file: %s", path, exc)
        return None
    return copy


def log_recovery(recovery: Recovery, what: str) -> None:
    """One warning per damaged file opened, saying what was lost and what was kept."""
    if recovery.torn_tail_only:
        log.warning("%s; cut it off (expected after a crash or kill during a write); "
                    "%d intact %s kept", recovery.describe(), recovery.entries, what)
    else:
        where = (f"the damaged file is kept as {recovery.corrupt_copy}"
                 if recovery.corrupt_copy else "no copy of the damaged file was kept")
        log.warning("%s; salvaged %d intact %s, %d damaged bytes lost; %s",
                    recovery.describe(), recovery.entries, what, recovery.lost_bytes, where)
