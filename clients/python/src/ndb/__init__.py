"""Async Python client for NemesisDB-protocol session servers.

# Layout

- `ndb.sessionclient`: `SessionClient` (one method per command) and `Session`.
- `ndb.connection`: the pipelined WebSocket connection that matches replies to calls.
- `ndb.status`: the `Status` table, `ResponseError` and `ProtocolError`.
"""

from .sessionclient import ProtocolError, ResponseError, Session, SessionClient, Status, Token

__all__ = ["SessionClient", "Session", "Token", "ResponseError", "ProtocolError", "Status"]
__version__ = "0.1.0"
