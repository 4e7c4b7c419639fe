"""`SessionClient`: the async session API of NemesisDB, one method per command.

This module owns argument checking and the shape of each command's request
and return value. The socket, pipelining and reply matching live in
`ndb.connection`; status codes and `ResponseError` in `ndb.status`.

Return values (a command that fails raises `ResponseError` instead):

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
=====================  ==========================================================
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Dict, List, Optional, Type, Union

from .connection import Connection
from .status import ProtocolError, ResponseError, Status

__all__ = [
    "SessionClient",
    "Session",
    "Token",
    "ResponseError",
    "ProtocolError",
    "Status",
]

# The longest session name the server accepts, in UTF-8 bytes.
MAX_NAME_BYTES = 256
# Dataset names for SH_SAVE / SH_LOAD: the characters and length the server accepts.
_DATASET_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}\Z")


class Session:
    """A session handle returned by `SessionClient.create_session` and `open_session`.

    Attributes:
        tkn: the session token, an unsigned 64-bit int (never 0 for a real session).
        name: the name given when the session was created or opened, else None.
        shared: True if the name is registered server-wide (see `open_session`).
        owner: the owner given to `create_session`, else None (`open_session`
            does not learn it; `session_info` reports it).
    """

    __slots__ = ("tkn", "name", "shared", "owner")

    def __init__(
        self,
        tkn: int,
        name: Optional[str] = None,
        shared: bool = False,
        owner: Optional[str] = None,
    ) -> None:
        self.tkn = tkn
        self.name = name
        self.shared = shared
        self.owner = owner

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
        return f"Session(tkn={self.tkn!r}, name={self.name!r}, shared={self.shared!r}{owner})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Session):
            return NotImplemented
        # Not the owner: a handle from `open_session` may not know it, and it
        # still stands for the same session as the one `create_session` gave.
        return (self.tkn, self.name, self.shared) == (other.tkn, other.name, other.shared)

    def __hash__(self) -> int:
        return hash(self.tkn)


#: What the API accepts wherever a token is expected: an int, its decimal
#: string (as JavaScript clients send it), or a `Session`.
Token = Union[int, str, Session]


class SessionClient:
    """Async client for a NemesisDB-protocol session server.

    One client holds one WebSocket. It is safe to share between coroutines:
    calls are pipelined and each gets its own reply. Every failed command
    raises `ResponseError`; a lost connection raises `ConnectionError` in
    every waiting call and every later one.

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

    def __init__(self, uri: Optional[str] = None, **connect_kwargs: Any) -> None:
        """Create a client; nothing connects until `open` (or ``async with``).

        Args:
            uri: server address opened by ``async with``; `open` may also be
                called with it later.
            connect_kwargs: passed to ``websockets.connect`` (e.g.
                ``open_timeout``, ``ping_interval``).
        """
        self._uri = uri
        self._connect_kwargs = connect_kwargs
        self._conn = Connection()

    # ----------------------------------------------------------------- connection

    async def open(self, uri: Optional[str] = None) -> None:
        """Connect to the server at `uri`, e.g. ``'ws://127.0.0.1:1987/'``.

        Raises:
            ConnectionError: the server could not be reached.
            ValueError: no uri here nor in the constructor.
            RuntimeError: this client was already opened.
        """
        uri = uri if uri is not None else self._uri
        if not uri:
            raise ValueError("open() needs a uri such as 'ws://127.0.0.1:1987/'")
        self._uri = uri
        await self._conn.open(uri, **self._connect_kwargs)

    async def listen(self, uri: str) -> None:
        """Same as `open`; the name used by older NemesisDB clients."""
        await self.open(uri)

    async def close(self) -> None:
        """Close the connection. Calls still waiting raise `ConnectionError`. Idempotent."""
        await self._conn.close()

    @property
    def is_open(self) -> bool:
        """True while the connection can carry requests."""
        return self._conn.is_open

    async def __aenter__(self) -> "SessionClient":
        if self._uri is not None and not self._conn.is_open:
            await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.close()

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

        Without `owner`, `keys` and `maxLifetime` the request is exactly the
        one older versions of this client sent.

        Raises:
            ValueError: durationSeconds < 0; deleteSession/extendOnSetAdd/
                extendOnGet without a duration; shared without a name; a
                name that is empty or longer than 256 bytes.
            TypeError: `keys` is not a mapping with str names.
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
        body = await self._conn.request("SH_NEW", params)
        return Session(body["tkn"], name, bool(shared), owner)

    async def open_session(self, name: str) -> Session:
        """Find the shared session called `name` (SH_OPEN).

        Raises:
            ResponseError: SessionOpenFail (102) when no shared session has that name.
            ValueError: the name is empty or longer than 256 bytes.
        """
        _check_session_name(name)
        body = await self._conn.request("SH_OPEN", {"name": name})
        return Session(body["tkn"], body.get("name", name), True)

    async def end_session(self, tkn: Token) -> None:
        """Delete the session and its keys (SH_END).

        Raises:
            ResponseError: SessionNotExist (100) when there is no such session.
        """
        await self._conn.request("SH_END", {"tkn": _token(tkn)})

    async def end_all_sessions(self) -> int:
        """Delete every session on the server (SH_END_ALL); returns how many ended."""
        body = await self._conn.request("SH_END_ALL", {})
        return int(body["cnt"])

    async def session_exists(self, tkns: Union[Token, Iterable[Token]]) -> List[int]:
        """Which of `tkns` are live sessions (SH_EXISTS).

        Accepts one token or an iterable of them. Returns the tokens that
        exist, in request order, as ints.
        """
        if isinstance(tkns, (int, str, Session)):
            tkns = [tkns]
        body = await self._conn.request("SH_EXISTS", {"tkns": [_token(t) for t in tkns]})
        return [_as_int(t) for t in body["exist"]]

    async def session_info(self, tkn: Token) -> Dict[str, Any]:
        """Describe one session (SH_INFO).

        Returns the response body without ``st``: ``tkn``, ``name`` (when
        it has one), ``owner`` (when it has one), ``shared``, ``keyCnt``,
        ``expires`` and, when ``expires``, ``expiry`` with ``duration``,
        ``remaining``, ``deleteSession``, ``extendOnSetAdd``, ``extendOnGet``
        and, for a session created with a lifetime, ``maxLifetime`` and
        ``lifetimeRemaining`` (whole seconds, rounded up).

        Raises:
            ResponseError: SessionNotExist (100).
        """
        return _without_st(await self._conn.request("SH_INFO", {"tkn": _token(tkn)}))

    async def session_info_all(self) -> Dict[str, Any]:
        """Server-wide totals (SH_INFO_ALL): ``{'totalSessions': n, 'totalKeys': m}``."""
        return _without_st(await self._conn.request("SH_INFO_ALL", {}))

    async def touch(self, tkn: Token, slide: bool = True) -> int:
        """Milliseconds until the session's next deadline (SH_TOUCH).

        The next deadline is the idle one or the end of its lifetime,
        whichever comes first; -1 when the session has no expiry. With
        `slide` (the default) the idle deadline first moves to now + its
        duration (never past the lifetime), whatever the extend flags say:
        a keepalive that reads nothing. ``slide=False`` only asks.

        Raises:
            TypeError: `slide` is not a bool.
            ResponseError: SessionNotExist (100); SessionTokenInvalid (101).
        """
        if not isinstance(slide, bool):
            raise TypeError(f"slide must be a bool, not {type(slide).__name__}")
        body = await self._conn.request("SH_TOUCH", {"tkn": _token(tkn), "slide": slide})
        return int(body["ttlMs"])

    async def owner_sessions(self, owner: str) -> List[int]:
        """The live sessions of `owner`, oldest first (SH_OWNER_SESSIONS).

        Empty when the owner has none (that is not an error).

        Raises:
            ResponseError: ValueTypeInvalid (41) when `owner` is not a str;
                ValueSize (42) when it is empty or over 256 bytes.
        """
        body = await self._conn.request("SH_OWNER_SESSIONS", {"owner": owner})
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
        body = await self._conn.request("SH_OWNER_END", params)
        return int(body["cnt"])

    # ----------------------------------------------------------------------- keys

    async def set(self, keys: Mapping[str, Any], tkn: Token) -> None:
        """Store `keys` (name -> any JSON value) in the session, overwriting (SH_SET)."""
        await self._conn.request("SH_SET", {"tkn": _token(tkn), "keys": _key_values(keys)})

    async def add(self, keys: Mapping[str, Any], tkn: Token) -> None:
        """Store `keys` in the session; keys that already exist keep their value (SH_ADD)."""
        await self._conn.request("SH_ADD", {"tkn": _token(tkn), "keys": _key_values(keys)})

    async def get(self, keys: Union[str, Iterable[str]], tkn: Token) -> Dict[str, Any]:
        """Read keys (SH_GET): a dict of name -> value holding only the keys that exist.

        `keys` is one name or an iterable of names (a tuple, list, set...).
        """
        body = await self._conn.request("SH_GET", {"tkn": _token(tkn), "keys": _key_names(keys)})
        return dict(body["keys"])

    async def rmv(self, keys: Union[str, Iterable[str]], tkn: Token) -> None:
        """Remove keys from the session (SH_RMV); absent names are ignored."""
        await self._conn.request("SH_RMV", {"tkn": _token(tkn), "keys": _key_names(keys)})

    async def count(self, tkn: Token) -> int:
        """How many keys the session holds (SH_COUNT)."""
        body = await self._conn.request("SH_COUNT", {"tkn": _token(tkn)})
        return int(body["cnt"])

    async def contains(self, keys: Union[str, Iterable[str]], tkn: Token) -> List[str]:
        """Which of `keys` exist in the session, in request order (SH_CONTAINS)."""
        body = await self._conn.request(
            "SH_CONTAINS", {"tkn": _token(tkn), "keys": _key_names(keys)}
        )
        return list(body["contains"])

    async def keys(self, tkn: Token) -> List[str]:
        """The names of all keys in the session, in no particular order (SH_KEYS)."""
        body = await self._conn.request("SH_KEYS", {"tkn": _token(tkn)})
        return list(body["keys"])

    async def clear(self, tkn: Token) -> int:
        """Remove every key but keep the session (SH_CLEAR); returns how many were removed."""
        body = await self._conn.request("SH_CLEAR", {"tkn": _token(tkn)})
        return int(body["cnt"])

    async def clear_set(self, keys: Mapping[str, Any], tkn: Token) -> int:
        """Replace the session's keys with `keys` in one step (SH_CLEAR_SET).

        Returns how many keys were removed before setting.
        """
        body = await self._conn.request(
            "SH_CLEAR_SET", {"tkn": _token(tkn), "keys": _key_values(keys)}
        )
        return int(body["cnt"])

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
        body = await self._conn.request("SH_SAVE", params, ok=(Status.SaveComplete,))
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
        body = await self._conn.request("SH_LOAD", {"name": name}, ok=(Status.LoadComplete,))
        return _without_st(body)

    # --------------------------------------------------------------------- server

    async def server_info(self) -> Dict[str, Any]:
        """Server facts (SV_INFO): ``serverVersion``, ``persistEnabled``, ``shards``,
        ``sessions``, ``keys``, ``connections``, ``uptimeSeconds``, ``memoryUsed``,
        ``maxMemory``, ``sessionNotExist``."""
        return _without_st(await self._conn.request("SV_INFO", {}))


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
