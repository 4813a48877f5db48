"""POST /v1/responses (OpenAI's Responses API) over the chat path: a request becomes a ChatCompletionRequest, ChatService
answers it (template, tools, structured output, guard, capture, engine), and its answer or chunk stream becomes a
response object or the Responses API's typed events (responses_stream.py).

    POST   /v1/responses                        input (text or items), instructions, tools, text.format, stream...
    GET    /v1/responses/{id}                   a stored response
    GET    /v1/responses/{id}/input_items       its input items (after, limit, order)
    DELETE /v1/responses/{id}                   forget it

Translation, both ways:
- `instructions` → a system message first; message items → messages (text parts joined); function_call items → the
  assistant's tool_calls (consecutive calls in one turn); function_call_output items → tool messages.
- `tools` (type function) → chat tools; `tool_choice` {"type": "function", "name"} → a named chat choice;
  allowed_tools → those tools only, in its mode; `text.format` → response_format; `max_output_tokens` →
  max_completion_tokens; `include: ["message.output_text.logprobs"]` / `top_logprobs` → logprobs.
- The answer's text → one message item (output_text), its tool calls → function_call items; finish reason `length`
  → status incomplete (max_output_tokens), `content_filter` → incomplete (content_filter).
- `store` (default true): the response, its input items and the conversation so far are kept in a ResponseStore
  (hearth/records/responses_store.py) in a thread of their own; `previous_response_id` puts that conversation and
  the stored response's output before the new input. A database that cannot take a write fails that request (503).
"""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from fastapi import Request
from pydantic import ValidationError
from starlette.responses import JSONResponse, Response

from hearth.server import fields
from hearth.server.errors import APIError, BadRequest, NotFound, ServiceUnavailable, from_validation_error
from hearth.server.protocol import ChatCompletionRequest, ChatCompletionResponse
from hearth.server.protocol.responses import (AllowedTools, FunctionCallItem, FunctionCallOutput, FunctionCallOutputItem,
                                              FunctionChoice, InputItemList, MessageItem, OutputMessage, OutputTextPart,
                                              ResponseObject, ResponsesRequest)
from hearth.server.responses_stream import finished, logprobs_of, new_id, stream_events
from hearth.server.transport import parse, read_json

if TYPE_CHECKING:
    from hearth.records.responses_store import ResponseStore, StoredResponse
    from hearth.server.common import EventStream
    from hearth.server.serving_chat import ChatService

MAX_PAGE = 100
SAMPLING_EXTENSIONS = ("seed", "stop", "presence_penalty", "frequency_penalty", "top_k", "min_p", "repetition_penalty",
                       "ignore_eos")
# chat parameter names → the Responses request's, for errors found on the chat side
RENAMES = (("response_format.json_schema.schema", "text.format.schema"), ("response_format", "text.format"),
           ("max_completion_tokens", "max_output_tokens"), ("tool_choice.function.name", "tool_choice.name"),
           ("messages", "input"))


# ------------------------------------------------------------------------------------------- items and messages


