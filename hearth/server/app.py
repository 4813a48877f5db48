"""The HTTP routes: an OpenAI-compatible API (plus vLLM's tokenizer routes) over an engine.

    app = build_app(engine, api_key="secret", served_model_name="smollm2")
    uvicorn.run(app)

The engine is anything with AsyncEngine's surface (`generate`, `abort`, `call`, `stats`, `tokenizer`,
`chat_template`, `max_model_len`, `embedding_dim`, `model_name`); its lifetime belongs to the caller (`hearth serve`
starts it and shuts it down). Routes only parse, call a serving class and wrap the result; every
error becomes an OpenAI-style body in `errors.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI, Request
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response

from hearth.server import errors, fields, openapi
from hearth.server.access_log import AccessLog
from hearth.server.common import ServerContext
from hearth.server.errors import ClientGone, ServiceUnavailable
from hearth.server.metrics import CONTENT_TYPE, Metrics, RequestCounter
from hearth.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    ModelCard,
    ModelList,
    ModerationRequest,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
)
from hearth.server.serving_chat import ChatService
from hearth.server.serving_completion import CompletionService
from hearth.server.serving_embedding import EmbeddingService
from hearth.server.serving_moderation import ModerationService
from hearth.server.serving_tokenize import TokenizeService
from hearth.server.security import BrowserGuard, check_api_key
from hearth.server.transport import (
    DEFAULT_MAX_BODY_BYTES,
    EventStreamResponse,
    LiveResponses,
    parse,
    read_json,
    until_disconnect,
)

if TYPE_CHECKING:
    from hearth.server.guarding import ServerGuard
    from hearth.server.records import ServerRecords

ENDPOINTS = {
    "/v1/chat/completions", "/v1/completions", "/v1/models", "/tokenize", "/detokenize", "/tokenizer_info",
    "/health", "/metrics", "/v1/embeddings", "/v1/moderations", "/v1/feedback", "/v1/responses",
}


def _json(model: BaseModel) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")


def _respond(result, live: LiveResponses) -> Response:
    if isinstance(result, BaseModel):
        return _json(result)
    return EventStreamResponse(result, live)


def build_app(
    engine,
    api_key: str | None = None,
    served_model_name: str | Sequence[str] | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    allowed_hosts: Sequence[str] | None = None,
    cors_origins: Sequence[str] = (),
    public_metrics: bool = False,
    ui: bool = True,
    guard: ServerGuard | None = None,
    records: ServerRecords | None = None,
    strict: bool = False,
    strict_model_names: bool = False,
    responses=None,
) -> FastAPI:
    """A FastAPI app serving `engine`. With `api_key`, every route but /health needs
    `Authorization: Bearer <api_key>` (/metrics and the docs too, unless `public_metrics`). Requests naming
    another model than `served_model_name` (a name or several, the first listed first; the engine's model name is
    always accepted) get 404. Every request is logged, without content, to `hearth.access` (access_log.py).

    Browser safety (security.py): a POST must be `application/json`; a Host header must name this server
    (`allowed_hosts`: names from security.allowed_hosts_for; None, as for an app behind the caller's own
    checks, accepts any); cross-origin browser requests are refused unless their origin is in `cors_origins`.
    /docs and /redoc serve their scripts from this server, never from a CDN.

    With `guard` (guarding.ServerGuard: `hearth serve --guard`), prompts and answers are checked as its policy says
    and /v1/moderations answers; a guard adapter on this engine is no model clients can generate with (its
    answers are a classifier's), so it is neither listed nor accepted as a model.

    With `records` (records.ServerRecords: `hearth serve --capture`, the cost ledger, the audit log), chat
    completions are stored as their requests ask, the stored-completion and feedback routes answer, and each
    request's record reaches the ledger and the audit log; /metrics adds the ledger's totals.

    GET /hearth/status gives the numbers of /metrics as JSON, with ten minutes of history (status.py; the key as
    for /metrics). With `ui` (`hearth serve --no-ui`: off), / is a chat page for people and /dashboard the
    operator's (pages.py); they call the API like any client, so with `api_key` they ask for the key.

    Tolerant by default (fields.py): fields of newer APIs and other servers that hearth does not implement are
    ignored with a `Warning` header, and a request naming another model is answered by this one, as llama.cpp does;
    `strict` refuses unknown fields, `strict_model_names` unknown model names (404). Every /v1 route also answers
    without the prefix (llama.cpp's clients use a base URL without /v1).

    With `responses` (records.responses_store.ResponseStore), /v1/responses keeps what `store` asks (OpenAI's default:
    true) and answers GET / DELETE /v1/responses/{id} and previous_response_id; without, it keeps nothing."""
    aliases = (served_model_name,) if isinstance(served_model_name, str) else tuple(served_model_name or ())
    names = tuple(dict.fromkeys(n for n in (*aliases, engine.model_name) if n))
    adapters = dict(getattr(engine, "adapters", {}))  # name -> directory
    if guard is not None and guard.engine is engine and guard.adapter is not None:
        adapters.pop(guard.adapter, None)
    ctx = ServerContext(engine, names, Metrics(engine), adapters=tuple(adapters), guard=guard, records=records,
                        lenient_names=not strict_model_names)
    chat, completion, tokenize = ChatService(ctx), CompletionService(ctx), TokenizeService(ctx)
    embedding, moderation = EmbeddingService(ctx), ModerationService(ctx)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        sampling = asyncio.create_task(app.state.sampler.run())  # /hearth/status's history (status.py)
        yield
        sampling.cancel()
        await asyncio.gather(sampling, return_exceptions=True)
        app.state.draining = True  # requests still arriving on open connections get 503

    # FastAPIOffline: /docs and /redoc with Swagger UI's and ReDoc's files served from /docs/static (air-gapped);
    # no validatorUrl, or Swagger UI would send the schema to validator.swagger.io.
    app = FastAPIOffline(title="hearth", lifespan=lifespan, static_url="/docs/static",
                         swagger_ui_parameters={"validatorUrl": None})
    app.state.draining = False
    app.state.ctx = ctx
    live = app.state.live = LiveResponses()  # ended by transport.DrainingServer at shutdown
    errors.install(app)
    describing = () if public_metrics else ("/metrics", "/hearth/status", app.openapi_url, "/docs", "/redoc")
    app.add_middleware(BrowserGuard, allowed_hosts=allowed_hosts, api_key=api_key, protected=describing)
    app.add_middleware(RequestCounter, metrics=ctx.metrics, endpoints=ENDPOINTS)  # outside: counts refusals too
    if cors_origins:  # outermost, so that the guard's refusals carry CORS headers too
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    # outermost: one `hearth.access` line per request, refusals included; the ledger and audit log see the same
    app.add_middleware(AccessLog, sinks=records.sinks() if records is not None else ())

    def authorized(request: Request) -> None:
        if api_key is not None:
            check_api_key(request.headers.get("authorization", ""), api_key)

    def serving(request: Request) -> None:
        if app.state.draining or not getattr(engine, "alive", True):
            raise ServiceUnavailable("the server is shutting down; retry on another instance or later")

    gates = [Depends(authorized), Depends(serving)]

    async def run(request: Request, work) -> Response:
        try:
            return _respond(await until_disconnect(request, work, live), live)
        except ClientGone:
            return Response(status_code=499)

    async def tolerant(request: Request, model, route: str):
        """The body parsed into `model` after fields.py's table has taken out what hearth does not implement."""
        data = await read_json(request, max_body_bytes)
        ignored = fields.tolerate(data, frozenset(model.model_fields), strict, route)
        return parse(model, data), ignored

    def warned(response: Response, ignored: list[str]) -> Response:
        if ignored:
            response.headers["Warning"] = fields.warning(ignored)
        return response

    @app.post("/v1/chat/completions", dependencies=gates)
    async def chat_completions(request: Request) -> Response:
        req, ignored = await tolerant(request, ChatCompletionRequest, "chat")
        return warned(await run(request, chat.create(req)), ignored)

    @app.post("/v1/completions", dependencies=gates)
    async def completions(request: Request) -> Response:
        req, ignored = await tolerant(request, CompletionRequest, "completions")
        return warned(await run(request, completion.create(req)), ignored)

    @app.post("/v1/embeddings", dependencies=gates)
    async def embeddings(request: Request) -> Response:
        req, ignored = await tolerant(request, EmbeddingRequest, "embeddings")
        return warned(await run(request, embedding.create(req)), ignored)

    @app.post("/v1/moderations", dependencies=gates)
    async def moderations(request: Request) -> Response:
        req = parse(ModerationRequest, await read_json(request, max_body_bytes))
        return await run(request, moderation.create(req))

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models() -> Response:
        return _json(ModelList(data=[card(n) for n in (*names, *adapters)]))

    @app.get("/v1/models/{model_id:path}", dependencies=[Depends(authorized)])
    async def model(model_id: str) -> Response:
        ctx.check_model(model_id, lenient=False)  # the list names the real models: so does a lookup
        return _json(card(model_id))

    def card(name: str) -> ModelCard:
        if name in adapters:
            return ModelCard(id=name, max_model_len=engine.max_model_len, root=str(adapters[name]), parent=names[0])
        return ModelCard(id=name, max_model_len=engine.max_model_len)

    @app.post("/tokenize", dependencies=gates)
    async def tokenize_route(request: Request) -> Response:
        data = await read_json(request, max_body_bytes)
        if "content" in data and "prompt" not in data and "messages" not in data:  # llama.cpp's body
            data["prompt"] = data.pop("content")
            if "add_special" in data:
                data["add_special_tokens"] = data.pop("add_special")
            data.pop("with_pieces", None)
        kind = TokenizeChatRequest if "messages" in data else TokenizeCompletionRequest
        return _json(await tokenize.tokenize(parse(kind, data)))

    @app.post("/detokenize", dependencies=gates)
    async def detokenize_route(request: Request) -> Response:
        return _json(await tokenize.detokenize(parse(DetokenizeRequest, await read_json(request, max_body_bytes))))

    @app.get("/tokenizer_info", dependencies=[Depends(authorized)])
    async def tokenizer_info() -> Response:
        return JSONResponse(tokenize.info())

    @app.get("/health")
    async def health() -> Response:
        serving(None)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics() -> Response:
        text = ctx.metrics.render()
        if records is not None and records.ledger is not None:  # the ledger's totals: a read, off the loop
            text += await records.run(records.prometheus)
        return Response(text, media_type=CONTENT_TYPE)

    from hearth.server import ollama

    ollama.install(app, ctx, gates, max_body_bytes)  # Ollama's API at /api, in Ollama's shapes (ollama.py)
    from hearth.server import records as server_records

    server_records.install(app, records, authorized, max_body_bytes)
    from hearth.server import responses as responses_api

    responses_api.install(app, chat, responses, gates, run, max_body_bytes, strict)  # OpenAI's Responses API

    from hearth.server import pages, status

    app.state.sampler = status.install(app, ctx)  # GET /hearth/status: the dashboard's numbers
    if ui:
        pages.install(app)  # / (chat) and /dashboard: static pages over the API above
    _unprefixed(app)
    openapi.install(app)  # the routes read their bodies by hand: openapi.py's table documents them
    return app


def _unprefixed(app: FastAPI) -> None:
    """Each /v1 route also at its path without /v1 (not in the OpenAPI document: the same operation twice)."""
    from fastapi.routing import APIRoute

    have = {(r.path, m) for r in app.routes if isinstance(r, APIRoute) for m in r.methods}
    for route in list(app.routes):
        if isinstance(route, APIRoute) and route.path.startswith("/v1/"):
            path = route.path[3:]
            methods = [m for m in route.methods if (path, m) not in have]
            if methods:
                app.add_api_route(path, route.endpoint, methods=methods, dependencies=route.dependencies,
                                  include_in_schema=False)

