"""Fixtures: the real server binary on a free port, clients connected to it,
and a scripted fake server for replies the real one must never send.

The binary comes from ``NEMESISDB_BIN`` (default ``<repo>/target/debug/nemesisdb``)
and is started as ``BIN --ip 127.0.0.1 --port 0 --shards 2``; its startup line
on stdout, ``listening on IP:PORT``, says where to connect. A server that
tests restart (`restartable_server`) gets a fixed free port instead, so that
it comes back where its clients knew it. A server given ``--tls-cert`` speaks
only TLS: its `uri` is ``wss://``.

Every test runs under a watchdog: a test that hangs dumps its stack and ends
the run instead of stalling CI.
"""

from __future__ import annotations

import faulthandler
import os
import queue
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, List, Optional

import pytest
import pytest_asyncio

HERE = Path(__file__).resolve().parent
PACKAGE_ROOT = HERE.parent
REPO_ROOT = PACKAGE_ROOT.parent.parent
# Test the working tree, not whatever copy of ndb happens to be installed.
sys.path.insert(0, str(PACKAGE_ROOT / "src"))

from ndb.sessionclient import SessionClient  # noqa: E402

LISTENING = re.compile(r"listening on ([0-9.]+):(\d+)")
STARTUP_TIMEOUT = 20.0
TEST_WATCHDOG_SECONDS = 90.0


def server_binary() -> Path:
    return Path(os.environ.get("NEMESISDB_BIN", REPO_ROOT / "target" / "debug" / "nemesisdb"))


class ServerStartError(Exception):
    """The binary exited or stayed silent instead of listening."""

    def __init__(self, message: str, stderr: str) -> None:
        super().__init__(message)
        self.stderr = stderr


def start_server(*extra_args: str, port: int = 0) -> "ServerProcess":
    try:
        return ServerProcess(*extra_args, port=port)
    except ServerStartError as e:
        raise pytest.fail.Exception(str(e)) from e


def free_port() -> int:
    """A port nobody listens on now (the kernel's pick for a socket bound to 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def uri_for(extra_args: "tuple[str, ...]", host: str, port: int) -> str:
    """Where a server started with `extra_args` is reached: ``wss://`` with TLS."""
    scheme = "wss" if "--tls-cert" in extra_args else "ws"
    return f"{scheme}://{host}:{port}/"


class ServerProcess:
    """One running server binary; `uri` is where it listens (``wss://`` with
    ``--tls-cert``)."""

    def __init__(self, *extra_args: str, port: int = 0) -> None:
        binary = server_binary()
        if not binary.is_file():
            pytest.fail(f"server binary not found at {binary} (build it or set NEMESISDB_BIN)")
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [str(binary), "--ip", "127.0.0.1", "--port", str(port), "--shards", "2", *extra_args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            # A RUST_LOG of the runner's would override the server's log
            # level and could hide the line the tests wait for.
            env={k: v for k, v in os.environ.items() if k != "RUST_LOG"},
            text=True,
            errors="replace",
        )
        self.stdout: List[str] = []
        lines: "queue.Queue[Optional[str]]" = queue.Queue()
        # Drain stdout for the life of the process so the server never blocks on a full pipe.
        threading.Thread(target=self._drain, args=(lines,), daemon=True).start()
        self.host, self.port = self._wait_for_listening(lines)
        self.uri = uri_for(extra_args, self.host, self.port)

    def _drain(self, lines: "queue.Queue[Optional[str]]") -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout.append(line)
            lines.put(line)
        lines.put(None)

    def _wait_for_listening(self, lines: "queue.Queue[Optional[str]]") -> "tuple[str, int]":
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = lines.get(timeout=max(remaining, 0.01))
            except queue.Empty:
                line = None
                if time.monotonic() < deadline:
                    continue
            if line is not None:
                match = LISTENING.search(line)
                if match:
                    return match.group(1), int(match.group(2))
                continue
            self._stderr.seek(0)
            err = self._stderr.read().decode("utf-8", "replace")[-2000:]
            self.kill()
            raise ServerStartError(
                "server did not print 'listening on IP:PORT' within "
                f"{STARTUP_TIMEOUT}s (exit code {self.proc.returncode}).\n"
                f"stdout: {''.join(self.stdout)[-2000:]}\nstderr: {err}",
                err,
            )

    def stop(self) -> None:
        """Pause the process (SIGSTOP): it keeps its sockets but answers nothing."""
        import signal

        os.kill(self.proc.pid, signal.SIGSTOP)
        # Threads running on other cores stop a moment later; wait until all have.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not self._all_threads_stopped():
            time.sleep(0.01)

    def _all_threads_stopped(self) -> bool:
        try:
            tasks = list(Path(f"/proc/{self.proc.pid}/task").iterdir())
            states = [(t / "stat").read_text().rsplit(")", 1)[1].split()[0] for t in tasks]
        except OSError:
            time.sleep(0.2)  # no /proc: give the signal a moment instead
            return True
        return all(state in ("T", "t") for state in states)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._stderr.close()


