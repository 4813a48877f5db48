"""Graceful shutdown (hearth/server/transport.py DrainingServer): on SIGTERM new requests get 503 while the socket
stays open, running requests may finish within the grace period, the rest end with an error event and
`data: [DONE]` (streams) or a 503 (non-streaming), and the process exits 0.

The first test runs DrainingServer in a thread over the fake engine (its signal handler called by hand); the
second sends a real SIGTERM to a real `hearth serve` process on a tiny GGUF with a long context.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from fake_engine import FakeEngine
from hearth.server.app import build_app
from hearth.server.transport import DrainingServer
from serve_kit import free_port

COMPLETIONS = "/v1/completions"
GRACE = 1.0


def events(lines: list[str]) -> list:
    return [line[6:] if line == "data: [DONE]" else json.loads(line[6:]) for line in lines if line.startswith("data: ")]


def assert_ended_by_shutdown(evs: list) -> None:
    assert evs[-1] == "[DONE]", evs[-3:]
    err = evs[-2]
    assert isinstance(err, dict) and set(err) == {"error"}, evs[-3:]
    assert "shutting down" in err["error"]["message"] and err["error"]["type"] == "service_unavailable_error", err
    assert any(isinstance(e, dict) and "choices" in e for e in evs[:-2]), "no tokens before the end"


def assert_503(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert "shutting down" in r.json()["error"]["message"]


def wait_until(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_drain_finishes_short_requests_and_ends_long_ones():
    engine = FakeEngine(max_model_len=1024)
    engine.settings.token_delay = 0.05  # 200 tokens: 10 s, far past the grace period; 6 tokens: 0.3 s
    app = build_app(engine, served_model_name="tiny-model")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = DrainingServer(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=2),
                            live=app.state.live, on_drain=lambda: setattr(app.state, "draining", True),
                            shutdown_timeout=GRACE)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started)

    got: dict[str, object] = {}

    def stream(name: str, max_tokens: int) -> None:
        body = {"prompt": "x", "max_tokens": max_tokens, "stream": True}
        with httpx.stream("POST", url + COMPLETIONS, json=body, timeout=30) as r:
            got[name] = [line for line in r.iter_lines() if line]

    def whole(name: str) -> None:
        got[name] = httpx.post(url + COMPLETIONS, json={"prompt": "x", "max_tokens": 200}, timeout=30)

    clients = [threading.Thread(target=stream, args=("long", 200)), threading.Thread(target=stream, args=("short", 6)),
               threading.Thread(target=whole, args=("whole",))]
    for c in clients:
        c.start()
    wait_until(lambda: len(engine.active) == 3)

    t0 = time.monotonic()
    server.handle_exit(signal.SIGTERM, None)
    assert_503(httpx.post(url + COMPLETIONS, json={"prompt": "x", "max_tokens": 2}))  # still listening
    assert httpx.get(url + "/health").status_code == 503  # load balancers take it out
    for c in clients:
        c.join(timeout=15)
    thread.join(timeout=15)
    assert not thread.is_alive(), "the server did not stop"
    assert time.monotonic() - t0 < GRACE + DrainingServer.FLUSH_SECONDS + 2

    short = events(got["short"])
    assert short[-1] == "[DONE]" and not any("error" in e for e in short if isinstance(e, dict)), short
    assert_ended_by_shutdown(events(got["long"]))
    assert_503(got["whole"])
    assert not engine.active, "the ended requests were not aborted in the engine"


def test_a_second_signal_ends_running_streams_at_once():
    engine = FakeEngine(max_model_len=1024)
    engine.settings.token_delay = 0.05
    app = build_app(engine, served_model_name="tiny-model")
    port = free_port()
    server = DrainingServer(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"),
                            live=app.state.live, on_drain=lambda: setattr(app.state, "draining", True),
                            shutdown_timeout=60)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started)
    lines: list[str] = []

    def stream() -> None:
        body = {"prompt": "x", "max_tokens": 500, "stream": True}
        with httpx.stream("POST", f"http://127.0.0.1:{port}{COMPLETIONS}", json=body, timeout=30) as r:
            lines.extend(line for line in r.iter_lines() if line)

    client = threading.Thread(target=stream)
    client.start()
    wait_until(lambda: engine.active)
    t0 = time.monotonic()
    server.handle_exit(signal.SIGTERM, None)
    time.sleep(0.3)
    assert thread.is_alive()  # waiting for the stream, up to 60 s
    server.handle_exit(signal.SIGINT, None)  # Ctrl-C: stop waiting
    client.join(timeout=10)
    thread.join(timeout=10)
    assert not thread.is_alive() and time.monotonic() - t0 < 5
    assert_ended_by_shutdown(events(lines))
    assert not engine.active


def _long_context_gguf(path: Path) -> Path:
    """The tiny test model with a 32k context, so that one stream runs for longer than the grace period."""
    import tiny
    from hearth.weights.gguf_writer import write_gguf
    from store_kit import _tiny_parts

    cfg, state, tok = _tiny_parts()
    return write_gguf(path, dataclasses.replace(cfg, max_seq_len=32768), state, tok, tiny.CHAT_TEMPLATE)


def test_sigterm_on_a_real_server(tmp_path):
    model = _long_context_gguf(tmp_path / "long.gguf")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", HEARTH_HOME=str(tmp_path / "home"))
    env.pop("HEARTH_API_KEY", None)
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "hearth.cli", "serve", str(model), "--port", str(port),
                                 "--shutdown-timeout", "2", "--kv-cache-gib", "0.05"],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        def healthy() -> bool:
            assert proc.poll() is None, log_path.read_text()
            try:
                return httpx.get(url + "/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, timeout=120)
        lines: list[str] = []

        def stream() -> None:
            body = {"prompt": "hello", "max_tokens": 30000, "ignore_eos": True, "temperature": 0, "stream": True}
            with httpx.stream("POST", url + COMPLETIONS, json=body, timeout=60) as r:
                lines.extend(line for line in r.iter_lines() if line)

        client = threading.Thread(target=stream)
        client.start()
        wait_until(lambda: len(lines) >= 5, timeout=60)

        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # for the signal to arrive
        assert_503(httpx.post(url + COMPLETIONS, json={"prompt": "hi", "max_tokens": 2}, timeout=5))
        client.join(timeout=30)
        assert_ended_by_shutdown(events(lines))
        assert proc.wait(timeout=30) == 0, log_path.read_text()
        assert time.monotonic() - t0 < 2 + 6, "the process outlived its grace period"
        assert "Traceback" not in log_path.read_text(), log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
