"""Session events (docs/PROTOCOL.md, "Events"): `Event`, one event, and
`EventStream`, the subscription that `SessionClient.events` returns.

A stream has a connection of its own. The server pushes events between the
answers on the connection that subscribed, and writes them only as fast as
the client reads them; on the shared request connection a consumer that
paused would hold up every reply queued behind its events, and a slow
reply would hold up the events. So a stream opens its own connection, sends
``SH_SUBSCRIBE`` on it and no other request, and the request connection
never subscribes. (Every connection still recognises ``SH_EVENT`` by name
before matching replies, so an event can never be taken for an answer.)

Resuming: the stream keeps the cursor of the last event it handed out (before
the first, the one the ``SH_SUBSCRIBE`` answer gave). When its connection
goes, it opens another, with backoff, and subscribes again with
``after=cursor``: the events in between arrive as if nothing happened, and
when some are gone (status 160, or a cursor the server can no longer read)
the caller gets an ``Event`` of kind ``lost`` first. Nothing is skipped
silently.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import TracebackType
from typing import (
    TYPE_CHECKING,
    Any,
    AsyncIterator,
    Dict,
    Optional,
    Tuple,
    Type,
)

from .connection import Backoff, Connection, retry
from .status import ProtocolError, ResponseError, Status

if TYPE_CHECKING:  # pragma: no cover
    from .sessionclient import SessionClient

__all__ = ["Event", "EventStream", "EVENT_KINDS"]

#: The event kinds a subscription may ask for (``lost`` is never asked for:
#: it comes whenever events were missed).
EVENT_KINDS = ("created", "ended", "expired", "keysExpired")

# Events read off the socket but not yet taken by the consumer. Small on
# purpose: once it is full the stream stops reading, and the server, which
# writes only as fast as the client reads, holds the rest in its ring.
_QUEUE_SIZE = 64


def _int(value: Any) -> Optional[int]:
    # bool is an int to Python, never a number on the wire.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> Optional[str]:
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Event:
    """One session event, as pushed by the server (``SH_EVENT``).

    Attributes:
        event: ``'created'``, ``'ended'``, ``'expired'``, ``'keysExpired'``,
            or ``'lost'``: events this subscriber will never see.
        tkn: the session's token (None for ``lost``).
        name: the session's name, when it has one.
        owner: the session's owner, when it has one.
        at: when it happened, ms since the Unix epoch (None for ``lost``).
        deadline: for ``expired`` and ``keysExpired``, the deadline that
            passed, ms since the Unix epoch.
        reason: for ``expired``, ``'idle'`` or ``'lifetime'``.
        keys: with ``withKeys=True``, for ``ended``, ``expired`` and
            ``keysExpired``: the keys the session held at that moment, as
            `SessionClient.get` returns them; else None.
        keys_truncated: True when the keys did not fit in the server's
            ``maxPayload``: `keys` then holds as many whole keys as fitted.
        lost: for ``lost``, how many events are gone; -1 when the server
            cannot tell (its ring belongs to another run: it restarted).
        cursor: where the subscriber is once this event is handled; pass it
            as ``after`` to resume right after it.
        raw: the message's body as it arrived, for fields this client does
            not know. For a ``lost`` event made from a resume's answer (status
            160, or a refused cursor) it is that answer's body, with ``st``.
    """

    event: str
    tkn: Optional[int] = None
    name: Optional[str] = None
    owner: Optional[str] = None
    at: Optional[int] = None
    deadline: Optional[int] = None
    reason: Optional[str] = None
    keys: Optional[Dict[str, Any]] = None
    keys_truncated: bool = False
    lost: Optional[int] = None
    cursor: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_body(cls, body: Dict[str, Any]) -> "Event":
        """The event an ``SH_EVENT`` body describes; fields it lacks are None."""
        keys = body.get("keys")
        return cls(
            event=str(body.get("event")),
            tkn=_int(body.get("tkn")),
            name=_str(body.get("name")),
            owner=_str(body.get("owner")),
            at=_int(body.get("at")),
            deadline=_int(body.get("deadline")),
            reason=_str(body.get("reason")),
            keys=dict(keys) if isinstance(keys, dict) else None,
            keys_truncated=body.get("keysTruncated") is True,
            lost=_int(body.get("lost")),
            cursor=_str(body.get("cursor")),
            raw=body,
        )

    @classmethod
    def lost_before(cls, lost: Any, cursor: Optional[str], answer: Dict[str, Any]) -> "Event":
        """The ``lost`` event for a resume the server could not make whole."""
        count = _int(lost)
        return cls(event="lost", lost=-1 if count is None else count, cursor=cursor, raw=answer)


class _Subscription:
    """One connection of a stream: the events it delivered, in arrival order,
    and whether it is gone. A stream that reconnects makes a new one, so that
    nothing of the old connection can come after the new one's events."""

    def __init__(self) -> None:
        self.queue: "asyncio.Queue[Optional[Dict[str, Any]]]" = asyncio.Queue(_QUEUE_SIZE)
        self.conn = Connection(on_event=self.queue.put, on_lost=self._on_lost)
        self.gone = False
        # Events handed out: a subscription that ends without any made no progress.
        self.delivered = 0

    def _on_lost(self, error: ConnectionError) -> None:
        self.gone = True
        # None wakes a consumer waiting on an empty queue. A full queue has no
        # consumer waiting; it sees `gone` once it has drained the queue.
        try:
            self.queue.put_nowait(None)
        except asyncio.QueueFull:
            pass

    async def next(self) -> Optional[Dict[str, Any]]:
        """The next event body, or None once the connection is gone and every
        event it delivered has been taken."""
        stopped = False
        while True:
            if not self.queue.empty():
                item = self.queue.get_nowait()
                if item is not None:
                    self.delivered += 1
                    return item
                continue
            if self.gone:
                if stopped:
                    return None
                # A reader that was waiting for room puts its last event on its
                # way out; once closed it has stopped, and the queue is final.
                await self.conn.close()
                stopped = True
                continue
            item = await self.queue.get()
            if item is not None:
                self.delivered += 1
                return item


