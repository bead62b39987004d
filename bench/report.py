"""The README's reliability table, from the reliability suite's own runs.

Runs ``pytest tests/reliability`` (fault injection against every sender, 10x overload, the
gateway soak under wrk, bad input, security) with ``RELAYQ_RELIABILITY_FIGURES`` set, so each
test appends what it measured; then rewrites the README section between
``<!-- reliability:start -->`` and ``<!-- reliability:end -->`` with a table of those figures.
The figures therefore come from runs whose assertions passed: if any test fails, the README is
left alone and the exit code is 1.

    python bench/report.py            # short runs (about a minute and a half)
    python bench/report.py --long     # overload and soak for minutes
    python bench/report.py --no-write # print the table only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
START = "<!-- reliability:start -->"
END = "<!-- reliability:end -->"

Figure = dict[str, Any]


def run_suite(long: bool) -> tuple[int, list[Figure], float, str]:
    """Run the suite serially (the figures are timings: no parallel workers); return its exit
    code, the recorded figures, the wall time and pytest's summary line."""
    with tempfile.TemporaryDirectory(prefix="relayq-report-") as tmp:
        figures_path = Path(tmp) / "figures.jsonl"
        env = {**os.environ, "RELAYQ_RELIABILITY_FIGURES": str(figures_path),
               "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
        if long:
            env["RELAYQ_LONG"] = "1"
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "tests/reliability", "-q", "-p", "no:cacheprovider"],
            cwd=ROOT, env=env, capture_output=True, text=True)
        elapsed = time.monotonic() - started
        lines = proc.stdout.strip().splitlines()
        summary = lines[-1] if lines else proc.stderr.strip()[-500:]
        if proc.returncode != 0:
            print(proc.stdout[-6000:], file=sys.stderr)
        figures = [json.loads(line) for line in figures_path.read_text().splitlines()
                   ] if figures_path.exists() else []
    return proc.returncode, figures, elapsed, summary


def _n(value: float) -> str:
    return f"{value:,.0f}"


def _of(figures: Iterable[Figure], kind: str, **match: Any) -> list[Figure]:
    return [f for f in figures if f["kind"] == kind
            and all(f.get(k) == v for k, v in match.items())]


def rows(figures: list[Figure]) -> list[tuple[str, str, str, str, str]]:
    """(scenario, load held, faults / bad inputs, lost where nothing may be lost, memory)."""
    out: list[tuple[str, str, str, str, str]] = []

    http = _of(figures, "fault", transport="http")
    if http:
        senders = sorted({f["sender"] for f in http})
        faults = sorted({f["fault"] for f in http})
        produced = sum(f["produced"] for f in http)
        out.append((
            f"Fault injection, HTTP senders ({', '.join(senders)})",
            f"{_n(produced)} entries through a fault proxy; {_n(sum(f['retries'] for f in http))}"
            f" retries on the queues' backoff schedule",
            f"{len(http)} runs ({len(faults)} faults x {len(senders)} senders: "
            f"{', '.join(faults)}); every retained entry delivered after recovery "
            f"({_n(sum(f['duplicates'] for f in http))} duplicates after a cut response, "
            "all with the same batch id)",
            _n(sum(f["lost"] for f in http)),
            "-",
        ))
    metrics = [f for f in _of(figures, "fault") if f["transport"] != "http"]
    if metrics:
        by_design = sum(f.get("lost_by_design", 0) for f in metrics)
        out.append((
            "Fault injection, metric senders (statsd UDP/TCP, datadog UDP)",
            f"{_n(sum(f['produced'] for f in metrics))} requests' metrics to raw listeners",
            f"{len(metrics)} runs ({', '.join(sorted({f['fault'] for f in metrics}))}); "
            f"send-error log lines per run: at most {max(f['error_lines'] for f in metrics)}; "
            f"{_n(by_design)} requests' metrics lost during UDP/TCP-reset outages by design "
            "(fire and forget, as Kong), never duplicated",
            _n(sum(f["lost"] for f in metrics)),
            "-",
        ))
    drops = _of(figures, "drops")
    if drops:
        reasons: dict[str, int] = defaultdict(int)
        for f in drops:
            reasons[f["reason"]] += f["dropped"]
        out.append((
            "Deliberate losses (outage with a small queue, short retry budget, permanent "
            "failures)",
            f"{_n(sum(f['produced'] for f in drops))} entries",
            "every loss counted: " + ", ".join(f"{r} {_n(n)}" for r, n in sorted(
                reasons.items())) + "; drop logs at most once a second",
            f"{_n(sum(f['lost'] for f in drops))} unaccounted",
            "-",
        ))
    for f in _of(figures, "overload"):
        out.append((
            f"Overload 10x, {f['limit']} binding ({f['seconds']:g} s)",
            f"offered {_n(f['offered_per_s'])} entries/s, absorbed {_n(f['absorbed_per_s'])}/s",
            f"{_n(f['dropped'])} drops counted; {f['error_lines']} error + {f['info_lines']} "
            f"info log lines; log-phase cost {f['cost_early_us']} -> {f['cost_late_us']} us",
            f"{_n(f['lost'])} unaccounted",
            f"RSS +{f['rss_growth_mb']} MB once full ({_n(f['offered_mb'])} MB offered)",
        ))
    for f in _of(figures, "soak"):
        out.append((
            f"Gateway soak under wrk, 5 plugins ({f['seconds']:g} s)",
            f"{_n(f['rps'])} requests/s ({_n(f['requests'])} requests, {f['wrk_errors']} "
            f"errors); {_n(f['entries_sent'])} queue entries sent",
            "-",
            f"{_n(f['lost'])} (dropped {_n(f['dropped'])})",
            f"RSS idle {f['rss_before_mb']} -> {f['rss_after_mb']} MB, under load "
            f"{f['rss_load_early_mb']} -> {f['rss_load_late_mb']} MB (first vs last third); "
            f"fds {f['fds_before']} -> {f['fds_after']}; threads {f['threads_before']} -> "
            f"{f['threads_after']}",
        ))
    tried: dict[str, int] = defaultdict(int)
    for f in _of(figures, "bad_input"):
        for key, value in f.items():
            if key not in ("kind", "test"):
                tried[key] += int(value)
    if tried:
        out.append((
            "Bad input (hypothesis, fuzzing, hostile requests)",
            "-",
            "; ".join(f"{_n(n)} {what}" for what, n in sorted(tried.items()))
            + "; no crash, every refusal names its field",
            "-",
            "-",
        ))
    security = _of(figures, "security")
    if security:
        creds = [f for f in security if f["check"].startswith("credentials")]
        tls = [f for f in security if f["check"] == "tls verified"]
        out.append((
            "Security",
            "-",
            f"credentials in endpoints and headers searched in {len(creds)} real flows "
            f"(logs at DEBUG, stats(), /status, /metrics): {sum(f['leaks'] for f in creds)} "
            f"found; TLS verified by default for {len(tls)} senders; CR/LF/NUL in headers "
            "refused; status listener loopback-only",
            "-",
            "-",
        ))
    return out


