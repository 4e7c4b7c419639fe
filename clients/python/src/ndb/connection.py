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
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import Any, Collection, Deque, Dict, Optional, Tuple

import websockets
from websockets.exceptions import ConnectionClosed

from .status import ProtocolError, ResponseError, Status, response_error


class Connection:
    """A pipelined request/response channel over one WebSocket.

    Many coroutines may call `request` at once; each gets its own reply.
    When the connection drops, every waiting call and every later call
    raises `ConnectionError`.
    """

    def __init__(self) -> None:
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

    async def open(self, uri: str, **connect_kwargs: Any) -> None:
        """Connect to `uri` and start the reader and writer tasks.

        Raises:
            ConnectionError: the server could not be reached or refused the
                WebSocket handshake.
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
        except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException) as e:
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
        if self._error is None:
            error.__cause__ = cause
            self._error = error
        while self._pending:
            _, future = self._pending.popleft()
            if not future.done():
                future.set_exception(self._fresh_error())

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
                self._deliver(message)
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

    def _deliver(self, message: Any) -> None:
        """Decode one reply and resolve the oldest waiting future with it."""
        if not isinstance(message, str):
            self._fail(ProtocolError("server sent a binary frame"))
            return
        try:
            response = json.loads(message)
        except ValueError:
            self._fail(ProtocolError(f"server sent invalid JSON: {message[:200]!r}"))
            return
        if not isinstance(response, dict) or len(response) != 1:
            self._fail(ProtocolError(f"server sent a malformed reply: {message[:200]!r}"))
            return
        if not self._pending:
            self._fail(
                ProtocolError(f"server sent a reply with no request waiting: {message[:200]!r}")
            )
            return
        command, future = self._pending[0]
        name = next(iter(response))
        if name != command + "_RSP" and name != "ERR":
            # Replies are matched by order, so a foreign name means they no longer line up.
            self._fail(ProtocolError(f"{command} was answered by {name}: {message[:200]!r}"))
            return
        self._pending.popleft()
        if not future.done():  # done means the caller was cancelled: drop the reply
            future.set_result(response)

    async def _close_quietly(self) -> None:
        try:
            await self._ws.close()
        except Exception:
            pass


def _body_of(command: str, response: Dict[str, Any], ok: Collection[int]) -> Dict[str, Any]:
    """Check that `response` answers `command` with a success status; return its body."""
    name, body = next(iter(response.items()))
    if not isinstance(body, dict):
        raise ResponseError(command, response, {})
    st = body.get("st")
    if name == "ERR" or isinstance(st, bool) or st not in ok:
        raise response_error(command, response, body)
    return body
