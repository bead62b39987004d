"""Kong's queue parameters as one declarative table, validated once into a frozen ``QueueConfig``.

The table is the single source of truth for defaults, bounds and descriptions: ``QueueConfig``,
``validate_queue_record`` (used by the plugin schemas) and the README all derive from it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CAPACITY_WARNING_THRESHOLD = 0.8
COALESCE_POLL_TIME = 1.0
COALESCE_MIN_TIME = 0.05


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One queue parameter: Kong's type, default, bounds and description."""

    name: str
    kind: type  # int or float
    default: int | float | None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[int, ...] | None = None
    nullable: bool = False
    description: str = ""


# Kong 3.10's `queue` record (kong/tools/queue_schema.lua), plus relayq's per-attempt timeout.
QUEUE_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec(
        "max_batch_size", int, 1, 1, 1_000_000,
        description="Maximum number of entries that can be processed at a time.",
    ),
    FieldSpec(
        "max_coalescing_delay", float, 1.0, 0, 3600,
        description="Maximum number of (fractional) seconds to elapse after the first entry was "
        "queued before the queue starts calling the handler.",
    ),
    FieldSpec(
        "max_entries", int, 10000, 1, 1_000_000,
        description="Maximum number of entries that can be waiting on the queue.",
    ),
    FieldSpec(
        "max_bytes", int, None, 0, None, nullable=True,
        description="Maximum number of bytes that can be waiting on a queue, requires string "
        "content.",
    ),
    FieldSpec(
        "max_retry_time", float, 60.0,
        description="Time in seconds before the queue gives up calling a failed handler for a "
        "batch. A negative value disables retries.",
    ),
    FieldSpec(
        "initial_retry_delay", float, 0.01, 0.001, 1_000_000,
        description="Time in seconds before the initial retry is made for a failing batch.",
    ),
    FieldSpec(
        "max_retry_delay", float, 60.0, 0.001, 1_000_000,
        description="Maximum time in seconds between retries, caps exponential backoff.",
    ),
    FieldSpec(
        "concurrency_limit", int, 1, choices=(-1, 1),
        description="The number of of queue delivery timers. -1 indicates unlimited.",
    ),
)

# Fields relayq adds beside Kong's (not part of Kong's schema, so plugin records reject them
# unless a plugin opts in).
EXTRA_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec(
        "handler_timeout", float, 60.0, 0.001, 1_000_000, nullable=True,
        description="relayq: seconds one handler call may take before the attempt counts as "
        "failed (and is retried); null waits forever.",
    ),
)

_SPECS: dict[str, FieldSpec] = {f.name: f for f in (*QUEUE_FIELDS, *EXTRA_FIELDS)}


