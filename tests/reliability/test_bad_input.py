"""Bad input: random configuration, fuzzed declarative files and hostile request data.

Configuration arrives from YAML written by people, so every field can hold anything; request
data arrives from clients, so every byte can be hostile. The promise: bad configuration is
refused with ``TypeError``/``ValueError`` (``PluginConfigError``, ``DeclarativeError``) whose
message names the field, never another exception; hostile request data is logged as best it
can be and never breaks the log phase, the serializer or a gateway worker.

(The queue core's own invariants under random interleavings are property-tested in
tests/queue/test_core_properties.py; not repeated here.)
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import re
import socket
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

import relayq
from relayq.gateway import DeclarativeError, build_state, parse_config, parse_config_text
from relayq.plugins import MemoryHttpSender, PluginConfigError, plugin_class
from relayq.plugins.http_log import HttpLogPlugin, encode_entry
from relayq.plugins.opentelemetry import OpenTelemetryPlugin
from relayq.plugins.zipkin import ZipkinPlugin
from relayq.queue import QUEUE_FIELDS
from relayq.serializer import RequestContext, serialize
from tests.reliability._gateway import CountingSink, Served, UdpCounter, Upstream, env
from tests.reliability._probe import wait_until
from tests.reliability._rigs import request_context, run_phases
from tests.reliability.conftest import Figures
from tests.support.http_receiver import HttpReceiver
from tests.support.sockets import UdpListener

# How many bad inputs each test below really tried (Hypothesis may stop early), recorded for
# the README's table when the module finishes.
TRIED: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _record_tried(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    Figures(request.node.nodeid).record("bad_input", **TRIED)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = (ROOT / "examples" / "kong.yml").read_text()

# Generating 70 KB strings and 5000-argument queries is slow by design: no health checks on
# generation speed or size, which would fail the run on a busy machine.
HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
          HealthCheck.data_too_large, HealthCheck.large_base_example]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=HEALTH)

# Values a YAML or JSON file can hold, plus the numbers that break naive range checks.
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=2**62),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["", " ", "\r\n", "\x00", "-1", "1e309", "nan", "http://", "::",
                     "127.0.0.1:99999", "\udcff"]),
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)

QUEUE_CONFIG_FIELDS = [f.name for f in dataclasses.fields(relayq.QueueConfig)]

def _field_named(message: str, names: list[str]) -> bool:
    return any(re.search(rf"\b{re.escape(n)}\b", message) for n in names)


# ------------------------------------------------------------------------------- QueueConfig


@SETTINGS
@given(st.dictionaries(st.sampled_from(QUEUE_CONFIG_FIELDS), json_values, max_size=5))
def test_queue_config_refuses_bad_values_with_the_field_named(kwargs: dict[str, Any]) -> None:
    TRIED["queue configs"] += 1
    kwargs = {"name": "q", **kwargs}
    builds: list[Callable[[], relayq.QueueConfig]] = [
        lambda: relayq.QueueConfig(**kwargs),
        lambda: relayq.get_plugin_params("http-log", {"queue": kwargs}, "q"),
    ]
    for build in builds:
        try:
            conf = build()
        except (TypeError, ValueError) as exc:
            assert _field_named(str(exc), list(kwargs)), (str(exc), kwargs)
        else:
            assert isinstance(conf, relayq.QueueConfig)
            hash(conf)  # frozen and usable as a key


# ------------------------------------------------------------------------------- plugin schemas

PLUGIN_BASES: dict[str, dict[str, Any]] = {
    "http-log": {"http_endpoint": "http://127.0.0.1:9/logs"},
    "statsd": {},
    "datadog": {},
    "opentelemetry": {"traces_endpoint": "http://127.0.0.1:9/v1/traces"},
    "zipkin": {"http_endpoint": "http://127.0.0.1:9/api/v2/spans"},
}
QUEUE_FIELD_NAMES = [spec.name for spec in QUEUE_FIELDS]


@st.composite
def plugin_configs(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A valid base config with a few fields (known, nested in ``queue``, or unknown)
    replaced by random values."""
    name = draw(st.sampled_from(sorted(PLUGIN_BASES)))
    fields = sorted(plugin_class(name).validate(dict(PLUGIN_BASES[name])))
    config = copy.deepcopy(PLUGIN_BASES[name])
    for key in draw(st.lists(st.sampled_from([*fields, "bogus_field"]), max_size=3)):
        config[key] = draw(json_values)
    if draw(st.booleans()):
        config["queue"] = draw(st.dictionaries(
            st.sampled_from([*QUEUE_FIELD_NAMES, "bogus"]), json_values, max_size=3))
    return name, config


