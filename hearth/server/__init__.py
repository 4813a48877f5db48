"""An OpenAI-compatible HTTP server over the engine (`hearth serve`).

Split as vLLM's: `protocol` (request/response schemas), `serving_*` (the logic of each endpoint),
`errors` (exceptions → HTTP status, in one place), `metrics` (Prometheus), `transport` (bodies,
disconnects, SSE), `app` (the routes: `hearth.server.app.build_app`).

This file imports none of them, so importing one submodule never pulls in the app and the rest.
"""
