"""Ollama's answers (hearth/server/ollama.py): the OpenAI chunks a /v1 service streams, read and written in Ollama's
shapes, as newline-delimited JSON (`lines`) or one object (`whole`).

A chat answer is `{"model", "created_at", "message": {"role": "assistant", "content", "tool_calls"?}, "done": false}`
per piece of text, then a `done` line with `done_reason` and the counts and durations (nanoseconds) Ollama reports:
`total_duration`, `load_duration` (0: the model is loaded before the server listens), `prompt_eval_count`,
`prompt_eval_duration` (until the engine had the first token), `eval_count`, `eval_duration` (the rest). A generate
answer has `response` for `message`. Tool calls come whole, their arguments as objects.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from starlette.types import Receive, Scope, Send

from hearth import safejson
from hearth.server.common import EventStream
from hearth.server.errors import APIError
from hearth.server.protocol import MAX_JSON_DEPTH
from hearth.server.transport import SHUTTING_DOWN, EventStreamResponse

DONE_REASONS = {"tool_calls": "stop"}  # OpenAI's finish reasons Ollama has no word for
STATUS_OF = {"invalid_request_error": 400, "not_found_error": 404, "rate_limit_error": 429,
             "service_unavailable_error": 503}  # an error event's type -> the status it would have had


def chat_shape(text: str, calls: list[dict]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = calls
    return {"message": message}


def generate_shape(text: str, calls: list[dict]) -> dict[str, Any]:
    return {"response": text}


@dataclass
class Answer:
    """What the OpenAI stream of one answer has said: its finish, token counts, timings (perf_counter_ns)."""

    started: int
    first: int = 0
    reason: str = "stop"
    prompt: int = 0
    generated: int = 0
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)  # OpenAI's tool-call deltas, merged by index

    def read(self, chunk: dict[str, Any]) -> tuple[str, list[dict], list[dict]]:
        """(text, tool calls, logprobs) in one chunk; the calls come whole, with the chunk that finishes the answer.
        An error event raises it, with the status it would have had."""
        if "error" in chunk:
            err = chunk["error"]
            raise APIError(str(err.get("message")), status=STATUS_OF.get(err.get("type"), 500))
        if chunk.get("usage"):
            self.prompt, self.generated = chunk["usage"]["prompt_tokens"], chunk["usage"]["completion_tokens"]
        text, calls, lps = "", [], []
        for c in chunk.get("choices") or ():
            delta = c.get("delta") or {}
            text += c.get("text") or delta.get("content") or ""
            for d in delta.get("tool_calls") or ():
                call = self.calls.setdefault(d.get("index", len(self.calls)), {"id": None, "name": "", "arguments": ""})
                f = d.get("function") or {}
                call["id"] = d.get("id") or call["id"]
                call["name"] += f.get("name") or ""
                call["arguments"] += f.get("arguments") or ""
            lps += _logprobs(c.get("logprobs"))
            if c.get("finish_reason"):
                self.reason = DONE_REASONS.get(c["finish_reason"], c["finish_reason"])
                calls = [_call(k, x) for k, x in sorted(self.calls.items())]
        return text, calls, lps

    def done(self) -> dict[str, Any]:
        end = time.perf_counter_ns()
        return {"done": True, "done_reason": self.reason, "total_duration": end - self.started, "load_duration": 0,
                "prompt_eval_count": self.prompt, "prompt_eval_duration": self.first - self.started,
                "eval_count": self.generated, "eval_duration": end - self.first}


def _call(index: int, c: dict[str, Any]) -> dict[str, Any]:
    """A tool call as Ollama's: its arguments an object (tool_calls.parse read them, depth-checked; a call cut short
    by the token budget keeps its unfinished text)."""
    try:
        args = safejson.loads(c["arguments"] or "{}", max_depth=MAX_JSON_DEPTH)
    except ValueError:
        args = c["arguments"]
    return {"id": c["id"], "function": {"index": index, "name": c["name"], "arguments": args}}


def _logprobs(lp: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Chat logprobs (already Ollama's shape: token, logprob, bytes, top_logprobs) or the legacy completions lists."""
    if not lp:
        return []
    if "content" in lp:
        return list(lp["content"] or [])
    return [{"token": t, "logprob": v, "top_logprobs": [{"token": k, "logprob": x} for k, x in (top or {}).items()]}
            for t, v, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"])]


def _chunks(events: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
    async def read():
        async for event in events:
            data = event.removeprefix("data: ").strip()
            if data and data != "[DONE]":
                yield json.loads(data)

    return read()


async def lines(stream: EventStream, answer: Answer, shape, model: str) -> AsyncIterator[str]:
    """The answer as Ollama streams it: a line per piece of text (or the calls), then the `done` line; an error after
    the status was sent is one `{"error": ...}` line, which Ollama's clients raise."""
    try:
        async for chunk in _chunks(stream):
            try:
                text, calls, lps = answer.read(chunk)
            except APIError as e:
                yield line({"error": e.message})
                return
            if text or calls or lps:
                yield line({"model": model, "created_at": now(), **shape(text, calls),
                             **({"logprobs": lps} if lps else {}), "done": False})
        yield line({"model": model, "created_at": now(), **shape("", []), **answer.done()})
    finally:
        await stream.aclose()


async def whole(begin: Awaitable[EventStream], answer: Answer, shape, model: str) -> dict[str, Any]:
    stream = await begin
    texts, calls, lps = [], [], []
    try:
        async for chunk in _chunks(stream):
            text, c, lp = answer.read(chunk)
            texts.append(text)
            calls += c
            lps += lp
    finally:
        await stream.aclose()
    return {"model": model, "created_at": now(), **shape("".join(texts), calls),
            **({"logprobs": lps} if lps else {}), **answer.done()}


def line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False) + "\n"


def now() -> str:
    return rfc3339(datetime.now(timezone.utc))


def rfc3339(t: datetime) -> str:
    return t.isoformat(timespec="microseconds").replace("+00:00", "Z")


class NDJSONResponse(EventStreamResponse):
    """Newline-delimited JSON, with EventStreamResponse's disconnect and shutdown handling. At shutdown that ends a
    stream with an SSE error event; an Ollama client gets it as one JSON error line instead."""

    media_type = "application/x-ndjson"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def lines(message) -> None:
            if message["type"] == "http.response.body" and message.get("body", b"").startswith(b"data: "):
                message = {**message, "body": line({"error": SHUTTING_DOWN}).encode()}
            await send(message)

        await super().__call__(scope, receive, lines)
