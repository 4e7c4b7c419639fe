"""GET /metrics, /healthz and /readyz on the server's port (issue #18),
through the real binary, and the Grafana dashboard's queries checked
against a live scrape.

Counts are compared as deltas of two scrapes around the traffic a test
sends itself over raw WebSocket connections (so exactly the frames it
means are sent). A scrape is an HTTP connection of its own, so it shows in
the connection figures while it is served; the tests account for that.
Nothing here waits a fixed time: whatever happens in the background
(expiry, the change log's writes) is polled for with a generous deadline.
"""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

import pytest
import websockets

from support import Scrape, deltas, eventually, http_request, scrape_metrics

DASHBOARD = Path(__file__).resolve().parents[3] / "deploy" / "grafana" / "nemesisdb.json"
SHARDS = 2  # conftest starts every server with --shards 2

# The families of the metrics spec, named as the OpenMetrics parser names
# them, with their type and the labels of their samples (histograms: besides le).
FAMILIES: Dict[str, Tuple[str, Set[str]]] = {
    "nemesisdb_commands": ("counter", {"command", "status"}),
    "nemesisdb_command_duration_seconds": ("histogram", {"command"}),
    "nemesisdb_sessions": ("gauge", {"shard"}),
    "nemesisdb_keys": ("gauge", {"shard"}),
    "nemesisdb_memory_used_bytes": ("gauge", {"shard"}),
    "nemesisdb_memory_limit_bytes": ("gauge", set()),
    "nemesisdb_connections": ("gauge", set()),
    "nemesisdb_connections_accepted": ("counter", set()),
    "nemesisdb_connections_rejected": ("counter", {"reason"}),
    "nemesisdb_bytes_received": ("counter", set()),
    "nemesisdb_bytes_sent": ("counter", set()),
    "nemesisdb_expired": ("counter", {"kind"}),
    "nemesisdb_expiry_lag_seconds": ("histogram", set()),
    "nemesisdb_session_not_exist": ("counter", set()),
    "nemesisdb_snapshot_duration_seconds": ("histogram", set()),
    "nemesisdb_snapshot_last_success_timestamp_seconds": ("gauge", set()),
    "nemesisdb_snapshot_failures": ("counter", set()),
    "nemesisdb_event_subscribers": ("gauge", set()),
    "nemesisdb_events_lost": ("counter", set()),
    "nemesisdb_cross_shard_requests": ("counter", set()),
    # The spec's table says gauge; the server exposes an OpenMetrics info
    # metric, whose one sample is still nemesisdb_build_info{version} 1.
    "nemesisdb_build": ("info", {"version"}),
    "process_cpu_seconds": ("counter", set()),
    "process_resident_memory_bytes": ("gauge", set()),
    "process_start_time_seconds": ("gauge", set()),
    "process_open_fds": ("gauge", set()),
    "process_max_fds": ("gauge", set()),
}
# Only while the change log is on (--persist-path; the log is on by default then).
LOG_FAMILIES: Dict[str, Tuple[str, Set[str]]] = {
    "nemesisdb_log_fsync_duration_seconds": ("histogram", set()),
    "nemesisdb_log_records": ("counter", set()),
    "nemesisdb_log_bytes": ("counter", set()),
}
DURATION_BOUNDS = [
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, float("inf"),
]  # fmt: skip
LAG_BOUNDS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, float("inf")]


# ---------------------------------------------------------------- helpers


class Wire:
    """A raw WebSocket connection: exactly the frames a test sends, one
    answer awaited per request."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.sent = 0  # payload bytes sent
        self.received = 0  # payload bytes received

    async def text(self, frame: str) -> Tuple[str, Dict[str, Any]]:
        """Sends one text frame; returns the answer's name and body."""
        await self.ws.send(frame)
        answer = await self.ws.recv()
        self.sent += len(frame.encode())
        self.received += len(answer.encode() if isinstance(answer, str) else answer)
        name, body = next(iter(json.loads(answer).items()))
        return name, body

    async def call(self, command: str, params: Dict[str, Any]) -> Dict[str, Any]:
        name, body = await self.text(json.dumps({command: params}))
        assert name == command + "_RSP", (name, body)
        return body


