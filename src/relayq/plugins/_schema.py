"""A small declarative config schema modelled on Kong's ``kong.db.schema``.

Plugin configs arrive as the plain dicts a Kong declarative file holds under
``plugins[].config``. Each plugin describes its fields once, as a table of :class:`Field` values,
and :meth:`Schema.validate` checks a whole config in one pass: it collects *every* error under
its dotted path (``queue.max_batch_size``, ``metrics[2].sample_rate``; array positions are
1-based, as in Kong's error tables), fills defaults, rejects unknown fields and raises
:class:`~relayq.plugins.PluginConfigError`. Messages are Kong's own texts so operators can
compare them with Kong's Admin API answers.

Rules kept from Kong:

- An absent field takes its default; an absent field with no default becomes ``None``. An
  explicit ``None`` (YAML ``null``) stays ``None`` and fails only when the field is required.
- A record's own default applies only when the whole record is absent; a partial record gets
  each missing sub-field's default (OpenTelemetry's ``queue`` default ``{max_batch_size=200}``
  versus a user-supplied ``{max_entries=...}``, which gets ``max_batch_size`` 1).
- Strings must be non-empty unless a field says otherwise (Kong's implicit ``len_min = 1``).
- Entity checks run only when the fields they read are valid.
- Deprecated fields log their message once per validation, at WARNING on ``relayq.plugins``,
  when their value is set and differs from the old default.

The shared ``queue`` record (:func:`queue_record`) is derived from the queue engine's own table,
``relayq.queue.QUEUE_FIELDS``, so defaults and bounds are stated once; :func:`legacy_fields`
gives the pre-3.3 batching fields every queue plugin still accepts.
"""

from __future__ import annotations

import copy
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from relayq.plugins._base import PluginConfigError
from relayq.plugins._luanum import lua_number

log = logging.getLogger("relayq.plugins")

FieldType = Literal[
    "string", "integer", "number", "boolean", "array", "set", "map", "record", "any"
]


class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Any = _NoDefault()
"""Marker for a field without a default (distinct from a default of ``None``)."""

# Kong's validation_errors texts (kong/db/schema/init.lua).
REQUIRED = "required field missing"
UNKNOWN = "unknown field"
_TYPE_ERRORS: dict[str, str] = {
    "string": "expected a string",
    "integer": "expected an integer",
    "number": "expected a number",
    "boolean": "expected a boolean",
    "array": "expected an array",
    "set": "expected a set",
    "map": "expected a map",
    "record": "expected a record",
}

Validator = Callable[[Any], str | None]
"""A custom per-field check: return an error message, or ``None`` when the value is fine."""


@dataclass(frozen=True)
class Deprecation:
    """A deprecated field: ``message`` is logged when the value is set and not ``old_default``."""

    message: str
    old_default: Any = None


@dataclass(frozen=True, kw_only=True)
class Field:
    """One field of a schema: its type, default and validations (Kong's field attributes)."""

    type: FieldType
    default: Any = NO_DEFAULT
    required: bool = False
    one_of: tuple[Any, ...] | None = None
    between: tuple[float, float] | None = None
    gt: float | None = None
    match: str | None = None  # a regular expression searched in the value (anchor it yourself)
    match_none: tuple[tuple[str, str], ...] = ()  # (regex, error message) pairs that must not match
    len_min: int | None = None  # strings default to 1 (Kong's implicit rule)
    len_max: int | None = None
    check: Validator | None = None  # runs after the built-in checks passed
    elements: Field | None = None  # array / set
    keys: Field | None = None  # map
    values: Field | None = None  # map
    fields: tuple[tuple[str, Field], ...] = ()  # record
    entity_checks: tuple[EntityCheck, ...] = ()  # record
    deprecation: Deprecation | None = None
    description: str = ""


@dataclass(frozen=True)
class When:
    """A condition on one field's value for :class:`Conditional` (Kong's ``if_match``)."""

    eq: Any = NO_DEFAULT
    one_of: tuple[Any, ...] | None = None
    required: bool = False

    def failure(self, value: Any) -> str | None:
        """Why ``value`` does not satisfy this condition, in Kong's words; ``None`` if it does."""
        if self.required and value is None:
            return REQUIRED
        if self.eq is not NO_DEFAULT and value != self.eq:
            return f"value must be {_show(self.eq)}"
        if self.one_of is not None and value not in self.one_of:
            return "expected one of: " + ", ".join(_show(v) for v in self.one_of)
        return None


