"""Small helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import json
from typing import Any


def rsp(command: str, **body: Any) -> str:
    """A reply frame ``{command_RSP: body}`` as a fake server sends it."""
    return json.dumps({command + "_RSP": body})


def command_of(frame: str) -> str:
    """The command name of a request frame."""
    return next(iter(json.loads(frame)))


def params_of(frame: str) -> Any:
    """The parameter object of a request frame."""
    return next(iter(json.loads(frame).values()))


# ------------------------------------------- the HTTP endpoints and /metrics

# Imported here, beside the helpers that need them.
import asyncio  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
from typing import Callable, Dict, NamedTuple, Tuple, TypeVar  # noqa: E402

T = TypeVar("T")


class HttpAnswer(NamedTuple):
    """An HTTP answer as the server sent it; header names in lower case."""

    status: int
    headers: Dict[str, str]
    body: bytes


def http_request(
    host: str, port: int, path: str, method: str = "GET", timeout: float = 10.0
) -> HttpAnswer:
    """One HTTP/1.1 request on a connection of its own, read until the server
    closes it (it answers one request per connection, then closes)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    if method not in ("GET", "HEAD"):
        head += "Content-Length: 0\r\n"
    received = bytearray()
    with socket.create_connection((host, port), timeout=timeout) as conn:
        conn.sendall((head + "\r\n").encode("ascii"))
        while True:
            try:
                chunk = conn.recv(65536)
            except ConnectionResetError:
                break  # a refusal may close without reading the whole request
            if not chunk:
                break
            received += chunk
    status_line, _, rest = bytes(received).partition(b"\r\n")
    header_block, _, body = rest.partition(b"\r\n\r\n")
    parts = status_line.decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise AssertionError(f"not an HTTP answer: {bytes(received)[:200]!r}")
    headers: Dict[str, str] = {}
    for line in header_block.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return HttpAnswer(int(parts[1]), headers, body)


class Scrape:
    """One `/metrics` answer, parsed as OpenMetrics (the server ends it with
    ``# EOF``). Families are named as the parser names them: a counter
    without ``_total``, a histogram without ``_bucket``/``_sum``/``_count``,
    an info metric without ``_info``; samples keep their full names."""

    def __init__(self, text: str) -> None:
        # Imported here: only the metrics tests need prometheus_client.
        from prometheus_client.openmetrics.parser import text_string_to_metric_families

        self.text = text
        try:
            self.families = {f.name: f for f in text_string_to_metric_families(text)}
        except ValueError as e:
            raise AssertionError(f"/metrics is not valid OpenMetrics: {e}") from e
        self.samples = [s for f in self.families.values() for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples called `name` whose labels include
        `labels` (0 when there are none: a counter not yet counted)."""
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def by(self, name: str, *label_names: str) -> Dict[Tuple[str, ...], float]:
        """The samples called `name`, keyed by the values of `label_names`."""
        found: Dict[Tuple[str, ...], float] = {}
        for s in self.samples:
            if s.name == name:
                key = tuple(s.labels.get(n, "") for n in label_names)
                found[key] = found.get(key, 0.0) + s.value
        return found


def scrape_metrics(server: Any) -> Scrape:
    """GET /metrics of a running `ServerProcess` (conftest), parsed."""
    answer = http_request(server.host, server.port, "/metrics")
    assert answer.status == 200, answer
    return Scrape(answer.body.decode("utf-8"))


def deltas(
    before: Dict[Tuple[str, ...], float], after: Dict[Tuple[str, ...], float]
) -> Dict[Tuple[str, ...], float]:
    """What changed between two `Scrape.by` results (the unchanged left out)."""
    changed = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in set(before) | set(after)}
    return {k: d for k, d in changed.items() if d != 0}


async def eventually(
    probe: Callable[[], T],
    done: Callable[[T], bool],
    what: str,
    timeout: float = 20.0,
    interval: float = 0.05,
) -> T:
    """Calls `probe` until `done` holds for its result (and returns it);
    fails naming `what` and the last result after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still not so after {timeout}s (last: {result!r})")
        await asyncio.sleep(interval)
