"""The OpenAPI document (/openapi.json), written from one route table so it says what the server does.

The routes read their bodies by hand (`transport.read_json`, then pydantic with `extra="forbid"`), so FastAPI sees
no body to document. `ROUTES` names, for each operation, its request model, its 200 answer (JSON, and
server-sent events for requests with `"stream": true`) and the error statuses it can answer with OpenAI's error
body (errors.py). `install(app)` makes `app.openapi()` merge the table into FastAPI's document, with the models'
JSON schemas from protocol.py as components. Schema-driven fuzzers (schemathesis, tests/test_openapi_fuzz.py) and
client generators read it; a test fails when a route is missing from the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from hearth.server import protocol as p
from hearth.server.protocol import responses as rp

REF = "#/components/schemas/{model}"

# OpenAI's error body, as errors.APIError.body() writes it
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {"error": {
        "type": "object",
        "required": ["message", "type", "param", "code"],
        "additionalProperties": False,
        "properties": {
            "message": {"type": "string"},
            "type": {"type": "string"},
            "param": {"type": ["string", "null"]},
            "code": {"type": ["string", "null"]},
        },
    }},
}

ERROR_TEXT = {
    400: "Invalid request (a bad field, body or header); `error.param` names the field",
    401: "Missing or wrong API key (when the server has one)",
    404: "No such model (or adapter); for /v1/moderations also: the server runs no guard; for stored completions "
         "and feedback: no such id, or the server does not capture (--capture)",
    413: "The request body is larger than the server accepts",
    415: "The request body is not sent as application/json",
    421: "The Host header does not name this server (see --allowed-host)",
    429: "The waiting queue is full; retry after the Retry-After header's seconds",
    500: "An internal error (a bug; the server keeps serving and logs it)",
    503: "The server is shutting down or its engine has stopped",
}

EVERY = (401, 421, 500, 503)  # any route: the key, a bad Host header, a bug, shutting down
BODY = (*EVERY, 400, 404, 413, 415)  # a route that reads a JSON body naming a model
GENERATE = (*BODY, 429)  # a route that queues work in the engine

STORED = (*EVERY, 400, 404)  # the stored-completion routes: 404 for an unknown id, or without --capture
STORED_LIST = {"type": "object", "required": ["object", "data", "has_more"],
               "description": "OpenAI's list page: object 'list', data, first_id, last_id, has_more"}
STORED_COMPLETION = {"type": "object", "required": ["id", "object", "choices"], "additionalProperties": True,
                     "description": "The chat completion as answered, plus metadata, request_id, feedback and hearth"}
HEALTH = {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}
STATUS = {"type": "object", "required": ["object", "time", "model", "engine", "tokens", "latency", "history"],
          "additionalProperties": True, "properties": {"object": {"const": "hearth.status"}},
          "description": "The numbers of /metrics as JSON (engine, tokens, requests, TTFT / ITL percentiles, guard "
                         "decisions), ten minutes of tokens/s history, the model and adapters, capture on or off, "
                         "and the cost ledger's totals beside API list prices (status.py)"}
TOKENIZER_INFO = {"type": "object", "additionalProperties": True,
                  "description": "The tokenizer's special tokens, vocabulary size and chat template (vLLM's route)"}


@dataclass(frozen=True)
class Route:
    request: tuple[type[BaseModel], ...] = ()  # one of these as the JSON body (none: no body)
    response: type[BaseModel] | dict | None = None  # the 200's JSON (a dict: a plain JSON schema)
    stream: type[BaseModel] | None = None  # with "stream": true, the 200 is server-sent events of these
    errors: tuple[int, ...] = EVERY
    media_type: str = "application/json"  # the 200's, when not JSON
    summary: str = ""
    examples: tuple[dict, ...] = ()  # request bodies that succeed (the docs show them; fuzzers send them first)


HELLO = [{"role": "user", "content": "Hello"}]

ROUTES: dict[tuple[str, str], Route] = {
    ("post", "/v1/chat/completions"): Route(
        (p.ChatCompletionRequest,), p.ChatCompletionResponse, p.ChatCompletionChunk, GENERATE,
        summary="A chat reply (OpenAI's chat completions)",
        examples=({"messages": HELLO, "max_tokens": 4},
                  {"messages": HELLO, "max_tokens": 4, "stream": True, "stream_options": {"include_usage": True}},
                  {"messages": HELLO, "max_tokens": 4, "logprobs": True, "top_logprobs": 2, "n": 2, "seed": 1},
                  {"messages": HELLO, "max_tokens": 8, "response_format": {"type": "json_object"}})),
    ("post", "/v1/completions"): Route(
        (p.CompletionRequest,), p.CompletionResponse, p.CompletionResponse, GENERATE,
        summary="A text completion (OpenAI's legacy completions)",
        examples=({"prompt": "Once upon a time", "max_tokens": 4},
                  {"prompt": [[5, 6], [7]], "max_tokens": 2, "echo": True, "logprobs": 2, "stream": True})),
    ("post", "/v1/embeddings"): Route(
        (p.EmbeddingRequest,), p.EmbeddingResponse, None, GENERATE, summary="Embeddings of texts or token ids",
        examples=({"input": ["Hello", "world"]}, {"input": [5, 6, 7], "encoding_format": "base64"})),
    ("post", "/v1/moderations"): Route(
        (p.ModerationRequest,), p.ModerationResponse, None, GENERATE,
        summary="Whether texts are unsafe, by the guard (OpenAI's moderations; 404 without --guard)",
        examples=({"input": "Hello"}, {"input": ["Hello", "How do I bake bread?"], "model": "guard"})),
    ("get", "/v1/models"): Route(response=p.ModelList, summary="The served model and its adapters"),
    ("get", "/v1/models/{model_id}"): Route(response=p.ModelCard, errors=(*EVERY, 404), summary="One served model"),
    ("post", "/tokenize"): Route(
        (p.TokenizeCompletionRequest, p.TokenizeChatRequest), p.TokenizeResponse, None, BODY,
        summary="Token ids of a prompt, or of chat messages through the chat template (vLLM's route)",
        examples=({"prompt": "Hello", "return_token_strs": True}, {"messages": HELLO})),
    ("post", "/detokenize"): Route(
        (p.DetokenizeRequest,), p.DetokenizeResponse, None, BODY, summary="The text of token ids (vLLM's route)",
        examples=({"tokens": [5, 6, 7]},)),
    ("get", "/tokenizer_info"): Route(response=TOKENIZER_INFO, summary="The tokenizer's settings (vLLM's route)"),
    ("get", "/health"): Route(response=HEALTH, errors=(421, 500, 503), summary="200 while the server serves"),
    ("get", "/metrics"): Route(response={"type": "string"}, media_type="text/plain",
                               summary="Prometheus metrics (vLLM's names; with a ledger, its totals)"),
    ("get", "/hearth/status"): Route(response=STATUS, summary="The server's live numbers as JSON (the dashboard's)"),
    ("get", "/v1/chat/completions"): Route(
        response=STORED_LIST, errors=STORED,
        summary="Stored chat completions, oldest first (query: after, limit, order, model, metadata[key]=value)"),
    ("get", "/v1/chat/completions/{completion_id}"): Route(
        response=STORED_COMPLETION, errors=STORED, summary="One stored chat completion, with its metadata and feedback"),
    ("get", "/v1/chat/completions/{completion_id}/messages"): Route(
        response=STORED_LIST, errors=STORED, summary="The messages a stored completion answered (query: after, limit, order)"),
    ("post", "/v1/chat/completions/{completion_id}"): Route(
        (p.UpdateCompletionRequest,), STORED_COMPLETION, None, (*STORED, 413, 415),
        summary="Replace a stored completion's metadata", examples=({"metadata": {"reviewed": "yes"}},)),
    ("delete", "/v1/chat/completions/{completion_id}"): Route(
        response={"type": "object", "required": ["object", "id", "deleted"]}, errors=STORED,
        summary="Delete a stored completion and its feedback"),
    ("post", "/v1/feedback"): Route(
        (p.FeedbackRequest,), {"type": "object", "required": ["object", "id", "completion_id", "score"]}, None,
        (*STORED, 413, 415), summary="Feedback on a stored completion: a score, a comment, the answer wanted",
        examples=({"completion_id": "chatcmpl-...", "score": -1, "correction": "Paris"},)),
    ("post", "/v1/responses"): Route(
        (rp.ResponsesRequest,), rp.ResponseObject, rp.ResponseStreamEvent, GENERATE,
        summary="A response (OpenAI's Responses API): text or items in; message and function_call items out",
        examples=({"input": "Hello", "max_output_tokens": 4},
                  {"input": HELLO, "instructions": "Be brief.", "max_output_tokens": 4, "stream": True},
                  {"input": "Pick one.", "max_output_tokens": 16, "text": {"format": {
                      "type": "json_schema", "name": "pick", "schema": {
                          "type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}}}})),
    ("get", "/v1/responses/{response_id}"): Route(
        response=rp.ResponseObject, errors=(*EVERY, 404), summary="A stored response (store: true, the default)"),
    ("get", "/v1/responses/{response_id}/input_items"): Route(
        response=rp.InputItemList, errors=(*EVERY, 400, 404),
        summary="The input items of a stored response (query: after, limit, order)"),
    ("delete", "/v1/responses/{response_id}"): Route(
        response=rp.DeletedResponse, errors=(*EVERY, 404), summary="Delete a stored response"),
}


def _models() -> list[tuple[type[BaseModel], str]]:
    out = []
    for route in ROUTES.values():
        out += [(m, "validation") for m in route.request]
        out += [(m, "serialization") for m in (route.response, route.stream) if isinstance(m, type)]
    return list(dict.fromkeys(out))


def _body(schemas: dict, route: Route) -> dict[str, Any]:
    refs = [schemas[(m, "validation")] for m in route.request]
    media: dict[str, Any] = {"schema": refs[0] if len(refs) == 1 else {"anyOf": refs}}
    if route.examples:
        media["examples"] = {f"example{i}": {"value": v} for i, v in enumerate(route.examples)}
    return {"required": True, "content": {"application/json": media}}


def _ok(schemas: dict, route: Route) -> dict[str, Any]:
    res = route.response
    schema = schemas[(res, "serialization")] if isinstance(res, type) else res
    content = {route.media_type: {"schema": schema}}
    if route.stream is not None:  # OpenAPI 3.1: `schema` describes one event
        chunk = schemas[(route.stream, "serialization")]
        content["text/event-stream"] = {"schema": {
            "type": "object",
            "required": ["data"],
            "description": (f"Server-sent events: `data: <{route.stream.__name__} JSON>`, then `data: [DONE]`. An error "
                            "after the stream has started comes as one event `data: <ErrorResponse JSON>`, then [DONE]."),
            "properties": {"data": {"anyOf": [
                {"const": "[DONE]"},
                {"type": "string", "contentMediaType": "application/json",
                 "contentSchema": {"anyOf": [chunk, {"$ref": REF.format(model="ErrorResponse")}]}},
            ]}},
        }}
    return {"description": "OK", "content": content}


def document(app) -> dict[str, Any]:
    """FastAPI's document with the table's bodies, answers and component schemas (cached on the app)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes, description=__doc__.split("\n")[0])
    schemas, defs = models_json_schema(_models(), ref_template=REF)
    components = doc.setdefault("components", {})
    # replaces FastAPI's own (HTTPValidationError: its 422s never happen)
    components["schemas"] = {**defs.get("$defs", {}), "ErrorResponse": ERROR_SCHEMA}
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer", "description": (
        "Needed only when the server has an API key (--api-key-file, HEARTH_API_KEY)")}}
    for path, ops in doc.get("paths", {}).items():
        for method, op in ops.items():
            route = ROUTES.get((method, path))
            if route is None:
                continue  # a route outside the table (tests/test_server_protocol.py fails on it)
            if route.summary:
                op["summary"] = route.summary
            if route.request:
                op["requestBody"] = _body(schemas, route)
            if 401 in route.errors:  # the key is optional: the server may have none
                op["security"] = [{}, {"bearer": []}]
            # FastAPI's 422 never happens: every validation error is answered as a 400 (errors.py)
            op["responses"] = {"200": _ok(schemas, route), **{
                str(code): {"description": ERROR_TEXT[code],
                            "content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorResponse")}}}}
                for code in sorted(route.errors)}}
    app.openapi_schema = doc
    return doc


def install(app) -> None:
    app.openapi = lambda: document(app)
