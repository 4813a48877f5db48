"""GET /hearth/status (hearth/server/status.py) and the page routes (pages.py) on an in-process app over a fake engine:
no browser needed (tests/test_web_ui.py drives the pages in chromium)."""

from __future__ import annotations

import math
import time

import pytest
from fastapi.testclient import TestClient

from fake_engine import FakeEngine
from hearth.server.app import build_app
from hearth.server.metrics import TTFT_BUCKETS
from hearth.server.status import Sampler, quantile, read

HELLO = [{"role": "user", "content": "Hello"}]


def test_quantile_is_prometheus_histogram_quantile():
    bounds = (1.0, 2.0, 4.0)
    assert quantile(0.5, bounds, (0, 0, 0, 0)) is None
    assert quantile(0.5, bounds, (10, 10, 10, 10)) == 0.5  # all in the first bucket: from 0 to its bound
    assert quantile(0.5, bounds, (0, 10, 10, 10)) == 1.5
    assert quantile(0.75, bounds, (0, 0, 8, 8)) == 3.5
    assert quantile(0.99, bounds, (0, 0, 0, 5)) == 4.0  # in +Inf: the highest finite bound
    assert quantile(1.0, bounds, (2, 4, 4, 4)) == 2.0


@pytest.fixture
def app():
    return build_app(FakeEngine(), served_model_name=["tiny", "alias"])


def test_status_reads_the_registry_of_metrics(app):
    with TestClient(app) as client:
        for _ in range(3):
            assert client.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 5}).status_code == 200
        doc = client.get("/hearth/status").json()
        registry = app.state.ctx.metrics.registry
        assert doc["object"] == "hearth.status" and doc["capture"] is False and doc["guard"] is None and doc["cost"] is None
        assert doc["model"] == {"name": "tiny", "aliases": ["alias"], "adapters": [], "max_model_len": 256}
        assert doc["tokens"]["generation"] == registry.get_sample_value("hearth_generation_tokens_total") == 15
        assert doc["tokens"]["prompt"] == registry.get_sample_value("hearth_prompt_tokens_total")
        assert doc["engine"]["running"] == 0 and doc["engine"]["kv_blocks_total"] > 0
        assert doc["latency"]["ttft_s"]["count"] == 3 and doc["latency"]["itl_s"]["count"] == 12
        counts = tuple(registry.get_sample_value("hearth_time_to_first_token_seconds_bucket", {"le": str(b)})
                       for b in TTFT_BUCKETS) + (3.0,)
        assert doc["latency"]["ttft_s"]["p90"] == quantile(0.9, TTFT_BUCKETS, counts)
        assert doc["requests"]["by_status"]["200"] >= 3
        assert doc["history"]["interval_s"] == 2.0


def test_the_sampler_keeps_history_and_recent_percentiles(app):
    sampler: Sampler = app.state.sampler
    sampler.every = 0.01
    with TestClient(app) as client:  # the lifespan runs the sampler
        client.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 5})
        deadline = time.monotonic() + 5
        while len(sampler.ring) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        doc = client.get("/hearth/status").json()
    hist = doc["history"]
    assert len(hist["t"]) >= 4 and hist["t"] == sorted(hist["t"])
    assert all(v >= 0 and math.isfinite(v) for v in hist["generation_tokens_per_s"])
    assert doc["latency"]["recent"]["window_s"] > 0


def test_read_sums_labelled_samples(app):
    app.state.ctx.metrics.guard_decisions.labels("S1", "user", "input", "block").inc(2)
    app.state.ctx.metrics.guard_decisions.labels("S1", "assistant", "output", "block").inc()
    app.state.ctx.metrics.guard_decisions.labels("safe", "user", "input", "allow").inc(5)
    s = read(app.state.ctx.metrics)
    assert s.guard == {("S1", "block"): 3.0, ("safe", "allow"): 5.0}


def test_pages_their_headers_and_no_ui():
    client = TestClient(build_app(FakeEngine()))
    for path in ("/", "/dashboard", "/ui/chat.js", "/ui/vendor/marked.esm.js", "/ui/style.css"):
        r = client.get(path)
        assert r.status_code == 200, path
        assert "script-src 'self'" in r.headers["content-security-policy"]
    assert client.get("/ui/nothing.js").status_code == 404
    assert client.get("/ui/vendor/README.md").status_code == 404
    doc = client.get("/openapi.json").json()
    assert "/hearth/status" in doc["paths"] and "/" not in doc["paths"] and "/dashboard" not in doc["paths"]
    plain = TestClient(build_app(FakeEngine(), ui=False))
    assert plain.get("/").status_code == 404 and plain.get("/ui/chat.js").status_code == 404
    assert plain.get("/hearth/status").status_code == 200


def test_status_needs_the_key_as_metrics_does():
    keyed = TestClient(build_app(FakeEngine(), api_key="k"))
    assert keyed.get("/hearth/status").status_code == 401
    assert keyed.get("/hearth/status", headers={"authorization": "Bearer k"}).status_code == 200
    assert keyed.get("/").status_code == 200  # the page holds nothing secret; its API calls need the key
    public = TestClient(build_app(FakeEngine(), api_key="k", public_metrics=True))
    assert public.get("/hearth/status").status_code == 200