@dataclass(frozen=True)
class Conditional:
    """Kong's ``conditional`` entity check: if ``if_field`` matches, ``then_field`` must too."""

    if_field: str
    if_match: When
    then_field: str
    then_match: When

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.if_field, self.then_field)

    def run(self, record: Mapping[str, Any]) -> dict[str, str]:
        if self.if_match.failure(record.get(self.if_field)) is not None:
            return {}
        problem = self.then_match.failure(record.get(self.then_field))
        if problem is None:
            return {}
        return {
            self.then_field: problem,
            "@entity": f"failed conditional validation given value of field '{self.if_field}'",
        }


@dataclass(frozen=True)
class CustomCheck:
    """Kong's ``custom_entity_check``: ``check(record)`` returns a message (reported at
    ``@entity``), a ``{field: message}`` dict, or ``None``. ``reads`` lists the fields it needs."""

    reads: tuple[str, ...]
    check: Callable[[Mapping[str, Any]], str | Mapping[str, str] | None]

    def run(self, record: Mapping[str, Any]) -> dict[str, str]:
        result = self.check(record)
        if result is None:
            return {}
        if isinstance(result, str):
            return {"@entity": result}
        return dict(result)


EntityCheck = Conditional | CustomCheck


def record(
    fields: Mapping[str, Field],
    *,
    default: Any = NO_DEFAULT,
    required: bool = False,
    entity_checks: Sequence[EntityCheck] = (),
    description: str = "",
) -> Field:
    """A record field from an ordered mapping of its sub-fields."""
    return Field(
        type="record",
        fields=tuple(fields.items()),
        default=default,
        required=required,
        entity_checks=tuple(entity_checks),
        description=description,
    )


class Schema:
    """A plugin's config schema: the top-level record plus the plugin name used in messages."""

    def __init__(
        self,
        plugin: str,
        fields: Mapping[str, Field],
        *,
        entity_checks: Sequence[EntityCheck] = (),
    ) -> None:
        self.plugin = plugin
        self.root = record(fields, entity_checks=entity_checks)

    @property
    def fields(self) -> dict[str, Field]:
        """The top-level fields by name, in declaration order."""
        return dict(self.root.fields)

    def validate(self, config: Mapping[str, Any] | None) -> dict[str, Any]:
        """Return ``config`` with defaults filled in, or raise ``PluginConfigError`` listing
        every problem. Deprecated fields in use are logged at WARNING."""
        errors: dict[str, str] = {}
        deprecations: list[str] = []
        value = _check(self.root, {} if config is None else config, "", errors, deprecations)
        if errors:
            raise PluginConfigError(self.plugin, errors)
        for message in deprecations:
            log.warning("%s", message)
        assert isinstance(value, dict)
        return value


# --------------------------------------------------------------------------------------------
# validation


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _add(errors: dict[str, str], path: str, message: str) -> None:
    key = path or "@entity"
    errors[key] = f"{errors[key]}; {message}" if key in errors else message


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return lua_number(value)
    return str(value)


def _check(spec: Field, value: Any, path: str, errors: dict[str, str], deps: list[str]) -> Any:
    """Validate one present, non-``None`` value (recursively); returns the normalised value."""
    kind = spec.type
    if kind in _CONTAINERS:
        before = len(errors)
        result = _CONTAINERS[kind](spec, value, path, errors, deps)
        if spec.check is not None and len(errors) == before:
            problem = spec.check(result)
            if problem is not None:
                _add(errors, path, problem)
        return result

    if kind == "any":  # validated only by ``check`` (or an entity check)
        if spec.check is not None:
            problem = spec.check(value)
            if problem is not None:
                _add(errors, path, problem)
        return value
    normalised = _check_scalar_type(kind, value)
    if normalised is _BAD:
        _add(errors, path, _TYPE_ERRORS[kind])
        return value
    problem = _scalar_problem(spec, normalised)
    if problem is not None:
        _add(errors, path, problem)
        return normalised
    if spec.check is not None:
        problem = spec.check(normalised)
        if problem is not None:
            _add(errors, path, problem)
    return normalised


_BAD: Any = object()


