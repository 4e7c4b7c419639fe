"""One pipelined WebSocket connection to a NemesisDB-protocol server.

This module owns the socket, a writer task, a reader task and the FIFO of
waiting calls. It knows the envelope (``{CMD: {...}}`` in,
``{CMD_RSP: {...}}`` out) but nothing about individual commands.

Why a FIFO is enough: the server answers the requests of one connection
strictly in the order they were sent (docs/PROTOCOL.md, "Transport"). A call
appends its future to ``_pending`` and its frame to ``_outbox`` in the same
synchronous step, and only the writer task sends, so the send order always
equals the FIFO order. The reader hands each reply to the oldest future.

A caller that is cancelled leaves its future in the FIFO; the reader drops
the reply when it arrives, so later calls stay matched.

Pushed events (``{"SH_EVENT": {...}}``, docs/PROTOCOL.md, "Events") arrive
between replies on a subscribed connection. They are recognised by name
before any matching, so they can never be taken for a reply; they go to the
connection's `on_event` sink, or are dropped when it has none.

The module also holds `Backoff` and `retry`: how the client spaces its
attempts to reach a server that went away. A connection itself never
reconnects: it is one socket's life, and `ndb.sessionclient` replaces it.

It is the one place that knows which ``websockets.connect`` it calls:
`connect_options` turns credentials and a TLS context into that
function's keyword arguments, and `open` turns its refusals (HTTP 401, a
certificate that does not verify) into errors that say so.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import random
import ssl as ssl_module
from collections import deque
from collections.abc import Mapping
from typing import (
    Any,
    Awaitable,
    Callable,
    Collection,
    Deque,
    Dict,
    List,
    Optional,
    Tuple,
    TypeVar,
)

import websockets
from websockets.exceptions import ConnectionClosed

from .status import AuthenticationError, ProtocolError, ResponseError, Status, response_error

#: The name of a pushed event message; never the name of a reply.
EVENT = "SH_EVENT"

#: The keyword ``websockets.connect`` takes extra request headers by: the
#: asyncio implementation (websockets 14 and later) calls it
#: ``additional_headers``, the legacy one (12, 13) ``extra_headers``.
HEADERS_KWARG = (
    "additional_headers"
    if "additional_headers" in inspect.signature(websockets.connect).parameters
    else "extra_headers"
)

T = TypeVar("T")


class Connection:
    """A pipelined request/response channel over one WebSocket.

    Many coroutines may call `request` at once; each gets its own reply.
    When the connection drops, every waiting call and every later call
    raises `ConnectionError`.

    Args:
        on_event: awaited with the body of each pushed ``SH_EVENT``, in the
            order they arrive. The reader waits for it, so a sink that stops
            taking events stops the reading of the socket: that is how the
            server learns to hold events back (it writes them only as fast as
            the client reads). Replies behind those events wait too, which is
            why subscriptions get a connection of their own.
        on_lost: called once, with the error, when the connection becomes
            unusable for any reason (dropped, broken contract, or `close`).
    """

    def __init__(
        self,
        on_event: Optional[Callable[[Dict[str, Any]], Awaitable[None]]] = None,
        on_lost: Optional[Callable[[ConnectionError], None]] = None,
    ) -> None:
        self._on_event = on_event
        self._on_lost = on_lost
        # The socket; None until `open` succeeds.
        self._ws: Any = None
        # (command, future) of sent requests, oldest first; the reader resolves the head.
        self._pending: Deque[Tuple[str, asyncio.Future[Dict[str, Any]]]] = deque()
        # Frames waiting for the writer task, in the same order as _pending.
        self._outbox: Optional[asyncio.Queue[Optional[str]]] = None
        self._reader: Optional[asyncio.Task[None]] = None
        self._writer: Optional[asyncio.Task[None]] = None
        # Set once the connection is unusable; every later call raises it.
        self._error: Optional[ConnectionError] = None

    @property
    def is_open(self) -> bool:
        """True while requests can be sent."""
        return self._ws is not None and self._error is None

    @property
    def error(self) -> Optional[ConnectionError]:
        """Why the connection is unusable (None while it is open or not yet opened):
        a `ProtocolError` when the server broke the contract."""
        return self._error

    async def open(self, uri: str, **connect_kwargs: Any) -> None:
        """Connect to `uri` and start the reader and writer tasks.

        Raises:
            AuthenticationError: the server answered the upgrade with 401:
                the credentials in its ``Authorization`` header are wrong.
            ConnectionError: the server could not be reached or refused the
                WebSocket or TLS handshake.
            RuntimeError: this connection was already opened.
        """
        if self._ws is not None or self._error is not None:
            raise RuntimeError("connection already opened; use a new client")
        # Replies such as SH_GET of many keys can exceed websockets' 1 MiB default.
        connect_kwargs.setdefault("max_size", None)
        # Bound how long close() may wait for the server's half of the handshake.
        connect_kwargs.setdefault("close_timeout", 2)
        try:
            ws = await websockets.connect(uri, **connect_kwargs)
        except ConnectionError:
            raise
        except ssl_module.SSLCertVerificationError as e:
            raise ConnectionError(
                f"cannot connect to {uri}: the server's TLS certificate did not verify: "
                f"{e.verify_message or e}"
            ) from e
        except ssl_module.SSLError as e:
            raise ConnectionError(f"cannot connect to {uri}: TLS handshake failed: {e}") from e
        except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException) as e:
            if _http_status(e) == 401:
                raise AuthenticationError(
                    f"authentication failed: {uri} answered the upgrade with HTTP 401 "
                    "(the user or password is wrong)"
                ) from e
            if _closed_before_answering(e) and uri.lower().startswith("wss://"):
                # What a client sees of a server that requires client
                # certificates: its TLS alert is lost in the close.
                raise ConnectionError(
                    f"cannot connect to {uri}: the server closed the connection before "
                    f"answering the upgrade (over TLS, a server that requires a client "
                    f"certificate does so when none it trusts was presented): {e}"
                ) from e
            raise ConnectionError(f"cannot connect to {uri}: {e}") from e
        self._ws = ws
        self._outbox = asyncio.Queue()
        self._reader = asyncio.ensure_future(self._read_loop())
        self._writer = asyncio.ensure_future(self._write_loop())

    async def request(
        self,
        command: str,
        params: Dict[str, Any],
        ok: Collection[int] = (Status.Ok,),
    ) -> Dict[str, Any]:
        """Send ``{command: params}`` and return the reply body.

        Raises:
            ResponseError: the reply's ``st`` is not in `ok`.
            ConnectionError: the connection is not open or dropped before
                the reply arrived.
        """
        if self._error is not None:
            raise self._fresh_error()
        if self._ws is None or self._outbox is None:
            raise ConnectionError("not connected: call open() first")
        # Encoding errors (unserialisable values, NaN, lone surrogates) are the
        # caller's to see; they must never reach the writer task and kill the socket.
        frame = json.dumps(
            {command: params}, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        frame.encode("utf-8")
        future: asyncio.Future[Dict[str, Any]] = asyncio.get_running_loop().create_future()
        # No await between these two lines: that is what keeps send order == FIFO order.
        self._pending.append((command, future))
        self._outbox.put_nowait(frame)
        response = await future
        return _body_of(command, response, ok)

    async def close(self) -> None:
        """Close the socket; waiting calls fail with `ConnectionError`. Idempotent."""
        if self._error is None:
            self._fail(ConnectionError("connection closed by client"))
        if self._outbox is not None:
            self._outbox.put_nowait(None)
        ws = self._ws
        if ws is not None:
            try:
                await ws.close()
            except Exception:  # closing a broken socket: nothing left to do
                pass
        tasks = [t for t in (self._writer, self._reader) if t is not None]
        for task in tasks:
            task.cancel()
        # return_exceptions: the tasks' own ends are expected; a cancel of
        # close() itself still propagates.
        await asyncio.gather(*tasks, return_exceptions=True)

    def _fail(self, error: ConnectionError, cause: Optional[BaseException] = None) -> None:
        """Mark the connection dead and fail every waiting call with `error`."""
        first = self._error is None
        if first:
            error.__cause__ = cause
            self._error = error
        while self._pending:
            _, future = self._pending.popleft()
            if not future.done():
                future.set_exception(self._fresh_error())
        if first:
            # Frames still queued will never go out; let the writer task end.
            if self._outbox is not None:
                self._outbox.put_nowait(None)
            if self._on_lost is not None:
                self._on_lost(self._fresh_error())

    def _fresh_error(self) -> ConnectionError:
        """A new exception per caller: one instance raised in many tasks would
        collect all their tracebacks."""
        assert self._error is not None
        error = type(self._error)(*self._error.args)
        error.__cause__ = self._error.__cause__
        return error

    async def _write_loop(self) -> None:
        assert self._outbox is not None
        try:
            while True:
                frame = await self._outbox.get()
                if frame is None or self._error is not None:
                    return
                await self._ws.send(frame)
        except asyncio.CancelledError:
            raise
        except ConnectionClosed as e:
            self._fail(ConnectionError(f"connection lost: {e}"), e)
        except Exception as e:
            self._fail(ConnectionError(f"connection lost while sending: {e!r}"), e)
            await self._close_quietly()

    async def _read_loop(self) -> None:
        try:
            while True:
                message = await self._ws.recv()
                event = self._deliver(message)
                if event is not None and self._on_event is not None:
                    await self._on_event(event)
                if self._error is not None:
                    await self._close_quietly()
                    return
        except asyncio.CancelledError:
            raise
        except ConnectionClosed as e:
            self._fail(ConnectionError(f"connection lost: {e}"), e)
        except Exception as e:
            self._fail(ConnectionError(f"connection lost: {e!r}"), e)
            await self._close_quietly()

    def _deliver(self, message: Any) -> Optional[Dict[str, Any]]:
        """Decode one message: resolve the oldest waiting future with a reply, or
        return the body of a pushed event for the caller to hand on."""
        if not isinstance(message, str):
            self._fail(ProtocolError("server sent a binary frame"))
            return None
        try:
            response = json.loads(message)
        except ValueError:
            self._fail(ProtocolError(f"server sent invalid JSON: {message[:200]!r}"))
            return None
        if not isinstance(response, dict) or len(response) != 1:
            self._fail(ProtocolError(f"server sent a malformed reply: {message[:200]!r}"))
            return None
        name = next(iter(response))
        if name == EVENT:
            # Not a reply, whatever is waiting: it must not touch the FIFO.
            body = response[name]
            if not isinstance(body, dict):
                self._fail(ProtocolError(f"server sent a malformed event: {message[:200]!r}"))
                return None
            return body
        if not self._pending:
            self._fail(
                ProtocolError(f"server sent a reply with no request waiting: {message[:200]!r}")
            )
            return None
        command, future = self._pending[0]
        if name != command + "_RSP" and name != "ERR":
            # Replies are matched by order, so a foreign name means they no longer line up.
            self._fail(ProtocolError(f"{command} was answered by {name}: {message[:200]!r}"))
            return None
        self._pending.popleft()
        if not future.done():  # done means the caller was cancelled: drop the reply
            future.set_result(response)
        return None

    async def _close_quietly(self) -> None:
        try:
            await self._ws.close()
        except Exception:
            pass


def _http_status(error: BaseException) -> Optional[int]:
    """The HTTP status of a refused upgrade, if `error` is one: websockets'
    `InvalidStatus` keeps the response (``.response.status_code``), the
    legacy `InvalidStatusCode` the code itself (``.status_code``)."""
    status = getattr(error, "status_code", None)
    if status is None:
        status = getattr(getattr(error, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def _closed_before_answering(error: BaseException) -> bool:
    """Whether `error` says the connection ended before any HTTP response."""
    cause: Optional[BaseException] = error
    while cause is not None:
        if isinstance(cause, EOFError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def basic_authorization(user: str, password: str) -> str:
    """The value of an ``Authorization`` header with Basic credentials (RFC 7617, UTF-8)."""
    token = base64.b64encode(f"{user}:{password}".encode("utf-8")).decode("ascii")
    return f"Basic {token}"


def connect_options(
    connect_kwargs: Dict[str, Any],
    authorization: Optional[str] = None,
    ssl: Optional[ssl_module.SSLContext] = None,
) -> Dict[str, Any]:
    """The keyword arguments for ``websockets.connect``: `connect_kwargs` with
    an ``Authorization`` header of value `authorization` added to the
    caller's own headers (under `HEADERS_KWARG`), and `ssl`.

    Raises:
        ValueError: `authorization` given while the caller's headers carry
            an ``Authorization`` of their own: which one to send is unclear.
    """
    options = dict(connect_kwargs)
    if authorization is not None:
        headers = _header_pairs(options.get(HEADERS_KWARG))
        if any(name.lower() == "authorization" for name, _ in headers):
            raise ValueError(
                f"{HEADERS_KWARG} has an Authorization header already; "
                "give user and password, or that header, not both"
            )
        options[HEADERS_KWARG] = headers + [("Authorization", authorization)]
    if ssl is not None:
        options["ssl"] = ssl
    return options


def _header_pairs(headers: Any) -> List[Tuple[str, str]]:
    """Request headers in any form websockets takes (a mapping, its `Headers`,
    pairs) as pairs."""
    if headers is None:
        return []
    raw_items = getattr(headers, "raw_items", None)  # websockets' Headers: keeps repeats
    if callable(raw_items):
        return list(raw_items())
    if isinstance(headers, Mapping):
        return list(headers.items())
    return [(name, value) for name, value in headers]


def _body_of(command: str, response: Dict[str, Any], ok: Collection[int]) -> Dict[str, Any]:
    """Check that `response` answers `command` with a success status; return its body."""
    name, body = next(iter(response.items()))
    if not isinstance(body, dict):
        raise ResponseError(command, response, {})
    st = body.get("st")
    if name == "ERR" or isinstance(st, bool) or st not in ok:
        raise response_error(command, response, body)
    return body


class Backoff:
    """The delays between attempts to reach a server: doubling from `first` up to `cap`.

    Each delay is drawn from the upper half of its step, so that the many
    clients one restart cut off do not all knock again in the same instant.
    """

    def __init__(self, first: float = 0.05, cap: float = 2.0) -> None:
        self._step = first
        self._cap = cap

    def delay(self) -> float:
        step = self._step
        self._step = min(step * 2, self._cap)
        return random.uniform(step / 2, step)


async def retry(
    attempt: Callable[[], Awaitable[T]],
    timeout: Optional[float],
    stop: Optional[asyncio.Event] = None,
) -> T:
    """Await `attempt()` until it does not raise `ConnectionError`, with `Backoff`
    delays between tries, and return what it returned.

    Gives up, raising a `ConnectionError` that names the last failure, once
    `timeout` seconds have passed (None: never; 0: after the first try) or
    `stop` is set. A `ProtocolError` is raised at once: a server that broke
    the contract is not one to wait for; so is an `AuthenticationError`:
    credentials refused once are refused again. Other exceptions pass
    through.
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    backoff = Backoff()
    while True:
        try:
            return await attempt()
        except (ProtocolError, AuthenticationError):
            raise
        except ConnectionError as e:
            error = e
        delay = backoff.delay()
        if deadline is not None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ConnectionError(f"{error} (gave up after {timeout:g}s)") from error
            delay = min(delay, remaining)
        if stop is None:
            await asyncio.sleep(delay)
        else:
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except asyncio.TimeoutError:
                pass
            if stop.is_set():
                raise ConnectionError(f"{error} (stopped while retrying)") from error
