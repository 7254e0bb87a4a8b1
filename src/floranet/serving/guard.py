"""Connections that cannot lock others out: a header-read timeout and per-client and global connection bounds.

uvicorn starts no timer until a request's headers are complete, and its ``limit_concurrency`` counts idle
sockets: 256 connections that each send half a header would make every other client (``/health`` included)
wait or get 503 for as long as they stay open. :func:`guarded_protocol` wraps uvicorn's HTTP protocol so that

* a request's headers must arrive within ``header_timeout_s`` (on every request of a keep-alive connection),
  else the connection is closed;
* a request's line and headers may hold at most ``max_header_bytes``, else the answer is 431 and the
  connection is closed (httptools would keep a header that is still arriving in memory, however long);
* one client address holds at most ``per_client`` connections and the server at most ``total``; when a new
  connection would exceed a bound, the oldest *idle* connection (no request in progress: between requests or
  still sending headers, for at least ``grace_s``) of that client (or of any client, for the global
  bound) is closed to make room, and the new one is refused with a 503 when none is;
* the peers named in ``trusted_proxies`` (a reverse proxy that forwards every user's requests) have only the
  global bound;
* a client's refused connections are logged as one warning, then as one count per :data:`REFUSAL_LOG_S` while
  they go on, and a refused client that is already gone (ENOTCONN on shutting the write side) is closed quietly.

Requests in progress are never cut by these rules; their bodies are bounded by the app's own read timeout.
A connection accepted a moment ago counts as busy: its request may already wait, unread, in the socket, and
closing it would reset the client without an answer.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from floranet.config import MAX_HEADER_BYTES

logger = logging.getLogger("floranet.serve")
# How long a connection must have been quiet (no request in progress) before it may be closed to make room
# (at most half the header timeout).
EVICT_GRACE_S = 1.0
# The most bytes a lingering close reads and drops (for at most the grace above) before it closes all the same.
LINGER_BYTES = 64 << 20
# A client's refused connections are logged as one warning, then at most one count per this many seconds.
REFUSAL_LOG_S = 10.0
# The most client addresses whose refusals are counted apart; past it, the others are counted together.
REFUSAL_LOG_CLIENTS = 256
_BUSY = "all its connections are busy"


def _answer(status: str, error: str, headers: str = "") -> bytes:
    """A whole HTTP/1.1 answer with the app's JSON error body, closing the connection."""
    body = json.dumps({"error": error}).encode()
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{headers}Connection: close\r\n"
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


_REFUSED = _answer(
    "503 Service Unavailable",
    "server busy: this client's connections are all in use; retry shortly",
    "Retry-After: 1\r\n",
)


