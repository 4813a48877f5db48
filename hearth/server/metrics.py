"""Prometheus metrics, in a registry of the app's own (several apps can live in one process, e.g. tests).

Request counts come from an ASGI middleware that sees every response's status, errors included;
token counts and latencies from the serving code as outputs arrive; engine gauges (running, waiting,
KV cache use) are read from `engine.stats()` at scrape time, so they are never stale.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
GUARD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20)


class _EngineCollector:
    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        s = self.engine.stats()
        yield GaugeMetricFamily("hearth_num_requests_running", "Requests being decoded", value=s.running)
        yield GaugeMetricFamily("hearth_num_requests_waiting", "Requests queued for the engine", value=s.waiting)
        yield GaugeMetricFamily("hearth_kv_blocks_used", "KV cache blocks in use", value=s.kv_blocks_used)
        yield GaugeMetricFamily("hearth_kv_blocks_total", "KV cache blocks in all", value=s.kv_blocks_total)
        usage = s.kv_blocks_used / s.kv_blocks_total if s.kv_blocks_total else 0.0
        yield GaugeMetricFamily("hearth_kv_cache_usage_perc", "Fraction of KV cache blocks in use (0-1)", value=usage)
        yield CounterMetricFamily("hearth_prefix_cache_queries", "Prompt tokens looked up in the prefix cache",
                                  value=s.prefix_cache_queries)
        yield CounterMetricFamily("hearth_prefix_cache_hits", "Prompt tokens found in the prefix cache (not recomputed)",
                                  value=s.prefix_cache_hits)


class Metrics:
    def __init__(self, engine):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("hearth_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("hearth_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter("hearth_generation_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram("hearth_time_to_first_token_seconds", "Arrival to first generated token",
                              buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("hearth_inter_token_latency_seconds", "Time between generated tokens",
                             buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram("hearth_e2e_request_latency_seconds", "Arrival to last token, per engine request",
                             buckets=E2E_BUCKETS, registry=r)
        # the guard (hearth serve --guard, guarding.py): one decision per category a verdict names ("safe" when
        # it is safe, "unspecified" when unsafe without a category); role: the turn checked; check: where
        self.guard_decisions = Counter("hearth_guard_decisions", "Guard verdicts by category, role, check and action",
                                       ["category", "role", "check", "action"], registry=r)
        self.guard_latency = Histogram("hearth_guard_latency_seconds", "Time of one guard check, render included",
                                       ["check"], buckets=GUARD_BUCKETS, registry=r)
        r.register(_EngineCollector(engine))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestCounter:
    """ASGI middleware: counts each HTTP response by route and status (499: the client went away)."""

    def __init__(self, app, metrics: Metrics, endpoints: set[str]):
        self.app = app
        self.metrics = metrics
        self.endpoints = endpoints

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = None

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
            path = scope.get("path", "")
            endpoint = path if path in self.endpoints else "other"
            self.metrics.requests.labels(endpoint, str(status or 499)).inc()