NOTES = """\
Each row comes from tests in `tests/reliability/` whose assertions passed in that run. *Lost
where nothing may be lost* counts entries a queue accepted and then neither delivered nor counted
under a drop reason in `stats()` (receivers count what arrives, one entry at a time). The
metric senders are fire-and-forget as in Kong: a datagram sent to a dead agent, or lines written
into a connection that is then reset, are gone, and that loss is shown apart. TLS certificates
are verified by default for every HTTP sender (Kong's http-log does not verify;
`ssl_verify: false` is the opt-out). The suite runs in `scripts/test` with short durations;
`pytest tests/reliability --long` (or `RELAYQ_LONG=1`) runs the overload and soak for minutes;
the soak needs `wrk`.
"""


def table(figures: list[Figure], elapsed: float, summary: str, long: bool) -> str:
    header = ("| scenario | load held | faults survived / bad inputs tried | entries lost "
              "where nothing may be lost | memory / descriptors |\n|---|---|---|---|---|")
    body = "\n".join("| " + " | ".join(cells) + " |" for cells in rows(figures))
    when = time.strftime("%Y-%m-%d")
    return (f"Measured {when} on {os.cpu_count()} CPUs ({platform.python_implementation()} "
            f"{platform.python_version()}), {'long' if long else 'short'} runs: "
            f"`python bench/report.py{' --long' if long else ''}` ({summary}, "
            f"{elapsed:.0f} s).\n\n{header}\n{body}\n\n{NOTES}")


def rewrite_readme(section: str) -> None:
    text = README.read_text()
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{README} has no {START} ... {END} section")
    README.write_text(pattern.sub(lambda _: f"{START}\n{section}{END}", text, count=1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--long", action="store_true", help="minutes-long overload and soak")
    parser.add_argument("--no-write", action="store_true", help="print, do not edit README")
    args = parser.parse_args()
    code, figures, elapsed, summary = run_suite(args.long)
    print(f"pytest tests/reliability: {summary} ({elapsed:.0f} s)")
    if code != 0:
        print("the reliability suite failed: README left unchanged", file=sys.stderr)
        return 1
    section = table(figures, elapsed, summary, args.long)
    print(section)
    if not args.no_write:
        rewrite_readme(section)
        print(f"rewrote the reliability section of {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
