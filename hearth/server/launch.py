"""Start-up of the HTTP server: take the port, run uvicorn over the app until SIGTERM / SIGINT, drain, stop the engine.

Two steps, so that a caller can take the port before the minutes of loading a model (a port in use fails at once):

    sock = listen(host, port)
    ... load the model, build the engine and the app ...
    serve(web, engine, sock, host=host, model_name=name, shutdown_timeout=10.0)
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

import uvicorn

from hearth.errors import HearthError
from hearth.server.transport import DEFAULT_SHUTDOWN_TIMEOUT, DrainingServer

if TYPE_CHECKING:
    from fastapi import FastAPI

    from hearth.engine.async_engine import AsyncEngine

log = logging.getLogger("hearth")

BACKLOG = 2048  # uvicorn's default


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (port 0: any free port) and listening; HearthError if it cannot be had.

    It listens at once, before the minutes of loading a model: a bound socket that does not listen yet does not keep
    another server (which binds with SO_REUSEADDR too) off the port, so both would load and the second fail only at
    the end. Connections that arrive while the model loads wait in the backlog and are answered once it serves."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait out TIME_WAIT
    try:
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            free = next_free_port(host, port)
            hint = f"--port {free}" if free is not None else "--port with another port"
            raise HearthError(f"port {port} on {host} is already in use (another server?); choose another: {hint}") from None
        if e.errno == errno.EACCES and 0 < port < 1024:
            raise HearthError(f"port {port} needs administrator rights (ports below 1024); choose one above: --port 8000") from None
        raise HearthError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def next_free_port(host: str, port: int, tries: int = 50) -> int | None:
    """The first port after `port` that can be bound and listened on at `host` (None if none of `tries` can)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for p in range(port + 1, min(port + 1 + tries, 65536)):
        with socket.socket(family) as s:
            try:
                s.bind((host, p))
                s.listen(1)
            except OSError:
                continue
            return p
    return None


def serve(web: FastAPI, engine: AsyncEngine, sock: socket.socket, *, host: str, model_name: str,
          shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT, beside: Sequence[AsyncEngine] = ()) -> None:
    """Serve `web` (from hearth.server.app.build_app over `engine`) on `sock` until SIGTERM / SIGINT.

    Starts the engine (and the engines `beside` it: a guard model's own) first and always shuts them down and closes
    the socket. The first signal drains: new requests get
    503 while running ones may take `shutdown_timeout` seconds to finish (then the rest are ended with an error
    event); a second signal ends them at once. Returns when the server has stopped.
    """

    class Server(DrainingServer):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                log.info("serving %s on http://%s:%d", model_name, host, sock.getsockname()[1])

    def drain() -> None:  # called from the signal handler: only sets a flag
        web.state.draining = True  # new requests get 503 while running ones finish

    # timeout_graceful_shutdown: what uvicorn gives the responses DrainingServer has already ended to close.
    server = Server(uvicorn.Config(web, log_level="warning", access_log=False, timeout_graceful_shutdown=2),
                    live=web.state.live, on_drain=drain, shutdown_timeout=shutdown_timeout)
    engines = (engine, *beside)
    for e in engines:
        e.start()
    try:
        server.run(sockets=[sock])
    finally:
        for e in engines:
            e.shutdown()
        sock.close()
