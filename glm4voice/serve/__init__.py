"""`glm4voice serve`: the spoken chat over a WebSocket, with a web page (protocol: docs/protocol.md)."""

from .app import create_app
from .session import ChatServer, Session

__all__ = ["ChatServer", "Session", "create_app"]
