"""Browser safety: which Host names, request content types and paths the server lets through.

A server on 127.0.0.1 can be reached by every web page its user opens. Two browser tricks let such a page drive it
with no CORS permission at all:

- A "simple" cross-origin POST (Content-Type text/plain, application/x-www-form-urlencoded or multipart/form-data)
  is sent without a preflight: the page cannot read the answer, but the generation runs. Requiring
  `application/json` on POST turns every cross-origin request into one that needs a preflight, which fails unless
  `--cors-origin` lets the page's origin in.
- DNS rebinding: the attacker's name (evil.example) first resolves to their own server, then to 127.0.0.1. The
  page is now same-origin with us and reads every answer, but its requests still say `Host: evil.example`.
  Refusing Host names that are not this server's defeats it.

The Host rule (see `allowed_hosts_for`): an IP address is always accepted, since nobody can rebind an address
literal (a page whose origin is http://10.0.0.5:8000 was served by whatever answers there, that is by us), and a
name must be `localhost` (or `*.localhost`, which browsers resolve to loopback themselves), the host the server
was bound to, this machine's own names when bound to every interface (0.0.0.0 / ::), or an `--allowed-host`
value. A reverse proxy that forwards its public name in Host needs `--allowed-host NAME`; `*` turns the check off.

With an API key, the routes that describe the server (/metrics, /openapi.json, /docs, /redoc and their assets)
need the key too, unless `public_docs` opens them; the API routes check the key themselves (`check_api_key`),
and /health stays open for load balancers.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
from collections.abc import Iterable, Sequence

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from hearth.server.errors import BadRequest, Unauthorized, error_response

WILDCARD_BINDS = ("0.0.0.0", "::", "")
JSON = "application/json"


def check_api_key(authorization: str, api_key: str) -> None:
    """Raise Unauthorized unless `authorization` is 'Bearer <api_key>' (compared in constant time)."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing API key: send the header 'Authorization: Bearer <key>'",
                           headers={"WWW-Authenticate": "Bearer"})
    if not secrets.compare_digest(token.strip().encode(), api_key.encode()):
        raise Unauthorized("invalid API key", headers={"WWW-Authenticate": "Bearer"})


def _hostname(host: str) -> str | None:
    """The name or address in a Host header value, without its port: 'a:8000' -> 'a', '[::1]:80' -> '::1'."""
    host = host.strip().lower()
    if host.startswith("["):
        end, rest = host.find("]"), host[host.find("]") + 1:]
        if end < 0 or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return host[1:end]
    name, _, port = host.partition(":")
    if port and not port.isdigit():
        return None
    return name.rstrip(".") or None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def allowed_hosts_for(bind: str, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The Host names a server listening on `bind` answers to, plus `extra` (--allowed-host values).

    IP addresses are accepted by `HostCheck` whatever this list says; this is the list of names. A wildcard bind
    adds this machine's host name and fully qualified name, the names other machines know it by.
    """
    names = ["localhost", *extra]
    bind = bind.strip().strip("[]").lower()
    if bind in WILDCARD_BINDS:
        names += [socket.gethostname(), socket.getfqdn()]
    elif not _is_ip(bind):
        names.append(bind)
    # 'proxy.example:443' -> 'proxy.example': the check compares names, not ports
    names = [n.strip().lower() if n.strip().startswith("*") else _hostname(n) or "" for n in names]
    return tuple(dict.fromkeys(n for n in names if n))


class HostCheck:
    """Whether a Host header names this server (see the module docstring for the rule)."""

    def __init__(self, names: Sequence[str]):
        self.any = "*" in names
        self.exact = frozenset(n for n in names if not n.startswith("*."))
        self.suffixes = tuple(n[1:] for n in names if n.startswith("*."))  # '*.example.com' -> '.example.com'

    def allows(self, host: str | None) -> bool:
        if self.any or host is None:  # no Host at all: HTTP/1.0, not a browser (browsers always send one)
            return True
        name = _hostname(host)
        if name is None:
            return False
        return (_is_ip(name) or name == "localhost" or name.endswith(".localhost") or name in self.exact
                or name.endswith(self.suffixes))


class BrowserGuard:
    """ASGI middleware: refuses a foreign Host, a POST that is not JSON, and describing routes without the key.

    Its refusals are OpenAI-style error bodies (errors.py), sent before the app sees the request.
    """

    def __init__(self, app: ASGIApp, *, allowed_hosts: Sequence[str] | None, api_key: str | None,
                 protected: Sequence[str] = ()):
        self.app = app
        self.hosts = HostCheck(allowed_hosts) if allowed_hosts is not None else None
        self.api_key = api_key
        self.protected = tuple(protected)  # path prefixes that need the key

    def _check(self, scope: Scope) -> None:
        headers = Headers(scope=scope)
        host = headers.get("host")
        if self.hosts is not None and not self.hosts.allows(host):
            raise BadRequest(f"the Host header {host!r} does not name this server; if it should, start the "
                             "server with --allowed-host NAME", status=421, code="misdirected_request")
        method, path = scope["method"], scope["path"]
        if method == "POST":
            media = headers.get("content-type", "").partition(";")[0].strip().lower()
            if media != JSON:
                raise BadRequest(f"send the request body as JSON with the header 'Content-Type: {JSON}' "
                                 f"(got {media or 'none'!r})", status=415, code="unsupported_media_type")
        if self.api_key is not None and method != "OPTIONS" and self._is_protected(path):
            check_api_key(headers.get("authorization", ""), self.api_key)

    def _is_protected(self, path: str) -> bool:
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in self.protected)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            self._check(scope)
        except (BadRequest, Unauthorized) as e:
            return await error_response(e)(scope, receive, send)
        await self.app(scope, receive, send)
