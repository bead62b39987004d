"""A queue's log sink: Kong's ``[tag] queue name:`` prefix, and repeated drop lines folded."""

from __future__ import annotations

from collections.abc import Callable

from relayq.queue import _messages as m

# Drop-related errors repeat on every enqueue while a queue is full, and "queue resumed
# processing" on every batch taken while drops go on; log them at most this often per queue and
# message, with the number suppressed in between.
LOG_REPEAT_INTERVAL = 1.0
_RATE_LIMITED = frozenset(
    {m.QUEUE_FULL, m.QUEUE_FULL_NEWEST, m.SPOOL_FULL, m.BYTES_EXCEEDED, m.STRING_TOO_LONG,
     m.NON_STRING, m.NIL_ENTRY, m.RESUMED}
)

class QueueLog:
    """The log sink of one queue: Kong's prefix, and repeats of drop errors rate-limited."""

    __slots__ = ("_clock", "_last", "_suppressed", "name", "tag")

    def __init__(self, tag: str | None, name: str, clock: Callable[[], float]) -> None:
        self.tag = tag
        self.name = name
        self._clock = clock
        self._last: dict[str, float] = {}
        # template -> (count, last text, level)
        self._suppressed: dict[str, tuple[int, str, int]] = {}

    def __call__(self, level: int, template: str, *args: object) -> None:
        if not m.log.isEnabledFor(level):
            return
        if template in _RATE_LIMITED:
            now = self._clock()
            last = self._last.get(template)
            if last is not None and 0 <= now - last < LOG_REPEAT_INTERVAL:
                count = self._suppressed.get(template, (0, "", level))[0]
                text = template % args if args else template
                self._suppressed[template] = (count + 1, text, level)
                return
            self._last[template] = now
            skipped = self._suppressed.pop(template, (0, "", level))[0]
            if template == m.RESUMED:
                self.flush()  # the drops held back so far come before "resumed"
            if skipped:
                text = template % args if args else template
                m.emit(level, self.tag, self.name, m.SUPPRESSED, text, skipped,
                       LOG_REPEAT_INTERVAL)
                return
        m.emit(level, self.tag, self.name, template, *args)

    def flush(self) -> None:
        """Report repeats that were suppressed and not yet reported."""
        for count, text, level in self._suppressed.values():
            m.emit(level, self.tag, self.name, m.SUPPRESSED, text, count, LOG_REPEAT_INTERVAL)
        self._suppressed.clear()
