"""`SessionClient`: the async session API of NemesisDB, one method per command.

This module owns argument checking and the shape of each command's request
and return value. The socket, pipelining and reply matching live in
`ndb.connection`; status codes and `ResponseError` in `ndb.status`.

Return values (a command that fails raises `ResponseError` instead; a write
given ``ifVersion`` that finds another version raises its subclass
`VersionMismatch`):

=====================  ==========================================================
method                 returns
=====================  ==========================================================
create_session         `Session` (with ``owner`` when one was given)
open_session           `Session` (``shared=True``)
end_session            None
end_all_sessions       int: sessions ended
session_exists         list of int: the tokens that exist, in request order
session_info           dict: ``tkn``, ``name`` (if any), ``owner`` (if any),
                       ``shared``, ``keyCnt``, ``expires``, ``expiry`` (if ``expires``)
session_info_all       dict: ``totalSessions``, ``totalKeys``
touch                  int: ``ttlMs``, milliseconds to the next deadline, -1 if none
incr                   int: the new value
owner_sessions         list of int: the owner's live sessions, oldest first
owner_end              int: sessions ended
set / add / rmv        None
get                    dict: key -> value, only keys that exist
count                  int
contains               list of str: the keys that exist, in request order
keys                   list of str
clear                  int: keys removed
clear_set              int: keys removed before setting
save                   dict: ``name``, ``duration`` (ms), ``sessions``, ``keys``
load                   dict: ``name``, ``sessions``, ``keys``
server_info            dict: ``serverVersion``, ``persistEnabled``, ``shards``,
                       ``sessions``, ``keys``, ``connections``, ``uptimeSeconds``,
                       ``memoryUsed``, ``maxMemory``, ``sessionNotExist``
events (not async)     `EventStream`: ``async for`` yields `Event` objects
authenticate           str: the role, ``'admin'``, ``'app'`` or ``'read'``
=====================  ==========================================================

Versions (docs/PROTOCOL.md, "Versions, compare-and-set, increments"): with
``withVersion=True``, or for a write with ``ifVersion=N``, a call also
returns the session's version after it. Methods that return nothing then
return the version (an int); `get` returns `VersionedKeys` ``(keys,
version)``; the others that return a value return `Versioned` ``(value,
version)``; `session_info` adds ``version`` to its dict and
`create_session`/`open_session` set `Session.version`. Without these
arguments every call sends and returns what it did before versions existed.
"""

from __future__ import annotations

import asyncio
import re
import ssl as ssl_module
import weakref
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Collection, Dict, List, NamedTuple, Optional, Tuple, Type, Union

from .connection import Connection, basic_authorization, connect_options, retry
from .events import Event, EventStream
from .status import AuthenticationError, ProtocolError, ResponseError, Status, VersionMismatch

__all__ = [
    "AuthenticationError",
    "SessionClient",
    "Session",
    "Event",
    "EventStream",
    "Token",
    "Versioned",
    "VersionedKeys",
    "ResponseError",
    "VersionMismatch",
    "ProtocolError",
    "Status",
]

# The longest session name the server accepts, in UTF-8 bytes.
MAX_NAME_BYTES = 256
# Dataset names for SH_SAVE / SH_LOAD: the characters and length the server accepts.
_DATASET_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}\Z")
# Versions are u64 on the wire; SH_INCR's `by` and values are i64.
_U64_MAX = 2**64 - 1
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


class Versioned(NamedTuple):
    """A command's result together with the session's version after it.

    Returned instead of the plain result when a call is given
    ``withVersion=True`` (or, for a write, ``ifVersion``). It unpacks like a
    pair: ``value, version = await client.count(tkn, withVersion=True)``.
    """

    #: what the call returns without a version (a count, a list, a new value...)
    value: Any
    #: the session's version once the command ran
    version: int


class VersionedKeys(NamedTuple):
    """What `SessionClient.get` returns with ``withVersion=True``: the read
    side of compare-and-set, hence a field named for what it holds."""

    #: name -> value, only the keys that exist (what `get` returns without a version)
    keys: Dict[str, Any]
    #: the session's version when the keys were read: pass it as ``ifVersion``
    version: int


