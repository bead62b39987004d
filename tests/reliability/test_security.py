"""Security: secrets stay secret, headers cannot be smuggled, TLS is verified, the status
listener stays local.

- Credentials put in endpoints (``user:password@``, ``?token=``) and in configured headers
  reach the receiver (they are needed there) and nowhere else: not in any log line at any
  level (relayq's, httpx's, uvicorn's), not in ``stats()``, not in the status listener's
  ``/status`` or ``/metrics``. Real flows are run (success, failures of every kind, drops,
  shutdown with undelivered entries), and everything captured is searched for the secrets.
- Header values and names with CR, LF or NUL are refused when the config is validated, so a
  config can never inject a header or split a request.
- TLS certificates are verified by default (Kong's http-log does not verify); http-log's
  ``ssl_verify: false`` is the explicit opt-out.
- The status listener refuses non-loopback addresses unless remote access is allowed.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import relayq
from relayq.gateway import DeclarativeError, parse_config_text
from relayq.plugins import HttpxSender, Plugin, PluginConfigError, plugin_class
from relayq.status import StatusListener
from tests.reliability._gateway import Served, Upstream, env
from tests.reliability._probe import until, wait_until
from tests.reliability._rigs import HTTP_RIGS, HttpRig, request_context, run_phases
from tests.reliability.conftest import Figures
from tests.support.fault_proxy import PASS, REFUSE, STALL, FaultProxy, answer
from tests.support.http_receiver import HttpReceiver, self_signed_certificate

USER = "relayq-user"
PASSWORD = "S3cretPW-userinfo"
TOKEN = "S3cretTOK-query"
HEADER_SECRET = "S3cretHDR-header"
SECRETS = (PASSWORD, TOKEN, HEADER_SECRET)


class _Everything(logging.Handler):
    """Keeps every log record's full text (message, arguments, exception), at every level."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def everything() -> Iterator[_Everything]:
    handler = _Everything()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    noisy = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    for name in noisy:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        for name, level in noisy.items():
            logging.getLogger(name).setLevel(level)


