"""What `hearth serve` keeps about the requests it serves (hearth/records): captured completions and feedback
(`--capture`), the cost ledger and the audit log, and the routes that read and change them.

    GET    /v1/chat/completions                 OpenAI's stored completions: after, limit, order, model, metadata[k]=v
    GET    /v1/chat/completions/{id}            one (with its metadata and, hearth's addition, its feedback)
    GET    /v1/chat/completions/{id}/messages   the messages that asked for it
    POST   /v1/chat/completions/{id}            {"metadata": {...}}: replace its metadata
    DELETE /v1/chat/completions/{id}            delete it (and its feedback)
    POST   /v1/feedback                         {"completion_id", "score", "comment"?, "correction"?}

The ledger and the audit log are access-log sinks (access_log.AccessLog): they see each request's record (model,
adapter, key id, tokens, guard decision, status), never its content. Every disk write runs in a thread of its own
executor, never on the event loop.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, Request
from starlette.responses import JSONResponse

from hearth.server.errors import BadRequest, NotFound, ServiceUnavailable
from hearth.server.protocol.records import FeedbackRequest, UpdateCompletionRequest
from hearth.server.transport import parse, read_json

FEEDBACK_BODY_BYTES = 256 << 10
# probes, documentation and the web pages' files and status polls: no audit entry
NOT_LOGGED = ("/health", "/metrics", "/docs", "/redoc", "/openapi.json", "/hearth/status", "/ui/", "/dashboard")


@dataclass
class ServerRecords:
    """The records a server keeps; each part is optional. `capture_all`: store every chat completion, not only
    those sent with `store: true`."""

    capture: Any = None  # records.capture.CaptureStore
    capture_all: bool = False
    ledger: Any = None  # records.ledger.Ledger
    accountant: Any = None  # records.ledger.Accountant over `ledger`
    audit: Any = None  # records.audit.AuditLog
    model_digest: str | None = None
    _pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="hearth-records"))

    def wants(self, store: bool | None) -> bool:
        return self.capture is not None and (bool(store) or self.capture_all)

    async def run(self, fn, *args):
        """`fn(*args)` in the capture's thread; its CaptureUnavailable becomes a 503 (nothing stored is lost)."""
        from hearth.records.capture import CaptureUnavailable, InvalidMetadata

        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except InvalidMetadata as e:
            raise BadRequest(str(e), param="metadata") from None
        except CaptureUnavailable as e:
            raise ServiceUnavailable(str(e)) from None

    def prometheus(self) -> bytes:
        """The ledger's running totals as Prometheus text (blocking: call it through `run`)."""
        from hearth.records.ledger import render_prometheus

        return render_prometheus(self.ledger.totals()).encode()

    def sinks(self) -> list:
        out = []
        if self.accountant is not None:
            out.append(_LedgerSink(self.accountant, self._pool))
        if self.audit is not None:
            out.append(_AuditSink(self.audit, self._pool))
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True)  # the last ledger rows and audit entries are written before exit
        for part in (self.capture, self.audit, self.ledger):
            if part is not None:
                part.close()


class _LedgerSink:
    def __init__(self, accountant, pool):
        self.accountant, self.pool = accountant, pool

    def begin(self, usage) -> None:
        usage.ticket = self.accountant.begin()

    def end(self, usage) -> None:
        if usage.prompt is None or usage.model is None:  # it did not use the model
            return
        self.pool.submit(self.accountant.end, usage.ticket, model=usage.model, adapter=usage.adapter,
                         key_id=usage.key_id, prompt_tokens=usage.prompt, completion_tokens=usage.completion or 0)


class _AuditSink:
    def __init__(self, audit, pool):
        self.audit, self.pool = audit, pool

    def begin(self, usage) -> None:
        pass

    def end(self, usage) -> None:
        if usage.path.startswith(NOT_LOGGED) or usage.path == "/":
            return
        self.pool.submit(self.audit.append, key_id=usage.key_id, model=usage.model, adapter=usage.adapter,
                         method=usage.method, endpoint=usage.path[:256], status=usage.status,
                         prompt_tokens=usage.prompt, completion_tokens=usage.completion, guard=usage.guard,
                         ms=round(usage.ms, 1))


