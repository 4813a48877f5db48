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
    prompt: int | None = None
    completion: int | None = None


_current: contextvars.ContextVar[_Usage | None] = contextvars.ContextVar("hearth_access_usage", default=None)


def note_usage(prompt_tokens: int, completion_tokens: int | None = None) -> None:
    """Record the current request's token counts for its access-log line (a no-op outside a logged request)."""
    usage = _current.get()
    if usage is not None:
        usage.prompt, usage.completion = prompt_tokens, completion_tokens


def format_line(client, method: str, path: str, status: int, ms: float, usage: _Usage) -> str:
    who = f"{client[0]}:{client[1]}" if client else "-"
    tokens = "" if usage.prompt is None else f" prompt={usage.prompt}"
    tokens += "" if usage.completion is None else f" completion={usage.completion}"
    return terminal_safe(f'{who} "{method} {path}" {status} {ms:.0f} ms{tokens}')


class AccessLog:
    """ASGI middleware: one `hearth.access` line per HTTP request, after the response is complete. Outermost, so that
    refusals by the other middleware (host, API key, body size) are logged too."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not log.isEnabledFor(logging.INFO):
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = None
        usage = _Usage()
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
            ms = (time.perf_counter() - start) * 1000
            log.info("%s", format_line(scope.get("client"), scope.get("method", "?"), scope.get("path", ""),
                                       status or 499, ms, usage))
