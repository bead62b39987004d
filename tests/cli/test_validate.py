"""``relayq config validate``: exit codes, every error at once, deprecation warnings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

VALID = """\
_format_version: "3.0"
services:
  - name: orders
    url: http://127.0.0.1:9/
    routes:
      - name: orders
        paths: [/orders]
plugins:
  - name: http-log
    config:
      http_endpoint: http://127.0.0.1:9/logs
"""

INVALID = """\
_format_version: "3.0"
services:
  - name: orders
    url: http://127.0.0.1:9/
    routes:
      - name: r
        paths: [orders]
    plugins:
      - name: http-log
        config:
          http_endpoint: http://127.0.0.1:9/logs
          bogus: 1
      - name: no-such-plugin
"""


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relayq", *args], capture_output=True, text=True, timeout=60
    )


def test_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "kong.yml"
    path.write_text(VALID)
    result = run_cli("config", "validate", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == f"{path}: valid\n"


def test_every_error_is_printed(tmp_path: Path) -> None:
    path = tmp_path / "kong.yml"
    path.write_text(INVALID)
    result = run_cli("config", "validate", str(path))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert f"{path}: error: services[0].routes[0].paths[0]: must start with /" in lines
    assert f"{path}: error: services[0].plugins[0].config.bogus: unknown field" in lines
    assert any(
        line.startswith(f"{path}: error: services[0].plugins[1].name: plugin 'no-such-plugin'")
        for line in lines
    )
    assert lines[-1] == f"{path}: 3 errors"
    assert "\x1b[" not in result.stdout


def test_several_files_and_unreadable_ones(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yml", tmp_path / "bad.json"
    good.write_text(VALID)
    bad.write_text(json.dumps({"_format_version": "3.0", "services": "nope"}))
    missing = tmp_path / "missing.yml"
    result = run_cli("config", "validate", str(good), str(bad), str(missing))
    assert result.returncode == 1
    assert f"{good}: valid" in result.stdout.splitlines()
    assert f"{bad}: error: services:" in result.stdout
    assert f"{missing}: error: cannot read {missing}" in result.stdout


def test_legacy_parameters_are_warned_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "kong.yml"
    path.write_text(VALID + "      queue_size: 5\n")
    result = run_cli("config", "validate", str(path))
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert (
        f"{path}: warning: http-log: config.queue_size is deprecated, please use "
        "config.queue.max_batch_size instead"
    ) in lines
    assert f"{path}: hint: `relayq config migrate {path}` rewrites legacy queue parameters" in lines
    assert result.stderr == ""  # the warning is reported once, not logged again


def test_migrated_file_validates_without_warnings(tmp_path: Path) -> None:
    path = tmp_path / "kong.yml"
    path.write_text(VALID + "      queue_size: 5\n      flush_timeout: 3\n      retry_count: 4\n")
    assert run_cli("config", "migrate", str(path), "--write").returncode == 0
    result = run_cli("config", "validate", str(path))
    assert (result.returncode, result.stdout) == (0, f"{path}: valid\n")


def test_migrates_json_as_json(tmp_path: Path) -> None:
    path = tmp_path / "kong.json"
    document = {
        "_format_version": "3.0",
        "plugins": [
            {"name": "statsd", "config": {"queue_size": 50, "flush_timeout": 2.5}},
        ],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    assert run_cli("config", "migrate", str(path), "--write").returncode == 0
    migrated = json.loads(path.read_text())
    assert migrated["plugins"][0]["config"] == {
        "queue": {"max_batch_size": 50, "max_coalescing_delay": 2.5}
    }
    assert path.read_text().startswith('{\n  "_format_version"')
    assert run_cli("config", "validate", str(path)).returncode == 0