def input_items(req: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's input as stored items (OpenAI's shapes, with ids): a string is one user message; reasoning
    items are left out."""
    if isinstance(req.input, str):
        return [_message("user", [{"type": "input_text", "text": req.input}])]
    out: list[dict[str, Any]] = []
    for item in req.input:
        if isinstance(item, MessageItem):
            kind = "output_text" if item.role == "assistant" else "input_text"
            out.append(_message(item.role, [{"type": kind, "text": item.text}]))
        elif isinstance(item, FunctionCallItem):
            out.append({"id": new_id("fc"), "type": "function_call", "call_id": item.call_id, "name": item.name,
                        "arguments": item.arguments, "status": "completed"})
        elif isinstance(item, FunctionCallOutputItem):
            out.append({"id": new_id("fco"), "type": "function_call_output", "call_id": item.call_id,
                        "output": item.text, "status": "completed"})
    return out


def _message(role: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": new_id("msg"), "type": "message", "role": role, "content": content, "status": "completed"}


def chat_messages(items: list[dict[str, Any]], instructions: str | None) -> list[dict[str, Any]]:
    """Stored items (input and earlier output) → chat messages."""
    out: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if instructions else []
    for item in items:
        kind = item.get("type")
        if kind == "message":
            text = "\n".join(p.get("text") or p.get("refusal") or "" for p in item["content"])
            out.append({"role": item["role"], "content": text})
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":  # the same turn: its text, then its calls
                last["tool_calls"] = [*(last.get("tool_calls") or []), call]
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            out.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
    if not out:
        raise BadRequest("the input holds no message or function call to answer", param="input")
    return out


def chat_request(req: ResponsesRequest, messages: list[dict[str, Any]]) -> ChatCompletionRequest:
    body: dict[str, Any] = {"model": req.model, "messages": messages, "stream": req.stream,
                            "temperature": req.temperature, "top_p": req.top_p,
                            "max_completion_tokens": req.max_output_tokens, "metadata": req.metadata,
                            "parallel_tool_calls": req.parallel_tool_calls}
    body.update((k, getattr(req, k)) for k in SAMPLING_EXTENSIONS)
    if req.stream:
        body["stream_options"] = {"include_usage": True}
    if req.wants_logprobs or req.top_logprobs:
        body.update(logprobs=True, top_logprobs=req.top_logprobs or 0)
    tools, choice = list(req.tools or []), req.tool_choice
    if isinstance(choice, AllowedTools):
        allowed = {t["name"] for t in choice.tools}
        tools, choice = [t for t in tools if t.name in allowed], choice.mode
    if tools:
        body["tools"] = [{"type": "function", "function": t.model_dump(
            include={"name", "description", "parameters", "strict"}, exclude_none=True)} for t in tools]
    if isinstance(choice, FunctionChoice):
        body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    elif choice is not None and tools:
        body["tool_choice"] = choice
    fmt = req.text.format if req.text is not None else None
    if fmt is not None and fmt.type == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif fmt is not None and fmt.type == "json_schema":
        spec = {"name": fmt.name, "description": fmt.description, "schema": fmt.schema_, "strict": fmt.strict}
        body["response_format"] = {"type": "json_schema", "json_schema": {k: v for k, v in spec.items() if v is not None}}
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as e:  # a check across fields, found on the chat side: named as the request names it
        raise renamed(from_validation_error(e, body)) from None


def renamed(err: APIError) -> APIError:
    """A chat-side error told in the Responses request's terms."""
    if err.param:
        param = re.sub(r"^tools\.(\d+)\.function\.", r"tools.\1.", err.param)
        for chat, ours in RENAMES:
            if param == chat or param.startswith(chat + "."):
                param = ours if chat == "messages" else ours + param[len(chat):]
                break
        err.param = param
    err.message = (err.message.replace("max_tokens", "max_output_tokens").replace("the messages take ", "the input takes ")
                   .replace("the messages", "the input"))
    return err


# ------------------------------------------------------------------------------------------- the response object


def echo(req: ResponsesRequest, rid: str, model: str, stored: bool) -> dict[str, Any]:
    """What a response repeats of its request."""
    fmt = req.text.format.model_dump(by_alias=True, exclude_none=True) if req.text and req.text.format else None
    choice = req.tool_choice
    return dict(id=rid, model=model, instructions=req.instructions, max_output_tokens=req.max_output_tokens,
                parallel_tool_calls=req.parallel_tool_calls is not False, previous_response_id=req.previous_response_id,
                store=stored, temperature=1.0 if req.temperature is None else req.temperature,
                top_p=1.0 if req.top_p is None else req.top_p, top_logprobs=req.top_logprobs or 0,
                text={"format": fmt or {"type": "text"}, "verbosity": (req.text and req.text.verbosity) or "medium"},
                tool_choice=(choice.model_dump() if choice is not None and not isinstance(choice, str)
                             else choice or "auto"),
                tools=[t.model_dump(exclude_none=True) for t in req.tools or []], truncation=req.truncation or "disabled",
                user=req.user, metadata=req.metadata or {}, service_tier=req.service_tier or "default")


def from_chat(base: dict[str, Any], answer: ChatCompletionResponse) -> ResponseObject:
    choice = answer.choices[0]
    msg = choice.message
    output: list = []
    calls = msg.tool_calls or []
    if msg.content or not calls:
        lps = logprobs_of([e.model_dump() for e in choice.logprobs.content or []]) if choice.logprobs else []
        output.append(OutputMessage(id=new_id("msg"), content=[OutputTextPart(text=msg.content or "", logprobs=lps)]))
    output += [FunctionCallOutput(id=new_id("fc"), call_id=c.id, name=c.function.name, arguments=c.function.arguments)
               for c in calls]
    return finished(base, output, choice.finish_reason, answer.usage.model_dump())


# ------------------------------------------------------------------------------------------- serving


