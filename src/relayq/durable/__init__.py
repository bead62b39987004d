"""Layer 5, beyond Kong: a crash-safe spool of waiting entries and a dead-letter store.

Standard library only. Importing this package registers ``DurableStorage`` as the storage the
queue engine uses for ``queue.spool`` and ``queue.dead_letter``.
"""

from relayq.durable._cli import dlq_list, dlq_replay
from relayq.durable._deadletter import DeadLetter, DeadLetters
from relayq.durable._errors import SpoolCorruptError, SpoolError, SpoolLockedError
from relayq.durable._paths import dead_letter_path, safe_name, spool_path
from relayq.durable._salvage import Recovery
from relayq.durable._spool import Spool, SpoolStats
from relayq.durable._storage import DurableStorage, register

register()

__all__ = [
    "DeadLetter",
    "DeadLetters",
    "DurableStorage",
    "Recovery",
    "Spool",
    "SpoolCorruptError",
    "SpoolError",
    "SpoolLockedError",
    "SpoolStats",
    "dead_letter_path",
    "dlq_list",
    "dlq_replay",
    "register",
    "safe_name",
    "spool_path",
]
