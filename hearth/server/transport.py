"""HTTP plumbing under the routes: bounded JSON bodies, client-disconnect handling, server-sent events.

A client that goes away must not keep using the engine: non-streaming work runs against a watcher of
the connection and is cancelled when it drops; a stream's body iterator is always closed when the
response ends, however it ends, and closing it aborts its engine requests.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anyio
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from hearth.server.errors import BadRequest, ClientGone, PayloadTooLarge, from_validation_error

DEFAULT_MAX_BODY_BYTES = 1 << 20


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


async def until_disconnect(request: Request, work):
    """Await `work`, cancelling it if the client disconnects first (then raise ClientGone).

    The request body must have been read already: from then on the only message left is the disconnect.
    """
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_wait_disconnect(request.receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watch.cancel()
        raise
    if not watch.done():
        watch.cancel()
        return task.result()
    # Gone. Cancel the work and let its cleanup (engine aborts) run before answering nobody.
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled() and task.exception() is None and hasattr(task.result(), "aclose"):
        await task.result().aclose()  # a stream that was ready but will never be sent
    raise ClientGone()


class EventStreamResponse(StreamingResponse):
    """Server-sent events. Stops at a client disconnect and always closes the body iterator."""

    media_type = "text/event-stream"

    def __init__(self, content):
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tg:

                async def stream() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:  # the connection broke while sending
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(stream)
                await _wait_disconnect(receive)
                tg.cancel_scope.cancel()
        finally:
            await self.body_iterator.aclose()
