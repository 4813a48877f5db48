"""The one place where exceptions become HTTP statuses and OpenAI-style error bodies.

Every error response looks like OpenAI's, so the openai SDK raises its matching exception
(`BadRequestError`, `AuthenticationError`, `NotFoundError`, `RateLimitError`, ...) with our message:

    {"error": {"message": "...", "type": "invalid_request_error", "param": "temperature", "code": null}}

Serving code raises `APIError` subclasses or lets library errors through (pydantic's ValidationError,
hearth's HearthError family, the engine's QueueFullError); `to_api_error` decides the status for all.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from hearth.engine.async_engine import EngineDeadError, QueueFullError
from hearth.errors import ContextLengthError, HearthError
from hearth.server.protocol import FieldError

log = logging.getLogger("hearth.server")

RETRY_AFTER_SECONDS = 1


class APIError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else type(self).code
        self.headers = headers or {}
        if status is not None:
            self.status = status

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class BadRequest(APIError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(APIError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class NotFound(APIError):
    status = 404
    type = "not_found_error"


class ModelNotFound(NotFound):
    code = "model_not_found"


class PayloadTooLarge(APIError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class TooManyRequests(APIError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class ServiceUnavailable(APIError):
    status = 503
    type = "service_unavailable_error"


class ClientGone(APIError):
    """The client disconnected before its response was ready (counted as status 499, nginx's code)."""

    status = 499
    type = "client_closed_request"

    def __init__(self) -> None:
        super().__init__("the client closed the connection")


def _param(loc: tuple, data: Any) -> str | None:
    """The dotted path of a pydantic error location, without the union-member tags pydantic inserts."""
    parts, cur = [], data
    for i, key in enumerate(loc):
        if isinstance(cur, dict) and key in cur:
            cur = cur[key]
        elif isinstance(cur, list) and isinstance(key, int) and 0 <= key < len(cur):
            cur = cur[key]
        elif i == len(loc) - 1 and isinstance(cur, dict) and isinstance(key, str):
            pass  # a missing field: name it
        else:
            continue  # a tag such as 'str' or 'list[int]'
        parts.append(str(key))
    return ".".join(parts) or None


def from_validation_error(exc: ValidationError, data: Any) -> BadRequest:
    # The deepest error is the most specific (a union reports one error per member).
    err = max(exc.errors(), key=lambda e: len(e["loc"]))
    param = _param(tuple(err["loc"]), data)
    kind, msg = err["type"], err["msg"]
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):  # a check across fields: it names the field itself
        param = f"{param}.{cause.param}" if param else cause.param
        return BadRequest(str(cause), param=param)
    if kind == "extra_forbidden":
        return BadRequest(f"unsupported field '{param}': hearth does not accept it (check the spelling)", param=param)
    if kind == "missing":
        return BadRequest(f"'{param}' is required", param=param)
    msg = msg.removeprefix("Value error, ")
    return BadRequest(f"{param}: {msg}" if param else msg, param=param)


def to_api_error(exc: BaseException) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, QueueFullError):
        return TooManyRequests(str(exc), headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    if isinstance(exc, EngineDeadError):
        return ServiceUnavailable(str(exc))
    if isinstance(exc, ContextLengthError):
        return BadRequest(str(exc), code="context_length_exceeded")
    if isinstance(exc, HearthError):  # bad input found below the server (sampling values, template, ids)
        return BadRequest(str(exc))
    if isinstance(exc, ValidationError):
        return from_validation_error(exc, None)
    if isinstance(exc, StarletteHTTPException):
        return APIError(str(exc.detail), status=exc.status_code, headers=dict(exc.headers or {}))
    log.error("internal error", exc_info=exc)
    return APIError(f"internal server error ({type(exc).__name__}); see the server log")


def error_response(exc: BaseException) -> JSONResponse:
    err = to_api_error(exc)
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def error_event(exc: BaseException) -> str:
    """An error that happens after a stream has started: one SSE event (the status is already sent)."""
    return f"data: {json.dumps(to_api_error(exc).body())}\n\n"


def install(app) -> None:
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, StarletteHTTPException) and exc.status_code in (404, 405):
            where = f"{request.method} {request.url.path}"
            exc = NotFound(f"no such endpoint: {where}") if exc.status_code == 404 else BadRequest(
                f"method not allowed: {where}", status=405, headers=dict(exc.headers or {}))
        return error_response(exc)

    for cls in (APIError, HearthError, ValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(cls, handler)
