"""Gateway throughput and p99 latency with wrk: plugins off vs all five on, proxy vs direct.

Everything runs on 127.0.0.1 in one go, so the ratios compare figures from the same machine
state: a local upstream (a minimal ASGI app under uvicorn), the upstream hit directly, then
relayq's gateway (one worker) in front of it with no plugins, then with http-log, statsd,
datadog, opentelemetry and zipkin all enabled globally (sending to a local HTTP sink and UDP
sink, with batching as a production setup would use). The plugin run ends with SIGTERM and
checks the gateway exits 0, i.e. every queued entry was delivered.

Usage: .venv/bin/python bench/gateway.py [--duration 4] [--connections 16] [--threads 1]
                                         [--light 2] [--each]

``--light`` sets the connections of a second run of the gateway with and without plugins: with
so few connections little time goes to queueing, so its p99 shows how long the plugins' work
holds requests up (at 16 connections p99 is mostly time spent queueing).

``--each`` also runs the gateway with each plugin alone, to show what each one costs.
wrk is the Debian package ``wrk``; it is installed with apt-get when missing and possible.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

UPSTREAM = textwrap.dedent("""\
    import sys, uvicorn

    BODY = b'{"ok": true, "service": "bench-upstream"}'

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        more = True
        while more:  # read the body: the same upstream is the log sink
            message = await receive()
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode())]})
        await send({"type": "http.response.body", "body": BODY})

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                access_log=False)
""")


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk not found; installing the Debian package ...", flush=True)
        quiet = subprocess.DEVNULL
        install = ["apt-get", "install", "-y", "wrk"]
        if subprocess.run(install, stdout=quiet, stderr=quiet).returncode != 0:
            subprocess.run(["apt-get", "update"], stdout=quiet, stderr=quiet)
            subprocess.run(install, check=True, stdout=quiet, stderr=quiet)
        found = shutil.which("wrk")
    if not found:
        sys.exit("wrk is required: apt-get install wrk")
    return found


@dataclass
class Result:
    label: str
    rps: float
    p99_ms: float
    errors: int


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(wrk: str, url: str, label: str, args: argparse.Namespace) -> Result:
    base = [wrk, f"-t{args.threads}", f"-c{args.connections}"]
    subprocess.run([*base, "-d1s", url], capture_output=True, check=True)  # warm-up
    out = subprocess.run([*base, f"-d{args.duration}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    errors = int(bad.group(1)) if bad else 0
    if socket_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
    result = Result(label, rps, p99, errors)
    print(f"  {label:<34} {rps:>9.0f} req/s   p99 {p99:>7.2f} ms   errors {errors}", flush=True)
    return result


PLUGINS = ("http-log", "statsd", "datadog", "opentelemetry", "zipkin")


def config(upstream: int, sink: int, udp: int, plugins: bool,
           only: str | None = None) -> str:
    """The bench's kong.yml: no plugins, all five, or ``only`` one of them."""
    text = textwrap.dedent(f"""\
        _format_version: "3.0"
        services:
          - name: bench
            url: http://127.0.0.1:{upstream}
            routes:
              - name: bench
                paths: [/]
        """)
    if not plugins:
        return text
    queue = "queue: {max_batch_size: 500, max_coalescing_delay: 1}"
    text += textwrap.dedent(f"""\
        plugins:
          - name: http-log
            config: {{http_endpoint: "http://127.0.0.1:{sink}/logs", {queue}}}
          - name: statsd
            config: {{host: 127.0.0.1, port: {udp}, {queue}}}
          - name: datadog
            config: {{host: 127.0.0.1, port: {udp}, {queue}}}
          - name: opentelemetry
            config: {{traces_endpoint: "http://127.0.0.1:{sink}/v1/traces", {queue}}}
          - name: zipkin
            config: {{http_endpoint: "http://127.0.0.1:{sink}/api/v2/spans", sample_ratio: 1,
                     {queue}}}
        """)
    if only is None:
        return text
    head, _, listed = text.partition("plugins:\n")
    entries = listed.split("  - name: ")[1:]
    return head + "plugins:\n" + "".join(
        "  - name: " + entry for entry in entries if entry.split("\n", 1)[0].strip() == only)


