"""A streamed response (POST /v1/responses with `stream: true`): a chat completion's chunk stream, read as it comes,
becomes the Responses API's typed server-sent events, each `event: <type>` + `data: {..., "sequence_number": n}`:

    response.created, response.in_progress
    response.output_item.added (a message), response.content_part.added (output_text)
    response.output_text.delta ... response.output_text.done, response.content_part.done, response.output_item.done
    for each tool call: response.output_item.added (a function_call), response.function_call_arguments.delta,
        response.function_call_arguments.done, response.output_item.done
    response.completed, or response.incomplete (max_output_tokens, content_filter)

An error after the start (the engine stopped, the store could not take the response) is an `error` event and then
response.failed. Tool calls come whole when the reply ends (the chat path holds a call back until it parses), so
their arguments are one delta.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from hearth.server.common import EventStream
from hearth.server.errors import to_api_error
from hearth.server.protocol.responses import (FunctionCallOutput, IncompleteDetails, InputTokensDetails, OutputMessage,
                                              OutputTextPart, ResponseError, ResponseObject, ResponseUsage)

Save = Callable[[ResponseObject], Awaitable[None]]


def stream_events(chat: EventStream, base: dict[str, Any], save: Save | None) -> EventStream:
    """The events of the response `base` (responses.echo) answered by `chat`'s chunks; `save` stores the finished
    response before response.completed is sent."""
    events = _Events()
    output: list = []  # finished items
    message: dict[str, Any] | None = None  # the message item being streamed: id, index, text pieces, logprobs

    def open_message() -> list[str]:
        nonlocal message
        message = {"id": new_id("msg"), "index": len(output), "text": [], "logprobs": [], "unsent": []}
        item = OutputMessage(id=message["id"], status="in_progress", content=[]).model_dump()
        part = OutputTextPart(text="").model_dump()
        return [events("response.output_item.added", output_index=message["index"], item=item),
                events("response.content_part.added", item_id=message["id"], output_index=message["index"],
                       content_index=0, part=part)]

    def close_message(status: str) -> list[str]:
        nonlocal message
        m, message = message, None
        text = "".join(m["text"])
        part = OutputTextPart(text=text, logprobs=m["logprobs"])
        item = OutputMessage(id=m["id"], status=status, content=[part])
        output.append(item)
        where = dict(item_id=m["id"], output_index=m["index"], content_index=0)
        return [events("response.output_text.done", **where, text=text, logprobs=m["logprobs"]),
                events("response.content_part.done", **where, part=part.model_dump()),
                events("response.output_item.done", output_index=m["index"], item=item.model_dump())]

    def call(c: dict[str, Any]) -> list[str]:
        fn = c["function"]
        item = FunctionCallOutput(id=new_id("fc"), call_id=c["id"], name=fn["name"], arguments=fn["arguments"])
        index = len(output)
        output.append(item)
        where = dict(item_id=item.id, output_index=index)
        return [events("response.output_item.added", output_index=index,
                       item=item.model_copy(update={"arguments": "", "status": "in_progress"}).model_dump()),
                events("response.function_call_arguments.delta", **where, delta=item.arguments),
                events("response.function_call_arguments.done", **where, name=item.name, arguments=item.arguments),
                events("response.output_item.done", output_index=index, item=item.model_dump())]

    async def run() -> AsyncIterator[str]:
        started = ResponseObject(**base, status="in_progress").model_dump()
        yield events("response.created", response=started)
        yield events("response.in_progress", response=started)
        reason, usage, error = None, {}, None
        try:
            async for line in chat:
                chunk = _chunk(line)
                if chunk is None:
                    continue
                if "error" in chunk:
                    error = chunk["error"]
                    break
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    text = delta.get("content") or ""
                    lps = logprobs_of((choice.get("logprobs") or {}).get("content"))
                    if text or lps:
                        for e in open_message() if message is None else ():
                            yield e
                        message["text"].append(text)
                        message["logprobs"] += lps
                        message["unsent"] += lps
                        if text:
                            yield events("response.output_text.delta", item_id=message["id"],
                                         output_index=message["index"], content_index=0, delta=text,
                                         logprobs=message["unsent"])
                            message["unsent"] = []
                    for c in delta.get("tool_calls") or []:
                        for e in (close_message("completed") if message is not None else []) + call(c):
                            yield e
                    reason = choice.get("finish_reason") or reason
        except Exception as e:  # noqa: BLE001 - the status line is sent: report it in the stream
            error = to_api_error(e).body()["error"]
        finally:
            await chat.aclose()
        if error is None:
            if message is None and not output:  # an empty answer is still a message
                for e in open_message():
                    yield e
            if message is not None:
                for e in close_message("incomplete" if reason in ("length", "content_filter") else "completed"):
                    yield e
            response = finished(base, output, reason, usage)
            try:
                if save is not None:
                    await save(response)
                yield events("response.completed" if response.status == "completed" else "response.incomplete",
                             response=response.model_dump())
                return
            except Exception as e:  # noqa: BLE001 - the response could not be stored: it fails
                error = to_api_error(e).body()["error"]
        yield events("error", code=error.get("code") or error.get("type"), message=error["message"],
                     param=error.get("param"))
        failed = ResponseObject(**base, status="failed", output=output,
                                error=ResponseError(code=error.get("code") or "server_error", message=error["message"]))
        yield events("response.failed", response=failed.model_dump())

    return EventStream(chat.group, run())


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def finished(base: dict[str, Any], output: list, reason: str | None, usage: dict[str, Any]) -> ResponseObject:
    """The response once generation has ended with `reason` (the chat finish reason); `usage`: the chat's."""
    n_input, n_output = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    incomplete = {"length": "max_output_tokens", "content_filter": "content_filter"}.get(reason or "")
    for item in output:
        if incomplete and isinstance(item, OutputMessage):
            item.status = "incomplete"
    return ResponseObject(**base, status="incomplete" if incomplete else "completed", output=output,
                          completed_at=int(time.time()),
                          incomplete_details=IncompleteDetails(reason=incomplete) if incomplete else None,
                          usage=ResponseUsage(input_tokens=n_input, output_tokens=n_output,
                                              total_tokens=n_input + n_output,
                                              input_tokens_details=InputTokensDetails(cached_tokens=cached)))


def logprobs_of(entries: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Chat logprob entries → the Responses API's (the same fields)."""
    return [{"token": e["token"], "logprob": e["logprob"], "bytes": e.get("bytes") or [],
             "top_logprobs": [{"token": t["token"], "logprob": t["logprob"], "bytes": t.get("bytes") or []}
                              for t in e.get("top_logprobs", [])]} for e in entries or []]


class _Events:
    """Numbered server-sent events."""

    def __init__(self) -> None:
        self.sequence = 0

    def __call__(self, kind: str, **fields: Any) -> str:
        data = json.dumps({"type": kind, "sequence_number": self.sequence, **fields}, ensure_ascii=False)
        self.sequence += 1
        return f"event: {kind}\ndata: {data}\n\n"


def _chunk(line: str) -> dict[str, Any] | None:
    """One chat SSE event as JSON (None: `[DONE]`)."""
    payload = line.removeprefix("data: ").strip()
    return None if payload == "[DONE]" or not payload else json.loads(payload)