@pytest.fixture(autouse=True)
def watchdog() -> Iterator[None]:
    """Never hang: a test still running after the limit dumps stacks and exits."""
    faulthandler.dump_traceback_later(TEST_WATCHDOG_SECONDS, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    """A server shared by the tests that do not depend on server-wide state."""
    proc = start_server()
    yield proc
    proc.kill()


@pytest.fixture
def fresh_server() -> Iterator[ServerProcess]:
    """A server of the test's own, for server-wide counts and for killing."""
    proc = start_server()
    yield proc
    proc.kill()


@pytest.fixture
def make_server() -> Iterator[Callable[..., ServerProcess]]:
    """Start servers of the test's own with extra flags; all are killed after it."""
    started: List[ServerProcess] = []

    def make(*extra_args: str) -> ServerProcess:
        proc = start_server(*extra_args)
        started.append(proc)
        return proc

    yield make
    for proc in started:
        proc.kill()


class RestartableServer:
    """A server that a test can kill and start again on the same port, as a
    restart (or a crash and a supervisor) would. Its memory goes with it."""

    def __init__(self, *extra_args: str) -> None:
        self.extra_args = extra_args
        self.process: Optional[ServerProcess] = None
        # Another process could take the free port between two starts; the
        # start then fails loudly rather than silently talking to a stranger.
        self.port = free_port()
        self.start()
        self.uri = uri_for(extra_args, "127.0.0.1", self.port)

    def start(self) -> None:
        assert self.process is None, "already running"
        self.process = start_server(*self.extra_args, port=self.port)
        assert self.process.port == self.port

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process = None

    def stop(self) -> None:
        """Pause it (SIGSTOP): sockets stay open, nothing is answered."""
        assert self.process is not None
        self.process.stop()

    def restart(self) -> None:
        self.kill()
        self.start()


@pytest.fixture
def restartable_server() -> Iterator[RestartableServer]:
    """A server of the test's own on a fixed port, for restarting under a client."""
    server = RestartableServer()
    yield server
    server.kill()


@pytest.fixture
def make_restartable_server() -> Iterator[Callable[..., RestartableServer]]:
    """`restartable_server` with extra flags; every one started is killed after the test."""
    started: List[RestartableServer] = []

    def make(*extra_args: str) -> RestartableServer:
        server = RestartableServer(*extra_args)
        started.append(server)
        return server

    yield make
    for server in started:
        server.kill()


@pytest.fixture
def persist_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of the test's own with persistence on, saving under tmp_path."""
    try:
        proc = ServerProcess("--persist-path", str(tmp_path / "data"))
    except ServerStartError as e:
        if "not available in this build" in e.stderr:
            pytest.skip("this server build has no persistence")
        pytest.fail(str(e))
    yield proc
    proc.kill()


@pytest_asyncio.fixture
async def client(server: ServerProcess) -> AsyncIterator[SessionClient]:
    c = SessionClient()
    await c.open(server.uri)
    yield c
    await c.close()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Names no other test uses, since the shared server outlives each test."""

    def make(prefix: str = "n") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    return make


Handler = Callable[[Any], Awaitable[None]]


@pytest_asyncio.fixture
async def fake_server() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Start an in-process WebSocket server running `handler(ws)`; returns its
    uri. Keyword arguments go to ``websockets.serve`` (e.g. ``process_request``)."""
    import websockets

    servers: List[Any] = []

    async def start(handler: Handler, **serve_kwargs: Any) -> str:
        async def run(ws: Any, *_: Any) -> None:
            try:
                await handler(ws)
            except Exception:
                pass

        srv = await websockets.serve(run, "127.0.0.1", 0, **serve_kwargs)
        servers.append(srv)
        port = next(iter(srv.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}/"

    yield start
    for srv in servers:
        srv.close()
        await srv.wait_closed()