class Gateway:
    """``relayq.gateway.run`` in a subprocess on a free port."""

    def __init__(self, config_text: str, workdir: Path) -> None:
        self.port = free_port()
        path = workdir / f"kong-{self.port}.yml"
        path.write_text(config_text)
        code = ("import sys; from relayq.gateway import run; "
                f"sys.exit(run({str(path)!r}, '127.0.0.1:{self.port}', 1, 15.0, None))")
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        self.log = open(workdir / f"gateway-{self.port}.log", "w+b")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        wait_port(self.port)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        if code != 0:
            self.log.seek(0)
            print(self.log.read().decode(errors="replace")[-3000:], file=sys.stderr)
        self.log.close()
        return code


def udp_sink() -> int:
    """A UDP socket drained by a thread, so metric datagrams have a live receiver."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))

    def drain() -> None:
        while True:
            sock.recv(65536)

    threading.Thread(target=drain, daemon=True).start()
    return int(sock.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=4, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--light", type=int, default=2, metavar="CONNECTIONS",
                        help="connections of the second, latency runs (0: none)")
    parser.add_argument("--each", action="store_true",
                        help="also measure each plugin alone (adds five runs)")
    args = parser.parse_args()
    wrk = ensure_wrk()
    workdir = Path(tempfile.mkdtemp(prefix="relayq-bench-"))
    up_port = free_port()
    upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(up_port)])
    try:
        wait_port(up_port)
        udp = udp_sink()
        print(f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s, "
              f"{os.cpu_count()} CPUs; upstream: uvicorn on 127.0.0.1:{up_port}", flush=True)
        direct = run_wrk(wrk, f"http://127.0.0.1:{up_port}/", "upstream directly", args)
        # Many connections (throughput, and a p99 that is mostly queueing), then few (a p99
        # that shows how long the plugins' work holds requests up).
        light = argparse.Namespace(**{**vars(args), "connections": args.light})

        def lightly(port: int) -> Result | None:
            if not args.light:
                return None
            label = f"  ... at {args.light} connections"
            return run_wrk(wrk, f"http://127.0.0.1:{port}/", label, light)

        gw = Gateway(config(up_port, up_port, udp, plugins=False), workdir)
        try:
            bare = run_wrk(wrk, f"http://127.0.0.1:{gw.port}/", "gateway, no plugins", args)
            bare_light = lightly(gw.port)
        finally:
            gw.stop()
        gw = Gateway(config(up_port, up_port, udp, plugins=True), workdir)
        try:
            full = run_wrk(wrk, f"http://127.0.0.1:{gw.port}/",
                           "gateway, five plugins", args)
            full_light = lightly(gw.port)
        finally:
            flushed = gw.stop() == 0
        alone: list[Result] = []
        for name in PLUGINS if args.each else ():
            gw = Gateway(config(up_port, up_port, udp, plugins=True, only=name), workdir)
            try:
                alone.append(run_wrk(wrk, f"http://127.0.0.1:{gw.port}/", f"gateway, {name} alone",
                                     args))
            finally:
                flushed = gw.stop() == 0 and flushed
    finally:
        upstream.terminate()
        upstream.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    cost = 1 - full.rps / bare.rps
    print()
    print(f"  five plugins / no plugins      throughput {full.rps / bare.rps:6.2f}x "
          f"(plugins cost {cost:.1%}), p99 {full.p99_ms / bare.p99_ms:5.2f}x")
    print(f"  gateway (no plugins) / direct  throughput {bare.rps / direct.rps:6.2f}x, "
          f"p99 {bare.p99_ms / direct.p99_ms:5.2f}x")
    if bare_light is not None and full_light is not None:
        print(f"  p99 at {args.light} connections{'':<10} five plugins "
              f"{full_light.p99_ms:.2f} ms, no plugins {bare_light.p99_ms:.2f} ms")
    for result in alone:
        print(f"  {result.label.removeprefix('gateway, '):<30} throughput "
              f"{result.rps / bare.rps:6.2f}x (costs {1 - result.rps / bare.rps:.1%})")
    print(f"  every queued entry delivered at shutdown: {'yes' if flushed else 'NO'}")
    runs = (direct, bare, full, bare_light, full_light, *alone)
    failed = any(r.errors for r in runs if r is not None)
    return 0 if flushed and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
