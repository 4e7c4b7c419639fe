"""Async Python client for NemesisDB-protocol session servers.

# Layout

- `ndb.sessionclient`: `SessionClient` (one method per command, and the
  reconnection of its request connection), `Session`, and
  `Versioned`/`VersionedKeys`, the results of calls asked for a version.
- `ndb.connection`: the pipelined WebSocket connection that matches replies
  to calls and sets pushed events aside, and the backoff between attempts
  to reach a server.
- `ndb.status`: the `Status` table, `ResponseError`, its `VersionMismatch`
  subclass and `ProtocolError`.
"""

from .sessionclient import (
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
    "Token",
    "Versioned",
    "VersionedKeys",
    "ResponseError",
    "VersionMismatch",
    "ProtocolError",
    "Status",
]
__version__ = "0.1.0"