class ResponsesService:
    """The Responses API over a ChatService, with a ResponseStore (None: nothing is kept; `store` is answered
    false)."""

    def __init__(self, chat: ChatService, store: ResponseStore | None = None):
        self.chat = chat
        self.ctx = chat.ctx
        self.store = store
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="hearth-responses")

    async def _disk(self, fn, *args):
        """`fn(*args)` in the store's thread; a database that cannot answer is a 503 for this request only."""
        from hearth.records.responses_store import ResponsesUnavailable

        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except ResponsesUnavailable as e:
            raise ServiceUnavailable(str(e)) from None

    def _store(self, param: str) -> ResponseStore:
        if self.store is None:
            raise NotFound("responses are not kept on this server (hearth serve --no-store-responses)", param=param)
        return self.store

    async def stored(self, rid: str, param: str = "response_id") -> StoredResponse:
        found = await self._disk(self._store(param).get, rid)
        if found is None:
            raise NotFound(f"no stored response with id '{rid[:100]}'", param=param)
        return found

    async def create(self, req: ResponsesRequest) -> ResponseObject | EventStream:
        if req.metadata is not None:
            from hearth.records.capture import InvalidMetadata, check_metadata

            try:
                check_metadata(req.metadata)  # OpenAI's limits, as for chat completions
            except InvalidMetadata as e:
                raise BadRequest(str(e), param="metadata") from None
        ctx_len = self.ctx.engine.max_model_len
        if req.max_output_tokens is not None and req.max_output_tokens >= ctx_len:
            raise BadRequest(f"max_output_tokens is {req.max_output_tokens}, but this model's context holds "
                             f"{ctx_len} tokens, the input included", param="max_output_tokens",
                             code="context_length_exceeded")
        before: list[dict[str, Any]] = []
        if req.previous_response_id is not None:
            prev = await self.stored(req.previous_response_id, "previous_response_id")
            before = prev.conversation + prev.response.get("output", [])
        items = input_items(req)
        conversation = before + items
        creq = chat_request(req, chat_messages(conversation, req.instructions))
        try:
            answer = await self.chat.create(creq)
        except APIError as e:
            raise renamed(e) from None
        keep = self.store is not None and req.store is not False
        rid = new_id("resp")
        base = echo(req, rid, self.ctx.check_model(req.model), keep)
        save = (lambda response: self._save(rid, response, items, conversation)) if keep else None
        if isinstance(answer, ChatCompletionResponse):
            response = from_chat(base, answer)
            if save is not None:
                await save(response)
            return response
        return stream_events(answer, base, save)

    async def _save(self, rid: str, response: ResponseObject, items: list, conversation: list) -> None:
        from hearth.records.responses_store import StoredResponse

        await self._disk(self.store.put, StoredResponse(rid, response.model_dump(), items, conversation))

    async def delete(self, rid: str) -> None:
        if not await self._disk(self._store("response_id").delete, rid):
            raise NotFound(f"no stored response with id '{rid[:100]}'", param="response_id")

    async def input_items(self, rid: str, after: str | None, limit: int, order: str) -> InputItemList:
        items = list((await self.stored(rid)).input_items)
        if order == "desc":
            items.reverse()
        if after is not None:
            ids = [i.get("id") for i in items]
            if after not in ids:
                raise NotFound(f"no input item with id '{after[:100]}' in this response", param="after")
            items = items[ids.index(after) + 1:]
        page = items[:limit]
        return InputItemList(data=page, first_id=page[0]["id"] if page else None,
                             last_id=page[-1]["id"] if page else None, has_more=len(items) > limit)


def _query(request: Request) -> tuple[str | None, int, str]:
    q = request.query_params
    raw = q.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise BadRequest(f"limit must be an integer from 1 to {MAX_PAGE}, not {raw[:40]!r}", param="limit")
    order = q.get("order", "desc")
    if order not in ("asc", "desc"):
        raise BadRequest(f"order must be 'asc' or 'desc', not {order[:40]!r}", param="order")
    return q.get("after"), int(raw), order


def install(app, chat: ChatService, store: ResponseStore | None, gates: list, run, max_body_bytes: int,
            strict: bool = False) -> None:
    """The routes, over `chat` (a ChatService) and `store` (a ResponseStore, or None); `gates`: the app's
    dependencies (key, draining), `run`: the app's way to answer work (disconnects, SSE); `strict`: unknown top-level
    fields are a 400 rather than ignored with a Warning header (fields.py)."""
    service = ResponsesService(chat, store)
    known = frozenset(ResponsesRequest.model_fields)

    @app.post("/v1/responses", dependencies=gates)
    async def create_response(request: Request) -> Response:
        data = await read_json(request, max_body_bytes)
        ignored = fields.tolerate(data, known, strict, "responses")
        response = await run(request, service.create(parse(ResponsesRequest, data)))
        if ignored:
            response.headers["Warning"] = fields.warning(ignored)
        return response

    @app.get("/v1/responses/{response_id}", dependencies=gates)
    async def get_response(response_id: str) -> JSONResponse:
        return JSONResponse((await service.stored(response_id)).response)

    @app.get("/v1/responses/{response_id}/input_items", dependencies=gates)
    async def get_input_items(response_id: str, request: Request) -> Response:
        page = await service.input_items(response_id, *_query(request))
        return Response(page.model_dump_json(), media_type="application/json")

    @app.delete("/v1/responses/{response_id}", dependencies=gates)
    async def delete_response(response_id: str) -> JSONResponse:
        await service.delete(response_id)
        return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})
