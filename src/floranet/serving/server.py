"""Running the app: uvicorn in the foreground (``floranet serve``) or in a thread (tests, benchmarks).

Both use :mod:`floranet.serving.guard`'s connection rules (header timeout, per-client and global bounds).
:func:`run_server` also decides who may connect: off loopback an API key is required (``--api-key`` or
``FLORANET_API_KEY``) unless ``insecure_no_auth`` says otherwise, and the Host allow-list defaults to the
loopback names on loopback.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from floranet.config import LOOPBACK_HOSTS
from floranet.errors import ConfigError
from floranet.serving.app import ServeState, create_app
from floranet.serving.guard import ConnectionGuard, guarded_protocol
from floranet.utils.text import printable

logger = logging.getLogger("floranet.serve")
API_KEY_ENV = "FLORANET_API_KEY"
SOCKET_BACKLOG = 2048  # uvicorn's default backlog, which it sets again when it starts


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; anything else may be reachable from the network."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def access_settings(
    host: str,
    *,
    api_key: str | None = None,
    insecure_no_auth: bool = False,
    allowed_hosts: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """The ``api_key`` and ``allowed_hosts`` a server bound to ``host`` needs.

    Raises:
        ConfigError: Off loopback without a key (and without ``insecure_no_auth``).
    """
    key = api_key or os.environ.get(API_KEY_ENV) or None
    loopback = is_loopback(host)
    if not loopback and key is None and not insecure_no_auth:
        raise ConfigError(
            f"Binding to {host} makes the server reachable from the network: give it an API key (--api-key KEY or "
            f"{API_KEY_ENV}), or pass --insecure-no-auth to serve without authentication. Received: host={host!r}"
        )
    if allowed_hosts is None:
        # On loopback only the loopback names (DNS rebinding); elsewhere the names clients use are unknown here.
        allowed_hosts = (*LOOPBACK_HOSTS, host.strip("[]").lower()) if loopback else ("*",)
    return {"api_key": key, "allowed_hosts": allowed_hosts}


def _uvicorn_config(app: Any, **kwargs: Any) -> Any:
    import uvicorn

    state: ServeState = app.state.serve
    settings = state.settings
    guard = ConnectionGuard(
        settings.header_timeout_s,
        settings.max_connections_per_client,
        settings.max_connections,
        trusted_proxies=settings.trusted_proxies,
        max_header_bytes=settings.max_header_bytes,
    )
    app.state.guard = guard
    # limit_concurrency is off: it counts idle sockets; the guard bounds connections and the app bounds work.
    # X-Forwarded-For is read from the trusted proxies alone (uvicorn's default trusts any loopback client, who
    # could then claim a new address per request and with it a new share of the server).
    proxies = list(settings.trusted_proxies)
    return uvicorn.Config(
        app,
        http=guarded_protocol(guard),
        timeout_keep_alive=5,
        limit_concurrency=None,
        proxy_headers=bool(proxies),
        forwarded_allow_ips=proxies or None,
        **kwargs,
    )


def run_server(
    run_dir: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    api_key: str | None = None,
    insecure_no_auth: bool = False,
    allowed_hosts: tuple[str, ...] | None = None,
    **kw: Any,
) -> None:
    """Serves ``create_app(run_dir, **kw)`` with uvicorn until interrupted.

    Args:
        host: Interface to bind; the default is only reachable from this machine.
        port: TCP port.
        log_level: uvicorn's log level.
        api_key: The key clients must send; default ``$FLORANET_API_KEY``. Required off loopback.
        insecure_no_auth: Serve off loopback without a key (say so loudly).
        allowed_hosts: Host header names to answer (default: see :func:`access_settings`).
        **kw: Passed to :func:`create_app` (:class:`floranet.config.ServeConfig` fields and more).

    Raises:
        ConfigError: Off loopback without a key, or a bad setting.
    """
    import uvicorn

    if not (isinstance(port, int) and not isinstance(port, bool) and 0 <= port <= 65535):  # before the model loads
        raise ConfigError(f"port must be an int in [0, 65535]. Received: port={port!r}")
    access = access_settings(host, api_key=api_key, insecure_no_auth=insecure_no_auth, allowed_hosts=allowed_hosts)
    sock = _bind(host, port)  # before the model loads: a port in use is said at once; port 0 gets a free one
    port = sock.getsockname()[1]  # the one bound: announced below (port 0 was announced as ":0")
    if not is_loopback(host):
        logger.warning(
            "floranet serve is binding to %s: the server is REACHABLE FROM THE NETWORK, %s, without TLS "
            "(put a TLS-terminating reverse proxy in front; see SECURITY.md).",
            printable(host),
            "with an API key" if access["api_key"] else "WITHOUT AUTHENTICATION",
        )
    try:
        app = create_app(run_dir, **access, **kw)
    except BaseException:  # a run that cannot be served: the port is let go (library use goes on after)
        sock.close()
        raise
    state: ServeState = app.state.serve
    if state.settings.max_pixels > state.predictor.max_pixels:
        logger.warning(
            "floranet serve: max_pixels=%d is above the run's own limit (%d, its max_pixels setting): images are "
            "decoded up to %d pixels.",
            state.settings.max_pixels,
            state.predictor.max_pixels,
            state.predictor.max_pixels,
        )
    choice = app.state.predictor.choice
    logger.warning("floranet serve: inference on %s %s: %s", choice.runtime, choice.precision, choice.reason)
    logger.warning(  # the path as given, escaped as the CLI prints paths (the version's name is URL-safe already)
        "floranet serve: %s (model %s, %s %s) on http://%s:%d/",
        printable(os.fspath(run_dir)),
        app.state.model_version,
        choice.runtime,
        choice.precision,
        printable(f"[{host}]" if ":" in host else host),
        port,
    )
    uvicorn.Server(_uvicorn_config(app, host=host, port=port, log_level=log_level)).run(sockets=[sock])


def _bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` (0: a free port), for uvicorn to listen on.

    Raises:
        ConfigError: The address cannot be bound (in use, or not this machine's).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        # Listening from now: a client that connects once the URL is printed, before uvicorn takes the socket (or
        # while the model loads), waits in the queue; it was refused.
        sock.listen(SOCKET_BACKLOG)
    except OSError as e:
        sock.close()
        hint = "choose another --port, or 0 for a free one" if e.errno == errno.EADDRINUSE else "check --host"
        raise ConfigError(
            f"Cannot listen on {printable(host)}:{port} ({e.strerror or e}); {hint}. "
            f"Received: host={printable(host)!r}, port={port}"
        ) from None
    return sock


@contextlib.contextmanager
def serve_in_thread(
    app: Any, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning", startup_timeout_s: float = 30.0
) -> Iterator[str]:
    """Runs ``app`` with uvicorn (and the connection guard) in a daemon thread; yields its base URL.

    Binds the socket first, so ``port=0`` picks a free port without a race.
    """
    import uvicorn

    sock = _bind(host, port)
    config = _uvicorn_config(app, log_level=log_level, log_config=None, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="floranet-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("the uvicorn server did not start")
        time.sleep(0.02)
    bound = sock.getsockname()[1]
    try:
        yield f"http://{f'[{host}]' if ':' in host else host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