@SETTINGS
@given(plugin_configs())
def test_plugin_configs_are_refused_with_paths_never_crash(
    case: tuple[str, dict[str, Any]],
) -> None:
    TRIED["plugin configs"] += 1
    name, config = case
    cls = plugin_class(name)
    try:
        # Building the plugin goes further than the schema: endpoints are parsed, queue
        # parameters computed, senders chosen. Nothing is sent.
        cls(config, plugin_id="fuzz", runtime=relayq.Runtime())
    except PluginConfigError as exc:
        assert exc.errors, exc
        for path, message in exc.errors.items():
            # The path starts at a field the config holds (the rest may be the user's own
            # keys), or names a required field, or the whole entity.
            named = any(path == key or path.startswith((f"{key}.", f"{key}["))
                        for key in map(str, config))
            assert named or path == "@entity" or message == "required field missing", (
                path, message, config)
            assert message, path
    except (TypeError, ValueError) as exc:
        assert _field_named(str(exc), [*config, *QUEUE_FIELD_NAMES]), (str(exc), config)


def _null_cases() -> list[tuple[str, str]]:
    cases = []
    for name, base in sorted(PLUGIN_BASES.items()):
        for field in plugin_class(name).validate(dict(base)):
            if field not in base:
                cases.append((name, field))
    return cases


@pytest.fixture(scope="module")
def receivers() -> Iterator[tuple[HttpReceiver, UdpListener]]:
    with HttpReceiver() as rx, UdpListener() as udp:
        yield rx, udp


@pytest.mark.parametrize(("name", "field"), _null_cases(), ids=lambda v: str(v))
async def test_explicit_null_is_refused_or_works(
    name: str, field: str, receivers: tuple[HttpReceiver, UdpListener],
) -> None:
    """``field: null`` (or ``~``) in a YAML file: the plugin either refuses it naming the field,
    or treats it as unset and works end to end (builds, runs its phases, delivers to a live
    receiver). Never a TypeError from deep inside, at start-up or on every request."""
    TRIED["plugin configs"] += 1
    rx, udp = receivers
    endpoint = {"http-log": "/logs", "opentelemetry": "/v1/traces",
                "zipkin": "/api/v2/spans"}.get(name)
    base: dict[str, Any] = (
        {"host": "127.0.0.1", "port": udp.port} if endpoint is None else
        {("traces_endpoint" if name == "opentelemetry" else "http_endpoint"):
         rx.url + endpoint})
    if name == "zipkin" and field != "sample_ratio":
        base["sample_ratio"] = 1
    config = {**base, field: None,
              "queue": None if field == "queue" else {"max_coalescing_delay": 0}}
    rt = relayq.Runtime()
    try:
        try:
            plugin = plugin_class(name)(config, plugin_id="nulls", runtime=rt)
        except PluginConfigError as exc:
            assert field in exc.errors or any(p.startswith(field) for p in exc.errors), (
                exc.errors)
            return
        run_phases([plugin], request_context(1))
        assert await rt.drain(5)
        for queue, s in rt.stats().items():
            assert s.failures == 0 and s.dropped_total == 0, (queue, s.last_error)
    finally:
        await rt.aclose(2)