def _check_scalar_type(kind: str, value: Any) -> Any:
    if kind == "string":
        return value if isinstance(value, str) else _BAD
    if kind == "boolean":
        return value if isinstance(value, bool) else _BAD
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _BAD
    if isinstance(value, float) and not math.isfinite(value):
        return _BAD
    if kind == "integer":
        if isinstance(value, float):
            return int(value) if value.is_integer() else _BAD
        return value
    return value


def _scalar_problem(spec: Field, value: Any) -> str | None:
    if spec.one_of is not None and value not in spec.one_of:
        return "expected one of: " + ", ".join(_show(v) for v in spec.one_of)
    if spec.between is not None:
        low, high = spec.between
        if not low <= value <= high:
            return f"value should be between {_show(low)} and {_show(high)}"
    if spec.gt is not None and not value > spec.gt:
        return f"value must be greater than {_show(spec.gt)}"
    if isinstance(value, str):
        len_min = 1 if spec.len_min is None else spec.len_min
        if len(value) < len_min:
            return f"length must be at least {len_min}"
        if spec.len_max is not None and len(value) > spec.len_max:
            return f"length must be at most {spec.len_max}"
        if spec.match is not None and re.search(spec.match, value) is None:
            return f"invalid value: {value}"
        for pattern, message in spec.match_none:
            if re.search(pattern, value) is not None:
                return message
    return None


def _fill_missing(spec: Field) -> Any:
    """The value an absent field takes: a copy of its default, a filled record, or ``None``."""
    if spec.default is not NO_DEFAULT:
        return copy.deepcopy(spec.default)
    if spec.type == "record":
        return {}
    return None


def _check_record(
    spec: Field, value: Any, path: str, errors: dict[str, str], deps: list[str]
) -> Any:
    if not isinstance(value, Mapping):
        _add(errors, path, _TYPE_ERRORS["record"])
        return value
    declared = dict(spec.fields)
    out: dict[str, Any] = {}
    before = set(errors)
    for key in value:
        if key not in declared:
            _add(errors, _join(path, str(key)), UNKNOWN)
    for name, sub in spec.fields:
        sub_path = _join(path, name)
        present = name in value
        sub_value = value[name] if present else _fill_missing(sub)
        if sub_value is None and sub.type == "record" and sub.default is not None:
            # Kong's records are not nullable: null means "use the record's default".
            sub_value = _fill_missing(sub)
        if sub_value is None:
            if sub.required:
                _add(errors, sub_path, REQUIRED)
            out[name] = None
            continue
        out[name] = _check(sub, sub_value, sub_path, errors, deps)
        dep = sub.deprecation
        if present and dep is not None and sub_value != dep.old_default:
            deps.append(dep.message)
    failed = {key for key in errors if key not in before}
    for check in spec.entity_checks:
        if any(_path_failed(failed, _join(path, name)) for name in check.reads):
            continue
        for name, message in check.run(out).items():
            _add(errors, _join(path, name), message)
    return out


def _path_failed(failed: Iterable[str], path: str) -> bool:
    return any(
        key == path or key.startswith(path + ".") or key.startswith(path + "[") for key in failed
    )


def _check_array(
    spec: Field, value: Any, path: str, errors: dict[str, str], deps: list[str]
) -> Any:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        _add(errors, path, _TYPE_ERRORS[spec.type])
        return value
    out: list[Any] = []
    for index, element in enumerate(value, start=1):
        element_path = f"{path}[{index}]"
        if spec.elements is None:
            out.append(element)
        elif element is None:
            _add(errors, element_path, REQUIRED)
            out.append(None)
        else:
            out.append(_check(spec.elements, element, element_path, errors, deps))
    if spec.type == "set":
        unique: list[Any] = []
        for element in out:
            if element not in unique:
                unique.append(element)
        out = unique
    if spec.len_min is not None and len(out) < spec.len_min:
        _add(errors, path, f"length must be at least {spec.len_min}")
    return out


def _check_map(spec: Field, value: Any, path: str, errors: dict[str, str], deps: list[str]) -> Any:
    if not isinstance(value, Mapping):
        _add(errors, path, _TYPE_ERRORS["map"])
        return value
    out: dict[Any, Any] = {}
    for key, item in value.items():
        item_path = _join(path, str(key))
        if spec.keys is not None:
            key = _check(spec.keys, key, item_path, errors, deps)
        if item is None:
            _add(errors, item_path, REQUIRED)
            out[key] = None
        elif spec.values is not None:
            out[key] = _check(spec.values, item, item_path, errors, deps)
        else:
            out[key] = item
    return out


