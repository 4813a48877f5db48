"""The web pages: chat for people at `/`, the operator's view at `/dashboard`, their files under `/ui/`.

The pages are static files in webui/ (HTML, CSS, JavaScript modules and the vendored libraries in webui/vendor,
whose README says where each comes from). They talk to the server only through its public API, as any client does:
`POST /v1/chat/completions` (streamed), `GET /v1/models`, `POST /v1/feedback`, `GET /hearth/status`; with an API
key those answer 401 and the page asks for the key. The pages themselves need no key: they hold nothing secret.

Every file is read once at start, kept with its gzip form and an ETag, and answered with headers that keep model
output, which the page renders as sanitized HTML, from running anything even if the sanitizer failed: a
Content-Security-Policy that allows scripts, styles and connections from this server only (no inline script, no
eval), no framing, no plugins, no form posts.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from hearth.server.errors import NotFound

WEBUI = Path(__file__).resolve().parent / "webui"
PREFIX = "/ui/"
PAGES = {"/": "index.html", "/dashboard": "dashboard.html"}
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-cache",  # revalidated each load (an ETag answer is 304): a new hearth serves its new page
    "Vary": "Accept-Encoding",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes
    etag: str
    media_type: str


def load_assets(root: Path = WEBUI) -> dict[str, Asset]:
    """Every servable file under `root` by its path there ('chat.js', 'vendor/marked.esm.js'); other files (the
    vendored libraries' licences and README) are not served."""
    out = {}
    for path in sorted(root.rglob("*")):
        media = TYPES.get(path.suffix)
        if media is None or not path.is_file():
            continue
        body = path.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        out[path.relative_to(root).as_posix()] = Asset(body, gzip.compress(body, 9, mtime=0), etag, media)
    return out


def respond(asset: Asset, request: Request) -> Response:
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers={**HEADERS, "ETag": asset.etag})
    headers = {**HEADERS, "ETag": asset.etag}
    if "gzip" in request.headers.get("accept-encoding", "") and len(asset.gzipped) < len(asset.body):
        return Response(asset.gzipped, media_type=asset.media_type, headers={**headers, "Content-Encoding": "gzip"})
    return Response(asset.body, media_type=asset.media_type, headers=headers)


def install(app, root: Path = WEBUI) -> None:
    """The page routes (left out of the OpenAPI document: they are no API)."""
    assets = load_assets(root)

    def page(name: str):
        async def route(request: Request) -> Response:
            return respond(assets[name], request)
        return route

    for path, name in PAGES.items():
        app.add_api_route(path, page(name), methods=["GET"], include_in_schema=False)

    @app.get(PREFIX + "{name:path}", include_in_schema=False)
    async def asset(name: str, request: Request) -> Response:
        found = assets.get(name)
        if found is None:
            raise NotFound(f"no file {PREFIX}{name[:100]} in the web page")
        return respond(found, request)
