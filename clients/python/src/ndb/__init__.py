"""Async Python client for NemesisDB-protocol session servers.

# Layout

- `ndb.sessionclient`: `SessionClient` (one method per command, and the
  reconnection of its request connection), `Session`, and
  `Versioned`/`VersionedKeys`, the results of calls asked for a version.
- `ndb.events`: `Event` and `EventStream`, what `SessionClient.events`
  yields and returns: a subscription on a connection of its own that
  resumes from its cursor.
- `ndb.connection`: the pipelined WebSocket connection that matches replies
  to calls and sets pushed events aside, and the backoff between attempts
  to reach a server.
- `ndb.status`: the `Status` table, `ResponseError`, its `VersionMismatch`
  subclass, `ProtocolError` and `AuthenticationError`.
"""

from .sessionclient import (
    AuthenticationError,
    Event,
    EventStream,
    ProtocolError,
    ResponseError,
    Session,
    SessionClient,
    Status,
    Token,
    Versioned,
    VersionedKeys,
    VersionMismatch,
)

__all__ = [
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
    "AuthenticationError",
    "Status",
]
__version__ = "0.1.0"