# --------------------------------------------------------------------------------------------
# the shared ``queue`` record and the legacy batching fields


def _queue_subfield(spec: Any) -> Field:
    kind: FieldType = "integer" if spec.kind is int else "number"
    choices = tuple(spec.choices) if spec.choices is not None else None
    between = None
    check = None
    if spec.minimum is not None and spec.maximum is not None:
        between = (spec.minimum, spec.maximum)
    elif spec.minimum is not None:
        minimum = spec.minimum

        def check(value: float, minimum: float = minimum) -> str | None:
            return None if value >= minimum else f"value should be at least {lua_number(minimum)}"

    return Field(
        type=kind,
        default=spec.default,
        required=not spec.nullable,
        one_of=choices,
        between=between,
        check=check,
        description=spec.description,
    )


def _check_queue(record: Mapping[str, Any]) -> str | dict[str, str] | None:
    """The engine's own validation of the whole record; its message names the field first
    (``retry_on must be one of: ...``, ``spool.path is required``), so it is reported there."""
    from relayq.queue import validate_queue_record

    try:
        validate_queue_record(record, allow_extra=True)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        head = re.match(r"([a-z_]+)[.: ]", message)
        if head is not None and head.group(1) in record:
            return {head.group(1): message}
        return message
    return None


def queue_record(default: Any = NO_DEFAULT) -> Field:
    """The shared ``queue`` record (Kong's ``typedefs.queue``) built from the engine's table.

    ``default`` is the record default used only when the whole record is absent (OpenTelemetry
    passes ``{"max_batch_size": 200}``); a partial record gets each field's own default. Besides
    Kong's eight fields the record accepts relayq's extras (``handler_timeout``, ``retry_on``,
    ``drop_policy``, ``spool``, ``dead_letter``...), validated by the engine itself.
    """
    from relayq.queue import BEYOND_KONG_FIELDS, EXTRA_FIELDS, QUEUE_FIELDS

    specs = (*QUEUE_FIELDS, *EXTRA_FIELDS)
    fields = tuple((spec.name, _queue_subfield(spec)) for spec in specs)
    known = {name for name, _ in fields}
    fields += tuple(
        (name, Field(type="any", default=None)) for name in BEYOND_KONG_FIELDS if name not in known
    )
    return Field(
        type="record",
        fields=fields,
        default=default,
        entity_checks=(CustomCheck(tuple(name for name, _ in fields), _check_queue),),
    )


def _bounds(name: str) -> tuple[float, float] | None:
    from relayq.queue import QUEUE_FIELDS

    for spec in QUEUE_FIELDS:
        if spec.name == name and spec.minimum is not None and spec.maximum is not None:
            return (spec.minimum, spec.maximum)
    return None


def legacy_fields(plugin: str) -> dict[str, Field]:
    """The pre-3.3 batching fields (``retry_count``, ``queue_size``, ``flush_timeout``) with
    Kong's schema-time deprecation messages; they default to null.

    Kong does not range-check them, so a bad ``queue_size`` only fails later when the queue is
    built on the request path; here they get the bounds of the queue fields they convert to.
    """
    return {
        "retry_count": Field(
            type="integer",
            default=None,
            deprecation=Deprecation(
                f"{plugin}: config.retry_count no longer works, "
                "please use config.queue.max_retry_time instead",
                old_default=10,
            ),
        ),
        "queue_size": Field(
            type="integer",
            default=None,
            between=_bounds("max_batch_size"),
            deprecation=Deprecation(
                f"{plugin}: config.queue_size is deprecated, "
                "please use config.queue.max_batch_size instead",
                old_default=1,
            ),
        ),
        "flush_timeout": Field(
            type="number",
            default=None,
            between=_bounds("max_coalescing_delay"),
            deprecation=Deprecation(
                f"{plugin}: config.flush_timeout is deprecated, "
                "please use config.queue.max_coalescing_delay instead",
                old_default=2,
            ),
        ),
    }


_CONTAINERS: dict[str, Callable[[Field, Any, str, dict[str, str], list[str]], Any]] = {
    "record": _check_record,
    "array": _check_array,
    "set": _check_array,
    "map": _check_map,
}
