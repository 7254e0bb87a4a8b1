"""How downloads open a URL: redirects to http(s) only, and a deadline for the response's head.

A server that sends its status line and headers a byte at a time never trips the per-read timeout (each byte
restarts it), and :mod:`floranet.utils.download`'s speed check only starts with the body: :func:`open_url` shuts
the connection down when the head is not complete within its deadline, so opening a URL never hangs.
:func:`url_problem` and :func:`check_timeout` refuse beforehand what urllib and sockets would fail on with a
traceback.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import math
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from floranet.errors import ConfigError

# The longest timeout floranet takes, in seconds (a day): socket.settimeout refuses one past about 9.2e9 s with an
# OverflowError, and none longer than this is ever meant (the server's own waits: config.use.TIME_LIMITS).
MAX_TIMEOUT_S = 86_400


class HeadTimeout(TimeoutError):
    """The server sent no complete status line and headers within the deadline."""


def open_url(request: urllib.request.Request, *, timeout: float, head_deadline: float) -> Any:
    """Opens ``request`` and returns the response once its status line and headers have arrived.

    Args:
        request: An http(s) or file request.
        timeout: Seconds allowed for connecting and for each read.
        head_deadline: Seconds allowed for everything up to the end of the headers (connecting, redirects, TLS,
            the status line and headers), however the bytes trickle in.

    Raises:
        HeadTimeout: The head was not complete within ``head_deadline`` seconds.
        urllib.error.URLError, http.client.HTTPException, OSError: As :func:`urllib.request.urlopen`; an
            HTTPError too for a redirect to anything but http(s).
    """
    deadline = _Deadline(head_deadline)
    opener = urllib.request.build_opener(_HttpRedirectsOnly, _HTTPHandler(deadline), _HTTPSHandler(deadline))
    try:
        response = opener.open(request, timeout=timeout)
    except BaseException as e:
        if not deadline.stop():  # what failed is the connection the deadline shut down
            raise HeadTimeout(_late(head_deadline)) from e
        raise
    if not deadline.stop():  # http.client takes a connection closed mid-headers for their end
        response.close()
        raise HeadTimeout(_late(head_deadline))
    return response


def request_for(url: str, **headers: str) -> urllib.request.Request:
    """A request for ``url`` with ``headers``; a ``user:password@`` in an http(s) URL (a private mirror's) becomes
    a Basic ``Authorization`` header, sent to that URL only: urllib took the user info for part of the host name
    ("Name or service not known"), and a redirect does not carry the header on (its target may be another host).
    """
    parts = urllib.parse.urlsplit(url)
    if parts.username is None or parts.scheme.lower() not in ("http", "https"):
        return urllib.request.Request(url, headers=headers)
    host = parts.netloc.rsplit("@", 1)[1]
    request = urllib.request.Request(urllib.parse.urlunsplit(parts._replace(netloc=host)), headers=headers)
    pair = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
    request.add_unredirected_header("Authorization", "Basic " + base64.b64encode(pair.encode()).decode("ascii"))
    return request


def _late(seconds: float) -> str:
    return (
        f"the server sent no complete response (status line and headers) within {seconds:g} s: it stalls or sends a "
        "byte at a time. Try again later, or from another server"
    )


class _HttpRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to http(s): urllib's own would follow one to ftp://, a server's way to have
    floranet open a connection it never asked for (an FTP host inside the user's network)."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, f"refused a redirect to {scheme or 'no'}:// URL", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _Deadline:
    """Shuts down every connection given to :meth:`watch` unless :meth:`stop` comes within ``seconds``: a read
    blocked on one then ends at once."""

    def __init__(self, seconds: float) -> None:
        self._expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        # A duplicate descriptor of the connection: wrapping it in TLS detaches the socket object itself, and
        # shutdown() acts on the connection, whichever descriptor names it.
        copy = sock.dup()
        with self._lock:
            self._sockets.append(copy)
            if self._expired:
                _shut(copy)

    def _expire(self) -> None:
        with self._lock:
            self._expired = True
            for sock in self._sockets:
                _shut(sock)

    def stop(self) -> bool:
        """Ends the watch (closing the duplicates); False when the deadline had passed."""
        self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()
            return not self._expired


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)


class _Watched(http.client.HTTPConnection):
    """A connection whose deadline watches its socket from the moment it connects (before any TLS handshake:
    HTTPSConnection.connect wraps what this ``connect`` made)."""

    deadline: _Deadline | None = None

    def connect(self) -> None:
        super().connect()
        if self.deadline is not None:
            self.deadline.watch(self.sock)


class _WatchedHTTPS(http.client.HTTPSConnection, _Watched):
    pass


def _factory(cls: type[_Watched], deadline: _Deadline) -> Callable[..., http.client.HTTPConnection]:
    def make(host: str, **kwargs: Any) -> http.client.HTTPConnection:
        connection = cls(host, **kwargs)
        connection.deadline = deadline
        return connection

    return make


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_factory(_Watched, self.deadline), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_factory(_WatchedHTTPS, self.deadline), req)


def url_problem(url: str) -> str:
    """Why urllib cannot take ``url`` ("" when it can): not http(s) or file, or spaces, control or non-ASCII
    characters in it."""
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port  # raises on a bad port or IPv6 host
        scheme = parts.scheme.lower()
    except ValueError:
        scheme = ""
    if scheme not in ("http", "https", "file"):
        return "must be an http(s):// or file:// URL"
    if not url.isascii() or any(c.isspace() or not c.isprintable() for c in url):
        return "must be ASCII without spaces or control characters (percent-encode them, e.g. %20)"
    return ""


def check_timeout(name: str, value: Any) -> float:
    """``value`` as seconds: a positive number of at most :data:`MAX_TIMEOUT_S` (not a bool, NaN or infinite).

    Raises:
        ConfigError: It is not.
    """
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and 0 < value <= MAX_TIMEOUT_S):
        raise ConfigError(
            f"{name} must be a positive number of seconds, at most {MAX_TIMEOUT_S} (a day). Received: {name}={value!r}"
        )
    return float(value)
