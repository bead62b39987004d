"""The ``relayq`` command: serve a declarative config, check and migrate it, read queue status.

Exit codes: 0 success; 1 the operation failed (invalid config, unreachable listener, gateway
error); 2 bad command-line usage. Colour is used only when stdout is a terminal and
``NO_COLOR`` is unset, so piped output stays plain.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from relayq._migrate import MigrationError, migrate_text
from relayq.status import check_loopback, parse_address

DEFAULT_LISTEN = "127.0.0.1:8000"
DEFAULT_STATUS_URL = "http://127.0.0.1:8007"  # Kong's default status_listen port
DEFAULT_SHUTDOWN_TIMEOUT = 10.0



class CliError(Exception):
    """A failure to report as ``relayq <command>: <message>`` with exit code 1."""


# --- output -------------------------------------------------------------------------------


class Style:
    """ANSI colours, only when writing to a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.enabled = stream.isatty() and not os.environ.get("NO_COLOR")

    def __call__(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.enabled else text

    def red(self, text: str) -> str:
        return self(text, "31")

    def green(self, text: str) -> str:
        return self(text, "32")

    def yellow(self, text: str) -> str:
        return self(text, "33")

    def bold(self, text: str) -> str:
        return self(text, "1")


# --- serve ------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the gateway; its exit code becomes ours."""
    try:
        parse_address(args.listen)
        if args.status_listen:
            host, _ = parse_address(args.status_listen)
            check_loopback(host)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if args.config is not None and not Path(args.config).is_file():
        raise CliError(f"config file not found: {args.config}")
    from relayq.gateway import run

    return int(
        run(args.config, args.listen, args.workers, args.shutdown_timeout, args.status_listen)
    )


# --- config validate ----------------------------------------------------------------------


def validate_file(path: str) -> tuple[list[str], list[str]]:
    """The errors and the warnings (deprecations) the gateway's declarative loader reports."""
    from relayq.gateway import DeclarativeError, load_config

    with _captured_warnings() as warnings:
        try:
            load_config(path)
        except DeclarativeError as exc:
            return list(exc.errors), warnings
    return [], warnings


@contextlib.contextmanager
def _captured_warnings() -> Iterator[list[str]]:
    """Collect what relayq logs at WARNING and above instead of letting it reach stderr."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger = logging.getLogger("relayq")
    handler = Collect(logging.WARNING)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def cmd_validate(args: argparse.Namespace) -> int:
    """Check each file; print every error, not just the first, and the deprecations."""
    from relayq.queue import LEGACY_RULES

    style = Style(sys.stdout)
    failed = 0
    for path in args.files:
        errors, warnings = validate_file(path)
        for warning in dict.fromkeys(warnings):
            print(f"{path}: {style.yellow('warning')}: {warning}")
        if any(f"config.{rule.field} " in w for w in warnings for rule in LEGACY_RULES):
            print(f"{path}: hint: `relayq config migrate {path}` rewrites legacy queue parameters")
        if errors:
            failed += 1
            for error in errors:
                print(f"{path}: {style.red('error')}: {error}")
            print(f"{path}: {len(errors)} error{'s' if len(errors) != 1 else ''}")
        else:
            print(f"{path}: {style.green('valid')}")
    return 1 if failed else 0


# --- config migrate -----------------------------------------------------------------------


def _diff_lines(before: str, after: str, path: str, style: Style) -> Iterator[str]:
    for line in difflib.unified_diff(
        before.splitlines(keepends=True),
        after.splitlines(keepends=True),
        fromfile=path,
        tofile=f"{path} (migrated)",
    ):
        text = line if line.endswith("\n") else line + "\n"
        if line.startswith(("+++", "---")):
            yield style.bold(text.rstrip("\n")) + "\n"
        elif line.startswith("+"):
            yield style.green(text.rstrip("\n")) + "\n"
        elif line.startswith("-"):
            yield style.red(text.rstrip("\n")) + "\n"
        else:
            yield text


def cmd_migrate(args: argparse.Namespace) -> int:
    """Print the migration as a unified diff (and write it with ``--write``)."""
    path = Path(args.file)
    try:
        before = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        after, migration = migrate_text(before, as_json=path.suffix.lower() == ".json")
    except MigrationError as exc:
        raise CliError(str(exc)) from None
    for note in migration.notes:
        print(f"note: {note}", file=sys.stderr)
    if not migration.changed:
        print(f"{path}: no legacy queue parameters to migrate", file=sys.stderr)
        return 0
    sys.stdout.writelines(_diff_lines(before, after, str(path), Style(sys.stdout)))
    if args.write:
        _write_atomically(path, after)
        print(f"{path}: written", file=sys.stderr)
    return 0


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` in one step, keeping its permissions, so a crash never truncates it."""
    mode = path.stat().st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- status -------------------------------------------------------------------------------


def fetch_status(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET ``<url>/status`` from a status listener."""
    import httpx

    if "://" not in url:
        url = f"http://{url}"  # "127.0.0.1:8007" is what --status-listen was given
    target = url.rstrip("/") + "/status"
    try:
        response = httpx.get(target, timeout=timeout)
    except httpx.HTTPError as exc:
        raise CliError(
            f"cannot reach the status listener at {url}: {exc or type(exc).__name__} "
            "(start the gateway with --status-listen, or pass --url)"
        ) from None
    if response.status_code != 200:
        raise CliError(f"{target} answered HTTP {response.status_code}")
    try:
        document = response.json()
    except ValueError:
        raise CliError(f"{target} did not return JSON; is this a relayq status listener?") from None
    if not isinstance(document, dict) or not isinstance(document.get("workers"), list):
        raise CliError(f"{target} returned an unexpected document (no 'workers' list)")
    return document


COLUMNS = (
    "PID",
    "QUEUE",
    "DEPTH",
    "BYTES",
    "IN_FLIGHT",
    "SENT",
    "RETRIES",
    "DROPPED",
    "LAST_ERROR",
)


def status_rows(document: dict[str, Any]) -> list[list[str]]:
    """One row per (worker, queue), as strings in ``COLUMNS`` order."""
    from relayq.status import queue_table

    table = queue_table(document["workers"])
    # The workspace prefix of the keys only tells queues apart when there are several.
    single_workspace = len({q.get("workspace") for q in table}) <= 1
    rows = []
    for q in table:
        dropped = {k: v for k, v in (q.get("dropped") or {}).items() if v}
        detail = ",".join(f"{k}={v}" for k, v in sorted(dropped.items()))
        total = sum(dropped.values())
        rows.append(
            [
                str(q.get("pid", "")),
                str(q.get("name") if single_workspace and q.get("name") else q.get("queue")),
                str(q.get("depth", 0)),
                str(q.get("bytes", 0)),
                str(q.get("in_flight", 0)),
                str(q.get("sent", 0)),
                str(q.get("retries", 0)),
                f"{total} ({detail})" if total else "0",
                str(q.get("last_error") or "-"),
            ]
        )
    return rows


def format_table(rows: list[list[str]], style: Style, max_error: int = 60) -> str:
    """Aligned columns; long errors are cut so a row stays on one line."""
    cut = [[*row[:-1], _shorten(row[-1], max_error)] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cut)) for i, h in enumerate(COLUMNS)]
    out = ["  ".join(style.bold(h.ljust(w)) for h, w in zip(COLUMNS, widths, strict=True))]
    for row in cut:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        if row[7] != "0":
            cells[7] = style.red(cells[7])
        if row[8] != "-":
            cells[8] = style.yellow(cells[8])
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def cmd_dlq_list(args: argparse.Namespace) -> int:
    """Print the dead letters kept under a ``queue.dead_letter.path``."""
    from relayq.durable import dlq_list

    sys.stdout.write(dlq_list(args.path, args.queue))
    return 0


def dead_letter_body(entries: Sequence[bytes]) -> bytes:
    """A JSON array of a dead letter's entries: JSON strings (http-log's entries) embedded as
    they are, other strings quoted, structured entries as JSON."""
    from relayq.queue import decode_entry

    parts: list[str] = []
    for data in entries:
        value = decode_entry(data)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str):
            try:
                json.loads(value)
            except ValueError:
                value = json.dumps(value)
            parts.append(value)
        else:
            parts.append(json.dumps(value, separators=(",", ":")))
    return ("[" + ",".join(parts) + "]").encode()


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    """POST every dead letter to ``--url`` as a JSON array; remove what was accepted."""
    import httpx

    from relayq.durable import dlq_replay

    def send(queue: str, entries: list[bytes]) -> bool:
        response = httpx.post(args.url, content=dead_letter_body(entries), timeout=args.timeout,
                              headers={"Content-Type": "application/json",
                                       "X-Relayq-Queue": queue})
        if response.status_code >= 300:
            print(f"relayq dlq replay: {args.url} answered {response.status_code} for a batch "
                  f"of queue {queue}", file=sys.stderr)
            return False
        return True

    replayed, failed = dlq_replay(args.path, send, args.queue)
    print(f"replayed {replayed} dead letter(s), {failed} failed (kept)")
    return 0 if failed == 0 else 1


def cmd_status(args: argparse.Namespace) -> int:
    """Print the queues of every worker behind a status listener."""
    document = fetch_status(args.url, args.timeout)
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    style = Style(sys.stdout)
    rows = status_rows(document)
    workers = len(document["workers"])
    if not rows:
        print(f"{workers} worker{'s' if workers != 1 else ''}, no queues yet")
        return 0
    print(format_table(rows, style))
    return 0


# --- argument parsing ---------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _address(text: str) -> str:
    try:
        parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    """The ``relayq`` argument parser (exposed for documentation and tests)."""
    from relayq import __version__

    parser = argparse.ArgumentParser(
        prog="relayq",
        description="Kong Gateway's plugin queues in Python: a gateway, its config tools "
        "and queue status.",
        epilog="exit codes: 0 success, 1 failure, 2 usage error",
    )
    parser.add_argument("--version", action="version", version=f"relayq {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve", help="run the gateway", description="Run the Kong-style gateway."
    )
    serve.add_argument(
        "--config",
        metavar="FILE",
        help="Kong DB-less declarative file (default: the built-in example)",
    )
    serve.add_argument(
        "--listen",
        metavar="HOST:PORT",
        type=_address,
        default=DEFAULT_LISTEN,
        help=f"proxy address (default: {DEFAULT_LISTEN})",
    )
    serve.add_argument(
        "--workers",
        metavar="N",
        type=_positive_int,
        default=1,
        help="worker processes, each with its own queues (default: 1)",
    )
    serve.add_argument(
        "--shutdown-timeout",
        metavar="S",
        type=_seconds,
        default=DEFAULT_SHUTDOWN_TIMEOUT,
        help=f"seconds to flush the queues on shutdown (default: {DEFAULT_SHUTDOWN_TIMEOUT:g})",
    )
    serve.add_argument(
        "--status-listen",
        metavar="HOST:PORT",
        type=_address,
        help="serve /status and /metrics on this loopback address (default: off)",
    )
    serve.set_defaults(handler=cmd_serve)

    config = commands.add_parser("config", help="check or migrate a declarative config")
    config_commands = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    validate = config_commands.add_parser(
        "validate",
        help="check a declarative file, printing every error",
        description="Check declarative files; exit 1 if any has an error.",
    )
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.set_defaults(handler=cmd_validate)
    migrate = config_commands.add_parser(
        "migrate",
        help="move legacy queue parameters into the queue record",
        description="Rewrite retry_count, queue_size, flush_timeout, batch_span_count and "
        "batch_flush_delay with Kong's conversion rules; prints a unified diff, keeping "
        "comments.",
    )
    migrate.add_argument("file", metavar="FILE")
    migrate.add_argument("--write", action="store_true", help="also rewrite FILE in place")
    migrate.set_defaults(handler=cmd_migrate)

    status = commands.add_parser(
        "status",
        help="show the queues behind a status listener",
        description="Read /status from a status listener and print one row per queue.",
    )
    status.add_argument(
        "--url",
        default=os.environ.get("RELAYQ_STATUS_URL", DEFAULT_STATUS_URL),
        help=f"status listener URL (default: $RELAYQ_STATUS_URL or {DEFAULT_STATUS_URL})",
    )
    status.add_argument("--json", action="store_true", help="print the raw JSON document")
    status.add_argument(
        "--timeout", type=_seconds, default=5.0, help="seconds to wait (default: 5)"
    )
    status.set_defaults(handler=cmd_status)

    dlq = commands.add_parser("dlq", help="list or replay dead letters")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    dlq_ls = dlq_commands.add_parser(
        "list", help="list the dead letters kept", description="One row per undelivered batch.")
    dlq_ls.add_argument("--path", required=True, help="the queue.dead_letter.path directory")
    dlq_ls.add_argument("--queue", help="only this queue's dead letters")
    dlq_ls.set_defaults(handler=cmd_dlq_list)
    dlq_re = dlq_commands.add_parser(
        "replay", help="send dead letters again",
        description="POST each dead letter to --url as a JSON array of its entries; what the "
        "receiver accepts (status < 300) is removed, the rest is kept.")
    dlq_re.add_argument("--path", required=True, help="the queue.dead_letter.path directory")
    dlq_re.add_argument("--url", required=True, help="where to POST the batches")
    dlq_re.add_argument("--queue", help="only this queue's dead letters")
    dlq_re.add_argument("--timeout", type=_seconds, default=10.0,
                        help="seconds per request (default: 10)")
    dlq_re.set_defaults(handler=cmd_dlq_replay)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``relayq`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    command = " ".join(filter(None, [args.command, getattr(args, "config_command", None),
                                     getattr(args, "dlq_command", None)]))
    try:
        return handler(args)
    except CliError as exc:
        print(f"relayq {command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