# ------------------------------------------------------------------------------- kong.yml


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every container position in a parsed document (dict keys and list indexes)."""
    out: list[tuple[Any, ...]] = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


def _load_example() -> Any:
    return YAML(typ="safe", pure=True).load(EXAMPLE)


BASE_DOCUMENT = _load_example()
ALL_PATHS = _paths(BASE_DOCUMENT)[1:]


@st.composite
def mutated_documents(draw: st.DrawFn) -> Any:
    """The example kong.yml with 1-4 random edits: a value replaced (by anything, or by a
    value of another place of the file), a key removed, an unknown key added, a list item
    duplicated."""
    doc = copy.deepcopy(BASE_DOCUMENT)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(ALL_PATHS))
        parent: Any = doc
        try:
            for step in path[:-1]:
                parent = parent[step]
            last = path[-1]
            parent[last]
        except (KeyError, IndexError, TypeError):
            continue
        if not isinstance(parent, dict | list):  # an earlier edit put a string here
            continue
        action = draw(st.sampled_from(["replace", "swap", "delete", "add", "duplicate"]))
        if action == "replace":
            parent[last] = draw(json_values)
        elif action == "swap":
            other = draw(st.sampled_from(ALL_PATHS))
            value: Any = BASE_DOCUMENT
            for step in other:
                value = value[step]
            parent[last] = copy.deepcopy(value)
        elif action == "delete":
            del parent[last]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = draw(json_values)
        elif action == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[last]))
    return doc


def _check_errors(exc: DeclarativeError, doc: Any) -> None:
    assert exc.errors and all(isinstance(e, str) and e for e in exc.errors), exc.errors
    document_level = not isinstance(doc, dict) or not doc
    roots = {str(k) for k in (doc if isinstance(doc, dict) else {})} | set(BASE_DOCUMENT)
    for line in exc.errors:
        # "services[0].routes[1].paths: ...", "line 3, column 7: ...": a path to the problem
        # (which may start with a key the fuzz invented: it is the user's key).
        located = re.match(r"^line \d+, column \d+: ", line) or any(
            line.startswith(root) and line[len(root):len(root) + 1] in (".", "[", ":")
            for root in roots)
        assert located or document_level, line


def _with(path: tuple[Any, ...], value: Any) -> Any:
    doc = copy.deepcopy(BASE_DOCUMENT)
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=HEALTH)
@given(mutated_documents())
@example(_with(("plugins", 2, "config", "host"), None))
def test_fuzzed_declarative_documents_get_errors_with_paths(doc: Any) -> None:
    """A document the loader accepts must also build, as a worker does at start-up (routes
    compiled, every plugin constructed), or be refused then with the field named: only
    datadog's null host/port can pass the loader and fail here, because its fallback is the
    serving process's environment."""
    TRIED["kong.yml documents"] += 1
    try:
        config = parse_config(doc)
    except DeclarativeError as exc:
        _check_errors(exc, doc)
        return
    try:
        build_state(config, runtime=relayq.Runtime())
    except PluginConfigError as exc:
        assert exc.plugin == "datadog" and set(exc.errors) <= {"host", "port"}, exc


def test_a_config_refused_at_start_up_is_reported_not_a_traceback(tmp_path: Path) -> None:
    """Found by the test above: `relayq serve` with datadog's `host: null` and no
    KONG_DATADOG_AGENT_HOST died with a traceback; now one error line and exit code 1."""
    config = tmp_path / "kong.yml"
    config.write_text(textwrap.dedent("""\
        _format_version: "3.0"
        plugins:
          - name: datadog
            config: {host: null}
        """))
    environment = {k: v for k, v in env().items() if not k.startswith("KONG_DATADOG")}
    result = subprocess.run(
        [sys.executable, "-m", "relayq", "serve", "--config", str(config),
         "--listen", "127.0.0.1:0"], capture_output=True, text=True, env=environment,
        timeout=60)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "host: required field missing" in result.stderr, result.stderr


@settings(max_examples=200, deadline=None, suppress_health_check=HEALTH)
@given(st.data())
def test_fuzzed_declarative_text_never_crashes_the_loader(data: st.DataObject) -> None:
    """Byte-level damage to the YAML text itself: cut, inserted punctuation, tabs, NULs."""
    TRIED["kong.yml texts"] += 1
    text = EXAMPLE
    for _ in range(data.draw(st.integers(1, 5))):
        at = data.draw(st.integers(0, len(text)))
        edit = data.draw(st.sampled_from(["cut", "insert", "truncate"]))
        if edit == "cut":
            text = text[:at] + text[at + data.draw(st.integers(1, 40)):]
        elif edit == "insert":
            junk = data.draw(st.sampled_from(
                [":", "{", "[", "]", "- ", "\t", "\x00", "&a ", "*a", "!!python/object ",
                 "\n  ", "'", '"', "? ", "%", "${X}", "\udcff", "<<: *a\n"]))
            text = text[:at] + junk + text[at:]
        else:
            text = text[:at]
    try:
        parse_config_text(text)
    except DeclarativeError as exc:
        assert exc.errors and all(isinstance(e, str) and e for e in exc.errors)


# ------------------------------------------------------------------------------- hostile requests

hostile_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=4),
    st.binary(max_size=30).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.just("x" * 70000),
    st.just("%" * 100 + "%ff%fe"),
)


