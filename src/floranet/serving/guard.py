"""Connections that cannot lock others out: a header-read timeout and per-client and global connection bounds.

uvicorn starts no timer until a request's headers are complete, and its ``limit_concurrency`` counts idle
sockets: 256 connections that each send half a header would make every other client (``/health`` included)
wait or get 503 for as long as they stay open. :func:`guarded_protocol` wraps uvicorn's HTTP protocol so that

* a request's headers must arrive within ``header_timeout_s`` (on every request of a keep-alive connection),
  else the connection is closed;
* one client address holds at most ``per_client`` connections and the server at most ``total``; when a new
  connection would exceed a bound, the oldest *idle* connection (no request in progress: between requests or
  still sending headers) of that client (or of any client, for the global bound) is closed to make room, and
  the new one is refused only when every connection is busy with a request.

Requests in progress are never cut by these rules; their bodies are bounded by the app's own read timeout.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger("floranet.serve")

_REFUSED_BODY = b'{"error": "server busy: this client\'s connections are all in use; retry shortly"}'
_REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: " + str(len(_REFUSED_BODY)).encode() + b"\r\n\r\n" + _REFUSED_BODY
)


@dataclass
class ConnectionGuard:
    """The bounds, and the live connections (oldest first) per client address."""

    header_timeout_s: float = 10.0
    per_client: int = 32
    total: int = 512
    clients: dict[str, collections.OrderedDict[int, Any]] = field(default_factory=dict)
    count: int = 0
    closed_idle: int = 0
    refused: int = 0

    def admit(self, conn: Any, client: str) -> bool:
        """Registers ``conn``; makes room by closing idle connections; False when it must be refused."""
        mine = self.clients.setdefault(client, collections.OrderedDict())
        if len(mine) >= self.per_client and not self._close_idle(mine.values()):
            self.refused += 1
            return False
        if self.count >= self.total and not self._close_idle(
            c for conns in self.clients.values() for c in conns.values()
        ):
            self.refused += 1
            return False
        mine[id(conn)] = conn
        self.count += 1
        return True

    def release(self, conn: Any, client: str) -> None:
        mine = self.clients.get(client)
        if mine is not None and mine.pop(id(conn), None) is not None:
            self.count -= 1
            if not mine:
                del self.clients[client]

    def _close_idle(self, candidates: Any) -> bool:
        for conn in list(candidates):
            if conn.idle():
                conn.drop()  # releases it here, not when the transport is finally gone
                self.closed_idle += 1
                return True
        return False


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol under a :class:`ConnectionGuard` (set by :func:`guarded_protocol`)."""

    guard: ConnectionGuard
    _header_timer: asyncio.TimerHandle | None = None
    _client_key = ""
    _admitted = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._client_key = self.client[0] if self.client else "?"
        self._admitted = self.guard.admit(self, self._client_key)
        if not self._admitted:
            logger.warning("refused a connection from %s: all its connections are busy", self._client_key)
            transport.write(_REFUSED)  # an answer rather than a bare reset; close() sends it first
            transport.close()
            return
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        self._release()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request it cannot parse, as JSON like every other error (its own is text)."""
        body = json.dumps({"error": f"malformed HTTP request: {msg}"}).encode()
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body)]
        self.transport.write(b"".join([*head, b"connection: close\r\n\r\n", body]))
        self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()  # the next request of a keep-alive connection gets its own deadline

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def idle(self) -> bool:
        """No request in progress: still sending headers, or between requests."""
        return self.cycle is None or self.cycle.response_complete

    def drop(self) -> None:
        self._cancel_header_timer()
        self._release()
        if not self.transport.is_closing():
            self.transport.close()

    def _release(self) -> None:
        """Gives the connection's place back to the guard, once."""
        if self._admitted:
            self.guard.release(self, self._client_key)
            self._admitted = False

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.guard.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.idle():
            self.drop()


def guarded_protocol(guard: ConnectionGuard) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with ``guard``'s timeout and bounds (pass it as ``Config(http=...)``)."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"guard": guard})
