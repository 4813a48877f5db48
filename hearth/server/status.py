"""GET /hearth/status: the server's live numbers as one small JSON document, for the operator's page (/dashboard).

It reads the same sources as /metrics and counts nothing twice: the samples of metrics.Metrics' Prometheus registry
(token counters, the TTFT and inter-token latency histograms, the guard's decisions, and the engine's gauges, which
are a collector in that registry), and the cost ledger's totals (records.ServerRecords) priced as `hearth cost`
prices them. Rates and recent percentiles need history, which a counter alone has not: `Sampler` takes one sample of
the registry every `every` seconds into a ring buffer (ten minutes by default), so the page draws tokens/s over the
last minutes from its first poll, whoever watched before.

Percentiles come from histogram buckets the way Prometheus' histogram_quantile computes them (linear within the
bucket the rank falls in), so they agree with a dashboard built on /metrics.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict, deque
from dataclasses import dataclass

from starlette.responses import JSONResponse

from hearth.server.metrics import ITL_BUCKETS, TTFT_BUCKETS, Metrics

QUANTILES = (0.5, 0.9, 0.99)
SAMPLE_EVERY = 2.0  # seconds between samples of the ring buffer
KEEP = 300  # samples kept: ten minutes at SAMPLE_EVERY
RECENT = 300.0  # seconds of the "recent" percentiles


@dataclass(frozen=True)
class Sample:
    """The registry's numbers at one time (`t`: unix seconds)."""

    t: float
    prompt_tokens: float
    generation_tokens: float
    running: float
    waiting: float
    kv_used: float
    kv_total: float
    ttft: tuple[float, ...]  # cumulative bucket counts, TTFT_BUCKETS then +Inf
    itl: tuple[float, ...]  # the same for ITL_BUCKETS
    requests: dict[str, float]  # HTTP status -> responses
    guard: dict[tuple[str, str], float]  # (category, action) -> decisions


def quantile(q: float, bounds: tuple[float, ...], counts: tuple[float, ...]) -> float | None:
    """Prometheus' histogram_quantile: `counts` cumulative per upper bound in `bounds` (+Inf last, not in `bounds`).
    None with no observations; the highest finite bound when the rank falls in the +Inf bucket."""
    total = counts[-1]
    if total <= 0:
        return None
    rank = q * total
    for i, c in enumerate(counts):
        if c >= rank:
            if i == len(bounds):
                return bounds[-1]
            low, below = (bounds[i - 1], counts[i - 1]) if i else (0.0, 0.0)
            return bounds[i] if c == below else low + (bounds[i] - low) * (rank - below) / (c - below)
    return bounds[-1]


def read(metrics: Metrics, now: float | None = None) -> Sample:
    """One pass over the registry (the engine's gauges are read once, at this collect)."""
    values: dict[str, list[tuple[dict, float]]] = defaultdict(list)
    for family in metrics.registry.collect():
        for s in family.samples:
            values[s.name].append((s.labels, s.value))

    def one(name: str) -> float:
        return sum(v for _, v in values.get(name, ()))

    def buckets(name: str, bounds: tuple[float, ...]) -> tuple[float, ...]:
        by_le = {float(labels["le"]): v for labels, v in values.get(f"{name}_bucket", ())}
        return tuple(by_le.get(b, 0.0) for b in (*bounds, math.inf))

    requests: dict[str, float] = defaultdict(float)
    for labels, v in values.get("hearth_requests_total", ()):
        requests[labels["status"]] += v
    guard: dict[tuple[str, str], float] = defaultdict(float)
    for labels, v in values.get("hearth_guard_decisions_total", ()):
        guard[(labels["category"], labels["action"])] += v
    return Sample(time.time() if now is None else now, one("hearth_prompt_tokens_total"),
                  one("hearth_generation_tokens_total"), one("hearth_num_requests_running"),
                  one("hearth_num_requests_waiting"), one("hearth_kv_blocks_used"), one("hearth_kv_blocks_total"),
                  buckets("hearth_time_to_first_token_seconds", TTFT_BUCKETS),
                  buckets("hearth_inter_token_latency_seconds", ITL_BUCKETS), dict(requests), dict(guard))


class Sampler:
    """A ring buffer of samples, one every `every` seconds while `run` runs (the app's lifespan runs it)."""

    def __init__(self, metrics: Metrics, every: float = SAMPLE_EVERY, keep: int = KEEP):
        self.metrics, self.every = metrics, every
        self.ring: deque[Sample] = deque(maxlen=keep)

    def sample(self) -> Sample:
        s = read(self.metrics)
        self.ring.append(s)
        return s

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.every)

    def before(self, t: float) -> Sample | None:
        """The oldest sample taken at or after `t` (the start of a window), if any."""
        return next((s for s in self.ring if s.t >= t), None)


