"""Layer 1, the queue engine: configuration, the I/O-free core, the runtime, stats, messages.

Standard library only.
"""

from relayq.queue._config import (
    BEYOND_KONG_FIELDS,
    CAPACITY_WARNING_THRESHOLD,
    COALESCE_MIN_TIME,
    COALESCE_POLL_TIME,
    EXTRA_FIELDS,
    QUEUE_FIELDS,
    FieldSpec,
    QueueConfig,
    validate_queue_record,
)
from relayq.queue._core import Action, Lost, QueueCore, retry_delay
from relayq.queue._default import default_runtime
from relayq.queue._keys import CURRENT_WORKSPACE, workspace
from relayq.queue._legacy import LEGACY_RULES, WarningThrottle, get_plugin_params, legacy_overrides
from relayq.queue._outcome import BatchInfo, Failure, PermanentError, current_batch
from relayq.queue._runtime import Runtime
from relayq.queue._stats import DROP_REASONS, HANDLER_BUCKETS, Counters, QueueStats
from relayq.queue._storage import (
    DeadLetterStore,
    EntryStore,
    Storage,
    decode_entry,
    encode_entry,
    set_storage,
)

__all__ = [
    "BEYOND_KONG_FIELDS",
    "CAPACITY_WARNING_THRESHOLD",
    "COALESCE_MIN_TIME",
    "COALESCE_POLL_TIME",
    "CURRENT_WORKSPACE",
    "DROP_REASONS",
    "EXTRA_FIELDS",
    "HANDLER_BUCKETS",
    "LEGACY_RULES",
    "QUEUE_FIELDS",
    "Action",
    "BatchInfo",
    "Counters",
    "DeadLetterStore",
    "EntryStore",
    "Failure",
    "FieldSpec",
    "Lost",
    "PermanentError",
    "QueueConfig",
    "QueueCore",
    "QueueStats",
    "Runtime",
    "Storage",
    "WarningThrottle",
    "current_batch",
    "decode_entry",
    "default_runtime",
    "encode_entry",
    "get_plugin_params",
    "legacy_overrides",
    "retry_delay",
    "set_storage",
    "validate_queue_record",
    "workspace",
]