@dataclass
class ConnectionGuard:
    """The bounds, and the live connections (oldest first) per client address."""

    header_timeout_s: float = 10.0
    per_client: int = 32
    total: int = 512
    trusted_proxies: tuple[str, ...] = ()
    max_header_bytes: int = MAX_HEADER_BYTES
    clients: dict[str, collections.OrderedDict[int, Any]] = field(default_factory=dict)
    count: int = 0
    closed_idle: int = 0
    refused: int = 0
    refusal_log_s: float = REFUSAL_LOG_S
    # Per client whose refusals are being counted: how many since its last warning.
    _unlogged: dict[tuple[str, str, str], int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        # Parsed once (ServeConfig checked them), not on every accepted connection.
        self._proxy_networks = [ipaddress.ip_network(p, strict=False) for p in self.trusted_proxies]

    def admit(self, conn: Any, client: str) -> bool:
        """Registers ``conn``; makes room by closing idle connections; False when it must be refused."""
        mine = self.clients.setdefault(client, collections.OrderedDict())
        bound = self.total if self._is_proxy(client) else self.per_client
        if len(mine) >= bound and not self._close_idle(mine.values()):
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

    @property
    def grace_s(self) -> float:
        """How long a connection must have been quiet before it may be closed to make room."""
        return min(EVICT_GRACE_S, self.header_timeout_s / 2)

    def _is_proxy(self, client: str) -> bool:
        if not self._proxy_networks:
            return False
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            return False
        return any(address in network for network in self._proxy_networks)

    def release(self, conn: Any, client: str) -> None:
        mine = self.clients.get(client)
        if mine is not None and mine.pop(id(conn), None) is not None:
            self.count -= 1
            if not mine:
                del self.clients[client]

    def log_refusal(
        self, client: str, loop: asyncio.AbstractEventLoop, thing: str = "connection", why: str = _BUSY
    ) -> None:
        """Warns of a refused ``thing`` and ``why``: a client's first at once, the ones after it as one count per
        ``refusal_log_s`` (a flood of refused connections, or of oversized headers, would otherwise write a line
        each)."""
        key = (client, thing, why)
        if key not in self._unlogged and len(self._unlogged) >= REFUSAL_LOG_CLIENTS:
            key = ("other addresses", thing, why)  # many refused at once: counted together, the table stays small
        if key in self._unlogged:
            self._unlogged[key] += 1
            return
        self._unlogged[key] = 0
        logger.warning("refused a %s from %s: %s", thing, key[0], why)
        loop.call_later(self.refusal_log_s, self._log_refusal_count, key, loop)

    def _log_refusal_count(self, key: tuple[str, str, str], loop: asyncio.AbstractEventLoop) -> None:
        count = self._unlogged.pop(key, 0)
        if count:  # still refusing: say how many, and keep counting for another interval
            client, thing, why = key
            logger.warning(
                "refused %d more %ss from %s in the last %g s: %s", count, thing, client, self.refusal_log_s, why
            )
            self._unlogged[key] = 0
            loop.call_later(self.refusal_log_s, self._log_refusal_count, key, loop)

    def _close_idle(self, candidates: Any) -> bool:
        for conn in list(candidates):
            if conn.evictable():
                conn.drop()  # releases it here, not when the transport is finally gone
                self.closed_idle += 1
                return True
        return False


def _shut_write_side(transport: asyncio.Transport) -> bool:
    """Sends EOF after what was written; False when the peer is gone already (the socket is no longer connected,
    ENOTCONN), and then the transport is closed: there is nothing more to send it or to read from it."""
    try:
        transport.write_eof()
    except OSError:
        transport.close()
        return False
    return True


class _LingeringTransport:
    """A connection's transport whose ``close()`` lingers while a request's body is still arriving (an answer
    such as 413 or 503 sent before the whole upload was read): the write side is shut and what the client still
    sends is read and dropped for the guard's grace, then the socket closes. Closed at once with unread data, the
    kernel sends a reset, which Python's http.client (requests, urllib) reports instead of the answer. At most
    :data:`LINGER_BYTES` are dropped: a client that keeps sending is cut off then."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedHttpToolsProtocol) -> None:
        self._transport, self._protocol = transport, protocol
        self._lingering = False
        self.dropped = 0

    def drop(self, data: bytes) -> None:
        """Counts bytes read and dropped after an early answer (lingering, 503 or 431); closes past the budget."""
        self.dropped += len(data)
        if self.dropped > LINGER_BYTES:
            self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self._lingering or self._transport.is_closing()

    def close(self) -> None:
        transport, protocol = self._transport, self._protocol
        if self.is_closing():
            return
        cycle = protocol.cycle
        if cycle is None or not cycle.more_body or not transport.can_write_eof():
            transport.close()
            return
        self._lingering = protocol._refused = True  # what arrives from now on is dropped unread
        if not _shut_write_side(transport):
            return
        transport.resume_reading()
        protocol.loop.call_later(protocol.guard.grace_s, transport.close)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol under a :class:`ConnectionGuard` (set by :func:`guarded_protocol`)."""

    guard: ConnectionGuard
    _header_timer: asyncio.TimerHandle | None = None
    _client_key = ""
    _admitted = False
    _refused = False
    _quiet_since = 0.0  # when the connection last started waiting on its client
    _head_open = False  # a request's line and headers are arriving
    _head_bytes = 0  # bytes received since that request began
    _at_message_start = True  # the next bytes received start a request
    _count_chunk = False  # whether the chunk being parsed counts towards _head_bytes

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_LingeringTransport(transport, self))  # type: ignore[arg-type]
        self._quiet_since = self.loop.time()
        self._client_key = self.client[0] if self.client else "?"
        self._admitted = self.guard.admit(self, self._client_key)
        if not self._admitted:
            self.guard.log_refusal(self._client_key, self.loop)
            self._refuse(transport)
            return
        self._arm_header_timer()

    def _refuse(self, transport: asyncio.Transport, answer: bytes = _REFUSED) -> None:
        """Answers (503 by default) and closes gently: a close with the client's request still unread would
        send a reset, which can reach the client before the answer does."""
        self._refused = True
        transport.write(answer)
        if not transport.can_write_eof():
            transport.close()
        elif _shut_write_side(transport):
            self.loop.call_later(self.guard.grace_s, transport.close)  # its request is read and dropped until then

    def data_received(self, data: bytes) -> None:
        if self._refused:
            if isinstance(self.transport, _LingeringTransport):
                self.transport.drop(data)
            return
        # A chunk counts when it starts a request or continues its headers; one that also holds the end of the
        # previous request is left out (httptools says where a request begins, not at which byte), so a header
        # still arriving is cut at most one read (256 KiB) past the bound; a complete one is measured exactly
        # (on_headers_complete).
        self._count_chunk = self._head_open or self._at_message_start
        super().data_received(data)
        if self._head_open and self._count_chunk and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.guard.max_header_bytes:
                self._refuse_headers()

    def _refuse_headers(self) -> None:
        """Answers 431 to a request whose line and headers passed the bound, and closes the connection."""
        self._cancel_header_timer()
        limit = self.guard.max_header_bytes
        self.guard.log_refusal(self._client_key, self.loop, "request", f"its headers passed {limit} bytes")
        if not self.idle():  # a pipelined request behind one being answered: an answer now would garble that one
            self._refused = True
            self.transport.close()
            return
        error = f"request headers too large: the request line and headers passed max_header_bytes={limit} bytes"
        self._refuse(self.transport, _answer("431 Request Header Fields Too Large", error))

    def on_response_complete(self) -> None:
        self._quiet_since = self.loop.time()
        super().on_response_complete()

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
        if self._refused:  # a request pipelined behind one refused in the same read: dropped with the connection
            return
        super().on_message_begin()
        self._head_open, self._head_bytes, self._at_message_start = True, 0, False
        self._quiet_since = self.loop.time()
        self._arm_header_timer()  # the next request of a keep-alive connection gets its own deadline

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._cancel_header_timer()
        # The read that ends the headers is not counted above (it may hold a body too): the parsed request line
        # and headers are, so a complete head over the bound is refused as exactly as one still arriving.
        head = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if head > self.guard.max_header_bytes:
            self._refuse_headers()  # uvicorn never starts the request; its body and what follows are dropped
        if not self._refused:
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        super().on_message_complete()
        # The next request starts after this one's last byte, inside the chunk being parsed or at the next one.
        self._at_message_start, self._count_chunk = True, False

    def idle(self) -> bool:
        """No request in progress: still sending headers, or between requests."""
        return self.cycle is None or self.cycle.response_complete

    def evictable(self) -> bool:
        """Idle, and quiet for the guard's grace (a new connection's request may not have been read yet)."""
        return self.idle() and self.loop.time() - self._quiet_since >= self.guard.grace_s

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
