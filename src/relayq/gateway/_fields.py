"""A tiny schema toolkit for the declarative file: checkers that collect every error with its path.

Kong validates a declarative file against its entity schemas and reports every violation at
once, each under the field it concerns. A checker here takes ``(value, path, errors)``, appends
``"<path>: <message>"`` for each problem and returns the normalised value, or ``INVALID`` so
callers can skip dependent checks without reporting the same mistake twice.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final

Checker = Callable[[Any, str, list[str]], Any]


class _Invalid:
    __slots__ = ()

    def __repr__(self) -> str:
        return "INVALID"


INVALID: Final = _Invalid()

# Kong's typedefs.utf8_name: ASCII letters, digits and . - _ ~ (other UTF-8 is accepted).
_NAME_ASCII = re.compile(r"[\x00-\x7f]")
_NAME_OK = re.compile(r"[A-Za-z0-9.\-_~]")
# Kong's tag pattern: printable ASCII except space, comma and slash; any non-ASCII UTF-8.
_TAG_BAD = re.compile(r"[\x00-\x20,/\x7f]")


def join(path: str, key: str) -> str:
    """``services[0]`` + ``name`` -> ``services[0].name``."""
    return f"{path}.{key}" if path else key


def at(path: str, index: int) -> str:
    """``services`` + 0 -> ``services[0]``."""
    return f"{path}[{index}]"


def _is_utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, e.g. from a JSON "\udcff" escape
        return False
    return True


def string(
    *,
    one_of: Collection[str] | None = None,
    pattern: str | None = None,
    pattern_message: str = "invalid value",
    validate: Callable[[str], str | None] | None = None,
    allow_empty: bool = False,
) -> Checker:
    """A string, optionally restricted to ``one_of``, a full-match ``pattern`` or a validator
    returning an error message."""
    compiled = re.compile(pattern) if pattern else None

    def check(value: Any, path: str, errors: list[str]) -> Any:
        if not isinstance(value, str):
            errors.append(f"{path}: expected a string")
            return INVALID
        if not value and not allow_empty:
            errors.append(f"{path}: length must be at least 1")
            return INVALID
        if not _is_utf8(value):
            errors.append(f"{path}: invalid utf-8 sequence")
            return INVALID
        if one_of is not None and value not in one_of:
            errors.append(f"{path}: expected one of: {', '.join(one_of)}")
            return INVALID
        if compiled is not None and not compiled.fullmatch(value):
            errors.append(f"{path}: {pattern_message}")
            return INVALID
        if validate is not None:
            message = validate(value)
            if message:
                errors.append(f"{path}: {message}")
                return INVALID
        return value

    return check


def integer(*, minimum: int | None = None, maximum: int | None = None,
            one_of: Collection[int] | None = None) -> Checker:
    """An integer (an integral float such as ``60000.0`` is accepted, as Lua numbers are)."""

    def check(value: Any, path: str, errors: list[str]) -> Any:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{path}: expected an integer")
            return INVALID
        if one_of is not None and value not in one_of:
            errors.append(f"{path}: expected one of: {', '.join(map(str, one_of))}")
            return INVALID
        if minimum is not None and maximum is not None and not minimum <= value <= maximum:
            errors.append(f"{path}: value should be between {minimum} and {maximum}")
            return INVALID
        if minimum is not None and value < minimum:
            errors.append(f"{path}: value must be greater than or equal to {minimum}")
            return INVALID
        return value

    return check


def boolean() -> Checker:
    def check(value: Any, path: str, errors: list[str]) -> Any:
        if not isinstance(value, bool):
            errors.append(f"{path}: expected a boolean")
            return INVALID
        return value

    return check


def array(element: Checker, *, unique: bool = False) -> Checker:
    """A list whose every element passes ``element``; ``unique`` rejects repeated values."""

    def check(value: Any, path: str, errors: list[str]) -> Any:
        if not isinstance(value, list):
            errors.append(f"{path}: expected an array")
            return INVALID
        out: list[Any] = []
        seen: set[Any] = set()
        ok = True
        for i, item in enumerate(value):
            checked = element(item, at(path, i), errors)
            if checked is INVALID:
                ok = False
                continue
            if unique:
                marker = repr(checked)
                if marker in seen:
                    errors.append(f"{at(path, i)}: duplicate value {checked!r}")
                    ok = False
                    continue
                seen.add(marker)
            out.append(checked)
        return out if ok else INVALID

    return check


def mapping(value_checker: Checker, *, key_checker: Checker | None = None) -> Checker:
    """A mapping with string keys; values checked under ``path.key``."""

    def check(value: Any, path: str, errors: list[str]) -> Any:
        if not isinstance(value, Mapping):
            errors.append(f"{path}: expected a map")
            return INVALID
        out: dict[str, Any] = {}
        ok = True
        for key, item in value.items():
            kpath = join(path, str(key))
            if not isinstance(key, str):
                errors.append(f"{kpath}: keys must be strings")
                ok = False
                continue
            if key_checker is not None and key_checker(key, kpath, errors) is INVALID:
                ok = False
                continue
            checked = value_checker(item, kpath, errors)
            if checked is INVALID:
                ok = False
                continue
            out[key] = checked
        return out if ok else INVALID

    return check


def any_record() -> Checker:
    """A mapping whose content someone else validates (a plugin's ``config``)."""

    def check(value: Any, path: str, errors: list[str]) -> Any:
        if not isinstance(value, Mapping):
            errors.append(f"{path}: expected a record")
            return INVALID
        return dict(value)

    return check


def uuid_string() -> Checker:
    def check(value: Any, path: str, errors: list[str]) -> Any:
        if not isinstance(value, str):
            errors.append(f"{path}: expected a string")
            return INVALID
        try:
            return str(uuid.UUID(value))
        except ValueError:
            errors.append(f"{path}: expected a valid UUID")
            return INVALID

    return check


def _utf8_name(value: str) -> str | None:
    for ch in _NAME_ASCII.findall(value):
        if not _NAME_OK.fullmatch(ch):
            return (
                f"invalid value '{value}': the only accepted ascii characters are "
                "alphanumerics or ., -, _, and ~"
            )
    return None


def name() -> Checker:
    """Kong's ``utf8_name`` for service, route and plugin instance names."""
    return string(validate=_utf8_name)


def _tag(value: str) -> str | None:
    if _TAG_BAD.search(value):
        return (
            f"invalid tag '{value}': expected printable ascii (except `,` and `/`) "
            "or valid utf-8 sequences"
        )
    return None


def tags() -> Checker:
    return array(string(validate=_tag))


def timestamp() -> Checker:
    """``created_at`` / ``updated_at`` as exported by ``kong config db_export`` (epoch s)."""
    return integer(minimum=0)


@dataclass(frozen=True)
class Field:
    """One field of a record: its checker, its default when absent (or null) and whether it
    must be present."""

    check: Checker
    default: Any = None
    required: bool = False


def record(
    value: Any,
    fields: Mapping[str, Field],
    path: str,
    errors: list[str],
    *,
    nested: Collection[str] = (),
) -> dict[str, Any] | None:
    """Check a mapping against ``fields``: unknown keys, missing required fields and every field
    error are reported. Keys in ``nested`` are passed through unchecked for the caller (child
    entity lists). Returns the record with defaults filled, or ``None`` if it is not a mapping;
    fields that failed are left out."""
    if not isinstance(value, Mapping):
        errors.append(f"{path}: expected a record" if path else "expected a record")
        return None
    out: dict[str, Any] = {}
    for key in value:
        if not isinstance(key, str):
            errors.append(f"{join(path, str(key))}: unknown field")
        elif key not in fields and key not in nested:
            errors.append(f"{join(path, key)}: unknown field")
    for key, spec in fields.items():
        raw = value.get(key)
        if raw is None:
            if spec.required:
                errors.append(f"{join(path, key)}: required field missing")
                continue
            default = spec.default
            out[key] = list(default) if isinstance(default, (list, tuple)) else default
            continue
        checked = spec.check(raw, join(path, key), errors)
        if checked is not INVALID:
            out[key] = checked
    for key in nested:
        if key in value:
            out[key] = value[key]
    return out
