"""What ``relayq dlq list`` and ``relayq dlq replay`` do; the command line itself is wired in
``relayq.cli``. ``path`` is the dead-letter file or the ``queue.dead_letter.path`` directory."""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable

from relayq.durable._deadletter import DeadLetter, DeadLetters
from relayq.durable._paths import dead_letter_path

log = logging.getLogger("relayq.durable")

_ERROR_WIDTH = 60


def dlq_list(path: str | os.PathLike[str], queue: str | None = None) -> str:
    """A table of the dead letters kept (optionally of one queue), one batch per row."""
    file = dead_letter_path(path)
    if not file.exists():
        return f"no dead letters: {file} does not exist\n"
    with DeadLetters(file) as store:
        letters = store.list(queue)
    if not letters:
        return f"no dead letters{f' for queue {queue}' if queue else ''} in {file}\n"
    rows: list[tuple[str, ...]] = [
        ("ID", "QUEUE", "TIME (UTC)", "ATTEMPTS", "ENTRIES", "BYTES", "ERROR")]
    rows += [_row(letter) for letter in letters]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {3, 4, 5}
    lines = ["  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in rows]
    total = sum(letter.count for letter in letters)
    lines.append(f"{_plural(len(letters), 'dead letter')}, {_plural(total, 'entry', 'entries')}")
    return "\n".join(lines) + "\n"


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _row(letter: DeadLetter) -> tuple[str, ...]:
    when = dt.datetime.fromtimestamp(letter.time, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    error = " ".join(letter.error.split())
    if len(error) > _ERROR_WIDTH:
        error = error[:_ERROR_WIDTH - 3] + "..."
    return (letter.id, letter.queue, when, str(letter.attempts), str(letter.count),
            str(letter.bytes), error)


def dlq_replay(path: str | os.PathLike[str], send: Callable[[str, list[bytes]], bool],
               queue: str | None = None) -> tuple[int, int]:
    """Send every dead letter (optionally of one queue) again with ``send(queue, entries)``,
    which succeeds only by returning exactly True. Each batch sent is removed at once, so an
    interrupted replay does not send it twice. Returns (replayed, failed) counts of batches."""
    file = dead_letter_path(path)
    if not file.exists():
        return 0, 0
    replayed = failed = 0
    with DeadLetters(file) as store:
        for letter in store.list(queue):
            try:
                ok = send(letter.queue, list(letter.entries)) is True
            except Exception as exc:
                log.warning("dead letter %s (queue %s): replay failed: %s", letter.id,
                            letter.queue, exc)
                ok = False
            if ok:
                store.remove([letter.id])
                replayed += 1
            else:
                failed += 1
    return replayed, failed
