"""Ollama's API on `hearth serve`, so that Ollama's clients and the apps that speak only Ollama find a server:

    GET  /api/tags        the served model (and its adapters) as "<name>:latest"
    POST /api/show        its details, model_info, chat template, capabilities
    GET  /api/ps          what is loaded (everything, while the server runs)
    GET  /api/version     the Ollama API version these routes follow
    POST /api/chat        messages (tools, format, options) → an answer; newline-delimited JSON unless stream: false
    POST /api/generate    a prompt through the chat template (or verbatim, raw) → an answer, streamed the same way
    POST /api/embed       texts → vectors (and /api/embeddings, the older one-prompt route)

Generation is not done twice: each request is translated into hearth's OpenAI request (protocol/) and answered by the
same services as /v1 (ChatService, CompletionService, EmbeddingService), so the guard, the capture, tool calls,
structured output and the access log apply as they do there. The answer comes back as that service's stream of
OpenAI chunks, read here and written in Ollama's shapes: `message.tool_calls` with arguments as objects, `done`,
`done_reason`, durations in nanoseconds. Errors are Ollama's `{"error": "..."}` with the status errors.py decides:
the routes live in an app of their own mounted at /api, whose exception handlers write that shape (the middleware of
the main app, BrowserGuard's refusals included, still runs first and answers in OpenAI's shape).

Model names follow Ollama's `model:tag` rule: "smollm2" and "smollm2:latest" both mean the served "smollm2"; other
names follow the server's rule for /v1 (answered by the one model unless --strict-model-names).
The request bodies are protocol/ollama.py's; the answers are written by ollama_answer.py; what the model routes say
about the model comes from ollama_models.py.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from hearth.errors import HearthError
from hearth.server.common import EventStream, ServerContext
from hearth.server.errors import APIError, BadRequest, ClientGone, NotFound, to_api_error
from hearth.server.ollama_answer import Answer, NDJSONResponse, chat_shape, generate_shape, lines, now, whole
from hearth.server.ollama_models import ModelInfo
from hearth.server.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from hearth.server.protocol.ollama import (ChatRequest, EmbeddingsRequest, EmbedRequest, GenerateFields,
                                           GenerateRequest, Message, Options, ShowRequest)
from hearth.server.serving_chat import ChatService
from hearth.server.serving_completion import CompletionService
from hearth.server.serving_embedding import EmbeddingService
from hearth.server.transport import LiveResponses, parse, read_json, until_disconnect

log = logging.getLogger("hearth.server")

VERSION = "0.12.0"  # the Ollama release whose API these routes follow: clients gate features (tools, format) on it


def install(app: FastAPI, ctx: ServerContext, gates: Sequence, max_body_bytes: int) -> None:
    """Mount Ollama's routes at /api on `app` (build_app's), behind the same `gates` (API key, draining) as /v1."""
    api = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)  # not in /openapi.json: Ollama's own shapes
    _errors(api)
    ollama, info = Ollama(ctx, app.state.live), ModelInfo(ctx)
    deps = list(gates)

    async def body(request: Request, model):
        return parse(model, await read_json(request, max_body_bytes))

    @api.get("/version", dependencies=deps)
    async def version() -> Response:
        return JSONResponse({"version": VERSION})

    @api.get("/tags", dependencies=deps)
    async def tags() -> Response:
        return JSONResponse({"models": [info.entry(n) for n in (*ctx.model_names, *ctx.adapters)]})

    @api.get("/ps", dependencies=deps)
    async def ps() -> Response:
        return JSONResponse({"models": [info.running(n) for n in (ctx.model_name, *ctx.adapters)]})

    @api.post("/show", dependencies=deps)
    async def show(request: Request) -> Response:
        req = await body(request, ShowRequest)
        if not (req.model or req.name):
            raise BadRequest("'model' is required", param="model")
        return JSONResponse(info.show(ollama.served(req.model or req.name, lookup=True)))

    @api.post("/chat", dependencies=deps)
    async def chat(request: Request) -> Response:
        started = time.perf_counter_ns()
        req = await body(request, ChatRequest)
        return await ollama.answer(request, req, chat_shape, started)

    @api.post("/generate", dependencies=deps)
    async def generate(request: Request) -> Response:
        started = time.perf_counter_ns()
        req = await body(request, GenerateRequest)
        for field, why in (("images", "this model reads text only"), ("suffix", "fill-in-the-middle is not supported"),
                           ("context", "the deprecated context memory is not supported; send the conversation to "
                                       "/api/chat as messages")):
            if getattr(req, field):
                raise BadRequest(f"{field}: {why}", param=field)
        return await ollama.answer(request, req, generate_shape, started)

    @api.post("/embed", dependencies=deps)
    async def embed(request: Request) -> Response:
        started = time.perf_counter_ns()
        req = await body(request, EmbedRequest)
        texts = [req.input] if isinstance(req.input, str) else req.input
        vectors, n = await ollama.embed(request, req.model, [] if texts == [""] else texts, req.truncate,
                                        req.dimensions)
        return JSONResponse({"model": req.model, "embeddings": vectors, "total_duration": time.perf_counter_ns() - started,
                             "load_duration": 0, "prompt_eval_count": n})

    @api.post("/embeddings", dependencies=deps)
    async def embeddings(request: Request) -> Response:
        req = await body(request, EmbeddingsRequest)
        vectors, _ = await ollama.embed(request, req.model, [req.prompt] if req.prompt else [], True, None)
        return JSONResponse({"embedding": vectors[0] if vectors else []})

    app.mount("/api", api)


def _errors(api: FastAPI) -> None:
    """Errors as Ollama writes them, `{"error": "..."}`, with the status errors.to_api_error decides."""

    async def handler(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, StarletteHTTPException) and exc.status_code in (404, 405):
            where = f"{request.method} {request.url.path}"
            exc = NotFound(f"no such endpoint: {where}") if exc.status_code == 404 else BadRequest(
                f"method not allowed: {where}", status=405, headers=dict(exc.headers or {}))
        err = to_api_error(exc)
        return JSONResponse({"error": err.message}, status_code=err.status, headers=err.headers)

    for cls in (APIError, HearthError, ValidationError, StarletteHTTPException, Exception):
        api.add_exception_handler(cls, handler)


class Ollama:
    """The routes' work over the server's context: names, translation to the /v1 services, answers, model details."""

    def __init__(self, ctx: ServerContext, live: LiveResponses):
        self.ctx, self.live = ctx, live
        self.chat, self.completion = ChatService(ctx), CompletionService(ctx)
        self.embedding = EmbeddingService(ctx)
        self._logged: set[str] = set()

    def served(self, name: str, lookup: bool = False) -> str:
        """The name to ask the /v1 services with: the served model or adapter an Ollama name means (the name, or the
        name without Ollama's default tag). Any other name follows the server's rule (check_model: answered by the one
        model, or 404 with --strict-model-names); a `lookup` (/api/show) names only real models, as /v1/models/{id}."""
        known = (*self.ctx.model_names, *self.ctx.adapters)
        if name not in known and name.endswith(":latest") and name[: -len(":latest")] in known:
            name = name[: -len(":latest")]
        self.ctx.check_model(name, lenient=not lookup)
        return name

    def ignoring(self, names: list[str]) -> None:
        """Log fields that change nothing here, each once (Ollama's clients send some with every request)."""
        new = [n for n in names if n not in self._logged]
        if new:
            self._logged.update(new)
            log.info("Ollama API: ignoring %s (accepted; hearth has no use for them)", ", ".join(new))

    # -- chat and generate ----------------------------------------------------------------------------------------
    async def answer(self, request: Request, req: GenerateFields, shape, started: int) -> Response:
        model = self.served(req.model)
        self.ignoring(self._ignored(req))
        if not _asks(req):  # Ollama's "load the model" request: it is loaded
            unload = req.keep_alive in (0, "0", "0s", "0m")
            return JSONResponse({"model": req.model, "created_at": now(), **shape("", []), "done": True,
                                 "done_reason": "unload" if unload else "load"})
        if isinstance(req, GenerateRequest) and req.raw:
            start = self._raw(req, model)
        else:
            start = self._chat(self._chat_body(req, model))
        answer = Answer(started)

        async def begin() -> EventStream:
            stream = await start
            answer.first = time.perf_counter_ns()  # the engine has the first token: the prompt is read
            return stream

        try:
            if req.stream:
                stream = await until_disconnect(request, begin(), self.live)
                return NDJSONResponse(EventStream(stream.group, lines(stream, answer, shape, req.model)), self.live)
            return JSONResponse(await until_disconnect(request, whole(begin(), answer, shape, req.model), self.live))
        except ClientGone:
            return Response(status_code=499)
        finally:
            start.close()  # not awaited if the client left first: no "never awaited" warning

    def _ignored(self, req: GenerateFields) -> list[str]:
        names = req.unknown()
        o = req.options
        if o is not None:
            names += [f"options.{k}" for k in o.unknown()]
            if o.num_ctx is not None and o.num_ctx != self.ctx.engine.max_model_len:
                names.append("options.num_ctx (the context is the server's --max-model-len)")
        if req.think:
            names.append("think (no thinking model)")
        if isinstance(req, GenerateRequest):
            names += ["template (the model's own chat template is used)"] if req.template else []
            names += ["system (raw)"] if req.raw and req.system else []
        if isinstance(req, ChatRequest):
            names += [f"messages.{i}.{k}" for i, m in enumerate(req.messages) for k in m.unknown()]
        return names

    def _chat_body(self, req: GenerateFields, model: str) -> dict[str, Any]:
        if isinstance(req, ChatRequest):
            messages = _messages(req.messages)
        else:
            messages = [{"role": "system", "content": req.system}] if req.system else []
            messages.append({"role": "user", "content": req.prompt})
        body = {"model": model, "messages": messages, **self._common(req)}
        if isinstance(req, ChatRequest) and req.tools:
            body["tools"] = [t.model_dump(include={"type": True, "function": {"name", "description", "parameters"}},
                                          exclude_none=True) for t in req.tools]
        if req.logprobs:
            body.update(logprobs=True, top_logprobs=req.top_logprobs or 0)
        return body

    def _common(self, req: GenerateFields) -> dict[str, Any]:
        """The OpenAI fields of a request's options and format (the stream is read here, usage included)."""
        body: dict[str, Any] = {"stream": True, "stream_options": {"include_usage": True}}
        body.update(_sampling(req.options, self.ctx.engine.max_model_len))
        if req.format == "json":
            body["response_format"] = {"type": "json_object"}
        elif req.format:  # a JSON schema ({} is no format, as in Ollama)
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "format", "schema": req.format}}
        return body

    async def _chat(self, body: dict[str, Any]) -> EventStream:
        req = parse(ChatCompletionRequest, body)
        try:
            return await self.chat.create(req)
        except BadRequest as e:
            if e.code != "context_length_exceeded" or req.max_tokens is None:
                raise
        # num_predict asks for more than the context holds after the prompt: to the context's end, as Ollama does
        return await self.chat.create(req.model_copy(update={"max_tokens": None}))

    async def _raw(self, req: GenerateRequest, model: str) -> EventStream:
        """The prompt verbatim (`raw`): tokenized here, so that num_predict can be clipped to the room left."""
        ids = await self.ctx.off_loop(self._encode, req.prompt)
        self.ctx.check_fits(len(ids), None, "prompt")
        body = {"model": model, "prompt": ids, **self._common(req)}
        room = self.ctx.engine.max_model_len - len(ids)
        body["max_tokens"] = min(body.get("max_tokens", room), room)
        if req.logprobs:
            body["logprobs"] = req.top_logprobs or 0
        return await self.completion.create(parse(CompletionRequest, body))

    def _encode(self, text: str) -> list[int]:
        self.ctx.check_text_fits(text, "prompt")
        return self.ctx.engine.tokenizer.encode(text)  # the model's own BOS rule, as /v1/completions

    # -- embeddings -----------------------------------------------------------------------------------------------
    async def embed(self, request: Request, name: str, texts: list[str], truncate: bool,
                    dimensions: int | None) -> tuple[list, int]:
        """The vectors of `texts` (none for none: Ollama's "load the model"), and the tokens read. `truncate`: each
        text cut to the context (Ollama's default) instead of refused."""
        model = self.served(name)
        if not texts:
            return [], 0
        inputs = await self.ctx.off_loop(self._truncated, texts) if truncate else texts
        body = {"model": model, "input": inputs, **({"dimensions": dimensions} if dimensions is not None else {})}
        try:
            out = await until_disconnect(request, self.embedding.create(parse(EmbeddingRequest, body)), self.live)
        except ClientGone:
            raise APIError("the client closed the connection", status=499) from None
        return [d.embedding for d in out.data], out.usage.prompt_tokens

    def _truncated(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, cut at the context's length (tokenized in full: the body limit bounds the work)."""
        tok, n = self.ctx.engine.tokenizer, self.ctx.engine.max_model_len
        return [tok.encode(t)[:n] for t in texts]


def _asks(req: GenerateFields) -> bool:
    return bool(req.messages) if isinstance(req, ChatRequest) else bool(req.prompt)


def _sampling(o: Options | None, n_ctx: int) -> dict[str, Any]:
    """Ollama's options as the OpenAI request's sampling fields."""
    if o is None:
        return {}
    out: dict[str, Any] = {k: getattr(o, k) for k in ("temperature", "top_p", "top_k", "min_p", "presence_penalty",
                                                      "frequency_penalty", "stop") if getattr(o, k) is not None}
    if o.num_predict is not None and o.num_predict > 0:  # <= 0: no limit but the context (Ollama's -1 and -2)
        out["max_tokens"] = min(o.num_predict, n_ctx)
    if o.repeat_penalty is not None:
        out["repetition_penalty"] = o.repeat_penalty
    if o.seed is not None and o.seed >= 0:  # Ollama's -1: a random seed
        out["seed"] = o.seed
    return out


def _messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Ollama's turns as OpenAI's. Ollama's calls carry no ids (newer versions may) and its tool turns name the tool:
    each call gets an id, and each tool turn answers the first unanswered call of its tool (else the first one)."""
    out: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []  # (call id, tool name) not answered yet
    for i, m in enumerate(messages):
        if m.images:
            raise BadRequest(f"messages.{i}.images: this model reads text only", param=f"messages.{i}.images")
        if m.role == "assistant" and m.tool_calls:
            calls = []
            for k, c in enumerate(m.tool_calls):
                args = c.function.arguments
                call_id = c.id or f"call_{i}_{k}"
                calls.append({"id": call_id, "type": "function", "function": {
                    "name": c.function.name, "arguments": args if isinstance(args, str) else json.dumps(args)}})
                pending.append((call_id, c.function.name))
            out.append({"role": "assistant", "content": m.content or None, "tool_calls": calls})
        elif m.role == "tool":
            call_id = m.tool_call_id
            if call_id is None:
                match = [p for p in pending if p[1] == m.tool_name] or pending
                call_id = match[0][0] if match else f"call_{i}"
            pending = [p for p in pending if p[0] != call_id]
            out.append({"role": "tool", "content": m.content or "", "tool_call_id": call_id,
                        **({"name": m.tool_name} if m.tool_name else {})})
        else:
            out.append({"role": m.role, "content": m.content or ""})
    return out