class Session:
    """A session handle returned by `SessionClient.create_session` and `open_session`.

    Attributes:
        tkn: the session token, an unsigned 64-bit int (never 0 for a real session).
        name: the name given when the session was created or opened, else None.
        shared: True if the name is registered server-wide (see `open_session`).
        owner: the owner given to `create_session`, else None (`open_session`
            does not learn it; `session_info` reports it).
        version: the session's version when the handle was made, when
            `create_session`/`open_session` was given ``withVersion=True``;
            else None. A snapshot: later writes do not update it.
    """

    __slots__ = ("tkn", "name", "shared", "owner", "version")

    def __init__(
        self,
        tkn: int,
        name: Optional[str] = None,
        shared: bool = False,
        owner: Optional[str] = None,
        version: Optional[int] = None,
    ) -> None:
        self.tkn = tkn
        self.name = name
        self.shared = shared
        self.owner = owner
        self.version = version

    @property
    def token(self) -> int:
        """The session token; the same value as `tkn`."""
        return self.tkn

    @property
    def isValid(self) -> bool:
        """True when the handle holds a token (servers never issue token 0)."""
        return self.tkn != 0

    def __repr__(self) -> str:
        # The owner only when there is one: handles without one print as they always did.
        owner = f", owner={self.owner!r}" if self.owner is not None else ""
        version = f", version={self.version!r}" if self.version is not None else ""
        return (
            f"Session(tkn={self.tkn!r}, name={self.name!r}, shared={self.shared!r}{owner}{version})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Session):
            return NotImplemented
        # Not the owner: a handle from `open_session` may not know it, and it
        # still stands for the same session as the one `create_session` gave.
        # Not the version either: it is a snapshot, not part of the identity.
        return (self.tkn, self.name, self.shared) == (other.tkn, other.name, other.shared)

    def __hash__(self) -> int:
        return hash(self.tkn)


#: What the API accepts wherever a token is expected: an int, its decimal
#: string (as JavaScript clients send it), or a `Session`.
Token = Union[int, str, Session]


class SessionClient:
    """Async client for a NemesisDB-protocol session server.

    One client holds one WebSocket for its requests. It is safe to share
    between coroutines: calls are pipelined and each gets its own reply.
    Every failed command raises `ResponseError`.

    When the connection drops (the server restarted, the network cut it),
    every call waiting for a reply raises `ConnectionError` and is never
    sent again: the client cannot know whether the server ran it. The next
    call opens a new connection, retrying with backoff for up to
    `reconnect_timeout` seconds; calls made meanwhile wait for it and share
    it. Only `close`, a server that broke the contract (`ProtocolError`) or
    ``reconnect=False`` leave the client without a connection for good.

    Session events (`events`) come on connections of their own, one per
    subscription, which resume where they stopped in the same way.

    On a server with users, give ``user`` and ``password``: every connection
    the client opens (the first, each reconnection, each event stream's)
    sends them in its upgrade request, and a wrong pair raises
    `AuthenticationError` at once, never retried. `authenticate` is the
    other way in (``SV_AUTH`` on the open connection). For ``wss://``,
    ``ssl`` is the `ssl.SSLContext` that verifies the server (and holds a
    client certificate for mutual TLS).

    Use it directly::

        client = SessionClient()
        await client.open('ws://127.0.0.1:1987/')
        ...
        await client.close()

    or as an async context manager, which opens `uri` (if given) on entry and
    closes on exit::

        async with SessionClient('ws://127.0.0.1:1987/') as client:
            ...
    """

    def __init__(
        self,
        uri: Optional[str] = None,
        *,
        reconnect: bool = True,
        reconnect_timeout: Optional[float] = 5.0,
        user: Optional[str] = None,
        password: Optional[str] = None,
        ssl: Optional[ssl_module.SSLContext] = None,
        **connect_kwargs: Any,
    ) -> None:
        """Create a client; nothing connects until `open` (or ``async with``).

        Args:
            uri: server address opened by ``async with``; `open` may also be
                called with it later.
            reconnect: open a new connection when the server goes away
                (default); False: a lost connection fails every later call,
                and an event stream ends with `ConnectionError` instead of
                resuming.
            reconnect_timeout: how long, in seconds, a call (or an event
                stream) keeps trying to reach a server that went away before
                it raises `ConnectionError`; None: for ever; 0: one attempt.
                Attempts start 50 ms apart and double to at most 2 s apart.
            user, password: credentials for a server with users, sent as
                ``Authorization: Basic`` in the upgrade request of every
                connection the client opens. Both or neither. Over ``ws://``
                they cross the network in clear: use ``wss://``.
            ssl: the TLS context for a ``wss://`` uri, e.g.
                ``ssl.create_default_context(cafile='ca.pem')`` for a server
                whose certificate a private CA signed; None: the system's
                default verification. Not for ``ws://``.
            connect_kwargs: passed to ``websockets.connect`` (e.g.
                ``open_timeout``, ``ping_interval``).

        Raises:
            TypeError: `reconnect` is not a bool; `user` or `password` is not
                a str; `ssl` is not an `ssl.SSLContext`.
            ValueError: `reconnect_timeout` is negative; only one of `user`
                and `password` is given; `user` holds a ``:`` (Basic
                credentials split there); `connect_kwargs` carry an
                ``Authorization`` header besides `user`.
        """
        if not isinstance(reconnect, bool):
            raise TypeError(f"reconnect must be a bool, not {type(reconnect).__name__}")
        if reconnect_timeout is not None and not reconnect_timeout >= 0:
            raise ValueError(f"reconnect_timeout must be >= 0 or None, got {reconnect_timeout!r}")
        if (user is None) != (password is None):
            raise ValueError("give both user and password, or neither")
        authorization = None
        if user is not None and password is not None:
            _check_credentials(user, password)
            # Basic credentials split at the first colon (the server's users
            # file refuses such names, so no user could be meant).
            if ":" in user:
                raise ValueError("a user name cannot hold ':' (Basic credentials split there)")
            authorization = basic_authorization(user, password)
        if ssl is not None and not isinstance(ssl, ssl_module.SSLContext):
            raise TypeError(f"ssl must be an ssl.SSLContext, not {type(ssl).__name__}")
        self._uri = uri
        self._ssl = ssl
        # What every connection of this client is opened with, streams' too.
        self._connect_kwargs = connect_options(connect_kwargs, authorization, ssl)
        # The credentials of the last `authenticate` that succeeded: every new
        # connection sends them (SV_AUTH) before anything else.
        self._sv_auth: Optional[Tuple[str, str]] = None
        self._reconnect = reconnect
        self._reconnect_timeout = reconnect_timeout
        self._conn = Connection()
        # open() succeeded: from then on a lost connection is replaced.
        self._opened = False
        # close() was called: nothing reconnects, no stream starts.
        self._closed = False
        # The reconnection in progress, shared by every call that needs it.
        self._reconnecting: Optional["asyncio.Task[Connection]"] = None
        # Event streams to close with the client; weak, so that one abandoned
        # before its first iteration is not kept alive.
        self._streams: "weakref.WeakSet[EventStream]" = weakref.WeakSet()

    # ----------------------------------------------------------------- connection

    async def open(self, uri: Optional[str] = None) -> None:
        """Connect to the server at `uri`, e.g. ``'ws://127.0.0.1:1987/'``.

        One attempt: a server that cannot be reached now raises at once.
        (Once open, a lost connection is replaced by the next call.)

        Raises:
            AuthenticationError: the server refused the client's ``user`` and
                ``password`` (HTTP 401).
            ConnectionError: the server could not be reached (or its TLS
                certificate did not verify).
            ValueError: no uri here nor in the constructor; an ``ssl``
                context for a ``ws://`` uri.
            RuntimeError: this client was already opened (or closed).
        """
        if self._opened or self._closed:
            raise RuntimeError("connection already opened; use a new client")
        uri = uri if uri is not None else self._uri
        if not uri:
            raise ValueError("open() needs a uri such as 'ws://127.0.0.1:1987/'")
        if self._ssl is not None and not uri.lower().startswith("wss://"):
            raise ValueError(f"an ssl context is for wss:// uris, not {uri!r}")
        self._uri = uri
        await self._open_connection(self._conn, uri)
        self._opened = True

    async def listen(self, uri: str) -> None:
        """Same as `open`; the name used by older NemesisDB clients."""
        await self.open(uri)

    async def close(self) -> None:
        """Close the connection and every event stream of this client. Calls
        still waiting raise `ConnectionError`; so does every later call.
        Idempotent."""
        self._closed = True
        for stream in list(self._streams):
            await stream.aclose()
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        await self._conn.close()

    @property
    def is_open(self) -> bool:
        """True while the connection can carry requests. False after a drop
        until the next call has reconnected."""
        return self._conn.is_open

    async def __aenter__(self) -> "SessionClient":
        if self._uri is not None and not self._opened:
            await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.close()

    async def _request(
        self, command: str, params: Dict[str, Any], ok: Collection[int] = (Status.Ok,)
    ) -> Dict[str, Any]:
        """Send one request on the current connection, reconnecting first if it was lost."""
        conn = await self._connection()
        return await conn.request(command, params, ok)

    async def _connection(self) -> Connection:
        """The connection to send on: the current one while it is open, else a new one.

        A call that never reached the wire is safe to send on a new
        connection; one that did has already failed with the old one.
        """
        conn = self._conn
        if conn.is_open:
            return conn
        if (
            self._closed
            or not self._opened
            or not self._reconnect
            or isinstance(conn.error, ProtocolError)
        ):
            return conn  # its request() raises the reason: not open, closed, broken
        task = self._reconnecting
        if task is None:
            task = asyncio.ensure_future(self._replace_connection())
            # Retrieved here so that a failure nobody waits for any more is not logged.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._reconnecting = task
        try:
            # Shielded: a caller that gives up must not cancel the attempt others wait for.
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled() and self._closed:  # close() stopped it, not our caller
                raise ConnectionError("connection closed by client") from None
            raise
        except ConnectionError as e:
            # One exception instance raised in many tasks would collect all their
            # tracebacks. The type stays: an AuthenticationError is one for each.
            error = type(e)(*e.args)
            error.__cause__ = e.__cause__
            raise error from e.__cause__

    async def _replace_connection(self) -> Connection:
        try:
            await self._conn.close()  # ends the lost one's tasks; its calls failed already
            uri = self._uri
            assert uri is not None

            async def attempt() -> Connection:
                conn = Connection()
                await self._open_connection(conn, uri)
                return conn

            conn = await retry(attempt, self._reconnect_timeout)
            if self._closed:
                await conn.close()
                raise ConnectionError("connection closed by client")
            self._conn = conn
            return conn
        finally:
            self._reconnecting = None

    async def _open_connection(self, conn: Connection, uri: str) -> None:
        """Open `conn` as this client opens every connection (its first, a
        reconnection, an event stream's): with its TLS context and Basic
        credentials, then ``SV_AUTH`` if `authenticate` succeeded before.

        Raises:
            AuthenticationError: the server refused the credentials (401 to
                the upgrade, or 17 to the repeated ``SV_AUTH``).
            ConnectionError: as `Connection.open`.
        """
        await conn.open(uri, **self._connect_kwargs)
        credentials = self._sv_auth
        if credentials is None:
            return
        user, password = credentials
        try:
            await conn.request("SV_AUTH", {"user": user, "password": password})
        except ResponseError as e:
            await conn.close()
            if e.st == Status.AuthFailed:
                raise AuthenticationError(
                    f"authentication failed: {uri} refused user {user!r} (SV_AUTH: {e})"
                ) from e
            raise
        except BaseException:
            await conn.close()
            raise

    async def authenticate(self, user: str, password: str) -> str:
        """Authenticate the open connection as `user` (SV_AUTH); returns the
        role the server gave it: ``'admin'``, ``'app'`` or ``'read'``.

        The other way in besides ``SessionClient(uri, user=..., password=...)``,
        for a caller that learns the credentials after connecting. Requests
        sent after it run with the new role. The client remembers the
        credentials: every connection it opens later (a reconnection, an event
        stream) sends the same ``SV_AUTH`` first, and a refusal there raises
        `AuthenticationError`. A server without users answers ``'admin'``
        whatever is sent.

        Raises:
            ResponseError: AuthFailed (17) for an unknown user or a wrong
                password. The server then closes the connection; the client
                forgets credentials an earlier `authenticate` gave, so its next
                call reconnects with only what the constructor was given.
            TypeError: `user` or `password` is not a str.
        """
        _check_credentials(user, password)
        try:
            body = await self._request("SV_AUTH", {"user": user, "password": password})
        except ResponseError as e:
            if e.st == Status.AuthFailed:
                self._sv_auth = None
            raise
        self._sv_auth = (user, password)
        return str(body["role"])

    # --------------------------------------------------------------------- events

    def events(
        self,
        events: Union[str, Iterable[str], None] = None,
        *,
        owner: Optional[str] = None,
        withKeys: bool = False,
        after: Optional[str] = None,
    ) -> EventStream:
        """Subscribe to session events (SH_SUBSCRIBE); iterate the result::

            async for event in client.events(['expired'], withKeys=True):
                ...

        The subscription runs on a connection of its own (opened when the
        iteration starts), so events never wait behind replies nor replies
        behind events. When that connection drops it is reopened with
        backoff, as calls reconnect, and the subscription resumes right
        after the last event handed out: no event is skipped or repeated.
        Events that are gone by then (the server keeps a bounded number)
        come as one `Event` of kind ``'lost'`` whose ``lost`` says how many
        (-1: unknown, after a server restart); so does a subscriber that
        falls too far behind. Leaving the loop closes the connection.

        Args:
            events: the kinds wanted, any of ``'created'``, ``'ended'``,
                ``'expired'``, ``'keysExpired'`` (one, or an iterable);
                None: all of them.
            owner: only sessions of this owner.
            withKeys: ``ended``, ``expired`` and ``keysExpired`` events carry
                the keys the session held (`Event.keys`).
            after: a cursor (`Event.cursor`, `EventStream.cursor`) to resume
                from, e.g. one saved by an earlier run; None: from now.

        The server checks the parameters (the client sends them as given,
        turning an iterable of kinds into a list): the first iteration raises
        `ResponseError` ValueTypeInvalid (41) for `events` that is not a
        list of strings, an `owner` that is not a str, a `withKeys` that is
        not a bool or an `after` that is not a str, and ValueSize (42) for an
        unknown or repeated kind or none at all, an owner that is empty or
        over 256 bytes, or an `after` that is not a cursor of this server.
        """
        params: Dict[str, Any] = {}
        if events is not None:
            if isinstance(events, str):
                events = [events]
            elif isinstance(events, Iterable) and not isinstance(events, (bytes, Mapping)):
                events = list(events)
            params["events"] = events
        if owner is not None:
            params["owner"] = owner
        if withKeys is not False:
            params["withKeys"] = withKeys
        stream = EventStream(self, params, after)
        self._streams.add(stream)
        return stream

    def _event_endpoint(self) -> str:
        """Where an event stream connects (it opens with `_open_connection`)."""
        if self._closed:
            raise ConnectionError("connection closed by client")
        if not self._uri:
            raise ConnectionError("not connected: call open() first (or give the uri)")
        return self._uri

    def _forget_stream(self, stream: EventStream) -> None:
        self._streams.discard(stream)

    # ------------------------------------------------------------------- sessions

    async def create_session(
        self,
        durationSeconds: int = 0,
        deleteSession: bool = False,
        extendOnSetAdd: bool = False,
        extendOnGet: bool = False,
        name: Optional[str] = None,
        shared: bool = False,
        *,
        deleteSessionOnExpire: Optional[bool] = None,
        owner: Optional[str] = None,
        keys: Optional[Mapping[str, Any]] = None,
        maxLifetime: Optional[int] = None,
        withVersion: bool = False,
    ) -> Session:
        """Create a session (SH_NEW).

        Args:
            durationSeconds: seconds until the session expires (its idle
                deadline); 0 means no idle deadline, so without
                `maxLifetime` the session never expires.
            deleteSession: on expiry delete the session itself; when False
                only its keys are deleted and it lives on with a new deadline.
            extendOnSetAdd: each set/add/clear_set restarts the duration.
            extendOnGet: each get restarts the duration.
            name: an optional name (1 to 256 bytes of UTF-8). Shown by
                `session_info`; with `shared` it can be found by `open_session`.
            shared: register `name` server-wide so any connection may
                `open_session` it.
            deleteSessionOnExpire: older spelling of `deleteSession`;
                either one being True enables it.
            owner: who the session belongs to (a user, device group or
                tenant; a str of 1 to 256 bytes of UTF-8). The owner's
                sessions can be listed (`owner_sessions`) and ended together
                (`owner_end`). Checked by the server.
            keys: initial keys (name -> any JSON value), set as `set` would,
                atomically with the creation: one round trip for "create and fill".
            maxLifetime: absolute lifetime in seconds from creation (1 to
                4294967295, checked by the server). The session is deleted
                then, whatever `deleteSession` says, and no sliding moves a
                deadline past it. With it, `durationSeconds` may stay 0: the
                session then has only this deadline.
            withVersion: set the returned handle's `Session.version` (1: a
                session starts at version 1, with or without `keys`).

        Without `owner`, `keys`, `maxLifetime` and `withVersion` the request
        is exactly the one older versions of this client sent.

        Raises:
            ValueError: durationSeconds < 0; deleteSession/extendOnSetAdd/
                extendOnGet without a duration; shared without a name; a
                name that is empty or longer than 256 bytes.
            TypeError: `keys` is not a mapping with str names; `withVersion`
                is not a bool.
            ResponseError: e.g. SessionNewFail (103) when a shared session
                with this name already exists; ValueTypeInvalid (41) for an
                owner that is not a str or a maxLifetime that is not an
                unsigned int; ValueSize (42) for an owner that is empty or
                over 256 bytes, or a maxLifetime of 0 or over 4294967295.
        """
        if isinstance(durationSeconds, bool) or not isinstance(durationSeconds, int):
            raise TypeError(f"durationSeconds must be an int, not {type(durationSeconds).__name__}")
        if durationSeconds < 0:
            raise ValueError("durationSeconds must be >= 0 (0: no idle deadline)")
        if deleteSessionOnExpire is not None:
            deleteSession = bool(deleteSession or deleteSessionOnExpire)
        if durationSeconds == 0 and (deleteSession or extendOnSetAdd or extendOnGet):
            raise ValueError(
                "deleteSession, extendOnSetAdd and extendOnGet need durationSeconds > 0"
            )
        if shared and name is None:
            raise ValueError("a shared session needs a name")
        if name is not None:
            _check_session_name(name)

        params: Dict[str, Any] = {}
        if name is not None:
            params["name"] = name
        if shared:
            params["shared"] = True
        if owner is not None:
            params["owner"] = owner
        expiry: Dict[str, Any] = {}
        if durationSeconds > 0:
            expiry = {
                "duration": durationSeconds,
                "deleteSession": bool(deleteSession),
                "extendOnSetAdd": bool(extendOnSetAdd),
                "extendOnGet": bool(extendOnGet),
            }
        if maxLifetime is not None:
            # Passed as given: the server owns the range (and answers 41/42).
            expiry["maxLifetime"] = maxLifetime
        if expiry:
            params["expiry"] = expiry
        if keys is not None:
            params["keys"] = _key_values(keys)
        _add_version_params(params, withVersion)
        body = await self._request("SH_NEW", params)
        version = _version_of("SH_NEW", body) if withVersion else None
        return Session(body["tkn"], name, bool(shared), owner, version)

    async def open_session(self, name: str, *, withVersion: bool = False) -> Session:
        """Find the shared session called `name` (SH_OPEN).

        With ``withVersion=True`` the handle's `Session.version` is the
        session's current version: where a compare-and-set on a session
        others write may start.

        Raises:
            ResponseError: SessionOpenFail (102) when no shared session has that name.
            ValueError: the name is empty or longer than 256 bytes.
            TypeError: `withVersion` is not a bool.
        """
        _check_session_name(name)
        params: Dict[str, Any] = {"name": name}
        _add_version_params(params, withVersion)
        body = await self._request("SH_OPEN", params)
        version = _version_of("SH_OPEN", body) if withVersion else None
        return Session(body["tkn"], body.get("name", name), True, version=version)

    async def end_session(self, tkn: Token) -> None:
        """Delete the session and its keys (SH_END).

        Raises:
            ResponseError: SessionNotExist (100) when there is no such session.
        """
        await self._request("SH_END", {"tkn": _token(tkn)})

    async def end_all_sessions(self) -> int:
        """Delete every session on the server (SH_END_ALL); returns how many ended."""
        body = await self._request("SH_END_ALL", {})
        return int(body["cnt"])

    async def session_exists(self, tkns: Union[Token, Iterable[Token]]) -> List[int]:
        """Which of `tkns` are live sessions (SH_EXISTS).

        Accepts one token or an iterable of them. Returns the tokens that
        exist, in request order, as ints.
        """
        if isinstance(tkns, (int, str, Session)):
            tkns = [tkns]
        body = await self._request("SH_EXISTS", {"tkns": [_token(t) for t in tkns]})
        return [_as_int(t) for t in body["exist"]]

    async def session_info(self, tkn: Token, *, withVersion: bool = False) -> Dict[str, Any]:
        """Describe one session (SH_INFO).

        Returns the response body without ``st``: ``tkn``, ``name`` (when
        it has one), ``owner`` (when it has one), ``shared``, ``keyCnt``,
        ``expires`` and, when ``expires``, ``expiry`` with ``duration``,
        ``remaining``, ``deleteSession``, ``extendOnSetAdd``, ``extendOnGet``
        and, for a session created with a lifetime, ``maxLifetime`` and
        ``lifetimeRemaining`` (whole seconds, rounded up). With
        ``withVersion=True`` it also has ``version``.

        Raises:
            ResponseError: SessionNotExist (100).
            TypeError: `withVersion` is not a bool.
        """
        params: Dict[str, Any] = {"tkn": _token(tkn)}
        _add_version_params(params, withVersion)
        return _without_st(await self._request("SH_INFO", params))

    async def session_info_all(self) -> Dict[str, Any]:
        """Server-wide totals (SH_INFO_ALL): ``{'totalSessions': n, 'totalKeys': m}``."""
        return _without_st(await self._request("SH_INFO_ALL", {}))

    async def touch(
        self, tkn: Token, slide: bool = True, *, withVersion: bool = False
    ) -> Union[int, Versioned]:
        """Milliseconds until the session's next deadline (SH_TOUCH).

        The next deadline is the idle one or the end of its lifetime,
        whichever comes first; -1 when the session has no expiry. With
        `slide` (the default) the idle deadline first moves to now + its
        duration (never past the lifetime), whatever the extend flags say:
        a keepalive that reads nothing. ``slide=False`` only asks.

        With ``withVersion=True`` returns `Versioned` ``(ttlMs, version)``
        (touching never changes the version).

        Raises:
            TypeError: `slide` or `withVersion` is not a bool.
            ResponseError: SessionNotExist (100); SessionTokenInvalid (101).
        """
        if not isinstance(slide, bool):
            raise TypeError(f"slide must be a bool, not {type(slide).__name__}")
        params: Dict[str, Any] = {"tkn": _token(tkn), "slide": slide}
        versioned = _add_version_params(params, withVersion)
        body = await self._request("SH_TOUCH", params)
        return _result("SH_TOUCH", int(body["ttlMs"]), body, versioned)

    async def owner_sessions(self, owner: str) -> List[int]:
        """The live sessions of `owner`, oldest first (SH_OWNER_SESSIONS).

        Empty when the owner has none (that is not an error).

        Raises:
            ResponseError: ValueTypeInvalid (41) when `owner` is not a str;
                ValueSize (42) when it is empty or over 256 bytes.
        """
        body = await self._request("SH_OWNER_SESSIONS", {"owner": owner})
        return [_as_int(t) for t in body["tkns"]]

    async def owner_end(self, owner: str, except_tkn: Optional[Token] = None) -> int:
        """End every session of `owner` (SH_OWNER_END); returns how many ended.

        "Log out everywhere"; with `except_tkn` (the protocol's ``except``,
        a Python keyword) that one session is kept: "everywhere but here".
        Every session the owner had when the server received this is gone
        when it returns.

        Raises:
            ResponseError: ValueTypeInvalid (41) / ValueSize (42) for a bad
                `owner`; SessionTokenInvalid (101) when `except_tkn` is not a token.
        """
        params: Dict[str, Any] = {"owner": owner}
        if except_tkn is not None:
            params["except"] = _token(except_tkn)
        body = await self._request("SH_OWNER_END", params)
        return int(body["cnt"])

    # ----------------------------------------------------------------------- keys
    #
    # The writes (set, add, rmv, clear, clear_set, incr) take ``ifVersion``:
    # the write happens only if the session is at that version, else
    # `VersionMismatch` is raised and nothing changed. Given ``ifVersion`` or
    # ``withVersion=True`` they also return the version after the write.

    async def set(
        self,
        keys: Mapping[str, Any],
        tkn: Token,
        *,
        withVersion: bool = False,
        ifVersion: Optional[int] = None,
    ) -> Optional[int]:
        """Store `keys` (name -> any JSON value) in the session, overwriting (SH_SET).

        Returns None, or the session's new version when given ``withVersion=True``
        or ``ifVersion``. Setting a key to the value it already has still counts
        as a change (the version moves); an empty `keys` changes nothing.

        Raises:
            VersionMismatch: ``ifVersion`` given and the session is at another
                version (its ``.version``); nothing was written.
        """
        params: Dict[str, Any] = {"tkn": _token(tkn), "keys": _key_values(keys)}
        versioned = _add_version_params(params, withVersion, ifVersion)
        body = await self._request("SH_SET", params)
        return _version_of("SH_SET", body) if versioned else None

    async def add(
        self,
        keys: Mapping[str, Any],
        tkn: Token,
        *,
        withVersion: bool = False,
        ifVersion: Optional[int] = None,
    ) -> Optional[int]:
        """Store `keys` in the session; keys that already exist keep their value (SH_ADD).

        Returns None, or the session's new version when given ``withVersion=True``
        or ``ifVersion`` (unchanged when every key already existed).

        Raises:
            VersionMismatch: as for `set`.
        """
        params: Dict[str, Any] = {"tkn": _token(tkn), "keys": _key_values(keys)}
        versioned = _add_version_params(params, withVersion, ifVersion)
        body = await self._request("SH_ADD", params)
        return _version_of("SH_ADD", body) if versioned else None

    async def get(
        self, keys: Union[str, Iterable[str]], tkn: Token, *, withVersion: bool = False
    ) -> Union[Dict[str, Any], VersionedKeys]:
        """Read keys (SH_GET): a dict of name -> value holding only the keys that exist.

        `keys` is one name or an iterable of names (a tuple, list, set...).

        With ``withVersion=True`` returns `VersionedKeys` ``(keys, version)``:
        the keys and the version they were read at, in one step, so that a
        write given ``ifVersion=version`` happens only if nobody wrote since.
        """
        params: Dict[str, Any] = {"tkn": _token(tkn), "keys": _key_names(keys)}
        versioned = _add_version_params(params, withVersion)
        body = await self._request("SH_GET", params)
        values = dict(body["keys"])
        return VersionedKeys(values, _version_of("SH_GET", body)) if versioned else values

    async def rmv(
        self,
        keys: Union[str, Iterable[str]],
        tkn: Token,
        *,
        withVersion: bool = False,
        ifVersion: Optional[int] = None,
    ) -> Optional[int]:
        """Remove keys from the session (SH_RMV); absent names are ignored.

        Returns None, or the session's new version when given ``withVersion=True``
        or ``ifVersion`` (unchanged when no key was there to remove).

        Raises:
            VersionMismatch: as for `set`.
        """
        params: Dict[str, Any] = {"tkn": _token(tkn), "keys": _key_names(keys)}
        versioned = _add_version_params(params, withVersion, ifVersion)
        body = await self._request("SH_RMV", params)
        return _version_of("SH_RMV", body) if versioned else None

    async def count(self, tkn: Token, *, withVersion: bool = False) -> Union[int, Versioned]:
        """How many keys the session holds (SH_COUNT).

        With ``withVersion=True``: `Versioned` ``(count, version)``.
        """
        params: Dict[str, Any] = {"tkn": _token(tkn)}
        versioned = _add_version_params(params, withVersion)
        body = await self._request("SH_COUNT", params)
        return _result("SH_COUNT", int(body["cnt"]), body, versioned)

    async def contains(
        self, keys: Union[str, Iterable[str]], tkn: Token, *, withVersion: bool = False
    ) -> Union[List[str], Versioned]:
        """Which of `keys` exist in the session, in request order (SH_CONTAINS).

        With ``withVersion=True``: `Versioned` ``(names, version)``.
        """
        params: Dict[str, Any] = {"tkn": _token(tkn), "keys": _key_names(keys)}
        versioned = _add_version_params(params, withVersion)
        body = await self._request("SH_CONTAINS", params)
        return _result("SH_CONTAINS", list(body["contains"]), body, versioned)

    async def keys(self, tkn: Token, *, withVersion: bool = False) -> Union[List[str], Versioned]:
        """The names of all keys in the session, in no particular order (SH_KEYS).

        With ``withVersion=True``: `Versioned` ``(names, version)``.
        """
        params: Dict[str, Any] = {"tkn": _token(tkn)}
        versioned = _add_version_params(params, withVersion)
        body = await self._request("SH_KEYS", params)
        return _result("SH_KEYS", list(body["keys"]), body, versioned)

    async def clear(
        self, tkn: Token, *, withVersion: bool = False, ifVersion: Optional[int] = None
    ) -> Union[int, Versioned]:
        """Remove every key but keep the session (SH_CLEAR); returns how many were removed.

        With ``withVersion=True`` or ``ifVersion``: `Versioned` ``(removed, version)``.

        Raises:
            VersionMismatch: as for `set`.
        """
        params: Dict[str, Any] = {"tkn": _token(tkn)}
        versioned = _add_version_params(params, withVersion, ifVersion)
        body = await self._request("SH_CLEAR", params)
        return _result("SH_CLEAR", int(body["cnt"]), body, versioned)

    async def clear_set(
        self,
        keys: Mapping[str, Any],
        tkn: Token,
        *,
        withVersion: bool = False,
        ifVersion: Optional[int] = None,
    ) -> Union[int, Versioned]:
        """Replace the session's keys with `keys` in one step (SH_CLEAR_SET).

        Returns how many keys were removed before setting; with
        ``withVersion=True`` or ``ifVersion``, `Versioned` ``(removed, version)``.

        Raises:
            VersionMismatch: as for `set`.
        """
        params: Dict[str, Any] = {"tkn": _token(tkn), "keys": _key_values(keys)}
        versioned = _add_version_params(params, withVersion, ifVersion)
        body = await self._request("SH_CLEAR_SET", params)
        return _result("SH_CLEAR_SET", int(body["cnt"]), body, versioned)

    async def incr(
        self,
        key: str,
        tkn: Token,
        by: int = 1,
        *,
        withVersion: bool = False,
        ifVersion: Optional[int] = None,
    ) -> Union[int, Versioned]:
        """Add `by` to the integer stored at `key`; returns the new value (SH_INCR).

        One step on the server, so concurrent increments never lose one
        another. An absent key counts as 0 and is created (unless `by` is
        0). `by` may be negative; `by=0` reads the value as an integer and
        changes nothing. With ``withVersion=True`` or ``ifVersion``:
        `Versioned` ``(value, version)``.

        Raises:
            TypeError: `key` is not a str; `by` is not an int.
            ValueError: `by` is outside the signed 64-bit range.
            ResponseError: ValueNotInteger (43) when the stored value is not
                a JSON integer in the signed 64-bit range (a float such as
                ``1.0``, a string, ...); IntegerOverflow (44) when the result
                would leave that range; MemoryLimit (150) when creating the
                key (or widening the number) would pass the memory limit.
                Each of them changed nothing.
            VersionMismatch: as for `set`.
        """
        if not isinstance(key, str):
            raise TypeError(f"key must be a str, not {type(key).__name__}")
        if isinstance(by, bool) or not isinstance(by, int):
            raise TypeError(f"by must be an int, not {type(by).__name__}")
        if not _I64_MIN <= by <= _I64_MAX:
            raise ValueError(f"by must be a signed 64-bit int, got {by}")
        params: Dict[str, Any] = {"tkn": _token(tkn), "key": key, "by": by}
        versioned = _add_version_params(params, withVersion, ifVersion)
        body = await self._request("SH_INCR", params)
        return _result("SH_INCR", int(body["value"]), body, versioned)

    # ---------------------------------------------------------------- persistence

    async def save(
        self, name: str, tkns: Union[Token, Iterable[Token], None] = None
    ) -> Dict[str, Any]:
        """Write sessions to a new version of dataset `name` (SH_SAVE).

        Args:
            name: dataset name, 1 to 128 of ``[A-Za-z0-9_.-]``, not ``.`` or ``..``.
            tkns: only these sessions (one token or an iterable); None saves all.

        Returns the body without ``st``: ``name``, ``duration`` (ms),
        ``sessions``, ``keys``.

        Raises:
            ValueError: the name is not a valid dataset name.
            ResponseError: CommandDisabled (14) when the server has
                persistence off; SaveDirWriteFail (122); SaveError (123).
        """
        _check_dataset_name(name)
        params: Dict[str, Any] = {"name": name}
        if tkns is not None:
            if isinstance(tkns, (int, str, Session)):
                tkns = [tkns]
            params["tkns"] = [_token(t) for t in tkns]
        body = await self._request("SH_SAVE", params, ok=(Status.SaveComplete,))
        return _without_st(body)

    async def load(self, name: str) -> Dict[str, Any]:
        """Load the newest complete version of dataset `name` (SH_LOAD).

        Returns the body without ``st``: ``name``, ``sessions``, ``keys``.

        Raises:
            ValueError: the name is not a valid dataset name.
            ResponseError: LoadError (142); CommandDisabled (14) when the
                server has persistence off.
        """
        _check_dataset_name(name)
        body = await self._request("SH_LOAD", {"name": name}, ok=(Status.LoadComplete,))
        return _without_st(body)

    # --------------------------------------------------------------------- server

    async def server_info(self) -> Dict[str, Any]:
        """Server facts (SV_INFO): ``serverVersion``, ``persistEnabled``, ``shards``,
        ``sessions``, ``keys``, ``connections``, ``uptimeSeconds``, ``memoryUsed``,
        ``maxMemory``, ``sessionNotExist``."""
        return _without_st(await self._request("SV_INFO", {}))


# ---------------------------------------------------------------------- helpers


def _token(tkn: Token) -> Any:
    """The wire form of a token.

    A decimal string becomes an int (the server takes both; ints keep
    `session_exists` results uniform). Anything else goes as it is, and the
    server, the authority on what a token is, answers SessionTokenInvalid.
    """
    if isinstance(tkn, Session):
        return tkn.tkn
    if isinstance(tkn, bool):
        raise TypeError("a token is an int or a decimal string, not a bool")
    if isinstance(tkn, str) and tkn.isascii() and tkn.isdigit():
        return int(tkn)
    return tkn


def _as_int(tkn: Any) -> Any:
    if isinstance(tkn, str) and tkn.isascii() and tkn.isdigit():
        return int(tkn)
    return tkn


def _key_values(keys: Mapping[str, Any]) -> Dict[str, Any]:
    if not isinstance(keys, Mapping):
        raise TypeError(f"keys must be a mapping of name -> value, not {type(keys).__name__}")
    for k in keys:
        if not isinstance(k, str):
            raise TypeError(f"key names must be str, not {type(k).__name__}: {k!r}")
    return dict(keys)


def _key_names(keys: Union[str, Iterable[str]]) -> List[str]:
    if isinstance(keys, str):
        return [keys]
    if isinstance(keys, Mapping):
        keys = keys.keys()
    if not isinstance(keys, Iterable):
        raise TypeError(f"keys must be a name or an iterable of names, not {type(keys).__name__}")
    names = list(keys)
    for k in names:
        if not isinstance(k, str):
            raise TypeError(f"key names must be str, not {type(k).__name__}: {k!r}")
    return names


def _check_credentials(user: str, password: str) -> None:
    for what, value in (("user", user), ("password", password)):
        if not isinstance(value, str):
            raise TypeError(f"{what} must be a str, not {type(value).__name__}")


def _check_session_name(name: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    size = len(name.encode("utf-8"))
    if size == 0 or size > MAX_NAME_BYTES:
        raise ValueError(f"name must be 1 to {MAX_NAME_BYTES} bytes of UTF-8, got {size}")


def _check_dataset_name(name: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    if not _DATASET_NAME.match(name) or name in (".", ".."):
        raise ValueError(
            f"a dataset name is 1 to 128 of [A-Za-z0-9_.-] and not '.' or '..', got {name!r}"
        )


def _without_st(body: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in body.items() if k != "st"}


def _check_with_version(withVersion: bool) -> None:
    # Checked here rather than left to the server (41): a truthy non-bool would
    # otherwise be sent as given while the client decides the return shape by truth.
    if not isinstance(withVersion, bool):
        raise TypeError(f"withVersion must be a bool, not {type(withVersion).__name__}")


def _add_version_params(
    params: Dict[str, Any], withVersion: bool, ifVersion: Optional[int] = None
) -> bool:
    """Add ``withVersion``/``ifVersion`` to `params` when given (and only then,
    so that calls without them send the bytes they always did).

    Returns True when the reply will carry ``version``: the server adds it
    for ``withVersion`` and to every successful write given ``ifVersion``.
    """
    _check_with_version(withVersion)
    if ifVersion is not None:
        if isinstance(ifVersion, bool) or not isinstance(ifVersion, int):
            raise TypeError(f"ifVersion must be an int, not {type(ifVersion).__name__}")
        if not 0 <= ifVersion <= _U64_MAX:
            raise ValueError(f"ifVersion must be an unsigned 64-bit int, got {ifVersion}")
    if withVersion:
        params["withVersion"] = True
    if ifVersion is not None:
        params["ifVersion"] = ifVersion
    return withVersion or ifVersion is not None


def _version_of(command: str, body: Dict[str, Any]) -> int:
    """The ``version`` of a reply that was asked for one.

    A server from before versions ignores ``withVersion``/``ifVersion`` as
    unknown parameters and answers without it; say so rather than fail with
    a bare KeyError, since a write given ``ifVersion`` then ran unguarded.
    """
    version = body.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ProtocolError(
            f"{command} answered without a version ({body!r}): the server does not support "
            "versions, so withVersion was ignored and a write given ifVersion was not guarded"
        )
    return version


def _result(command: str, value: Any, body: Dict[str, Any], versioned: bool) -> Any:
    """`value` as the caller asked for it: alone, or with the version after the command."""
    return Versioned(value, _version_of(command, body)) if versioned else value