class open_wire:
    """``async with open_wire(uri) as w``: a `Wire` on its own connection."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    async def __aenter__(self) -> Wire:
        # No keepalive pings: the figures should show only what the test sends.
        self.ws = await websockets.connect(self.uri, ping_interval=None)
        return Wire(self.ws)

    async def __aexit__(self, *_: Any) -> None:
        await self.ws.close()


MASK64 = (1 << 64) - 1


def shard_of(tkn: int, shards: int = SHARDS) -> int:
    """The shard that owns a token: SplitMix64's finalizer, mod shards
    (docs/PROTOCOL.md, "Tokens": the same in every process)."""
    x = tkn
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    x ^= x >> 31
    return x % shards


def shard_of_owner(owner: str, shards: int = SHARDS) -> int:
    """The shard of an owner's sessions: shard_of(fnv1a64(owner))."""
    h = 0xCBF29CE484222325
    for b in owner.encode():
        h = ((h ^ b) * 0x100000001B3) & MASK64
    return shard_of(h, shards)


def http(server: Any, path: str, method: str = "GET") -> Any:
    return http_request(server.host, server.port, path, method)


def check_family(scrape: Scrape, name: str, kind: str, labels: Set[str]) -> None:
    family = scrape.families.get(name)
    assert family is not None, f"{name} missing from /metrics"
    assert family.type == kind, f"{name} is a {family.type}, not a {kind}"
    for s in family.samples:
        own = set(s.labels) - ({"le"} if s.name.endswith("_bucket") else set())
        assert own == labels, f"{s.name} has labels {sorted(s.labels)}, expected {sorted(labels)}"


def bucket_bounds(scrape: Scrape, name: str, **labels: str) -> List[float]:
    return sorted(
        float(s.labels["le"])
        for s in scrape.families[name].samples
        if s.name == name + "_bucket" and all(s.labels.get(k) == v for k, v in labels.items())
    )


# ------------------------------------------------ the families and their types


@pytest.mark.asyncio
async def test_every_family_of_the_spec_is_there_with_its_type(fresh_server: Any) -> None:
    async with open_wire(fresh_server.uri) as w:
        tkn = (await w.call("SH_NEW", {"keys": {"a": 1}}))["tkn"]
        await w.call("SH_GET", {"tkn": tkn, "keys": ["a"]})
        version = (await w.call("SV_INFO", {}))["serverVersion"]
    answer = http(fresh_server, "/metrics")
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("application/openmetrics-text")
    assert answer.body.endswith(b"# EOF\n")
    scrape = Scrape(answer.body.decode())

    for name, (kind, labels) in FAMILIES.items():
        check_family(scrape, name, kind, labels)
    for name in LOG_FAMILIES:
        assert name not in scrape.families, f"{name} without persistence"

    assert scrape.by("nemesisdb_build_info", "version") == {(version,): 1.0}
    assert set(scrape.by("nemesisdb_sessions", "shard")) == {(str(s),) for s in range(SHARDS)}
    assert set(scrape.by("nemesisdb_connections_rejected_total", "reason")) == {
        ("limit",),
        ("handshake",),
        ("protocol",),
    }
    assert set(scrape.by("nemesisdb_expired_total", "kind")) == {
        ("idle",),
        ("lifetime",),
        ("keys",),
    }
    duration = "nemesisdb_command_duration_seconds"
    assert bucket_bounds(scrape, duration, command="SH_GET") == DURATION_BOUNDS
    assert bucket_bounds(scrape, "nemesisdb_expiry_lag_seconds") == LAG_BOUNDS
    assert scrape.value("nemesisdb_memory_limit_bytes") == 0  # no --max-memory

    now = time.time()
    started = scrape.value("process_start_time_seconds")
    assert now - 120 < started <= now + 1
    assert scrape.value("process_resident_memory_bytes") > 0
    assert 0 < scrape.value("process_open_fds") <= scrape.value("process_max_fds")
    assert scrape.value("process_cpu_seconds_total") >= 0


