"""HTTP plumbing under the routes: bounded JSON bodies, client-disconnect handling, server-sent events.

A client that goes away must not keep using the engine: non-streaming work runs against a watcher of
the connection and is cancelled when it drops; a stream's body iterator is always closed when the
response ends, however it ends, and closing it aborts its engine requests.

Shutdown (`DrainingServer`): on SIGTERM the server stops taking work (503) but keeps listening, lets running
requests finish for up to the grace period, then ends the rest through `LiveResponses`: a stream gets an error
event and `data: [DONE]`, a request still waiting for its answer gets a 503. Then uvicorn closes the sockets.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import anyio
import uvicorn
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from hearth.server.errors import (
    BadRequest,
    ClientGone,
    PayloadTooLarge,
    ServiceUnavailable,
    error_event,
    from_validation_error,
)

log = logging.getLogger("hearth.server")

DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_SHUTDOWN_TIMEOUT = 10.0
SHUTTING_DOWN = "the server is shutting down; retry on another instance or later"


class LiveResponses:
    """The responses now running, each with a way to end it early when the server shuts down.

    Only touched from the event loop: the routes register, `DrainingServer.on_tick` ends them.
    """

    def __init__(self) -> None:
        self._enders: dict[int, Callable[[], None]] = {}

    @contextmanager
    def track(self, end: Callable[[], None]) -> Iterator[None]:
        key = id(end)
        self._enders[key] = end
        try:
            yield
        finally:
            self._enders.pop(key, None)

    def end_all(self) -> int:
        enders = list(self._enders.values())
        for end in enders:
            end()
        return len(enders)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object, refusing bodies over `limit` bytes before reading them whole."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest(f"invalid Content-Length header {declared!r}")
        if int(declared) > limit:
            raise PayloadTooLarge(f"the request body is {int(declared)} bytes; the limit is {limit}")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the request body is over the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGone() from None
    raw = b"".join(chunks)
    if not raw.strip():
        raise BadRequest("the request body is empty; send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(f"the request body is not valid UTF-8 (byte {e.start})") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise BadRequest(f"the request body is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    except ValueError as e:
        raise BadRequest(f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise BadRequest("the request body is nested too deeply; send a flatter JSON object") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    try:  # JSON may escape lone UTF-16 surrogates (\ud800): valid JSON, but no text a tokenizer or a reply can hold
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("the request body contains an unpaired surrogate escape (\\ud800-\\udfff); "
                         "strings must be valid Unicode") from None
    return data


def parse(model: type[BaseModel], data: dict[str, Any]):
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise from_validation_error(e, data) from None


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(request: Request, work, live: LiveResponses | None = None):
    """Await `work`, cancelling it if the client disconnects first (then raise ClientGone), or when `live` ends
    its responses at shutdown (then raise ServiceUnavailable).

    The request body must have been read already: from then on the only message left is the disconnect.
    """
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_wait_disconnect(request.receive))
    ended = asyncio.get_running_loop().create_future()

    def end() -> None:
        if not ended.done():
            ended.set_result(None)

    try:
        with live.track(end) if live is not None else nullcontext():
            await asyncio.wait({task, watch, ended}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watch.cancel()
        raise
    gone = watch.done()
    watch.cancel()
    if task.done() or not (gone or ended.done()):
        return task.result()
    # Cancel the work and let its cleanup (engine aborts) run before answering.
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled() and task.exception() is None and hasattr(task.result(), "aclose"):
        await task.result().aclose()  # a stream that was ready but will never be sent
    if gone:
        raise ClientGone()
    raise ServiceUnavailable(SHUTTING_DOWN)  # ended at shutdown: the client is still there and gets a 503


class EventStreamResponse(StreamingResponse):
    """Server-sent events. Stops at a client disconnect and always closes the body iterator.

    With `live`, the server can end the stream at shutdown: the client then gets an error event (503, "the
    server is shutting down") and `data: [DONE]`, as after any error mid-stream, instead of a cut connection.
    """

    media_type = "text/event-stream"

    def __init__(self, content, live: LiveResponses | None = None):
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.live = live

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = finished = ended = False

        async def tracked(message) -> None:
            nonlocal started, finished
            await send(message)
            started = True
            finished = message["type"] == "http.response.body" and not message.get("more_body", False)

        try:
            async with anyio.create_task_group() as tg:

                def end() -> None:
                    nonlocal ended
                    ended = True
                    tg.cancel_scope.cancel()

                async def stream() -> None:
                    try:
                        await self.stream_response(tracked)
                    except OSError:  # the connection broke while sending
                        pass
                    tg.cancel_scope.cancel()

                with self.live.track(end) if self.live is not None else nullcontext():
                    tg.start_soon(stream)
                    await _wait_disconnect(receive)
                    tg.cancel_scope.cancel()
            if ended and not finished:
                if not started:
                    await send({"type": "http.response.start", "status": self.status_code,
                                "headers": self.raw_headers})
                last = error_event(ServiceUnavailable(SHUTTING_DOWN)) + "data: [DONE]\n\n"
                await send({"type": "http.response.body", "body": last.encode(), "more_body": False})
        except OSError:  # the connection broke while sending the last event
            pass
        finally:
            await self.body_iterator.aclose()


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a graceful drain on SIGTERM / SIGINT.

    uvicorn on its own stops listening at once (new requests get connection errors), waits, then cancels what
    runs (streams end with a transport error), and re-raises the signal, so the process dies of it. Here the first
    signal calls `on_drain` (the app answers 503 from then on) and keeps the socket open, so that clients and load
    balancers get a clear 503; running requests may finish until `shutdown_timeout` seconds have passed, then the
    rest are ended through `live`; then uvicorn shuts down as usual and `run` returns (exit status 0). A second
    signal ends the running requests at once.
    """

    FLUSH_SECONDS = 1.0  # for the ended responses to send their last event

    def __init__(self, config: uvicorn.Config, *, live: LiveResponses, on_drain: Callable[[], None],
                 shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT):
        super().__init__(config)
        self.live = live
        self.on_drain = on_drain
        self.shutdown_timeout = shutdown_timeout
        self._deadline: float | None = None  # when running requests are ended
        self._ended_at: float | None = None
        self._logged = False

    def handle_exit(self, sig: int, frame) -> None:
        # A signal handler: it only sets attributes (on_drain too); on_tick acts on them in the event loop.
        # Not calling super() for these signals: it would record the signal and raise it again after the shutdown.
        if sig not in (signal.SIGINT, signal.SIGTERM):
            return super().handle_exit(sig, frame)
        now = time.monotonic()
        if self._deadline is None:
            self._deadline = now + self.shutdown_timeout
            self.on_drain()
        elif self._ended_at is None:
            self._deadline = now
        else:  # a third signal: stop waiting for anything
            self.force_exit = self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        if self._deadline is None:
            return False
        if not self._logged:
            self._logged = True
            log.info("shutting down: new requests get 503; %d running request(s) may finish within %g s",
                     len(self.server_state.tasks), self.shutdown_timeout)
        now = time.monotonic()
        if not self.server_state.tasks:  # uvicorn's own count: one task per request in flight
            return True
        if self._ended_at is None:
            if now < self._deadline:
                return False
            log.info("shutting down: ending %d running request(s)", self.live.end_all())
            self._ended_at = now
        return now >= self._ended_at + self.FLUSH_SECONDS
