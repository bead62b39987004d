"""The ``relayq`` command itself: usage errors, ``serve`` argument checks, colour on terminals."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from relayq.cli import Style, format_table, main


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relayq", *args], capture_output=True, text=True, timeout=60
    )


def test_console_script_and_module_agree() -> None:
    script = Path(sys.executable).parent / "relayq"
    via_script = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    via_module = run_cli("--version")
    assert via_script.returncode == via_module.returncode == 0
    assert via_script.stdout == via_module.stdout == "relayq 0.1.0\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--workers", "0"], "must be at least 1"),
        (["serve", "--workers", "two"], "expected a whole number"),
        (["serve", "--listen", "8000"], "expected HOST:PORT"),
        (["serve", "--shutdown-timeout", "-1"], "must be a finite number >= 0"),
        (["serve", "--status-listen", "127.0.0.1:99999"], "port must be between 0 and 65535"),
        ([], "required: COMMAND"),
        (["config"], "required: ACTION"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_serve_refuses_a_remote_status_listener_and_a_missing_config(tmp_path: Path) -> None:
    remote = run_cli("serve", "--status-listen", "0.0.0.0:8007")
    assert remote.returncode == 1
    assert "relayq serve: status listener refuses the non-loopback address '0.0.0.0'" in (
        remote.stderr
    )
    missing = run_cli("serve", "--config", str(tmp_path / "nope.yml"))
    assert missing.returncode == 1
    assert f"relayq serve: config file not found: {tmp_path / 'nope.yml'}" in missing.stderr


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [["1", "q", "0", "0", "0", "5", "0", "2 (capacity=2)", "boom"]]
    monkeypatch.delenv("NO_COLOR", raising=False)
    coloured = format_table(rows, Style(_Terminal()))
    assert "\x1b[31m2 (capacity=2)" in coloured and "\x1b[33mboom" in coloured
    assert "\x1b[" not in format_table(rows, Style(io.StringIO()))
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b[" not in format_table(rows, Style(_Terminal()))


def test_main_returns_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "migrate", str(tmp_path / "absent.yml")]) == 1
    assert "relayq config migrate: cannot read" in capsys.readouterr().err
