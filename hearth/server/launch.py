"""Start-up of the HTTP server: take the port, run uvicorn over the app until SIGTERM / SIGINT, drain, stop the engine.

Two steps, so that a caller can take the port before the minutes of loading a model (a port in use fails at once):

    sock = listen(host, port)
    ... load the model, build the engine and the app ...
    serve(web, engine, sock, host=host, model_name=name, shutdown_timeout=10.0)
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

import uvicorn

from hearth.errors import HearthError
from hearth.server.transport import DEFAULT_SHUTDOWN_TIMEOUT, DrainingServer

if TYPE_CHECKING:
    from fastapi import FastAPI

    from hearth.engine.async_engine import AsyncEngine

log = logging.getLogger("hearth")


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (port 0: any free port), not yet listening; HearthError if it cannot be had."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise HearthError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def serve(web: FastAPI, engine: AsyncEngine, sock: socket.socket, *, host: str, model_name: str,
          shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> None:
    """Serve `web` (from hearth.server.app.build_app over `engine`) on `sock` until SIGTERM / SIGINT.

    Starts the engine first and always shuts it down and closes the socket. The first signal drains: new requests get
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
    engine.start()
    try:
        server.run(sockets=[sock])
    finally:
        engine.shutdown()
        sock.close()
