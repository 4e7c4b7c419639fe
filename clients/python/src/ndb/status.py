"""Status codes of the NemesisDB protocol and the error raised for them.

This module owns the one table of `st` values (docs/PROTOCOL.md, "Status
values") and `ResponseError`. It knows nothing about sockets or commands.
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
    ParamMissing = 26
    ValueTypeInvalid = 41
    ValueSize = 42
    SessionNotExist = 100
    SessionTokenInvalid = 101
    SessionOpenFail = 102
    SessionNewFail = 103
    SaveComplete = 121
    SaveDirWriteFail = 122
    SaveError = 123
    LoadComplete = 141
    LoadError = 142
    MemoryLimit = 150
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


class ProtocolError(ConnectionError):
    """The server broke the wire contract (a reply that matches no request).

    The connection can no longer be trusted, so it is closed; every waiting
    call fails with this error. It is a `ConnectionError`.
    """