def _fmt(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def check_field(spec: FieldSpec, value: Any) -> int | float | None:
    """Validate one value against its spec; return it normalised (ints stay ints)."""
    if value is None:
        if spec.nullable:
            return None
        raise TypeError(f"{spec.name} must be a number, not None")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{spec.name} must be a number, not {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{spec.name} must be a finite number")
    if spec.kind is int:
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"{spec.name} must be an integer")
            value = int(value)
    else:
        value = float(value)
    if spec.choices is not None and value not in spec.choices:
        options = " or ".join(str(c) for c in spec.choices)
        raise ValueError(f"{spec.name} must be {options}")
    lo, hi = spec.minimum, spec.maximum
    if lo is not None and hi is not None and not lo <= value <= hi:
        raise ValueError(f"{spec.name} must be between {_fmt(lo)} and {_fmt(hi)}")
    if lo is not None and hi is None and value < lo:
        raise ValueError(f"{spec.name} must be at least {_fmt(lo)}")
    result: int | float = value
    return result


def validate_queue_record(
    record: Mapping[str, Any] | None,
    *,
    defaults: Mapping[str, Any] | None = None,
    allow_extra: bool = False,
) -> dict[str, Any]:
    """Fill Kong's defaults into a plugin's ``queue`` record and validate every field.

    ``defaults`` overrides field defaults (used for a record default such as OpenTelemetry's
    ``{max_batch_size: 200}``). Unknown fields raise ``ValueError``; relayq's extra fields are
    accepted only with ``allow_extra``.
    """
    record = {} if record is None else record
    if not isinstance(record, Mapping):
        raise TypeError(f"queue must be a record (mapping), not {type(record).__name__}")
    known = _SPECS if allow_extra else {f.name: f for f in QUEUE_FIELDS}
    out: dict[str, Any] = {}
    for key in record:
        if allow_extra and key in BEYOND_KONG_FIELDS:
            if record[key] is not None:
                out[key] = record[key]
        elif key not in known and key not in ("name", "log_tag"):
            raise ValueError(f"{key}: unknown field")
    for name, spec in known.items():
        if name in record and record[name] is not None:
            out[name] = check_field(spec, record[name])
        elif defaults is not None and name in defaults:
            out[name] = defaults[name]
        elif name in record and spec.nullable:
            out[name] = None
        else:
            out[name] = spec.default
    probe = {k: v for k, v in out.items() if k in BEYOND_KONG_FIELDS}
    if probe:  # validate the beyond-Kong values with QueueConfig's own checks
        checked = QueueConfig(name="validate", **probe)
        out.update({k: getattr(checked, k) for k in probe})
    return out


BEYOND_KONG_FIELDS = ("retry_on", "retry_jitter", "drop_policy", "block_timeout", "spool",
                      "dead_letter")

RETRY_ON = ("all", "retryable")
DROP_POLICIES = ("drop_oldest", "drop_newest", "block")
_BLOCK_TIMEOUT = FieldSpec("block_timeout", float, 0.1, 0, 3600)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, not {type(value).__name__}")
    if value not in choices:
        raise ValueError(f"{name} must be one of: {', '.join(choices)} (got {value!r})")


def _settings_mapping(name: str, value: object, known: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a record (mapping), not {type(value).__name__}")
    unknown = [k for k in value if k not in known]
    if unknown:
        raise ValueError(f"{name}.{unknown[0]}: unknown field")
    if not isinstance(value.get("path"), str) or not value["path"]:
        raise ValueError(f"{name}.path is required (a directory)")
    return value


@dataclass(frozen=True, slots=True)
class SpoolSettings:
    """``queue.spool``: keep waiting entries in a crash-safe store under ``path``.

    ``fsync`` is the group-commit interval in seconds: how much a crash can lose
    (0 = durable before ``enqueue`` returns; ``False`` = never fsync, OS-buffered).
    ``max_bytes`` bounds the spool on disk; when full, the queue's drop policy applies.
    """

    path: str
    max_bytes: int | None = None
    fsync: float | bool = 0.05

    @classmethod
    def coerce(cls, value: object) -> SpoolSettings | None:
        if value is None or isinstance(value, SpoolSettings):
            return value
        v = _settings_mapping("spool", value, ("path", "max_bytes", "fsync"))
        max_bytes = v.get("max_bytes")
        if max_bytes is not None:
            max_bytes = check_field(FieldSpec("spool.max_bytes", int, None, 1, None), max_bytes)
        fsync = v.get("fsync", 0.05)
        if fsync is True:
            fsync = 0.05
        elif fsync is not False:
            fsync = check_field(FieldSpec("spool.fsync", float, 0.05, 0, 60), fsync)
        return cls(path=v["path"], max_bytes=max_bytes, fsync=fsync)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class DeadLetterSettings:
    """``queue.dead_letter``: batches that exhaust their retries or fail permanently are
    written under ``path`` with their last error, instead of being discarded."""

    path: str

    @classmethod
    def coerce(cls, value: object) -> DeadLetterSettings | None:
        if value is None or isinstance(value, DeadLetterSettings):
            return value
        return cls(path=_settings_mapping("dead_letter", value, ("path",))["path"])


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """One queue's parameters: Kong's eight fields plus ``name``, ``log_tag`` and relayq extras.

    Validated once at construction; frozen afterwards. Errors name the field and its bound:
    ``TypeError`` for a wrong type, ``ValueError`` for an out-of-range value.
    """

    name: str
    max_batch_size: int = 1
    max_coalescing_delay: float = 1.0
    max_entries: int = 10000
    max_bytes: int | None = None
    max_retry_time: float = 60.0
    initial_retry_delay: float = 0.01
    max_retry_delay: float = 60.0
    concurrency_limit: int = 1
    log_tag: str | None = None
    handler_timeout: float | None = 60.0
    # Beyond Kong (all off by default, so Kong's behaviour stays the default):
    retry_on: str = "all"  # "all" (Kong: retry every failure) or "retryable"
    retry_jitter: bool = False  # full jitter on the backoff delay
    drop_policy: str = "drop_oldest"  # or "drop_newest", or "block" (producers wait)
    block_timeout: float = 0.1  # seconds a producer may wait with drop_policy "block"
    spool: SpoolSettings | None = None  # crash-safe spool of waiting entries
    dead_letter: DeadLetterSettings | None = None  # where lost batches go instead

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"name must be a string, not {type(self.name).__name__}")
        if not self.name:
            raise ValueError("name must be a non-empty string")
        if self.log_tag is not None and not isinstance(self.log_tag, str):
            raise TypeError(f"log_tag must be a string or None, not {type(self.log_tag).__name__}")
        for spec in _SPECS.values():
            object.__setattr__(self, spec.name, check_field(spec, getattr(self, spec.name)))
        _check_choice("retry_on", self.retry_on, RETRY_ON)
        _check_choice("drop_policy", self.drop_policy, DROP_POLICIES)
        if not isinstance(self.retry_jitter, bool):
            kind = type(self.retry_jitter).__name__
            raise TypeError(f"retry_jitter must be a boolean, not {kind}")
        object.__setattr__(self, "block_timeout", check_field(_BLOCK_TIMEOUT, self.block_timeout))
        object.__setattr__(self, "spool", SpoolSettings.coerce(self.spool))
        object.__setattr__(self, "dead_letter", DeadLetterSettings.coerce(self.dead_letter))

    @classmethod
    def from_dict(cls, conf: Mapping[str, Any]) -> QueueConfig:
        """Build from a plain mapping (as Kong plugins pass tables); unknown keys are errors."""
        if not isinstance(conf, Mapping):
            kind = type(conf).__name__
            raise TypeError(f"queue config must be a QueueConfig or a dict, not {kind}")
        unknown = [k for k in conf if k not in _FIELD_NAMES]
        if unknown:
            raise ValueError(f"unknown queue config field(s): {', '.join(map(str, unknown))}")
        if "name" not in conf:
            raise ValueError("queue config must include a name")
        return cls(**conf)

    def replace(self, **changes: Any) -> QueueConfig:
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict."""
        return {f: getattr(self, f) for f in _FIELD_NAMES}


_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(QueueConfig))


def as_config(conf: QueueConfig | Mapping[str, Any]) -> QueueConfig:
    """Accept a ``QueueConfig`` or a dict with the same keys."""
    if isinstance(conf, QueueConfig):
        return conf
    return QueueConfig.from_dict(conf)