def test_the_memory_limit_is_the_flag(make_server: Any) -> None:
    srv = make_server("--max-memory", "200000")
    assert scrape_metrics(srv).value("nemesisdb_memory_limit_bytes") == 200000


def raw_histograms(text: str) -> Dict[Tuple[str, str], Dict[str, Any]]:
    """Every histogram series of an exposition, read without a parser:
    (family, labels but le) -> {"buckets": [(le, count)...], "count": n}."""
    kinds = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    series: Dict[Tuple[str, str], Dict[str, Any]] = {}
    sample = re.compile(r"^(\w+?)_(bucket|count)(?:\{(.*)\})? (\S+)$")
    for line in text.splitlines():
        m = sample.match(line)
        if not m or kinds.get(m.group(1)) != "histogram":
            continue
        family, part, labels, value = m.groups()
        pairs = re.findall(r'(\w+)="([^"]*)"', labels or "")
        le = next((v for k, v in pairs if k == "le"), None)
        key = (family, ",".join(f"{k}={v}" for k, v in pairs if k != "le"))
        entry = series.setdefault(key, {"buckets": [], "count": None})
        if part == "bucket":
            entry["buckets"].append((float(le or "nan"), float(value)))
        else:
            entry["count"] = float(value)
    return series


@pytest.mark.asyncio
async def test_histogram_buckets_are_cumulative_once(fresh_server: Any) -> None:
    """Each bucket counts the observations at or below its bound, so the
    +Inf bucket is the count. (Read without prometheus_client, so that a
    broken exposition still gets a precise message here.)"""
    async with open_wire(fresh_server.uri) as w:
        for _ in range(20):
            await w.call("SH_NEW", {})
    answer = http(fresh_server, "/metrics")
    series = raw_histograms(answer.body.decode())
    key = ("nemesisdb_command_duration_seconds", "command=SH_NEW")
    assert key in series
    for (family, labels), s in series.items():
        counts = [c for _, c in sorted(s["buckets"])]
        assert counts == sorted(counts), f"{family}{{{labels}}} buckets decrease: {s['buckets']}"
        assert counts and counts[-1] == s["count"], (
            f"{family}{{{labels}}}: +Inf bucket {counts[-1] if counts else None} "
            f"!= _count {s['count']} (buckets {s['buckets']})"
        )


# ----------------------------------------------------- requests, counted exactly