class EventStream:
    """A subscription to session events; iterate it with ``async for``.

    Made by `SessionClient.events`. It subscribes when the iteration starts,
    or before: on entering ``async with client.events(...) as stream:``, or
    at `start`. It is iterated once. Leaving the loop (``break``, ``return``,
    an exception) ends the subscription by closing its connection: at once
    with ``async with`` or `aclose`, and otherwise as soon as the abandoned
    loop is garbage collected (at once in CPython).

    Raises from the iteration:
        ResponseError: the server refused the subscription (41/42 for bad
            parameters; a refused ``after`` given by the caller is 42).
        ConnectionError: the server stayed out of reach for the client's
            ``reconnect_timeout`` (or the connection dropped and the client
            was made with ``reconnect=False``). `cursor` says where to resume.
        ProtocolError: the server broke the contract on the stream's
            connection (a malformed message); that is not resumed.
        AuthenticationError: the server refused the client's credentials
            when the stream connected (or reconnected); not retried.
    """

    def __init__(self, client: "SessionClient", params: Dict[str, Any], after: Any) -> None:
        self._client = client
        self._params = params
        self._cursor: Optional[Any] = after
        # Whether the cursor came from the server (an answer or an event) and
        # not from the caller: a refusal of the caller's cursor is theirs to
        # see, of the server's own a sign that events were lost.
        self._cursor_from_server = False
        # The subscription's connection: once `_lock` is free, None or answered.
        self._sub: Optional[_Subscription] = None
        # Held while subscribing, so that `start` and the iteration make one subscription.
        self._lock = asyncio.Lock()
        # A `lost` event from subscribing in `start`, for the iteration to hand out first.
        self._lost: Optional[Event] = None
        self._closed = False
        self._stop = asyncio.Event()
        self._iterated = False
        # Between subscriptions that end without delivering anything, so that
        # a server that takes subscriptions and drops them is not hammered.
        self._backoff = Backoff()
        self._resume_delay = 0.0

    @property
    def cursor(self) -> Optional[str]:
        """The cursor of the last event handed out, or before any, of the
        subscription's start; None until subscribed (or the ``after`` given).
        Pass it as ``after`` to a new stream to go on where this one stopped."""
        return self._cursor

    @property
    def closed(self) -> bool:
        """True once `aclose` ran (or the iteration ended)."""
        return self._closed

    def __aiter__(self) -> AsyncIterator[Event]:
        if self._iterated:
            raise RuntimeError(
                "an EventStream is iterated once; for another, call client.events(...) "
                "again with after=stream.cursor"
            )
        self._iterated = True
        # A generator, not self: when a loop over it is left and dropped, the
        # event loop closes the generator, whose `finally` closes the stream.
        return self._run()

    async def __aenter__(self) -> "EventStream":
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Subscribe now, rather than when the iteration starts. Once it returns
        the server keeps every later event for this stream: events of sessions
        created afterwards will be delivered. Nothing happens if the stream is
        subscribed already.

        Raises (and closes the stream):
            ResponseError: the server refused the subscription.
            ConnectionError: the server stayed out of reach for the client's
                ``reconnect_timeout``, or the stream was closed.
        """
        if self._closed:
            raise ConnectionError("event stream closed")
        try:
            await self._subscribed()
        except BaseException:
            await self.aclose()
            raise
        if self._closed:
            raise ConnectionError("event stream closed")

    async def aclose(self) -> None:
        """End the subscription and close its connection. A loop waiting for
        the next event ends (without an error). Idempotent."""
        self._closed = True
        self._stop.set()
        self._client._forget_stream(self)
        sub, self._sub = self._sub, None
        if sub is not None:
            await sub.conn.close()

    async def _run(self) -> AsyncIterator[Event]:
        try:
            while not self._closed:
                if self._lost is not None:
                    lost, self._lost = self._lost, None
                    yield lost
                    continue
                sub = self._sub
                if sub is None or self._lock.locked():  # none, or `start` is making one
                    try:
                        await self._subscribed()
                    except ConnectionError:
                        if self._closed:
                            return
                        raise
                    continue
                body = await sub.next()
                if body is None:
                    if self._sub is sub:
                        self._sub = None
                    error = sub.conn.error
                    if self._closed:
                        continue
                    if isinstance(error, ProtocolError):
                        # A server that broke the contract would break it again.
                        raise ProtocolError(*error.args) from error
                    if not self._client._reconnect:
                        raise ConnectionError(f"event connection lost: {error}")
                    if sub.delivered:
                        self._backoff = Backoff()
                        self._resume_delay = 0.0
                    else:
                        self._resume_delay = self._backoff.delay()
                    continue
                event = Event.from_body(body)
                if event.cursor is not None:
                    self._cursor = event.cursor
                    self._cursor_from_server = True
                yield event
        finally:
            await self.aclose()

    async def _subscribed(self) -> None:
        """Make sure there is an answered subscription (unless closed); a
        `lost` event from making it waits in `_lost`."""
        async with self._lock:
            if self._sub is None and not self._closed:
                sub, lost = await self._subscribe()
                self._sub = sub
                self._lost = lost

    async def _subscribe(self) -> Tuple[_Subscription, Optional[Event]]:
        """Connect and subscribe from the cursor, retrying with backoff as the
        client reconnects; returns the subscription and, when events were
        missed, the ``lost`` event to hand out first."""
        uri = self._client._event_endpoint()
        timeout = self._client._reconnect_timeout if self._client._reconnect else 0
        if self._resume_delay:
            try:
                await asyncio.wait_for(self._stop.wait(), self._resume_delay)
            except asyncio.TimeoutError:
                pass
            if self._closed:
                raise ConnectionError("event stream closed")

        async def attempt() -> Tuple[_Subscription, Optional[Event]]:
            sub = _Subscription()
            self._sub = sub  # from here on aclose() closes it
            try:
                await self._client._open_connection(sub.conn, uri)
                lost = await self._send_subscribe(sub.conn)
            except BaseException:
                if self._sub is sub:
                    self._sub = None
                await sub.conn.close()
                raise
            if self._closed:  # closed while the answer was on its way
                await sub.conn.close()
                raise ConnectionError("event stream closed")
            return sub, lost

        return await retry(attempt, timeout, self._stop)

    async def _send_subscribe(self, conn: Connection) -> Optional[Event]:
        params = dict(self._params)
        if self._cursor is not None:
            params["after"] = self._cursor
        ok = (Status.Ok, Status.EventsLost)
        try:
            body = await conn.request("SH_SUBSCRIBE", params, ok=ok)
        except ResponseError as e:
            if not (self._cursor_from_server and e.st == Status.ValueSize):
                raise
            # The server refuses a cursor it handed out itself: it restarted
            # with another number of shards, so its positions mean nothing
            # now. Everything since is gone, how much nobody knows.
            del params["after"]
            body = await conn.request("SH_SUBSCRIBE", params)
            self._take_cursor(body)
            return Event.lost_before(-1, self._cursor, e.body)
        self._take_cursor(body)
        if body.get("st") == Status.EventsLost:
            return Event.lost_before(body.get("lost"), self._cursor, body)
        return None

    def _take_cursor(self, body: Dict[str, Any]) -> None:
        # Kept even before the first event, so that a connection lost before
        # any event arrived resumes from where this subscription began.
        cursor = body.get("cursor")
        if isinstance(cursor, str):
            self._cursor = cursor
            self._cursor_from_server = True