def _latency(bounds, now: tuple[float, ...], then: tuple[float, ...] | None) -> dict:
    counts = now if then is None else tuple(a - b for a, b in zip(now, then))
    return {"count": int(counts[-1]), **{f"p{round(q * 100)}": quantile(q, bounds, counts) for q in QUANTILES}}


def _history(ring: list[Sample]) -> dict:
    pairs = list(zip(ring, ring[1:]))
    return {
        "t": [round(b.t, 3) for _, b in pairs],
        "generation_tokens_per_s": [round((b.generation_tokens - a.generation_tokens) / (b.t - a.t), 3)
                                    for a, b in pairs],
        "prompt_tokens_per_s": [round((b.prompt_tokens - a.prompt_tokens) / (b.t - a.t), 3) for a, b in pairs],
        "running": [b.running for _, b in pairs],
        "waiting": [b.waiting for _, b in pairs],
    }


def _cost(records) -> dict:
    """The ledger's totals since it began, and the API list prices at the same mix of prompt and completion tokens
    (blocking: run it in the records' thread). Dollars are the page's to compute: the price of a kWh is the
    operator's (hearth cost --price-kwh)."""
    from hearth.records.prices import input_share, load_prices, sum_totals

    totals = records.ledger.totals()
    share = input_share(totals)
    snapshot = load_prices()
    mine = None
    if totals:
        t = sum_totals(totals)
        mine = {"requests": t.requests, "prompt_tokens": t.prompt_tokens, "completion_tokens": t.completion_tokens,
                "tokens": t.tokens, "busy_seconds": t.busy_seconds, "joules": t.joules, "kwh": t.kwh,
                "joules_per_token": t.joules_per_token, "kwh_per_m_tokens": t.kwh / t.tokens * 1e6 if t.tokens else None,
                "energy_source": t.energy_source, "estimated": t.estimated}
    return {"totals": mine, "api": {"date": snapshot.date, "source": snapshot.source, "input_share": share,
                                    "models": [{"provider": p.provider, "model": p.model,
                                                "blended_per_m": p.blended(share) if share is not None else None}
                                               for p in snapshot.models]}}


def document(ctx, sampler: Sampler, started: float, cost: dict | None) -> dict:
    """The status document: now, a recent window and the ring's history."""
    now = read(ctx.metrics)
    ring = list(sampler.ring)
    if not ring or now.t - ring[-1].t >= sampler.every / 2:  # a rate over a few milliseconds is noise
        ring.append(now)
    recent = sampler.before(now.t - RECENT)
    guard = ctx.guard
    return {
        "object": "hearth.status",
        "time": now.t,
        "uptime_s": now.t - started,
        "model": {"name": ctx.model_name, "aliases": list(ctx.model_names[1:]), "adapters": list(ctx.adapters),
                  "max_model_len": ctx.engine.max_model_len},
        "capture": ctx.records is not None and ctx.records.capture is not None,
        "guard": None if guard is None else {"model": guard.engine.model_name, "adapter": guard.adapter,
                                             "input": guard.policy.check_input, "output": guard.policy.check_output},
        "engine": {"running": now.running, "waiting": now.waiting, "kv_blocks_used": now.kv_used,
                   "kv_blocks_total": now.kv_total,
                   "kv_cache_usage": now.kv_used / now.kv_total if now.kv_total else 0.0},
        "tokens": {"prompt": now.prompt_tokens, "generation": now.generation_tokens},
        "requests": {"by_status": now.requests, "total": sum(now.requests.values())},
        "latency": {
            "ttft_s": _latency(TTFT_BUCKETS, now.ttft, None),
            "itl_s": _latency(ITL_BUCKETS, now.itl, None),
            "recent": {"window_s": RECENT if recent is None else now.t - recent.t,
                       "ttft_s": _latency(TTFT_BUCKETS, now.ttft, recent.ttft if recent else None),
                       "itl_s": _latency(ITL_BUCKETS, now.itl, recent.itl if recent else None)},
        },
        "guard_decisions": [{"category": c, "action": a, "count": v} for (c, a), v in sorted(now.guard.items())],
        "history": {"interval_s": sampler.every, **_history(ring)},
        "cost": cost,
    }


def install(app, ctx) -> Sampler:
    """GET /hearth/status (with an API key, BrowserGuard asks for it as on /metrics); returns the Sampler whose `run`
    the app's lifespan keeps going."""
    sampler = Sampler(ctx.metrics)
    started = time.time()
    records = ctx.records

    @app.get("/hearth/status")
    async def status() -> JSONResponse:
        cost = None
        if records is not None and records.ledger is not None:  # a read of SQLite, off the loop
            cost = await records.run(_cost, records)
        return JSONResponse(document(ctx, sampler, started, cost))

    return sampler
