"""``relayq config migrate``'s engine: rewrite Kong's legacy queue parameters (retry_count,
queue_size, flush_timeout, batch_span_count, batch_flush_delay) into the ``queue`` record of a
declarative config, keeping comments, key order, quotes and indentation where ruamel.yaml can,
and explaining every change in a note."""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from relayq.queue._legacy import RECORD_DEFAULTS

# The plugins whose configs carry Kong's queue record (and possibly its legacy fields).
QUEUE_PLUGINS = frozenset({"http-log", "statsd", "datadog", "opentelemetry", "zipkin"})


class MigrationError(ValueError):
    """The document could not be read."""


@dataclass
class Migration:
    """The outcome of migrating one document: the notes explain every change."""

    notes: list[str] = field(default_factory=list)
    changed: bool = False


def _yaml(text: str) -> Any:
    from ruamel.yaml import YAML

    yaml = YAML()  # round-trip: keeps comments, key order, quotes and flow style
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap long lines (they would show up in the diff)
    mapping, sequence, offset = guess_indent(text)
    yaml.indent(mapping=mapping, sequence=sequence, offset=offset)
    return yaml


def guess_indent(text: str) -> tuple[int, int, int]:
    """The (mapping, sequence, offset) indentation most used in ``text``, for ruamel.yaml.

    Re-indenting a whole file would bury the real change in the diff, so the dump mimics the
    file's own style (``plugins:`` then ``- name`` at the same column, or indented).
    """
    lines = [
        (len(line) - len(line.lstrip(" ")), line.strip())
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    maps: dict[int, int] = {}
    offsets: dict[int, int] = {}
    for (col, content), (next_col, next_content) in itertools.pairwise(lines):
        if not content.split(" #")[0].rstrip().endswith(":"):
            continue
        key_col = col + 2 if content.startswith("- ") else col
        step = next_col - key_col
        if next_content.startswith("- ") and step >= 0:
            offsets[step] = offsets.get(step, 0) + 1
        elif step > 0:
            maps[step] = maps.get(step, 0) + 1
    mapping = max(maps, key=lambda k: maps[k]) if maps else 2
    offset = max(offsets, key=lambda k: offsets[k]) if offsets else 0
    return mapping, max(offset + 2, mapping), offset


def migrate_text(text: str, *, as_json: bool = False) -> tuple[str, Migration]:
    """Rewrite legacy queue parameters in a declarative config; return the new text and notes.

    JSON input (``as_json``) is loaded the same way, as YAML is a superset of JSON, and written
    back as JSON with the file's indentation.
    """
    yaml = _yaml(text)
    try:
        document = yaml.load(text)
    except Exception as exc:
        raise MigrationError(f"not valid {'JSON' if as_json else 'YAML'}: {exc}") from None
    result = Migration()
    for where, plugin in _queue_plugins(document, ""):
        _migrate_plugin(where, plugin, result)
    if not result.changed:
        return text, result
    if as_json:
        indented = next((line for line in text.splitlines() if line[:1] in (" ", "\t")), None)
        indent = len(indented) - len(indented.lstrip()) if indented else None
        return json.dumps(document, indent=indent, ensure_ascii=False) + "\n", result
    out = io.StringIO()
    yaml.dump(document, out)
    return out.getvalue(), result


def _queue_plugins(node: Any, where: str) -> Iterator[tuple[str, Any]]:
    """Every queue plugin object in the document, at any level (global, service, route, ...)."""
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{where}.{key}" if where else str(key)
            if key == "plugins" and isinstance(value, list):
                for index, item in enumerate(value):
                    if isinstance(item, dict) and item.get("name") in QUEUE_PLUGINS:
                        yield f"{path}[{index}]", item
                    else:
                        yield from _queue_plugins(item, f"{path}[{index}]")
            else:
                yield from _queue_plugins(value, path)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _queue_plugins(item, f"{where}[{index}]")


def _migrate_plugin(where: str, plugin: Any, result: Migration) -> None:
    from relayq.queue import LEGACY_RULES

    config = plugin.get("config")
    if not isinstance(config, dict):
        return
    name = plugin["name"]
    label = f"{where} ({name})"
    present = [rule for rule in LEGACY_RULES if rule.field in config]
    if not present:
        return
    keys = list(config)
    position = min(keys.index(rule.field) for rule in present)
    targets: dict[str, Any] = {}
    for rule in present:
        value = config[rule.field]
        if value is None or (not isinstance(value, bool) and value == rule.old_default):
            result.notes.append(
                f"{label}: config.{rule.field} = {value} is the old default, which means "
                "unset: removed"
            )
        elif rule.target is None:
            result.notes.append(
                f"{label}: config.{rule.field} = {value} has no equivalent and never worked "
                "since Kong 3.3: removed; retries are bounded by config.queue.max_retry_time "
                "(with config.queue.initial_retry_delay)"
            )
        else:
            if rule.target in targets:
                result.notes.append(
                    f"{label}: config.{rule.field} overrides the value taken from an earlier "
                    f"legacy field for config.queue.{rule.target}, as Kong applies them in order"
                )
            targets[rule.target] = value
            result.notes.append(
                f"{label}: config.{rule.field} = {value} -> config.queue.{rule.target}"
            )
    # In document order, so the comments they carried stay in order.
    orphans = "".join(
        _delete_returning_comments(config, field)
        for field in sorted((rule.field for rule in present), key=keys.index)
    )
    result.changed = True
    anchor = _set_queue_fields(config, name, targets, position, label, result) if targets else None
    if orphans:
        _attach_comments(config, anchor, position, orphans)


def _set_queue_fields(
    config: Any,
    plugin_name: str,
    targets: dict[str, Any],
    position: int,
    label: str,
    result: Migration,
) -> str | None:
    """Write the converted values into ``config.queue``; return ``"queue"`` if the record was
    inserted where the legacy fields were (the comments after them then follow it)."""
    from ruamel.yaml.comments import CommentedMap

    queue = config.get("queue")
    if isinstance(queue, dict):
        for key, value in targets.items():
            old = queue.get(key)
            if key in queue and old != value:
                result.notes.append(
                    f"{label}: config.queue.{key} was {old}; the legacy value {value} replaces "
                    "it because Kong lets the legacy field win"
                )
            queue[key] = value
        return None
    record = CommentedMap()
    for key, value in RECORD_DEFAULTS.get(plugin_name, {}).items():
        if key not in targets:
            record[key] = value
            result.notes.append(
                f"{label}: config.queue.{key} = {value} added: it is this plugin's default "
                "only while the whole queue record is absent"
            )
    record.update(targets)
    if "queue" in config:  # present but null
        config["queue"] = record
        return None
    config.insert(min(position, len(config)), "queue", record)
    return "queue"


def _delete_returning_comments(mapping: Any, key: str) -> str:
    """Delete ``key`` from a round-trip mapping; return the full-line comments after it.

    ruamel.yaml attaches the comment lines below a key to that key, so deleting it would also
    delete the comments describing the next key; the caller re-attaches them. The key's own
    end-of-line comment goes with it.
    """
    slot = mapping.ca.items.pop(key, None)
    del mapping[key]
    token = slot[2] if slot and len(slot) > 2 else None
    if token is None:
        return ""
    following = str(token.value).partition("\n")[2]
    return following if following.strip() else ""


def _attach_comments(config: Any, anchor: str | None, position: int, comments: str) -> None:
    """Put comment lines back where the deleted keys were: after ``anchor`` (the new queue
    record) or after the key before ``position``."""
    from ruamel.yaml.error import CommentMark
    from ruamel.yaml.tokens import CommentToken

    keys = list(config)
    if anchor is None:
        if position == 0:
            config.yaml_set_start_comment(
                "\n".join(line.strip().lstrip("#").strip() for line in comments.splitlines())
            )
            return
        anchor = keys[min(position, len(keys)) - 1]
    owner, owner_key = config, anchor
    while isinstance(owner[owner_key], dict) and len(owner[owner_key]):
        owner = owner[owner_key]
        owner_key = list(owner)[-1]
    existing = owner.ca.items.get(owner_key)
    if existing and len(existing) > 2 and existing[2] is not None:
        existing[2].value = str(existing[2].value) + comments
    else:
        owner.ca.items[owner_key] = [
            None,
            None,
            CommentToken("\n" + comments, CommentMark(0)),
            None,
        ]
