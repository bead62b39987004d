"""The message catalogue: Kong 3.10's queue log texts, and the logger that prints them.

Every queue line reads ``[<log_tag>] queue <name>: <message>``. Arguments are passed to
``logging`` separately, so a ``%`` in a queue name (http-log names hold URLs) is harmless.
"""

from __future__ import annotations

import logging

log = logging.getLogger("relayq.queue")

# Kong levels mapped to Python's: ERR->ERROR, WARN->WARNING, INFO->INFO, DEBUG/TRACE->DEBUG.
ERR = logging.ERROR
WARN = logging.WARNING
INFO = logging.INFO
TRACE = logging.DEBUG

QUEUE_CREATED = "queue created"
QUEUE_EXISTS = "queue exists"
PROCESSING = "processing queue"
DONE_PROCESSING = "done processing queue"
PASSING = "passing %d entries to handler"
PROCESSED = "handler processed %d entries successfully"
CAPACITY_WARNING = "queue at %s%% capacity"
QUEUE_FULL = "queue full, dropping old entries until processing is successful again"
STRING_TOO_LONG = "string to be queued is longer (%d bytes) than the queue's max_bytes (%d bytes)"
BYTES_EXCEEDED = "byte capacity exceeded, %d queue entries were dropped"
NON_STRING = (
    "queuing non-string entry to a queue that has queue.max_bytes set, capacity monitoring "
    "will not be correct"
)
RESUMED = "queue resumed processing"
HANDLER_FAILED = "handler could not process entries: %s"
NO_DETAILS = "no error details returned by handler"
FALSY = "handler returned falsy value but no error information"
GAVE_UP = "could not send entries due to max_retry_time exceeded. %d queue entries were lost"
NIL_ENTRY = "entry must be a non-nil value"
# relayq's own lines (Kong has no equivalent).
SPOOL_FULL = "spool full or failing, refusing new entries until it accepts them again"
QUEUE_FULL_NEWEST = "queue full, dropping new entries until processing is successful again"
SPLITTING = "batch of %d entries rejected permanently, retrying it in halves of %d and %d"
PERMANENT = "could not send entries: permanent failure. %d queue entries were lost"
SUPPRESSED = "%s (%d more like this in the last %.0f s)"
SHUTDOWN_KEPT = "shutdown deadline reached, %d queue entries kept in the spool for the next start"
REPLAYED = "replaying %d entries kept in the spool by a previous run"
SHUTDOWN_LOST = "shutdown deadline reached, %d queue entries were not delivered"
HANDLER_TIMEOUT = "handler did not finish within %s s"


def emit(level: int, tag: str | None, name: str, message: str, *args: object) -> None:
    """Log one queue line with Kong's prefix."""
    if log.isEnabledFor(level):
        text = message % args if args else message
        log.log(level, "[%s] queue %s: %s", tag or "", name, text)
