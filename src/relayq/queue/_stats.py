"""Per-queue counters (mutable, kept across a queue's recreation) and their frozen snapshots."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

# Reasons an entry can be lost; every drop is counted under exactly one of them.
DROP_REASONS = ("capacity", "bytes", "too_large", "retry_exhausted", "shutdown", "invalid",
                "full", "permanent")

# Reasons that refuse an entry at enqueue time (it never entered the queue).
REJECTIONS = frozenset({"too_large", "invalid", "full"})

# Upper bounds (seconds) of the handler-latency histogram exported by the status listener.
HANDLER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Counters:
    """Cumulative counters of one queue key; survive the queue draining and being recreated."""

    __slots__ = (
        "batches_sent",
        "bucket_counts",
        "dead_lettered",
        "dropped",
        "entries_sent",
        "failures",
        "handler_calls",
        "handler_seconds",
        "kept_in_spool",
        "last_error",
        "name",
        "retries",
        "workspace",
    )

    def __init__(self, name: str, workspace: str | None) -> None:
        self.name = name
        self.workspace = workspace
        self.batches_sent = 0
        self.entries_sent = 0
        self.retries = 0
        self.failures = 0
        self.dead_lettered = 0
        self.kept_in_spool = 0
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.last_error: str | None = None
        self.handler_calls = 0
        self.handler_seconds = 0.0
        self.bucket_counts = [0] * (len(HANDLER_BUCKETS) + 1)

    def observe_handler(self, seconds: float) -> None:
        """Record one handler call's duration."""
        self.handler_calls += 1
        self.handler_seconds += seconds
        for i, bound in enumerate(HANDLER_BUCKETS):
            if seconds <= bound:
                self.bucket_counts[i] += 1
                return
        self.bucket_counts[-1] += 1

    def drop(self, reason: str, count: int = 1) -> None:
        """Count ``count`` lost entries under ``reason``."""
        self.dropped[reason] = self.dropped.get(reason, 0) + count


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A frozen snapshot of one queue: what waits, what is in flight, what was sent or lost."""

    name: str
    workspace: str | None
    exists: bool  # registered now (Kong's Queue.exists)
    depth: int  # entries waiting, including a batch still coalescing
    bytes: int  # bytes of waiting string entries (counted when max_bytes is set)
    in_flight: int  # entries in the batch being handled or retried
    enqueued: int  # accepted entries: sent + waiting + in flight + lost after acceptance
    batches_sent: int
    entries_sent: int
    retries: int
    failures: int  # failed handler attempts
    dropped: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    last_error: str | None = None
    handler_calls: int = 0
    handler_seconds: float = 0.0
    # Cumulative histogram: (upper bound in seconds, count of calls at or below it); +inf last.
    handler_buckets: tuple[tuple[float, int], ...] = ()
    dead_lettered: int = 0  # entries written to dead letters instead of being lost
    kept_in_spool: int = 0  # entries left in the spool at a shutdown deadline (sent next start)

    @property
    def dropped_total(self) -> int:
        """Every entry lost, whatever the reason."""
        return sum(self.dropped.values())


def snapshot(
    c: Counters, *, exists: bool, depth: int, nbytes: int, in_flight: int
) -> QueueStats:
    """Freeze the counters of one queue together with its current depth."""
    cumulative: list[tuple[float, int]] = []
    running = 0
    for bound, n in zip((*HANDLER_BUCKETS, float("inf")), c.bucket_counts, strict=True):
        running += n
        cumulative.append((bound, running))
    return QueueStats(
        name=c.name,
        workspace=c.workspace,
        exists=exists,
        depth=depth,
        bytes=nbytes,
        in_flight=in_flight,
        enqueued=c.entries_sent + depth + in_flight + c.dead_lettered + c.kept_in_spool
        + sum(n for reason, n in c.dropped.items() if reason not in REJECTIONS),
        batches_sent=c.batches_sent,
        entries_sent=c.entries_sent,
        retries=c.retries,
        failures=c.failures,
        dropped=MappingProxyType(dict(c.dropped)),
        last_error=c.last_error,
        handler_calls=c.handler_calls,
        handler_seconds=c.handler_seconds,
        handler_buckets=tuple(cumulative),
        dead_lettered=c.dead_lettered,
        kept_in_spool=c.kept_in_spool,
    )