@pytest.mark.asyncio
async def test_answers_are_counted_by_command_and_status(fresh_server: Any) -> None:
    # Sessions with these owners live on their owners' shards: both shards
    # (checked below), so some requests cross shards whatever shard each
    # connection landed on.
    owners = [f"metrics-owner-{i}" for i in range(6)]
    assert {shard_of_owner(o) for o in owners} == set(range(SHARDS))
    before = scrape_metrics(fresh_server)

    cross = 0
    created: List[int] = []
    async with open_wire(fresh_server.uri) as a, open_wire(fresh_server.uri) as b:
        # A session made without an owner lands on its connection's shard.
        shard_a = shard_of((await a.call("SH_NEW", {}))["tkn"])
        shard_b = shard_of((await b.call("SH_NEW", {}))["tkn"])
        wires = [(a, shard_a), (b, shard_b)]
        for i, owner in enumerate(owners):
            wire, here = wires[i % 2]
            tkn = (await wire.call("SH_NEW", {"owner": owner}))["tkn"]
            assert shard_of(tkn) == shard_of_owner(owner)
            cross += shard_of(tkn) != here
            created.append(tkn)
        n_new = 2 + len(owners)

        for i, tkn in enumerate(created):  # each from the connection that did not create it
            wire, here = wires[(i + 1) % 2]
            body = await wire.call("SH_SET", {"tkn": tkn, "keys": {"k": i}})
            assert body["st"] == 1
            cross += shard_of(tkn) != here
        n_set = len(created)

        missing = [random.randrange(1, 1 << 64) for _ in range(3)]
        for tkn in missing:
            body = await a.call("SH_GET", {"tkn": tkn, "keys": ["k"]})
            assert body["st"] == 100
            cross += shard_of(tkn) != shard_a
        n_get = len(missing)

        name, body = await a.text('{"SH_NOPE":{}}')
        assert (name, body["st"]) == ("SH_NOPE_RSP", 10)
        name, body = await b.text('{"SH_NEW":{')
        assert (name, body["st"]) == ("ERR", 3)

    after = scrape_metrics(fresh_server)
    counted = deltas(
        before.by("nemesisdb_commands_total", "command", "status"),
        after.by("nemesisdb_commands_total", "command", "status"),
    )
    assert counted == {
        ("SH_NEW", "1"): n_new,
        ("SH_SET", "1"): n_set,
        ("SH_GET", "100"): n_get,
        ("unknown", "10"): 1,  # a command name the server does not know
        ("unknown", "3"): 1,  # not JSON
    }
    timed = deltas(
        before.by("nemesisdb_command_duration_seconds_count", "command"),
        after.by("nemesisdb_command_duration_seconds_count", "command"),
    )
    assert timed == {("SH_NEW",): n_new, ("SH_SET",): n_set, ("SH_GET",): n_get, ("unknown",): 2}
    grew = after.value("nemesisdb_cross_shard_requests_total") - before.value(
        "nemesisdb_cross_shard_requests_total"
    )
    assert grew == cross and cross > 0
    not_exist = "nemesisdb_session_not_exist_total"
    assert after.value(not_exist) - before.value(not_exist) == n_get

    # The gauges by shard: our sessions and their one key each, where shard_of says.
    held = {s: 0 for s in range(SHARDS)}
    for tkn in created:
        held[shard_of(tkn)] += 1
    held[shard_a] += 1  # the two sessions without an owner (no keys)
    held[shard_b] += 1
    assert after.by("nemesisdb_sessions", "shard") == {(str(s),): n for s, n in held.items()}
    keys = {s: sum(1 for t in created if shard_of(t) == s) for s in range(SHARDS)}
    assert after.by("nemesisdb_keys", "shard") == {(str(s),): n for s, n in keys.items()}
    assert all(after.value("nemesisdb_memory_used_bytes", shard=str(s)) > 0 for s in held)


@pytest.mark.asyncio
async def test_bytes_received_and_sent_rise_with_traffic(server: Any) -> None:
    before = scrape_metrics(server)
    async with open_wire(server.uri) as w:
        tkn = (await w.call("SH_NEW", {}))["tkn"]
        for i in range(20):
            await w.call("SH_SET", {"tkn": tkn, "keys": {f"k{i}": "v" * 100}})
        await w.call("SH_GET", {"tkn": tkn, "keys": [f"k{i}" for i in range(20)]})
        await w.call("SH_END", {"tkn": tkn})
    after = scrape_metrics(server)
    received = after.value("nemesisdb_bytes_received_total") - before.value(
        "nemesisdb_bytes_received_total"
    )
    sent = after.value("nemesisdb_bytes_sent_total") - before.value("nemesisdb_bytes_sent_total")
    # At least the frames' payloads (other tests' traffic can only add).
    assert received >= w.sent > 2000
    assert sent >= w.received > 0


# -------------------------------------------------------------- connections


