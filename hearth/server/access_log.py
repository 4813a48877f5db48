"""One access-log line per HTTP request, written when the response has been sent (a stream: after its last event).

    127.0.0.1:50412 "POST /v1/chat/completions" 200 812 ms prompt=21 completion=64

Method, path (no query string), status (499: the client went away first), duration, the request's prompt and completion
tokens where it used the model, the client's address. Never a prompt, an answer or a header: the log holds no content.
Logged to the `hearth.access` logger at INFO; `hearth serve` prints it (`--no-access-log`: not).

The serving classes report token counts with `note_usage` (the numbers of the response's `usage`); the middleware
hands each request a fresh record through a context variable, which the tasks a request starts inherit.
"""

from __future__ import annotations

import contextvars
import logging
import time
from dataclasses import dataclass

from hearth.textsafe import terminal_safe

log = logging.getLogger("hearth.access")


@dataclass
class _Usage:
    """What one request did, for its log line and the sinks (the cost ledger, the audit log): never content."""

    prompt: int | None = None
    completion: int | None = None
    model: str | None = None  # the model or adapter name it was answered with
    adapter: str | None = None
    guard: str | None = None  # "allowed", "blocked: input", "blocked: output"; None where no guard ran
    key_id: str = "anonymous"
    status: int = 0
    ms: float = 0.0
    method: str = ""
    path: str = ""
    ticket: object = None  # a sink's own note taken at the start (ledger.Accountant.begin)


_current: contextvars.ContextVar[_Usage | None] = contextvars.ContextVar("hearth_access_usage", default=None)


def note_usage(prompt_tokens: int, completion_tokens: int | None = None) -> None:
    """Record the current request's token counts for its access-log line (a no-op outside a logged request)."""
    usage = _current.get()
    if usage is not None:
        usage.prompt, usage.completion = prompt_tokens, completion_tokens


def note_served(model: str, adapter: str | None) -> None:
    """Record which model (or adapter) answers the current request."""
    usage = _current.get()
    if usage is not None:
        usage.model, usage.adapter = model, adapter


def note_guard(decision: str) -> None:
    usage = _current.get()
    if usage is not None:
        usage.guard = decision


def current() -> _Usage | None:
    """The current request's record (the key id the capture keeps beside a completion)."""
    return _current.get()


def key_id(headers: list[tuple[bytes, bytes]]) -> str:
    """An API key's id: a short hash of the bearer token (never the key itself); "anonymous" without one."""
    import hashlib

    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return "key-" + hashlib.sha256(token.strip().encode("utf-8", "replace")).hexdigest()[:12]
    return "anonymous"


def format_line(client, method: str, path: str, status: int, ms: float, usage: _Usage) -> str:
    who = f"{client[0]}:{client[1]}" if client else "-"
    tokens = "" if usage.prompt is None else f" prompt={usage.prompt}"
    tokens += "" if usage.completion is None else f" completion={usage.completion}"
    return terminal_safe(f'{who} "{method} {path}" {status} {ms:.0f} ms{tokens}')


class AccessLog:
    """ASGI middleware: one `hearth.access` line per HTTP request, after the response is complete. Outermost, so that
    refusals by the other middleware (host, API key, body size) are logged too.

    `sinks` (hearth serve's cost ledger and audit log) get each request's record too: `begin(usage)` as it arrives,
    `end(usage)` when its response is complete, both on the event loop (a sink hands slow work to a thread)."""

    def __init__(self, app, sinks=()):
        self.app = app
        self.sinks = tuple(sinks)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or (not log.isEnabledFor(logging.INFO) and not self.sinks):
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = None
        usage = _Usage(key_id=key_id(scope.get("headers") or []), method=scope.get("method", "?"),
                       path=scope.get("path", ""))
        for sink in self.sinks:
            sink.begin(usage)
        token = _current.set(usage)

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except BaseException:
            status = status or 500
            raise
        finally:
            _current.reset(token)
            usage.ms = (time.perf_counter() - start) * 1000
            usage.status = status or 499
            log.info("%s", format_line(scope.get("client"), usage.method, usage.path, usage.status, usage.ms, usage))
            for sink in self.sinks:
                try:
                    sink.end(usage)
                except Exception:  # noqa: BLE001 - a sink's failure never costs the response (it is sent)
                    log.exception("recording %s %s failed", usage.method, usage.path)