def leaks(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


def secret_endpoint(rig: HttpRig, base: str) -> str:
    host_port = base.removeprefix("http://")
    return f"http://{USER}:{PASSWORD}@{host_port}{rig.path}?token={TOKEN}"


def build_with_secrets(rig: HttpRig, rt: relayq.Runtime, base: str, sender: HttpxSender,
                       queue: dict[str, Any]) -> Plugin:
    endpoint = secret_endpoint(rig, base)
    config: dict[str, Any] = {"queue": queue}
    if rig.name == "http-log":
        config.update(http_endpoint=endpoint, timeout=300, headers={"X-Api-Key": HEADER_SECRET})
    elif rig.name == "opentelemetry":
        config.update(traces_endpoint=endpoint, connect_timeout=300, send_timeout=300,
                      read_timeout=300, headers={"X-Api-Key": HEADER_SECRET})
    else:
        config.update(http_endpoint=endpoint, sample_ratio=1, connect_timeout=300,
                      send_timeout=300, read_timeout=300)
    cls = plugin_class(rig.name)
    plugin: Plugin = cls(config, plugin_id=f"secret-{rig.name}", runtime=rt,  # type: ignore[call-arg]
                         sender=sender)
    return plugin


@pytest.mark.parametrize("rig", HTTP_RIGS, ids=lambda r: r.name)
async def test_credentials_never_leave_through_logs_stats_or_status(
    rig: HttpRig, everything: _Everything, figures: Figures,
) -> None:
    queue = {"max_batch_size": 5, "max_coalescing_delay": 0.05, "initial_retry_delay": 0.02,
             "max_retry_delay": 0.1, "max_entries": 20, "max_retry_time": 0.5}
    with HttpReceiver() as rx, FaultProxy(upstream=(rx.host, rx.port)) as proxy:
        rt = relayq.Runtime()
        sender = HttpxSender()
        listener = StatusListener(runtime=rt)
        listener.start_in_thread()
        try:
            plugin = build_with_secrets(rig, rt, proxy.url, sender, queue)
            name = rig.queue_name(plugin)
            captured: list[str] = []

            def snapshot() -> None:
                captured.append(repr(rt.stats()))
                for path in ("/status", "/metrics"):
                    captured.append(httpx.get(listener.url + path, timeout=5).text)

            # Delivered: the secrets do reach the receiver, as credentials.
            run_phases([plugin], request_context(0))
            await until(lambda: rt.stats()[name].entries_sent >= rig.per_request, 10, "a send")
            sent = rx.requests[0]
            assert sent.headers.get("authorization", "").startswith("Basic ")
            snapshot()
            # Failures of every kind, each with its own error text and log lines.
            for fault in (REFUSE, answer(503, body=b"try later"), STALL,
                          answer(401, body=b"bad credentials")):
                failures = rt.stats()[name].failures
                proxy.fault = fault
                for i in range(3):
                    run_phases([plugin], request_context(i + 1))

                def failed_again(n: int = failures) -> bool:
                    return rt.stats()[name].failures > n

                await until(failed_again, 10, f"a failure ({fault})")
                snapshot()
            # Drops: a full queue, then batches given up on.
            proxy.fault = REFUSE
            for i in range(60):
                run_phases([plugin], request_context(100 + i))
            await until(lambda: rt.stats()[name].dropped_total > 0, 10, "drops")
            snapshot()
            proxy.fault = PASS
            # Shutdown with entries that cannot be delivered in time.
            proxy.fault = STALL
            for i in range(10):
                run_phases([plugin], request_context(200 + i))
            await asyncio.sleep(0)  # let the consumer pick the batch up
        finally:
            undelivered = await rt.aclose(timeout=0.5)
            snapshot()
            listener.stop_thread()
            await sender.aclose()
        text = "\n".join([*everything.lines, *captured])
        assert undelivered > 0 or rt.stats()[name].dropped_total > 0
        assert any(name in line for line in everything.lines)  # the queue did log
        assert leaks(text) == [], [line for line in text.splitlines() if leaks(line)][:5]
        figures.record("security", check="credentials", sender=rig.name,
                       log_lines=len(everything.lines), outputs=len(captured), leaks=0)


def test_credentials_never_leave_through_the_gateway(tmp_path: Path, figures: Figures) -> None:
    """The same through ``relayq serve``: its whole output (every worker log line) and its
    status listener, across deliveries, refusals and shutdown."""
    with Upstream() as upstream, HttpReceiver() as rx, FaultProxy(
            upstream=(rx.host, rx.port)) as proxy:
        base = proxy.url.removeprefix("http://")
        secret = f"http://{USER}:{PASSWORD}@{base}"
        config = textwrap.dedent(f"""\
            _format_version: "3.0"
            services:
              - name: up
                url: {upstream.url}
                routes: [{{name: all, paths: [/]}}]
            plugins:
              - name: http-log
                config:
                  http_endpoint: "{secret}/logs?token={TOKEN}"
                  headers: {{X-Api-Key: {HEADER_SECRET}}}
                  timeout: 300
                  queue: {{max_coalescing_delay: 0.05, initial_retry_delay: 0.02,
                          max_retry_delay: 0.1}}
              - name: opentelemetry
                config:
                  traces_endpoint: "{secret}/v1/traces?token={TOKEN}"
                  headers: {{Authorization: "Bearer {HEADER_SECRET}"}}
                  queue: {{max_coalescing_delay: 0.05, initial_retry_delay: 0.02,
                          max_retry_delay: 0.1}}
              - name: zipkin
                config:
                  http_endpoint: "{secret}/api/v2/spans?token={TOKEN}"
                  sample_ratio: 1
                  queue: {{max_coalescing_delay: 0.05, initial_retry_delay: 0.02,
                          max_retry_delay: 0.1}}
            """)
        gw = Served(tmp_path, config, shutdown_timeout=1).wait_ready()
        outputs: list[str] = []
        try:
            with httpx.Client(base_url=gw.url, timeout=5) as client:
                assert client.get("/a", headers={"Authorization": f"Bearer {HEADER_SECRET}"},
                                  params={"token": TOKEN}).status_code == 200
                wait_until(lambda: len(rx.requests) >= 3, 10, "the three receivers' requests")
                for fault in (REFUSE, answer(500, body=b"oops")):
                    failures = sum(q["failures"] for q in gw.status().values())
                    proxy.fault = fault
                    client.get("/b")

                    def failed_again(n: int = failures) -> bool:
                        return bool(sum(q["failures"] for q in gw.status().values()) > n)

                    wait_until(failed_again, 10, "failures")
                    for path in ("/status", "/metrics"):
                        outputs.append(httpx.get(gw.status_url + path, timeout=5).text)
                proxy.fault = STALL
                client.get("/c")
        finally:
            gw.stop()
        output = gw.output()
        text = "\n".join([output, *outputs])
        # The plugins did use the credentials (the log server needs them) ...
        assert any(r.headers.get("authorization", "").startswith("Basic ") for r in rx.requests)
        # ... and the process reported failures and an unclean shutdown, naming its queues.
        assert "failed" in output or "could not" in output, output[-2000:]
        # The client's own credentials are redacted in the logged entry too.
        logged = [r for r in rx.requests if r.path.startswith("/logs")]
        assert logged and HEADER_SECRET not in logged[0].body.decode()
        assert leaks(text) == [], [line for line in text.splitlines() if leaks(line)][:5]
    figures.record("security", check="credentials via gateway", leaks=0,
                   output_lines=output.count("\n"))


# ------------------------------------------------------------------------------- CR/LF

BAD_VALUES = ["a\r\nInjected: yes", "a\nb", "a\rb", "a\x00b"]


@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
@pytest.mark.parametrize("plugin", ["http-log", "opentelemetry"])
def test_header_values_with_cr_lf_or_nul_are_refused(plugin: str, value: str) -> None:
    base = ({"http_endpoint": "http://127.0.0.1:9/x"} if plugin == "http-log"
            else {"traces_endpoint": "http://127.0.0.1:9/x"})
    with pytest.raises(PluginConfigError) as info:
        plugin_class(plugin).validate({**base, "headers": {"X-Token": value}})
    assert "headers.X-Token" in info.value.errors, info.value.errors
    with pytest.raises(PluginConfigError) as info:
        plugin_class(plugin).validate({**base, "headers": {f"X-{value}": "v"}})
    assert any(p.startswith("headers") for p in info.value.errors), info.value.errors


@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
@pytest.mark.parametrize("plugin", ["opentelemetry", "zipkin"])
def test_response_header_names_with_cr_lf_are_refused(plugin: str, value: str) -> None:
    """``http_response_header_for_traceid`` names a header the gateway adds to responses."""
    base = ({"traces_endpoint": "http://127.0.0.1:9/x"} if plugin == "opentelemetry"
            else {"http_endpoint": "http://127.0.0.1:9/x"})
    with pytest.raises(PluginConfigError) as info:
        plugin_class(plugin).validate({**base, "http_response_header_for_traceid":
                                       f"X-Trace{value}"})
    assert "http_response_header_for_traceid" in info.value.errors, info.value.errors


def test_cr_lf_in_a_declarative_file_is_refused_with_its_path() -> None:
    text = textwrap.dedent("""\
        _format_version: "3.0"
        plugins:
          - name: http-log
            config:
              http_endpoint: http://127.0.0.1:9/x
              headers: {X-Token: "a\\r\\nInjected: yes"}
        """)
    with pytest.raises(DeclarativeError) as info:
        parse_config_text(text)
    assert any(e.startswith("plugins[0].config.headers.X-Token:") for e in info.value.errors)


# ------------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls_receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpReceiver]:
    cert = self_signed_certificate(str(tmp_path_factory.mktemp("tls")))
    with HttpReceiver(tls=cert) as rx:
        yield rx


@pytest.mark.parametrize("rig", HTTP_RIGS, ids=lambda r: r.name)
async def test_tls_is_verified_by_default(rig: HttpRig, tls_receiver: HttpReceiver,
                                          figures: Figures) -> None:
    """A self-signed certificate is refused: the entries are retried, never sent in clear
    to an unverified peer."""
    rt = relayq.Runtime()
    sender = HttpxSender()  # what shared_sender() gives a plugin without ssl_verify: false
    try:
        plugin = rig.build(rt, tls_receiver.url, {"max_coalescing_delay": 0.05},
                           sender=None if rig.name == "http-log" else sender,
                           plugin_id=f"tls-{rig.name}")
        before = len(tls_receiver.requests)
        run_phases([plugin], request_context(1))
        name = rig.queue_name(plugin)
        await until(lambda: rt.stats()[name].failures >= 1, 10, "a refused handshake")
        error = (rt.stats()[name].last_error or "").lower()
        assert "certificate" in error or "verify" in error or "ssl" in error, error
        assert rt.stats()[name].entries_sent == 0
        assert len(tls_receiver.requests) == before  # no HTTP request got through
    finally:
        await rt.aclose(timeout=0.5)
        await sender.aclose()
    figures.record("security", check="tls verified", sender=rig.name)


async def test_http_log_ssl_verify_false_is_the_explicit_opt_out(
    tls_receiver: HttpReceiver,
) -> None:
    rt = relayq.Runtime()
    try:
        plugin = plugin_class("http-log")(
            {"http_endpoint": tls_receiver.url + "/logs", "ssl_verify": False,
             "queue": {"max_coalescing_delay": 0.05}}, plugin_id="tls-off", runtime=rt)
        before = len(tls_receiver.requests)
        run_phases([plugin], request_context(1))
        await until(lambda: len(tls_receiver.requests) > before, 10, "the unverified send")
        assert rt.stats()[plugin.queue.params().name].failures == 0  # type: ignore[attr-defined]
    finally:
        await rt.aclose(timeout=2)


# ------------------------------------------------------------------------------- status listener


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1"])
def test_status_listener_refuses_non_loopback_unless_allowed(host: str) -> None:
    with pytest.raises(ValueError, match="non-loopback"):
        StatusListener(host, 0)
    StatusListener(host, 0, allow_remote=True)  # the explicit opt-in constructs
    for loopback in ("127.0.0.1", "::1", "localhost"):
        StatusListener(loopback, 0)


def test_relayq_serve_refuses_a_public_status_address(tmp_path: Path) -> None:
    config = tmp_path / "kong.yml"
    config.write_text('_format_version: "3.0"\n')
    result = subprocess.run(
        [sys.executable, "-m", "relayq", "serve", "--config", str(config),
         "--listen", "127.0.0.1:0", "--status-listen", "0.0.0.0:0"],
        capture_output=True, text=True, env=env(), timeout=60)
    assert result.returncode != 0
    assert "non-loopback" in result.stderr, result.stderr