@pytest.mark.asyncio
async def test_connections_accepted_rejected_and_open(fresh_server: Any) -> None:
    scrapes = 0

    def scrape() -> Scrape:
        nonlocal scrapes
        scrapes += 1
        return scrape_metrics(fresh_server)

    # Nothing has connected to a fresh server but this scrape, which is
    # counted while it is served: accepted, and open.
    first = scrape()
    assert first.value("nemesisdb_connections_accepted_total") == 1
    assert first.value("nemesisdb_connections") == 1
    accepted = 1

    opened = [open_wire(fresh_server.uri) for _ in range(3)]
    wires = [await o.__aenter__() for o in opened]
    accepted += len(wires)
    for w in wires:  # they work
        assert (await w.call("SH_NEW", {}))["st"] == 1
    # Three WebSocket connections and the scrape itself (an earlier
    # scrape's connection may take a moment to be dropped).
    await eventually(scrape, lambda s: s.value("nemesisdb_connections") == 4, "4 open")

    # Not a WebSocket upgrade, not an endpoint: 400, closed, counted.
    answer = http(fresh_server, "/nothing")
    assert answer.status == 400
    accepted += 1
    rejected = await eventually(
        scrape,
        lambda s: s.value("nemesisdb_connections_rejected_total", reason="handshake") >= 1,
        "the refused request counted",
    )
    assert rejected.by("nemesisdb_connections_rejected_total", "reason") == {
        ("handshake",): 1,
        ("limit",): 0,
        ("protocol",): 0,
    }, "scrapes and WebSocket connections are not refusals"

    for o in opened:
        await o.__aexit__()
    last = await eventually(
        scrape, lambda s: s.value("nemesisdb_connections") == 1, "only the scrape open"
    )
    # Every scrape after the first was a connection too.
    assert last.value("nemesisdb_connections_accepted_total") == accepted + scrapes - 1
    assert last.value("nemesisdb_connections_rejected_total", reason="handshake") == 1


# ------------------------------------------------------------ the endpoints


@pytest.mark.asyncio
async def test_http_endpoints_and_refusals(server: Any) -> None:
    health = http(server, "/healthz")
    assert (health.status, health.body.strip()) == (200, b"ok")
    ready = http(server, "/readyz")
    assert (ready.status, ready.body.strip()) == (200, b"ready")
    metrics = http(server, "/metrics?cache=1")  # a query string changes nothing
    assert metrics.status == 200 and metrics.body.endswith(b"# EOF\n")
    assert int(metrics.headers["content-length"]) == len(metrics.body)

    assert http(server, "/nothing").status == 400
    assert http(server, "/").status == 400  # a plain GET that is no upgrade
    assert http(server, "/metrics", method="POST").status == 400
    assert http(server, "/healthz", method="DELETE").status == 400

    # WebSocket upgrades work on any path, the endpoints' included.
    for path in ("metrics", "healthz", "readyz"):
        async with open_wire(f"ws://{server.host}:{server.port}/{path}") as w:
            body = await w.call("SH_NEW", {})
            assert body["st"] == 1
            assert (await w.call("SH_END", {"tkn": body["tkn"]}))["st"] == 1


# ------------------------------------------------------------------ expiry


@pytest.mark.asyncio
async def test_expiries_are_counted_by_kind_with_their_lag(fresh_server: Any) -> None:
    idle, lifetime, keyed = 2000, 20, 50
    before = scrape_metrics(fresh_server)
    async with open_wire(fresh_server.uri) as w:

        async def pipelined(frames: List[Dict[str, Any]]) -> None:
            for frame in frames:
                await w.ws.send(json.dumps({"SH_NEW": frame}))
            for _ in frames:
                assert json.loads(await w.ws.recv())["SH_NEW_RSP"]["st"] == 1

        await pipelined([{"expiry": {"duration": 1, "deleteSession": True}}] * idle)
        await pipelined([{"expiry": {"maxLifetime": 1}}] * lifetime)
        await pipelined(
            [{"expiry": {"duration": 1, "deleteSession": False}, "keys": {"a": 1, "b": 2}}] * keyed
        )

    def expired(s: Scrape, kind: str) -> float:
        return s.value("nemesisdb_expired_total", kind=kind) - before.value(
            "nemesisdb_expired_total", kind=kind
        )

    after = await eventually(
        lambda: scrape_metrics(fresh_server),
        lambda s: (
            expired(s, "idle") >= idle
            and expired(s, "lifetime") >= lifetime
            and expired(s, "keys") >= keyed
            and s.value("nemesisdb_keys") == 0
        ),
        "every session expired",
    )
    assert expired(after, "idle") == idle
    assert expired(after, "lifetime") == lifetime
    # The keyed sessions stay, their keys gone; later deadlines find no
    # keys to clear and count nothing.
    assert expired(after, "keys") == keyed
    assert after.value("nemesisdb_sessions") == keyed
    # One lag observed per expiry of any kind, in the same scrape.
    lag = "nemesisdb_expiry_lag_seconds_count"
    observed = after.value(lag) - before.value(lag)
    assert observed == sum(expired(after, k) for k in ("idle", "lifetime", "keys"))
    assert observed == idle + lifetime + keyed
    assert after.value("nemesisdb_expiry_lag_seconds_sum") >= 0


