"""``relayq config migrate``: Kong's legacy-parameter conversion rules, the diff, comments and
layout kept, ``--write``; run as a real subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ruamel.yaml import YAML

LEGACY = """\
_format_version: "3.0"
# global plugins
plugins:
  - name: http-log   # ship access logs
    config:
      http_endpoint: http://logs:9000/  # the endpoint
      # legacy batching
      queue_size: 10
      flush_timeout: 2
      retry_count: 5  # old retries
      # the timeout, in ms
      timeout: 1000
services:
  - name: orders
    url: http://orders:8080
    plugins:
      - name: opentelemetry
        config:
          traces_endpoint: http://otel:4318/v1/traces
          batch_flush_delay: 5
      - name: statsd
        config:
          queue_size: 20
          queue:
            max_batch_size: 5   # five
            max_retry_time: 10
    routes:
      - name: r
        paths: [/orders]
        plugins:
          - name: datadog
            config:
              retry_count: 10
              queue_size: null
              flush_timeout: 7
          - name: key-auth
            config:
              retry_count: 3
"""


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relayq", *args], capture_output=True, text=True, timeout=60
    )


def load(text: str) -> dict:  # type: ignore[type-arg]
    return YAML(typ="safe").load(text)  # type: ignore[no-any-return]


def test_converts_with_kong_rules(tmp_path: Path) -> None:
    path = tmp_path / "kong.yml"
    path.write_text(LEGACY)
    result = run_cli("config", "migrate", str(path))
    assert result.returncode == 0, result.stderr
    assert path.read_text() == LEGACY  # without --write nothing changes

    diff = result.stdout
    assert diff.startswith(f"--- {path}\n+++ {path} (migrated)\n")
    removed = {line[1:].strip() for line in diff.splitlines() if line.startswith("-  ")}
    assert "queue_size: 10" in removed and "retry_count: 5  # old retries" in removed
    assert "\x1b[" not in diff  # no colour when piped

    path.write_text(LEGACY)
    written = run_cli("config", "migrate", str(path), "--write")
    assert written.returncode == 0 and written.stdout == diff
    doc = load(path.read_text())

    http_log = doc["plugins"][0]["config"]
    # queue_size converts; flush_timeout 2 is the old default (unset); retry_count is dropped.
    assert http_log == {
        "http_endpoint": "http://logs:9000/",
        "queue": {"max_batch_size": 10},
        "timeout": 1000,
    }
    otel, statsd = (p["config"] for p in doc["services"][0]["plugins"])
    # A created OTel record spells out its record default, or the batch size would become 1.
    assert otel["queue"] == {"max_batch_size": 200, "max_coalescing_delay": 5}
    assert "batch_flush_delay" not in otel
    # The legacy value wins over the queue record's, as in Kong.
    assert statsd == {"queue": {"max_batch_size": 20, "max_retry_time": 10}}
    datadog, key_auth = (p["config"] for p in doc["services"][0]["routes"][0]["plugins"])
    assert datadog == {"queue": {"max_coalescing_delay": 7}}
    assert key_auth == {"retry_count": 3}  # not a queue plugin: untouched

    notes = written.stderr
    assert "plugins[0] (http-log): config.retry_count = 5 has no equivalent" in notes
    assert "config.flush_timeout = 2 is the old default" in notes
    assert "config.queue.max_batch_size was 5; the legacy value 20 replaces it" in notes
    assert "services[0].routes[0].plugins[0] (datadog)" in notes

    again = run_cli("config", "migrate", str(path))
    assert again.returncode == 0 and again.stdout == ""
    assert "no legacy queue parameters to migrate" in again.stderr


def test_keeps_comments_and_layout(tmp_path: Path) -> None:
    path = tmp_path / "kong.yml"
    path.write_text(LEGACY)
    assert run_cli("config", "migrate", str(path), "--write").returncode == 0
    lines = path.read_text().splitlines()
    for comment in (
        "# global plugins",
        "  - name: http-log   # ship access logs",
        "      http_endpoint: http://logs:9000/  # the endpoint",
        "        paths: [/orders]",
    ):
        assert comment in lines
    # The comment that described `timeout` still sits right above it, after the new record.
    at = lines.index("      # the timeout, in ms")
    assert lines[at - 2 : at + 2] == [
        "      queue:",
        "        max_batch_size: 10",
        "      # the timeout, in ms",
        "      timeout: 1000",
    ]
    assert "max_batch_size: 20  # five" in path.read_text()
    # Untouched parts keep their exact text.
    assert path.read_text().startswith('_format_version: "3.0"\n# global plugins\nplugins:\n')


def test_keeps_an_unindented_sequence_style(tmp_path: Path) -> None:
    path = tmp_path / "kong.yaml"
    path.write_text(
        "plugins:\n- name: statsd\n  config:\n    host: 127.0.0.1\n    flush_timeout: 4\n"
    )
    assert run_cli("config", "migrate", str(path), "--write").returncode == 0
    assert path.read_text() == (
        "plugins:\n- name: statsd\n  config:\n    host: 127.0.0.1\n    queue:\n"
        "      max_coalescing_delay: 4\n"
    )


def test_errors(tmp_path: Path) -> None:
    missing = run_cli("config", "migrate", str(tmp_path / "nope.yml"))
    assert missing.returncode == 1
    assert "relayq config migrate: cannot read" in missing.stderr
    bad = tmp_path / "bad.yml"
    bad.write_text("plugins: [\n")
    broken = run_cli("config", "migrate", str(bad))
    assert broken.returncode == 1
    assert "relayq config migrate: not valid YAML" in broken.stderr
    usage = run_cli("config", "migrate")
    assert usage.returncode == 2 and "FILE" in usage.stderr
