"""Who may use the server: a Host allow-list (against DNS rebinding) and an API key.

Both run as one ASGI middleware in front of every route, so routes added later inherit them.

* Host: a request whose ``Host`` header names another host is refused (421) before anything else happens.
  On loopback the default list is :data:`floranet.config.LOOPBACK_HOSTS`: a web page on the user's machine
  that rebinds its own domain name to 127.0.0.1 still sends its own name as the Host, and is refused.
* API key: when set, every route but the web page and the health checks needs ``Authorization: Bearer KEY``
  or ``X-API-Key: KEY``, compared in constant time; otherwise 401.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Open without a key: the page (static HTML, no data) and liveness/readiness probes.
OPEN_PATHS = frozenset({"/", "/health", "/v2/health/live", "/v2/health/ready"})


def host_of(header: str) -> str:
    """The host name of a ``Host`` header, lower case, without port or IPv6 brackets."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value[1:]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class AccessMiddleware:
    """Refuses requests for other hosts (421) and, when a key is set, requests without it (401).

    Args:
        app: The ASGI app behind it.
        allowed_hosts: Host names accepted in the ``Host`` header; ``"*"`` accepts any.
        api_key: The key clients must present; None: no key needed.
    """

    def __init__(self, app: ASGIApp, *, allowed_hosts: Iterable[str], api_key: str | None) -> None:
        self.app = app
        hosts = {h.strip().lower().strip("[]") for h in allowed_hosts}
        self.any_host = "*" in hosts
        self.hosts = frozenset(hosts - {"*"})
        self.key = api_key.encode("utf-8") if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        host = host_of(headers.get(b"host", b"").decode("latin-1"))
        if not self.any_host and host not in self.hosts:
            await _refuse(send, 421, "this server does not answer for that host name (Host header)")
            return
        if self.key is not None and scope.get("path") not in OPEN_PATHS and not self._authorised(headers):
            await _refuse(
                send,
                401,
                "missing or wrong API key (send Authorization: Bearer KEY)",
                [(b"www-authenticate", b'Bearer realm="floranet"')],
            )
            return
        await self.app(scope, receive, send)

    def _authorised(self, headers: dict[bytes, bytes]) -> bool:
        assert self.key is not None
        given = headers.get(b"x-api-key", b"")
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        # compare_digest's time depends only on the length of ``given``, never on the key's content.
        return hmac.compare_digest(given, self.key)


async def _refuse(send: Send, status: int, message: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