# ------------------------------------------------------------- persistence


@pytest.mark.asyncio
async def test_change_log_and_snapshot_figures(persist_server: Any) -> None:
    before = scrape_metrics(persist_server)
    for name, (kind, labels) in {**FAMILIES, **LOG_FAMILIES}.items():
        check_family(before, name, kind, labels)

    async with open_wire(persist_server.uri) as w:
        tokens = [(await w.call("SH_NEW", {"keys": {"a": i}}))["tkn"] for i in range(10)]
        for tkn in tokens:
            await w.call("SH_SET", {"tkn": tkn, "keys": {"b": "x" * 50}})

        def grew(s: Scrape, name: str) -> float:
            return s.value(name) - before.value(name)

        logged = await eventually(
            lambda: scrape_metrics(persist_server),
            lambda s: (
                grew(s, "nemesisdb_log_records_total") >= 1
                and grew(s, "nemesisdb_log_bytes_total") > 0
                and grew(s, "nemesisdb_log_fsync_duration_seconds_count") >= 1
            ),
            "the writes logged and fsynced (everysec)",
        )
        assert grew(logged, "nemesisdb_log_bytes_total") >= grew(
            logged, "nemesisdb_log_records_total"
        )

        saved = await w.call("SH_SAVE", {"name": "metrics"})
        assert saved["st"] == 121
    after = await eventually(
        lambda: scrape_metrics(persist_server),
        lambda s: grew(s, "nemesisdb_snapshot_duration_seconds_count") >= 1,
        "the snapshot counted",
    )
    # One SH_SAVE is one snapshot (periodic ones come every 300 s).
    assert grew(after, "nemesisdb_snapshot_duration_seconds_count") == 1
    assert grew(after, "nemesisdb_snapshot_failures_total") == 0
    last = after.value("nemesisdb_snapshot_last_success_timestamp_seconds")
    assert abs(time.time() - last) < 60
    saves = deltas(
        before.by("nemesisdb_commands_total", "command", "status"),
        after.by("nemesisdb_commands_total", "command", "status"),
    )
    assert saves[("SH_SAVE", "121")] == 1


# -------------------------------------------------------- the Grafana dashboard