def _query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}, not {raw[:40]!r}", param=name)
    return int(raw)


def _order(request: Request) -> str:
    order = request.query_params.get("order", "asc")
    if order not in ("asc", "desc"):
        raise BadRequest(f"order must be 'asc' or 'desc', not {order[:40]!r}", param="order")
    return order


def _metadata_filter(request: Request) -> dict[str, str]:
    """`metadata[key]=value` pairs (the openai SDK's encoding of `metadata={...}`)."""
    out = {}
    for k, v in request.query_params.multi_items():
        if k.startswith("metadata[") and k.endswith("]"):
            out[k[9:-1]] = v
    return out


def install(app, records: ServerRecords | None, authorized, max_body_bytes: int) -> None:
    """The stored-completion and feedback routes (404 with a hint when the server does not capture)."""
    gate = [Depends(authorized)]

    def store():
        if records is None or records.capture is None:
            raise NotFound("stored completions are off on this server: start it with `hearth serve --capture`")
        return records.capture

    def missing(cid: str) -> NotFound:
        return NotFound(f"no stored chat completion with id '{cid[:100]}'", param="completion_id")

    @app.get("/v1/chat/completions", dependencies=gate)
    async def list_completions(request: Request) -> JSONResponse:
        capture = store()
        limit = _query_int(request, "limit", 20, 1, 100)
        after = request.query_params.get("after")
        try:
            page = await records.run(capture.list, after, limit, _order(request), _metadata_filter(request),
                                     request.query_params.get("model"))
        except KeyError:
            raise missing(after) from None
        return JSONResponse(page.to_json())

    @app.get("/v1/chat/completions/{completion_id}", dependencies=gate)
    async def get_completion(completion_id: str) -> JSONResponse:
        found = await records.run(store().get, completion_id)
        if found is None:
            raise missing(completion_id)
        return JSONResponse(found)

    @app.get("/v1/chat/completions/{completion_id}/messages", dependencies=gate)
    async def get_messages(completion_id: str, request: Request) -> JSONResponse:
        capture = store()
        limit = _query_int(request, "limit", 20, 1, 100)
        try:
            page = await records.run(capture.messages, completion_id, request.query_params.get("after"), limit, _order(request))
        except KeyError:
            raise NotFound("no such message id in 'after'", param="after") from None
        if page is None:
            raise missing(completion_id)
        return JSONResponse(page.to_json())

    @app.post("/v1/chat/completions/{completion_id}", dependencies=gate)
    async def update_completion(completion_id: str, request: Request) -> JSONResponse:
        capture = store()
        body = parse(UpdateCompletionRequest, await read_json(request, max_body_bytes))
        found = await records.run(capture.update_metadata, completion_id, body.metadata or {})
        if found is None:
            raise missing(completion_id)
        return JSONResponse(found)

    @app.delete("/v1/chat/completions/{completion_id}", dependencies=gate)
    async def delete_completion(completion_id: str) -> JSONResponse:
        if not await records.run(store().delete, completion_id):
            raise missing(completion_id)
        return JSONResponse({"object": "chat.completion.deleted", "id": completion_id, "deleted": True})

    @app.post("/v1/feedback", dependencies=gate)
    async def feedback(request: Request) -> JSONResponse:
        from hearth.server.access_log import current

        capture = store()
        body = parse(FeedbackRequest, await read_json(request, min(max_body_bytes, FEEDBACK_BODY_BYTES)))
        usage = current()
        done = await records.run(capture.add_feedback, body.completion_id, body.score, body.comment, body.correction,
                                 usage.key_id if usage is not None else "anonymous")
        if done is None:
            raise missing(body.completion_id)
        return JSONResponse(done)