@st.composite
def hostile_contexts(draw: st.DrawFn) -> RequestContext:
    many = draw(st.booleans())
    headers: dict[str, Any] = draw(st.dictionaries(hostile_text, st.one_of(
        hostile_text, st.lists(hostile_text, max_size=3)), max_size=5))
    if many:
        headers.update({f"x-h{i}": "v" for i in range(300)})
    query = draw(st.one_of(hostile_text, st.just("&".join(f"a{i}=b" for i in range(5000)))))
    return RequestContext(
        method=draw(st.sampled_from(["GET", "POST", "\udcff", ""])),
        host=draw(hostile_text),
        path=draw(hostile_text),
        query_string=query,
        headers=headers,
        status=draw(st.integers(-1, 999)),
        request_id=draw(hostile_text),
        response_headers=draw(st.dictionaries(hostile_text, hostile_text, max_size=3)),
        serialize_values=draw(st.dictionaries(st.text(max_size=5), json_values, max_size=2)),
        client_ip=draw(hostile_text),
        upstream_uri=draw(hostile_text),
    )


@pytest.fixture(scope="module")
def all_plugins(
    receivers: tuple[HttpReceiver, UdpListener],
) -> Iterator[tuple[relayq.Runtime, list[Any]]]:
    rt = relayq.Runtime()
    sender = MemoryHttpSender()
    udp = {"host": "127.0.0.1", "port": receivers[1].port}
    queue = {"max_entries": 50}  # the fuzz produces thousands of entries; keep few
    plugins: list[Any] = [
        HttpLogPlugin({"http_endpoint": "http://127.0.0.1:9/l", "queue": queue},
                      plugin_id="h", runtime=rt, sender=sender),
        plugin_class("statsd")({**udp, "queue": queue}, plugin_id="s", runtime=rt),
        plugin_class("datadog")({**udp, "queue": queue}, plugin_id="d", runtime=rt),
        OpenTelemetryPlugin({"traces_endpoint": "http://127.0.0.1:9/t", "queue": queue},
                            plugin_id="o", runtime=rt, sender=sender),
        ZipkinPlugin({"http_endpoint": "http://127.0.0.1:9/z", "sample_ratio": 1,
                      "queue": queue}, plugin_id="z", runtime=rt, sender=sender),
    ]
    yield rt, plugins
    rt.shutdown(timeout=2)


@SETTINGS
@given(ctx=hostile_contexts())
# Found by this test: a string that is not valid UTF-8 sent the entry through the standard
# library's encoder, which wrote a custom field's infinity as `Infinity` (invalid JSON).
@example(ctx=RequestContext(client_ip="\ud800", serialize_values={"x": float("inf")}))
def test_hostile_request_data_is_serialized_and_logged_never_raises(
    ctx: RequestContext, all_plugins: tuple[relayq.Runtime, list[Any]],
) -> None:
    TRIED["hostile request contexts"] += 1
    entry = encode_entry(serialize(ctx))
    decoded = orjson.loads(entry)  # valid UTF-8 JSON whatever came in
    assert len(decoded["request"]["headers"]) <= 100
    assert len(decoded["request"]["querystring"]) <= 100
    _, plugins = all_plugins
    for plugin in plugins:
        plugin.access(ctx)
    for plugin in plugins:
        plugin.header_filter(ctx)
    for plugin in plugins:
        plugin.log(ctx)


# ------------------------------------------------------------------------------- the gateway