KEYWORDS = {
    # PromQL keywords and binary operators spelled as words.
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "offset", "and", "or", "unless", "atan2", "inf", "nan",
    # Aggregation operators (they may be followed by `by (...)`, not `(`).
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
    "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}  # fmt: skip


def promql_metric_names(expr: str) -> Set[str]:
    """The metric names a PromQL expression selects: the identifiers left
    once strings, Grafana variables, label matchers, ranges and grouping
    label lists are gone, that are not keywords, aggregation operators,
    function calls (a name followed by `(`) or numbers and durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\$\{[^}]*\}|\$\w+", " ", text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)",
        " ",
        text,
        flags=re.I,
    )
    names = set()
    # Numbers and durations (0.99, 1e3, 5m, .5) are matched whole, then skipped.
    for m in re.finditer(r"[A-Za-z_:][\w:]*|\d[\w.]*|\.\d\w*", text):
        token = m.group()
        if not (token[0].isalpha() or token[0] in "_:"):
            continue
        if token.lower() in KEYWORDS or re.match(r"\s*\(", text[m.end() :]):
            continue
        names.add(token)
    return names


def variable_query_expr(query: Any) -> Optional[str]:
    """The PromQL inside a Grafana query variable (None: it names no metric)."""
    if isinstance(query, dict):
        query = query.get("query", "")
    m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query, re.S)
    if m:
        return m.group(1)
    if re.fullmatch(r"\s*(label_values\(\s*\w+\s*\)|label_names\(.*\)|metrics\(.*\))\s*", query):
        return None
    m = re.fullmatch(r"\s*query_result\((.*)\)\s*", query, re.S)
    return m.group(1) if m else query


def dashboard_exprs(dashboard: Dict[str, Any]) -> Iterator[Tuple[str, str]]:
    """(where, PromQL) for every query of the dashboard: panel targets at
    any depth (rows nest their panels when collapsed), and query variables."""

    def walk(node: Any, where: str) -> Iterator[Tuple[str, str]]:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                yield where, node["expr"]
            for key, value in node.items():
                if key != "templating":
                    yield from walk(value, f"{where}/{node.get('title', key)}")
        elif isinstance(node, list):
            for item in node:
                yield from walk(item, where)

    yield from walk(dashboard.get("panels", []), "panels")
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            expr = variable_query_expr(var.get("query", ""))
            if expr is not None:
                yield f"variable {var.get('name')}", expr


def family_of(name: str, scrape: Scrape) -> Optional[str]:
    """The family a sample name belongs to, the way the OpenMetrics parser
    names families: a gauge (or untyped) under its own name; `_total` of a
    counter; `_bucket`, `_sum`, `_count` of a histogram; `_info` of an info."""
    families = scrape.families
    if name in families and families[name].type in ("gauge", "unknown", "stateset"):
        return name
    for suffix, kinds in (
        ("_total", {"counter"}),
        ("_bucket", {"histogram", "gaugehistogram"}),
        ("_sum", {"histogram", "summary"}),
        ("_count", {"histogram", "summary"}),
        ("_info", {"info"}),
    ):
        base = name[: -len(suffix)]
        if name.endswith(suffix) and base in families and families[base].type in kinds:
            return base
    return None


def test_promql_metric_names() -> None:
    assert promql_metric_names(
        'sum by (command) (rate(nemesisdb_commands_total{instance=~"$instance"}[$__rate_interval]))'
    ) == {"nemesisdb_commands_total"}
    assert promql_metric_names(
        "histogram_quantile(0.99, sum by (command, le) "
        '(rate(nemesisdb_command_duration_seconds_bucket{status!~"1|121"}[5m])))'
    ) == {"nemesisdb_command_duration_seconds_bucket"}
    assert promql_metric_names(
        'time() - max by (instance) (last_ok_seconds{job="a{b}[c]"} > 0) offset 1h'
    ) == {"last_ok_seconds"}
    assert promql_metric_names(
        "rate(a_sum[1m30s]) / on (instance) group_left(version) b_count * 1e3 "
        "or sum(c) by (le) unless vector(0)"
    ) == {"a_sum", "b_count", "c"}
    assert promql_metric_names('SUM(up) + count_values("v", build_info)') == {"up", "build_info"}
    assert promql_metric_names("max_over_time(x[$__range:1m]) > bool .5") == {"x"}
    assert variable_query_expr("label_values(nemesisdb_build_info, instance)") == (
        "nemesisdb_build_info"
    )
    assert variable_query_expr({"query": "label_values(instance)"}) is None
    assert variable_query_expr("query_result(topk(3, foo))") == "topk(3, foo)"


def test_family_of_follows_the_parser() -> None:
    scrape = Scrape(
        "# TYPE reqs counter\nreqs_total 1\n"
        '# TYPE lat histogram\nlat_bucket{le="+Inf"} 1\nlat_sum 1\nlat_count 1\n'
        "# TYPE odd_count gauge\nodd_count 3\n"
        '# TYPE build info\nbuild_info{v="1"} 1\n# EOF\n'
    )
    assert family_of("reqs_total", scrape) == "reqs"
    assert family_of("reqs", scrape) is None  # Prometheus stores the sample name
    assert [family_of(f"lat_{s}", scrape) for s in ("bucket", "sum", "count")] == ["lat"] * 3
    assert family_of("lat", scrape) is None
    assert family_of("odd_count", scrape) == "odd_count"  # a gauge keeps its name
    assert family_of("build_info", scrape) == "build"
    assert family_of("reqs_bucket", scrape) is None
    assert family_of("nothing", scrape) is None


def load_dashboard() -> Dict[str, Any]:
    dashboard = json.loads(DASHBOARD.read_text())
    assert isinstance(dashboard, dict)
    return dashboard


def all_panels(panels: List[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def test_the_dashboard_is_importable_and_tidy() -> None:
    dashboard = load_dashboard()
    assert isinstance(dashboard.get("schemaVersion"), int)
    assert dashboard.get("title") and dashboard.get("uid")
    panels = list(all_panels(dashboard["panels"]))
    graphs = [p for p in panels if p.get("type") != "row"]
    assert len(graphs) >= 15 and any(p.get("type") == "row" for p in panels)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"

    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    datasources = {f"${{{n}}}" for n, v in variables.items() if v["type"] == "datasource"}
    inputs = {f"${{{i['name']}}}" for i in dashboard.get("__inputs", [])}
    assert datasources | inputs, "a datasource variable or input to choose Prometheus with"
    instance = variables["instance"]
    assert variable_query_expr(instance["query"]) == "nemesisdb_build_info"
    assert "label_values(nemesisdb_build_info, instance)" in json.dumps(instance)

    selector = re.compile(r"\b((?:nemesisdb|process)_\w+)\s*(\{[^}]*\})?")
    for p in graphs:
        where = p.get("title")
        assert p["datasource"]["uid"] in datasources | inputs, where
        assert p["fieldConfig"]["defaults"].get("unit"), f"{where}: no unit"
        grid = p["gridPos"]
        assert grid["x"] + grid["w"] <= 24, where
        assert p["targets"], where
        for target in p["targets"]:
            for name, matchers in selector.findall(target["expr"]):
                assert 'instance=~"$instance"' in matchers, f"{where}: {name} not by instance"

    exprs = " ".join(e for _, e in dashboard_exprs(dashboard))
    for needed in (
        "nemesisdb_commands_total",
        "nemesisdb_command_duration_seconds_bucket",
        "nemesisdb_expiry_lag_seconds_bucket",
        "nemesisdb_log_fsync_duration_seconds_bucket",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ):
        assert needed in exprs


@pytest.mark.asyncio
async def test_every_dashboard_metric_exists_in_a_live_scrape(persist_server: Any) -> None:
    async with open_wire(persist_server.uri) as w:
        tkn = (await w.call("SH_NEW", {"keys": {"a": 1}}))["tkn"]
        await w.call("SH_GET", {"tkn": tkn, "keys": ["a"]})
        await w.call("SH_GET", {"tkn": 1, "keys": ["a"]})
        assert (await w.call("SH_SAVE", {"name": "dash"}))["st"] == 121
    scrape = scrape_metrics(persist_server)
    sample_names = {s.name for s in scrape.samples}

    checked = set()
    exprs = list(dashboard_exprs(load_dashboard()))
    assert exprs
    for where, expr in exprs:
        names = promql_metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        for name in names:
            assert family_of(name, scrape) is not None, f"{where}: {name} is no family's sample"
            assert name in sample_names, f"{where}: no {name} sample in the scrape"
            checked.add(name)
    assert len(checked) >= 20
