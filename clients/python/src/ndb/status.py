"""Status codes of the NemesisDB protocol and the error raised for them.

This module owns the one table of `st` values (docs/PROTOCOL.md, "Status
values"), `ResponseError` and its `VersionMismatch` subclass, and the two
`ConnectionError`s that waiting will not cure: `ProtocolError` and
`AuthenticationError`. It knows nothing about sockets or commands.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, Dict, Optional, Union


class Status(IntEnum):
    """Every `st` value the server may send, named as in the protocol."""

    Ok = 1
    PayLoadInvalid = 2
    JsonInvalid = 3
    CommandNotExist = 10
    CommandMultiple = 11
    CommandType = 12
    CommandSyntax = 13
    CommandDisabled = 14
    AuthRequired = 15
    NotPermitted = 16
    AuthFailed = 17
    ParamMissing = 26
    ValueTypeInvalid = 41
    ValueSize = 42
    ValueNotInteger = 43
    IntegerOverflow = 44
    SessionNotExist = 100
    SessionTokenInvalid = 101
    SessionOpenFail = 102
    SessionNewFail = 103
    VersionMismatch = 104
    SaveComplete = 121
    SaveDirWriteFail = 122
    SaveError = 123
    LoadComplete = 141
    LoadError = 142
    MemoryLimit = 150
    EventsLost = 160
    Unknown = 1000


def status_name(st: Any) -> str:
    """The protocol name of `st`, or ``'Status<st>'`` for a value not in the table."""
    try:
        return Status(st).name
    except (ValueError, TypeError):
        return f"Status<{st!r}>"


class ResponseError(Exception):
    """The server answered a request with a status other than the success one.

    Attributes:
        st: the numeric status (a `Status` member when the value is known,
            else the raw value; ``None`` if the body had no ``st``).
        st_name: the status name, e.g. ``'SessionNotExist'``.
        command: the request command, e.g. ``'SH_GET'``.
        message: the server's ``m`` text, if it sent one.
        response: the whole decoded response, e.g.
            ``{'SH_GET_RSP': {'st': 100, 'tkn': 5}}``.
    """

    st: Union[Status, int, None]
    st_name: str
    command: str
    message: Optional[str]
    response: Dict[str, Any]

    def __init__(self, command: str, response: Dict[str, Any], body: Dict[str, Any]) -> None:
        raw: Any = body.get("st")
        try:
            self.st = Status(raw)
        except (ValueError, TypeError):
            self.st = raw
        self.st_name = status_name(raw)
        self.command = command
        message = body.get("m")
        self.message = message if isinstance(message, str) else None
        self.response = response
        text = f"{command} failed: {self.st_name} ({raw})"
        if self.message:
            text += f": {self.message}"
        super().__init__(text)

    @property
    def body(self) -> Dict[str, Any]:
        """The response body: the object inside ``response``."""
        for value in self.response.values():
            if isinstance(value, dict):
                return value
        return {}


class VersionMismatch(ResponseError):
    """A write given ``ifVersion`` found the session at another version (104).

    Nothing changed, not even a sliding deadline. The usual answer is to
    read again (``get(..., withVersion=True)``) and retry the write with
    the version just read.

    Attributes:
        version: the session's current version, as the server reported it
            (None only if a server left it out of the reply).
    """

    version: Optional[int]

    def __init__(self, command: str, response: Dict[str, Any], body: Dict[str, Any]) -> None:
        super().__init__(command, response, body)
        version = body.get("version")
        # bool is an int to Python, never a version on the wire.
        self.version = (
            version if isinstance(version, int) and not isinstance(version, bool) else None
        )


def response_error(command: str, response: Dict[str, Any], body: Dict[str, Any]) -> ResponseError:
    """The `ResponseError` for a failed reply: `VersionMismatch` for status 104,
    so that compare-and-set loops can catch exactly the retryable failure."""
    st = body.get("st")
    if st == Status.VersionMismatch and not isinstance(st, bool):
        return VersionMismatch(command, response, body)
    return ResponseError(command, response, body)


class ProtocolError(ConnectionError):
    """The server broke the wire contract.

    For a reply that matches no request the connection can no longer be
    trusted, so it is closed; every waiting call fails with this error. A
    reply that lacks the ``version`` a call asked for (a server from before
    versions, which ignores ``withVersion``/``ifVersion``) fails only that
    call. It is a `ConnectionError`.
    """


class AuthenticationError(ConnectionError):
    """The server refused this client's credentials when it connected.

    Raised by `SessionClient.open` and by a reconnection when the server
    answers the WebSocket upgrade with HTTP 401 (a user or password in
    ``SessionClient(uri, user=..., password=...)`` that the server does not
    know), and by a reconnection whose ``SV_AUTH`` (repeating a successful
    `authenticate` on the new connection) is answered with AuthFailed (17).

    It is a `ConnectionError`, but one that is never retried with backoff:
    the same credentials would be refused again. Each later call makes one
    new attempt (the server's users may have been reloaded meanwhile) and
    raises it again at once.
    """
