"""Running the app: uvicorn in the foreground (``floranet serve``) or in a thread (tests, benchmarks)."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from floranet.serving.app import create_app

logger = logging.getLogger("floranet.serve")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; anything else may be reachable from the network."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run_server(
    run_dir: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    limit_concurrency: int | None = 256,
    **kw: Any,
) -> None:
    """Serves ``create_app(run_dir, **kw)`` with uvicorn until interrupted.

    Args:
        host: Interface to bind; the default is only reachable from this machine.
        port: TCP port.
        log_level: uvicorn's log level.
        limit_concurrency: Connections beyond this get 503 from uvicorn itself.
        **kw: Passed to :func:`create_app`.
    """
    import uvicorn

    if not is_loopback(host):
        logger.warning(
            "floranet serve is binding to %s: the server is REACHABLE FROM THE NETWORK, without "
            "authentication or TLS. Use --host 127.0.0.1 unless that is what you want.",
            host,
        )
    app = create_app(run_dir, **kw)
    logger.warning(
        "floranet serve: %s (model %s, %s %s) on http://%s:%d/",
        run_dir,
        app.state.model_version,
        app.state.predictor.choice.runtime,
        app.state.predictor.choice.precision,
        f"[{host}]" if ":" in host else host,
        port,
    )
    uvicorn.run(
        app, host=host, port=port, log_level=log_level, limit_concurrency=limit_concurrency, timeout_keep_alive=5
    )


@contextlib.contextmanager
def serve_in_thread(
    app: Any, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning", startup_timeout_s: float = 30.0
) -> Iterator[str]:
    """Runs ``app`` with uvicorn in a daemon thread (tests, benchmarks); yields its base URL.

    Binds the socket first, so ``port=0`` picks a free port without a race.
    """
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(
        app, log_level=log_level, log_config=None, access_log=False, lifespan="on", timeout_keep_alive=5
    )
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
