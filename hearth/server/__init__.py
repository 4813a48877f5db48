"""An OpenAI-compatible HTTP server over the engine (`hearth serve`).

Split as vLLM's: `protocol` (request/response schemas), `serving_*` (the logic of each endpoint),
`errors` (exceptions → HTTP status, in one place), `metrics` (Prometheus), `transport` (bodies,
disconnects, SSE), `app` (the routes).
"""

from hearth.server.app import build_app

__all__ = ["build_app"]