def _raw(port: int, data: bytes, *, half_close: bool = False, timeout: float = 5.0) -> bytes:
    """Send raw bytes, return what comes back until the server closes (``half_close``: also
    signal the end of our data, for requests that are incomplete on purpose)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # the server may close early on a huge request
            sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


def _request(target: bytes, headers: bytes = b"", body: bytes = b"",
             method: bytes = b"GET") -> bytes:
    length = b"Content-Length: %d\r\n" % len(body) if body else b""
    return (method + b" " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + length
            + b"Connection: close\r\n\r\n" + body)


HOSTILE_REQUESTS: dict[str, bytes] = {
    "huge header value": _request(b"/h/huge", b"X-Big: " + b"a" * 60000 + b"\r\n"),
    "400 headers": _request(b"/h/many", b"".join(b"X-H%d: v\r\n" % i for i in range(400))),
    "invalid UTF-8 in path": _request(b"/h/\xff\xfe%ff%c3%28"),
    "invalid UTF-8 in header": _request(b"/h/u", b"X-Bad: \xc3\x28\xff\xfe\r\n"),
    "invalid UTF-8 in query": _request(b"/h/q?a=\xff&%ff=%fe"),
    "percent-encoded invalid UTF-8": _request(b"/h/%ff%fe%c3%28?a=%ff&%fe=%c3%28"),
    "2000 query args": _request(b"/h/args?" + b"&".join(b"a%d=%d" % (i, i)
                                                         for i in range(2000))),
    "10000 query args": _request(b"/h/args?" + b"&".join(b"a%d=%d" % (i, i)
                                                          for i in range(10000))),
    "deeply nested JSON": _request(b"/h/json", b"Content-Type: application/json\r\n",
                                   b"[" * 200000 + b"]" * 200000, b"POST"),
    "JSON bomb of keys": _request(b"/h/keys", b"Content-Type: application/json\r\n",
                                  orjson.dumps({f"k{i}": [i] * 10 for i in range(20000)}),
                                  b"POST"),
    "64 KB URL": _request(b"/h/" + b"p" * 65536),
    "NUL in header": _request(b"/h/nul", b"X-Nul: a\x00b\r\n"),
    "bad chunked body": (b"POST /h/chunk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                         b"\r\nzz\r\nhello\r\n0\r\n\r\n"),
    "not HTTP": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
    "HTTP/0.9": b"GET /\r\n\r\n",
    "CR/LF in header value": _request(b"/h/crlf", b"X-A: a\rInjected: b\r\n"),
    "authorization header": _request(b"/h/auth", b"Authorization: Basic c2VjcmV0\r\n"),
}


def test_hostile_requests_through_the_gateway_never_break_the_worker(
    tmp_path: Path, figures: Figures,
) -> None:
    with Upstream() as upstream, CountingSink() as sink, UdpCounter() as udp:
        config = textwrap.dedent(f"""\
            _format_version: "3.0"
            services:
              - name: up
                url: {upstream.url}
                routes:
                  - name: all
                    paths: [/]
            plugins:
              - name: http-log
                config: {{http_endpoint: "{sink.url}/logs",
                          queue: {{max_batch_size: 100, max_coalescing_delay: 0.1}}}}
              - name: opentelemetry
                config: {{traces_endpoint: "{sink.url}/v1/traces"}}
              - name: zipkin
                config: {{http_endpoint: "{sink.url}/api/v2/spans", sample_ratio: 1}}
              - name: statsd
                config: {{host: 127.0.0.1, port: {udp.port}}}
              - name: datadog
                config: {{host: 127.0.0.1, port: {udp.port}}}
            """)
        gw = Served(tmp_path, config).wait_ready()
        try:
            answers: dict[str, bytes] = {}
            for label, data in HOSTILE_REQUESTS.items():
                answers[label] = _raw(gw.port, data)[:12]
                # Every hostile request gets an HTTP answer (200, 400, 431...), not a dropped
                # connection, and the same worker answers a normal request after each one.
                assert answers[label].startswith(b"HTTP/1.1 "), (label, answers[label])
                assert gw.proc.poll() is None, (label, gw.output()[-2000:])
                assert httpx.get(gw.url + "/ok", timeout=5).status_code == 200, label
            # A request cut off after its first line: the connection is closed, no harm done.
            _raw(gw.port, b"GET /h/cut HTTP/1.1\r\n", half_close=True)
            assert httpx.get(gw.url + "/ok", timeout=5).status_code == 200
            wait_until(gw.idle, 20, "the queues to drain")
            queues = gw.status()
        finally:
            code = gw.stop()
        output = gw.output()
        assert code == 0, output[-3000:]
        assert "Traceback" not in output, output[-3000:]
        assert " phase (" not in output, output[-3000:]  # "... failed in the log phase (n"
        for name, q in queues.items():
            assert q["sent"] == q["enqueued"] and not any(q["dropped"].values()), (name, q)
        # Every request that reached the gateway as HTTP was logged, as valid JSON.
        assert sink.entries >= len(HOSTILE_REQUESTS)
    TRIED["hostile gateway requests"] += len(HOSTILE_REQUESTS)
    figures.record("hostile_answers", **{k: v.decode("latin-1") for k, v in answers.items()})

